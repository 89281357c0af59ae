//! What a service reads from the environment.

use crate::{Chunker, ClaimCheck, LargePayloads, Policy, S3Settings};

/// What a producer does with payloads over the threshold (`CLAIM_CHECK`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `off`: every payload inline, however large (pitfall 4, on purpose: Kafka refuses what
    /// is over `message.max.bytes`, and the relay parks it).
    Off,
    /// `on` (default): stored in the object store, the event carries a reference.
    ClaimCheck,
    /// `chunk`: split into several outbox rows of at most `CLAIM_CHECK_CHUNK_BYTES`, for
    /// places without object storage.
    Chunk,
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "on" => Ok(Self::ClaimCheck),
            "off" => Ok(Self::Off),
            "chunk" => Ok(Self::Chunk),
            other => Err(format!("CLAIM_CHECK={other:?}: expected on, off or chunk")),
        }
    }
}

/// What a service reads from the environment to use a claim check.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `CLAIM_CHECK`: `on` (default) offloads payloads over the threshold, `chunk` splits
    /// them, `off` sends every payload inline, however large (pitfall 4, on purpose).
    /// Consumers resolve claim checks and reassemble chunks whatever this says.
    pub mode: Mode,
    /// `CLAIM_CHECK_CHUNK_BYTES`: the largest chunk in `chunk` mode (default 524288).
    pub chunk_bytes: usize,
    /// The store (`S3_ENDPOINT`, `S3_BUCKET`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `CLAIM_CHECK_PREFIX`).
    pub s3: S3Settings,
    /// `CLAIM_CHECK_THRESHOLD_BYTES` (default 262144), `CLAIM_CHECK_CODEC` (`zstd` or `none`),
    /// `CLAIM_CHECK_MAX_BYTES` (default 67108864).
    pub policy: Policy,
}

impl Settings {
    /// Reads the environment; a value that does not parse is an error naming the variable.
    pub fn from_env() -> std::result::Result<Self, String> {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let number = |name: &str, default: usize| match var(name) {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .map_err(|_| format!("{name}={v:?}: expected a number of bytes")),
        };
        let defaults = Policy::default();
        let mode = match var("CLAIM_CHECK") {
            None => Mode::ClaimCheck,
            Some(v) => v.parse()?,
        };
        let codec = match var("CLAIM_CHECK_CODEC") {
            None => defaults.codec,
            Some(v) => v
                .parse()
                .map_err(|_| format!("CLAIM_CHECK_CODEC={v:?}: expected zstd or none"))?,
        };
        let chunk_bytes = number("CLAIM_CHECK_CHUNK_BYTES", Chunker::DEFAULT_CHUNK_BYTES)?;
        if chunk_bytes < 1024 {
            return Err(format!(
                "CLAIM_CHECK_CHUNK_BYTES={chunk_bytes}: expected at least 1024 bytes"
            ));
        }
        Ok(Self {
            mode,
            chunk_bytes,
            s3: S3Settings::from_env(),
            policy: Policy {
                threshold: number("CLAIM_CHECK_THRESHOLD_BYTES", defaults.threshold)?,
                codec,
                max_size: number("CLAIM_CHECK_MAX_BYTES", defaults.max_size)?,
            },
        })
    }

    /// The claim check these settings describe (the consumer side's resolver, whatever the
    /// mode).
    pub fn claim_check(&self) -> ClaimCheck {
        ClaimCheck::new(&self.s3, self.policy.clone())
    }

    /// What a producer does with large payloads in this mode. With `ledger` (the producer's
    /// pool, migrated with [`crate::migrate`]) claim-check uploads are recorded for the
    /// [`Janitor`](crate::Janitor).
    pub fn large_payloads(&self, ledger: Option<sqlx::PgPool>) -> LargePayloads {
        match self.mode {
            Mode::Off => LargePayloads::Inline,
            Mode::ClaimCheck => LargePayloads::ClaimCheck(match ledger {
                Some(pool) => self.claim_check().with_ledger(pool),
                None => self.claim_check(),
            }),
            Mode::Chunk => LargePayloads::Chunk(Chunker::new(
                self.policy.threshold,
                self.chunk_bytes,
                self.policy.max_size,
            )),
        }
    }
}
