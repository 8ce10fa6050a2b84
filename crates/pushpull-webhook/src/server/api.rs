//! The registration API's types, as the server answers and the client reads them.

use std::collections::BTreeMap;

use pushpull_core::Cursor;
use serde::{Deserialize, Serialize};

/// What `POST /v1/webhooks` takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    /// Where to deliver: an `http://` URL.
    pub url: String,
    /// The topics to deliver (1 to `max_topics`): names, or prefixes (`orders:*`, which
    /// deliver every topic they select, those created later included, from their first message;
    /// at most `max_topics` topics each).
    pub topics: Vec<String>,
    /// Where to start on every topic: `beginning`, `latest` (default), a cursor, `last:N`,
    /// `since:TIME`; or a cursor set (`@…`, relative to `topics`) that resumes each topic.
    #[serde(default)]
    pub after: Option<String>,
    /// The signing secret (`whsec_…`); the server generates one when absent.
    #[serde(default)]
    pub secret: Option<String>,
}

/// An endpoint as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointView {
    /// Its id.
    pub id: String,
    /// Where it is delivered.
    pub url: String,
    /// `active`, `paused` (retries used up, `on_exhausted = "pause"`) or `disabled` (it answered 410).
    pub status: String,
    /// Where each topic's delivery stands: after the last message delivered (or skipped).
    pub cursors: BTreeMap<String, Cursor>,
    /// Messages delivered.
    pub delivered: u64,
    /// Failed attempts in a row.
    pub failures: u64,
    /// The last failure's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Messages that used up their attempts.
    pub dead: Vec<DeadMessage>,
    /// The node delivering it now (the holder of its lease), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The signing secret: only in the answer to create (and rotate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// A message given up on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadMessage {
    /// Its topic.
    pub topic: String,
    /// Its cursor.
    pub cursor: Cursor,
    /// Its `webhook-id`.
    pub id: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last failure.
    pub reason: String,
}
