//! The server half: the page route, held until a message arrives or the wait passes.

use std::sync::Arc;

use pushpull_core::{Broker, Error};
use pushpull_http::metrics::DeliveryMeter;
use pushpull_http::{
    Context, Gauge, Hold, LiveCount, Measure, Mount, PageConfig, Route, Router, TransportServer,
};

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
    routes: Vec<Route>,
    router: Router,
    held: Gauge,
    by_topic: Arc<std::sync::atomic::AtomicU64>,
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
        pages.validate(crate::NAME)?;
        Self::within(&Context::new(broker).with_pages(pages, crate::NAME), config)
    }

    /// A server within `context`, holding its page route's requests.
    fn within(context: &Context, config: ServerConfig) -> Result<Self, Error> {
        config.validate()?;
        let held = Gauge::new();
        let meter = DeliveryMeter::new(crate::NAME);
        let by_topic = Arc::default();
        let hold = Hold {
            max_wait: config.max_wait,
            held: held.clone(),
            meter,
            fanout: config.fanout,
            by_topic: Arc::clone(&by_topic),
        };
        let routes = vec![
            pushpull_http::page_route(context, Some(hold.clone())),
            pushpull_http::many_page_route(context, Some(hold.clone())),
        ];
        let router = pushpull_http::api(context, Some(hold));
        Ok(Self { routes, router, held, by_topic })
    }

    /// Requests held right now.
    pub fn held_requests(&self) -> usize {
        self.held.get()
    }

    /// Held polls answered by their topic's task so far (see [`ServerConfig::fanout`]).
    pub fn answered_by_topic(&self) -> u64 {
        self.by_topic.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The holding page route (it also answers plain polls), to mount in place of the plain one.
    pub fn routes(&self) -> Vec<Route> {
        self.routes.clone()
    }

    /// The router it serves: publishing and the holding page route.
    pub fn router(&self) -> Router {
        self.router.clone()
    }
}

pushpull_http::serve_with_router!(LongpollServer);

impl TransportServer for LongpollServer {
    const NAME: &'static str = crate::NAME;
    type Config = ServerConfig;

    fn check(config: &ServerConfig) -> Result<(), Error> {
        config.validate()
    }

    fn build(context: &Context, config: ServerConfig) -> Result<Self, Error> {
        Self::within(context, config)
    }

    /// The holding page route, in place of the plain one.
    fn mount(&self) -> Mount {
        let held = self.held.clone();
        Mount::routes(self.routes()).with_live(LiveCount::new(
            "held_requests",
            &[Measure::Connections, Measure::Subscriptions],
            move || held.get(),
        ))
    }
}
