//! Context that must follow a request through every service it touches (pitfall 3): the ids
//! people filter logs by ([`EventContext`]) and the W3C trace context that stitches spans into
//! one trace ([`trace`]).
//!
//! Everything read from the outside is sanitised first ([`sanitize`]): a malformed
//! `traceparent`, an oversized or control-character `x-request-id`, unknown baggage keys are
//! dropped or replaced, never passed on raw. Which baggage keys pass is a setting
//! ([`BaggagePolicy`], default [`baggage::DEFAULT_BAGGAGE_KEYS`]). A user id read from a Kafka
//! header is context for logs and traces, not a credential.
//!
//! The core is transport-neutral: callers hand in a header lookup (`|name| headers.get(name)`)
//! and get back `(name, value)` pairs to write. On top of it:
//! - [`Propagation`]: `incoming` (ids + trace parent of a consumed event) and `outgoing`
//!   (headers for an emitted event: ids + the current span's trace context), and the `off`
//!   switch that reproduces the pitfall;
//! - [`http::ContextLayer`] (feature `axum`): request id, server span, context in extensions;
//! - [`kafka`] (feature `kafka`): rdkafka header lookup and insertion.
//!
//! An outbox row carries the same headers as a Kafka record: pass `outgoing(..)` to
//! `eda_outbox::OutboxEvent::with_headers`.

pub mod baggage;
#[cfg(feature = "axum")]
pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka;
mod propagation;
pub mod sanitize;
pub mod trace;

pub use baggage::BaggagePolicy;
pub use propagation::Propagation;

/// Header names of the message contract (Kafka and outbox) and of HTTP.
pub mod names {
    /// Kafka / outbox header: the request that started it all.
    pub const REQUEST_ID: &str = "request-id";
    /// HTTP header carrying the request id.
    pub const HTTP_REQUEST_ID: &str = "x-request-id";
    /// The authenticated user, as context (never as a credential).
    pub const USER_ID: &str = "user-id";
    /// Groups every event of one business flow.
    pub const CORRELATION_ID: &str = "correlation-id";
    /// The event (or request) that directly caused this one.
    pub const CAUSATION_ID: &str = "causation-id";
}

/// The ids that travel with a request and every event it causes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventContext {
    /// Id of the originating request: accepted from `x-request-id` when well-formed, else new.
    pub request_id: String,
    /// Authenticated user at the origin, for logs and traces only.
    pub user_id: Option<String>,
    /// Id shared by the whole flow; the request id when the flow starts here.
    pub correlation_id: String,
    /// Id of the direct cause (an event id), when there is one.
    pub causation_id: Option<String>,
}

impl EventContext {
    /// A fresh context for a request that brought none (or only malformed ids).
    pub fn new_request() -> Self {
        let id = uuid::Uuid::new_v4().to_string();
        Self {
            request_id: id.clone(),
            user_id: None,
            correlation_id: id,
            causation_id: None,
        }
    }

    /// Reads an incoming HTTP request's context: `x-request-id` if it is a sane id, else a new
    /// one; the correlation id starts as the request id.
    pub fn from_http<'a>(header: impl Fn(&str) -> Option<&'a str>) -> Self {
        match header(names::HTTP_REQUEST_ID).and_then(sanitize::id) {
            Some(id) => Self {
                request_id: id.clone(),
                user_id: None,
                correlation_id: id,
                causation_id: None,
            },
            None => Self::new_request(),
        }
    }

    /// Reads the context of a consumed event. Missing or malformed ids are replaced, so that
    /// logs always have something to filter by; the event's own id becomes the causation id of
    /// whatever the handler emits (see [`EventContext::caused_by`]).
    pub fn from_event<'a>(header: impl Fn(&str) -> Option<&'a str>) -> Self {
        let request_id = header(names::REQUEST_ID).and_then(sanitize::id);
        let correlation_id = header(names::CORRELATION_ID).and_then(sanitize::id);
        let fresh = Self::new_request();
        let request_id = request_id.unwrap_or(fresh.request_id);
        Self {
            correlation_id: correlation_id.unwrap_or_else(|| request_id.clone()),
            request_id,
            user_id: header(names::USER_ID).and_then(sanitize::id),
            causation_id: header(names::CAUSATION_ID).and_then(sanitize::id),
        }
    }

    /// Sets the authenticated user (sanitised; an unusable id is dropped).
    #[must_use]
    pub fn with_user(mut self, user_id: &str) -> Self {
        self.user_id = sanitize::id(user_id);
        self
    }

    /// The context for events emitted because of `event_id`: same request, user and
    /// correlation, `causation-id` = that event.
    #[must_use]
    pub fn caused_by(&self, event_id: &str) -> Self {
        Self {
            causation_id: sanitize::id(event_id),
            ..self.clone()
        }
    }

    /// The contract headers to write on an outgoing event (Kafka or outbox row).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            (names::REQUEST_ID, self.request_id.clone()),
            (names::CORRELATION_ID, self.correlation_id.clone()),
        ];
        if let Some(user) = &self.user_id {
            out.push((names::USER_ID, user.clone()));
        }
        if let Some(cause) = &self.causation_id {
            out.push((names::CAUSATION_ID, cause.clone()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&'static str, &'static str)]) -> impl Fn(&str) -> Option<&'static str> {
        let map: HashMap<&str, &'static str> = pairs.iter().copied().collect();
        move |name| map.get(name).copied()
    }

    #[test]
    fn a_sane_request_id_is_kept_and_starts_the_correlation() {
        let ctx = EventContext::from_http(lookup(&[("x-request-id", "req-42")]));
        assert_eq!(ctx.request_id, "req-42");
        assert_eq!(ctx.correlation_id, "req-42");
    }

    #[test]
    fn hostile_request_ids_are_replaced_not_propagated() {
        for bad in ["", "a b", "line\nbreak", "\u{1b}[31mred", &"x".repeat(129)] {
            let bad: &'static str = Box::leak(bad.to_owned().into_boxed_str());
            let ctx = EventContext::from_http(lookup(&[("x-request-id", bad)]));
            assert_ne!(ctx.request_id, bad);
            assert!(
                uuid::Uuid::parse_str(&ctx.request_id).is_ok(),
                "replaced by a fresh id: {:?}",
                ctx.request_id
            );
        }
    }

    #[test]
    fn events_carry_the_flow_and_name_their_cause() {
        let incoming = EventContext::from_event(lookup(&[
            ("request-id", "req-1"),
            ("correlation-id", "flow-1"),
            ("user-id", "alice"),
        ]));
        let out = incoming.caused_by("0190c5e2-0000-7000-8000-000000000001");
        assert_eq!(
            out.headers(),
            vec![
                ("request-id", "req-1".to_owned()),
                ("correlation-id", "flow-1".to_owned()),
                ("user-id", "alice".to_owned()),
                (
                    "causation-id",
                    "0190c5e2-0000-7000-8000-000000000001".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn an_event_without_context_still_gets_ids_to_filter_by() {
        let ctx = EventContext::from_event(lookup(&[("user-id", "bad user\u{0}")]));
        assert!(uuid::Uuid::parse_str(&ctx.request_id).is_ok());
        assert_eq!(ctx.correlation_id, ctx.request_id);
        assert_eq!(ctx.user_id, None, "a control character drops the value");
    }
}

/// Runs the README's example, so the copy-paste snippet cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
