//! The server half: the endpoint registration API, and one delivery worker per endpoint.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use pushpull_core::{Broker, Cursor, Delivery, Error, ErrorKind, SubscriptionSet, Topic};
use pushpull_http::{HandlerResult, HttpRequest, Params, Route, Router, json, request};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::{OnExhausted, ServerConfig};
use crate::targets::TargetPolicy;
use crate::wire::{self, Secret};

/// The registration API's root.
pub const WEBHOOKS_PATH: &str = "/v1/webhooks";

/// What `POST /v1/webhooks` takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    /// Where to deliver: an `http://` URL.
    pub url: String,
    /// The topics to deliver (1 to `max_topics`).
    pub topics: Vec<String>,
    /// Where to start on every topic: `beginning`, `latest` (default) or a cursor.
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
    /// The signing secret: only in the answer to create (and rotate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// A message given up on.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Active,
    Paused,
    Disabled,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Paused => "paused",
            Status::Disabled => "disabled",
        }
    }
}

struct Endpoint {
    id: String,
    url: Target,
    secrets: Mutex<Vec<Secret>>,
    state: Mutex<State>,
    /// Wakes the worker: deletion, or a resume after a pause.
    control: watch::Sender<Control>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    Run,
    Stop,
}

struct State {
    status: Status,
    cursors: BTreeMap<String, Cursor>,
    delivered: u64,
    failures: u64,
    last_error: Option<String>,
    dead: VecDeque<DeadMessage>,
}

/// A parsed `http://host:port/path` target.
#[derive(Debug, Clone)]
struct Target {
    text: String,
    host: String,
    port: u16,
    path_and_query: String,
}

impl Target {
    fn parse(text: &str) -> Result<Target, Error> {
        let uri: http::Uri = text
            .parse()
            .map_err(|e| Error::bad_request(format!("url {text:?} is not a URL: {e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(Error::bad_request(
                    "https endpoints need TLS, which this build does not have yet; use http behind a TLS proxy",
                ));
            }
            _ => return Err(Error::bad_request(format!("url {text:?} must start with http://"))),
        }
        let host =
            uri.host().ok_or_else(|| Error::bad_request(format!("url {text:?} has no host")))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        Ok(Target {
            text: text.to_owned(),
            host,
            port: uri.port_u16().unwrap_or(80),
            path_and_query: uri.path_and_query().map_or("/".into(), |p| p.as_str().to_owned()),
        })
    }
}

/// The webhook server over a broker: a cheap-`Clone` tower (and hyper) service serving
/// publishing, pages and the registration API, whose workers deliver; its
/// [`routes`](Self::routes) mount the registration API beside other transports'.
#[derive(Clone)]
pub struct WebhookServer {
    hooks: Hooks,
    router: Router,
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
    /// A server over `broker`.
    pub fn new(broker: Arc<dyn Broker>, config: ServerConfig) -> Result<Self, Error> {
        config.validate()?;
        let api = pushpull_http::api(broker.clone(), pushpull_http::PageConfig::default(), None);
        let hooks = Hooks { broker, config: Arc::new(config), endpoints: Arc::default() };
        let router = api.with(hooks.routes());
        Ok(Self { hooks, router })
    }

    /// Endpoints registered now.
    pub fn endpoint_count(&self) -> usize {
        self.hooks.endpoints.lock().expect("endpoints lock").len()
    }

    /// The registration routes, to mount beside other transports'.
    pub fn routes(&self) -> Vec<Route> {
        self.hooks.routes()
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

    fn new(broker: Arc<dyn Broker>, config: ServerConfig) -> Result<Self, Error> {
        WebhookServer::new(broker, config)
    }

    fn routes(&self) -> Vec<Route> {
        WebhookServer::routes(self)
    }

    fn gauges(&self) -> Vec<(&'static str, pushpull_http::Reading)> {
        let endpoints = self.hooks.endpoints.clone();
        vec![(
            "webhook_endpoints",
            Box::new(move || endpoints.lock().expect("endpoints lock").len()),
        )]
    }
}

/// The endpoints and what their routes and workers need; the routes hold this, not the
/// [`WebhookServer`] (whose router holds the routes).
#[derive(Clone)]
struct Hooks {
    broker: Arc<dyn Broker>,
    config: Arc<ServerConfig>,
    endpoints: Arc<Mutex<HashMap<String, Arc<Endpoint>>>>,
}

impl Hooks {
    fn policy(&self) -> TargetPolicy {
        TargetPolicy {
            allow_loopback: self.config.allow_loopback,
            allow_private: self.config.allow_private,
        }
    }

    fn routes(&self) -> Vec<Route> {
        let (a, b, c, d, e, f) =
            (self.clone(), self.clone(), self.clone(), self.clone(), self.clone(), self.clone());
        vec![
            Route::new(Method::POST, WEBHOOKS_PATH, move |req: HttpRequest, _| {
                let server = a.clone();
                async move { server.create(req).await }
            }),
            Route::new(Method::GET, WEBHOOKS_PATH, move |_, _| {
                let server = b.clone();
                async move { Ok(json(StatusCode::OK, server.list())) }
            }),
            Route::new(Method::GET, "/v1/webhooks/{id}", move |_, params: Params| {
                let server = c.clone();
                async move { server.show(&params) }
            }),
            Route::new(Method::DELETE, "/v1/webhooks/{id}", move |_, params: Params| {
                let server = d.clone();
                async move { server.delete(&params) }
            }),
            Route::new(Method::POST, "/v1/webhooks/{id}/resume", move |_, params: Params| {
                let server = e.clone();
                async move { server.resume(&params) }
            }),
            Route::new(Method::POST, "/v1/webhooks/{id}/rotate", move |_, params: Params| {
                let server = f.clone();
                async move { server.rotate(&params) }
            }),
        ]
    }

    async fn create(&self, req: HttpRequest) -> HandlerResult {
        let (_, body) = request::body(req, 64 * 1024, Duration::from_secs(10)).await?;
        let create: CreateEndpoint = serde_json::from_slice(&body)
            .map_err(|e| Error::bad_request(format!("bad endpoint registration: {e}")))?;
        let target = Target::parse(&create.url)?;
        self.policy().resolve(&target.host, target.port).await?;
        if create.topics.is_empty() || create.topics.len() > self.config.max_topics {
            return Err(Error::bad_request(format!(
                "topics must list 1 to {} topics",
                self.config.max_topics
            )));
        }
        let topics = create.topics.iter().map(Topic::new).collect::<Result<Vec<_>, _>>()?;
        let mut unique = topics.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != topics.len() {
            return Err(Error::bad_request("topics lists a topic twice"));
        }
        let after: Cursor = create.after.as_deref().map_or(Ok(Cursor::Latest), str::parse)?;
        let secret = match &create.secret {
            Some(text) => Secret::parse(text)?,
            None => Secret::generate(),
        };
        if self.endpoints.lock().expect("endpoints lock").len() >= self.config.max_endpoints {
            return Err(Error::new(
                ErrorKind::Backend,
                format!(
                    "the server already has its maximum of {} endpoints",
                    self.config.max_endpoints
                ),
            ));
        }
        let mut subscriptions = SubscriptionSet::new();
        let mut cursors = BTreeMap::new();
        for topic in topics {
            let subscription = self.broker.subscribe(&topic, after).await?;
            cursors.insert(topic.to_string(), subscription.cursor());
            subscriptions.insert(subscription);
        }
        let id = endpoint_id();
        let endpoint = Arc::new(Endpoint {
            id: id.clone(),
            url: target,
            secrets: Mutex::new(vec![secret.clone()]),
            state: Mutex::new(State {
                status: Status::Active,
                cursors,
                delivered: 0,
                failures: 0,
                last_error: None,
                dead: VecDeque::new(),
            }),
            control: watch::Sender::new(Control::Run),
        });
        self.endpoints.lock().expect("endpoints lock").insert(id, endpoint.clone());
        tokio::spawn(
            Worker { endpoint: endpoint.clone(), server: self.clone(), subscriptions }.run(),
        );
        let mut view = view(&endpoint);
        view.secret = Some(secret.to_string());
        Ok(json(StatusCode::CREATED, serde_json::to_vec(&view).expect("encodes")))
    }

    fn list(&self) -> Vec<u8> {
        let endpoints = self.endpoints.lock().expect("endpoints lock");
        let mut views: Vec<EndpointView> = endpoints.values().map(|e| view(e)).collect();
        views.sort_by(|a, b| a.id.cmp(&b.id));
        serde_json::to_vec(&views).expect("encodes")
    }

    fn find(&self, params: &Params) -> Result<Arc<Endpoint>, Error> {
        let id = params.get("id").unwrap_or_default();
        self.endpoints
            .lock()
            .expect("endpoints lock")
            .get(id)
            .cloned()
            .ok_or_else(|| Error::new(ErrorKind::BadRequest, format!("no endpoint {id}")))
    }

    fn show(&self, params: &Params) -> HandlerResult {
        match self.find(params) {
            Ok(endpoint) => {
                Ok(json(StatusCode::OK, serde_json::to_vec(&view(&endpoint)).expect("encodes")))
            }
            Err(error) => Ok(not_found(error)),
        }
    }

    fn delete(&self, params: &Params) -> HandlerResult {
        let id = params.get("id").unwrap_or_default();
        match self.endpoints.lock().expect("endpoints lock").remove(id) {
            Some(endpoint) => {
                endpoint.control.send_replace(Control::Stop);
                let mut response = http::Response::new(pushpull_http::empty());
                *response.status_mut() = StatusCode::NO_CONTENT;
                Ok(response)
            }
            None => Ok(not_found(Error::bad_request(format!("no endpoint {id}")))),
        }
    }

    fn resume(&self, params: &Params) -> HandlerResult {
        let endpoint = match self.find(params) {
            Ok(endpoint) => endpoint,
            Err(error) => return Ok(not_found(error)),
        };
        {
            let mut state = endpoint.state.lock().expect("state lock");
            if state.status == Status::Disabled {
                return Err(Error::bad_request(
                    "a disabled endpoint (it answered 410) cannot resume; register it again",
                ));
            }
            state.status = Status::Active;
            state.failures = 0;
        }
        endpoint.control.send_modify(|_| {});
        Ok(json(StatusCode::OK, serde_json::to_vec(&view(&endpoint)).expect("encodes")))
    }

    /// Adds a new secret; the old one keeps signing beside it until the next rotation.
    fn rotate(&self, params: &Params) -> HandlerResult {
        let endpoint = match self.find(params) {
            Ok(endpoint) => endpoint,
            Err(error) => return Ok(not_found(error)),
        };
        let secret = Secret::generate();
        {
            let mut secrets = endpoint.secrets.lock().expect("secrets lock");
            let previous = secrets.last().cloned();
            *secrets = previous.into_iter().chain([secret.clone()]).collect();
        }
        let mut view = view(&endpoint);
        view.secret = Some(secret.to_string());
        Ok(json(StatusCode::OK, serde_json::to_vec(&view).expect("encodes")))
    }
}

fn not_found(error: Error) -> http::Response<pushpull_http::Body> {
    pushpull_http::json_error(StatusCode::NOT_FOUND, "not_found", error.message())
}

fn view(endpoint: &Endpoint) -> EndpointView {
    let state = endpoint.state.lock().expect("state lock");
    EndpointView {
        id: endpoint.id.clone(),
        url: endpoint.url.text.clone(),
        status: state.status.as_str().into(),
        cursors: state.cursors.clone(),
        delivered: state.delivered,
        failures: state.failures,
        last_error: state.last_error.clone(),
        dead: state.dead.iter().cloned().collect(),
        secret: None,
    }
}

/// The outcome of one attempt.
enum Attempt {
    Delivered,
    /// 410: the endpoint wants no more.
    Gone,
    Failed {
        reason: String,
        retry_after: Option<Duration>,
    },
}

/// Delivers one endpoint's messages, in order, one at a time.
struct Worker {
    endpoint: Arc<Endpoint>,
    server: Hooks,
    subscriptions: SubscriptionSet,
}

impl Worker {
    async fn run(mut self) {
        let mut control = self.endpoint.control.subscribe();
        loop {
            let next = tokio::select! {
                next = self.subscriptions.next() => next,
                _ = control.wait_for(|c| *c == Control::Stop) => return,
            };
            let (topic, delivery) = match next {
                (topic, Some(Ok(delivery))) => (topic, delivery),
                (topic, ended) => {
                    if let Some(Err(error)) = ended {
                        self.note_failure(format!("reading {topic}: {error}"));
                    }
                    self.subscriptions.remove(&topic);
                    if self.subscriptions.is_empty() {
                        return;
                    }
                    continue;
                }
            };
            if !self.deliver(&topic, &delivery, &mut control).await {
                return;
            }
        }
    }

    /// Delivers one message with retries; false when the worker must stop.
    async fn deliver(
        &mut self,
        topic: &Topic,
        delivery: &Delivery,
        control: &mut watch::Receiver<Control>,
    ) -> bool {
        let id = wire::message_id(topic, delivery.cursor());
        let body = Bytes::from(wire::encode_body(delivery));
        let schedule = self.server.config.schedule.clone();
        let mut attempt = 0usize;
        loop {
            let delay = jitter(schedule[attempt]);
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = control.wait_for(|c| *c == Control::Stop) => return false,
            }
            match try_once(&self.endpoint, &self.server, &id, &body).await {
                Attempt::Delivered => {
                    let mut state = self.endpoint.state.lock().expect("state lock");
                    state.delivered += 1;
                    state.failures = 0;
                    state.cursors.insert(topic.to_string(), delivery.cursor());
                    return true;
                }
                Attempt::Gone => {
                    let mut state = self.endpoint.state.lock().expect("state lock");
                    state.status = Status::Disabled;
                    state.last_error = Some("the endpoint answered 410 Gone".into());
                    return false;
                }
                Attempt::Failed { reason, retry_after } => {
                    self.note_failure(reason.clone());
                    attempt += 1;
                    if attempt >= schedule.len() {
                        return self
                            .give_up(topic, delivery, &id, attempt as u32, reason, control)
                            .await;
                    }
                    if let Some(wait) = retry_after {
                        let wait = wait.min(self.server.config.max_retry_after);
                        tokio::select! {
                            () = tokio::time::sleep(wait.saturating_sub(schedule[attempt])) => {}
                            _ = control.wait_for(|c| *c == Control::Stop) => return false,
                        }
                    }
                }
            }
        }
    }

    /// Records a dead message; then skips it, or pauses until resumed.
    async fn give_up(
        &mut self,
        topic: &Topic,
        delivery: &Delivery,
        id: &str,
        attempts: u32,
        reason: String,
        control: &mut watch::Receiver<Control>,
    ) -> bool {
        let pause = self.server.config.on_exhausted == OnExhausted::Pause;
        {
            let mut state = self.endpoint.state.lock().expect("state lock");
            state.dead.push_back(DeadMessage {
                topic: topic.to_string(),
                cursor: delivery.cursor(),
                id: id.to_owned(),
                attempts,
                reason,
            });
            while state.dead.len() > self.server.config.max_dead {
                state.dead.pop_front();
            }
            if pause {
                state.status = Status::Paused;
            } else {
                state.cursors.insert(topic.to_string(), delivery.cursor());
            }
        }
        if !pause {
            return true;
        }
        tracing::warn!(endpoint = %self.endpoint.id, "paused: a message used up its attempts");
        control.borrow_and_update();
        loop {
            if control.changed().await.is_err() || *control.borrow() == Control::Stop {
                return false;
            }
            if self.endpoint.state.lock().expect("state lock").status == Status::Active {
                // Resumed: try the same message again from the start of the schedule.
                return Box::pin(self.deliver(topic, delivery, control)).await;
            }
        }
    }

    fn note_failure(&self, reason: String) {
        tracing::debug!(endpoint = %self.endpoint.id, %reason, "webhook attempt failed");
        let mut state = self.endpoint.state.lock().expect("state lock");
        state.failures += 1;
        state.last_error = Some(reason);
    }
}

/// One attempt, under the attempt timeout.
async fn try_once(endpoint: &Endpoint, server: &Hooks, id: &str, body: &Bytes) -> Attempt {
    let timeout = server.config.attempt_timeout;
    match tokio::time::timeout(timeout, send(endpoint, server, id, body)).await {
        Ok(outcome) => outcome,
        Err(_) => {
            Attempt::Failed { reason: format!("no answer within {timeout:?}"), retry_after: None }
        }
    }
}

/// Resolves, checks, connects and posts one signed delivery.
async fn send(endpoint: &Endpoint, server: &Hooks, id: &str, body: &Bytes) -> Attempt {
    let target = &endpoint.url;
    let failed = |reason: String| Attempt::Failed { reason, retry_after: None };
    // Resolved and checked again at every attempt: a name may change what it points to.
    let addr = match server.policy().resolve(&target.host, target.port).await {
        Ok(addr) => addr,
        Err(error) => return failed(error.message().to_owned()),
    };
    let stream = match tokio::net::TcpStream::connect(addr).await {
        Ok(stream) => stream,
        Err(error) => return failed(format!("cannot connect to {addr}: {error}")),
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
            Ok(pair) => pair,
            Err(error) => return failed(format!("HTTP handshake with {addr} failed: {error}")),
        };
    tokio::spawn(connection);
    let timestamp = wire::unix_now();
    let signatures = {
        let secrets = endpoint.secrets.lock().expect("secrets lock");
        wire::signature_header(&secrets, id, timestamp, body)
    };
    let host = if target.port == 80 {
        target.host.clone()
    } else {
        format!("{}:{}", target.host, target.port)
    };
    let request = Request::post(&target.path_and_query)
        .header(header::HOST, host)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::USER_AGENT, concat!("pushpull-webhook/", env!("CARGO_PKG_VERSION")))
        .header(wire::ID_HEADER, id)
        .header(wire::TIMESTAMP_HEADER, timestamp.to_string())
        .header(wire::SIGNATURE_HEADER, signatures)
        .body(Full::new(body.clone()));
    let request = match request {
        Ok(request) => request,
        Err(error) => return failed(format!("cannot build the request: {error}")),
    };
    let response = match sender.send_request(request).await {
        Ok(response) => response,
        Err(error) => return failed(format!("request to {addr} failed: {error}")),
    };
    let status = response.status();
    let retry_after = pushpull_http::retry_after(&response);
    // Read (a bounded amount of) the answer so the connection ends cleanly.
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        http_body_util::Limited::new(response.into_body(), 64 * 1024).collect(),
    )
    .await;
    match status.as_u16() {
        200..=299 => Attempt::Delivered,
        410 => Attempt::Gone,
        code => Attempt::Failed { reason: format!("the endpoint answered {code}"), retry_after },
    }
}

/// A new endpoint id: `ep_` and 96 random bits in hex.
fn endpoint_id() -> String {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).expect("the operating system provides randomness");
    format!("ep_{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// ±10 % jitter, so endpoints failing together do not retry together.
fn jitter(delay: Duration) -> Duration {
    if delay.is_zero() {
        return delay;
    }
    let mut byte = [0u8; 1];
    let fraction =
        if getrandom::fill(&mut byte).is_ok() { f64::from(byte[0]) / 255.0 } else { 0.5 };
    delay.mul_f64(0.9 + fraction * 0.2)
}
