//! Debezium change events, decoded: what projection-service reads from the CDC topics.
//!
//! The connectors (`infra/debezium/cdc-connector.json`) write JSON without schemas: the value
//! is `{"before": {..}|null, "after": {..}|null, "source": {"table", "ts_ms", ..}, "op": ".."}`,
//! and a delete is followed by a tombstone (a record without a value) for log compaction.
//! Columns are read by name and unknown ones are ignored, so a column added to a source table
//! (`ALTER TABLE .. ADD COLUMN`) changes nothing here.
//!
//! PostgreSQL does not send the value of a TOASTed column (a large value stored out of line)
//! that an `UPDATE` left unchanged; Debezium puts [`UNAVAILABLE`] there instead. Such a column
//! decodes as [`Column::Unchanged`], and the views keep the value they hold; it never reaches a
//! view.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Debezium's placeholder for a TOASTed column an update left unchanged
/// (`unavailable.value.placeholder`, kept at its default by the connectors).
pub const UNAVAILABLE: &str = "__debezium_unavailable_value";

/// What happened to the source row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `c`: inserted.
    Create,
    /// `u`: updated.
    Update,
    /// `d`: deleted (`after` is null, `before` holds the key).
    Delete,
    /// `r`: read by a snapshot (the row as it is; handled as an upsert).
    Read,
}

impl Op {
    fn parse(op: &str) -> Option<Self> {
        match op {
            "c" => Some(Self::Create),
            "u" => Some(Self::Update),
            "d" => Some(Self::Delete),
            "r" => Some(Self::Read),
            _ => None,
        }
    }
}

/// One decoded record of a CDC topic.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A change of a row.
    Change(Change),
    /// A record without a value: the tombstone Debezium writes after a delete, for log
    /// compaction. The delete itself came just before it.
    Tombstone,
    /// A record the projection does not apply (a `t`runcate or `m`essage event), with its op.
    Other(String),
}

/// A change of one source row.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// What happened.
    pub op: Op,
    /// The source table (`source.table`).
    pub table: String,
    /// The source transaction's commit time (`source.ts_ms`; for snapshot reads, the read).
    pub committed_at: DateTime<Utc>,
    /// The row after the change (absent for deletes).
    pub after: Option<Row>,
    /// The row before it (for deletes, at least its primary key).
    pub before: Option<Row>,
}

impl Change {
    /// The row a change is about: `after`, else (deletes) `before`.
    pub fn row(&self) -> Result<&Row, CdcError> {
        self.after
            .as_ref()
            .or(self.before.as_ref())
            .ok_or_else(|| CdcError(format!("a {:?} change without before or after", self.op)))
    }
}

/// Why a record is not a change event this projection understands: it goes to the
/// dead-letter topic with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CdcError(pub String);

#[derive(Deserialize)]
struct Envelope {
    op: String,
    before: Option<Map<String, Value>>,
    after: Option<Map<String, Value>>,
    source: Source,
}

#[derive(Deserialize)]
struct Source {
    table: String,
    ts_ms: i64,
}

/// Decodes a record's value (empty: a tombstone).
pub fn decode(value: &[u8]) -> Result<Record, CdcError> {
    if value.is_empty() {
        return Ok(Record::Tombstone);
    }
    let envelope: Envelope = serde_json::from_slice(value).map_err(|err| {
        CdcError(format!(
            "not a Debezium change event (JSON without schemas): {err}"
        ))
    })?;
    let Some(op) = Op::parse(&envelope.op) else {
        return Ok(Record::Other(envelope.op));
    };
    let committed_at = DateTime::from_timestamp_millis(envelope.source.ts_ms).ok_or_else(|| {
        CdcError(format!(
            "source.ts_ms {} is not a time",
            envelope.source.ts_ms
        ))
    })?;
    let change = Change {
        op,
        table: envelope.source.table,
        committed_at,
        after: envelope.after.map(Row),
        before: envelope.before.map(Row),
    };
    if op != Op::Delete && change.after.is_none() {
        return Err(CdcError(format!("a {op:?} change without after")));
    }
    Ok(Record::Change(change))
}

/// A column's value in a change event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Column<T> {
    /// The value.
    Value(T),
    /// Unchanged and not sent (a TOASTed value; see [`UNAVAILABLE`]): keep the one held.
    Unchanged,
}

impl<T> Column<T> {
    /// The value, or `None` when unchanged.
    pub fn value(self) -> Option<T> {
        match self {
            Self::Value(v) => Some(v),
            Self::Unchanged => None,
        }
    }
}

/// The columns of a source row, by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(pub Map<String, Value>);

impl Row {
    fn get(&self, column: &str) -> Result<&Value, CdcError> {
        self.0
            .get(column)
            .filter(|v| !v.is_null())
            .ok_or_else(|| CdcError(format!("column {column} is missing or null")))
    }

    /// A text column (never TOASTed: keys, short codes).
    pub fn text(&self, column: &str) -> Result<String, CdcError> {
        match self.get(column)? {
            Value::String(s) if s == UNAVAILABLE => Err(CdcError(format!(
                "column {column} is unavailable (TOAST) where the projection needs it"
            ))),
            Value::String(s) => Ok(s.clone()),
            other => Err(CdcError(format!("column {column} is {other}, not text"))),
        }
    }

    /// A text column that may be TOASTed, hence [`Column::Unchanged`].
    pub fn large_text(&self, column: &str) -> Result<Column<String>, CdcError> {
        match self.get(column)? {
            Value::String(s) if s == UNAVAILABLE => Ok(Column::Unchanged),
            Value::String(s) => Ok(Column::Value(s.clone())),
            other => Err(CdcError(format!("column {column} is {other}, not text"))),
        }
    }

    /// A nullable text column that may be TOASTed: `Value(None)` when null.
    pub fn optional_text(&self, column: &str) -> Result<Column<Option<String>>, CdcError> {
        match self.0.get(column) {
            None | Some(Value::Null) => Ok(Column::Value(None)),
            Some(Value::String(s)) if s == UNAVAILABLE => Ok(Column::Unchanged),
            Some(Value::String(s)) => Ok(Column::Value(Some(s.clone()))),
            Some(other) => Err(CdcError(format!("column {column} is {other}, not text"))),
        }
    }

    /// An integer column (`int`, `bigint`).
    pub fn int(&self, column: &str) -> Result<i64, CdcError> {
        let value = self.get(column)?;
        value
            .as_i64()
            .ok_or_else(|| CdcError(format!("column {column} is {value}, not an integer")))
    }

    /// A `uuid` column (a string in Debezium's JSON).
    pub fn uuid(&self, column: &str) -> Result<uuid::Uuid, CdcError> {
        let text = self.text(column)?;
        uuid::Uuid::parse_str(&text)
            .map_err(|_| CdcError(format!("column {column} is {text:?}, not a UUID")))
    }

    /// A `timestamptz` column (an RFC 3339 string in Debezium's JSON: `ZonedTimestamp`).
    pub fn time(&self, column: &str) -> Result<DateTime<Utc>, CdcError> {
        let text = self.text(column)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| CdcError(format!("column {column} is {text:?}, not a timestamp")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(value: &Value) -> Result<Record, CdcError> {
        decode(value.to_string().as_bytes())
    }

    fn order_change(op: &str, after: &Value) -> Value {
        json!({
            "before": null,
            "after": after,
            "source": {"version": "3.6.1.Final", "connector": "postgresql", "table": "orders",
                       "schema": "public", "ts_ms": 1_780_000_000_123_i64, "lsn": 123, "txId": 9},
            "op": op,
            "ts_ms": 1_780_000_000_456_i64
        })
    }

    #[test]
    fn an_update_decodes_with_its_columns_and_commit_time() {
        let Record::Change(change) = record(&order_change(
            "u",
            &json!({"id": "0190a1b2-0000-7000-8000-000000000001", "status": "CONFIRMED",
                   "revision": 2, "updated_at": "2026-12-02T15:00:00.123456Z",
                   "customer_name": "Ada", "added_later": true}),
        ))
        .unwrap() else {
            panic!("not a change")
        };
        assert_eq!(change.op, Op::Update);
        assert_eq!(change.table, "orders");
        assert_eq!(change.committed_at.timestamp_millis(), 1_780_000_000_123);
        let row = change.row().unwrap();
        assert_eq!(row.text("status").unwrap(), "CONFIRMED");
        assert_eq!(row.int("revision").unwrap(), 2);
        assert_eq!(
            row.uuid("id").unwrap().to_string(),
            "0190a1b2-0000-7000-8000-000000000001"
        );
        assert_eq!(
            row.time("updated_at").unwrap().timestamp_micros() % 1_000_000,
            123_456
        );
        assert_eq!(
            row.large_text("customer_name").unwrap(),
            Column::Value("Ada".to_owned())
        );
    }

    #[test]
    fn the_toast_placeholder_is_unchanged_never_a_value() {
        let Record::Change(change) = record(&order_change(
            "u",
            &json!({"customer_name": UNAVAILABLE, "note": UNAVAILABLE, "status": UNAVAILABLE}),
        ))
        .unwrap() else {
            panic!("not a change")
        };
        let row = change.row().unwrap();
        assert_eq!(row.large_text("customer_name").unwrap(), Column::Unchanged);
        assert_eq!(row.optional_text("note").unwrap(), Column::Unchanged);
        assert_eq!(row.optional_text("absent").unwrap(), Column::Value(None));
        // A column the projection cannot do without is an error, not the placeholder.
        assert!(row.text("status").unwrap_err().0.contains("unavailable"));
    }

    #[test]
    fn deletes_snapshots_tombstones_and_others() {
        let delete = json!({"before": {"id": "x"}, "after": null,
                            "source": {"table": "orders", "ts_ms": 1}, "op": "d"});
        let Record::Change(change) = record(&delete).unwrap() else {
            panic!("not a change")
        };
        assert_eq!(change.op, Op::Delete);
        assert_eq!(change.row().unwrap().text("id").unwrap(), "x");
        let Record::Change(read) = record(&order_change("r", &json!({"id": "y"}))).unwrap() else {
            panic!("not a change")
        };
        assert_eq!(read.op, Op::Read);
        assert_eq!(decode(b"").unwrap(), Record::Tombstone);
        let truncate = json!({"before": null, "after": null,
                              "source": {"table": "orders", "ts_ms": 1}, "op": "t"});
        assert_eq!(record(&truncate).unwrap(), Record::Other("t".to_owned()));
    }

    #[test]
    fn malformed_records_say_why() {
        assert!(
            decode(b"{not json")
                .unwrap_err()
                .0
                .contains("not a Debezium change event")
        );
        assert!(
            record(&json!({"op": "c", "after": {}}))
                .unwrap_err()
                .0
                .contains("source")
        );
        let no_after = json!({"before": null, "after": null,
                              "source": {"table": "orders", "ts_ms": 1}, "op": "c"});
        assert!(record(&no_after).unwrap_err().0.contains("without after"));
        let Record::Change(change) =
            record(&order_change("c", &json!({"revision": "two"}))).unwrap()
        else {
            panic!("not a change")
        };
        let row = change.row().unwrap();
        assert!(
            row.int("revision")
                .unwrap_err()
                .0
                .contains("not an integer")
        );
        assert!(row.int("missing").unwrap_err().0.contains("missing"));
    }
}
