//! Builds the application and runs it. The steps every service shares (pool, migrations,
//! readiness, listener, serving, staged stop) are [`ServiceBase`]'s; what is here is
//! projection-service's own: the consumer of the CDC topics.

use std::future::Future;
use std::sync::Arc;

use eda_http::JwtSecret;
use eda_http::startup::ServiceBase;
use eda_idempotent_consumer::{Consumer, Dedupe, Records};

use crate::configuration::Settings;
use crate::consumers::{ChangeEvents, ProjectionMetrics};
use crate::state::AppState;

pub use eda_http::shutdown_signal;
pub use eda_http::startup::StartupError;

/// A built, not yet running, projection-service.
#[derive(Debug)]
pub struct Application {
    base: ServiceBase,
    state: AppState,
    consumer: Consumer<ChangeEvents>,
    settings: Settings,
}

impl Application {
    /// Connects, migrates, creates the consumer (its topics and their `.dlq` must exist) and
    /// binds the port.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let service = &settings.service;
        let mut base = ServiceBase::build(service, async |pool| {
            eda_idempotent_consumer::migrate(pool).await?;
            crate::migrations::MIGRATOR.run(pool).await?;
            Ok(())
        })
        .await?;

        let metrics = Arc::new(ProjectionMetrics::default());
        let handler = ChangeEvents {
            metrics: Arc::clone(&metrics),
        };
        let topics: Vec<&str> = settings.cdc_topics.iter().map(String::as_str).collect();
        let consumer = base
            .consumer(&settings.consumer_group, &topics, handler, |c| {
                // Change events carry no ids of ours: the offset is the transaction id, and
                // the views judge order by the source rows' revisions.
                c.dedupe = Dedupe::Offsets;
                c.records = Records::Foreign;
                c.skip_stale = false;
            })
            .await?;

        let state = AppState {
            pool: base.pool.clone(),
            jwt_secret: JwtSecret::new(service.jwt_secret.clone()),
            consumer_metrics: consumer.metrics(),
            projection_metrics: metrics,
            consumer_group: settings.consumer_group.as_str().into(),
            readiness: base.readiness.clone(),
            max_wait: settings.max_wait,
            rebuilds: crate::rebuild::Rebuilds::new(
                base.pool.clone(),
                &service.kafka_bootstrap_servers,
                &settings.consumer_group,
            ),
            live_topics: settings.cdc_topics.clone().into(),
        };
        Ok(Self {
            base,
            state,
            consumer,
            settings,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.base.addr().port()
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish (at most
    /// `SHUTDOWN_TIMEOUT_SECS`), then stops the consumer after the change in flight.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let Self {
            mut base,
            state,
            consumer,
            settings,
        } = self;
        base.workers
            .spawn("cdc consumer", |stop| consumer.run(stop));
        tracing::info!(
            addr = %base.addr(),
            consumes = %settings.cdc_topics.join(","),
            "projection-service listening"
        );
        let app = crate::routes::router(state, &settings.service);
        let closed = base.serve(app, shutdown).await.close().await;
        tracing::info!("projection-service stopped");
        closed
    }
}
