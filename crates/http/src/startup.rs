//! The start-up steps every service repeats, with errors that say what could not be reached.
//!
//! With the `postgres` and `kafka` features, [`ServiceBase`] does the steps every service
//! shares, from its [`ServiceSettings`](crate::config::ServiceSettings) to a stopped service, so
//! that a service's own start-up holds only what is its own.

use std::net::{IpAddr, SocketAddr};

use tokio::net::TcpListener;

/// Any error, boxed with its source chain intact.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Start-up failures, each naming what could not be reached or set up.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// PostgreSQL unreachable or refusing.
    #[cfg(feature = "postgres")]
    #[error("cannot connect to PostgreSQL: {0}")]
    Database(#[source] sqlx::Error),
    /// Migrations failed.
    #[cfg(feature = "postgres")]
    #[error("database migrations failed: {0}")]
    Migrations(#[source] BoxError),
    /// Kafka client configuration refused.
    #[cfg(feature = "kafka")]
    #[error("cannot create a Kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A component of the service (outbox relay, consumer, ...) refused its configuration.
    #[error("cannot set up the {what}: {source}")]
    Setup {
        /// The component.
        what: &'static str,
        /// Why.
        source: BoxError,
    },
    /// Port taken or address invalid.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The server failed while running.
    #[error("HTTP server error: {0}")]
    Serve(#[source] std::io::Error),
}

impl StartupError {
    /// A failed migrator (any crate's), kept as the source.
    #[cfg(feature = "postgres")]
    pub fn migrations(err: impl Into<BoxError>) -> Self {
        Self::Migrations(err.into())
    }

    /// A component `what` that refused its configuration, kept as the source.
    pub fn setup(what: &'static str, err: impl Into<BoxError>) -> Self {
        Self::Setup {
            what,
            source: err.into(),
        }
    }
}

/// A pool of 20 connections that gives up acquiring after 5 s (a request then fails with 503
/// and `Retry-After` instead of hanging; see also [`crate::MAX_IN_FLIGHT`]). The URL is a secret (it holds the password): it is exposed only to sqlx.
#[cfg(feature = "postgres")]
pub async fn connect_database(url: &secrecy::SecretString) -> Result<sqlx::PgPool, StartupError> {
    use secrecy::ExposeSecret as _;
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(20)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(url.expose_secret())
        .await
        .map_err(StartupError::Database)
}

/// Closes the pool at exit, waiting at most `timeout` for connections still in use (a request
/// cut off by the drain timeout may hold one until the runtime ends).
#[cfg(feature = "postgres")]
pub async fn close_database(pool: &sqlx::PgPool, timeout: std::time::Duration) {
    if tokio::time::timeout(timeout, pool.close()).await.is_err() {
        tracing::warn!("database connections still in use at exit; closing without them");
    }
}

/// Binds the HTTP listener (port 0 picks a free one).
pub async fn bind(host: IpAddr, port: u16) -> Result<TcpListener, StartupError> {
    let addr = SocketAddr::new(host, port);
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind { addr, source })
}

#[cfg(all(feature = "postgres", feature = "kafka"))]
pub use base::{ServiceBase, Stopped};

#[cfg(all(feature = "postgres", feature = "kafka"))]
mod base {
    use std::future::Future;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use axum::Router;
    use rdkafka::ClientConfig;
    use rdkafka::producer::BaseProducer;
    use sqlx::PgPool;
    use tokio::net::TcpListener;
    use tokio::time::Instant;

    use super::{BoxError, StartupError, bind, close_database, connect_database};
    use crate::config::ServiceSettings;
    use crate::health::{self, Readiness};
    use crate::workers::Workers;

    /// What every service builds first and runs last: a migrated pool, a Kafka client
    /// configuration, the readiness checks every service has, the workers, and a bound
    /// listener; then serving, and the staged stop.
    ///
    /// ```no_run
    /// # async fn demo(settings: eda_http::config::ServiceSettings) -> Result<(), eda_http::startup::StartupError> {
    /// use eda_http::startup::ServiceBase;
    ///
    /// let mut base = ServiceBase::build(&settings, async |pool| {
    ///     // the migrators of the service and of the libraries it uses, in order
    ///     sqlx::query("CREATE TABLE IF NOT EXISTS notes (id bigint PRIMARY KEY)")
    ///         .execute(pool)
    ///         .await?;
    ///     Ok(())
    /// })
    /// .await?;
    /// base.readiness.add("cache", || async { Ok(()) }); // a check of the service's own
    /// base.workers.spawn("consumer", |stop| async move { stop.cancelled().await });
    /// let app = axum::Router::new(); // the service's router, `base.readiness` in its state
    /// base.serve(app, eda_http::shutdown_signal()).await.close().await
    /// # }
    /// ```
    #[derive(Debug)]
    pub struct ServiceBase {
        /// The service's database, migrated.
        pub pool: PgPool,
        /// Kafka client settings with `bootstrap.servers`: the base of the service's clients.
        pub kafka: ClientConfig,
        /// `/readyz`'s checks: `database`, `kafka` and `workers` (see [`Workers::liveness`])
        /// are registered; add the service's own before putting a clone in the state.
        pub readiness: Readiness,
        /// Spawn the service's background workers here, in stop order, before
        /// [`serve`](Self::serve).
        pub workers: Workers,
        listener: TcpListener,
        addr: SocketAddr,
        shutdown_timeout: Duration,
        /// What the service's relays and consumers are built with.
        #[cfg_attr(not(any(feature = "outbox", feature = "consumer")), allow(dead_code))]
        context: ContextSettings,
    }

    /// The settings relays and consumers take from [`ServiceSettings`].
    #[derive(Debug, Clone)]
    #[cfg_attr(not(any(feature = "outbox", feature = "consumer")), allow(dead_code))]
    struct ContextSettings {
        bootstrap_servers: String,
        propagation: eda_context::Propagation,
        baggage: eda_context::BaggagePolicy,
        stuck_after: Duration,
    }

    impl ServiceBase {
        /// Connects to the database, runs `migrate` on it (every migrator the service needs,
        /// in order), creates a Kafka client for readiness and binds the HTTP port.
        pub async fn build(
            settings: &ServiceSettings,
            migrate: impl AsyncFnOnce(&PgPool) -> Result<(), BoxError>,
        ) -> Result<Self, StartupError> {
            let pool = connect_database(&settings.database_url).await?;
            migrate(&pool).await.map_err(StartupError::Migrations)?;

            let mut kafka = ClientConfig::new();
            kafka.set("bootstrap.servers", &settings.kafka_bootstrap_servers);
            let probe = Arc::new(kafka.create::<BaseProducer>()?);

            let workers = Workers::new();
            let mut readiness = Readiness::new();
            readiness
                .add("database", health::postgres(pool.clone()))
                .add("kafka", health::kafka(probe))
                .add("workers", workers.liveness());

            let listener = bind(settings.http_host, settings.http_port).await?;
            let addr = listener.local_addr().map_err(|source| StartupError::Bind {
                addr: SocketAddr::new(settings.http_host, settings.http_port),
                source,
            })?;
            Ok(Self {
                pool,
                kafka,
                readiness,
                workers,
                listener,
                addr,
                shutdown_timeout: settings.shutdown_timeout,
                context: ContextSettings {
                    bootstrap_servers: settings.kafka_bootstrap_servers.clone(),
                    propagation: settings.propagation,
                    baggage: settings.baggage.clone(),
                    stuck_after: settings.consumer_stuck_after,
                },
            })
        }

        /// An outbox relay on the service's pool and Kafka, with its `PROPAGATION` and
        /// `BAGGAGE_KEYS`; `config` gives the rest (poll interval, retention, table, ...).
        #[cfg(feature = "outbox")]
        pub fn relay(
            &self,
            config: eda_outbox::RelayConfig,
        ) -> Result<eda_outbox::Relay, StartupError> {
            let config = eda_outbox::RelayConfig {
                propagation: self.context.propagation,
                baggage: self.context.baggage.clone(),
                ..config
            };
            eda_outbox::Relay::new(self.pool.clone(), self.kafka.clone(), config)
                .map_err(|err| StartupError::setup("outbox relay", err))
        }

        /// A consumer of `topics` in `group` on the service's pool, with its `PROPAGATION`,
        /// `BAGGAGE_KEYS` and `CONSUMER_STUCK_AFTER_SECS`. Its topics and their `.dlq` are
        /// checked now (a missing one stops the start, named), and `/readyz` gets a
        /// `consumer <group>` check that fails while a partition is stuck. `tune` changes the
        /// rest of the config (dedupe, backoff, tables, ...).
        #[cfg(feature = "consumer")]
        pub async fn consumer<H: eda_idempotent_consumer::Handler>(
            &mut self,
            group: &str,
            topics: &[&str],
            handler: H,
            tune: impl FnOnce(&mut eda_idempotent_consumer::ConsumerConfig),
        ) -> Result<eda_idempotent_consumer::Consumer<H>, StartupError> {
            let mut config = eda_idempotent_consumer::ConsumerConfig::new(
                &self.context.bootstrap_servers,
                group,
                topics,
            );
            config.propagation = self.context.propagation;
            config.baggage = self.context.baggage.clone();
            config.stuck_after = self.context.stuck_after;
            tune(&mut config);
            let consumer =
                eda_idempotent_consumer::Consumer::new(self.pool.clone(), config, handler)
                    .map_err(|err| StartupError::setup("consumer", err))?;
            consumer
                .verify_topics()
                .await
                .map_err(|err| StartupError::setup("consumer topics", err))?;
            let metrics = consumer.metrics();
            self.readiness.add(format!("consumer {group}"), move || {
                let metrics = Arc::clone(&metrics);
                async move { metrics.health() }
            });
            Ok(consumer)
        }

        /// The bound address (its port is the free one picked with `HTTP_PORT=0`).
        pub fn addr(&self) -> SocketAddr {
            self.addr
        }

        /// Serves `app` until `shutdown` resolves, lets in-flight requests finish (at most
        /// `SHUTDOWN_TIMEOUT_SECS`), then stops the workers stage by stage (at most
        /// `SHUTDOWN_TIMEOUT_SECS` again). The pool stays open for what the service still has to
        /// do in the [`Stopped::time_left`]; [`Stopped::close`] closes it.
        pub async fn serve(
            self,
            app: Router,
            shutdown: impl Future<Output = ()> + Send + 'static,
        ) -> Stopped {
            let Self {
                pool,
                workers,
                listener,
                shutdown_timeout,
                ..
            } = self;
            let served = crate::serve(listener, app, shutdown, shutdown_timeout).await;
            let deadline = Instant::now() + shutdown_timeout;
            workers.stop(shutdown_timeout).await;
            Stopped {
                pool,
                served,
                deadline,
            }
        }
    }

    /// A service whose server and workers have stopped.
    #[derive(Debug)]
    #[must_use = "call `close` to close the pool and learn how serving ended"]
    pub struct Stopped {
        pool: PgPool,
        served: std::io::Result<()>,
        deadline: Instant,
    }

    impl Stopped {
        /// What is left of the workers' stop budget, for the service's last steps (flushing a
        /// producer, ...), so that the whole stop stays bounded.
        pub fn time_left(&self) -> Duration {
            self.deadline.saturating_duration_since(Instant::now())
        }

        /// Closes the pool (waiting at most 5 s for connections still in use) and returns the
        /// server's own error, if it had one.
        pub async fn close(self) -> Result<(), StartupError> {
            close_database(&self.pool, Duration::from_secs(5)).await;
            self.served.map_err(StartupError::Serve)
        }
    }
}
