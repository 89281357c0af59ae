//! The switch between the fix and the pitfall, and the two calls every hop makes: read the
//! context of what came in ([`Propagation::incoming`]), write it on what goes out
//! ([`Propagation::outgoing`]).

use std::fmt;
use std::str::FromStr;

use opentelemetry::Context;

use crate::{BaggagePolicy, EventContext, trace};

/// Whether a service carries context across its boundaries (`PROPAGATION=on|off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Propagation {
    /// The fix: read `traceparent`/ids from what comes in, write them on everything that goes out.
    #[default]
    On,
    /// The pitfall, on purpose: nothing is read or written, so every hop starts a new trace and
    /// a new request id, and an incident can no longer be followed across services.
    Off,
}

impl Propagation {
    /// The context of an incoming event, read through `header` (a Kafka header lookup):
    /// the ids (sanitised, missing ones replaced) and the trace parent (empty when absent or
    /// malformed). With [`Propagation::Off`] nothing is read: fresh ids, no parent.
    /// Baggage is limited to the default [`BaggagePolicy`]; [`Propagation::incoming_with`]
    /// takes another.
    pub fn incoming<'a>(self, header: impl Fn(&str) -> Option<&'a str>) -> (EventContext, Context) {
        self.incoming_with(header, &BaggagePolicy::default())
    }

    /// [`Propagation::incoming`], keeping only the baggage members `baggage` accepts.
    pub fn incoming_with<'a>(
        self,
        header: impl Fn(&str) -> Option<&'a str>,
        baggage: &BaggagePolicy,
    ) -> (EventContext, Context) {
        match self {
            Self::On => (
                EventContext::from_event(&header),
                trace::extract_with(&header, baggage),
            ),
            Self::Off => (EventContext::new_request(), Context::new()),
        }
    }

    /// The headers to write on an event emitted now: `ctx`'s ids plus the current OpenTelemetry
    /// context. Inside a span exported by tracing-opentelemetry that is the innermost such
    /// span (activated on enter), so a span left out by a filter does not break the chain;
    /// eda-context's HTTP layer and eda-idempotent-consumer also attach the incoming parent
    /// around the handler, so without any exported span the caller's context goes on. Empty
    /// with [`Propagation::Off`].
    pub fn outgoing(self, ctx: &EventContext) -> Vec<(&'static str, String)> {
        match self {
            Self::On => {
                let mut headers = ctx.headers();
                headers.extend(trace::inject(&Context::current()));
                headers
            }
            Self::Off => Vec::new(),
        }
    }

    /// Whether context is carried.
    pub fn is_on(self) -> bool {
        self == Self::On
    }
}

impl FromStr for Propagation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            other => Err(format!("{other:?}: expected on or off")),
        }
    }
}

impl fmt::Display for Propagation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::On => "on",
            Self::Off => "off",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt as _;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn lookup(name: &str) -> Option<&'static str> {
        match name {
            "traceparent" => Some(TP),
            "request-id" => Some("req-7"),
            _ => None,
        }
    }

    #[test]
    fn on_reads_ids_and_parent() {
        let (ctx, parent) = Propagation::On.incoming(lookup);
        assert_eq!(ctx.request_id, "req-7");
        assert!(parent.span().span_context().is_valid());
    }

    #[test]
    fn off_reads_nothing_and_writes_nothing() {
        let (ctx, parent) = Propagation::Off.incoming(lookup);
        assert_ne!(ctx.request_id, "req-7");
        assert!(!parent.span().span_context().is_valid());
        assert!(Propagation::Off.outgoing(&ctx).is_empty());
    }

    #[test]
    fn on_writes_the_ids_even_without_a_span() {
        let ctx = EventContext::from_http(|_| Some("req-9"));
        let headers = Propagation::On.outgoing(&ctx);
        assert!(headers.contains(&("request-id", "req-9".to_owned())));
        assert!(
            headers.iter().all(|(k, _)| *k != "traceparent"),
            "no exporting subscriber here: no span context to write"
        );
    }

    #[test]
    fn an_attached_incoming_parent_goes_on() {
        let (ctx, parent) = Propagation::On.incoming(lookup);
        let _attached = parent.attach();
        let headers = Propagation::On.outgoing(&ctx);
        assert!(headers.contains(&("traceparent", TP.to_owned())));
        assert!(Propagation::Off.outgoing(&ctx).is_empty());
    }

    #[test]
    fn incoming_baggage_follows_the_policy() {
        let header = |name: &str| match name {
            "traceparent" => Some(TP),
            "baggage" => Some("tenant=acme,plan=pro"),
            _ => None,
        };
        let baggage = |cx: Context| {
            let _attached = cx.attach();
            Propagation::On
                .outgoing(&EventContext::new_request())
                .into_iter()
                .find(|(k, _)| *k == "baggage")
                .map(|(_, v)| v)
        };
        let (_, default) = Propagation::On.incoming(header);
        assert_eq!(baggage(default).as_deref(), Some("tenant=acme"));
        let plan = BaggagePolicy::allow(["plan"]).unwrap();
        let (_, custom) = Propagation::On.incoming_with(header, &plan);
        assert_eq!(baggage(custom).as_deref(), Some("plan=pro"));
        let (_, off) = Propagation::Off.incoming_with(header, &plan);
        assert!(!off.span().span_context().is_valid());
    }

    #[test]
    fn parses_the_env_values() {
        assert_eq!("ON".parse(), Ok(Propagation::On));
        assert_eq!(" off ".parse(), Ok(Propagation::Off));
        assert!(
            "maybe"
                .parse::<Propagation>()
                .unwrap_err()
                .contains("on or off")
        );
        assert_eq!(Propagation::Off.to_string(), "off");
    }
}
