//! `/openapi.json` is the document generated from the handlers (not a file that can drift), and
//! it matches the real router: every documented operation reaches a handler, every other method
//! of a documented path is 405, and what the router itself answers is problem details.

use eda_http::openapi::{NO_ROUTE_DETAIL, probes};
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{problem, spawn_app, token};

#[tokio::test]
async fn the_served_document_is_generated_and_matches_the_router() {
    let app = spawn_app().await;
    let generated = order_service::routes::openapi();
    let served: Value = app
        .client
        .get(format!("{}/openapi.json", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served, serde_json::to_value(&generated).unwrap());
    assert_eq!(eda_http::openapi::lint(&generated), Vec::<String>::new());

    let probes = probes(&generated);
    assert!(probes.iter().filter(|p| p.documented).count() >= 8);
    for probe in probes {
        let response = app
            .client
            .request(
                probe.method.clone(),
                format!("{}{}", app.address, probe.path),
            )
            .bearer_auth(token("alice"))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        if probe.documented {
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{probe:?}");
            assert!(!body.contains(NO_ROUTE_DETAIL), "{probe:?} hit no route");
        } else {
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{probe:?}: {body}");
        }
    }
    app.stop().await;
}

/// schemathesis' first finding: axum answers an unknown route (404) and a method a route does
/// not have (405) itself, with an empty body and no Content-Type; every 4xx must be problem
/// details.
#[tokio::test]
async fn the_router_answers_unknown_routes_and_methods_with_problem_details() {
    let app = spawn_app().await;
    let response = app.get("alice", "/no/such/route").await;
    let body = problem(response, StatusCode::NOT_FOUND).await;
    assert_eq!(body["detail"], NO_ROUTE_DETAIL);
    let response = app
        .client
        .delete(format!("{}/orders", app.address))
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap();
    let allow = response.headers()["allow"].to_str().unwrap().to_owned();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    problem(response, StatusCode::METHOD_NOT_ALLOWED).await;
    app.stop().await;
}
