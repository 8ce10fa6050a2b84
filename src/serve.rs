//! Serving a broker over every enabled transport.

use std::sync::Arc;

use http::{Method, StatusCode};
use pushpull_core::{Client, Error, ErrorKind, MemoryBroker};
use pushpull_http::{PublishLimits, Route, Router, RunningServer, ServeConfig, ServerStats};
use tokio::net::TcpListener;

use crate::server_config::{BrokerKind, ServerConfig};

/// The broker a config asks for.
pub fn broker(config: &ServerConfig) -> Result<Arc<dyn Client>, Error> {
    match config.broker.kind {
        BrokerKind::Memory => Ok(Arc::new(MemoryBroker::with_config(config.memory_config())?)),
    }
}

/// The router serving `broker` over every transport `config` enables, plus publishing and
/// `GET /v1/health`.
pub fn router(broker: Arc<dyn Client>, config: &ServerConfig) -> Result<Router, Error> {
    router_with_stats(broker, config, None)
}

/// [`router`], with a health route that also reports `stats` (requests and connections).
fn router_with_stats(
    broker: Arc<dyn Client>,
    config: &ServerConfig,
    stats: Option<Arc<ServerStats>>,
) -> Result<Router, Error> {
    let max_body = config.broker.max_payload;
    let publish = pushpull_http::publish_route(
        broker.clone(),
        PublishLimits { max_body, body_timeout: config.http.body_timeout },
    );
    let mut router = Router::new().with([publish]);
    // Live counts for the health route: (name, gauge).
    let mut gauges: Vec<(&'static str, Gauge)> = Vec::new();
    if let Some(stats) = stats {
        let (open, accepted) = (stats.clone(), stats.clone());
        gauges.push(("open_connections", Box::new(move || open.open_connections())));
        gauges.push(("accepted_connections", Box::new(move || accepted.accepted_connections())));
        gauges.push(("requests", Box::new(move || stats.requests())));
    }
    // The page route is how every HTTP client fetches, so it is served whatever transports are
    // enabled; long polling's is the same route, holding requests that ask with `?wait=`.
    let pages = config.transports.poll.server_config();
    let mut page_served = false;
    #[cfg(feature = "longpoll")]
    if config.transports.longpoll.enabled {
        let longpoll = pushpull_longpoll::ServerConfig {
            max_wait: config.transports.longpoll.max_wait,
            page: pages.clone(),
        };
        let server = pushpull_longpoll::Server::new(broker.clone(), longpoll)?;
        router = router.with(server.routes());
        gauges.push(("longpoll_held_requests", Box::new(move || server.held_requests())));
        page_served = true;
    }
    if !page_served {
        pages.validate("transports.poll")?;
        router = router.with([pushpull_http::page_route(broker.clone(), pages, None)]);
    }
    #[cfg(feature = "sse")]
    if config.transports.sse.enabled {
        let sse = pushpull_sse::ServerConfig {
            heartbeat: config.transports.sse.heartbeat,
            retry: config.transports.sse.retry,
            page: config.transports.poll.server_config(),
        };
        let server = pushpull_sse::Server::new(broker.clone(), sse)?;
        router = router.with(server.routes());
        gauges.push(("sse_open_streams", Box::new(move || server.open_streams())));
    }
    #[cfg(feature = "ws")]
    if config.transports.ws.enabled {
        let section = &config.transports.ws;
        let ws = pushpull_ws::ServerConfig {
            ping_interval: section.ping_interval,
            idle_timeout: section.idle_timeout,
            write_timeout: section.write_timeout,
            max_subscriptions: section.max_subscriptions,
            // A frame holds a payload and its JSON header.
            max_message_size: config.broker.max_payload + 64 * 1024,
            max_limit: config.transports.poll.max_limit,
            ..pushpull_ws::ServerConfig::default()
        };
        let server = pushpull_ws::Server::new(broker.clone(), ws)
            .map_err(|e| Error::new(ErrorKind::Config, format!("transports.{}", e.message())))?;
        router = router.with(server.routes());
        gauges.push(("ws_open_sockets", Box::new(move || server.open_sockets())));
    }
    #[cfg(feature = "stream")]
    if config.transports.stream.enabled {
        let stream = pushpull_stream::ServerConfig {
            heartbeat: config.transports.stream.heartbeat,
            page: config.transports.poll.server_config(),
        };
        let server = pushpull_stream::Server::new(broker.clone(), stream)?;
        router = router.with(server.routes());
        gauges.push(("stream_open_streams", Box::new(move || server.open_streams())));
    }
    #[cfg(feature = "webhook")]
    if config.transports.webhook.enabled {
        let server = pushpull_webhook::Server::new(
            broker.clone(),
            config.transports.webhook.server.clone(),
        )?;
        router = router.with(server.routes());
        gauges.push(("webhook_endpoints", Box::new(move || server.endpoint_count())));
    }
    let health = health_route(broker, transports(config), gauges);
    Ok(router.with([health]).with_cors(pushpull_http::Cors::new(config.http.cors_origins.clone())))
}

/// The transports a config serves, in this build.
pub fn transports(config: &ServerConfig) -> Vec<&'static str> {
    #[cfg(feature = "webhook")]
    let webhook = config.transports.webhook.enabled;
    #[cfg(not(feature = "webhook"))]
    let webhook = false;
    let candidates: [(&'static str, bool, bool); 6] = [
        ("poll", cfg!(feature = "poll"), config.transports.poll.enabled),
        ("longpoll", cfg!(feature = "longpoll"), config.transports.longpoll.enabled),
        ("sse", cfg!(feature = "sse"), config.transports.sse.enabled),
        ("ws", cfg!(feature = "ws"), config.transports.ws.enabled),
        ("stream", cfg!(feature = "stream"), config.transports.stream.enabled),
        ("webhook", cfg!(feature = "webhook"), webhook),
    ];
    candidates.into_iter().filter(|(_, built, on)| *built && *on).map(|(name, ..)| name).collect()
}

type Gauge = Box<dyn Fn() -> usize + Send + Sync>;

/// `GET /v1/health`: the broker, the transports served, and live counts of held requests and
/// open streams.
fn health_route(
    broker: Arc<dyn Client>,
    transports: Vec<&'static str>,
    gauges: Vec<(&'static str, Gauge)>,
) -> Route {
    let broker_name = broker.capabilities().name;
    let gauges = Arc::new(gauges);
    Route::new(Method::GET, "/v1/health", move |_, _| {
        let live: serde_json::Map<String, serde_json::Value> =
            gauges.iter().map(|(name, gauge)| ((*name).to_owned(), gauge().into())).collect();
        let body = serde_json::json!({
            "status": "ok",
            "broker": broker_name,
            "transports": transports,
            "live": live,
            "version": env!("CARGO_PKG_VERSION"),
        });
        async move {
            Ok(pushpull_http::json(StatusCode::OK, serde_json::to_vec(&body).expect("encodes")))
        }
    })
}

/// Binds `config.listen` and serves in the background; see [`RunningServer::shutdown`].
pub async fn serve(config: &ServerConfig) -> Result<RunningServer, Error> {
    let listener = TcpListener::bind(config.listen).await.map_err(|e| {
        Error::new(ErrorKind::Config, format!("cannot listen on {}: {e}", config.listen))
            .with_source(e)
    })?;
    serve_on(listener, config)
}

/// Serves on an already bound listener (port 0 in tests, say).
pub fn serve_on(listener: TcpListener, config: &ServerConfig) -> Result<RunningServer, Error> {
    serve_with(listener, broker(config)?, config)
}

/// Serves `broker` (one the application also uses in-process, say) on `listener`.
pub fn serve_with(
    listener: TcpListener,
    broker: Arc<dyn Client>,
    config: &ServerConfig,
) -> Result<RunningServer, Error> {
    let stats = Arc::new(ServerStats::default());
    let router = router_with_stats(broker, config, Some(stats.clone()))?;
    pushpull_http::spawn_with_stats(listener, router, serve_config(config), stats)
        .map_err(|e| Error::new(ErrorKind::Config, format!("cannot serve: {e}")).with_source(e))
}

/// The connection settings a config asks for.
pub fn serve_config(config: &ServerConfig) -> ServeConfig {
    ServeConfig {
        header_read_timeout: config.http.header_read_timeout,
        shutdown_grace: config.http.shutdown_grace,
    }
}
