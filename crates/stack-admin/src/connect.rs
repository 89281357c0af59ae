//! Debezium outbox connectors on Kafka Connect: one per database, each with its own replication
//! slot, so a test or a benchmark run captures only its own outbox.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Error, Result, Stack, unique};

/// The project's connector (`infra/debezium/outbox-connector.json`), with `@NAME@` placeholders
/// filled per database. Built in, so a tool holds the same connector as the stack's scripts.
pub const OUTBOX_CONNECTOR_TEMPLATE: &str =
    include_str!("../../../infra/debezium/outbox-connector.json");

/// How long a connector may take to start, and its slot to be released after it is deleted.
const CONNECT_WAIT: Duration = Duration::from_secs(120);

/// How often Kafka Connect and `pg_replication_slots` are asked while waiting.
const POLL: Duration = Duration::from_millis(300);

/// A Debezium outbox connector registered for one database, with its own replication slot.
/// [`remove`](Self::remove) deletes it and drops the slot, which must go before the database
/// can be dropped (and which keeps WAL on the server as long as it exists).
#[derive(Debug)]
pub struct OutboxConnector {
    url: String,
    name: String,
    slot: String,
}

impl OutboxConnector {
    /// Registers the connector for `database` and waits until its task runs. `prefix` starts the
    /// connector's and the slot's names (`<prefix>-outbox-…`, `<prefix>_slot_…`), so a leftover
    /// of a crashed run tells who made it.
    ///
    /// # Errors
    /// When Kafka Connect is unreachable, refuses the config, or the task fails or does not
    /// run within two minutes.
    pub async fn register(stack: &Stack, prefix: &str, database: &str) -> Result<Self> {
        let name = unique(&format!("{prefix}-outbox")).replace('_', "-");
        let slot = unique(&format!("{prefix}_slot"));
        let config = render(OUTBOX_CONNECTOR_TEMPLATE, stack, &name, &slot, database)?;
        let url = format!("{}/connectors/{name}", stack.kafka_connect_url);
        let response = reqwest::Client::new()
            .put(format!("{url}/config"))
            .json(&config["config"])
            .send()
            .await
            .map_err(|source| Error::Connect {
                url: stack.kafka_connect_url.clone(),
                source,
            })?;
        if !response.status().is_success() {
            return Err(Error::ConnectorRefused {
                name,
                status: response.status().as_u16(),
                body: response.text().await.unwrap_or_default(),
            });
        }
        let connector = Self { url, name, slot };
        connector.wait_running().await?;
        Ok(connector)
    }

    /// The connector's name on Kafka Connect (also its topic prefix).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its replication slot (and publication).
    pub fn slot(&self) -> &str {
        &self.slot
    }

    async fn wait_running(&self) -> Result<()> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + CONNECT_WAIT;
        loop {
            let status: Value = client
                .get(format!("{}/status", self.url))
                .send()
                .await
                .map_err(|source| Error::Connect {
                    url: self.url.clone(),
                    source,
                })?
                .json()
                .await
                .unwrap_or(Value::Null);
            let task = &status["tasks"][0];
            if status["connector"]["state"] == "RUNNING" && task["state"] == "RUNNING" {
                return Ok(());
            }
            if task["state"] == "FAILED" {
                return Err(Error::ConnectorFailed {
                    name: self.name.clone(),
                    trace: task["trace"].as_str().unwrap_or_default().to_owned(),
                });
            }
            if Instant::now() > deadline {
                return Err(Error::ConnectorNotRunning {
                    name: self.name.clone(),
                    waited: CONNECT_WAIT,
                    status: status.to_string(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Deletes the connector and drops its replication slot once Debezium has let go of it.
    /// `pool` is any database of the server (slots are server-wide).
    ///
    /// # Errors
    /// When Kafka Connect or PostgreSQL is unreachable, or the slot stays active for two
    /// minutes.
    pub async fn remove(self, pool: &sqlx::PgPool) -> Result<()> {
        reqwest::Client::new()
            .delete(&self.url)
            .send()
            .await
            .map_err(|source| Error::Connect {
                url: self.url.clone(),
                source,
            })?;
        let deadline = Instant::now() + CONNECT_WAIT;
        loop {
            let active: Option<bool> =
                sqlx::query_scalar("SELECT active FROM pg_replication_slots WHERE slot_name = $1")
                    .bind(&self.slot)
                    .fetch_optional(pool)
                    .await
                    .map_err(|source| Error::Postgres {
                        what: "read pg_replication_slots",
                        source,
                    })?;
            match active {
                None => return Ok(()),
                // Released: drop it now (slot.drop.on.stop does too; whoever is first wins).
                Some(false) => {
                    let _ = sqlx::query("SELECT pg_drop_replication_slot($1)")
                        .bind(&self.slot)
                        .execute(pool)
                        .await;
                }
                Some(true) => {}
            }
            if Instant::now() > deadline {
                return Err(Error::SlotStillActive {
                    slot: self.slot.clone(),
                    waited: CONNECT_WAIT,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// The connector's JSON (`{"name": .., "config": {..}}`) for one database.
fn render(template: &str, stack: &Stack, name: &str, slot: &str, database: &str) -> Result<Value> {
    let rendered = template
        .replace("@CONNECTOR_NAME@", name)
        .replace("@DATABASE_HOST@", "127.0.0.1")
        .replace("@PG_PORT@", &stack.pg_port.to_string())
        .replace("@PG_USER@", &stack.pg_user)
        .replace("@PG_PASSWORD@", &stack.pg_password)
        .replace("@DATABASE_NAME@", database)
        .replace("@SLOT_NAME@", slot)
        .replace("@SLOT_DROP_ON_STOP@", "true");
    if let Some(at) = rendered.find('@') {
        let placeholder: String = rendered[at..].chars().take(40).collect();
        return Err(Error::Placeholder(placeholder));
    }
    serde_json::from_str(&rendered).map_err(Error::TemplateJson)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_is_filled_for_one_database() {
        let stack = Stack {
            pg_port: 6543,
            ..Stack::from_env()
        };
        let config = render(
            OUTBOX_CONNECTOR_TEMPLATE,
            &stack,
            "c-1",
            "slot_1",
            "bench_db",
        )
        .unwrap();
        assert_eq!(config["name"], "c-1");
        let config = &config["config"];
        assert_eq!(config["database.dbname"], "bench_db");
        assert_eq!(config["database.port"], "6543");
        assert_eq!(config["slot.name"], "slot_1");
        assert_eq!(config["publication.name"], "slot_1");
        assert_eq!(config["slot.drop.on.stop"], "true");
    }

    #[test]
    fn an_unknown_placeholder_is_an_error() {
        let err = render(
            r#"{"name": "@CONNECTOR_NAME@", "x": "@NEW_ONE@"}"#,
            &Stack::from_env(),
            "c",
            "s",
            "d",
        )
        .unwrap_err();
        assert!(err.to_string().contains("@NEW_ONE@"), "{err}");
    }
}
