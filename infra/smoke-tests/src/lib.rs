//! Smoke tests for the native stack (`infra/stack.sh`): each test in `tests/` proves, from Rust
//! and with the libraries the services use, that one real component works as the project
//! expects (logical WAL in PostgreSQL, no topic auto-creation in Kafka, the Debezium plugin in
//! Connect, the claim-check bucket in MinIO). `tests/compose.rs` checks `docker-compose.yml`
//! statically against `infra/env.sh`, since no Docker engine runs here.
//!
//! This library only holds the settings the tests share. Every value comes from the same
//! environment variables `infra/stack.sh env` exports, with the native stack's defaults.

use std::env;
use std::path::PathBuf;

/// Where the stack's components listen, read from the environment (see `infra/env.sh`).
#[derive(Debug, Clone)]
pub struct Stack {
    /// A superuser connection to the `postgres` database, used to create per-test databases.
    pub database_admin_url: String,
    /// Kafka bootstrap servers.
    pub kafka_bootstrap_servers: String,
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

fn var(name: &str, default: &str) -> String {
    env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

impl Stack {
    /// Reads the settings, defaulting to the native stack's ports and credentials.
    ///
    /// # Panics
    /// When `PG_PORT` is set to something that is not a port number: a misconfigured run should
    /// stop at once, not test the wrong server.
    pub fn from_env() -> Self {
        let pg_port = var("PG_PORT", "5432");
        let pg_user = var("PG_USER", "eda");
        let pg_password = var("PG_PASSWORD", "eda");
        Self {
            database_admin_url: var(
                "DATABASE_ADMIN_URL",
                &format!("postgres://{pg_user}:{pg_password}@127.0.0.1:{pg_port}/postgres"),
            ),
            kafka_bootstrap_servers: var("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            kafka_connect_url: var("KAFKA_CONNECT_URL", "http://127.0.0.1:8083"),
            s3_endpoint: var("S3_ENDPOINT", "http://127.0.0.1:9000"),
            s3_bucket: var("S3_BUCKET", "eda-claim-checks"),
            aws_region: var("AWS_REGION", "us-east-1"),
            s3_access_key: var("MINIO_ROOT_USER", "minioadmin"),
            s3_secret_key: var("MINIO_ROOT_PASSWORD", "minioadmin"),
            pg_port: pg_port
                .parse()
                .unwrap_or_else(|_| panic!("PG_PORT={pg_port:?} is not a port number")),
            pg_user,
            pg_password,
        }
    }

    /// The admin URL with another database name, for a database a test created.
    pub fn database_url(&self, database: &str) -> String {
        match self.database_admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{database}"),
            None => self.database_admin_url.clone(),
        }
    }
}

/// A name no other test run uses: tests isolate themselves by database, topic, group and key.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// The workspace's root directory (where `docker-compose.yml` and `infra/` live).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root exists")
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
    fn unique_names_differ_and_keep_the_prefix() {
        let (a, b) = (unique("smoke"), unique("smoke"));
        assert_ne!(a, b);
        assert!(a.starts_with("smoke_"));
    }

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(workspace_root().join("infra/env.sh").is_file());
    }
}
