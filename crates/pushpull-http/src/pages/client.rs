//! The page route's client side: one page request, on any transport's [`HttpClient`].

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::Full;
use pushpull_core::{Cursor, Delivery, Error, ErrorKind, Page, Topic};

use super::wire::{POLL_INTERVAL_HEADER, WAIT_HEADER, messages_path, parse_interval_hint};
use crate::client::HttpClient;

/// The answer to one page request.
#[derive(Debug)]
pub enum PageAnswer {
    /// A page.
    Page {
        /// The page.
        page: Page,
        /// Its `ETag`, for the next request's `If-None-Match`.
        etag: Option<HeaderValue>,
        /// The server's poll interval hint.
        hint: Option<Duration>,
        /// Whether the server holds requests (it answered with `Pushpull-Wait-Ms`).
        held: bool,
    },
    /// `304 Not Modified`: nothing after the cursor.
    NotModified {
        /// The server's poll interval hint.
        hint: Option<Duration>,
        /// Whether the server holds requests.
        held: bool,
    },
}

/// One page request on `http` (whose timeout and transport name apply): a page, a 304, or the
/// error (with the `Retry-After` delay the server asked for, if any). With `wait`, a long poll;
/// with `client`, the poll keeps that client a member of the topic's presence.
pub async fn request_page(
    http: &HttpClient,
    topic: &Topic,
    cursor: Cursor,
    limit: usize,
    etag: Option<&HeaderValue>,
    wait: Option<Duration>,
    client: Option<&str>,
) -> Result<PageAnswer, Error> {
    let mut path = format!("{}?after={cursor}&limit={limit}", messages_path(topic.as_str()));
    if let Some(wait) = wait {
        path.push_str(&format!("&wait={:.3}", wait.as_secs_f64()));
    }
    add_client(&mut path, client);
    let (response, timeout, hint, held) = send(http, &path, etag, wait).await?;
    match response.status() {
        StatusCode::OK => {
            let etag = response.headers().get(header::ETAG).cloned();
            let body = http.read_body(response, timeout).await?;
            let page =
                crate::wire::decode_page(&body).map_err(|e| e.with_transport(http.transport()))?;
            Ok(PageAnswer::Page { page, etag, hint, held })
        }
        StatusCode::NOT_MODIFIED => Ok(PageAnswer::NotModified { hint, held }),
        _ => Err(http.error_for(response).await),
    }
}

/// Adds the `client` parameter: the poller's id as a member of the topics' presence.
fn add_client(path: &mut String, client: Option<&str>) {
    if let Some(client) = client {
        let client =
            percent_encoding::utf8_percent_encode(client, percent_encoding::NON_ALPHANUMERIC);
        path.push_str(&format!("&{}={client}", crate::presence::CLIENT_PARAM));
    }
}

/// Sends a page request (a held one, with `wait`): the answer, the time it may take to read,
/// the server's poll interval hint and whether it holds requests.
async fn send(
    http: &HttpClient,
    path: &str,
    etag: Option<&HeaderValue>,
    wait: Option<Duration>,
) -> Result<(http::Response<hyper::body::Incoming>, Duration, Option<Duration>, bool), Error> {
    let make = || {
        let mut request =
            http.request(Method::GET, path).header(header::ACCEPT, "application/json");
        if http.config().accept_gzip {
            request = request.header(header::ACCEPT_ENCODING, crate::gzip::GZIP);
        }
        if let Some(etag) = etag {
            request = request.header(header::IF_NONE_MATCH, etag);
        }
        request.body(Full::new(Bytes::new())).map_err(|e| {
            http.error(ErrorKind::BadRequest, format!("cannot build the request: {e}"))
        })
    };
    let timeout = http.config().request_timeout + wait.unwrap_or_default();
    let response = http.send_idempotent(make, timeout).await?;
    let held = response.headers().contains_key(WAIT_HEADER);
    let hint = response
        .headers()
        .get(POLL_INTERVAL_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_interval_hint);
    Ok((response, timeout, hint, held))
}

/// [`send`]s a request that must answer 200: its body, the poll interval hint and whether the
/// server holds requests; any other status is the error it stands for.
async fn read_ok(
    http: &HttpClient,
    path: &str,
    wait: Option<Duration>,
) -> Result<(Bytes, Option<Duration>, bool), Error> {
    let (response, timeout, hint, held) = send(http, path, None, wait).await?;
    if response.status() != StatusCode::OK {
        return Err(http.error_for(response).await);
    }
    Ok((http.read_body(response, timeout).await?, hint, held))
}

/// A page of many topics ([`MANY_MESSAGES_PATH`](super::MANY_MESSAGES_PATH)).
#[derive(Debug)]
pub struct ManyPageAnswer {
    /// Its deliveries: each topic's gap, then the messages, each topic's in its order.
    pub deliveries: Vec<Delivery>,
    /// The cursor set to ask from next (its text).
    pub next: String,
    /// The server's poll interval hint.
    pub hint: Option<Duration>,
    /// Whether the server holds requests (it answered with `Pushpull-Wait-Ms`).
    pub held: bool,
}

/// One request for a page of many topics: `query` names the topics and where they start
/// ([`ManyQuery::query`](crate::ManyQuery::query)). With `wait`, a long poll.
pub async fn request_many_page(
    http: &HttpClient,
    query: &str,
    limit: usize,
    wait: Option<Duration>,
    client: Option<&str>,
) -> Result<ManyPageAnswer, Error> {
    let mut path = format!("{}?{query}&limit={limit}", super::MANY_MESSAGES_PATH);
    if let Some(wait) = wait {
        path.push_str(&format!("&wait={:.3}", wait.as_secs_f64()));
    }
    add_client(&mut path, client);
    let (body, hint, held) = read_ok(http, &path, wait).await?;
    let (deliveries, next) =
        crate::wire::decode_many_page(&body).map_err(|e| e.with_transport(http.transport()))?;
    Ok(ManyPageAnswer { deliveries, next, hint, held })
}

/// `Fetch::fetch_newest_first` over the page route, in one request
/// (`?order=desc&before=…&limit=…`): the newest messages back from `before`, newest first.
pub async fn fetch_newest_first_page(
    http: &HttpClient,
    topic: &Topic,
    before: Cursor,
    limit: usize,
) -> Result<Page, Error> {
    if limit == 0 {
        return Err(http.error(ErrorKind::BadRequest, "limit must be at least 1"));
    }
    let path =
        format!("{}?order=desc&before={before}&limit={limit}", messages_path(topic.as_str()));
    let (body, _, _) = read_ok(http, &path, None).await?;
    crate::wire::decode_page(&body).map_err(|e| e.with_transport(http.transport()))
}

/// `Fetch` over the page route, on any transport's `HttpClient`: one request, answered at once.
/// Every HTTP transport's client implements `fetch` with it.
pub async fn fetch_page(
    http: &HttpClient,
    topic: &Topic,
    cursor: Cursor,
    limit: usize,
) -> Result<Page, Error> {
    if limit == 0 {
        return Err(http.error(ErrorKind::BadRequest, "limit must be at least 1"));
    }
    match request_page(http, topic, cursor, limit, None, None, None).await {
        Ok(PageAnswer::Page { page, .. }) => Ok(page),
        Ok(PageAnswer::NotModified { .. }) => {
            Err(http.error(ErrorKind::Protocol, "304 to a request without If-None-Match"))
        }
        Err(error) => Err(error),
    }
}
