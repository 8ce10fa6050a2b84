//! The server half: the page route, held until a message arrives or the wait passes.

use std::sync::Arc;

use pushpull_core::{Broker, Error};
use pushpull_http::{Gauge, Hold, PageConfig, Route, Router};

use crate::config::ServerConfig;

/// The long-polling server over a broker: publishing and the page route with holding
/// ([`pushpull_http::page_route`] with a [`Hold`]). A cheap-`Clone` tower (and hyper) service.
///
/// Without `wait` the page request is answered at once, exactly as short polling answers it.
/// With `wait=SECONDS` and nothing after the cursor, the request is held until a message is
/// published or the wait passes (cut to `max_wait`), then answered; the response carries
/// `Pushpull-Wait-Ms`, the wait applied. A held request is a future parked on the topic's
/// wake-up signal: no thread, no buffer, and dropped the moment its client hangs up.
#[derive(Clone, Debug)]
pub struct LongpollServer {
    route: Route,
    router: Router,
    held: Gauge,
}

impl LongpollServer {
    /// A server over `broker`, its pages as [`PageConfig::default`] has them.
    pub fn new(broker: Arc<dyn Broker>, config: ServerConfig) -> Result<Self, Error> {
        Self::with_pages(broker, config, PageConfig::default())
    }

    /// A server over `broker` with `pages` as the page route's settings (a server serving
    /// several transports has one page route, configured once).
    pub fn with_pages(
        broker: Arc<dyn Broker>,
        config: ServerConfig,
        pages: PageConfig,
    ) -> Result<Self, Error> {
        config.validate()?;
        pages.validate(crate::NAME)?;
        let held = Gauge::new();
        let hold = Hold { max_wait: config.max_wait, held: held.clone() };
        let route = pushpull_http::page_route(broker.clone(), pages.clone(), Some(hold.clone()));
        let router = pushpull_http::api(broker, pages, Some(hold));
        Ok(Self { route, router, held })
    }

    /// Requests held right now.
    pub fn held_requests(&self) -> usize {
        self.held.get()
    }

    /// The holding page route (it also answers plain polls), to mount in place of the plain one.
    pub fn routes(&self) -> Vec<Route> {
        vec![self.route.clone()]
    }

    /// The router it serves: publishing and the holding page route.
    pub fn router(&self) -> Router {
        self.router.clone()
    }
}

pushpull_http::serve_with_router!(LongpollServer);
