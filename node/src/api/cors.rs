//! CORS, so that browsers on another origin can call the JSON API and gRPC-Web, applied only
//! to requests that are cross-origin candidates.
//!
//! tower-http's [`CorsLayer`] adds `Vary` and `Access-Control-Expose-Headers` to every answer.
//! A browser sends `Origin` with every cross-origin request and with every `POST`, so a `POST`
//! without it comes from curl, a script or a server (the bulk of appends), and its answer is
//! never cached (a `POST`'s answer is not cacheable without explicit freshness, which replog
//! never gives). For those requests the headers are ~140 bytes of every append's answer that
//! both ends would build, send and parse for nothing, so [`OriginOnly`] skips the layer for them.
//! Everything else goes through the layer as before: every request with `Origin`, every
//! `OPTIONS` (a preflight), and every `GET`, whose answer may be cached and so must say that it
//! varies with `Origin`.

use axum::http::{header, HeaderName, Method, Request};
use futures::future::Either;
use std::task::{Context, Poll};
use tower::{Layer, Service};
use tower_http::cors::{AllowOrigin, Cors, CorsLayer};

/// The API's CORS rules: any origin (mirrored), the methods and headers of the JSON API and
/// gRPC-Web, and gRPC's status headers readable by the page.
pub fn layer() -> OriginOnlyLayer {
    OriginOnlyLayer(
        CorsLayer::new()
            .allow_origin(AllowOrigin::mirror_request())
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([
                header::CONTENT_TYPE,
                header::ACCEPT,
                HeaderName::from_static("x-grpc-web"),
                HeaderName::from_static("x-user-agent"),
                HeaderName::from_static("grpc-timeout"),
            ])
            .expose_headers([
                HeaderName::from_static("grpc-status"),
                HeaderName::from_static("grpc-message"),
                HeaderName::from_static("grpc-status-details-bin"),
            ]),
    )
}

/// A [`CorsLayer`] that [`OriginOnly`] bypasses for a `POST` without `Origin`.
#[derive(Clone)]
pub struct OriginOnlyLayer(CorsLayer);

impl<S> Layer<S> for OriginOnlyLayer {
    type Service = OriginOnly<S>;

    fn layer(&self, inner: S) -> OriginOnly<S> {
        OriginOnly(self.0.layer(inner))
    }
}

#[derive(Clone)]
pub struct OriginOnly<S>(Cors<S>);

/// Whether a request skips CORS: a `POST` that no browser sent (see the module's doc).
fn skips_cors<B>(request: &Request<B>) -> bool {
    request.method() == Method::POST && !request.headers().contains_key(header::ORIGIN)
}

impl<S, B, ResBody> Service<Request<B>> for OriginOnly<S>
where
    S: Service<Request<B>, Response = axum::http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<<Cors<S> as Service<Request<B>>>::Future, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        // `Cors` is ready exactly when the service it wraps is.
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if skips_cors(&request) {
            Either::Right(self.0.get_mut().call(request))
        } else {
            Either::Left(self.0.call(request))
        }
    }
}
