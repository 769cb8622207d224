//! OTLP/gRPC receiver: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.
//!
//! Hand-written down to the gRPC framing rather than the generated server or
//! tonic's codec: tonic answers an undecodable message with INTERNAL (OTLP
//! clients must hear INVALID_ARGUMENT: permanent, do not retry), and it
//! buffers a whole message, and inflates a whole compressed one, before a
//! decoder sees a byte of it, so nothing could be charged until then. Here a
//! message is charged to the in-flight budget as its bytes arrive and as it
//! inflates (see [`super::admission`]), and one that could never fit is
//! refused from its length prefix, before it is received.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::{Code, Status};

use super::body::{self, BodyError, Encoding};
use super::listen::BodyReadError;
use super::{Admitted, IngestError, Pipeline};
use crate::auth::{AuthError, Keys, Scope};
use crate::metrics::Rejection;

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The compressed flag and length before every gRPC message.
const PREFIX: usize = 5;

/// A google.rpc.Status message (also the OTLP/HTTP error body).
pub fn rpc_status(code: i32, message: &str) -> RpcStatus {
    RpcStatus {
        code,
        message: message.to_owned(),
        details: Vec::new(),
    }
}

/// A google.rpc.Status asking the client to retry after `delay`: OTLP
/// clients retry RESOURCE_EXHAUSTED / UNAVAILABLE (and HTTP 429 / 503)
/// after the RetryInfo delay.
pub fn retry_status(code: i32, message: &str, delay: std::time::Duration) -> RpcStatus {
    let info = generated::RetryInfo {
        retry_delay: Some(generated::Duration {
            seconds: delay.as_secs() as i64,
            nanos: delay.subsec_nanos() as i32,
        }),
    };
    RpcStatus {
        code,
        message: message.to_owned(),
        details: vec![generated::Any {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".to_owned(),
            value: prost::Message::encode_to_vec(&info),
        }],
    }
}

pub use generated::{RetryInfo, Status as RpcStatus};

mod generated {
    include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
}

/// The TraceService, serving Export through [`Pipeline`].
#[derive(Clone)]
pub struct TraceService {
    pipeline: Arc<Pipeline>,
    keys: Arc<Keys>,
    max_decoding_message_size: usize,
}

impl TraceService {
    pub fn new(pipeline: Arc<Pipeline>, keys: Arc<Keys>, max_decoding_message_size: usize) -> Self {
        Self {
            pipeline,
            keys,
            max_decoding_message_size,
        }
    }
}

impl<B> Service<http::Request<B>> for TraceService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != EXPORT_PATH {
            return Box::pin(async {
                Ok(Status::unimplemented("only TraceService/Export is served").into_http())
            });
        }
        let pipeline = self.pipeline.clone();
        // The key travels as request metadata, the same headers HTTP uses.
        let tenant = match self
            .keys
            .authenticate(req.headers())
            .and_then(|p| p.require(Scope::Ingest).map(|p| p.tenant.clone()))
        {
            Ok(t) => t,
            Err(e) => {
                pipeline.metrics().request_rejected(Rejection::Unauthorized);
                let status = match e {
                    AuthError::Unauthenticated => Status::unauthenticated(e.to_string()),
                    AuthError::Forbidden { .. } => Status::permission_denied(e.to_string()),
                };
                return Box::pin(async move { Ok(status.into_http()) });
            }
        };
        let max_message = self.max_decoding_message_size;
        Box::pin(async move {
            let answer = export(&pipeline, &tenant, req, max_message).await;
            Ok(match answer {
                Ok(response) => respond(&response),
                Err(status) => {
                    if let Some(reason) = rejection(status.code()) {
                        pipeline.metrics().request_rejected(reason);
                    }
                    let mut response = status.into_http();
                    response.headers_mut().insert(
                        "grpc-accept-encoding",
                        http::HeaderValue::from_static("gzip"),
                    );
                    response
                }
            })
        })
    }
}

/// How a refusal is counted in /metrics.
fn rejection(code: Code) -> Option<Rejection> {
    match code {
        Code::Ok => None,
        Code::ResourceExhausted | Code::OutOfRange => Some(Rejection::TooLarge),
        Code::Unavailable => Some(Rejection::Overloaded),
        Code::Unimplemented => Some(Rejection::Unsupported),
        Code::InvalidArgument | Code::DeadlineExceeded => Some(Rejection::Malformed),
        _ => Some(Rejection::Internal),
    }
}

/// A unary gRPC answer: the message, then `grpc-status: 0` as trailers.
fn respond(message: &ExportTraceServiceResponse) -> http::Response<tonic::body::Body> {
    let encoded = prost::Message::encode_to_vec(message);
    let mut framed = Vec::with_capacity(PREFIX + encoded.len());
    framed.push(0);
    // An answer is a few bytes: its length always fits the prefix.
    framed.extend_from_slice(
        &u32::try_from(encoded.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    framed.extend_from_slice(&encoded);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let mut response = http::Response::new(tonic::body::Body::new(Unary {
        message: Some(framed.into()),
        trailers: Some(trailers),
    }));
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert(
        "grpc-accept-encoding",
        http::HeaderValue::from_static("gzip"),
    );
    response
}

/// The body of a unary answer.
struct Unary {
    message: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl Body for Unary {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let frame = match self.message.take() {
            Some(message) => Some(http_body::Frame::data(message)),
            None => self.trailers.take().map(http_body::Frame::trailers),
        };
        std::task::Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.message.is_none() && self.trailers.is_none()
    }
}

/// The status a refused or failed export answers with.
fn export_status(e: IngestError) -> Status {
    match e {
        IngestError::Overloaded { retry_after, .. }
        | IngestError::Unavailable { retry_after, .. } => {
            let message = e.to_string();
            let details = retry_status(Code::Unavailable as i32, &message, retry_after);
            Status::with_details(
                Code::Unavailable,
                message,
                prost::Message::encode_to_vec(&details).into(),
            )
        }
        IngestError::TooLarge { .. } => Status::resource_exhausted(e.to_string()),
        e => {
            tracing::error!(error = %e, "could not accept spans");
            Status::internal(e.to_string())
        }
    }
}

fn body_status(e: BodyError) -> Status {
    match e {
        BodyError::TooLarge { .. } | BodyError::DecompressedTooLarge { .. } => {
            Status::resource_exhausted(e.to_string())
        }
        BodyError::UnsupportedEncoding(_) | BodyError::UnsupportedType(_) => {
            Status::unimplemented(e.to_string())
        }
        BodyError::BadGzip(_) => Status::invalid_argument(e.to_string()),
    }
}

/// Receives, decodes and stores one Export request.
async fn export<B>(
    pipeline: &Arc<Pipeline>,
    tenant: &Arc<str>,
    req: http::Request<B>,
    max_message: usize,
) -> Result<ExportTraceServiceResponse, Status>
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    let encoding = req
        .headers()
        .get("grpc-encoding")
        .map(|v| v.to_str().unwrap_or("?"));
    let encoding = body::encoding(encoding).map_err(body_status)?;
    // Refused before anything is received when nothing could be admitted.
    let mut admitted = pipeline
        .check_admission()
        .and_then(|()| pipeline.admit(0))
        .map_err(export_status)?;
    let (compressed, message) =
        receive(req.into_body(), max_message, encoding, &mut admitted).await?;
    let wire = message.len();
    let small = wire <= super::INLINE_BYTES;
    let decoded = super::run_cpu(small, move || {
        let inflate = if compressed {
            Encoding::Gzip
        } else {
            Encoding::Identity
        };
        // Charged as it inflates, as an HTTP body is.
        let bytes = body::decode(inflate, message, max_message, |inflated, capacity| {
            let held = wire.saturating_add(capacity);
            admitted
                .grow_to(super::footprint(wire, Some(inflated)).max(held))
                .map_err(Inflate::Refused)
        })
        .map_err(|e| match e {
            Inflate::Body(e) => body_status(e),
            Inflate::Refused(e) => export_status(e),
        })?;
        admitted
            .grow_to(super::footprint(wire, compressed.then_some(bytes.len())))
            .map_err(export_status)?;
        let request = <ExportTraceServiceRequest as prost::Message>::decode(bytes)
            .map_err(|e| Status::invalid_argument(format!("invalid OTLP protobuf: {e}")))?;
        Ok::<_, Status>((request, admitted))
    })
    .await
    .unwrap_or_else(|e| Err(Status::internal(format!("internal error: {e}"))));
    let (request, admitted) = decoded?;
    let outcome = pipeline.export(tenant, request, small).await;
    drop(admitted);
    let outcome = outcome.map_err(export_status)?;
    let partial_success = (outcome.rejected > 0).then_some(ExportTracePartialSuccess {
        rejected_spans: outcome.rejected as i64,
        error_message: outcome.message,
    });
    Ok(ExportTraceServiceResponse { partial_success })
}

/// Why inflating a message stopped.
enum Inflate {
    Body(BodyError),
    Refused(IngestError),
}

impl From<BodyError> for Inflate {
    fn from(e: BodyError) -> Self {
        Inflate::Body(e)
    }
}

/// Receives the one message of a unary request: its compressed flag and
/// bytes. Checked against the limits from its length prefix (too large:
/// refused before it is received); charged to `admitted` as its bytes
/// arrive, never for the length it declares.
async fn receive<B>(
    body: B,
    max_message: usize,
    encoding: Encoding,
    admitted: &mut Admitted,
) -> Result<(bool, Bytes), Status>
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    use http_body_util::BodyExt;
    let mut body = std::pin::pin!(body);
    let mut prefix: Vec<u8> = Vec::with_capacity(PREFIX);
    // Known once the prefix is: compressed, and the length.
    let mut declared: Option<(bool, usize)> = None;
    let mut message: Vec<u8> = Vec::new();
    loop {
        let frame = match body.frame().await {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                let e: StdError = e.into();
                if BodyReadError::is_timeout(&*e) {
                    return Err(Status::deadline_exceeded(e.to_string()));
                }
                return Err(Status::cancelled(format!("could not read request: {e}")));
            }
            None => break,
        };
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        // Without a copy for the Bytes every server here hands over.
        let mut data = data.copy_to_bytes(data.remaining());
        while !data.is_empty() {
            let Some((_, length)) = declared else {
                let take = (PREFIX - prefix.len()).min(data.len());
                prefix.extend_from_slice(&data[..take]);
                data.advance(take);
                if prefix.len() == PREFIX {
                    declared = Some(check_prefix(&prefix, max_message, encoding, admitted)?);
                }
                continue;
            };
            let take = (length - message.len()).min(data.len());
            if take == 0 {
                // Bytes past the message: a unary request has one.
                break;
            }
            let received = message.len() + take;
            if message.capacity() < received {
                // The buffer at its next size, charged before it is taken.
                let target = received
                    .max(message.capacity().saturating_mul(2))
                    .min(length);
                admitted.grow_to(target).map_err(export_status)?;
                message.reserve_exact(target - message.len());
            }
            message.extend_from_slice(&data[..take]);
            data.advance(take);
        }
        if let Some((_, length)) = declared {
            if message.len() == length {
                break;
            }
        }
    }
    match declared {
        Some((compressed, length)) if message.len() == length => Ok((compressed, message.into())),
        Some((_, length)) => Err(Status::invalid_argument(format!(
            "request ended after {} of its message's {length} bytes",
            message.len()
        ))),
        None => Err(Status::invalid_argument("request has no message")),
    }
}

/// The compressed flag and length of a message, refused when it could never
/// be accepted: longer than the limit, or (uncompressed) more than the whole
/// budget once decoded.
fn check_prefix(
    prefix: &[u8],
    max_message: usize,
    encoding: Encoding,
    admitted: &Admitted,
) -> Result<(bool, usize), Status> {
    let compressed = match prefix[0] {
        0 => false,
        1 if encoding == Encoding::Gzip => true,
        1 => {
            return Err(Status::invalid_argument(
                "message is compressed but the request names no grpc-encoding",
            ))
        }
        flag => {
            return Err(Status::invalid_argument(format!(
                "invalid compressed flag {flag} (0 or 1)"
            )))
        }
    };
    let length = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if length > max_message {
        return Err(Status::resource_exhausted(format!(
            "message of {length} bytes exceeds the limit of {max_message} bytes (ingest.max_decompressed_bytes)"
        )));
    }
    if !compressed {
        admitted
            .fits(super::footprint(length, None))
            .map_err(export_status)?;
    }
    Ok((compressed, length))
}
