//! Compiles the .proto files with `protox` (pure Rust), so no `protoc` install is needed.
//!
//! With the `transport` feature (default) it generates servers and clients with tonic's
//! transport (`connect`, `Channel`), for the native binaries. Without it (the wasm browser
//! client) it generates only clients that are generic over the transport, so nothing needs
//! tonic's transport, which does not build for wasm32-unknown-unknown.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/replog/v1/replication.proto",
        "proto/replog/v1/log.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let transport = std::env::var_os("CARGO_FEATURE_TRANSPORT").is_some();
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        // Payloads are `Bytes`, so the master hands one buffer to every secondary's stream
        // without copying it per secondary.
        .bytes(".")
        .build_server(transport)
        .build_transport(transport)
        .compile_fds(fds)?;
    Ok(())
}
