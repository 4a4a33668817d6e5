//! The internal gRPC `Replication` service: only the master calls it.

use crate::state::{Refused, Secondary};
use futures::Stream;
use replog_proto::v1::replication_server::Replication;
use replog_proto::v1::{FetchReply, FetchRequest, ReplicaState, ReplicateRequest};
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status, Streaming};

pub struct ReplicationService {
    pub secondary: Arc<Secondary>,
}

#[tonic::async_trait]
impl Replication for ReplicationService {
    async fn fetch(&self, request: Request<FetchRequest>) -> Result<Response<FetchReply>, Status> {
        Ok(Response::new(self.secondary.fetch(&request.into_inner())))
    }

    type StreamStream = Pin<Box<dyn Stream<Item = Result<ReplicaState, Status>> + Send>>;

    /// Applies the master's requests in the order they come and answers each, except the quiet
    /// ones (`ReplicateRequest.quiet`). Ends at the first error (the master then starts over
    /// from our high-water mark), when the master closes its side, or at shutdown (so the
    /// stream never holds the server open).
    async fn stream(
        &self,
        request: Request<Streaming<ReplicateRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let inbound = request.into_inner();
        let secondary = self.secondary.clone();
        let replies = futures::stream::unfold(Some(inbound), move |inbound| {
            let secondary = secondary.clone();
            async move {
                let mut inbound = inbound?;
                loop {
                    let next = tokio::select! {
                        next = inbound.message() => next,
                        _ = secondary.shutdown.cancelled() => return None,
                    };
                    return match next {
                        Ok(Some(request)) => match secondary.apply(request).await {
                            Ok(Some(state)) => Some((Ok(state), Some(inbound))),
                            // Quiet, and taken: nothing to say; read the next one.
                            Ok(None) => continue,
                            Err(status) => Some((Err(status), None)),
                        },
                        Ok(None) => None,
                        Err(status) => Some((Err(status), None)),
                    };
                }
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }
}

impl Secondary {
    /// One replication request from the master's stream: checked, delayed (`DELAY_SECONDS`),
    /// stored, and answered with our state (or an injected error, `ERROR_RATE`).
    ///
    /// A quiet request (decisions only) is answered with `None` once its decisions
    /// are taken. One we cannot take is an error: the master believes we took it, and only the
    /// end of the stream tells it otherwise (it then asks afresh on a new one).
    pub async fn apply(
        self: &Arc<Self>,
        request: ReplicateRequest,
    ) -> Result<Option<ReplicaState>, Status> {
        if let Some(bad) = request
            .entries
            .iter()
            .find(|e| std::str::from_utf8(&e.message).is_err())
        {
            let why = format!("entry {} is not valid UTF-8", bad.id);
            self.refuse("invalid_utf8", &why);
            return Err(Status::invalid_argument(why));
        }
        let config = &self.config;
        // `DELAY_SECONDS`, a test knob: the acknowledgement of entries (not of heartbeats) is
        // late, and nothing is stored before it, so no reply can acknowledge an entry early.
        if !request.entries.is_empty() && !config.delay_seconds.is_zero() {
            tokio::time::sleep(config.delay_seconds).await;
        }
        let carried_entries = !request.entries.is_empty();
        let quiet = request.quiet && !carried_entries;
        let (upto, since) = request
            .decisions
            .as_ref()
            .map_or((0, 0), |d| (d.decided_upto, d.since));
        let secondary = self.clone();
        let received = if secondary.is_durable() {
            replog_node::runtime::blocking_io(move || secondary.receive(request))
                .await
                .map_err(|e| Status::internal(format!("storing failed: {e}")))?
        } else {
            secondary.receive(request)
        };
        let state = match received {
            Ok(state) => state,
            Err(Refused::Unapplied(state)) if quiet => return Err(not_taken(&state, upto)),
            // The master learns from the state which log and which master process we follow.
            Err(Refused::Unapplied(state)) => return Ok(Some(state)),
            Err(Refused::Master(why)) => return Err(Status::failed_precondition(why)),
            Err(Refused::Invalid(why)) => return Err(Status::invalid_argument(why)),
            Err(Refused::Storage(error)) => {
                return Err(Status::internal(format!("cannot write the log: {error}")))
            }
            Err(Refused::Stopped) => return Err(Status::unavailable("this secondary has stopped")),
        };
        if carried_entries && config.error_rate > 0.0 && rand::random::<f64>() < config.error_rate {
            return Err(Status::unavailable(
                "injected error after storing (ERROR_RATE)",
            ));
        }
        if quiet {
            // Taken if our frontier reached `since` (so the tombstones covered it) and then went
            // as far as the push says, or to what we hold: it stops there (`Replica::decide`),
            // and the entries beyond come later with the decisions again.
            return match state.decided >= since && state.decided >= upto.min(state.held) {
                true => Ok(None),
                false => Err(not_taken(&state, upto)),
            };
        }
        Ok(Some(state))
    }
}

/// The error that ends a stream on a quiet request we could not take.
fn not_taken(state: &ReplicaState, upto: u64) -> Status {
    Status::failed_precondition(format!(
        "cannot take decisions up to {upto} unanswered (holding {}, decided up to {}); \
         answering on a new stream",
        state.held, state.decided
    ))
}
