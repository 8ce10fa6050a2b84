//! The server half: the HTTP API alone, publish and the page route, which is all short polling
//! needs.

use std::sync::Arc;

use pushpull_core::{Broker, Error};
use pushpull_http::{Context, Mount, PageConfig, Router, TransportServer};

/// The polling server over a broker: `POST /v1/topics/{topic}` and the page route
/// ([`pushpull_http::page_route`]). A cheap-`Clone` tower (and hyper) service.
///
/// Composed with other transports, it adds no route: the page route is the shared API every
/// server has, and short polling is what gives it its settings ([`TransportServer::pages`]).
#[derive(Clone, Debug)]
pub struct PollServer {
    router: Router,
}

impl PollServer {
    /// A server over `broker`.
    pub fn new(broker: Arc<dyn Broker>, config: PageConfig) -> Result<Self, Error> {
        config.validate(crate::NAME)?;
        let context = Context::new(broker).with_pages(config, crate::NAME);
        Ok(Self { router: pushpull_http::api(&context, None) })
    }

    /// The router it serves.
    pub fn router(&self) -> Router {
        self.router.clone()
    }
}

pushpull_http::serve_with_router!(PollServer);

impl TransportServer for PollServer {
    const NAME: &'static str = crate::NAME;
    type Config = PageConfig;

    fn check(config: &PageConfig) -> Result<(), Error> {
        config.validate(crate::NAME)
    }

    fn pages(config: &PageConfig) -> Option<PageConfig> {
        Some(config.clone())
    }

    fn build(context: &Context, _: PageConfig) -> Result<Self, Error> {
        Ok(Self { router: pushpull_http::api(context, None) })
    }

    fn mount(&self) -> Mount {
        Mount::default()
    }
}
