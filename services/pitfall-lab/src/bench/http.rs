//! `bench http`: `POST /orders` of order-service run in-process, with or without telemetry.
//!
//! - **Closed loop** (`concurrency` clients, each sending its next order when the last one is
//!   answered): the most orders per second each publish mode sustains. Three modes: outbox with
//!   the in-process relay, outbox rows only (no relay in the process: what Debezium mode costs
//!   the service), and direct publishing after commit.
//! - **Open loop** (`--rates`): orders arrive at a fixed rate whatever the service does, and the
//!   response time counts from each order's scheduled arrival (HDR histograms, corrected for
//!   coordinated omission; see [`open_loop`](super::open_loop)). Outbox and direct mode.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eda_stack_admin::{Stack, unique};
use order_service::configuration::{PublishMode, RelayMode, ServiceSettings, Settings};
use serde_json::json;

use super::BoxError;
use super::common::{
    bench_telemetry, create_topic, delete_topic, drop_database, percentile, report, save_result,
    scratch_database,
};
use super::counted::topic_with_dlq;
use super::open_loop::{self, curve, summary};

/// One way of running order-service.
#[derive(Debug, Clone, Copy)]
struct Mode {
    name: &'static str,
    publish: PublishMode,
    relay: RelayMode,
}

const OUTBOX: Mode = Mode {
    name: "outbox",
    publish: PublishMode::Outbox,
    relay: RelayMode::InProcess,
};
const OUTBOX_ROWS_ONLY: Mode = Mode {
    name: "outbox, rows only",
    publish: PublishMode::Outbox,
    relay: RelayMode::Debezium,
};
const DIRECT: Mode = Mode {
    name: "direct",
    publish: PublishMode::Direct,
    relay: RelayMode::InProcess,
};

/// What the run is about.
pub(super) struct Load {
    pub seconds: u64,
    pub concurrency: usize,
    pub propagation: eda_context::Propagation,
    pub export: bool,
    /// Open-loop arrival rates (orders/s); empty for none.
    pub rates: Vec<u64>,
}

/// Runs order-service in this process, once per mode, closed loop, then open loop per rate.
pub(super) async fn run(stack: &Stack, load: Load) -> Result<(), BoxError> {
    let _telemetry = bench_telemetry(load.export)?;
    let telemetry = if load.export {
        "spans exported"
    } else {
        "no tracing subscriber"
    };
    let mut out = vec![format!(
        "== POST /orders, closed loop: {} concurrent clients, {} s per mode, propagation {}, {telemetry} ==",
        load.concurrency, load.seconds, load.propagation
    )];
    let mut closed = Vec::new();
    for mode in [OUTBOX, OUTBOX_ROWS_ONLY, DIRECT] {
        let service = Service::start(stack, mode, load.propagation).await?;
        let (latencies, errors) = service.closed_loop(load.seconds, load.concurrency).await;
        let rate = latencies.len() as f64 / load.seconds as f64;
        out.push(format!(
            "{:<18}: {rate:>6.0} orders/s  p50 {:.1} ms  p99 {:.1} ms  errors {errors}",
            mode.name,
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99)
        ));
        closed.push(json!({
            "mode": mode.name, "orders_per_second": rate, "errors": errors,
            "p50_ms": percentile(&latencies, 0.5), "p99_ms": percentile(&latencies, 0.99),
        }));
        service.stop(stack).await?;
    }
    let ratio = |a: usize, b: usize| {
        closed[a]["orders_per_second"].as_f64().unwrap_or(0.0)
            / closed[b]["orders_per_second"].as_f64().unwrap_or(f64::NAN)
    };
    out.push(format!(
        "outbox / direct = {:.0} % (goal >= 85 %); outbox rows only / direct = {:.0} %",
        100.0 * ratio(0, 2),
        100.0 * ratio(1, 2)
    ));

    let mut open = Vec::new();
    if !load.rates.is_empty() {
        out.push(format!(
            "== POST /orders, open loop: {} s per rate and mode, response time from the scheduled arrival (HDR, corrected for coordinated omission) ==",
            load.seconds
        ));
    }
    for &rate in &load.rates {
        for mode in [OUTBOX, DIRECT] {
            let service = Service::start(stack, mode, load.propagation).await?;
            let outcome = service.open_loop(rate, load.seconds).await?;
            let (corrected, raw, errors) = outcome.histograms();
            out.push(format!(
                "{rate:>5} orders/s {:<7} (achieved {:.0}, errors {errors}): {}  | uncorrected p99 {:.1} ms",
                mode.name,
                outcome.achieved_rate,
                summary(&corrected),
                open_loop::ms(&raw, 0.99)
            ));
            open.push(json!({
                "rate": rate, "mode": mode.name, "achieved_rate": outcome.achieved_rate,
                "errors": errors, "corrected": curve(&corrected), "uncorrected": curve(&raw),
            }));
            service.stop(stack).await?;
        }
    }
    report(&out);
    let name = match (load.export, load.propagation.is_on()) {
        (false, _) => "http".to_owned(),
        (true, true) => "http-telemetry-propagation-on".to_owned(),
        (true, false) => "http-telemetry-propagation-off".to_owned(),
    };
    save_result(
        &name,
        &json!({
            "seconds": load.seconds, "concurrency": load.concurrency, "telemetry": telemetry,
            "propagation": load.propagation.to_string(), "closed_loop": closed, "open_loop": open,
        }),
    );
    Ok(())
}

/// order-service running in this process on its own database and topics.
struct Service {
    base: String,
    token: String,
    client: reqwest::Client,
    body: Arc<serde_json::Value>,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), BoxError>>,
    db: String,
    pool: sqlx::PgPool,
    topics: Vec<String>,
}

impl Service {
    async fn start(
        stack: &Stack,
        mode: Mode,
        propagation: eda_context::Propagation,
    ) -> Result<Self, BoxError> {
        let (db, pool) = scratch_database(stack).await?;
        let topic = create_topic(stack, 6).await?;
        // order-service consumes inventory events: that topic needs its dead-letter topic.
        let (inventory_topic, inventory_dlq) = topic_with_dlq(stack).await?;
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
                consumer_stuck_after: Duration::from_secs(60),
            },
            order_events_topic: topic.clone(),
            inventory_events_topic: inventory_topic.clone(),
            consumer_group: unique("bench-order-service"),
            dedupe: eda_idempotent_consumer::Dedupe::EventId,
            publish_mode: mode.publish,
            relay_mode: mode.relay,
            relay_poll_interval: Duration::from_secs(1),
            outbox_retention: Duration::from_secs(3600),
            claim_check: eda_claim_check::Settings::from_env().expect("claim-check settings"),
            max_order_body_bytes: 16 * 1024 * 1024,
        };
        let app = order_service::startup::Application::build(settings).await?;
        let base = format!("http://127.0.0.1:{}", app.port());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            app.run_until_stopped(async move {
                let _ = stopped.await;
            })
            .await
            .map_err(BoxError::from)
        });
        let token =
            order_service::auth::issue_token(secret, "bench", &[], Duration::from_secs(3600))?;
        let body = Arc::new(json!({
            "customer": {"name": "Bench", "email": "bench@example.com"}, "currency": "EUR",
            "lines": [{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 1250},
                      {"sku": "SKU-2", "quantity": 1, "unit_price_cents": 500}]
        }));
        Ok(Self {
            base,
            token,
            client: reqwest::Client::new(),
            body,
            stop,
            server,
            db,
            pool,
            topics: vec![topic, inventory_topic, inventory_dlq],
        })
    }

    /// One order; whether it was placed (201).
    fn place(&self) -> impl std::future::Future<Output = bool> + Send + 'static {
        let request = self
            .client
            .post(format!("{}/orders", self.base))
            .bearer_auth(&self.token)
            .json(&*self.body);
        async move { matches!(request.send().await, Ok(r) if r.status() == 201) }
    }

    /// `concurrency` clients for `seconds`: latencies (ms, sorted) of placed orders, and errors.
    async fn closed_loop(&self, seconds: u64, concurrency: usize) -> (Vec<f64>, u64) {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let workers = (0..concurrency).map(|_| async {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                if self.place().await {
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        });
        let mut latencies = Vec::new();
        let mut errors = 0;
        for (l, e) in futures::future::join_all(workers).await {
            latencies.extend(l);
            errors += e;
        }
        latencies.sort_by(f64::total_cmp);
        (latencies, errors)
    }

    async fn open_loop(&self, rate: u64, seconds: u64) -> Result<open_loop::Outcome, BoxError> {
        open_loop::run(&format!("{rate} orders/s"), rate, seconds, |_| self.place()).await
    }

    async fn stop(self, stack: &Stack) -> Result<(), BoxError> {
        let _ = self.stop.send(());
        self.server.await??;
        for topic in &self.topics {
            delete_topic(stack, topic).await;
        }
        drop_database(stack, &self.db, self.pool).await
    }
}
