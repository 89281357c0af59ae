//! Debezium connectors on Kafka Connect, each with its own replication slot: outbox connectors
//! (one per database, so a test or a benchmark run captures only its own outbox) and table
//! (CDC) connectors whose change events feed projection-service.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Error, Result, Stack, unique};

/// The project's connector (`infra/debezium/outbox-connector.json`), with `@NAME@` placeholders
/// filled per database. Built in, so a tool holds the same connector as the stack's scripts.
pub const OUTBOX_CONNECTOR_TEMPLATE: &str =
    include_str!("../../../infra/debezium/outbox-connector.json");

/// The table (CDC) connector (`infra/debezium/cdc-connector.json`): change events of the tables
/// `@TABLES@` as JSON without schemas, on topics `<@TOPIC_PREFIX@>.<schema>.<table>`.
pub const CDC_CONNECTOR_TEMPLATE: &str = include_str!("../../../infra/debezium/cdc-connector.json");

/// How long a connector may take to start, and its slot to be released after it is deleted.
const CONNECT_WAIT: Duration = Duration::from_secs(120);

/// How often Kafka Connect and `pg_replication_slots` are asked while waiting.
const POLL: Duration = Duration::from_millis(300);

/// A Debezium connector registered for one database, with its own replication slot.
/// [`remove`](Self::remove) deletes it and drops the slot, which must go before the database
/// can be dropped (and which keeps WAL on the server as long as it exists).
#[derive(Debug)]
pub struct Connector {
    url: String,
    name: String,
    slot: String,
    topic_prefix: String,
}

/// The outbox connector's old name: a [`Connector`] made by [`Connector::register`].
pub type OutboxConnector = Connector;

impl Connector {
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
        let config = render(
            OUTBOX_CONNECTOR_TEMPLATE,
            stack,
            &name,
            &slot,
            database,
            &[],
        )?;
        Self::put(stack, name.clone(), slot, name, config).await
    }

    /// Registers a table (CDC) connector for `tables` (`schema.table`) of `database`, whose
    /// change events go to `<topic_prefix>.<schema>.<table>` (those topics and their `.dlq`
    /// must exist: auto-creation is off), and waits until its task runs. It snapshots the
    /// tables' rows first (`op` `r`), then streams changes.
    ///
    /// # Errors
    /// As [`register`](Self::register).
    pub async fn register_cdc(
        stack: &Stack,
        prefix: &str,
        database: &str,
        tables: &[&str],
        topic_prefix: &str,
    ) -> Result<Self> {
        let name = unique(&format!("{prefix}-cdc")).replace('_', "-");
        let slot = unique(&format!("{prefix}_cdc_slot"));
        let tables = tables.join(",");
        let config = render(
            CDC_CONNECTOR_TEMPLATE,
            stack,
            &name,
            &slot,
            database,
            &[("@TABLES@", &tables), ("@TOPIC_PREFIX@", topic_prefix)],
        )?;
        Self::put(stack, name, slot, topic_prefix.to_owned(), config).await
    }

    async fn put(
        stack: &Stack,
        name: String,
        slot: String,
        topic_prefix: String,
        config: Value,
    ) -> Result<Self> {
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
        let connector = Self {
            url,
            name,
            slot,
            topic_prefix,
        };
        connector.wait_running().await?;
        Ok(connector)
    }

    /// The connector's name on Kafka Connect (an outbox connector's topic prefix too).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The prefix of its topics (`topic.prefix`).
    pub fn topic_prefix(&self) -> &str {
        &self.topic_prefix
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

/// The connector's JSON (`{"name": .., "config": {..}}`) for one database; `more` fills the
/// template's own placeholders.
fn render(
    template: &str,
    stack: &Stack,
    name: &str,
    slot: &str,
    database: &str,
    more: &[(&str, &str)],
) -> Result<Value> {
    let mut rendered = template.to_owned();
    for (placeholder, value) in more {
        rendered = rendered.replace(placeholder, value);
    }
    let rendered = rendered
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
            &[],
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
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("@NEW_ONE@"), "{err}");
    }

    #[test]
    fn the_cdc_template_takes_tables_and_a_topic_prefix() {
        let config = render(
            CDC_CONNECTOR_TEMPLATE,
            &Stack::from_env(),
            "c-2",
            "slot_2",
            "orders_db",
            &[
                ("@TABLES@", "public.orders,public.order_items"),
                ("@TOPIC_PREFIX@", "cdc.t1"),
            ],
        )
        .unwrap();
        let config = &config["config"];
        assert_eq!(
            config["table.include.list"],
            "public.orders,public.order_items"
        );
        assert_eq!(config["topic.prefix"], "cdc.t1");
        assert_eq!(config["snapshot.mode"], "initial");
        assert_eq!(config["value.converter.schemas.enable"], "false");
        // Without the table list the template is incomplete.
        assert!(
            render(
                CDC_CONNECTOR_TEMPLATE,
                &Stack::from_env(),
                "c",
                "s",
                "d",
                &[]
            )
            .is_err()
        );
    }
}
