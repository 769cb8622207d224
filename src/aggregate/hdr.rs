//! HdrHistograms of milliseconds, and their HdrHistogram V2 encoding (the
//! format of the rollup files' histogram columns, readable by any HdrHistogram
//! library).
//!
//! LLM calls take from tens of milliseconds to minutes, so whole milliseconds
//! are the unit: below 10^digits ms every value is exact, above it the
//! histogram keeps `digits` significant digits. Histograms start small and
//! grow to the largest value recorded, so a cell of fast calls stays small.

use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;

/// Significant digits HdrHistogram supports.
pub const MAX_DIGITS: u8 = 5;

#[derive(Debug, thiserror::Error)]
pub enum HdrError {
    #[error("significant digits must be 0 to {MAX_DIGITS}, got {0}")]
    Digits(u8),
    #[error("not a serialized HdrHistogram: {0}")]
    Decode(String),
    #[error("histograms cannot be merged: {0}")]
    Merge(String),
}

/// An empty auto-resizing histogram of milliseconds.
pub fn new_histogram(digits: u8) -> Result<Histogram<u64>, HdrError> {
    if digits > MAX_DIGITS {
        return Err(HdrError::Digits(digits));
    }
    // Bounds only set the initial size; auto-resize grows the histogram to
    // whatever is recorded.
    let mut h = Histogram::new_with_bounds(1, 2, digits).map_err(|_| HdrError::Digits(digits))?;
    h.auto(true);
    Ok(h)
}

/// Durations above this are recorded as this: a histogram's size grows with
/// the largest value in it, and one absurd span (or a hostile one) must not
/// make every cell of its key large. No LLM call takes an hour.
pub const MAX_RECORDED_MS: u64 = 3_600_000;

/// Records one duration, rounded to whole milliseconds; negative values count
/// as 0 and values past [`MAX_RECORDED_MS`] as that, so counts stay exact.
pub fn record_ms(h: &mut Histogram<u64>, ms: f64) {
    let v = if ms.is_finite() && ms > 0.0 {
        (ms.round() as u64).min(MAX_RECORDED_MS)
    } else {
        0
    };
    // `record` grows an auto-resizing histogram; `saturating_record` would
    // pin every larger value to the current maximum.
    if h.record(v).is_err() {
        h.saturating_record(v);
    }
}

/// The V2 encoding of `h`.
pub fn encode(h: &Histogram<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail, and every histogram we build is encodable.
    if let Err(e) = V2Serializer::new().serialize(h, &mut out) {
        tracing::error!(error = ?e, "histogram encoding failed");
        out.clear();
    }
    out
}

/// Reads a V2-encoded histogram. The bytes may come from any SQL value, so
/// the header is checked before the decoder sizes anything from it.
pub fn decode(bytes: &[u8]) -> Result<Histogram<u64>, HdrError> {
    // The V2 cookie with the word-size bits HdrHistogram sets (0x10).
    const V2_COOKIE: u32 = 0x1c84_9313;
    let bad = |why: &str| HdrError::Decode(why.to_owned());
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    let (cookie, payload, digits) = match (word(0), word(4), word(12)) {
        (Some(c), Some(p), Some(d)) => (c, p as usize, d),
        _ => return Err(bad("shorter than the 40-byte V2 header")),
    };
    if cookie != V2_COOKIE {
        return Err(bad("no V2 cookie (deflated V2 is not read)"));
    }
    if digits > u32::from(MAX_DIGITS) {
        return Err(bad("more than 5 significant digits"));
    }
    if bytes.len() < 40 || payload > bytes.len() - 40 {
        return Err(bad("payload longer than the value"));
    }
    let mut reader = bytes;
    let decoded =
        std::panic::catch_unwind(move || Deserializer::new().deserialize::<u64, _>(&mut reader));
    let mut h = match decoded {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return Err(HdrError::Decode(format!("{e:?}"))),
        Err(_) => return Err(bad("malformed histogram")),
    };
    h.auto(true);
    Ok(h)
}

/// Adds `from` into `into`, growing `into` as needed.
pub fn merge(into: &mut Histogram<u64>, from: &Histogram<u64>) -> Result<(), HdrError> {
    into.add(from)
        .map_err(|e| HdrError::Merge(format!("{e:?}")))
}

/// The value at quantile `q` (0..=1) in milliseconds, by nearest rank:
/// the smallest recorded value with at least `q` of all values at or below
/// it, within the histogram's precision. `None` when empty.
pub fn quantile(h: &Histogram<u64>, q: f64) -> Option<f64> {
    if h.is_empty() {
        return None;
    }
    Some(h.value_at_quantile(q.clamp(0.0, 1.0)) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_and_merges_exactly() {
        let mut a = new_histogram(3).unwrap();
        let mut b = new_histogram(3).unwrap();
        for v in 1..=1000 {
            record_ms(&mut a, v as f64);
            record_ms(&mut b, (v * 37) as f64);
        }
        let a2 = decode(&encode(&a)).unwrap();
        assert_eq!(a2, a);
        let mut ab = a2;
        merge(&mut ab, &decode(&encode(&b)).unwrap()).unwrap();
        assert_eq!(ab.len(), 2000);
        let mut all = new_histogram(3).unwrap();
        for v in 1..=1000 {
            record_ms(&mut all, v as f64);
            record_ms(&mut all, (v * 37) as f64);
        }
        assert_eq!(ab, all, "merging equals recording everything in one");
    }

    #[test]
    fn quantiles_are_nearest_rank_within_precision() {
        let mut h = new_histogram(3).unwrap();
        for v in 1..=100 {
            record_ms(&mut h, v as f64 * 100.0);
        }
        // Nearest rank: p50 of 100..=10000 step 100 is the 50th value, 5000.
        let p50 = quantile(&h, 0.5).unwrap();
        assert!((p50 - 5000.0).abs() <= 5.0, "{p50}");
        let p99 = quantile(&h, 0.99).unwrap();
        assert!((p99 - 9900.0).abs() <= 9.9, "{p99}");
        assert_eq!(quantile(&new_histogram(3).unwrap(), 0.5), None);
    }

    #[test]
    fn bad_input_is_an_error_not_a_crash() {
        assert!(decode(b"").is_err());
        assert!(decode(b"garbage bytes here").is_err());
        assert!(matches!(new_histogram(9), Err(HdrError::Digits(9))));
        let mut h = new_histogram(2).unwrap();
        record_ms(&mut h, f64::NAN);
        record_ms(&mut h, -5.0);
        record_ms(&mut h, 1e300);
        assert_eq!(h.len(), 3);
        assert_eq!(h.max(), h.highest_equivalent(MAX_RECORDED_MS));
    }
}
