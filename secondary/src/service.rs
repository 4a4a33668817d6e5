//! The internal gRPC `Replication` service: only the master calls it.

use crate::state::{Refused, Secondary};
use replog_proto::v1::replication_server::Replication;
use replog_proto::v1::{ReplicaState, ReplicateRequest};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct ReplicationService {
    pub secondary: Arc<Secondary>,
}

#[tonic::async_trait]
impl Replication for ReplicationService {
    async fn replicate(
        &self,
        request: Request<ReplicateRequest>,
    ) -> Result<Response<ReplicaState>, Status> {
        let request = request.into_inner();
        if let Some(bad) = request
            .entries
            .iter()
            .find(|e| std::str::from_utf8(&e.message).is_err())
        {
            return Err(Status::invalid_argument(format!(
                "entry {} is not valid UTF-8",
                bad.id
            )));
        }
        let config = &self.secondary.config;
        // The seed's test knob: the acknowledgement of entries (not of heartbeats) is late,
        // and nothing is stored before it, so no reply can acknowledge an entry early.
        if !request.entries.is_empty() && !config.delay_seconds.is_zero() {
            tokio::time::sleep(config.delay_seconds).await;
        }
        let carried_entries = !request.entries.is_empty();
        let secondary = self.secondary.clone();
        let received = if secondary.is_durable() {
            tokio::task::spawn_blocking(move || secondary.receive(request))
                .await
                .map_err(|e| Status::internal(format!("storing failed: {e}")))?
        } else {
            secondary.receive(request)
        };
        let state = match received {
            Ok(state) => state,
            // The master learns our identity from the state and refuses to mix logs.
            Err(Refused::ForeignLog(state)) => return Ok(Response::new(state)),
            Err(Refused::Storage(error)) => {
                return Err(Status::internal(format!("cannot write the log: {error}")))
            }
        };
        if carried_entries && config.error_rate > 0.0 && rand::random::<f64>() < config.error_rate {
            return Err(Status::unavailable(
                "injected error after storing (ERROR_RATE)",
            ));
        }
        Ok(Response::new(state))
    }
}
