//! The server half: the endpoint registration API, and one delivery worker per endpoint.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, StatusCode};
use pushpull_core::{Broker, Cursor, Error, ErrorKind, SubscriptionSet, Topic};
use pushpull_http::{HandlerResult, HttpRequest, Params, Route, Router, json, request};
use tokio::sync::watch;

use crate::config::ServerConfig;
use crate::targets::TargetPolicy;
use crate::wire::Secret;

mod api;
mod delivery;
mod endpoints;
mod target;

pub use api::{CreateEndpoint, DeadMessage, EndpointView};
use delivery::Worker;
use endpoints::{Control, Endpoint, State, Status, endpoint_id, view};
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
