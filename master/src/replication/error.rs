//! Why a replication stream could not be opened, or ended.

use replog_proto::framing::FrameError;
use std::time::Duration;

/// How a link to one secondary failed. The driver needs only to know that the stream is gone
/// (every failure closes it and backs off); the kinds are for whoever reads the failure: the
/// logs and health's `last_error` show its text.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// No TCP connection within the connect timeout.
    #[error("no connection within {0:?}")]
    ConnectTimeout(Duration),
    /// The TCP connection was refused or failed.
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The request's headers are not valid HTTP (an address or token that cannot be sent).
    #[error("cannot build the request: {0}")]
    Request(#[source] http::Error),
    /// The secondary answered the call with an HTTP status other than 200.
    #[error("the secondary answered HTTP {0}")]
    Http(http::StatusCode),
    /// The secondary refused the call or ended it with a gRPC error (an unknown token, a
    /// refused request, a secondary stopping).
    #[error("{}: {}", .0.code(), .0.message())]
    Refused(tonic::Status),
    /// TLS with the secondary failed, for the reason rustls gives: its certificate was refused
    /// (another CA, expired, not naming the address dialled), or it refused this master's (its
    /// alert). With TLS 1.3 the secondary checks the master's certificate after the master's
    /// side of the handshake is done, so its refusal arrives on the HTTP/2 connection before
    /// the stream is answered: as an alert or, when the secondary's close overtakes it, as a
    /// broken connection ([`LinkError::TlsUnexplained`]).
    #[error("TLS handshake with the secondary failed: {0}")]
    Tls(String),
    /// A connection over TLS broke, or was closed, before the secondary answered the stream's
    /// call, without an alert ([`LinkError::opening_over_tls`]): most likely the secondary
    /// refused this master's certificate and its close overtook its alert. The link then asks
    /// the secondary for the reason (`Peer::open_stream`), and this stays only when none comes.
    #[error("TLS handshake with the secondary failed: {0}: it may refuse this master's certificate (its log says why)")]
    TlsUnexplained(String),
    /// HTTP/2 failed underneath: the handshake, a reset, a frame, a ping.
    #[error("HTTP/2: {0}")]
    Transport(#[from] h2::Error),
    /// A request that cannot be framed.
    #[error("a request: {0}")]
    Encode(#[source] FrameError),
    /// A reply that is no valid gRPC message.
    #[error("the secondary sent {0}")]
    Protocol(#[source] FrameError),
    /// The secondary ended the stream without an error; the master never ends it, so this is
    /// a failure too.
    #[error("the secondary ended the replication stream")]
    Ended,
    /// The secondary closed the HTTP/2 connection cleanly.
    #[error("the secondary closed the connection")]
    Closed,
    /// A silent stream with replies owed did not answer a ping in time.
    #[error("no answer to a ping within {0:?}")]
    PingTimeout(Duration),
    /// Opening the stream took longer than `RPC_TIMEOUT_SECONDS`.
    #[error("no answer to opening the replication stream")]
    OpenTimeout,
    /// The core asked to send while the driver holds no stream (a bug, treated as a failure).
    #[error("the link sent on a stream the driver does not hold")]
    NotOpen,
    /// The entries to ship cannot be read from the master's own files (a damaged segment).
    #[error("cannot read the entries to ship from this master's files: {0}")]
    Unreadable(#[source] replog_node::storage::segments::ReadError),
    /// The task reading the entries to ship ended without an answer.
    #[error("reading the entries to ship failed: {0}")]
    ReadTask(String),
    /// A reply owed longer than `RPC_TIMEOUT_SECONDS` since the stream last moved.
    #[error("no answer within RPC_TIMEOUT_SECONDS ({0:?})")]
    Late(Duration),
}

impl LinkError {
    /// `self`, an error while a stream was being opened over TLS: a connection that broke
    /// before the secondary answered is its refusal of this master's certificate (see
    /// [`LinkError::Tls`]), told as such: with rustls's reason when the alert came
    /// ([`LinkError::Tls`]), as likely when the close overtook it ([`LinkError::TlsUnexplained`]).
    pub fn opening_over_tls(self) -> Self {
        const CLOSED: &str = "the secondary closed the connection before answering";
        match self {
            LinkError::Transport(error) => match error.get_io() {
                Some(io) if io.kind() == std::io::ErrorKind::InvalidData => {
                    LinkError::Tls(io.to_string())
                }
                Some(io) => LinkError::TlsUnexplained(format!("{CLOSED} ({io})")),
                None => LinkError::Transport(error),
            },
            LinkError::Closed => LinkError::TlsUnexplained(CLOSED.into()),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (An alert or a reset under HTTP/2 is told as TLS too: h2's I/O errors cannot be made
    /// outside h2, so `tls_replication`'s cluster test checks those.)
    #[test]
    fn a_connection_closed_while_opening_over_tls_is_told_as_tls() {
        let error = LinkError::Closed.opening_over_tls();
        assert!(matches!(error, LinkError::TlsUnexplained(_)), "{error:?}");
        assert!(
            error
                .to_string()
                .starts_with("TLS handshake with the secondary failed: "),
            "{error}"
        );
        // What the secondary answered is no TLS failure.
        let refused = LinkError::Refused(tonic::Status::permission_denied("unknown token"));
        assert!(matches!(refused.opening_over_tls(), LinkError::Refused(_)));
    }
}
