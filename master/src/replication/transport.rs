//! What a link's driver needs of the way to one secondary: open a stream, send requests on it,
//! hear what comes back. [`Peer`] speaks it over the network ([`ReplicationStream`]); tests put
//! an in-memory secondary behind it (`master/tests/link_driver.rs`), so the driver runs without
//! sockets and on a paused clock.

use super::stream::ReplicationStream;
use super::{LinkError, Peer};
use replog_proto::v1::{ReplicaState, ReplicateRequest};
use std::future::Future;

/// The way to one secondary.
pub trait Transport: Send + Sync + 'static {
    type Stream: Stream;

    /// Where it leads, for logs and metrics.
    fn address(&self) -> &str;

    /// Opens a stream; a secondary that does not answer is the driver's to time out.
    fn open(&self) -> impl Future<Output = Result<Self::Stream, LinkError>> + Send;
}

/// What a stream brought.
#[derive(Debug, Clone, PartialEq)]
pub enum Heard {
    /// The answer to the oldest request that is owed one.
    Reply(ReplicaState),
    /// The secondary showed it is alive without answering (a pong while answers are owed).
    Alive,
}

/// One open stream: requests go out in order, and every request that is not quiet gets one
/// reply, in the same order.
pub trait Stream: Send + 'static {
    /// Queues `request`; it leaves when the stream is next driven ([`Stream::reply`]).
    fn send(&mut self, request: &ReplicateRequest) -> Result<(), LinkError>;

    /// Drives the stream until it brings a reply or a sign of life. `waiting` says whether replies are owed:
    /// only then is silence suspicious, and answered by a keep-alive ping. An error ends the
    /// stream.
    fn reply(&mut self, waiting: bool) -> impl Future<Output = Result<Heard, LinkError>> + Send;
}

impl Transport for Peer {
    type Stream = ReplicationStream;

    fn address(&self) -> &str {
        &self.address
    }

    fn open(&self) -> impl Future<Output = Result<ReplicationStream, LinkError>> + Send {
        self.open_stream()
    }
}

impl Stream for ReplicationStream {
    fn send(&mut self, request: &ReplicateRequest) -> Result<(), LinkError> {
        ReplicationStream::send(self, request)
    }

    fn reply(&mut self, waiting: bool) -> impl Future<Output = Result<Heard, LinkError>> + Send {
        ReplicationStream::reply(self, waiting)
    }
}
