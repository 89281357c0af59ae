//! Chunked messages: a large payload split by its producer into several records (same key,
//! consecutive on one partition), reassembled here so a handler sees the whole payload once.
//!
//! Each chunk is stored in the database in the same transaction as the consumer's
//! offset/dedupe records ([`ConsumerTables::chunk_parts`](crate::ConsumerTables::chunk_parts));
//! the transaction of the last chunk reads the set back, checks size and sha256, runs the
//! handler with the whole payload and deletes the set. So a crash between chunks loses
//! nothing, a redelivered chunk is ignored, sets of different messages interleaved on one
//! partition stay apart (they are keyed by message id), a rebalance in the middle of a set is
//! safe (the next owner finds the stored chunks), and memory holds at most one message of at
//! most [`Chunking::max_message_size`] bytes. A set still incomplete after
//! [`Chunking::timeout`] goes to the dead-letter topic, every stored chunk with its reason.

use std::time::Duration;

use uuid::Uuid;

/// The message contract's `chunk-*` headers.
pub mod headers {
    /// Event id of the whole message (every chunk has its own `event-id` too).
    pub const MESSAGE_ID: &str = "chunk-message-id";
    /// 0-based position of this chunk in its set.
    pub const INDEX: &str = "chunk-index";
    /// Number of chunks in the set.
    pub const COUNT: &str = "chunk-count";
    /// Bytes of the whole payload.
    pub const SIZE: &str = "chunk-size";
    /// Hex sha256 of the whole payload.
    pub const SHA256: &str = "chunk-sha256";
}

/// Limits of reassembly.
#[derive(Debug, Clone)]
pub struct Chunking {
    /// The largest whole message accepted (default 64 MiB): a set announcing more is
    /// dead-lettered at its first chunk, before anything is stored.
    pub max_message_size: usize,
    /// The most chunks one set may announce (default 10,000).
    pub max_chunks: u32,
    /// A set whose first stored chunk is older than this and still incomplete is
    /// dead-lettered with the reason (default 10 minutes). Chunks are written in one producer
    /// transaction and published back to back, so a set that takes this long is broken.
    pub timeout: Duration,
}

impl Default for Chunking {
    fn default() -> Self {
        Self {
            max_message_size: 64 * 1024 * 1024,
            max_chunks: 10_000,
            timeout: Duration::from_secs(600),
        }
    }
}

/// The chunk headers of one record, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChunkHeader {
    pub message_id: Uuid,
    pub index: u32,
    pub count: u32,
    pub total_size: usize,
    pub sha256: String,
}

impl ChunkHeader {
    /// Reads the chunk headers of a record whose `chunk-message-id` is set, and the size of its
    /// own slice. Every problem is a reason for the dead-letter topic.
    pub(crate) fn parse<'a>(
        header: impl Fn(&str) -> Option<&'a str>,
        slice_len: usize,
        limits: &Chunking,
    ) -> Result<Self, String> {
        let get = |name: &str| {
            header(name)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("chunked record without header {name}"))
        };
        let message_id = get(headers::MESSAGE_ID)?;
        let message_id = Uuid::parse_str(message_id).map_err(|_| {
            format!(
                "header {} is not a UUID: {:?}",
                headers::MESSAGE_ID,
                shown(message_id)
            )
        })?;
        let number = |name: &str| -> Result<u64, String> {
            let v = get(name)?;
            v.parse::<u64>()
                .map_err(|_| format!("header {name} is not a number: {:?}", shown(v)))
        };
        let (index, count, total_size) = (
            number(headers::INDEX)?,
            number(headers::COUNT)?,
            number(headers::SIZE)?,
        );
        if count == 0 || count > u64::from(limits.max_chunks) {
            return Err(format!(
                "chunk set announces {count} chunks; 1 to {} are accepted",
                limits.max_chunks
            ));
        }
        if index >= count {
            return Err(format!(
                "chunk index {index} is not below the count {count}"
            ));
        }
        let max = limits.max_message_size as u64;
        if total_size > max {
            return Err(format!(
                "chunked message of {total_size} bytes is larger than the {max} accepted"
            ));
        }
        if slice_len as u64 > total_size {
            return Err(format!(
                "chunk of {slice_len} bytes is larger than its whole message ({total_size} bytes)"
            ));
        }
        let sha256 = get(headers::SHA256)?;
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "header {} is not a hex sha256: {:?}",
                headers::SHA256,
                shown(sha256)
            ));
        }
        Ok(Self {
            message_id,
            index: index as u32,
            count: count as u32,
            total_size: total_size as usize,
            sha256: sha256.to_ascii_lowercase(),
        })
    }
}

/// Hex sha256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    use std::fmt::Write as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

fn shown(value: &str) -> String {
    value.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn parse(pairs: &[(&str, &str)], slice: usize) -> Result<ChunkHeader, String> {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ChunkHeader::parse(
            |name| {
                owned
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str())
            },
            slice,
            &Chunking {
                max_message_size: 1000,
                max_chunks: 10,
                timeout: Duration::from_secs(1),
            },
        )
    }

    fn good() -> Vec<(&'static str, &'static str)> {
        vec![
            (headers::MESSAGE_ID, "0192f0c4-1f5a-7cc0-8d5e-2f6a3f1b9a10"),
            (headers::INDEX, "2"),
            (headers::COUNT, "3"),
            (headers::SIZE, "900"),
            (headers::SHA256, SHA),
        ]
    }

    fn with(name: &'static str, value: &'static str) -> Vec<(&'static str, &'static str)> {
        let mut h = good();
        h.retain(|(k, _)| *k != name);
        h.push((name, value));
        h
    }

    #[test]
    fn a_well_formed_chunk_is_read() {
        let h = parse(&good(), 300).unwrap();
        assert_eq!((h.index, h.count, h.total_size), (2, 3, 900));
        assert_eq!(h.sha256, SHA);
    }

    #[test]
    fn odd_chunk_headers_are_refused_with_the_reason() {
        for (headers, slice, expected) in [
            (with(headers::MESSAGE_ID, "nope"), 1, "not a UUID"),
            (with(headers::INDEX, "3"), 1, "not below the count"),
            (with(headers::INDEX, "-1"), 1, "not a number"),
            (with(headers::COUNT, "0"), 1, "1 to 10"),
            (with(headers::COUNT, "11"), 1, "1 to 10"),
            (
                with(headers::SIZE, "1001"),
                1,
                "larger than the 1000 accepted",
            ),
            (good(), 901, "larger than its whole message"),
            (with(headers::SHA256, "abc"), 1, "not a hex sha256"),
            (
                good()
                    .into_iter()
                    .filter(|(k, _)| *k != headers::COUNT)
                    .collect(),
                1,
                "without header chunk-count",
            ),
        ] {
            let err = parse(&headers, slice).unwrap_err();
            assert!(err.contains(expected), "{err} should say {expected}");
        }
    }

    #[test]
    fn sha256_is_lowercase_hex() {
        assert_eq!(sha256_hex(b"test"), SHA);
    }
}
