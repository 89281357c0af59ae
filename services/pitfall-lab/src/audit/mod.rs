//! `pitfall-lab audit`: an independent auditor of the running system. It reads what the
//! services publish and store (every topic from the beginning, every service database) and
//! reports the violations of the contract, with counts and a few examples:
//!
//! 1. committed changes without their event;
//! 2. events without a committed change;
//! 3. effects applied more than once;
//! 4. per-key revision order broken on a topic;
//! 5. stock arithmetic that does not add up;
//! 6. views that differ from their source rows.
//!
//! It shares no code with the services' domain logic: what it knows of them is the contract
//! (topics, headers, tables, statuses), written down in `contract`.
//!
//! # How one attempt reads, and why in this order
//! 1. The topics' high watermarks and the consumer groups' committed offsets: an event below
//!    those watermarks was published, so its change was committed, before the databases are
//!    read (check 2 judges only those); a committed offset is stored after its effect commits.
//! 2. One snapshot per database: projection, then inventory, then orders (a later snapshot
//!    can only be newer: a view is never rightly ahead of its source, an order may be ahead of
//!    its reservation, not the reverse).
//! 3. Every topic from the beginning up to watermarks taken now, with a consumer that joins no
//!    group and commits nothing: every event of a change in the snapshots is below them.
//!
//! What is on its way is not a violation but "in flight", and reported as such: unpublished
//! outbox rows, changes a consumer has not reached yet, views lagging behind changes their
//! consumer has not applied yet. `--settle` repeats the audit until it is clean and nothing is
//! in flight, or the time runs out.
//!
//! # Layout
//! - `contract`: what the audit knows of the system. `report`: checks, findings, text and JSON.
//! - Sources: `kafka` (reading topics), `events` and `cdc` (facts from event and change-event
//!   topics), `db` and `rows` (the databases).
//! - Checks: `missing` (1), `orphans` (2), `duplicates` (3), ordering in `events`/`cdc` (4),
//!   `stock` (5), `views` (6).

mod cdc;
mod collections;
mod contract;
mod db;
mod duplicates;
mod events;
mod kafka;
mod missing;
mod orphans;
mod report;
mod rows;
mod stock;
mod views;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use contract::{ORDER, RESERVATION, defaults};
use report::{Check, Findings, Report, Sources};

/// `pitfall-lab audit`.
#[derive(Debug, clap::Args)]
pub struct Audit {
    /// order-service's database. Default: `DATABASE_ADMIN_URL` (infra/env.sh) with database
    /// `orders`.
    #[arg(long, value_name = "URL")]
    orders_db: Option<String>,
    /// inventory-service's database. Default: as above, database `inventory`.
    #[arg(long, value_name = "URL")]
    inventory_db: Option<String>,
    /// projection-service's database. Default: as above, database `projection`.
    #[arg(long, value_name = "URL")]
    projection_db: Option<String>,
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    bootstrap: String,
    /// order-service's event topic (its dead letters: `<topic>.dlq`).
    #[arg(long, env = "ORDER_EVENTS_TOPIC", default_value = defaults::ORDER_TOPIC)]
    order_topic: String,
    /// inventory-service's event topic.
    #[arg(long, env = "INVENTORY_EVENTS_TOPIC", default_value = defaults::INVENTORY_TOPIC)]
    inventory_topic: String,
    /// The Debezium change-event topics projection-service reads, comma-separated.
    #[arg(long, env = "CDC_TOPICS", default_value = defaults::CDC_TOPICS, value_delimiter = ',')]
    cdc_topics: Vec<String>,
    /// order-service's consumer group (of the inventory topic).
    #[arg(long, default_value = defaults::ORDER_GROUP)]
    order_group: String,
    /// inventory-service's consumer group (of the order topic).
    #[arg(long, default_value = defaults::INVENTORY_GROUP)]
    inventory_group: String,
    /// projection-service's consumer group (of the CDC topics).
    #[arg(long, default_value = defaults::PROJECTION_GROUP)]
    projection_group: String,
    /// Only these checks, by number or name, comma-separated: 1 missing-events, 2
    /// orphan-events, 3 duplicate-effects, 4 order, 5 stock, 6 views. Default: all.
    #[arg(long, value_delimiter = ',', value_parser = Check::parse)]
    checks: Vec<Check>,
    /// Audit again until clean with nothing in flight, for at most this many seconds (the
    /// system is asynchronous: an order placed a moment ago may not be everywhere yet). What is
    /// still in flight then is no violation, but the exit code is 3: the system did not settle.
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    settle: u64,
    /// Examples shown per check.
    #[arg(long, default_value_t = 3)]
    examples: usize,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

/// The audit found violations: exit code 1.
#[derive(Debug)]
pub struct Violations(pub u64);

impl std::fmt::Display for Violations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "audit: {} violation{} of the contract",
            self.0,
            if self.0 == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for Violations {}

/// The audit could not run (a database or Kafka unreachable): exit code 2.
#[derive(Debug)]
pub struct Failed(pub String);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "audit: {}", self.0)
    }
}

impl std::error::Error for Failed {}

/// No violation, but with `--settle` the system did not settle in time (something stayed in
/// flight: a stopped consumer, a parked row's successors...): exit code 3.
#[derive(Debug)]
pub struct NotSettled(pub u64);

impl std::fmt::Display for NotSettled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "audit: no violation, but {} thing{} still in flight when --settle ran out",
            self.0,
            if self.0 == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for NotSettled {}

/// The exit code for an error of the audit (1: violations, 2: could not run, 3: not settled),
/// if it is one.
pub fn exit_code(err: &(dyn std::error::Error + 'static)) -> Option<std::process::ExitCode> {
    if err.is::<Violations>() {
        Some(std::process::ExitCode::from(1))
    } else if err.is::<Failed>() {
        Some(std::process::ExitCode::from(2))
    } else if err.is::<NotSettled>() {
        Some(std::process::ExitCode::from(3))
    } else {
        None
    }
}

/// `DATABASE_ADMIN_URL` (or `PG_USER`, `PG_PASSWORD`, `PG_PORT` on 127.0.0.1, as
/// infra/env.sh builds it) with its database replaced by `database`.
fn default_url(database: &str) -> String {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let admin = var("DATABASE_ADMIN_URL").unwrap_or_else(|| {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/postgres",
            var("PG_USER").unwrap_or_else(|| "eda".to_owned()),
            var("PG_PASSWORD").unwrap_or_else(|| "eda".to_owned()),
            var("PG_PORT").unwrap_or_else(|| "5432".to_owned())
        )
    });
    with_database(&admin, database)
}

/// `url` naming `database` instead of its own (query parameters kept).
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority..].find('/') {
        Some(slash) => &base[..authority + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

/// Runs the audit, prints the report, writes the JSON one if asked.
pub async fn run(args: Audit) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut checks = if args.checks.is_empty() {
        Check::ALL.to_vec()
    } else {
        args.checks.clone()
    };
    checks.sort();
    checks.dedup();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.settle);
    let mut attempts = 0;
    let (findings, sources) = loop {
        attempts += 1;
        let attempt = once(&args, &checks).await;
        let now = Instant::now();
        // While settling, a component that is away for a moment (a broker restarting) is one
        // more reason to try again, not a verdict.
        let (findings, sources) = match attempt {
            Ok(done) => done,
            Err(err) if now < deadline => {
                #[allow(clippy::print_stderr)] // progress of a long-running command
                {
                    eprintln!("pitfall-lab audit: attempt {attempts}: {err}; trying again");
                }
                tokio::time::sleep((deadline - now).min(Duration::from_secs(2))).await;
                continue;
            }
            Err(err) => return Err(Box::new(Failed(err))),
        };
        let quiet = findings.violations() == 0 && findings.in_flight.is_empty();
        if quiet || now >= deadline {
            break (findings, sources);
        }
        tokio::time::sleep((deadline - now).min(Duration::from_secs(2))).await;
    };
    let report = Report {
        findings,
        sources,
        attempts,
        elapsed_secs: started.elapsed().as_secs_f64(),
    };
    if let Some(path) = &args.json {
        let text =
            serde_json::to_string_pretty(&report.json()).map_err(|e| Failed(e.to_string()))?;
        std::fs::write(path, text)
            .map_err(|e| Failed(format!("writing {}: {e}", path.display())))?;
    }
    {
        use std::io::Write as _;
        let _ = std::io::stdout().lock().write_all(report.text().as_bytes());
    }
    let in_flight: u64 = report.findings.in_flight.values().sum();
    match report.findings.violations() {
        0 if args.settle > 0 && in_flight > 0 => Err(Box::new(NotSettled(in_flight))),
        0 => Ok(()),
        n => Err(Box::new(Violations(n))),
    }
}

/// What a topic is to the audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    OrderEvents,
    InventoryEvents,
    DeadLetters,
    Changes,
}

/// What the topics hold, gathered while reading.
#[derive(Debug)]
struct Sink {
    roles: HashMap<String, Role>,
    /// High watermarks read before the databases, per topic and partition.
    snapshot_ends: HashMap<String, Vec<i64>>,
    order: events::EventTopic,
    inventory: events::EventTopic,
    dead: events::DeadLetters,
    cdc: cdc::Cdc,
    records: HashMap<String, u64>,
    findings: Findings,
}

impl Sink {
    fn ingest(&mut self, record: &events::Record<'_>) {
        match self.records.get_mut(record.topic) {
            Some(n) => *n += 1,
            None => {
                self.records.insert(record.topic.to_owned(), 1);
            }
        }
        let end = || {
            self.snapshot_ends
                .get(record.topic)
                .and_then(|ends| ends.get(usize::try_from(record.partition).ok()?))
                .copied()
                .unwrap_or(0)
        };
        match self.roles.get(record.topic) {
            Some(Role::OrderEvents) => {
                let end = end();
                self.order.ingest(record, end, &mut self.findings);
            }
            Some(Role::InventoryEvents) => {
                let end = end();
                self.inventory.ingest(record, end, &mut self.findings);
            }
            Some(Role::DeadLetters) => self.dead.ingest(record),
            Some(Role::Changes) => self.cdc.ingest(record, &mut self.findings),
            None => {}
        }
    }
}

/// The larger of two stored positions per partition.
fn furthest(
    a: &HashMap<(String, i32), i64>,
    b: &HashMap<(String, i32), i64>,
) -> HashMap<(String, i32), i64> {
    let mut out = a.clone();
    for (k, v) in b {
        let e = out.entry(k.clone()).or_insert(*v);
        *e = (*e).max(*v);
    }
    out
}

/// One audit: read everything, run the checks.
async fn once(args: &Audit, checks: &[Check]) -> Result<(Findings, Sources), String> {
    let mut findings = Findings::new(checks, args.examples);
    let runs = |c: &[Check]| c.iter().any(|c| findings.runs(*c));
    let need_events = runs(&[
        Check::MissingEvents,
        Check::OrphanEvents,
        Check::DuplicateEffects,
        Check::Order,
        Check::Stock,
    ]);
    let need_changes = runs(&[Check::Order, Check::Stock, Check::Views]);
    let need_db = runs(&[
        Check::MissingEvents,
        Check::OrphanEvents,
        Check::DuplicateEffects,
        Check::Stock,
        Check::Views,
    ]);
    let need_views = findings.runs(Check::Views);

    let mut roles: HashMap<String, Role> = HashMap::new();
    if need_events {
        roles.insert(args.order_topic.clone(), Role::OrderEvents);
        roles.insert(args.inventory_topic.clone(), Role::InventoryEvents);
        for t in [&args.order_topic, &args.inventory_topic] {
            roles.insert(format!("{t}.dlq"), Role::DeadLetters);
        }
    }
    if need_changes {
        for t in args.cdc_topics.iter().filter(|t| !t.trim().is_empty()) {
            roles.insert(t.trim().to_owned(), Role::Changes);
            roles
                .entry(format!("{}.dlq", t.trim()))
                .or_insert(Role::DeadLetters);
        }
    }
    let mut names: Vec<String> = roles.keys().cloned().collect();
    names.sort();

    // 1. Watermarks and committed offsets, before any snapshot.
    let bootstrap = args.bootstrap.clone();
    let audit_group = format!("pitfall-lab-audit-{}", uuid::Uuid::new_v4().simple());
    let groups = db::Groups {
        order: args.order_group.clone(),
        inventory: args.inventory_group.clone(),
        projection: args.projection_group.clone(),
    };
    let (marks, committed) = {
        let (names, roles, groups, bootstrap, audit_group) = (
            names.clone(),
            roles.clone(),
            groups.clone(),
            bootstrap.clone(),
            audit_group.clone(),
        );
        let (order_topic, inventory_topic) =
            (args.order_topic.clone(), args.inventory_topic.clone());
        tokio::task::spawn_blocking(move || -> Result<_, String> {
            let consumer = kafka::consumer(&bootstrap, &audit_group)?;
            let marks = kafka::watermarks(&consumer, &names)?;
            let parts = |pick: &dyn Fn(&str, Role) -> bool| -> Vec<kafka::Partition> {
                let mut out = Vec::new();
                for (topic, m) in &marks {
                    if roles.get(topic).is_some_and(|r| pick(topic, *r)) {
                        out.extend((0..m.len()).map(|p| (topic.clone(), p as i32)));
                    }
                }
                out
            };
            let committed = (
                kafka::committed(
                    &bootstrap,
                    &groups.order,
                    &parts(&|t, _| t == inventory_topic),
                )?,
                kafka::committed(
                    &bootstrap,
                    &groups.inventory,
                    &parts(&|t, _| t == order_topic),
                )?,
                kafka::committed(
                    &bootstrap,
                    &groups.projection,
                    &parts(&|_, r| r == Role::Changes),
                )?,
            );
            Ok((marks, committed))
        })
        .await
        .map_err(|e| format!("reading Kafka: {e}"))??
    };
    if need_events {
        for topic in [&args.order_topic, &args.inventory_topic] {
            if !marks.contains_key(topic) {
                return Err(format!(
                    "topic {topic} does not exist (is the stack up? is the name right?)"
                ));
            }
        }
    }
    for name in &names {
        if !marks.contains_key(name) {
            findings.note(format!("topic {name} does not exist: not read"));
        }
    }

    // 2. The databases.
    let urls = db::Urls {
        orders: args
            .orders_db
            .clone()
            .unwrap_or_else(|| default_url("orders")),
        inventory: args
            .inventory_db
            .clone()
            .unwrap_or_else(|| default_url("inventory")),
        projection: args
            .projection_db
            .clone()
            .unwrap_or_else(|| default_url("projection")),
    };
    let facts = if need_db {
        db::read(&urls, &groups, need_views, &mut findings).await?
    } else {
        db::DbFacts::default()
    };

    // 3. The topics, up to watermarks taken now.
    let inventory_positions = furthest(&committed.1, &facts.offsets.1);
    let order_positions = furthest(&committed.0, &facts.offsets.0);
    let projection_positions = furthest(&committed.2, &facts.offsets.2);
    let mut cdc = cdc::Cdc::default();
    cdc.positions = projection_positions.clone();
    cdc.suspects = facts
        .views
        .suspects
        .keys()
        .map(|k| (k.clone(), cdc::Seen::default()))
        .collect();
    cdc.stock_rows = facts
        .stock
        .iter()
        .map(|(sku, r)| {
            (
                sku.clone(),
                cdc::StockState {
                    revision: r.revision,
                    available: r.available,
                    reserved: r.reserved,
                },
            )
        })
        .collect();
    let sink = Sink {
        roles: roles.clone(),
        snapshot_ends: marks
            .iter()
            .map(|(t, m)| (t.clone(), m.iter().map(|(_, high)| *high).collect()))
            .collect(),
        order: events::EventTopic::new(&args.order_topic),
        inventory: events::EventTopic::new(&args.inventory_topic),
        dead: events::DeadLetters::default(),
        cdc,
        records: HashMap::new(),
        findings,
    };
    let (mut sink, partitions) = {
        let names = names.clone();
        tokio::task::spawn_blocking(move || -> Result<_, String> {
            let mut sink = sink;
            let consumer = kafka::consumer(&bootstrap, &audit_group)?;
            let marks = kafka::watermarks(&consumer, &names)?;
            let ends: HashMap<kafka::Partition, i64> = marks
                .iter()
                .flat_map(|(t, m)| {
                    m.iter()
                        .enumerate()
                        .map(move |(p, (_, high))| ((t.clone(), p as i32), *high))
                })
                .collect();
            kafka::read(&consumer, &ends, |record| sink.ingest(record))?;
            let partitions: BTreeMap<String, usize> =
                marks.iter().map(|(t, m)| (t.clone(), m.len())).collect();
            Ok((sink, partitions))
        })
        .await
        .map_err(|e| format!("reading Kafka: {e}"))??
    };

    // 4. The checks that need both.
    let mut findings = std::mem::replace(&mut sink.findings, Findings::new(&[], 0));
    let none = HashMap::new();
    let truncated = |topic: &String| {
        marks
            .get(topic)
            .is_some_and(|m| m.iter().any(|(low, _)| *low > 0))
    };
    let order_side = events::Side {
        aggregate: &ORDER,
        rows: &facts.orders,
        topic: &sink.order,
        pending: facts.pending.get(&args.order_topic).unwrap_or(&none),
        truncated: truncated(&args.order_topic),
    };
    let inventory_side = events::Side {
        aggregate: &RESERVATION,
        rows: &facts.reservations,
        topic: &sink.inventory,
        pending: facts.pending.get(&args.inventory_topic).unwrap_or(&none),
        truncated: truncated(&args.inventory_topic),
    };
    if need_db && need_events {
        for side in [order_side, inventory_side] {
            if findings.runs(Check::MissingEvents) {
                missing::check(side, &mut findings);
            }
            if findings.runs(Check::OrphanEvents) {
                orphans::check(side, &mut findings);
            }
            if findings.runs(Check::DuplicateEffects) {
                duplicates::check(side, &mut findings);
            }
        }
        if findings.runs(Check::Stock) {
            stock::against_changes(&facts.stock, &sink.cdc.stock, &mut findings);
            let consumers = stock::Consumers {
                inventory_group: args.inventory_group.clone(),
                inventory: inventory_positions.clone(),
                order_group: args.order_group.clone(),
                orders: order_positions.clone(),
            };
            stock::saga(
                &facts.orders,
                &facts.reservations,
                (&sink.order, &sink.inventory),
                &consumers,
                &sink.dead,
                &mut findings,
            );
        }
    }
    if need_views {
        facts.views.resolve(&sink.cdc, &mut findings);
    }
    for topic in facts.pending.keys() {
        if *topic != args.order_topic && *topic != args.inventory_topic {
            findings.note(format!(
                "unpublished outbox rows for topic {topic}, which the audit does not read"
            ));
        }
    }
    if sink.cdc.undecodable > 0 {
        findings.note(format!(
            "{} records of the CDC topics are not Debezium change events",
            sink.cdc.undecodable
        ));
    }
    // Consumer lag at the first watermarks, for the groups that have positions.
    for (group, positions, role) in [
        (
            &args.inventory_group,
            &inventory_positions,
            Role::OrderEvents,
        ),
        (&args.order_group, &order_positions, Role::InventoryEvents),
        (&args.projection_group, &projection_positions, Role::Changes),
    ] {
        let topics: Vec<&String> = roles
            .iter()
            .filter(|(_, r)| **r == role)
            .map(|(t, _)| t)
            .collect();
        for topic in topics {
            let Some(m) = marks.get(topic) else { continue };
            let known = (0..m.len()).any(|p| positions.contains_key(&(topic.clone(), p as i32)));
            let total: i64 = m.iter().map(|(low, high)| high - low).sum();
            if !known {
                if total > 0 {
                    findings.note(format!(
                        "consumer group {group} has no position on {topic}: not running yet, or \
                         another group name (--*-group)? Until it has one, what it must consume \
                         counts as in flight"
                    ));
                    findings.in_flight(
                        &format!("records {group} has not consumed yet ({topic})"),
                        total as u64,
                    );
                }
                continue;
            }
            let lag: i64 = m
                .iter()
                .enumerate()
                .map(|(p, (low, high))| {
                    let at = positions
                        .get(&(topic.clone(), p as i32))
                        .copied()
                        .unwrap_or(*low);
                    (high - at.max(*low)).max(0)
                })
                .sum();
            findings.in_flight(
                &format!("records {group} has not consumed yet ({topic})"),
                lag as u64,
            );
        }
    }
    if sink.dead.records > 0 {
        findings.stuck("dead letters on the .dlq topics", sink.dead.records);
    }

    let mut sources = Sources {
        rows: facts.rows.clone(),
        ..Sources::default()
    };
    for (topic, partitions) in partitions {
        let records = sink.records.get(&topic).copied().unwrap_or(0);
        sources.topics.insert(topic, (partitions, records));
    }
    Ok((findings, sources))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_default_from_the_admin_url() {
        assert_eq!(
            with_database("postgres://eda:eda@127.0.0.1:5432/postgres", "orders"),
            "postgres://eda:eda@127.0.0.1:5432/orders"
        );
        assert_eq!(
            with_database("postgres://db:5432/postgres?sslmode=disable", "inventory"),
            "postgres://db:5432/inventory?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://db", "projection"),
            "postgres://db/projection"
        );
        assert!(default_url("orders").ends_with("/orders"));
    }

    #[test]
    fn exit_codes_tell_violations_from_failures() {
        let violations: Box<dyn std::error::Error + Send + Sync> = Box::new(Violations(2));
        let code = |err: &(dyn std::error::Error + 'static)| format!("{:?}", exit_code(err));
        assert_eq!(
            code(&*violations),
            format!("{:?}", Some(std::process::ExitCode::from(1)))
        );
        let failed: Box<dyn std::error::Error + Send + Sync> = Box::new(Failed("x".into()));
        assert_eq!(
            code(&*failed),
            format!("{:?}", Some(std::process::ExitCode::from(2)))
        );
        let unsettled: Box<dyn std::error::Error + Send + Sync> = Box::new(NotSettled(1));
        assert_eq!(
            code(&*unsettled),
            format!("{:?}", Some(std::process::ExitCode::from(3)))
        );
        let other: Box<dyn std::error::Error + Send + Sync> = "x".into();
        assert!(exit_code(&*other).is_none());
        assert!(violations.to_string().contains("2 violations"));
    }
}
