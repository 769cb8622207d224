//! The alert engine's own counters, for `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Engine counters for `/metrics` (cumulative since start). Delivery counters (attempts,
/// successes, failures, retries) are the deliverer's
/// [`DeliveryMetrics`](super::notify::DeliveryMetrics).
#[derive(Debug, Default)]
pub struct EngineMetrics {
    /// Evaluation rounds.
    pub rounds: AtomicU64,
    /// Rule evaluations (one per due rule per round).
    pub evaluations: AtomicU64,
    /// Rule evaluations that failed (query error, timeout, duplicate label sets).
    pub evaluation_errors: AtomicU64,
    /// Notifications handed to delivery (one per destination).
    pub notifications: AtomicU64,
    /// Failed writes of `state.json`.
    pub state_write_errors: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineMetricsSnapshot {
    pub rounds: u64,
    pub evaluations: u64,
    pub evaluation_errors: u64,
    pub notifications: u64,
    pub state_write_errors: u64,
}

impl EngineMetrics {
    pub fn snapshot(&self) -> EngineMetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        EngineMetricsSnapshot {
            rounds: get(&self.rounds),
            evaluations: get(&self.evaluations),
            evaluation_errors: get(&self.evaluation_errors),
            notifications: get(&self.notifications),
            state_write_errors: get(&self.state_write_errors),
        }
    }
}

pub(super) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}
