//! Pitfall 4: a B2B order of tens of thousands of lines, an `OrderPlaced` of megabytes. Naive:
//! order-service with `CLAIM_CHECK=off` puts the whole event on Kafka, which refuses it (the
//! broker's and the producer's default limit is about 1 MB): the relay parks the outbox row, the
//! order stays PLACED, and, since a parked row holds back only its own key, a small order placed
//! right after still goes through. Fixed (default): the payload goes to MinIO before the commit,
//! `order.events` carries a reference of a few hundred bytes, inventory-service fetches and
//! verifies it, and the order is CONFIRMED.

use std::time::{Duration, Instant};

use eda_outbox::OutboxTable;
use serde_json::{Value, json};
use sqlx::Connection as _;

use super::api::order_body;
use super::summary::{Outcome, Verdict, bytes};
use super::system::{INVENTORY, Need, ORDER, System};
use super::topic::{self, ORDER_EVENTS, Until};
use super::{BoxError, poll, say};

/// SKUs the bulk order's lines are spread over.
const SKUS: usize = 10;

/// How long the naive mode's order is watched for not moving.
const STUCK_AFTER: Duration = Duration::from_secs(20);

/// What the naive mode did with the bulk order.
#[derive(Debug)]
struct Naive {
    http_status: u16,
    order_status: Option<String>,
    parked_reason: Option<String>,
    small_order: Option<(String, f64)>,
}

impl Naive {
    /// Refused, or accepted and not delivered.
    fn failed(&self) -> bool {
        self.http_status != 201 || self.order_status.as_deref() != Some("CONFIRMED")
    }
}

/// What the fixed mode did.
#[derive(Debug, Default)]
struct Fixed {
    http_status: u16,
    order_status: String,
    confirmed_after: f64,
    record_bytes: Option<usize>,
    location: Option<String>,
    stored_bytes: Option<i64>,
    verified: bool,
    problem: Option<String>,
}

/// Runs pitfall 4.
pub async fn run(system: &System, lines: usize) -> Result<Outcome, BoxError> {
    let needs = [
        Need::Component("postgres"),
        Need::Component("kafka"),
        Need::Component("minio"),
        Need::Service(ORDER),
        Need::Service(INVENTORY),
    ];
    if let Err(reason) = system.require(&needs).await {
        return Ok(Outcome::skipped(4, &reason));
    }
    let lines = lines.max(SKUS);

    say("naive: order-service sends every payload inline, however large (CLAIM_CHECK=off)");
    system.set_modes(ORDER, &[("CLAIM_CHECK", "off")]).await?;
    let (naive, size) = naive(system, lines).await?;
    say("fixed: large payloads go to MinIO behind a small reference (CLAIM_CHECK=on, default)");
    system.set_modes(ORDER, &[]).await?;
    let fixed = fixed(system, lines).await?;

    let naive_text = if naive.http_status != 201 {
        format!("CLAIM_CHECK=off: refused, HTTP {}", naive.http_status)
    } else {
        format!(
            "CLAIM_CHECK=off: {} after {} s{}{}",
            naive.order_status.as_deref().unwrap_or("?"),
            STUCK_AFTER.as_secs(),
            naive
                .parked_reason
                .as_deref()
                .map_or_else(String::new, |r| format!(
                    ", outbox row parked ({})",
                    short(r)
                )),
            naive
                .small_order
                .as_ref()
                .map_or_else(String::new, |(s, t)| format!(
                    "; a small order behind it: {s} in {t:.1} s"
                )),
        )
    };
    let fixed_text = match (&fixed.problem, &fixed.location) {
        (Some(p), _) => format!("{}: {p}", fixed.order_status),
        (None, Some(_)) => format!(
            "{} in {:.1} s; record {}, object in MinIO {} (sha256 verified)",
            fixed.order_status,
            fixed.confirmed_after,
            fixed
                .record_bytes
                .map_or("?".to_owned(), |b| bytes(b as u64)),
            fixed
                .stored_bytes
                .map_or("?".to_owned(), |b| bytes(b.max(0) as u64)),
        ),
        (None, None) => format!("{} in {:.1} s", fixed.order_status, fixed.confirmed_after),
    };
    let fixed_held = fixed.order_status == "CONFIRMED" && fixed.verified;
    Ok(Outcome::new(
        4,
        Verdict::of(naive.failed(), fixed_held),
        naive_text,
        fixed_text,
        format!(
            "a {} order: {} vs {}",
            bytes(size as u64),
            if naive.http_status != 201 {
                "refused".to_owned()
            } else {
                naive.order_status.clone().unwrap_or_else(|| "?".to_owned())
            },
            fixed.order_status
        ),
        json!({
            "lines": lines,
            "request_bytes": size,
            "naive": {
                "http_status": naive.http_status,
                "order_status": naive.order_status,
                "watched_seconds": STUCK_AFTER.as_secs(),
                "parked_reason": naive.parked_reason,
                "small_order_status": naive.small_order.as_ref().map(|s| s.0.clone()),
                "small_order_seconds": naive.small_order.as_ref().map(|s| s.1),
            },
            "fixed": {
                "http_status": fixed.http_status,
                "order_status": fixed.order_status,
                "confirmed_after_seconds": fixed.confirmed_after,
                "record_bytes": fixed.record_bytes,
                "claim_check_location": fixed.location,
                "stored_bytes": fixed.stored_bytes,
                "sha256_verified": fixed.verified,
                "problem": fixed.problem,
            },
        }),
    ))
}

/// A refusal in a few words: Kafka's error code when it names one (librdkafka's messages are
/// long), else its first 40 characters.
fn short(reason: &str) -> String {
    for code in [
        "MessageSizeTooLarge",
        "MSG_SIZE_TOO_LARGE",
        "MESSAGE_TOO_LARGE",
        "RECORD_TOO_LARGE",
    ] {
        if reason.contains(code) {
            return code.to_owned();
        }
    }
    if reason.chars().count() > 40 {
        format!("{}...", reason.chars().take(40).collect::<String>())
    } else {
        reason.to_owned()
    }
}

/// Stocks `mode`'s SKUs and builds the bulk order: `lines` lines over [`SKUS`] SKUs, one unit
/// each.
async fn bulk(system: &System, mode: &str, lines: usize) -> Result<(Vec<String>, Value), BoxError> {
    let skus: Vec<String> = (0..SKUS)
        .map(|i| format!("DEMO-{}-P4-{}-{i:02}", system.run_id, mode.to_uppercase()))
        .collect();
    for sku in &skus {
        system
            .api
            .set_stock(sku, (lines / SKUS + 10) as i64)
            .await?;
    }
    let body_lines: Vec<Value> = (0..lines)
        .map(|i| json!({"sku": skus[i % SKUS], "quantity": 1, "unit_price_cents": 100}))
        .collect();
    let body = json!({
        "customer": {"name": "Bulk Buyer", "email": "b2b@example.com"},
        "currency": "EUR",
        "lines": body_lines,
    });
    Ok((skus, body))
}

async fn naive(system: &System, lines: usize) -> Result<(Naive, usize), BoxError> {
    let user = format!("demo-{}-p4-naive", system.run_id);
    let (skus, body) = bulk(system, "naive", lines).await?;
    let size = body.to_string().len();
    say(&format!(
        "naive: POST /orders with {lines} lines ({})",
        bytes(size as u64)
    ));
    let placed = system.api.place(&user, &body, None).await?;
    let mut result = Naive {
        http_status: placed.status.as_u16(),
        order_status: None,
        parked_reason: None,
        small_order: None,
    };
    let Some(id) = placed.body["id"]
        .as_str()
        .filter(|_| result.http_status == 201)
    else {
        say(&format!(
            "naive: refused with HTTP {}: {}",
            placed.status, placed.body
        ));
        return Ok((result, size));
    };
    let id = id.to_owned();
    say(&format!(
        "naive: 201 Created, order {id}; watching it for {} s",
        STUCK_AFTER.as_secs()
    ));
    let parked = {
        let url = system.database_url(ORDER, "orders");
        let id = id.clone();
        poll(STUCK_AFTER, Duration::from_millis(500), move || {
            let (url, id) = (url.clone(), id.clone());
            async move { parked_reason(&url, &id).await.ok().flatten() }
        })
        .await
    };
    if let Some(reason) = &parked {
        say(&format!(
            "naive: the relay parked the order's outbox row: {reason} (`make outbox-parked` lists it)"
        ));
    }
    let (status, _) = system
        .api
        .wait_status(&user, &id, &["CONFIRMED"], STUCK_AFTER)
        .await?;
    say(&format!(
        "naive: after {} s the bulk order is {status}",
        STUCK_AFTER.as_secs()
    ));
    result.order_status = Some(status);
    result.parked_reason = parked;

    // The parked row holds back only its own key: other orders keep flowing.
    let small = system
        .api
        .place(&user, &order_body(&[(&skus[0], 1)]), None)
        .await?;
    if let Some(small_id) = small.body["id"].as_str() {
        let (status, took) = system
            .api
            .wait_status(
                &user,
                small_id,
                &super::api::SETTLED,
                Duration::from_secs(60),
            )
            .await?;
        say(&format!(
            "naive: a small order placed after it is {status} in {:.1} s: the parked event blocks nothing else",
            took.as_secs_f64()
        ));
        result.small_order = Some((status, took.as_secs_f64()));
    }
    Ok((result, size))
}

/// The reason the relay parked the outbox row of order `id`, if it did (read only).
async fn parked_reason(url: &str, id: &str) -> Result<Option<String>, BoxError> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let table = OutboxTable::new(eda_outbox::DEFAULT_TABLE)?;
    let rows = eda_outbox::parked(&mut conn, &table).await?;
    let _ = conn.close().await;
    Ok(rows
        .into_iter()
        .find(|r| r.aggregate_id == id)
        .map(|r| r.parked_reason.unwrap_or_else(|| "parked".to_owned())))
}

async fn fixed(system: &System, lines: usize) -> Result<Fixed, BoxError> {
    let user = format!("demo-{}-p4-fixed", system.run_id);
    let (_, body) = bulk(system, "fixed", lines).await?;
    let marks = topic::marks(&system.stack, ORDER_EVENTS).await?;
    say(&format!(
        "fixed: POST /orders with {lines} lines ({})",
        bytes(body.to_string().len() as u64)
    ));
    let started = Instant::now();
    let placed = system.api.place(&user, &body, None).await?;
    let mut result = Fixed {
        http_status: placed.status.as_u16(),
        ..Fixed::default()
    };
    let Some(id) = placed.body["id"]
        .as_str()
        .filter(|_| result.http_status == 201)
    else {
        result.order_status = format!("refused (HTTP {})", result.http_status);
        result.problem = Some(placed.body.to_string());
        return Ok(result);
    };
    let id = id.to_owned();
    let (status, _) = system
        .api
        .wait_status(&user, &id, &super::api::SETTLED, Duration::from_secs(180))
        .await?;
    result.confirmed_after = started.elapsed().as_secs_f64();
    say(&format!(
        "fixed: order {id} is {status} {:.1} s after the POST",
        result.confirmed_after
    ));
    result.order_status = status;

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
    let Some(record) = records.first() else {
        result.problem = Some("its OrderPlaced is not on order.events".to_owned());
        return Ok(result);
    };
    use rdkafka::Message as _;
    result.record_bytes = record.payload().map(<[u8]>::len);
    let settings = eda_claim_check::Settings::from_env()?;
    let claim_check = settings.claim_check();
    let reference = match claim_check.reference(|name| {
        record
            .headers()
            .and_then(|h| eda_context::kafka::header(h, name))
    }) {
        Ok(r) => r,
        Err(e) => {
            result.problem = Some(format!("no claim-check reference on the record: {e}"));
            return Ok(result);
        }
    };
    result.location = Some(reference.location());
    let head = settings
        .s3
        .client()
        .head_object()
        .bucket(&reference.bucket)
        .key(&reference.key)
        .send()
        .await;
    result.stored_bytes = head.ok().and_then(|h| h.content_length());
    match claim_check.fetch(&reference).await {
        Ok(payload) => {
            result.verified = payload.len() == reference.size;
            say(&format!(
                "fixed: order.events holds a {} reference to {}: {} stored ({}), {} once fetched, sha256 verified",
                bytes(result.record_bytes.unwrap_or(0) as u64),
                reference.location(),
                result
                    .stored_bytes
                    .map_or("?".to_owned(), |b| bytes(b.max(0) as u64)),
                reference.codec.as_str(),
                bytes(payload.len() as u64)
            ));
        }
        Err(e) => result.problem = Some(format!("the object does not verify: {e}")),
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_shortened_to_its_error_code() {
        assert_eq!(
            short(
                "Message production error: MessageSizeTooLarge (Broker: Message size too large) (3600194 bytes)"
            ),
            "MessageSizeTooLarge"
        );
        assert_eq!(short("Broker: MSG_SIZE_TOO_LARGE"), "MSG_SIZE_TOO_LARGE");
        assert_eq!(short("refused"), "refused");
        assert_eq!(short(&"x".repeat(50)), format!("{}...", "x".repeat(40)));
    }
}
