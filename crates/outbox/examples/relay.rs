//! The relay as its own process: `cargo run -p eda-outbox --example relay`.
//!
//! Reads `DATABASE_URL` and `KAFKA_BOOTSTRAP_SERVERS`, creates the outbox table if needed, and
//! publishes until SIGINT/SIGTERM, then finishes the batch in flight and exits. Run two of them
//! against one database to see the advisory-lock leadership: one publishes, the other waits.
//! The integration tests kill this process with SIGKILL mid-burst to prove nothing is lost.

use std::time::Duration;

use eda_outbox::{Relay, RelayConfig};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let database_url = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is not set")?;
    let bootstrap =
        std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    let pool = sqlx::PgPool::connect(&database_url).await?;
    eda_outbox::migrate(&pool).await?;

    let mut kafka = rdkafka::ClientConfig::new();
    kafka.set("bootstrap.servers", &bootstrap);
    let config = RelayConfig {
        poll_interval: Duration::from_millis(200),
        lock_retry_interval: Duration::from_millis(500),
        ..RelayConfig::default()
    };
    let relay = Relay::new(pool, kafka, config)?;
    let metrics = relay.metrics();

    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        signal.cancel();
    });
    relay.run(shutdown).await;
    eprintln!(
        "relay exiting; published {} events",
        metrics.published_total()
    );
    Ok(())
}
