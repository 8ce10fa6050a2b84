//! Presence: who follows a topic.
//!
//! Each subscription that follows a topic is a [`Member`] of it, for as long as it follows.
//! Joins and leaves are messages of the topic's presence log ([`Topic::presence`]), with
//! offsets like any message, so a reader keeps up with presence the way it keeps up with data:
//! a [`PresenceSnapshot`] gives the members and the presence log's cursor at that moment, and
//! reading the presence log from that cursor gives every change after it, in order, or a
//! [`Gap`](crate::Gap) once retention passed it (then a new snapshot).
//!
//! A join's and a leave's payload is the member as JSON (`{"client":"…","user":"…",
//! "info":{…}}`), with the event type `join` or `leave`.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::cursor::Cursor;
use crate::error::{Error, ErrorKind, Result};
use crate::topic::Topic;

/// The event type of a join on a presence log.
pub const JOIN_EVENT: &str = "join";
/// The event type of a leave on a presence log.
pub const LEAVE_EVENT: &str = "leave";

/// The longest `client` id a member may have, in bytes.
pub const MAX_CLIENT_ID_LEN: usize = 64;

/// One member of a topic: a subscription following it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Member {
    /// What tells this member from every other of the topic: the server's id of the
    /// subscription, or the id a polling client sends with each poll.
    pub client: String,
    /// Who it is: the subject (`sub`) of its token; absent without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// What the client said about itself (a small JSON value), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
}

impl Member {
    /// A member with the id `client`, `user` and `info`, checked: an id of 1 to
    /// [`MAX_CLIENT_ID_LEN`] printable ASCII characters.
    pub fn new(
        client: impl Into<String>,
        user: Option<String>,
        info: Option<serde_json::Value>,
    ) -> Result<Self> {
        let client = client.into();
        let printable = client.bytes().all(|b| b.is_ascii_graphic());
        if client.is_empty() || client.len() > MAX_CLIENT_ID_LEN || !printable {
            return Err(Error::bad_request(format!(
                "a presence client id is 1 to {MAX_CLIENT_ID_LEN} printable ASCII characters, \
                 not {:?}",
                client.chars().take(MAX_CLIENT_ID_LEN + 1).collect::<String>()
            )));
        }
        Ok(Self { client, user, info })
    }

    /// The member as the payload of a join or a leave: JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a member serializes")
    }

    /// The member a join's or a leave's payload names.
    pub fn from_json(payload: &[u8]) -> Result<Self> {
        serde_json::from_slice(payload).map_err(|e| {
            Error::new(ErrorKind::Protocol, format!("a presence event is not a member: {e}"))
        })
    }
}

/// The members of a topic and where its presence log stood when they were read: reading the
/// log from `cursor` gives every join and leave after them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PresenceSnapshot {
    /// The topic.
    pub topic: Topic,
    /// Its members, in no particular order.
    pub members: Vec<Member>,
    /// The cursor of its presence log ([`Topic::presence`]) at the snapshot.
    pub cursor: Cursor,
}

impl PresenceSnapshot {
    /// A snapshot of `topic`.
    pub fn new(topic: Topic, members: Vec<Member>, cursor: Cursor) -> Self {
        Self { topic, members, cursor }
    }
}

/// How many follow a topic: what a count costs, without the members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PresenceStats {
    /// Members: subscriptions following it.
    pub members: u64,
    /// Distinct users among them (members without a token each count as one).
    pub users: u64,
}

impl PresenceStats {
    /// Counts of `members` and distinct `users`.
    pub fn new(members: u64, users: u64) -> Self {
        Self { members, users }
    }

    /// The counts of `members`.
    pub fn of<'a>(members: impl IntoIterator<Item = &'a Member>) -> Self {
        let mut users = std::collections::HashSet::new();
        let mut count = 0u64;
        let mut anonymous = 0u64;
        for member in members {
            count += 1;
            match &member.user {
                Some(user) => {
                    users.insert(user.as_str());
                }
                None => anonymous += 1,
            }
        }
        Self { members: count, users: users.len() as u64 + anonymous }
    }
}

/// Reads who follows a topic: what a broker and a transport's client offer (see
/// [`Client::presence`](crate::Client::presence)). The changes after a snapshot are the
/// topic's presence log, read with [`Fetch`](crate::Fetch) or
/// [`Subscribe`](crate::Subscribe) from the snapshot's cursor.
///
/// # Contract
///
/// - R1: a snapshot's members and cursor MUST be read together: the presence log after the
///   cursor holds exactly the joins and leaves since, so the snapshot plus those changes is
///   the membership at any later point.
/// - R2: a topic nobody follows has no members and a cursor, not an error.
/// - R3: reading presence needs the right to read the topic, and fails with `Forbidden` where
///   the topic's rules turn presence off.
#[async_trait]
pub trait Presence: Send + Sync {
    /// The members of `topic` and its presence log's cursor.
    async fn snapshot(&self, topic: &Topic) -> Result<PresenceSnapshot>;

    /// How many follow `topic`.
    async fn stats(&self, topic: &Topic) -> Result<PresenceStats>;
}

/// How long a member stays without being renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// For as long as the subscription is open: it leaves when the server says so (and, on a
    /// broker shared by nodes, when its node stops renewing its members).
    Held,
    /// Until this long after the last join: what a polling client, which holds nothing open
    /// between requests, has. Each poll joins again and so renews it.
    For(Duration),
}

/// Makes and ends members: what a broker offers its servers (see
/// [`Client::members`](crate::Client::members)). Servers make a member where they follow a
/// topic for a client.
///
/// # Contract
///
/// - M1: the first `join` of a `client` on a topic MUST append one join to the presence log;
///   joining again (a poll renewing its lease) MUST NOT, and takes the new lease.
/// - M2: `leave` of a member MUST append one leave; of a client that is not a member, nothing.
/// - M3: a member whose lease ran out MUST leave (one leave appended) within the broker's
///   documented bound.
/// - M4: a join past `max_members` members MUST fail with `RateLimited` and change nothing.
#[async_trait]
pub trait Members: Presence {
    /// Makes `member` a member of `topic` under `lease`, unless the topic has `max_members`.
    async fn join(
        &self,
        topic: &Topic,
        member: &Member,
        lease: Lease,
        max_members: usize,
    ) -> Result<()>;

    /// Ends the membership of `client` in `topic`.
    async fn leave(&self, topic: &Topic, client: &str) -> Result<()>;
}

/// The error for a join to `topic`, which already has `max_members` members (what
/// [`Members::join`] answers then, M4).
pub fn members_full(topic: &Topic, max_members: usize) -> Error {
    Error::new(
        ErrorKind::RateLimited,
        format!(
            "{topic} already has its maximum of {max_members} members ([presence] max_members); \
             try again once some leave"
        ),
    )
    .with_retry_after(Duration::from_secs(5))
}

/// The error for publishing to a presence log (what a broker answers a publish to one).
pub fn written_by_the_server(topic: &Topic) -> Error {
    Error::new(
        ErrorKind::Forbidden,
        format!("{topic} is a presence log: the server writes it as members join and leave"),
    )
}

/// `Ok` for a topic that can have members; for a presence log, the `bad_request` that says it
/// has none (what a broker answers a join or a snapshot of one).
pub fn check_has_members(topic: &Topic) -> Result<()> {
    match topic.is_presence() {
        true => Err(Error::bad_request(format!("{topic} is a presence log: it has no members"))),
        false => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_is_json_and_back() {
        let member =
            Member::new("c1", Some("alice".into()), Some(serde_json::json!({"name": "A"})))
                .unwrap();
        let json = member.to_json();
        assert_eq!(json, br#"{"client":"c1","user":"alice","info":{"name":"A"}}"#);
        assert_eq!(Member::from_json(&json).unwrap(), member);
        let bare = Member::new("c2", None, None).unwrap();
        assert_eq!(bare.to_json(), br#"{"client":"c2"}"#);
    }

    #[test]
    fn a_client_id_is_short_and_printable() {
        for bad in ["", "a b", "é", &"x".repeat(65)] {
            let err = Member::new(bad, None, None).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::BadRequest, "{bad:?}");
            assert!(err.to_string().contains("printable ASCII"), "{err}");
        }
        assert!(Member::new("x".repeat(64), None, None).is_ok());
    }

    #[test]
    fn stats_count_users_once_and_anonymous_members_each() {
        let members = [
            Member::new("a", Some("u1".into()), None).unwrap(),
            Member::new("b", Some("u1".into()), None).unwrap(),
            Member::new("c", Some("u2".into()), None).unwrap(),
            Member::new("d", None, None).unwrap(),
            Member::new("e", None, None).unwrap(),
        ];
        assert_eq!(PresenceStats::of(&members), PresenceStats::new(5, 4));
    }
}
