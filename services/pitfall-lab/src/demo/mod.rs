//! `pitfall-lab demo` (`make demo`): the five pitfalls, one after another, against the running
//! system (`make up`): each in its naive mode, then in its fixed mode, with what happens printed
//! on stderr as it happens and a summary table at the end (a JSON copy for scripts).
//!
//! The demo switches the services' modes itself (`infra/services.sh restart SERVICE` with the
//! mode's variable) and leaves the system as it found it: whatever happens (an error, Ctrl-C,
//! SIGTERM), Kafka is started again if the demo stopped it, and every service it restarted is
//! restarted once more with the environment it was found running with.
//!
//! Each step uses its own users, SKUs and request ids (named after the run), so runs do not see
//! each other's orders; what a naive mode breaks stays broken on those (the events lost in
//! pitfall 1, the parked row of pitfall 4, the stock reserved four times in pitfall 5): that is
//! the pitfall, and the names say where it came from.
//!
//! # Layout
//! - `system`: the running system seen from outside: what runs (the infra scripts' `status` and
//!   `pids`), the services' modes (switched and restored), Kafka stopped and started.
//! - `api`: the HTTP API with dev tokens (orders, stock, metrics).
//! - `topic`: an independent reader of `order.events` and a producer for redeliveries.
//! - `outbox`, `event_sourcing`, `propagation`, `claim_check`, `idempotency`: one module per
//!   pitfall, 1 to 5.
//! - `summary`: what each step found, the table and its JSON copy.

mod api;
mod claim_check;
mod event_sourcing;
mod idempotency;
mod outbox;
mod propagation;
mod summary;
mod system;
mod topic;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures::FutureExt as _;

use self::summary::{Outcome, Summary};
use self::system::System;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `pitfall-lab demo`.
#[derive(Debug, clap::Args)]
pub struct Demo {
    /// The pitfalls to run, e.g. `--only 5` or `--only 1,3` (all five by default).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u8).range(1..=5))]
    only: Vec<u8>,
    /// Where the JSON copy of the summary goes (default `.run/demo/summary.json` in the
    /// run directory, `EDA_RUN_DIR`).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Orders placed while Kafka is stopped, per mode (pitfall 1).
    #[arg(long, default_value_t = 200)]
    outage_orders: usize,
    /// Events in the long history (pitfall 2; the short one has 10).
    #[arg(long, default_value_t = 10_000)]
    history: i64,
    /// Lines of the bulk order (pitfall 4; 50,000 lines make an `OrderPlaced` of about 3.6 MB).
    #[arg(long, default_value_t = 50_000)]
    bulk_lines: usize,
    /// Where the system runs.
    #[command(flatten)]
    system: crate::scripts::SystemArgs,
    /// projection-service.
    #[arg(
        long,
        env = "PROJECTION_SERVICE_URL",
        default_value = "http://127.0.0.1:8082"
    )]
    projection_url: String,
    /// Jaeger's query API.
    #[arg(
        long,
        env = "JAEGER_QUERY_URL",
        default_value = "http://127.0.0.1:16686"
    )]
    jaeger: String,
}

/// Progress, as it happens: one line on stderr, with the seconds since the demo started.
#[allow(clippy::print_stderr)] // progress is the demo's running commentary
pub(crate) fn say(line: &str) {
    static STARTED: OnceLock<Instant> = OnceLock::new();
    let t = STARTED.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("[demo {t:>6.1}s] {line}");
}

/// Runs the chosen steps, restores the system, prints the table and writes its JSON copy. An
/// error when a fixed mode did not show its fix, or a step failed.
pub async fn run(args: Demo) -> Result<(), BoxError> {
    say("pitfall-lab demo: each pitfall in its naive mode, then fixed");
    let started = Instant::now();
    let started_at = chrono::Utc::now();
    let system = System::discover(&args).await?;
    let json = args
        .json
        .clone()
        .unwrap_or_else(|| system.run_dir().join("demo/summary.json"));
    let chosen: Vec<u8> = if args.only.is_empty() {
        (1..=5).collect()
    } else {
        let mut v = args.only.clone();
        v.sort_unstable();
        v.dedup();
        v
    };

    // The steps run until done or until Ctrl-C / SIGTERM. A panic is caught too: the system is
    // restored on every way out (the restore waits for a script still running, see `System`).
    let mut outcomes = Vec::new();
    let run_steps =
        std::panic::AssertUnwindSafe(steps(&system, &args, &chosen, &mut outcomes)).catch_unwind();
    let interrupted = tokio::select! {
        result = run_steps => match result {
            Ok(()) => None,
            Err(_) => Some("a step panicked"),
        },
        signal = shutdown_signal() => Some(signal),
    };
    if let Some(why) = interrupted {
        say(&format!(
            "{why}: stopping the demo and putting the system back (this takes a few seconds; further Ctrl-C are ignored)"
        ));
    }
    let restored = system.restore().await;

    let mut summary = Summary::new(started_at, outcomes);
    if let Some(why) = interrupted {
        summary.interrupted = Some(why.to_owned());
        // The first step without an outcome was running; the ones after it never started.
        let mut running = true;
        for n in chosen {
            if !summary.outcomes.iter().any(|o| o.pitfall == n) {
                let what = if running { "interrupted" } else { "not run" };
                running = false;
                summary
                    .outcomes
                    .push(Outcome::skipped(n, &format!("{what} ({why})")));
            }
        }
    }
    if let Err(e) = &restored {
        summary.restore_error = Some(e.to_string());
    }
    summary.duration_seconds = started.elapsed().as_secs_f64();
    summary.settle();
    if let Some(dir) = json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&json, serde_json::to_vec_pretty(&summary)?)?;
    {
        use std::io::Write as _;
        let _ = std::io::stdout()
            .lock()
            .write_all(summary::render(&summary).as_bytes());
    }
    say(&format!("summary written to {}", json.display()));
    if let Err(e) = restored {
        return Err(format!("the system could not be put back as it was found: {e}").into());
    }
    if let Some(why) = interrupted {
        return Err(format!("demo interrupted ({why})").into());
    }
    let failed: Vec<String> = summary
        .outcomes
        .iter()
        .filter(|o| o.verdict.is_failure())
        .map(|o| format!("pitfall {}: {}", o.pitfall, o.verdict.label()))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; ").into())
    }
}

/// The chosen steps in order. Each step's error becomes its outcome; after each, Kafka is made
/// sure to be up again before the next one starts.
async fn steps(system: &System, args: &Demo, chosen: &[u8], outcomes: &mut Vec<Outcome>) {
    for &n in chosen {
        let t = Instant::now();
        say(&format!("=== pitfall {n}: {} ===", summary::title(n)));
        let outcome = match n {
            1 => outbox::run(system, args.outage_orders).await,
            2 => event_sourcing::run(system, args.history).await,
            3 => propagation::run(system).await,
            4 => claim_check::run(system, args.bulk_lines).await,
            _ => idempotency::run(system).await,
        };
        let mut outcome = outcome.unwrap_or_else(|e| Outcome::error(n, &system::error_chain(&*e)));
        if let Err(e) = system.heal().await {
            outcome = Outcome::error(n, &format!("could not start Kafka again: {e}"));
        }
        outcome.seconds = t.elapsed().as_secs_f64();
        say(&format!(
            "pitfall {n}: {} ({:.0} s){}",
            outcome.verdict.label(),
            outcome.seconds,
            outcome
                .reason
                .as_deref()
                .map_or_else(String::new, |r| format!(": {r}"))
        ));
        outcomes.push(outcome);
    }
}

/// Resolves on Ctrl-C or SIGTERM, naming which. The handlers stay installed afterwards, so a
/// second Ctrl-C cannot cut the restore short.
async fn shutdown_signal() -> &'static str {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        () = term => "SIGTERM",
    }
}

/// Polls `check` every `every` until it gives `Some`, or `timeout` passes (`None`).
pub(crate) async fn poll<T, F, Fut>(timeout: Duration, every: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}
