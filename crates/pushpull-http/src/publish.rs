//! `POST /v1/topics/{topic}`: publishing over HTTP, shared by every HTTP transport.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, StatusCode, header};
use pushpull_core::{Broker, Error, ErrorKind};

use crate::response::json;
use crate::router::{HttpRequest, Params, Route, query_params};
use crate::{request, wire};

/// The header that names the event type when the `event` query parameter does not.
pub const EVENT_HEADER: &str = "pushpull-event";

/// The request header that makes a publish safe to retry (see `Publication::idempotency_key`).
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// How the shared HTTP API labels what it counts (`transport="http"`): publishes, and pages
/// when no transport gave the page route its settings.
pub const SHARED_API: &str = "http";

/// The route path of a topic.
pub const TOPIC_PATH: &str = "/v1/topics/{topic}";

/// The route path of a batch of publications.
pub const BATCH_PATH: &str = "/v1/publish";

/// The most publications one batch may carry.
pub const MAX_BATCH: usize = 1000;

/// Limits of the publish route.
#[derive(Debug, Clone)]
pub struct PublishLimits {
    /// The largest body accepted; by default the broker's `max_payload`.
    pub max_body: usize,
    /// How long a client may take to send the body.
    pub body_timeout: Duration,
}

/// The route `POST /v1/topics/{topic}`: the body is the payload, `Content-Type` is kept, the
/// event type comes from `?event=` or the `Pushpull-Event` header, and an `Idempotency-Key`
/// header makes a retry return the first receipt. Answers 201 with the receipt.
pub fn publish_route(broker: Arc<dyn Broker>, limits: PublishLimits) -> Route {
    Route::new(Method::POST, TOPIC_PATH, move |request: HttpRequest, params: Params| {
        let broker = broker.clone();
        let limits = limits.clone();
        async move {
            let topic = request::topic(&params)?;
            let query = query_params(&request);
            let (parts, payload) =
                request::body(request, limits.max_body, limits.body_timeout).await?;
            let header = |name: header::HeaderName, what: &str| {
                parts
                    .headers
                    .get(name)
                    .map(|v| {
                        v.to_str()
                            .map_err(|_| Error::bad_request(format!("{what} is not visible ASCII")))
                    })
                    .transpose()
            };
            let key =
                header(header::HeaderName::from_static(IDEMPOTENCY_KEY_HEADER), "Idempotency-Key")?;
            let content_type = header(header::CONTENT_TYPE, "Content-Type")?;
            let event = event_type(&query, &parts.headers)?;
            let publication = request::publication(payload, event.as_deref(), content_type, key);
            let receipt =
                crate::metrics::timed_publish(SHARED_API, broker.publish(&topic, publication))
                    .await?;
            Ok(json(StatusCode::CREATED, wire::encode_receipt(&receipt)))
        }
    })
}

/// The route `POST /v1/publish`: `{"publications":[{"topic":…,"data"|"data_base64":…,"event":…,
/// "content_type":…,"idempotency_key":…},…]}`, at most [`MAX_BATCH`], the body at most
/// [`MAX_BATCH`] times the largest payload (and never over 64 MiB). Answers 200 with
/// `{"results":[…]}`: each publication's receipt or error body, in order, published one after
/// another so that those to one topic keep their order. With `[auth]`, each needs the right to
/// publish to its topic (a refusal is that publication's error) and takes one from the
/// token's allowance.
pub fn batch_route(broker: Arc<dyn Broker>, limits: PublishLimits) -> Route {
    Route::new(Method::POST, BATCH_PATH, move |request: HttpRequest, _: Params| {
        let broker = broker.clone();
        let max_body = limits.max_body.saturating_mul(MAX_BATCH).min(64 * 1024 * 1024);
        let timeout = limits.body_timeout;
        async move {
            let (parts, body) = request::body(request, max_body, timeout).await?;
            let batch: wire::BatchJson = serde_json::from_slice(&body)
                .map_err(|e| Error::bad_request(format!("the batch is not valid JSON: {e}")))?;
            let grant = parts.extensions.get::<crate::Grant>();
            let results = publish_batch(&*broker, batch.publications, grant, SHARED_API).await?;
            let body = serde_json::to_vec(&wire::BatchAnswerJson { results })
                .expect("an answer always encodes");
            Ok(json(StatusCode::OK, body))
        }
    })
}

/// Publishes a batch (at most [`MAX_BATCH`] publications; more is an error that says so), one
/// after another so that those to one topic keep their order: each one's receipt or error, in
/// order. With `grant`, each needs the right to publish to its topic (a refusal is that
/// publication's error) and takes one from the token's allowance. What the HTTP batch route
/// and the WebSocket's `publish_many` share.
pub async fn publish_batch(
    broker: &dyn Broker,
    publications: Vec<wire::PublicationJson>,
    grant: Option<&crate::Grant>,
    transport: &'static str,
) -> Result<Vec<wire::BatchResultJson>, Error> {
    if publications.len() > MAX_BATCH {
        return Err(Error::bad_request(format!(
            "a batch holds at most {MAX_BATCH} publications, this one {}",
            publications.len()
        )));
    }
    let mut results = Vec::with_capacity(publications.len());
    for item in publications {
        let outcome = async {
            let (topic, publication) = item.into_publication()?;
            if let Some(grant) = grant {
                grant.check_publish(&topic)?;
            }
            crate::metrics::timed_publish(transport, broker.publish(&topic, publication)).await
        }
        .await;
        results.push(match outcome {
            Ok(receipt) => wire::BatchResultJson::Receipt(wire::ReceiptJson::of(&receipt)),
            Err(error) => wire::BatchResultJson::Error(wire::ErrorBody {
                error: wire::ErrorDetail {
                    kind: error.kind().as_str().to_owned(),
                    message: error.message().to_owned(),
                },
            }),
        });
    }
    Ok(results)
}

/// The HTTP API every transport's server serves beside its own routes: publishing (its body
/// limit the broker's `max_payload`, 4 MiB when the broker does not say; its body timeout the
/// context's) and the page route of `context` (holding requests with `hold`: long polling), so
/// any client can publish and fetch whatever transports are enabled.
pub fn api(context: &crate::Context, hold: Option<crate::Hold>) -> crate::Router {
    let broker = context.broker.clone();
    let max_body = broker.capabilities().max_payload.unwrap_or(4 * 1024 * 1024);
    let limits = PublishLimits { max_body, body_timeout: context.body_timeout };
    crate::Router::new()
        .with([
            batch_route(broker.clone(), limits.clone()),
            publish_route(broker, limits),
            crate::page_route(context, hold.clone()),
            crate::many_page_route(context, hold),
        ])
        .with(crate::presence_routes(&context.presences()))
}

fn event_type(
    query: &std::collections::HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Option<String>, Error> {
    if let Some(event) = query.get("event") {
        return Ok(Some(event.clone()));
    }
    match headers.get(EVENT_HEADER) {
        None => Ok(None),
        Some(value) => value.to_str().map(|s| Some(s.to_owned())).map_err(|_| {
            Error::new(ErrorKind::BadRequest, "the Pushpull-Event header is not visible ASCII")
        }),
    }
}
