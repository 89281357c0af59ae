//! `bench http`: `POST /orders` throughput and latency of order-service run in-process,
//! outbox mode vs direct mode, with or without telemetry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eda_stack_admin::{Stack, unique};
use order_service::configuration::{PublishMode, RelayMode, ServiceSettings, Settings};
use serde_json::json;

use super::BoxError;
use super::common::{
    bench_telemetry, create_topic, delete_topic, drop_database, percentile, report,
    scratch_database,
};

/// Runs order-service in this process, once per publish mode, under `concurrency` clients.
pub(super) async fn run(
    stack: &Stack,
    seconds: u64,
    concurrency: usize,
    propagation: eda_context::Propagation,
    export: bool,
) -> Result<(), BoxError> {
    let _telemetry = bench_telemetry(export)?;
    let mut out = vec![format!(
        "== POST /orders, {concurrency} concurrent clients, {seconds} s per mode, propagation {propagation}, {} ==",
        if export {
            "spans exported"
        } else {
            "no tracing subscriber"
        }
    )];
    for mode in [PublishMode::Outbox, PublishMode::Direct] {
        let (db, pool) = scratch_database(stack).await?;
        let topic = create_topic(stack, 6).await?;
        let inventory_topic = create_topic(stack, 6).await?;
        let secret = "bench-secret-0123456789abcdef";
        let settings = Settings {
            service: ServiceSettings {
                http_host: [127, 0, 0, 1].into(),
                http_port: 0,
                database_url: stack.database_url(&db).into(),
                kafka_bootstrap_servers: stack.kafka_bootstrap_servers.clone(),
                jwt_secret: secret.into(),
                max_body_bytes: 64 * 1024,
                shutdown_timeout: Duration::from_secs(10),
                propagation,
                baggage: Default::default(),
                consumer_stuck_after: std::time::Duration::from_secs(60),
            },
            order_events_topic: topic.clone(),
            inventory_events_topic: inventory_topic.clone(),
            consumer_group: unique("bench-order-service"),
            dedupe: eda_idempotent_consumer::Dedupe::EventId,
            publish_mode: mode,
            relay_mode: RelayMode::InProcess,
            relay_poll_interval: Duration::from_secs(1),
            outbox_retention: Duration::from_secs(3600),
            claim_check: eda_claim_check::Settings::from_env().expect("claim-check settings"),
            max_order_body_bytes: 16 * 1024 * 1024,
        };
        let app = order_service::startup::Application::build(settings).await?;
        let base = format!("http://127.0.0.1:{}", app.port());
        let (tx_stop, rx_stop) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped(async move {
            let _ = rx_stop.await;
        }));
        let token =
            order_service::auth::issue_token(secret, "bench", &[], Duration::from_secs(3600))?;
        let body = Arc::new(
            json!({"customer": {"name": "Bench", "email": "bench@example.com"}, "currency": "EUR",
            "lines": [{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 1250}, {"sku": "SKU-2", "quantity": 1, "unit_price_cents": 500}]}),
        );
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut workers = Vec::new();
        for _ in 0..concurrency {
            let (client, base, token, body) = (
                client.clone(),
                base.clone(),
                token.clone(),
                Arc::clone(&body),
            );
            workers.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match client
                        .post(format!("{base}/orders"))
                        .bearer_auth(&token)
                        .json(&*body)
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 201 => lat.push(t.elapsed().as_secs_f64() * 1000.0),
                        _ => errors += 1,
                    }
                }
                (lat, errors)
            }));
        }
        let mut latencies = Vec::new();
        let mut errors = 0;
        for w in futures::future::join_all(workers).await {
            let (l, e) = w?;
            latencies.extend(l);
            errors += e;
        }
        latencies.sort_by(f64::total_cmp);
        out.push(format!(
            "{:<7}: {:>6.0} orders/s  p50 {:.1} ms  p99 {:.1} ms  errors {errors}",
            if mode == PublishMode::Outbox {
                "outbox"
            } else {
                "direct"
            },
            latencies.len() as f64 / seconds as f64,
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99)
        ));
        let _ = tx_stop.send(());
        server.await??;
        delete_topic(stack, &topic).await;
        delete_topic(stack, &inventory_topic).await;
        drop_database(stack, &db, pool).await?;
    }
    report(&out);
    Ok(())
}
