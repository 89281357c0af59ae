//! Builds the application (pool, migrations, outbox relay, consumer, router) and runs it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use eda_context::Propagation;
use eda_idempotent_consumer::{Consumer, ConsumerConfig, ConsumerMetrics, Dedupe};
use eda_outbox::{Relay, RelayConfig, RelayMetrics};
use rdkafka::ClientConfig;
use rdkafka::producer::BaseProducer;
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::configuration::Settings;
use crate::consumers::OrderEvents;

pub use eda_http::shutdown_signal;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/inventory-service");

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Database pool.
    pub pool: PgPool,
    /// HS256 key.
    pub jwt_secret: Arc<str>,
    /// Outbox relay counters.
    pub relay_metrics: Arc<RelayMetrics>,
    /// Consumer counters.
    pub consumer_metrics: Arc<ConsumerMetrics>,
    /// Consumer group (metrics label).
    pub consumer_group: Arc<str>,
    /// Kafka client for readiness.
    pub kafka_probe: Arc<BaseProducer>,
    /// `PROPAGATION`: whether requests and events carry context.
    pub propagation: Propagation,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("consumer_group", &self.consumer_group)
            .finish_non_exhaustive()
    }
}

impl axum::extract::FromRef<AppState> for eda_http::health::HealthDeps {
    fn from_ref(state: &AppState) -> Self {
        Self {
            pool: state.pool.clone(),
            kafka: Arc::clone(&state.kafka_probe),
        }
    }
}

impl axum::extract::FromRef<AppState> for eda_http::JwtSecret {
    fn from_ref(state: &AppState) -> Self {
        Self(Arc::clone(&state.jwt_secret))
    }
}

pub use eda_http::startup::StartupError;

/// A built, not yet running, inventory-service.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    state: AppState,
    relay: Relay,
    consumer: Consumer<OrderEvents>,
    settings: Settings,
}

impl Application {
    /// Connects, migrates, creates the Kafka clients and binds the port.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let pool = eda_http::startup::connect_database(&settings.database_url).await?;
        eda_outbox::migrate(&pool)
            .await
            .map_err(StartupError::migrations)?;
        eda_idempotent_consumer::migrate(&pool)
            .await
            .map_err(StartupError::migrations)?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(StartupError::migrations)?;

        let mut kafka = ClientConfig::new();
        kafka.set("bootstrap.servers", &settings.kafka_bootstrap_servers);
        let kafka_probe = Arc::new(kafka.create::<BaseProducer>()?);
        let relay = Relay::new(
            pool.clone(),
            kafka,
            RelayConfig {
                propagation: settings.propagation,
                ..RelayConfig::default()
            },
        );
        let mut consumer_config = ConsumerConfig::new(
            &settings.kafka_bootstrap_servers,
            &settings.consumer_group,
            &[&settings.order_events_topic],
        );
        consumer_config.dedupe = settings.dedupe;
        consumer_config.propagation = settings.propagation;
        let handler = OrderEvents {
            inventory_topic: settings.inventory_events_topic.clone(),
            naive: settings.dedupe == Dedupe::Off,
            propagation: settings.propagation,
        };
        let consumer = Consumer::new(pool.clone(), consumer_config, handler);

        let listener = eda_http::startup::bind(settings.http_host, settings.http_port).await?;
        let state = AppState {
            pool,
            jwt_secret: settings.jwt_secret.as_str().into(),
            relay_metrics: relay.metrics(),
            consumer_metrics: consumer.metrics(),
            consumer_group: settings.consumer_group.as_str().into(),
            kafka_probe,
            propagation: settings.propagation,
        };
        Ok(Self {
            listener,
            state,
            relay,
            consumer,
            settings,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish (at most
    /// `SHUTDOWN_TIMEOUT_SECS`), then stops the consumer after its event in flight and the relay
    /// after its batch (together at most `SHUTDOWN_TIMEOUT_SECS`).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let Self {
            listener,
            state,
            relay,
            consumer,
            settings,
        } = self;
        // The consumer stops first (its last transaction may enqueue events), then the relay,
        // so what the consumer wrote is still published.
        let mut workers = eda_http::Workers::new();
        workers.spawn("consumer", |stop| consumer.run(stop));
        workers.then().spawn("outbox relay", |stop| relay.run(stop));
        tracing::info!(
            addr = %listener.local_addr().map_err(StartupError::Serve)?,
            consumes = %settings.order_events_topic,
            produces = %settings.inventory_events_topic,
            dedupe = ?settings.dedupe,
            "inventory-service listening"
        );
        let app = crate::routes::router(state.clone(), settings.max_body_bytes);
        let served = eda_http::serve(listener, app, shutdown, settings.shutdown_timeout).await;
        workers.stop(settings.shutdown_timeout).await;
        eda_http::startup::close_database(&state.pool, Duration::from_secs(5)).await;
        tracing::info!("inventory-service stopped");
        served.map_err(StartupError::Serve)
    }
}
