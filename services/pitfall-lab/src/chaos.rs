//! `pitfall-lab chaos` (`make chaos`): under a steady load of orders and cancellations, kills
//! the system's processes with `kill -9` at random moments, brings them back the way a user
//! would (`infra/stack.sh up` + `infra/services.sh up`, i.e. `make up`), and at the end waits
//! until every accepted order has settled and runs `pitfall-lab audit` on what is left.
//!
//! It knows the system only from outside: the pid files the native scripts report
//! (`infra/stack.sh pids`, `infra/services.sh pids`), the HTTP API and the auditor's verdict.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::scripts::{SystemArgs, script};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a kill may hit. `kafka` picks one broker of the cluster (`KAFKA_BROKERS=3`: brokers die
/// one at a time, each back before the next kill).
const TARGETS: &str =
    "order-service,inventory-service,projection-service,kafka,postgres,connect,minio";

/// `pitfall-lab chaos`.
#[derive(Debug, clap::Args)]
pub struct Chaos {
    /// How many processes to kill in all (spread evenly over the targets).
    #[arg(long, default_value_t = 200)]
    kills: u32,
    /// What to kill; targets that are not running (no projection-service yet, say) are skipped.
    #[arg(long, value_delimiter = ',', default_value = TARGETS)]
    targets: Vec<String>,
    /// Orders placed per second (open loop: a slow system does not slow the load down).
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Share of accepted orders cancelled a moment later.
    #[arg(long, default_value_t = 0.25)]
    cancel_share: f64,
    /// Shortest and longest pause, in seconds, between the system being healthy and the next
    /// kill.
    #[arg(long, default_value_t = 0.5)]
    min_gap: f64,
    /// See --min-gap.
    #[arg(long, default_value_t = 3.0)]
    max_gap: f64,
    /// Longest time a killed process stays down before `make up` (a third of the restarts
    /// happen at once, while the dead process may still be torn down).
    #[arg(long, default_value_t = 2.0)]
    max_down: f64,
    /// Seconds every accepted order has, once the kills are over, to reach its final state; then
    /// the audit gets as long again to find the system consistent.
    #[arg(long, default_value_t = 300)]
    settle_timeout: u64,
    /// Seed of the random choices (printed, so a run can be repeated).
    #[arg(long)]
    seed: Option<u64>,
    /// Writes the summary as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where the system runs.
    #[command(flatten)]
    system: SystemArgs,
}

/// One running process of the system, as the native scripts report it.
#[derive(Debug, Clone)]
struct Process {
    /// e.g. `kafka-2`, `postgres`, `order-service`.
    name: String,
    pid: u32,
    log: PathBuf,
    /// The kill target it belongs to (`kafka` for every broker).
    target: String,
}

/// Parses `infra/stack.sh pids` / `infra/services.sh pids` lines: `PROCESS PID LOG TARGET`.
fn parse_pids(text: &str) -> Vec<Process> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (name, pid, log, target) = (f.next()?, f.next()?, f.next()?, f.next()?);
            Some(Process {
                name: name.to_owned(),
                pid: pid.parse().ok()?,
                log: PathBuf::from(log),
                target: target.to_owned(),
            })
        })
        .collect()
}

/// The summary `make chaos` prints (and writes with --json).
#[derive(Debug, Default, Serialize)]
struct Summary {
    seed: u64,
    brokers: u32,
    kills: BTreeMap<String, u32>,
    kills_total: u32,
    restart_seconds_max: f64,
    restart_seconds_mean: f64,
    longest_without_acceptance_seconds: f64,
    probe_accepted_after_seconds: Option<f64>,
    orders_attempted: u64,
    orders_accepted: u64,
    orders_abandoned: u64,
    cancels_accepted: u64,
    orders_settled: u64,
    orders_unsettled: u64,
    settle_seconds: f64,
    audit_passed: bool,
    audit_violations: Option<u64>,
    duration_seconds: f64,
}

#[allow(clippy::print_stderr)] // progress, as it happens
fn progress(line: &str) {
    eprintln!("[chaos] {line}");
}

/// An order the load placed and the system accepted.
#[derive(Debug, Clone)]
struct Accepted {
    id: Uuid,
    user: String,
}

/// The load's counters and what it got accepted.
#[derive(Debug, Default)]
struct Load {
    attempted: AtomicU64,
    abandoned: AtomicU64,
    cancels: AtomicU64,
    accepted: Mutex<Vec<Accepted>>,
    /// When the last order was accepted, and the longest time without one so far.
    gaps: std::sync::Mutex<Gaps>,
}

/// The longest stretch without an accepted order: how long the system was, in effect, down.
#[derive(Debug)]
struct Gaps {
    last: Instant,
    longest: Duration,
}

impl Default for Gaps {
    fn default() -> Self {
        Self {
            last: Instant::now(),
            longest: Duration::ZERO,
        }
    }
}

impl Gaps {
    fn accepted(&mut self, now: Instant) {
        self.longest = self.longest.max(now - self.last);
        self.last = now;
    }
}

/// Runs the chaos round; an error when a process did not come back, an order never settled or
/// the audit found a violation.
pub async fn run(args: Chaos) -> Result<String, BoxError> {
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    // The kills' choices come from this seed (the load's own randomness does not matter).
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = Instant::now();
    let root = args.system.root.canonicalize().map_err(|e| {
        format!(
            "--root {}: {e} (run from the repository, or set EDA_ROOT)",
            args.system.root.display()
        )
    })?;
    let run_dir = run_dir(&root).join("chaos");
    std::fs::create_dir_all(&run_dir)?;
    let script_log = run_dir.join("chaos.log");
    let brokers = std::env::var("KAFKA_BROKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    progress(&format!(
        "seed {seed}; {} kills of {}; {} orders/s; {brokers} Kafka broker(s); restarts log to {}",
        args.kills,
        args.targets.join(","),
        args.rate,
        script_log.display()
    ));

    progress("bringing the system up (make up)");
    make_up(&root, &script_log).await?;
    let running = processes(&root).await?;
    let targets: Vec<String> = args
        .targets
        .iter()
        .filter(|t| running.iter().any(|p| &p.target == *t))
        .cloned()
        .collect();
    for t in args.targets.iter().filter(|t| !targets.contains(t)) {
        progress(&format!("{t}: not running here, not a target"));
    }
    if targets.is_empty() {
        return Err("no target is running: nothing to kill".into());
    }

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let run_id = Uuid::now_v7().simple().to_string()[20..].to_uppercase();
    let skus: Vec<String> = (0..12).map(|k| format!("CHAOS-{run_id}-{k}")).collect();
    let admin = order_service::auth::issue_token(
        &args.system.secret,
        "chaos-admin",
        &["admin".to_owned()],
        Duration::from_secs(24 * 3600),
    )?;
    for sku in &skus {
        let r = client
            .put(format!("{}/inventory/{sku}", args.system.inventory_url))
            .bearer_auth(&admin)
            .json(&serde_json::json!({ "available": 400 }))
            .send()
            .await?;
        if !r.status().is_success() {
            return Err(format!("stocking {sku}: HTTP {}", r.status()).into());
        }
    }

    // The load: open loop at --rate, each order retried with its Idempotency-Key until the
    // system answers for sure.
    let load = Arc::new(Load::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let generator = tokio::spawn(generate(
        client.clone(),
        args.system.order_url.clone(),
        args.system.secret.clone(),
        skus,
        args.rate,
        args.cancel_share,
        Arc::clone(&load),
        stop.clone(),
    ));

    let mut summary = Summary {
        seed,
        brokers,
        ..Summary::default()
    };
    let mut restarts = Vec::new();
    let mut order = targets.clone();
    for i in 0..args.kills {
        if (i as usize).is_multiple_of(order.len()) {
            rng.shuffle(&mut order);
        }
        let target = &order[i as usize % order.len()];
        tokio::time::sleep(secs(&mut rng, args.min_gap, args.max_gap)).await;
        let candidates: Vec<Process> = processes(&root)
            .await?
            .into_iter()
            .filter(|p| &p.target == target)
            .collect();
        let Some(victim) = rng.choice(&candidates).cloned() else {
            return Err(format!("{target} is not running before kill {}", i + 1).into());
        };
        kill9(victim.pid).await?;
        log_line(
            &script_log,
            &format!(
                "kill -9 {} (pid {}), kill {}",
                victim.name,
                victim.pid,
                i + 1
            ),
        );
        let down = if rng.u8(..3) == 0 {
            Duration::ZERO
        } else {
            secs(&mut rng, 0.0, args.max_down)
        };
        tokio::time::sleep(down).await;
        let t = Instant::now();
        if let Err(e) = make_up(&root, &script_log).await {
            return Err(format!(
                "after kill -9 of {} (pid {}), make up failed: {e}\n{}",
                victim.name,
                victim.pid,
                tail(&victim.log, 30)
            )
            .into());
        }
        let took = t.elapsed().as_secs_f64();
        restarts.push(took);
        *summary.kills.entry(victim.name.clone()).or_default() += 1;
        summary.kills_total += 1;
        progress(&format!(
            "kill {}/{}: {} (pid {}) down {:.1} s, back in {took:.1} s; {} orders accepted so far",
            i + 1,
            args.kills,
            victim.name,
            victim.pid,
            down.as_secs_f64(),
            load.accepted.lock().await.len()
        ));
    }
    let kills_over = Instant::now();
    stop.cancel();
    generator.await?;
    if let Ok(gaps) = load.gaps.lock() {
        // A stretch still open when the kills ended counts up to then.
        let open = kills_over.saturating_duration_since(gaps.last);
        summary.longest_without_acceptance_seconds = gaps.longest.max(open).as_secs_f64();
    }
    summary.restart_seconds_max = restarts.iter().copied().fold(0.0, f64::max);
    summary.restart_seconds_mean = restarts.iter().sum::<f64>() / restarts.len().max(1) as f64;
    summary.orders_attempted = load.attempted.load(Ordering::Relaxed);
    summary.orders_abandoned = load.abandoned.load(Ordering::Relaxed);
    summary.cancels_accepted = load.cancels.load(Ordering::Relaxed);
    let accepted = load.accepted.lock().await.clone();
    summary.orders_accepted = accepted.len() as u64;

    progress(&format!(
        "kills done; waiting for {} accepted orders to settle (up to {} s)",
        accepted.len(),
        args.settle_timeout
    ));
    let t = Instant::now();
    let unsettled = settle(
        &client,
        &args.system.order_url,
        &args.system.secret,
        &accepted,
        Duration::from_secs(args.settle_timeout),
    )
    .await?;
    summary.orders_unsettled = unsettled.len() as u64;
    summary.orders_settled = summary.orders_accepted - summary.orders_unsettled;
    summary.settle_seconds = t.elapsed().as_secs_f64();

    let mut failures = Vec::new();
    if accepted.is_empty() {
        failures.push(format!(
            "no order was accepted in {} attempts: the load never reached a working system",
            summary.orders_attempted
        ));
    } else if !unsettled.is_empty() {
        let examples: Vec<String> = unsettled.iter().take(5).map(|a| a.id.to_string()).collect();
        let mut text = format!(
            "{} orders never settled (e.g. {})",
            unsettled.len(),
            examples.join(", ")
        );
        for p in processes(&root).await? {
            if p.target.ends_with("-service") {
                text.push_str(&format!("\n{}", tail(&p.log, 15)));
            }
        }
        failures.push(text);
    } else if let Err(e) = probe(&client, &args, &mut summary).await {
        failures.push(e);
    } else {
        progress(&format!(
            "all settled in {:.1} s, a new order was accepted {:.1} s after asking; auditing",
            summary.settle_seconds,
            summary.probe_accepted_after_seconds.unwrap_or_default()
        ));
        let audit_json = run_dir.join("audit.json");
        let status = tokio::process::Command::new(std::env::current_exe()?)
            .arg("audit")
            .arg("--settle")
            .arg(args.settle_timeout.to_string())
            .arg("--json")
            .arg(&audit_json)
            .status()
            .await?;
        summary.audit_passed = status.success();
        summary.audit_violations = std::fs::read(&audit_json)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["violations"].as_u64());
        if !status.success() {
            failures.push(format!(
                "the audit found violations (report above; JSON: {})",
                audit_json.display()
            ));
        }
    }
    summary.duration_seconds = started.elapsed().as_secs_f64();
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&summary)?)?;
    }
    let text = render(&summary);
    if failures.is_empty() {
        Ok(text)
    } else {
        Err(format!("{text}\nchaos failed:\n{}", failures.join("\n")).into())
    }
}

/// After the kills, the system must take new orders again: one order, retried for up to a
/// minute, must be accepted and settle.
async fn probe(
    client: &reqwest::Client,
    args: &Chaos,
    summary: &mut Summary,
) -> Result<(), String> {
    let user = "chaos-probe";
    let token =
        order_service::auth::issue_token(&args.system.secret, user, &[], Duration::from_secs(3600))
            .map_err(|e| format!("cannot sign a token: {e}"))?;
    let body = serde_json::json!({
        "customer": {"name": "Chaos Probe", "email": "probe@example.com"},
        "currency": "EUR",
        "lines": [{"sku": "CHAOS-PROBE", "quantity": 1, "unit_price_cents": 100}],
    });
    let key = Uuid::now_v7().to_string();
    let started = Instant::now();
    let mut backoff = Backoff::default();
    let id = loop {
        if let Ok(r) = client
            .post(format!("{}/orders", args.system.order_url))
            .bearer_auth(&token)
            .header("idempotency-key", &key)
            .json(&body)
            .send()
            .await
            && r.status().as_u16() == 201
            && let Some(id) = r
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v["id"].as_str().and_then(|s| s.parse::<Uuid>().ok()))
        {
            break id;
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "after the kills, order-service accepted no new order for 60 s (log: {})",
                run_dir(&args.system.root)
                    .join("order-service/order-service.log")
                    .display()
            ));
        }
        tokio::time::sleep(backoff.next()).await;
    };
    summary.probe_accepted_after_seconds = Some(started.elapsed().as_secs_f64());
    let probe = [Accepted {
        id,
        user: user.to_owned(),
    }];
    let unsettled = settle(
        client,
        &args.system.order_url,
        &args.system.secret,
        &probe,
        Duration::from_secs(120),
    )
    .await
    .map_err(|e| e.to_string())?;
    if unsettled.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the probe order {id} placed after the kills never settled"
        ))
    }
}

/// Where the native scripts keep pid files and logs (`EDA_RUN_DIR`, `.run` by default).
fn run_dir(root: &Path) -> PathBuf {
    std::env::var_os("EDA_RUN_DIR").map_or_else(|| root.join(".run"), PathBuf::from)
}

/// A uniformly random duration between `min` and `max` seconds.
fn secs(rng: &mut fastrand::Rng, min: f64, max: f64) -> Duration {
    Duration::from_secs_f64(min + rng.f64() * (max - min).max(0.0))
}

fn render(s: &Summary) -> String {
    let mut out = format!(
        "== chaos: {} kills in {:.0} s (seed {}, {} broker(s)) ==\n",
        s.kills_total, s.duration_seconds, s.seed, s.brokers
    );
    for (name, n) in &s.kills {
        out.push_str(&format!("  kill -9 {name:<20} {n:>4}\n"));
    }
    out.push_str(&format!(
        "  back up (make up)        mean {:.1} s, max {:.1} s\n\
         \x20 orders                   {} placed, {} accepted, {} abandoned (no answer for 2 min), {} cancelled\n\
         \x20 longest without an order {:.1} s accepted (the load's view of the outages)\n\
         \x20 settled                  {} of {} in {:.1} s\n\
         \x20 audit                    {}\n",
        s.restart_seconds_mean,
        s.restart_seconds_max,
        s.orders_attempted,
        s.orders_accepted,
        s.orders_abandoned,
        s.cancels_accepted,
        s.longest_without_acceptance_seconds,
        s.orders_settled,
        s.orders_accepted,
        s.settle_seconds,
        match (s.audit_passed, s.audit_violations) {
            (true, _) => "0 violations".to_owned(),
            (false, Some(n)) => format!("{n} violations"),
            (false, None) => "not run or failed".to_owned(),
        }
    ));
    out
}

/// `make up` without the build prerequisites: the stack, then the services; what runs stays.
async fn make_up(root: &Path, log: &Path) -> Result<(), BoxError> {
    script(root, "infra/stack.sh", &["up"], None, log).await?;
    script(root, "infra/services.sh", &["up"], None, log).await
}

async fn processes(root: &Path) -> Result<Vec<Process>, BoxError> {
    let mut all = Vec::new();
    for path in ["infra/stack.sh", "infra/services.sh"] {
        let out = tokio::process::Command::new(root.join(path))
            .arg("pids")
            .current_dir(root)
            .output()
            .await?;
        if !out.status.success() {
            return Err(format!(
                "{path} pids: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into());
        }
        all.extend(parse_pids(&String::from_utf8_lossy(&out.stdout)));
    }
    Ok(all)
}

async fn kill9(pid: u32) -> Result<(), BoxError> {
    let status = tokio::process::Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .status()
        .await?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("kill -9 {pid} failed ({status})").into())
    }
}

/// Appends a timestamped line to the chaos log (best effort: the log is for people).
fn log_line(log: &Path, line: &str) {
    use std::io::Write as _;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = writeln!(
            f,
            "===== {} {line} =====",
            chrono::Utc::now().format("%FT%T%.3fZ")
        );
    }
}

/// The last `n` lines of a log, headed by its path.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "--- last {n} lines of {} ---\n{}",
        path.display(),
        lines[lines.len().saturating_sub(n)..].join("\n")
    )
}

/// Places orders at `rate` per second until `stop`, each in its own task.
#[allow(clippy::too_many_arguments)]
async fn generate(
    client: reqwest::Client,
    base: String,
    secret: String,
    skus: Vec<String>,
    rate: f64,
    cancel_share: f64,
    load: Arc<Load>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n = 0u64;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        n += 1;
        let user = format!("chaos-user-{}", n % 7);
        let token = match order_service::auth::issue_token(
            &secret,
            &user,
            &[],
            Duration::from_secs(24 * 3600),
        ) {
            Ok(t) => t,
            Err(e) => {
                progress(&format!("cannot sign a token: {e}"));
                break;
            }
        };
        let mut picked = skus.clone();
        fastrand::shuffle(&mut picked);
        let lines: Vec<serde_json::Value> = picked
            .iter()
            .take(fastrand::usize(1..=3))
            .map(|sku| {
                serde_json::json!({"sku": sku, "quantity": fastrand::u32(1..=3), "unit_price_cents": 250})
            })
            .collect();
        let body = serde_json::json!({
            "customer": {"name": "Chaos Monkey", "email": "chaos@example.com"},
            "currency": "EUR",
            "lines": lines,
        });
        let cancel = fastrand::f64() < cancel_share;
        let (client, base, load) = (client.clone(), base.clone(), Arc::clone(&load));
        load.attempted.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(async move {
            place(&client, &base, &token, &user, &body, cancel, &load).await;
        });
        // Reap what finished so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    // Orders in flight finish their retries (bounded by their own deadline).
    while tasks.join_next().await.is_some() {}
}

/// How long a client keeps retrying one order (or one cancellation) before giving up on it.
const GIVE_UP_AFTER: Duration = Duration::from_secs(120);

async fn place(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    user: &str,
    body: &serde_json::Value,
    cancel: bool,
    load: &Load,
) {
    let key = Uuid::now_v7().to_string();
    let deadline = Instant::now() + GIVE_UP_AFTER;
    let mut backoff = Backoff::default();
    let id = loop {
        let sent = client
            .post(format!("{base}/orders"))
            .bearer_auth(token)
            .header("idempotency-key", &key)
            .json(body)
            .send()
            .await;
        if let Ok(r) = sent {
            if r.status().as_u16() == 201 {
                match r
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|v| v["id"].as_str().and_then(|s| s.parse::<Uuid>().ok()))
                {
                    Some(id) => break id,
                    None => continue, // body cut off by a kill: ask again, same key
                }
            }
            if r.status().is_client_error() && r.status().as_u16() != 429 {
                progress(&format!(
                    "order refused with HTTP {}: {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                ));
                load.abandoned.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if Instant::now() > deadline {
            load.abandoned.fetch_add(1, Ordering::Relaxed);
            return;
        }
        tokio::time::sleep(backoff.next()).await;
    };
    if let Ok(mut gaps) = load.gaps.lock() {
        gaps.accepted(Instant::now());
    }
    load.accepted.lock().await.push(Accepted {
        id,
        user: user.to_owned(),
    });
    if !cancel {
        return;
    }
    tokio::time::sleep(Duration::from_millis(fastrand::u64(..2000))).await;
    let deadline = Instant::now() + GIVE_UP_AFTER;
    let mut backoff = Backoff::default();
    while Instant::now() < deadline {
        if let Ok(r) = client
            .post(format!("{base}/orders/{id}/cancel"))
            .bearer_auth(token)
            .send()
            .await
        {
            match r.status().as_u16() {
                200 => {
                    load.cancels.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                409 => return, // rejected first: nothing to cancel
                _ => {}
            }
        }
        tokio::time::sleep(backoff.next()).await;
    }
}

/// Retry pauses of a well-behaved client: doubling from 200 ms to 5 s, with full jitter, so
/// that the clients waiting out an outage do not all come back at once and bury the system.
#[derive(Debug, Default)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(200);
    const CAP: Duration = Duration::from_secs(5);

    fn ceiling(&self) -> Duration {
        Self::FIRST
            .saturating_mul(1 << self.attempt.min(10))
            .min(Self::CAP)
    }

    fn next(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt += 1;
        ceiling.mul_f64(0.5 + fastrand::f64() / 2.0)
    }
}

/// Final states of an order.
const SETTLED: [&str; 3] = ["CONFIRMED", "REJECTED", "CANCELLED"];

/// Polls every accepted order until it is in a final state; returns those that never got there.
async fn settle(
    client: &reqwest::Client,
    base: &str,
    secret: &str,
    accepted: &[Accepted],
    timeout: Duration,
) -> Result<Vec<Accepted>, BoxError> {
    let mut tokens = BTreeMap::new();
    for a in accepted {
        if !tokens.contains_key(&a.user) {
            let t =
                order_service::auth::issue_token(secret, &a.user, &[], Duration::from_secs(3600))?;
            tokens.insert(a.user.clone(), t);
        }
    }
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<Accepted> = accepted.to_vec();
    loop {
        use futures::StreamExt as _;
        // A few at a time: thousands at once would only be shed (503) by the service.
        let checks = futures::stream::iter(pending.iter().map(|a| {
            let token = &tokens[&a.user];
            async move {
                let settled = match client
                    .get(format!("{base}/orders/{}", a.id))
                    .bearer_auth(token)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => r
                        .json::<serde_json::Value>()
                        .await
                        .ok()
                        .and_then(|v| v["status"].as_str().map(|s| SETTLED.contains(&s)))
                        .unwrap_or(false),
                    _ => false,
                };
                (a.clone(), settled)
            }
        }))
        .buffer_unordered(16)
        .collect::<Vec<_>>();
        pending = checks
            .await
            .into_iter()
            .filter(|(_, settled)| !settled)
            .map(|(a, _)| a)
            .collect();
        if pending.is_empty() || Instant::now() > deadline {
            return Ok(pending);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_lines_are_parsed_and_junk_is_skipped() {
        let text = "postgres 41 /x/postgres.log postgres\nkafka-2 77 /r/kafka-2/kafka.log kafka\n\
                    garbage\nminio notapid /m.log minio\n";
        let p = parse_pids(text);
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[1].name.as_str(), p[1].pid, p[1].target.as_str()),
            ("kafka-2", 77, "kafka")
        );
        assert_eq!(p[0].log, PathBuf::from("/x/postgres.log"));
    }

    #[test]
    fn the_summary_names_every_target_and_the_verdict() {
        let mut s = Summary {
            kills_total: 3,
            orders_accepted: 10,
            orders_settled: 10,
            audit_passed: true,
            ..Summary::default()
        };
        s.kills.insert("kafka-1".into(), 2);
        s.kills.insert("postgres".into(), 1);
        let text = render(&s);
        assert!(
            text.contains("kafka-1") && text.contains("postgres"),
            "{text}"
        );
        assert!(
            text.contains("10 of 10") && text.contains("0 violations"),
            "{text}"
        );
        s.audit_passed = false;
        s.audit_violations = Some(4);
        assert!(render(&s).contains("4 violations"));
    }

    #[test]
    fn retries_back_off_up_to_the_cap() {
        let mut b = Backoff::default();
        let first = b.next();
        assert!(
            first >= Duration::from_millis(100) && first <= Backoff::FIRST,
            "{first:?}"
        );
        for _ in 0..20 {
            let d = b.next();
            assert!(d <= Backoff::CAP, "{d:?}");
        }
        assert_eq!(b.ceiling(), Backoff::CAP);
    }

    #[test]
    fn random_pauses_stay_in_their_range() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..100 {
            let d = secs(&mut rng, 0.5, 1.5).as_secs_f64();
            assert!((0.5..=1.5).contains(&d), "{d}");
        }
        assert_eq!(secs(&mut rng, 1.0, 0.5), Duration::from_secs(1));
    }
}
