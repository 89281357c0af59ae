//! What each step found, and the summary: a table for people (plain aligned text, long cells
//! wrapped within their column) and the same as JSON for scripts.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// The pitfalls' short names, 1 to 5.
pub fn title(pitfall: u8) -> &'static str {
    match pitfall {
        1 => "non-atomic DB write + publish",
        2 => "event sourcing everywhere",
        3 => "no context propagation",
        4 => "large event payloads",
        5 => "duplicate processing",
        _ => "?",
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The naive mode showed the pitfall and the fixed mode did not.
    Fixed,
    /// The fixed mode held, but the naive mode did not show the pitfall this time.
    NaiveHeld,
    /// The fixed mode did not show the fix: a failure.
    NotFixed,
    /// Something the step needs was not running.
    Skipped,
    /// The step could not finish: a failure.
    Error,
}

impl Verdict {
    /// From what each mode showed.
    pub fn of(naive_failed: bool, fixed_held: bool) -> Self {
        match (naive_failed, fixed_held) {
            (_, false) => Self::NotFixed,
            (true, true) => Self::Fixed,
            (false, true) => Self::NaiveHeld,
        }
    }

    /// Whether the demo's exit code says so.
    pub fn is_failure(self) -> bool {
        matches!(self, Self::NotFixed | Self::Error)
    }

    /// For the table.
    pub fn label(self) -> &'static str {
        match self {
            Self::Fixed => "fixed",
            Self::NaiveHeld => "fixed (naive held)",
            Self::NotFixed => "NOT FIXED",
            Self::Skipped => "skipped",
            Self::Error => "ERROR",
        }
    }
}

/// One step's result.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// 1 to 5.
    pub pitfall: u8,
    /// Its short name.
    pub name: &'static str,
    /// How it ended.
    pub verdict: Verdict,
    /// What the naive mode did.
    pub naive: String,
    /// What the fixed mode did.
    pub fixed: String,
    /// The number that shows it, naive vs fixed.
    pub number: String,
    /// Why it was skipped, or what went wrong.
    pub reason: Option<String>,
    /// What else the step saw, printed under the table (e.g. a consumer that did not resume
    /// after the Kafka outage).
    pub notes: Vec<String>,
    /// The raw measurements, for scripts.
    pub measurements: serde_json::Map<String, serde_json::Value>,
    /// How long the step took.
    pub seconds: f64,
}

impl Outcome {
    /// A finished step.
    pub fn new(
        pitfall: u8,
        verdict: Verdict,
        naive: String,
        fixed: String,
        number: String,
        measurements: serde_json::Value,
    ) -> Self {
        Self {
            pitfall,
            name: title(pitfall),
            verdict,
            naive,
            fixed,
            number,
            reason: None,
            notes: Vec::new(),
            measurements: match measurements {
                serde_json::Value::Object(map) => map,
                _ => serde_json::Map::new(),
            },
            seconds: 0.0,
        }
    }

    /// A step that could not run, and why.
    pub fn skipped(pitfall: u8, reason: &str) -> Self {
        let mut o = Self::new(
            pitfall,
            Verdict::Skipped,
            "-".to_owned(),
            "-".to_owned(),
            format!("skipped: {reason}"),
            serde_json::Value::Null,
        );
        o.reason = Some(reason.to_owned());
        o
    }

    /// A step that failed, and how.
    pub fn error(pitfall: u8, message: &str) -> Self {
        let mut o = Self::new(
            pitfall,
            Verdict::Error,
            "-".to_owned(),
            "-".to_owned(),
            format!("error: {message}"),
            serde_json::Value::Null,
        );
        o.reason = Some(message.to_owned());
        o
    }
}

/// The whole run (the JSON copy).
#[derive(Debug, Serialize)]
pub struct Summary {
    /// When the demo started.
    pub started_at: DateTime<Utc>,
    /// How long it took.
    pub duration_seconds: f64,
    /// No failure (every step fixed, naive held or skipped; nothing interrupted; restored).
    pub ok: bool,
    /// What stopped the demo early (Ctrl-C, SIGTERM).
    pub interrupted: Option<String>,
    /// What could not be put back as found.
    pub restore_error: Option<String>,
    /// The steps, in pitfall order.
    pub outcomes: Vec<Outcome>,
}

impl Summary {
    /// The steps' outcomes, sorted by pitfall.
    pub fn new(started_at: DateTime<Utc>, mut outcomes: Vec<Outcome>) -> Self {
        outcomes.sort_by_key(|o| o.pitfall);
        Self {
            started_at,
            duration_seconds: 0.0,
            ok: false,
            interrupted: None,
            restore_error: None,
            outcomes,
        }
    }

    /// Sets `ok` from the outcomes, interruption and restore (call before serialising).
    pub fn settle(&mut self) {
        self.outcomes.sort_by_key(|o| o.pitfall);
        self.ok = self.interrupted.is_none()
            && self.restore_error.is_none()
            && !self.outcomes.iter().any(|o| o.verdict.is_failure());
    }
}

/// Columns: header and widest line.
const COLUMNS: [(&str, usize); 6] = [
    ("#", 1),
    ("pitfall", 18),
    ("naive mode", 34),
    ("fixed mode", 34),
    ("the number", 30),
    ("verdict", 10),
];

/// The table, then a line on the overall result.
pub fn render(summary: &Summary) -> String {
    let rows: Vec<[String; 6]> = summary
        .outcomes
        .iter()
        .map(|o| {
            [
                o.pitfall.to_string(),
                o.name.to_owned(),
                o.naive.clone(),
                o.fixed.clone(),
                o.number.clone(),
                o.verdict.label().to_owned(),
            ]
        })
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n== make demo: {} pitfall(s) in {:.0} s ==",
        rows.len(),
        summary.duration_seconds
    );
    out.push_str(&table(&rows));
    let failures = summary
        .outcomes
        .iter()
        .filter(|o| o.verdict.is_failure())
        .count();
    for o in &summary.outcomes {
        for note in &o.notes {
            let _ = writeln!(out, "note (pitfall {}): {note}", o.pitfall);
        }
    }
    if let Some(why) = &summary.interrupted {
        let _ = writeln!(out, "interrupted ({why}); the system was put back");
    }
    if let Some(e) = &summary.restore_error {
        let _ = writeln!(out, "NOT RESTORED: {e}");
    }
    let skipped = summary
        .outcomes
        .iter()
        .filter(|o| o.verdict == Verdict::Skipped)
        .count();
    if failures == 0 && summary.interrupted.is_none() && summary.restore_error.is_none() {
        if skipped == summary.outcomes.len() {
            out.push_str("nothing ran: every step was skipped\n");
        } else if skipped > 0 {
            let _ = writeln!(
                out,
                "every fixed mode that ran showed its fix ({skipped} skipped)"
            );
        } else {
            out.push_str("every fixed mode showed its fix\n");
        }
    } else if failures > 0 {
        let _ = writeln!(out, "{failures} step(s) failed");
    }
    out
}

/// Rows as aligned columns under a header and a rule; a cell longer than its column wraps at
/// spaces onto continuation lines.
pub fn table(rows: &[[String; 6]]) -> String {
    let mut cells: Vec<Vec<Vec<String>>> = Vec::new();
    let mut widths: Vec<usize> = COLUMNS.iter().map(|(h, _)| h.chars().count()).collect();
    for row in rows {
        let wrapped: Vec<Vec<String>> = row
            .iter()
            .zip(COLUMNS)
            .map(|(cell, (_, max))| wrap(cell, max))
            .collect();
        for (w, lines) in widths.iter_mut().zip(&wrapped) {
            *w = (*w).max(lines.iter().map(|l| l.chars().count()).max().unwrap_or(0));
        }
        cells.push(wrapped);
    }
    let mut out = String::new();
    let line = |out: &mut String, parts: &[&str]| {
        let mut text = String::new();
        for (i, (part, w)) in parts.iter().zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(part);
            text.push_str(&" ".repeat(w.saturating_sub(part.chars().count())));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    let header: Vec<&str> = COLUMNS.iter().map(|(h, _)| *h).collect();
    line(&mut out, &header);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(
        &mut out,
        &rule.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    for row in &cells {
        let height = row.iter().map(Vec::len).max().unwrap_or(1);
        for i in 0..height {
            let parts: Vec<&str> = row
                .iter()
                .map(|lines| lines.get(i).map_or("", String::as_str))
                .collect();
            line(&mut out, &parts);
        }
    }
    out
}

/// `text` in lines of at most `width` characters, broken at spaces (a word longer than the
/// width gets a line of its own, unbroken).
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for word in text.split_whitespace() {
        let needed = if current.is_empty() {
            word.chars().count()
        } else {
            current.chars().count() + 1 + word.chars().count()
        };
        if needed > width && !current.is_empty() {
            lines.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(word);
    }
    if !current.is_empty() || lines.is_empty() {
        lines.push(current);
    }
    lines
}

/// `1234567` as `1.2 MB`, `2048` as `2.0 KB` (decimal units, as people read sizes).
pub fn bytes(n: u64) -> String {
    match n {
        n if n >= 1_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1} KB", n as f64 / 1e3),
        n => format!("{n} B"),
    }
}

/// `10000` as `10,000`.
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// Milliseconds with a precision that suits their size.
pub fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else if v >= 10.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.2} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_wrap_at_the_width_and_long_words_stay_whole() {
        assert_eq!(
            wrap("lost 200 of 200 events", 10),
            vec!["lost 200", "of 200", "events"]
        );
        assert_eq!(wrap("exactly ten", 11), vec!["exactly ten"]);
        assert_eq!(
            wrap("a MSG_SIZE_TOO_LARGE b", 8),
            vec!["a", "MSG_SIZE_TOO_LARGE", "b"]
        );
        assert_eq!(wrap("", 5), vec![""]);
    }

    #[test]
    fn verdicts_follow_both_modes_and_only_the_fix_fails_the_run() {
        assert_eq!(Verdict::of(true, true), Verdict::Fixed);
        assert_eq!(Verdict::of(false, true), Verdict::NaiveHeld);
        assert_eq!(Verdict::of(true, false), Verdict::NotFixed);
        assert!(Verdict::NotFixed.is_failure() && Verdict::Error.is_failure());
        assert!(!Verdict::Skipped.is_failure() && !Verdict::NaiveHeld.is_failure());
    }

    fn sample() -> Summary {
        let mut s = Summary::new(
            Utc::now(),
            vec![
                Outcome::skipped(3, "jaeger is stopped (`make up`)"),
                Outcome::new(
                    1,
                    Verdict::Fixed,
                    "PUBLISH_MODE=direct: 200 of 200 events lost".to_owned(),
                    "outbox: 0 of 200 lost".to_owned(),
                    "events lost: 200 vs 0".to_owned(),
                    serde_json::json!({"naive_lost": 200, "fixed_lost": 0}),
                ),
            ],
        );
        s.duration_seconds = 61.0;
        s.settle();
        s
    }

    #[test]
    fn the_table_aligns_columns_wraps_cells_and_sorts_by_pitfall() {
        let text = render(&sample());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "== make demo: 2 pitfall(s) in 61 s ==", "{text}");
        assert!(lines[2].starts_with("#  pitfall"), "{text}");
        assert!(lines[3].starts_with("-  ----"), "{text}");
        assert!(lines[4].starts_with("1  non-atomic DB"), "{text}");
        // The naive cell is wider than its column: it continues on the next line, in the
        // same column.
        let naive_col = lines[2].find("naive mode").unwrap();
        assert_eq!(&lines[4][naive_col..naive_col + 19], "PUBLISH_MODE=direct");
        assert!(lines[5][naive_col..].starts_with("events lost"), "{text}");
        assert!(text.contains("skipped: jaeger is stopped"), "{text}");
        assert!(
            lines.iter().all(|l| l.len() == l.trim_end().len()),
            "{text}"
        );
        assert!(
            text.ends_with("every fixed mode that ran showed its fix (1 skipped)\n"),
            "{text}"
        );
    }

    #[test]
    fn the_json_copy_names_the_verdict_and_keeps_the_measurements() {
        let s = sample();
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(v["outcomes"][0]["pitfall"], 1);
        assert_eq!(v["outcomes"][0]["verdict"], "fixed");
        assert_eq!(v["outcomes"][0]["measurements"]["naive_lost"], 200);
        assert_eq!(v["outcomes"][1]["verdict"], "skipped");
        assert_eq!(v["outcomes"][1]["reason"], "jaeger is stopped (`make up`)");
    }

    #[test]
    fn notes_are_printed_under_the_table() {
        let mut s = sample();
        s.outcomes[0]
            .notes
            .push("inventory-service was restarted".to_owned());
        assert!(
            render(&s).contains("note (pitfall 1): inventory-service was restarted\n"),
            "{}",
            render(&s)
        );
    }

    #[test]
    fn a_failed_step_is_counted_under_the_table() {
        let mut s = sample();
        s.outcomes.push(Outcome::error(5, "Kafka: timed out"));
        s.settle();
        assert!(!s.ok);
        assert!(render(&s).ends_with("1 step(s) failed\n"));
    }

    #[test]
    fn sizes_and_durations_read_naturally() {
        assert_eq!(thousands(10_000), "10,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(-5_000), "-5,000");
        assert_eq!(bytes(3_150_000), "3.1 MB");
        assert_eq!(bytes(2_048), "2.0 KB");
        assert_eq!(bytes(312), "312 B");
        assert_eq!(ms(0.256), "0.26 ms");
        assert_eq!(ms(45.27), "45.3 ms");
        assert_eq!(ms(847.2), "847 ms");
    }
}
