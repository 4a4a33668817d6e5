//! Appends made on a secondary go to the master: its own log only changes through replication.
//!
//! The forwarder calls the master's public gRPC `Append` and hands back the master's verdict,
//! errors included, so a client sees the same answer whichever node it asked. When no verdict
//! comes back, the answer says only what this node knows: "nothing appended" (503) if the
//! request never left, "outcome unknown" (504) if it may have reached the master.

use replog_node::api::ApiError;
use replog_proto::v1::log_client::LogClient;
use replog_proto::v1::AppendRequest;
use std::error::Error;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

pub struct Forwarder {
    master: Option<(String, LogClient<Channel>)>,
}

impl Forwarder {
    pub fn new(master: Option<&str>) -> Result<Self, String> {
        let Some(address) = master else {
            return Ok(Self { master: None });
        };
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| format!("MASTER `{address}`: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true);
        Ok(Self {
            master: Some((address.to_owned(), LogClient::new(endpoint.connect_lazy()))),
        })
    }

    pub async fn append(
        &self,
        message: String,
        w: Option<u64>,
        key: Option<String>,
    ) -> Result<u64, ApiError> {
        let Some((address, client)) = &self.master else {
            return Err(ApiError::Unavailable(
                "this secondary has no MASTER setting; append on the master".into(),
            ));
        };
        let w = match w.map(u32::try_from) {
            None => None,
            Some(Ok(w)) => Some(w),
            Some(Err(_)) => {
                return Err(ApiError::Unprocessable(
                    "`w` must be between 1 and the number of nodes".into(),
                ))
            }
        };
        let reply = client
            .clone()
            .append(AppendRequest { message, w, key })
            .await
            .map_err(|status| {
                let error = verdict(status);
                tracing::debug!(master = %address, %error, outcome = error.outcome(), "forwarded append not committed");
                error
            })?;
        Ok(reply.into_inner().id)
    }
}

/// What a failed forward tells the client.
///
/// A status the master answered carries no source error: it is the master's verdict. One that
/// tonic made from a transport error carries the error as its source, and says nothing of what
/// the master did, except when the connection could not be made at all (the request never
/// left this node). Any other transport failure (the connection reset or closed, a broken
/// stream, a deadline) may have come after the master took the append, so its outcome is
/// unknown: answering 503 there would tell the client nothing was appended, which may be false.
fn verdict(status: tonic::Status) -> ApiError {
    let Some(source) = status.source() else {
        return ApiError::from(status);
    };
    if never_sent(source) {
        ApiError::Unavailable(format!(
            "the master cannot be reached; nothing was appended: {}",
            status.message()
        ))
    } else {
        ApiError::OutcomeUnknown(format!(
            "the master's answer did not come back ({}); the append may or may not be in the log: retry with the same key to find out",
            status.message()
        ))
    }
}

/// Whether a transport error is a failed connect, anywhere in its chain of sources: then no
/// request was sent on it.
fn never_sent(error: &(dyn Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.is::<tonic::ConnectError>() {
            return true;
        }
        next = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_master_that_refuses_the_connection_means_nothing_was_appended() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let address = listener.local_addr().expect("its address").to_string();
        drop(listener);
        let forwarder = Forwarder::new(Some(&address)).expect("a forwarder");
        let answer = forwarder.append("hello".into(), None, None).await;
        assert!(
            matches!(answer, Err(ApiError::Unavailable(_))),
            "{answer:?}"
        );
    }

    #[tokio::test]
    async fn a_connection_closed_after_the_request_is_an_unknown_outcome() {
        // A "master" that reads the request and hangs up without an answer.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let address = listener.local_addr().expect("its address").to_string();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            if let Ok((mut socket, _)) = listener.accept().await {
                let mut buffer = vec![0; 64 * 1024];
                // The HTTP/2 preface, SETTINGS and the request's frames: then gone.
                let read = async { while socket.read(&mut buffer).await.is_ok_and(|n| n > 0) {} };
                let _ = tokio::time::timeout(Duration::from_millis(300), read).await;
            }
        });
        let forwarder = Forwarder::new(Some(&address)).expect("a forwarder");
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            forwarder.append("hello".into(), None, None),
        )
        .await
        .expect("an answer once the connection closed");
        assert!(
            matches!(answer, Err(ApiError::OutcomeUnknown(_))),
            "{answer:?}"
        );
    }

    #[test]
    fn the_masters_own_answers_keep_their_meaning() {
        let answer = verdict(tonic::Status::unavailable("no quorum"));
        assert_eq!(answer, ApiError::Unavailable("no quorum".into()));
        let answer = verdict(tonic::Status::unknown("the master stopped"));
        assert_eq!(
            answer,
            ApiError::OutcomeUnknown("the master stopped".into())
        );
    }
}
