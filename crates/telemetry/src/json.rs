//! JSON log lines that carry the request's context without any call site adding it.
//!
//! Every line inside a span tree gets, at the top level:
//! - `trace_id` and `span_id` of the innermost exported span (when spans are exported), so a
//!   log line leads straight to its trace in Jaeger;
//! - `request_id` and `user_id`: the nearest values recorded on a span field of that name
//!   (eda-context's HTTP layer and consumer spans record them).
//!
//! ```json
//! {"timestamp":"2026-11-27T08:00:00.000000Z","level":"INFO","target":"order_service::routes::orders",
//!  "fields":{"message":"order placed","total_cents":2400},"span":"create_order",
//!  "trace_id":"4bf9...","span_id":"00f0...","request_id":"req-42","user_id":"alice"}
//! ```

use std::fmt;

use opentelemetry::trace::TraceContextExt as _;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Record};
use tracing::{Event, Id, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime as _, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Span fields copied onto every log line inside the span.
pub const CONTEXT_FIELDS: [&str; 2] = ["request_id", "user_id"];

/// Values of [`CONTEXT_FIELDS`] recorded on one span.
#[derive(Debug, Default, Clone)]
struct ContextFields([Option<String>; 2]);

impl Visit for ContextFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if let Some(i) = CONTEXT_FIELDS.iter().position(|n| *n == field.name()) {
            self.0[i] = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if let Some(i) = CONTEXT_FIELDS.iter().position(|n| *n == field.name()) {
            self.0[i] = Some(format!("{value:?}"));
        }
    }
}

/// Remembers [`CONTEXT_FIELDS`] per span, for [`JsonWithContext`].
#[derive(Debug, Default, Clone, Copy)]
pub struct ContextFieldsLayer;

impl<S> Layer<S> for ContextFieldsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = ContextFields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut extensions = span.extensions_mut();
            if let Some(fields) = extensions.get_mut::<ContextFields>() {
                values.record(fields);
            }
        }
    }
}

/// Collects an event's fields as JSON values.
struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::from(format!("{value:?}")));
    }
}

/// The JSON line format (see the module docs). Needs [`ContextFieldsLayer`] in the same
/// subscriber for `request_id`/`user_id`, and tracing-opentelemetry's layer for the ids.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonWithContext;

impl<S, N> FormatEvent<S, N> for JsonWithContext
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        // Keys in a fixed, readable order: when, how bad, where, what, then the context.
        let mut line: Vec<(&str, Value)> = Vec::with_capacity(9);
        let mut timestamp = String::new();
        if SystemTime
            .format_time(&mut Writer::new(&mut timestamp))
            .is_ok()
        {
            line.push(("timestamp", Value::from(timestamp)));
        }
        line.push(("level", Value::from(meta.level().as_str())));
        line.push(("target", Value::from(meta.target())));
        let mut fields = Map::new();
        event.record(&mut JsonVisitor(&mut fields));
        line.push(("fields", Value::Object(fields)));

        if let Some(scope) = ctx.event_scope() {
            let mut context: [Option<String>; 2] = [None, None];
            let mut ids = Vec::new();
            for span in scope {
                if ids.is_empty() {
                    line.push(("span", Value::from(span.name())));
                }
                ids.push(span.id());
                if let Some(found) = span.extensions().get::<ContextFields>() {
                    for (slot, value) in context.iter_mut().zip(&found.0) {
                        if slot.is_none() {
                            slot.clone_from(value);
                        }
                    }
                }
            }
            // The innermost exported span (`TRACE_FILTER` may leave some out). For a line
            // logged where it happens, that is the current OpenTelemetry context (activated on
            // span enter); for a line with an explicit parent, look the spans up.
            let exported = if event.is_contextual() {
                Some(
                    opentelemetry::Context::current()
                        .span()
                        .span_context()
                        .clone(),
                )
                .filter(opentelemetry::trace::SpanContext::is_valid)
            } else {
                tracing::dispatcher::get_default(|dispatch| {
                    ids.iter().find_map(|id| {
                        tracing_opentelemetry::get_otel_context(id, dispatch)
                            .map(|cx| cx.span().span_context().clone())
                            .filter(opentelemetry::trace::SpanContext::is_valid)
                    })
                })
            };
            if let Some(sc) = exported {
                line.push(("trace_id", Value::from(sc.trace_id().to_string())));
                line.push(("span_id", Value::from(sc.span_id().to_string())));
            }
            for (name, value) in CONTEXT_FIELDS.iter().zip(context) {
                if let Some(value) = value {
                    line.push((name, Value::from(value)));
                }
            }
        }
        let mut text = String::with_capacity(256);
        text.push('{');
        for (i, (key, value)) in line.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&serde_json::to_string(key).map_err(|_| fmt::Error)?);
            text.push(':');
            text.push_str(&serde_json::to_string(value).map_err(|_| fmt::Error)?);
        }
        text.push('}');
        writeln!(writer, "{text}")
    }
}
