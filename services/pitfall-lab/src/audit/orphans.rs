//! Check 2: events without a committed change.
//!
//! Only events that were on the topic *before* the database was read (below the high
//! watermarks taken first) are judged: their change, committed before they were published,
//! must be in the snapshot. For each such event of an aggregate:
//! - the aggregate type is the topic's and the event type one of its events;
//! - its row exists and has reached the event's revision;
//! - at the row's current revision, the event announces the row's status (`OrderConfirmed`
//!   for a CONFIRMED order); at revision 1, it is a creation (`OrderPlaced`).
//!
//! Unpublished outbox rows are held to the same rule within their own database: an outbox row
//! for a revision its aggregate never reached describes a change that did not happen. Records
//! without the contract's headers were reported while reading (`malformed`).

use uuid::Uuid;

use super::events::Side;
use super::report::{Check, Findings};

/// Runs check 2 on one side.
pub fn check(side: Side<'_>, findings: &mut Findings) {
    let contract = side.aggregate;
    let topic = side.topic;
    for (key, aggregate) in &topic.aggregates {
        let judged = || aggregate.events.iter().filter(|e| e.before_snapshot);
        if judged().next().is_none() {
            continue;
        }
        let subject = || format!("{} {key}", contract.noun);
        let aggregate_type = topic.types.name(aggregate.aggregate_type);
        if aggregate_type != contract.aggregate_type {
            for _ in judged() {
                findings.violation(Check::OrphanEvents, "unknown-aggregate-type", || {
                    (
                        format!("{} key {key}", topic.name),
                        format!(
                            "aggregate-type {aggregate_type}: {} carries {} events",
                            topic.name, contract.aggregate_type
                        ),
                    )
                });
            }
            continue;
        }
        let row = Uuid::parse_str(key).ok().and_then(|id| side.rows.get(&id));
        for event in judged() {
            let event_type = topic.types.name(event.event_type);
            let at = || {
                format!(
                    "{event_type} {} (revision {}, partition {} offset {})",
                    event.id, event.revision, event.partition, event.offset
                )
            };
            let Some(row) = row else {
                findings.violation(Check::OrphanEvents, "no-such-row", || {
                    (
                        subject(),
                        format!("{}: no such {} in the database", at(), contract.noun),
                    )
                });
                continue;
            };
            let problem = if !contract.knows(event_type) {
                Some((
                    "unknown-event-type",
                    format!("{}: not an event of {}", at(), contract.aggregate_type),
                ))
            } else if event.revision < 1 || event.revision > row.revision {
                Some((
                    "revision-not-reached",
                    format!(
                        "{}: the row is {} at revision {}",
                        at(),
                        row.status,
                        row.revision
                    ),
                ))
            } else if event.revision == row.revision
                && contract.event_for(row.status) != Some(event_type)
            {
                Some((
                    "not-the-row-status",
                    format!("{}: the row is {} at that revision", at(), row.status),
                ))
            } else if event.revision == 1 && !contract.creations.contains(&event_type) {
                Some((
                    "not-a-creation",
                    format!("{}: revision 1 creates the {}", at(), contract.noun),
                ))
            } else {
                None
            };
            if let Some((kind, detail)) = problem {
                findings.violation(Check::OrphanEvents, kind, || (subject(), detail));
            }
        }
    }
    for (key, rows) in side.pending {
        let row = Uuid::parse_str(key).ok().and_then(|id| side.rows.get(&id));
        for pending in rows {
            if row.is_none_or(|r| pending.revision > r.revision || pending.revision < 1) {
                findings.violation(Check::OrphanEvents, "outbox-without-change", || {
                    (
                        format!("{} {key}", contract.noun),
                        format!(
                            "outbox row {} (revision {}) for {}",
                            pending.id,
                            pending.revision,
                            row.map_or_else(
                                || format!("a {} that does not exist", contract.noun),
                                |r| format!("a row at revision {}", r.revision)
                            )
                        ),
                    )
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::audit::contract::ORDER;
    use crate::audit::events::EventTopic;
    use crate::audit::events::tests::{contract_headers, feed};
    use crate::audit::rows::{Pending, State};

    const O: &str = "0190a1b2-0000-7000-8000-000000000001";
    const X: &str = "0190a1b2-0000-7000-8000-00000000000f";
    const E1: &str = "0190a1b2-0000-7000-8000-0000000000e1";
    const E2: &str = "0190a1b2-0000-7000-8000-0000000000e2";
    const E3: &str = "0190a1b2-0000-7000-8000-0000000000e3";

    fn judge(events: &[(&str, &str, &str, &str)], snapshot_end: i64) -> Findings {
        let mut topic = EventTopic::new("order.events");
        let mut findings = Findings::new(&[Check::OrphanEvents], 3);
        for (i, (key, id, revision, kind)) in events.iter().enumerate() {
            feed(
                &mut topic,
                &mut findings,
                (0, i as i64),
                key,
                &contract_headers(id, key, revision, kind),
                snapshot_end,
            );
        }
        let rows = HashMap::from([(
            Uuid::parse_str(O).unwrap(),
            State {
                status: "CONFIRMED",
                revision: 2,
            },
        )]);
        let pending = HashMap::new();
        check(
            Side {
                aggregate: &ORDER,
                rows: &rows,
                topic: &topic,
                pending: &pending,
                truncated: false,
            },
            &mut findings,
        );
        findings
    }

    #[test]
    fn the_events_of_a_row_are_explained_by_it() {
        let f = judge(
            &[(O, E1, "1", "OrderPlaced"), (O, E2, "2", "OrderConfirmed")],
            9,
        );
        assert_eq!(f.violations(), 0);
    }

    #[test]
    fn events_no_row_explains() {
        let f = judge(
            &[
                (X, E1, "1", "OrderPlaced"),    // unknown order
                (O, E2, "3", "OrderCancelled"), // beyond the row
                (O, E3, "2", "OrderRejected"),  // not the row's status
            ],
            9,
        );
        let kinds = &f.found[&Check::OrphanEvents].kinds;
        assert_eq!(
            (
                kinds["no-such-row"],
                kinds["revision-not-reached"],
                kinds["not-the-row-status"]
            ),
            (1, 1, 1)
        );
    }

    #[test]
    fn events_newer_than_the_snapshot_are_not_judged() {
        let f = judge(&[(X, E1, "1", "OrderPlaced")], 0);
        assert_eq!(f.violations(), 0);
    }

    #[test]
    fn outbox_rows_for_changes_that_did_not_happen() {
        let topic = EventTopic::new("order.events");
        let rows = HashMap::from([(
            Uuid::parse_str(O).unwrap(),
            State {
                status: "PLACED",
                revision: 1,
            },
        )]);
        let row = |revision| Pending {
            revision,
            id: Uuid::nil(),
            parked: false,
        };
        let pending = HashMap::from([
            (O.to_owned(), vec![row(1), row(2)]),
            (X.to_owned(), vec![row(1)]),
        ]);
        let mut findings = Findings::new(&[Check::OrphanEvents], 3);
        check(
            Side {
                aggregate: &ORDER,
                rows: &rows,
                topic: &topic,
                pending: &pending,
                truncated: false,
            },
            &mut findings,
        );
        assert_eq!(findings.count(Check::OrphanEvents), 2);
    }
}
