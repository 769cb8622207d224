//! Transports for pre-encoded requests: OTLP/gRPC and OTLP/HTTP.

use bytes::{BufMut, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use super::LoadgenError;

pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// A gRPC codec that sends an already-encoded request body as is.
#[derive(Default, Clone, Copy)]
pub struct RawCodec;

pub struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

pub struct ResponseDecoder;

impl Decoder for ResponseDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, tonic::Status> {
        ExportTraceServiceResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("bad response: {e}")))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

/// What the server said about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted; `rejected` spans refused through partial success.
    Accepted { rejected: u64 },
    /// Refused as a whole (status code or transport error), with why.
    Failed { reason: String, retryable: bool },
}

/// One connection to the collector.
pub enum Sender {
    Grpc {
        client: tonic::client::Grpc<tonic::transport::Channel>,
        /// `authorization` metadata, when an API key is given.
        auth: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    },
    Http {
        client: reqwest::Client,
        url: String,
        content_type: &'static str,
        api_key: Option<String>,
    },
}

impl Sender {
    pub async fn grpc(endpoint: &str, api_key: Option<&str>) -> Result<Self, LoadgenError> {
        let auth = api_key
            .map(|k| format!("Bearer {k}").parse())
            .transpose()
            .map_err(|_| LoadgenError::Options("--api-key must be printable ASCII".into()))?;
        let channel = tonic::transport::Channel::from_shared(endpoint.to_owned())
            .map_err(|e| LoadgenError::Endpoint(format!("{endpoint}: {e}")))?
            .connect()
            .await
            .map_err(|e| LoadgenError::Connect(format!("{endpoint}: {e}")))?;
        Ok(Sender::Grpc {
            client: tonic::client::Grpc::new(channel),
            auth,
        })
    }

    pub fn http(endpoint: &str, json: bool, api_key: Option<&str>) -> Result<Self, LoadgenError> {
        let url: reqwest::Url = endpoint
            .parse()
            .map_err(|e| LoadgenError::Endpoint(format!("{endpoint}: {e}")))?;
        let url = if url.path() == "/" || url.path().is_empty() {
            url.join("/v1/traces").expect("static path joins")
        } else {
            url
        };
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()
            .map_err(|e| LoadgenError::Connect(e.to_string()))?;
        Ok(Sender::Http {
            client,
            url: url.to_string(),
            content_type: if json {
                "application/json"
            } else {
                "application/x-protobuf"
            },
            api_key: api_key.map(str::to_owned),
        })
    }

    pub async fn send(&mut self, body: Vec<u8>) -> Outcome {
        match self {
            Sender::Grpc { client, auth } => {
                if let Err(e) = client.ready().await {
                    return Outcome::Failed {
                        reason: format!("connection: {e}"),
                        retryable: true,
                    };
                }
                let mut request = tonic::Request::new(Bytes::from(body));
                if let Some(auth) = auth {
                    request.metadata_mut().insert("authorization", auth.clone());
                }
                match client
                    .unary(request, EXPORT_PATH.parse().expect("valid path"), RawCodec)
                    .await
                {
                    Ok(resp) => Outcome::Accepted {
                        rejected: rejected(resp.into_inner()),
                    },
                    Err(status) => Outcome::Failed {
                        retryable: matches!(
                            status.code(),
                            tonic::Code::Unavailable | tonic::Code::ResourceExhausted
                        ),
                        reason: format!("grpc {:?}", status.code()),
                    },
                }
            }
            Sender::Http {
                client,
                url,
                content_type,
                api_key,
            } => {
                let mut request = client
                    .post(url.as_str())
                    .header("content-type", *content_type);
                if let Some(key) = api_key {
                    request = request.bearer_auth(key);
                }
                let resp = request.body(body).send().await;
                let resp = match resp {
                    Ok(r) => r,
                    Err(e) => {
                        return Outcome::Failed {
                            reason: format!("connection: {e}"),
                            retryable: true,
                        }
                    }
                };
                let status = resp.status();
                let json = *content_type == "application/json";
                match (status.as_u16(), resp.bytes().await) {
                    (200, Ok(body)) => Outcome::Accepted {
                        rejected: if json {
                            rejected_json(&body)
                        } else {
                            ExportTraceServiceResponse::decode(body).map_or(0, rejected)
                        },
                    },
                    (code, _) => Outcome::Failed {
                        reason: format!("http {code}"),
                        retryable: matches!(code, 429 | 502 | 503 | 504),
                    },
                }
            }
        }
    }
}

fn rejected(resp: ExportTraceServiceResponse) -> u64 {
    resp.partial_success
        .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0))
}

fn rejected_json(body: &[u8]) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    match &v["partialSuccess"]["rejectedSpans"] {
        serde_json::Value::String(s) => s.parse().unwrap_or(0),
        serde_json::Value::Number(n) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}
