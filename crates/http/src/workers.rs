//! Background workers (Kafka consumer, outbox relay, clean-up jobs) that run beside the HTTP
//! server and stop after it, in stages.
//!
//! The order matters for nothing to be lost: a consumer's last transaction may write outbox
//! rows, so the relay that publishes them must stop *after* the consumer. Workers spawned before
//! [`Workers::then`] stop (or time out) before those spawned after it are asked to stop.
//!
//! ```no_run
//! # async fn demo() {
//! use std::time::Duration;
//! use eda_http::Workers;
//!
//! let mut workers = Workers::new();
//! workers.spawn("consumer", |stop| async move {
//!     stop.cancelled().await; // consume until asked to stop
//!     Ok::<(), std::io::Error>(())
//! });
//! workers.then().spawn("outbox relay", |stop| async move {
//!     stop.cancelled().await; // publish until asked to stop
//! });
//! // ... axum::serve(..).with_graceful_shutdown(..).await ...
//! workers.stop(Duration::from_secs(20)).await;
//! # }
//! ```

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How a worker's run ended: `()` for workers that cannot fail, `Result<(), E>` for the others.
pub trait WorkerOutcome: Send + 'static {
    /// The error to log, if the worker failed.
    fn error(self) -> Option<String>;
}

impl WorkerOutcome for () {
    fn error(self) -> Option<String> {
        None
    }
}

impl<E: std::fmt::Display + Send + 'static> WorkerOutcome for Result<(), E> {
    fn error(self) -> Option<String> {
        self.err().map(|e| e.to_string())
    }
}

#[derive(Debug, Default)]
struct Stage {
    stop: CancellationToken,
    tasks: Vec<(&'static str, JoinHandle<Option<String>>)>,
}

/// Workers grouped in stop stages; see the [module docs](self).
#[derive(Debug)]
pub struct Workers {
    stages: Vec<Stage>,
}

impl Default for Workers {
    fn default() -> Self {
        Self::new()
    }
}

impl Workers {
    /// No workers yet, one open stage.
    pub fn new() -> Self {
        Self {
            stages: vec![Stage::default()],
        }
    }

    /// Opens the next stage: workers spawned from now on stop after all earlier ones.
    pub fn then(&mut self) -> &mut Self {
        self.stages.push(Stage::default());
        self
    }

    /// Spawns `run(stop)` on the runtime in the current stage; `stop` is cancelled when the
    /// stage is stopped, and the worker should then finish what it holds and return.
    pub fn spawn<F, Fut>(&mut self, name: &'static str, run: F) -> &mut Self
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: WorkerOutcome,
    {
        let stage = self
            .stages
            .last_mut()
            .expect("there is always an open stage");
        let task = run(stage.stop.clone());
        stage
            .tasks
            .push((name, tokio::spawn(async move { task.await.error() })));
        self
    }

    /// Stops the stages in order, waiting at most `timeout` for each worker, and logs how each
    /// ended. A worker that does not stop in time is left behind: what it did not finish is
    /// redelivered or republished later (consumers commit after applying, the relay marks rows
    /// after Kafka acknowledged them).
    pub async fn stop(self, timeout: Duration) {
        for stage in self.stages {
            stage.stop.cancel();
            for (name, task) in stage.tasks {
                join(name, task, timeout).await;
            }
        }
    }
}

async fn join(name: &str, task: JoinHandle<Option<String>>, timeout: Duration) {
    match tokio::time::timeout(timeout, task).await {
        Ok(Ok(None)) => tracing::debug!(worker = name, "worker stopped"),
        Ok(Ok(Some(err))) => tracing::error!(worker = name, error = %err, "worker failed"),
        Ok(Err(err)) => tracing::error!(worker = name, error = %err, "worker panicked"),
        Err(_) => tracing::warn!(
            worker = name,
            "worker did not stop in time; its unfinished work will be redone"
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[tokio::test]
    async fn stages_stop_in_order_and_a_stuck_worker_is_left_behind() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut workers = Workers::new();
        for name in ["consumer-a", "consumer-b"] {
            let log = Arc::clone(&log);
            workers.spawn(name, move |stop| async move {
                stop.cancelled().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                log.lock().unwrap().push(name);
                Err::<(), _>("disk on fire")
            });
        }
        let relay_log = Arc::clone(&log);
        workers.then().spawn("relay", move |stop| async move {
            stop.cancelled().await;
            relay_log.lock().unwrap().push("relay");
        });
        workers.spawn("stuck", |_stop| std::future::pending::<()>());

        let started = tokio::time::Instant::now();
        workers.stop(Duration::from_millis(200)).await;

        let log = log.lock().unwrap();
        assert_eq!(log.len(), 3);
        assert_eq!(log[2], "relay", "the second stage stopped after the first");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the stuck worker was waited for at most the timeout"
        );
    }

    #[test]
    fn outcomes_carry_the_error() {
        assert_eq!(().error(), None);
        assert_eq!(Ok::<(), String>(()).error(), None);
        assert_eq!(Err::<(), _>("boom").error().as_deref(), Some("boom"));
    }
}
