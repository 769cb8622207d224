//! HdrHistograms of milliseconds, and their HdrHistogram V2 encoding (the
//! format of the rollup files' histogram columns, readable by any HdrHistogram
//! library).
//!
//! LLM calls take from tens of milliseconds to minutes, so whole milliseconds
//! are the unit: below 10^digits ms every value is exact, above it the
//! histogram keeps `digits` significant digits. Histograms start small and
//! grow to the largest value recorded, so a cell of fast calls stays small.

use hdrhistogram::serialization::{Serializer, V2Serializer};
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

/// A duration as recorded: whole milliseconds, negative values as 0 and
/// values past [`MAX_RECORDED_MS`] as that.
pub fn whole_ms(ms: f64) -> u64 {
    if ms.is_finite() && ms > 0.0 {
        (ms.round() as u64).min(MAX_RECORDED_MS)
    } else {
        0
    }
}

/// Records one duration (see [`whole_ms`]), so counts stay exact.
pub fn record_ms(h: &mut Histogram<u64>, ms: f64) {
    let v = whole_ms(ms);
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

/// Values past this are refused when reading an encoded histogram: a
/// histogram's memory grows with its largest value, and the bytes may come
/// from any SQL value.
const MAX_DECODED_VALUE: u64 = 1 << 43;

/// The fixed part of a V2 encoding.
struct Header {
    digits: u8,
    low: u64,
    payload: std::ops::Range<usize>,
}

impl Header {
    fn parse(bytes: &[u8]) -> Result<Header, HdrError> {
        // The V2 cookie with the word-size bits HdrHistogram sets (0x10).
        const V2_COOKIE: u32 = 0x1c84_9313;
        let bad = |why: &str| HdrError::Decode(why.to_owned());
        let u32_at = |at: usize| {
            bytes
                .get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        let u64_at = |at: usize| {
            bytes.get(at..at + 8).map(|b| {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                u64::from_be_bytes(a)
            })
        };
        if bytes.len() < 40 {
            return Err(bad("shorter than the 40-byte V2 header"));
        }
        let (Some(cookie), Some(len), Some(offset), Some(digits), Some(low), Some(ratio)) = (
            u32_at(0),
            u32_at(4),
            u32_at(8),
            u32_at(12),
            u64_at(16),
            u64_at(32),
        ) else {
            return Err(bad("truncated header"));
        };
        if cookie != V2_COOKIE {
            return Err(bad("no V2 cookie (deflated V2 is not read)"));
        }
        if digits > u32::from(MAX_DIGITS) {
            return Err(bad("more than 5 significant digits"));
        }
        if offset != 0 || f64::from_bits(ratio) != 1.0 {
            return Err(bad(
                "normalizing offsets and double histograms are not read",
            ));
        }
        if low == 0 || low > MAX_DECODED_VALUE {
            return Err(bad("lowest discernible value out of range"));
        }
        let len = len as usize;
        if len > bytes.len() - 40 {
            return Err(bad("payload longer than the value"));
        }
        Ok(Header {
            digits: digits as u8,
            low,
            payload: 40..40 + len,
        })
    }
}

/// One LEB128 varint of at most 9 bytes (the 9th byte is taken whole, as
/// HdrHistogram writes it); returns the value and the bytes read.
fn varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, b) in bytes.iter().take(9).enumerate() {
        if i == 8 {
            return Some((value | (u64::from(*b) << 56), 9));
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Adds a V2-encoded histogram into `into` by walking its encoded counts:
/// no histogram is built for it, which makes merging many small rollup rows
/// cheap. Counts land exactly when both share digits and lowest value (ours
/// always do); otherwise each value is re-recorded at its bucket's low end.
/// Returns the number of values added.
pub fn merge_encoded(into: &mut Histogram<u64>, bytes: &[u8]) -> Result<u64, HdrError> {
    let bad = |why: &str| HdrError::Decode(why.to_owned());
    let header = Header::parse(bytes)?;
    // The index -> value mapping of HdrHistogram, for the encoder's layout.
    let unit = 63 - header.low.leading_zeros();
    let largest = 2 * 10u64.pow(u32::from(header.digits));
    let sub_count_magnitude = 64 - (largest - 1).leading_zeros();
    let half_magnitude = sub_count_magnitude.saturating_sub(1);
    let half_count = 1u64 << half_magnitude;
    let value_for = |index: u64| -> Option<u64> {
        let bucket = (index >> half_magnitude).checked_sub(1);
        let (bucket, sub) = match bucket {
            Some(b) => (b, (index & (half_count - 1)) + half_count),
            None => (0, index & (half_count - 1)),
        };
        let shift = u32::try_from(bucket).ok()?.checked_add(unit)?;
        if shift >= 64 || sub.leading_zeros() < shift {
            return None;
        }
        Some(sub << shift)
    };
    let payload = &bytes[header.payload];
    let (mut at, mut index, mut added) = (0usize, 0u64, 0u64);
    while at < payload.len() {
        let (zz, n) = varint(&payload[at..]).ok_or_else(|| bad("truncated count"))?;
        at += n;
        let v = ((zz >> 1) as i64) ^ -((zz & 1) as i64);
        if v < 0 {
            index = index
                .checked_add(v.unsigned_abs())
                .ok_or_else(|| bad("index overflow"))?;
            continue;
        }
        if v > 0 {
            let value = value_for(index)
                .filter(|v| *v <= MAX_DECODED_VALUE)
                .ok_or_else(|| bad("value out of range"))?;
            into.record_n(value, v as u64)
                .map_err(|e| HdrError::Decode(format!("{e:?}")))?;
            added += v as u64;
        }
        index += 1;
    }
    Ok(added)
}

/// Reads a V2-encoded histogram. The bytes may come from any SQL value, so
/// they are checked and walked here rather than trusted to a decoder that
/// sizes itself from the header.
pub fn decode(bytes: &[u8]) -> Result<Histogram<u64>, HdrError> {
    let header = Header::parse(bytes)?;
    let mut h = new_histogram(header.digits)?;
    merge_encoded(&mut h, bytes)?;
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
        let values = |h: &Histogram<u64>| -> Vec<(u64, u64)> {
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect()
        };
        assert_eq!(values(&a2), values(&a));
        let mut ab = a2;
        merge(&mut ab, &decode(&encode(&b)).unwrap()).unwrap();
        assert_eq!(ab.len(), 2000);
        let mut all = new_histogram(3).unwrap();
        for v in 1..=1000 {
            record_ms(&mut all, v as f64);
            record_ms(&mut all, (v * 37) as f64);
        }
        assert_eq!(
            values(&ab),
            values(&all),
            "merging equals recording everything in one"
        );
        let mut walked = new_histogram(3).unwrap();
        assert_eq!(merge_encoded(&mut walked, &encode(&a)).unwrap(), 1000);
        assert_eq!(merge_encoded(&mut walked, &encode(&b)).unwrap(), 1000);
        assert_eq!(
            values(&walked),
            values(&all),
            "walking the encodings adds the same"
        );
        // Values past the first bucket (2048 ms) and other digit settings too.
        for digits in [1, 2, 3, 4] {
            let mut h = new_histogram(digits).unwrap();
            for v in [0, 1, 7, 999, 2047, 2048, 4097, 65_000, 3_600_000] {
                record_ms(&mut h, v as f64);
            }
            assert_eq!(
                values(&decode(&encode(&h)).unwrap()),
                values(&h),
                "{digits} digits"
            );
        }
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

        // Corrupted encodings are errors or odd histograms, never a panic
        // or a runaway allocation.
        let good = encode(&h);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..5000 {
            let mut bytes = good.clone();
            for _ in 0..3 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let at = (seed as usize) % bytes.len();
                bytes[at] = (seed >> 32) as u8;
            }
            if let Ok(h) = decode(&bytes) {
                assert!(h.max() <= MAX_DECODED_VALUE * 2);
            }
        }
    }
}
