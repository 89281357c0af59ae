use eda_idempotent_consumer::Dedupe;
use eda_test_support::Stack;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{metrics_text, set_stock, spawn_inventory, stock, token, topics};

#[tokio::test]
async fn admins_set_stock_everyone_authenticated_reads_it() {
    let stack = Stack::from_env();
    let t = topics(&stack).await;
    let inv = spawn_inventory(&stack, &t, Dedupe::EventId).await;
    let c = reqwest::Client::new();

    let set: Value = set_stock(&c, &inv, "SKU-1", 10).await.json().await.unwrap();
    assert_eq!(set["available"], 10);
    assert_eq!(set["revision"], 1);
    let again: Value = set_stock(&c, &inv, "SKU-1", 12).await.json().await.unwrap();
    assert_eq!(again["revision"], 2);
    assert_eq!(stock(&c, &inv, "SKU-1").await["available"], 12);

    let url = format!("{}/inventory/SKU-1", inv.address);
    let not_admin = c
        .put(&url)
        .bearer_auth(token("alice", &[]))
        .json(&json!({"available": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(not_admin.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        c.get(&url).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let negative = c
        .put(&url)
        .bearer_auth(token("admin", &["admin"]))
        .json(&json!({"available": -1}))
        .send()
        .await
        .unwrap();
    assert_eq!(negative.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let unknown_field = c
        .put(&url)
        .bearer_auth(token("admin", &["admin"]))
        .json(&json!({"available": 1, "x": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_field.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let bad_sku = c
        .get(format!("{}/inventory/bad%20sku", inv.address))
        .bearer_auth(token("alice", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_sku.status(), StatusCode::BAD_REQUEST);
    let missing = c
        .get(format!("{}/inventory/NOPE", inv.address))
        .bearer_auth(token("alice", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        stock(&c, &inv, "SKU-1").await["available"],
        12,
        "refused writes changed nothing"
    );

    let ready: Value = c
        .get(format!("{}/readyz", inv.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready");
    let metrics = metrics_text(&c, &inv).await;
    assert!(
        metrics.contains("consumer_processed_total{group="),
        "{metrics}"
    );
    assert!(metrics.contains("outbox_pending_rows"), "{metrics}");
    inv.stop().await;
}
