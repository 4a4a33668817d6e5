//! CORS: which web pages of other origins may call the JSON API and gRPC-Web
//! (`CORS_ORIGINS`).
//!
//! By default none: the browser client is served by nginx on the nodes' own origin, and a node
//! that let any origin in would let any web page its visitor opens append to a cluster that
//! visitor can reach. `CORS_ORIGINS` lists the exact origins allowed, or `*` for any; `null`
//! (sandboxed frames, `file:` pages) is never allowed, since any page can make itself `null`.
//!
//! tower-http's [`CorsLayer`] adds `Vary` and `Access-Control-Expose-Headers` to every answer.
//! A browser sends `Origin` with every cross-origin request and with every `POST`, so a `POST`
//! without it comes from curl, a script or a server (the bulk of appends), and its answer is
//! never cached (a `POST`'s answer is not cacheable without explicit freshness, which replog
//! never gives). For those requests the headers are ~140 bytes of every append's answer that
//! both ends would build, send and parse for nothing, so [`OriginOnly`] skips the layer for them.
//! Everything else goes through the layer: every request with `Origin`, every `OPTIONS` (a
//! preflight), and every `GET`, whose answer may be cached and so must say that it varies with
//! `Origin`.

use axum::http::{header, HeaderName, HeaderValue, Method, Request};
use futures::future::Either;
use std::task::{Context, Poll};
use tower::{Layer, Service};
use tower_http::cors::{AllowOrigin, Cors, CorsLayer};

/// The origins allowed to call the API from a browser (`CORS_ORIGINS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    /// `*`: every origin.
    Any,
    /// Exact origins such as `http://localhost:8080`.
    List(Vec<HeaderValue>),
}

/// Parses `CORS_ORIGINS`: `*`, or a comma-separated list of exact origins
/// (`scheme://host[:port]`, no path, never `null`).
pub fn parse_origins(value: &str) -> Result<CorsOrigins, String> {
    if value.trim() == "*" {
        return Ok(CorsOrigins::Any);
    }
    value
        .split(',')
        .map(|origin| {
            let origin = origin.trim();
            check_origin(origin)?;
            HeaderValue::from_str(origin).map_err(|_| format!("`{origin}` is not an origin"))
        })
        .collect::<Result<_, _>>()
        .map(CorsOrigins::List)
}

/// An origin as a browser sends it: `http` or `https`, a host, an optional port, nothing else.
fn check_origin(origin: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("`{origin}` {why}; want e.g. http://localhost:8080"));
    if origin == "*" {
        return bad("may only stand alone, meaning every origin");
    }
    if origin.eq_ignore_ascii_case("null") {
        return bad("is never allowed (any page can make its origin null)");
    }
    let Some(authority) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return bad("is not an origin (scheme://host[:port])");
    };
    // An IPv6 host is bracketed (`[::1]:8080`); any other host has no colon of its own.
    let host_end = authority.rfind(']').unwrap_or(0);
    let (host, port) = match authority[host_end..].find(':') {
        Some(colon) => (
            &authority[..host_end + colon],
            Some(&authority[host_end + colon + 1..]),
        ),
        None => (authority, None),
    };
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    };
    let port_ok = port.is_none_or(|port| port.parse::<u16>().is_ok_and(|port| port != 0));
    if !host_ok || !port_ok || origin.chars().any(|c| c.is_ascii_uppercase()) {
        return bad("is not an exact origin (lower-case scheme://host[:port], no path)");
    }
    Ok(())
}

/// The API's CORS rules for `origins`: none at all when unset, else the listed origins (or
/// any), the methods and headers of the JSON API and gRPC-Web, and gRPC's status headers
/// readable by the page.
pub fn layer(origins: Option<&CorsOrigins>) -> Option<OriginOnlyLayer> {
    let allow = match origins? {
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::List(list) => AllowOrigin::list(list.iter().cloned()),
    };
    Some(OriginOnlyLayer(
        CorsLayer::new()
            .allow_origin(allow)
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
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_origins_only() {
        assert_eq!(parse_origins(" * "), Ok(CorsOrigins::Any));
        assert_eq!(
            parse_origins("http://localhost:8080, https://app.example"),
            Ok(CorsOrigins::List(vec![
                HeaderValue::from_static("http://localhost:8080"),
                HeaderValue::from_static("https://app.example"),
            ]))
        );
        assert!(parse_origins("http://[::1]:8080").is_ok());
        for bad in [
            "null",
            "NULL",
            "",
            "http://a.example,",
            "*,http://a.example",
            "a.example",
            "ftp://a.example",
            "http://a.example/",
            "http://a.example/app",
            "http://a.example:0",
            "http://a.example:99999",
            "http://A.example",
            "http://",
        ] {
            assert!(parse_origins(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
