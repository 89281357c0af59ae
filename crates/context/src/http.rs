//! HTTP (axum/tower): a layer that gives every request its context and server span.
//!
//! [`ContextLayer`] accepts a sane `x-request-id` or creates one, starts the server span as a
//! child of an incoming `traceparent` (when propagation is on), puts the [`EventContext`] in the
//! request's extensions (handlers take it as an extractor), and returns `x-request-id` and
//! `traceparent` on the response. The span has `request_id` and `user_id` fields: an
//! authentication extractor fills `user_id` with [`record_user`].
//!
//! ```
//! use axum::{Router, routing::post};
//! use eda_context::{EventContext, Propagation, http::ContextLayer};
//!
//! async fn place(ctx: EventContext) -> String {
//!     // Headers for the event this request emits (ids + current trace context).
//!     let headers = Propagation::On.outgoing(&ctx.with_user("alice"));
//!     format!("{} headers", headers.len())
//! }
//!
//! let app: Router = Router::new()
//!     .route("/orders", post(place))
//!     .layer(ContextLayer::new(Propagation::On));
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use axum::extract::{FromRequestParts, MatchedPath};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Request, Response};
use opentelemetry::context::FutureExt as _;
use tracing::Instrument as _;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::{BaggagePolicy, EventContext, Propagation, names, sanitize, trace};

/// Adds [`ContextService`] around every route.
#[derive(Debug, Clone)]
pub struct ContextLayer {
    propagation: Propagation,
    quiet_routes: &'static [&'static str],
    baggage: BaggagePolicy,
}

impl ContextLayer {
    /// With [`Propagation::Off`], an incoming `traceparent` is ignored (every request starts
    /// a new trace); request ids are still accepted and returned.
    pub fn new(propagation: Propagation) -> Self {
        Self {
            propagation,
            quiet_routes: &[],
            baggage: BaggagePolicy::default(),
        }
    }

    /// The baggage keys accepted from callers (default: [`BaggagePolicy::default`]); other
    /// members of an incoming `baggage` header are dropped.
    #[must_use]
    pub fn with_baggage(mut self, baggage: BaggagePolicy) -> Self {
        self.baggage = baggage;
        self
    }

    /// Routes whose "request finished" line is logged at DEBUG instead of INFO: health checks
    /// and scrapes that would otherwise drown the log (they still get a span and ids).
    #[must_use]
    pub fn with_quiet_routes(mut self, routes: &'static [&'static str]) -> Self {
        self.quiet_routes = routes;
        self
    }
}

impl<S> tower::Layer<S> for ContextLayer {
    type Service = ContextService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ContextService {
            inner,
            propagation: self.propagation,
            quiet_routes: self.quiet_routes,
            baggage: self.baggage.clone(),
        }
    }
}

/// The service [`ContextLayer`] wraps around a route.
#[derive(Debug, Clone)]
pub struct ContextService<S> {
    inner: S,
    propagation: Propagation,
    quiet_routes: &'static [&'static str],
    baggage: BaggagePolicy,
}

impl<S, B, RB> tower::Service<Request<B>> for ContextService<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let headers = request.headers();
        let lookup = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let ctx = EventContext::from_http(lookup);
        let parent = match self.propagation {
            Propagation::On => trace::extract_with(lookup, &self.baggage),
            Propagation::Off => opentelemetry::Context::new(),
        };
        let method = request.method().as_str().to_owned();
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map(|p| p.as_str().to_owned());
        let span = tracing::info_span!(
            target: "eda_context::http",
            "HTTP request",
            otel.name = %format!("{method} {}", route.as_deref().unwrap_or("")).trim_end(),
            otel.kind = "server",
            otel.status_code = Empty,
            http.request.method = %method,
            http.route = route.as_deref(),
            url.path = sanitize::printable(request.uri().path(), 1024),
            http.response.status_code = Empty,
            request_id = %ctx.request_id,
            user_id = Empty,
        );
        // A no-op when the span is not exported (no OpenTelemetry layer, or TRACE_FILTER): the
        // parent is also attached around the handler below, so the chain still goes on.
        let _ = span.set_parent(parent.clone());
        request.extensions_mut().insert(ctx.clone());
        let quiet = route
            .as_deref()
            .is_some_and(|r| self.quiet_routes.contains(&r));
        let started = Instant::now();
        // Attached first, entered second: inside, the current OpenTelemetry context is the
        // server span when it is exported, else the caller's parent.
        let future = self
            .inner
            .call(request)
            .instrument(span.clone())
            .with_context(parent);
        Box::pin(async move {
            let mut response = future.await?;
            let status = response.status();
            span.record("http.response.status_code", status.as_u16());
            if status.is_server_error() {
                span.record("otel.status_code", "ERROR");
            }
            let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
            span.in_scope(|| {
                if quiet {
                    tracing::debug!(target: "eda_context::http", status = status.as_u16(), elapsed_ms, "request finished");
                } else {
                    tracing::info!(target: "eda_context::http", status = status.as_u16(), elapsed_ms, "request finished");
                }
            });
            let out = response.headers_mut();
            if let Ok(value) = HeaderValue::from_str(&ctx.request_id) {
                out.insert(names::HTTP_REQUEST_ID, value);
            }
            for (name, value) in trace::inject(&span.context()) {
                if name == "traceparent"
                    && let Ok(value) = HeaderValue::from_str(&value)
                {
                    out.insert(name, value);
                }
            }
            Ok(response)
        })
    }
}

/// Records the authenticated user on the current request's span (the `user_id` log field).
/// Call it from the authentication extractor; an unusable id is not recorded.
pub fn record_user(user_id: &str) {
    if let Some(id) = sanitize::id(user_id) {
        tracing::Span::current().record("user_id", id.as_str());
    }
}

/// The request's context, as put there by [`ContextLayer`]; a fresh one if the layer is missing.
impl<S: Send + Sync> FromRequestParts<S> for EventContext {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<EventContext>()
            .cloned()
            .unwrap_or_else(EventContext::new_request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt as _;

    async fn echo(ctx: EventContext) -> String {
        ctx.request_id
    }

    async fn call(request_id: Option<&str>) -> (String, Option<String>, String) {
        let app = Router::new()
            .route("/echo", get(echo))
            .layer(ContextLayer::new(Propagation::On));
        let mut request = Request::builder().uri("/echo");
        if let Some(id) = request_id {
            request = request.header("x-request-id", id);
        }
        let response = app
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert!(response.status().is_success());
        let returned = response
            .headers()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        (
            String::from_utf8(body.to_vec()).unwrap(),
            returned,
            request_id.unwrap_or_default().to_owned(),
        )
    }

    #[tokio::test]
    async fn a_sane_request_id_reaches_the_handler_and_the_response() {
        let (seen, returned, sent) = call(Some("req-123")).await;
        assert_eq!(seen, sent);
        assert_eq!(returned.as_deref(), Some("req-123"));
    }

    #[tokio::test]
    async fn a_hostile_request_id_is_replaced_never_echoed() {
        let long = "x".repeat(500);
        for bad in ["has space", "quote\"", long.as_str()] {
            let (seen, returned, _) = call(Some(bad)).await;
            assert_ne!(seen, bad);
            assert!(uuid::Uuid::parse_str(&seen).is_ok(), "{seen}");
            assert_eq!(returned.as_deref(), Some(seen.as_str()));
        }
    }

    /// The baggage a handler would pass on, as seen through the layer.
    async fn baggage_through(layer: ContextLayer) -> String {
        async fn outgoing_baggage(ctx: EventContext) -> String {
            Propagation::On
                .outgoing(&ctx)
                .into_iter()
                .find(|(k, _)| *k == "baggage")
                .map(|(_, v)| v)
                .unwrap_or_default()
        }
        let app = Router::new()
            .route("/baggage", get(outgoing_baggage))
            .layer(layer);
        let request = Request::builder()
            .uri("/baggage")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .header("baggage", "tenant=acme,plan=pro,secret=x")
            .body(Body::empty())
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn the_layer_passes_on_only_the_baggage_its_policy_accepts() {
        let default = ContextLayer::new(Propagation::On);
        assert_eq!(baggage_through(default).await, "tenant=acme");
        let plan = ContextLayer::new(Propagation::On)
            .with_baggage(BaggagePolicy::allow(["plan"]).unwrap());
        assert_eq!(baggage_through(plan).await, "plan=pro");
        let none = ContextLayer::new(Propagation::On).with_baggage(BaggagePolicy::none());
        assert_eq!(baggage_through(none).await, "");
    }

    #[tokio::test]
    async fn no_request_id_gets_a_fresh_one() {
        let (seen, returned, _) = call(None).await;
        assert!(uuid::Uuid::parse_str(&seen).is_ok());
        assert_eq!(returned, Some(seen));
    }
}
