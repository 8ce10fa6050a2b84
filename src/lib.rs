#![doc = include_str!("../README.md")]

mod client_config;
pub mod demo;
pub mod metrics;
mod registry;
mod serve;
mod server_config;

pub use client_config::{ClientConfig, connect};
pub use demo::Demo;
pub use registry::{AUTO, AUTO_ORDER, Registry, TransportFactory};
pub use serve::{broker, router, serve, serve_config, serve_on, serve_with, transports};
pub use server_config::{
    BrokerConfig, BrokerKind, ENV_PREFIX, HttpConfig, RetentionConfig, Section, ServerConfig,
    TransportsConfig,
};

pub use pushpull_core::*;
pub use pushpull_http::{RunningServer, ServeConfig, Shutdown, ShutdownTrigger};

/// The transports of this workspace: each is its crate, re-exported under its name when its
/// cargo feature (of the same name) is on, and registered, client and server, by
/// [`Registry::with_defaults`]. Adding one is a line here.
macro_rules! built_in_transports {
    ($($name:literal => $module:ident: $krate:ident { $client:ident, $server:ident }),* $(,)?) => {
        $(
            #[cfg(feature = $name)]
            pub use $krate as $module;
        )*

        /// The names of the transports this workspace has, in or out of this build: an unknown
        /// name among them is a cargo feature to turn on.
        pub(crate) const BUILT_IN: &[&str] = &[$($name),*];

        /// Registers the built-in transports whose features are on.
        pub(crate) fn register_built_in(registry: &mut Registry) {
            $(
                #[cfg(feature = $name)]
                registry.register_client::<$krate::$client>().register_server::<$krate::$server>();
            )*
            let _ = registry;
        }
    };
}

built_in_transports! {
    "poll" => poll: pushpull_poll { PollClient, PollServer },
    "longpoll" => longpoll: pushpull_longpoll { LongpollClient, LongpollServer },
    "sse" => sse: pushpull_sse { SseClient, SseServer },
    "ws" => ws: pushpull_ws { WsClient, WsServer },
    "stream" => stream: pushpull_stream { StreamClient, StreamServer },
    "webhook" => webhook: pushpull_webhook { WebhookClient, WebhookServer },
}

#[cfg(feature = "redis")]
pub use pushpull_redis as redis;

/// What the broker a config asks for shares with the transports (webhook endpoints, kept where
/// every node of a deployment sees them).
pub(crate) fn shared_state(
    context: &mut pushpull_http::Context,
    config: &ServerConfig,
) -> Result<(), Error> {
    #[cfg(feature = "redis")]
    if config.broker.kind == BrokerKind::Redis {
        let store: std::sync::Arc<dyn pushpull_webhook::EndpointStore> =
            std::sync::Arc::new(pushpull_redis::RedisEndpointStore::open(&config.redis_config())?);
        context.extensions.insert(store);
    }
    let _ = (context, config);
    Ok(())
}
