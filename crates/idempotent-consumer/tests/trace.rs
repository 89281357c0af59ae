//! Each event is handled in a consumer span that continues the record's trace (OpenTelemetry
//! messaging conventions), the handler sees the record's context, and what it emits names the
//! consumer span as parent; with `Propagation::Off` nothing is read; a dead letter redriven
//! after a fix rejoins its original trace. Jaeger is the judge. (Its own test binary: telemetry
//! installs a process-wide subscriber, shared by the tests here.)

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use eda_idempotent_consumer::{
    Consumer, ConsumerConfig, ConsumerMetrics, Event, EventContext, Handler, HandlerError,
    Propagation, migrate, redrive,
};
use eda_telemetry::TelemetryGuard;
use eda_test_support::jaeger::Trace;
use eda_test_support::{
    Jaeger, Stack, TempDatabase, create_topic, create_topic_named, produce, unique,
};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

type Seen = Arc<Mutex<Vec<(EventContext, Vec<(&'static str, String)>)>>>;

/// Records what the handler sees and what it would write on an emitted event; `reject` makes
/// every event a permanent failure (a dead letter).
struct Record {
    seen: Seen,
    propagation: Propagation,
    reject: bool,
}

impl Handler for Record {
    async fn handle(&self, event: &Event, _tx: &mut PgConnection) -> Result<(), HandlerError> {
        if self.reject {
            return Err(HandlerError::Permanent(
                "no handler for this yet".to_owned(),
            ));
        }
        let outgoing = event.outgoing_context(self.propagation);
        self.seen
            .lock()
            .unwrap()
            .push((event.context.clone(), outgoing));
        Ok(())
    }
}

/// The process-wide telemetry (spans to Jaeger, log lines discarded) and its service name.
fn telemetry() -> &'static (TelemetryGuard, String) {
    static TELEMETRY: OnceLock<(TelemetryGuard, String)> = OnceLock::new();
    TELEMETRY.get_or_init(|| {
        let service = unique("consumer-trace-test");
        let mut config = eda_telemetry::TelemetryConfig::from_env(&service);
        config.service_name.clone_from(&service);
        let guard = eda_telemetry::init_with_writer(config, std::io::sink).expect("telemetry");
        (guard, service)
    })
}

/// The single trace holding the process spans of `event_id`, once `done` holds for it.
async fn trace_of(
    jaeger: &Jaeger,
    service: &str,
    event_id: &str,
    done: impl Fn(&Trace) -> bool,
) -> Trace {
    let mut traces = jaeger
        .wait_for(service, &[("messaging.message.id", event_id)], WAIT, |t| {
            t.len() == 1 && done(&t[0])
        })
        .await;
    assert_eq!(traces.len(), 1, "{traces:#?}");
    traces.remove(0)
}

/// A database and a topic (with its dead-letter topic) for one test.
async fn setup(stack: &Stack) -> (TempDatabase, PgPool, String) {
    let db = TempDatabase::create(stack).await;
    let pool = db.pool().await;
    migrate(&pool).await.unwrap();
    let topic = create_topic(stack, 1).await;
    create_topic_named(stack, &format!("{topic}.dlq"), 1).await;
    (db, pool, topic)
}

/// Produces one traced event with the contract's context headers.
async fn produce_traced(stack: &Stack, topic: &str, event_id: &str, ids: &(String, String)) {
    let traceparent = format!("00-{}-{}-01", ids.0, ids.1);
    let headers = [
        ("event-id", event_id),
        ("event-type", "Noted"),
        ("traceparent", traceparent.as_str()),
        ("request-id", "req-c"),
        ("user-id", "bob"),
        ("correlation-id", "flow-c"),
    ];
    produce(stack, topic, "k", &headers, b"{}").await;
}

/// Runs a consumer in `group` on `topic` until `done` holds for its metrics and what the
/// handler saw, then stops it; returns what the handler saw.
async fn consume_until(
    stack: &Stack,
    pool: &PgPool,
    topic: &str,
    group: &str,
    handler: Record,
    done: impl Fn(&ConsumerMetrics, usize) -> bool,
) -> Vec<(EventContext, Vec<(&'static str, String)>)> {
    let seen = Arc::clone(&handler.seen);
    let mut config = ConsumerConfig::new(&stack.kafka_bootstrap_servers, group, &[topic]);
    config.propagation = handler.propagation;
    let consumer = Consumer::new(pool.clone(), config, handler).unwrap();
    let metrics = consumer.metrics();
    let stop = CancellationToken::new();
    let running = tokio::spawn(consumer.run(stop.clone()));
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(&metrics, seen.lock().unwrap().len()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the consumer did not get there: processed {} dead {}",
            metrics.processed(),
            metrics.dead_lettered()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    running.await.unwrap().unwrap();
    std::mem::take(&mut *seen.lock().unwrap())
}

fn record(propagation: Propagation, reject: bool) -> Record {
    Record {
        seen: Seen::default(),
        propagation,
        reject,
    }
}

/// One traced event through a fresh consumer: what its handler saw and would emit, and the topic.
async fn handle_one(
    stack: &Stack,
    propagation: Propagation,
    event_id: &str,
    ids: &(String, String),
) -> (EventContext, Vec<(&'static str, String)>, String) {
    let (_db, pool, topic) = setup(stack).await;
    produce_traced(stack, &topic, event_id, ids).await;
    let mut seen = consume_until(
        stack,
        &pool,
        &topic,
        &unique("group"),
        record(propagation, false),
        |_, seen| seen == 1,
    )
    .await;
    let (context, outgoing) = seen.remove(0);
    (context, outgoing, topic)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_span_continues_the_records_trace() {
    let (guard, service) = telemetry();
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

    let trace = trace_of(&jaeger, service, &event_id, |_| true).await;
    assert_eq!(trace.id, trace_id);
    let span = trace
        .find(service, &format!("process {topic}"))
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
    let trace = trace_of(&jaeger, service, &event_id, |_| true).await;
    assert_ne!(trace.id, trace_id);
    assert!(trace.spans.iter().all(|s| s.parent.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_redriven_after_a_fix_rejoins_its_trace() {
    let (guard, service) = telemetry();
    let stack = Stack::from_env();
    let jaeger = Jaeger::from_env();
    let ids = eda_test_support::jaeger::random_trace_ids();
    let (trace_id, producer_span) = (ids.0.as_str(), ids.1.as_str());
    let (_db, pool, topic) = setup(&stack).await;
    let event_id = uuid::Uuid::now_v7().to_string();
    produce_traced(&stack, &topic, &event_id, &ids).await;
    let group = unique("group");

    // No handler for it yet: a dead letter.
    consume_until(
        &stack,
        &pool,
        &topic,
        &group,
        record(Propagation::On, true),
        |m, _| m.dead_lettered() == 1,
    )
    .await;
    // The fix ships; the operator redrives; the same group applies it.
    let report = redrive(
        &stack.kafka_bootstrap_servers,
        &format!("{topic}.dlq"),
        &unique("redrive"),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(report.redriven, 1);
    let seen = consume_until(
        &stack,
        &pool,
        &topic,
        &group,
        record(Propagation::On, false),
        |_, n| n == 1,
    )
    .await;
    guard.flush().unwrap();
    assert_eq!(
        seen[0].0.request_id, "req-c",
        "the context came back with it"
    );

    // One trace: both attempts are children of the original producer's span, an hour or a week
    // apart, and the failed attempt says why.
    let name = format!("process {topic}");
    let trace = trace_of(&jaeger, service, &event_id, |t| {
        t.find(service, &name).count() == 2
    })
    .await;
    assert_eq!(trace.id, trace_id);
    let mut attempts: Vec<_> = trace.find(service, &name).collect();
    attempts.sort_by_key(|s| s.start_us);
    let outcomes: Vec<_> = attempts.iter().map(|s| s.tag("outcome")).collect();
    assert_eq!(outcomes, [Some("dead-lettered"), Some("applied")]);
    for attempt in &attempts {
        assert_eq!(attempt.parent.as_deref(), Some(producer_span));
    }
    assert_eq!(attempts[0].tag("messaging.kafka.offset"), Some("0"));
    assert_eq!(
        attempts[1].tag("messaging.kafka.offset"),
        Some("1"),
        "the redriven copy"
    );
    assert_eq!(attempts[0].tag("otel.status_code"), Some("ERROR"));
    assert_ne!(attempts[1].tag("otel.status_code"), Some("ERROR"));
}
