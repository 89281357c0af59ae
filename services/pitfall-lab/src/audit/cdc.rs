//! Facts from Debezium's change-event topics of the CRUD tables (what projection-service
//! reads): JSON without schemas, `{"before", "after", "source": {"table", ..}, "op"}`, a
//! tombstone after each delete. Decoded here from the connector's documented format, not with
//! projection-service's decoder.
//!
//! Three things are judged as records arrive:
//! - check 4: a key's `revision` must not go down within a partition (a revision seen before
//!   is a redelivery, which Debezium's at-least-once delivery allows);
//! - check 5: consecutive revisions of a stock row are either a *set* (`reserved` unchanged: an
//!   admin's `PUT`) or a *move* between `available` and `reserved` (their sum unchanged: a
//!   reservation or a release). Anything else created or destroyed units. So does a change
//!   that kept its revision but not its values;
//! - check 6 (with the view check's suspects): whether projection-service has consumed the
//!   change a lagging view row waits for.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::collections::RangeSet;
use super::contract::Table;
use super::events::Record;
use super::report::{Check, Findings};

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `c`, `u` or `r` (a snapshot read): the row as it is after the change.
    Upsert,
    /// `d`.
    Delete,
}

/// One decoded change.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The source table.
    pub table: Table,
    /// What happened.
    pub op: Op,
    /// The row's primary key (see [`Table::key_of`]).
    pub key: String,
    /// The row's `revision` after the change (none for deletes and `order_items`).
    pub revision: Option<i64>,
    /// The row after the change (before it, for deletes).
    pub row: Map<String, Value>,
}

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
}

/// Decodes a record's value: `Ok(None)` for a tombstone, another op (truncate, message) or a
/// table the audit does not know.
pub fn decode(payload: &[u8]) -> Result<Option<Change>, String> {
    if payload.is_empty() {
        return Ok(None);
    }
    let envelope: Envelope = serde_json::from_slice(payload)
        .map_err(|e| format!("not a Debezium change event (JSON without schemas): {e}"))?;
    let op = match envelope.op.as_str() {
        "c" | "u" | "r" => Op::Upsert,
        "d" => Op::Delete,
        _ => return Ok(None),
    };
    let Some(table) = Table::parse(&envelope.source.table) else {
        return Ok(None);
    };
    let row = match op {
        Op::Upsert => envelope.after,
        Op::Delete => envelope.before,
    }
    .ok_or_else(|| format!("a {} change without its row", envelope.op))?;
    let key = table
        .key_of(&row)
        .ok_or_else(|| format!("a change of {} without its key columns", table.name()))?;
    let revision = match op {
        Op::Upsert if table.has_revision() => Some(
            row.get("revision")
                .and_then(Value::as_i64)
                .ok_or_else(|| format!("a change of {} without a revision", table.name()))?,
        ),
        _ => None,
    };
    Ok(Some(Change {
        table,
        op,
        key,
        revision,
        row,
    }))
}

/// A stock row's numbers at one revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockState {
    /// `revision`.
    pub revision: i64,
    /// `available`.
    pub available: i64,
    /// `reserved`.
    pub reserved: i64,
}

impl StockState {
    /// Whether going from `self` to `next` (the next revision) keeps the books: a set leaves
    /// `reserved` alone, a move keeps `available + reserved`.
    pub fn balanced_step(self, next: StockState) -> bool {
        let reserved = next.reserved - self.reserved;
        let available = next.available - self.available;
        reserved == 0 || available + reserved == 0
    }
}

/// What is known of one key a view check suspects (a view row behind, missing or extra).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    /// Some record of the key is on the topic.
    pub any: bool,
    /// The last record of the key on the topic is a delete.
    pub last_is_delete: bool,
    /// projection-service consumed a change (not a delete) of the key.
    pub consumed_row: bool,
    /// The last change of the key projection-service consumed is a delete.
    pub consumed_delete: bool,
    /// The highest revision among the changes projection-service consumed.
    pub consumed_revision: Option<i64>,
}

/// A key's highest revision per `(topic, partition)` (topics numbered in [`Cdc::topics`]), and
/// every revision seen on any of them (a change seen before is a redelivery wherever it lands).
#[derive(Debug, Default)]
struct KeyOrder {
    tips: Vec<(u16, i32, i64)>,
    seen: RangeSet,
}

/// Everything read from the CDC topics.
#[derive(Debug, Default)]
pub struct Cdc {
    /// Records read.
    pub records: u64,
    /// Records that are not Debezium change events.
    pub undecodable: u64,
    order: HashMap<(Table, String), KeyOrder>,
    topics: Vec<String>,
    /// Last state seen per SKU.
    pub stock: HashMap<String, StockState>,
    /// The keys the view check wants news of, and what the topics say about them.
    pub suspects: HashMap<(Table, String), Seen>,
    /// Where projection-service is: `(topic, partition)` → the first offset it has not
    /// applied. A record below it was consumed.
    pub positions: HashMap<(String, i32), i64>,
    /// The stock rows of inventory-service's database as read: a CDC record at the same
    /// revision must carry the same numbers.
    pub stock_rows: HashMap<String, StockState>,
}

impl Cdc {
    /// Takes in one record of a CDC topic.
    pub fn ingest(&mut self, record: &Record<'_>, findings: &mut Findings) {
        self.records += 1;
        let change = match decode(record.payload) {
            Ok(Some(change)) => change,
            Ok(None) => return,
            Err(_) => {
                self.undecodable += 1;
                return;
            }
        };
        if let Some(revision) = change.revision {
            self.judge_order(record, &change, revision, findings);
        }
        if change.table == Table::Stock
            && let (Some(revision), Op::Upsert) = (change.revision, change.op)
        {
            let number = |c: &str| change.row.get(c).and_then(Value::as_i64);
            if let (Some(available), Some(reserved)) = (number("available"), number("reserved")) {
                self.judge_stock(
                    &change.key,
                    StockState {
                        revision,
                        available,
                        reserved,
                    },
                    findings,
                );
            }
        }
        if self.suspects.is_empty() {
            return;
        }
        if let Some(seen) = self.suspects.get_mut(&(change.table, change.key.clone())) {
            let consumed = self
                .positions
                .get(&(record.topic.to_owned(), record.partition))
                .is_some_and(|next| record.offset < *next);
            seen.any = true;
            seen.last_is_delete = change.op == Op::Delete;
            if consumed {
                match change.op {
                    Op::Delete => seen.consumed_delete = true,
                    Op::Upsert => {
                        seen.consumed_row = true;
                        seen.consumed_delete = false;
                        seen.consumed_revision = seen.consumed_revision.max(change.revision);
                    }
                }
            }
        }
    }

    fn judge_order(
        &mut self,
        record: &Record<'_>,
        change: &Change,
        revision: i64,
        findings: &mut Findings,
    ) {
        let topic = match self.topics.iter().position(|t| t == record.topic) {
            Some(i) => i,
            None => {
                self.topics.push(record.topic.to_owned());
                self.topics.len() - 1
            }
        };
        let topic = u16::try_from(topic).unwrap_or(u16::MAX);
        let state = self
            .order
            .entry((change.table, change.key.clone()))
            .or_default();
        if !state.seen.insert(revision) {
            return; // a redelivered change
        }
        match state
            .tips
            .iter_mut()
            .find(|(t, p, _)| *t == topic && *p == record.partition)
        {
            Some((_, _, tip)) => {
                if revision < *tip {
                    let tip = *tip;
                    findings.violation(Check::Order, "lower-revision", || {
                        (
                            format!("{} key {}", record.topic, change.key),
                            format!(
                                "partition {} offset {}: a change of {} to revision {revision} \
                                 after revision {tip}",
                                record.partition,
                                record.offset,
                                change.table.name()
                            ),
                        )
                    });
                }
                *tip = (*tip).max(revision);
            }
            None => state.tips.push((topic, record.partition, revision)),
        }
    }

    fn judge_stock(&mut self, sku: &str, now: StockState, findings: &mut Findings) {
        if let Some(row) = self.stock_rows.get(sku)
            && row.revision == now.revision
            && *row != now
        {
            findings.violation(Check::Stock, "changed-without-revision", || {
                (
                    format!("sku {sku}"),
                    format!(
                        "revision {}: the change event says available {} reserved {}, the row \
                         says available {} reserved {}",
                        now.revision, now.available, now.reserved, row.available, row.reserved
                    ),
                )
            });
        }
        let Some(before) = self.stock.get(sku).copied() else {
            self.stock.insert(sku.to_owned(), now);
            return;
        };
        if now.revision == before.revision && now != before {
            findings.violation(Check::Stock, "changed-without-revision", || {
                (
                    format!("sku {sku}"),
                    format!(
                        "two changes at revision {}: available {} reserved {}, then available {} \
                         reserved {}",
                        now.revision,
                        before.available,
                        before.reserved,
                        now.available,
                        now.reserved
                    ),
                )
            });
        } else if now.revision == before.revision + 1 && !before.balanced_step(now) {
            findings.violation(Check::Stock, "unbalanced-step", || {
                unbalanced(sku, before, now)
            });
        }
        if now.revision >= before.revision {
            self.stock.insert(sku.to_owned(), now);
        }
    }
}

/// The example for a step that created or destroyed units.
pub fn unbalanced(sku: &str, before: StockState, now: StockState) -> (String, String) {
    (
        format!("sku {sku}"),
        format!(
            "revision {} → {}: available {} → {}, reserved {} → {}: neither a set (reserved \
             unchanged) nor a move (available + reserved unchanged, {} → {})",
            before.revision,
            now.revision,
            before.available,
            now.available,
            before.reserved,
            now.reserved,
            before.available + before.reserved,
            now.available + now.reserved
        ),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn change(table: &str, op: &str, row: &Value) -> Vec<u8> {
        let (before, after) = if op == "d" {
            (row.clone(), Value::Null)
        } else {
            (Value::Null, row.clone())
        };
        json!({"before": before, "after": after, "op": op,
               "source": {"table": table, "ts_ms": 1, "lsn": 5}})
        .to_string()
        .into_bytes()
    }

    fn feed(
        cdc: &mut Cdc,
        findings: &mut Findings,
        (partition, offset): (i32, i64),
        payload: &[u8],
    ) {
        cdc.ingest(
            &Record {
                topic: "cdc.inventory.public.stock",
                partition,
                offset,
                key: None,
                headers: &[],
                payload,
            },
            findings,
        );
    }

    fn stock(revision: i64, available: i64, reserved: i64) -> Vec<u8> {
        change(
            "stock",
            "u",
            &json!({"sku": "S", "available": available, "reserved": reserved, "revision": revision}),
        )
    }

    #[test]
    fn changes_decode_with_key_and_revision() {
        let c = decode(&change(
            "order_items",
            "c",
            &json!({"order_id": "o", "line_no": 2}),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(
            (c.table, c.op, c.key.as_str(), c.revision),
            (Table::OrderItems, Op::Upsert, "o/2", None)
        );
        let d = decode(&change("orders", "d", &json!({"id": "o"})))
            .unwrap()
            .unwrap();
        assert_eq!((d.op, d.revision), (Op::Delete, None));
        assert_eq!(decode(b"").unwrap(), None);
        assert_eq!(decode(&change("other", "c", &json!({}))).unwrap(), None);
        assert!(decode(b"{").is_err());
        assert!(
            decode(&change("orders", "u", &json!({"id": "o"})))
                .unwrap_err()
                .contains("revision")
        );
    }

    #[test]
    fn stock_steps_are_sets_or_moves() {
        let mut cdc = Cdc::default();
        let mut findings = Findings::new(&Check::ALL, 3);
        feed(&mut cdc, &mut findings, (0, 0), &stock(1, 10, 0)); // inserted
        feed(&mut cdc, &mut findings, (0, 1), &stock(2, 8, 2)); // reserved 2
        feed(&mut cdc, &mut findings, (0, 2), &stock(3, 20, 2)); // set to 20
        feed(&mut cdc, &mut findings, (0, 3), &stock(4, 22, 0)); // released 2
        feed(&mut cdc, &mut findings, (0, 3), &stock(4, 22, 0)); // redelivered
        assert_eq!(findings.violations(), 0, "{:?}", findings.found);
        feed(&mut cdc, &mut findings, (0, 4), &stock(5, 21, 3)); // units from nowhere
        assert_eq!(findings.found[&Check::Stock].kinds["unbalanced-step"], 1);
        feed(&mut cdc, &mut findings, (0, 5), &stock(5, 25, 3)); // same revision, new numbers
        assert_eq!(
            findings.found[&Check::Stock].kinds["changed-without-revision"],
            1
        );
        feed(&mut cdc, &mut findings, (0, 6), &stock(9, 1, 1)); // a gap: not judged
        assert_eq!(findings.count(Check::Stock), 2);
        feed(&mut cdc, &mut findings, (0, 7), &stock(8, 1, 1)); // going back: check 4
        assert_eq!(findings.count(Check::Order), 1);
    }

    #[test]
    fn the_row_read_must_match_its_change_at_the_same_revision() {
        let mut cdc = Cdc::default();
        cdc.stock_rows.insert(
            "S".to_owned(),
            StockState {
                revision: 2,
                available: 8,
                reserved: 2,
            },
        );
        let mut findings = Findings::new(&Check::ALL, 3);
        feed(&mut cdc, &mut findings, (0, 0), &stock(2, 9, 2));
        assert_eq!(
            findings.found[&Check::Stock].kinds["changed-without-revision"],
            1
        );
    }

    #[test]
    fn suspects_learn_what_the_projection_consumed() {
        let mut cdc = Cdc::default();
        cdc.positions
            .insert(("cdc.inventory.public.stock".to_owned(), 0), 2);
        cdc.suspects
            .insert((Table::Stock, "S".to_owned()), Seen::default());
        let mut findings = Findings::new(&Check::ALL, 3);
        feed(&mut cdc, &mut findings, (0, 0), &stock(1, 10, 0));
        feed(&mut cdc, &mut findings, (0, 1), &stock(2, 9, 1));
        feed(&mut cdc, &mut findings, (0, 2), &stock(3, 8, 2));
        let seen = cdc.suspects[&(Table::Stock, "S".to_owned())];
        assert_eq!(
            seen,
            Seen {
                any: true,
                last_is_delete: false,
                consumed_row: true,
                consumed_delete: false,
                consumed_revision: Some(2)
            }
        );
        feed(
            &mut cdc,
            &mut findings,
            (0, 3),
            &change("stock", "d", &json!({"sku": "S"})),
        );
        let seen = cdc.suspects[&(Table::Stock, "S".to_owned())];
        assert!(seen.last_is_delete && !seen.consumed_delete);
    }
}
