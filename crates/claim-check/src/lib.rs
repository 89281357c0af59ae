//! Large event payloads, the fourth pitfall: an event of several megabytes slows every batch it
//! shares a partition with, and past `message.max.bytes` (1 MB by default) Kafka refuses it.
//!
//! A [`ClaimCheck`] keeps events small. At or below [`Policy::threshold`] an event goes to Kafka
//! as it is (the producer's compression codec handles it). Above it, the payload is stored in
//! S3/MinIO (optionally zstd-compressed) **before the transaction commits**, and the event
//! carries only a small reference plus the contract's `claim-check-*` headers: location,
//! sha256 and size of the payload, codec of the stored object. Because the decision is made
//! when the event is enqueued, the in-process relay and Debezium publish the same records.
//!
//! On the consumer side [`ClaimCheck`] is an `eda_idempotent_consumer::PayloadResolver`: the
//! runtime fetches the object before the handler runs and checks it (the location must be in
//! the configured bucket and under the prefix, sizes are capped before anything is read or
//! decompressed, the sha256 and size must match), so a handler always sees the full payload.
//!
//! # Layout
//! - [`Policy`], [`Codec`]: when to offload, how to store, what to accept.
//! - [`ClaimCheck`]: the store (aws-sdk-s3); `offload` (feature `outbox`), `fetch`, and the
//!   consumer's resolver (feature `consumer`).
//! - [`Reference`]: what travels in the headers, parsed and validated.
//! - [`Error`]: unavailable (retry) or refused (dead letter).
//!
//! Objects are never deleted when consumed: another consumer group may still need them. The
//! [`Janitor`] deletes them after a retention at least the topic's, and deletes orphans (objects
//! whose transaction never committed, found through the upload ledger) after a grace period.

mod chunk;
mod janitor;
mod prepare;
mod reference;
mod settings;
mod store;

pub use chunk::{Chunker, headers as chunk_headers};
pub use janitor::{Janitor, JanitorConfig, JanitorReport, MIGRATIONS_TABLE, confirm, migrate};
pub use prepare::LargePayloads;
#[cfg(feature = "outbox")]
pub use prepare::Prepared;
pub use reference::{Reference, headers};
pub use settings::{Mode, Settings};
pub use store::{ClaimCheck, S3Settings};

/// How the stored object is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Stored as it is.
    None,
    /// zstd at level 3: JSON shrinks 5-10x, and decompression is cheap.
    Zstd,
}

impl Codec {
    /// The value of the `claim-check-codec` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Zstd => "zstd",
        }
    }
}

impl std::str::FromStr for Codec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Self::None),
            "zstd" => Ok(Self::Zstd),
            other => Err(Error::Refused(format!(
                "claim-check codec {:?} is not none or zstd",
                shown(other)
            ))),
        }
    }
}

/// When to offload, how, and what a consumer accepts.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Payloads larger than this many bytes are offloaded. Default 256 KiB: a quarter of
    /// Kafka's default `message.max.bytes` (1 MB, which librdkafka checks against the
    /// *uncompressed* size), so inline events never come near the limit whatever their headers,
    /// and small enough that one event cannot dominate a 1 MB producer batch and the latency of
    /// the small events behind it.
    pub threshold: usize,
    /// How offloaded payloads are stored.
    pub codec: Codec,
    /// The largest payload a consumer accepts (and so the most it downloads or decompresses):
    /// a reference claiming more, or an object that expands past it (a decompression bomb), is
    /// refused. Default 64 MiB.
    pub max_size: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            threshold: 256 * 1024,
            codec: Codec::Zstd,
            max_size: 64 * 1024 * 1024,
        }
    }
}

/// What can go wrong, sorted by what a caller does about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object store did not answer or failed: retry later (a request answers 503; a
    /// consumer retries the event, in order).
    #[error("the object store is unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The reference or the object is not acceptable (outside the bucket, missing, too large,
    /// checksum mismatch): retrying cannot help; a consumer dead-letters the event.
    #[error("claim check refused: {0}")]
    Refused(String),
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Lowercase hex of `bytes` (sha256 digests in headers).
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// A value from outside quoted in an error: escaped, at most 64 characters.
pub(crate) fn shown(value: &str) -> String {
    let mut out: String = value
        .chars()
        .take(64)
        .flat_map(char::escape_debug)
        .collect();
    if value.chars().count() > 64 {
        out.push_str("...");
    }
    out
}

/// Compiles the README's examples, so the copy-paste snippets cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
