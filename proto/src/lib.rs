//! Generated gRPC code for replog.
//!
//! `replication` is the internal service that only the master calls on a secondary's
//! `GRPC_PORT`.

/// `replog.v1`: the replication protocol.
pub mod v1 {
    tonic::include_proto!("replog.v1");
}
