//! Reads traces back from Jaeger's query API: the judge of the context-propagation tests.

use std::collections::HashMap;
use std::time::Duration;

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
    /// Attributes, as strings.
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

    /// Distinct service names in the trace.
    pub fn services(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.spans.iter().map(|s| s.service.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

/// Jaeger's query API at `url` (`JAEGER_QUERY_URL`, default `http://127.0.0.1:16686`).
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
    /// From `JAEGER_QUERY_URL`.
    pub fn from_env() -> Self {
        Self::new(
            &std::env::var("JAEGER_QUERY_URL")
                .ok()
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| "http://127.0.0.1:16686".to_owned()),
        )
    }

    /// The query API at `url` (e.g. `http://127.0.0.1:16686`).
    pub fn new(url: &str) -> Self {
        Self {
            url: url.trim_end_matches('/').to_owned(),
            client: reqwest::Client::new(),
        }
    }

    async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, String> {
        let url = reqwest::Url::parse_with_params(&format!("{}{path}", self.url), query)
            .map_err(|e| format!("JAEGER_QUERY_URL {:?} is not a URL: {e}", self.url))?;
        let response = self
            .client
            .get(url.clone())
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| format!("Jaeger query API at {}: {e} (is the stack up?)", self.url))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(Value::Null);
        }
        response
            .json()
            .await
            .map_err(|e| format!("Jaeger answered {url} with something that is not JSON: {e}"))
    }

    /// Service names Jaeger has spans of.
    ///
    /// # Errors
    /// When Jaeger does not answer.
    pub async fn services(&self) -> Result<Vec<String>, String> {
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
    /// When Jaeger does not answer.
    pub async fn trace(&self, trace_id: &str) -> Result<Option<Trace>, String> {
        let body = self.get(&format!("/api/traces/{trace_id}"), &[]).await?;
        Ok(body["data"]
            .as_array()
            .and_then(|traces| traces.first())
            .map(parse_trace))
    }

    /// Traces holding a span with attribute `key` = `value`, from any service, deduplicated.
    ///
    /// # Errors
    /// When Jaeger does not answer.
    pub async fn traces_tagged(&self, key: &str, value: &str) -> Result<Vec<Trace>, String> {
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
    /// # Panics
    /// When Jaeger does not answer or answers something that is not its JSON.
    pub async fn traces(&self, service: &str, tags: &[(&str, &str)]) -> Vec<Trace> {
        self.search(service, tags)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn search(&self, service: &str, tags: &[(&str, &str)]) -> Result<Vec<Trace>, String> {
        let mut query = vec![
            ("service", service.to_owned()),
            ("limit", "200".to_owned()),
            ("lookback", "1h".to_owned()),
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

    /// Polls [`traces`](Self::traces) until `done` accepts the result or `timeout` passes;
    /// returns the last result either way (the caller asserts on it).
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

fn parse_trace(trace: &Value) -> Trace {
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
                .map(|span| Span {
                    trace_id: span["traceID"].as_str().unwrap_or_default().to_owned(),
                    span_id: span["spanID"].as_str().unwrap_or_default().to_owned(),
                    parent: span["references"].as_array().and_then(|refs| {
                        refs.iter()
                            .find(|r| r["refType"] == "CHILD_OF")
                            .and_then(|r| r["spanID"].as_str())
                            .map(str::to_owned)
                    }),
                    name: span["operationName"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
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
                                    (t["key"].as_str().unwrap_or_default().to_owned(), value)
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    start_us: span["startTime"].as_u64().unwrap_or_default(),
                    duration_us: span["duration"].as_u64().unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    Trace {
        id: trace["traceID"].as_str().unwrap_or_default().to_owned(),
        spans,
    }
}
