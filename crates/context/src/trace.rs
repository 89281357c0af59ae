//! W3C trace context in and out, through sanitised header values. Uses the W3C propagators
//! directly (not the global ones), so it works whether or not telemetry was initialised.

use std::collections::HashMap;

use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

use crate::{BaggagePolicy, baggage, sanitize};

/// Baggage keys passed on by default ([`BaggagePolicy::default`]).
#[deprecated(note = "the list is a setting now: `BaggagePolicy` (default `DEFAULT_BAGGAGE_KEYS`)")]
pub const ALLOWED_BAGGAGE_KEYS: &[&str] = baggage::DEFAULT_BAGGAGE_KEYS;

/// The trace context of an incoming request or event, with the default [`BaggagePolicy`].
/// Malformed values are ignored, so the result is then an empty context and the receiver
/// starts a new trace.
pub fn extract<'a>(header: impl Fn(&str) -> Option<&'a str>) -> Context {
    extract_with(header, &BaggagePolicy::default())
}

/// [`extract`], keeping only the baggage members `baggage` accepts.
pub fn extract_with<'a>(
    header: impl Fn(&str) -> Option<&'a str>,
    baggage: &BaggagePolicy,
) -> Context {
    let mut carrier = HashMap::new();
    if let Some(tp) = header("traceparent").and_then(sanitize::traceparent) {
        carrier.insert("traceparent".to_owned(), tp);
        if let Some(ts) = header("tracestate").and_then(sanitize::tracestate) {
            carrier.insert("tracestate".to_owned(), ts);
        }
    }
    if let Some(bg) = header("baggage").and_then(|b| baggage.filter(b)) {
        carrier.insert("baggage".to_owned(), bg);
    }
    let cx = TraceContextPropagator::new().extract(&carrier);
    BaggagePropagator::new().extract_with_context(&cx, &carrier)
}

/// `traceparent`, `tracestate` and `baggage` for `cx`, in that order, skipping empty ones.
pub fn inject(cx: &Context) -> Vec<(&'static str, String)> {
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    BaggagePropagator::new().inject_context(cx, &mut carrier);
    ["traceparent", "tracestate", "baggage"]
        .into_iter()
        .filter_map(|name| {
            carrier
                .get(name)
                .filter(|v| !v.is_empty())
                .map(|v| (name, v.clone()))
        })
        .collect()
}

/// The `traceparent` of the current OpenTelemetry context (the innermost exported span, or the
/// parent attached around a handler), if there is one. For writers that store it beside the
/// data, so a reader that sees no headers of theirs (CDC of a table) can join the trace.
pub fn current_traceparent() -> Option<String> {
    inject(&Context::current())
        .into_iter()
        .find(|(name, _)| *name == "traceparent")
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt as _;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn from(pairs: &'static [(&'static str, &'static str)]) -> Context {
        extract(|name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v))
    }

    #[test]
    fn a_valid_traceparent_round_trips() {
        let cx = from(&[
            ("traceparent", TP),
            ("tracestate", "vendor=abc"),
            ("baggage", "tenant=acme,secret=x"),
        ]);
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let out = inject(&cx);
        assert_eq!(out[0], ("traceparent", TP.to_owned()));
        assert_eq!(out[1], ("tracestate", "vendor=abc".to_owned()));
        assert_eq!(
            out[2],
            ("baggage", "tenant=acme".to_owned()),
            "unknown baggage keys never leave"
        );
    }

    #[test]
    fn the_baggage_policy_decides_which_members_cross() {
        let header = |name: &str| match name {
            "traceparent" => Some(TP),
            "baggage" => Some("tenant=acme,plan=pro,secret=x"),
            _ => None,
        };
        let baggage_of = |cx: &Context| {
            inject(cx)
                .into_iter()
                .find(|(k, _)| *k == "baggage")
                .map(|(_, v)| v)
        };
        assert_eq!(
            baggage_of(&extract(header)).as_deref(),
            Some("tenant=acme"),
            "the default list"
        );
        let custom = BaggagePolicy::allow(["plan", "tenant"]).unwrap();
        let mut kept: Vec<String> = baggage_of(&extract_with(header, &custom))
            .unwrap()
            .split(',')
            .map(str::to_owned)
            .collect();
        kept.sort();
        assert_eq!(kept, ["plan=pro", "tenant=acme"]);
        let cx = extract_with(header, &BaggagePolicy::none());
        assert_eq!(baggage_of(&cx), None);
        assert!(
            cx.span().span_context().is_valid(),
            "the trace goes on without baggage"
        );
    }

    #[test]
    fn malformed_trace_context_starts_a_new_trace_instead_of_failing() {
        for pairs in [
            &[("traceparent", "nonsense")][..],
            &[(
                "traceparent",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            )][..],
            &[("tracestate", "vendor=abc")][..],
        ] {
            let pairs: &'static [(&'static str, &'static str)] =
                Box::leak(pairs.to_vec().into_boxed_slice());
            let cx = from(pairs);
            assert!(!cx.span().span_context().is_valid(), "{pairs:?}");
            assert!(inject(&cx).iter().all(|(k, _)| *k != "traceparent"));
        }
    }
}
