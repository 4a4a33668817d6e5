//! The public gRPC service `replog.v1.Log`, served as gRPC and gRPC-Web on the node's HTTP port.
//!
//! `GrpcWebLayer` wraps this service only: it answers 400 to plain HTTP/1.1 requests, so it
//! must never sit in front of the JSON routes.

use super::Node;
use crate::log::Message;
use crate::shutdown::Shutdown;
use axum::Router;
use replog_proto::v1 as pb;
use replog_proto::v1::log_server::{Log, LogServer};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};
use tower::Layer;

/// Entries a `Watch` reads from the log per step.
const WATCH_PAGE: usize = 512;

pub struct LogService<N> {
    node: Arc<N>,
    shutdown: Shutdown,
}

/// The gRPC + gRPC-Web routes of `replog.v1.Log`, to merge into the node's axum app.
pub fn routes<N: Node>(node: Arc<N>, shutdown: Shutdown, max_request_bytes: usize) -> Router {
    let server =
        LogServer::new(LogService { node, shutdown }).max_decoding_message_size(max_request_bytes);
    let service = tonic_web::GrpcWebLayer::new().layer(server);
    let path = format!("/{}/{{*method}}", LogServer::<LogService<N>>::NAME);
    Router::new().route_service(&path, service)
}

fn entry(message: Message) -> pb::LogEntry {
    pb::LogEntry {
        id: message.id,
        message: String::from_utf8_lossy(&message.message).into_owned(),
    }
}

#[tonic::async_trait]
impl<N: Node> Log for LogService<N> {
    async fn append(
        &self,
        request: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendReply>, Status> {
        let request = request.into_inner();
        let id = super::append(
            &*self.node,
            request.message.clone(),
            request.w.map(u64::from),
            request.key,
        )
        .await?;
        Ok(Response::new(pb::AppendReply {
            id,
            message: request.message,
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListReply>, Status> {
        let request = request.into_inner();
        self.node.readable()?;
        let limit = match request.limit {
            0 => usize::MAX,
            n => n as usize,
        };
        // Before the page: retention only moves it up, so no entry is below the id named.
        let first_id = self.node.first_id();
        let entries = self
            .node
            .page(request.from_id, limit)?
            .into_iter()
            .map(entry)
            .collect();
        Ok(Response::new(pb::ListReply { entries, first_id }))
    }

    type WatchStream = ReceiverStream<Result<pb::LogEntry, Status>>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        // 0: from the first retained id, as `List` reads it.
        let from_id = request.into_inner().from_id;
        // Below the first retained id is `OUT_OF_RANGE` as the call's answer, not a stream
        // that ends at once.
        self.node.page(from_id, 1)?;
        let (tx, rx) = mpsc::channel(WATCH_PAGE);
        let node = self.node.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stream_visible(node, from_id, &tx) => {}
                _ = shutdown.cancelled() => {
                    let _ = tx.send(Err(Status::unavailable("the node is shutting down"))).await;
                }
                _ = tx.closed() => {}
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn health(
        &self,
        _request: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthReply>, Status> {
        Ok(Response::new(self.node.health().into()))
    }
}

/// Sends visible entries from `next` on, then each as it becomes visible, until the client
/// goes away.
async fn stream_visible<N: Node>(
    node: Arc<N>,
    mut next: u64,
    tx: &mpsc::Sender<Result<pb::LogEntry, Status>>,
) {
    let mut visible = node.visible();
    loop {
        // Read the frontier before the page: everything up to it is in this page or a later one.
        let upto = *visible.borrow_and_update();
        let page = match node.page(next, WATCH_PAGE) {
            Ok(page) => page,
            Err(error) => {
                // Ends the stream with why: below the first retained id, or unreadable files.
                let _ = tx.send(Err(error.into())).await;
                return;
            }
        };
        if page.is_empty() {
            // Ids up to `upto` are all read (the rest were tombstones); wait for the next move.
            next = next.max(upto + 1);
            if visible.changed().await.is_err() {
                return;
            }
            continue;
        }
        for message in page {
            next = message.id + 1;
            if tx.send(Ok(entry(message))).await.is_err() {
                return;
            }
        }
    }
}
