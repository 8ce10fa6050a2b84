//! Cross-origin requests from browsers (CORS), opt-in by origin.

use http::{HeaderMap, HeaderValue, Method, header};

/// Which browser origins may call the API, and what they may send and read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cors {
    origins: Vec<String>,
}

/// Request headers a browser may send (beyond the CORS-safelisted ones).
const ALLOW_HEADERS: &str = "authorization, content-type, last-event-id, if-none-match, idempotency-key, pushpull-event, \
     pushpull-cursor";
/// Response headers a browser script may read.
const EXPOSE_HEADERS: &str = "etag, retry-after, pushpull-poll-interval-ms, pushpull-wait-ms";

impl Cors {
    /// Allows `origins` (exact, such as `https://app.example.com`, or `*` for any).
    pub fn new(origins: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self { origins: origins.into_iter().map(Into::into).collect() }
    }

    /// Whether any origin is allowed at all.
    pub fn is_enabled(&self) -> bool {
        !self.origins.is_empty()
    }

    /// Whether a page of `origin` is allowed (listed, or `*` listed).
    pub fn allows(&self, origin: &str) -> bool {
        self.origins.iter().any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    }

    /// The `Access-Control-Allow-Origin` value for a request from `origin`, if it is allowed.
    fn allow(&self, origin: &str) -> Option<HeaderValue> {
        if self.origins.iter().any(|o| o == "*") {
            return Some(HeaderValue::from_static("*"));
        }
        self.allows(origin).then(|| HeaderValue::from_str(origin).ok()).flatten()
    }

    /// Adds the headers a browser needs to hand a response to a script, for an allowed origin.
    pub fn decorate(&self, request_origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        let Some(allow) = request_origin.and_then(|o| o.to_str().ok()).and_then(|o| self.allow(o))
        else {
            return;
        };
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
        headers.append(header::VARY, HeaderValue::from_static("origin"));
    }

    /// The headers answering a preflight from `origin` for a route that allows `methods`, or
    /// `None` when the origin is not allowed.
    pub fn preflight(&self, origin: Option<&HeaderValue>, methods: &[Method]) -> Option<HeaderMap> {
        let allow = origin.and_then(|o| o.to_str().ok()).and_then(|o| self.allow(o))?;
        let methods = methods.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_str(&methods).ok()?);
        headers
            .insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOW_HEADERS));
        headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        headers.insert(header::VARY, HeaderValue::from_static("origin"));
        Some(headers)
    }
}
