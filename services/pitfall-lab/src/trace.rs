//! `pitfall-lab trace`: one request's trace(s) from Jaeger's query API, printed as a tree, for
//! terminals and for the native stack (whose Jaeger build serves no UI).

use std::fmt::Write as _;

use eda_jaeger_query::{Jaeger, Trace};

/// Traces of `request_id` (every service's spans tagged with it), or the trace `trace_id`,
/// rendered; a clear message when there is none.
pub async fn show(
    jaeger_url: &str,
    request_id: Option<&str>,
    trace_id: Option<&str>,
) -> Result<String, String> {
    let jaeger = Jaeger::new(jaeger_url);
    let traces = match (request_id, trace_id) {
        (_, Some(id)) => jaeger
            .trace(id)
            .await
            .map(|found| found.into_iter().collect()),
        (Some(id), None) => jaeger.traces_tagged("request_id", id).await,
        (None, None) => return Err("give --request-id or --trace-id".to_owned()),
    }
    .map_err(|e| error_chain(&e))?;
    if traces.is_empty() {
        return Err(format!(
            "Jaeger at {jaeger_url} has no trace for {} (spans reach it a few seconds after the request; with PROPAGATION=off only the first service's spans carry the request id)",
            trace_id.map_or_else(
                || format!("request id {:?}", request_id.unwrap_or_default()),
                |t| format!("trace {t}")
            )
        ));
    }
    let mut out = String::new();
    if traces.len() > 1 {
        let _ = writeln!(out, "{} disconnected traces:", traces.len());
    }
    for trace in &traces {
        out.push_str(&render(trace));
    }
    Ok(out)
}

/// A trace as a tree: one line per span, children under their parent in start order, with the
/// service, the offset from the trace's start and the duration. Spans whose parent is not in
/// the trace (the caller's span of another system) are shown as roots.
pub fn render(trace: &Trace) -> String {
    let start = trace.start_us();
    let mut services = trace.services();
    services.retain(|s| !s.is_empty());
    let mut out = format!(
        "trace {} ({} spans, {} in {:.1} ms)\n",
        trace.id,
        trace.spans.len(),
        services.join(", "),
        trace.duration_us() as f64 / 1000.0
    );
    let width = services.iter().map(|s| s.len()).max().unwrap_or(0);
    for (depth, span) in trace.tree() {
        let _ = writeln!(
            out,
            "  {:>9.1} ms {:>9.1} ms  {:<width$}  {}{}",
            (span.start_us - start) as f64 / 1000.0,
            span.duration_us as f64 / 1000.0,
            span.service,
            "  ".repeat(depth),
            span.name,
        );
    }
    out
}

/// `error: cause: cause ...`: the whole story on one line for the terminal.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use eda_jaeger_query::Span;

    use super::*;

    fn span(id: &str, parent: Option<&str>, name: &str, service: &str, start: u64) -> Span {
        Span {
            trace_id: "t1".to_owned(),
            span_id: id.to_owned(),
            parent: parent.map(str::to_owned),
            name: name.to_owned(),
            service: service.to_owned(),
            tags: HashMap::new(),
            start_us: start,
            duration_us: 500,
        }
    }

    #[test]
    fn children_are_indented_under_their_parent_in_start_order() {
        let trace = Trace {
            id: "t1".to_owned(),
            spans: vec![
                span("c", Some("a"), "send order.events", "order", 3_000),
                span("a", Some("caller"), "POST /orders", "order", 1_000),
                span("b", Some("a"), "INSERT orders", "order", 2_000),
                span("d", Some("c"), "process order.events", "inventory", 4_000),
            ],
        };
        let text = render(&trace);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(
            lines[0].starts_with("trace t1 (4 spans, inventory, order in 3.5 ms)"),
            "{text}"
        );
        assert!(lines[1].ends_with("order      POST /orders"), "{text}");
        assert!(lines[2].ends_with("order        INSERT orders"), "{text}");
        assert!(
            lines[3].ends_with("order        send order.events"),
            "{text}"
        );
        assert!(
            lines[4].ends_with("inventory      process order.events"),
            "{text}"
        );
        assert!(lines[4].contains("3.0 ms"), "offset from the start: {text}");
    }
}
