//! Facts from the event topics (`order.events`, `inventory.events`) and their dead-letter
//! topics, gathered record by record: per aggregate, the distinct events (by event id; the
//! chunks of one message are one event) with their revision, type and position. Payloads are
//! never kept (nor needed: the headers carry the contract).
//!
//! Check 4 runs here, as records arrive: within a partition, an aggregate's revisions must go
//! up. A record whose event id was seen before is a redelivery or republished copy, which
//! at-least-once delivery allows, wherever it lands. A second, *different* event at a revision
//! already seen is not an ordering problem but a duplicated effect (check 3, judged later).

use std::collections::HashMap;

use uuid::Uuid;

use super::collections::Symbols;
use super::contract::{Aggregate, headers};
use super::report::{Check, Findings};
use super::rows::{Pending, State};

/// One service's side of the contract, as checks 1 to 3 compare it: its aggregates' rows, the
/// topic their events go to, and its unpublished outbox rows for that topic.
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    /// What kind of aggregate.
    pub aggregate: &'a Aggregate,
    /// Aggregate id → its row's state, from the database.
    pub rows: &'a HashMap<Uuid, State>,
    /// What the topic holds.
    pub topic: &'a EventTopic,
    /// Aggregate id → its unpublished outbox rows.
    pub pending: &'a HashMap<String, Vec<Pending>>,
    /// The topic no longer holds its oldest records (retention deleted them): an event not
    /// found may have expired.
    pub truncated: bool,
}

/// A Kafka record as the audit sees it.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// Its topic.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its key.
    pub key: Option<&'a [u8]>,
    /// Its headers, in order.
    pub headers: &'a [(&'a str, Option<&'a [u8]>)],
    /// Its value (empty for a tombstone).
    pub payload: &'a [u8],
}

impl Record<'_> {
    /// The first header `name` as UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| std::str::from_utf8((*v)?).ok())
    }
}

/// One distinct event of an aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Logged {
    /// Its event id (for a chunked message, the whole message's id).
    pub id: Uuid,
    /// The aggregate's revision after the change.
    pub revision: i64,
    /// `event-type`, interned in [`EventTopic::types`].
    pub event_type: u32,
    /// Where its first copy is.
    pub partition: i32,
    /// Where its first copy is.
    pub offset: i64,
    /// Whether its first copy was on the topic before the databases were read (offset below
    /// the high watermark taken first): only those can be held against the databases as
    /// "an event without a committed change".
    pub before_snapshot: bool,
}

/// The events of one aggregate on one topic.
#[derive(Debug, Clone, Default)]
pub struct AggregateEvents {
    /// `aggregate-type`, interned in [`EventTopic::types`].
    pub aggregate_type: u32,
    /// Distinct events, in the order their first copies were read.
    pub events: Vec<Logged>,
    /// Highest revision seen per partition (check 4).
    tips: Vec<(i32, i64)>,
}

impl AggregateEvents {
    /// The distinct events with revision `revision`.
    pub fn at(&self, revision: i64) -> impl Iterator<Item = &Logged> {
        self.events.iter().filter(move |e| e.revision == revision)
    }
}

/// Everything read from one event topic.
#[derive(Debug, Default)]
pub struct EventTopic {
    /// The topic.
    pub name: String,
    /// Aggregate id → its events.
    pub aggregates: HashMap<String, AggregateEvents>,
    /// Event and aggregate type names.
    pub types: Symbols,
    /// Records read.
    pub records: u64,
    /// Copies of events already seen (redeliveries, republished rows, redriven dead letters,
    /// chunks after the first of their message).
    pub copies: u64,
}

impl EventTopic {
    /// An empty topic called `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }

    /// Takes in one record. `snapshot_end` is the partition's high watermark read before the
    /// databases. Records without the contract's headers are violations of check 2 (no change
    /// can be matched to them); revisions going down within a partition, of check 4.
    pub fn ingest(&mut self, record: &Record<'_>, snapshot_end: i64, findings: &mut Findings) {
        self.records += 1;
        let where_ = || {
            format!(
                "{} partition {} offset {}",
                record.topic, record.partition, record.offset
            )
        };
        let event_id = record
            .header(headers::CHUNK_MESSAGE_ID)
            .or_else(|| record.header(headers::EVENT_ID))
            .and_then(|id| Uuid::parse_str(id).ok());
        let revision = record
            .header(headers::REVISION)
            .and_then(|r| r.parse::<i64>().ok());
        let aggregate_id = record.header(headers::AGGREGATE_ID);
        let event_type = record.header(headers::EVENT_TYPE);
        let aggregate_type = record.header(headers::AGGREGATE_TYPE);
        let (Some(id), Some(revision), Some(aggregate_id), Some(event_type), Some(aggregate_type)) =
            (event_id, revision, aggregate_id, event_type, aggregate_type)
        else {
            findings.violation(Check::OrphanEvents, "malformed", || {
                (
                    where_(),
                    "no usable event-id, revision, aggregate-id, event-type or aggregate-type \
                     header: no committed change can be matched to it"
                        .to_owned(),
                )
            });
            return;
        };
        if let Some(key) = record.key
            && key != aggregate_id.as_bytes()
        {
            findings.violation(Check::OrphanEvents, "key-not-aggregate", || {
                (
                    where_(),
                    format!(
                        "key {:?} is not its aggregate-id {aggregate_id} (per-key order then \
                         guarantees nothing for the aggregate)",
                        String::from_utf8_lossy(key)
                    ),
                )
            });
        }
        let event_type = self.types.intern(event_type);
        let aggregate_type = self.types.intern(aggregate_type);
        if !self.aggregates.contains_key(aggregate_id) {
            self.aggregates.insert(
                aggregate_id.to_owned(),
                AggregateEvents {
                    aggregate_type,
                    ..AggregateEvents::default()
                },
            );
        }
        let Some(aggregate) = self.aggregates.get_mut(aggregate_id) else {
            return;
        };
        if aggregate.events.iter().any(|e| e.id == id) {
            self.copies += 1;
            return;
        }
        match aggregate
            .tips
            .iter_mut()
            .find(|(p, _)| *p == record.partition)
        {
            Some((_, tip)) => {
                if revision < *tip {
                    let tip = *tip;
                    findings.violation(Check::Order, "lower-revision", || {
                        (
                            format!("{} key {aggregate_id}", record.topic),
                            format!(
                                "partition {} offset {}: event {id} has revision {revision} after \
                                 revision {tip} of the same key",
                                record.partition, record.offset
                            ),
                        )
                    });
                }
                *tip = (*tip).max(revision);
            }
            None => push_exact(&mut aggregate.tips, (record.partition, revision)),
        }
        push_exact(
            &mut aggregate.events,
            Logged {
                id,
                revision,
                event_type,
                partition: record.partition,
                offset: record.offset,
                before_snapshot: record.offset < snapshot_end,
            },
        );
    }
}

/// Pushes without the usual doubling: an aggregate has a handful of events, and there are
/// hundreds of thousands of aggregates.
pub fn push_exact<T>(vec: &mut Vec<T>, item: T) {
    if vec.len() == vec.capacity() {
        vec.reserve_exact(1);
    }
    vec.push(item);
}

/// Dead letters: which events a consumer group refused and sent to `<topic>.dlq`.
#[derive(Debug, Default)]
pub struct DeadLetters {
    /// `(original topic, event id)` → the groups that dead-lettered it.
    pub refused: HashMap<(String, Uuid), Vec<String>>,
    /// Records read.
    pub records: u64,
}

impl DeadLetters {
    /// Takes in one record of a `.dlq` topic.
    pub fn ingest(&mut self, record: &Record<'_>) {
        self.records += 1;
        let id = record
            .header(headers::CHUNK_MESSAGE_ID)
            .or_else(|| record.header(headers::EVENT_ID))
            .and_then(|id| Uuid::parse_str(id).ok());
        let topic = record
            .header(headers::DLQ_ORIGINAL_TOPIC)
            .map(str::to_owned)
            .or_else(|| record.topic.strip_suffix(".dlq").map(str::to_owned));
        if let (Some(id), Some(topic)) = (id, topic) {
            let group = record
                .header(headers::DLQ_CONSUMER_GROUP)
                .unwrap_or("")
                .to_owned();
            let groups = self.refused.entry((topic, id)).or_default();
            if !groups.contains(&group) {
                groups.push(group);
            }
        }
    }

    /// Whether `group` dead-lettered event `id` of `topic` (a letter without a group counts
    /// for every group).
    pub fn refused_by(&self, topic: &str, id: Uuid, group: &str) -> bool {
        self.refused
            .get(&(topic.to_owned(), id))
            .is_some_and(|groups| groups.iter().any(|g| g == group || g.is_empty()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Headers of a contract event.
    pub(crate) fn contract_headers(
        id: &str,
        aggregate: &str,
        revision: &str,
        event_type: &str,
    ) -> Vec<(&'static str, Option<Vec<u8>>)> {
        vec![
            ("event-id", Some(id.as_bytes().to_vec())),
            ("event-type", Some(event_type.as_bytes().to_vec())),
            ("aggregate-type", Some(b"Order".to_vec())),
            ("aggregate-id", Some(aggregate.as_bytes().to_vec())),
            ("revision", Some(revision.as_bytes().to_vec())),
        ]
    }

    /// Feeds one record built from owned headers.
    pub(crate) fn feed(
        topic: &mut EventTopic,
        findings: &mut Findings,
        (partition, offset): (i32, i64),
        key: &str,
        owned: &[(&'static str, Option<Vec<u8>>)],
        snapshot_end: i64,
    ) {
        let headers: Vec<(&str, Option<&[u8]>)> =
            owned.iter().map(|(n, v)| (*n, v.as_deref())).collect();
        let record = Record {
            topic: "order.events",
            partition,
            offset,
            key: Some(key.as_bytes()),
            headers: &headers,
            payload: b"{}",
        };
        topic.ingest(&record, snapshot_end, findings);
    }

    const A: &str = "0190a1b2-0000-7000-8000-00000000000a";
    const B: &str = "0190a1b2-0000-7000-8000-00000000000b";
    const C: &str = "0190a1b2-0000-7000-8000-00000000000c";

    #[test]
    fn copies_count_once_and_order_is_judged_per_partition() {
        let mut topic = EventTopic::new("order.events");
        let mut findings = Findings::new(&Check::ALL, 3);
        feed(
            &mut topic,
            &mut findings,
            (0, 0),
            "o1",
            &contract_headers(A, "o1", "1", "OrderPlaced"),
            10,
        );
        feed(
            &mut topic,
            &mut findings,
            (0, 1),
            "o1",
            &contract_headers(B, "o1", "2", "OrderConfirmed"),
            10,
        );
        // A republished copy of revision 1 after revision 2: allowed.
        feed(
            &mut topic,
            &mut findings,
            (0, 2),
            "o1",
            &contract_headers(A, "o1", "1", "OrderPlaced"),
            10,
        );
        assert_eq!(findings.violations(), 0);
        assert_eq!(topic.copies, 1);
        let o1 = &topic.aggregates["o1"];
        assert_eq!(o1.events.len(), 2);
        assert!(o1.events.iter().all(|e| e.before_snapshot));
        // A different event going back: check 4.
        feed(
            &mut topic,
            &mut findings,
            (0, 3),
            "o1",
            &contract_headers(C, "o1", "1", "OrderPlaced"),
            3,
        );
        assert_eq!(findings.count(Check::Order), 1);
        assert!(!topic.aggregates["o1"].events[2].before_snapshot);
        assert_eq!(topic.aggregates["o1"].at(1).count(), 2);
    }

    #[test]
    fn an_equal_revision_is_not_an_ordering_violation() {
        let mut topic = EventTopic::new("order.events");
        let mut findings = Findings::new(&Check::ALL, 3);
        feed(
            &mut topic,
            &mut findings,
            (1, 0),
            "o",
            &contract_headers(A, "o", "1", "OrderPlaced"),
            9,
        );
        feed(
            &mut topic,
            &mut findings,
            (1, 1),
            "o",
            &contract_headers(B, "o", "1", "OrderPlaced"),
            9,
        );
        assert_eq!(findings.count(Check::Order), 0);
        // Another partition has its own order.
        feed(
            &mut topic,
            &mut findings,
            (2, 0),
            "o",
            &contract_headers(C, "o", "0", "OrderPlaced"),
            9,
        );
        assert_eq!(findings.count(Check::Order), 0);
    }

    #[test]
    fn chunks_of_one_message_are_one_event_and_bad_records_are_reported() {
        let mut topic = EventTopic::new("order.events");
        let mut findings = Findings::new(&Check::ALL, 3);
        for (offset, chunk_id) in [(0, A), (1, B)] {
            let mut headers = contract_headers(chunk_id, "o", "1", "OrderPlaced");
            headers.push(("chunk-message-id", Some(C.as_bytes().to_vec())));
            feed(&mut topic, &mut findings, (0, offset), "o", &headers, 9);
        }
        assert_eq!(topic.aggregates["o"].events.len(), 1);
        assert_eq!(topic.aggregates["o"].events[0].id.to_string(), C);
        let mut bad = contract_headers(A, "o", "two", "OrderPlaced");
        feed(&mut topic, &mut findings, (0, 2), "o", &bad, 9);
        bad = contract_headers(B, "other", "1", "OrderPlaced");
        feed(&mut topic, &mut findings, (0, 3), "o", &bad, 9);
        let found = &findings.found[&Check::OrphanEvents];
        assert_eq!(found.kinds["malformed"], 1);
        assert_eq!(found.kinds["key-not-aggregate"], 1);
    }

    #[test]
    fn dead_letters_remember_topic_event_and_group() {
        let mut letters = DeadLetters::default();
        let owned = [
            ("event-id", Some(A.as_bytes().to_vec())),
            ("dlq-original-topic", Some(b"order.events".to_vec())),
            ("dlq-consumer-group", Some(b"inventory-service".to_vec())),
        ];
        let headers: Vec<(&str, Option<&[u8]>)> =
            owned.iter().map(|(n, v)| (*n, v.as_deref())).collect();
        letters.ingest(&Record {
            topic: "order.events.dlq",
            partition: 0,
            offset: 0,
            key: None,
            headers: &headers,
            payload: b"",
        });
        let id = Uuid::parse_str(A).unwrap();
        assert!(letters.refused_by("order.events", id, "inventory-service"));
        assert!(!letters.refused_by("order.events", id, "order-service"));
        assert!(!letters.refused_by("inventory.events", id, "inventory-service"));
    }
}
