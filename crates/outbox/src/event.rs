use chrono::{SecondsFormat, Utc};
use serde::Serialize;
use sqlx::{PgConnection, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::headers::{MAX_HEADER_VALUE_LEN, optional_column};
use crate::{Error, OutboxTable, Result};

/// One event to publish, built by the service that made the change.
///
/// ```
/// # fn main() -> Result<(), eda_outbox::Error> {
/// use eda_outbox::OutboxEvent;
/// let event = OutboxEvent::json("order.events", "Order", "3f2c…", "OrderPlaced", 1, &serde_json::json!({"total": 42}))?
///     .with_header("request-id", "req-123")?;
/// assert_eq!(event.key(), "3f2c…");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    event_id: Uuid,
    topic: String,
    aggregate_type: String,
    aggregate_id: String,
    event_type: String,
    revision: i64,
    occurred_at: String,
    content_type: String,
    schema_version: String,
    payload: String,
    optional_headers: Vec<(&'static str, String)>,
}

fn check(field: &str, value: &str, max: usize) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::InvalidEvent(format!("{field} is empty")));
    }
    if value.len() > max {
        return Err(Error::InvalidEvent(format!(
            "{field} is {} bytes, more than {max}",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::InvalidEvent(format!(
            "{field} contains control characters"
        )));
    }
    Ok(())
}

impl OutboxEvent {
    /// An event whose value is `payload` serialized as JSON (`content-type: application/json`,
    /// `schema-version: 1`), with a fresh UUIDv7 event id and `occurred-at` = now.
    ///
    /// `revision` is the aggregate's revision after the change; consumers use it to detect
    /// stale and duplicate events.
    pub fn json(
        topic: &str,
        aggregate_type: &str,
        aggregate_id: &str,
        event_type: &str,
        revision: i64,
        payload: &impl Serialize,
    ) -> Result<Self> {
        let payload = serde_json::to_string(payload).map_err(|source| Error::Payload {
            event_type: event_type.to_owned(),
            source,
        })?;
        for (field, value) in [
            ("topic", topic),
            ("aggregate type", aggregate_type),
            ("aggregate id", aggregate_id),
            ("event type", event_type),
        ] {
            check(field, value, 255)?;
        }
        Ok(Self {
            event_id: Uuid::now_v7(),
            topic: topic.to_owned(),
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            event_type: event_type.to_owned(),
            revision,
            occurred_at: Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
            content_type: "application/json".to_owned(),
            schema_version: "1".to_owned(),
            payload,
            optional_headers: Vec::new(),
        })
    }

    /// Sets an optional contract header (context: `traceparent`, `request-id`, ...; claim check:
    /// `claim-check-*`). Unknown names are refused: every header needs a column so that the
    /// Debezium relay can carry it too.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Result<Self> {
        let column = optional_column(name).ok_or_else(|| {
            Error::InvalidEvent(format!(
                "{name:?} is not an optional header of the message contract"
            ))
        })?;
        let value = value.into();
        check(name, &value, MAX_HEADER_VALUE_LEN)?;
        self.optional_headers.retain(|(c, _)| *c != column);
        self.optional_headers.push((column, value));
        Ok(self)
    }

    /// Sets several optional headers at once, e.g. the context headers from
    /// `eda_context::Propagation::outgoing` (ids + `traceparent`).
    pub fn with_headers<N: AsRef<str>>(
        self,
        headers: impl IntoIterator<Item = (N, String)>,
    ) -> Result<Self> {
        headers.into_iter().try_fold(self, |event, (name, value)| {
            event.with_header(name.as_ref(), value)
        })
    }

    /// Overrides the schema version (default `1`).
    pub fn with_schema_version(mut self, version: &str) -> Result<Self> {
        check("schema version", version, 32)?;
        version.clone_into(&mut self.schema_version);
        Ok(self)
    }

    /// The event id (UUIDv7): consumers deduplicate by it.
    pub fn event_id(&self) -> Uuid {
        self.event_id
    }

    /// The Kafka key: the aggregate id. Per-key order is the ordering guarantee.
    pub fn key(&self) -> &str {
        &self.aggregate_id
    }

    /// The destination topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The serialized value.
    pub fn payload(&self) -> &str {
        &self.payload
    }

    /// The same event with another value, everything else kept: what a claim check does when
    /// it replaces a large payload by a small reference to where it is stored.
    pub fn with_payload(mut self, payload: String) -> Self {
        self.payload = payload;
        self
    }

    /// The same event under another event id: what a chunker does, since every outbox row
    /// (every chunk of a large payload) needs its own id; the chunks name the whole message's
    /// id in their `chunk-message-id` header.
    pub fn with_event_id(mut self, event_id: Uuid) -> Self {
        self.event_id = event_id;
        self
    }

    /// The aggregate type (header `aggregate-type`).
    pub fn aggregate_type(&self) -> &str {
        &self.aggregate_type
    }

    /// The message headers, in the order the relay writes them: what a consumer will see.
    /// (For code that must publish without the outbox, such as a naive baseline.)
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let revision = self.revision.to_string();
        let event_id = self.event_id.to_string();
        crate::headers::CONTRACT_HEADERS
            .iter()
            .filter_map(|(name, column, _)| {
                let value = match *column {
                    "event_id" => Some(event_id.as_str()),
                    "event_type" => Some(self.event_type.as_str()),
                    "aggregate_type" => Some(self.aggregate_type.as_str()),
                    "aggregate_id" => Some(self.aggregate_id.as_str()),
                    "revision" => Some(revision.as_str()),
                    "occurred_at" => Some(self.occurred_at.as_str()),
                    "content_type" => Some(self.content_type.as_str()),
                    "schema_version" => Some(self.schema_version.as_str()),
                    optional => self
                        .optional_headers
                        .iter()
                        .find(|(c, _)| *c == optional)
                        .map(|(_, v)| v.as_str()),
                };
                value.map(|v| (*name, v.to_owned()))
            })
            .collect()
    }
}

/// Writes `event` to the outbox inside the caller's transaction (pass `&mut *tx`).
///
/// The event exists if and only if the transaction commits: that is the whole point. Nothing
/// is sent here; the relay publishes after commit.
pub async fn enqueue(conn: &mut PgConnection, event: &OutboxEvent) -> Result<()> {
    enqueue_into(conn, &OutboxTable::default(), event).await
}

/// [`enqueue`] into the outbox table `table` (see [`OutboxTable`]).
#[tracing::instrument(skip_all, fields(
    otel.name = %format_args!("enqueue {}", event.topic),
    messaging.message.id = %event.event_id,
    messaging.destination.name = %event.topic,
    event.type = %event.event_type,
    aggregate.id = %event.aggregate_id,
))]
pub async fn enqueue_into(
    conn: &mut PgConnection,
    table: &OutboxTable,
    event: &OutboxEvent,
) -> Result<()> {
    let mut query: QueryBuilder<Postgres> = QueryBuilder::new(format!(
        "INSERT INTO {table} (event_id, topic, aggregate_type, aggregate_id, event_type, revision, \
         occurred_at, content_type, schema_version, payload",
    ));
    for (column, _) in &event.optional_headers {
        query.push(", ").push(*column);
    }
    query.push(") VALUES (");
    let mut values = query.separated(", ");
    values
        .push_bind(event.event_id)
        .push_bind(&event.topic)
        .push_bind(&event.aggregate_type)
        .push_bind(&event.aggregate_id)
        .push_bind(&event.event_type)
        .push_bind(event.revision.to_string())
        .push_bind(&event.occurred_at)
        .push_bind(&event.content_type)
        .push_bind(&event.schema_version)
        .push_bind(&event.payload);
    for (_, value) in &event.optional_headers {
        values.push_bind(value);
    }
    query.push(")");
    query.build().execute(conn).await?;
    Ok(())
}

/// Writes `events` to the outbox in one statement inside the caller's transaction: what
/// [`enqueue`] does for each, with one round trip for all (a consumer applying a batch of
/// events emits its batch of events this way). Their order is kept (the outbox's sequence).
pub async fn enqueue_all(conn: &mut PgConnection, events: &[OutboxEvent]) -> Result<()> {
    enqueue_all_into(conn, &OutboxTable::default(), events).await
}

/// [`enqueue_all`] into the outbox table `table` (see [`OutboxTable`]).
#[tracing::instrument(skip_all, fields(otel.name = "enqueue batch", events = events.len()))]
pub async fn enqueue_all_into(
    conn: &mut PgConnection,
    table: &OutboxTable,
    events: &[OutboxEvent],
) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    // The optional columns any of them sets (NULL where another does not), in a fixed order,
    // so the statement's text (and its prepared statement) is the same for the same kind of
    // batch.
    let mut optional: Vec<&'static str> = events
        .iter()
        .flat_map(|e| e.optional_headers.iter().map(|(c, _)| *c))
        .collect();
    optional.sort_unstable();
    optional.dedup();
    let mut columns = String::from(
        "event_id, topic, aggregate_type, aggregate_id, event_type, revision, occurred_at, \
         content_type, schema_version, payload",
    );
    let mut arrays = String::from(
        "$1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
         $8::text[], $9::text[], $10::text[]",
    );
    for (i, column) in optional.iter().enumerate() {
        columns.push_str(", ");
        columns.push_str(column);
        arrays.push_str(&format!(", ${}::text[]", i + 11));
    }
    // unnest keeps the arrays' order; WITH ORDINALITY + ORDER BY makes the insert order (the
    // outbox sequence) explicit.
    let sql = format!(
        "INSERT INTO {table} ({columns}) SELECT {columns} FROM unnest({arrays}) \
         WITH ORDINALITY AS e({columns}, n) ORDER BY n"
    );
    let text = |f: fn(&OutboxEvent) -> &str| events.iter().map(f).collect::<Vec<&str>>();
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(events.iter().map(|e| e.event_id).collect::<Vec<Uuid>>())
        .bind(text(|e| &e.topic))
        .bind(text(|e| &e.aggregate_type))
        .bind(text(|e| &e.aggregate_id))
        .bind(text(|e| &e.event_type))
        .bind(
            events
                .iter()
                .map(|e| e.revision.to_string())
                .collect::<Vec<String>>(),
        )
        .bind(text(|e| &e.occurred_at))
        .bind(text(|e| &e.content_type))
        .bind(text(|e| &e.schema_version))
        .bind(text(|e| &e.payload));
    for column in &optional {
        let values: Vec<Option<&str>> = events
            .iter()
            .map(|e| {
                e.optional_headers
                    .iter()
                    .find(|(c, _)| c == column)
                    .map(|(_, v)| v.as_str())
            })
            .collect();
        query = query.bind(values);
    }
    query.execute(conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> OutboxEvent {
        OutboxEvent::json(
            "order.events",
            "Order",
            "o-1",
            "OrderPlaced",
            1,
            &serde_json::json!({"a": 1}),
        )
        .unwrap()
    }

    #[test]
    fn builds_the_contract_fields() {
        let e = event();
        assert_eq!(e.key(), "o-1");
        assert_eq!(e.payload(), r#"{"a":1}"#);
        assert_eq!(e.event_id().get_version_num(), 7);
        assert!(e.occurred_at.ends_with('Z'), "{}", e.occurred_at);
        chrono::DateTime::parse_from_rfc3339(&e.occurred_at).expect("RFC 3339");
    }

    #[test]
    fn headers_follow_the_contract_order_and_skip_unset_ones() {
        let e = event().with_header("user-id", "alice").unwrap();
        let names: Vec<&str> = e.headers().iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "event-id",
                "event-type",
                "aggregate-type",
                "aggregate-id",
                "revision",
                "occurred-at",
                "content-type",
                "schema-version",
                "user-id"
            ]
        );
        assert_eq!(e.headers()[4].1, "1");
    }

    #[test]
    fn refuses_empty_and_control_fields() {
        let err = OutboxEvent::json("t", "Order", " ", "X", 1, &1).unwrap_err();
        assert!(err.to_string().contains("aggregate id is empty"), "{err}");
        let err = OutboxEvent::json("t", "Order", "a\nb", "X", 1, &1).unwrap_err();
        assert!(err.to_string().contains("control"), "{err}");
    }

    #[test]
    fn refuses_headers_outside_the_contract() {
        let err = event().with_header("x-anything", "v").unwrap_err();
        assert!(err.to_string().contains("x-anything"), "{err}");
        let err = event().with_header("event-id", "v").unwrap_err();
        assert!(
            err.to_string().contains("event-id"),
            "required headers are not overridable: {err}"
        );
    }

    #[test]
    fn refuses_oversized_header_values_and_replaces_repeated_ones() {
        assert!(
            event()
                .with_header("baggage", "x".repeat(MAX_HEADER_VALUE_LEN + 1))
                .is_err()
        );
        let e = event()
            .with_header("request-id", "a")
            .unwrap()
            .with_header("request-id", "b")
            .unwrap();
        assert_eq!(e.optional_headers, vec![("request_id", "b".to_owned())]);
    }
}
