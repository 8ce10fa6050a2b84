//! Refusals as RFC 6750 answers: the status, `WWW-Authenticate`, and pushpull's JSON error body.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use pushpull_core::{Error, ErrorKind};

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 400, 401 or 403.
    pub status: StatusCode,
    /// The RFC 6750 error code: `invalid_request`, `invalid_token` or `insufficient_scope`;
    /// `None` for a request that carried no token at all.
    pub code: Option<&'static str>,
    /// What was wrong, in one line (never the token).
    pub message: String,
    /// With `insufficient_scope`: the right that was missing, such as `publish:orders:1`.
    pub scope: Option<String>,
}

/// The realm named in `WWW-Authenticate`.
pub const REALM: &str = "pushpull";

impl Refusal {
    /// No token, where one is needed: 401 without an error code (RFC 6750 section 3.1).
    pub fn missing(message: impl Into<String>) -> Self {
        Self { status: StatusCode::UNAUTHORIZED, code: None, message: message.into(), scope: None }
    }

    /// A token that cannot be used: malformed, badly signed, expired, of another issuer.
    pub fn invalid_token(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            code: Some("invalid_token"),
            message: message.into(),
            scope: None,
        }
    }

    /// A request that carries credentials in a way that cannot be read (two tokens, a
    /// non-Bearer scheme).
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: Some("invalid_request"),
            message: message.into(),
            scope: None,
        }
    }

    /// A valid token without the right the request needs.
    pub fn insufficient_scope(scope: String, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            code: Some("insufficient_scope"),
            message: message.into(),
            scope: Some(scope),
        }
    }

    /// The refusal of an error a [`Grant`](pushpull_http::Grant) check returned.
    pub fn from_error(error: &Error, scope: String) -> Self {
        match error.kind() {
            ErrorKind::Unauthorized => Self::invalid_token(error.message()),
            _ => Self::insufficient_scope(scope, error.message()),
        }
    }

    /// The pushpull error kind it maps to.
    pub fn kind(&self) -> ErrorKind {
        match self.status {
            StatusCode::UNAUTHORIZED => ErrorKind::Unauthorized,
            StatusCode::FORBIDDEN => ErrorKind::Forbidden,
            _ => ErrorKind::BadRequest,
        }
    }

    /// The `WWW-Authenticate` value: `Bearer realm="pushpull", error="…",
    /// error_description="…"`.
    pub fn challenge(&self) -> HeaderValue {
        let mut value = format!("Bearer realm=\"{REALM}\"");
        if let Some(code) = self.code {
            value.push_str(&format!(", error=\"{code}\""));
            // Quoted-string content: no quotes or backslashes, visible ASCII and spaces.
            let description: String = self
                .message
                .chars()
                .map(|c| if c == '"' || c == '\\' || !(' '..='~').contains(&c) { '\'' } else { c })
                .collect();
            value.push_str(&format!(", error_description=\"{description}\""));
        }
        if let Some(scope) = &self.scope {
            let scope: String = scope.chars().filter(|c| *c != '"' && *c != '\\').collect();
            value.push_str(&format!(", scope=\"{scope}\""));
        }
        HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
    }

    /// The JSON body: pushpull's error envelope plus the RFC 6750 code,
    /// `{"error":{"kind":"unauthorized","message":"…","bearer_error":"invalid_token"}}`.
    pub fn body(&self) -> Bytes {
        let mut detail = serde_json::json!({
            "kind": self.kind().as_str(),
            "message": self.message,
        });
        if let Some(code) = self.code {
            detail["bearer_error"] = code.into();
        }
        if let Some(scope) = &self.scope {
            detail["scope"] = scope.as_str().into();
        }
        serde_json::to_vec(&serde_json::json!({ "error": detail })).expect("encodes").into()
    }

    /// The whole response.
    pub fn response<B: From<Bytes>>(&self) -> Response<B> {
        let mut response = Response::new(B::from(self.body()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.status != StatusCode::BAD_REQUEST || self.code.is_some() {
            headers.insert(header::WWW_AUTHENTICATE, self.challenge());
        }
        response
    }
}
