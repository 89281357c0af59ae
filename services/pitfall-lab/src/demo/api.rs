//! The services' HTTP API, as curl uses it in the README: dev bearer tokens
//! (`order_service::auth::issue_token`, like `pitfall-lab token`), orders, stock, `/metrics`.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use super::{BoxError, Demo};

/// Tries of one `POST /orders` before its last answer is taken as it is.
const PLACE_ATTEMPTS: u32 = 10;

/// Final states of an order.
pub const SETTLED: [&str; 3] = ["CONFIRMED", "REJECTED", "CANCELLED"];

/// Where the services listen, and how to sign tokens for them.
#[derive(Debug, Clone)]
pub struct Api {
    client: reqwest::Client,
    secret: String,
    /// order-service.
    pub order: String,
    /// inventory-service.
    pub inventory: String,
    /// projection-service.
    pub projection: String,
}

/// An answer: status, JSON body (`Null` when there is none) and headers.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// The body, parsed.
    pub body: Value,
    /// Response headers (`traceparent`, `x-request-id`).
    pub headers: HeaderMap,
}

impl Api {
    /// From the demo's arguments.
    pub fn new(args: &Demo) -> Result<Self, BoxError> {
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
            secret: args.system.secret.clone(),
            order: args.system.order_url.trim_end_matches('/').to_owned(),
            inventory: args.system.inventory_url.trim_end_matches('/').to_owned(),
            projection: args.projection_url.trim_end_matches('/').to_owned(),
        })
    }

    /// A bearer token for `user` with `roles`.
    pub fn token(&self, user: &str, roles: &[&str]) -> Result<String, BoxError> {
        let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
        Ok(order_service::auth::issue_token(
            &self.secret,
            user,
            &roles,
            Duration::from_secs(3600),
        )?)
    }

    /// `PUT /inventory/{sku}` with the admin role.
    pub async fn set_stock(&self, sku: &str, available: i64) -> Result<(), BoxError> {
        let r = self
            .client
            .put(format!("{}/inventory/{sku}", self.inventory))
            .bearer_auth(self.token("demo-admin", &["admin"])?)
            .json(&json!({ "available": available }))
            .send()
            .await?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(format!(
                "stocking {sku}: HTTP {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            )
            .into())
        }
    }

    /// `GET /inventory/{sku}`: (available, reserved).
    pub async fn stock(&self, sku: &str) -> Result<(i64, i64), BoxError> {
        let v: Value = self
            .client
            .get(format!("{}/inventory/{sku}", self.inventory))
            .bearer_auth(self.token("demo-reader", &[])?)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        match (v["available"].as_i64(), v["reserved"].as_i64()) {
            (Some(a), Some(r)) => Ok((a, r)),
            _ => Err(format!("GET /inventory/{sku}: unexpected body {v}").into()),
        }
    }

    /// `POST /orders` as `user`, with `x-request-id` when given. Like a careful client, it
    /// sends an `Idempotency-Key` and retries with it while the service is busy (503, 429) or
    /// unreachable, so a retry never places a second order.
    pub async fn place(
        &self,
        user: &str,
        body: &Value,
        request_id: Option<&str>,
    ) -> Result<Answer, BoxError> {
        let token = self.token(user, &[])?;
        let key = uuid::Uuid::now_v7().to_string();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = self
                .client
                .post(format!("{}/orders", self.order))
                .bearer_auth(&token)
                .header("idempotency-key", &key)
                .json(body);
            if let Some(id) = request_id {
                request = request.header("x-request-id", id);
            }
            match request.send().await {
                Ok(r) => {
                    let a = answer(r).await?;
                    if !matches!(a.status.as_u16(), 429 | 503) || attempt >= PLACE_ATTEMPTS {
                        return Ok(a);
                    }
                }
                Err(e) if attempt >= PLACE_ATTEMPTS => return Err(e.into()),
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
        }
    }

    /// `GET /orders/{id}` as `user`.
    pub async fn order(&self, user: &str, id: &str) -> Result<Answer, BoxError> {
        let r = self
            .client
            .get(format!("{}/orders/{id}", self.order))
            .bearer_auth(self.token(user, &[])?)
            .send()
            .await?;
        answer(r).await
    }

    /// Polls order `id` until its status is one of `wanted` or `timeout` passes; the last
    /// status seen and how long it took.
    pub async fn wait_status(
        &self,
        user: &str,
        id: &str,
        wanted: &[&str],
        timeout: Duration,
    ) -> Result<(String, Duration), BoxError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            let a = self.order(user, id).await?;
            let status = a.body["status"].as_str().unwrap_or("?").to_owned();
            if wanted.contains(&status.as_str()) || started.elapsed() >= timeout {
                return Ok((status, started.elapsed()));
            }
            // Quick at first (small orders settle in well under a second), then at most once
            // a second (a bulk order's answer is megabytes).
            tokio::time::sleep(pause).await;
            pause = (pause * 3 / 2).min(Duration::from_secs(1));
        }
    }

    /// `GET {base}{path}` as `user`, timed.
    pub async fn get_timed(
        &self,
        base: &str,
        path: &str,
        user: &str,
    ) -> Result<(Answer, Duration), BoxError> {
        let token = self.token(user, &[])?;
        let t = Instant::now();
        let r = self
            .client
            .get(format!("{base}{path}"))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| format!("{base}: {}", e.without_url()))?;
        let a = answer(r).await?;
        Ok((a, t.elapsed()))
    }

    /// The sum of the samples of metric `name` (every label set) on `base`'s `/metrics`.
    pub async fn metric(&self, base: &str, name: &str) -> Result<f64, BoxError> {
        let text = self
            .client
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(metric_sum(&text, name))
    }
}

async fn answer(r: reqwest::Response) -> Result<Answer, BoxError> {
    let status = r.status();
    let headers = r.headers().clone();
    let text = r.text().await?;
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok(Answer {
        status,
        body,
        headers,
    })
}

/// The sum of metric `name`'s samples in Prometheus text (`name 3`, `name{a="b"} 4`), not
/// counting other metrics that only start with the same letters.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                return None;
            }
            l.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

/// An order body: `lines` of (sku, quantity), 2.50 each.
pub fn order_body(lines: &[(&str, i64)]) -> Value {
    let lines: Vec<Value> = lines
        .iter()
        .map(|(sku, quantity)| json!({"sku": sku, "quantity": quantity, "unit_price_cents": 250}))
        .collect();
    json!({
        "customer": {"name": "Demo Customer", "email": "demo@example.com"},
        "currency": "EUR",
        "lines": lines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metric_sums_its_label_sets_and_ignores_longer_names() {
        let text = "# HELP consumer_processed_total x\nconsumer_processed_total{topic=\"a\"} 3\n\
                    consumer_processed_total{topic=\"b\"} 4\nconsumer_processed_total_other 100\n\
                    consumer_duplicates_total 2\n";
        assert_eq!(metric_sum(text, "consumer_processed_total"), 7.0);
        assert_eq!(metric_sum(text, "consumer_duplicates_total"), 2.0);
        assert_eq!(metric_sum(text, "missing"), 0.0);
    }

    #[test]
    fn an_order_body_has_the_api_shape() {
        let body = order_body(&[("A", 2)]);
        assert_eq!(body["lines"][0]["sku"], "A");
        assert_eq!(body["lines"][0]["quantity"], 2);
        assert_eq!(body["currency"], "EUR");
    }
}
