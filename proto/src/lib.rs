//! Generated gRPC code for replog.
//!
//! `Replication` is the internal service that only the master calls on a secondary's
//! `GRPC_PORT`; `Log` is the public API every node serves as gRPC and gRPC-Web.
//!
//! With the default `transport` feature this crate has servers and transport-backed clients
//! (native). Without it, only the messages and clients generic over any
//! `tonic::client::GrpcService` (e.g. gRPC-Web from a browser through
//! `tonic-web-wasm-client`), which compile for `wasm32-unknown-unknown`.

/// `replog.v1`: both services.
pub mod v1 {
    tonic::include_proto!("replog.v1");
}
