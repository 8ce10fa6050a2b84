//! Serving a broker over every enabled transport.

use std::sync::Arc;

use http::{Method, StatusCode};
use pushpull_core::{Broker, Error, ErrorKind, MemoryBroker};
use pushpull_http::{
    PublishLimits, Reading, Route, Router, RunningServer, ServeConfig, ServerStats, TransportServer,
};
use tokio::net::TcpListener;

use crate::server_config::{BrokerKind, ServerConfig};

/// The broker a config asks for. Call it within a tokio runtime (the Redis broker starts its
/// wake-up listener).
pub fn broker(config: &ServerConfig) -> Result<Arc<dyn Broker>, Error> {
    match config.broker.kind {
        BrokerKind::Memory => Ok(Arc::new(MemoryBroker::with_config(config.memory_config())?)),
        #[cfg(feature = "redis")]
        BrokerKind::Redis => Ok(Arc::new(pushpull_redis::RedisBroker::new(config.redis_config())?)),
    }
}

/// The router serving `broker` over every transport `config` enables, plus publishing and
/// `GET /v1/health`.
pub fn router(broker: Arc<dyn Broker>, config: &ServerConfig) -> Result<Router, Error> {
    router_with_stats(broker, config, None)
}

/// [`router`], with a health route that also reports `stats` (requests and connections).
fn router_with_stats(
    broker: Arc<dyn Broker>,
    config: &ServerConfig,
    stats: Option<Arc<ServerStats>>,
) -> Result<Router, Error> {
    // The recorder goes in before the servers are built: they look their counters up once.
    let prometheus = if config.http.metrics { crate::metrics::prometheus() } else { None };
    let max_body = config.broker.max_payload;
    let publish = pushpull_http::publish_route(
        broker.clone(),
        PublishLimits { max_body, body_timeout: config.http.body_timeout },
    );
    let mut router = Router::new().with([publish]);
    // Live counts for the health route: (name, gauge).
    let mut gauges: Vec<(&'static str, Reading)> = Vec::new();
    if let Some(stats) = stats {
        let (open, accepted, streams) = (stats.clone(), stats.clone(), stats.clone());
        gauges.push(("open_connections", Box::new(move || open.open_connections())));
        gauges.push(("open_streams", Box::new(move || streams.open_streams())));
        gauges.push(("accepted_connections", Box::new(move || accepted.accepted_connections())));
        gauges.push(("requests", Box::new(move || stats.requests())));
        // Tasks alive on the server's runtime: what a leak of sessions would grow.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let metrics = runtime.metrics();
            gauges.push(("runtime_tasks", Box::new(move || metrics.num_alive_tasks())));
        }
    }
    // The page route is how every HTTP client fetches, so it is served whatever transports are
    // enabled; long polling's is the same route, holding requests that ask with `?wait=`.
    let pages = config.transports.poll.server.clone();
    #[cfg(feature = "longpoll")]
    let page_served = config.transports.longpoll.enabled;
    #[cfg(not(feature = "longpoll"))]
    let page_served = false;
    #[cfg(feature = "longpoll")]
    if page_served {
        let section = config.transports.longpoll.server.clone();
        let server =
            pushpull_longpoll::LongpollServer::with_pages(broker.clone(), section, pages.clone())?;
        router = router.with(server.routes());
        gauges.push(("longpoll_held_requests", Box::new(move || server.held_requests())));
    }
    if !page_served {
        router = router.with([pushpull_http::page_route(broker.clone(), pages, None)]);
    }
    // Every other transport: its own routes beside the shared API. One line each.
    #[cfg(feature = "sse")]
    mount(&mut router, &mut gauges, config.transports.sse.enabled, || {
        pushpull_sse::SseServer::new(broker.clone(), config.transports.sse.server.clone())
    })?;
    #[cfg(feature = "ws")]
    mount(&mut router, &mut gauges, config.transports.ws.enabled, || {
        pushpull_ws::WsServer::new(broker.clone(), config.ws_config())
    })?;
    #[cfg(feature = "stream")]
    mount(&mut router, &mut gauges, config.transports.stream.enabled, || {
        pushpull_stream::StreamServer::new(broker.clone(), config.transports.stream.server.clone())
    })?;
    #[cfg(feature = "webhook")]
    mount(&mut router, &mut gauges, config.transports.webhook.enabled, || {
        // Endpoints live beside the logs: with Redis, every node shares them.
        let store: Arc<dyn pushpull_webhook::EndpointStore> = match config.broker.kind {
            BrokerKind::Memory => Arc::new(pushpull_webhook::MemoryEndpointStore::new()),
            #[cfg(feature = "redis")]
            BrokerKind::Redis => {
                Arc::new(pushpull_redis::RedisEndpointStore::open(&config.redis_config())?)
            }
        };
        let settings = config.transports.webhook.server.clone();
        pushpull_webhook::WebhookServer::with_store(broker.clone(), settings, store)
    })?;
    if config.http.demo.enabled(config.listen) {
        router = router.with(crate::demo::routes(broker.clone()));
    }
    let gauges = Arc::new(gauges);
    if let Some(handle) = prometheus {
        router = router.with([crate::metrics::route(handle, gauges.clone())]);
    }
    let health = health_route(broker, transports(config), gauges);
    let mut router = router
        .with(health)
        .with_cors(pushpull_http::Cors::new(config.http.cors_origins.clone()))
        .with_access_log(config.http.access_log);
    if let Some(auth) = &config.auth {
        router = router.with_guard(Arc::new(pushpull_auth::AuthLayer::new(auth)?));
    }
    Ok(router)
}

/// Adds the routes and gauges of the server `make` builds, when its section is `enabled`; a bad
/// setting names its key under `transports.`.
#[allow(dead_code)] // unused in a build without HTTP transports
fn mount<T: TransportServer>(
    router: &mut Router,
    gauges: &mut Vec<(&'static str, Reading)>,
    enabled: bool,
    make: impl FnOnce() -> Result<T, Error>,
) -> Result<(), Error> {
    if !enabled {
        return Ok(());
    }
    let server =
        make().map_err(|e| Error::new(ErrorKind::Config, format!("transports.{}", e.message())))?;
    *router = std::mem::take(router).with(server.routes());
    gauges.extend(server.gauges());
    Ok(())
}

/// The transports a config serves, in this build.
pub fn transports(config: &ServerConfig) -> Vec<&'static str> {
    let mut served = Vec::new();
    let transports = &config.transports;
    if cfg!(feature = "poll") && transports.poll.enabled {
        served.push("poll");
    }
    #[cfg(feature = "longpoll")]
    if transports.longpoll.enabled {
        served.push("longpoll");
    }
    #[cfg(feature = "sse")]
    if transports.sse.enabled {
        served.push("sse");
    }
    #[cfg(feature = "ws")]
    if transports.ws.enabled {
        served.push("ws");
    }
    #[cfg(feature = "stream")]
    if transports.stream.enabled {
        served.push("stream");
    }
    #[cfg(feature = "webhook")]
    if transports.webhook.enabled {
        served.push("webhook");
    }
    served
}

/// `GET /v1/health`: the broker, the transports served, and live counts of held requests and
/// open streams.
fn health_route(
    broker: Arc<dyn Broker>,
    transports: Vec<&'static str>,
    gauges: Arc<Vec<(&'static str, Reading)>>,
) -> [Route; 2] {
    let broker_name = broker.capabilities().name;
    let probe = broker.clone();
    let health = Route::new(Method::GET, "/v1/health", move |_, _| {
        let live: serde_json::Map<String, serde_json::Value> =
            gauges.iter().map(|(name, gauge)| ((*name).to_owned(), gauge().into())).collect();
        let transports = transports.clone();
        let broker = probe.clone();
        async move {
            let ready = ready(&*broker).await;
            let body = serde_json::json!({
                "status": "ok",
                "ready": ready.is_ok(),
                "broker": broker_name,
                "transports": transports,
                "live": live,
                "version": env!("CARGO_PKG_VERSION"),
            });
            Ok(pushpull_http::json(StatusCode::OK, serde_json::to_vec(&body).expect("encodes")))
        }
    });
    // Live is "the process answers" (/v1/health); ready is "and its broker answers", what a
    // load balancer should route by.
    let readiness = Route::new(Method::GET, "/v1/ready", move |_, _| {
        let broker = broker.clone();
        async move {
            ready(&*broker).await?;
            let body = serde_json::json!({ "ready": true, "broker": broker_name });
            Ok(pushpull_http::json(StatusCode::OK, serde_json::to_vec(&body).expect("encodes")))
        }
    });
    [health, readiness]
}

/// Whether the broker answers within two seconds: a one-message fetch of a fixed topic.
async fn ready(broker: &dyn Broker) -> Result<(), Error> {
    let topic = pushpull_core::Topic::new("pushpull.health").expect("a valid topic");
    let fetch = broker.fetch(&topic, pushpull_core::Cursor::Latest, 1);
    match tokio::time::timeout(std::time::Duration::from_secs(2), fetch).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(Error::new(
            ErrorKind::Backend,
            format!("not ready: the broker does not answer: {}", error.message()),
        )),
        Err(_) => {
            Err(Error::new(ErrorKind::Backend, "not ready: the broker did not answer in 2 s"))
        }
    }
}

/// Binds `config.listen` and serves in the background; see [`RunningServer::shutdown`].
///
/// Serving beyond loopback without `[auth]` logs a warning: anyone who reaches the address
/// may then read and publish every topic and manage the webhooks.
pub async fn serve(config: &ServerConfig) -> Result<RunningServer, Error> {
    if !config.listen.ip().is_loopback() && config.auth.is_none() {
        tracing::warn!(
            listen = %config.listen,
            "serving beyond loopback without [auth]: anyone who reaches this address can read \
             and publish every topic and register, list and delete webhooks; set [auth] (and \
             [tls]) or listen on 127.0.0.1 behind a proxy that authenticates"
        );
    }
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
    broker: Arc<dyn Broker>,
    config: &ServerConfig,
) -> Result<RunningServer, Error> {
    let stats = Arc::new(ServerStats::default());
    let router = router_with_stats(broker, config, Some(stats.clone()))?;
    pushpull_http::spawn_with_stats(listener, router, serve_config(config)?, stats)
        .map_err(|e| Error::new(ErrorKind::Config, format!("cannot serve: {e}")).with_source(e))
}

/// The connection settings a config asks for (reading the TLS certificate and key, if any).
pub fn serve_config(config: &ServerConfig) -> Result<ServeConfig, Error> {
    let tls = config.tls.as_ref().map(|files| files.acceptor()).transpose()?;
    Ok(ServeConfig {
        header_read_timeout: config.http.header_read_timeout,
        shutdown_grace: config.http.shutdown_grace,
        tls,
        max_connections: config.http.max_connections,
        max_connections_per_address: config.http.max_connections_per_address,
        max_header_bytes: config.http.max_header_bytes,
    })
}
