//! The names of the runtime's tables: `processed_events`, `consumer_offsets`,
//! `aggregate_revisions` and `chunk_parts` unless the service chooses others.

use std::borrow::Cow;

use sqlx::SqlSafeStr as _;
use sqlx::migrate::{Migration, Migrator};

use crate::Error;

/// The schema as written, for the default names; other names are substituted at run time.
static EMBEDDED: Migrator = sqlx::migrate!("./migrations");

/// Table in which the default tables' migrations are recorded (separate from the service's).
pub const MIGRATIONS_TABLE: &str = "_eda_consumer_migrations";

/// The runtime's table names. Each is a plain lowercase SQL identifier (`[a-z_][a-z0-9_]*`, at
/// most 40 characters); use the database's `search_path` to put them in another schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerTables {
    processed_events: String,
    consumer_offsets: String,
    aggregate_revisions: String,
    chunk_parts: String,
}

impl Default for ConsumerTables {
    fn default() -> Self {
        Self {
            processed_events: "processed_events".to_owned(),
            consumer_offsets: "consumer_offsets".to_owned(),
            aggregate_revisions: "aggregate_revisions".to_owned(),
            chunk_parts: "chunk_parts".to_owned(),
        }
    }
}

impl ConsumerTables {
    /// The same tables with `prefix` before each default name (`billing_` gives
    /// `billing_processed_events`, ..., `billing_chunk_parts`).
    pub fn prefixed(prefix: &str) -> Result<Self, Error> {
        Self::named(
            &format!("{prefix}processed_events"),
            &format!("{prefix}consumer_offsets"),
            &format!("{prefix}aggregate_revisions"),
        )?
        .with_chunk_parts(&format!("{prefix}chunk_parts"))
    }

    /// Names of your choosing; the chunk table is `<processed_events>_chunks` unless set with
    /// [`with_chunk_parts`](Self::with_chunk_parts).
    pub fn named(
        processed_events: &str,
        consumer_offsets: &str,
        aggregate_revisions: &str,
    ) -> Result<Self, Error> {
        for name in [processed_events, consumer_offsets, aggregate_revisions] {
            if !is_identifier(name, 40) {
                return Err(Error::Config(format!(
                    "table name {name:?} must be 1-40 characters of a-z, 0-9 and _, not starting with a digit"
                )));
            }
        }
        Ok(Self {
            processed_events: processed_events.to_owned(),
            consumer_offsets: consumer_offsets.to_owned(),
            aggregate_revisions: aggregate_revisions.to_owned(),
            chunk_parts: format!("{processed_events}_chunks"),
        })
    }

    /// The same tables with the chunk table named `chunk_parts`.
    pub fn with_chunk_parts(mut self, chunk_parts: &str) -> Result<Self, Error> {
        if !is_identifier(chunk_parts, 48) {
            return Err(Error::Config(format!(
                "table name {chunk_parts:?} must be 1-48 characters of a-z, 0-9 and _, not starting with a digit"
            )));
        }
        chunk_parts.clone_into(&mut self.chunk_parts);
        Ok(self)
    }

    /// One row per applied event id (`Dedupe::EventId`).
    pub fn processed_events(&self) -> &str {
        &self.processed_events
    }

    /// The next offset per partition (`Dedupe::Offsets`).
    pub fn consumer_offsets(&self) -> &str {
        &self.consumer_offsets
    }

    /// The last applied revision per aggregate (the revision guard).
    pub fn aggregate_revisions(&self) -> &str {
        &self.aggregate_revisions
    }

    /// Chunks of large messages until their set is complete (chunked records).
    pub fn chunk_parts(&self) -> &str {
        &self.chunk_parts
    }

    /// Where these tables' migrations are recorded: [`MIGRATIONS_TABLE`] for the defaults,
    /// `_eda_consumer_migrations_<processed_events>` otherwise.
    pub fn migrations_table(&self) -> String {
        if *self == Self::default() {
            MIGRATIONS_TABLE.to_owned()
        } else {
            format!("{MIGRATIONS_TABLE}_{}", self.processed_events)
        }
    }

    fn migrator(&self) -> Migrator {
        let defaults = Self::default();
        let migrations = EMBEDDED
            .iter()
            .map(|m| {
                let mut sql = m.sql.as_str().to_owned();
                for (from, to) in [
                    (&defaults.processed_events, &self.processed_events),
                    (&defaults.consumer_offsets, &self.consumer_offsets),
                    (&defaults.aggregate_revisions, &self.aggregate_revisions),
                    (&defaults.chunk_parts, &self.chunk_parts),
                ] {
                    sql = rename_identifiers(&sql, from, to);
                }
                Migration::new(
                    m.version,
                    m.description.clone(),
                    m.migration_type,
                    sqlx::AssertSqlSafe(sql).into_sql_str(),
                    m.no_tx,
                )
            })
            .collect();
        let mut migrator = Migrator::with_migrations(migrations);
        migrator.dangerous_set_table_name(Cow::Owned(self.migrations_table()));
        migrator
    }

    /// Creates or upgrades these tables. Safe at every start.
    pub async fn migrate(&self, pool: &sqlx::PgPool) -> Result<(), Error> {
        self.migrator().run(pool).await?;
        Ok(())
    }
}

impl ConsumerTables {
    /// Deletes processed-event records and remembered revisions older than `older_than`, in
    /// chunks of 10,000 (short locks); returns how many went.
    pub async fn prune(
        &self,
        pool: &sqlx::PgPool,
        older_than: std::time::Duration,
    ) -> Result<u64, Error> {
        let mut total = 0;
        for (table, column) in [
            (self.processed_events(), "processed_at"),
            (self.aggregate_revisions(), "updated_at"),
        ] {
            let sql = format!(
                "DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table} \
                 WHERE {column} < now() - make_interval(secs => $1) LIMIT 10000)"
            );
            loop {
                let deleted = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(older_than.as_secs_f64())
                    .execute(pool)
                    .await?
                    .rows_affected();
                total += deleted;
                if deleted < 10_000 {
                    break;
                }
            }
        }
        Ok(total)
    }
}

fn is_identifier(name: &str, max: usize) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && name.len() <= max
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

/// Replaces `from` by `to` wherever `from` starts an identifier (not preceded by a letter,
/// digit or `_`), so a table's index names follow it.
fn rename_identifiers(sql: &str, from: &str, to: &str) -> String {
    if from == to {
        return sql.to_owned();
    }
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(at) = rest.find(from) {
        let before = rest[..at].chars().next_back().or(out.chars().next_back());
        out.push_str(&rest[..at]);
        let inside_a_word = before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        out.push_str(if inside_a_word { from } else { to });
        rest = &rest[at + from.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_keep_their_checksums_and_migrations_table() {
        let ours = ConsumerTables::default().migrator();
        for (a, b) in ours.iter().zip(EMBEDDED.iter()) {
            assert_eq!(a.checksum, b.checksum);
        }
        assert_eq!(
            ConsumerTables::default().migrations_table(),
            MIGRATIONS_TABLE
        );
    }

    #[test]
    fn prefixed_names_rename_tables_and_their_indexes() {
        let t = ConsumerTables::prefixed("billing_").unwrap();
        assert_eq!(t.processed_events(), "billing_processed_events");
        let sql: String = t
            .migrator()
            .iter()
            .map(|m| m.sql.as_str().to_owned())
            .collect();
        assert!(sql.contains("CREATE TABLE billing_processed_events"));
        assert!(sql.contains("billing_processed_events_processed_at_idx"));
        assert!(sql.contains("CREATE TABLE billing_aggregate_revisions"));
        assert!(!sql.contains("CREATE TABLE processed_events"));
        assert!(sql.contains("CREATE TABLE billing_chunk_parts"));
        assert!(sql.contains("billing_chunk_parts_received_at_idx"));
        let named = ConsumerTables::named("a_seen", "a_offsets", "a_revisions").unwrap();
        assert_eq!(named.chunk_parts(), "a_seen_chunks");
        assert!(ConsumerTables::prefixed("Bad-").is_err());
    }
}
