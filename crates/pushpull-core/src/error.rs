//! The one public error type.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

/// What went wrong, as a category a program can act on.
///
/// The kind is part of the API; an error's message text is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A topic name broke the rules documented on [`Topic`](crate::Topic).
    InvalidTopic,
    /// A cursor's text form could not be parsed.
    InvalidCursor,
    /// A payload or request was larger than the configured limit.
    TooLarge,
    /// A request was malformed or an argument out of range.
    BadRequest,
    /// A configuration value was missing, unknown or out of range.
    Config,
    /// The operation is not supported by this transport or broker.
    Unsupported,
    /// Credentials were missing or wrong.
    Unauthorized,
    /// The request is understood and refused: its credentials or origin do not allow it.
    Forbidden,
    /// The peer could not be reached.
    Connect,
    /// The peer answered something this side does not understand.
    Protocol,
    /// The operation did not finish in time.
    Timeout,
    /// The peer was too slow to send its request (its body, say): the peer's doing, not a
    /// server's (HTTP 408).
    RequestTimeout,
    /// The client, server or subscription has been closed.
    Closed,
    /// The broker's storage failed.
    Backend,
    /// Too many requests (publishes, connections) for the client's allowance: retry after
    /// the delay the error carries (HTTP 429).
    RateLimited,
}

impl ErrorKind {
    /// The stable `snake_case` name used on the wire (for example in JSON error bodies).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidTopic => "invalid_topic",
            Self::InvalidCursor => "invalid_cursor",
            Self::TooLarge => "too_large",
            Self::BadRequest => "bad_request",
            Self::Config => "config",
            Self::Unsupported => "unsupported",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::Connect => "connect",
            Self::Protocol => "protocol",
            Self::Timeout => "timeout",
            Self::RequestTimeout => "request_timeout",
            Self::Closed => "closed",
            Self::Backend => "backend",
            Self::RateLimited => "rate_limited",
        }
    }

    /// The kind with the wire name `name`, if there is one.
    pub fn from_wire(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    /// Every kind, for tables and tests.
    pub const ALL: [ErrorKind; 15] = [
        Self::InvalidTopic,
        Self::InvalidCursor,
        Self::TooLarge,
        Self::BadRequest,
        Self::Config,
        Self::Unsupported,
        Self::Unauthorized,
        Self::Forbidden,
        Self::Connect,
        Self::Protocol,
        Self::Timeout,
        Self::RequestTimeout,
        Self::Closed,
        Self::Backend,
        Self::RateLimited,
    ];

    /// Whether an error of this kind is, by default, worth retrying unchanged.
    fn retryable_by_default(self) -> bool {
        matches!(
            self,
            Self::Connect
                | Self::Timeout
                | Self::RequestTimeout
                | Self::Backend
                | Self::RateLimited
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of every pushpull operation, whatever the transport or broker.
///
/// It carries a [kind](ErrorKind), the name of the transport that raised it (if any),
/// whether retrying the same operation can help, a one-line message and an optional source.
///
/// ```
/// use pushpull_core::{Error, ErrorKind};
/// let err = Error::new(ErrorKind::Connect, "connection refused").with_transport("poll");
/// assert!(err.is_retryable());
/// assert_eq!(err.to_string(), "poll: connection refused");
/// ```
pub struct Error {
    kind: ErrorKind,
    transport: Option<Cow<'static, str>>,
    retryable: bool,
    retry_after: Option<Duration>,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl Error {
    /// An error of `kind` with a one-line `message`; retryable as the kind suggests.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.contains('\n') {
            message = message.replace(['\r', '\n'], " ");
        }
        Self {
            kind,
            transport: None,
            retryable: kind.retryable_by_default(),
            retry_after: None,
            message,
            source: None,
        }
    }

    /// Names the transport (or broker) that raised the error.
    pub fn with_transport(mut self, transport: impl Into<Cow<'static, str>>) -> Self {
        self.transport = Some(transport.into());
        self
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Overrides whether a retry can help.
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// Records how long the peer asked to be left alone before a retry (an HTTP `Retry-After`).
    pub fn with_retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    /// Shorthand for an [`ErrorKind::Unsupported`] error naming the operation and transport.
    pub fn unsupported(operation: &str, transport: &'static str) -> Self {
        Self::new(ErrorKind::Unsupported, format!("{operation} is not supported by {transport}"))
            .with_transport(transport)
    }

    /// Shorthand for an [`ErrorKind::BadRequest`] error.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }

    /// The category.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The transport or broker that raised it, if known.
    pub fn transport(&self) -> Option<&str> {
        self.transport.as_deref()
    }

    /// The one-line message, without the transport prefix.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether retrying the same operation, unchanged, can succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// How long the peer asked to wait before retrying, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Whether the error is a time-out.
    pub fn is_timeout(&self) -> bool {
        self.kind == ErrorKind::Timeout
    }

    /// Whether the error means the client, server or subscription is closed.
    pub fn is_closed(&self) -> bool {
        self.kind == ErrorKind::Closed
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(transport) = &self.transport {
            write!(f, "{transport}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Error");
        s.field("kind", &self.kind);
        if let Some(transport) = &self.transport {
            s.field("transport", transport);
        }
        s.field("retryable", &self.retryable);
        if let Some(delay) = self.retry_after {
            s.field("retry_after", &delay);
        }
        s.field("message", &self.message);
        if let Some(source) = &self.source {
            s.field("source", source);
        }
        s.finish()
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|s| s as &(dyn StdError + 'static))
    }
}

/// `Result` with pushpull's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip() {
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_wire(kind.as_str()), Some(kind));
        }
        assert_eq!(ErrorKind::from_wire("nonsense"), None);
    }

    #[test]
    fn message_is_one_line() {
        let err = Error::new(ErrorKind::Protocol, "first\nsecond\r\nthird");
        assert!(!err.to_string().contains('\n'));
        assert!(!err.is_retryable());
    }
}
