use std::future::Future;

use opentelemetry::context::FutureExt as _;
use rdkafka::Message;
use rdkafka::message::{BorrowedMessage, Headers};
use serde::de::DeserializeOwned;
use tracing::{Instrument as _, Span};
use uuid::Uuid;

use crate::HandlerError;
use eda_context::EventContext;

/// One decoded Kafka record, as a handler sees it.
#[derive(Debug, Clone)]
pub struct Event {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Message key (the aggregate id in this project's contract).
    pub key: Option<String>,
    /// Raw value.
    pub payload: Vec<u8>,
    /// All headers, in order; `None` values are headers sent with a null value.
    pub headers: Vec<(String, Option<String>)>,
    /// `event-id` header: the dedupe key.
    pub event_id: Uuid,
    /// `event-type` header.
    pub event_type: String,
    /// Request/user/correlation ids from the headers (sanitised; missing ones replaced). Fresh
    /// ids when the consumer runs with `Propagation::Off`. The user id is context for logs and
    /// traces, never a credential: anyone who can produce to the topic can set it.
    pub context: EventContext,
    /// The event's `process` span and the record's trace context (set by the runtime).
    trace: Option<(Span, opentelemetry::Context)>,
}

/// What the consumed records carry, so [`Event::decode`] knows what to require.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Records {
    /// This project's message contract: `event-id` (a UUID) and `event-type` headers and a
    /// value are required; a record without them is poison (dead-lettered).
    #[default]
    Contract,
    /// Records of a producer that knows nothing of the contract (Debezium change events of
    /// CRUD tables, another team's topic). The event id is derived from the record's topic,
    /// partition and offset (the same record always gets the same id; see
    /// [`Event::offset_id`]), the event type is the `event-type` header if there is one, else
    /// the topic's name, and a record without a value (a Debezium tombstone after a delete)
    /// reaches the handler with an empty payload. Run it with [`Dedupe::Offsets`](crate::Dedupe::Offsets): the
    /// topic-partition-offset is then the transaction id, as for any source without ids.
    Foreign,
}

/// Why a record could not be decoded: it goes to the dead-letter topic with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

impl Event {
    /// Decodes a record of the contract ([`Records::Contract`]): `event-id` (a UUID) and
    /// `event-type` headers are required, the value must be present. Anything else is a
    /// poison record.
    pub fn decode(message: &BorrowedMessage<'_>) -> Result<Self, DecodeError> {
        Self::decode_records(message, Records::Contract)
    }

    /// Decodes a record as `records` says ([`Records::Foreign`]: ids derived from the offset,
    /// tombstones with an empty payload).
    pub fn decode_records(
        message: &BorrowedMessage<'_>,
        records: Records,
    ) -> Result<Self, DecodeError> {
        let headers = message.headers();
        let context = EventContext::from_event(|name| {
            headers.and_then(|h| eda_context::kafka::header(h, name))
        });
        Self::decode_with(message, context, records)
    }

    /// The event id [`Records::Foreign`] gives the record at `offset` of `topic`/`partition`:
    /// a UUID (version 8) made of the first bytes of the SHA-256 of the three, so a redelivery
    /// has the same id and two records never share one.
    pub fn offset_id(topic: &str, partition: i32, offset: i64) -> Uuid {
        use sha2::Digest as _;
        let mut hash = sha2::Sha256::new();
        hash.update(topic.as_bytes());
        hash.update([0]);
        hash.update(partition.to_be_bytes());
        hash.update(offset.to_be_bytes());
        let digest = hash.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        Uuid::new_v8(bytes)
    }

    /// [`decode`](Self::decode) with the context already read (the runtime reads it before
    /// decoding, for the span of records that turn out to be poison too).
    pub(crate) fn decode_with<M: Message>(
        message: &M,
        context: EventContext,
        records: Records,
    ) -> Result<Self, DecodeError> {
        let headers: Vec<(String, Option<String>)> = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            h.value.map(|v| String::from_utf8_lossy(v).into_owned()),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let find = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.clone())
        };
        let foreign = records == Records::Foreign;
        let event_id = match find("event-id") {
            Some(id) if !foreign => Uuid::parse_str(&id).map_err(|_| {
                DecodeError(format!("header event-id {} is not a UUID", shown(&id)))
            })?,
            // A foreign producer's `event-id` means nothing to this runtime: the offset does.
            _ if foreign => Self::offset_id(message.topic(), message.partition(), message.offset()),
            _ => return Err(DecodeError("missing required header event-id".to_owned())),
        };
        let event_type = match find("event-type").filter(|t| !t.trim().is_empty()) {
            Some(t) => t,
            None if foreign => message.topic().to_owned(),
            None => return Err(DecodeError("missing required header event-type".to_owned())),
        };
        // It names spans and log lines: a name, not arbitrary bytes from the producer.
        if eda_context::sanitize::id(&event_type).is_none() {
            return Err(DecodeError(format!(
                "header event-type {} is not a name (1-128 characters of A-Z a-z 0-9 . _ : - @)",
                shown(&event_type)
            )));
        }
        // An ordering guard reads it: a revision that is present but not a number is poison, not
        // "no revision".
        if let Some(revision) = find("revision")
            && revision.trim().parse::<i64>().is_err()
        {
            return Err(DecodeError(format!(
                "header revision {} is not an integer",
                shown(&revision)
            )));
        }
        let payload = match message.payload() {
            Some(value) => value.to_vec(),
            None if foreign => Vec::new(),
            None => return Err(DecodeError("the record has no value".to_owned())),
        };
        Ok(Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            payload,
            headers,
            event_id,
            event_type,
            context,
            trace: None,
        })
    }

    /// The event with the span it is processed in and its record's trace context.
    pub(crate) fn traced(mut self, span: Span, parent: opentelemetry::Context) -> Self {
        self.trace = Some((span, parent));
        self
    }

    /// The event's `process` span (disabled outside the runtime). A batch-aware handler
    /// ([`Handler::handle_batch`](crate::Handler::handle_batch)) records per-event fields on it.
    pub fn span(&self) -> Span {
        self.trace
            .as_ref()
            .map_or_else(Span::none, |(span, _)| span.clone())
    }

    /// Runs `work` inside this event's span, with its record's trace context current: what the
    /// runtime does around [`Handler::handle`](crate::Handler::handle). A batch-aware handler
    /// wraps per-event work in it, so its logs carry the event's ids and the events it emits
    /// ([`outgoing_context`](Self::outgoing_context)) continue the event's trace.
    pub fn in_span<F: Future>(&self, work: F) -> impl Future<Output = F::Output> {
        let (span, parent) = self
            .trace
            .clone()
            .unwrap_or_else(|| (Span::current(), opentelemetry::Context::current()));
        work.instrument(span).with_context(parent)
    }

    /// The context headers to write on an event this handler emits: same request, user and
    /// correlation, `causation-id` = this event, plus the current trace context (inside the
    /// runtime: the consumer's span or a span the handler opened, else the record's parent),
    /// so the next hop joins the same trace. Empty when `propagation` is off.
    pub fn outgoing_context(
        &self,
        propagation: eda_context::Propagation,
    ) -> Vec<(&'static str, String)> {
        propagation.outgoing(&self.context.caused_by(&self.event_id.to_string()))
    }

    /// The value of header `name`, if present and not null.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }

    /// The whole message a completed chunk set makes: this (last) chunk's record with the
    /// message's event id and payload.
    pub(crate) fn reassembled(&self, message_id: Uuid, payload: Vec<u8>) -> Self {
        let id = message_id.to_string();
        Self {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
            key: self.key.clone(),
            payload,
            headers: self
                .headers
                .iter()
                .map(|(k, v)| {
                    let v = if k == "event-id" {
                        Some(id.clone())
                    } else {
                        v.clone()
                    };
                    (k.clone(), v)
                })
                .collect(),
            event_id: message_id,
            event_type: self.event_type.clone(),
            context: self.context.clone(),
            trace: self.trace.clone(),
        }
    }

    /// The `revision` header as a number, if present.
    pub fn revision(&self) -> Option<i64> {
        self.header("revision").and_then(|r| r.trim().parse().ok())
    }

    /// The aggregate this event changes and its revision after the change: the
    /// `aggregate-type` header (empty when absent), the `aggregate-id` header (else the key),
    /// and `revision`. `None` without a revision or an id: the revision guard then lets the
    /// event through in arrival order.
    pub fn aggregate_revision(&self) -> Option<(String, String, i64)> {
        let revision = self.revision()?;
        let id = self
            .header("aggregate-id")
            .or(self.key.as_deref())
            .filter(|id| !id.is_empty())?;
        let kind = self.header("aggregate-type").unwrap_or_default();
        Some((kind.to_owned(), id.to_owned(), revision))
    }

    /// The value parsed as JSON. A value that does not parse is permanent: retrying cannot fix it.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        serde_json::from_slice(&self.payload).map_err(|err| {
            HandlerError::Permanent(format!(
                "{} value is not the expected JSON: {err}",
                self.event_type
            ))
        })
    }
}

/// A header value as quoted in a dead-letter reason: escaped, at most 64 characters.
fn shown(value: &str) -> String {
    let mut out: String = value
        .chars()
        .take(64)
        .flat_map(char::escape_debug)
        .collect();
    if value.chars().count() > 64 {
        out.push_str("...");
    }
    format!("\"{out}\"")
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn reasons_quote_values_escaped_and_bounded() {
        assert_eq!(shown("abc"), "\"abc\"");
        assert_eq!(shown("a\nb\u{1b}"), "\"a\\nb\\u{1b}\"");
        let long = shown(&"x".repeat(500));
        assert!(long.len() < 80 && long.ends_with("...\""), "{long}");
    }
}
