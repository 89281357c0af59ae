//! A service binary run as its own process, the way it runs in production: its own
//! `service.name` in Jaeger, its own JSON logs (captured in a file the test reads back).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// A running service process; killed when dropped, stopped gracefully by [`stop`](Self::stop).
#[derive(Debug)]
pub struct ServiceProcess {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// Its stdout + stderr.
    pub log_path: PathBuf,
    name: String,
    child: Option<Child>,
}

/// The binary `name` next to `sibling` (e.g. `env!("CARGO_BIN_EXE_order-service")`): `cargo
/// test --workspace` builds every service's binary into the same directory.
///
/// # Panics
/// When it is not there, with the command that builds it.
pub fn sibling_binary(sibling: &str, name: &str) -> PathBuf {
    let path = Path::new(sibling).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build -p {name}`; `make test` does)",
        path.display()
    );
    path
}

impl ServiceProcess {
    /// Starts `binary` with `HTTP_PORT=0` plus `envs`, reads the address it bound from its
    /// "... listening" log line (`fields.addr`: no race for a port with other tests), and waits
    /// (60 s at most) until `GET /healthz` answers 200. The service must log JSON.
    ///
    /// # Panics
    /// When it exits or does not become healthy; the log tail is in the message.
    pub async fn start(binary: &Path, name: &str, envs: &[(&str, String)]) -> Self {
        let dir = std::env::temp_dir().join("eda-test-logs");
        std::fs::create_dir_all(&dir).expect("log directory");
        let log_path = dir.join(format!("{}.log", crate::unique(name)));
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut command = Command::new(binary);
        command
            .stdout(Stdio::from(log.try_clone().expect("log file handle")))
            .stderr(Stdio::from(log));
        for (key, value) in envs {
            command.env(key, value);
        }
        command.env("HTTP_PORT", "0");
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let mut process = Self {
            address: String::new(),
            log_path,
            name: name.to_owned(),
            child: Some(child),
        };
        process.wait_healthy().await;
        process
    }

    /// The address from the service's "... listening" line, once it is logged.
    fn bound_address(&self) -> Option<String> {
        self.json_logs().iter().find_map(|line| {
            let fields = &line["fields"];
            fields["message"]
                .as_str()
                .filter(|m| m.ends_with("listening"))
                .and_then(|_| fields["addr"].as_str())
                .map(|addr| format!("http://{addr}"))
        })
    }

    async fn wait_healthy(&mut self) {
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "{} exited at start ({status}):\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if self.address.is_empty()
                && let Some(address) = self.bound_address()
            {
                self.address = address;
            }
            let healthy = !self.address.is_empty()
                && client
                    .get(format!("{}/healthz", self.address))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
            if healthy {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} not healthy within 60 s:\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The raw log text so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Every log line that is a JSON object, in order (other lines are skipped).
    pub fn json_logs(&self) -> Vec<Value> {
        self.log_text()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(Value::is_object)
            .collect()
    }

    /// SIGTERM, then waits (30 s at most) for the graceful stop, which also flushes its spans.
    /// The log file is deleted after a clean stop (kept when a test fails before this).
    ///
    /// # Panics
    /// When it does not stop in time, or not cleanly: a non-zero exit, or a background worker
    /// (consumer, relay) that failed or was left behind (`eda_http::Workers` logs those with a
    /// `worker` field).
    pub async fn stop(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let unclean: Vec<Value> = self
                    .json_logs()
                    .into_iter()
                    .filter(|line| line["fields"]["worker"].is_string() && line["level"] != "DEBUG")
                    .collect();
                assert!(
                    status.success() && unclean.is_empty(),
                    "{} did not stop cleanly ({status}; workers: {unclean:?}):\n{}",
                    self.name,
                    self.log_tail()
                );
                let _ = std::fs::remove_file(&self.log_path);
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.kill();
                panic!("{} did not stop within 30 s after SIGTERM", self.name);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
