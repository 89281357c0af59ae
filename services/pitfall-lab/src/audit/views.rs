//! Check 6: projection-service's views against their source rows.
//!
//! The projection database is read *before* the sources, so a view can never rightly be
//! ahead of its source. Per row, with the source's `revision`:
//! - same revision: every column must be equal;
//! - view behind (or missing, or left after its source row was deleted): in flight while the
//!   change it waits for has not been consumed by projection-service; a violation once it has
//!   (the consumer's position, from Kafka and from its `consumer_offsets` table, is past the
//!   change on the CDC topic) or when no change of the row was ever on the topic;
//! - `customer_summary` must equal the aggregation of the orders as the view holds them (the
//!   source row when the view is at its revision, the view row while it lags), and `sku_orders`
//!   the aggregation of the order lines in the view.

use std::collections::{HashMap, HashSet};

use super::cdc::{Cdc, Seen};
use super::contract::Table;
use super::report::{Check, Findings};
use super::rows::{LineRow, OrderRow, ReservationViewRow, SkuOrders, StockRow, Summary};

/// Why a view row needs the CDC topics to be judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suspect {
    /// The view holds an older revision.
    Behind {
        /// The view's revision.
        view: i64,
        /// The source's.
        source: i64,
    },
    /// The source row has no view row.
    Missing,
    /// The view row has no source row.
    Extra,
}

/// The view check's state while the rows stream by.
#[derive(Debug, Default)]
pub struct Views {
    /// Rows to judge once the CDC topics are read.
    pub suspects: HashMap<(Table, String), Suspect>,
    /// `view_tombstones`: `(source table, key)` of deleted source rows.
    pub tombstones: HashSet<(String, String)>,
    summaries: HashMap<String, Summary>,
    skus: HashMap<String, SkuOrders>,
}

fn differing<const N: usize>(columns: [(&'static str, bool); N]) -> Vec<&'static str> {
    columns
        .into_iter()
        .filter(|(_, same)| !same)
        .map(|(c, _)| c)
        .collect()
}

impl Views {
    /// One source row against its view row (`None` for an absent one), with a revision.
    fn revisioned(
        &mut self,
        table: Table,
        key: String,
        revisions: (Option<i64>, Option<i64>),
        diff: impl FnOnce() -> Vec<&'static str>,
        findings: &mut Findings,
    ) {
        match revisions {
            (Some(source), Some(view)) if source == view => {
                let columns = diff();
                if !columns.is_empty() {
                    findings.violation(Check::Views, "differs", || {
                        (
                            format!("{} {key}", table.view()),
                            format!(
                                "at revision {source}, {} differ{} from {}",
                                columns.join(", "),
                                if columns.len() == 1 { "s" } else { "" },
                                table.name()
                            ),
                        )
                    });
                }
            }
            (Some(source), Some(view)) if view > source => {
                findings.violation(Check::Views, "ahead", || {
                    (
                        format!("{} {key}", table.view()),
                        format!(
                            "holds revision {view}, its source row in {} only {source}",
                            table.name()
                        ),
                    )
                });
            }
            (Some(source), Some(view)) => {
                self.suspects
                    .insert((table, key), Suspect::Behind { view, source });
            }
            (Some(_), None) => self.missing(table, key, findings),
            (None, Some(_)) => {
                self.suspects.insert((table, key), Suspect::Extra);
            }
            (None, None) => {}
        }
    }

    fn missing(&mut self, table: Table, key: String, findings: &mut Findings) {
        if self
            .tombstones
            .contains(&(table.name().to_owned(), key.clone()))
        {
            findings.violation(Check::Views, "tombstoned", || {
                (
                    format!("{} {key}", table.view()),
                    format!(
                        "the row exists in {} but the view keeps a tombstone for it: it will \
                         never be shown",
                        table.name()
                    ),
                )
            });
        } else {
            self.suspects.insert((table, key), Suspect::Missing);
        }
    }

    /// An order against its `order_view` row.
    pub fn order(
        &mut self,
        source: Option<&OrderRow>,
        view: Option<&OrderRow>,
        findings: &mut Findings,
    ) {
        let Some(id) = source.or(view).map(|r| r.id) else {
            return;
        };
        // What the summary was built from: the source row when the view is at its revision.
        let counted = match (source, view) {
            (Some(s), Some(v)) if s.revision == v.revision => Some(s),
            (_, v) => v,
        };
        if let Some(row) = counted {
            self.summaries
                .entry(row.user_id.clone())
                .or_default()
                .add(&row.status, row.total_cents);
        }
        self.revisioned(
            Table::Orders,
            id.to_string(),
            (source.map(|r| r.revision), view.map(|r| r.revision)),
            || {
                let (Some(s), Some(v)) = (source, view) else {
                    return Vec::new();
                };
                differing([
                    ("user_id", s.user_id == v.user_id),
                    ("customer_name", s.customer_name == v.customer_name),
                    ("customer_email", s.customer_email == v.customer_email),
                    ("currency", s.currency == v.currency),
                    ("status", s.status == v.status),
                    ("total_cents", s.total_cents == v.total_cents),
                    ("created_at", s.created_at == v.created_at),
                    ("updated_at", s.updated_at == v.updated_at),
                ])
            },
            findings,
        );
    }

    /// An order line against its `order_line_view` row (lines never change: no revision).
    pub fn line(
        &mut self,
        source: Option<&LineRow>,
        view: Option<&LineRow>,
        findings: &mut Findings,
    ) {
        if let Some(counted) = source.filter(|_| view.is_some()).or(view) {
            let sku = self.skus.entry(counted.sku.clone()).or_default();
            sku.order_lines += 1;
            sku.units_ordered += i64::from(counted.quantity);
        }
        match (source, view) {
            (Some(s), Some(v)) => {
                let columns = differing([
                    ("sku", s.sku == v.sku),
                    ("quantity", s.quantity == v.quantity),
                    ("unit_price_cents", s.unit_price_cents == v.unit_price_cents),
                ]);
                if !columns.is_empty() {
                    findings.violation(Check::Views, "differs", || {
                        (
                            format!("order_line_view {}", s.key()),
                            format!("{} differ from order_items", columns.join(", ")),
                        )
                    });
                }
            }
            (Some(s), None) => self.missing(Table::OrderItems, s.key(), findings),
            (None, Some(v)) => {
                self.suspects
                    .insert((Table::OrderItems, v.key()), Suspect::Extra);
            }
            (None, None) => {}
        }
    }

    /// A stock row against its `stock_view` row.
    pub fn stock(
        &mut self,
        source: Option<&StockRow>,
        view: Option<&StockRow>,
        findings: &mut Findings,
    ) {
        let Some(sku) = source.or(view).map(|r| r.sku.clone()) else {
            return;
        };
        self.revisioned(
            Table::Stock,
            sku,
            (source.map(|r| r.revision), view.map(|r| r.revision)),
            || {
                let (Some(s), Some(v)) = (source, view) else {
                    return Vec::new();
                };
                differing([
                    ("available", s.available == v.available),
                    ("reserved", s.reserved == v.reserved),
                    ("updated_at", s.updated_at == v.updated_at),
                ])
            },
            findings,
        );
    }

    /// A reservation against its `reservation_view` row.
    pub fn reservation(
        &mut self,
        source: Option<&ReservationViewRow>,
        view: Option<&ReservationViewRow>,
        findings: &mut Findings,
    ) {
        let Some(id) = source.or(view).map(|r| r.order_id) else {
            return;
        };
        self.revisioned(
            Table::Reservations,
            id.to_string(),
            (source.map(|r| r.revision), view.map(|r| r.revision)),
            || {
                let (Some(s), Some(v)) = (source, view) else {
                    return Vec::new();
                };
                differing([
                    ("status", s.status == v.status),
                    ("reason", s.reason == v.reason),
                    ("updated_at", s.updated_at == v.updated_at),
                ])
            },
            findings,
        );
    }

    /// `customer_summary` as read, against the orders (call after every order went by).
    pub fn summaries(&mut self, actual: &HashMap<String, Summary>, findings: &mut Findings) {
        let expected = std::mem::take(&mut self.summaries);
        compare_totals("customer_summary", &expected, actual, findings, |s| {
            format!(
                "orders {} (placed {}, confirmed {}, rejected {}, cancelled {}), spent {}",
                s.orders, s.placed, s.confirmed, s.rejected, s.cancelled, s.spent_cents
            )
        });
    }

    /// `sku_orders` as read, against the order lines (call after every line went by).
    pub fn sku_orders(&mut self, actual: &HashMap<String, SkuOrders>, findings: &mut Findings) {
        let expected = std::mem::take(&mut self.skus);
        compare_totals("sku_orders", &expected, actual, findings, |s| {
            format!("{} lines, {} units", s.order_lines, s.units_ordered)
        });
    }

    /// Judges the suspects with what the CDC topics said.
    pub fn resolve(&self, cdc: &Cdc, findings: &mut Findings) {
        let read_any = cdc.records > 0;
        for ((table, key), suspect) in &self.suspects {
            let seen: Seen = cdc
                .suspects
                .get(&(*table, key.clone()))
                .copied()
                .unwrap_or_default();
            let subject = || format!("{} {key}", table.view());
            match suspect {
                Suspect::Behind { view, source } => {
                    if let Some(consumed) = seen.consumed_revision.filter(|c| c > view) {
                        findings.violation(Check::Views, "behind", || {
                            (
                                subject(),
                                format!(
                                    "holds revision {view} although projection-service consumed \
                                     the change to revision {consumed} (source: {source})"
                                ),
                            )
                        });
                    } else {
                        findings
                            .in_flight("view rows behind their source (change not applied yet)", 1);
                    }
                }
                Suspect::Missing => {
                    if seen.consumed_row && !seen.consumed_delete {
                        findings.violation(Check::Views, "missing", || {
                            (
                                subject(),
                                format!(
                                    "no view row although projection-service consumed the {} \
                                     row's change",
                                    table.name()
                                ),
                            )
                        });
                    } else {
                        findings.in_flight("source rows not in their view yet", 1);
                    }
                }
                Suspect::Extra => {
                    if read_any && !seen.any {
                        findings.violation(Check::Views, "without-source", || {
                            (
                                subject(),
                                format!(
                                    "no {} row, and no change of it was ever on a CDC topic",
                                    table.name()
                                ),
                            )
                        });
                    } else if seen.consumed_delete {
                        findings.violation(Check::Views, "delete-not-applied", || {
                            (
                                subject(),
                                format!(
                                    "the {} row was deleted and projection-service consumed the \
                                     delete, but the view row is still there",
                                    table.name()
                                ),
                            )
                        });
                    } else {
                        findings.in_flight(
                            "view rows of deleted source rows (delete not applied yet)",
                            1,
                        );
                    }
                }
            }
        }
    }
}

fn compare_totals<T: Copy + Default + PartialEq>(
    view: &str,
    expected: &HashMap<String, T>,
    actual: &HashMap<String, T>,
    findings: &mut Findings,
    show: impl Fn(&T) -> String,
) {
    let keys: HashSet<&String> = expected.keys().chain(actual.keys()).collect();
    let mut keys: Vec<&String> = keys.into_iter().collect();
    keys.sort();
    for key in keys {
        let want = expected.get(key).copied().unwrap_or_default();
        let have = actual.get(key).copied().unwrap_or_default();
        if want != have {
            findings.violation(Check::Views, "totals-differ", || {
                (
                    format!("{view} {key}"),
                    format!("holds {}; its rows add up to {}", show(&have), show(&want)),
                )
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use uuid::Uuid;

    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_780_000_000 + s, 0).unwrap()
    }

    fn order(id: u128, status: &str, revision: i64) -> OrderRow {
        OrderRow {
            id: Uuid::from_u128(id),
            user_id: "alice".to_owned(),
            customer_name: "Ada".to_owned(),
            customer_email: "ada@example.com".to_owned(),
            currency: "EUR".to_owned(),
            status: status.to_owned(),
            total_cents: 500,
            revision,
            created_at: at(0),
            updated_at: at(revision),
        }
    }

    fn line(order: u128, line_no: i32, quantity: i32) -> LineRow {
        LineRow {
            order_id: Uuid::from_u128(order),
            line_no,
            sku: "SKU-1".to_owned(),
            quantity,
            unit_price_cents: 250,
        }
    }

    #[test]
    fn equal_rows_pass_and_a_tampered_column_is_named() {
        let mut views = Views::default();
        let mut findings = Findings::new(&[Check::Views], 3);
        let src = order(1, "CONFIRMED", 2);
        views.order(Some(&src), Some(&src.clone()), &mut findings);
        assert_eq!(findings.violations(), 0);
        let mut tampered = src.clone();
        tampered.status = "CANCELLED".to_owned();
        views.order(Some(&src), Some(&tampered), &mut findings);
        let found = &findings.found[&Check::Views];
        assert_eq!(found.kinds["differs"], 1);
        assert!(
            found.examples[0].detail.contains("status differs"),
            "{:?}",
            found.examples
        );
        // The summary counts the source row, not the tampered view.
        let mut summary = Summary::default();
        summary.add("CONFIRMED", 500);
        summary.add("CONFIRMED", 500);
        views.summaries(
            &HashMap::from([("alice".to_owned(), summary)]),
            &mut findings,
        );
        assert_eq!(findings.count(Check::Views), 1);
    }

    #[test]
    fn lagging_rows_are_in_flight_until_their_change_was_consumed() {
        let mut views = Views::default();
        let mut findings = Findings::new(&[Check::Views], 3);
        views.order(
            Some(&order(1, "CONFIRMED", 2)),
            Some(&order(1, "PLACED", 1)),
            &mut findings,
        );
        views.order(Some(&order(2, "PLACED", 1)), None, &mut findings);
        views.order(None, Some(&order(3, "PLACED", 1)), &mut findings);
        views.order(
            Some(&order(4, "PLACED", 1)),
            Some(&order(4, "CONFIRMED", 2)),
            &mut findings,
        );
        assert_eq!(findings.found[&Check::Views].kinds["ahead"], 1);
        assert_eq!(views.suspects.len(), 3);
        // Nothing consumed yet: all in flight (the extra row had a change on the topic).
        let mut cdc = Cdc::default();
        cdc.records = 5;
        cdc.suspects.insert(
            (Table::Orders, Uuid::from_u128(3).to_string()),
            Seen {
                any: true,
                ..Seen::default()
            },
        );
        views.resolve(&cdc, &mut findings);
        assert_eq!(findings.count(Check::Views), 1);
        assert_eq!(findings.in_flight.values().sum::<u64>(), 3);
        // Consumed: violations.
        let mut findings = Findings::new(&[Check::Views], 3);
        let consumed = |revision| Seen {
            any: true,
            consumed_row: true,
            consumed_revision: Some(revision),
            ..Seen::default()
        };
        cdc.suspects
            .insert((Table::Orders, Uuid::from_u128(1).to_string()), consumed(2));
        cdc.suspects
            .insert((Table::Orders, Uuid::from_u128(2).to_string()), consumed(1));
        cdc.suspects.insert(
            (Table::Orders, Uuid::from_u128(3).to_string()),
            Seen::default(),
        );
        views.resolve(&cdc, &mut findings);
        let kinds = &findings.found[&Check::Views].kinds;
        assert_eq!(
            (kinds["behind"], kinds["missing"], kinds["without-source"]),
            (1, 1, 1)
        );
    }

    #[test]
    fn summaries_count_lagging_orders_as_the_view_holds_them() {
        let mut views = Views::default();
        let mut findings = Findings::new(&[Check::Views], 3);
        views.order(
            Some(&order(1, "CONFIRMED", 2)),
            Some(&order(1, "PLACED", 1)),
            &mut findings,
        );
        views.order(Some(&order(2, "PLACED", 1)), None, &mut findings);
        let mut held = Summary::default();
        held.add("PLACED", 500);
        views.summaries(&HashMap::from([("alice".to_owned(), held)]), &mut findings);
        assert_eq!(findings.violations(), 0);
        views.order(
            Some(&order(5, "PLACED", 1)),
            Some(&order(5, "PLACED", 1)),
            &mut findings,
        );
        views.summaries(&HashMap::new(), &mut findings);
        assert_eq!(findings.found[&Check::Views].kinds["totals-differ"], 1);
    }

    #[test]
    fn lines_and_sku_totals() {
        let mut views = Views::default();
        let mut findings = Findings::new(&[Check::Views], 3);
        views.line(Some(&line(1, 1, 2)), Some(&line(1, 1, 2)), &mut findings);
        views.line(Some(&line(1, 2, 3)), None, &mut findings);
        views.line(Some(&line(2, 1, 1)), Some(&line(2, 1, 4)), &mut findings);
        assert_eq!(findings.found[&Check::Views].kinds["differs"], 1);
        let actual = HashMap::from([(
            "SKU-1".to_owned(),
            SkuOrders {
                order_lines: 2,
                units_ordered: 3,
            },
        )]);
        views.sku_orders(&actual, &mut findings);
        assert_eq!(findings.count(Check::Views), 1, "{:?}", findings.found);
        views
            .tombstones
            .insert(("order_items".to_owned(), line(3, 1, 1).key()));
        views.line(Some(&line(3, 1, 1)), None, &mut findings);
        assert_eq!(findings.found[&Check::Views].kinds["tombstoned"], 1);
    }
}
