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
//! // A worker that ends before shutdown makes /readyz fail:
//! let mut readiness = eda_http::health::Readiness::new();
//! readiness.add("workers", workers.liveness());
//! // ... axum::serve(..).with_graceful_shutdown(..).await ...
//! workers.stop(Duration::from_secs(20)).await;
//! # }
//! ```

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
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

/// Why each worker that ended before shutdown ended, shared with [`Workers::liveness`].
type Ended = Arc<Mutex<Vec<String>>>;

/// Workers grouped in stop stages; see the [module docs](self). Dropping it without
/// [`stop`](Self::stop) (an early return) asks every worker to stop, without waiting.
#[derive(Debug)]
pub struct Workers {
    stages: Vec<Stage>,
    ended: Ended,
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
            ended: Ended::default(),
        }
    }

    /// A readiness check (for [`Readiness::add`](crate::health::Readiness::add)) that fails
    /// once any worker, spawned before or after this call, has ended before shutdown: returned,
    /// failed or panicked. A service without its consumer or relay still answers HTTP, but its
    /// events pile up; the orchestrator should see that, not only the log.
    pub fn liveness(
        &self,
    ) -> impl Fn() -> std::future::Ready<Result<(), String>> + Send + Sync + 'static {
        let ended = Arc::clone(&self.ended);
        move || {
            let ended = ended.lock().unwrap_or_else(PoisonError::into_inner);
            std::future::ready(if ended.is_empty() {
                Ok(())
            } else {
                Err(ended.join("; "))
            })
        }
    }

    /// Opens the next stage: workers spawned from now on stop after all earlier ones.
    pub fn then(&mut self) -> &mut Self {
        self.stages.push(Stage::default());
        self
    }

    /// Spawns `run(stop)` on the runtime in the current stage; `stop` is cancelled when the
    /// stage is stopped, and the worker should then finish what it holds and return. A worker
    /// that ends before that (it failed, gave up, or panicked) is logged at once as an error
    /// and fails [`liveness`](Self::liveness): the service goes on serving HTTP without it, and
    /// that must not go unnoticed until shutdown.
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
        let stop = stage.stop.clone();
        let task = run(stop.clone());
        let mut watch = EarlyEnd {
            name,
            stop,
            ended: Arc::clone(&self.ended),
            outcome: None,
        };
        let task = tokio::spawn(async move {
            let error = task.await.error();
            if watch.stop.is_cancelled() {
                return error; // logged by `stop`
            }
            watch.returned(error);
            None // reported by `watch` as it drops
        });
        stage.tasks.push((name, task));
        self
    }

    /// Stops the stages in order and logs how each worker ended, all within `timeout` in total:
    /// each stage gets an even share of the time left (one that finishes early leaves the rest
    /// to the next), so a stuck consumer cannot use up the relay's time too. A worker still running at the deadline
    /// is aborted: a consumer's transaction rolls back and its offset is not committed, the
    /// relay's unacknowledged rows stay unpublished, so that work is redone later (redelivered,
    /// republished, deduplicated by the consumers).
    pub async fn stop(mut self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        let stages = std::mem::take(&mut self.stages);
        let count = u32::try_from(stages.len()).unwrap_or(u32::MAX);
        for (stage, index) in stages.into_iter().zip(0..) {
            let now = tokio::time::Instant::now();
            let share = deadline.saturating_duration_since(now) / (count - index);
            stage.stop.cancel();
            for (name, task) in stage.tasks {
                join(name, task, now + share).await;
            }
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for stage in &self.stages {
            stage.stop.cancel();
        }
    }
}

/// Reports a worker that ended while its stage still wanted it: the guard is dropped when the
/// worker's task ends, also while unwinding from a panic, which an `await` could not see.
struct EarlyEnd {
    name: &'static str,
    stop: CancellationToken,
    ended: Ended,
    /// Set when the worker returned: its error, or that it had none.
    outcome: Option<String>,
}

impl EarlyEnd {
    fn returned(&mut self, error: Option<String>) {
        self.outcome = Some(error.unwrap_or_else(|| "returned without an error".to_owned()));
    }
}

impl Drop for EarlyEnd {
    fn drop(&mut self) {
        let why = match self.outcome.take() {
            Some(why) => why,
            None if std::thread::panicking() => "panicked".to_owned(),
            // Aborted at the stop deadline, or dropped with the runtime: not an early end.
            None => return,
        };
        if self.stop.is_cancelled() {
            return; // asked to stop meanwhile: `Workers::stop` logs how it ended
        }
        tracing::error!(
            worker = self.name,
            error = %why,
            "worker ended before shutdown; the service runs without it and /readyz fails"
        );
        self.ended
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(format!("{} ended: {why}", self.name));
    }
}

async fn join(name: &str, mut task: JoinHandle<Option<String>>, deadline: tokio::time::Instant) {
    match tokio::time::timeout_at(deadline, &mut task).await {
        Ok(Ok(None)) => tracing::debug!(worker = name, "worker stopped"),
        Ok(Ok(Some(err))) => tracing::error!(worker = name, error = %err, "worker failed"),
        Ok(Err(err)) => tracing::error!(worker = name, error = %err, "worker panicked"),
        Err(_) => {
            task.abort();
            tracing::warn!(
                worker = name,
                "worker did not stop in time and was aborted; its unfinished work will be redone"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    type Log = Arc<Mutex<Vec<&'static str>>>;

    /// A worker that notes its name once asked to stop, after `work` more time.
    fn polite(
        log: &Log,
        name: &'static str,
        work: Duration,
    ) -> impl FnOnce(
        CancellationToken,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), &'static str>> + Send>> {
        let log = Arc::clone(log);
        move |stop| {
            Box::pin(async move {
                stop.cancelled().await;
                tokio::time::sleep(work).await;
                log.lock().unwrap().push(name);
                Err("disk on fire")
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stages_stop_in_order_within_the_timeout_and_stuck_workers_are_aborted() {
        let log = Log::default();
        let mut workers = Workers::new();
        workers.spawn(
            "consumer-a",
            polite(&log, "consumer-a", Duration::from_millis(20)),
        );
        workers.spawn("stuck-1", |_stop| std::future::pending::<()>());
        workers.then();
        workers.spawn("relay", polite(&log, "relay", Duration::ZERO));
        workers.spawn("stuck-2", |_stop| std::future::pending::<()>());
        // Not yet asked: nobody stopped.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(log.lock().unwrap().is_empty());

        let started = tokio::time::Instant::now();
        workers.stop(Duration::from_millis(200)).await;

        assert_eq!(
            *log.lock().unwrap(),
            ["consumer-a", "relay"],
            "the second stage stopped after the first, even though the first had a stuck worker"
        );
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(200),
            "half the time for each stage's stuck worker, no longer in total"
        );
    }

    #[tokio::test]
    async fn dropping_the_workers_asks_them_to_stop() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut workers = Workers::new();
        workers.then().spawn("relay", |stop| async move {
            stop.cancelled().await;
            let _ = tx.send(());
        });
        drop(workers);
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .expect("the worker was told to stop")
            .unwrap();
    }

    async fn crash() {
        panic!("a bug");
    }

    #[tokio::test]
    async fn a_worker_that_ends_early_fails_liveness_and_one_that_is_stopped_does_not() {
        let mut workers = Workers::new();
        let liveness = workers.liveness();
        workers.spawn("relay", |stop| async move { stop.cancelled().await });
        tokio::task::yield_now().await;
        assert_eq!(liveness().await, Ok(()));

        workers.spawn("consumer", |_stop| async { Err::<(), _>("broker gone") });
        workers.spawn("janitor", |_stop| crash());
        for _ in 0..100 {
            if liveness().await.is_err_and(|why| why.contains("janitor")) {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(
            liveness().await,
            Err("consumer ended: broker gone; janitor ended: panicked".to_owned())
        );

        let mut stopped = Workers::new();
        let liveness = stopped.liveness();
        stopped.spawn("relay", |stop| async move { stop.cancelled().await });
        stopped.stop(Duration::from_secs(5)).await;
        assert_eq!(
            liveness().await,
            Ok(()),
            "a worker asked to stop did not end early"
        );
    }

    #[test]
    fn outcomes_carry_the_error() {
        assert_eq!(().error(), None);
        assert_eq!(Ok::<(), String>(()).error(), None);
        assert_eq!(Err::<(), _>("boom").error().as_deref(), Some("boom"));
    }
}
