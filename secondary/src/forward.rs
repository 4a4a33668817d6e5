//! Appends made on a secondary go to the master: its own log only changes through replication.
//!
//! The forwarder calls the master's public gRPC `Append` and hands back the master's verdict,
//! errors included, so a client sees the same answer whichever node it asked.

use replog_node::api::ApiError;
use replog_proto::v1::log_client::LogClient;
use replog_proto::v1::AppendRequest;
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

    pub async fn append(&self, message: String, w: Option<u64>) -> Result<u64, ApiError> {
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
            .append(AppendRequest { message, w })
            .await
            .map_err(|status| {
                tracing::debug!(master = %address, %status, "forwarded append refused");
                ApiError::from(status)
            })?;
        Ok(reply.into_inner().id)
    }
}
