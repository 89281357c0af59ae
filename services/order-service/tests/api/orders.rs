use std::time::Duration;

use eda_test_support::{consume_all, header};
use rdkafka::Message;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{order_body, problem, spawn_app, token};

#[tokio::test]
async fn placing_an_order_writes_it_and_publishes_order_placed() {
    let app = spawn_app().await;
    let response = app.post_order("alice", &order_body()).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let order: Value = response.json().await.unwrap();
    assert_eq!(
        location,
        format!("/orders/{}", order["id"].as_str().unwrap())
    );
    assert_eq!(order["status"], "PLACED");
    assert_eq!(order["revision"], 1);
    assert_eq!(order["total_cents"], 3000);
    assert_eq!(order["lines"].as_array().unwrap().len(), 2);

    let fetched: Value = app.get("alice", &location).await.json().await.unwrap();
    assert_eq!(fetched, order);

    let messages = consume_all(
        &app.stack,
        &app.topic,
        1,
        Duration::from_secs(30),
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(m.key(), Some(order["id"].as_str().unwrap().as_bytes()));
    assert_eq!(header(m, "event-type").as_deref(), Some("OrderPlaced"));
    assert_eq!(header(m, "revision").as_deref(), Some("1"));
    assert_eq!(header(m, "user-id").as_deref(), Some("alice"));
    let payload: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
    assert_eq!(payload["total_cents"], 3000);
    assert_eq!(payload["lines"][0]["sku"], "SKU-1");
    app.stop().await;
}

#[tokio::test]
async fn cancelling_bumps_the_revision_once_and_emits_order_cancelled_once() {
    let app = spawn_app().await;
    let order: Value = app
        .post_order("alice", &order_body())
        .await
        .json()
        .await
        .unwrap();
    let path = format!("/orders/{}/cancel", order["id"].as_str().unwrap());
    for _ in 0..2 {
        let response = app.post("alice", &path).await;
        assert_eq!(response.status(), StatusCode::OK);
        let cancelled: Value = response.json().await.unwrap();
        assert_eq!(cancelled["status"], "CANCELLED");
        assert_eq!(cancelled["revision"], 2, "a second cancel changes nothing");
    }
    let messages = consume_all(
        &app.stack,
        &app.topic,
        2,
        Duration::from_secs(30),
        Duration::from_secs(1),
    )
    .await;
    let types: Vec<String> = messages
        .iter()
        .map(|m| header(m, "event-type").unwrap())
        .collect();
    assert_eq!(
        types,
        ["OrderPlaced", "OrderCancelled"],
        "same key, so in order, and one cancel event"
    );
    assert_eq!(header(&messages[1], "revision").as_deref(), Some("2"));
    app.stop().await;
}

#[tokio::test]
async fn users_see_and_cancel_only_their_own_orders() {
    let app = spawn_app().await;
    let order: Value = app
        .post_order("alice", &order_body())
        .await
        .json()
        .await
        .unwrap();
    let id = order["id"].as_str().unwrap();
    problem(
        app.get("mallory", &format!("/orders/{id}")).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        app.post("mallory", &format!("/orders/{id}/cancel")).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let list: Value = app.get("mallory", "/orders").await.json().await.unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
    let still: Value = app
        .get("alice", &format!("/orders/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(still["status"], "PLACED");
    app.stop().await;
}

#[tokio::test]
async fn missing_or_bad_tokens_are_401_and_write_nothing() {
    let app = spawn_app().await;
    let url = format!("{}/orders", app.address);
    let no_token = app
        .client
        .post(&url)
        .json(&order_body())
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.headers()["www-authenticate"], "Bearer");
    problem(no_token, StatusCode::UNAUTHORIZED).await;
    let forged = order_service::auth::issue_token(
        "another-secret-0123456789",
        "alice",
        &[],
        Duration::from_secs(60),
    )
    .unwrap();
    problem(
        app.client
            .post(&url)
            .bearer_auth(forged)
            .json(&order_body())
            .send()
            .await
            .unwrap(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    problem(
        app.client
            .post(&url)
            .header("authorization", "Basic YTpi")
            .json(&order_body())
            .send()
            .await
            .unwrap(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(app.count("SELECT count(*) FROM orders").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM outbox").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_writes_nothing() {
    let app = spawn_app().await;
    let url = format!("{}/orders", app.address);
    let token = token("alice");
    let post_raw = |body: String, content_type: &'static str| {
        app.client
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", content_type)
            .body(body)
            .send()
    };

    let malformed = problem(
        post_raw("{not json".into(), "application/json")
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(
        malformed["detail"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("json"),
        "{malformed}"
    );
    problem(
        post_raw(order_body().to_string(), "text/plain")
            .await
            .unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    )
    .await;
    // Over POST /orders' own limit (MAX_ORDER_BODY_BYTES, 16 MiB: room for a bulk order).
    problem(
        post_raw(
            format!("{{\"x\":\"{}\"}}", "a".repeat(17 * 1024 * 1024)),
            "application/json",
        )
        .await
        .unwrap(),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;

    let mut unknown = order_body();
    unknown["discount"] = json!(50);
    let body = problem(
        app.post_order("alice", &unknown).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("discount"),
        "{body}"
    );

    let invalid = json!({"customer": {"name": "", "email": "x"}, "currency": "euro", "lines": [{"sku": "ok-lower", "quantity": 0, "unit_price_cents": -5}]});
    let body = problem(
        app.post_order("alice", &invalid).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "customer.name",
            "customer.email",
            "currency",
            "lines[0].sku",
            "lines[0].quantity",
            "lines[0].unit_price_cents"
        ]
    );

    let empty =
        json!({"customer": {"name": "A", "email": "a@b.c"}, "currency": "EUR", "lines": []});
    problem(
        app.post_order("alice", &empty).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    let absurd = json!({"customer": {"name": "A", "email": "a@b.c"}, "currency": "EUR", "lines": [{"sku": "A", "quantity": 1_000_000_000, "unit_price_cents": 1}]});
    problem(
        app.post_order("alice", &absurd).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;

    problem(
        app.get("alice", "/orders/not-a-uuid").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(
        app.get("alice", "/orders?limit=0").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(
        app.get("alice", "/orders?cursor=zzz").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(
        app.get("alice", "/orders?limit=abc").await,
        StatusCode::BAD_REQUEST,
    )
    .await;

    assert_eq!(app.count("SELECT count(*) FROM orders").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM outbox").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_retried_post_with_the_same_idempotency_key_creates_one_order() {
    let app = spawn_app().await;
    let send = |key: &'static str, body: Value| {
        app.client
            .post(format!("{}/orders", app.address))
            .bearer_auth(token("alice"))
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    // Concurrent retries of one request.
    let (a, b, c) = tokio::join!(
        send("key-1", order_body()),
        send("key-1", order_body()),
        send("key-1", order_body())
    );
    let mut ids = Vec::new();
    for r in [a, b, c] {
        let r = r.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        ids.push(r.json::<Value>().await.unwrap()["id"].clone());
    }
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "one order for one key: {ids:?}"
    );
    assert_eq!(app.count("SELECT count(*) FROM orders").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM outbox").await, 1);

    let replay = send("key-1", order_body()).await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let mut other = order_body();
    other["currency"] = json!("USD");
    problem(
        send("key-1", other).await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    problem(
        send("bad key with spaces", order_body()).await.unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    // Another user may use the same key.
    let bob = app
        .client
        .post(format!("{}/orders", app.address))
        .bearer_auth(token("bob"))
        .header("idempotency-key", "key-1")
        .json(&order_body())
        .send()
        .await
        .unwrap();
    assert_eq!(bob.status(), StatusCode::CREATED);
    assert_eq!(app.count("SELECT count(*) FROM orders").await, 2);
    app.stop().await;
}

#[tokio::test]
async fn listing_pages_through_the_callers_orders_newest_first() {
    let app = spawn_app().await;
    let mut created = Vec::new();
    for _ in 0..5 {
        let order: Value = app
            .post_order("alice", &order_body())
            .await
            .json()
            .await
            .unwrap();
        created.push(order["id"].as_str().unwrap().to_owned());
    }
    app.post_order("bob", &order_body()).await;
    let mut seen = Vec::new();
    let mut path = "/orders?limit=2".to_owned();
    loop {
        let page: Value = app.get("alice", &path).await.json().await.unwrap();
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/orders?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    created.reverse();
    assert_eq!(
        seen, created,
        "all five, newest first, no repeats, no one else's"
    );
    app.stop().await;
}
