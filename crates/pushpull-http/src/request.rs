//! Reading what a request says: topic, cursor, limit, body.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::header;
use http_body_util::BodyExt;
use pushpull_core::{Cursor, Error, ErrorKind, Publication, Topic};

use crate::router::{HttpRequest, Params};

/// The header that carries a cursor when the query does not.
pub const CURSOR_HEADER: &str = "pushpull-cursor";

/// The `{topic}` of the route, validated.
pub fn topic(params: &Params) -> Result<Topic, Error> {
    Topic::new(params.get("topic").unwrap_or_default())
}

/// The cursor from the query parameter `after`, else the `Pushpull-Cursor` header, else `default`.
pub fn cursor(
    request: &HttpRequest,
    query: &HashMap<String, String>,
    default: Cursor,
) -> Result<Cursor, Error> {
    if let Some(text) = query.get("after") {
        return text.parse();
    }
    match request.headers().get(CURSOR_HEADER) {
        Some(value) => value
            .to_str()
            .map_err(|_| {
                Error::new(ErrorKind::InvalidCursor, "the Pushpull-Cursor header is not ASCII")
            })?
            .parse(),
        None => Ok(default),
    }
}

/// The `limit` query parameter: 1 to `max`, `default` when absent.
pub fn limit(query: &HashMap<String, String>, default: usize, max: usize) -> Result<usize, Error> {
    let limit = match query.get("limit") {
        None => None,
        Some(text) => Some(
            text.parse()
                .map_err(|_| Error::bad_request(format!("limit {text:?} is not a whole number")))?,
        ),
    };
    page_limit(limit, default, max)
}

/// A page size a request asked for (over any protocol): 1 to `max`, `default` when absent.
pub fn page_limit(limit: Option<usize>, default: usize, max: usize) -> Result<usize, Error> {
    let limit = limit.unwrap_or(default);
    if limit == 0 || limit > max {
        return Err(Error::bad_request(format!("limit must be between 1 and {max}, got {limit}")));
    }
    Ok(limit)
}

/// A publication of `payload` with the labels a request gave, each optional (over any
/// protocol: HTTP headers, WebSocket fields). The broker checks them when it publishes.
pub fn publication(
    payload: Bytes,
    event: Option<&str>,
    content_type: Option<&str>,
    key: Option<&str>,
) -> Publication {
    let mut publication = Publication::new(payload);
    if let Some(event) = event {
        publication = publication.event(event);
    }
    if let Some(content_type) = content_type {
        publication = publication.content_type(content_type);
    }
    if let Some(key) = key {
        publication = publication.idempotency_key(key);
    }
    publication
}

/// Reads the whole body, refusing more than `max` bytes (413) and taking longer than `timeout`.
pub fn body(
    request: HttpRequest,
    max: usize,
    timeout: Duration,
) -> futures::future::BoxFuture<'static, Result<(http::request::Parts, Bytes), Error>> {
    Box::pin(read_body(request, max, timeout))
}

/// How much of an oversized body, past the limit, is read and thrown away so that the client,
/// still sending, receives the 413 instead of a reset connection. Past this the connection is
/// simply closed.
const DRAIN_LIMIT: usize = 16 * 1024 * 1024;

async fn read_body(
    request: HttpRequest,
    max: usize,
    timeout: Duration,
) -> Result<(http::request::Parts, Bytes), Error> {
    let too_large = |size: &dyn std::fmt::Display| {
        Error::new(
            ErrorKind::TooLarge,
            format!("body of {size} bytes is over the limit of {max} bytes"),
        )
    };
    let declared = match request.headers().get(header::CONTENT_LENGTH) {
        None => None,
        Some(length) => Some(
            length
                .to_str()
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| Error::bad_request("Content-Length is not a number"))?,
        ),
    };
    let (parts, mut body) = request.into_parts();
    let declared_too_large = declared.is_some_and(|d| d > max as u64);
    // A body declared too large is refused at once: what the client sends meanwhile is read
    // (and dropped) only briefly, so it sees the 413 rather than a reset connection.
    let timeout =
        if declared_too_large { timeout.min(Duration::from_millis(500)) } else { timeout };
    let read = async move {
        // Sized from Content-Length when it is declared and allowed, so a large body is
        // received into one buffer instead of one that doubles (and copies) as it grows.
        let capacity = declared.filter(|d| *d <= max as u64).map_or(0, |d| d as usize);
        let mut collected = bytes::BytesMut::with_capacity(capacity);
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|e| Error::bad_request(format!("the body could not be read: {e}")))?;
            let Ok(data) = frame.into_data() else { continue };
            seen += data.len();
            if seen <= max && !declared_too_large {
                collected.extend_from_slice(&data);
            } else if seen > max.saturating_add(DRAIN_LIMIT) {
                // Too large, and too much to keep draining: stop; the connection is closed.
                break;
            }
            // Otherwise too large: read and discard, so the client gets the 413.
        }
        if declared_too_large {
            return Err(too_large(&declared.unwrap_or_default()));
        }
        if seen > max {
            return Err(too_large(&seen));
        }
        Ok(collected.freeze())
    };
    match tokio::time::timeout(timeout, read).await {
        Err(_) if declared_too_large => Err(too_large(&declared.unwrap_or_default())),
        Err(_) => Err(Error::new(
            ErrorKind::RequestTimeout,
            format!("the body did not arrive within {timeout:?}"),
        )),
        Ok(result) => Ok((parts, result?)),
    }
}
