//! Admission of export requests by the memory they hold in flight: from the
//! moment their body is read until their spans are in the buffer, where the
//! buffer's own bound takes over. Without it, many clients sending large
//! batches at once hold any number of bodies, decoded requests and records in
//! memory together, and the process grows past any bound the buffer keeps.
//!
//! A request that does not fit is refused at once (503 / UNAVAILABLE with a
//! retry hint) rather than queued: a queue of waiting bodies is the memory
//! this exists to bound, and OTLP exporters already retry with backoff. One
//! that alone would need more than the whole budget is refused for good (413 /
//! RESOURCE_EXHAUSTED): admitting it would break the bound, and waiting would
//! never make it fit.
//!
//! A request is charged what it holds as it comes to hold it: its body as the
//! bytes arrive (never what a header declares, or a client that declares much
//! and sends nothing would hold the budget), its decompressed body as it
//! inflates, and [`footprint`] before it is decoded.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::IngestError;

/// Memory of a decoded request and the records made from it, per byte of its
/// protobuf encoding, at its peak. Measured on loadgen's LLM traffic by
/// `cargo bench --bench ingest` (memory_per_wire_byte, BENCHMARKS.md): prost's
/// structures, a `String` and an enum per attribute, take 3.7 times the wire
/// size, and while records are made from them both are live, 8.8 times.
pub const DECODED_PER_WIRE_BYTE: usize = 9;

/// Permits are KiB: a semaphore counts in `u32` per acquisition.
const UNIT: usize = 1024;

/// What a request holds at its peak, from the size of its body on the wire
/// and, when that was compressed, its decompressed size: the body, the
/// decompressed copy, and the decoded request and records made from it.
pub fn footprint(wire: usize, inflated: Option<usize>) -> usize {
    let decoded = inflated.unwrap_or(wire);
    wire.saturating_add(inflated.unwrap_or(0))
        .saturating_add(decoded.saturating_mul(DECODED_PER_WIRE_BYTE))
}

/// The in-flight budget shared by every receiver.
pub struct Admission {
    permits: Arc<Semaphore>,
    limit_units: usize,
    retry_after: Duration,
    memory: Option<MemoryLimit>,
}

/// The process's resident memory against `ingest.memory_limit`, as the
/// OpenTelemetry Collector's memory_limiter does it: the buffer and in-flight
/// budgets bound what llmtrace holds, but not what the allocator keeps of
/// what was freed, nor the runtime and query engine beside them; refusing
/// while RSS is high bounds the whole.
struct MemoryLimit {
    /// Requests are refused from this RSS on: the limit less the in-flight
    /// budget (room for the requests already admitted) and [`UNCOUNTED`].
    refuse_from: usize,
    limit: usize,
    /// RSS at the last reading, and when it was taken (ms since `epoch`).
    rss: std::sync::atomic::AtomicUsize,
    read_at: std::sync::atomic::AtomicU64,
    epoch: std::time::Instant,
}

/// Memory neither budget counts, kept free below the limit: connections'
/// read buffers (HTTP/2 flow-control windows included), and the Parquet
/// writer's encoders (27 MiB when writing a 64 MiB flush, `cargo bench
/// --bench ingest`).
const UNCOUNTED: usize = 32 << 20;

/// How old an RSS reading may be: one read of /proc/self/statm per this
/// interval, whatever the request rate.
const RSS_READ_EVERY_MS: u64 = 20;

impl MemoryLimit {
    fn new(limit: usize, in_flight: usize) -> Option<Self> {
        // Off when asked, or where there is no /proc to read.
        if limit == 0 || read_rss().is_none() {
            return None;
        }
        Some(MemoryLimit {
            refuse_from: limit.saturating_sub(in_flight).saturating_sub(UNCOUNTED),
            limit,
            rss: Default::default(),
            read_at: std::sync::atomic::AtomicU64::new(u64::MAX),
            epoch: std::time::Instant::now(),
        })
    }

    fn rss(&self) -> usize {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.epoch.elapsed().as_millis() as u64;
        let at = self.read_at.load(Relaxed);
        if at == u64::MAX || now.saturating_sub(at) >= RSS_READ_EVERY_MS {
            self.read_at.store(now, Relaxed);
            if let Some(rss) = read_rss() {
                self.rss.store(rss, Relaxed);
            }
        }
        self.rss.load(Relaxed)
    }
}

/// Resident set size of this process, from /proc/self/statm.
fn read_rss() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    // The page size is 4 KiB on every Linux target we build for but
    // aarch64 kernels with 16/64 KiB pages, where this undercounts; sysconf
    // would need libc.
    Some(pages * 4096)
}

/// Memory one request is admitted to hold; given back when dropped.
pub struct Admitted {
    permit: OwnedSemaphorePermit,
    permits: Arc<Semaphore>,
    limit_units: usize,
    retry_after: Duration,
}

/// `bytes` in permits, or the refusal of a request that alone needs more
/// than the whole budget of `limit_units`.
fn units_for(bytes: usize, limit_units: usize) -> Result<u32, IngestError> {
    let units = bytes.div_ceil(UNIT).max(1);
    if units > limit_units {
        return Err(IngestError::TooLarge {
            needed: bytes,
            limit: limit_units * UNIT,
        });
    }
    // limit_units is at most Semaphore::MAX_PERMITS, below u32::MAX.
    Ok(u32::try_from(units).unwrap_or(u32::MAX))
}

impl Admission {
    /// `memory_limit` 0 leaves RSS unchecked.
    pub fn new(limit_bytes: usize, memory_limit: usize, retry_after: Duration) -> Self {
        let limit_units = limit_bytes.div_ceil(UNIT).clamp(1, Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(limit_units)),
            limit_units,
            retry_after,
            memory: MemoryLimit::new(memory_limit, limit_bytes),
        }
    }

    /// Refuses when no request could be admitted now: the process is near its
    /// memory limit or the budget is spent. Asked before a body of unknown
    /// size is read, so a refused one is never received.
    pub fn check(&self) -> Result<(), IngestError> {
        self.memory_check()?;
        if self.permits.available_permits() == 0 {
            return Err(self.refusal());
        }
        Ok(())
    }

    fn memory_check(&self) -> Result<(), IngestError> {
        if let Some(memory) = &self.memory {
            let rss = memory.rss();
            if rss >= memory.refuse_from {
                return Err(IngestError::Overloaded {
                    what: "resident (near ingest.memory_limit)",
                    held: rss,
                    limit: memory.limit,
                    retry_after: self.retry_after,
                });
            }
        }
        Ok(())
    }

    /// Admits a request that will hold `bytes`, or refuses it when the budget
    /// is spent or the process is near its memory limit, and for good when
    /// `bytes` is more than the whole budget.
    pub fn admit(&self, bytes: usize) -> Result<Admitted, IngestError> {
        let units = units_for(bytes, self.limit_units)?;
        self.memory_check()?;
        let permit = self
            .permits
            .clone()
            .try_acquire_many_owned(units)
            .map_err(|_| self.refusal())?;
        Ok(Admitted {
            permit,
            permits: self.permits.clone(),
            limit_units: self.limit_units,
            retry_after: self.retry_after,
        })
    }

    /// Bytes currently admitted.
    #[cfg(test)]
    fn held_bytes(&self) -> usize {
        (self.limit_units - self.permits.available_permits()) * UNIT
    }

    fn refusal(&self) -> IngestError {
        refusal(&self.permits, self.limit_units, self.retry_after)
    }
}

impl Admitted {
    /// Refuses for good a request that will need `bytes`, more than the
    /// whole budget, before it holds them; charges nothing.
    pub fn fits(&self, bytes: usize) -> Result<(), IngestError> {
        units_for(bytes, self.limit_units).map(|_| ())
    }

    /// Raises what the request holds to `bytes` in all, as more of it is
    /// received, inflated or about to be decoded; or refuses it: for now
    /// when others hold the rest of the budget, for good when `bytes` is
    /// more than all of it.
    pub fn grow_to(&mut self, bytes: usize) -> Result<(), IngestError> {
        let want = units_for(bytes, self.limit_units)? as usize;
        let held = self.permit.num_permits();
        if want <= held {
            return Ok(());
        }
        let more = u32::try_from(want - held).unwrap_or(u32::MAX);
        let extra = self
            .permits
            .clone()
            .try_acquire_many_owned(more)
            .map_err(|_| refusal(&self.permits, self.limit_units, self.retry_after))?;
        self.permit.merge(extra);
        Ok(())
    }
}

fn refusal(permits: &Semaphore, limit_units: usize, retry_after: Duration) -> IngestError {
    IngestError::Overloaded {
        what: "of requests are being decoded",
        held: (limit_units - permits.available_permits()) * UNIT,
        limit: limit_units * UNIT,
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn requests_are_admitted_until_the_budget_is_spent_and_again_once_one_finishes() {
        let admission = Admission::new(10 * MIB, 0, Duration::from_secs(1));
        let first = admission.admit(6 * MIB).unwrap();
        let second = admission.admit(4 * MIB).unwrap();
        assert_eq!(admission.held_bytes(), 10 * MIB);
        let refused = admission.admit(1).err().expect("budget is spent");
        assert!(matches!(
            refused,
            IngestError::Overloaded { held, limit, .. } if held == 10 * MIB && limit == 10 * MIB
        ));
        drop(first);
        let third = admission.admit(5 * MIB).unwrap();
        assert_eq!(admission.held_bytes(), 9 * MIB);
        drop((second, third));
        assert_eq!(admission.held_bytes(), 0);
    }

    #[test]
    fn growing_a_request_charges_the_difference_or_refuses_it() {
        let admission = Admission::new(8 * MIB, 0, Duration::from_secs(1));
        let mut request = admission.admit(MIB).unwrap();
        request.grow_to(5 * MIB).unwrap();
        assert_eq!(admission.held_bytes(), 5 * MIB);
        // Smaller than already held: nothing changes.
        request.grow_to(2 * MIB).unwrap();
        assert_eq!(admission.held_bytes(), 5 * MIB);
        let _other = admission.admit(2 * MIB).unwrap();
        assert!(request.grow_to(7 * MIB).is_err());
        // A refused growth keeps what was held, and gives it all back on drop.
        assert_eq!(admission.held_bytes(), 7 * MIB);
        drop(request);
        assert_eq!(admission.held_bytes(), 2 * MIB);
    }

    #[test]
    fn requests_are_refused_while_the_process_is_near_its_memory_limit() {
        let rss = read_rss().expect("linux: /proc/self/statm");
        // A limit the process is already past: refused, naming the limit.
        let tight = Admission::new(MIB, rss / 2, Duration::from_secs(1));
        let refused = tight.admit(1).err().expect("over the memory limit");
        let message = refused.to_string();
        assert!(message.contains("near ingest.memory_limit"), "{message}");
        assert!(matches!(
            refused,
            IngestError::Overloaded { held, limit, .. } if held >= rss / 2 && limit == rss / 2
        ));
        // One with room: admitted.
        let roomy = Admission::new(MIB, rss + 512 * MIB, Duration::from_secs(1));
        assert!(roomy.admit(1).is_ok());
    }

    #[test]
    fn a_spent_budget_refuses_before_any_size_is_known() {
        let admission = Admission::new(MIB, 0, Duration::from_secs(1));
        assert!(admission.check().is_ok());
        let all = admission.admit(MIB).unwrap();
        assert!(admission.check().is_err());
        drop(all);
        assert!(admission.check().is_ok());
    }

    #[test]
    fn a_request_larger_than_the_whole_budget_is_refused_for_good() {
        let admission = Admission::new(4 * MIB, 0, Duration::from_secs(1));
        assert!(matches!(
            admission.admit(4 * MIB + 1),
            Err(IngestError::TooLarge { needed, limit }) if needed == 4 * MIB + 1 && limit == 4 * MIB
        ));
        // Growing past the whole budget is refused the same way, and what
        // the request held is kept until it is dropped.
        let mut growing = admission.admit(MIB).unwrap();
        growing.grow_to(4 * MIB).unwrap();
        assert!(matches!(
            growing.grow_to(usize::MAX),
            Err(IngestError::TooLarge { .. })
        ));
        assert_eq!(admission.held_bytes(), 4 * MIB);
        drop(growing);
        assert!(admission.admit(4 * MIB).is_ok());
    }

    #[test]
    fn the_footprint_counts_body_inflated_copy_and_decoded_request() {
        assert_eq!(footprint(100, None), 100 + 9 * 100);
        assert_eq!(footprint(100, Some(1000)), 100 + 1000 + 9 * 1000);
        assert_eq!(footprint(usize::MAX, Some(usize::MAX)), usize::MAX);
    }
}
