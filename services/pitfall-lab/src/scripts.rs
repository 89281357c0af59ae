//! The native stack's scripts (infra/stack.sh, infra/services.sh), run by `pitfall-lab demo`
//! and `pitfall-lab chaos` the way a user would, their output kept in a log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where the running system is, as `make up` starts it: the repository whose infra/ scripts
/// run it, the services' URLs and the key their tokens are signed with.
#[derive(Debug, clap::Args)]
pub(crate) struct SystemArgs {
    /// The repository (its infra/ scripts start, stop and switch the system).
    #[arg(long, env = "EDA_ROOT", default_value = ".")]
    pub root: PathBuf,
    /// order-service.
    #[arg(
        long,
        env = "ORDER_SERVICE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub order_url: String,
    /// inventory-service.
    #[arg(
        long,
        env = "INVENTORY_SERVICE_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub inventory_url: String,
    /// Signing key of the services' bearer tokens.
    #[arg(long, env = "JWT_SECRET", default_value = order_service::configuration::DEV_JWT_SECRET, hide_env_values = true)]
    pub secret: String,
}

/// Runs an infra script in its own process group, output appended to `log`; with `env`, the
/// script gets exactly that environment. The error carries the script's last lines of stderr.
pub(crate) async fn script(
    root: &Path,
    path: &str,
    args: &[&str],
    env: Option<&BTreeMap<String, String>>,
    log: &Path,
) -> Result<(), BoxError> {
    let started = std::time::Instant::now();
    let mut command = tokio::process::Command::new(root.join(path));
    command.args(args).current_dir(root).process_group(0);
    if let Some(env) = env {
        command.env_clear().envs(env);
    }
    let out = command.output().await.map_err(|e| format!("{path}: {e}"))?;
    {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        writeln!(
            f,
            "===== {} {path} {} ({:.1} s, {}) =====",
            chrono::Utc::now().format("%FT%T%.3fZ"),
            args.join(" "),
            started.elapsed().as_secs_f64(),
            out.status
        )?;
        f.write_all(&out.stdout)?;
        f.write_all(&out.stderr)?;
    }
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        Err(format!(
            "{path} {} exited with {}:\n{}",
            args.join(" "),
            out.status,
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
        .into())
    }
}
