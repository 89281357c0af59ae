//! The outbox table's name: `outbox` unless the service chooses another (two outboxes in one
//! database, a naming convention, a table that already exists).

use std::borrow::Cow;

use sqlx::SqlSafeStr as _;
use sqlx::migrate::{Migration, Migrator};

use crate::{Error, Result};

/// The outbox schema as written, for the default name; other names are substituted at run time.
static EMBEDDED: Migrator = sqlx::migrate!("./migrations");

/// The default table name.
pub const DEFAULT_TABLE: &str = "outbox";

/// The name of an outbox table: a plain lowercase SQL identifier (`[a-z_][a-z0-9_]*`, at most
/// 40 characters, so the index and trigger names derived from it stay under PostgreSQL's 63).
/// Use the database's `search_path` to put it in another schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxTable(String);

impl Default for OutboxTable {
    fn default() -> Self {
        Self(DEFAULT_TABLE.to_owned())
    }
}

impl std::fmt::Display for OutboxTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl OutboxTable {
    /// Checks `name` (it is written into SQL, so only a plain identifier is accepted).
    pub fn new(name: &str) -> Result<Self> {
        if is_identifier(name, 40) {
            Ok(Self(name.to_owned()))
        } else {
            Err(Error::Config(format!(
                "outbox table name {name:?} must be 1-40 characters of a-z, 0-9 and _, not starting with a digit"
            )))
        }
    }

    /// The name, as written into SQL.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// Where this table's migrations are recorded: `_eda_outbox_migrations` for the default
    /// table, `_eda_<name>_migrations` otherwise, so that two outboxes never share versions.
    pub fn migrations_table(&self) -> String {
        format!("_eda_{}_migrations", self.0)
    }

    /// The embedded migrations with every identifier that starts with `outbox` (the table, its
    /// indexes, the trigger and its function) renamed; identical to the files for the default.
    fn migrator(&self) -> Migrator {
        let migrations = EMBEDDED
            .iter()
            .map(|m| {
                let sql = rename_identifiers(m.sql.as_str(), DEFAULT_TABLE, &self.0);
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

    /// Creates or upgrades this table, its indexes and its notify trigger. Safe at every start,
    /// from every replica (migrations take a lock).
    pub async fn migrate(&self, pool: &sqlx::PgPool) -> Result<()> {
        self.migrator().run(pool).await?;
        Ok(())
    }
}

/// `name` is a plain lowercase identifier of at most `max` characters.
fn is_identifier(name: &str, max: usize) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && name.len() <= max
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

/// Replaces `from` by `to` wherever `from` starts an identifier (not preceded by a letter,
/// digit or `_`): `outbox`, `outbox_pending_idx`, `outbox_notify()`, but not `eda_outbox`, the
/// notification channel every outbox shares.
fn rename_identifiers(sql: &str, from: &str, to: &str) -> String {
    if from == to {
        return sql.to_owned();
    }
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(at) = rest.find(from) {
        let before = rest[..at].chars().next_back().or(out.chars().next_back());
        out.push_str(&rest[..at]);
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.push_str(from);
        } else {
            out.push_str(to);
        }
        rest = &rest[at + from.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_identifiers() {
        assert!(OutboxTable::new("orders_outbox").is_ok());
        assert!(OutboxTable::new("_x1").is_ok());
        for bad in [
            "",
            "Outbox",
            "1outbox",
            "out box",
            "a;drop table x",
            &"a".repeat(41),
        ] {
            assert!(OutboxTable::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn renaming_keeps_the_default_byte_for_byte_and_the_shared_channel() {
        let sql = "CREATE TABLE outbox (x int); CREATE INDEX outbox_idx ON outbox (x); \
                   PERFORM pg_notify('eda_outbox', ''); -- eda-outbox";
        assert_eq!(rename_identifiers(sql, "outbox", "outbox"), sql);
        assert_eq!(
            rename_identifiers(sql, "outbox", "billing_events"),
            "CREATE TABLE billing_events (x int); CREATE INDEX billing_events_idx ON billing_events (x); \
                   PERFORM pg_notify('eda_outbox', ''); -- eda-billing_events"
        );
    }

    #[test]
    fn the_default_migrations_keep_their_checksums() {
        // Databases migrated before names were settings must not see "modified migrations".
        let ours = OutboxTable::default().migrator();
        for (a, b) in ours.iter().zip(EMBEDDED.iter()) {
            assert_eq!(a.checksum, b.checksum);
        }
        assert_eq!(
            OutboxTable::default().migrations_table(),
            crate::MIGRATIONS_TABLE
        );
    }
}
