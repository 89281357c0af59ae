//! Object lifecycle: the upload ledger and the janitor that deletes orphaned and expired objects.
//!
//! An object is uploaded **before** the transaction that enqueues its event commits (an upload
//! must not hold the transaction open). If that transaction then rolls back, or the process dies
//! in between, the object is an orphan: nothing refers to it. The protocol:
//!
//! 1. [`ClaimCheck::with_ledger`]: `store` first records `(bucket, key)` in
//!    `claim_check_uploads`, committed on its own, then uploads.
//! 2. [`confirm`] (called by [`Prepared::enqueue`](crate::Prepared)) deletes those records
//!    **inside the business transaction**: they disappear if and only if it commits.
//! 3. The [`Janitor`] deletes the object of every record older than the grace period (its
//!    transaction never committed), then the record.
//!
//! Objects are never deleted when consumed (another consumer group, a replay or a redrive may
//! still need them). The janitor also deletes objects under the prefix older than the retention,
//! which must be at least the topic's; on AWS an S3 lifecycle rule on the prefix does the same
//! without a process.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use sqlx::SqlSafeStr as _;
use sqlx::migrate::{Migration, Migrator};
use tokio_util::sync::CancellationToken;

use crate::{ClaimCheck, Error, Reference, Result};

static EMBEDDED: Migrator = sqlx::migrate!("./migrations");

/// Table in which this crate's migrations are recorded (apart from the service's own).
pub const MIGRATIONS_TABLE: &str = "_eda_claim_check_migrations";

/// Creates the ledger table `claim_check_uploads` (producers with a ledger only). Safe at every
/// start.
pub async fn migrate(pool: &sqlx::PgPool) -> std::result::Result<(), sqlx::migrate::MigrateError> {
    let migrations = EMBEDDED
        .iter()
        .map(|m| {
            Migration::new(
                m.version,
                m.description.clone(),
                m.migration_type,
                sqlx::AssertSqlSafe(m.sql.as_str().to_owned()).into_sql_str(),
                m.no_tx,
            )
        })
        .collect();
    let mut migrator = Migrator::with_migrations(migrations);
    migrator.dangerous_set_table_name(Cow::Borrowed(MIGRATIONS_TABLE));
    migrator.run(pool).await
}

/// Records an upload about to happen (autocommit: it must survive the business transaction's
/// rollback).
pub(crate) async fn record_upload(
    pool: &sqlx::PgPool,
    bucket: &str,
    key: &str,
) -> std::result::Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO claim_check_uploads (bucket, key) VALUES ($1, $2) \
         ON CONFLICT (bucket, key) DO UPDATE SET created_at = now()",
    )
    .bind(bucket)
    .bind(key)
    .execute(pool)
    .await?;
    Ok(())
}

/// Marks `uploads` as referenced, inside the caller's business transaction (pass `&mut *tx`):
/// their ledger records go if and only if the transaction commits.
pub async fn confirm(
    conn: &mut sqlx::PgConnection,
    uploads: &[Reference],
) -> std::result::Result<(), sqlx::Error> {
    if uploads.is_empty() {
        return Ok(());
    }
    let (buckets, keys): (Vec<&str>, Vec<&str>) = uploads
        .iter()
        .map(|r| (r.bucket.as_str(), r.key.as_str()))
        .unzip();
    sqlx::query(
        "DELETE FROM claim_check_uploads u USING unnest($1::text[], $2::text[]) AS c(bucket, key) \
         WHERE u.bucket = c.bucket AND u.key = c.key",
    )
    .bind(&buckets)
    .bind(&keys)
    .execute(conn)
    .await?;
    Ok(())
}

/// When the janitor deletes what.
#[derive(Debug, Clone)]
pub struct JanitorConfig {
    /// A ledger record older than this names an orphan (default 15 minutes: far longer than a
    /// request between upload and commit can take).
    pub grace: Duration,
    /// Objects under the prefix older than this are deleted (default 8 days: longer than
    /// Kafka's default 7-day retention, so no retained record outlives its object). `None`:
    /// never (an S3 lifecycle rule does it instead).
    pub retention: Option<Duration>,
    /// Pause between sweeps (default 60 s).
    pub interval: Duration,
}

impl Default for JanitorConfig {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(15 * 60),
            retention: Some(Duration::from_secs(8 * 24 * 3600)),
            interval: Duration::from_secs(60),
        }
    }
}

/// What one sweep deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JanitorReport {
    /// Objects whose transaction never committed.
    pub orphans_deleted: u64,
    /// Objects past the retention.
    pub expired_deleted: u64,
}

/// Deletes orphaned objects (ledger records past the grace period) and objects past the
/// retention, under the claim check's bucket and prefix only.
#[derive(Debug, Clone)]
pub struct Janitor {
    claim_check: ClaimCheck,
    pool: sqlx::PgPool,
    config: JanitorConfig,
}

impl Janitor {
    /// A janitor for `claim_check`'s objects, with the ledger in `pool`.
    pub fn new(claim_check: ClaimCheck, pool: sqlx::PgPool, config: JanitorConfig) -> Self {
        Self {
            claim_check,
            pool,
            config,
        }
    }

    /// Sweeps every `interval` until `shutdown`; failures are logged and retried next time.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            match self.sweep().await {
                Ok(r) if r == JanitorReport::default() => {}
                Ok(r) => {
                    tracing::info!(
                        orphans_deleted = r.orphans_deleted,
                        expired_deleted = r.expired_deleted,
                        "claim-check janitor deleted objects"
                    );
                }
                Err(err) => {
                    tracing::warn!(error = %err, "claim-check janitor sweep failed; will retry");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.config.interval) => {}
            }
        }
    }

    /// One sweep: orphans first, then expired objects.
    pub async fn sweep(&self) -> Result<JanitorReport> {
        Ok(JanitorReport {
            orphans_deleted: self.delete_orphans().await?,
            expired_deleted: match self.config.retention {
                Some(age) => self.delete_expired(age).await?,
                None => 0,
            },
        })
    }

    async fn delete_orphans(&self) -> Result<u64> {
        let unavailable = |err: sqlx::Error| Error::Unavailable(Box::new(err));
        let orphans: Vec<(String, String)> = sqlx::query_as(
            "SELECT bucket, key FROM claim_check_uploads \
             WHERE bucket = $1 AND created_at < now() - make_interval(secs => $2) LIMIT 1000",
        )
        .bind(self.claim_check.bucket())
        .bind(self.config.grace.as_secs_f64())
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let mut deleted = 0;
        for (bucket, key) in orphans {
            // A missing object (the process died before the upload) is fine: S3 deletes are
            // idempotent.
            self.claim_check
                .client()
                .delete_object()
                .bucket(&bucket)
                .key(&key)
                .send()
                .await
                .map_err(|err| Error::Unavailable(Box::new(err)))?;
            sqlx::query("DELETE FROM claim_check_uploads WHERE bucket = $1 AND key = $2")
                .bind(&bucket)
                .bind(&key)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
            tracing::info!(s3.bucket = %bucket, s3.key = %key, "orphaned claim-check object deleted (its transaction never committed)");
            deleted += 1;
        }
        Ok(deleted)
    }

    async fn delete_expired(&self, age: Duration) -> Result<u64> {
        let cutoff = SystemTime::now()
            .checked_sub(age)
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let (client, bucket) = (self.claim_check.client(), self.claim_check.bucket());
        let mut deleted = 0;
        let mut token: Option<String> = None;
        loop {
            let page = client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(self.claim_check.prefix())
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|err| Error::Unavailable(Box::new(err)))?;
            let expired: Vec<ObjectIdentifier> = page
                .contents()
                .iter()
                .filter(|o| o.last_modified().is_some_and(|t| t.secs() < cutoff))
                .filter_map(|o| o.key())
                .filter(|key| key.starts_with(self.claim_check.prefix()))
                .filter_map(|key| ObjectIdentifier::builder().key(key).build().ok())
                .collect();
            if !expired.is_empty() {
                let count = expired.len() as u64;
                let delete = Delete::builder()
                    .set_objects(Some(expired))
                    .quiet(true)
                    .build()
                    .map_err(|err| Error::Unavailable(Box::new(err)))?;
                client
                    .delete_objects()
                    .bucket(bucket)
                    .delete(delete)
                    .send()
                    .await
                    .map_err(|err| Error::Unavailable(Box::new(err)))?;
                deleted += count;
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_owned()),
                _ => return Ok(deleted),
            }
        }
    }
}
