//! Chunked messages: stored durably chunk by chunk, applied once when the set is complete,
//! whatever the duplicates, interleaving, restarts; incomplete or tampered sets dead-lettered.

use super::*;
use eda_idempotent_consumer::chunk::headers as chunk;
use sha2::{Digest as _, Sha256};

/// One record of a chunk set: headers and value.
struct Chunk {
    headers: Vec<(&'static str, String)>,
    value: Vec<u8>,
}

/// The chunks of a `Reserve` of `qty` (padded to about `size` bytes) in slices of `slice`
/// bytes; `sha256` overrides the whole payload's checksum (a tampered set).
fn chunks_of(
    message_id: Uuid,
    qty: i64,
    size: usize,
    slice: usize,
    sha256: Option<&str>,
) -> Vec<Chunk> {
    let payload = json!({ "qty": qty, "pad": "x".repeat(size) })
        .to_string()
        .into_bytes();
    let digest = sha256.map_or_else(|| format!("{:x}", Sha256::digest(&payload)), str::to_owned);
    let parts: Vec<&[u8]> = payload.chunks(slice).collect();
    parts
        .iter()
        .enumerate()
        .map(|(i, part)| Chunk {
            headers: vec![
                ("event-id", Uuid::now_v7().to_string()),
                ("event-type", "Reserve".to_owned()),
                ("aggregate-type", "Order".to_owned()),
                ("aggregate-id", "order-1".to_owned()),
                (chunk::MESSAGE_ID, message_id.to_string()),
                (chunk::INDEX, i.to_string()),
                (chunk::COUNT, parts.len().to_string()),
                (chunk::SIZE, payload.len().to_string()),
                (chunk::SHA256, digest.clone()),
            ],
            value: part.to_vec(),
        })
        .collect()
}

async fn send(s: &Setup, c: &Chunk) {
    let headers: Vec<(&str, &str)> = c.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    produce(&s.stack, &s.topic, "order-1", &headers, &c.value).await;
}

async fn applied_ids(pool: &PgPool) -> Vec<Uuid> {
    sqlx::query_scalar("SELECT event_id FROM applied_log ORDER BY seq")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn stored_parts(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM chunk_parts")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn interleaved_sets_with_duplicates(dedupe: Dedupe) {
    let s = setup().await;
    let (m1, m2, plain) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let a = chunks_of(m1, 1, 2500, 1000, None); // 3 chunks
    let b = chunks_of(m2, 10, 1500, 1000, None); // 2 chunks
    assert_eq!((a.len(), b.len()), (3, 2));
    // Two sets interleaved on one partition, a chunk republished inside its set.
    for c in [&a[0], &b[0], &a[0], &a[1], &b[1], &a[2]] {
        send(&s, c).await;
    }
    produce_reserve(&s.stack, &s.topic, plain, 100).await;
    if dedupe == Dedupe::EventId {
        // Republished after its set was applied: recognised by the message's record.
        send(&s, &a[1]).await;
    }
    let group = unique("chunks");
    let expected_dupes = if dedupe == Dedupe::EventId { 2 } else { 1 };
    start(&s, &group, dedupe, Reserve::default())
        .until(|m| m.processed() == 3 && m.duplicates() >= expected_dupes)
        .await;
    assert_eq!(
        reserved(&s.pool).await,
        111,
        "each message applied once ({dedupe:?})"
    );
    assert_eq!(
        applied_ids(&s.pool).await,
        vec![m2, m1, plain],
        "the handler saw each whole message under its message id, in completion order"
    );
    assert_eq!(stored_parts(&s.pool).await, 0, "complete sets are deleted");

    // Redelivery of everything (the group rewound): nothing applies twice. Event-id dedupe
    // sees every record again and skips it; offsets mode seeks past them all at once.
    rewind(&s.stack, &group, &s.topic);
    let skipped = if dedupe == Dedupe::EventId { 8 } else { 1 };
    start(&s, &group, dedupe, Reserve::default())
        .until(|m| m.duplicates() >= skipped)
        .await;
    assert_eq!(
        reserved(&s.pool).await,
        111,
        "redelivered chunks applied nothing ({dedupe:?})"
    );
    assert_eq!(stored_parts(&s.pool).await, 0);
}

#[tokio::test]
async fn chunk_sets_are_applied_once_whatever_the_duplicates_and_interleaving() {
    interleaved_sets_with_duplicates(Dedupe::EventId).await;
}

#[tokio::test]
async fn chunk_sets_are_applied_once_in_offsets_mode_too() {
    interleaved_sets_with_duplicates(Dedupe::Offsets).await;
}

#[tokio::test]
async fn a_set_begun_by_one_consumer_is_finished_by_the_next() {
    let s = setup().await;
    let id = Uuid::now_v7();
    let parts = chunks_of(id, 7, 2500, 1000, None);
    send(&s, &parts[0]).await;
    send(&s, &parts[1]).await;
    let group = unique("chunks-restart");
    start(&s, &group, Dedupe::EventId, Reserve::default())
        .until(|m| m.chunks_stored() == 2)
        .await;
    assert_eq!(
        stored_parts(&s.pool).await,
        2,
        "the first two chunks are in the database"
    );
    assert_eq!(
        reserved(&s.pool).await,
        0,
        "nothing applied before the set is complete"
    );

    // The consumer stopped mid-set (a crash or a rebalance would leave the same state: the
    // stored chunks committed with their offsets). The next member finishes the set.
    send(&s, &parts[2]).await;
    start(&s, &group, Dedupe::EventId, Reserve::default())
        .until(|m| m.processed() == 1)
        .await;
    assert_eq!(reserved(&s.pool).await, 7);
    assert_eq!(applied_ids(&s.pool).await, vec![id]);
    assert_eq!(stored_parts(&s.pool).await, 0);
}

#[tokio::test]
async fn incomplete_and_tampered_sets_are_dead_lettered_whole_with_the_reason() {
    let s = setup().await;
    let (incomplete, tampered, plain) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let lost = chunks_of(incomplete, 1, 2500, 1000, None);
    send(&s, &lost[0]).await;
    send(&s, &lost[1]).await; // chunk 2 of 3 never comes
    let bad = chunks_of(tampered, 5, 1500, 1000, Some(&"0".repeat(64)));
    for c in &bad {
        send(&s, c).await;
    }
    produce_reserve(&s.stack, &s.topic, plain, 100).await;
    let oversized = chunks_of(Uuid::now_v7(), 1, 10, 1000, None);
    let mut oversized = oversized.into_iter().next().unwrap();
    for (k, v) in &mut oversized.headers {
        if *k == chunk::SIZE {
            *v = (65 * 1024 * 1024).to_string();
        }
    }
    send(&s, &oversized).await;

    start_with(&s, &unique("chunks-expiry"), Reserve::default(), |c| {
        c.chunking.timeout = Duration::from_secs(1);
    })
    .until(|m| m.chunk_sets_expired() == 1 && m.dead_lettered() == 5)
    .await;
    assert_eq!(reserved(&s.pool).await, 100, "only the plain event applied");
    assert_eq!(
        stored_parts(&s.pool).await,
        0,
        "dead-lettered sets are deleted"
    );

    let letters = consume_all(
        &s.stack,
        &format!("{}.dlq", s.topic),
        5,
        WAIT,
        Duration::ZERO,
    )
    .await;
    let reasons = |id: Uuid| -> Vec<String> {
        letters
            .iter()
            .filter(|m| header(m, chunk::MESSAGE_ID) == Some(id.to_string()))
            .map(|m| header(m, "dlq-reason").unwrap_or_default())
            .collect()
    };
    let expired = reasons(incomplete);
    assert_eq!(expired.len(), 2, "both stored chunks of the incomplete set");
    assert!(
        expired
            .iter()
            .all(|r| r.contains("incomplete chunk set: 2 of 3 chunks")),
        "{expired:?}"
    );
    let refused = reasons(tampered);
    assert_eq!(refused.len(), 2, "the whole tampered set, for a redrive");
    assert!(refused.iter().all(|r| r.contains("sha256")), "{refused:?}");
    assert!(
        letters.iter().any(|m| header(m, "dlq-reason")
            .is_some_and(|r| r.contains("larger than the 67108864 accepted"))),
        "a set announcing more than the maximum is refused at its first chunk"
    );
    for m in letters
        .iter()
        .filter(|m| header(m, chunk::MESSAGE_ID) == Some(incomplete.to_string()))
    {
        let index: usize = header(m, chunk::INDEX).unwrap().parse().unwrap();
        assert_eq!(
            m.payload(),
            Some(lost[index].value.as_slice()),
            "the original chunk, byte for byte"
        );
    }
}
