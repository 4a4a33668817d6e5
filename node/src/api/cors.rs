//! CORS: which web pages of other origins may call the JSON API and gRPC-Web
//! (`CORS_ORIGINS`).
//!
//! By default none: the browser client is served by nginx on the nodes' own origin, and a node
//! that let any origin in would let any web page its visitor opens append to a cluster that
//! visitor can reach. `CORS_ORIGINS` lists the exact origins allowed, or `*` for any; `null`
//! (sandboxed frames, `file:` pages) is never allowed, since any page can make itself `null`.
//!
//! The rules are tower-http's [`CorsLayer`]; this module only parses `CORS_ORIGINS` strictly
//! (a typo in an origin would otherwise silently allow nothing) and names the methods and
//! headers the JSON API and gRPC-Web need.

use axum::http::{header, HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The origins allowed to call the API from a browser (`CORS_ORIGINS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    /// `*`: every origin.
    Any,
    /// Exact origins such as `http://localhost:8080`.
    List(Vec<HeaderValue>),
}

/// Why a `CORS_ORIGINS` entry is not an exact origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{origin}` {problem}; want e.g. http://localhost:8080")]
pub struct BadOrigin {
    /// The entry as given.
    pub origin: String,
    pub problem: OriginProblem,
}

/// What is wrong with a [`BadOrigin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OriginProblem {
    #[error("may only stand alone, meaning every origin")]
    StarInList,
    #[error("is never allowed (any page can make its origin null)")]
    Null,
    #[error("is not an origin (scheme://host[:port])")]
    NotAnOrigin,
    #[error("is not an exact origin (lower-case scheme://host[:port], no path)")]
    NotExact,
}

/// Parses `CORS_ORIGINS`: `*`, or a comma-separated list of exact origins
/// (`scheme://host[:port]`, no path, never `null`).
pub fn parse_origins(value: &str) -> Result<CorsOrigins, BadOrigin> {
    if value.trim() == "*" {
        return Ok(CorsOrigins::Any);
    }
    value
        .split(',')
        .map(|origin| {
            let origin = origin.trim();
            let bad = |problem| BadOrigin {
                origin: origin.to_owned(),
                problem,
            };
            check_origin(origin).map_err(bad)?;
            HeaderValue::from_str(origin).map_err(|_| bad(OriginProblem::NotAnOrigin))
        })
        .collect::<Result<_, _>>()
        .map(CorsOrigins::List)
}

/// An origin as a browser sends it: `http` or `https`, a host, an optional port, nothing else.
fn check_origin(origin: &str) -> Result<(), OriginProblem> {
    if origin == "*" {
        return Err(OriginProblem::StarInList);
    }
    if origin.eq_ignore_ascii_case("null") {
        return Err(OriginProblem::Null);
    }
    let Some(authority) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return Err(OriginProblem::NotAnOrigin);
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
        return Err(OriginProblem::NotExact);
    }
    Ok(())
}

/// The API's CORS rules for `origins`: none at all when unset, else the listed origins (or
/// any), the methods and headers of the JSON API and gRPC-Web, and gRPC's status headers
/// readable by the page.
pub fn layer(origins: Option<&CorsOrigins>) -> Option<CorsLayer> {
    let allow = match origins? {
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::List(list) => AllowOrigin::list(list.iter().cloned()),
    };
    Some(
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
    )
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
