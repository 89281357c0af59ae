//! Every JSON log line inside a request's spans carries `trace_id`, `span_id`, `request_id` and
//! `user_id`, without the call site adding them. (Its own test binary: `init` installs a
//! process-wide subscriber, once. Spans are exported to the stack's collector.)

use std::io::Write;
use std::sync::{Arc, Mutex};

use opentelemetry::trace::TraceContextExt as _;
use serde_json::Value;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::fmt::MakeWriter;

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'w> MakeWriter<'w> for Buffer {
    type Writer = Self;
    fn make_writer(&'w self) -> Self::Writer {
        self.clone()
    }
}

#[test]
fn log_lines_carry_trace_and_request_context() {
    let mut config = eda_telemetry::TelemetryConfig::from_env("log-fields-test");
    config.export_traces = true;
    // `hushed` logs only warnings (its INFO spans are not logged, but exported); the SDK's
    // own diagnostics stay out of the buffer this test counts.
    config.log_filter =
        "info,hushed=warn,opentelemetry=off,opentelemetry_sdk=off,opentelemetry_otlp=off"
            .to_owned();
    // Spans of target `unexported` are logged but not exported.
    config.trace_filter = "info,unexported=off".to_owned();
    let buffer = Buffer::default();
    let guard = eda_telemetry::init_with_writer(config, buffer.clone()).expect("init");

    tracing::info!("outside any span");
    let request = tracing::info_span!(
        "HTTP request",
        request_id = "req-42",
        user_id = tracing::field::Empty
    );
    let (trace_id, handler_span_id) = request.in_scope(|| {
        // What an authentication extractor does once it knows the user.
        tracing::Span::current().record("user_id", "alice");
        let handler = tracing::info_span!("create_order", order.id = "o-1");
        handler.in_scope(|| {
            tracing::info!(total_cents = 2400, "order placed");
            tracing::info_span!(target: "unexported", "not exported")
                .in_scope(|| tracing::info!("inside a span that is not exported"));
            let cx = tracing::Span::current().context();
            let sc = cx.span().span_context().clone();
            (sc.trace_id().to_string(), sc.span_id().to_string())
        })
    });
    let quiet_request =
        tracing::info_span!(target: "hushed", "HTTP request", request_id = "req-44");
    quiet_request.in_scope(|| {
        tracing::info!(target: "hushed", "not written: below the log level");
        tracing::warn!(target: "hushed", "slow downstream");
    });
    let quiet_trace = quiet_request
        .context()
        .span()
        .span_context()
        .trace_id()
        .to_string();
    let consumer = tracing::info_span!("process", request_id = %"req-43");
    consumer.in_scope(|| tracing::warn!(attempt = 2, "retrying"));
    drop(guard);

    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(lines.len(), 5, "{text}");

    assert_eq!(lines[0]["fields"]["message"], "outside any span");
    for key in ["trace_id", "span_id", "request_id", "user_id"] {
        assert!(
            lines[0].get(key).is_none(),
            "no context outside spans: {key}"
        );
    }

    let placed = &lines[1];
    assert_eq!(placed["fields"]["message"], "order placed");
    assert_eq!(placed["fields"]["total_cents"], 2400);
    assert_eq!(placed["span"], "create_order");
    assert_eq!(
        placed["request_id"], "req-42",
        "inherited from the request span"
    );
    assert_eq!(
        placed["user_id"], "alice",
        "recorded after the span started"
    );
    assert_eq!(placed["trace_id"], trace_id.as_str());
    assert_eq!(placed["span_id"], handler_span_id.as_str());
    assert_eq!(placed["level"], "INFO");

    let quiet = &lines[2];
    assert_eq!(quiet["span"], "not exported");
    assert_eq!(
        quiet["span_id"], placed["span_id"],
        "the innermost exported span: the line still leads to a span Jaeger has"
    );
    assert_eq!(quiet["request_id"], "req-42");

    let warned = &lines[3];
    assert_eq!(warned["fields"]["message"], "slow downstream");
    assert_eq!(
        warned["request_id"], "req-44",
        "a quiet log level keeps the context of spans it does not log"
    );
    assert_eq!(warned["trace_id"], quiet_trace.as_str());

    let retry = &lines[4];
    assert_eq!(retry["request_id"], "req-43");
    assert!(retry.get("user_id").is_none());
    assert_ne!(
        retry["trace_id"], placed["trace_id"],
        "a separate root span"
    );
    assert_eq!(retry["level"], "WARN");
}
