//! Against the running stack: a span recorded through `tracing` after `eda_telemetry::init`
//! reaches Jaeger over OTLP and can be read back through Jaeger's query API.
//! (Its own test binary: `init` installs a process-wide subscriber, once.)

use std::time::{Duration, Instant};

use opentelemetry::trace::TraceContextExt as _;
use serde_json::Value;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

fn jaeger_query_url() -> String {
    std::env::var("JAEGER_QUERY_URL").unwrap_or_else(|_| "http://127.0.0.1:16686".to_owned())
}

#[test]
fn spans_are_exported_to_jaeger_and_flushed_by_the_guard() {
    let service = format!("telemetry-test-{}", uuid::Uuid::new_v4().simple());
    let mut config =
        eda_telemetry::TelemetryConfig::from_env(&service).with_service_version("9.8.7-test");
    config.service_name = service.clone();
    config.export_traces = true;
    let guard = eda_telemetry::init(config).expect("telemetry initialises");

    let trace_id = {
        let root = tracing::info_span!("checkout", order.id = "order-42");
        let _entered = root.enter();
        let child = tracing::info_span!("reserve-stock", sku = "SKU-1");
        child.in_scope(|| tracing::info!(quantity = 2, "reserved"));
        root.context().span().span_context().trace_id().to_string()
    };
    assert_eq!(
        trace_id.len(),
        32,
        "a real trace id was assigned: {trace_id}"
    );
    // Dropping the guard must export what is still buffered: that is its whole point.
    drop(guard);

    let url = format!("{}/api/traces/{trace_id}", jaeger_query_url());
    let deadline = Instant::now() + Duration::from_secs(30);
    let trace = loop {
        let response = reqwest::blocking::get(&url).expect("Jaeger query API answers");
        if response.status().is_success() {
            let body: Value = response.json().unwrap();
            let spans = body["data"][0]["spans"].as_array().map_or(0, Vec::len);
            if spans == 2 {
                break body["data"][0].clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "trace {trace_id} not in Jaeger after 30s ({url})"
        );
        std::thread::sleep(Duration::from_millis(300));
    };

    let spans = trace["spans"].as_array().unwrap();
    let by_name = |name: &str| {
        spans
            .iter()
            .find(|s| s["operationName"] == name)
            .unwrap_or_else(|| panic!("span {name} missing"))
    };
    let (root, child) = (by_name("checkout"), by_name("reserve-stock"));
    assert_eq!(child["references"][0]["refType"], "CHILD_OF");
    assert_eq!(
        child["references"][0]["spanID"], root["spanID"],
        "reserve-stock is a child of checkout"
    );
    let process = &trace["processes"][root["processID"].as_str().unwrap()];
    assert_eq!(process["serviceName"], service.as_str());
    assert!(
        process["tags"].as_array().is_some_and(|tags| tags
            .iter()
            .any(|t| t["key"] == "service.version" && t["value"] == "9.8.7-test")),
        "service.version is the one the caller gave: {process}"
    );
    let tags = root["tags"].as_array().unwrap();
    assert!(
        tags.iter()
            .any(|t| t["key"] == "order.id" && t["value"] == "order-42"),
        "span fields become tags: {tags:?}"
    );
}
