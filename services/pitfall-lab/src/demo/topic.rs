//! `order.events` read the way an outsider reads it: a consumer of its own that joins no group
//! and commits nothing, assigned every partition from the end offsets taken before a step acts
//! ([`marks`]), so it sees only what was produced since. Also the consumer groups' committed
//! offsets (read without joining), and a producer that sends a record again as it is.
//!
//! librdkafka's calls block: they run on blocking threads.

use std::time::{Duration, Instant};

use eda_stack_admin::Stack;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Headers as _, Message as _, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

use super::BoxError;

/// How long one metadata or offset request may take.
const TIMEOUT: Duration = Duration::from_secs(15);

/// The topic the demo watches.
pub const ORDER_EVENTS: &str = "order.events";

/// Each partition's end offset at one moment.
#[derive(Debug, Clone)]
pub struct Marks {
    topic: String,
    ends: Vec<(i32, i64)>,
}

fn consumer(stack: &Stack, group: &str) -> Result<BaseConsumer, BoxError> {
    Ok(stack
        .kafka_config()
        .set("group.id", group)
        .set("client.id", "pitfall-lab-demo")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .create()?)
}

/// The end offsets of `topic`'s partitions now.
pub async fn marks(stack: &Stack, topic: &str) -> Result<Marks, BoxError> {
    let (stack, topic) = (stack.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer = consumer(&stack, &eda_stack_admin::unique("demo_reader"))?;
        let metadata = consumer.fetch_metadata(Some(&topic), TIMEOUT)?;
        let partitions = metadata
            .topics()
            .first()
            .filter(|t| t.error().is_none())
            .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
            .unwrap_or_default();
        if partitions.is_empty() {
            return Err(format!("Kafka has no topic {topic}").into());
        }
        let mut ends = Vec::new();
        for p in partitions {
            let (_, high) = consumer.fetch_watermarks(&topic, p, TIMEOUT)?;
            ends.push((p, high));
        }
        Ok(Marks { topic, ends })
    })
    .await?
}

/// A test on the records kept so far.
pub type Done = Box<dyn Fn(&[OwnedMessage]) -> bool + Send>;

/// What [`read`] stops on.
pub struct Until {
    /// Stop once the records kept satisfy this.
    pub done: Done,
    /// Stop when no record was kept for this long (a naive mode's lost events never come).
    pub quiet: Option<Duration>,
    /// Stop at the latest after this long.
    pub timeout: Duration,
}

/// Reads the topic from `marks` on, keeping the records `keep` accepts, until `until` says so.
pub async fn read(
    stack: &Stack,
    marks: &Marks,
    keep: impl Fn(&OwnedMessage) -> bool + Send + 'static,
    until: Until,
) -> Result<Vec<OwnedMessage>, BoxError> {
    let (stack, marks) = (stack.clone(), marks.clone());
    tokio::task::spawn_blocking(move || {
        let consumer = consumer(&stack, &eda_stack_admin::unique("demo_reader"))?;
        let mut list = TopicPartitionList::new();
        for (p, offset) in &marks.ends {
            list.add_partition_offset(&marks.topic, *p, Offset::Offset(*offset))?;
        }
        consumer.assign(&list)?;
        let started = Instant::now();
        let mut last_kept = Instant::now();
        let mut kept = Vec::new();
        loop {
            // Errors while the broker comes back (transport, leader moves) are retried by
            // librdkafka; the deadline bounds the wait.
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                let m = m.detach();
                if keep(&m) {
                    kept.push(m);
                    last_kept = Instant::now();
                    if (until.done)(&kept) {
                        break;
                    }
                }
            }
            if started.elapsed() >= until.timeout
                || until.quiet.is_some_and(|q| last_kept.elapsed() >= q)
            {
                break;
            }
        }
        Ok(kept)
    })
    .await?
}

/// Header `name` of `m`, as text.
pub fn header(m: &OwnedMessage, name: &str) -> Option<String> {
    m.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// `m` is an `event_type` event of aggregate `id` (its key).
pub fn is_event(m: &OwnedMessage, event_type: &str, id: &str) -> bool {
    m.key() == Some(id.as_bytes()) && header(m, "event-type").as_deref() == Some(event_type)
}

/// Produces `m` again `times` times: same topic, key, value and headers (a redelivery, as a
/// retrying producer or a rewound relay makes one). The (partition, offset) of each copy.
pub async fn republish(
    stack: &Stack,
    m: &OwnedMessage,
    times: usize,
) -> Result<Vec<(i32, i64)>, BoxError> {
    // Java's partitioner, like every producer of the project: the copies land on the
    // original's partition.
    let producer: FutureProducer = stack.producer_config().create()?;
    let mut copies = Vec::new();
    for _ in 0..times {
        let mut record = FutureRecord::to(m.topic())
            .key(m.key().unwrap_or_default())
            .payload(m.payload().unwrap_or_default());
        if let Some(headers) = m.headers() {
            record = record.headers(headers.clone());
        }
        let delivery = producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
            .map_err(|(e, _)| e)?;
        copies.push((delivery.partition, delivery.offset));
    }
    Ok(copies)
}

/// Waits until `group` has committed an offset past `offset` on `topic`'s `partition` (it
/// commits only what its handler's transaction committed), or `timeout` passes; whether it did.
/// Reads the group's offsets without joining it.
pub async fn wait_committed_past(
    stack: &Stack,
    group: &str,
    topic: &str,
    partition: i32,
    offset: i64,
    timeout: Duration,
) -> Result<bool, BoxError> {
    let (stack, group, topic) = (stack.clone(), group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer = consumer(&stack, &group)?;
        let mut list = TopicPartitionList::new();
        list.add_partition(&topic, partition);
        let started = Instant::now();
        loop {
            let committed = consumer.committed_offsets(list.clone(), TIMEOUT)?;
            let next = committed.elements().iter().find_map(|e| match e.offset() {
                Offset::Offset(n) => Some(n),
                _ => None,
            });
            if next.is_some_and(|n| n > offset) {
                return Ok(true);
            }
            if started.elapsed() >= timeout {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    })
    .await?
}
