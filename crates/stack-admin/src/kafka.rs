//! Topics, created explicitly: the stack's broker does not create topics on first use.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

use crate::{Error, Result, Stack};

/// How long the broker may take to create or delete a topic.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

fn admin(stack: &Stack) -> Result<AdminClient<DefaultClientContext>> {
    stack
        .kafka_config()
        .create()
        .map_err(|source| Error::Kafka {
            what: "admin client",
            source,
        })
}

fn options() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(OPERATION_TIMEOUT))
}

/// Creates `topic` with `partitions` partitions and the stack's replication factor (1 on the
/// one-broker stack; with 3 replicas, `min.insync.replicas` is 2 as on the stack's own topics).
///
/// # Errors
/// When Kafka is unreachable, or refuses (the topic exists already, say).
pub async fn create_topic(stack: &Stack, topic: &str, partitions: i32) -> Result<()> {
    let min_insync = if stack.kafka_replication_factor >= 3 {
        "2"
    } else {
        "1"
    };
    let new_topic = NewTopic::new(
        topic,
        partitions,
        TopicReplication::Fixed(stack.kafka_replication_factor),
    )
    .set("min.insync.replicas", min_insync);
    let results = admin(stack)?
        .create_topics(&[new_topic], &options())
        .await
        .map_err(|source| Error::Kafka {
            what: "create_topics request (is Kafka up? `make infra-up`)",
            source,
        })?;
    for result in results {
        result.map_err(|(topic, code)| Error::TopicRefused { topic, code })?;
    }
    Ok(())
}

/// Deletes `topic`.
///
/// # Errors
/// When Kafka is unreachable, or refuses (no such topic, say).
pub async fn delete_topic(stack: &Stack, topic: &str) -> Result<()> {
    let results = admin(stack)?
        .delete_topics(&[topic], &options())
        .await
        .map_err(|source| Error::Kafka {
            what: "delete_topics request",
            source,
        })?;
    for result in results {
        result.map_err(|(topic, code)| Error::TopicRefused { topic, code })?;
    }
    Ok(())
}
