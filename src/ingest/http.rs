//! OTLP/HTTP receiver: `POST /v1/traces` (and the Langfuse and generic `/otel`
//! alias paths), protobuf or JSON bodies, optionally gzip-compressed.
//!
//! Responses follow the OTLP/HTTP spec: 200 with an ExportTraceServiceResponse
//! (partial success when spans were rejected), or a google.rpc.Status body with
//! 400, 413, 415 or 500, encoded like the request (protobuf or JSON).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

use super::body::{self, BodyError, Encoding, Format};
use super::listen::BodyReadError;
use super::{Admitted, ExportOutcome, Pipeline};
use crate::auth::{AuthError, Keys, Scope};
use crate::metrics::Rejection;

/// Every path that accepts OTLP/HTTP traces.
pub const TRACE_PATHS: &[&str] = &[
    "/v1/traces",
    "/api/public/otel/v1/traces",
    "/otel/v1/traces",
];

/// gRPC status codes carried in the error body.
const INVALID_ARGUMENT: i32 = 3;
const DEADLINE_EXCEEDED: i32 = 4;
const RESOURCE_EXHAUSTED: i32 = 8;
const INTERNAL: i32 = 13;
const UNAVAILABLE: i32 = 14;
const PERMISSION_DENIED: i32 = 7;
const UNAUTHENTICATED: i32 = 16;

#[derive(Clone)]
struct HttpState {
    pipeline: Arc<Pipeline>,
    keys: Arc<Keys>,
    max_request_bytes: usize,
    max_decompressed_bytes: usize,
}

pub fn router(
    pipeline: Arc<Pipeline>,
    keys: Arc<Keys>,
    max_request_bytes: usize,
    max_decompressed_bytes: usize,
) -> Router {
    let state = HttpState {
        pipeline,
        keys,
        max_request_bytes,
        max_decompressed_bytes,
    };
    TRACE_PATHS
        .iter()
        .fold(Router::new(), |r, path| r.route(path, post(export)))
        .with_state(state)
}

/// An error answer: HTTP status plus google.rpc.Status body.
struct Failure {
    http: StatusCode,
    grpc_code: i32,
    message: String,
    /// Set when the client should retry: a Retry-After header and a
    /// RetryInfo detail in the body.
    retry_after: Option<std::time::Duration>,
}

impl Failure {
    fn bad_request(message: impl Into<String>) -> Self {
        Failure {
            http: StatusCode::BAD_REQUEST,
            grpc_code: INVALID_ARGUMENT,
            message: message.into(),
            retry_after: None,
        }
    }

    fn reason(&self) -> Rejection {
        match self.http {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Rejection::Unsupported,
            StatusCode::PAYLOAD_TOO_LARGE => Rejection::TooLarge,
            StatusCode::SERVICE_UNAVAILABLE => Rejection::Overloaded,
            s if s.is_server_error() => Rejection::Internal,
            _ => Rejection::Malformed,
        }
    }

    fn respond(self, format: Format) -> Response {
        use crate::ingest::grpc::{retry_status, rpc_status};
        let body = match (format, self.retry_after) {
            (Format::Protobuf, None) => rpc_status(self.grpc_code, &self.message).encode_to_vec(),
            (Format::Protobuf, Some(delay)) => {
                retry_status(self.grpc_code, &self.message, delay).encode_to_vec()
            }
            (Format::Json, None) => {
                serde_json::json!({"code": self.grpc_code, "message": self.message})
                    .to_string()
                    .into_bytes()
            }
            // The JSON mapping of google.rpc.Status with a RetryInfo detail.
            (Format::Json, Some(delay)) => serde_json::json!({
                "code": self.grpc_code,
                "message": self.message,
                "details": [{
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": format!("{}s", delay.as_secs_f64()),
                }],
            })
            .to_string()
            .into_bytes(),
        };
        let mut response = (
            self.http,
            [(header::CONTENT_TYPE, content_type(format))],
            body,
        )
            .into_response();
        if let Some(delay) = self.retry_after {
            // Whole seconds, at least one: the header has no finer unit.
            let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

impl From<BodyError> for Failure {
    fn from(e: BodyError) -> Self {
        let http = match e {
            BodyError::UnsupportedType(_) | BodyError::UnsupportedEncoding(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            BodyError::TooLarge { .. } | BodyError::DecompressedTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            BodyError::BadGzip(_) => StatusCode::BAD_REQUEST,
        };
        let grpc_code = if http == StatusCode::PAYLOAD_TOO_LARGE {
            RESOURCE_EXHAUSTED
        } else {
            INVALID_ARGUMENT
        };
        Failure {
            http,
            grpc_code,
            message: e.to_string(),
            retry_after: None,
        }
    }
}

fn content_type(format: Format) -> HeaderValue {
    HeaderValue::from_static(match format {
        Format::Protobuf => "application/x-protobuf",
        Format::Json => "application/json",
    })
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn export(State(state): State<HttpState>, headers: HeaderMap, body: Body) -> Response {
    let format = match body::format(header_str(&headers, header::CONTENT_TYPE)) {
        Ok(f) => f,
        // Unknown content type: answer in JSON, the form a person can read.
        Err(e) => {
            state
                .pipeline
                .metrics()
                .request_rejected(Rejection::Unsupported);
            return Failure::from(e).respond(Format::Json);
        }
    };
    let tenant = match state
        .keys
        .authenticate(&headers)
        .and_then(|p| p.require(Scope::Ingest).map(|p| p.tenant.clone()))
    {
        Ok(t) => t,
        Err(e) => {
            state
                .pipeline
                .metrics()
                .request_rejected(Rejection::Unauthorized);
            let (http, grpc_code) = match e {
                AuthError::Unauthenticated => (StatusCode::UNAUTHORIZED, UNAUTHENTICATED),
                AuthError::Forbidden { .. } => (StatusCode::FORBIDDEN, PERMISSION_DENIED),
            };
            let mut response = Failure {
                http,
                grpc_code,
                message: e.to_string(),
                retry_after: None,
            }
            .respond(format);
            if http == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"llmtrace\""),
                );
            }
            return response;
        }
    };
    match receive(&state, &headers, body, format, tenant).await {
        Ok(outcome) => success(outcome, format),
        Err(failure) => {
            state.pipeline.metrics().request_rejected(failure.reason());
            failure.respond(format)
        }
    }
}

async fn receive(
    state: &HttpState,
    headers: &HeaderMap,
    body: Body,
    format: Format,
    tenant: Arc<str>,
) -> Result<ExportOutcome, Failure> {
    let limit = state.max_request_bytes;
    let pipeline = state.pipeline.clone();
    // Refusals before the body is read still read it to the end (up to the
    // limit, within server.body_read_timeout) and drop it: a client still
    // sending when the answer comes sees a reset, not the answer.
    let encoding = match body::encoding(header_str(headers, header::CONTENT_ENCODING)) {
        Ok(encoding) => encoding,
        Err(e) => {
            drain(body, limit).await;
            return Err(e.into());
        }
    };
    // Nothing is charged for what a client declares (Content-Length), only
    // for what it has sent: one that declares much and sends nothing holds
    // nothing.
    let mut admitted = match pipeline.check_admission().and_then(|()| pipeline.admit(0)) {
        Ok(admitted) => admitted,
        Err(refused) => {
            drain(body, limit).await;
            return Err(refused.into());
        }
    };
    let declared =
        header_str(headers, header::CONTENT_LENGTH).and_then(|v| v.parse::<usize>().ok());
    let raw = read_body(body, limit, declared, encoding, &mut admitted).await?;
    let max_decompressed = state.max_decompressed_bytes;
    // Decoding and normalising is CPU work: a large body goes to the blocking
    // pool so it cannot stall the reactor.
    let small = raw.len() <= super::INLINE_BYTES;
    let request = super::run_cpu(small, move || {
        let wire = raw.len();
        // A gzip body is charged as it inflates, before each buffer, for what
        // decoding what is inflated so far will take: a bomb stops with 413
        // as soon as it could never fit, or 503 when others hold the budget,
        // and never holds more than it was charged.
        let bytes = body::decode(encoding, raw, max_decompressed, |inflated, capacity| {
            let held = wire.saturating_add(capacity);
            admitted
                .grow_to(super::footprint(wire, Some(inflated)).max(held))
                .map_err(Failure::from)
        })?;
        let inflated = (encoding == Encoding::Gzip).then_some(bytes.len());
        admitted.grow_to(super::footprint(wire, inflated))?;
        let request = match format {
            Format::Protobuf => ExportTraceServiceRequest::decode(bytes)
                .map_err(|e| Failure::bad_request(format!("invalid OTLP protobuf: {e}")))?,
            Format::Json => super::otlp_json::decode(&bytes)
                .map_err(|e| Failure::bad_request(format!("invalid OTLP/JSON: {e}")))?,
        };
        Ok::<_, Failure>((request, admitted))
    })
    .await
    .unwrap_or_else(|e| {
        Err(Failure {
            http: StatusCode::INTERNAL_SERVER_ERROR,
            grpc_code: INTERNAL,
            message: format!("internal error: {e}"),
            retry_after: None,
        })
    });
    let (request, admitted) = request?;
    let outcome = pipeline.export(&tenant, request, small).await?;
    drop(admitted);
    Ok(outcome)
}

/// Reads a body of at most `limit` bytes, charging `admitted` for the
/// buffer that holds it as each chunk arrives (its `declared` length only
/// caps how far the buffer grows ahead). An uncompressed body is refused for
/// good (413) as soon as decoding what has arrived could never fit the budget.
async fn read_body(
    mut body: Body,
    limit: usize,
    declared: Option<usize>,
    encoding: Encoding,
    admitted: &mut Admitted,
) -> Result<bytes::Bytes, Failure> {
    use http_body_util::BodyExt;
    // One chunk is kept as it came (most bodies); more are copied into one
    // buffer, grown by doubling.
    let mut single: Option<bytes::Bytes> = None;
    let mut joined: Vec<u8> = Vec::new();
    let mut received = 0usize;
    while let Some(frame) = body.frame().await {
        let data = match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => data,
                // Trailers: nothing to keep.
                Err(_) => continue,
            },
            Err(e) => return Err(read_failure(&e)),
        };
        received = received.saturating_add(data.len());
        if received > limit {
            return Err(BodyError::TooLarge { limit }.into());
        }
        let first = single.is_none() && joined.is_empty();
        let target = if first || joined.capacity() >= received {
            joined.capacity()
        } else {
            let ahead = declared.unwrap_or(limit).clamp(received, limit);
            received.max(joined.capacity().saturating_mul(2)).min(ahead)
        };
        // The buffer at its next size (the chunk in hand is the
        // connection's read buffer, bounded by hyper).
        let held = target.max(received);
        let charged = match encoding {
            Encoding::Identity => admitted.fits(super::footprint(received, None)),
            Encoding::Gzip => Ok(()),
        }
        .and_then(|()| admitted.grow_to(held));
        if let Err(refused) = charged {
            if matches!(refused, super::IngestError::Overloaded { .. }) {
                drain(body, limit - received).await;
            }
            return Err(refused.into());
        }
        if first {
            single = Some(data);
            continue;
        }
        joined.reserve_exact(target - joined.len());
        if let Some(first) = single.take() {
            joined.extend_from_slice(&first);
        }
        joined.extend_from_slice(&data);
    }
    Ok(single.unwrap_or_else(|| joined.into()))
}

/// The answer to a body that could not be read: too slow (408), or cut off.
fn read_failure(e: &axum::Error) -> Failure {
    if BodyReadError::is_timeout(e) {
        return Failure {
            http: StatusCode::REQUEST_TIMEOUT,
            grpc_code: DEADLINE_EXCEEDED,
            message: e.to_string(),
            retry_after: None,
        };
    }
    Failure::bad_request(format!("could not read request body: {e}"))
}

/// Reads and discards a body, up to `limit` bytes.
async fn drain(body: Body, limit: usize) {
    use http_body_util::BodyExt;
    let mut body = http_body_util::Limited::new(body, limit);
    while let Some(Ok(_frame)) = body.frame().await {}
}

impl From<super::IngestError> for Failure {
    fn from(e: super::IngestError) -> Self {
        match e {
            super::IngestError::Overloaded { retry_after, .. }
            | super::IngestError::Unavailable { retry_after, .. } => Failure {
                http: StatusCode::SERVICE_UNAVAILABLE,
                grpc_code: UNAVAILABLE,
                message: e.to_string(),
                retry_after: Some(retry_after),
            },
            super::IngestError::TooLarge { .. } => Failure {
                http: StatusCode::PAYLOAD_TOO_LARGE,
                grpc_code: RESOURCE_EXHAUSTED,
                message: e.to_string(),
                retry_after: None,
            },
            e => {
                tracing::error!(error = %e, "could not accept spans");
                Failure {
                    http: StatusCode::INTERNAL_SERVER_ERROR,
                    grpc_code: INTERNAL,
                    message: e.to_string(),
                    retry_after: None,
                }
            }
        }
    }
}

fn success(outcome: ExportOutcome, format: Format) -> Response {
    let partial = (outcome.rejected > 0).then(|| ExportTracePartialSuccess {
        rejected_spans: outcome.rejected as i64,
        error_message: outcome.message.clone(),
    });
    let body = match format {
        Format::Protobuf => ExportTraceServiceResponse {
            partial_success: partial,
        }
        .encode_to_vec(),
        // proto3 JSON mapping: int64 as a string, absent partialSuccess on full success.
        Format::Json => match partial {
            Some(p) => serde_json::json!({"partialSuccess": {
                "rejectedSpans": p.rejected_spans.to_string(),
                "errorMessage": p.error_message,
            }}),
            None => serde_json::json!({}),
        }
        .to_string()
        .into_bytes(),
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, content_type(format))],
        body,
    )
        .into_response()
}
