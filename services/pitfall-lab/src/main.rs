//! `pitfall-lab`: the reference system's lab bench.
//!
//! - `pitfall-lab token --user alice` prints a development bearer token for curl.
//! - `pitfall-lab bench <what>` runs a benchmark against the running stack and prints numbers
//!   (`make bench` runs them all). Benchmarks report; they never pass or fail on speed.

mod bench;

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
    /// Benchmarks against the running stack (`make infra-up`).
    Bench {
        #[command(subcommand)]
        what: bench::Bench,
    },
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    match Cli::parse().command {
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
        Command::Bench { what } => bench::run(what).await?,
    }
    Ok(())
}
