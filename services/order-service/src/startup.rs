//! Builds the application and runs it until a shutdown signal. The steps every service shares
//! (pool, migrations, readiness, listener, serving, staged stop) are [`ServiceBase`]'s; what is
//! here is order-service's own: its publishers, relay and consumer.

use std::future::Future;
use std::time::Duration;

use eda_http::JwtSecret;
use eda_http::startup::ServiceBase;
use eda_idempotent_consumer::Consumer;
use eda_outbox::{Relay, RelayConfig};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::configuration::{PublishMode, RelayMode, Settings};
use crate::consumers::InventoryOutcomes;
use crate::publisher::DirectPublisher;
use crate::state::AppState;

pub use eda_http::shutdown_signal;
pub use eda_http::startup::StartupError;

/// The service's own schema (orders, items, idempotency keys). The outbox table comes from
/// `eda_outbox::migrate`, recorded in its own migrations table.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/order-service");

/// A built, not yet running, order-service.
#[derive(Debug)]
pub struct Application {
    base: ServiceBase,
    state: AppState,
    relay: Option<Relay>,
    consumer: Consumer<InventoryOutcomes>,
    settings: Settings,
}

impl Application {
    /// Connects, migrates, creates the Kafka clients and binds the port.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let service = &settings.service;
        let mut base = ServiceBase::build(service, async |pool| {
            eda_outbox::migrate(pool).await?;
            eda_idempotent_consumer::migrate(pool).await?;
            eda_claim_check::migrate(pool).await?;
            MIGRATOR.run(pool).await?;
            Ok(())
        })
        .await?;

        let direct = match settings.publish_mode {
            PublishMode::Direct => Some(DirectPublisher::new(&service.kafka_bootstrap_servers)?),
            PublishMode::Outbox => None,
        };
        // The relay runs in both publish modes: in direct mode only the HTTP handlers bypass the
        // outbox; the saga's events (OrderConfirmed/OrderRejected) still go through it.
        let relay = match settings.relay_mode {
            RelayMode::InProcess => Some(base.relay(RelayConfig {
                poll_interval: settings.relay_poll_interval,
                retention: settings.outbox_retention,
                ..RelayConfig::default()
            })?),
            RelayMode::Debezium => None,
        };
        let handler = InventoryOutcomes {
            order_topic: settings.order_events_topic.clone(),
            propagation: service.propagation,
        };
        let consumer = base
            .consumer(
                &settings.consumer_group,
                &[&settings.inventory_events_topic],
                handler,
                |c| c.dedupe = settings.dedupe,
            )
            .await?
            .with_resolver(std::sync::Arc::new(settings.claim_check.claim_check()));

        let state = AppState {
            pool: base.pool.clone(),
            jwt_secret: JwtSecret::new(service.jwt_secret.clone()),
            topic: settings.order_events_topic.as_str().into(),
            direct,
            relay_metrics: relay.as_ref().map(Relay::metrics),
            consumer_metrics: consumer.metrics(),
            consumer_group: settings.consumer_group.as_str().into(),
            readiness: base.readiness.clone(),
            propagation: service.propagation,
            large_payloads: settings.claim_check.large_payloads(Some(base.pool.clone())),
        };
        Ok(Self {
            base,
            state,
            relay,
            consumer,
            settings,
        })
    }

    /// The bound port (useful with `HTTP_PORT=0`).
    pub fn port(&self) -> u16 {
        self.base.addr().port()
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish (at most
    /// `SHUTDOWN_TIMEOUT_SECS`), then stops the consumer after its event in flight, the relay
    /// after its batch, and flushes the direct producer (together at most `SHUTDOWN_TIMEOUT_SECS`).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let Self {
            mut base,
            state,
            relay,
            consumer,
            settings,
        } = self;
        // The consumer stops first (its last transaction may enqueue events), then the relay
        // and the janitor, so what the consumer wrote is still published.
        base.workers.spawn("consumer", |stop| consumer.run(stop));
        base.workers.then();
        if let Some(relay) = relay {
            base.workers.spawn("outbox relay", |stop| relay.run(stop));
        }
        if let eda_claim_check::LargePayloads::ClaimCheck(claim_check) = &state.large_payloads {
            // Deletes objects whose order never committed, and objects past the retention.
            let janitor = eda_claim_check::Janitor::new(
                claim_check.clone(),
                state.pool.clone(),
                eda_claim_check::JanitorConfig::default(),
            );
            base.workers
                .spawn("claim-check janitor", |stop| janitor.run(stop));
        }
        if settings.relay_mode == RelayMode::Debezium {
            let (pool, retention) = (state.pool.clone(), settings.outbox_retention);
            base.workers.spawn("outbox janitor", |stop| {
                debezium_mode_janitor(pool, retention, stop)
            });
        }
        tracing::info!(
            addr = %base.addr(),
            publish_mode = ?settings.publish_mode,
            relay_mode = ?settings.relay_mode,
            topic = %settings.order_events_topic,
            "order-service listening"
        );

        let app = crate::routes::router(
            state.clone(),
            &settings.service,
            settings.max_order_body_bytes,
        );
        let stopped = base.serve(app, shutdown).await;
        if let Some(direct) = &state.direct {
            direct.flush(stopped.time_left());
        }
        let closed = stopped.close().await;
        tracing::info!("order-service stopped");
        closed
    }
}

/// With Debezium publishing, nothing marks outbox rows: delete them by age instead.
async fn debezium_mode_janitor(pool: PgPool, retention: Duration, stop: CancellationToken) {
    loop {
        match pool.acquire().await {
            Ok(mut conn) => match eda_outbox::delete_expired(
                &mut conn,
                eda_outbox::Expiry::CreatedBefore(retention),
            )
            .await
            {
                Ok(deleted) if deleted > 0 => {
                    tracing::info!(deleted, "outbox rows past retention deleted");
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "outbox clean-up failed; will retry"),
            },
            Err(err) => {
                tracing::warn!(error = %err, "outbox clean-up cannot reach the database; will retry");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
    }
}
