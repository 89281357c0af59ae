//! `eda_http::serve`: in-flight requests finish after the shutdown signal, and one that takes
//! longer than the drain timeout is cut off so that the stop stays bounded.

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// `GET /sleep/<ms>` answers "done" after that long.
fn app() -> Router {
    Router::new().route(
        "/sleep/{ms}",
        get(
            |axum::extract::Path(ms): axum::extract::Path<u64>| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                "done"
            },
        ),
    )
}

/// Sends a request and returns what came back before the connection closed.
async fn request(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    response
}

/// Starts `serve` with `drain`; returns the address, the shutdown trigger and the server task.
async fn start(
    drain: Duration,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(eda_http::serve(
        listener,
        app(),
        async move {
            let _ = stopped.await;
        },
        drain,
    ));
    (addr, stop, server)
}

#[tokio::test]
async fn a_request_in_flight_at_shutdown_finishes() {
    let (addr, stop, server) = start(Duration::from_secs(10)).await;
    let in_flight = tokio::spawn(request(addr, "/sleep/300"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).unwrap();
    let response = in_flight.await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("done"), "{response}");
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_request_longer_than_the_drain_is_cut_off() {
    // The server in a runtime of its own, dropped when `serve` returns, as a service's runtime
    // is when `main` returns: that is what ends the connections still open.
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let shutdown = async move {
                let _ = stopped.await;
            };
            eda_http::serve(listener, app(), shutdown, Duration::from_millis(300)).await
        })
    });
    let addr = addr_rx.await.unwrap();
    let in_flight = tokio::spawn(request(addr, "/sleep/60000"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = Instant::now();
    stop.send(()).unwrap();
    tokio::task::spawn_blocking(move || server.join().unwrap())
        .await
        .unwrap()
        .unwrap();
    let waited = stopping.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(10),
        "the server waited the drain timeout, not the request: {waited:?}"
    );
    let response = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the connection was closed")
        .unwrap();
    assert!(!response.contains("done"), "{response}");
}
