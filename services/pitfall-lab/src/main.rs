//! `pitfall-lab`: the reference system's lab bench.
//!
//! - `pitfall-lab token --user alice` prints a development bearer token for curl.
//! - `pitfall-lab dlq redrive --topic order.events` sends dead letters back once fixed.
//! - `pitfall-lab trace --request-id <id>` prints a request's trace from Jaeger as a tree.
//! - `pitfall-lab outbox parked` lists outbox rows Kafka refused for good; `outbox release
//!   --id N` sends one again once its cause is fixed.
//! - `pitfall-lab chaos` kills the system's processes at random under load and audits the result.
//! - `pitfall-lab audit` reads every topic and service database and reports the violations of
//!   the contract (lost, orphaned, duplicated or reordered events, stock that does not add up,
//!   views that differ from their sources); exit code 1 when it finds any.
//! - `pitfall-lab demo` runs each pitfall in its naive mode, then fixed, against the running
//!   system, and prints a table of what happened (`make demo`; `--only 1,3` for some).
//! - `pitfall-lab bench <what>` runs a benchmark against the running stack and prints numbers
//!   (`make bench` runs them all). Benchmarks report; they never pass or fail on speed.

mod audit;
mod bench;
mod chaos;
mod demo;
mod event_store;
mod outbox;
mod rebuild;
mod scripts;
mod trace;

use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "pitfall-lab",
    about = "Tokens and benchmarks for the eda-pitfalls reference system"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print an HS256 bearer token (signed with JWT_SECRET) for curl examples.
    Token {
        /// User id (the token's subject).
        #[arg(long)]
        user: String,
        /// Roles, e.g. --role admin (inventory writes need it).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Validity in hours.
        #[arg(long, default_value_t = 24)]
        ttl_hours: u64,
        /// Signing key; the services must share it.
        #[arg(long, env = "JWT_SECRET", default_value = order_service::configuration::DEV_JWT_SECRET, hide_env_values = true)]
        secret: String,
    },
    /// Dead letters.
    Dlq {
        #[command(subcommand)]
        what: Dlq,
    },
    /// Print the trace of a request (every service's spans tagged with its request id), or of a
    /// trace id, as a tree, from Jaeger's query API.
    Trace {
        /// The request id (`x-request-id` sent or returned).
        #[arg(long, required_unless_present = "trace_id")]
        request_id: Option<String>,
        /// A trace id (the second field of a `traceparent`).
        #[arg(long)]
        trace_id: Option<String>,
        /// Jaeger's query API.
        #[arg(
            long,
            env = "JAEGER_QUERY_URL",
            default_value = "http://127.0.0.1:16686"
        )]
        jaeger: String,
    },
    /// Outbox rows the relay parked (Kafka refused them for good).
    Outbox {
        #[command(subcommand)]
        what: outbox::Outbox,
    },
    /// projection-service's views.
    Projection {
        #[command(subcommand)]
        what: Projection,
    },
    /// kill -9 the system's processes at random under load, bring them back with `make up`,
    /// then check every order settled and audit the result (`make chaos`).
    Chaos(chaos::Chaos),
    /// Audit the running system: every topic from the beginning and every service database,
    /// checked against the contract (`make audit`). Exit code 0 when clean, 1 on violations, 2
    /// when the audit cannot run, 3 when `--settle` ran out with changes still in flight.
    Audit(audit::Audit),
    /// Each pitfall in its naive mode, then fixed, against the running system (`make up`),
    /// with a summary table (`make demo`). The services' modes are put back afterwards.
    Demo(demo::Demo),
    /// Benchmarks against the running stack (`make infra-up`).
    Bench {
        #[command(subcommand)]
        what: bench::Bench,
    },
}

#[derive(Debug, Subcommand)]
enum Projection {
    /// Rebuild the views from the source tables (new Debezium connectors snapshot them) while
    /// the old views serve, then switch atomically (`make projection-rebuild`).
    Rebuild(rebuild::Rebuild),
}

#[derive(Debug, Subcommand)]
enum Dlq {
    /// Send the dead letters of TOPIC (`TOPIC.dlq`) back to TOPIC, after fixing their cause.
    /// Each is redriven once per --group; repeating is safe, consumers deduplicate.
    Redrive {
        /// The original topic, e.g. order.events.
        #[arg(long)]
        topic: String,
        /// Consumer group that remembers what was redriven.
        #[arg(long, default_value = "pitfall-lab-redrive")]
        group: String,
        /// Kafka bootstrap servers.
        #[arg(
            long,
            env = "KAFKA_BOOTSTRAP_SERVERS",
            default_value = "127.0.0.1:9092"
        )]
        bootstrap: String,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse().command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // In words, not the Debug dump `main` would print (the crates' errors carry their
            // causes in their messages).
            #[allow(clippy::print_stderr)] // the program's own error line
            {
                eprintln!("pitfall-lab: {err}");
            }
            audit::exit_code(&*err).unwrap_or(std::process::ExitCode::FAILURE)
        }
    }
}

async fn run(command: Command) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match command {
        Command::Token {
            user,
            roles,
            ttl_hours,
            secret,
        } => {
            let token = order_service::auth::issue_token(
                &secret,
                &user,
                &roles,
                Duration::from_secs(ttl_hours * 3600),
            )?;
            #[allow(clippy::print_stdout)] // the token is the program's output
            {
                println!("{token}");
            }
        }
        Command::Dlq {
            what:
                Dlq::Redrive {
                    topic,
                    group,
                    bootstrap,
                },
        } => {
            let dlq = format!("{topic}.dlq");
            let report =
                eda_idempotent_consumer::redrive(&bootstrap, &dlq, &group, Duration::from_secs(3))
                    .await?;
            #[allow(clippy::print_stdout)] // the report is the program's output
            {
                println!(
                    "{dlq}: {} redriven to {topic}, {} skipped (no dlq-original-topic)",
                    report.redriven, report.skipped
                );
            }
        }
        Command::Trace {
            request_id,
            trace_id,
            jaeger,
        } => {
            match trace::show(&jaeger, request_id.as_deref(), trace_id.as_deref()).await {
                // The trace is the program's output. A reader that closed the pipe early
                // (`| head`) is not an error: stop quietly instead of panicking like print!.
                Ok(text) => {
                    use std::io::Write as _;
                    let _ = std::io::stdout().lock().write_all(text.as_bytes());
                }
                Err(message) => return Err(format!("trace: {message}").into()),
            }
        }
        Command::Outbox { what } => {
            let text = outbox::run(what).await?;
            use std::io::Write as _;
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
        }
        Command::Projection {
            what: Projection::Rebuild(args),
        } => {
            let text = rebuild::run(args).await?;
            use std::io::Write as _;
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
        }
        Command::Chaos(args) => {
            let text = chaos::run(args).await?;
            use std::io::Write as _;
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
        }
        Command::Audit(args) => audit::run(args).await?,
        Command::Demo(args) => demo::run(args).await?,
        Command::Bench { what } => bench::run(what).await?,
    }
    Ok(())
}
