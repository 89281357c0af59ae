//! The object store side: upload with a checksum, download with caps, verify.

use std::io::Read as _;

use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream;
use sha2::{Digest as _, Sha256};
use tracing::Instrument as _;

use crate::{Codec, Error, Policy, Reference, Result, hex};

/// Where the objects go. `Debug` leaves the secret key out.
#[derive(Clone)]
pub struct S3Settings {
    /// S3 API endpoint (`S3_ENDPOINT`, e.g. MinIO's `http://127.0.0.1:9000`); `None` for AWS.
    pub endpoint: Option<String>,
    /// `AWS_REGION`, default `us-east-1`.
    pub region: String,
    /// `S3_BUCKET`, default `eda-claim-checks` (it must exist).
    pub bucket: String,
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
    /// Key prefix of this service's objects (`CLAIM_CHECK_PREFIX`, default `claim-checks/`):
    /// consumers accept references under it only, and a lifecycle rule can expire it.
    pub prefix: String,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"[REDACTED]")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl S3Settings {
    /// From the standard variables; defaults match the native stack's MinIO.
    pub fn from_env() -> Self {
        let var = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        Self {
            endpoint: Some(var("S3_ENDPOINT", "http://127.0.0.1:9000")),
            region: var("AWS_REGION", "us-east-1"),
            bucket: var("S3_BUCKET", "eda-claim-checks"),
            access_key_id: var("AWS_ACCESS_KEY_ID", "minioadmin"),
            secret_access_key: var("AWS_SECRET_ACCESS_KEY", "minioadmin"),
            prefix: var("CLAIM_CHECK_PREFIX", "claim-checks/"),
        }
    }

    /// An S3 client for these settings (path-style addressing, as MinIO serves buckets).
    pub fn client(&self) -> aws_sdk_s3::Client {
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version_latest()
            .region(Region::new(self.region.clone()))
            .credentials_provider(Credentials::new(
                &self.access_key_id,
                &self.secret_access_key,
                None,
                None,
                "eda-claim-check",
            ))
            .force_path_style(true);
        if let Some(endpoint) = &self.endpoint {
            config = config.endpoint_url(endpoint);
        }
        aws_sdk_s3::Client::from_conf(config.build())
    }
}

/// Offloads large payloads and resolves references to them. Cheap to clone (the client is).
#[derive(Debug, Clone)]
pub struct ClaimCheck {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    policy: Policy,
    ledger: Option<sqlx::PgPool>,
}

impl ClaimCheck {
    /// A claim check on `settings`' bucket and prefix.
    pub fn new(settings: &S3Settings, policy: Policy) -> Self {
        Self::with_client(
            settings.client(),
            &settings.bucket,
            &settings.prefix,
            policy,
        )
    }

    /// A claim check with a client of your own.
    pub fn with_client(
        client: aws_sdk_s3::Client,
        bucket: &str,
        prefix: &str,
        policy: Policy,
    ) -> Self {
        Self {
            client,
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            policy,
            ledger: None,
        }
    }

    /// Records every upload in the ledger table of `pool` (`claim_check_uploads`, created by
    /// [`crate::migrate`]) **before** uploading, so an object whose transaction never commits
    /// is found and deleted by the [`Janitor`](crate::Janitor). The business transaction
    /// removes the record ([`crate::confirm`], which [`Prepared::enqueue`](crate::Prepared)
    /// calls). Producers only: consumers never write objects.
    pub fn with_ledger(mut self, pool: sqlx::PgPool) -> Self {
        self.ledger = Some(pool);
        self
    }

    /// Whether uploads are recorded in a ledger ([`with_ledger`](Self::with_ledger)).
    pub fn has_ledger(&self) -> bool {
        self.ledger.is_some()
    }

    /// The bucket objects go to.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The key prefix of this claim check's objects.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Whether a payload of `size` bytes is offloaded.
    pub fn offloads(&self, size: usize) -> bool {
        size > self.policy.threshold
    }

    /// Stores `payload` as `<prefix><name>` and returns its reference. `name` must be a plain
    /// key (the topic and event id, say: `order.events/0192...`).
    pub async fn store(&self, name: &str, payload: &[u8]) -> Result<Reference> {
        let key = format!("{}{name}", self.prefix);
        if let Some(pool) = &self.ledger {
            crate::janitor::record_upload(pool, &self.bucket, &key)
                .await
                .map_err(|err| Error::Unavailable(Box::new(err)))?;
        }
        // Hashing and compressing megabytes is CPU work: off the async threads.
        let (owned, codec) = (payload.to_vec(), self.policy.codec);
        let (sha256, body) = tokio::task::spawn_blocking(move || {
            let sha256 = hex(&Sha256::digest(&owned));
            let body = match codec {
                Codec::None => owned,
                Codec::Zstd => zstd::stream::encode_all(owned.as_slice(), 3)?,
            };
            Ok::<_, std::io::Error>((sha256, body))
        })
        .await
        .map_err(|err| Error::Unavailable(Box::new(err)))?
        .map_err(|err| Error::Unavailable(Box::new(err)))?;
        let span = tracing::info_span!(
            "claim-check upload",
            otel.name = "claim-check upload",
            otel.kind = "client",
            s3.bucket = %self.bucket,
            s3.key = %key,
            payload.size = payload.len(),
            object.size = body.len(),
            codec = self.policy.codec.as_str(),
        );
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/octet-stream")
            .body(ByteStream::from(body))
            .send()
            .instrument(span)
            .await
            .map_err(|err| Error::Unavailable(Box::new(err)))?;
        Ok(Reference {
            bucket: self.bucket.clone(),
            key,
            sha256,
            size: payload.len(),
            codec: self.policy.codec,
        })
    }

    /// Reads the reference in a record's headers (see [`Reference::from_headers`]) against
    /// this claim check's bucket, prefix and size cap.
    pub fn reference<'a>(&self, header: impl Fn(&str) -> Option<&'a str>) -> Result<Reference> {
        Reference::from_headers(header, &self.bucket, &self.prefix, self.policy.max_size)
    }

    /// Downloads and checks the payload `reference` points at: never more than the cap is read
    /// or decompressed; size and sha256 must match. A missing object is [`Error::Refused`];
    /// an unreachable store [`Error::Unavailable`].
    pub async fn fetch(&self, reference: &Reference) -> Result<Vec<u8>> {
        let span = tracing::info_span!(
            "claim-check download",
            otel.name = "claim-check download",
            otel.kind = "client",
            s3.bucket = %reference.bucket,
            s3.key = %reference.key,
            payload.size = reference.size,
        );
        self.fetch_checked(reference).instrument(span).await
    }

    async fn fetch_checked(&self, reference: &Reference) -> Result<Vec<u8>> {
        let object = self
            .client
            .get_object()
            .bucket(&reference.bucket)
            .key(&reference.key)
            .send()
            .await
            .map_err(|err| match &err {
                SdkError::ServiceError(e) if e.err().is_no_such_key() => Error::Refused(format!(
                    "object {} is missing (deleted too early, or never committed)",
                    reference.location()
                )),
                _ => Error::Unavailable(Box::new(err)),
            })?;
        // Stored bytes: at most the payload size for `none`; zstd never grows data by more
        // than a small frame overhead.
        let stored_cap = reference.size + reference.size / 128 + 1024;
        if object
            .content_length()
            .is_some_and(|len| usize::try_from(len).map_or(true, |len| len > stored_cap))
        {
            return Err(Error::Refused(format!(
                "object {} is larger than its {}-byte payload can be",
                reference.location(),
                reference.size
            )));
        }
        let mut body = object.body;
        let mut stored = Vec::with_capacity(stored_cap.min(self.policy.max_size));
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|err| Error::Unavailable(Box::new(err)))?;
            if stored.len() + chunk.len() > stored_cap {
                return Err(Error::Refused(format!(
                    "object {} is larger than its {}-byte payload can be",
                    reference.location(),
                    reference.size
                )));
            }
            stored.extend_from_slice(&chunk);
        }
        // Decompressing and hashing megabytes is CPU work: off the async threads.
        let reference = reference.clone();
        tokio::task::spawn_blocking(move || decode_and_verify(stored, &reference))
            .await
            .map_err(|err| Error::Unavailable(Box::new(err)))?
    }

    /// An outbox event whose payload is over the threshold, offloaded: the payload is stored
    /// (as `<prefix><topic>/<event id>`) and replaced by a small reference, and the
    /// `claim-check-*` headers are set. Smaller events are returned unchanged. Call it before
    /// `enqueue`, inside the request: if the store is down the request fails and nothing is
    /// written (an object whose transaction then rolls back is an orphan, for a janitor).
    #[cfg(feature = "outbox")]
    pub async fn offload(&self, event: eda_outbox::OutboxEvent) -> Result<eda_outbox::OutboxEvent> {
        Ok(self.offload_with_reference(event).await?.0)
    }

    /// [`offload`](Self::offload), also returning the stored object's reference (`None` when
    /// the event stayed inline): what [`crate::confirm`] needs.
    #[cfg(feature = "outbox")]
    pub async fn offload_with_reference(
        &self,
        event: eda_outbox::OutboxEvent,
    ) -> Result<(eda_outbox::OutboxEvent, Option<Reference>)> {
        if !self.offloads(event.payload().len()) {
            return Ok((event, None));
        }
        let name = format!("{}/{}", event.topic(), event.event_id());
        let reference = self.store(&name, event.payload().as_bytes()).await?;
        let event = event
            .with_payload(reference.value())
            .with_headers(reference.headers())
            .map_err(|err| Error::Refused(format!("cannot set the claim-check headers: {err}")))?;
        Ok((event, Some(reference)))
    }
}

#[cfg(feature = "consumer")]
impl eda_idempotent_consumer::PayloadResolver for ClaimCheck {
    fn resolve<'a>(
        &'a self,
        event: &'a eda_idempotent_consumer::Event,
    ) -> eda_idempotent_consumer::Resolved<'a> {
        use eda_idempotent_consumer::HandlerError;
        Box::pin(async move {
            let refused = |err: Error| match err {
                Error::Unavailable(source) => HandlerError::Transient(source),
                Error::Refused(why) => HandlerError::Permanent(format!("claim check: {why}")),
            };
            let reference = self.reference(|name| event.header(name)).map_err(refused)?;
            self.fetch(&reference).await.map_err(refused)
        })
    }
}

/// Decodes a downloaded object and checks it against its reference: decompressed to at most one
/// byte more than announced, then size and sha256 compared.
fn decode_and_verify(stored: Vec<u8>, reference: &Reference) -> Result<Vec<u8>> {
    let payload = match reference.codec {
        Codec::None => stored,
        Codec::Zstd => {
            // Decompress at most one byte more than announced: a bomb stops there.
            let decoder = zstd::stream::read::Decoder::new(stored.as_slice())
                .map_err(|err| Error::Refused(format!("not zstd data: {err}")))?;
            let mut out = Vec::with_capacity(reference.size);
            decoder
                .take(reference.size as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|err| Error::Refused(format!("not zstd data: {err}")))?;
            out
        }
    };
    if payload.len() > reference.size {
        return Err(Error::Refused(format!(
            "object {} expands past its announced {} bytes (decompression stopped there)",
            reference.location(),
            reference.size
        )));
    }
    if payload.len() != reference.size {
        return Err(Error::Refused(format!(
            "object {} holds {} bytes, the reference says {}",
            reference.location(),
            payload.len(),
            reference.size
        )));
    }
    let got = hex(&Sha256::digest(&payload));
    if got != reference.sha256 {
        return Err(Error::Refused(format!(
            "checksum mismatch for {}: sha256 {got}, the reference says {}",
            reference.location(),
            reference.sha256
        )));
    }
    Ok(payload)
}
