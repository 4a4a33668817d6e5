//! A deadline for a request's whole body (`REQUEST_TIMEOUT_SECONDS`), so a client that sends its
//! headers and then trickles the body, or stops, cannot hold a request open forever.
//!
//! The whole body must arrive within the timeout of the first moment the node waits for it.
//! That bounds every gap between two parts of the body, and also a body trickled one byte at a
//! time with each gap short.
//!
//! The layer is tower-http's `MapRequestBodyLayer`; the body, [`DeadlineBody`], is this
//! module's because tower-http's `TimeoutBody` (`RequestBodyTimeoutLayer`) expresses another
//! rule: it restarts its timer at every frame, so it bounds each gap only, and a body trickled
//! with short gaps never times out. A request whose body times out is answered 408 naming
//! `REQUEST_TIMEOUT_SECONDS`: the JSON routes find [`BodyTimedOut`] in their extractor's
//! rejection ([`timed_out`]) and answer [`super::ApiError::RequestTimeout`].

use axum::body::Body as AxumBody;
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;
use tower_http::map_request_body::MapRequestBodyLayer;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The layer that gives every request's body `timeout` to arrive whole.
pub fn layer(
    timeout: Duration,
) -> MapRequestBodyLayer<impl Fn(AxumBody) -> DeadlineBody<AxumBody> + Clone> {
    MapRequestBodyLayer::new(move |body| DeadlineBody::new(body, timeout))
}

pin_project_lite::pin_project! {
    /// A request body that fails with [`BodyTimedOut`] when it has not all arrived within the
    /// timeout of the first wait for it.
    ///
    /// The body is polled before the timer, and the timer is armed only when the body is not
    /// there yet: a body that arrived with its headers never arms one.
    pub struct DeadlineBody<B> {
        #[pin]
        body: B,
        timeout: Duration,
        // Armed at the first wait for the body, never moved.
        #[pin]
        sleep: Option<Sleep>,
    }
}

impl<B> DeadlineBody<B> {
    pub fn new(body: B, timeout: Duration) -> Self {
        Self {
            body,
            timeout,
            sleep: None,
        }
    }
}

impl<B> Body for DeadlineBody<B>
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
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?} (REQUEST_TIMEOUT_SECONDS)")]
pub struct BodyTimedOut(Duration);

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
