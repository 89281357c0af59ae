//! Open-loop load at a fixed arrival rate, and latency histograms that tell the truth about it.
//!
//! A closed-loop client (send, wait for the answer, send the next) slows down when the system
//! does, so it stops sending exactly when latency is bad and never measures the requests that
//! would have queued meanwhile ("coordinated omission"). Here every operation has a scheduled
//! start (`i / rate` after the run's start) and is started then, whether or not the earlier ones
//! finished; its latency counts from the scheduled start, so time spent queued behind a slow
//! moment is counted too. The uncorrected latency (from the actual start) is kept beside it.
//! Histograms are HDR histograms (microseconds, 3 significant digits).

use std::future::Future;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

use super::BoxError;

/// Percentiles a report shows, as quantiles.
pub(super) const QUANTILES: &[f64] = &[0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 0.9999, 1.0];

/// Latency histogram in microseconds, 1 µs to 10 min.
pub(super) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Records `latency` (saturating at the histogram's range).
pub(super) fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.max(1));
}

/// Milliseconds at `quantile`.
pub(super) fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

/// `p50 .. max` in milliseconds, for a printed line.
pub(super) fn summary(histogram: &Histogram<u64>) -> String {
    format!(
        "p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1} ms",
        ms(histogram, 0.5),
        ms(histogram, 0.9),
        ms(histogram, 0.99),
        ms(histogram, 0.999),
        ms(histogram, 1.0)
    )
}

/// The percentile curve of a histogram for the report: `[[quantile, ms], ...]`.
pub(super) fn curve(histogram: &Histogram<u64>) -> serde_json::Value {
    json!(
        QUANTILES
            .iter()
            .map(|q| json!([q, ms(histogram, *q)]))
            .collect::<Vec<_>>()
    )
}

/// What one operation reports: when it was scheduled, started and finished, and whether it
/// succeeded.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    pub scheduled: Instant,
    pub started: Instant,
    pub finished: Instant,
    pub ok: bool,
}

/// An open-loop run's outcome.
pub(super) struct Outcome {
    /// Per operation, by index.
    pub timings: Vec<Timing>,
    /// Index of the first measured operation: those before it ran during the warm-up.
    pub measured_from: usize,
    /// Operations per second actually started (below the target when the scheduler itself
    /// could not keep up).
    pub achieved_rate: f64,
}

impl Outcome {
    /// Latency from the scheduled start (coordinated omission corrected) and from the actual
    /// start, of the operations that succeeded; and how many failed.
    pub fn histograms(&self) -> (Histogram<u64>, Histogram<u64>, usize) {
        let (mut corrected, mut raw) = (histogram(), histogram());
        let mut errors = 0;
        for t in &self.timings[self.measured_from.min(self.timings.len())..] {
            if t.ok {
                record(&mut corrected, t.finished - t.scheduled);
                record(&mut raw, t.finished - t.started);
            } else {
                errors += 1;
            }
        }
        (corrected, raw, errors)
    }
}

/// Seconds at the target rate before the measured window: pools fill, caches warm, the first
/// autovacuum of the fresh tables passes. Their operations run but are not counted.
pub(super) const WARM_UP_SECONDS: u64 = 3;

/// Starts `op(i)` for i in `0..rate * (WARM_UP_SECONDS + seconds)` at `start + i / rate`, each in
/// its own task, and waits for all of them. A progress bar on the terminal shows how many were
/// started.
pub(super) async fn run<F, Fut>(
    label: &str,
    rate: u64,
    seconds: u64,
    op: F,
) -> Result<Outcome, BoxError>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    let measured_from = rate * WARM_UP_SECONDS;
    let total = measured_from + rate * seconds;
    let progress = indicatif::ProgressBar::new(total).with_message(label.to_owned());
    progress.set_style(
        indicatif::ProgressStyle::with_template("  {msg} [{elapsed_precise}] {bar:30} {pos}/{len}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled).await;
        let operation = op(i);
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let ok = operation.await;
            Timing {
                scheduled: scheduled.into_std(),
                started,
                finished: Instant::now(),
                ok,
            }
        }));
        if i % 256 == 0 {
            progress.set_position(i);
        }
    }
    let achieved_rate = total as f64 / start.elapsed().as_secs_f64();
    progress.finish_and_clear();
    let mut timings = Vec::with_capacity(tasks.len());
    for task in tasks {
        timings.push(task.await?);
    }
    Ok(Outcome {
        timings,
        measured_from: measured_from as usize,
        achieved_rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_counts_from_the_scheduled_start() {
        let scheduled = Instant::now();
        let outcome = Outcome {
            timings: vec![
                Timing {
                    scheduled,
                    started: scheduled + Duration::from_millis(90),
                    finished: scheduled + Duration::from_millis(100),
                    ok: true,
                },
                Timing {
                    scheduled,
                    started: scheduled,
                    finished: scheduled + Duration::from_millis(5),
                    ok: false,
                },
            ],
            measured_from: 0,
            achieved_rate: 1.0,
        };
        let (corrected, raw, errors) = outcome.histograms();
        assert_eq!(errors, 1);
        assert_eq!(corrected.len(), 1);
        assert!(
            (ms(&corrected, 1.0) - 100.0).abs() < 0.2,
            "{}",
            ms(&corrected, 1.0)
        );
        assert!((ms(&raw, 1.0) - 10.0).abs() < 0.1, "{}", ms(&raw, 1.0));
    }

    #[test]
    fn the_curve_lists_every_quantile() {
        let mut h = histogram();
        for v in 1..=1000u64 {
            record(&mut h, Duration::from_micros(v * 1000));
        }
        let curve = curve(&h);
        let points = curve.as_array().unwrap();
        assert_eq!(points.len(), QUANTILES.len());
        assert!((points[0][1].as_f64().unwrap() - 500.0).abs() < 1.0);
        assert!((points.last().unwrap()[1].as_f64().unwrap() - 1000.0).abs() < 1.0);
    }
}
