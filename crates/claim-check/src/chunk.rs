//! Chunking, the remedy for places without object storage: a large payload is split into
//! several outbox rows written in the same transaction (same key, so same partition, in order),
//! each carrying the contract's `chunk-*` headers. `eda-idempotent-consumer` stores the chunks
//! durably and hands the handler the whole payload once the set is complete.
//!
//! Chunking keeps every record under the broker's limit but not the broker small: the bytes
//! still flow through Kafka (and its replicas and consumers) and a set holds its partition's
//! consumer until it is complete. Prefer the claim check where an object store exists.

use sha2::{Digest as _, Sha256};

use crate::{Error, Result, hex};

/// The message contract's `chunk-*` headers (the same names `eda_idempotent_consumer::chunk`
/// reads).
pub mod headers {
    /// Event id of the whole message (each chunk row has its own `event-id`).
    pub const MESSAGE_ID: &str = "chunk-message-id";
    /// 0-based position of the chunk in its set.
    pub const INDEX: &str = "chunk-index";
    /// Number of chunks in the set.
    pub const COUNT: &str = "chunk-count";
    /// Bytes of the whole payload.
    pub const SIZE: &str = "chunk-size";
    /// Hex sha256 of the whole payload.
    pub const SHA256: &str = "chunk-sha256";
}

/// Splits payloads over a threshold into chunks of at most `chunk_bytes`.
#[derive(Debug, Clone)]
pub struct Chunker {
    threshold: usize,
    chunk_bytes: usize,
    max_size: usize,
}

impl Chunker {
    /// Payloads over `threshold` bytes are split into chunks of at most `chunk_bytes` (at least
    /// 4, so a chunk boundary can always fall between UTF-8 characters); payloads over
    /// `max_size` are refused (no consumer would take them).
    pub fn new(threshold: usize, chunk_bytes: usize, max_size: usize) -> Self {
        Self {
            threshold,
            chunk_bytes: chunk_bytes.max(4),
            max_size,
        }
    }

    /// Default chunk size: 512 KiB, half of Kafka's default `message.max.bytes` (1 MB), which
    /// leaves room for the headers and the record batch's overhead.
    pub const DEFAULT_CHUNK_BYTES: usize = 512 * 1024;

    /// Byte ranges of `payload`'s chunks: at most `chunk_bytes` each, cut only between UTF-8
    /// characters (an outbox value is text), together exactly the payload.
    pub fn boundaries(&self, payload: &str) -> Vec<std::ops::Range<usize>> {
        let mut ranges = Vec::with_capacity(payload.len() / self.chunk_bytes + 1);
        let mut start = 0;
        while start < payload.len() {
            let mut end = (start + self.chunk_bytes).min(payload.len());
            while !payload.is_char_boundary(end) {
                end -= 1;
            }
            ranges.push(start..end);
            start = end;
        }
        ranges
    }

    /// `event` unchanged when its payload is at or under the threshold; otherwise its chunks:
    /// one event per chunk, each with a fresh event id, the same key, topic, type and
    /// revision, a slice of the payload as value, and the `chunk-*` headers (the whole
    /// message's id is `event`'s id). Enqueue all of them in the business transaction, in
    /// order. CPU work for large payloads (sha256): call it off the async threads.
    #[cfg(feature = "outbox")]
    pub fn split(&self, event: eda_outbox::OutboxEvent) -> Result<Vec<eda_outbox::OutboxEvent>> {
        let size = event.payload().len();
        if size <= self.threshold {
            return Ok(vec![event]);
        }
        if size > self.max_size {
            return Err(Error::Refused(format!(
                "payload of {size} bytes is larger than the {} accepted",
                self.max_size
            )));
        }
        let message_id = event.event_id();
        let payload = event.payload().to_owned();
        // Every chunk is a copy of the event without its payload: cheap to clone.
        let base = event.with_payload(String::new());
        let sha256 = hex(&Sha256::digest(payload.as_bytes()));
        let ranges = self.boundaries(&payload);
        let count = ranges.len().to_string();
        let (message_id, size) = (message_id.to_string(), size.to_string());
        ranges
            .into_iter()
            .enumerate()
            .map(|(index, range)| {
                base.clone()
                    .with_event_id(uuid::Uuid::now_v7())
                    .with_payload(payload[range].to_owned())
                    .with_headers([
                        (headers::MESSAGE_ID, message_id.clone()),
                        (headers::INDEX, index.to_string()),
                        (headers::COUNT, count.clone()),
                        (headers::SIZE, size.clone()),
                        (headers::SHA256, sha256.clone()),
                    ])
                    .map_err(|err| Error::Refused(format!("cannot set the chunk headers: {err}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_cover_the_payload_and_never_split_a_character() {
        let chunker = Chunker::new(0, 5, usize::MAX);
        let payload = "aé€😀bcdefghij"; // 1, 2, 3, 4 bytes per character, then ASCII
        let ranges = chunker.boundaries(payload);
        let mut joined = String::new();
        for r in &ranges {
            assert!(r.len() <= 5 && !r.is_empty(), "{r:?}");
            joined.push_str(&payload[r.clone()]);
        }
        assert_eq!(joined, payload);
        assert_eq!(chunker.boundaries("").len(), 0);
        assert_eq!(Chunker::new(0, 4, 9).boundaries("abcdefgh").len(), 2);
    }

    /// The consumer reads the names this crate writes (each crate keeps its own copy, so that
    /// either can be copied out alone).
    #[cfg(feature = "consumer")]
    #[test]
    fn header_names_match_the_consumers() {
        use eda_idempotent_consumer::chunk::headers as consumer;
        assert_eq!(
            [
                headers::MESSAGE_ID,
                headers::INDEX,
                headers::COUNT,
                headers::SIZE,
                headers::SHA256
            ],
            [
                consumer::MESSAGE_ID,
                consumer::INDEX,
                consumer::COUNT,
                consumer::SIZE,
                consumer::SHA256
            ]
        );
    }

    #[cfg(feature = "outbox")]
    #[test]
    fn split_keeps_small_events_and_chunks_large_ones_with_their_headers() {
        use eda_outbox::OutboxEvent;
        let event = |n: usize| {
            OutboxEvent::json("t", "Order", "k-1", "OrderPlaced", 3, &"x".repeat(n)).unwrap()
        };
        let chunker = Chunker::new(100, 40, 1000);
        let small = event(98); // 100 bytes with the JSON quotes: at the threshold
        assert_eq!(small.payload().len(), 100);
        assert_eq!(chunker.split(small).unwrap().len(), 1);

        let large = event(99);
        let id = large.event_id().to_string();
        let chunks = chunker.split(large.clone()).unwrap();
        assert_eq!(chunks.len(), 3, "101 bytes in chunks of 40");
        let whole: String = chunks.iter().map(|c| c.payload()).collect();
        assert_eq!(whole, large.payload());
        for (i, c) in chunks.iter().enumerate() {
            let h = c.headers();
            let get = |n: &str| h.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone());
            assert_eq!(get(headers::MESSAGE_ID), Some(id.clone()));
            assert_eq!(get(headers::INDEX), Some(i.to_string()));
            assert_eq!(get(headers::COUNT), Some("3".to_owned()));
            assert_eq!(get(headers::SIZE), Some("101".to_owned()));
            assert_eq!(
                get(headers::SHA256),
                Some(hex(&Sha256::digest(large.payload().as_bytes())))
            );
            assert_ne!(c.event_id(), large.event_id(), "each row has its own id");
            assert_eq!((c.key(), c.topic()), (large.key(), large.topic()));
        }
        assert!(matches!(chunker.split(event(999)), Err(Error::Refused(_))));
    }
}
