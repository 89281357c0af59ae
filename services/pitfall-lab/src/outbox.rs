//! `pitfall-lab outbox parked|release`: the rows the relay parked because Kafka refused them
//! for good (too large, invalid), and letting one go again once its cause is fixed.

use std::fmt::Write as _;

use clap::Subcommand;
use eda_outbox::OutboxTable;
use sqlx::Connection as _;

/// Parked outbox rows.
#[derive(Debug, Subcommand)]
pub enum Outbox {
    /// List the parked rows (oldest first) with why Kafka refused them. Later rows of each
    /// row's key wait behind it.
    Parked {
        /// The service's database (order-service's by default).
        #[arg(long, default_value = "postgres://eda:eda@127.0.0.1:5432/orders")]
        database_url: String,
        /// The outbox table.
        #[arg(long, default_value = eda_outbox::DEFAULT_TABLE)]
        table: String,
    },
    /// Release a parked row (by the id `parked` shows), after fixing its cause (raised limits,
    /// payload offloaded): the relay sends it, then the rows of its key that waited.
    Release {
        /// The row's id.
        #[arg(long)]
        id: i64,
        /// The service's database (order-service's by default).
        #[arg(long, default_value = "postgres://eda:eda@127.0.0.1:5432/orders")]
        database_url: String,
        /// The outbox table.
        #[arg(long, default_value = eda_outbox::DEFAULT_TABLE)]
        table: String,
    },
}

/// Runs the command; returns what to print.
pub async fn run(what: Outbox) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    match what {
        Outbox::Parked {
            database_url,
            table,
        } => {
            let table = OutboxTable::new(&table)?;
            let mut conn = sqlx::PgConnection::connect(&database_url).await?;
            let rows = eda_outbox::parked(&mut conn, &table).await?;
            let mut out = String::new();
            if rows.is_empty() {
                out.push_str("no parked rows\n");
            }
            for row in rows {
                let _ = writeln!(
                    out,
                    "{}  {}  {} key={} {} bytes  parked {}  {}",
                    row.id,
                    row.event_type,
                    row.topic,
                    eda_context::sanitize::printable(&row.aggregate_id, 64).unwrap_or("?"),
                    row.size,
                    row.parked_at.to_rfc3339(),
                    row.parked_reason.unwrap_or_default()
                );
            }
            Ok(out)
        }
        Outbox::Release {
            id,
            database_url,
            table,
        } => {
            let table = OutboxTable::new(&table)?;
            let mut conn = sqlx::PgConnection::connect(&database_url).await?;
            if eda_outbox::release(&mut conn, &table, id).await? {
                Ok(format!("row {id} released: the relay sends it next\n"))
            } else {
                Err(format!("no parked row {id} in {table}").into())
            }
        }
    }
}
