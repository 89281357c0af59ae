//! One call for a producer: whatever the mode, an event becomes the outbox rows to write.

use crate::{Chunker, ClaimCheck};

/// What a producer does with payloads over the threshold: one value per service, from
/// [`Settings::large_payloads`](crate::Settings::large_payloads).
#[derive(Debug, Clone)]
pub enum LargePayloads {
    /// Every payload inline, however large (the pitfall).
    Inline,
    /// Large payloads stored in S3/MinIO behind a reference.
    ClaimCheck(ClaimCheck),
    /// Large payloads split into chunks.
    Chunk(Chunker),
}

#[cfg(feature = "outbox")]
impl LargePayloads {
    /// The rows to enqueue for `event`: itself, its claim-checked copy (after the upload), or
    /// its chunks. Call it **before** the business transaction (an upload is a network call
    /// that must not hold row locks), then [`Prepared::enqueue`] inside it. An unreachable
    /// object store is [`Error::Unavailable`](crate::Error::Unavailable): answer 503, nothing
    /// is written.
    pub async fn prepare(&self, event: eda_outbox::OutboxEvent) -> crate::Result<Prepared> {
        match self {
            Self::Inline => Ok(Prepared {
                events: vec![event],
                uploads: Vec::new(),
                ledgered: false,
            }),
            Self::ClaimCheck(claim_check) => {
                let (event, upload) = claim_check.offload_with_reference(event).await?;
                Ok(Prepared {
                    events: vec![event],
                    uploads: upload.into_iter().collect(),
                    ledgered: claim_check.has_ledger(),
                })
            }
            Self::Chunk(chunker) => {
                let chunker = chunker.clone();
                // Hashing and copying megabytes is CPU work: off the async threads.
                let events = tokio::task::spawn_blocking(move || chunker.split(event))
                    .await
                    .map_err(|err| crate::Error::Unavailable(Box::new(err)))??;
                Ok(Prepared {
                    events,
                    uploads: Vec::new(),
                    ledgered: false,
                })
            }
        }
    }
}

/// The outbox rows of one event, ready to be written in the business transaction.
#[cfg(feature = "outbox")]
#[derive(Debug)]
pub struct Prepared {
    events: Vec<eda_outbox::OutboxEvent>,
    uploads: Vec<crate::Reference>,
    /// The uploads were recorded in the ledger ([`ClaimCheck::with_ledger`]): confirm them.
    ledgered: bool,
}

#[cfg(feature = "outbox")]
impl Prepared {
    /// The rows, in the order they must be written (chunks by index).
    pub fn events(&self) -> &[eda_outbox::OutboxEvent] {
        &self.events
    }

    /// The rows, for a caller that publishes them itself (a direct-publish baseline).
    pub fn into_events(self) -> Vec<eda_outbox::OutboxEvent> {
        self.events
    }

    /// The objects uploaded for these rows.
    pub fn uploads(&self) -> &[crate::Reference] {
        &self.uploads
    }

    /// Writes the rows to the default outbox table inside the caller's transaction.
    pub async fn enqueue(&self, conn: &mut sqlx::PgConnection) -> eda_outbox::Result<()> {
        self.enqueue_into(conn, &eda_outbox::OutboxTable::default())
            .await
    }

    /// [`enqueue`](Self::enqueue) into the outbox table `table`.
    pub async fn enqueue_into(
        &self,
        conn: &mut sqlx::PgConnection,
        table: &eda_outbox::OutboxTable,
    ) -> eda_outbox::Result<()> {
        for event in &self.events {
            eda_outbox::enqueue_into(&mut *conn, table, event).await?;
        }
        self.confirm(conn).await
    }

    /// Removes the uploads' ledger records inside the caller's transaction (see
    /// [`crate::confirm`]). [`enqueue`](Self::enqueue) does it; call it yourself when the rows
    /// are published another way (direct publishing after commit). Without a ledger (a claim
    /// check without [`ClaimCheck::with_ledger`]) there is nothing to confirm and no table is
    /// touched.
    pub async fn confirm(&self, conn: &mut sqlx::PgConnection) -> eda_outbox::Result<()> {
        if !self.ledgered || self.uploads.is_empty() {
            return Ok(());
        }
        crate::confirm(conn, &self.uploads)
            .await
            .map_err(eda_outbox::Error::from)
    }
}
