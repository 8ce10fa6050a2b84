//! The server half: the page request, held until a message arrives or the wait passes.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use http::{HeaderValue, Method};
use pushpull_core::{Client, Error, Page};
use pushpull_http::{Gauge, HandlerResult, HttpRequest, Params, Route, Router, Shutdown};
use pushpull_poll::wire::WAIT_HEADER;
use pushpull_poll::{MESSAGES_PATH, PageRequest, page_response};

use crate::config::ServerConfig;

/// The long-polling server over a broker: a cheap-`Clone` handle whose [`routes`](Self::routes)
/// serve `GET /v1/topics/{topic}/messages` with an optional `wait`.
///
/// Without `wait` (or with `wait=0`) the request is answered at once, exactly as short polling
/// answers it. With `wait=SECONDS` and nothing after the cursor, the request is held until a
/// message is published or the wait passes (cut to `max_wait`), then answered; the response
/// carries `Pushpull-Wait-Ms`, the wait applied. A held request is a future parked on the
/// topic's wake-up signal: no thread, no buffer, and dropped the moment its client hangs up.
#[derive(Clone)]
pub struct Server {
    broker: Arc<dyn Client>,
    config: Arc<ServerConfig>,
    held: Gauge,
}

impl Server {
    /// A server over `broker`.
    pub fn new(broker: Arc<dyn Client>, config: ServerConfig) -> Result<Self, Error> {
        config.validate()?;
        Ok(Self { broker, config: Arc::new(config), held: Gauge::new() })
    }

    /// Requests held right now.
    pub fn held_requests(&self) -> usize {
        self.held.get()
    }

    /// The page route (it also answers plain short polls), to mount beside other transports'.
    pub fn routes(&self) -> Vec<Route> {
        let server = self.clone();
        vec![Route::new(Method::GET, MESSAGES_PATH, move |req: HttpRequest, params: Params| {
            let server = server.clone();
            async move { server.answer(req, params).await }
        })]
    }

    /// A router with publishing and the page route.
    pub fn router(&self) -> Router {
        pushpull_http::publishing(self.broker.clone()).with(self.routes())
    }

    async fn answer(&self, req: HttpRequest, params: Params) -> HandlerResult {
        let request = PageRequest::parse(&req, &params, &self.config.page)?;
        let wait = wait(&request, self.config.max_wait)?;
        let page = self.broker.fetch(&request.topic, request.cursor, request.limit).await?;
        let page = match wait {
            Some(wait) if page.is_empty() && !wait.is_zero() => {
                self.hold(&request, page, wait, Shutdown::of(&req)).await?
            }
            _ => page,
        };
        let mut response = page_response(page, &request, &self.config.page);
        if let Some(wait) = wait {
            response.headers_mut().insert(WAIT_HEADER, HeaderValue::from(wait.as_millis() as u64));
        }
        Ok(response)
    }

    /// Waits for the first message after the (empty) `page`, then answers a page from there.
    async fn hold(
        &self,
        request: &PageRequest,
        page: Page,
        wait: Duration,
        mut shutdown: Shutdown,
    ) -> Result<Page, Error> {
        let _held = self.held.hold();
        let mut next = self.broker.subscribe(&request.topic, page.next).await?;
        tokio::select! {
            first = next.next() => match first {
                Some(Ok(_)) => self.broker.fetch(&request.topic, page.next, request.limit).await,
                Some(Err(error)) => Err(error),
                None => Ok(page),
            },
            () = tokio::time::sleep(wait) => Ok(page),
            () = shutdown.wait() => Ok(page),
        }
    }
}

/// The `wait` query parameter: decimal seconds, cut to `max`; `None` when absent. `wait=0`
/// is answered at once, with `Pushpull-Wait-Ms: 0`: how a client learns the server can hold.
fn wait(request: &PageRequest, max: Duration) -> Result<Option<Duration>, Error> {
    let Some(text) = request.query.get("wait") else { return Ok(None) };
    let seconds: f64 =
        text.parse().ok().filter(|s: &f64| s.is_finite() && *s >= 0.0).ok_or_else(|| {
            Error::bad_request(format!("wait {text:?} is not a number of seconds"))
        })?;
    Ok(Some(Duration::from_secs_f64(seconds.min(max.as_secs_f64()))))
}
