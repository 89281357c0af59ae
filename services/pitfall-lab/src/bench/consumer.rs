//! `bench consumer`: consumer throughput on the same events with each way of deduplicating:
//! by event id, by offsets kept in the database, and none; plus what the dedupe table costs.

use std::time::Duration;

use eda_idempotent_consumer::{Consumer, ConsumerConfig, Dedupe};
use eda_stack_admin::{Stack, unique};

use super::BoxError;
use super::common::{delete_topic, drop_database, report, status_kib};
use super::counted::{
    Count, consume_all_events, counting_database, produce_counted, topic_with_dlq,
};

/// Produces the events once, then consumes them with each dedupe mode on a fresh database.
pub(super) async fn run(stack: &Stack, events: usize) -> Result<(), BoxError> {
    let (topic, dlq) = topic_with_dlq(stack).await?;
    produce_counted(stack, &topic, events, &[]).await?;

    let mut out = vec![format!(
        "== consumer throughput: {events} events, 6 partitions, one transaction per event =="
    )];
    for (name, dedupe) in [
        ("event-id dedupe", Dedupe::EventId),
        ("offsets in db", Dedupe::Offsets),
        ("no idempotency", Dedupe::Off),
    ] {
        let (db, pool) = counting_database(stack).await?;
        let mut config =
            ConsumerConfig::new(&stack.kafka_bootstrap_servers, &unique("bench"), &[&topic]);
        config.dedupe = dedupe;
        let secs = consume_all_events(Consumer::new(pool.clone(), config, Count)?, events).await?;
        let mut line = format!(
            "{name:<16}: {:>6.0} events/s ({secs:.1} s), process peak RSS {:.1} MiB",
            events as f64 / secs,
            peak_rss_mib()
        );
        if dedupe == Dedupe::EventId {
            let (rows, bytes): (i64, i64) = sqlx::query_as(
                "SELECT count(*), pg_total_relation_size('processed_events') FROM processed_events",
            )
            .fetch_one(&pool)
            .await?;
            let pruned = eda_idempotent_consumer::prune_processed(&pool, Duration::ZERO).await?;
            sqlx::query("VACUUM FULL processed_events")
                .execute(&pool)
                .await?;
            let after: i64 =
                sqlx::query_scalar("SELECT pg_total_relation_size('processed_events')")
                    .fetch_one(&pool)
                    .await?;
            line.push_str(&format!(
                "; processed_events {rows} rows / {:.1} MiB, after retention (prune {pruned} rows + VACUUM FULL) {:.2} MiB",
                bytes as f64 / 1_048_576.0,
                after as f64 / 1_048_576.0
            ));
        }
        out.push(line);
        drop_database(stack, &db, pool).await?;
    }
    report(&out);
    delete_topic(stack, &topic).await;
    delete_topic(stack, &dlq).await;
    Ok(())
}

/// This process's peak resident memory (`VmHWM`), in MiB; NaN where /proc is not there.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| status_kib(&status, "VmHWM:"))
        .map_or(f64::NAN, |kib| kib as f64 / 1024.0)
}
