//! Background jobs of the daemon (flush, rollups, compaction, retention,
//! trace assembly, log probing): each is one named job run on an interval
//! until shutdown by [`spawn`], and given its final run, if it has one, by
//! [`Periodic::finish`] at its place in the shutdown order.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Which run of a job this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// A run on the interval (or on a wake-up).
    Tick,
    /// The run at shutdown, once the loop has ended; most jobs have none.
    Last,
}

/// When a job runs.
pub struct Schedule {
    every: Duration,
    first_now: bool,
    wake: Option<Box<dyn FnMut() -> BoxFuture<'static, ()> + Send>>,
}

impl Schedule {
    /// Every `every`, the first run one interval after the start.
    pub fn every(every: Duration) -> Self {
        Self {
            every,
            first_now: false,
            wake: None,
        }
    }

    /// The first run right at the start, then every interval.
    pub fn starting_now(mut self) -> Self {
        self.first_now = true;
        self
    }

    /// Also runs as soon as the future `wake` makes resolves.
    pub fn or_when<F>(mut self, mut wake: impl FnMut() -> F + Send + 'static) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.wake = Some(Box::new(move || Box::pin(wake())));
        self
    }

    /// Until the next run is due; `None` once shutdown is requested.
    async fn wait(&mut self, stop: &mut watch::Receiver<bool>) -> Option<()> {
        let wake: Pin<Box<dyn Future<Output = ()> + Send>> = match &mut self.wake {
            Some(wake) => wake(),
            None => Box::pin(std::future::pending()),
        };
        tokio::select! {
            _ = tokio::time::sleep(self.every) => Some(()),
            _ = wake => Some(()),
            _ = stop.wait_for(|stop| *stop) => None,
        }
    }
}

/// A job's runs, boxed so a [`Periodic`] can be named in a struct.
type Job<S> = Box<dyn FnMut(S, Pass) -> BoxFuture<'static, S> + Send>;

/// A job running on its schedule; [`Periodic::finish`] waits for its loop
/// to end (shutdown must have been requested) and gives it its last run.
pub struct Periodic<S> {
    name: &'static str,
    handle: Option<JoinHandle<(S, Job<S>)>>,
}

/// Runs the job `name` on `schedule` until `stop` says shutdown, threading
/// `state` through its runs (a job that writes on the blocking pool moves
/// its state there and back). The job is told whether it is a [`Pass::Tick`]
/// or the [`Pass::Last`] run that [`Periodic::finish`] gives it.
pub fn spawn<S, F>(
    name: &'static str,
    mut schedule: Schedule,
    mut stop: watch::Receiver<bool>,
    mut state: S,
    mut job: impl FnMut(S, Pass) -> F + Send + 'static,
) -> Periodic<S>
where
    S: Send + 'static,
    F: Future<Output = S> + Send + 'static,
{
    let mut job: Job<S> = Box::new(move |state, pass| Box::pin(job(state, pass)));
    let handle = tokio::spawn(async move {
        let mut first = true;
        loop {
            if !(first && schedule.first_now) && schedule.wait(&mut stop).await.is_none() {
                break;
            }
            first = false;
            state = job(state, Pass::Tick).await;
        }
        (state, job)
    });
    Periodic {
        name,
        handle: Some(handle),
    }
}

impl<S> Periodic<S> {
    /// A job that is switched off: it never runs, not even at shutdown.
    pub fn off(name: &'static str) -> Self {
        Self { name, handle: None }
    }

    /// Waits for the loop to end, then runs the job's last pass; its state
    /// after that, `None` when the job was off or failed.
    pub async fn finish(self) -> Option<S> {
        match self.handle?.await {
            Ok((state, mut job)) => Some(job(state, Pass::Last).await),
            Err(error) => {
                tracing::error!(%error, job = self.name, "background task failed");
                None
            }
        }
    }
}
