//! What an audit found: violations per check (counted, with a few examples), what was still in
//! flight (not a violation), and what was read. Rendered as text for people and as JSON for
//! scripts; both carry the same numbers.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

/// The six checks, numbered as in the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Check {
    /// 1: committed business changes without their event.
    MissingEvents,
    /// 2: events without a committed change.
    OrphanEvents,
    /// 3: the same effect applied more than once.
    DuplicateEffects,
    /// 4: per-key revision order broken on a topic.
    Order,
    /// 5: stock arithmetic that does not add up.
    Stock,
    /// 6: projection views that differ from their source rows.
    Views,
}

impl Check {
    /// Every check, in number order.
    pub const ALL: [Check; 6] = [
        Check::MissingEvents,
        Check::OrphanEvents,
        Check::DuplicateEffects,
        Check::Order,
        Check::Stock,
        Check::Views,
    ];

    /// 1 to 6.
    pub fn number(self) -> usize {
        self as usize + 1
    }

    /// The name `--checks` and the JSON report use.
    pub fn name(self) -> &'static str {
        match self {
            Check::MissingEvents => "missing-events",
            Check::OrphanEvents => "orphan-events",
            Check::DuplicateEffects => "duplicate-effects",
            Check::Order => "order",
            Check::Stock => "stock",
            Check::Views => "views",
        }
    }

    /// One line saying what it verifies.
    pub fn title(self) -> &'static str {
        match self {
            Check::MissingEvents => "committed changes without their event",
            Check::OrphanEvents => "events without a committed change",
            Check::DuplicateEffects => "effects applied more than once",
            Check::Order => "per-key revision order broken on a topic",
            Check::Stock => "stock arithmetic that does not add up",
            Check::Views => "views that differ from their source rows",
        }
    }

    /// A check by number (`3`) or name (`duplicate-effects`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        Self::ALL
            .into_iter()
            .find(|c| c.name() == text || c.number().to_string() == text)
            .ok_or_else(|| {
                let names: Vec<String> = Self::ALL
                    .iter()
                    .map(|c| format!("{} ({})", c.number(), c.name()))
                    .collect();
                format!(
                    "unknown check {text:?}; the checks are {}",
                    names.join(", ")
                )
            })
    }
}

/// One example of a violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// A short code for the kind of violation within its check (`no-event`, `lost-release`).
    pub kind: &'static str,
    /// What it is about (`order 0190…`, `sku SKU-1`).
    pub subject: String,
    /// What is wrong, in words.
    pub detail: String,
}

/// What one check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    /// Violations counted.
    pub count: u64,
    /// Violations per kind.
    pub kinds: BTreeMap<&'static str, u64>,
    /// The first few.
    pub examples: Vec<Example>,
}

/// Everything the checks found, collected as they run.
#[derive(Debug, Clone)]
pub struct Findings {
    /// The checks that ran.
    pub checks: Vec<Check>,
    /// Per check that ran.
    pub found: BTreeMap<Check, Found>,
    /// Things on their way (not violations), counted by what they are.
    pub in_flight: BTreeMap<String, u64>,
    /// Things stuck for a known, allowed reason (dead letters, parked outbox rows) until an
    /// operator acts, counted by what they are.
    pub stuck: BTreeMap<String, u64>,
    /// What could not be checked and why.
    pub notes: Vec<String>,
    examples: usize,
}

impl Findings {
    /// Findings of `checks`, keeping `examples` examples per check.
    pub fn new(checks: &[Check], examples: usize) -> Self {
        Self {
            checks: checks.to_vec(),
            found: checks.iter().map(|c| (*c, Found::default())).collect(),
            in_flight: BTreeMap::new(),
            stuck: BTreeMap::new(),
            notes: Vec::new(),
            examples,
        }
    }

    /// Whether `check` runs (its facts are worth collecting).
    pub fn runs(&self, check: Check) -> bool {
        self.found.contains_key(&check)
    }

    /// Counts a violation of `check`. `describe` gives `(subject, detail)`; it is called only
    /// while examples are still wanted, so a million violations format three strings.
    pub fn violation(
        &mut self,
        check: Check,
        kind: &'static str,
        describe: impl FnOnce() -> (String, String),
    ) {
        let Some(found) = self.found.get_mut(&check) else {
            return;
        };
        found.count += 1;
        *found.kinds.entry(kind).or_default() += 1;
        if found.examples.len() < self.examples {
            let (subject, detail) = describe();
            found.examples.push(Example {
                kind,
                subject,
                detail,
            });
        }
    }

    /// Counts `n` things in flight.
    pub fn in_flight(&mut self, what: &str, n: u64) {
        if n > 0 {
            *self.in_flight.entry(what.to_owned()).or_default() += n;
        }
    }

    /// Counts `n` things stuck for an allowed reason.
    pub fn stuck(&mut self, what: &str, n: u64) {
        if n > 0 {
            *self.stuck.entry(what.to_owned()).or_default() += n;
        }
    }

    /// Adds a note (once).
    pub fn note(&mut self, text: impl Into<String>) {
        let text = text.into();
        if !self.notes.contains(&text) {
            self.notes.push(text);
        }
    }

    /// All violations.
    pub fn violations(&self) -> u64 {
        self.found.values().map(|f| f.count).sum()
    }

    /// Violations of `check` (0 when it did not run).
    #[cfg(test)]
    pub fn count(&self, check: Check) -> u64 {
        self.found.get(&check).map_or(0, |f| f.count)
    }
}

/// What was read, for the report's first lines.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Topic → (partitions, records read).
    pub topics: BTreeMap<String, (usize, u64)>,
    /// `database.table` → rows read.
    pub rows: BTreeMap<String, u64>,
}

/// A finished audit.
#[derive(Debug, Clone)]
pub struct Report {
    /// The findings of the last attempt.
    pub findings: Findings,
    /// What the last attempt read.
    pub sources: Sources,
    /// Attempts made (more than one with `--settle`).
    pub attempts: u32,
    /// Seconds from the first attempt to the end of the last.
    pub elapsed_secs: f64,
}

impl Report {
    /// The report for people.
    pub fn text(&self) -> String {
        let f = &self.findings;
        let mut out = String::new();
        let violations = f.violations();
        let _ = writeln!(
            out,
            "pitfall-lab audit: {} ({} attempt{}, {:.1} s)",
            if violations == 0 && f.in_flight.is_empty() {
                "clean".to_owned()
            } else if violations == 0 {
                "no violation, not settled (in flight below)".to_owned()
            } else {
                format!("{violations} violation{}", plural(violations))
            },
            self.attempts,
            plural(u64::from(self.attempts)),
            self.elapsed_secs
        );
        if !self.sources.topics.is_empty() {
            let topics: Vec<String> = self
                .sources
                .topics
                .iter()
                .map(|(t, (p, n))| format!("{t} {n} ({p} partitions)"))
                .collect();
            let _ = writeln!(out, "records read: {}", topics.join(", "));
        }
        if !self.sources.rows.is_empty() {
            let rows: Vec<String> = self
                .sources
                .rows
                .iter()
                .map(|(t, n)| format!("{t} {n}"))
                .collect();
            let _ = writeln!(out, "rows read: {}", rows.join(", "));
        }
        for check in &f.checks {
            let found = &f.found[check];
            let _ = writeln!(
                out,
                "[{}] {:<18} {:<44} {}",
                check.number(),
                check.name(),
                check.title(),
                if found.count == 0 {
                    "ok".to_owned()
                } else {
                    format!(
                        "{} VIOLATION{}",
                        found.count,
                        plural(found.count).to_uppercase()
                    )
                }
            );
            if found.count > 0 {
                let kinds: Vec<String> = found
                    .kinds
                    .iter()
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect();
                let _ = writeln!(out, "      by kind: {}", kinds.join(", "));
            }
            for example in &found.examples {
                let _ = writeln!(
                    out,
                    "      - {} [{}]: {}",
                    example.subject, example.kind, example.detail
                );
            }
        }
        let list = |map: &BTreeMap<String, u64>| -> String {
            map.iter()
                .map(|(what, n)| format!("{what}: {n}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        if !f.in_flight.is_empty() {
            let _ = writeln!(out, "in flight (not violations): {}", list(&f.in_flight));
        }
        if !f.stuck.is_empty() {
            let _ = writeln!(
                out,
                "waiting for an operator (not violations): {}",
                list(&f.stuck)
            );
        }
        for note in &f.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }

    /// The same report for scripts.
    pub fn json(&self) -> Value {
        let f = &self.findings;
        let checks: serde_json::Map<String, Value> = f
            .checks
            .iter()
            .map(|check| {
                let found = &f.found[check];
                (
                    check.name().to_owned(),
                    json!({
                        "check": check.number(),
                        "title": check.title(),
                        "violations": found.count,
                        "kinds": found.kinds,
                        "examples": found.examples.iter().map(|e| json!({
                            "kind": e.kind, "subject": e.subject, "detail": e.detail,
                        })).collect::<Vec<_>>(),
                    }),
                )
            })
            .collect();
        json!({
            "clean": f.violations() == 0,
            "settled": f.in_flight.is_empty(),
            "violations": f.violations(),
            "attempts": self.attempts,
            "elapsed_secs": self.elapsed_secs,
            "checks": checks,
            "in_flight": f.in_flight,
            "waiting_for_operator": f.stuck,
            "notes": f.notes,
            "sources": {
                "topics": self.sources.topics.iter().map(|(t, (p, n))| (t.clone(), json!({"partitions": p, "records": n}))).collect::<serde_json::Map<_, _>>(),
                "rows": self.sources.rows,
            },
        })
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_parse_by_number_or_name() {
        assert_eq!(Check::parse("3").unwrap(), Check::DuplicateEffects);
        assert_eq!(Check::parse(" views ").unwrap(), Check::Views);
        assert!(
            Check::parse("7")
                .unwrap_err()
                .contains("1 (missing-events)")
        );
        for check in Check::ALL {
            assert_eq!(Check::parse(check.name()).unwrap(), check);
        }
    }

    #[test]
    fn examples_are_capped_and_formatted_lazily() {
        let mut findings = Findings::new(&[Check::Order, Check::Views], 2);
        let mut formatted = 0;
        for i in 0..5 {
            findings.violation(Check::Order, "lower-revision", || {
                formatted += 1;
                (format!("order {i}"), "went back".to_owned())
            });
        }
        findings.violation(Check::Stock, "not-run", || {
            unreachable!("stock did not run")
        });
        assert_eq!(formatted, 2);
        assert_eq!(findings.count(Check::Order), 5);
        assert_eq!(findings.count(Check::Views), 0);
        assert_eq!(findings.violations(), 5);
        findings.in_flight("outbox rows not yet published", 2);
        findings.in_flight("outbox rows not yet published", 0);
        let report = Report {
            findings,
            sources: Sources::default(),
            attempts: 1,
            elapsed_secs: 0.25,
        };
        let json = report.json();
        assert_eq!(json["clean"], false);
        assert_eq!(json["checks"]["order"]["violations"], 5);
        assert_eq!(
            json["checks"]["order"]["examples"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(json["checks"]["views"]["violations"], 0);
        assert!(json["checks"].get("stock").is_none());
        assert_eq!(json["in_flight"]["outbox rows not yet published"], 2);
        let text = report.text();
        assert!(
            text.starts_with("pitfall-lab audit: 5 violations"),
            "{text}"
        );
        assert!(text.contains("[4] order"), "{text}");
        assert!(
            text.contains("- order 0 [lower-revision]: went back"),
            "{text}"
        );
        assert!(text.contains("[6] views") && text.contains(" ok"), "{text}");
        assert!(
            text.contains("in flight (not violations): outbox rows not yet published: 2"),
            "{text}"
        );
    }
}
