//! Pitfall 3, judged by Jaeger: one `POST /orders` is ONE trace across order-service and
//! inventory-service, through both outboxes and Kafka, with correct parent links, and with
//! projection-service too, across CDC (the order row's `traceparent`); the same with
//! Debezium as order-service's relay; several disconnected traces with `PROPAGATION=off`; logs
//! of both services filtered by the request id tell the story in order; hostile context headers
//! are dropped or replaced, never propagated, never a 5xx.
//!
//! Each service runs as its own process (its own `service.name`, its own logs), started from the
//! binaries `cargo test --workspace` builds. Running only this package's tests does not rebuild
//! inventory-service: `cargo build -p inventory-service` first, or a stale binary is tested.

use std::time::Duration;

use eda_test_support::jaeger::{Span, Trace};
use eda_test_support::process::sibling_binary;
use eda_test_support::{
    CdcConnector, Jaeger, OutboxConnector, ServiceProcess, Stack, TempDatabase, consume_all,
    create_topic, create_topic_named, header, produce, unique,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

const SECRET: &str = "trace-test-secret-0123456789abcdef";
const WAIT: Duration = Duration::from_secs(90);

/// Both services as processes, on their own databases, topics and service names.
struct Flow {
    stack: Stack,
    order_topic: String,
    /// Span names: `send <topic>` / `process <topic>` for both topics.
    names: Names,
    order_name: String,
    inventory_name: String,
    order: ServiceProcess,
    inventory: ServiceProcess,
    connector: Option<OutboxConnector>,
    order_db: TempDatabase,
    _inventory_db: TempDatabase,
    client: reqwest::Client,
}

impl Flow {
    async fn start(propagation: &str, relay_mode: &str) -> Self {
        let stack = Stack::from_env();
        let order_db = TempDatabase::create(&stack).await;
        let inventory_db = TempDatabase::create(&stack).await;
        let order_topic = create_topic(&stack, 3).await;
        let inventory_topic = create_topic(&stack, 3).await;
        for topic in [&order_topic, &inventory_topic] {
            create_topic_named(&stack, &format!("{topic}.dlq"), 1).await;
        }
        let tag = unique("t");
        let order_name = format!("order-service-{tag}");
        let inventory_name = format!("inventory-service-{tag}");
        let common = |name: &str, db: &TempDatabase, group: &str| {
            vec![
                ("DATABASE_URL", stack.database_url(&db.name)),
                (
                    "KAFKA_BOOTSTRAP_SERVERS",
                    stack.kafka_bootstrap_servers.clone(),
                ),
                ("ORDER_EVENTS_TOPIC", order_topic.clone()),
                ("INVENTORY_EVENTS_TOPIC", inventory_topic.clone()),
                ("CONSUMER_GROUP", unique(group)),
                ("JWT_SECRET", SECRET.to_owned()),
                ("PROPAGATION", propagation.to_owned()),
                ("OTEL_SERVICE_NAME", name.to_owned()),
                ("OTEL_BSP_SCHEDULE_DELAY", "200".to_owned()),
                // Whatever the caller's shell says: these tests read JSON logs and every span.
                ("RUST_LOG", "info".to_owned()),
                ("LOG_FORMAT", "json".to_owned()),
                ("TRACE_FILTER", "info".to_owned()),
                ("OTEL_TRACES_SAMPLER", "parentbased_always_on".to_owned()),
                ("OTEL_TRACES_EXPORTER", "otlp".to_owned()),
                ("OTEL_SDK_DISABLED", "false".to_owned()),
            ]
        };
        let order_bin = env!("CARGO_BIN_EXE_order-service");
        let inventory = ServiceProcess::start(
            &sibling_binary(order_bin, "inventory-service"),
            &inventory_name,
            &common(&inventory_name, &inventory_db, "inventory"),
        )
        .await;
        let mut order_env = common(&order_name, &order_db, "order");
        order_env.push(("RELAY_MODE", relay_mode.to_owned()));
        order_env.push(("RELAY_POLL_INTERVAL_MS", "200".to_owned()));
        let order =
            ServiceProcess::start(std::path::Path::new(order_bin), &order_name, &order_env).await;
        let connector = if relay_mode == "debezium" {
            Some(OutboxConnector::register(&stack, &order_db.name).await)
        } else {
            None
        };
        let names = Names {
            send_orders: format!("send {order_topic}"),
            process_orders: format!("process {order_topic}"),
            send_inventory: format!("send {inventory_topic}"),
            process_inventory: format!("process {inventory_topic}"),
        };
        let flow = Self {
            stack,
            order_topic,
            names,
            order_name,
            inventory_name,
            order,
            inventory,
            connector,
            order_db,
            _inventory_db: inventory_db,
            client: reqwest::Client::new(),
        };
        for sku in ["SKU-1", "SKU-2"] {
            let response = flow
                .client
                .put(format!("{}/inventory/{sku}", flow.inventory.address))
                .bearer_auth(token("ops", &["admin"]))
                .json(&json!({"available": 100}))
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success(), "stock {sku}");
        }
        flow
    }

    /// Places an order with the given extra headers; returns the response.
    async fn place(&self, headers: &[(&str, &[u8])]) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}/orders", self.order.address))
            .bearer_auth(token("alice", &[]))
            .json(&json!({
                "customer": {"name": "Ada Lovelace", "email": "ada@example.com"},
                "currency": "EUR",
                "lines": [{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 1250},
                          {"sku": "SKU-2", "quantity": 1, "unit_price_cents": 500}]
            }));
        for (name, value) in headers {
            request = request.header(
                *name,
                reqwest::header::HeaderValue::from_bytes(value).unwrap(),
            );
        }
        request.send().await.unwrap()
    }

    /// Places an order with `x-request-id: request_id` and waits until it is CONFIRMED; returns
    /// the response's headers and the order id.
    async fn place_and_confirm(&self, request_id: &str) -> (reqwest::header::HeaderMap, String) {
        let response = self.place(&[("x-request-id", request_id.as_bytes())]).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let headers = response.headers().clone();
        let order: Value = response.json().await.unwrap();
        let order_id = order["id"].as_str().unwrap().to_owned();
        self.wait_status(&order_id, "CONFIRMED").await;
        (headers, order_id)
    }

    async fn wait_status(&self, order_id: &str, status: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let order: Value = self
                .client
                .get(format!("{}/orders/{order_id}", self.order.address))
                .bearer_auth(token("alice", &[]))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if order["status"] == status {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "order {order_id} not {status} within {WAIT:?}: {order}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn stop(self) {
        self.order.stop().await;
        self.inventory.stop().await;
        if let Some(connector) = self.connector {
            connector.remove(&self.order_db.pool().await).await;
        }
    }
}

/// Messaging span names (OpenTelemetry: `<operation> <destination>`).
struct Names {
    send_orders: String,
    process_orders: String,
    send_inventory: String,
    process_inventory: String,
}

fn token(user: &str, roles: &[&str]) -> String {
    let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
    order_service::auth::issue_token(SECRET, user, &roles, Duration::from_secs(600)).unwrap()
}

/// The one span named `name` from `service`.
fn one<'a>(trace: &'a Trace, service: &str, name: &str) -> &'a Span {
    let found: Vec<_> = trace.find(service, name).collect();
    assert_eq!(
        found.len(),
        1,
        "one {name:?} span from {service}: {found:#?}"
    );
    found[0]
}

fn parent<'a>(trace: &'a Trace, span: &Span) -> &'a Span {
    let id = span
        .parent
        .as_deref()
        .unwrap_or_else(|| panic!("{} has a parent", span.name));
    trace
        .span(id)
        .unwrap_or_else(|| panic!("the parent of {} is in the same trace", span.name))
}

/// The span of `service` named `name` that processed an event of `event_type`.
fn processed<'a>(
    trace: &'a Trace,
    service: &str,
    name: &str,
    event_type: &str,
    what: &str,
) -> &'a Span {
    trace
        .find(service, name)
        .find(|s| s.tag("event.type") == Some(event_type))
        .unwrap_or_else(|| panic!("{what}: {trace:#?}"))
}

fn trace_id_of(traceparent: &str) -> &str {
    traceparent.split('-').nth(1).unwrap_or_default()
}

/// The spans a whole saga leaves, for `done` checks while spans are still arriving.
fn saga_complete(trace: &Trace, flow: &Flow, relay_in_process: bool) -> bool {
    let (order, inventory, n) = (&flow.order_name, &flow.inventory_name, &flow.names);
    let count = |service: &str, name: &str| trace.find(service, name).count();
    count(order, "POST /orders") == 1
        && count(inventory, &n.process_orders) >= 2
        && count(inventory, "reserve stock") == 1
        && count(inventory, &n.send_inventory) == 1
        && count(order, &n.process_inventory) == 1
        && (!relay_in_process || count(order, &n.send_orders) == 2)
}

#[tokio::test]
async fn one_request_is_one_trace_across_both_services_with_correct_parents() {
    let flow = Flow::start("on", "inprocess").await;
    let request_id = unique("req");
    let (headers, order_id) = flow.place_and_confirm(&request_id).await;
    assert_eq!(headers["x-request-id"], request_id.as_str());
    let traceparent = headers["traceparent"].to_str().unwrap().to_owned();

    let (o, i) = (flow.order_name.as_str(), flow.inventory_name.as_str());
    let jaeger = Jaeger::from_env();
    let traces = jaeger
        .wait_for(o, &[("request_id", &request_id)], WAIT, |t| {
            t.len() == 1 && saga_complete(&t[0], &flow, true)
        })
        .await;
    assert_eq!(
        traces.len(),
        1,
        "exactly one trace holds the request: {traces:#?}"
    );
    let trace = &traces[0];
    assert!(saga_complete(trace, &flow, true), "{trace:#?}");
    assert_eq!(trace.services(), {
        let mut names = vec![i, o];
        names.sort_unstable();
        names
    });
    assert_eq!(
        trace_id_of(&traceparent),
        trace.id,
        "the response's traceparent names it"
    );
    // The lookups `pitfall-lab trace` uses: across every service, and by trace id.
    let everywhere = jaeger
        .traces_tagged("request_id", &request_id)
        .await
        .unwrap();
    assert_eq!(
        everywhere.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        [trace.id.as_str()]
    );
    let by_id = jaeger.trace(&trace.id).await.unwrap().expect("by id");
    assert_eq!(by_id.spans.len(), trace.spans.len());
    assert!(
        by_id
            .spans
            .iter()
            .all(|s| s.duration_us > 0 && s.start_us > 0)
    );
    assert!(
        jaeger
            .trace("0123456789abcdef0123456789abcdef")
            .await
            .unwrap()
            .is_none()
    );
    let from_inventory = jaeger.traces(i, &[("request_id", &request_id)]).await;
    assert_eq!(
        from_inventory
            .iter()
            .map(|t| t.id.as_str())
            .collect::<Vec<_>>(),
        [trace.id.as_str()],
        "inventory-service's spans of this request are in the same, single trace"
    );

    // Parent links, hop by hop.
    let http = one(trace, o, "POST /orders");
    assert!(
        http.parent.is_none(),
        "no incoming traceparent: the request is the root"
    );
    assert_eq!(http.tag("span.kind"), Some("server"));
    assert_eq!(http.tag("http.response.status_code"), Some("201"));
    let handler = one(trace, o, "create_order");
    assert_eq!(parent(trace, handler).span_id, http.span_id);
    let insert = one(trace, o, "INSERT orders");
    assert_eq!(parent(trace, insert).span_id, handler.span_id);
    assert_eq!(insert.tag("db.system.name"), Some("postgresql"));

    let sends: Vec<_> = trace.find(o, &flow.names.send_orders).collect();
    let placed_send = sends
        .iter()
        .find(|s| parent(trace, s).span_id == handler.span_id)
        .expect("the relay's send of OrderPlaced is the child of the handler that wrote the row");
    assert_eq!(placed_send.tag("span.kind"), Some("producer"));
    assert_eq!(placed_send.tag("messaging.system"), Some("kafka"));
    assert_eq!(
        placed_send.tag("messaging.destination.name"),
        Some(flow.order_topic.as_str())
    );
    assert_eq!(
        placed_send.tag("messaging.kafka.message.key"),
        Some(order_id.as_str())
    );
    assert!(placed_send.tag("messaging.kafka.offset").is_some());
    assert!(
        placed_send
            .tag("messaging.destination.partition.id")
            .is_some()
    );

    let consumed = processed(
        trace,
        i,
        &flow.names.process_orders,
        "OrderPlaced",
        "inventory processed OrderPlaced",
    );
    assert_eq!(parent(trace, consumed).span_id, placed_send.span_id);
    assert_eq!(consumed.tag("span.kind"), Some("consumer"));
    assert_eq!(consumed.tag("messaging.operation.type"), Some("process"));
    assert_eq!(
        consumed.tag("messaging.message.id"),
        placed_send.tag("messaging.message.id")
    );
    assert_eq!(consumed.tag("outcome"), Some("applied"));
    let reserve = one(trace, i, "reserve stock");
    assert_eq!(parent(trace, reserve).span_id, consumed.span_id);
    let reserved_send = one(trace, i, &flow.names.send_inventory);
    assert_eq!(parent(trace, reserved_send).span_id, reserve.span_id);
    let outcome = one(trace, o, &flow.names.process_inventory);
    assert_eq!(parent(trace, outcome).span_id, reserved_send.span_id);
    assert_eq!(outcome.tag("event.type"), Some("InventoryReserved"));
    let confirmed_send = sends
        .iter()
        .find(|s| parent(trace, s).span_id == outcome.span_id)
        .expect("OrderConfirmed's send is the child of the outcome's processing");
    let confirmed_seen = processed(
        trace,
        i,
        &flow.names.process_orders,
        "OrderConfirmed",
        "inventory saw OrderConfirmed too",
    );
    assert_eq!(
        parent(trace, confirmed_seen).span_id,
        confirmed_send.span_id
    );

    let roots: Vec<_> = trace.spans.iter().filter(|s| s.parent.is_none()).collect();
    assert_eq!(roots.len(), 1, "one root: {roots:#?}");
    for span in &trace.spans {
        if span.parent.is_some() {
            parent(trace, span);
        }
        assert_eq!(span.tag("request_id").unwrap_or(&request_id), request_id);
    }

    // The logs of both services, filtered by the request id, in time order.
    let mut lines: Vec<(String, Value)> = Vec::new();
    for (service, process) in [(o, &flow.order), (i, &flow.inventory)] {
        for line in process.json_logs() {
            if line["request_id"] == request_id.as_str() {
                lines.push((service.to_owned(), line));
            }
        }
    }
    lines.sort_by(|a, b| a.1["timestamp"].as_str().cmp(&b.1["timestamp"].as_str()));
    let story: Vec<(String, String)> = lines
        .iter()
        .map(|(s, l)| {
            (
                s.clone(),
                l["fields"]["message"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let position = |service: &str, message: &str| {
        story
            .iter()
            .position(|(s, m)| s == service && m == message)
            .unwrap_or_else(|| panic!("{service}: {message:?} in the story: {story:#?}"))
    };
    assert!(
        position(o, "order placed") < position(i, "stock reserved"),
        "{story:#?}"
    );
    assert!(
        position(i, "stock reserved") < position(o, "order decided"),
        "{story:#?}"
    );
    for (service, line) in &lines {
        assert_eq!(line["trace_id"], trace.id.as_str(), "{service}: {line}");
        assert!(
            line["span_id"].as_str().is_some_and(|s| s.len() == 16),
            "{line}"
        );
        assert_eq!(line["user_id"], "alice", "{service}: {line}");
    }
    eprintln!("story of {request_id}: {story:#?}");
    flow.stop().await;
}

#[tokio::test]
async fn with_debezium_as_the_relay_the_trace_still_holds() {
    let flow = Flow::start("on", "debezium").await;
    let request_id = unique("req");
    flow.place_and_confirm(&request_id).await;

    let (o, i) = (flow.order_name.as_str(), flow.inventory_name.as_str());
    let traces = Jaeger::from_env()
        .wait_for(o, &[("request_id", &request_id)], WAIT, |t| {
            t.len() == 1 && saga_complete(&t[0], &flow, false)
        })
        .await;
    assert_eq!(traces.len(), 1, "{traces:#?}");
    let trace = &traces[0];
    assert!(saga_complete(trace, &flow, false), "{trace:#?}");
    assert_eq!(
        trace.find(o, &flow.names.send_orders).count(),
        0,
        "Debezium publishes: no in-process relay span"
    );
    // Debezium's Outbox Event Router copies the row's traceparent column into the record's
    // header, so the consumer's parent is the span that wrote the row.
    let handler = one(trace, o, "create_order");
    let consumed = processed(
        trace,
        i,
        &flow.names.process_orders,
        "OrderPlaced",
        "inventory processed OrderPlaced",
    );
    assert_eq!(parent(trace, consumed).span_id, handler.span_id);
    let outcome = one(trace, o, &flow.names.process_inventory);
    assert_eq!(
        parent(trace, outcome).span_id,
        one(trace, i, &flow.names.send_inventory).span_id
    );
    let confirmed_seen = processed(
        trace,
        i,
        &flow.names.process_orders,
        "OrderConfirmed",
        "inventory saw OrderConfirmed (published by Debezium) in the same trace",
    );
    assert_eq!(parent(trace, confirmed_seen).span_id, outcome.span_id);
    assert_eq!(trace.spans.iter().filter(|s| s.parent.is_none()).count(), 1);
    flow.stop().await;
}

#[tokio::test]
async fn without_propagation_one_request_scatters_into_disconnected_traces() {
    let flow = Flow::start("off", "inprocess").await;
    let request_id = unique("req");
    flow.place_and_confirm(&request_id).await;

    let (o, i) = (flow.order_name.as_str(), flow.inventory_name.as_str());
    let jaeger = Jaeger::from_env();
    let count = |traces: &[Trace], name: &str| {
        traces
            .iter()
            .flat_map(|t| t.spans.iter())
            .filter(|s| s.name == name)
            .count()
    };
    // Only the traces of this flow: the request itself, and everything that went through Kafka
    // (health probes and status polls are traces of their own, and there are many).
    let kafka = [("messaging.system", "kafka")];
    let request = jaeger
        .wait_for(o, &[("request_id", &request_id)], WAIT, |t| t.len() == 1)
        .await;
    // Wait until the last hop of each service has been exported.
    let order_traces = jaeger
        .wait_for(o, &kafka, WAIT, |t| {
            count(t, &flow.names.process_inventory) == 1 && count(t, &flow.names.send_orders) == 2
        })
        .await;
    let inventory_traces = jaeger
        .wait_for(i, &kafka, WAIT, |t| {
            count(t, &flow.names.process_orders) == 2 && count(t, &flow.names.send_inventory) == 1
        })
        .await;
    assert_eq!(request.len(), 1, "{request:#?}");
    let mut ids: Vec<&str> = request
        .iter()
        .chain(&order_traces)
        .chain(&inventory_traces)
        .map(|t| t.id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    eprintln!(
        "PROPAGATION=off: one POST /orders left {} disconnected traces ({} in order-service, {} in inventory-service)",
        ids.len(),
        request.len() + order_traces.len(),
        inventory_traces.len()
    );
    assert_eq!(
        ids.len(),
        7,
        "HTTP, 2 sends and 1 process in order-service, 2 processes and 1 send in inventory-service: {ids:?}"
    );
    for trace in request.iter().chain(&order_traces).chain(&inventory_traces) {
        assert_eq!(
            trace.services().len(),
            1,
            "no trace spans both services: {trace:#?}"
        );
    }
    let followed: Vec<Value> = flow
        .inventory
        .json_logs()
        .into_iter()
        .filter(|l| l["request_id"] == request_id.as_str())
        .collect();
    assert!(
        followed.is_empty(),
        "the request id does not reach inventory: {followed:?}"
    );
    assert!(
        flow.order
            .json_logs()
            .iter()
            .any(|l| l["request_id"] == request_id.as_str()),
        "only order-service's own lines carry it"
    );
    flow.stop().await;
}

#[tokio::test]
async fn hostile_context_headers_are_replaced_or_dropped_never_propagated() {
    let flow = Flow::start("on", "inprocess").await;
    let long_id = "x".repeat(300);
    let cases: Vec<Vec<(&str, &[u8])>> = vec![
        vec![("x-request-id", long_id.as_bytes())],
        vec![("x-request-id", b"evil\tid\xff\xfe")],
        vec![("x-request-id", b"a\"b<script>")],
        vec![("traceparent", b"00-zzzz-not-a-trace-01")],
        vec![(
            "traceparent",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )],
        vec![("baggage", b"tenant=acme,password=hunter2")],
    ];
    let mut fresh_ids = Vec::new();
    for headers in &cases {
        let response = flow.place(headers).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{headers:?}");
        let returned = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let traceparent = response.headers()["traceparent"]
            .to_str()
            .unwrap()
            .to_owned();
        for (name, value) in headers {
            if *name == "x-request-id" {
                assert_ne!(returned.as_bytes(), *value, "never echoed");
                assert!(
                    uuid::Uuid::parse_str(&returned).is_ok(),
                    "replaced by a fresh id"
                );
            }
            if *name == "traceparent" {
                assert_ne!(
                    trace_id_of(&traceparent),
                    "4bf92f3577b34da6a3ce929d0e0e4736"
                );
            }
        }
        assert_eq!(
            eda_context::sanitize::traceparent(&traceparent),
            Some(traceparent.clone())
        );
        fresh_ids.push(returned);
    }
    // A well-formed incoming traceparent is honoured: the server span is its child.
    let caller_trace = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let response = flow
        .place(&[(
            "traceparent",
            format!("00-{caller_trace}-{caller_span}-01").as_bytes(),
        )])
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let traceparent = response.headers()["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(trace_id_of(&traceparent), caller_trace);

    // What reached Kafka: sanitised ids, only allowed baggage, a valid traceparent. Each
    // order has two events on the topic (OrderPlaced, then OrderConfirmed once stock is
    // reserved): read both for every order.
    let messages = consume_all(
        &flow.stack,
        &flow.order_topic,
        2 * (cases.len() + 1),
        WAIT,
        Duration::from_secs(1),
    )
    .await;
    let placed: Vec<_> = messages
        .iter()
        .filter(|m| header(m, "event-type").as_deref() == Some("OrderPlaced"))
        .collect();
    assert_eq!(placed.len(), cases.len() + 1);
    for message in &placed {
        let request_id = header(message, "request-id").unwrap();
        assert!(
            eda_context::sanitize::id(&request_id).is_some(),
            "{request_id}"
        );
        let tp = header(message, "traceparent").unwrap();
        assert_eq!(eda_context::sanitize::traceparent(&tp), Some(tp.clone()));
        if let Some(baggage) = header(message, "baggage") {
            assert_eq!(baggage, "tenant=acme", "unknown baggage keys never leave");
        }
    }
    assert!(
        placed
            .iter()
            .any(|m| header(m, "baggage").as_deref() == Some("tenant=acme"))
    );
    for id in &fresh_ids {
        assert!(
            placed
                .iter()
                .any(|m| header(m, "request-id").as_deref() == Some(id.as_str())),
            "the fresh id {id} is what travels"
        );
    }

    // Hostile Kafka headers on a record inventory consumes: replaced, and a new trace starts.
    let order_id = uuid::Uuid::now_v7().to_string();
    let event_id = uuid::Uuid::now_v7().to_string();
    let body =
        json!({"order_id": order_id, "lines": [{"sku": "SKU-1", "quantity": 1}]}).to_string();
    let headers = [
        ("event-id", event_id.as_str()),
        ("event-type", "OrderPlaced"),
        ("revision", "1"),
        ("traceparent", "00-zzzz"),
        ("request-id", "line\nbreak\u{1b}[31m"),
        ("user-id", "admin\r\nX-Forged: yes"),
        ("baggage", "password=hunter2"),
    ];
    produce(
        &flow.stack,
        &flow.order_topic,
        &order_id,
        &headers,
        body.as_bytes(),
    )
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let line = loop {
        let found = flow.inventory.json_logs().into_iter().find(|l| {
            l["fields"]["message"] == "stock reserved"
                && l["fields"]["order.id"] == order_id.as_str()
        });
        if let Some(line) = found {
            break line;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "inventory handled the record"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let request_id = line["request_id"].as_str().unwrap();
    assert!(
        uuid::Uuid::parse_str(request_id).is_ok(),
        "replaced: {line}"
    );
    assert!(
        line.get("user_id").is_none(),
        "an unusable user id is dropped: {line}"
    );
    assert!(
        line["trace_id"].as_str().is_some(),
        "a new trace started: {line}"
    );

    for process in [&flow.order, &flow.inventory] {
        let text = process.log_text();
        for raw in [
            "hunter2",
            "zzzz",
            "X-Forged",
            "<script>",
            long_id.as_str(),
            "\\u001b",
        ] {
            assert!(!text.contains(raw), "{raw:?} never reaches the logs");
        }
        assert!(!text.contains("\"level\":\"ERROR\""), "no errors: {text}");
    }
    flow.stop().await;
}

#[tokio::test]
async fn a_claim_checked_order_keeps_its_upload_and_download_in_the_request_trace() {
    // Pitfall 4 meets pitfall 3: the payload leaves Kafka for MinIO and back, the trace does
    // not break. 6,000 lines make an OrderPlaced of ~330 KB, over the 256 KiB threshold.
    let flow = Flow::start("on", "inprocess").await;
    let stocked = flow
        .client
        .put(format!("{}/inventory/SKU-1", flow.inventory.address))
        .bearer_auth(token("ops", &["admin"]))
        .json(&json!({"available": 10_000}))
        .send()
        .await
        .unwrap();
    assert!(stocked.status().is_success());
    let request_id = unique("bulk");
    let lines: Vec<Value> = (0..6_000)
        .map(|_| json!({"sku": "SKU-1", "quantity": 1, "unit_price_cents": 100}))
        .collect();
    let response = flow
        .client
        .post(format!("{}/orders", flow.order.address))
        .bearer_auth(token("alice", &[]))
        .header("x-request-id", &request_id)
        .json(&json!({"customer": {"name": "B2B", "email": "b2b@example.com"}, "currency": "EUR", "lines": lines}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let order: Value = response.json().await.unwrap();
    flow.wait_status(order["id"].as_str().unwrap(), "CONFIRMED")
        .await;

    let (o, i) = (flow.order_name.as_str(), flow.inventory_name.as_str());
    let traces = Jaeger::from_env()
        .wait_for(o, &[("request_id", &request_id)], WAIT, |t| {
            t.len() == 1
                && t[0].find(i, "claim-check download").count() == 1
                && saga_complete(&t[0], &flow, true)
        })
        .await;
    let trace = &traces[0];
    let upload = one(trace, o, "claim-check upload");
    assert_eq!(
        parent(trace, upload).name,
        "create_order",
        "uploaded inside the request"
    );
    assert!(upload.tag("payload.size").unwrap().parse::<u64>().unwrap() > 256 * 1024);
    let download = one(trace, i, "claim-check download");
    let consumed = parent(trace, download);
    assert_eq!(
        consumed.name, flow.names.process_orders,
        "fetched inside the consumer's span"
    );
    assert_eq!(consumed.tag("event.type"), Some("OrderPlaced"));
    flow.stop().await;
}

#[tokio::test]
async fn the_projection_joins_the_request_trace_across_cdc() {
    // Change events carry no headers of ours: order-service writes its traceparent into the
    // order row, Debezium captures it, and projection-service's span is its child.
    let flow = Flow::start("on", "inprocess").await;
    let cdc = CdcConnector::register(
        &flow.stack,
        &flow.order_db.name,
        &["public.orders", "public.order_items"],
    )
    .await;
    let view_db = TempDatabase::create(&flow.stack).await;
    let projection_name = format!("projection-service-{}", unique("t"));
    let env = vec![
        ("DATABASE_URL", flow.stack.database_url(&view_db.name)),
        (
            "KAFKA_BOOTSTRAP_SERVERS",
            flow.stack.kafka_bootstrap_servers.clone(),
        ),
        ("CDC_TOPICS", cdc.topics.join(",")),
        ("CONSUMER_GROUP", unique("projection")),
        ("JWT_SECRET", SECRET.to_owned()),
        ("PROPAGATION", "on".to_owned()),
        ("OTEL_SERVICE_NAME", projection_name.clone()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200".to_owned()),
        ("RUST_LOG", "info".to_owned()),
        ("LOG_FORMAT", "json".to_owned()),
        ("TRACE_FILTER", "info".to_owned()),
        ("OTEL_TRACES_SAMPLER", "parentbased_always_on".to_owned()),
        ("OTEL_TRACES_EXPORTER", "otlp".to_owned()),
        ("OTEL_SDK_DISABLED", "false".to_owned()),
    ];
    let projection = ServiceProcess::start(
        &sibling_binary(env!("CARGO_BIN_EXE_order-service"), "projection-service"),
        &projection_name,
        &env,
    )
    .await;

    let request_id = unique("req");
    let (_, order_id) = flow.place_and_confirm(&request_id).await;
    let (o, i, p) = (
        flow.order_name.as_str(),
        flow.inventory_name.as_str(),
        projection_name.as_str(),
    );
    let traces = Jaeger::from_env()
        .wait_for(o, &[("request_id", &request_id)], WAIT, |t| {
            t.len() == 1
                && saga_complete(&t[0], &flow, true)
                && t[0].find(p, "project orders").count() == 2
        })
        .await;
    let trace = &traces[0];
    assert_eq!(trace.services(), {
        let mut names = vec![i, o, p];
        names.sort_unstable();
        names
    });
    // The insert's projection hangs under the request's create_order; the confirmation's under
    // order-service's processing of the inventory outcome.
    let parents: Vec<&str> = trace
        .find(p, "project orders")
        .map(|s| parent(trace, s).name.as_str())
        .collect();
    assert!(parents.contains(&"create_order"), "{parents:?}");
    assert!(
        parents.contains(&flow.names.process_inventory.as_str()),
        "{parents:?}"
    );
    // And the view has the order.
    let view: Value = flow
        .client
        .get(format!(
            "{}/orders/{order_id}?min_revision=2",
            projection.address
        ))
        .bearer_auth(token("alice", &[]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["status"], "CONFIRMED", "{view}");
    projection.stop().await;
    cdc.remove(&flow.order_db.pool().await).await;
    flow.stop().await;
}
