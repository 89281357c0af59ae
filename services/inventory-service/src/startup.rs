//! Builds the application and runs it. The steps every service shares (pool, migrations,
//! readiness, listener, serving, staged stop) are [`ServiceBase`]'s; what is here is
//! inventory-service's own: its outbox relay and its order-event consumer.

use std::future::Future;

use eda_http::JwtSecret;
use eda_http::startup::ServiceBase;
use eda_idempotent_consumer::Consumer;
use eda_outbox::{Relay, RelayConfig};

use crate::configuration::Settings;
use crate::consumers::OrderEvents;
use crate::state::AppState;

pub use eda_http::shutdown_signal;
pub use eda_http::startup::StartupError;

/// The service's own schema (stock, reservations).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/inventory-service");

/// A built, not yet running, inventory-service.
#[derive(Debug)]
pub struct Application {
    base: ServiceBase,
    state: AppState,
    relay: Relay,
    consumer: Consumer<OrderEvents>,
    settings: Settings,
}

impl Application {
    /// Connects, migrates, creates the Kafka clients and binds the port.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let service = &settings.service;
        let mut base = ServiceBase::build(service, async |pool| {
            eda_outbox::migrate(pool).await?;
            eda_idempotent_consumer::migrate(pool).await?;
            MIGRATOR.run(pool).await?;
            Ok(())
        })
        .await?;

        let relay = base.relay(RelayConfig::default())?;
        let handler = OrderEvents {
            inventory_topic: settings.inventory_events_topic.clone(),
            propagation: service.propagation,
        };
        let consumer = base
            .consumer(
                &settings.consumer_group,
                &[&settings.order_events_topic],
                handler,
                |c| c.dedupe = settings.dedupe,
            )
            .await?
            // Large OrderPlaced events arrive as claim checks: the handler sees them whole.
            .with_resolver(std::sync::Arc::new(settings.claim_check.claim_check()));

        let state = AppState {
            pool: base.pool.clone(),
            jwt_secret: JwtSecret::new(service.jwt_secret.clone()),
            relay_metrics: relay.metrics(),
            consumer_metrics: consumer.metrics(),
            consumer_group: settings.consumer_group.as_str().into(),
            readiness: base.readiness.clone(),
            propagation: service.propagation,
        };
        Ok(Self {
            base,
            state,
            relay,
            consumer,
            settings,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.base.addr().port()
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish (at most
    /// `SHUTDOWN_TIMEOUT_SECS`), then stops the consumer after its event in flight and the relay
    /// after its batch (together at most `SHUTDOWN_TIMEOUT_SECS`).
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
        // The consumer stops first (its last transaction may enqueue events), then the relay,
        // so what the consumer wrote is still published.
        base.workers.spawn("consumer", |stop| consumer.run(stop));
        base.workers
            .then()
            .spawn("outbox relay", |stop| relay.run(stop));
        tracing::info!(
            addr = %base.addr(),
            consumes = %settings.order_events_topic,
            produces = %settings.inventory_events_topic,
            dedupe = ?settings.dedupe,
            "inventory-service listening"
        );
        let app = crate::routes::router(state, &settings.service);
        let closed = base.serve(app, shutdown).await.close().await;
        tracing::info!("inventory-service stopped");
        closed
    }
}
