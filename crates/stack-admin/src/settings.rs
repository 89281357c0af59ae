//! Where the stack's components listen: the environment variables `infra/stack.sh env` exports
//! (see `infra/env.sh`), defaulting to the native stack's ports and credentials.

use rdkafka::ClientConfig;

use crate::{Error, Result};

/// Where the stack's components listen, and the credentials to administer them.
#[derive(Debug, Clone)]
pub struct Stack {
    /// A superuser connection to the `postgres` database, used to create scratch databases.
    pub database_admin_url: String,
    /// Kafka bootstrap servers.
    pub kafka_bootstrap_servers: String,
    /// Replication factor of the topics created here: 1 on the one-broker stack, 3 with
    /// `KAFKA_BROKERS=3` (`KAFKA_REPLICATION_FACTOR`).
    pub kafka_replication_factor: i32,
    /// Kafka Connect REST base URL.
    pub kafka_connect_url: String,
    /// S3 API of MinIO.
    pub s3_endpoint: String,
    /// Bucket created at start for claim-check payloads.
    pub s3_bucket: String,
    /// Region used for request signing (MinIO accepts any; the SDK requires one).
    pub aws_region: String,
    /// MinIO access key.
    pub s3_access_key: String,
    /// MinIO secret key.
    pub s3_secret_key: String,
    /// PostgreSQL port, as the native stack publishes it (Debezium's config needs host and port).
    pub pg_port: u16,
    /// PostgreSQL superuser name.
    pub pg_user: String,
    /// PostgreSQL superuser password.
    pub pg_password: String,
}

/// `name` from the environment; unset or blank reads as `default`.
fn var(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

impl Stack {
    /// Reads the settings, defaulting to the native stack's ports and credentials.
    ///
    /// # Errors
    /// When `PG_PORT` is not a port number, or `KAFKA_REPLICATION_FACTOR` not a positive
    /// number: a misconfigured run should stop at once, not administer the wrong server.
    pub fn try_from_env() -> Result<Self> {
        let pg_port = var("PG_PORT", "5432");
        let pg_user = var("PG_USER", "eda");
        let pg_password = var("PG_PASSWORD", "eda");
        let replication = var("KAFKA_REPLICATION_FACTOR", "1");
        let kafka_replication_factor = replication
            .parse::<i32>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| Error::Setting {
                name: "KAFKA_REPLICATION_FACTOR",
                value: replication.clone(),
                expected: "a replication factor (1 or more)",
            })?;
        Ok(Self {
            database_admin_url: var(
                "DATABASE_ADMIN_URL",
                &format!("postgres://{pg_user}:{pg_password}@127.0.0.1:{pg_port}/postgres"),
            ),
            kafka_bootstrap_servers: var("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            kafka_replication_factor,
            kafka_connect_url: var("KAFKA_CONNECT_URL", "http://127.0.0.1:8083"),
            s3_endpoint: var("S3_ENDPOINT", "http://127.0.0.1:9000"),
            s3_bucket: var("S3_BUCKET", "eda-claim-checks"),
            aws_region: var("AWS_REGION", "us-east-1"),
            s3_access_key: var("MINIO_ROOT_USER", "minioadmin"),
            s3_secret_key: var("MINIO_ROOT_PASSWORD", "minioadmin"),
            pg_port: pg_port.parse().map_err(|_| Error::Setting {
                name: "PG_PORT",
                value: pg_port.clone(),
                expected: "a port number",
            })?,
            pg_user,
            pg_password,
        })
    }

    /// [`try_from_env`](Self::try_from_env) for tests, where a bad setting should stop the run.
    ///
    /// # Panics
    /// When a setting has the wrong form (see [`try_from_env`](Self::try_from_env)).
    pub fn from_env() -> Self {
        Self::try_from_env().unwrap_or_else(|e| panic!("{e}"))
    }

    /// The admin URL with another database name, for a database created on the same server.
    pub fn database_url(&self, database: &str) -> String {
        match self.database_admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{database}"),
            None => self.database_admin_url.clone(),
        }
    }

    /// A Kafka client configuration with the stack's bootstrap servers, for the caller to add
    /// its own settings to.
    pub fn kafka_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.kafka_bootstrap_servers);
        config
    }

    /// [`kafka_config`](Self::kafka_config) for a producer: Java's `murmur2_random`
    /// partitioner, like every producer of the project (the relay, Debezium, dead letters), so
    /// a key written here lands on the partition the services' own events of that key use.
    pub fn producer_config(&self) -> ClientConfig {
        let mut config = self.kafka_config();
        config.set("partitioner", "murmur2_random");
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_swaps_only_the_database_name() {
        let stack = Stack {
            database_admin_url: "postgres://u:p@h:1/postgres".into(),
            ..Stack::from_env()
        };
        assert_eq!(stack.database_url("x_1"), "postgres://u:p@h:1/x_1");
    }

    #[test]
    fn kafka_config_carries_the_bootstrap_servers() {
        let stack = Stack {
            kafka_bootstrap_servers: "k1:9092,k2:9092".into(),
            ..Stack::from_env()
        };
        assert_eq!(
            stack.kafka_config().get("bootstrap.servers"),
            Some("k1:9092,k2:9092")
        );
    }
}
