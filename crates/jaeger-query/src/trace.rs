//! What Jaeger holds, as plain values: spans with their parent, traces as sets of spans, and the
//! parent/child tree. Parsing is lenient (a field Jaeger leaves out reads as empty or zero): the
//! caller asserts on what it needs, rather than the parser refusing a whole trace.

use std::collections::HashMap;

use serde_json::Value;

/// A fresh W3C trace id (32 hex) and span id (16 hex), for a test's or a benchmark's own
/// `traceparent`: a constant one would gather every run's spans into one ever-growing trace.
pub fn random_trace_ids() -> (String, String) {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    (trace, span)
}

/// One span as Jaeger stored it.
#[derive(Debug, Clone)]
pub struct Span {
    /// Trace id (32 hex).
    pub trace_id: String,
    /// Span id (16 hex).
    pub span_id: String,
    /// Parent span id (`CHILD_OF` reference), `None` for a root span.
    pub parent: Option<String>,
    /// Operation name (`otel.name`).
    pub name: String,
    /// `service.name` of the process that exported it.
    pub service: String,
    /// Attributes, as strings (numbers and booleans in their JSON form).
    pub tags: HashMap<String, String>,
    /// Start, microseconds since the Unix epoch.
    pub start_us: u64,
    /// Duration in microseconds.
    pub duration_us: u64,
}

impl Span {
    /// The attribute `key`, if set.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }
}

/// One trace: all its spans.
#[derive(Debug, Clone)]
pub struct Trace {
    /// Trace id.
    pub id: String,
    /// Every span Jaeger holds for it.
    pub spans: Vec<Span>,
}

impl Trace {
    /// Spans named `name` exported by `service`.
    pub fn find(&self, service: &str, name: &str) -> impl Iterator<Item = &Span> {
        let (service, name) = (service.to_owned(), name.to_owned());
        self.spans
            .iter()
            .filter(move |s| s.service == service && s.name == name)
    }

    /// The span with id `id`.
    pub fn span(&self, id: &str) -> Option<&Span> {
        self.spans.iter().find(|s| s.span_id == id)
    }

    /// Distinct service names in the trace, sorted.
    pub fn services(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.spans.iter().map(|s| s.service.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Start of the earliest span, microseconds since the Unix epoch (0 for an empty trace).
    pub fn start_us(&self) -> u64 {
        self.spans.iter().map(|s| s.start_us).min().unwrap_or(0)
    }

    /// From the earliest start to the latest end, in microseconds.
    pub fn duration_us(&self) -> u64 {
        let start = self.start_us();
        self.spans
            .iter()
            .map(|s| s.start_us + s.duration_us)
            .max()
            .map_or(0, |end| end.saturating_sub(start))
    }

    /// Every span once with its depth, depth first: children right under their parent, siblings
    /// in start order (span id breaks ties, so the order is stable). A span whose parent is not
    /// in the trace (the span of a caller outside the system, or one Jaeger has not received
    /// yet) is a root, so nothing is left out.
    pub fn tree(&self) -> Vec<(usize, &Span)> {
        let ids: Vec<&str> = self.spans.iter().map(|s| s.span_id.as_str()).collect();
        let mut children: HashMap<Option<&str>, Vec<&Span>> = HashMap::new();
        for span in &self.spans {
            let parent = span.parent.as_deref().filter(|p| ids.contains(p));
            children.entry(parent).or_default().push(span);
        }
        for list in children.values_mut() {
            list.sort_by(|a, b| (a.start_us, &a.span_id).cmp(&(b.start_us, &b.span_id)));
        }
        let mut out = Vec::with_capacity(self.spans.len());
        let mut stack: Vec<(usize, &Span)> = children
            .get(&None)
            .map(|roots| roots.iter().rev().map(|s| (0, *s)).collect())
            .unwrap_or_default();
        while let Some((depth, span)) = stack.pop() {
            out.push((depth, span));
            if let Some(kids) = children.get(&Some(span.span_id.as_str())) {
                stack.extend(kids.iter().rev().map(|k| (depth + 1, *k)));
            }
        }
        out
    }
}

/// One element of the `data` array of `/api/traces` answers.
pub(crate) fn parse_trace(trace: &Value) -> Trace {
    let services: HashMap<&str, &str> = trace["processes"]
        .as_object()
        .map(|p| {
            p.iter()
                .map(|(id, process)| (id.as_str(), process["serviceName"].as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    let spans = trace["spans"]
        .as_array()
        .map(|spans| {
            spans
                .iter()
                .map(|span| parse_span(span, &services))
                .collect()
        })
        .unwrap_or_default();
    Trace {
        id: text(&trace["traceID"]),
        spans,
    }
}

fn parse_span(span: &Value, services: &HashMap<&str, &str>) -> Span {
    Span {
        trace_id: text(&span["traceID"]),
        span_id: text(&span["spanID"]),
        parent: span["references"].as_array().and_then(|refs| {
            refs.iter()
                .find(|r| r["refType"] == "CHILD_OF")
                .and_then(|r| r["spanID"].as_str())
                .map(str::to_owned)
        }),
        name: text(&span["operationName"]),
        service: span["processID"]
            .as_str()
            .and_then(|p| services.get(p))
            .copied()
            .unwrap_or_default()
            .to_owned(),
        tags: span["tags"]
            .as_array()
            .map(|tags| {
                tags.iter()
                    .map(|t| {
                        let value = match &t["value"] {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        (text(&t["key"]), value)
                    })
                    .collect()
            })
            .unwrap_or_default(),
        start_us: span["startTime"].as_u64().unwrap_or_default(),
        duration_us: span["duration"].as_u64().unwrap_or_default(),
    }
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn span(id: &str, parent: Option<&str>, start: u64) -> Span {
        Span {
            trace_id: "t1".to_owned(),
            span_id: id.to_owned(),
            parent: parent.map(str::to_owned),
            name: format!("op-{id}"),
            service: "svc".to_owned(),
            tags: HashMap::new(),
            start_us: start,
            duration_us: 500,
        }
    }

    #[test]
    fn parses_spans_with_their_service_parent_and_tags() {
        // The shape of one element of `data` in Jaeger's `/api/traces/{id}` answer.
        let answer = json!({
            "traceID": "4bf92f3577b34da6a3ce929d0e0e4736",
            "spans": [
                {"traceID": "4bf92f3577b34da6a3ce929d0e0e4736", "spanID": "00f067aa0ba902b7",
                 "operationName": "POST /orders", "processID": "p1",
                 "references": [], "startTime": 1_700_000_000_000_000_u64, "duration": 1234,
                 "tags": [{"key": "request_id", "type": "string", "value": "req-1"},
                          {"key": "http.response.status_code", "type": "int64", "value": 201},
                          {"key": "error", "type": "bool", "value": false}]},
                {"traceID": "4bf92f3577b34da6a3ce929d0e0e4736", "spanID": "b7ad6b7169203331",
                 "operationName": "process order.events", "processID": "p2",
                 "references": [
                    {"refType": "FOLLOWS_FROM", "traceID": "x", "spanID": "ffffffffffffffff"},
                    {"refType": "CHILD_OF", "traceID": "4bf92f3577b34da6a3ce929d0e0e4736", "spanID": "00f067aa0ba902b7"}
                 ],
                 "startTime": 1_700_000_000_005_000_u64, "duration": 10}
            ],
            "processes": {"p1": {"serviceName": "order-service"}, "p2": {"serviceName": "inventory-service"}}
        });
        let trace = parse_trace(&answer);
        assert_eq!(trace.id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(trace.services(), ["inventory-service", "order-service"]);
        let post = trace
            .find("order-service", "POST /orders")
            .next()
            .expect("the root");
        assert_eq!(post.parent, None);
        assert_eq!(post.tag("request_id"), Some("req-1"));
        assert_eq!(post.tag("http.response.status_code"), Some("201"));
        assert_eq!(post.tag("error"), Some("false"));
        assert_eq!(
            (post.start_us, post.duration_us),
            (1_700_000_000_000_000, 1234)
        );
        let consume = trace.span("b7ad6b7169203331").expect("the consumer span");
        assert_eq!(consume.service, "inventory-service");
        assert_eq!(
            consume.parent.as_deref(),
            Some("00f067aa0ba902b7"),
            "the CHILD_OF reference is the parent, FOLLOWS_FROM is not"
        );
        assert_eq!(trace.duration_us(), 5_010);
    }

    #[test]
    fn missing_fields_read_as_empty_not_as_an_error() {
        let trace = parse_trace(&json!({"spans": [{"spanID": "a"}]}));
        assert_eq!(trace.id, "");
        assert_eq!(trace.spans.len(), 1);
        assert_eq!(trace.spans[0].service, "");
        assert_eq!(trace.spans[0].start_us, 0);
        assert!(parse_trace(&Value::Null).spans.is_empty());
    }

    #[test]
    fn tree_puts_children_under_their_parent_in_start_order() {
        let trace = Trace {
            id: "t1".to_owned(),
            spans: vec![
                span("c", Some("a"), 3_000),
                span("a", Some("caller-outside"), 1_000),
                span("b", Some("a"), 2_000),
                span("d", Some("c"), 4_000),
                span("e", None, 500),
            ],
        };
        let walked: Vec<(usize, &str)> = trace
            .tree()
            .into_iter()
            .map(|(depth, s)| (depth, s.span_id.as_str()))
            .collect();
        assert_eq!(
            walked,
            [(0, "e"), (0, "a"), (1, "b"), (1, "c"), (2, "d")],
            "a span whose parent is outside the trace is a root"
        );
        assert_eq!(trace.start_us(), 500);
        assert_eq!(trace.duration_us(), 4_000);
    }

    #[test]
    fn random_trace_ids_are_w3c_sized_hex_and_differ() {
        let (trace, span) = random_trace_ids();
        assert_eq!((trace.len(), span.len()), (32, 16));
        assert!(
            trace
                .chars()
                .chain(span.chars())
                .all(|c| c.is_ascii_hexdigit())
        );
        assert_ne!(random_trace_ids().0, trace);
    }
}
