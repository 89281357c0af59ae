//! `eda_http::service_router` over real TCP: `/openapi.json` serves the document generated from
//! the registered handlers, and what the router itself answers (an unknown path, a method the
//! path does not have) is problem details like every other error, not axum's empty bodies.

use std::time::Duration;

use axum::extract::FromRef;
use eda_http::config::ServiceSettings;
use eda_http::health::Readiness;
use eda_http::openapi::{self, OpenApiRouter};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Default)]
struct State {
    readiness: Readiness,
}

impl FromRef<State> for Readiness {
    fn from_ref(state: &State) -> Self {
        state.readiness.clone()
    }
}

/// Says hello.
#[utoipa::path(get, path = "/hello", responses((status = 200, description = "hello", body = String)))]
async fn hello() -> &'static str {
    "hello"
}

fn settings() -> ServiceSettings {
    ServiceSettings {
        http_host: [127, 0, 0, 1].into(),
        http_port: 0,
        database_url: "postgres://unused".into(),
        kafka_bootstrap_servers: "127.0.0.1:9092".to_owned(),
        jwt_secret: "a-test-secret-of-enough-length".into(),
        max_body_bytes: 1024,
        shutdown_timeout: Duration::from_secs(5),
        propagation: eda_context::Propagation::On,
        baggage: Default::default(),
        consumer_stuck_after: Duration::from_secs(60),
    }
}

fn api() -> OpenApiRouter<State> {
    OpenApiRouter::default().routes(utoipa_axum::routes!(hello))
}

/// Status line, headers (lower-cased) and body of one request.
async fn request(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_lowercase(), body.to_owned())
}

#[tokio::test]
async fn the_router_serves_its_document_and_answers_unknown_routes_with_problems() {
    let app = eda_http::service_router(api(), &settings()).with_state(State::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let (status, head, body) = request(addr, "GET", "/openapi.json").await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: application/json"), "{head}");
    let served: serde_json::Value = serde_json::from_str(&body).unwrap();
    let generated = serde_json::to_value(eda_http::service_api(api()).1).unwrap();
    assert_eq!(served, generated);
    for path in ["/hello", "/healthz", "/readyz", "/openapi.json"] {
        assert!(
            served["paths"][path].is_object(),
            "{path} is not documented"
        );
    }
    assert!(served["components"]["securitySchemes"]["bearer"].is_object());

    let (status, head, body) = request(addr, "GET", "/nowhere").await;
    assert_eq!(status, 404);
    assert!(
        head.contains("content-type: application/problem+json"),
        "{head}"
    );
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["detail"], openapi::NO_ROUTE_DETAIL);

    // axum's own 405 has an empty body and no Content-Type: schemathesis' first finding.
    let (status, head, body) = request(addr, "DELETE", "/hello").await;
    assert_eq!(status, 405);
    assert!(
        head.contains("content-type: application/problem+json"),
        "{head}"
    );
    assert!(head.contains("allow: get,head"), "{head}");
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["status"], 405);

    // The probes a service's route check sends: documented ones reach a handler, others 405.
    for probe in openapi::probes(&served_doc()) {
        let (status, _, body) = request(addr, probe.method.as_str(), &probe.path).await;
        if probe.documented {
            assert_ne!(status, 405, "{probe:?}");
            assert!(!body.contains(openapi::NO_ROUTE_DETAIL), "{probe:?}");
        } else {
            assert_eq!(status, 405, "{probe:?}");
        }
    }
    server.abort();
}

fn served_doc() -> utoipa::openapi::OpenApi {
    eda_http::service_api(api()).1
}

/// Holds every request until the test opens the gate.
static GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);
/// How many requests reached the handler.
static ENTERED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Waits for the gate.
#[utoipa::path(get, path = "/slow", responses((status = 200, description = "done", body = String)))]
async fn slow() -> &'static str {
    ENTERED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let _ = GATE.acquire().await;
    "done"
}

/// Past `MAX_IN_FLIGHT` API requests the excess is answered 503 at once (problem details,
/// `Retry-After`) instead of queueing for a database connection; the probes still answer.
#[tokio::test]
async fn requests_past_the_in_flight_limit_are_shed_with_a_503_problem() {
    let api = OpenApiRouter::default().routes(utoipa_axum::routes!(slow));
    let app = eda_http::service_router(api, &settings()).with_state(State::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let held: Vec<_> = (0..eda_http::MAX_IN_FLIGHT)
        .map(|_| tokio::spawn(request(addr, "GET", "/slow")))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while ENTERED.load(std::sync::atomic::Ordering::SeqCst) < eda_http::MAX_IN_FLIGHT {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the held requests never all got in"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, head, body) =
        tokio::time::timeout(Duration::from_secs(5), request(addr, "GET", "/slow"))
            .await
            .expect("the request past the limit waited instead of being shed");
    assert_eq!(status, 503, "{head}{body}");
    assert!(
        head.contains("content-type: application/problem+json"),
        "{head}"
    );
    assert!(head.contains("retry-after:"), "{head}");
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["status"], 503);
    assert!(
        problem["detail"].as_str().unwrap().contains("in flight"),
        "{problem}"
    );
    let (status, _, _) = request(addr, "GET", "/healthz").await;
    assert_eq!(status, 200, "the probes are not limited");

    GATE.add_permits(eda_http::MAX_IN_FLIGHT);
    for h in held {
        let (status, _, body) = h.await.unwrap();
        assert_eq!((status, body.as_str()), (200, "done"));
    }
    assert_eq!(
        ENTERED.load(std::sync::atomic::Ordering::SeqCst),
        eda_http::MAX_IN_FLIGHT
    );
    server.abort();
}
