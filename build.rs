//! Compiles the project's own protobuf definitions in `proto/` with protox (pure
//! Rust), so building llmtrace needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = [
        "proto/llmtrace/v1/wal.proto",
        "proto/google/rpc/status.proto",
    ];
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(false)
        .compile_fds(descriptors)?;
    Ok(())
}
