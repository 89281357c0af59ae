//! Pitfall 3: one request followed through Jaeger. Naive: order-service and inventory-service
//! with `PROPAGATION=off`: each hop (the HTTP request, every send and every processing of the
//! order's events) starts a trace of its own. Fixed (default): context travels in the event
//! headers, across the outbox hop, and the whole saga is one trace.
//!
//! The pieces of a request are found in Jaeger by what they carry even when context is lost:
//! the HTTP trace by its `request_id`, every Kafka hop by its message key (the order id). The
//! number is how many distinct trace ids hold them. inventory-service's log lines written for
//! the request are counted too: without propagation they do not know its request id.

use std::collections::BTreeMap;
use std::io::{Read as _, Seek as _};
use std::path::Path;
use std::time::{Duration, Instant};

use eda_jaeger_query::{Jaeger, Trace};
use serde_json::json;

use super::api::order_body;
use super::summary::{Outcome, Verdict};
use super::system::{INVENTORY, Need, ORDER, System};
use super::{BoxError, say};

/// How long the spans of a saga may take to reach Jaeger (exporters batch them).
const SPANS_WAIT: Duration = Duration::from_secs(45);

/// What one request left in Jaeger.
#[derive(Debug)]
struct Found {
    traces: Vec<Trace>,
    /// Every hop of the saga was found.
    complete: bool,
    spans: usize,
    both_services_in_one: bool,
    inventory_log_lines: Option<usize>,
}

/// Runs pitfall 3.
pub async fn run(system: &System) -> Result<Outcome, BoxError> {
    let needs = [
        Need::Component("postgres"),
        Need::Component("kafka"),
        Need::Component("jaeger"),
        Need::Service(ORDER),
        Need::Service(INVENTORY),
    ];
    if let Err(reason) = system.require(&needs).await {
        return Ok(Outcome::skipped(3, &reason));
    }
    say("naive: order-service and inventory-service with PROPAGATION=off");
    system.set_modes(ORDER, &[("PROPAGATION", "off")]).await?;
    system
        .set_modes(INVENTORY, &[("PROPAGATION", "off")])
        .await?;
    let naive = one_request(system, "naive").await?;
    say("fixed: context in the headers, across the outbox hop (PROPAGATION=on, default)");
    system.set_modes(ORDER, &[]).await?;
    system.set_modes(INVENTORY, &[]).await?;
    let fixed = one_request(system, "fixed").await?;

    if let [trace] = fixed.traces.as_slice() {
        // The trace as `make trace` prints it, on stdout with the table.
        let text = format!(
            "\npitfall 3, fixed mode: the request's one trace\n{}",
            crate::trace::render(trace)
        );
        use std::io::Write as _;
        let _ = std::io::stdout().lock().write_all(text.as_bytes());
    }
    let verdict = Verdict::of(
        naive.traces.len() > 1,
        fixed.traces.len() == 1 && fixed.both_services_in_one && fixed.complete,
    );
    let logs = |f: &Found| {
        f.inventory_log_lines.map_or_else(String::new, |n| {
            format!("; {n} inventory log lines carry its request id")
        })
    };
    Ok(Outcome::new(
        3,
        verdict,
        format!(
            "PROPAGATION=off: {} disconnected traces{}{}",
            naive.traces.len(),
            if naive.complete {
                ""
            } else {
                " (saga not complete in Jaeger)"
            },
            logs(&naive)
        ),
        format!(
            "one trace of {} spans across {} services{}{}",
            fixed.spans,
            fixed.traces.first().map_or(0, |t| t.services().len()),
            if fixed.complete {
                ""
            } else {
                " (saga not complete in Jaeger)"
            },
            logs(&fixed)
        ),
        format!(
            "traces for one request: {} vs {}",
            naive.traces.len(),
            fixed.traces.len()
        ),
        json!({
            "naive": summary_json(&naive),
            "fixed": summary_json(&fixed),
        }),
    ))
}

fn summary_json(f: &Found) -> serde_json::Value {
    json!({
        "traces": f.traces.len(),
        "trace_ids": f.traces.iter().map(|t| t.id.clone()).collect::<Vec<_>>(),
        "spans": f.spans,
        "saga_complete": f.complete,
        "inventory_log_lines_with_request_id": f.inventory_log_lines,
    })
}

/// Places one order with a request id of its own, waits until it is confirmed and its spans
/// are in Jaeger, and gathers the traces holding its pieces.
async fn one_request(system: &System, mode: &str) -> Result<Found, BoxError> {
    let user = format!("demo-{}-p3-{mode}", system.run_id);
    let sku = format!("DEMO-{}-P3-{}", system.run_id, mode.to_uppercase());
    let request_id = format!("demo-{}-p3-{mode}", system.run_id.to_lowercase());
    system.api.set_stock(&sku, 10).await?;
    let log = system.log_of(INVENTORY).map(Path::to_path_buf);
    let log_start = log
        .as_deref()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| m.len());
    let placed = system
        .api
        .place(&user, &order_body(&[(&sku, 1)]), Some(&request_id))
        .await?;
    let id = placed.body["id"]
        .as_str()
        .filter(|_| placed.status.as_u16() == 201)
        .ok_or_else(|| format!("POST /orders: HTTP {} {}", placed.status, placed.body))?
        .to_owned();
    let traceparent = placed
        .headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    say(&format!(
        "{mode}: POST /orders x-request-id {request_id} -> order {id}, traceparent {traceparent}"
    ));
    let (status, took) = system
        .api
        .wait_status(&user, &id, &super::api::SETTLED, Duration::from_secs(60))
        .await?;
    say(&format!(
        "{mode}: order {status} after {:.1} s; gathering its spans from Jaeger (by request id and by message key)",
        took.as_secs_f64()
    ));

    let services = Services {
        order: system
            .found_var(ORDER, "OTEL_SERVICE_NAME")
            .unwrap_or_else(|| ORDER.to_owned()),
        inventory: system
            .found_var(INVENTORY, "OTEL_SERVICE_NAME")
            .unwrap_or_else(|| INVENTORY.to_owned()),
        relay_in_process: system
            .found_var(ORDER, "RELAY_MODE")
            .is_none_or(|m| m != "debezium"),
    };
    let jaeger = Jaeger::new(&system.jaeger_url);
    let started = Instant::now();
    let (traces, complete) = loop {
        let traces = gather(&jaeger, &services, &request_id, &id).await?;
        let complete = services.saga_complete(&traces);
        if complete || started.elapsed() > SPANS_WAIT {
            break (traces, complete);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // The fixed mode's one trace, whole (projection-service's spans join it through CDC).
    let traces = if let [t] = traces.as_slice() {
        vec![jaeger.trace(&t.id).await?.unwrap_or_else(|| t.clone())]
    } else {
        traces
    };
    let spans = traces.iter().map(|t| t.spans.len()).sum();
    let both_services_in_one = traces.iter().any(|t| {
        let names = t.services();
        names.contains(&services.order.as_str()) && names.contains(&services.inventory.as_str())
    });
    let inventory_log_lines = match (log.as_deref(), log_start) {
        (Some(path), Some(start)) => lines_with_request_id(path, start, &request_id).ok(),
        _ => None,
    };
    let per_service: BTreeMap<&str, usize> = traces.iter().fold(BTreeMap::new(), |mut acc, t| {
        for s in t.services() {
            *acc.entry(s).or_default() += 1;
        }
        acc
    });
    say(&format!(
        "{mode}: {} trace(s) hold the request ({spans} spans; traces per service: {}){}",
        traces.len(),
        per_service
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        if complete {
            ""
        } else {
            "; not every hop reached Jaeger in time"
        }
    ));
    if let Some(n) = inventory_log_lines {
        say(&format!(
            "{mode}: {n} inventory-service log lines carry request_id {request_id}"
        ));
    }
    Ok(Found {
        traces,
        complete,
        spans,
        both_services_in_one,
        inventory_log_lines,
    })
}

/// The names the services export spans under.
struct Services {
    order: String,
    inventory: String,
    relay_in_process: bool,
}

impl Services {
    /// Every hop of the saga has its span among `traces` (the same check as the trace tests).
    fn saga_complete(&self, traces: &[Trace]) -> bool {
        let count = |service: &str, name: &str| -> usize {
            traces.iter().map(|t| t.find(service, name).count()).sum()
        };
        count(&self.order, "POST /orders") >= 1
            && count(&self.inventory, "process order.events") >= 2
            && count(&self.inventory, "send inventory.events") >= 1
            && count(&self.order, "process inventory.events") >= 1
            && (!self.relay_in_process || count(&self.order, "send order.events") >= 2)
    }
}

/// The traces with a span tagged with the request id (order-service's HTTP spans), or with the
/// order id as message key (every Kafka hop of either service), without duplicates.
async fn gather(
    jaeger: &Jaeger,
    services: &Services,
    request_id: &str,
    order_id: &str,
) -> Result<Vec<Trace>, BoxError> {
    let mut found: Vec<Trace> = Vec::new();
    let mut add = |traces: Vec<Trace>| {
        for t in traces {
            match found.iter_mut().find(|f| f.id == t.id) {
                Some(f) if f.spans.len() < t.spans.len() => *f = t,
                Some(_) => {}
                None => found.push(t),
            }
        }
    };
    add(jaeger
        .search(&services.order, &[("request_id", request_id)])
        .await?);
    for service in [&services.order, &services.inventory] {
        add(jaeger
            .search(service, &[("messaging.kafka.message.key", order_id)])
            .await?);
    }
    found.sort_by_key(|t| t.start_us());
    Ok(found)
}

/// JSON log lines appended to `path` since byte `start` whose `request_id` is `request_id`.
fn lines_with_request_id(path: &Path, start: u64, request_id: &str) -> std::io::Result<usize> {
    let mut f = std::fs::File::open(path)?;
    f.seek(std::io::SeekFrom::Start(start))?;
    let mut text = String::new();
    f.take(256 * 1024 * 1024).read_to_string(&mut text)?;
    Ok(count_request_id(&text, request_id))
}

fn count_request_id(text: &str, request_id: &str) -> usize {
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["request_id"].as_str() == Some(request_id))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_json_lines_of_the_request_count() {
        let text = "{\"request_id\":\"r1\",\"fields\":{}}\nnot json\n{\"request_id\":\"r2\"}\n\
                    {\"fields\":{\"request_id\":\"r1\"}}\n{\"request_id\":\"r1\"}\n";
        assert_eq!(count_request_id(text, "r1"), 2);
        assert_eq!(count_request_id(text, "r3"), 0);
    }
}
