use eda_test_support::{Stack, unique};
use serde_json::{Value, json};

#[tokio::test]
async fn debezium_postgres_plugin_is_installed() {
    let stack = Stack::from_env();
    let plugins: Vec<Value> =
        reqwest::get(format!("{}/connector-plugins", stack.kafka_connect_url))
            .await
            .expect("Kafka Connect REST answers")
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
    let postgres = plugins
        .iter()
        .find(|p| p["class"] == "io.debezium.connector.postgresql.PostgresConnector")
        .unwrap_or_else(|| panic!("Debezium PostgreSQL connector not listed: {plugins:?}"));
    assert_eq!(postgres["type"], "source");
    assert!(
        postgres["version"].as_str().unwrap().starts_with("3."),
        "{postgres}"
    );
}

#[tokio::test]
async fn debezium_accepts_a_config_against_the_real_database() {
    // Validation makes the connector open a connection to PostgreSQL and check its settings,
    // without registering anything: proof that a later outbox connector can run here.
    let stack = Stack::from_env();
    let config = json!({
        "name": unique("smoke-validate"),
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "database.hostname": "127.0.0.1",
        "database.port": stack.pg_port.to_string(),
        "database.user": stack.pg_user,
        "database.password": stack.pg_password,
        "database.dbname": "orders",
        "topic.prefix": unique("smoke"),
        "plugin.name": "pgoutput",
    });
    let response: Value = reqwest::Client::new()
        .put(format!(
            "{}/connector-plugins/PostgresConnector/config/validate",
            stack.kafka_connect_url
        ))
        .json(&config)
        .send()
        .await
        .expect("Kafka Connect REST answers")
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let errors: Vec<&Value> = response["configs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| !c["value"]["errors"].as_array().is_none_or(Vec::is_empty))
        .collect();
    assert_eq!(response["error_count"], 0, "validation errors: {errors:#?}");
}
