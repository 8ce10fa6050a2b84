//! Serving a broker over every enabled transport.

use std::sync::Arc;

use http::{Method, StatusCode};
use pushpull_core::{Broker, Error, ErrorKind};
use pushpull_http::{Context, OwnListener, Route, Router, RunningServer, ServeConfig, ServerStats};
use tokio::net::TcpListener;

use crate::Registry;
use crate::live::Live;
use crate::server_config::ServerConfig;

/// The broker a config asks for, as [`Registry::with_defaults`] has them. Call it within a
/// tokio runtime (the Redis broker starts its wake-up listener).
pub fn broker(config: &ServerConfig) -> Result<Arc<dyn Broker>, Error> {
    Registry::with_defaults().broker(config)
}

/// The router serving `broker` over every transport `config` enables (as
/// [`Registry::with_defaults`] has them), plus publishing, health and readiness: what an
/// application mounts in a server of its own (axum's `Router::nest_service`, say).
///
/// It starts no thread and installs nothing process-wide: pushpull's metrics are recorded into
/// whatever recorder the host installed, and `/metrics` is not served; the demo page is served
/// only when `http.demo` is `on`. [`serve`] is the whole server, as `pushpull serve` runs it.
pub fn router(broker: Arc<dyn Broker>, config: &ServerConfig) -> Result<Router, Error> {
    Registry::with_defaults().router(broker, config)
}

/// What a server adds to the routes of its transports; a host embedding the router turns
/// these on itself.
#[derive(Default)]
pub(crate) struct Extras {
    /// Counts of the server's connections and requests, for the health route.
    pub(crate) stats: Option<Arc<ServerStats>>,
    /// The Prometheus recorder to render on `/metrics`.
    #[cfg(feature = "prometheus")]
    pub(crate) prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Serve the demo page and its ticker.
    #[cfg_attr(not(feature = "demo"), allow(dead_code))]
    pub(crate) demo: bool,
}

/// What a registry builds for a config: the router, and the listeners transports own.
pub(crate) struct Built {
    pub(crate) router: Router,
    pub(crate) listeners: Vec<(&'static str, Box<dyn OwnListener>)>,
}

impl Registry {
    /// The router serving `broker` over every transport of this registry that `config`
    /// enables; see [`router`](crate::router). A transport that runs its own listener cannot be
    /// served by a router alone: use [`serve_with`](Self::serve_with).
    pub fn router(&self, broker: Arc<dyn Broker>, config: &ServerConfig) -> Result<Router, Error> {
        let demo = config.http.demo == crate::Demo::On;
        let built = self.build(broker, config, Extras { demo, ..Extras::default() })?;
        if let Some((name, _)) = built.listeners.first() {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "transports.{name}: runs a listener of its own, which a router cannot serve; \
                     serve it with Registry::serve_with, or set enabled = false"
                ),
            ));
        }
        Ok(built.router)
    }

    pub(crate) fn build(
        &self,
        broker: Arc<dyn Broker>,
        config: &ServerConfig,
        extras: Extras,
    ) -> Result<Built, Error> {
        config.validate_with(self)?;
        let in_transports =
            |e: Error| Error::new(ErrorKind::Config, format!("transports.{}", e.message()));
        let mut context = Context::new(broker.clone())
            .with_allowed_origins(config.http.cors_origins.iter().cloned())
            .with_body_timeout(config.http.body_timeout)
            .with_max_topics(config.http.max_topics_per_connection)
            .with_presence(config.presence.clone());
        // State the broker keeps where every node sees it (webhook endpoints, revocations).
        let shared = self.shared_state(config)?;
        if let Some(shared) = &shared {
            context.extensions.insert(shared.clone());
        }
        // The page route is the shared API; the transport that configures it (short polling)
        // gives its settings whether or not it is listed as served.
        for server in &self.servers {
            let settings = config.transports.settings(server.name());
            if let Some(pages) = server.pages(&settings).map_err(in_transports)? {
                context = context.with_pages(pages, server.name());
            }
        }
        let mut router = pushpull_http::api(&context, None);
        let mut live = Live::default();
        if let Some(stats) = extras.stats {
            live.server(stats);
        }
        let mut served = Vec::new();
        let mut listeners = Vec::new();
        for server in &self.servers {
            let name = server.name();
            if !config.transports.is_enabled(name) {
                continue;
            }
            let mount =
                server.mount(&context, &config.transports.settings(name)).map_err(in_transports)?;
            router = router.with(mount.routes.into_iter().map(|route| route.for_transport(name)));
            live.transport(name, mount.live);
            if let Some(listener) = mount.listener {
                listeners.push((name, listener));
            }
            served.push(name);
        }
        #[cfg(feature = "demo")]
        if extras.demo {
            router = router.with(crate::demo::routes(broker.clone()));
        }
        let live = Arc::new(live);
        #[cfg(feature = "prometheus")]
        if let Some(handle) = extras.prometheus {
            router = router.with([crate::metrics::route(handle, live.clone())]);
        }
        let listening: Vec<(&'static str, std::net::SocketAddr)> =
            listeners.iter().map(|(name, listener)| (*name, listener.local_addr())).collect();
        let health = health_route(broker, served, listening, live);
        #[cfg_attr(not(feature = "auth"), allow(unused_mut))]
        let mut router = router
            .with(health)
            .with_cors(pushpull_http::Cors::new(config.http.cors_origins.clone()))
            .with_access_log(config.http.access_log);
        #[cfg(feature = "auth")]
        if let Some(auth) = &config.auth {
            let rules = pushpull_core::TopicRules::new(&config.topics)?;
            let layer = pushpull_auth::AuthLayer::with_rules(auth, &rules)?;
            // Revoking: the admin route, and what other nodes revoked, read from the broker.
            let revocations = layer.revocations().clone();
            if let Some(shared) = &shared {
                revocations.follow_shared(shared.clone());
            }
            router = router
                .with(pushpull_http::revocation_routes(revocations, shared.clone()))
                .with_guard(Arc::new(layer));
        }
        Ok(Built { router, listeners })
    }

    /// The transports this registry serves for `config`, in the order they mount.
    pub fn served(&self, config: &ServerConfig) -> Vec<&'static str> {
        self.server_names().into_iter().filter(|name| config.transports.is_enabled(name)).collect()
    }

    /// Binds `config.listen` and serves this registry's transports in the background; see
    /// [`serve`](crate::serve).
    pub async fn serve(&self, config: &ServerConfig) -> Result<RunningServer, Error> {
        warn_if_open(config);
        let listener = bind(config.listen, config.http.reuse_port).map_err(|e| {
            let shared = if config.http.reuse_port { " (with SO_REUSEPORT)" } else { "" };
            Error::new(
                ErrorKind::Config,
                format!("cannot listen on {}{shared}: {e}", config.listen),
            )
            .with_source(e)
        })?;
        self.serve_with(listener, self.broker(config)?, config)
    }

    /// Serves `broker` over this registry's transports on `listener`, with the transports' own
    /// listeners beside it; see [`serve_with`](crate::serve_with).
    pub fn serve_with(
        &self,
        listener: TcpListener,
        broker: Arc<dyn Broker>,
        config: &ServerConfig,
    ) -> Result<RunningServer, Error> {
        let stats = Arc::new(ServerStats::default());
        // The recorder goes in before the servers are built: they look their counters up once.
        #[cfg(feature = "prometheus")]
        let prometheus = if config.http.metrics { crate::metrics::prometheus() } else { None };
        let listen = listener.local_addr().unwrap_or(config.listen);
        let extras = Extras {
            stats: Some(stats.clone()),
            #[cfg(feature = "prometheus")]
            prometheus,
            demo: config.http.demo.enabled(listen),
        };
        let built = self.build(broker, config, extras)?;
        let mut running =
            pushpull_http::spawn_with_stats(listener, built.router, serve_config(config)?, stats)
                .map_err(|e| {
                Error::new(ErrorKind::Config, format!("cannot serve: {e}")).with_source(e)
            })?;
        for (name, own) in built.listeners {
            tracing::info!(transport = name, addr = %own.local_addr(), "transport listening");
            running.run_beside(name, own);
        }
        Ok(running)
    }
}

/// Serving beyond loopback without `[auth]` logs a warning.
fn warn_if_open(config: &ServerConfig) {
    #[cfg(feature = "auth")]
    let open = config.auth.is_none();
    #[cfg(not(feature = "auth"))]
    let open = true;
    if !config.listen.ip().is_loopback() && open {
        tracing::warn!(
            listen = %config.listen,
            "serving beyond loopback without [auth]: anyone who reaches this address can read \
             and publish every topic and register, list and delete webhooks; set [auth] (and \
             [tls]) or listen on 127.0.0.1 behind a proxy that authenticates"
        );
    }
}

/// The transports a config serves, in this build.
pub fn transports(config: &ServerConfig) -> Vec<&'static str> {
    Registry::with_defaults().served(config)
}

/// `GET /v1/health`: the broker, the transports served, and live counts of held requests and
/// open streams.
fn health_route(
    broker: Arc<dyn Broker>,
    transports: Vec<&'static str>,
    listening: Vec<(&'static str, std::net::SocketAddr)>,
    live: Arc<Live>,
) -> [Route; 2] {
    let broker_name = broker.capabilities().name;
    let probe = broker.clone();
    let listeners: serde_json::Map<String, serde_json::Value> = listening
        .iter()
        .map(|(name, addr)| ((*name).to_owned(), addr.to_string().into()))
        .collect();
    let health = Route::new(Method::GET, "/v1/health", move |_, _| {
        let live: serde_json::Map<String, serde_json::Value> =
            live.counts.iter().map(|count| (count.name.clone(), (count.read)().into())).collect();
        let listeners = listeners.clone();
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
                "listeners": listeners,
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

/// Binds `config.listen` and serves the transports of [`Registry::with_defaults`] in the
/// background, as `pushpull serve` does: with `http.metrics`, pushpull's Prometheus recorder
/// is installed for the process (unless the application installed one) and served on
/// `/metrics`; the demo as `http.demo` says. See [`RunningServer::shutdown`].
///
/// Serving beyond loopback without `[auth]` logs a warning: anyone who reaches the address
/// may then read and publish every topic and manage the webhooks.
pub async fn serve(config: &ServerConfig) -> Result<RunningServer, Error> {
    Registry::with_defaults().serve(config).await
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
    Registry::with_defaults().serve_with(listener, broker, config)
}

/// The connection settings a config asks for (reading the TLS certificate and key, if any).
pub fn serve_config(config: &ServerConfig) -> Result<ServeConfig, Error> {
    let tls = config.tls.as_ref().map(|files| files.acceptor()).transpose()?;
    let mut serve = ServeConfig::default();
    serve.header_read_timeout = config.http.header_read_timeout;
    serve.shutdown_grace = config.http.shutdown_grace;
    serve.tls = tls;
    serve.max_connections = config.http.max_connections;
    serve.max_connections_per_address = config.http.max_connections_per_address;
    serve.max_header_bytes = config.http.max_header_bytes;
    Ok(serve)
}

/// A listener on `addr`; with `reuse_port`, bound with `SO_REUSEPORT` so that other processes
/// (and a process replacing this one) can listen on it too.
fn bind(addr: std::net::SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // What std and tokio do for a plain bind: a restarted server may bind at once even while
    // its previous connections linger in TIME_WAIT.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    if reuse_port {
        #[cfg(unix)]
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
}
