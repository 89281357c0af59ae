//! Pitfall 1: Kafka is stopped while orders are placed. order-service with `PUBLISH_MODE=direct`
//! commits each order and then produces its event, which expires in the producer's queue (5 s)
//! while the broker is away: the order is in the database, its `OrderPlaced` never reaches
//! `order.events`. In the default outbox mode the event is written with the order and the relay
//! sends it once Kafka is back.
//!
//! Counted from outside: the orders committed in the orders database for the mode's own user,
//! against the `OrderPlaced` records of those orders on `order.events` (read from the end
//! offsets taken before the burst by a consumer of the demo's own), once Kafka is back and the
//! topic has gone quiet.

use std::collections::{HashMap, HashSet};
use std::io::{Read as _, Seek as _};
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde_json::json;
use uuid::Uuid;

use super::api::{SETTLED, order_body};
use super::summary::{Outcome, Verdict};
use super::system::{INVENTORY, Need, ORDER, PROJECTION, System};
use super::topic::{self, ORDER_EVENTS, Until};
use super::{BoxError, poll, say};

/// Longer than the direct producer's delivery timeout (`message.timeout.ms`, 5 s): what it
/// queued while the broker was away has expired by the time Kafka is back.
const OUTAGE_AFTER_LAST_ORDER: Duration = Duration::from_secs(8);

/// How long the probe after the outages waits at each stage.
const PROBE_WAIT: Duration = Duration::from_secs(30);

/// Concurrent `POST /orders` during the burst (each retried while the service answers 503).
const CONCURRENCY: usize = 10;

/// A mode's count.
#[derive(Debug)]
struct Count {
    placed: usize,
    committed: usize,
    delivered: usize,
    outage_seconds: f64,
}

impl Count {
    fn lost(&self) -> usize {
        self.committed - self.delivered
    }
}

/// Runs pitfall 1.
pub async fn run(system: &System, orders: usize) -> Result<Outcome, BoxError> {
    let needs = [
        Need::Component("postgres"),
        Need::Component("kafka"),
        Need::Service(ORDER),
    ];
    if let Err(reason) = system.require(&needs).await {
        return Ok(Outcome::skipped(1, &reason));
    }
    let orders = orders.max(1);
    // Where the services' logs stand, to tell afterwards what they said during the outages.
    let logs_from: HashMap<&'static str, u64> = [ORDER, INVENTORY, PROJECTION]
        .into_iter()
        .filter_map(|s| {
            let len = std::fs::metadata(system.log_of(s)?).ok()?.len();
            Some((s, len))
        })
        .collect();
    say("naive: order-service commits, then produces (PUBLISH_MODE=direct)");
    system
        .set_modes(ORDER, &[("PUBLISH_MODE", "direct")])
        .await?;
    let naive = burst(system, "naive", orders).await?;
    say("fixed: order-service writes the event to the outbox in the order's transaction (default)");
    system.set_modes(ORDER, &[]).await?;
    let fixed = burst(system, "fixed", orders).await?;

    let notes = resume_check(system, &logs_from).await?;

    let verdict = Verdict::of(naive.lost() > 0, fixed.lost() == 0 && fixed.committed > 0);
    let mut outcome = Outcome::new(
        1,
        verdict,
        format!(
            "PUBLISH_MODE=direct: {} of {} committed orders have no event",
            naive.lost(),
            naive.committed
        ),
        format!(
            "outbox: {} of {} lost, all sent once Kafka was back",
            fixed.lost(),
            fixed.committed
        ),
        format!(
            "events lost in a {:.0} s Kafka outage: {} vs {}",
            naive.outage_seconds.max(fixed.outage_seconds),
            naive.lost(),
            fixed.lost()
        ),
        json!({
            "orders_per_mode": orders,
            "naive": {"placed": naive.placed, "committed": naive.committed, "delivered": naive.delivered, "lost": naive.lost(), "outage_seconds": naive.outage_seconds},
            "fixed": {"placed": fixed.placed, "committed": fixed.committed, "delivered": fixed.delivered, "lost": fixed.lost(), "outage_seconds": fixed.outage_seconds},
            "consumers_restarted_after_the_outage": notes.iter().map(|(s, _)| s).collect::<Vec<_>>(),
        }),
    );
    outcome.notes = notes.into_iter().map(|(_, note)| note).collect();
    Ok(outcome)
}

/// After the outages: a probe order must go through the whole system again (inventory-service
/// reserves, order-service confirms, projection-service's view has it). A service whose
/// consumer did not resume is named and restarted, so the demo leaves a working system and the
/// next steps can run; the note says so (it is a finding, not part of the pitfall).
async fn resume_check(
    system: &System,
    logs_from: &HashMap<&'static str, u64>,
) -> Result<Vec<(String, String)>, BoxError> {
    if system.require(&[Need::Service(INVENTORY)]).await.is_err() {
        return Ok(Vec::new());
    }
    let mut restarted = Vec::new();
    for attempt in 1..=2 {
        let user = format!("demo-{}-p1-probe", system.run_id);
        let sku = format!("DEMO-{}-P1-PROBE-{attempt}", system.run_id);
        system.api.set_stock(&sku, 1).await?;
        say(&format!(
            "checking the consumers resumed after the outage: a probe order of 1 x {sku}"
        ));
        let placed = system
            .api
            .place(&user, &order_body(&[(&sku, 1)]), None)
            .await?;
        let Some(id) = placed.body["id"].as_str().map(str::to_owned) else {
            return Err(format!("probe order: HTTP {} {}", placed.status, placed.body).into());
        };
        let (status, _) = system
            .api
            .wait_status(&user, &id, &SETTLED, PROBE_WAIT)
            .await?;
        let mut stuck = Vec::new();
        if status == "PLACED" {
            let (_, reserved) = system.api.stock(&sku).await?;
            stuck.push(if reserved == 0 {
                (INVENTORY, "the probe order was not reserved")
            } else {
                (ORDER, "the probe order was reserved but not confirmed")
            });
        } else if system.require(&[Need::Service(PROJECTION)]).await.is_ok() {
            let path = format!("/orders/{id}?min_revision=2&wait_ms=10000");
            let seen = poll(PROBE_WAIT, Duration::from_millis(500), || async {
                let (a, _) = system
                    .api
                    .get_timed(&system.api.projection, &path, &user)
                    .await
                    .ok()?;
                a.status.is_success().then_some(())
            })
            .await;
            if seen.is_none() {
                stuck.push((
                    PROJECTION,
                    "the confirmed probe order did not reach the view",
                ));
            }
        }
        if stuck.is_empty() {
            say(&format!(
                "the probe order is {status} and in the view: every consumer resumed"
            ));
            break;
        }
        for (service, what) in stuck {
            let timed_out = system
                .log_of(service)
                .and_then(|log| logs_from.get(service).map(|from| (log, *from)))
                .is_some_and(|(log, from)| log_mentions(log, from, "SESSTMOUT"));
            let note = format!(
                "{service} did not resume consuming after Kafka came back ({what} within {} s{}): the demo restarted it",
                PROBE_WAIT.as_secs(),
                if timed_out {
                    "; its log says its consumer group session timed out while the broker was down"
                } else {
                    ""
                }
            );
            say(&note);
            system.restart_as_is(service).await?;
            restarted.push((service.to_owned(), note));
        }
    }
    Ok(restarted)
}

/// Stops Kafka, places `orders` orders as the mode's own user, starts Kafka again, and counts.
async fn burst(system: &System, mode: &str, orders: usize) -> Result<Count, BoxError> {
    let user = format!("demo-{}-p1-{mode}", system.run_id);
    let sku = format!("DEMO-{}-P1-{}", system.run_id, mode.to_uppercase());
    // Stock, so the orders that do arrive are confirmed (inventory-service is optional here).
    if system.require(&[Need::Service(INVENTORY)]).await.is_ok() {
        system.api.set_stock(&sku, orders as i64).await?;
    }
    let marks = topic::marks(&system.stack, ORDER_EVENTS).await?;

    say(&format!(
        "{mode}: stopping Kafka (infra/stack.sh down kafka)"
    ));
    let down = Instant::now();
    system.stop_kafka().await?;
    say(&format!(
        "{mode}: Kafka is down; placing {orders} orders as {user} ({CONCURRENCY} at a time)"
    ));
    let body = order_body(&[(&sku, 1)]);
    let api = &system.api;
    let placed: Vec<bool> = futures::stream::iter(0..orders)
        .map(|_| async {
            api.place(&user, &body, None)
                .await
                .is_ok_and(|a| a.status.as_u16() == 201)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let placed = placed.into_iter().filter(|ok| *ok).count();
    say(&format!(
        "{mode}: {placed} of {orders} answered 201 Created while Kafka was down; waiting {} s (longer than the direct producer's 5 s delivery timeout)",
        OUTAGE_AFTER_LAST_ORDER.as_secs()
    ));
    tokio::time::sleep(OUTAGE_AFTER_LAST_ORDER).await;
    say(&format!(
        "{mode}: starting Kafka again (infra/stack.sh up kafka)"
    ));
    system.start_kafka().await?;
    let outage_seconds = down.elapsed().as_secs_f64();
    say(&format!(
        "{mode}: Kafka is back after {outage_seconds:.0} s"
    ));

    let committed = committed_orders(system, &user).await?;
    say(&format!(
        "{mode}: {} orders committed in the orders database; reading order.events for their OrderPlaced (until all are there or nothing new comes for 20 s)",
        committed.len()
    ));
    let wanted = committed.clone();
    let expected = committed.len();
    let records = topic::read(
        &system.stack,
        &marks,
        move |m| {
            topic::header(m, "event-type").as_deref() == Some("OrderPlaced")
                && topic::header(m, "aggregate-id").is_some_and(|id| wanted.contains(&id))
        },
        Until {
            done: Box::new(move |kept| {
                kept.iter()
                    .filter_map(|m| topic::header(m, "aggregate-id"))
                    .collect::<HashSet<_>>()
                    .len()
                    >= expected
            }),
            quiet: Some(Duration::from_secs(20)),
            timeout: Duration::from_secs(180),
        },
    )
    .await?;
    let delivered: HashSet<String> = records
        .iter()
        .filter_map(|m| topic::header(m, "aggregate-id"))
        .collect();
    let count = Count {
        placed,
        committed: committed.len(),
        delivered: delivered.len(),
        outage_seconds,
    };
    say(&format!(
        "{mode}: {} of {} committed orders have their OrderPlaced on order.events: {} lost",
        count.delivered,
        count.committed,
        count.lost()
    ));
    Ok(count)
}

/// Ids of `user`'s orders in order-service's database (read only).
async fn committed_orders(system: &System, user: &str) -> Result<HashSet<String>, BoxError> {
    let url = system.database_url(ORDER, "orders");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await?;
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM orders WHERE user_id = $1")
        .bind(user)
        .fetch_all(&pool)
        .await?;
    pool.close().await;
    Ok(ids.into_iter().map(|id| id.to_string()).collect())
}

/// Whether the log at `path` says `needle` after byte `from`.
fn log_mentions(path: &Path, from: u64, needle: &str) -> bool {
    let read = || -> std::io::Result<String> {
        let mut f = std::fs::File::open(path)?;
        f.seek(std::io::SeekFrom::Start(from))?;
        let mut text = String::new();
        f.take(256 * 1024 * 1024).read_to_string(&mut text)?;
        Ok(text)
    };
    read().is_ok_and(|text| text.contains(needle))
}
