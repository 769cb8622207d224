//! Durability bookkeeping: what the write-ahead log must keep.
//!
//! A logged request may leave the log only once every consumer has made it
//! durable elsewhere. Each consumer reports a floor, the first log position
//! it still needs:
//! - requests in flight, between their log append and their buffer append,
//!   and requests held while their calls wait for their ancestors (see
//!   `ingest::assemble`): each holds a [`Ticket`] until its spans are in the
//!   buffer;
//! - the buffer: the rows still only in memory (or being written), per
//!   partition (`store::Buffer::min_live_wal`);
//! - the rollups: the last rollup mark's `aggregated_before` (see
//!   `aggregate::mark`), reported by the rollup sink.
//!
//! [`Ledger::log_floor`] is the lowest of them and [`Ledger::truncate`]
//! forgets the log before it. Which requests the aggregator has counted
//! beyond `aggregated_before` stays with the aggregator: it must be read
//! under the same lock as the cells it describes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::store::Store;
use crate::wal::{Log, WalPosition};

/// The floors the log is kept from; one per collector, shared by the
/// pipeline (tickets), the rollup sink (rollup floor) and the flusher
/// (truncation).
pub struct Ledger {
    log: Option<Arc<Log>>,
    store: Arc<Store>,
    in_flight: Arc<InFlight>,
    /// The first log record the rollup files may not count yet (see
    /// `aggregate::mark::RollupMark`): the log keeps it and what follows.
    rollup_floor: Mutex<Option<WalPosition>>,
}

/// Requests between their log append and their buffer append, by the log
/// position they will have at least: until they reach the buffer, the log
/// must not be truncated past them.
#[derive(Default)]
struct InFlight {
    next: AtomicU64,
    open: Mutex<BTreeMap<u64, WalPosition>>,
}

/// Keeps the log from being truncated past a request until its spans are
/// in the buffer (however long it waits for trace assembly).
pub struct Ticket {
    in_flight: Arc<InFlight>,
    id: u64,
}

impl InFlight {
    fn begin(self: &Arc<Self>, at_least: WalPosition) -> Ticket {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, at_least);
        Ticket {
            in_flight: self.clone(),
            id,
        }
    }

    fn min(&self) -> Option<WalPosition> {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .min()
            .copied()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.in_flight
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

fn lowest(a: Option<WalPosition>, b: Option<WalPosition>) -> Option<WalPosition> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Ledger {
    /// The ledger of `log` (none: nothing is logged, nothing to keep) and
    /// of the buffer of `store`.
    pub fn new(log: Option<Arc<Log>>, store: Arc<Store>) -> Self {
        Self {
            log,
            store,
            in_flight: Arc::default(),
            rollup_floor: Mutex::default(),
        }
    }

    pub fn log(&self) -> Option<&Arc<Log>> {
        self.log.as_ref()
    }

    /// A ticket for a request about to be logged, at the log's end now;
    /// `None` without a log. Taken before the request is submitted to the
    /// log and dropped once its spans are in the buffer.
    pub fn begin(&self) -> Option<Ticket> {
        let log = self.log.as_ref()?;
        Some(self.in_flight.begin(log.end()))
    }

    /// The lowest log position whose spans may not be in Parquet yet: the
    /// log may forget everything before it. Requests in flight are read
    /// before the buffer, so one moving from the first to the second is
    /// seen in at least one of them.
    pub fn live_floor(&self) -> Option<WalPosition> {
        let in_flight = self.in_flight.min();
        let buffered = self.store.buffer().min_live_wal();
        lowest(in_flight, buffered)
    }

    /// Every log record before this position has been aggregated: read the
    /// log's end first, then the requests in flight, so a request appended
    /// before that end is seen in flight or is done. `None` without a log.
    pub fn aggregated_before(&self) -> Option<WalPosition> {
        let end = self.log.as_ref()?.end();
        Some(self.in_flight.min().map_or(end, |m| m.min(end)))
    }

    /// Where the log must keep records from for the rollups (the last
    /// rollup mark's `aggregated_before`); see [`Ledger::log_floor`].
    pub fn set_rollup_floor(&self, floor: Option<WalPosition>) {
        *self.rollup_floor.lock().unwrap_or_else(|p| p.into_inner()) = floor;
    }

    /// The lowest log position still needed: by spans not in Parquet yet
    /// ([`Ledger::live_floor`]) or by rollups not written yet.
    pub fn log_floor(&self) -> Option<WalPosition> {
        let rollups = *self.rollup_floor.lock().unwrap_or_else(|p| p.into_inner());
        lowest(self.live_floor(), rollups)
    }

    /// Forgets the log records whose spans are all in Parquet and whose
    /// calls the rollups count. Blocking file work (rotation, directory
    /// fsync): call it off the async workers.
    pub fn truncate(&self) {
        let Some(log) = &self.log else { return };
        if let Err(error) = log.truncate_before(self.log_floor()) {
            tracing::warn!(%error, "could not truncate the write-ahead log; it is replayed from further back at the next start");
        }
    }
}
