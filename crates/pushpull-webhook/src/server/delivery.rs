//! Delivery: one worker per endpoint, in order, with retries.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use pushpull_core::{Delivery, Selector, SubscriptionSet, Topic};
use tokio::sync::watch;

use super::Hooks;
use super::api::DeadMessage;
use super::endpoints::{Control, Endpoint, Status};
use crate::config::OnExhausted;
use crate::wire::{self};

/// The outcome of one attempt.
pub(super) enum Attempt {
    Delivered,
    /// 410: the endpoint wants no more.
    Gone,
    Failed {
        reason: String,
        retry_after: Option<Duration>,
    },
}

/// Delivers one endpoint's messages, in order, one at a time.
pub(super) struct Worker {
    pub(super) endpoint: Arc<Endpoint>,
    pub(super) server: Hooks,
    /// Each topic's subscription, and each prefix's (whose deliveries name their topics).
    pub(super) subscriptions: SubscriptionSet<Selector>,
    /// The kept-alive connection to the endpoint, when its last answer allowed one: every
    /// attempt after the first reuses it instead of resolving, checking and connecting again.
    pub(super) connection: Option<Connection>,
}

/// A connection to an endpoint's checked address.
pub(super) type Connection = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl Worker {
    pub(super) async fn run(mut self) {
        let mut control = self.endpoint.control.subscribe();
        loop {
            let next = tokio::select! {
                next = self.subscriptions.next() => next,
                _ = control.wait_for(|c| *c == Control::Stop) => return,
            };
            let delivery = match next {
                (_, Some(Ok(delivery))) => delivery,
                (selector, ended) => {
                    if let Some(Err(error)) = ended {
                        self.note_failure(format!("reading {selector}: {error}"));
                    }
                    self.subscriptions.remove(&selector);
                    if self.subscriptions.is_empty() {
                        return;
                    }
                    continue;
                }
            };
            let topic = delivery.topic().clone();
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
            // A zero delay sends at once: a timer, even of zero, waits for the timer wheel's
            // next tick (a millisecond), which capped an endpoint at under 1,000 deliveries/s.
            if !delay.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = control.wait_for(|c| *c == Control::Stop) => return false,
                }
            } else if *control.borrow() == Control::Stop {
                return false;
            }
            let outcome =
                try_once(&self.endpoint, &self.server, &mut self.connection, &id, &body).await;
            self.server.attempts.attempts.increment(1);
            match outcome {
                Attempt::Delivered => {
                    self.server.meter.delivered(delivery);
                    self.server.meter.bytes(body.len());
                    {
                        let mut state = self.endpoint.state.lock().expect("state lock");
                        state.delivered += 1;
                        state.failures = 0;
                        state.cursors.insert(topic.to_string(), delivery.cursor());
                    }
                    // Where a node taking over would start: at most this message repeats,
                    // under the same webhook-id, which receivers de-duplicate.
                    save_progress(&self.server, &self.endpoint).await;
                    return true;
                }
                Attempt::Gone => {
                    {
                        let mut state = self.endpoint.state.lock().expect("state lock");
                        state.status = Status::Disabled;
                        state.last_error = Some("the endpoint answered 410 Gone".into());
                    }
                    save_progress(&self.server, &self.endpoint).await;
                    save_status(&self.server, &self.endpoint, Status::Disabled).await;
                    return false;
                }
                Attempt::Failed { reason, retry_after } => {
                    self.server.attempts.failures.increment(1);
                    self.note_failure(reason.clone());
                    save_progress(&self.server, &self.endpoint).await;
                    attempt += 1;
                    if attempt >= schedule.len() {
                        self.server.attempts.dead.increment(1);
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
        save_progress(&self.server, &self.endpoint).await;
        if !pause {
            return true;
        }
        save_status(&self.server, &self.endpoint, Status::Paused).await;
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

async fn save_progress(hooks: &Hooks, endpoint: &Endpoint) {
    let progress = endpoint.progress();
    if let Err(error) = hooks.store.set_progress(&endpoint.id, &progress).await {
        tracing::warn!(endpoint = %endpoint.id, %error, "cannot save delivery progress");
    }
}

async fn save_status(hooks: &Hooks, endpoint: &Endpoint, status: Status) {
    if let Err(error) = hooks.store.set_status(&endpoint.id, status.as_str()).await {
        tracing::warn!(endpoint = %endpoint.id, %error, "cannot save an endpoint's status");
    }
}

/// One attempt, under the attempt timeout: over the kept-alive `connection` if there is one
/// (and, if it turns out closed, at once over a new one: receivers de-duplicate by webhook-id),
/// else over a new connection.
pub(super) async fn try_once(
    endpoint: &Endpoint,
    server: &Hooks,
    connection: &mut Option<Connection>,
    id: &str,
    body: &Bytes,
) -> Attempt {
    let timeout = server.config.attempt_timeout;
    let attempt = async {
        if let Some(mut kept) = connection.take()
            && kept.ready().await.is_ok()
        {
            match post(&mut kept, endpoint, id, body).await {
                Posted::Answered(outcome, reusable) => {
                    *connection = reusable.then_some(kept);
                    return outcome;
                }
                Posted::Broken(reason) => {
                    tracing::debug!(%reason, "a kept-alive webhook connection broke; reconnecting");
                }
            }
        }
        let mut fresh = match connect(endpoint, server).await {
            Ok(fresh) => fresh,
            Err(outcome) => return outcome,
        };
        match post(&mut fresh, endpoint, id, body).await {
            Posted::Answered(outcome, reusable) => {
                *connection = reusable.then_some(fresh);
                outcome
            }
            Posted::Broken(reason) => Attempt::Failed { reason, retry_after: None },
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(outcome) => outcome,
        Err(_) => {
            *connection = None;
            Attempt::Failed { reason: format!("no answer within {timeout:?}"), retry_after: None }
        }
    }
}

/// What one request on a connection came to.
enum Posted {
    /// An answer, and whether the connection may carry the next request.
    Answered(Attempt, bool),
    /// No answer: the connection failed.
    Broken(String),
}

/// Resolves and checks the endpoint's address, and connects to the address that was checked.
async fn connect(endpoint: &Endpoint, server: &Hooks) -> Result<Connection, Attempt> {
    let target = &endpoint.url;
    let failed = |reason: String| Attempt::Failed { reason, retry_after: None };
    // Resolved and checked again for every connection: a name may change what it points to.
    let addr = match server.policy().resolve(&target.host, target.port).await {
        Ok(addr) => addr,
        Err(error) => return Err(failed(error.message().to_owned())),
    };
    // To the address just checked, never resolved again; TLS checks the certificate against
    // the endpoint's host name.
    let tls = target.https.then_some(&server.tls);
    let stream = match pushpull_http::tls::ClientStream::connect(addr, &target.host, tls).await {
        Ok(stream) => stream,
        Err(error) => return Err(failed(format!("cannot connect to {addr}: {error}"))),
    };
    let (sender, connection) = match hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
    {
        Ok(pair) => pair,
        Err(error) => return Err(failed(format!("HTTP handshake with {addr} failed: {error}"))),
    };
    tokio::spawn(connection);
    Ok(sender)
}

/// Posts one signed delivery on `sender` and reads the answer.
async fn post(sender: &mut Connection, endpoint: &Endpoint, id: &str, body: &Bytes) -> Posted {
    let target = &endpoint.url;
    let timestamp = wire::unix_now();
    let signatures = {
        let secrets = endpoint.secrets.lock().expect("secrets lock");
        wire::signature_header(&secrets, id, timestamp, body)
    };
    let host = if target.port == if target.https { 443 } else { 80 } {
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
        Err(error) => {
            let reason = format!("cannot build the request: {error}");
            return Posted::Answered(Attempt::Failed { reason, retry_after: None }, false);
        }
    };
    let response = match sender.send_request(request).await {
        Ok(response) => response,
        Err(error) => return Posted::Broken(format!("request to {} failed: {error}", target.text)),
    };
    let status = response.status();
    let retry_after = pushpull_http::retry_after(&response);
    let closing = response
        .headers()
        .get(header::CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    // Read (a bounded amount of) the answer: all of it, for the connection to carry the next.
    let read = tokio::time::timeout(
        Duration::from_secs(1),
        http_body_util::Limited::new(response.into_body(), 64 * 1024).collect(),
    )
    .await;
    let reusable = !closing && matches!(read, Ok(Ok(_)));
    let outcome = match status.as_u16() {
        200..=299 => Attempt::Delivered,
        410 => Attempt::Gone,
        code => Attempt::Failed { reason: format!("the endpoint answered {code}"), retry_after },
    };
    Posted::Answered(outcome, reusable)
}

/// ±10 % jitter, so endpoints failing together do not retry together.
pub(super) fn jitter(delay: Duration) -> Duration {
    if delay.is_zero() {
        return delay;
    }
    let mut byte = [0u8; 1];
    let fraction =
        if getrandom::fill(&mut byte).is_ok() { f64::from(byte[0]) / 255.0 } else { 0.5 };
    delay.mul_f64(0.9 + fraction * 0.2)
}
