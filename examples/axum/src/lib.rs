//! An existing axum application — its own routes, its own tower-http layers — with pushpull's
//! whole API (publishing, pages, every transport, health) nested under `/realtime`.
//!
//! The pushpull service is mounted with `Router::nest_service`; the application's layers wrap
//! it like any other route; and the application's graceful shutdown reaches pushpull through a
//! [`ShutdownTrigger`], so open event streams, held polls and sockets end instead of holding the
//! shutdown up.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use http::HeaderValue;
use http::header::HeaderName;
use pushpull::{Broker, ServerConfig};
use pushpull_http::{Shutdown, ShutdownTrigger};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

/// The header the application's own layer puts on every response, pushpull's included.
pub const APP_HEADER: &str = "x-served-by";

/// The application: its own routes, and pushpull's API under `/realtime`, behind its layers.
/// Fire the returned trigger when the application shuts down.
pub fn app(broker: Arc<dyn Broker>) -> Result<(Router, ShutdownTrigger), pushpull::Error> {
    let (trigger, shutdown) = Shutdown::new();
    let realtime = pushpull::router(broker, &ServerConfig::default())?.with_shutdown(shutdown);
    let app = Router::new()
        .route("/", get(|| async { "the application's own page" }))
        .route("/api/status", get(|| async { "ok" }))
        .nest_service("/realtime", realtime)
        .layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static(APP_HEADER),
            HeaderValue::from_static("axum-app"),
        ))
        .layer(TraceLayer::new_for_http());
    Ok((app, trigger))
}
