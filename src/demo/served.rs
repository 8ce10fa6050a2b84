//! The demo's routes: the page, the browser client, and the ticker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::{HeaderValue, Method, Response, StatusCode, header};
use pushpull_core::{Broker, Publication, Topic};
use pushpull_http::Route;

use super::TICKER_TOPIC;

/// The browser client, as served.
pub const CLIENT_JS: &str = include_str!("../../clients/js/pushpull.js");
/// Its TypeScript declarations.
pub const CLIENT_TYPES: &str = include_str!("../../clients/js/pushpull.d.ts");
const PAGE: &str = include_str!("../../clients/js/demo/index.html");

const TICK_EVERY: Duration = Duration::from_millis(500);

fn asset(content_type: &'static str, body: &'static str) -> Response<pushpull_http::Body> {
    let mut response = Response::new(pushpull_http::full(body));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The routes. The first visit to the page starts the ticker, which publishes to `broker` for
/// as long as the routes live.
pub(crate) fn routes(broker: Arc<dyn Broker>) -> Vec<Route> {
    let alive = Arc::new(());
    let started = Arc::new(AtomicBool::new(false));
    let page = move |_, _| {
        if !started.swap(true, Ordering::Relaxed) {
            ticker(broker.clone(), Arc::downgrade(&alive));
        }
        async { Ok(asset("text/html; charset=utf-8", PAGE)) }
    };
    vec![
        Route::new(Method::GET, "/demo", page),
        Route::new(Method::GET, "/pushpull/pushpull.js", |_, _| async {
            Ok(asset("text/javascript; charset=utf-8", CLIENT_JS))
        }),
        Route::new(Method::GET, "/pushpull/pushpull.d.ts", |_, _| async {
            Ok(asset("application/typescript; charset=utf-8", CLIENT_TYPES))
        }),
    ]
}

/// Publishes a random walk of prices until `alive` is gone (when no router serves the page).
fn ticker(broker: Arc<dyn Broker>, alive: Weak<()>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::debug!("no runtime: the demo ticker does not run");
        return;
    };
    runtime.spawn(async move {
        let topic = Topic::new(TICKER_TOPIC).expect("a valid topic");
        let mut price: f64 = 100.0;
        let mut seed = u64::from(std::process::id()) | 1;
        let mut every = tokio::time::interval(TICK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while alive.strong_count() > 0 {
            every.tick().await;
            // xorshift: a walk that looks like a price, with no dependency for it.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let step = (seed % 2001) as f64 / 1000.0 - 1.0;
            price = (price * (1.0 + step * 0.004)).max(1.0);
            let publication =
                Publication::new(format!("{price:.2}")).event("price").content_type("text/plain");
            if let Err(error) = broker.publish(&topic, publication).await {
                tracing::debug!(%error, "the demo ticker could not publish");
            }
        }
    });
}
