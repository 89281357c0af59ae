//! Each event is handled in a consumer span that continues the record's trace (OpenTelemetry
//! messaging conventions), the handler sees the record's context, and what it emits names the
//! consumer span as parent; with `Propagation::Off` nothing is read. Jaeger is the judge.
//! (Its own test binary: telemetry installs a process-wide subscriber.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eda_idempotent_consumer::{
    Consumer, ConsumerConfig, Event, EventContext, Handler, HandlerError, Propagation, migrate,
};
use eda_test_support::jaeger::Trace;
use eda_test_support::{
    Jaeger, Stack, TempDatabase, create_topic, create_topic_named, produce, unique,
};
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

type Seen = Arc<Mutex<Vec<(EventContext, Vec<(&'static str, String)>)>>>;

/// Records what the handler sees and what it would write on an emitted event.
struct Record {
    seen: Seen,
    propagation: Propagation,
}

impl Handler for Record {
    async fn handle(&self, event: &Event, _tx: &mut PgConnection) -> Result<(), HandlerError> {
        let outgoing = event.outgoing_context(self.propagation);
        self.seen
            .lock()
            .unwrap()
            .push((event.context.clone(), outgoing));
        Ok(())
    }
}

/// The single trace holding the process span of `event_id`.
async fn trace_of(jaeger: &Jaeger, service: &str, event_id: &str) -> Trace {
    let mut traces = jaeger
        .wait_for(service, &[("messaging.message.id", event_id)], WAIT, |t| {
            t.len() == 1
        })
        .await;
    assert_eq!(traces.len(), 1, "{traces:#?}");
    traces.remove(0)
}

async fn handle_one(
    stack: &Stack,
    propagation: Propagation,
    event_id: &str,
    ids: &(String, String),
) -> (EventContext, Vec<(&'static str, String)>, String) {
    let db = TempDatabase::create(stack).await;
    let pool = db.pool().await;
    migrate(&pool).await.unwrap();
    let topic = create_topic(stack, 1).await;
    create_topic_named(stack, &format!("{topic}.dlq"), 1).await;
    let traceparent = format!("00-{}-{}-01", ids.0, ids.1);
    let headers = [
        ("event-id", event_id),
        ("event-type", "Noted"),
        ("traceparent", traceparent.as_str()),
        ("request-id", "req-c"),
        ("user-id", "bob"),
        ("correlation-id", "flow-c"),
    ];
    produce(stack, &topic, "k", &headers, b"{}").await;

    let seen = Seen::default();
    let mut config =
        ConsumerConfig::new(&stack.kafka_bootstrap_servers, &unique("group"), &[&topic]);
    config.propagation = propagation;
    let handler = Record {
        seen: Arc::clone(&seen),
        propagation,
    };
    let stop = CancellationToken::new();
    let running = tokio::spawn(Consumer::new(pool, config, handler).run(stop.clone()));
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.lock().unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the event was handled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    running.await.unwrap().unwrap();
    let (context, outgoing) = seen.lock().unwrap().remove(0);
    (context, outgoing, topic)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_span_continues_the_records_trace() {
    let service = unique("consumer-trace-test");
    let mut telemetry = eda_telemetry::TelemetryConfig::from_env(&service);
    telemetry.service_name.clone_from(&service);
    // Spans go to Jaeger; log lines are not what this test reads.
    let guard = eda_telemetry::init_with_writer(telemetry, std::io::sink).expect("telemetry");
    let stack = Stack::from_env();
    let jaeger = Jaeger::from_env();
    let ids = eda_test_support::jaeger::random_trace_ids();
    let (trace_id, producer_span) = (ids.0.as_str(), ids.1.as_str());

    let event_id = uuid::Uuid::now_v7().to_string();
    let (context, outgoing, topic) = handle_one(&stack, Propagation::On, &event_id, &ids).await;
    guard.flush().unwrap();
    assert_eq!(context.request_id, "req-c");
    assert_eq!(context.correlation_id, "flow-c");
    assert_eq!(context.user_id.as_deref(), Some("bob"));
    let get = |name: &str| {
        outgoing
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        get("causation-id"),
        Some(event_id.clone()),
        "the event is the cause"
    );
    assert_eq!(get("request-id").as_deref(), Some("req-c"));
    let traceparent = get("traceparent").expect("the handler's emitted events carry the trace");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts[1], trace_id);
    assert_ne!(
        parts[2], producer_span,
        "the consumer span is the parent of the next hop"
    );

    let trace = trace_of(&jaeger, &service, &event_id).await;
    assert_eq!(trace.id, trace_id);
    let span = trace
        .find(&service, &format!("process {topic}"))
        .next()
        .expect("the process span");
    assert_eq!(span.span_id, parts[2]);
    assert_eq!(span.parent.as_deref(), Some(producer_span));
    assert_eq!(span.tag("span.kind"), Some("consumer"));
    assert_eq!(span.tag("messaging.system"), Some("kafka"));
    assert_eq!(span.tag("messaging.operation.type"), Some("process"));
    assert_eq!(span.tag("messaging.destination.name"), Some(topic.as_str()));
    assert_eq!(span.tag("messaging.destination.partition.id"), Some("0"));
    assert_eq!(span.tag("messaging.kafka.offset"), Some("0"));
    assert_eq!(span.tag("messaging.kafka.message.key"), Some("k"));
    assert!(span.tag("messaging.consumer.group.name").is_some());
    assert_eq!(span.tag("event.type"), Some("Noted"));
    assert_eq!(span.tag("outcome"), Some("applied"));
    assert_eq!(span.tag("request_id"), Some("req-c"));

    // Off: fresh ids, nothing written, and the span is a root of a new trace.
    let event_id = uuid::Uuid::now_v7().to_string();
    let (context, outgoing, _) = handle_one(&stack, Propagation::Off, &event_id, &ids).await;
    guard.flush().unwrap();
    assert_ne!(context.request_id, "req-c");
    assert_eq!(context.user_id, None);
    assert!(outgoing.is_empty());
    let trace = trace_of(&jaeger, &service, &event_id).await;
    assert_ne!(trace.id, trace_id);
    assert!(trace.spans.iter().all(|s| s.parent.is_none()));
}
