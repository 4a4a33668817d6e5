//! The driver of one secondary's link: carries out [`crate::core::link`]'s decisions on a
//! stream of its [`Transport`] and reports back what happened (opened, a reply, a sign of life,
//! a failure). It keeps a stream open at all times, heartbeats included, so it is the one way
//! the master hears each secondary while it serves.
//!
//! A push of decisions alone leaves after the clients' answers to the appends it decides, in
//! the same busy stretch of the master's thread ([`DECISION_DEFERRALS`]).

use super::transport::{Heard, Stream, Transport};
use super::LinkError;
use crate::core::link::{Poll, ReplyError, MAX_BATCH_BYTES, MAX_BATCH_ENTRIES};
use crate::state::Master;
use replog_node::metrics::Metrics;
use replog_node::runtime::blocking_io;
use replog_node::shutdown::Shutdown;
use replog_node::storage::segments::{ReadError, Stored};
use replog_proto::v1::{ReplicaState, ReplicateRequest};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{sleep_until, Instant};

/// Times a sender yields before a push of decisions alone.
///
/// tokio runs a yielded task again only once every task already queued has run and the
/// sockets have been polled without blocking; on the master's thread, that puts the clients'
/// answers to the appends a commit decided ahead of the decisions' push to the secondaries.
/// One deferral is enough for an HTTP answer, written by its connection's task; a gRPC answer
/// takes a turn more (hyper's HTTP/2 server writes it from the connection's task after the
/// call's task). The push never waits for an event: a runtime with a yielded task does not
/// sleep, so it leaves before the master's thread next blocks, and if the next append arrived
/// meanwhile it rides on that request instead of costing a message of its own.
pub const DECISION_DEFERRALS: usize = 2;

/// One secondary's link driver and the handles it holds.
pub struct Sender<T: Transport> {
    /// The core, behind its lock.
    pub master: Arc<Master>,
    /// The way to the secondary.
    pub peer: T,
    /// The secondary's index in the core.
    pub index: usize,
    /// Stops the driver.
    pub shutdown: Shutdown,
    /// Counts the failures.
    pub metrics: Arc<Metrics>,
    /// How long opening a stream, and the answer to the oldest request in flight, may take
    /// (`RPC_TIMEOUT_SECONDS`).
    pub rpc_timeout: Duration,
}

impl<T: Transport> Sender<T> {
    /// Drives the link until shutdown.
    pub async fn run(self) {
        let (master, index) = (&*self.master, self.index);
        // The open stream, if any; dropped whenever the link closes.
        let mut stream: Option<T::Stream> = None;
        // This turn's decisions-only push has already waited for the answers.
        let mut deferred = false;

        loop {
            // What to do, and when to look again if nothing wakes the driver first: the link
            // changes only through this driver's calls, so both come from one look at the core.
            let (poll, wait) = master.update(|core| {
                let poll = core.poll_link(index, now(), !deferred);
                (poll, core.link(index).wait())
            });
            deferred = false;
            match poll {
                Poll::Open => {
                    let opened = tokio::select! {
                        _ = self.shutdown.cancelled() => return,
                        opened = tokio::time::timeout(self.rpc_timeout, self.peer.open()) => opened,
                    };
                    match opened {
                        Ok(Ok(opened)) => {
                            stream = Some(opened);
                            master.update(|core| core.link_opened(index, now()));
                        }
                        Ok(Err(error)) => self.failed(&mut stream, &error),
                        Err(_) => self.failed(&mut stream, &LinkError::OpenTimeout),
                    }
                    continue;
                }
                Poll::Send(requests) => {
                    if let Err(error) = send_all(&mut stream, &requests) {
                        self.failed(&mut stream, &error);
                        continue;
                    }
                }
                Poll::Read { first, from } => {
                    if let Err(error) = send_all(&mut stream, &first) {
                        self.failed(&mut stream, &error);
                        continue;
                    }
                    match read_cold(master, from).await {
                        Ok(read) => master.update(|core| core.link_read(index, from, read)),
                        Err(error) => self.failed(&mut stream, &error),
                    }
                    continue;
                }
                Poll::DecisionsHeld => {
                    // All there is to send is decisions, which nobody waits for, while the
                    // answers to the appends they decide were woken by the same commit: those
                    // go out first.
                    deferred = true;
                    for _ in 0..DECISION_DEFERRALS {
                        tokio::task::yield_now().await;
                    }
                    continue;
                }
                Poll::Wait => {}
            }

            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return,
                heard = next_reply(&mut stream, wait.waiting) => match heard {
                    Ok(Heard::Reply(state)) => self.took(&mut stream, &state),
                    Ok(Heard::Alive) => master.update(|core| core.link_alive(index, now())),
                    Err(error) => self.failed(&mut stream, &error),
                },
                _ = sleep_until(at(wait.late_at)), if wait.late_at.is_some() => {
                    self.failed(&mut stream, &LinkError::Late(self.rpc_timeout));
                }
                _ = master.wake(index).notified() => {}
                _ = sleep_until(at(wait.retry_at)), if wait.retry_at.is_some() => {}
                _ = sleep_until(at(wait.heartbeat_at)), if wait.heartbeat_at.is_some() => {}
            }
        }
    }

    /// Gives a reply to the core; a refused one closes the stream.
    fn took(&self, stream: &mut Option<T::Stream>, state: &ReplicaState) {
        let address = self.peer.address();
        let (taken, foreign_before) = self.master.update(|core| {
            let before = core.ledger().follower(self.index).foreign_log.clone();
            (core.link_reply(self.index, state, now()), before)
        });
        match taken {
            Ok(true) => tracing::info!(secondary = %address, "replication calls succeed again"),
            Ok(false) => {}
            Err(ReplyError::ForeignLog(theirs)) => {
                // The link backs off and asks again: said once until it changes.
                if foreign_before.as_deref() != Some(theirs.as_str()) {
                    tracing::warn!(secondary = %address, their_log = %theirs, "secondary holds another log; not replicating to it");
                }
                *stream = None;
            }
            Err(error @ ReplyError::Unsolicited) => self.dropped(stream, true, &error),
        }
    }

    /// A failed stream: the core closes the link and backs off; the driver drops the stream.
    fn failed(&self, stream: &mut Option<T::Stream>, error: &LinkError) {
        let first = self
            .master
            .update(|core| core.link_failed(self.index, &error.to_string(), now()));
        self.dropped(stream, first, error);
    }

    /// Logs a failure once per streak, counts it, and drops the stream.
    fn dropped(&self, stream: &mut Option<T::Stream>, first: bool, error: &dyn std::fmt::Display) {
        let address = self.peer.address();
        if first {
            tracing::warn!(secondary = %address, %error, "replication failed; retrying with backoff");
        } else {
            tracing::debug!(secondary = %address, %error, "replication failed again");
        }
        self.metrics.retry(address);
        *stream = None;
    }
}

/// Queues `requests` on the open stream, in order.
fn send_all<S: Stream>(
    stream: &mut Option<S>,
    requests: &[ReplicateRequest],
) -> Result<(), LinkError> {
    if requests.is_empty() {
        return Ok(());
    }
    match stream.as_mut() {
        Some(open) => requests.iter().try_for_each(|r| open.send(r)),
        None => Err(LinkError::NotOpen),
    }
}

/// Reads a batch of cold entries from `from` on from the log's files, without the core's lock,
/// on the blocking pool where the runtime has one; from the files' first retained id if
/// retention removed `from`.
async fn read_cold(master: &Master, from: u64) -> Result<Vec<Stored>, LinkError> {
    let Some(files) = master.read(|core| core.ledger().log().files().cloned()) else {
        // A log without files is never cold; the link reads what there is as usual.
        return Ok(Vec::new());
    };
    let read = blocking_io(
        move || match files.read(from, MAX_BATCH_ENTRIES, MAX_BATCH_BYTES) {
            Err(ReadError::Gone { first_id, .. }) => {
                files.read(first_id, MAX_BATCH_ENTRIES, MAX_BATCH_BYTES)
            }
            read => read,
        },
    )
    .await;
    match read {
        Ok(read) => read.map_err(LinkError::Unreadable),
        Err(task) => Err(LinkError::ReadTask(task.to_string())),
    }
}

fn at(moment: Option<std::time::Instant>) -> Instant {
    moment.map_or_else(Instant::now, Instant::from_std)
}

/// The moment the core is told of, on the runtime's clock (paused in tests).
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// What the open stream brings next. Polled whenever a stream is open, so that the stream's
/// connection is driven: requests queued by [`Stream::send`] are written, the secondary's
/// frames are answered, and a reply nobody waits for is a broken stream.
async fn next_reply<S: Stream>(stream: &mut Option<S>, waiting: bool) -> Result<Heard, LinkError> {
    match stream.as_mut() {
        Some(open) => open.reply(waiting).await,
        None => std::future::pending().await,
    }
}
