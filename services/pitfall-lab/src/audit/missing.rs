//! Check 1: committed changes without their event.
//!
//! A row's revision counts its changes, and every change emits one event carrying the
//! revision it produced (the outbox row is written in the change's transaction). So a row at
//! revision r needs, for each of 1..=r, an event with that revision on its topic. One still in
//! the outbox (`published_at IS NULL`) is in flight; a parked one waits for an operator. The
//! topic is read up to watermarks taken *after* the database, and the relay marks a row
//! published only once Kafka acknowledged it, so a row published at the snapshot is on the
//! topic that was read. (With `PUBLISH_MODE=direct` there is no outbox: an event produced a
//! moment after its commit is found by the next attempt of `--settle`.)
//!
//! When retention has deleted the oldest records of the topic, an event not found may have
//! expired: those revisions are counted in a note, not as violations.
//!
//! A status reached with too low a revision (a CONFIRMED order at revision 1) is a change
//! that bumped no revision: it cannot have had an event of its own either.

use super::events::Side;
use super::report::{Check, Findings};

/// Revisions looked at per row at most (a corrupt revision must not loop for ever).
const MAX_REVISIONS: i64 = 10_000;

/// Runs check 1 on one side.
pub fn check(side: Side<'_>, findings: &mut Findings) {
    let noun = side.aggregate.noun;
    let topic = &side.topic.name;
    let mut expired = 0;
    for (id, state) in side.rows {
        let key = id.to_string();
        let events = side.topic.aggregates.get(&key);
        let pending = side.pending.get(&key);
        for revision in 1..=state.revision.min(MAX_REVISIONS) {
            if events.is_some_and(|a| a.at(revision).next().is_some()) {
                continue;
            }
            match pending.and_then(|p| p.iter().find(|p| p.revision == revision)) {
                Some(p) if p.parked => {
                    findings.stuck("outbox rows parked by the relay (make outbox-parked)", 1);
                }
                Some(_) => findings.in_flight("events in an outbox, not published yet", 1),
                None if side.truncated => expired += 1,
                None => findings.violation(Check::MissingEvents, "no-event", || {
                    (
                        format!("{noun} {id}"),
                        format!(
                            "{} at revision {}: no event with revision {revision} on {topic}, \
                             and none waiting in the outbox",
                            state.status, state.revision
                        ),
                    )
                }),
            }
        }
        if let Some((lowest, _)) = side.aggregate.revisions_for(state.status)
            && state.revision < lowest
        {
            findings.violation(Check::MissingEvents, "revision-not-bumped", || {
                (
                    format!("{noun} {id}"),
                    format!(
                        "{} at revision {}: reaching {} takes {lowest} changes, so a change \
                         bumped no revision and has no event of its own",
                        state.status, state.revision, state.status
                    ),
                )
            });
        }
    }
    if expired > 0 {
        findings.note(format!(
            "{expired} {noun} revisions have no event on {topic}, which no longer holds its \
             oldest records (retention): not judged"
        ));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use uuid::Uuid;

    use super::*;
    use crate::audit::contract::ORDER;
    use crate::audit::events::EventTopic;
    use crate::audit::events::tests::{contract_headers, feed};
    use crate::audit::rows::{Pending, State};

    const O: &str = "0190a1b2-0000-7000-8000-000000000001";
    const E1: &str = "0190a1b2-0000-7000-8000-0000000000e1";

    #[test]
    fn every_revision_needs_an_event_or_an_outbox_row() {
        let mut topic = EventTopic::new("order.events");
        let mut findings = Findings::new(&[Check::MissingEvents], 3);
        feed(
            &mut topic,
            &mut findings,
            (0, 0),
            O,
            &contract_headers(E1, O, "1", "OrderPlaced"),
            9,
        );
        let id = Uuid::parse_str(O).unwrap();
        let rows = HashMap::from([(
            id,
            State {
                status: "CONFIRMED",
                revision: 2,
            },
        )]);
        let none = HashMap::new();
        let side = Side {
            aggregate: &ORDER,
            rows: &rows,
            topic: &topic,
            pending: &none,
            truncated: false,
        };
        check(side, &mut findings);
        assert_eq!(findings.count(Check::MissingEvents), 1);
        assert!(
            findings.found[&Check::MissingEvents].examples[0]
                .detail
                .contains("revision 2")
        );
        // Waiting in the outbox: in flight.
        let mut findings = Findings::new(&[Check::MissingEvents], 3);
        let pending = HashMap::from([(
            O.to_owned(),
            vec![Pending {
                revision: 2,
                id: Uuid::nil(),
                parked: false,
            }],
        )]);
        check(
            Side {
                pending: &pending,
                ..side
            },
            &mut findings,
        );
        assert_eq!(findings.violations(), 0);
        assert_eq!(findings.in_flight.values().sum::<u64>(), 1);
        // Retention deleted the topic's oldest records: not judged, said in a note.
        let mut findings = Findings::new(&[Check::MissingEvents], 3);
        check(
            Side {
                truncated: true,
                ..side
            },
            &mut findings,
        );
        assert_eq!(findings.violations(), 0);
        assert!(
            findings.notes[0].contains("retention"),
            "{:?}",
            findings.notes
        );
    }

    #[test]
    fn a_status_without_its_revisions_is_a_change_without_event() {
        let topic = EventTopic::new("order.events");
        let rows = HashMap::from([(
            Uuid::from_u128(1),
            State {
                status: "CONFIRMED",
                revision: 1,
            },
        )]);
        let none = HashMap::new();
        let mut findings = Findings::new(&[Check::MissingEvents], 3);
        check(
            Side {
                aggregate: &ORDER,
                rows: &rows,
                topic: &topic,
                pending: &none,
                truncated: false,
            },
            &mut findings,
        );
        let kinds = &findings.found[&Check::MissingEvents].kinds;
        assert_eq!((kinds["no-event"], kinds["revision-not-bumped"]), (1, 1));
    }
}
