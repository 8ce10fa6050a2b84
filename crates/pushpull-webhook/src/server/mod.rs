//! The server half: the endpoint registration API, and one delivery worker per endpoint.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::{Method, StatusCode};
use pushpull_core::{
    Broker, Cursor, CursorSet, Error, ErrorKind, FollowRequest, Selector, SubscriptionSet, Topic,
};
use pushpull_http::{
    Context, HandlerResult, HttpRequest, LiveCount, Mount, PageConfig, Params, Route, Router, json,
    request,
};

use crate::config::ServerConfig;
use crate::targets::TargetPolicy;
use crate::wire::Secret;

mod api;
mod delivery;
mod endpoints;
mod meter;
mod store;
mod target;

pub use api::{CreateEndpoint, DeadMessage, EndpointView};
use delivery::Worker;
use endpoints::{Control, Endpoint, Status, endpoint_id, view};
use meter::WebhookMeter;
pub use meter::{WEBHOOK_ATTEMPTS, WEBHOOK_DEAD, WEBHOOK_FAILURES};
pub use store::{
    EndpointRecord, EndpointStore, MemoryEndpointStore, Progress, SharedEndpointStore,
};
use target::Target;

/// The registration API's root.
pub const WEBHOOKS_PATH: &str = "/v1/webhooks";

/// The webhook server over a broker: a cheap-`Clone` tower (and hyper) service serving
/// publishing, pages and the registration API, whose workers deliver; its
/// [`routes`](Self::routes) mount the registration API beside other transports'.
#[derive(Clone)]
pub struct WebhookServer {
    hooks: Hooks,
    router: Router,
    /// Held by the server and its routes; when the last is dropped, the background sync
    /// stops, and so do the workers.
    alive: Arc<()>,
}

impl std::fmt::Debug for WebhookServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookServer")
            .field("config", &self.hooks.config)
            .field("endpoints", &self.endpoint_count())
            .finish()
    }
}

impl WebhookServer {
    /// A server over `broker`, its endpoints kept in this process.
    pub fn new(broker: Arc<dyn Broker>, config: ServerConfig) -> Result<Self, Error> {
        Self::with_store(broker, config, Arc::new(MemoryEndpointStore::new()))
    }

    /// A server over `broker` whose endpoints live in `store`: with a store the nodes of a
    /// deployment share, every node serves the registration API and exactly one delivers each
    /// endpoint at a time, under a lease that another node takes over when its holder dies.
    pub fn with_store(
        broker: Arc<dyn Broker>,
        config: ServerConfig,
        store: Arc<dyn EndpointStore>,
    ) -> Result<Self, Error> {
        let context = Context::new(broker).with_pages(PageConfig::default(), crate::NAME);
        Self::within(&context, config, store)
    }

    fn within(
        context: &Context,
        config: ServerConfig,
        store: Arc<dyn EndpointStore>,
    ) -> Result<Self, Error> {
        config.validate()?;
        let broker = context.broker.clone();
        let tls = pushpull_http::tls::with_alpn(
            &pushpull_http::tls::client_config(config.ca_file.as_deref())?,
            &[b"http/1.1"],
        );
        let api = pushpull_http::api(context, None);
        let hooks = Hooks {
            broker,
            tls,
            config: Arc::new(config),
            store,
            node: endpoint_id().replacen("ep_", "node_", 1).into(),
            running: Arc::default(),
            meter: pushpull_http::metrics::DeliveryMeter::new(crate::NAME),
            attempts: WebhookMeter::new(),
            presences: context.presences(),
        };
        // The background sync lives as long as something serves the routes (the server, its
        // router, or its routes mounted elsewhere): they hold this token.
        let alive = Arc::new(());
        let router = api.with(hooks.routes(&alive));
        tokio::spawn(hooks.clone().keep_in_step(Arc::downgrade(&alive)));
        Ok(Self { hooks, router, alive })
    }

    /// This node's name in lease records (and in endpoint views' `node`).
    pub fn node(&self) -> &str {
        &self.hooks.node
    }

    /// Endpoints this node is delivering right now.
    pub fn endpoint_count(&self) -> usize {
        self.hooks.running.lock().expect("running lock").len()
    }

    /// The registration routes, to mount beside other transports'.
    pub fn routes(&self) -> Vec<Route> {
        self.hooks.routes(&self.alive)
    }

    /// The router it serves: publishing, pages and the registration API.
    pub fn router(&self) -> Router {
        self.router.clone()
    }
}

pushpull_http::serve_with_router!(WebhookServer);

impl pushpull_http::TransportServer for WebhookServer {
    const NAME: &'static str = crate::NAME;
    type Config = ServerConfig;

    fn check(config: &ServerConfig) -> Result<(), Error> {
        config.validate()
    }

    /// Its endpoints live in the broker's shared state when the context has one (an
    /// `Arc<dyn SharedState>` in its extensions, which every node sees), else in this process.
    fn build(context: &Context, config: ServerConfig) -> Result<Self, Error> {
        let store: Arc<dyn EndpointStore> =
            match context.extensions.get::<Arc<dyn pushpull_core::SharedState>>() {
                Some(state) => Arc::new(SharedEndpointStore::new(state.clone())),
                None => Arc::new(MemoryEndpointStore::new()),
            };
        Self::within(context, config, store)
    }

    fn mount(&self) -> Mount {
        let running = self.hooks.running.clone();
        Mount::routes(self.routes()).with_live(LiveCount::new(
            "endpoints_delivering",
            &[],
            move || running.lock().expect("running lock").len(),
        ))
    }
}

/// The endpoints and what their routes and workers need; the routes hold this, not the
/// [`WebhookServer`] (whose router holds the routes).
#[derive(Clone)]
struct Hooks {
    broker: Arc<dyn Broker>,
    /// How `https://` endpoints are reached (offering `http/1.1`).
    tls: Arc<pushpull_http::tls::RustlsClientConfig>,
    config: Arc<ServerConfig>,
    store: Arc<dyn EndpointStore>,
    /// This node, in leases.
    node: Arc<str>,
    /// The endpoints this node delivers, by id.
    running: Arc<Mutex<HashMap<String, Arc<Endpoint>>>>,
    meter: pushpull_http::metrics::DeliveryMeter,
    attempts: WebhookMeter,
    /// Where a delivered endpoint becomes a member of the topics it names.
    presences: pushpull_http::Presences,
}

/// How long a lease lasts without renewal: a dead node's endpoints are taken over after this.
const LEASE: Duration = Duration::from_secs(3);
/// How often a node renews its leases and looks for endpoints nobody delivers.
const SYNC_EVERY: Duration = Duration::from_millis(500);

impl Hooks {
    fn policy(&self) -> TargetPolicy {
        TargetPolicy {
            allow_loopback: self.config.allow_loopback,
            allow_private: self.config.allow_private,
        }
    }

    fn routes(&self, alive: &Arc<()>) -> Vec<Route> {
        let (a, b, c, d, e, f) =
            (self.clone(), self.clone(), self.clone(), self.clone(), self.clone(), self.clone());
        let token = alive.clone();
        vec![
            Route::new(Method::POST, WEBHOOKS_PATH, move |req: HttpRequest, _| {
                let _alive = &token;
                let server = a.clone();
                async move { server.create(req).await }
            }),
            Route::new(Method::GET, WEBHOOKS_PATH, move |_, _| {
                let server = b.clone();
                async move { server.list().await }
            }),
            Route::new(Method::GET, "/v1/webhooks/{id}", move |_, params: Params| {
                let server = c.clone();
                async move { server.show(&params).await }
            }),
            Route::new(Method::DELETE, "/v1/webhooks/{id}", move |_, params: Params| {
                let server = d.clone();
                async move { server.delete(&params).await }
            }),
            Route::new(Method::POST, "/v1/webhooks/{id}/resume", move |_, params: Params| {
                let server = e.clone();
                async move { server.resume(&params).await }
            }),
            Route::new(Method::POST, "/v1/webhooks/{id}/rotate", move |_, params: Params| {
                let server = f.clone();
                async move { server.rotate(&params).await }
            }),
        ]
    }

    async fn create(&self, req: HttpRequest) -> HandlerResult {
        let (_, body) = request::body(req, 64 * 1024, Duration::from_secs(10)).await?;
        let create: CreateEndpoint = serde_json::from_slice(&body)
            .map_err(|e| Error::bad_request(format!("bad endpoint registration: {e}")))?;
        let target = Target::parse(&create.url)?;
        if create.topics.is_empty() || create.topics.len() > self.config.max_topics {
            return Err(Error::bad_request(format!(
                "topics must list 1 to {} topics",
                self.config.max_topics
            )));
        }
        let topics =
            create.topics.iter().map(|t| t.parse()).collect::<Result<Vec<Selector>, _>>()?;
        let mut unique: Vec<String> = topics.iter().map(Selector::to_string).collect();
        unique.sort();
        unique.dedup();
        if unique.len() != topics.len() {
            return Err(Error::bad_request("topics lists a topic twice"));
        }
        // One start for every topic, or a cursor set (relative to `topics`) that resumes each;
        // a topic it leaves out starts at `latest`, a prefix's at its first message.
        let (after, resume) = match create.after.as_deref() {
            Some(set) if CursorSet::is_set(set) => {
                (Cursor::Latest, Some(CursorSet::parse(set, &topics)?))
            }
            other => (other.map_or(Ok(Cursor::Latest), str::parse)?, None),
        };
        let secret = match &create.secret {
            Some(text) => Secret::parse(text)?,
            None => Secret::generate(),
        };
        // The request is checked before the network is asked anything.
        self.policy().resolve(&target.host, target.port).await?;
        if self.store.all().await?.len() >= self.config.max_endpoints {
            return Err(Error::new(
                ErrorKind::Backend,
                format!(
                    "the server already has its maximum of {} endpoints",
                    self.config.max_endpoints
                ),
            ));
        }
        // Resolve where each topic starts now, so `latest` means "from the registration on",
        // whichever node delivers it and whenever. A prefix's topics that exist now start
        // there too; those created later, at their first message.
        let mut cursors = BTreeMap::new();
        for selector in &topics {
            match selector {
                Selector::Topic(topic) => {
                    let start = resume.as_ref().and_then(|set| set.get(topic)).unwrap_or(after);
                    let subscription = self.broker.subscribe(topic, start).await?;
                    cursors.insert(topic.to_string(), subscription.cursor());
                }
                Selector::Prefix(_) => {
                    let own = resume.as_ref().map(|set| set.only(selector));
                    let following = pushpull_core::follow(
                        self.broker.clone(),
                        self.prefix_request(selector, after, own),
                    )
                    .await?;
                    for (topic, cursor) in following.cursors().iter() {
                        cursors.insert(topic.to_string(), cursor);
                    }
                }
            }
        }
        let record = EndpointRecord {
            id: endpoint_id(),
            url: target.text.clone(),
            topics: topics.iter().map(Selector::to_string).collect(),
            secrets: vec![secret.to_string()],
            status: Status::Active.as_str().into(),
            progress: Progress { cursors, ..Progress::default() },
        };
        self.store.insert(&record).await?;
        self.take(&record).await;
        let mut view = view(&record, self.store.holder(&record.id).await.ok().flatten());
        view.secret = Some(secret.to_string());
        Ok(json(StatusCode::CREATED, serde_json::to_vec(&view).expect("encodes")))
    }

    async fn list(&self) -> HandlerResult {
        let mut views = Vec::new();
        for record in self.store.all().await? {
            let holder = self.store.holder(&record.id).await?;
            views.push(view(&record, holder));
        }
        views.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(json(StatusCode::OK, serde_json::to_vec(&views).expect("encodes")))
    }

    async fn find(&self, params: &Params) -> Result<Option<EndpointRecord>, Error> {
        self.store.get(params.get("id").unwrap_or_default()).await
    }

    async fn show(&self, params: &Params) -> HandlerResult {
        match self.find(params).await? {
            Some(record) => {
                let holder = self.store.holder(&record.id).await?;
                Ok(json(
                    StatusCode::OK,
                    serde_json::to_vec(&view(&record, holder)).expect("encodes"),
                ))
            }
            None => Ok(not_found(params)),
        }
    }

    async fn delete(&self, params: &Params) -> HandlerResult {
        let id = params.get("id").unwrap_or_default();
        if !self.store.remove(id).await? {
            return Ok(not_found(params));
        }
        // Here at once; on another node at its next sync.
        self.stop(id);
        let mut response = http::Response::new(pushpull_http::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        Ok(response)
    }

    async fn resume(&self, params: &Params) -> HandlerResult {
        let Some(mut record) = self.find(params).await? else { return Ok(not_found(params)) };
        if Status::parse(&record.status) == Status::Disabled {
            return Err(Error::bad_request(
                "a disabled endpoint (it answered 410) cannot resume; register it again",
            ));
        }
        record.status = Status::Active.as_str().into();
        self.store.set_status(&record.id, &record.status).await?;
        // The delivering node (this one, or another at its next sync) goes on.
        self.resume_here(&record.id);
        let holder = self.store.holder(&record.id).await?;
        Ok(json(StatusCode::OK, serde_json::to_vec(&view(&record, holder)).expect("encodes")))
    }

    /// Adds a new secret; the old one keeps signing beside it until the next rotation.
    async fn rotate(&self, params: &Params) -> HandlerResult {
        let Some(mut record) = self.find(params).await? else { return Ok(not_found(params)) };
        let secret = Secret::generate();
        let previous = record.secrets.last().cloned();
        record.secrets = previous.into_iter().chain([secret.to_string()]).collect();
        self.store.set_secrets(&record.id, &record.secrets).await?;
        self.refresh_secrets(&record);
        let holder = self.store.holder(&record.id).await?;
        let mut view = view(&record, holder);
        view.secret = Some(secret.to_string());
        Ok(json(StatusCode::OK, serde_json::to_vec(&view).expect("encodes")))
    }

    /// What following a prefix of an endpoint asks: at most `max_topics` topics.
    fn prefix_request(
        &self,
        selector: &Selector,
        start: Cursor,
        resume: Option<CursorSet>,
    ) -> FollowRequest {
        FollowRequest {
            selectors: vec![(selector.clone(), start)],
            resume,
            max_topics: self.config.max_topics,
        }
    }

    /// Starts delivering `record` here if no other node delivers it (taking its lease).
    async fn take(&self, record: &EndpointRecord) {
        if Status::parse(&record.status) == Status::Disabled
            || self.running.lock().expect("running lock").contains_key(&record.id)
        {
            return;
        }
        match self.store.lease(&record.id, &self.node, LEASE).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(error) => {
                tracing::debug!(%error, "cannot take an endpoint's lease");
                return;
            }
        }
        let endpoint = match Endpoint::from_record(record) {
            Ok(endpoint) => Arc::new(endpoint),
            Err(error) => {
                tracing::warn!(endpoint = %record.id, %error, "a stored endpoint is unreadable");
                return;
            }
        };
        let mut subscriptions = SubscriptionSet::new();
        for selector in &record.topics {
            let Ok(selector) = selector.parse::<Selector>() else { continue };
            let followed = match &selector {
                Selector::Topic(topic) => {
                    let cursor = record.progress.cursors.get(topic.as_str()).copied();
                    self.broker.subscribe(topic, cursor.unwrap_or(Cursor::Latest)).await.map(
                        |subscription| {
                            subscriptions.insert_as(selector.clone(), subscription);
                        },
                    )
                }
                Selector::Prefix(_) => {
                    // From where each of its topics got; one new since, from its first.
                    let mut resume = CursorSet::new();
                    for (topic, cursor) in &record.progress.cursors {
                        if let Ok(topic) = Topic::new(topic) {
                            resume.set(topic, *cursor);
                        }
                    }
                    let resume = resume.only(&selector);
                    let request = self.prefix_request(&selector, Cursor::Beginning, Some(resume));
                    pushpull_core::follow(self.broker.clone(), request).await.map(|following| {
                        subscriptions.insert_many_as(selector.clone(), following);
                    })
                }
            };
            match followed {
                Ok(()) => {}
                Err(error) => {
                    tracing::warn!(endpoint = %record.id, %error, "cannot follow a topic");
                    let _ = self.store.release(&record.id, &self.node).await;
                    return;
                }
            }
        }
        // While this node delivers it, the endpoint is a member of each topic it names, under
        // its id (a member's presence is best effort here: a full topic does not stop
        // deliveries).
        let mut members = Vec::new();
        for selector in &record.topics {
            if let Ok(Selector::Topic(topic)) = selector.parse::<Selector>() {
                match self.presences.join_as(&topic, &record.id, None, None).await {
                    Ok(member) => members.extend(member),
                    Err(error) => {
                        tracing::warn!(endpoint = %record.id, %error, "not a member of {topic}");
                    }
                }
            }
        }
        self.running.lock().expect("running lock").insert(record.id.clone(), endpoint.clone());
        tracing::info!(endpoint = %record.id, node = %self.node, "delivering");
        let hooks = self.clone();
        tokio::spawn(async move {
            let server = hooks.clone();
            Worker { endpoint: endpoint.clone(), server, subscriptions, connection: None }
                .run()
                .await;
            drop(members);
            hooks.finished(&endpoint).await;
        });
    }

    /// A worker ended: forget it here and give its lease up.
    async fn finished(&self, endpoint: &Arc<Endpoint>) {
        {
            let mut running = self.running.lock().expect("running lock");
            if running.get(&endpoint.id).is_some_and(|e| Arc::ptr_eq(e, endpoint)) {
                running.remove(&endpoint.id);
            }
        }
        let _ = self.store.release(&endpoint.id, &self.node).await;
    }

    fn stop(&self, id: &str) {
        if let Some(endpoint) = self.running.lock().expect("running lock").remove(id) {
            endpoint.control.send_replace(Control::Stop);
        }
    }

    fn resume_here(&self, id: &str) {
        if let Some(endpoint) = self.running.lock().expect("running lock").get(id) {
            {
                let mut state = endpoint.state.lock().expect("state lock");
                if state.status != Status::Paused {
                    return;
                }
                state.status = Status::Active;
                state.failures = 0;
            }
            endpoint.control.send_modify(|_| {});
        }
    }

    fn refresh_secrets(&self, record: &EndpointRecord) {
        if let Some(endpoint) = self.running.lock().expect("running lock").get(&record.id) {
            let secrets: Result<Vec<_>, _> =
                record.secrets.iter().map(|s| Secret::parse(s)).collect();
            if let Ok(secrets) = secrets {
                *endpoint.secrets.lock().expect("secrets lock") = secrets;
            }
        }
    }

    /// Keeps this node in step with the store until the server is dropped: renews its leases
    /// (and stops what it no longer holds or what was deleted), follows status and secret
    /// changes made through other nodes, and takes up endpoints nobody delivers.
    async fn keep_in_step(self, alive: Weak<()>) {
        loop {
            tokio::time::sleep(SYNC_EVERY).await;
            if alive.strong_count() == 0 {
                let ids: Vec<String> =
                    self.running.lock().expect("running lock").keys().cloned().collect();
                for id in ids {
                    self.stop(&id);
                    let _ = self.store.release(&id, &self.node).await;
                }
                return;
            }
            let records = match self.store.all().await {
                Ok(records) => records,
                Err(error) => {
                    tracing::debug!(%error, "cannot read the endpoint store");
                    continue;
                }
            };
            let ids: Vec<String> =
                self.running.lock().expect("running lock").keys().cloned().collect();
            for id in ids {
                if !records.iter().any(|record| record.id == id) {
                    self.stop(&id);
                }
            }
            for record in &records {
                let here = self.running.lock().expect("running lock").contains_key(&record.id);
                if here {
                    match self.store.lease(&record.id, &self.node, LEASE).await {
                        Ok(true) => {
                            self.refresh_secrets(record);
                            if Status::parse(&record.status) == Status::Active {
                                self.resume_here(&record.id);
                            }
                        }
                        // Another node has it now (this one was too slow to renew): stop.
                        Ok(false) => self.stop(&record.id),
                        Err(error) => tracing::debug!(%error, "cannot renew a lease"),
                    }
                } else if Status::parse(&record.status) != Status::Disabled {
                    self.take(record).await;
                }
            }
        }
    }
}

fn not_found(params: &Params) -> http::Response<pushpull_http::Body> {
    let id = params.get("id").unwrap_or_default();
    pushpull_http::json_error(StatusCode::NOT_FOUND, "not_found", &format!("no endpoint {id}"))
}
