//! Presence on the server: members made where subscriptions are, and the routes that tell who
//! follows a topic.
//!
//! A push connection (an SSE or chunked stream, a WebSocket subscription) is a member for as
//! long as it follows the topic, under an id the server makes for it. A polling client, which
//! holds nothing open, is a member while its polls keep coming: each poll that carries its
//! `client` id joins again, and the membership lapses [`PresenceConfig::poll_lease`] after the
//! last one (after the end of a long poll's wait).

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use pushpull_core::{Broker, Error, ErrorKind, Lease, Member, Topic};
use serde::{Deserialize, Serialize};

use crate::grant::Grant;
use crate::response::json;
use crate::router::{HttpRequest, Params, Route};

/// The route of a topic's presence: its members and its presence log's cursor.
pub const PRESENCE_PATH: &str = "/v1/topics/{topic}/presence";
/// The route of a topic's presence counts.
pub const PRESENCE_STATS_PATH: &str = "/v1/topics/{topic}/presence/stats";

/// The query parameter (and WebSocket field) with which a client describes itself to the other
/// members: a JSON value, at most [`PresenceConfig::max_info`] bytes.
pub const INFO_PARAM: &str = "info";
/// The query parameter with which a polling client names itself, the same on every poll.
pub const CLIENT_PARAM: &str = "client";

/// Presence settings: `[presence]` in a server's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PresenceConfig {
    /// Whether subscriptions make members and the presence routes answer. `[[topics]]` rules
    /// turn it off for families of topics (`presence = false`).
    pub enabled: bool,
    /// The most members one topic has; one more subscription to it is refused (429).
    pub max_members: usize,
    /// The largest `info` a client may give, in bytes of JSON.
    pub max_info: usize,
    /// How long a polling client stays a member after its last poll (after the end of a long
    /// poll's wait): poll at least this often to stay.
    #[serde(with = "pushpull_core::duration_text")]
    pub poll_lease: Duration,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_members: 10_000,
            max_info: 512,
            poll_lease: Duration::from_secs(10),
        }
    }
}

impl PresenceConfig {
    /// Checks the values; an error names the key as `presence.KEY`.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |key: &str, why: &str| {
            Err(Error::new(ErrorKind::Config, format!("presence.{key}: {why}")))
        };
        if self.max_members == 0 {
            return bad("max_members", "must be at least 1 (enabled = false turns presence off)");
        }
        if self.max_info < 2 {
            return bad("max_info", "must be at least 2 bytes");
        }
        if self.poll_lease < Duration::from_secs(1) {
            return bad("poll_lease", "must be at least 1s");
        }
        Ok(())
    }
}

/// What a server's transports make members with: the broker's members and the settings.
#[derive(Clone)]
pub struct Presences {
    broker: Arc<dyn Broker>,
    config: PresenceConfig,
}

impl std::fmt::Debug for Presences {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presences").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Presences {
    /// Members of `broker`'s topics under `config`.
    pub fn new(broker: Arc<dyn Broker>, config: PresenceConfig) -> Self {
        Self { broker, config }
    }

    /// The settings.
    pub fn config(&self) -> &PresenceConfig {
        &self.config
    }

    /// Whether following `topic` makes a member: presence on, a broker that keeps members,
    /// and a topic that is not itself a presence log.
    fn makes_members(&self, topic: &Topic) -> bool {
        self.config.enabled && !topic.is_presence() && self.broker.members().is_some()
    }

    /// The `info` a client gave (JSON text), checked: at most `max_info` bytes of JSON.
    pub fn info(&self, text: Option<&str>) -> Result<Option<serde_json::Value>, Error> {
        let Some(text) = text else { return Ok(None) };
        if text.len() > self.config.max_info {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "presence info of {} bytes is over the limit of {} ([presence] max_info)",
                    text.len(),
                    self.config.max_info
                ),
            ));
        }
        serde_json::from_str(text)
            .map(Some)
            .map_err(|e| Error::bad_request(format!("presence info is not JSON: {e}")))
    }

    /// The `info` a client gave as a JSON value, checked like [`info`](Self::info).
    pub fn info_value(
        &self,
        value: Option<serde_json::Value>,
    ) -> Result<Option<serde_json::Value>, Error> {
        let Some(value) = value else { return Ok(None) };
        let text = serde_json::to_string(&value).expect("a JSON value serializes");
        self.info(Some(&text))
    }

    /// Makes a push connection following `topic` a member, under a new id, for as long as the
    /// returned [`Membership`] lives. `None` where no member is made.
    pub async fn join_held(
        &self,
        topic: &Topic,
        grant: Option<&Grant>,
        info: Option<serde_json::Value>,
    ) -> Result<Option<Membership>, Error> {
        self.join_as(topic, &connection_id(), user(grant), info).await
    }

    /// Makes `client` a member of `topic` for as long as the returned [`Membership`] lives
    /// (a webhook endpoint, under its id). `None` where no member is made.
    pub async fn join_as(
        &self,
        topic: &Topic,
        client: &str,
        user: Option<String>,
        info: Option<serde_json::Value>,
    ) -> Result<Option<Membership>, Error> {
        if !self.makes_members(topic) {
            return Ok(None);
        }
        let member = Member::new(client, user, info)?;
        let members = self.broker.members().expect("checked by makes_members");
        members.join(topic, &member, Lease::Held, self.config.max_members).await?;
        Ok(Some(Membership {
            broker: self.broker.clone(),
            topic: topic.clone(),
            client: member.client,
        }))
    }

    /// Makes a polling client a member of `topic` (again): for the time its request may be
    /// held (`wait`) and the poll lease past it. A held poll's lease starts again when the
    /// request ends (answered, or dropped by a client that hung up): the returned guard
    /// renews it when dropped.
    pub async fn join_polled(
        &self,
        topic: &Topic,
        grant: Option<&Grant>,
        client: &str,
        info: Option<serde_json::Value>,
        wait: Duration,
    ) -> Result<Option<PollEnd>, Error> {
        if !self.makes_members(topic) {
            return Ok(None);
        }
        let member = Member::new(client, user(grant), info)?;
        let members = self.broker.members().expect("checked by makes_members");
        let lease = Lease::For(self.config.poll_lease + wait);
        members.join(topic, &member, lease, self.config.max_members).await?;
        let held = !wait.is_zero();
        Ok(held.then(|| PollEnd {
            presences: self.clone(),
            topic: topic.clone(),
            member: Some(member),
        }))
    }

    /// What a poll request says about its client: its `client` id and `info`, when it gives
    /// an id (a poll without one is no member).
    pub fn polled(
        &self,
        query: &std::collections::HashMap<String, String>,
    ) -> Result<Option<(String, Option<serde_json::Value>)>, Error> {
        let Some(client) = query.get(CLIENT_PARAM) else { return Ok(None) };
        let info = self.info(query.get(INFO_PARAM).map(String::as_str))?;
        Ok(Some((client.clone(), info)))
    }
}

fn user(grant: Option<&Grant>) -> Option<String> {
    grant.and_then(|grant| grant.subject.clone())
}

/// A new member id for a connection: 16 random hex digits.
pub fn connection_id() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the system's random source");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The end of a held poll: dropping it starts the client's poll lease from now.
pub struct PollEnd {
    presences: Presences,
    topic: Topic,
    member: Option<Member>,
}

impl std::fmt::Debug for PollEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollEnd").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl Drop for PollEnd {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let Some(member) = self.member.take() else { return };
        let presences = self.presences.clone();
        let topic = self.topic.clone();
        runtime.spawn(async move {
            let Some(members) = presences.broker.members() else { return };
            let lease = Lease::For(presences.config.poll_lease);
            if let Err(error) =
                members.join(&topic, &member, lease, presences.config.max_members).await
            {
                tracing::debug!(%topic, %error, "a poll's lease could not be renewed");
            }
        });
    }
}

/// A push connection's membership of a topic: dropping it makes the member leave.
pub struct Membership {
    broker: Arc<dyn Broker>,
    topic: Topic,
    client: String,
}

impl Membership {
    /// The member's id.
    pub fn client(&self) -> &str {
        &self.client
    }
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("topic", &self.topic)
            .field("client", &self.client)
            .finish()
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let broker = self.broker.clone();
        let topic = self.topic.clone();
        let client = std::mem::take(&mut self.client);
        runtime.spawn(async move {
            let Some(members) = broker.members() else { return };
            if let Err(error) = members.leave(&topic, &client).await {
                // A broker shared by nodes ends it when this node stops renewing it.
                tracing::warn!(%topic, %error, "a member's leave could not be written");
            }
        });
    }
}

/// `GET /v1/topics/{topic}/presence` (the members and the presence log's cursor:
/// `{"topic","members":[{"client","user","info"}],"cursor"}`) and `GET
/// /v1/topics/{topic}/presence/stats` (`{"members","users"}`). Reading them needs the right
/// to read the topic.
pub fn presence_routes(presences: &Presences) -> Vec<Route> {
    let snapshot = presences.clone();
    let stats = presences.clone();
    vec![
        Route::new(Method::GET, PRESENCE_PATH, move |_: HttpRequest, params: Params| {
            let presences = snapshot.clone();
            async move {
                let (presence, topic) = presences.reading(&params)?;
                let snapshot = presence.snapshot(&topic).await?;
                let body = serde_json::to_vec(&snapshot).expect("a snapshot serializes");
                Ok(json(StatusCode::OK, body))
            }
        }),
        Route::new(Method::GET, PRESENCE_STATS_PATH, move |_: HttpRequest, params: Params| {
            let presences = stats.clone();
            async move {
                let (presence, topic) = presences.reading(&params)?;
                let stats = presence.stats(&topic).await?;
                let body = serde_json::to_vec(&stats).expect("stats serialize");
                Ok(json(StatusCode::OK, body))
            }
        }),
    ]
}

impl Presences {
    /// What a presence route reads, and of which topic.
    fn reading(&self, params: &Params) -> Result<(&dyn pushpull_core::Presence, Topic), Error> {
        let topic = crate::request::topic(params)?;
        Ok((self.reader()?, topic))
    }

    /// Where presence is read: the broker's, when presence is on.
    pub fn reader(&self) -> Result<&dyn pushpull_core::Presence, Error> {
        if !self.config.enabled {
            return Err(Error::new(
                ErrorKind::Forbidden,
                "presence is off on this server ([presence] enabled = false)",
            ));
        }
        self.broker.presence().ok_or_else(|| {
            Error::new(ErrorKind::Unsupported, "this server's broker does not keep presence")
        })
    }
}
