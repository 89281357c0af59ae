//! `/metrics`: the outbox relay's counters and backlog, the consumer's counters and
//! direct-mode losses, in one `prometheus_client` registry (OpenMetrics text).

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use eda_idempotent_consumer::ConsumerCollector;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::registry::Registry;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;
use eda_http::ApiError;
use eda_http::openapi::ServerErrors;

/// `/metrics`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(metrics))
}

/// Events `PUBLISH_MODE=direct` lost (its producer gave up after the commit).
#[derive(Debug)]
struct DirectFailures(u64);

impl Collector for DirectFailures {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let counter = ConstCounter::new(self.0);
        counter.encode(encoder.encode_descriptor(
            "direct_publish_failures",
            "Events lost by PUBLISH_MODE=direct.",
            None,
            counter.metric_type(),
        )?)
    }
}

/// OpenMetrics text: the outbox backlog, oldest pending age, parked rows, published events and
/// errors, relay leadership; the consumer's counters; events `PUBLISH_MODE=direct` lost.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "probes",
    responses(
        (status = 200, description = "The metrics", body = String,
            content_type = "application/openmetrics-text"),
        ServerErrors,
    )
)]
async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let mut registry = Registry::default();
    if let Some(relay) = &state.relay_metrics {
        relay.refresh_backlog(&state.pool).await?;
        registry.register_collector(Box::new(Arc::clone(relay)));
    }
    registry.register_collector(Box::new(ConsumerCollector::new([(
        state.consumer_group.to_string(),
        Arc::clone(&state.consumer_metrics),
    )])));
    if let Some(direct) = &state.direct {
        registry.register_collector(Box::new(DirectFailures(direct.failures())));
    }
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, &registry).map_err(ApiError::internal)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    ))
}
