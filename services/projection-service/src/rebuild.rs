//! Rebuilding the views without downtime (`make projection-rebuild` drives it).
//!
//! 1. `POST /admin/rebuild {"topics": [...]}`: a new *generation*, a schema `rebuild_<ms>`
//!    with empty view tables, is filled by a second consumer (its own group, `Dedupe::Offsets`)
//!    from the given CDC topics, which a new Debezium connector per source database fills with
//!    a snapshot of the source tables and then their changes, **and** from the live topics,
//!    starting where the live consumer is now. The live views keep serving and keep following
//!    the live topics meanwhile.
//! 2. `GET /admin/rebuild`: the generation's row counts, so the caller can tell when it holds
//!    every source row.
//! 3. `POST /admin/rebuild/switch`: one transaction locks the live tables (readers and the live
//!    consumer wait: its position freezes, it is stored with its changes), waits until the
//!    generation has applied the live topics at least as far, stops the rebuild consumer, moves
//!    the live tables to a schema `retired_<ms>` and the generation's tables into their place
//!    (`ALTER TABLE .. SET SCHEMA`), and commits. The live consumer then goes on on the new
//!    tables from where it was; what the generation already applied beyond that is skipped by
//!    the revision guard. No change that arrived during the rebuild is lost or applied twice,
//!    and no reader sees half a switch.

use std::sync::Arc;
use std::time::Duration;

use eda_idempotent_consumer::{Consumer, ConsumerConfig, Dedupe, Records};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::consumers::{ChangeEvents, ProjectionMetrics};

/// The tables a generation holds and a switch moves.
pub const VIEW_TABLES: [&str; 7] = [
    "order_view",
    "order_line_view",
    "reservation_view",
    "stock_view",
    "customer_summary",
    "sku_orders",
    "view_tombstones",
];

/// Why a rebuild step failed.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// A rebuild is running already (one at a time), or none is (for a switch).
    #[error("{0}")]
    State(String),
    /// The database or the consumer failed.
    #[error("{0}")]
    Failed(#[from] Box<dyn std::error::Error + Send + Sync>),
}

impl From<sqlx::Error> for RebuildError {
    fn from(err: sqlx::Error) -> Self {
        Self::Failed(Box::new(err))
    }
}

/// A generation being built.
struct Running {
    schema: String,
    group: String,
    pool: PgPool,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), eda_idempotent_consumer::Error>>,
}

/// What rebuilds need from the service: its database and Kafka settings. Cheap to clone.
#[derive(Clone)]
pub struct Rebuilds {
    pool: PgPool,
    bootstrap_servers: String,
    group: String,
    running: Arc<Mutex<Option<Running>>>,
}

impl std::fmt::Debug for Rebuilds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rebuilds")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

/// A generation's progress.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Progress {
    /// Its schema.
    pub generation: String,
    /// Rows per view table.
    pub rows: std::collections::BTreeMap<&'static str, i64>,
}

impl Rebuilds {
    /// Rebuilds on the service's `pool`, with consumers of group `<group>-<generation>`.
    pub fn new(pool: PgPool, bootstrap_servers: &str, group: &str) -> Self {
        Self {
            pool,
            bootstrap_servers: bootstrap_servers.to_owned(),
            group: group.to_owned(),
            running: Arc::new(Mutex::new(None)),
        }
    }

    /// Creates a generation and starts filling it from `topics` (the new connectors' topics,
    /// each with its `.dlq`) and from `live` (the live consumer's topics, from its stored
    /// positions).
    pub async fn start(&self, topics: &[String], live: &[String]) -> Result<String, RebuildError> {
        let mut running = self.running.lock().await;
        if let Some(r) = running.as_ref() {
            return Err(RebuildError::State(format!(
                "the rebuild into {} is still running",
                r.schema
            )));
        }
        let schema = format!("rebuild_{}", chrono::Utc::now().timestamp_millis());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&self.pool)
            .await?;
        // A pool whose unqualified names are the generation's tables: the same handler, the
        // same migrations, another schema.
        let options: PgConnectOptions = (*self.pool.connect_options())
            .clone()
            .options([("search_path", schema.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        eda_idempotent_consumer::migrate(&pool)
            .await
            .map_err(|e| RebuildError::Failed(Box::new(e)))?;
        crate::migrations::MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| RebuildError::Failed(Box::new(e)))?;
        // The live topics from where the live consumer is: its stored next offsets, copied
        // to the generation's own table under the generation's group (the runtime seeks
        // there on assignment).
        let group = format!("{}-{schema}", self.group);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {schema}.consumer_offsets (consumer_group, topic, \"partition\", next_offset) \
             SELECT $1, topic, \"partition\", next_offset FROM public.consumer_offsets \
             WHERE consumer_group = $2 AND topic = ANY($3)"
        )))
        .bind(&group)
        .bind(&self.group)
        .bind(live)
        .execute(&self.pool)
        .await?;
        let all: Vec<&str> = topics.iter().chain(live).map(String::as_str).collect();
        let mut config = ConsumerConfig::new(&self.bootstrap_servers, &group, &all);
        config.dedupe = Dedupe::Offsets;
        config.records = Records::Foreign;
        config.skip_stale = false;
        let consumer = Consumer::new(
            pool.clone(),
            config,
            ChangeEvents {
                metrics: Arc::new(ProjectionMetrics::default()),
            },
        )
        .map_err(|e| RebuildError::Failed(Box::new(e)))?;
        consumer
            .verify_topics()
            .await
            .map_err(|e| RebuildError::Failed(Box::new(e)))?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(consumer.run(stop.clone()));
        tracing::info!(generation = %schema, topics = %all.join(","), "rebuild started");
        *running = Some(Running {
            schema: schema.clone(),
            group,
            pool,
            stop,
            task,
        });
        Ok(schema)
    }

    /// The running generation's row counts.
    pub async fn progress(&self) -> Result<Progress, RebuildError> {
        let running = self.running.lock().await;
        let Some(r) = running.as_ref() else {
            return Err(RebuildError::State("no rebuild is running".to_owned()));
        };
        let mut rows = std::collections::BTreeMap::new();
        for table in VIEW_TABLES {
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM {}.{table}",
                r.schema
            )))
            .fetch_one(&self.pool)
            .await?;
            rows.insert(table, n);
        }
        Ok(Progress {
            generation: r.schema.clone(),
            rows,
        })
    }

    /// Stops the rebuild consumer and swaps the generation's tables in, in one transaction.
    /// Returns the schema the old tables went to.
    pub async fn switch(&self) -> Result<String, RebuildError> {
        let mut running = self.running.lock().await;
        let Some(r) = running.take() else {
            return Err(RebuildError::State("no rebuild is running".to_owned()));
        };
        let retired = format!("retired_{}", chrono::Utc::now().timestamp_millis());
        let mut tx = self.pool.begin().await?;
        let live = VIEW_TABLES
            .iter()
            .map(|t| format!("public.{t}"))
            .collect::<Vec<_>>()
            .join(", ");
        // Readers and the live consumer wait here; they never see half a switch, and the live
        // consumer's position (stored with its changes) stands still.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "LOCK TABLE {live} IN ACCESS EXCLUSIVE MODE"
        )))
        .execute(&mut *tx)
        .await?;
        // The generation applies the live topics at least as far as the live views got.
        let behind = format!(
            "SELECT count(*) FROM public.consumer_offsets l LEFT JOIN {}.consumer_offsets g \
               ON g.consumer_group = $2 AND g.topic = l.topic AND g.\"partition\" = l.\"partition\" \
             WHERE l.consumer_group = $1 AND (g.next_offset IS NULL OR g.next_offset < l.next_offset)",
            r.schema
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let partitions: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(behind.as_str()))
                .bind(&self.group)
                .bind(&r.group)
                .fetch_one(&self.pool)
                .await?;
            if partitions == 0 {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                // Back to where it was: the live tables serve on, the rebuild goes on.
                *running = Some(r);
                return Err(RebuildError::State(format!(
                    "the generation is still behind the live views on {partitions} partitions after 60 s; try again"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        r.stop.cancel();
        match tokio::time::timeout(Duration::from_secs(30), r.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => return Err(RebuildError::Failed(Box::new(err))),
            Ok(Err(err)) => return Err(RebuildError::Failed(Box::new(err))),
            Err(_) => {
                return Err(RebuildError::State(
                    "the rebuild consumer did not stop within 30 s".to_owned(),
                ));
            }
        }
        r.pool.close().await;
        // Only the generation just replaced is kept aside (for comparison or a manual way
        // back); older ones go.
        let older: Vec<String> = sqlx::query_scalar(
            "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'retired\\_%'",
        )
        .fetch_all(&mut *tx)
        .await?;
        for schema in older {
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {retired}")))
            .execute(&mut *tx)
            .await?;
        for table in VIEW_TABLES {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER TABLE public.{table} SET SCHEMA {retired}"
            )))
            .execute(&mut *tx)
            .await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER TABLE {}.{table} SET SCHEMA public",
                r.schema
            )))
            .execute(&mut *tx)
            .await?;
        }
        // What is left of the generation: its consumer's offsets and migration records.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA {} CASCADE",
            r.schema
        )))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(generation = %r.schema, retired = %retired, "rebuild switched in");
        Ok(retired)
    }
}
