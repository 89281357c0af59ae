use std::time::Duration;

use eda_test_support::{Stack, create_topic, kafka_config, unique};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

const TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_message_with_headers_round_trips() {
    let stack = Stack::from_env();
    let topic = create_topic(&stack, 3).await;
    let producer: FutureProducer = kafka_config(&stack)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "zstd")
        .create()
        .expect("producer");

    let event_id = uuid::Uuid::now_v7().to_string();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "event-id",
            value: Some(event_id.as_str()),
        })
        .insert(Header {
            key: "event-type",
            value: Some("SmokeTested"),
        })
        .insert(Header {
            key: "traceparent",
            value: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        });
    let payload = r#"{"hello":"kafka"}"#;
    let delivery = producer
        .send(
            FutureRecord::to(&topic)
                .key("order-42")
                .payload(payload)
                .headers(headers),
            Timeout::After(TIMEOUT),
        )
        .await
        .map_err(|(err, _)| err)
        .expect("delivered");

    let consumer: StreamConsumer = kafka_config(&stack)
        .set("group.id", unique("smoke-group"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let message = tokio::time::timeout(TIMEOUT, consumer.recv())
        .await
        .expect("a message within 30s")
        .expect("consume");

    assert_eq!(message.partition(), delivery.partition);
    assert_eq!(message.offset(), delivery.offset);
    assert_eq!(message.key(), Some("order-42".as_bytes()));
    assert_eq!(message.payload_view::<str>(), Some(Ok(payload)));
    let got: Vec<(String, String)> = message
        .headers()
        .expect("headers present")
        .iter()
        .map(|h| {
            (
                h.key.to_owned(),
                String::from_utf8(h.value.unwrap_or_default().to_vec()).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("event-id".to_owned(), event_id),
            ("event-type".to_owned(), "SmokeTested".to_owned()),
            (
                "traceparent".to_owned(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()
            ),
        ],
        "headers arrive in order, unchanged"
    );
}

#[tokio::test]
async fn project_topics_exist_with_six_partitions() {
    let stack = Stack::from_env();
    let consumer: StreamConsumer = kafka_config(&stack).create().expect("client");
    let metadata = consumer.fetch_metadata(None, TIMEOUT).expect("metadata");
    for name in [
        "order.events",
        "inventory.events",
        "order.events.dlq",
        "inventory.events.dlq",
    ] {
        let topic = metadata
            .topics()
            .iter()
            .find(|t| t.name() == name)
            .unwrap_or_else(|| panic!("topic {name} missing: run `infra/stack.sh topics`"));
        assert_eq!(topic.partitions().len(), 6, "{name} partitions");
    }
}

#[tokio::test]
async fn topics_are_not_auto_created() {
    let stack = Stack::from_env();
    let topic = unique("smoke-never-created");
    let producer: FutureProducer = kafka_config(&stack)
        .set("message.timeout.ms", "3000")
        .create()
        .expect("producer");
    let result = producer
        .send(
            FutureRecord::to(&topic).key("k").payload("v"),
            Timeout::After(TIMEOUT),
        )
        .await;
    let err = result.expect_err("producing to an unknown topic must fail when auto-create is off");
    assert!(
        matches!(
            err.0,
            KafkaError::MessageProduction(
                RDKafkaErrorCode::UnknownTopicOrPartition
                    | RDKafkaErrorCode::UnknownTopic
                    | RDKafkaErrorCode::MessageTimedOut
            )
        ),
        "unexpected error: {:?}",
        err.0
    );
    let consumer: StreamConsumer = kafka_config(&stack).create().expect("client");
    let metadata = consumer.fetch_metadata(None, TIMEOUT).expect("metadata");
    assert!(
        !metadata.topics().iter().any(|t| t.name() == topic),
        "topic {topic} was auto-created"
    );
}

#[tokio::test]
async fn broker_rejects_messages_over_its_default_size_limit() {
    // message.max.bytes stays at Kafka's default (about 1 MiB) so the large-payload pitfall is real.
    let stack = Stack::from_env();
    let topic = create_topic(&stack, 1).await;
    let producer: FutureProducer = kafka_config(&stack)
        // let the client send it, so the broker is the one that says no
        .set("message.max.bytes", "10000000")
        .set("compression.type", "none")
        .create()
        .expect("producer");
    let big = vec![b'x'; 2 * 1024 * 1024];
    let err = producer
        .send(
            FutureRecord::to(&topic).key("big").payload(&big),
            Timeout::After(TIMEOUT),
        )
        .await
        .expect_err("a 2 MiB record must be rejected by the broker");
    assert!(
        matches!(
            err.0,
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)
        ),
        "unexpected error: {:?}",
        err.0
    );
}
