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

/// Undoes `Content-Encoding`, refusing output larger than `limit`.
pub fn decode(
    encoding: Option<&str>,
    body: bytes::Bytes,
    limit: usize,
) -> Result<bytes::Bytes, BodyError> {
    let encoding = encoding.unwrap_or("").trim().to_ascii_lowercase();
    match encoding.as_str() {
        "" | "identity" => Ok(body),
        "gzip" | "x-gzip" => {
            let mut out = Vec::with_capacity((body.len() * 4).min(limit));
            GzDecoder::new(&body[..])
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| BodyError::BadGzip(e.to_string()))?;
            if out.len() > limit {
                return Err(BodyError::DecompressedTooLarge { limit });
            }
            Ok(out.into())
        }
        other => Err(BodyError::UnsupportedEncoding(other.to_owned())),
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

    #[test]
    fn gzip_round_trip_and_bomb() {
        let data = vec![b'a'; 10_000];
        assert_eq!(
            decode(Some("gzip"), gzip(&data), 10_000).unwrap().len(),
            10_000
        );
        assert_eq!(
            decode(Some("gzip"), gzip(&data), 9_999),
            Err(BodyError::DecompressedTooLarge { limit: 9_999 })
        );
        assert!(matches!(
            decode(Some("gzip"), bytes::Bytes::from_static(b"not gzip"), 100),
            Err(BodyError::BadGzip(_))
        ));
        assert!(matches!(
            decode(Some("br"), bytes::Bytes::new(), 100),
            Err(BodyError::UnsupportedEncoding(_))
        ));
    }
}
