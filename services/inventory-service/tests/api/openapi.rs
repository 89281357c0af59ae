//! `/openapi.json` is the document generated from the handlers (not a file that can drift), and
//! it matches the real router: every documented operation reaches a handler, every other method
//! of a documented path is 405 problem details.

use eda_http::openapi::{NO_ROUTE_DETAIL, probes};
use eda_idempotent_consumer::Dedupe;
use eda_test_support::Stack;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{spawn_inventory, token, topics};

#[tokio::test]
async fn the_served_document_is_generated_and_matches_the_router() {
    let stack = Stack::from_env();
    let t = topics(&stack).await;
    let inv = spawn_inventory(&stack, &t, Dedupe::EventId).await;
    let c = reqwest::Client::new();
    let generated = inventory_service::routes::openapi();
    let served: Value = c
        .get(format!("{}/openapi.json", inv.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served, serde_json::to_value(&generated).unwrap());
    assert_eq!(eda_http::openapi::lint(&generated), Vec::<String>::new());

    for probe in probes(&generated) {
        // An admin token, as the PUT needs one; without a body it is refused (415) before
        // anything is written.
        let response = c
            .request(
                probe.method.clone(),
                format!("{}{}", inv.address, probe.path),
            )
            .bearer_auth(token("admin", &["admin"]))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let content_type = response.headers().get("content-type").cloned();
        let body = response.text().await.unwrap();
        if probe.documented {
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{probe:?}");
            assert!(!body.contains(NO_ROUTE_DETAIL), "{probe:?} hit no route");
        } else {
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{probe:?}: {body}");
            assert_eq!(content_type.unwrap(), "application/problem+json");
        }
    }
    inv.stop().await;
}
