//! The page route, `GET /v1/topics/{topic}/messages`: how every HTTP client fetches, what short
//! polling polls and long polling holds. Served by every transport's server, so `Fetch` works
//! whatever subset of transports a server enables.

mod client;
mod config;
mod held;
mod server;
pub mod wire;

pub use client::{
    ManyPageAnswer, PageAnswer, fetch_newest_first_page, fetch_page, request_many_page,
    request_page,
};
pub use config::PageConfig;
pub use server::{
    Hold, MANY_MESSAGES_PATH, MESSAGES_PATH, PageRequest, many_page_route, page_response,
    page_route,
};
