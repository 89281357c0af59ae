//! Pitfall 2: an order's state read when its history is long. Naive: the order kept as an event
//! stream and its state rebuilt by replaying every event (`crate::event_store`); the read grows
//! with the history. Fixed, as the services do it: the order is a CRUD row (plus its lines),
//! one indexed read whatever happened to it before; and projection-service serves a read model
//! fed by CDC of those rows.
//!
//! The same histories and CRUD tables as `pitfall-lab bench event-sourcing`, at a small size,
//! on a scratch database of the demo's own (dropped afterwards); then one real order placed
//! through the API and read from projection-service's view.

use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::api::order_body;
use super::summary::{Outcome, Verdict, ms, thousands};
use super::system::{INVENTORY, Need, ORDER, PROJECTION, System};
use super::{BoxError, say};
use crate::bench::event_sourcing::{Rng, crud_insert, crud_load, crud_schema, history};
use crate::event_store::{self, EventStore, OrderState, apply};

/// The short history.
const SHORT: i64 = 10;

/// Events per append while building a history.
const APPEND_BATCH: usize = 100;

/// Loads per case (after a few unmeasured ones), unless [`CASE_BUDGET`] runs out first.
const LOADS: usize = 30;

/// Wall time after which a case stops taking samples (at least 5 are taken).
const CASE_BUDGET: Duration = Duration::from_secs(10);

/// Reads of the projection's view.
const VIEW_READS: usize = 20;

/// p50 of each way to read, ms.
#[derive(Debug, Default)]
struct Reads {
    replay_short: f64,
    replay_long: f64,
    crud_short: f64,
    crud_long: f64,
}

/// What projection-service showed.
#[derive(Debug)]
struct View {
    status: String,
    revision: i64,
    lag: Duration,
    p50_ms: f64,
}

/// Runs pitfall 2.
pub async fn run(system: &System, long: i64) -> Result<Outcome, BoxError> {
    if let Err(reason) = system.require(&[Need::Component("postgres")]).await {
        return Ok(Outcome::skipped(2, &reason));
    }
    let long = long.max(SHORT + 1);
    let db = eda_stack_admin::create_database(&system.stack, "demo").await?;
    say(&format!(
        "scratch database {db}: one order as an event stream and as a CRUD row, at {SHORT} and {} events of history",
        thousands(long)
    ));
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&system.stack.database_url(&db))
        .await;
    let reads = match pool {
        Ok(pool) => {
            let reads = measure(&pool, long).await;
            pool.close().await;
            reads
        }
        Err(e) => Err(e.into()),
    };
    eda_stack_admin::drop_database(&system.stack, &db).await?;
    let reads = reads?;

    let view = if let Err(reason) = system
        .require(&[
            Need::Service(ORDER),
            Need::Service(INVENTORY),
            Need::Service(PROJECTION),
            Need::Component("kafka"),
            Need::Component("connect"),
        ])
        .await
    {
        say(&format!("the projection's view is not read: {reason}"));
        Err(reason)
    } else {
        view_read(system).await.map_err(|e| e.to_string())
    };

    let replay_growth = reads.replay_long / reads.replay_short.max(1e-3);
    let crud_growth = reads.crud_long / reads.crud_short.max(1e-3);
    // Flat: a long history costs the row read nothing (the slack absorbs sub-millisecond noise).
    let crud_flat = reads.crud_long <= 3.0 * reads.crud_short + 1.0;
    let view_ok = match &view {
        Ok(v) => v.status == "CONFIRMED" && v.revision >= 2,
        Err(_) => true, // not run: the CRUD side decides
    };
    let verdict = Verdict::of(replay_growth >= 5.0, crud_flat && view_ok);
    let view_text = match &view {
        Ok(v) => format!(
            "; projection view {} (rev {}, {:.1} s behind the write)",
            ms(v.p50_ms),
            v.revision,
            v.lag.as_secs_f64()
        ),
        Err(_) => "; projection view not read (see the log above)".to_owned(),
    };
    Ok(Outcome::new(
        2,
        verdict,
        format!(
            "replay: {} at {SHORT} events, {} at {}",
            ms(reads.replay_short),
            ms(reads.replay_long),
            thousands(long)
        ),
        format!(
            "CRUD row: {} at {SHORT} events, {} at {}{view_text}",
            ms(reads.crud_short),
            ms(reads.crud_long),
            thousands(long)
        ),
        format!(
            "read at {} events: {} vs {} ({replay_growth:.0}x vs {crud_growth:.1}x the {SHORT}-event read)",
            thousands(long),
            ms(reads.replay_long),
            ms(reads.crud_long)
        ),
        json!({
            "history_short": SHORT,
            "history_long": long,
            "replay_p50_ms": {"short": reads.replay_short, "long": reads.replay_long},
            "crud_p50_ms": {"short": reads.crud_short, "long": reads.crud_long},
            "view": view.as_ref().ok().map(|v| json!({
                "status": v.status, "revision": v.revision,
                "lag_seconds": v.lag.as_secs_f64(), "read_p50_ms": v.p50_ms,
            })),
            "view_skipped": view.as_ref().err(),
        }),
    ))
}

/// Builds both histories, then times each way to read them.
async fn measure(pool: &PgPool, long: i64) -> Result<Reads, BoxError> {
    event_store::migrate(pool).await?;
    crud_schema(pool).await?;
    let store = EventStore::new(pool.clone());
    let mut rng = Rng::new(2);
    let mut orders = Vec::new();
    for len in [SHORT, long] {
        say(&format!(
            "appending a history of {} events (appends of {APPEND_BATCH})",
            thousands(len)
        ));
        let events = history(&mut rng, len);
        let id = Uuid::new_v4();
        let mut version = 0;
        for chunk in events.chunks(APPEND_BATCH) {
            version = store.append(id, version, chunk).await?;
        }
        let mut state = OrderState::default();
        for e in &events {
            apply(&mut state, e);
        }
        let crud_id = Uuid::new_v4();
        crud_insert(pool, crud_id, &state).await?;
        orders.push((id, crud_id, state));
    }
    sqlx::query("VACUUM ANALYZE").execute(pool).await?;

    let mut reads = Reads::default();
    for (i, (id, crud_id, state)) in orders.iter().enumerate() {
        let len = if i == 0 { SHORT } else { long };
        let replay = p50(|| async {
            let s = event_store::load(pool, *id, false).await?;
            check(&s, state)
        })
        .await?;
        let crud = p50(|| async {
            let s = crud_load(pool, *crud_id).await?;
            check(&s, state)
        })
        .await?;
        say(&format!(
            "{} events: replay {} (p50), CRUD row {} (p50)",
            thousands(len),
            ms(replay),
            ms(crud)
        ));
        if i == 0 {
            (reads.replay_short, reads.crud_short) = (replay, crud);
        } else {
            (reads.replay_long, reads.crud_long) = (replay, crud);
        }
    }
    Ok(reads)
}

/// Both reads must give the state the events fold to.
fn check(got: &OrderState, expected: &OrderState) -> Result<(), BoxError> {
    if got == expected {
        Ok(())
    } else {
        Err(format!(
            "a read gave another state than the fold (version {} vs {})",
            got.version, expected.version
        )
        .into())
    }
}

/// The median of up to [`LOADS`] timed calls of `once`, in ms, after 3 unmeasured ones.
async fn p50<F, Fut>(mut once: F) -> Result<f64, BoxError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), BoxError>>,
{
    for _ in 0..3 {
        once().await?;
    }
    let started = Instant::now();
    let mut samples = Vec::new();
    while samples.len() < LOADS && (samples.len() < 5 || started.elapsed() < CASE_BUDGET) {
        let t = Instant::now();
        once().await?;
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(&mut samples))
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Places one order, waits for it to be confirmed, and reads it from projection-service's view
/// (`?min_revision=2`: the view says when it is behind rather than serve an older state).
async fn view_read(system: &System) -> Result<View, BoxError> {
    let user = format!("demo-{}-p2", system.run_id);
    let sku = format!("DEMO-{}-P2", system.run_id);
    system.api.set_stock(&sku, 10).await?;
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
    if status == "PLACED" {
        return Err(
            format!("order {id} stayed PLACED for 60 s (is every consumer running?)").into(),
        );
    }
    let written = Instant::now();
    say(&format!(
        "order {id} is {status} in order-service; reading it from projection-service's view"
    ));
    let path = format!("/orders/{id}?min_revision=2");
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        let (a, _) = system
            .api
            .get_timed(&system.api.projection, &path, &user)
            .await?;
        if a.status.is_success() {
            break a;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the view did not reach revision 2 in 60 s: HTTP {} {}",
                a.status, a.body
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lag = written.elapsed();
    let mut samples = Vec::new();
    for _ in 0..VIEW_READS {
        let (a, took) = system
            .api
            .get_timed(&system.api.projection, &path, &user)
            .await?;
        if a.status.is_success() {
            samples.push(took.as_secs_f64() * 1e3);
        }
    }
    let view = View {
        status: first.body["status"].as_str().unwrap_or("?").to_owned(),
        revision: first.body["revision"].as_i64().unwrap_or(0),
        lag,
        p50_ms: median(&mut samples),
    };
    say(&format!(
        "projection view: {} at revision {}, {} per read over HTTP (p50 of {VIEW_READS})",
        view.status,
        view.revision,
        ms(view.p50_ms)
    ));
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_is_the_middle_sample() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 3.0);
        assert!(median(&mut []).is_nan());
    }
}
