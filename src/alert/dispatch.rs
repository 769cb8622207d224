//! Delivery of notifications on spawned tasks: at most [`MAX_CONCURRENT_DELIVERIES`] sending
//! at once, and in order per (destination, instance), so a slow trigger can never land after
//! its resolve.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, watch, Semaphore};
use tracing::{debug, warn};

use super::notify::{self, Deliverer, Destination, Notification};

/// Deliveries sending at the same time; more wait for a slot (a storm of alerts must not open
/// hundreds of connections to Slack).
pub const MAX_CONCURRENT_DELIVERIES: usize = 16;

/// Per (destination name, fingerprint): id and completion signal of the last queued delivery.
type Chains = HashMap<(String, String), (u64, oneshot::Receiver<()>)>;

/// Delivery on spawned tasks, ordered per (destination, instance).
pub(super) struct Dispatcher {
    deliverer: Arc<Deliverer>,
    slots: Arc<Semaphore>,
    chains: Arc<Mutex<Chains>>,
    next_id: AtomicU64,
    in_flight: Arc<watch::Sender<usize>>,
}

/// Decrements the in-flight count however the task ends.
struct InFlight(Arc<watch::Sender<usize>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Dispatcher {
    pub(super) fn new(deliverer: Arc<Deliverer>) -> Self {
        Dispatcher {
            deliverer,
            slots: Arc::new(Semaphore::new(MAX_CONCURRENT_DELIVERIES)),
            chains: Arc::new(Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(0),
            in_flight: Arc::new(watch::channel(0).0),
        }
    }

    pub(super) fn send(&self, destination: Destination, notification: Notification) {
        let key = (
            destination.name().to_owned(),
            notification.fingerprint.clone(),
        );
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (done, done_rx) = oneshot::channel::<()>();
        let previous = self
            .chains
            .lock()
            .unwrap()
            .insert(key.clone(), (id, done_rx))
            .map(|(_, rx)| rx);
        self.in_flight.send_modify(|n| *n += 1);
        let guard = InFlight(Arc::clone(&self.in_flight));
        let deliverer = Arc::clone(&self.deliverer);
        let slots = Arc::clone(&self.slots);
        let chains = Arc::clone(&self.chains);
        tokio::spawn(async move {
            let _guard = guard;
            if let Some(previous) = previous {
                // Resolves when the previous delivery for this key finished (sender dropped).
                let _ = previous.await;
            }
            let _slot = slots.acquire_owned().await;
            match deliverer.notify(&destination, &notification).await {
                Ok(outcome) => debug!(
                    destination = destination.name(),
                    rule = %notification.rule,
                    fingerprint = %notification.fingerprint,
                    status = %notification.status,
                    attempts = outcome.attempts,
                    "alert notification delivered"
                ),
                Err(err) => warn!(
                    destination = destination.name(),
                    kind = destination.kind(),
                    url = %notify::redact(destination.url()),
                    rule = %notification.rule,
                    fingerprint = %notification.fingerprint,
                    status = %notification.status,
                    error = %err,
                    "alert notification not delivered"
                ),
            }
            drop(done);
            let mut chains = chains.lock().unwrap();
            if chains.get(&key).is_some_and(|(last, _)| *last == id) {
                chains.remove(&key);
            }
        });
    }

    pub(super) fn deliverer(&self) -> &Deliverer {
        &self.deliverer
    }

    pub(super) async fn idle(&self) {
        let mut rx = self.in_flight.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}
