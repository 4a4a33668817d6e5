//! Authentication of the internal replication service: a shared token.
//!
//! The master sends `authorization: Bearer <REPLICATION_TOKEN>` on every replication call; a
//! secondary with a token set answers UNAUTHENTICATED to any call without exactly that token.
//! The comparison takes the same time wherever the first difference is, so the token cannot be
//! guessed byte by byte from response times.

use subtle::ConstantTimeEq;
use tonic::metadata::MetadataValue;
use tonic::{Request, Status};

/// The metadata key the token travels in.
pub const HEADER: &str = "authorization";

/// Adds the token to an outgoing replication call.
pub fn attach<T>(request: &mut Request<T>, token: Option<&str>) {
    if let Some(token) = token {
        if let Ok(value) = MetadataValue::try_from(format!("Bearer {token}")) {
            request.metadata_mut().insert(HEADER, value);
        }
    }
}

/// Checks an incoming replication call against the expected token (none: open).
pub fn check<T>(request: &Request<T>, expected: Option<&str>) -> Result<(), Status> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let presented = request
        .metadata()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| Status::unauthenticated("missing replication token"))?;
    if bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(Status::unauthenticated("wrong replication token"))
    }
}

/// A `REPLICATION_TOKEN` that cannot travel as a header value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("REPLICATION_TOKEN must be printable ASCII without spaces")]
pub struct InvalidToken;

/// A token must be usable as a header value; checked at start. Empty means unset.
pub fn validate(token: &str) -> Result<String, InvalidToken> {
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(InvalidToken);
    }
    Ok(token.to_owned())
}

/// A `REPLICATION_TOKEN_FILE` that gives no usable token.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read it: {0}")]
    Read(#[from] std::io::Error),
    #[error("it is empty")]
    Empty,
    #[error("its content: {0}")]
    Invalid(#[from] InvalidToken),
}

/// Reads the token from a file, as orchestrators hand out secrets (Docker's
/// `/run/secrets/<name>`, a mounted Kubernetes Secret), so that it is in no environment that
/// `docker inspect` shows. Trailing whitespace (the newline `echo` leaves) is dropped. An empty
/// file is refused: a file named on purpose is not a wish for open replication.
pub fn read_file(path: &str) -> Result<String, TokenFileError> {
    let content = std::fs::read_to_string(path)?;
    let token = validate(content.trim_end())?;
    if token.is_empty() {
        return Err(TokenFileError::Empty);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_token_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = |name: &str, content: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, content).expect("write");
            path.to_string_lossy().into_owned()
        };
        assert_eq!(
            read_file(&file("plain", "s3cret")).ok(),
            Some("s3cret".into())
        );
        assert_eq!(
            read_file(&file("echoed", "s3cret\r\n\n")).ok(),
            Some("s3cret".into())
        );
        assert!(matches!(
            read_file(&file("empty", "\n")),
            Err(TokenFileError::Empty)
        ));
        assert!(matches!(
            read_file(&file("spaced", "two words\n")),
            Err(TokenFileError::Invalid(InvalidToken))
        ));
        let missing = dir.path().join("missing").to_string_lossy().into_owned();
        assert!(matches!(read_file(&missing), Err(TokenFileError::Read(_))));
    }

    #[test]
    fn accepts_only_the_right_token() {
        let mut request = Request::new(());
        assert!(check(&request, None).is_ok());
        assert_eq!(
            check(&request, Some("s3cret")).map_err(|s| s.code()),
            Err(tonic::Code::Unauthenticated)
        );
        attach(&mut request, Some("wrong"));
        assert!(check(&request, Some("s3cret")).is_err());
        attach(&mut request, Some("s3cret"));
        assert!(check(&request, Some("s3cret")).is_ok());
        assert_eq!(validate("has space"), Err(InvalidToken));
        assert_eq!(validate("tab\there"), Err(InvalidToken));
        assert_eq!(validate(""), Ok(String::new()));
    }
}
