//! Reading what a request says: topic, cursor, limit, body.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::header;
use http_body_util::BodyExt;
use pushpull_core::{
    Cursor, CursorSet, Error, ErrorKind, FollowRequest, Publication, Selector, SetKeys, Topic,
};

use crate::grant::{Grant, TopicPattern};
use crate::router::{HttpRequest, Params, query_params};

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

/// The most `topic` parameters one request may name, whatever the limit on topics followed.
const MAX_SELECTORS: usize = 1024;

/// What a request to follow many topics on one connection asks (`GET /v1/events`,
/// `/v1/stream`, `/v1/messages`): the `topic` parameters, each `NAME`, `PREFIX*`, or either
/// with its own start after `@` (`ticker@last:5`); where they start (`resume`: a cursor set,
/// `@…`, resumes them all; anything else is the start of every topic without its own,
/// `default` when absent); at most `max_topics` topics.
///
/// A request that names no topic follows what its token may read (the `subscribe` claim's
/// names and prefixes), as a server-decided subscription; without a token that is a 400. Its
/// cursor set names its topics (`@=…`), so that a renewed token whose rights differ resumes
/// what both grant; a request's own selectors are written by index. Each selector needs the
/// right to read it: a prefix, a right that covers the whole prefix.
pub fn follow_request(
    request: &HttpRequest,
    resume: Option<&str>,
    default: Cursor,
    max_topics: usize,
) -> Result<(FollowRequest, SetKeys), Error> {
    let query = request.uri().query().unwrap_or_default();
    let mut selectors = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key != "topic" {
            continue;
        }
        if selectors.len() == MAX_SELECTORS {
            return Err(Error::bad_request(format!(
                "at most {MAX_SELECTORS} topic parameters in one request"
            )));
        }
        let (name, start) = match value.split_once('@') {
            Some((name, start)) => (name, Some(start.parse::<Cursor>()?)),
            None => (&*value, None),
        };
        selectors.push((name.parse::<Selector>()?, start));
    }
    let grant = Grant::of(request);
    let server_decided = selectors.is_empty();
    if server_decided {
        let Some(grant) = grant else {
            return Err(Error::bad_request(
                "name at least one topic: ?topic=NAME or ?topic=PREFIX* (repeatable)",
            ));
        };
        selectors = granted(grant)?.into_iter().map(|selector| (selector, None)).collect();
    }
    if let Some(grant) = grant {
        for (selector, _) in &selectors {
            grant.check_selector(selector)?;
        }
    }
    let keys: Vec<Selector> = selectors.iter().map(|(s, _)| s.clone()).collect();
    let keys = match server_decided {
        true => SetKeys::Named(keys),
        false => SetKeys::Indexed(keys),
    };
    let (resume, default) = match resume {
        Some(text) if CursorSet::is_set(text) => (Some(keys.parse(text)?), Cursor::Latest),
        Some(text) => (None, text.parse::<Cursor>()?),
        None => (None, default),
    };
    let follow = FollowRequest {
        selectors: selectors.into_iter().map(|(s, start)| (s, start.unwrap_or(default))).collect(),
        resume,
        max_topics,
    };
    Ok((follow, keys))
}

/// What a server-decided subscription follows: the names and prefixes the token may read (its
/// `subscribe` claim); a token that may read nothing is refused.
pub fn granted(grant: &Grant) -> Result<Vec<Selector>, Error> {
    let mut selectors = Vec::new();
    for pattern in &grant.subscribe {
        selectors.push(match pattern {
            TopicPattern::Any => Selector::Prefix("".into()),
            TopicPattern::Prefix(prefix) => format!("{prefix}*").parse()?,
            TopicPattern::Exact(name) => Selector::Topic(Topic::new(name)?),
        });
    }
    if selectors.is_empty() {
        return Err(Error::new(ErrorKind::Forbidden, "the token grants no topic to read"));
    }
    Ok(selectors)
}

/// Where a request to follow many topics says to start: `after`, else the `Pushpull-Cursor`
/// header; `None` when neither is there.
pub fn resume_text(request: &HttpRequest) -> Result<Option<String>, Error> {
    if let Some(text) = query_params(request).remove("after") {
        return Ok(Some(text));
    }
    match request.headers().get(CURSOR_HEADER) {
        None => Ok(None),
        Some(value) => value.to_str().map(|v| Some(v.to_owned())).map_err(|_| {
            Error::new(ErrorKind::InvalidCursor, "the Pushpull-Cursor header is not ASCII")
        }),
    }
}
