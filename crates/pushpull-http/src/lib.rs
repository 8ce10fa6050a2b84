#![doc = include_str!("../README.md")]

mod client;
mod cors;
mod ends_at;
pub mod fanout;
mod gauge;
mod grant;
mod gzip;
mod many_client;
pub mod metrics;
pub mod pages;
mod presence;
mod publish;
mod push;
mod push_client;
mod reopen;
pub mod request;
mod response;
mod revoke;
mod router;
mod serve;
mod takeover;
pub mod tls;
mod transport;
mod watched;
pub mod wire;

pub use client::{HttpClient, HttpClientConfig, retry_after};
pub use cors::Cors;
pub use ends_at::EndsAt;
pub use gauge::{Gauge, Held};
pub use grant::{CheckToken, Grant, RateLimit, Right, TopicPattern};
pub use many_client::{ManyQuery, Track};
pub use pages::{
    Hold, MANY_MESSAGES_PATH, MESSAGES_PATH, ManyPageAnswer, PageAnswer, PageConfig,
    fetch_newest_first_page, fetch_page, many_page_route, page_route, request_many_page,
};
pub use presence::{
    CLIENT_PARAM, INFO_PARAM, Membership, PRESENCE_PATH, PRESENCE_STATS_PATH, PollEnd,
    PresenceConfig, Presences, connection_id, presence_routes,
};
pub use publish::{
    BATCH_PATH, EVENT_HEADER, IDEMPOTENCY_KEY_HEADER, MAX_BATCH, PublishLimits, SHARED_API,
    TOPIC_PATH, api, batch_route, publish_batch, publish_route,
};
pub use push::{
    Encode, Fanned, Feed, Open, PushFormat, PushServer, PushTransport, Start, push_response,
};
pub use push_client::{Decoded, Opening, PushClient, PushReader, Scope, Target};
pub use reopen::{reopening, reopening_many};
pub use response::{
    Body, empty, error_from_response, error_response, full, json, json_error, status_for,
    status_is_retryable,
};
pub use revoke::{
    DEFAULT_LIFETIME, Ended, Ending, REVOCATIONS_PATH, Revocation, Revocations, SHARE_EVERY,
    revocation_routes,
};
pub use router::{
    BoxError, Guard, HandlerResult, HttpRequest, Params, Route, Router, RouterFuture, query_params,
};
pub use serve::{
    ConnectionHold, PeerAddr, REFUSAL_DEADLINE, RunningServer, ServeConfig, ServerStats, Shutdown,
    ShutdownTrigger, fit_open_file_limit, serve_until, spawn, spawn_with_stats,
};
pub use tls::TlsFiles;
pub use transport::{
    Context, DEFAULT_MAX_TOPICS, LiveCount, Measure, Mount, OwnListener, Reading, TransportServer,
};

#[doc(hidden)]
pub mod __private {
    pub use bytes::Bytes;
    pub use {http, http_body, hyper, tower_service};
}
