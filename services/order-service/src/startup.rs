//! Builds the application and runs it until a shutdown signal.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use eda_context::Propagation;
use eda_outbox::{Relay, RelayConfig, RelayMetrics};
use rdkafka::ClientConfig;
use rdkafka::producer::BaseProducer;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::configuration::{DEV_JWT_SECRET, PublishMode, RelayMode, Settings};
use crate::consumers::InventoryOutcomes;
use crate::publisher::DirectPublisher;
use eda_idempotent_consumer::{Consumer, ConsumerConfig, ConsumerMetrics};

/// The service's own schema (orders, items, idempotency keys). The outbox table comes from
/// `eda_outbox::migrate`, recorded in its own migrations table.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/order-service");

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Database pool.
    pub pool: PgPool,
    /// HS256 key for bearer tokens.
    pub jwt_secret: Arc<str>,
    /// Topic of order events.
    pub topic: Arc<str>,
    /// `Some` in `PUBLISH_MODE=direct`.
    pub direct: Option<DirectPublisher>,
    /// `Some` when the in-process relay runs.
    pub relay_metrics: Option<Arc<RelayMetrics>>,
    /// Consumer counters (reservation outcomes).
    pub consumer_metrics: Arc<ConsumerMetrics>,
    /// Consumer group (metrics label).
    pub consumer_group: Arc<str>,
    /// A Kafka client for readiness checks.
    pub kafka_probe: Arc<BaseProducer>,
    /// `PROPAGATION`: whether context goes into events and comes out of requests.
    pub propagation: Propagation,
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

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The JWT secret is deliberately left out.
        f.debug_struct("AppState")
            .field("topic", &self.topic)
            .field("direct", &self.direct.is_some())
            .finish_non_exhaustive()
    }
}

pub use eda_http::startup::StartupError;

/// A built, not yet running, order-service.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    state: AppState,
    relay: Option<Relay>,
    consumer: Consumer<InventoryOutcomes>,
    settings: Settings,
}

impl Application {
    /// Connects, migrates, creates the Kafka clients and binds the port.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        if settings.jwt_secret == DEV_JWT_SECRET {
            tracing::warn!("JWT_SECRET is the development default; set your own outside a laptop");
        }
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

        let direct = match settings.publish_mode {
            PublishMode::Direct => Some(DirectPublisher::new(&settings.kafka_bootstrap_servers)?),
            PublishMode::Outbox => None,
        };
        // The relay runs in both publish modes: in direct mode only the HTTP handlers bypass the
        // outbox; the saga's events (OrderConfirmed/OrderRejected) still go through it.
        let relay = (settings.relay_mode == RelayMode::InProcess).then(|| {
            Relay::new(
                pool.clone(),
                kafka,
                RelayConfig {
                    poll_interval: settings.relay_poll_interval,
                    retention: settings.outbox_retention,
                    propagation: settings.propagation,
                    ..RelayConfig::default()
                },
            )
        });
        let mut consumer_config = ConsumerConfig::new(
            &settings.kafka_bootstrap_servers,
            &settings.consumer_group,
            &[&settings.inventory_events_topic],
        );
        consumer_config.dedupe = settings.dedupe;
        consumer_config.propagation = settings.propagation;
        let consumer = Consumer::new(
            pool.clone(),
            consumer_config,
            InventoryOutcomes {
                order_topic: settings.order_events_topic.clone(),
                propagation: settings.propagation,
            },
        );

        let listener = eda_http::startup::bind(settings.http_host, settings.http_port).await?;
        let state = AppState {
            pool,
            jwt_secret: settings.jwt_secret.as_str().into(),
            topic: settings.order_events_topic.as_str().into(),
            direct,
            relay_metrics: relay.as_ref().map(Relay::metrics),
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

    /// The bound port (useful with `HTTP_PORT=0`).
    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish (at most
    /// `SHUTDOWN_TIMEOUT_SECS`), then stops the consumer after its event in flight, the relay
    /// after its batch, and flushes the direct producer (together at most `SHUTDOWN_TIMEOUT_SECS`).
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
        // The consumer stops first (its last transaction may enqueue events), then the relay
        // and the janitor, so what the consumer wrote is still published.
        let mut workers = eda_http::Workers::new();
        workers.spawn("consumer", |stop| consumer.run(stop));
        workers.then();
        if let Some(relay) = relay {
            workers.spawn("outbox relay", |stop| relay.run(stop));
        }
        if settings.relay_mode == RelayMode::Debezium {
            let (pool, retention) = (state.pool.clone(), settings.outbox_retention);
            workers.spawn("outbox janitor", |stop| {
                debezium_mode_janitor(pool, retention, stop)
            });
        }
        tracing::info!(
            addr = %listener.local_addr().map_err(StartupError::Serve)?,
            publish_mode = ?settings.publish_mode,
            relay_mode = ?settings.relay_mode,
            topic = %settings.order_events_topic,
            "order-service listening"
        );

        let app = crate::routes::router(state.clone(), settings.max_body_bytes);
        let served = eda_http::serve(listener, app, shutdown, settings.shutdown_timeout).await;

        let stopping = std::time::Instant::now();
        workers.stop(settings.shutdown_timeout).await;
        if let Some(direct) = &state.direct {
            direct.flush(settings.shutdown_timeout.saturating_sub(stopping.elapsed()));
        }
        eda_http::startup::close_database(&state.pool, Duration::from_secs(5)).await;
        tracing::info!("order-service stopped");
        served.map_err(StartupError::Serve)
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

pub use eda_http::shutdown_signal;
