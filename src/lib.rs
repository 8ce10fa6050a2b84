#![doc = include_str!("../README.md")]
// docs.rs builds with `--cfg docsrs`: each feature-gated item shows the feature it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod client_config;
pub mod demo;
mod live;
#[cfg(feature = "prometheus")]
pub mod metrics;
mod registry;
mod serve;
mod server_config;

pub use client_config::{ClientConfig, connect};
pub use demo::Demo;
pub use registry::{AUTO, AUTO_ORDER, Registry, TransportFactory};
pub use serve::{broker, router, serve, serve_config, serve_on, serve_with, transports};
pub use server_config::{
    BrokerConfig, ENV_PREFIX, ENV_SECTIONS, HttpConfig, LogFormat, Section, ServerConfig,
    TransportsConfig, env_settings,
};

pub use pushpull_core::*;
pub use pushpull_http::{RunningServer, ServeConfig, Shutdown, ShutdownTrigger};

/// The transports and brokers of this workspace: each is its crate, re-exported under its name
/// when its cargo feature (of the same name) is on, and registered (a transport's client and
/// server, a broker) by [`Registry::with_defaults`]. Adding one is a line here.
macro_rules! built_in {
    (
        transports { $($name:literal => $module:ident: $krate:ident { $client:ident, $server:ident }),* $(,)? }
        brokers { $($bname:literal => $bmodule:ident: $bkrate:ident { $broker:ident }),* $(,)? }
    ) => {
        $(
            #[cfg(feature = $name)]
            pub use $krate as $module;
        )*
        $(
            #[cfg(feature = $bname)]
            pub use $bkrate as $bmodule;
        )*

        /// The names of the transports this workspace has, in or out of this build: an unknown
        /// name among them is a cargo feature to turn on.
        pub(crate) const BUILT_IN: &[&str] = &[$($name),*];
        /// The same for brokers (the memory broker is always in).
        pub(crate) const BUILT_IN_BROKERS: &[&str] = &[$($bname),*];

        /// Registers the memory broker and the built-in transports and brokers whose features
        /// are on.
        pub(crate) fn register_built_in(registry: &mut Registry) {
            registry.register_broker::<MemoryBroker>();
            $(
                #[cfg(feature = $name)]
                registry.register_client::<$krate::$client>().register_server::<$krate::$server>();
            )*
            $(
                #[cfg(feature = $bname)]
                registry.register_broker::<$bkrate::$broker>();
            )*
        }
    };
}

built_in! {
    transports {
        "poll" => poll: pushpull_poll { PollClient, PollServer },
        "longpoll" => longpoll: pushpull_longpoll { LongpollClient, LongpollServer },
        "sse" => sse: pushpull_sse { SseClient, SseServer },
        "ws" => ws: pushpull_ws { WsClient, WsServer },
        "stream" => stream: pushpull_stream { StreamClient, StreamServer },
        "webhook" => webhook: pushpull_webhook { WebhookClient, WebhookServer },
    }
    brokers {
        "redis" => redis: pushpull_redis { RedisBroker },
    }
}
