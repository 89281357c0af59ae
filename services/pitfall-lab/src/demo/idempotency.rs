//! Pitfall 5: one event delivered again. An order of one unit is placed and confirmed; then its
//! `OrderPlaced` record is produced three more times onto `order.events`, exactly as it was
//! (same key, value and headers, so the same event id), as a retrying producer or a rewound
//! relay does. Naive: inventory-service with `IDEMPOTENCY=off` applies every delivery and
//! reserves the unit four times. Fixed (default): it remembers the event id in the handler's
//! transaction and reserves it once.
//!
//! The copies count as handled once inventory-service's consumer group has committed an offset
//! past the last one (offsets are committed only after the handler's transaction).

use std::time::{Duration, Instant};

use rdkafka::Message as _;
use serde_json::json;

use super::api::order_body;
use super::summary::{Outcome, Verdict};
use super::system::{INVENTORY, Need, ORDER, System};
use super::topic::{self, ORDER_EVENTS, Until};
use super::{BoxError, say};

/// Extra deliveries of the same record.
const REDELIVERIES: usize = 3;

/// One mode's result.
#[derive(Debug)]
struct Count {
    /// Units reserved for the order once it was confirmed.
    before: i64,
    /// After the redeliveries were handled.
    after: i64,
    /// inventory-service's `consumer_duplicates_total` went up by this much.
    duplicates_skipped: f64,
    /// The copies were seen handled (the group's offset passed them) in time.
    handled: bool,
}

/// Runs pitfall 5.
pub async fn run(system: &System) -> Result<Outcome, BoxError> {
    let needs = [
        Need::Component("postgres"),
        Need::Component("kafka"),
        Need::Service(ORDER),
        Need::Service(INVENTORY),
    ];
    if let Err(reason) = system.require(&needs).await {
        return Ok(Outcome::skipped(5, &reason));
    }
    say("naive: inventory-service applies every delivery (IDEMPOTENCY=off)");
    system
        .set_modes(INVENTORY, &[("IDEMPOTENCY", "off")])
        .await?;
    let naive = redeliver(system, "naive").await?;
    say(
        "fixed: inventory-service dedupes by event id in the handler's transaction (IDEMPOTENCY=on, default)",
    );
    system.set_modes(INVENTORY, &[]).await?;
    let fixed = redeliver(system, "fixed").await?;

    let deliveries = REDELIVERIES + 1;
    let verdict = Verdict::of(naive.after > 1, fixed.after == 1 && fixed.handled);
    let handled = |c: &Count| {
        if c.handled {
            ""
        } else {
            " (copies not all handled in time)"
        }
    };
    Ok(Outcome::new(
        5,
        verdict,
        format!(
            "IDEMPOTENCY=off: {} reserved after {deliveries} deliveries{}",
            units(naive.after),
            handled(&naive)
        ),
        format!(
            "dedupe by event id: {} reserved, {} duplicates skipped{}",
            units(fixed.after),
            fixed.duplicates_skipped,
            handled(&fixed)
        ),
        format!(
            "units reserved for 1 ordered: {} vs {}",
            naive.after, fixed.after
        ),
        json!({
            "redeliveries": REDELIVERIES,
            "naive": {"reserved_before": naive.before, "reserved_after": naive.after, "duplicates_skipped": naive.duplicates_skipped, "handled": naive.handled},
            "fixed": {"reserved_before": fixed.before, "reserved_after": fixed.after, "duplicates_skipped": fixed.duplicates_skipped, "handled": fixed.handled},
        }),
    ))
}

/// Places and confirms an order of one unit of a fresh SKU, produces its `OrderPlaced` again
/// [`REDELIVERIES`] times, waits until they are handled and reads the SKU's reserved units.
async fn redeliver(system: &System, mode: &str) -> Result<Count, BoxError> {
    let user = format!("demo-{}-p5-{mode}", system.run_id);
    let sku = format!("DEMO-{}-P5-{}", system.run_id, mode.to_uppercase());
    system.api.set_stock(&sku, 100).await?;
    let marks = topic::marks(&system.stack, ORDER_EVENTS).await?;
    let placed = system
        .api
        .place(&user, &order_body(&[(&sku, 1)]), None)
        .await?;
    let id = placed.body["id"]
        .as_str()
        .filter(|_| placed.status.as_u16() == 201)
        .ok_or_else(|| format!("POST /orders: HTTP {} {}", placed.status, placed.body))?
        .to_owned();
    let (status, _) = system
        .api
        .wait_status(&user, &id, &super::api::SETTLED, Duration::from_secs(60))
        .await?;
    let (_, before) = system.api.stock(&sku).await?;
    say(&format!(
        "{mode}: order {id} of 1 x {sku} is {status}; {} reserved",
        units(before)
    ));

    let wanted = id.clone();
    let records = topic::read(
        &system.stack,
        &marks,
        move |m| topic::is_event(m, "OrderPlaced", &wanted),
        Until {
            done: Box::new(|kept| !kept.is_empty()),
            quiet: None,
            timeout: Duration::from_secs(30),
        },
    )
    .await?;
    let original = records
        .first()
        .ok_or_else(|| format!("the OrderPlaced of order {id} is not on order.events"))?;
    let event_id = topic::header(original, "event-id").unwrap_or_default();
    let duplicates_before = system
        .api
        .metric(&system.api.inventory, "consumer_duplicates_total")
        .await
        .unwrap_or(0.0);
    let copies = topic::republish(&system.stack, original, REDELIVERIES).await?;
    say(&format!(
        "{mode}: produced the same record (key {id}, event-id {event_id}, same headers and value) {REDELIVERIES} more times: partition {}, offsets {}",
        original.partition(),
        copies
            .iter()
            .map(|(_, o)| o.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));

    let group = system
        .found_var(INVENTORY, "CONSUMER_GROUP")
        .unwrap_or_else(|| INVENTORY.to_owned());
    let (partition, last) = copies.last().copied().unwrap_or((original.partition(), 0));
    let started = Instant::now();
    let handled = topic::wait_committed_past(
        &system.stack,
        &group,
        ORDER_EVENTS,
        partition,
        last,
        Duration::from_secs(60),
    )
    .await?;
    let (_, after) = system.api.stock(&sku).await?;
    let duplicates_skipped = system
        .api
        .metric(&system.api.inventory, "consumer_duplicates_total")
        .await
        .map(|v| v - duplicates_before)
        .unwrap_or(0.0);
    say(&format!(
        "{mode}: {} after {:.1} s: {} reserved for the 1 ordered ({duplicates_skipped} duplicates skipped)",
        if handled {
            "the copies are handled (the group's offset is past them)"
        } else {
            "the copies were not seen handled"
        },
        started.elapsed().as_secs_f64(),
        units(after)
    ));
    Ok(Count {
        before,
        after,
        duplicates_skipped,
        handled,
    })
}

/// `1 unit`, `4 units`.
fn units(n: i64) -> String {
    if n == 1 {
        "1 unit".to_owned()
    } else {
        format!("{n} units")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_counted_in_words() {
        assert_eq!(units(1), "1 unit");
        assert_eq!(units(4), "4 units");
        assert_eq!(units(0), "0 units");
    }
}
