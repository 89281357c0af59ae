//! `bench consumer`: consumer throughput on the same events with each way of deduplicating
//! (by event id, by offsets kept in the database, none), batched and one event per
//! transaction; plus what the dedupe table costs.

use std::time::Duration;

use eda_idempotent_consumer::{Consumer, ConsumerConfig, Dedupe};
use eda_stack_admin::{Stack, unique};

use super::BoxError;
use super::common::{delete_topic, drop_database, report, save_result, status_kib};
use super::counted::{
    CountAndEmit, consume_all_events, counting_database, produce_counted, topic_with_dlq,
};

/// The consumer modes compared, on the same events, each on a fresh database: the name, the
/// dedupe, the most events per transaction, whether the handler applies a batch in two
/// statements (`handle_batch`) or calls `handle` per event (the trait's default).
const MODES: [(&str, Dedupe, usize, bool); 6] = [
    ("event-id, batches of one", Dedupe::EventId, 1, true),
    ("event-id, batched", Dedupe::EventId, 500, true),
    ("offsets in db, batched", Dedupe::Offsets, 500, true),
    ("no idempotency, batched", Dedupe::Off, 500, true),
    ("no idempotency, one by one", Dedupe::Off, 1, true),
    ("event-id, batched, handle()", Dedupe::EventId, 500, false),
];

/// [`CountAndEmit`] without its `handle_batch`: the runtime's default calls `handle` for each
/// event of the batch (one transaction, per-event statements).
struct PerEvent(CountAndEmit);

impl eda_idempotent_consumer::Handler for PerEvent {
    async fn handle(
        &self,
        event: &eda_idempotent_consumer::Event,
        tx: &mut sqlx::PgConnection,
    ) -> Result<(), eda_idempotent_consumer::HandlerError> {
        self.0.handle(event, tx).await
    }
}

/// Produces the events once, then consumes them in each mode (see [`MODES`]) with the
/// benchmark's handler: a counter upsert and an emitted outbox event per event.
pub(super) async fn run(stack: &Stack, events: usize) -> Result<(), BoxError> {
    let (topic, dlq) = topic_with_dlq(stack).await?;
    produce_counted(stack, &topic, events, &[]).await?;

    let mut out = vec![format!(
        "== consumer throughput: {events} events, 6 partitions, handler = counter upsert + outbox row =="
    )];
    let mut rates = Vec::new();
    let mut modes = Vec::new();
    for (name, dedupe, batch, batch_aware) in MODES {
        let (db, pool) = counting_database(stack).await?;
        let mut config =
            ConsumerConfig::new(&stack.kafka_bootstrap_servers, &unique("bench"), &[&topic]);
        config.dedupe = dedupe;
        config.batch_max_events = batch;
        let handler = CountAndEmit {
            propagation: eda_context::Propagation::On,
        };
        let (secs, batches) = if batch_aware {
            let consumer = Consumer::new(pool.clone(), config, handler)?;
            let metrics = consumer.metrics();
            (
                consume_all_events(consumer, events).await?,
                metrics.batches(),
            )
        } else {
            let consumer = Consumer::new(pool.clone(), config, PerEvent(handler))?;
            let metrics = consumer.metrics();
            (
                consume_all_events(consumer, events).await?,
                metrics.batches(),
            )
        };
        let rate = events as f64 / secs;
        rates.push(rate);
        modes.push(
            serde_json::json!({ "mode": name, "events_per_second": rate, "transactions": batches }),
        );
        let mut line = format!(
            "{name:<28}: {rate:>6.0} events/s ({secs:.1} s, {batches} transactions of 2+ events), process peak RSS {:.1} MiB",
            peak_rss_mib()
        );
        if dedupe == Dedupe::EventId && batch > 1 && batch_aware {
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
    out.push(format!(
        "ratios: event-id batched / batches of one = {:.1}x (goal >= 5x); event-id batched / no idempotency batched = {:.0} % (goal >= 90 %)",
        rates[1] / rates[0],
        100.0 * rates[1] / rates[3]
    ));
    report(&out);
    save_result(
        "consumer",
        &serde_json::json!({ "events": events, "partitions": 6, "modes": modes }),
    );
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
