//! Payloads that are not in the record: a claim check (the value is a reference to an object
//! store) is resolved before the handler runs, so a handler always sees the full payload.

use std::future::Future;
use std::pin::Pin;

use crate::{Event, HandlerError};

/// The header that marks a record whose payload is stored elsewhere (the message contract's
/// `claim-check-*` headers).
pub const CLAIM_CHECK_HEADER: &str = "claim-check-location";

/// What a resolver's future returns: the full payload, or why not ([`HandlerError::Transient`]
/// when the store is unreachable: retried in order; [`HandlerError::Permanent`] when the
/// reference is invalid, the object missing or tampered with: dead-lettered).
pub type Resolved<'a> = Pin<Box<dyn Future<Output = Result<Vec<u8>, HandlerError>> + Send + 'a>>;

/// Fetches (and verifies) the payload a record refers to. `eda-claim-check` implements it for
/// S3/MinIO; set it with [`Consumer::with_resolver`](crate::Consumer::with_resolver).
pub trait PayloadResolver: Send + Sync + 'static {
    /// The full payload of `event`, whose [`CLAIM_CHECK_HEADER`] is set.
    fn resolve<'a>(&'a self, event: &'a Event) -> Resolved<'a>;
}
