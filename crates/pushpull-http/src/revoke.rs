//! Revoking tokens: an administrator ends every connection of a subject (`sub`) or of one token
//! (`jti`) now, and the server refuses them until they would have expired anyway. Every node
//! learns of a revocation through the broker's shared state, within [`SHARE_EVERY`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode};
use pushpull_core::{Error, ErrorKind, SharedState};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::grant::{Grant, Right};
use crate::router::{HttpRequest, Params, Route};

/// The admin route: `POST` revokes, `GET` lists what is revoked now.
pub const REVOCATIONS_PATH: &str = "/v1/admin/revocations";

/// How often a node reads the revocations other nodes made.
pub const SHARE_EVERY: Duration = Duration::from_secs(1);

/// How long a revocation lasts when the request gives no `until`: the longest a token is
/// expected to live.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The shared state's collection of revocations.
const COLLECTION: &str = "revocations";

/// One revocation: of every token of a subject issued before it (`sub`), or of one token
/// (`jti`), until `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    /// The subject whose tokens issued until `at` are revoked (tokens without `iat` too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The token (its `jti` claim) that is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// When it was revoked, in seconds since the epoch (the server's clock when absent).
    #[serde(default)]
    pub at: u64,
    /// Until when it is refused, in seconds since the epoch (default: a day after `at`); put
    /// the token's `exp` here.
    #[serde(default)]
    pub until: u64,
}

impl Revocation {
    /// The record's id in the shared state: what it revokes.
    fn id(&self) -> String {
        match (&self.sub, &self.jti) {
            (Some(sub), _) => format!("sub:{sub}"),
            (None, Some(jti)) => format!("jti:{jti}"),
            (None, None) => String::new(),
        }
    }

    /// Checks what a request asked, and fills in `at` and `until`.
    fn completed(mut self, now: u64) -> Result<Self, Error> {
        let bad = |why: &str| Error::bad_request(why.to_owned());
        match (&self.sub, &self.jti) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(bad("name exactly one of sub (a subject) or jti (a token)"));
            }
            (Some(id), None) | (None, Some(id)) if id.is_empty() || id.len() > 256 => {
                return Err(bad("sub or jti is 1 to 256 bytes"));
            }
            _ => {}
        }
        if self.at == 0 {
            self.at = now;
        }
        if self.until == 0 {
            self.until = self.at + DEFAULT_LIFETIME.as_secs();
        }
        if self.until <= now {
            return Err(bad("until is in the past: a token expired by then is refused anyway"));
        }
        Ok(self)
    }

    /// Whether it refuses `grant` at `now`.
    fn covers(&self, grant: &Grant, now: u64) -> bool {
        if now >= self.until {
            return false;
        }
        if let Some(jti) = &self.jti {
            return grant.token_id.as_deref() == Some(jti.as_str());
        }
        let issued = grant.issued_at.map(seconds);
        self.sub.is_some()
            && grant.subject == self.sub
            && issued.is_none_or(|issued| issued <= self.at)
    }
}

fn seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn now() -> u64 {
    seconds(SystemTime::now())
}

/// Why a grant's rights ended before its request or connection did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The token expired.
    Expired,
    /// The token was revoked.
    Revoked,
}

impl Ended {
    /// What to tell the client.
    pub fn message(self) -> &'static str {
        match self {
            Ended::Expired => "the token has expired",
            Ended::Revoked => "the token was revoked",
        }
    }
}

/// A future that resolves when a grant's rights end.
pub type Ending = Pin<Box<dyn Future<Output = Ended> + Send>>;

/// The revocations a server enforces: cheap to clone, shared by its auth layer, its grants and
/// its admin route.
#[derive(Clone, Default)]
pub struct Revocations {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// By id (`sub:…`, `jti:…`).
    list: Mutex<HashMap<String, Revocation>>,
    /// Bumped at every new revocation: what open connections wait on.
    changed: watch::Sender<u64>,
    /// Whether a revocation was ever made.
    any: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = self.shared.list.lock().expect("revocations lock").len();
        f.debug_struct("Revocations").field("count", &count).finish()
    }
}

impl Revocations {
    /// None yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `revocation` (completed: `at` and `until` set) and ends the connections it covers.
    /// False when it was already there.
    pub fn revoke(&self, revocation: Revocation) -> bool {
        let now = now();
        let mut list = self.shared.list.lock().expect("revocations lock");
        list.retain(|_, kept| kept.until > now);
        let id = revocation.id();
        if list.get(&id).is_some_and(|kept| kept.at >= revocation.at) {
            return false;
        }
        list.insert(id, revocation);
        self.shared.any.store(true, std::sync::atomic::Ordering::Release);
        drop(list);
        self.shared.changed.send_modify(|generation| *generation += 1);
        true
    }

    /// Whether `grant` is revoked now.
    pub fn covers(&self, grant: &Grant) -> bool {
        // Every request asks: without a revocation ever made, it takes no lock.
        if !self.shared.any.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        let list = self.shared.list.lock().expect("revocations lock");
        if list.is_empty() {
            return false;
        }
        let now = now();
        list.values().any(|revocation| revocation.covers(grant, now))
    }

    /// What is revoked now.
    pub fn list(&self) -> Vec<Revocation> {
        let now = now();
        let list = self.shared.list.lock().expect("revocations lock");
        let mut listed: Vec<Revocation> =
            list.values().filter(|r| r.until > now).cloned().collect();
        listed.sort_by_key(|r| (r.at, r.id()));
        listed
    }

    /// Resolves once `grant` is revoked.
    pub fn revoked(&self, grant: &Grant) -> impl Future<Output = ()> + Send + 'static {
        let mut changes = self.shared.changed.subscribe();
        let revocations = self.clone();
        // What a revocation names, alone: the grant's rights are not copied per request.
        let grant = Grant {
            subject: grant.subject.clone(),
            token_id: grant.token_id.clone(),
            issued_at: grant.issued_at,
            ..Grant::default()
        };
        async move {
            while !revocations.covers(&grant) {
                // The sender lives as long as `revocations` does: this never fails.
                let _ = changes.changed().await;
            }
        }
    }

    /// Reads the revocations every node made from `state` every [`SHARE_EVERY`], until these
    /// revocations are dropped (the server stopped).
    pub fn follow_shared(&self, state: Arc<dyn SharedState>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no tokio runtime: revocations made on other nodes are not read");
            return;
        };
        let revocations = Arc::downgrade(&self.shared);
        runtime.spawn(async move {
            let mut known: HashMap<String, Revocation> = HashMap::new();
            let mut ticks = tokio::time::interval(SHARE_EVERY);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(shared) = revocations.upgrade() else { return };
                let local = Revocations { shared };
                if let Err(error) = read_shared(&*state, &local, &mut known).await {
                    tracing::warn!(%error, "cannot read the shared revocations; trying again");
                }
            }
        });
    }
}

/// Applies the shared revocations not yet known, and forgets those past their `until`.
async fn read_shared(
    state: &dyn SharedState,
    local: &Revocations,
    known: &mut HashMap<String, Revocation>,
) -> Result<(), Error> {
    let now = now();
    for id in state.ids(COLLECTION).await? {
        if known.get(&id).is_some_and(|kept| kept.until > now) {
            continue;
        }
        let fields = state.fields(COLLECTION, &id).await?;
        let Some(revocation) = fields.get("json").and_then(|j| serde_json::from_str(j).ok()) else {
            continue;
        };
        let revocation: Revocation = revocation;
        if revocation.until <= now {
            // Past its time on every node: the first to see it forgets it.
            state.remove(COLLECTION, &id).await?;
            known.remove(&id);
            continue;
        }
        local.revoke(revocation.clone());
        known.insert(id, revocation);
    }
    Ok(())
}

/// `POST /v1/admin/revocations` (`{"sub": …}` or `{"jti": …}`, optional `until`) and `GET` (the
/// list), for the admin right. A revocation made here is written to `state` too, for the other
/// nodes.
pub fn revocation_routes(
    revocations: Revocations,
    state: Option<Arc<dyn SharedState>>,
) -> Vec<Route> {
    let listing = revocations.clone();
    vec![
        Route::new(Method::POST, REVOCATIONS_PATH, move |req: HttpRequest, _: Params| {
            let (revocations, state) = (revocations.clone(), state.clone());
            async move {
                admin(&req)?;
                let (_, body) =
                    crate::request::body(req, 64 * 1024, Duration::from_secs(10)).await?;
                let asked: Revocation = serde_json::from_slice(&body).map_err(|e| {
                    Error::bad_request(format!("the body is not a revocation: {e}"))
                })?;
                let revocation = asked.completed(now())?;
                if let Some(state) = &state {
                    let json = serde_json::to_string(&revocation).expect("a revocation encodes");
                    state.insert(COLLECTION, &revocation.id(), &[("json", json)]).await?;
                }
                revocations.revoke(revocation.clone());
                tracing::info!(sub = ?revocation.sub, jti = ?revocation.jti, "revoked");
                let body = serde_json::to_vec(&revocation).expect("a revocation encodes");
                Ok(crate::response::json(StatusCode::CREATED, body))
            }
        }),
        Route::new(Method::GET, REVOCATIONS_PATH, move |req: HttpRequest, _: Params| {
            let revocations = listing.clone();
            async move {
                admin(&req)?;
                let body = serde_json::json!({ "revocations": revocations.list() });
                Ok(crate::response::json(StatusCode::OK, serde_json::to_vec(&body).expect("json")))
            }
        }),
    ]
}

/// The admin right, when the server checks tokens (the auth layer also asks it of this path).
fn admin(request: &HttpRequest) -> Result<(), Error> {
    match Grant::of(request) {
        Some(grant) => grant.check(Right::Admin),
        None => Err(Error::new(
            ErrorKind::Forbidden,
            "revoking tokens needs [auth]: without it the server checks no tokens",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(sub: &str, jti: Option<&str>, issued: Option<u64>) -> Grant {
        Grant {
            subject: Some(sub.into()),
            token_id: jti.map(str::to_owned),
            issued_at: issued.map(|s| UNIX_EPOCH + Duration::from_secs(s)),
            ..Grant::default()
        }
    }

    #[test]
    fn a_subject_loses_the_tokens_issued_before_and_a_jti_its_token() {
        let now = now();
        let by_subject = Revocation { sub: Some("ann".into()), jti: None, at: 0, until: 0 }
            .completed(now)
            .unwrap();
        assert_eq!(by_subject.until, now + DEFAULT_LIFETIME.as_secs());
        assert!(by_subject.covers(&grant("ann", None, Some(now - 10)), now));
        assert!(by_subject.covers(&grant("ann", None, None), now), "no iat: revoked");
        assert!(!by_subject.covers(&grant("ann", None, Some(now + 5)), now + 5), "issued after");
        assert!(!by_subject.covers(&grant("bob", None, None), now));
        assert!(!by_subject.covers(&grant("ann", None, None), by_subject.until), "lapsed");
        let by_token = Revocation { sub: None, jti: Some("t1".into()), at: 0, until: now + 60 }
            .completed(now)
            .unwrap();
        assert!(by_token.covers(&grant("ann", Some("t1"), None), now));
        assert!(!by_token.covers(&grant("ann", Some("t2"), None), now));
    }

    #[test]
    fn bad_revocations_say_what_is_wrong() {
        let now = now();
        let ask = |sub: Option<&str>, jti: Option<&str>, until| {
            let asked =
                Revocation { sub: sub.map(Into::into), jti: jti.map(Into::into), at: 0, until };
            asked.completed(now).unwrap_err().to_string()
        };
        assert!(ask(None, None, 0).contains("exactly one"));
        assert!(ask(Some("a"), Some("b"), 0).contains("exactly one"));
        assert!(ask(Some(""), None, 0).contains("1 to 256"));
        assert!(ask(Some("a"), None, now - 1).contains("in the past"));
    }

    #[tokio::test]
    async fn a_revocation_wakes_the_connections_it_covers() {
        let revocations = Revocations::new();
        let held = tokio::spawn(revocations.revoked(&grant("ann", Some("t1"), None)));
        let other = tokio::spawn(revocations.revoked(&grant("bob", None, None)));
        tokio::task::yield_now().await;
        let revocation = Revocation { sub: None, jti: Some("t1".into()), at: 0, until: 0 };
        assert!(revocations.revoke(revocation.clone().completed(now()).unwrap()));
        tokio::time::timeout(Duration::from_secs(5), held).await.unwrap().unwrap();
        assert!(!other.is_finished(), "bob's token is not revoked");
        assert_eq!(revocations.list().len(), 1);
        other.abort();
    }
}
