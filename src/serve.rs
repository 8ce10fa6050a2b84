//! Serving a broker over every enabled transport.

use std::sync::Arc;

use http::{Method, StatusCode};
use pushpull_core::{Client, Error, ErrorKind, MemoryBroker};
use pushpull_http::{PublishLimits, Route, Router, RunningServer, ServeConfig};
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
    let max_body = config.broker.max_payload;
    let publish = pushpull_http::publish_route(
        broker.clone(),
        PublishLimits { max_body, body_timeout: config.http.body_timeout },
    );
    let mut router = Router::new().with([publish]);
    // Long polling serves the same page route as short polling, plus `?wait=`.
    #[cfg(feature = "longpoll")]
    let page_served = config.transports.longpoll.enabled;
    #[cfg(not(feature = "longpoll"))]
    let page_served = false;
    #[cfg(feature = "longpoll")]
    if config.transports.longpoll.enabled {
        let longpoll = pushpull_longpoll::ServerConfig {
            max_wait: config.transports.longpoll.max_wait,
            page: config.transports.poll.server_config(),
        };
        let server = pushpull_longpoll::Server::new(broker.clone(), longpoll)?;
        router = router.with(server.routes());
    }
    #[cfg(feature = "poll")]
    if config.transports.poll.enabled && !page_served {
        let poll = config.transports.poll.server_config();
        poll.validate()?;
        router = router.with(pushpull_poll::routes(broker.clone(), poll));
    }
    let _ = page_served;
    #[cfg(feature = "sse")]
    if config.transports.sse.enabled {
        let sse = pushpull_sse::ServerConfig {
            heartbeat: config.transports.sse.heartbeat,
            retry: config.transports.sse.retry,
            page: config.transports.poll.server_config(),
        };
        router = router.with(pushpull_sse::Server::new(broker.clone(), sse)?.routes());
    }
    let health = health_route(broker, transports(config));
    Ok(router.with([health]))
}

/// The transports a config serves, in this build.
pub fn transports(config: &ServerConfig) -> Vec<&'static str> {
    let candidates: [(&'static str, bool, bool); 3] = [
        ("poll", cfg!(feature = "poll"), config.transports.poll.enabled),
        ("longpoll", cfg!(feature = "longpoll"), config.transports.longpoll.enabled),
        ("sse", cfg!(feature = "sse"), config.transports.sse.enabled),
    ];
    candidates.into_iter().filter(|(_, built, on)| *built && *on).map(|(name, ..)| name).collect()
}

fn health_route(broker: Arc<dyn Client>, transports: Vec<&'static str>) -> Route {
    let body = serde_json::json!({
        "status": "ok",
        "broker": broker.capabilities().name,
        "transports": transports,
        "version": env!("CARGO_PKG_VERSION"),
    });
    let body = serde_json::to_vec(&body).expect("health encodes");
    Route::new(Method::GET, "/v1/health", move |_, _| {
        let body = body.clone();
        async move { Ok(pushpull_http::json(StatusCode::OK, body)) }
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
    let router = router(broker, config)?;
    pushpull_http::spawn(listener, router, serve_config(config))
        .map_err(|e| Error::new(ErrorKind::Config, format!("cannot serve: {e}")).with_source(e))
}

/// The connection settings a config asks for.
pub fn serve_config(config: &ServerConfig) -> ServeConfig {
    ServeConfig {
        header_read_timeout: config.http.header_read_timeout,
        shutdown_grace: config.http.shutdown_grace,
    }
}
