//! Generated gRPC code for replog.
//!
//! `Replication` is the internal service that only the master calls on a secondary's
//! `GRPC_PORT`; `Log` is the public API every node serves as gRPC and gRPC-Web.

/// `replog.v1`: both services.
pub mod v1 {
    tonic::include_proto!("replog.v1");
}
