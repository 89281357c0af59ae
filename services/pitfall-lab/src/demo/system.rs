//! The running system, seen from outside the way a user sees it: the infra scripts' `status`
//! and `pids`, each service's environment (`/proc/<pid>/environ`, so its modes can be put back
//! exactly), `infra/services.sh restart SERVICE` to switch a mode, `infra/stack.sh down|up
//! kafka` for the outage.
//!
//! # Putting things back
//! Every script runs in a task of its own, holding the lock on [`Infra`] while it runs, and in a
//! process group of its own (a Ctrl-C in the terminal does not kill it halfway). When the demo
//! is interrupted, the step's future is dropped but a script it started finishes; then
//! [`System::restore`] takes the same lock, so it never races a half-done stop or start, and
//! knows from [`Infra`] whether Kafka is down and which services run in another mode.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Mutex;

use super::{BoxError, Demo, say};
use crate::scripts::script;

/// The variables of the pitfalls' modes, with the services' defaults (the fixed modes).
pub const MODES: [(&str, &str); 4] = [
    ("PUBLISH_MODE", "outbox"),
    ("PROPAGATION", "on"),
    ("CLAIM_CHECK", "on"),
    ("IDEMPOTENCY", "on"),
];

/// The services the demo drives.
pub const ORDER: &str = "order-service";
/// See [`ORDER`].
pub const INVENTORY: &str = "inventory-service";
/// See [`ORDER`].
pub const PROJECTION: &str = "projection-service";

/// What a step needs running.
#[derive(Debug, Clone, Copy)]
pub enum Need {
    /// A stack component, by `infra/stack.sh status` name (`kafka`, `postgres`, `minio`, ...).
    Component(&'static str),
    /// A service, by name.
    Service(&'static str),
}

/// A service as the demo found it.
#[derive(Debug, Clone)]
struct Found {
    /// Its whole environment, when `/proc/<pid>/environ` was readable.
    env: Option<BTreeMap<String, String>>,
    /// `CARGO_TARGET_DIR` and `EDA_SERVICES_PROFILE` that make `infra/services.sh` start the
    /// same binary again (from `/proc/<pid>/exe`).
    binary_env: Vec<(String, String)>,
    /// Its log.
    log: PathBuf,
}

/// The shared state of the scripts: what runs in which mode, and whether Kafka is down.
#[derive(Debug, Default)]
struct Infra {
    /// Each service's current modes (value or default, per [`MODES`] variable); `None` while
    /// unknown (a restart failed or was cut short).
    current: HashMap<String, Option<BTreeMap<String, String>>>,
    /// The demo stopped Kafka and has not started it again.
    kafka_stopped: bool,
}

/// The running system and how to reach it.
#[derive(Debug)]
pub struct System {
    root: PathBuf,
    run_dir: PathBuf,
    script_log: PathBuf,
    /// Where the stack listens (PostgreSQL, Kafka, MinIO).
    pub stack: eda_stack_admin::Stack,
    /// The HTTP API.
    pub api: super::api::Api,
    /// Jaeger's query API.
    pub jaeger_url: String,
    /// A short id of this run, in every user, SKU and request id the demo makes.
    pub run_id: String,
    found: BTreeMap<String, Found>,
    infra: Arc<Mutex<Infra>>,
}

impl System {
    /// Finds what runs, and each service's environment.
    pub async fn discover(args: &Demo) -> Result<Self, BoxError> {
        let root = args.system.root.canonicalize().map_err(|e| {
            format!(
                "--root {}: {e} (run from the repository, or set EDA_ROOT)",
                args.system.root.display()
            )
        })?;
        let run_dir = std::env::var_os("EDA_RUN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(".run"));
        let script_log = run_dir.join("demo/demo.log");
        std::fs::create_dir_all(run_dir.join("demo"))?;
        let stack = eda_stack_admin::Stack::try_from_env()?;
        let api = super::api::Api::new(args)?;
        let run_id = uuid::Uuid::now_v7().simple().to_string()[24..].to_uppercase();
        let mut system = Self {
            root,
            run_dir,
            script_log,
            stack,
            api,
            jaeger_url: args.jaeger.clone(),
            run_id,
            found: BTreeMap::new(),
            infra: Arc::new(Mutex::new(Infra::default())),
        };
        let mut infra = Infra::default();
        for (name, pid, log) in system.service_pids().await? {
            let env = read_environ(pid);
            let binary_env = binary_env(pid);
            let modes = modes_of(env.as_ref().unwrap_or(&BTreeMap::new()));
            say(&format!(
                "found {name} (pid {pid}) running with {}",
                describe(&modes)
            ));
            if env.is_none() {
                say(
                    "  (its environment is not readable: it will be restarted with this one, in its default modes)",
                );
            }
            infra.current.insert(name.clone(), Some(modes));
            system.found.insert(
                name,
                Found {
                    env,
                    binary_env,
                    log,
                },
            );
        }
        system.infra = Arc::new(Mutex::new(infra));
        say(&format!(
            "run id {}; script output goes to {}",
            system.run_id,
            system.script_log.display()
        ));
        Ok(system)
    }

    /// The stack's run directory (`.run/`).
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The log of a service the demo found running.
    pub fn log_of(&self, service: &str) -> Option<&Path> {
        self.found.get(service).map(|f| f.log.as_path())
    }

    /// A variable of a service's environment as found (`CONSUMER_GROUP`, `RELAY_MODE`, ...).
    pub fn found_var(&self, service: &str, name: &str) -> Option<String> {
        self.found
            .get(service)
            .and_then(|f| f.env.as_ref())
            .and_then(|env| env.get(name).cloned())
    }

    /// The database URL `service` was found with, else `database` on the stack's server.
    pub fn database_url(&self, service: &str, database: &str) -> String {
        self.found_var(service, "DATABASE_URL")
            .unwrap_or_else(|| self.stack.database_url(database))
    }

    /// `Err(reason)` when something in `needs` does not run (the step is then skipped).
    pub async fn require(&self, needs: &[Need]) -> Result<(), String> {
        let components = self.components().await.map_err(|e| e.to_string())?;
        let services = self
            .service_pids()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(name, _, _)| name)
            .collect::<Vec<_>>();
        let mut missing = Vec::new();
        for need in needs {
            match need {
                Need::Component(c) => match components.get(*c) {
                    Some(state) if state == "healthy" => {}
                    Some(state) => missing.push(format!("{c} is {state}")),
                    None => missing.push(format!("{c} is not part of the stack")),
                },
                Need::Service(s) => {
                    if !services.iter().any(|n| n == s) {
                        missing.push(format!("{s} is not running"));
                    } else if !self.found.contains_key(*s) {
                        missing.push(format!("{s} was not running when the demo started"));
                    }
                }
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("{} (`make up`)", missing.join(", ")))
        }
    }

    /// Makes `service` run with the fixed modes except `overrides` (e.g. `[("PUBLISH_MODE",
    /// "direct")]`), restarting it only when it runs otherwise.
    pub async fn set_modes(
        &self,
        service: &str,
        overrides: &[(&str, &str)],
    ) -> Result<(), BoxError> {
        let mut env = self.found_env(service)?;
        for (name, default) in MODES {
            env.insert(name.to_owned(), default.to_owned());
        }
        for (name, value) in overrides {
            env.insert((*name).to_owned(), (*value).to_owned());
        }
        let modes = modes_of(&env);
        if self.infra.lock().await.current.get(service) == Some(&Some(modes.clone())) {
            return Ok(());
        }
        let what = if overrides.is_empty() {
            "its default modes".to_owned()
        } else {
            overrides
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        say(&format!(
            "restarting {service} with {what} (infra/services.sh restart {service})"
        ));
        self.restart(service, env, modes).await
    }

    /// Restarts `service` in the modes it runs in now (to get a stuck one going again).
    pub async fn restart_as_is(&self, service: &str) -> Result<(), BoxError> {
        let current = self
            .infra
            .lock()
            .await
            .current
            .get(service)
            .cloned()
            .flatten();
        let mut env = self.found_env(service)?;
        if let Some(modes) = current {
            env.extend(modes);
        }
        let modes = modes_of(&env);
        say(&format!(
            "restarting {service} as it is ({}; infra/services.sh restart {service})",
            describe(&modes)
        ));
        self.restart(service, env, modes).await
    }

    /// Restarts `service` with `env` in a task that finishes even if the caller is dropped.
    async fn restart(
        &self,
        service: &str,
        env: BTreeMap<String, String>,
        modes: BTreeMap<String, String>,
    ) -> Result<(), BoxError> {
        let infra = Arc::clone(&self.infra);
        let (root, log, service) = (
            self.root.clone(),
            self.script_log.clone(),
            service.to_owned(),
        );
        tokio::spawn(async move {
            let mut infra = infra.lock_owned().await;
            infra.current.insert(service.clone(), None);
            script(
                &root,
                "infra/services.sh",
                &["restart", &service],
                Some(&env),
                &log,
            )
            .await?;
            infra.current.insert(service, Some(modes));
            Ok(())
        })
        .await?
    }

    /// Stops Kafka (`infra/stack.sh down kafka`); [`heal`](Self::heal) or
    /// [`restore`](Self::restore) start it again if [`start_kafka`](Self::start_kafka) does not.
    pub async fn stop_kafka(&self) -> Result<(), BoxError> {
        let infra = Arc::clone(&self.infra);
        let (root, log) = (self.root.clone(), self.script_log.clone());
        tokio::spawn(async move {
            let mut infra = infra.lock_owned().await;
            infra.kafka_stopped = true;
            script(&root, "infra/stack.sh", &["down", "kafka"], None, &log).await
        })
        .await?
    }

    /// Starts Kafka again (`infra/stack.sh up kafka`, which waits until it is healthy).
    pub async fn start_kafka(&self) -> Result<(), BoxError> {
        let infra = Arc::clone(&self.infra);
        let (root, log) = (self.root.clone(), self.script_log.clone());
        tokio::spawn(async move {
            let mut infra = infra.lock_owned().await;
            script(&root, "infra/stack.sh", &["up", "kafka"], None, &log).await?;
            infra.kafka_stopped = false;
            Ok(())
        })
        .await?
    }

    /// After each step: Kafka up again if the step stopped it and did not start it.
    pub async fn heal(&self) -> Result<(), BoxError> {
        if self.infra.lock().await.kafka_stopped {
            say("starting Kafka again (infra/stack.sh up kafka)");
            self.start_kafka().await?;
        }
        Ok(())
    }

    /// Puts the system back as found: Kafka up if the demo stopped it, and every service the
    /// demo found running again in the modes (the whole environment) it was found with. Waits
    /// for a script still running first.
    pub async fn restore(&self) -> Result<(), BoxError> {
        let mut problems = Vec::new();
        if let Err(e) = self.heal().await {
            problems.push(format!("Kafka: {e}"));
        }
        let running: Vec<String> = match self.service_pids().await {
            Ok(list) => list.into_iter().map(|(name, _, _)| name).collect(),
            Err(e) => {
                problems.push(e.to_string());
                Vec::new()
            }
        };
        for (service, found) in &self.found {
            let env = match self.found_env(service) {
                Ok(env) => env,
                Err(e) => {
                    problems.push(e.to_string());
                    continue;
                }
            };
            let modes = modes_of(&env);
            let current = self.infra.lock().await.current.get(service).cloned();
            if current == Some(Some(modes.clone())) && running.contains(service) {
                continue;
            }
            let how = if found.env.is_some() {
                format!("as found ({})", describe(&modes))
            } else {
                "in its default modes".to_owned()
            };
            say(&format!("restoring {service} {how}"));
            if let Err(e) = self.restart(service, env, modes).await {
                problems.push(format!("{service}: {e}"));
            }
        }
        if problems.is_empty() {
            say("the system is as the demo found it");
            Ok(())
        } else {
            Err(problems.join("; ").into())
        }
    }

    /// The environment a service was found with (or this process's, without the mode variables,
    /// when it was not readable), plus what makes the script start the same binary.
    fn found_env(&self, service: &str) -> Result<BTreeMap<String, String>, BoxError> {
        let found = self
            .found
            .get(service)
            .ok_or_else(|| format!("{service} was not running when the demo started"))?;
        let mut env = match &found.env {
            Some(env) => env.clone(),
            None => {
                let mut own: BTreeMap<String, String> = std::env::vars().collect();
                for (name, _) in MODES {
                    own.remove(name);
                }
                own
            }
        };
        for (k, v) in &found.binary_env {
            env.insert(k.clone(), v.clone());
        }
        Ok(env)
    }

    /// `infra/stack.sh status`: component -> state.
    async fn components(&self) -> Result<BTreeMap<String, String>, BoxError> {
        let out = tokio::process::Command::new(self.root.join("infra/stack.sh"))
            .arg("status")
            .current_dir(&self.root)
            .output()
            .await?;
        // Non-zero when something is unhealthy: the lines say what.
        Ok(parse_status(&String::from_utf8_lossy(&out.stdout)))
    }

    /// `infra/services.sh pids`: (service, pid, log) of each running service.
    async fn service_pids(&self) -> Result<Vec<(String, u32, PathBuf)>, BoxError> {
        let out = tokio::process::Command::new(self.root.join("infra/services.sh"))
            .arg("pids")
            .current_dir(&self.root)
            .output()
            .await?;
        if !out.status.success() {
            return Err(format!(
                "infra/services.sh pids: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into());
        }
        Ok(parse_pids(&String::from_utf8_lossy(&out.stdout)))
    }
}

/// The environment of process `pid`, when this user may read it.
fn read_environ(pid: u32) -> Option<BTreeMap<String, String>> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    Some(parse_environ(&bytes))
}

/// `NAME=value` entries separated by NUL bytes.
fn parse_environ(bytes: &[u8]) -> BTreeMap<String, String> {
    bytes
        .split(|b| *b == 0)
        .filter_map(|entry| {
            let entry = std::str::from_utf8(entry).ok()?;
            let (k, v) = entry.split_once('=')?;
            (!k.is_empty()).then(|| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// `CARGO_TARGET_DIR` and `EDA_SERVICES_PROFILE` for the binary process `pid` runs.
fn binary_env(pid: u32) -> Vec<(String, String)> {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|exe| target_of(&exe))
        .map(|(target, profile)| {
            vec![
                ("CARGO_TARGET_DIR".to_owned(), target),
                ("EDA_SERVICES_PROFILE".to_owned(), profile),
            ]
        })
        .unwrap_or_default()
}

/// `<target>/<release|debug>/<binary>` -> (target, cargo profile). A binary rebuilt since it
/// started reads as `... (deleted)`.
fn target_of(exe: &Path) -> Option<(String, String)> {
    let text = exe.to_str()?;
    let exe = Path::new(text.strip_suffix(" (deleted)").unwrap_or(text));
    let dir = exe.parent()?;
    let profile = match dir.file_name()?.to_str()? {
        "debug" => "dev",
        other => other,
    };
    Some((dir.parent()?.to_str()?.to_owned(), profile.to_owned()))
}

/// The mode variables of `env`, each with its value or its default.
pub fn modes_of(env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    MODES
        .iter()
        .map(|(name, default)| {
            let value = env
                .get(*name)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
                .unwrap_or(default);
            ((*name).to_owned(), value.to_owned())
        })
        .collect()
}

/// `PUBLISH_MODE=direct` for what differs from the defaults, or `the default modes`.
fn describe(modes: &BTreeMap<String, String>) -> String {
    let odd: Vec<String> = MODES
        .iter()
        .filter_map(|(name, default)| {
            let v = modes.get(*name)?;
            (v != default).then(|| format!("{name}={v}"))
        })
        .collect();
    if odd.is_empty() {
        "the default modes".to_owned()
    } else {
        odd.join(" ")
    }
}

/// `infra/stack.sh status` lines (`NAME STATE LOG`, a header first) -> name -> state.
fn parse_status(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (name, state) = (f.next()?, f.next()?);
            (name != "COMPONENT").then(|| (name.to_owned(), state.to_owned()))
        })
        .collect()
}

/// `infra/services.sh pids` lines: `SERVICE PID LOG TARGET`.
fn parse_pids(text: &str) -> Vec<(String, u32, PathBuf)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (name, pid, log) = (f.next()?, f.next()?, f.next()?);
            Some((name.to_owned(), pid.parse().ok()?, PathBuf::from(log)))
        })
        .collect()
}

/// `error: cause: cause ...` on one line.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environ_entries_split_on_nul_and_keep_equals_in_values() {
        let env = parse_environ(b"PUBLISH_MODE=direct\0DATABASE_URL=postgres://a=b\0junk\0=x\0");
        assert_eq!(env.len(), 2);
        assert_eq!(env["PUBLISH_MODE"], "direct");
        assert_eq!(env["DATABASE_URL"], "postgres://a=b");
    }

    #[test]
    fn modes_fill_in_defaults_and_describe_only_what_differs() {
        let mut env = BTreeMap::new();
        env.insert("PROPAGATION".to_owned(), "off".to_owned());
        env.insert("CLAIM_CHECK".to_owned(), " ".to_owned());
        let modes = modes_of(&env);
        assert_eq!(modes["PUBLISH_MODE"], "outbox");
        assert_eq!(modes["CLAIM_CHECK"], "on", "blank reads as unset");
        assert_eq!(describe(&modes), "PROPAGATION=off");
        assert_eq!(describe(&modes_of(&BTreeMap::new())), "the default modes");
    }

    #[test]
    fn the_binary_path_gives_target_dir_and_profile() {
        assert_eq!(
            target_of(Path::new("/t/ci-target/release/order-service")),
            Some(("/t/ci-target".to_owned(), "release".to_owned()))
        );
        assert_eq!(
            target_of(Path::new("/w/target/debug/order-service (deleted)")),
            Some(("/w/target".to_owned(), "dev".to_owned()))
        );
    }

    #[test]
    fn status_and_pid_lines_are_parsed_and_junk_skipped() {
        let status = parse_status(
            "COMPONENT  STATE     LOG\npostgres   healthy   /r/pg.log\nkafka      stopped   /r/k.log\n",
        );
        assert_eq!(status.len(), 2);
        assert_eq!(status["kafka"], "stopped");
        let pids = parse_pids("order-service 42 /r/o.log order-service\nnope x y\n");
        assert_eq!(
            pids,
            vec![("order-service".to_owned(), 42, PathBuf::from("/r/o.log"))]
        );
    }
}
