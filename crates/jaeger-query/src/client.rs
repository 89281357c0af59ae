//! The HTTP side: Jaeger's query API (`/api/services`, `/api/traces`, `/api/traces/{id}`).

use std::time::Duration;

use serde_json::Value;

use crate::trace::{Trace, parse_trace};
use crate::{Error, Result};

/// Where Jaeger's query API listens when `JAEGER_QUERY_URL` is not set (Jaeger's own default).
pub const DEFAULT_URL: &str = "http://127.0.0.1:16686";

/// How long one query may take: Jaeger answers in milliseconds, a hung one should not hang a
/// test run.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// How many traces one search asks for, and how far back.
const SEARCH_LIMIT: &str = "200";
const SEARCH_LOOKBACK: &str = "1h";

/// Jaeger's query API at one URL.
#[derive(Debug, Clone)]
pub struct Jaeger {
    url: String,
    client: reqwest::Client,
}

impl Default for Jaeger {
    fn default() -> Self {
        Self::from_env()
    }
}

impl Jaeger {
    /// From `JAEGER_QUERY_URL`, else [`DEFAULT_URL`].
    pub fn from_env() -> Self {
        Self::new(
            &std::env::var("JAEGER_QUERY_URL")
                .ok()
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| DEFAULT_URL.to_owned()),
        )
    }

    /// The query API at `url` (e.g. `http://127.0.0.1:16686`). Nothing is sent yet: a URL that
    /// does not parse is reported by the first query.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.trim_end_matches('/').to_owned(),
            client: reqwest::Client::new(),
        }
    }

    /// The base URL queries go to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `GET path?query`; Jaeger's 404 (no such trace) reads as JSON `null`.
    async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value> {
        let url = reqwest::Url::parse_with_params(&format!("{}{path}", self.url), query).map_err(
            |source| Error::Url {
                url: self.url.clone(),
                source,
            },
        )?;
        let response = self
            .client
            .get(url.clone())
            .timeout(QUERY_TIMEOUT)
            .send()
            .await
            .map_err(|source| Error::Unreachable {
                url: self.url.clone(),
                source,
            })?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(Value::Null);
        }
        response.json().await.map_err(|source| Error::NotJson {
            url: url.to_string(),
            source,
        })
    }

    /// Service names Jaeger has spans of.
    ///
    /// # Errors
    /// When Jaeger does not answer, or not with JSON.
    pub async fn services(&self) -> Result<Vec<String>> {
        let body = self.get("/api/services", &[]).await?;
        Ok(body["data"]
            .as_array()
            .map(|names| {
                names
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// One trace by id, `None` when Jaeger does not have it.
    ///
    /// # Errors
    /// When Jaeger does not answer, or not with JSON.
    pub async fn trace(&self, trace_id: &str) -> Result<Option<Trace>> {
        let body = self.get(&format!("/api/traces/{trace_id}"), &[]).await?;
        Ok(body["data"]
            .as_array()
            .and_then(|traces| traces.first())
            .map(parse_trace))
    }

    /// Traces holding a span with attribute `key` = `value`, from any service, deduplicated.
    /// Jaeger searches one service at a time, so this asks each service in turn: it finds the
    /// pieces of a flow whose trace context was lost between services (pitfall 3) too.
    ///
    /// # Errors
    /// When Jaeger does not answer, or not with JSON.
    pub async fn traces_tagged(&self, key: &str, value: &str) -> Result<Vec<Trace>> {
        let mut found: Vec<Trace> = Vec::new();
        for service in self.services().await? {
            for trace in self.search(&service, &[(key, value)]).await? {
                if !found.iter().any(|t| t.id == trace.id) {
                    found.push(trace);
                }
            }
        }
        Ok(found)
    }

    /// Traces of `service` from the last hour (at most 200), optionally only those with a span
    /// carrying every attribute in `tags`. An unknown service gives an empty list.
    ///
    /// # Errors
    /// When Jaeger does not answer, or not with JSON.
    pub async fn search(&self, service: &str, tags: &[(&str, &str)]) -> Result<Vec<Trace>> {
        let mut query = vec![
            ("service", service.to_owned()),
            ("limit", SEARCH_LIMIT.to_owned()),
            ("lookback", SEARCH_LOOKBACK.to_owned()),
        ];
        if !tags.is_empty() {
            let tags: serde_json::Map<String, Value> = tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
                .collect();
            query.push(("tags", Value::Object(tags).to_string()));
        }
        let body = self.get("/api/traces", &query).await?;
        Ok(body["data"]
            .as_array()
            .map(|traces| traces.iter().map(parse_trace).collect())
            .unwrap_or_default())
    }

    /// [`search`](Self::search) for tests, which assert on the result and have nothing better
    /// to do with an error than stop.
    ///
    /// # Panics
    /// When Jaeger does not answer, or not with JSON.
    pub async fn traces(&self, service: &str, tags: &[(&str, &str)]) -> Vec<Trace> {
        self.search(service, tags)
            .await
            .unwrap_or_else(|e| panic!("{}", crate::error_chain(&e)))
    }

    /// Polls [`traces`](Self::traces) until `done` accepts the result or `timeout` passes, and
    /// returns the last result either way (the caller asserts on it). Spans reach Jaeger a
    /// moment after they end (the exporter batches them), hence the polling.
    ///
    /// # Panics
    /// When Jaeger does not answer, or not with JSON.
    pub async fn wait_for(
        &self,
        service: &str,
        tags: &[(&str, &str)],
        timeout: Duration,
        done: impl Fn(&[Trace]) -> bool,
    ) -> Vec<Trace> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let traces = self.traces(service, tags).await;
            if done(&traces) || tokio::time::Instant::now() >= deadline {
                return traces;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
