//! OTLP/gRPC receiver: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.
//!
//! Hand-written rather than the generated server because the generated one
//! decodes with tonic's codec, which answers an undecodable message with
//! INTERNAL; OTLP clients must hear INVALID_ARGUMENT (permanent, do not retry).

use std::convert::Infallible;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder};
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::server::{NamedService, UnaryService};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

use super::{Admitted, IngestError, Pipeline};
use crate::auth::{AuthError, Keys, Scope};
use crate::metrics::Rejection;

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

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

impl NamedService for TraceService {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
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
        // Refused before the message is received when nothing could be
        // admitted: receiving it would take the memory the refusal protects.
        if let Err(e) = pipeline.check_admission() {
            let status = export_status(e);
            return Box::pin(async move {
                pipeline.metrics().request_rejected(Rejection::Overloaded);
                Ok(status.into_http())
            });
        }
        let export = Export(pipeline.clone(), tenant);
        let codec = OtlpCodec(pipeline.clone());
        let mut grpc = tonic::server::Grpc::new(codec)
            .accept_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(self.max_decoding_message_size);
        Box::pin(async move {
            let response = grpc.unary(export, req).await;
            // Failures before the pipeline (decoding, limits) only show in
            // the status tonic answered with.
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map(Code::from_i32);
            let reason = match code {
                None | Some(Code::Ok) => None,
                Some(Code::ResourceExhausted | Code::OutOfRange) => Some(Rejection::TooLarge),
                Some(Code::Unavailable) => Some(Rejection::Overloaded),
                Some(Code::Unimplemented) => Some(Rejection::Unsupported),
                Some(Code::InvalidArgument) => Some(Rejection::Malformed),
                Some(_) => Some(Rejection::Internal),
            };
            if let Some(reason) = reason {
                pipeline.metrics().request_rejected(reason);
            }
            Ok(response)
        })
    }
}

struct Export(Arc<Pipeline>, Arc<str>);

/// A decoded request and the memory it was admitted to hold.
struct AdmittedRequest {
    request: ExportTraceServiceRequest,
    admitted: Admitted,
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
        e => {
            tracing::error!(error = %e, "could not accept spans");
            Status::internal(e.to_string())
        }
    }
}

impl UnaryService<AdmittedRequest> for Export {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<tonic::Response<Self::Response>, Status>;

    fn call(&mut self, request: tonic::Request<AdmittedRequest>) -> Self::Future {
        let pipeline = self.0.clone();
        let tenant = self.1.clone();
        Box::pin(async move {
            let AdmittedRequest { request, admitted } = request.into_inner();
            let small = super::span_count(&request) <= super::INLINE_SPANS;
            let outcome = pipeline.export(&tenant, request, small).await;
            drop(admitted);
            let outcome = outcome.map_err(export_status)?;
            let partial_success = (outcome.rejected > 0).then_some(ExportTracePartialSuccess {
                rejected_spans: outcome.rejected as i64,
                error_message: outcome.message,
            });
            Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success,
            }))
        })
    }
}

/// Prost codec whose decode failures are INVALID_ARGUMENT, and which admits
/// each request by its size before decoding it (see [`super::admission`]):
/// here is where a gRPC request's size is first known.
struct OtlpCodec(Arc<Pipeline>);

impl Codec for OtlpCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = AdmittedRequest;
    type Encoder = ProstEncoder<ExportTraceServiceResponse>;
    type Decoder = AdmittingDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<ExportTraceServiceResponse, ExportTraceServiceRequest>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        AdmittingDecoder {
            prost: ProstCodec::<ExportTraceServiceResponse, ExportTraceServiceRequest>::default()
                .decoder(),
            pipeline: self.0.clone(),
        }
    }
}

struct AdmittingDecoder {
    prost: ProstDecoder<ExportTraceServiceRequest>,
    pipeline: Arc<Pipeline>,
}

impl Decoder for AdmittingDecoder {
    type Item = AdmittedRequest;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        use bytes::Buf;
        // The message as received (already decompressed by tonic), plus
        // what decoding and normalising it will take.
        let wire = buf.remaining();
        let admitted = self
            .pipeline
            .admit(wire.saturating_mul(1 + super::DECODED_PER_WIRE_BYTE))
            .map_err(export_status)?;
        let request = self.prost.decode(buf).map_err(|s| match s.code() {
            Code::Internal => {
                Status::invalid_argument(format!("invalid OTLP protobuf: {}", s.message()))
            }
            _ => s,
        })?;
        Ok(request.map(|request| AdmittedRequest { request, admitted }))
    }
}
