//! `pitfall-lab projection rebuild` (`make projection-rebuild`): rebuilds projection-service's
//! views from the source tables without downtime. New Debezium table connectors (their own
//! slots and topics) snapshot the CRUD tables; projection-service fills a new generation of its
//! views from them and from the live topics while the old views keep serving; once the new
//! generation holds every source row, the service switches it in atomically. The connectors and
//! topics of the rebuild are removed afterwards.

use std::time::{Duration, Instant};

use clap::Args;
use eda_stack_admin::{Connector, Stack};
use serde_json::{Value, json};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `projection rebuild`'s arguments.
#[derive(Debug, Args)]
pub struct Rebuild {
    /// projection-service's address.
    #[arg(long, default_value = "http://127.0.0.1:8082")]
    pub url: String,
    /// order-service's database (orders, order_items).
    #[arg(long, default_value = "orders")]
    pub orders_db: String,
    /// inventory-service's database (stock, reservations).
    #[arg(long, default_value = "inventory")]
    pub inventory_db: String,
    /// The services' signing key (an admin token is made with it).
    #[arg(long, env = "JWT_SECRET", default_value = order_service::configuration::DEV_JWT_SECRET, hide_env_values = true)]
    pub secret: String,
    /// How long the new generation may take to hold every source row.
    #[arg(long, default_value_t = 1800)]
    pub timeout_secs: u64,
}

/// The source tables per database, and the view table that holds each.
const SOURCES: [(&str, [(&str, &str); 2]); 2] = [
    (
        "orders",
        [
            ("public.orders", "order_view"),
            ("public.order_items", "order_line_view"),
        ],
    ),
    (
        "inventory",
        [
            ("public.stock", "stock_view"),
            ("public.reservations", "reservation_view"),
        ],
    ),
];

/// Runs the rebuild; returns the report to print.
pub async fn run(args: Rebuild) -> Result<String, BoxError> {
    let stack = Stack::from_env();
    let started = Instant::now();
    let token = order_service::auth::issue_token(
        &args.secret,
        "pitfall-lab",
        &["admin".to_owned()],
        Duration::from_secs(3600),
    )?;
    let client = reqwest::Client::new();
    let stamp = chrono::Utc::now().timestamp_millis();
    let databases = [args.orders_db.as_str(), args.inventory_db.as_str()];
    // Topics first (auto-creation is off), then the service's generation, then the connectors
    // that fill them.
    let mut topics = Vec::new();
    let mut prefixes = Vec::new();
    for ((_, tables), db) in SOURCES.iter().zip(databases) {
        let prefix = format!("cdc.rebuild{stamp}.{db}");
        for (table, _) in tables {
            let topic = format!("{prefix}.{table}");
            eda_stack_admin::create_topic(&stack, &topic, 6).await?;
            eda_stack_admin::create_topic(&stack, &format!("{topic}.dlq"), 1).await?;
            topics.push(topic);
        }
        prefixes.push(prefix);
    }
    let result = async {
        let response = client
            .post(format!("{}/admin/rebuild", args.url))
            .bearer_auth(&token)
            .json(&json!({"topics": topics}))
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(format!(
                "projection-service refused the rebuild ({}): {}",
                response.status(),
                response.text().await.unwrap_or_default()
            )
            .into());
        }
        let generation: Value = response.json().await?;
        let mut connectors = Vec::new();
        for (((_, tables), db), prefix) in SOURCES.iter().zip(databases).zip(&prefixes) {
            let tables: Vec<&str> = tables.iter().map(|(t, _)| *t).collect();
            connectors.push(Connector::register_cdc(&stack, "rebuild", db, &tables, prefix).await?);
        }
        let outcome = wait_and_switch(&stack, &client, &token, &args, &databases).await;
        let admin = sqlx::PgPool::connect(&stack.database_url("postgres")).await?;
        for connector in connectors {
            connector.remove(&admin).await?;
        }
        let (rows, switched) = outcome?;
        Ok::<_, BoxError>(format!(
            "rebuilt {} into {}: {rows}; switched in after {:.1} s (old views kept in {})\n",
            args.url,
            generation["generation"].as_str().unwrap_or("?"),
            started.elapsed().as_secs_f64(),
            switched["retired"].as_str().unwrap_or("?")
        ))
    }
    .await;
    for topic in &topics {
        let _ = eda_stack_admin::delete_topic(&stack, topic).await;
        let _ = eda_stack_admin::delete_topic(&stack, &format!("{topic}.dlq")).await;
    }
    result
}

/// Waits until the generation holds at least every source row, then asks for the switch.
async fn wait_and_switch(
    stack: &Stack,
    client: &reqwest::Client,
    token: &str,
    args: &Rebuild,
    databases: &[&str; 2],
) -> Result<(String, Value), BoxError> {
    let mut pools = Vec::new();
    for db in databases {
        pools.push(sqlx::PgPool::connect(&stack.database_url(db)).await?);
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let rows = loop {
        // Source counts first: rows only arrive in the generation after their commit.
        let mut wanted = Vec::new();
        for ((_, tables), pool) in SOURCES.iter().zip(&pools) {
            for (table, view) in tables {
                let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT count(*) FROM {table}"
                )))
                .fetch_one(pool)
                .await?;
                wanted.push((*view, n));
            }
        }
        let progress: Value = client
            .get(format!("{}/admin/rebuild", args.url))
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        let done = wanted
            .iter()
            .all(|(view, n)| progress["rows"][view].as_i64().unwrap_or(-1) >= *n);
        if done {
            break wanted
                .iter()
                .map(|(view, n)| format!("{view} {n}"))
                .collect::<Vec<_>>()
                .join(", ");
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the new generation does not hold every source row after {} s: wanted {wanted:?}, holds {}",
                args.timeout_secs, progress["rows"]
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let response = client
        .post(format!("{}/admin/rebuild/switch", args.url))
        .bearer_auth(token)
        .send()
        .await?;
    if !response.status().is_success() {
        return Err(format!(
            "the switch failed ({}): {}",
            response.status(),
            response.text().await.unwrap_or_default()
        )
        .into());
    }
    Ok((rows, response.json().await?))
}
