//! Check 3: the same effect applied more than once. Deliveries may repeat (at-least-once);
//! effects may not. Two signatures of an effect applied twice, both read from the contract:
//! - on a topic, two *different* events (different event ids) for one aggregate revision: the
//!   change was made, or at least announced, twice (a redelivered `OrderPlaced` handled again
//!   emits a second `InventoryReserved` for the same reservation revision). Unpublished outbox
//!   rows count as the events they will be;
//! - in a table, a row whose revision is beyond what its status takes when every change is
//!   applied once (a RESERVED reservation at revision 2 reserved twice, a CONFIRMED order at
//!   revision 3 was confirmed twice).
//!
//! A second reservation of the same stock also shows in check 5 (`reserved` no longer matches
//! what the reservations hold).

use std::collections::BTreeMap;

use uuid::Uuid;

use super::events::Side;
use super::report::{Check, Findings};

/// Runs check 3 on one side.
pub fn check(side: Side<'_>, findings: &mut Findings) {
    let contract = side.aggregate;
    let topic = side.topic;
    let no_events = Vec::new();
    let keys = topic.aggregates.keys().chain(
        side.pending
            .keys()
            .filter(|k| !topic.aggregates.contains_key(*k)),
    );
    for key in keys {
        let events = topic.aggregates.get(key).map_or(&no_events, |a| &a.events);
        let mut by_revision: BTreeMap<i64, Vec<(Uuid, &str)>> = BTreeMap::new();
        for event in events {
            by_revision
                .entry(event.revision)
                .or_default()
                .push((event.id, topic.types.name(event.event_type)));
        }
        for pending in side.pending.get(key).into_iter().flatten() {
            let ids = by_revision.entry(pending.revision).or_default();
            if !ids.iter().any(|(id, _)| *id == pending.id) {
                ids.push((pending.id, "(in the outbox)"));
            }
        }
        for (revision, ids) in by_revision.iter().filter(|(_, ids)| ids.len() > 1) {
            findings.violation(Check::DuplicateEffects, "two-events-one-revision", || {
                let list: Vec<String> = ids.iter().map(|(id, t)| format!("{t} {id}")).collect();
                (
                    format!("{} {key}", contract.noun),
                    format!(
                        "{} different events for revision {revision} on {}: {}",
                        ids.len(),
                        topic.name,
                        list.join(", ")
                    ),
                )
            });
        }
    }
    for (id, state) in side.rows {
        if let Some((_, highest)) = contract.revisions_for(state.status)
            && state.revision > highest
        {
            findings.violation(Check::DuplicateEffects, "revision-beyond-status", || {
                (
                    format!("{} {id}", contract.noun),
                    format!(
                        "{} at revision {}: {} is revision {highest} when each change is \
                         applied once",
                        state.status, state.revision, state.status
                    ),
                )
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::audit::contract::RESERVATION;
    use crate::audit::events::EventTopic;
    use crate::audit::events::tests::{contract_headers, feed};
    use crate::audit::rows::{Pending, State};

    const O: &str = "0190a1b2-0000-7000-8000-000000000001";
    const E1: &str = "0190a1b2-0000-7000-8000-0000000000e1";
    const E2: &str = "0190a1b2-0000-7000-8000-0000000000e2";

    #[test]
    fn a_second_event_for_one_revision_and_a_row_changed_twice() {
        let mut topic = EventTopic::new("inventory.events");
        let mut findings = Findings::new(&[Check::DuplicateEffects], 3);
        feed(
            &mut topic,
            &mut findings,
            (0, 0),
            O,
            &contract_headers(E1, O, "1", "InventoryReserved"),
            9,
        );
        feed(
            &mut topic,
            &mut findings,
            (0, 1),
            O,
            &contract_headers(E1, O, "1", "InventoryReserved"),
            9,
        );
        let id = Uuid::parse_str(O).unwrap();
        let rows = HashMap::from([(
            id,
            State {
                status: "RESERVED",
                revision: 1,
            },
        )]);
        let none = HashMap::new();
        check(
            Side {
                aggregate: &RESERVATION,
                rows: &rows,
                topic: &topic,
                pending: &none,
                truncated: false,
            },
            &mut findings,
        );
        assert_eq!(
            findings.violations(),
            0,
            "a redelivered copy is not a second effect"
        );
        feed(
            &mut topic,
            &mut findings,
            (0, 2),
            O,
            &contract_headers(E2, O, "1", "InventoryReserved"),
            9,
        );
        let twice = HashMap::from([(
            id,
            State {
                status: "RESERVED",
                revision: 2,
            },
        )]);
        check(
            Side {
                aggregate: &RESERVATION,
                rows: &twice,
                topic: &topic,
                pending: &none,
                truncated: false,
            },
            &mut findings,
        );
        let kinds = &findings.found[&Check::DuplicateEffects].kinds;
        assert_eq!(
            (
                kinds["two-events-one-revision"],
                kinds["revision-beyond-status"]
            ),
            (1, 1)
        );
    }

    #[test]
    fn outbox_rows_count_as_the_events_they_will_be() {
        let topic = EventTopic::new("inventory.events");
        let rows = HashMap::new();
        let pending = HashMap::from([(
            O.to_owned(),
            vec![
                Pending {
                    revision: 1,
                    id: Uuid::from_u128(1),
                    parked: false,
                },
                Pending {
                    revision: 1,
                    id: Uuid::from_u128(2),
                    parked: false,
                },
            ],
        )]);
        let mut findings = Findings::new(&[Check::DuplicateEffects], 3);
        check(
            Side {
                aggregate: &RESERVATION,
                rows: &rows,
                topic: &topic,
                pending: &pending,
                truncated: false,
            },
            &mut findings,
        );
        assert_eq!(findings.count(Check::DuplicateEffects), 1);
    }
}
