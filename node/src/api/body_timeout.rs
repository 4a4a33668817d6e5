//! A deadline for a request's body (`REQUEST_TIMEOUT_SECONDS`), so a client that sends its
//! headers and then trickles the body, or stops, cannot hold a request open forever.
//!
//! The whole body must arrive within the timeout of the first moment the node waits for it.
//! That bounds every gap between two parts of the body too, and also a body trickled one byte
//! at a time with each gap short, which a limit on gaps alone would let run forever.
//!
//! tower-http's `RequestBodyTimeoutLayer` limits each gap only, and starts a timer on every
//! read of the body, even when the bytes are already there: two timer registrations per
//! request (the data, then the end), on the one thread that serves every client. Here one timer
//! starts only when the body is actually not there yet, which for an append that arrived in one
//! packet is never. A request that times out is answered 408 (see [`timed_out`]).

use axum::http::Request;
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;
use tower::{Layer, Service};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Wraps every request's body in a [`PatientBody`].
#[derive(Clone, Copy, Debug)]
pub struct BodyTimeoutLayer {
    timeout: Duration,
}

impl BodyTimeoutLayer {
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for BodyTimeoutLayer {
    type Service = BodyTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyTimeout {
            inner,
            timeout: self.timeout,
        }
    }
}

#[derive(Clone, Debug)]
pub struct BodyTimeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S, B> Service<Request<B>> for BodyTimeout<S>
where
    S: Service<Request<PatientBody<B>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let timeout = self.timeout;
        self.inner.call(request.map(|body| PatientBody {
            body,
            timeout,
            sleep: None,
        }))
    }
}

pin_project_lite::pin_project! {
    /// A request body that fails with [`BodyTimedOut`] when it has not all arrived within the
    /// timeout of the first wait for it.
    pub struct PatientBody<B> {
        #[pin]
        body: B,
        timeout: Duration,
        // Armed at the first wait for the body, never moved.
        #[pin]
        sleep: Option<Sleep>,
    }
}

impl<B> Body for PatientBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Poll::Ready(frame) = this.body.poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        if this.sleep.is_none() {
            this.sleep.set(Some(tokio::time::sleep(*this.timeout)));
        }
        match this.sleep.as_pin_mut().map(|sleep| sleep.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Some(Err(Box::new(BodyTimedOut(*this.timeout))))),
            _ => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The body did not all arrive within the timeout.
#[derive(Debug)]
pub struct BodyTimedOut(Duration);

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body did not arrive within {:?} (REQUEST_TIMEOUT_SECONDS)",
            self.0
        )
    }
}

impl std::error::Error for BodyTimedOut {}

/// The [`BodyTimedOut`] somewhere in an error's chain of sources (a body error reaches a
/// handler wrapped in the extractor's own rejection).
pub fn timed_out<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyTimedOut> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<BodyTimedOut>() {
            return Some(found);
        }
        current = error.source();
    }
    None
}
