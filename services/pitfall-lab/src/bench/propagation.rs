//! `bench propagation`: what carrying context costs per event in a consumer that emits
//! (extract, spans, inject, export), `--propagation on` vs `off`; one process per setting, since
//! telemetry is set up once per process.

use eda_idempotent_consumer::{Consumer, ConsumerConfig};
use eda_stack_admin::{Stack, unique};

use super::BoxError;
use super::common::{bench_telemetry, delete_topic, drop_database, report};
use super::counted::{
    CountAndEmit, consume_all_events, counting_database, produce_counted, topic_with_dlq,
};

/// Produces events with an upstream context, consumes and re-emits them, reports events/s.
pub(super) async fn run(
    stack: &Stack,
    events: usize,
    propagation: eda_context::Propagation,
    export: bool,
) -> Result<(), BoxError> {
    let _telemetry = bench_telemetry(export)?;
    let (topic, dlq) = topic_with_dlq(stack).await?;
    let (trace_id, span_id) = eda_jaeger_query::random_trace_ids();
    // What an upstream service writes: a sampled traceparent and the contract's ids.
    let context = [
        (
            "traceparent",
            // Its own trace per run: a fixed id would gather every run into one huge trace.
            format!("00-{trace_id}-{span_id}-01"),
        ),
        ("request-id", "bench-request".to_owned()),
        ("correlation-id", "bench-flow".to_owned()),
        ("user-id", "bench-user".to_owned()),
    ];
    produce_counted(stack, &topic, events, &context).await?;

    let (db, pool) = counting_database(stack).await?;
    let mut config =
        ConsumerConfig::new(&stack.kafka_bootstrap_servers, &unique("bench"), &[&topic]);
    config.propagation = propagation;
    let secs = consume_all_events(
        Consumer::new(pool.clone(), config, CountAndEmit { propagation })?,
        events,
    )
    .await?;
    let with_trace: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE traceparent IS NOT NULL")
            .fetch_one(&pool)
            .await?;
    report(&[format!(
        "propagation={propagation:<3} span export={:<3}: {:>6.0} events/s ({events} events, {secs:.1} s; emitted rows with a traceparent: {with_trace})",
        if export { "on" } else { "off" },
        events as f64 / secs,
    )]);
    drop_database(stack, &db, pool).await?;
    delete_topic(stack, &topic).await;
    delete_topic(stack, &dlq).await;
    Ok(())
}
