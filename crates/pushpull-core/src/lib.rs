#![doc = include_str!("../README.md")]

mod auth;
mod backoff;
mod cursor;
pub mod duration_text;
mod error;
mod ext;
mod follow;
mod many;
mod memory;
mod message;
mod open;
mod presence;
mod rules;
mod set;
mod topic;
mod traits;

pub use auth::{BearerToken, TokenSource};
pub use backoff::Backoff;
pub use cursor::{Cursor, Epoch, MAX_CURSOR_LEN, Offset};
pub use error::{Error, ErrorKind, Result};
pub use ext::FetchExt;
pub use follow::{Continuity, Position};
pub use many::{
    CursorSet, Directory, FollowRequest, Listing, MAX_CURSOR_SET_LEN, MultiSubscription, Selector,
    SetKeys, follow,
};
pub use memory::{MemoryBroker, MemoryConfig, NAME as MEMORY_BROKER, Retention};
pub use message::{
    Capabilities, Delivery, EncodingKey, Encodings, Gap, GapReason, MAX_CONTENT_TYPE_LEN,
    MAX_EVENT_LEN, MAX_IDEMPOTENCY_KEY_LEN, Message, OffsetRange, Page, Publication,
    RESERVED_EVENT_PREFIX, Receipt, millis_since_unix_epoch, time_from_millis,
};
pub use open::{OpenBroker, SharedState};
pub use presence::{
    JOIN_EVENT, LEAVE_EVENT, Lease, MAX_CLIENT_ID_LEN, Member, Members, Presence, PresenceSnapshot,
    PresenceStats, check_has_members, members_full, written_by_the_server,
};
pub use rules::{AnonymousRule, RetentionRule, RuledBroker, TopicPolicy, TopicRule, TopicRules};
pub use set::SubscriptionSet;
pub use topic::{MAX_TOPIC_LEN, PRESENCE_PREFIX, Topic};
pub use traits::{Broker, Client, Connect, Fetch, Publish, Subscribe, Subscription};

pub use async_trait::async_trait;
pub use bytes::Bytes;
