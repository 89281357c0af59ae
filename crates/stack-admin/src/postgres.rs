//! Scratch databases: one per test or benchmark run, so runs never see each other's rows.

use sqlx::{AssertSqlSafe, Connection, PgConnection};

use crate::{Error, Result, Stack, unique};

/// Creates an empty database named `<prefix>_<random>` and returns its name
/// ([`Stack::database_url`] gives its URL).
///
/// # Errors
/// When PostgreSQL is unreachable or refuses.
pub async fn create_database(stack: &Stack, prefix: &str) -> Result<String> {
    let name = unique(prefix);
    let mut admin = admin(stack).await?;
    sqlx::query(AssertSqlSafe(format!(
        "CREATE DATABASE {}",
        quote_ident(&name)
    )))
    .execute(&mut admin)
    .await
    .map_err(|source| Error::Postgres {
        what: "create database",
        source,
    })?;
    Ok(name)
}

/// Drops `name` with `FORCE` (closing other sessions on it); a missing database is no error.
///
/// # Errors
/// When PostgreSQL is unreachable or refuses (a replication slot still active on it, say).
pub async fn drop_database(stack: &Stack, name: &str) -> Result<()> {
    let mut admin = admin(stack).await?;
    sqlx::query(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        quote_ident(name)
    )))
    .execute(&mut admin)
    .await
    .map_err(|source| Error::Postgres {
        what: "drop database",
        source,
    })?;
    Ok(())
}

async fn admin(stack: &Stack) -> Result<PgConnection> {
    PgConnection::connect(&stack.database_admin_url)
        .await
        .map_err(|source| Error::Postgres {
            what: "connect to PostgreSQL (is the stack up? `make infra-up`)",
            source,
        })
}

/// `name` as a PostgreSQL identifier: in double quotes, inner quotes doubled, so any name is
/// taken literally (database names cannot be bind parameters).
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_literally() {
        assert_eq!(quote_ident("test_1"), r#""test_1""#);
        assert_eq!(quote_ident(r#"a"; DROP"#), r#""a""; DROP""#);
    }
}
