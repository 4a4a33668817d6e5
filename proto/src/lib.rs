//! Generated gRPC code for replog.
//!
//! `Replication` is the internal service that only the master calls on a secondary's
//! `GRPC_PORT`; `Log` is the public API every node serves as gRPC and gRPC-Web.
//!
//! With the default `transport` feature this crate has servers and transport-backed clients
//! (native). Without it, only the messages and clients generic over any
//! `tonic::client::GrpcService` (e.g. gRPC-Web from a browser through
//! `tonic-web-wasm-client`), which compile for `wasm32-unknown-unknown`.
//!
//! [`framing`] is gRPC's message framing and size limit, for the ends that speak it by hand.

pub mod framing;

/// `replog.v1`: both services.
pub mod v1 {
    tonic::include_proto!("replog.v1");
}

impl v1::MasterStart {
    /// The cut rule of `ReplicateRequest.starts`, for both ends: a secondary that follows master
    /// process `follows` and hears process `heard` keeps every id up to the lowest `recovered`
    /// among the starts in `(follows, heard]`, since any id above it may have been lost by one of
    /// those processes and given out again by a later one. `None` if `starts` lists none of
    /// them. The master uses it to count what such a secondary holds, the secondary to cut.
    pub fn kept_after(starts: &[v1::MasterStart], follows: u64, heard: u64) -> Option<u64> {
        starts
            .iter()
            .filter(|s| s.instance > follows && s.instance <= heard)
            .map(|s| s.recovered)
            .min()
    }
}
