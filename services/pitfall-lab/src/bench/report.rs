//! `bench report`: turns the results `make bench` collected in a folder (`<name>.json` from the
//! benchmarks that feed a chart, `<name>.txt` with every benchmark's printed output) into
//! `report.md` with PNG charts beside it. Charts are drawn with `plotters` (pure Rust, bitmap
//! backend) in a TrueType font read from the system (`fonts-dejavu-core`, or `BENCH_FONT`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use serde_json::Value;

use super::BoxError;

/// Where a TrueType font is looked for when `BENCH_FONT` is not set.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

const SIZE: (u32, u32) = (1000, 560);

/// What every chart states under its title.
struct Stamp {
    machine: String,
    date: String,
    commit: String,
}

/// Writes `<dir>/report.md` and its charts; returns the report's path.
pub(super) fn run(dir: &Path, machine: &str, commit: &str) -> Result<PathBuf, BoxError> {
    let stamp = Stamp {
        machine: machine.to_owned(),
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        commit: commit.to_owned(),
    };
    let read = |name: &str| -> Option<Value> {
        let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).ok()?;
        serde_json::from_str(&text).ok()
    };
    let charts = load_font().err();
    let mut md = String::new();
    let _ = writeln!(md, "# eda-pitfalls benchmark report\n");
    let _ = writeln!(
        md,
        "Machine: {}. Date: {}. Commit: `{}`. Reproduce with `make bench` (it prints the folder of its report); \
         every ratio below compares modes measured in the same run, since these machines vary by a factor of two between runs.\n",
        stamp.machine, stamp.date, stamp.commit
    );
    if let Some(err) = &charts {
        let _ = writeln!(md, "> Charts were not drawn: {err}\n");
    }
    let _ = writeln!(md, "## Summary\n");
    let _ = writeln!(md, "| what | measured | goal |\n|---|---|---|");
    let mut figures: Vec<(String, String)> = Vec::new();
    let mut draw = |file: &str, caption: &str, result: Result<(), BoxError>| match result {
        Ok(()) => figures.push((file.to_owned(), caption.to_owned())),
        Err(err) => figures.push((String::new(), format!("{caption}: not drawn ({err})"))),
    };

    let drain = read("drain");
    let perf = read("producer-perf");
    if let Some(drain) = &drain {
        let relay = num(drain, "relay_rows_per_second");
        let debezium = num(drain, "debezium_rows_per_second");
        let tool = perf.as_ref().map(|p| num(p, "records_per_second"));
        let _ = writeln!(
            md,
            "| relay drain, {} rows | in-process relay {} rows/s = **{:.1}x Debezium** ({} rows/s){} | >= 3x Debezium, >= 75 % of the producer tool |",
            int(num(drain, "rows")),
            int(relay),
            relay / debezium,
            int(debezium),
            tool.map(|t| format!(
                ", **{:.0} %** of kafka-producer-perf-test ({} records/s)",
                100.0 * relay / t,
                int(t)
            ))
            .unwrap_or_default()
        );
        if charts.is_none() {
            let mut bars = vec![
                ("in-process relay".to_owned(), relay),
                ("Debezium (Outbox Event Router)".to_owned(), debezium),
            ];
            if let Some(t) = tool {
                bars.push(("kafka-producer-perf-test".to_owned(), t));
            }
            let title = format!("Outbox drain: {} rows to Kafka", int(num(drain, "rows")));
            draw(
                "relay.png",
                &title,
                bar_chart(&dir.join("relay.png"), &title, "rows/s", &bars, &stamp),
            );
        }
    }
    if let Some(consumer) = read("consumer") {
        let modes = consumer["modes"].as_array().cloned().unwrap_or_default();
        let rate = |name: &str| {
            modes
                .iter()
                .find(|m| m["mode"] == name)
                .map_or(f64::NAN, |m| num(m, "events_per_second"))
        };
        let batched = rate("event-id, batched");
        let _ = writeln!(
            md,
            "| exactly-once consumer, {} events | event-id batched {} events/s = **{:.1}x** batches of one ({}), **{:.0} %** of no idempotency batched ({}) | >= 5x, >= 90 % |",
            int(num(&consumer, "events")),
            int(batched),
            batched / rate("event-id, batches of one"),
            int(rate("event-id, batches of one")),
            100.0 * batched / rate("no idempotency, batched"),
            int(rate("no idempotency, batched"))
        );
        if charts.is_none() {
            let bars: Vec<(String, f64)> = modes
                .iter()
                .map(|m| {
                    (
                        m["mode"].as_str().unwrap_or("?").to_owned(),
                        num(m, "events_per_second"),
                    )
                })
                .collect();
            let title = format!(
                "Consumer modes: {} events, 6 partitions, upsert + outbox row per event",
                int(num(&consumer, "events"))
            );
            draw(
                "consumer.png",
                &title,
                bar_chart(&dir.join("consumer.png"), &title, "events/s", &bars, &stamp),
            );
        }
    }
    if let Some(http) = read("http") {
        let closed = http["closed_loop"].as_array().cloned().unwrap_or_default();
        let rate = |name: &str| {
            closed
                .iter()
                .find(|m| m["mode"] == name)
                .map_or(f64::NAN, |m| num(m, "orders_per_second"))
        };
        let _ = writeln!(
            md,
            "| POST /orders, closed loop, {} clients | outbox {} orders/s = **{:.0} %** of direct ({}); outbox rows only (no relay) {:.0} % | >= 85 % |",
            int(num(&http, "concurrency")),
            int(rate("outbox")),
            100.0 * rate("outbox") / rate("direct"),
            int(rate("direct")),
            100.0 * rate("outbox, rows only") / rate("direct")
        );
        let open = http["open_loop"].as_array().cloned().unwrap_or_default();
        for entry in &open {
            if entry["mode"] == "outbox" {
                let _ = writeln!(
                    md,
                    "| POST /orders, open loop at {} orders/s, outbox | p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms (from the scheduled arrival) | - |",
                    int(num(entry, "rate")),
                    at(&entry["corrected"], 0.5),
                    at(&entry["corrected"], 0.99),
                    at(&entry["corrected"], 0.999)
                );
            }
        }
        if charts.is_none() {
            let bars: Vec<(String, f64)> = closed
                .iter()
                .map(|m| {
                    (
                        m["mode"].as_str().unwrap_or("?").to_owned(),
                        num(m, "orders_per_second"),
                    )
                })
                .collect();
            let title = format!(
                "POST /orders, closed loop, {} clients",
                int(num(&http, "concurrency"))
            );
            draw(
                "http.png",
                &title,
                bar_chart(&dir.join("http.png"), &title, "orders/s", &bars, &stamp),
            );
            if !open.is_empty() {
                let series: Vec<(String, Vec<(f64, f64)>)> = open
                    .iter()
                    .map(|e| {
                        (
                            format!(
                                "{} orders/s, {}",
                                int(num(e, "rate")),
                                e["mode"].as_str().unwrap_or("?")
                            ),
                            points(&e["corrected"]),
                        )
                    })
                    .collect();
                let title = "POST /orders response time, open loop (from the scheduled arrival)";
                draw(
                    "http-latency.png",
                    title,
                    percentile_chart(&dir.join("http-latency.png"), title, &series, &stamp),
                );
            }
        }
    }
    if let Some(latency) = read("latency") {
        let rates = latency["rates"].as_array().cloned().unwrap_or_default();
        for entry in &rates {
            let _ = writeln!(
                md,
                "| commit -> consumer at {} events/s, open loop | p50 {:.1} ms, **p99 {:.1} ms**, p99.9 {:.1} ms; scheduled -> consumer p99 {:.1} ms | p99 <= 25 ms at 2,000/s |",
                int(num(entry, "rate")),
                at(&entry["commit_to_consumer"], 0.5),
                at(&entry["commit_to_consumer"], 0.99),
                at(&entry["commit_to_consumer"], 0.999),
                at(&entry["scheduled_to_consumer"], 0.99)
            );
        }
        if charts.is_none() && !rates.is_empty() {
            let series: Vec<(String, Vec<(f64, f64)>)> = rates
                .iter()
                .map(|e| {
                    (
                        format!("{} events/s", int(num(e, "rate"))),
                        points(&e["commit_to_consumer"]),
                    )
                })
                .collect();
            let title = "Commit -> consumer latency through the in-process relay, open loop";
            draw(
                "latency.png",
                title,
                percentile_chart(&dir.join("latency.png"), title, &series, &stamp),
            );
        }
    }

    let _ = writeln!(md, "\n## Charts\n");
    for (file, caption) in &figures {
        if file.is_empty() {
            let _ = writeln!(md, "- {caption}");
        } else {
            let _ = writeln!(md, "### {caption}\n\n![{caption}]({file})\n");
        }
    }
    let _ = writeln!(md, "\n## Every benchmark's output\n");
    let mut outputs: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    outputs.sort();
    for path in outputs {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("?")
            .to_owned();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = writeln!(md, "### {name}\n\n```text\n{}\n```\n", text.trim_end());
    }
    let _ = writeln!(md, "Raw numbers: the `.json` files beside this report.");
    let report = dir.join("report.md");
    std::fs::write(&report, md)?;
    Ok(report)
}

fn num(value: &Value, key: &str) -> f64 {
    value[key].as_f64().unwrap_or(f64::NAN)
}

/// `1234567.8` as `1,234,568`.
fn int(value: f64) -> String {
    if !value.is_finite() {
        return "?".to_owned();
    }
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0.0 { format!("-{out}") } else { out }
}

/// `[[quantile, ms], ...]` as points.
fn points(curve: &Value) -> Vec<(f64, f64)> {
    curve
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// Milliseconds at `quantile` of a curve (NaN when it has no such point).
fn at(curve: &Value, quantile: f64) -> f64 {
    points(curve)
        .into_iter()
        .find(|(q, _)| (q - quantile).abs() < 1e-9)
        .map_or(f64::NAN, |(_, ms)| ms)
}

/// A quantile on the "nines" axis: p90 at 1, p99 at 2, p99.9 at 3; the maximum at 5.
fn nines(quantile: f64) -> f64 {
    if quantile >= 1.0 {
        5.0
    } else {
        (-(1.0 - quantile).log10()).clamp(0.0, 5.0)
    }
}

fn nines_label(x: f64) -> String {
    match x.round() as i64 {
        1 => "p90".to_owned(),
        2 => "p99".to_owned(),
        3 => "p99.9".to_owned(),
        4 => "p99.99".to_owned(),
        5 => "max".to_owned(),
        _ => String::new(),
    }
}

/// Registers the TrueType font the charts are written in.
fn load_font() -> Result<(), BoxError> {
    let candidates: Vec<String> = match std::env::var("BENCH_FONT") {
        Ok(path) if !path.is_empty() => vec![path],
        _ => FONTS.iter().map(|s| (*s).to_owned()).collect(),
    };
    let path = candidates
        .iter()
        .find(|p| Path::new(p).is_file())
        .ok_or_else(|| {
            format!(
                "no TrueType font at {}: install fonts-dejavu-core (infra/deps.sh does) or set BENCH_FONT",
                candidates.join(", ")
            )
        })?;
    let bytes: &'static [u8] = Box::leak(std::fs::read(path)?.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| format!("{path} is not a usable TrueType font"))?;
    Ok(())
}

/// Title, then machine, date and commit, at the top of `root`; the rest of the area is returned.
fn header<'b>(
    root: &DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>,
    title: &str,
    stamp: &Stamp,
) -> Result<DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>, BoxError> {
    root.fill(&WHITE)?;
    let (top, rest) = root.split_vertically(64);
    top.draw_text(
        title,
        &("sans-serif", 22).into_font().color(&BLACK),
        (14, 10),
    )?;
    let subtitle = format!(
        "{} · {} · commit {}",
        stamp.machine, stamp.date, stamp.commit
    );
    top.draw_text(
        &subtitle,
        &("sans-serif", 14).into_font().color(&RGBColor(90, 90, 90)),
        (14, 40),
    )?;
    Ok(rest)
}

/// Horizontal bars, one per item, the value written at the end of each.
fn bar_chart(
    path: &Path,
    title: &str,
    unit: &str,
    items: &[(String, f64)],
    stamp: &Stamp,
) -> Result<(), BoxError> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    let area = header(&root, title, stamp)?;
    let max = items
        .iter()
        .map(|(_, v)| *v)
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max);
    let labels: Vec<String> = items.iter().map(|(l, _)| l.clone()).collect();
    let mut chart = ChartBuilder::on(&area)
        .margin(16)
        .x_label_area_size(36)
        .y_label_area_size(250)
        .build_cartesian_2d(0f64..max * 1.2, (0..items.len()).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc(unit)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_label_formatter(&|x| int(*x))
        .label_style(("sans-serif", 15))
        .draw()?;
    chart.draw_series(items.iter().enumerate().map(|(i, (_, v))| {
        let color = Palette99::pick(i).to_rgba();
        let mut bar = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(i)),
                (*v, SegmentValue::Exact(i + 1)),
            ],
            color.filled(),
        );
        bar.set_margin(8, 8, 0, 0);
        bar
    }))?;
    chart.draw_series(items.iter().enumerate().map(|(i, (_, v))| {
        Text::new(
            format!(" {}", int(*v)),
            (*v, SegmentValue::CenterOf(i)),
            ("sans-serif", 15).into_font(),
        )
    }))?;
    root.present()?;
    Ok(())
}

/// Latency against percentile (the "nines" axis), one line per series.
fn percentile_chart(
    path: &Path,
    title: &str,
    series: &[(String, Vec<(f64, f64)>)],
    stamp: &Stamp,
) -> Result<(), BoxError> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    let area = header(&root, title, stamp)?;
    let max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, ms)| *ms))
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&area)
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..5.2f64, 0f64..max * 1.1)?;
    chart
        .configure_mesh()
        .x_labels(6)
        .x_label_formatter(&|x| nines_label(*x))
        .x_desc("percentile (p50 at the left edge's first point)")
        .y_desc("ms")
        .label_style(("sans-serif", 15))
        .draw()?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let line: Vec<(f64, f64)> = points.iter().map(|(q, ms)| (nines(*q), *ms)).collect();
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(line.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_put_each_nine_one_step_further() {
        assert!((nines(0.9) - 1.0).abs() < 1e-9);
        assert!((nines(0.99) - 2.0).abs() < 1e-9);
        assert!((nines(0.999) - 3.0).abs() < 1e-9);
        assert_eq!(nines(1.0), 5.0);
        assert_eq!(nines_label(2.0), "p99");
    }

    #[test]
    fn integers_get_thousands_separators() {
        assert_eq!(int(1_234_567.8), "1,234,568");
        assert_eq!(int(999.0), "999");
        assert_eq!(int(f64::NAN), "?");
    }

    #[test]
    fn a_curve_is_read_at_its_quantiles() {
        let curve = serde_json::json!([[0.5, 3.0], [0.99, 21.5], [1.0, 40.0]]);
        assert_eq!(at(&curve, 0.99), 21.5);
        assert!(at(&curve, 0.9).is_nan());
    }
}
