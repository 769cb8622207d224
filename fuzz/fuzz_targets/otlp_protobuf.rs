//! OTLP/protobuf bodies (HTTP and gRPC): decode, then normalise whatever
//! decodes. Protobuf decoding is prost's; the normaliser is ours, and this is
//! the quickest way to reach it with arbitrary attribute trees.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = ExportTraceServiceRequest::decode(data) {
        common::normalise_checked(request);
    }
});
