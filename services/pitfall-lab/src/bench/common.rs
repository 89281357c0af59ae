//! What several benchmarks share: scratch databases and topics on the stack (through
//! eda-stack-admin, as the tests do), the outbox backlog and how to watch it drain, and the
//! printed report.

use std::time::{Duration, Instant};

use eda_stack_admin::{Stack, unique};
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::json;
use sqlx::PgPool;

use super::BoxError;

/// A scratch database with the outbox schema and a pool on it; [`drop_database`] removes it.
pub(super) async fn scratch_database(stack: &Stack) -> Result<(String, PgPool), BoxError> {
    let name = eda_stack_admin::create_database(stack, "bench").await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(32)
        .connect(&stack.database_url(&name))
        .await?;
    eda_outbox::migrate(&pool).await?;
    Ok((name, pool))
}

/// Closes `pool` and drops the scratch database `name`.
pub(super) async fn drop_database(stack: &Stack, name: &str, pool: PgPool) -> Result<(), BoxError> {
    pool.close().await;
    eda_stack_admin::drop_database(stack, name).await?;
    Ok(())
}

/// A fresh topic (`bench_<random>`) with `partitions` partitions.
pub(super) async fn create_topic(stack: &Stack, partitions: i32) -> Result<String, BoxError> {
    let topic = unique("bench");
    eda_stack_admin::create_topic(stack, &topic, partitions).await?;
    Ok(topic)
}

/// Deletes a benchmark's topic; a failure only leaves a topic behind, so it is not reported.
pub(super) async fn delete_topic(stack: &Stack, topic: &str) {
    let _ = eda_stack_admin::delete_topic(stack, topic).await;
}

/// Messages in a topic: the sum of its partitions' high watermarks (cheap, no consuming).
pub(super) fn topic_size(consumer: &BaseConsumer, topic: &str) -> Result<i64, BoxError> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    let mut total = 0;
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p as i32, Duration::from_secs(10))?;
        total += high - low;
    }
    Ok(total)
}

/// Waits until `topic` holds `at_least` messages; returns when it did.
pub(super) async fn wait_topic_size(
    stack: &Stack,
    topic: &str,
    at_least: i64,
    timeout: Duration,
) -> Result<Instant, BoxError> {
    let consumer: BaseConsumer = stack.kafka_config().create()?;
    let deadline = Instant::now() + timeout;
    loop {
        let size = tokio::task::block_in_place(|| topic_size(&consumer, topic))?;
        if size >= at_least {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(format!("{topic}: {size} of {at_least} messages after {timeout:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes `rows` outbox rows server-side (generate_series), 1,000 aggregates, in chunks.
pub(super) async fn bulk_insert(
    pool: &PgPool,
    topic: &str,
    rows: i64,
    payload_bytes: usize,
) -> Result<(), BoxError> {
    let payload = json!({ "pad": "x".repeat(payload_bytes.saturating_sub(10)) }).to_string();
    let mut done = 0;
    while done < rows {
        let n = (rows - done).min(100_000);
        sqlx::query(
            "INSERT INTO outbox (event_id, topic, aggregate_type, aggregate_id, event_type, revision, occurred_at, \
             content_type, schema_version, payload) \
             SELECT gen_random_uuid(), $1, 'Order', 'order-' || (g % 1000), 'OrderPlaced', ((g / 1000) + 1)::text, \
             to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), 'application/json', '1', $2 \
             FROM generate_series($3::bigint, $4::bigint) AS g",
        )
        .bind(topic)
        .bind(&payload)
        .bind(done + 1)
        .bind(done + n)
        .execute(pool)
        .await?;
        done += n;
    }
    Ok(())
}

/// The value of `key` (e.g. `VmHWM:`) in a `/proc/<pid>/status` text, in KiB.
pub(super) fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// The `p` quantile (0..=1) of `sorted`, nearest rank; NaN when there is nothing.
pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

/// Prints a result block.
#[allow(clippy::print_stdout)] // results are the program's output
pub(super) fn report(lines: &[String]) {
    for l in lines {
        println!("{l}");
    }
}

/// Where `make bench` collects the results its report is drawn from: the folder named by
/// `BENCH_RESULTS_DIR`. A benchmark run alone (no such variable) only prints.
pub(super) fn results_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("BENCH_RESULTS_DIR")
        .filter(|dir| !dir.is_empty())
        .map(std::path::PathBuf::from)
}

/// Writes `value` as `<BENCH_RESULTS_DIR>/<name>.json` for the report (`bench report`); a
/// no-op without that folder. A failed write is reported, not fatal: the numbers are printed.
#[allow(clippy::print_stderr)]
pub(super) fn save_result(name: &str, value: &serde_json::Value) {
    let Some(dir) = results_dir() else { return };
    let path = dir.join(format!("{name}.json"));
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&path, serde_json::to_vec_pretty(value).unwrap_or_default()));
    if let Err(err) = written {
        eprintln!("pitfall-lab: cannot write {}: {err}", path.display());
    }
}

/// Telemetry as a service sets it up (spans exported over OTLP) when `export`, else none at all.
/// Logs at warn: the benchmarks measure propagation and spans, not log lines.
pub(super) fn bench_telemetry(
    export: bool,
) -> Result<Option<eda_telemetry::TelemetryGuard>, BoxError> {
    if !export {
        return Ok(None);
    }
    let mut config = eda_telemetry::TelemetryConfig::from_env("pitfall-lab-bench");
    config.log_filter = "warn".to_owned();
    Ok(Some(eda_telemetry::init(config)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_the_nearest_rank() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 0.5), 51.0);
        assert_eq!(percentile(&sorted, 0.99), 99.0);
        assert_eq!(percentile(&sorted, 1.0), 100.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn status_kib_reads_one_line_of_proc_status() {
        let status = "Name:\tpitfall-lab\nVmHWM:\t  20480 kB\nVmRSS:\t  10240 kB\n";
        assert_eq!(status_kib(status, "VmHWM:"), Some(20480));
        assert_eq!(status_kib(status, "VmRSS:"), Some(10240));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }
}
