//! The start-up steps every service repeats, with errors that say what could not be reached.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::net::TcpListener;

/// Start-up failures, each naming what could not be reached or set up.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// PostgreSQL unreachable or refusing.
    #[error("cannot connect to PostgreSQL: {0}")]
    Database(#[source] sqlx::Error),
    /// Migrations failed.
    #[error("database migrations failed: {0}")]
    Migrations(String),
    /// Kafka client configuration refused.
    #[error("cannot create a Kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
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
    /// A failed migrator (any crate's).
    pub fn migrations(err: impl std::fmt::Display) -> Self {
        Self::Migrations(err.to_string())
    }
}

/// A pool of 20 connections that gives up acquiring after 5 s (a request then fails with 500
/// instead of hanging).
pub async fn connect_database(url: &str) -> Result<PgPool, StartupError> {
    PgPoolOptions::new()
        .max_connections(20)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(StartupError::Database)
}

/// Closes the pool at exit, waiting at most `timeout` for connections still in use (a request
/// cut off by the drain timeout may hold one until the runtime ends).
pub async fn close_database(pool: &PgPool, timeout: Duration) {
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
