//! An existing axum application — its own routes, its own tower-http layers — with pushpull's
//! whole API (publishing, pages, every transport, health) nested under `/realtime`.
//!
//! The pushpull service is mounted with `Router::nest_service`; the application's layers wrap
//! it like any other route; the application's own handlers publish through the broker they
//! share with it (in axum state); and the application's graceful shutdown reaches pushpull
//! through a [`ShutdownTrigger`], so open event streams, held polls and sockets end instead of
//! holding the shutdown up. Mounting it starts no thread and installs nothing process-wide:
//! pushpull's metrics go to whatever recorder the application installed.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use http::header::HeaderName;
use http::{HeaderValue, StatusCode};
use pushpull::{Broker, Publication, ServerConfig, Topic};
use pushpull_http::{Shutdown, ShutdownTrigger};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

/// The header the application's own layer puts on every response, pushpull's included.
pub const APP_HEADER: &str = "x-served-by";

/// The application: its own routes, and pushpull's API under `/realtime`, behind its layers.
/// Fire the returned trigger when the application shuts down.
pub fn app(broker: Arc<dyn Broker>) -> Result<(Router, ShutdownTrigger), pushpull::Error> {
    let (trigger, shutdown) = Shutdown::new();
    let realtime =
        pushpull::router(broker.clone(), &ServerConfig::default())?.with_shutdown(shutdown);
    let app = Router::new()
        .route("/", get(|| async { "the application's own page" }))
        .route("/api/status", get(|| async { "ok" }))
        .route("/api/orders/{id}/ship", post(ship))
        .with_state(broker)
        .nest_service("/realtime", realtime)
        .layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static(APP_HEADER),
            HeaderValue::from_static("axum-app"),
        ))
        .layer(TraceLayer::new_for_http());
    Ok((app, trigger))
}

/// The application's own handler: it ships an order, then tells whoever follows the order's
/// topic, through the broker it shares with pushpull.
async fn ship(
    State(broker): State<Arc<dyn Broker>>,
    Path(id): Path<String>,
) -> Result<String, (StatusCode, String)> {
    let refused = |e: pushpull::Error| (StatusCode::BAD_REQUEST, e.to_string());
    let topic = Topic::new(format!("orders.{id}")).map_err(refused)?;
    let receipt = broker
        .publish(&topic, Publication::new("shipped").event("status"))
        .await
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(receipt.cursor().to_string())
}
