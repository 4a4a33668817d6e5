//! Compiles the .proto files with `protox` (pure Rust), so no `protoc` install is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/replog/v1/replication.proto",
        "proto/replog/v1/log.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        // Payloads are `Bytes`, so the master hands one buffer to every secondary's stream
        // without copying it per secondary.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
