//! The server half: the HTTP API alone, publish and the page route, which is all short polling
//! needs.

use std::sync::Arc;

use pushpull_core::{Broker, Error};
use pushpull_http::{PageConfig, Router};

/// The polling server over a broker: `POST /v1/topics/{topic}` and the page route
/// ([`pushpull_http::page_route`]). A cheap-`Clone` tower (and hyper) service.
#[derive(Clone, Debug)]
pub struct PollServer {
    router: Router,
}

impl PollServer {
    /// A server over `broker`.
    pub fn new(broker: Arc<dyn Broker>, config: PageConfig) -> Result<Self, Error> {
        config.validate(crate::NAME)?;
        Ok(Self { router: pushpull_http::api(broker, config, None) })
    }

    /// The router it serves.
    pub fn router(&self) -> Router {
        self.router.clone()
    }
}

pushpull_http::serve_with_router!(PollServer);
