//! Request bodies: content types, content encodings, and the size limits that
//! keep a gzip bomb from becoming an out-of-memory.

use std::io::Read;

use flate2::read::GzDecoder;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Protobuf,
    Json,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("unsupported content type {0:?}; use application/x-protobuf or application/json")]
    UnsupportedType(String),
    #[error("unsupported content encoding {0:?}; use gzip or none")]
    UnsupportedEncoding(String),
    #[error("request body exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("decompressed request body exceeds {limit} bytes")]
    DecompressedTooLarge { limit: usize },
    #[error("invalid gzip body: {0}")]
    BadGzip(String),
}

pub fn format(content_type: Option<&str>) -> Result<Format, BodyError> {
    let raw = content_type.unwrap_or("");
    let essence = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/x-protobuf" | "application/protobuf" => Ok(Format::Protobuf),
        "application/json" => Ok(Format::Json),
        _ => Err(BodyError::UnsupportedType(raw.to_owned())),
    }
}

/// A content encoding this receiver undoes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
}

/// The encoding a `Content-Encoding` (or `grpc-encoding`) header names.
pub fn encoding(header: Option<&str>) -> Result<Encoding, BodyError> {
    let name = header.unwrap_or("").trim().to_ascii_lowercase();
    match name.as_str() {
        "" | "identity" => Ok(Encoding::Identity),
        "gzip" | "x-gzip" => Ok(Encoding::Gzip),
        _ => Err(BodyError::UnsupportedEncoding(name)),
    }
}

/// The first buffer a body is inflated into, and the least it grows by.
const INFLATE_STEP: usize = 64 * 1024;

/// Undoes `encoding`, refusing output larger than `limit`.
///
/// A gzip body is inflated step by step, and `charge(inflated, capacity)` is
/// asked before each step's buffer is allocated: with the bytes inflated so
/// far and the capacity about to be held. Its error stops the inflation
/// there, so concurrent bombs hold what the caller's budget allows, not what
/// they would inflate to.
pub fn decode<E: From<BodyError>>(
    encoding: Encoding,
    body: bytes::Bytes,
    limit: usize,
    mut charge: impl FnMut(usize, usize) -> Result<(), E>,
) -> Result<bytes::Bytes, E> {
    if encoding == Encoding::Identity {
        return Ok(body);
    }
    // One byte past the limit tells "exactly the limit" from "more".
    let cap = limit.saturating_add(1);
    let mut gzip = GzDecoder::new(&body[..]);
    // `out[..filled]` is inflated; the rest is zeroed room for the next read.
    let mut out: Vec<u8> = Vec::new();
    let mut filled = 0;
    loop {
        if filled == out.len() {
            // Doubling keeps the copies of growing linear in the output.
            let want = (out.len() * 2).max(INFLATE_STEP).min(cap);
            charge(filled, want)?;
            out.reserve_exact(want - out.len());
            out.resize(want, 0);
        }
        let n = match gzip.read(&mut out[filled..]) {
            Ok(n) => n,
            Err(e) => return Err(BodyError::BadGzip(e.to_string()).into()),
        };
        filled += n;
        if filled > limit {
            return Err(BodyError::DecompressedTooLarge { limit }.into());
        }
        if n == 0 {
            out.truncate(filled);
            return Ok(out.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{write::GzEncoder, Compression};
    use std::io::Write;

    fn gzip(data: &[u8]) -> bytes::Bytes {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap().into()
    }

    #[test]
    fn content_types_with_parameters() {
        assert_eq!(
            format(Some("application/json; charset=utf-8")),
            Ok(Format::Json)
        );
        assert_eq!(format(Some("Application/X-Protobuf")), Ok(Format::Protobuf));
        assert!(matches!(
            format(Some("text/plain")),
            Err(BodyError::UnsupportedType(_))
        ));
        assert!(matches!(format(None), Err(BodyError::UnsupportedType(_))));
    }

    fn free(_: usize, _: usize) -> Result<(), BodyError> {
        Ok(())
    }

    #[test]
    fn gzip_round_trip_and_bomb() {
        let data = vec![b'a'; 10_000];
        assert_eq!(
            decode(Encoding::Gzip, gzip(&data), 10_000, free)
                .unwrap()
                .len(),
            10_000
        );
        assert_eq!(
            decode(Encoding::Gzip, gzip(&data), 9_999, free),
            Err(BodyError::DecompressedTooLarge { limit: 9_999 })
        );
        assert!(matches!(
            decode(
                Encoding::Gzip,
                bytes::Bytes::from_static(b"not gzip"),
                100,
                free
            ),
            Err(BodyError::BadGzip(_))
        ));
        assert!(matches!(
            encoding(Some("br")),
            Err(BodyError::UnsupportedEncoding(_))
        ));
        assert_eq!(encoding(Some(" X-Gzip ")), Ok(Encoding::Gzip));
        assert_eq!(encoding(None), Ok(Encoding::Identity));
    }

    /// A bomb is charged as it inflates, each buffer before it is allocated,
    /// and stops where the charge is refused, long before its full size.
    #[test]
    fn inflation_is_charged_before_each_buffer_and_stops_when_refused() {
        let bomb = gzip(&vec![0u8; 64 << 20]);
        let mut asked = Vec::new();
        let refused = decode(Encoding::Gzip, bomb, 64 << 20, |inflated, capacity| {
            asked.push((inflated, capacity));
            if capacity > 1 << 20 {
                return Err(BodyError::TooLarge { limit: 1 << 20 });
            }
            Ok(())
        });
        assert_eq!(refused, Err(BodyError::TooLarge { limit: 1 << 20 }));
        let last = *asked.last().unwrap();
        assert_eq!(last, (1 << 20, 2 << 20), "{asked:?}");
        // Each capacity asked for covers what was inflated before it.
        assert!(asked.windows(2).all(|w| w[1].0 == w[0].1), "{asked:?}");
    }
}
