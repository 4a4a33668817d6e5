//! Closes a client connection that holds a node's resources without asking for anything: no
//! request in flight and none completed for `REQUEST_TIMEOUT_SECONDS` (counted from the
//! connection's start, or from the end of its last answer).
//!
//! hyper's HTTP/1 header timeout covers only part of this: hyper-util's auto builder first
//! reads enough bytes to tell HTTP/1 from HTTP/2, with no time limit, so a silent connection or
//! half an HTTP/2 preface would stay forever; and hyper's HTTP/2 server has no idle limit at
//! all (an idle h2c connection, or a HEADERS frame whose header block never ends, stays open).
//! So each connection counts its requests in flight, [`Tracked`] around its service, and
//! [`Activity::idle_for`] resolves when the connection has been idle for the timeout.
//!
//! A request in flight is never cut by this: a `Watch` stream or an append waiting for its
//! write concern may take as long as it takes (the request's body has its own deadline,
//! [`super::body_timeout`]).

use hyper::body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::Service;

/// How long a connection told to close for being idle may take to close by itself before it
/// is dropped (an HTTP/2 goodbye, an HTTP/1 connection mid-way through a request's headers).
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// One connection's requests in flight and when it last became idle.
#[derive(Debug)]
pub struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    /// Nanoseconds from `started` to the end of the last answer.
    idle_since: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
        }
    }
}

impl Activity {
    /// Requests whose answer has not been sent (or dropped) yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Resolves once no request has been in flight for `timeout`. Checks at most once per
    /// `timeout` while requests are in flight, so it costs no timer per request.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            let now = Instant::now();
            let deadline = if self.in_flight() == 0 {
                let since = Duration::from_nanos(self.idle_since.load(Ordering::Acquire));
                self.started + since + timeout
            } else {
                now + timeout
            };
            if deadline <= now {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }
}

/// One request in flight, from its call until its answer's body is dropped (sent, or the
/// connection gone).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let since = self.0.started.elapsed().as_nanos();
        self.0
            .idle_since
            .store(u64::try_from(since).unwrap_or(u64::MAX), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A service that counts its requests in flight in an [`Activity`].
#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<S, R, B> Service<R> for Tracked<S>
where
    S: Service<R, Response = axum::http::Response<B>>,
{
    type Response = axum::http::Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        TrackedFuture {
            in_flight: Some(self.activity.begin()),
            inner: self.inner.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer's future; hands the request's [`InFlight`] on to the answer's body.
    pub struct TrackedFuture<F> {
        #[pin]
        inner: F,
        in_flight: Option<InFlight>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<axum::http::Response<B>, E>>,
{
    type Output = Result<axum::http::Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?;
        let in_flight = this.in_flight.take();
        Poll::Ready(Ok(response.map(|body| TrackedBody {
            body,
            _in_flight: in_flight,
        })))
    }
}

pin_project_lite::pin_project! {
    /// An answer's body; its request is in flight until it is dropped.
    pub struct TrackedBody<B> {
        #[pin]
        body: B,
        _in_flight: Option<InFlight>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
