//! Reading the topics: a dedicated consumer that joins no group and commits nothing, is
//! assigned every partition from the beginning, and stops at the high watermarks taken when it
//! starts (records produced later belong to the next audit). Also the consumer groups'
//! committed offsets, read without joining them.
//!
//! librdkafka's calls block: everything here runs on a blocking thread.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};

use super::events::Record;

/// How long a metadata, watermark or offset request may take.
const TIMEOUT: Duration = Duration::from_secs(15);
/// How long reading may go without a record before the audit gives up.
const STALL: Duration = Duration::from_secs(60);

/// `(topic, partition)`.
pub type Partition = (String, i32);

/// A consumer for the audit: no group membership, no commits.
pub fn consumer(bootstrap: &str, group: &str) -> Result<BaseConsumer, String> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("client.id", "pitfall-lab-audit")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Prefetch bounded (librdkafka's default queues up to 64 MiB): the audit's memory is
        // for facts, not for records waiting to be read.
        .set("queued.max.messages.kbytes", "16384")
        .set("queued.min.messages", "10000")
        .create()
        .map_err(|e| format!("Kafka at {bootstrap}: {e}"))
}

/// Each partition's `(low, high)` watermarks, for every topic of `topics` that exists; a topic
/// the broker does not know is left out.
pub fn watermarks(
    consumer: &BaseConsumer,
    topics: &[String],
) -> Result<HashMap<String, Vec<(i64, i64)>>, String> {
    let mut out = HashMap::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), TIMEOUT)
            .map_err(|e| format!("Kafka metadata of {topic}: {e}"))?;
        let Some(meta) = metadata.topics().first() else {
            continue;
        };
        if meta.error().is_some() || meta.partitions().is_empty() {
            continue;
        }
        let mut marks = vec![(0, 0); meta.partitions().len()];
        for p in meta.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(topic, p.id(), TIMEOUT)
                .map_err(|e| format!("Kafka watermarks of {topic} partition {}: {e}", p.id()))?;
            if let Some(slot) = usize::try_from(p.id()).ok().and_then(|i| marks.get_mut(i)) {
                *slot = (low, high);
            }
        }
        out.insert(topic.clone(), marks);
    }
    Ok(out)
}

/// The offsets `group` committed on the partitions of `topics` (its next record to read), as
/// far as it committed any.
pub fn committed(
    bootstrap: &str,
    group: &str,
    partitions: &[Partition],
) -> Result<HashMap<Partition, i64>, String> {
    if partitions.is_empty() {
        return Ok(HashMap::new());
    }
    let consumer = consumer(bootstrap, group)?;
    let mut list = TopicPartitionList::new();
    for (topic, partition) in partitions {
        list.add_partition(topic, *partition);
    }
    let committed = consumer
        .committed_offsets(list, TIMEOUT)
        .map_err(|e| format!("Kafka: committed offsets of group {group}: {e}"))?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(n) => Some(((e.topic().to_owned(), e.partition()), n)),
            _ => None,
        })
        .collect())
}

/// Reads every partition of `ends` (`(topic, partition)` → high watermark) from the beginning
/// up to its watermark, handing each record to `sink`.
pub fn read(
    consumer: &BaseConsumer,
    ends: &HashMap<Partition, i64>,
    mut sink: impl FnMut(&Record<'_>),
) -> Result<(), String> {
    let mut list = TopicPartitionList::new();
    let mut open: HashMap<Partition, i64> = HashMap::new();
    for ((topic, partition), high) in ends {
        if *high > 0 {
            list.add_partition_offset(topic, *partition, Offset::Beginning)
                .map_err(|e| format!("Kafka: {e}"))?;
            open.insert((topic.clone(), *partition), *high);
        }
    }
    if open.is_empty() {
        return Ok(());
    }
    consumer
        .assign(&list)
        .map_err(|e| format!("Kafka: assigning the partitions: {e}"))?;
    let mut last_record = Instant::now();
    let mut last_position_check = Instant::now();
    while !open.is_empty() {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                last_record = Instant::now();
                let part = (message.topic().to_owned(), message.partition());
                let Some(&high) = open.get(&part) else {
                    continue; // past its end already
                };
                if message.offset() >= high {
                    open.remove(&part);
                    continue;
                }
                let headers: Vec<(&str, Option<&[u8]>)> = message
                    .headers()
                    .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
                    .unwrap_or_default();
                sink(&Record {
                    topic: message.topic(),
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key(),
                    headers: &headers,
                    payload: message.payload().unwrap_or_default(),
                });
                if message.offset() + 1 >= high {
                    open.remove(&part);
                }
            }
            Some(Err(err)) => return Err(format!("Kafka: reading: {err}")),
            None => {}
        }
        // A partition whose last offsets hold no record (transaction markers) ends by its
        // position, not by a record.
        if last_position_check.elapsed() > Duration::from_secs(1) {
            last_position_check = Instant::now();
            if let Ok(positions) = consumer.position() {
                for e in positions.elements() {
                    let part = (e.topic().to_owned(), e.partition());
                    if let (Offset::Offset(n), Some(high)) = (e.offset(), open.get(&part))
                        && n >= *high
                    {
                        open.remove(&part);
                    }
                }
            }
        }
        if last_record.elapsed() > STALL {
            let mut stalled: Vec<String> = open
                .iter()
                .map(|((t, p), h)| format!("{t}[{p}] (up to {h})"))
                .collect();
            stalled.sort();
            return Err(format!(
                "Kafka: no record for {}s while reading {}",
                STALL.as_secs(),
                stalled.join(", ")
            ));
        }
    }
    Ok(())
}
