//! The client half: a receiver that verifies and de-duplicates deliveries, and a client that
//! registers an endpoint per subscription.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, StatusCode, header};
use http_body_util::Full;
use pushpull_core::{
    Capabilities, Continuity, Cursor, CursorSet, Delivery, Error, ErrorKind, Fetch, FollowRequest,
    MultiSubscription, Page, Publication, Publish, Receipt, Selector, Subscribe, Subscription,
    Topic,
};
use pushpull_http::{
    HandlerResult, HttpClient, HttpClientConfig, HttpRequest, ManyQuery, Params, Route, Router,
    RunningServer, ServeConfig, request,
};
use tokio::sync::mpsc;

use crate::NAME;
use crate::config::ClientConfig;
use crate::server::{CreateEndpoint, EndpointView};
use crate::wire::{self, Secret};

/// How many delivery ids each subscription remembers to drop repeats.
const REMEMBERED_IDS: usize = 10_000;
/// Deliveries buffered per subscription; past this the receiver answers 503 and the server
/// retries later, so a slow application slows delivery down instead of losing messages.
const BUFFERED: usize = 256;

/// A client of a webhook server: `publish` and `fetch` by request; `subscribe` registers an
/// endpoint that delivers to this client's receiver, and dropping the subscription deletes it.
#[derive(Clone)]
pub struct WebhookClient {
    http: HttpClient,
    receiver: Arc<Receiver>,
    config: ClientConfig,
}

impl std::fmt::Debug for WebhookClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookClient")
            .field("url", &self.config.url)
            .field("receiver", &self.receiver.url)
            .finish()
    }
}

/// The receiver: a small HTTP listener with one route per subscription.
struct Receiver {
    url: String,
    inboxes: Arc<Mutex<HashMap<String, Inbox>>>,
    _server: RunningServer,
}

/// One subscription's side of the receiver.
struct Inbox {
    secret: Secret,
    deliveries: mpsc::Sender<Result<Delivery, Error>>,
    seen: HashSet<String>,
    order: VecDeque<String>,
    /// What it follows (a topic, or several and prefixes), and where it stands on each topic
    /// (after the last delivery handed over): to drop repeats, to refuse a delivery that skips
    /// ahead, and to register again from if the server forgets the endpoint.
    query: ManyQuery,
    /// The endpoint registered for it on the server, once there is one.
    endpoint: Option<String>,
}

impl WebhookClient {
    /// A client for the server at `config.url`, with its receiver listening on `config.listen`.
    /// Call it within a tokio runtime: the receiver starts serving at once.
    pub fn new(config: ClientConfig) -> Result<Self, Error> {
        let http_config = HttpClientConfig::endpoint(
            config.request_timeout,
            config.ca_file.clone(),
            config.token.clone(),
        );
        let http = HttpClient::new(&config.url, NAME, http_config)?;
        let receiver = Arc::new(Receiver::start(&config)?);
        Ok(Self { http, receiver, config })
    }

    /// The receiver's base URL, as endpoints are registered with.
    pub fn receiver_url(&self) -> &str {
        &self.receiver.url
    }

    /// Registers an endpoint for what `query` follows, from where it stands.
    async fn register(
        &self,
        token: &str,
        query: &ManyQuery,
        secret: &Secret,
    ) -> Result<EndpointView, Error> {
        let start = query.starts().first().map(|(_, start)| start.to_string());
        let create = CreateEndpoint {
            url: format!("{}/hooks/{token}", self.receiver.url),
            topics: query.keys().iter().map(Selector::to_string).collect(),
            after: query.resume_token().or(start),
            secret: Some(secret.to_string()),
        };
        let body = Bytes::from(serde_json::to_vec(&create).expect("encodes"));
        let request = || {
            self.http
                .request(Method::POST, "/v1/webhooks")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(body.clone()))
                .map_err(|e| self.http.error(ErrorKind::BadRequest, e.to_string()))
        };
        // Safe to repeat after a connection failure: if the first one was stored after all, its
        // endpoint delivers to the same receiver path, which drops the duplicates, and answers
        // 410 once this subscription is gone, which ends that endpoint.
        let response = self.http.send_idempotent(request, self.config.request_timeout).await?;
        if response.status() != StatusCode::CREATED {
            return Err(self.http.error_for(response).await);
        }
        let body = self.http.read_body(response, self.config.request_timeout).await?;
        serde_json::from_slice(&body)
            .map_err(|e| self.http.error(ErrorKind::Protocol, format!("bad endpoint: {e}")))
    }

    /// Whether the server still has endpoint `id` (`None` when it cannot be asked now).
    async fn exists(&self, id: &str) -> Option<bool> {
        let request = self
            .http
            .request(Method::GET, &format!("/v1/webhooks/{id}"))
            .body(Full::new(Bytes::new()))
            .ok()?;
        let response = self.http.send(request, self.config.request_timeout).await.ok()?;
        match response.status() {
            StatusCode::OK => Some(true),
            StatusCode::NOT_FOUND => Some(false),
            _ => None,
        }
    }

    async fn delete(&self, id: &str) {
        // A DELETE is safe to repeat: one sent on a pooled connection the network had cut is
        // sent again, or the endpoint would outlive its subscription.
        let path = format!("/v1/webhooks/{id}");
        let make = || {
            self.http
                .request(Method::DELETE, &path)
                .body(Full::new(Bytes::new()))
                .map_err(|e| self.http.error(ErrorKind::BadRequest, e.to_string()))
        };
        if let Err(error) = self.http.send_idempotent(make, self.config.request_timeout).await {
            tracing::warn!(endpoint = id, %error, "a dropped subscription's endpoint stays registered");
        }
    }
}

impl Receiver {
    fn start(config: &ClientConfig) -> Result<Receiver, Error> {
        let cannot = |e: std::io::Error| {
            Error::new(
                ErrorKind::Config,
                format!("the receiver cannot listen on {}: {e}", config.listen),
            )
        };
        let listener = std::net::TcpListener::bind(config.listen).map_err(cannot)?;
        listener.set_nonblocking(true).map_err(cannot)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(cannot)?;
        let addr =
            listener.local_addr().map_err(|e| Error::new(ErrorKind::Config, e.to_string()))?;
        let url = config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"))
            .trim_end_matches('/')
            .to_owned();
        let inboxes: Arc<Mutex<HashMap<String, Inbox>>> = Arc::default();
        let (routes, tolerance, max_body) = (inboxes.clone(), config.tolerance, config.max_body);
        let route =
            Route::new(Method::POST, "/hooks/{token}", move |req: HttpRequest, params: Params| {
                let inboxes = routes.clone();
                async move { receive(&inboxes, req, params, tolerance, max_body).await }
            });
        let server =
            pushpull_http::spawn(listener, Router::new().with([route]), ServeConfig::default())
                .map_err(|e| {
                    Error::new(ErrorKind::Config, format!("the receiver cannot serve: {e}"))
                })?;
        Ok(Receiver { url, inboxes, _server: server })
    }
}

/// One delivery: verified, de-duplicated, handed to its subscription.
async fn receive(
    inboxes: &Mutex<HashMap<String, Inbox>>,
    req: HttpRequest,
    params: Params,
    tolerance: Duration,
    max_body: usize,
) -> HandlerResult {
    let token = params.get("token").unwrap_or_default().to_owned();
    let (id, timestamp, signatures) = {
        let header = |name: &str| {
            req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
        };
        (header(wire::ID_HEADER), header(wire::TIMESTAMP_HEADER), header(wire::SIGNATURE_HEADER))
    };
    let (_, body) = request::body(req, max_body, Duration::from_secs(30)).await?;
    let answer = |status: StatusCode, kind: &str, message: &str| {
        Ok(pushpull_http::json_error(status, kind, message))
    };
    let mut inboxes = inboxes.lock().expect("inboxes lock");
    let Some(inbox) = inboxes.get_mut(&token) else {
        // Nobody listens here any more: tell the server to stop.
        return answer(StatusCode::GONE, "gone", "no subscription listens here");
    };
    if let Err(rejection) = wire::verify(
        std::slice::from_ref(&inbox.secret),
        &id,
        &timestamp,
        &signatures,
        &body,
        SystemTime::now(),
        tolerance,
    ) {
        tracing::warn!(%rejection, "webhook delivery rejected");
        return answer(StatusCode::UNAUTHORIZED, "unauthorized", &rejection.to_string());
    }
    if inbox.seen.contains(&id) {
        return Ok(no_content());
    }
    let delivery = match wire::decode_body(&body) {
        Ok(delivery) => delivery,
        Err(error) => return answer(StatusCode::BAD_REQUEST, "bad_request", error.message()),
    };
    if !inbox.query.keys().iter().any(|selector| selector.matches(delivery.topic())) {
        return answer(StatusCode::BAD_REQUEST, "bad_request", "a message of another topic");
    }
    match inbox.query.check(&delivery) {
        Continuity::Next => {}
        // Handed over already (a retry after a lost acknowledgement): acknowledge it again.
        Continuity::Repeat => return Ok(no_content()),
        Continuity::Skip => {
            // Acknowledging it would lose what lies between: refuse, and say why.
            let message = format!(
                "out of order: this subscription stands at {} on {}, the delivery is at {}",
                inbox.query.positions().get(delivery.topic()).unwrap_or(Cursor::Beginning),
                delivery.topic(),
                delivery.cursor()
            );
            tracing::warn!(%message, "webhook delivery refused");
            return answer(StatusCode::CONFLICT, "bad_request", &message);
        }
    }
    let handed = delivery.clone();
    match inbox.deliveries.try_send(Ok(delivery)) {
        Ok(()) => {
            inbox.seen.insert(id.clone());
            inbox.order.push_back(id);
            while inbox.order.len() > REMEMBERED_IDS {
                if let Some(old) = inbox.order.pop_front() {
                    inbox.seen.remove(&old);
                }
            }
            inbox.query.advance(&handed);
            Ok(no_content())
        }
        Err(mpsc::error::TrySendError::Full(_)) => {
            let mut response = pushpull_http::json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "backend",
                "the application is behind; retry",
            );
            response.headers_mut().insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
            Ok(response)
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            answer(StatusCode::GONE, "gone", "the subscription was dropped")
        }
    }
}

fn no_content() -> http::Response<pushpull_http::Body> {
    let mut response = http::Response::new(pushpull_http::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

fn random_token() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system provides randomness");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[async_trait]
impl Publish for WebhookClient {
    async fn publish(&self, topic: &Topic, publication: Publication) -> Result<Receipt, Error> {
        self.http.publish(topic, publication).await
    }

    async fn publish_many(
        &self,
        publications: Vec<(Topic, Publication)>,
    ) -> Result<Vec<Result<Receipt, Error>>, Error> {
        self.http.publish_many(publications).await
    }
}

#[async_trait]
impl Fetch for WebhookClient {
    async fn fetch(&self, topic: &Topic, cursor: Cursor, limit: usize) -> Result<Page, Error> {
        pushpull_http::fetch_page(&self.http, topic, cursor, limit).await
    }

    async fn fetch_newest_first(
        &self,
        topic: &Topic,
        before: Cursor,
        limit: usize,
    ) -> Result<Page, Error> {
        pushpull_http::fetch_newest_first_page(&self.http, topic, before, limit).await
    }
}

impl WebhookClient {
    /// Registers an endpoint for `request` whose deliveries come to a new inbox: the
    /// positions the server resolved, and the deliveries.
    async fn open(
        &self,
        request: &FollowRequest,
    ) -> Result<(CursorSet, impl futures::Stream<Item = Result<Delivery, Error>> + use<>), Error>
    {
        let token = random_token();
        let secret = Secret::generate();
        let (deliveries, receiver) = mpsc::channel(BUFFERED);
        let query = ManyQuery::new(request);
        self.receiver.inboxes.lock().expect("inboxes lock").insert(
            token.clone(),
            Inbox {
                secret: secret.clone(),
                deliveries: deliveries.clone(),
                seen: HashSet::new(),
                order: VecDeque::new(),
                query: query.clone(),
                endpoint: None,
            },
        );
        let endpoint = match self.register(&token, &query, &secret).await {
            Ok(endpoint) => endpoint,
            Err(error) => {
                self.receiver.inboxes.lock().expect("inboxes lock").remove(&token);
                return Err(error);
            }
        };
        let mut started = CursorSet::new();
        for (topic, cursor) in &endpoint.cursors {
            started.set(Topic::new(topic)?, *cursor);
        }
        let positions = match self.receiver.inboxes.lock().expect("inboxes lock").get_mut(&token) {
            Some(inbox) => {
                // Unless a delivery already came (and said where we stand).
                inbox.query.announce(&started);
                inbox.endpoint = Some(endpoint.id.clone());
                inbox.query.positions().clone()
            }
            None => started,
        };
        // Keep the endpoint alive on the server: register again from where we stand if a
        // restarted server forgot it. The task ends when the subscription is dropped.
        let keeper = tokio::spawn(keep(self.clone(), token.clone(), endpoint.id.clone(), secret));
        let guard = Registration { client: self.clone(), token, keeper };
        let stream =
            futures::stream::unfold((receiver, guard), |(mut receiver, guard)| async move {
                receiver.recv().await.map(|item| (item, (receiver, guard)))
            });
        Ok((positions, stream))
    }
}

#[async_trait]
impl Subscribe for WebhookClient {
    async fn subscribe(&self, topic: &Topic, cursor: Cursor) -> Result<Subscription, Error> {
        let request = FollowRequest {
            selectors: vec![(Selector::Topic(topic.clone()), cursor)],
            resume: None,
            max_topics: 1,
        };
        let (positions, stream) = self.open(&request).await?;
        let start = positions.get(topic).unwrap_or(cursor);
        Ok(Subscription::new(topic.clone(), start, stream))
    }

    /// One endpoint for every topic and prefix of `request`, when they share one start (or
    /// resume from a set); otherwise `None`, and `follow` registers one per topic.
    async fn subscribe_many(
        &self,
        request: &FollowRequest,
    ) -> Result<Option<MultiSubscription>, Error> {
        let first = request.selectors.first().map(|(_, start)| *start);
        if request.resume.is_none() && request.selectors.iter().any(|(_, s)| Some(*s) != first) {
            return Ok(None);
        }
        let (positions, stream) = self.open(request).await?;
        Ok(Some(MultiSubscription::new(positions, stream)))
    }
}

/// Checks every `check_interval` that the endpoint exists; registers it again if not.
async fn keep(client: WebhookClient, token: String, mut id: String, secret: Secret) {
    loop {
        tokio::time::sleep(client.config.check_interval).await;
        if client.exists(&id).await != Some(false) {
            continue;
        }
        let query = match client.receiver.inboxes.lock().expect("inboxes lock").get(&token) {
            Some(inbox) => inbox.query.clone(),
            None => return,
        };
        tracing::info!(endpoint = %id, following = %query, "the server forgot the endpoint; registering it again");
        match client.register(&token, &query, &secret).await {
            Ok(endpoint) => {
                id = endpoint.id;
                if let Some(inbox) =
                    client.receiver.inboxes.lock().expect("inboxes lock").get_mut(&token)
                {
                    inbox.endpoint = Some(id.clone());
                }
            }
            Err(error) => {
                tracing::warn!(%error, "registering the endpoint again failed; will retry")
            }
        }
    }
}

/// Unregisters on drop: removes the inbox and deletes the endpoint on the server.
struct Registration {
    client: WebhookClient,
    token: String,
    keeper: tokio::task::JoinHandle<()>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.keeper.abort();
        let inbox = self.client.receiver.inboxes.lock().expect("inboxes lock").remove(&self.token);
        let Some(id) = inbox.and_then(|inbox| inbox.endpoint) else { return };
        let client = self.client.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { client.delete(&id).await });
        }
    }
}

impl pushpull_core::Client for WebhookClient {
    fn capabilities(&self) -> Capabilities {
        Capabilities::full(NAME).with_push(true)
    }

    fn presence(&self) -> Option<&dyn pushpull_core::Presence> {
        Some(&self.http)
    }
}

pushpull_core::connect_by_new!(WebhookClient, ClientConfig, crate::NAME, probes = false);
