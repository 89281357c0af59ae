//! The upload ledger and the janitor: an object whose transaction rolled back is deleted after
//! the grace period, a committed one stays; objects past the retention go, other prefixes stay.

use super::*;
use eda_claim_check::{Janitor, JanitorConfig, LargePayloads};

async fn exists(s: &Setup, settings: &S3Settings, key: &str) -> bool {
    settings
        .client()
        .head_object()
        .bucket(&s.settings.bucket)
        .key(key)
        .send()
        .await
        .is_ok()
}

async fn ledger_rows(s: &Setup) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM claim_check_uploads")
        .fetch_one(&s.pool)
        .await
        .unwrap()
}

fn janitor(s: &Setup, claim_check: ClaimCheck, retention: Option<Duration>) -> Janitor {
    Janitor::new(
        claim_check,
        s.pool.clone(),
        JanitorConfig {
            grace: Duration::from_secs(1),
            retention,
            interval: Duration::from_secs(1),
        },
    )
}

#[tokio::test]
async fn an_upload_whose_transaction_rolled_back_is_deleted_after_the_grace_period() {
    let s = setup().await;
    eda_claim_check::migrate(&s.pool).await.unwrap();
    let claim_check = s.claim_check.clone().with_ledger(s.pool.clone());
    let large = LargePayloads::ClaimCheck(claim_check.clone());

    let committed = large
        .prepare(event_of_size(&s.topic, "kept", THRESHOLD * 2))
        .await
        .unwrap();
    let mut tx = s.pool.begin().await.unwrap();
    committed.enqueue(&mut tx).await.unwrap();
    tx.commit().await.unwrap();

    let rolled_back = large
        .prepare(event_of_size(&s.topic, "orphan", THRESHOLD * 2))
        .await
        .unwrap();
    let mut tx = s.pool.begin().await.unwrap();
    rolled_back.enqueue(&mut tx).await.unwrap();
    tx.rollback().await.unwrap();

    // The process died between the ledger record and the upload: a record without an object.
    sqlx::query("INSERT INTO claim_check_uploads (bucket, key) VALUES ($1, $2)")
        .bind(&s.settings.bucket)
        .bind(format!("{}never-uploaded", s.settings.prefix))
        .execute(&s.pool)
        .await
        .unwrap();

    let (kept, orphan) = (
        committed.uploads()[0].key.clone(),
        rolled_back.uploads()[0].key.clone(),
    );
    assert!(exists(&s, &s.settings, &kept).await && exists(&s, &s.settings, &orphan).await);
    assert_eq!(
        ledger_rows(&s).await,
        2,
        "the rolled-back upload and the lost one"
    );

    let janitor = janitor(&s, claim_check, None);
    assert_eq!(
        janitor.sweep().await.unwrap().orphans_deleted,
        0,
        "nothing within the grace period"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let report = janitor.sweep().await.unwrap();
    assert_eq!(report.orphans_deleted, 2);
    assert!(
        !exists(&s, &s.settings, &orphan).await,
        "the orphan is gone"
    );
    assert!(
        exists(&s, &s.settings, &kept).await,
        "the committed one stays"
    );
    assert_eq!(ledger_rows(&s).await, 0);
}

#[tokio::test]
async fn objects_past_the_retention_are_deleted_under_the_prefix_only() {
    let s = setup().await;
    eda_claim_check::migrate(&s.pool).await.unwrap();
    let other = settings(&s.stack, &format!("{}/", unique("other")));
    let neighbour = ClaimCheck::new(&other, policy());
    let payload = vec![b'x'; 100];
    let ours = s.claim_check.store("old", &payload).await.unwrap();
    let theirs = neighbour.store("old", &payload).await.unwrap();
    // Object times have whole seconds: well past a 2-second retention.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let fresh = s.claim_check.store("fresh", &payload).await.unwrap();

    let report = janitor(&s, s.claim_check.clone(), Some(Duration::from_secs(2)))
        .sweep()
        .await
        .unwrap();
    assert_eq!(report.expired_deleted, 1, "{report:?}");
    assert!(
        !exists(&s, &s.settings, &ours.key).await,
        "past the retention"
    );
    assert!(
        exists(&s, &s.settings, &fresh.key).await,
        "within the retention"
    );
    assert!(
        exists(&s, &other, &theirs.key).await,
        "another prefix is not ours"
    );
}
