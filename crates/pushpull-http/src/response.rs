//! Responses, and the one mapping between error kinds and HTTP statuses.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use pushpull_core::{Error, ErrorKind};

use crate::wire;

/// The response body type of every pushpull handler.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// An empty body.
pub fn empty() -> Body {
    Empty::new().boxed_unsync()
}

/// A body of `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// The HTTP status for an error of `kind`.
///
/// | kind | status |
/// |---|---|
/// | `invalid_topic`, `invalid_cursor`, `bad_request` | 400 |
/// | `unauthorized` | 401 |
/// | `forbidden` | 403 |
/// | `too_large` | 413 |
/// | `config` | 500 |
/// | `unsupported` | 501 |
/// | `connect`, `protocol` | 502 |
/// | `closed`, `backend` | 503 |
/// | `request_timeout` | 408 |
/// | `rate_limited` | 429 |
/// | `timeout` | 504 |
pub fn status_for(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidTopic | ErrorKind::InvalidCursor | ErrorKind::BadRequest => {
            StatusCode::BAD_REQUEST
        }
        ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Unsupported => StatusCode::NOT_IMPLEMENTED,
        ErrorKind::Connect | ErrorKind::Protocol => StatusCode::BAD_GATEWAY,
        ErrorKind::Closed | ErrorKind::Backend => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The response for `error`: its status and `{"error":{"kind":…,"message":…}}`. A 503 that a
/// retry can fix (the broker's storage is away) says when to retry: `Retry-After: 1`, or what
/// the error asked for.
pub fn error_response(error: &Error) -> Response<Body> {
    let status = status_for(error.kind());
    let mut response = json_error(status, error.kind().as_str(), error.message());
    let asks_to_wait = status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::SERVICE_UNAVAILABLE && error.is_retryable());
    if asks_to_wait {
        let seconds = error.retry_after().map_or(1, |d| d.as_secs().max(1));
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if status == StatusCode::UNAUTHORIZED {
        // RFC 6750 section 3: a 401 names the scheme to authenticate with.
        let challenge = HeaderValue::from_static("Bearer realm=\"pushpull\"");
        response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
    }
    response
}

/// A JSON error response with an explicit status and kind name.
pub fn json_error(status: StatusCode, kind: &str, message: &str) -> Response<Body> {
    let mut response = json(status, wire::encode_error(kind, message));
    // Errors are never cached, whatever the route says.
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A JSON response.
pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    // Room for what a page adds (validators, caching, hints, CORS): made once, not grown.
    *response.headers_mut() = http::HeaderMap::with_capacity(12);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Whether a request answered with `status` can succeed if sent again unchanged: 408, 425, 429
/// and every 5xx but 501 (Not Implemented) and 505 (HTTP Version Not Supported) — what servers
/// and load balancers answer while overloaded, restarting or being deployed. Anything else
/// (400, 401, 403, 404, 410, …) a retry cannot change.
pub fn status_is_retryable(status: StatusCode) -> bool {
    match status.as_u16() {
        408 | 425 | 429 => true,
        501 | 505 => false,
        code => (500..600).contains(&code),
    }
}

/// The error a client should raise for an error response.
///
/// A JSON error body gives the kind and message; anything else (a proxy's HTML page, say) is
/// judged by the status alone. Whether a retry can help depends on the status only: see
/// [`status_is_retryable`].
pub fn error_from_response(status: StatusCode, body: &[u8]) -> Error {
    let retryable = status_is_retryable(status);
    let (kind, message) = match wire::decode_error(body) {
        Some(detail) => {
            let kind = ErrorKind::from_wire(&detail.kind).unwrap_or(ErrorKind::Protocol);
            (kind, format!("server answered {}: {}", status.as_u16(), detail.message))
        }
        None => {
            let kind = match status.as_u16() {
                400 => ErrorKind::BadRequest,
                401 => ErrorKind::Unauthorized,
                403 => ErrorKind::Forbidden,
                413 => ErrorKind::TooLarge,
                408 => ErrorKind::RequestTimeout,
                504 => ErrorKind::Timeout,
                429 => ErrorKind::RateLimited,
                502 | 503 => ErrorKind::Backend,
                _ => ErrorKind::Protocol,
            };
            let snippet: String = String::from_utf8_lossy(body).chars().take(120).collect();
            (kind, format!("server answered {status}: {}", snippet.trim()))
        }
    };
    Error::new(kind, message).with_retryable(retryable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_status_and_comes_back() {
        for kind in ErrorKind::ALL {
            let status = status_for(kind);
            let body = wire::encode_error(kind.as_str(), "why");
            let back = error_from_response(status, &body);
            assert_eq!(back.kind(), kind);
            assert!(back.message().ends_with("why"));
        }
    }

    #[test]
    fn foreign_error_pages_are_judged_by_status() {
        let err = error_from_response(StatusCode::BAD_GATEWAY, b"<html>nginx</html>");
        assert_eq!(err.kind(), ErrorKind::Backend);
        assert!(err.is_retryable());
        let err = error_from_response(StatusCode::NOT_FOUND, b"not here");
        assert_eq!(err.kind(), ErrorKind::Protocol);
        assert!(!err.is_retryable());
    }

    #[test]
    fn what_a_retry_can_change() {
        for code in [408, 425, 429, 500, 502, 503, 504, 507, 599] {
            let status = StatusCode::from_u16(code).unwrap();
            assert!(status_is_retryable(status), "{code}");
            assert!(error_from_response(status, b"").is_retryable(), "{code}");
        }
        for code in [200, 204, 301, 400, 401, 403, 404, 405, 410, 413, 501, 505] {
            let status = StatusCode::from_u16(code).unwrap();
            assert!(!status_is_retryable(status), "{code}");
        }
    }
}
