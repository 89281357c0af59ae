//! `/healthz` (the process answers) and `/readyz` (every readiness check passes), the same for
//! every service.
//!
//! What "ready" means belongs to the service, not to this crate: it registers named checks in a
//! [`Readiness`] (its database, its Kafka client, its background workers still running, ...)
//! and its state provides that through `FromRef`. This keeps eda-http free of database and
//! Kafka clients; the checks for those are behind the `postgres` and `kafka` features.
//!
//! ```
//! let mut readiness = eda_http::health::Readiness::new();
//! readiness.add("cache", || async { Ok(()) });
//! readiness.add("disk", || async { Err("under 1 % free".to_owned()) });
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{FromRef, State};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::ApiError;

/// Routes machines call all the time (probes and the metrics scrape): pass them to
/// `eda_context::http::ContextLayer::with_quiet_routes` so that their "request finished" lines
/// do not drown the log.
pub const PROBE_ROUTES: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// How long one check may take: a probe gets an answer in time even when a dependency hangs
/// (it then counts as failed).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// What a boxed check returns: `Ok`, or why the service is not ready.
pub type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

type Check = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// The named checks `/readyz` runs. Cloning shares them.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(Cow<'static, str>, Check)>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.checks.iter().map(|(name, _)| name.as_ref()).collect();
        f.debug_struct("Readiness").field("checks", &names).finish()
    }
}

impl Readiness {
    /// No checks yet: ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a check: `check()` is called on every `/readyz` and resolves to `Ok(())` or to a
    /// message saying what is wrong (shown to the caller: no secrets in it). Checks run
    /// concurrently, each for at most [`CHECK_TIMEOUT`].
    pub fn add<F, Fut>(&mut self, name: impl Into<Cow<'static, str>>, check: F) -> &mut Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks.push((
            name.into(),
            Arc::new(move || Box::pin(check()) as CheckFuture),
        ));
        self
    }

    /// Runs every check, concurrently; returns each name with its outcome, in the order added.
    pub async fn run(&self) -> Vec<(Cow<'static, str>, Result<(), String>)> {
        // Spawned, so that the checks run at the same time and a panicking one is a failure
        // rather than a dropped connection.
        let running: Vec<_> = self
            .checks
            .iter()
            .map(|(name, check)| {
                (
                    name.clone(),
                    tokio::spawn(tokio::time::timeout(CHECK_TIMEOUT, check())),
                )
            })
            .collect();
        let mut outcomes = Vec::with_capacity(running.len());
        for (name, task) in running {
            let outcome = match task.await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
                Err(err) => Err(format!("the check failed: {err}")),
            };
            outcomes.push((name, outcome));
        }
        outcomes
    }
}

/// `/healthz` and `/readyz`, documented in the router's OpenAPI document.
pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Readiness: FromRef<S>,
{
    OpenApiRouter::default()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

/// Body of `/healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Alive {
    /// Always `ok`: an answer at all is the signal.
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Body of a `/readyz` that passed.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    /// Always `ready`.
    #[schema(example = "ready")]
    pub status: &'static str,
    /// Each check's name, with `ok`.
    pub checks: BTreeMap<String, String>,
}

/// Liveness: the process answers (no dependency is checked).
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "probes",
    responses((status = 200, description = "The process answers", body = Alive))
)]
async fn healthz() -> Json<Alive> {
    Json(Alive { status: "ok" })
}

/// Readiness: every check the service registered passes (each at most [`CHECK_TIMEOUT`]).
/// 200 `{"status": "ready", "checks": {"database": "ok", ...}}`, or 503 problem details whose
/// `detail` names each failing check and why.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "probes",
    responses(
        (status = 200, description = "Every check passes", body = Ready),
        (status = 503, description = "A check fails; `detail` names each failing check and why",
            body = crate::ProblemDetails, content_type = "application/problem+json",
            headers(("retry-after" = String, description = "Seconds to wait before asking again"))),
    )
)]
async fn readyz(State(readiness): State<Readiness>) -> Result<Json<Ready>, ApiError> {
    let outcomes = readiness.run().await;
    let failing: Vec<String> = outcomes
        .iter()
        .filter_map(|(name, outcome)| outcome.as_ref().err().map(|why| format!("{name}: {why}")))
        .collect();
    if !failing.is_empty() {
        tracing::warn!(failing = %failing.join("; "), "not ready");
        return Err(ApiError::Unavailable(format!(
            "not ready: {}",
            failing.join("; ")
        )));
    }
    let checks = outcomes
        .into_iter()
        .map(|(name, _)| (name.into_owned(), "ok".to_owned()))
        .collect();
    Ok(Json(Ready {
        status: "ready",
        checks,
    }))
}

/// A check that PostgreSQL answers `SELECT 1` through `pool`.
#[cfg(feature = "postgres")]
pub fn postgres(pool: sqlx::PgPool) -> impl Fn() -> CheckFuture + Send + Sync + 'static {
    move || {
        let pool = pool.clone();
        Box::pin(async move {
            sqlx::query("SELECT 1")
                .execute(&pool)
                .await
                .map(drop)
                .map_err(|err| err.to_string())
        })
    }
}

/// A check that the Kafka cluster answers a metadata request from `client` (any client of the
/// service: this proves the brokers it was given are reachable).
#[cfg(feature = "kafka")]
pub fn kafka(
    client: Arc<rdkafka::producer::BaseProducer>,
) -> impl Fn() -> CheckFuture + Send + Sync + 'static {
    use rdkafka::producer::Producer as _;
    move || {
        let client = Arc::clone(&client);
        Box::pin(async move {
            // librdkafka's call blocks its thread until the answer or the timeout.
            tokio::task::spawn_blocking(move || {
                client.client().fetch_metadata(None, Duration::from_secs(2))
            })
            .await
            .map_err(|err| err.to_string())?
            .map(drop)
            .map_err(|err| err.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_check_is_reported_in_order_and_a_hanging_one_fails_in_time() {
        tokio::time::pause();
        let mut readiness = Readiness::new();
        readiness
            .add("a", || async { Ok(()) })
            .add("hangs", std::future::pending)
            .add("b", || async { Err("down".to_owned()) });
        let outcomes: Vec<(String, Result<(), String>)> = readiness
            .run()
            .await
            .into_iter()
            .map(|(name, outcome)| (name.into_owned(), outcome))
            .collect();
        assert_eq!(
            outcomes,
            [
                ("a".to_owned(), Ok(())),
                (
                    "hangs".to_owned(),
                    Err(format!("no answer within {CHECK_TIMEOUT:?}"))
                ),
                ("b".to_owned(), Err("down".to_owned())),
            ]
        );
    }

    #[tokio::test]
    async fn readyz_names_the_failing_checks() {
        let mut readiness = Readiness::new();
        readiness.add("database", || async { Ok(()) });
        assert!(readyz(State(readiness.clone())).await.is_ok());
        readiness.add("workers", || async { Err("consumer ended".to_owned()) });
        match readyz(State(readiness)).await {
            Err(ApiError::Unavailable(detail)) => {
                assert_eq!(detail, "not ready: workers: consumer ended");
            }
            other => panic!("expected 503, got {other:?}"),
        }
    }
}
