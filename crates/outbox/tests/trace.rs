//! The outbox hop keeps the trace: a row's `traceparent` is the parent of the relay's publish
//! span, and the record carries the publish span's context; with `Propagation::Off` the row
//! passes unchanged and the publish span starts its own trace. Jaeger is the judge.
//! (Its own test binary: telemetry installs a process-wide subscriber.)

mod common;

use std::time::Duration;

use eda_context::Propagation;
use eda_outbox::{Relay, RelayConfig, enqueue, migrate};
use eda_test_support::{
    Jaeger, Stack, TempDatabase, consume_all, create_topic, header, kafka_config, unique,
};
use rdkafka::Message as _;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_span_continues_the_rows_trace_and_hands_itself_to_kafka() {
    let service = unique("outbox-trace-test");
    let mut telemetry = eda_telemetry::TelemetryConfig::from_env(&service);
    telemetry.service_name.clone_from(&service);
    // Spans go to Jaeger; log lines are not what this test reads.
    let (trace_id, writer_span) = eda_test_support::jaeger::random_trace_ids();
    let guard = eda_telemetry::init_with_writer(telemetry, std::io::sink).expect("telemetry");

    let stack = Stack::from_env();
    let db = TempDatabase::create(&stack).await;
    let pool = db.pool().await;
    migrate(&pool).await.unwrap();
    let topic = create_topic(&stack, 1).await;

    // Row 1: written inside a traced request. Row 2: written without any trace.
    let traced = common::event(&topic, "traced", 1)
        .with_headers([
            ("traceparent", format!("00-{trace_id}-{writer_span}-01")),
            ("tracestate", "vendor=1".to_owned()),
            ("request-id", "req-1".to_owned()),
        ])
        .unwrap();
    let untraced = common::event(&topic, "untraced", 1);
    let mut tx = pool.begin().await.unwrap();
    enqueue(&mut tx, &traced).await.unwrap();
    enqueue(&mut tx, &untraced).await.unwrap();
    tx.commit().await.unwrap();

    let stop = CancellationToken::new();
    let relay = Relay::new(pool.clone(), kafka_config(&stack), RelayConfig::default())
        .expect("relay settings");
    let running = tokio::spawn(relay.run(stop.clone()));
    let messages = consume_all(&stack, &topic, 2, WAIT, Duration::ZERO).await;
    stop.cancel();
    running.await.unwrap();
    guard.flush().unwrap();

    let by_key = |key: &str| {
        messages
            .iter()
            .find(|m| m.key() == Some(key.as_bytes()))
            .unwrap()
    };
    let sent = header(by_key("traced"), "traceparent").unwrap();
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts[1], trace_id.as_str(), "same trace");
    assert_ne!(
        parts[2],
        writer_span.as_str(),
        "the record names the publish span, not the writer"
    );
    assert_eq!(
        header(by_key("traced"), "tracestate").as_deref(),
        Some("vendor=1")
    );
    assert_eq!(
        header(by_key("untraced"), "traceparent"),
        None,
        "no trace is invented for a row written without one (Debezium parity)"
    );

    let jaeger = Jaeger::from_env();
    let traces = jaeger
        .wait_for(&service, &[("request_id", "req-1")], WAIT, |t| t.len() == 1)
        .await;
    assert_eq!(traces.len(), 1, "{traces:#?}");
    let send = traces[0]
        .find(&service, &format!("send {topic}"))
        .next()
        .expect("the publish span");
    assert_eq!(traces[0].id, trace_id);
    assert_eq!(
        send.parent.as_deref(),
        Some(writer_span.as_str()),
        "child of the writer's span"
    );
    assert_eq!(send.span_id, parts[2]);
    assert_eq!(send.tag("span.kind"), Some("producer"));
    assert_eq!(send.tag("messaging.system"), Some("kafka"));
    assert_eq!(send.tag("messaging.operation.type"), Some("send"));
    assert_eq!(send.tag("messaging.destination.name"), Some(topic.as_str()));
    assert_eq!(send.tag("messaging.destination.partition.id"), Some("0"));
    assert!(send.tag("messaging.kafka.offset").is_some());
    assert_eq!(
        send.tag("messaging.message.id"),
        Some(traced.event_id().to_string().as_str())
    );

    // Off: the row's header passes unchanged, and the publish span is a root of its own.
    let topic_off = create_topic(&stack, 1).await;
    let naive = common::event(&topic_off, "naive", 1)
        .with_headers([
            ("traceparent", format!("00-{trace_id}-{writer_span}-01")),
            ("request-id", "req-off".to_owned()),
        ])
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    enqueue(&mut tx, &naive).await.unwrap();
    tx.commit().await.unwrap();
    let stop = CancellationToken::new();
    let config = RelayConfig {
        propagation: Propagation::Off,
        ..RelayConfig::default()
    };
    let running = tokio::spawn(
        Relay::new(pool.clone(), kafka_config(&stack), config)
            .expect("relay settings")
            .run(stop.clone()),
    );
    let messages = consume_all(&stack, &topic_off, 1, WAIT, Duration::ZERO).await;
    stop.cancel();
    running.await.unwrap();
    guard.flush().unwrap();
    assert_eq!(
        header(&messages[0], "traceparent"),
        Some(format!("00-{trace_id}-{writer_span}-01"))
    );
    let traces = jaeger
        .wait_for(&service, &[("request_id", "req-off")], WAIT, |t| {
            t.len() == 1
        })
        .await;
    assert_eq!(traces.len(), 1, "{traces:#?}");
    assert_ne!(traces[0].id, trace_id, "a new trace");
    assert!(traces[0].spans.iter().all(|s| s.parent.is_none()));
}
