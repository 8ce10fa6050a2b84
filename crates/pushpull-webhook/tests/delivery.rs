//! Deliveries over real sockets: endpoints that fail, vanish, go slow or say 410; dead messages;
//! bad registrations; SSRF refusals; and a receiver that refuses forged and replayed requests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use http::{Method, StatusCode};
use pushpull_core::{Cursor, MemoryBroker, Publication, Publish, Subscribe, Topic};
use pushpull_http::{HttpRequest, Params, Route, Router, RunningServer, ServeConfig};
use pushpull_webhook::{OnExhausted, ServerConfig, WebhookServer, wire};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(30);

fn fast(config: ServerConfig) -> ServerConfig {
    {
        let mut built = config;
        built.allow_loopback = true;
        built.schedule = vec![Duration::ZERO, Duration::from_millis(20), Duration::from_millis(40)];
        built.attempt_timeout = Duration::from_millis(500);
        built
    }
}

async fn start(config: ServerConfig) -> (RunningServer, Arc<MemoryBroker>) {
    let broker = Arc::new(MemoryBroker::new());
    let server =
        WebhookServer::new(broker.clone() as Arc<dyn pushpull_core::Broker>, config).unwrap();
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    (pushpull_http::spawn(listener, server.router(), ServeConfig::default()).unwrap(), broker)
}

/// A raw HTTP/1.1 request with a JSON body; the status and JSON reply.
async fn call(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(LIMIT, stream.read_to_end(&mut reply)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&reply).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// A fake endpoint answering each delivery with the next status of `script` (the last one
/// repeats); it records the bodies and headers it got.
struct Fake {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<(String, Value)>>>,
    _server: RunningServer,
}

async fn fake(script: Vec<u16>, delay: Duration) -> Fake {
    fake_serving(script, delay, ServeConfig::default()).await
}

async fn fake_serving(script: Vec<u16>, delay: Duration, serve: ServeConfig) -> Fake {
    let got: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let (record, script) = (got.clone(), Arc::new(script));
    let route = Route::new(Method::POST, "/hook", move |req: HttpRequest, _: Params| {
        let (record, script, calls) = (record.clone(), script.clone(), calls.clone());
        async move {
            let id = req.headers()["webhook-id"].to_str().unwrap().to_owned();
            let (_, body) = pushpull_http::request::body(req, 1 << 20, LIMIT).await?;
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let status = script[n.min(script.len() - 1)];
            tokio::time::sleep(delay).await;
            record.lock().unwrap().push((id, serde_json::from_slice(&body).unwrap()));
            let mut response = http::Response::new(pushpull_http::empty());
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            Ok(response)
        }
    });
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let server = pushpull_http::spawn(listener, Router::new().with([route]), serve).unwrap();
    Fake { addr: server.local_addr(), got, _server: server }
}

async fn register(server: SocketAddr, url: String, after: &str) -> Value {
    let (status, endpoint) = call(
        server,
        "POST",
        "/v1/webhooks",
        Some(json!({"url": url, "topics": ["t"], "after": after})),
    )
    .await;
    assert_eq!(status, 201, "{endpoint}");
    assert!(endpoint["secret"].as_str().unwrap().starts_with("whsec_"));
    endpoint
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let done = tokio::time::timeout(LIMIT, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(done.is_ok(), "gave up waiting for {what}");
}

async fn publish(broker: &MemoryBroker, text: &str) {
    broker.publish(&Topic::new("t").unwrap(), Publication::new(text.to_owned())).await.unwrap();
}

#[tokio::test]
async fn failures_are_retried_until_delivered_once_with_a_stable_id() {
    let (server, broker) = start(fast(ServerConfig::default())).await;
    let endpoint_server = fake(vec![500, 503, 200], Duration::ZERO).await;
    let endpoint =
        register(server.local_addr(), format!("http://{}/hook", endpoint_server.addr), "latest")
            .await;
    publish(&broker, "one").await;
    publish(&broker, "two").await;
    until("both delivered", async || endpoint_server.got.lock().unwrap().len() == 4).await;
    let got = endpoint_server.got.lock().unwrap().clone();
    let ids: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids[0], ids[1], "the id is stable across retries");
    assert_eq!(ids[1], ids[2]);
    assert_ne!(ids[2], ids[3]);
    assert_eq!(got[2].1["data"]["data"], "one");
    assert_eq!(got[3].1["data"]["data"], "two", "in order, after the first got through");
    let id = endpoint["id"].as_str().unwrap();
    let (_, view) = call(server.local_addr(), "GET", &format!("/v1/webhooks/{id}"), None).await;
    assert_eq!(view["delivered"], 2);
    assert_eq!(view["status"], "active");
    assert!(view.get("secret").is_none(), "the secret is shown only at creation");
}

#[tokio::test]
async fn https_endpoints_are_delivered_to_when_their_certificate_is_trusted() {
    let ca = pushpull_chaos::TestCa::new().unwrap();
    let files = pushpull_http::TlsFiles::new(ca.cert_file(), ca.key_file());
    let serve = {
        let mut built = ServeConfig::default();
        built.tls = Some(files.acceptor().unwrap());
        built
    };
    let endpoint_server = fake_serving(vec![200], Duration::ZERO, serve).await;
    let url = format!("https://localhost:{}/hook", endpoint_server.addr.port());

    // A server that does not trust the endpoint's CA delivers nothing, and says why.
    let (untrusting, broker) = start(fast(ServerConfig::default())).await;
    let endpoint = register(untrusting.local_addr(), url.clone(), "latest").await;
    publish(&broker, "refused").await;
    let path = format!("/v1/webhooks/{}", endpoint["id"].as_str().unwrap());
    until("the failure is recorded", async || {
        let (_, view) = call(untrusting.local_addr(), "GET", &path, None).await;
        view["last_error"].as_str().is_some_and(|e| e.to_lowercase().contains("certificate"))
    })
    .await;
    assert!(endpoint_server.got.lock().unwrap().is_empty());

    // One that trusts it (ca_file) delivers over TLS.
    let trusting = {
        let mut built = ServerConfig::default();
        built.ca_file = Some(ca.ca_file());
        built
    };
    let (server, broker) = start(fast(trusting)).await;
    register(server.local_addr(), url, "latest").await;
    publish(&broker, "over tls").await;
    until("delivered", async || !endpoint_server.got.lock().unwrap().is_empty()).await;
    assert_eq!(endpoint_server.got.lock().unwrap()[0].1["data"]["data"], "over tls");
}

#[tokio::test]
async fn deliveries_reuse_one_kept_alive_connection() {
    let (server, broker) = start(fast(ServerConfig::default())).await;
    let endpoint_server = fake(vec![200], Duration::ZERO).await;
    register(server.local_addr(), format!("http://{}/hook", endpoint_server.addr), "latest").await;
    for n in 0..20 {
        publish(&broker, &format!("m{n}")).await;
    }
    until("all delivered", async || endpoint_server.got.lock().unwrap().len() == 20).await;
    // One connection for twenty deliveries (each opened its own before).
    assert_eq!(endpoint_server._server.stats().accepted_connections(), 1);
    let got = endpoint_server.got.lock().unwrap().clone();
    let order: Vec<&str> =
        got.iter().map(|(_, body)| body["data"]["data"].as_str().unwrap()).collect();
    assert_eq!(order, (0..20).map(|n| format!("m{n}")).collect::<Vec<_>>(), "in order");
}

#[tokio::test]
async fn exhausted_messages_are_dead_and_skipped_or_paused() {
    let (server, broker) = start(fast(ServerConfig::default())).await;
    let failing = fake(vec![500, 500, 500, 200], Duration::ZERO).await;
    let endpoint =
        register(server.local_addr(), format!("http://{}/hook", failing.addr), "latest").await;
    publish(&broker, "doomed").await;
    publish(&broker, "next").await;
    let id = endpoint["id"].as_str().unwrap().to_owned();
    until("the dead message to be skipped", async || {
        let (_, view) = call(server.local_addr(), "GET", &format!("/v1/webhooks/{id}"), None).await;
        view["delivered"] == 1
    })
    .await;
    let (_, view) = call(server.local_addr(), "GET", &format!("/v1/webhooks/{id}"), None).await;
    assert_eq!(view["dead"][0]["attempts"], 3);
    assert!(view["dead"][0]["reason"].as_str().unwrap().contains("500"));
    assert_eq!(failing.got.lock().unwrap().last().unwrap().1["data"]["data"], "next");

    let (server, broker) = start(fast({
        let mut built = ServerConfig::default();
        built.on_exhausted = OnExhausted::Pause;
        built
    }))
    .await;
    let failing = fake(vec![500, 500, 500, 200], Duration::ZERO).await;
    let endpoint =
        register(server.local_addr(), format!("http://{}/hook", failing.addr), "latest").await;
    publish(&broker, "doomed").await;
    let id = endpoint["id"].as_str().unwrap().to_owned();
    until("the endpoint to pause", async || {
        call(server.local_addr(), "GET", &format!("/v1/webhooks/{id}"), None).await.1["status"]
            == "paused"
    })
    .await;
    let (status, _) =
        call(server.local_addr(), "POST", &format!("/v1/webhooks/{id}/resume"), None).await;
    assert_eq!(status, 200);
    until("the resumed delivery", async || {
        call(server.local_addr(), "GET", &format!("/v1/webhooks/{id}"), None).await.1["delivered"]
            == 1
    })
    .await;
}

#[tokio::test]
async fn gone_disables_and_unreachable_or_slow_endpoints_harm_no_one() {
    let (server, broker) = start(fast(ServerConfig::default())).await;
    let gone = fake(vec![410], Duration::ZERO).await;
    let slow = fake(vec![200], Duration::from_secs(5)).await;
    let healthy = fake(vec![200], Duration::ZERO).await;
    let dead_port = TcpListener::bind(("127.0.0.1", 0)).await.unwrap().local_addr().unwrap();
    let gone_id = register(server.local_addr(), format!("http://{}/hook", gone.addr), "latest")
        .await["id"]
        .clone();
    let slow_id = register(server.local_addr(), format!("http://{}/hook", slow.addr), "latest")
        .await["id"]
        .clone();
    let dead_id = register(server.local_addr(), format!("http://{dead_port}/hook"), "latest").await
        ["id"]
        .clone();
    register(server.local_addr(), format!("http://{}/hook", healthy.addr), "latest").await;
    for n in 0..5 {
        publish(&broker, &format!("m{n}")).await;
    }
    until("the healthy endpoint to get everything", async || {
        healthy.got.lock().unwrap().len() == 5
    })
    .await;
    let show = async |id: &Value| {
        call(server.local_addr(), "GET", &format!("/v1/webhooks/{}", id.as_str().unwrap()), None)
            .await
            .1
    };
    until("410 to disable", async || show(&gone_id).await["status"] == "disabled").await;
    assert_eq!(gone.got.lock().unwrap().len(), 1, "nothing more after 410");
    let dead = show(&dead_id).await;
    assert_eq!(dead["delivered"], 0);
    assert!(dead["last_error"].as_str().unwrap().contains("connect"), "{dead}");
    until("the slow endpoint to time out", async || {
        show(&slow_id).await["last_error"].as_str().is_some_and(|e| e.contains("no answer"))
    })
    .await;
    // The cursors of the failing endpoints wait where they were.
    let (_, endpoints) = call(server.local_addr(), "GET", "/v1/webhooks", None).await;
    assert_eq!(endpoints.as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn bad_registrations_are_refused_with_the_reason() {
    let (server, _) = start(ServerConfig::default()).await;
    let addr = server.local_addr();
    let cases = [
        (json!({"topics": ["t"]}), "missing field `url`"),
        (json!({"url": "not a url", "topics": ["t"]}), "url"),
        (json!({"url": "ftp://example.com/x", "topics": ["t"]}), "http://"),
        (json!({"url": "https://127.0.0.1/x", "topics": ["t"]}), "loopback"),
        (json!({"url": "http://127.0.0.1:9/x", "topics": ["t"]}), "loopback"),
        (json!({"url": "http://169.254.169.254/latest", "topics": ["t"]}), "metadata"),
        (json!({"url": "http://10.0.0.1/x", "topics": ["t"]}), "private"),
        (json!({"url": "http://93.184.216.34/x", "topics": []}), "1 to 100"),
        (json!({"url": "http://93.184.216.34/x", "topics": ["bad topic"]}), "invalid topic"),
        (
            json!({"url": "http://93.184.216.34/x", "topics": ["t"], "after": "soon"}),
            "invalid cursor",
        ),
        (
            json!({"url": "http://93.184.216.34/x", "topics": ["t"], "secret": "whsec_short"}),
            "secret",
        ),
        (
            json!({"url": "http://93.184.216.34/x", "topics": ["t"], "colour": "red"}),
            "unknown field",
        ),
    ];
    for (body, says) in cases {
        let (status, reply) = call(addr, "POST", "/v1/webhooks", Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
    }
    assert_eq!(call(addr, "GET", "/v1/webhooks/ep_nope", None).await.0, 404);
    assert_eq!(call(addr, "DELETE", "/v1/webhooks/ep_nope", None).await.0, 404);
}

#[tokio::test]
async fn the_receiver_refuses_forged_and_replayed_deliveries() {
    let (server, broker) = start(fast(ServerConfig::default())).await;
    let client = pushpull_webhook::WebhookClient::new(pushpull_webhook::ClientConfig::new(
        format!("http://{}", server.local_addr()),
    ))
    .unwrap();
    let topic = Topic::new("t").unwrap();
    let mut subscription = client.subscribe(&topic, Cursor::Latest).await.unwrap();
    let (_, endpoints) = call(server.local_addr(), "GET", "/v1/webhooks", None).await;
    let hook = endpoints[0]["url"].as_str().unwrap().trim_start_matches("http://").to_owned();
    let (hook_addr, path) = hook.split_once('/').unwrap();
    let hook_addr: SocketAddr = hook_addr.parse().unwrap();

    // Forged: signed with a key that is not the endpoint's.
    let forger = wire::Secret::generate();
    let body = br#"{"type":"pushpull.message","timestamp":"2026-01-01T00:00:00Z","data":{}}"#;
    let now = wire::unix_now();
    let forged = wire::sign(&forger, "msg_forged", now, body);
    let send = async |id: &str, ts: u64, signature: &str| {
        let mut stream = TcpStream::connect(hook_addr).await.unwrap();
        let head = format!(
            "POST /{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nwebhook-id: {id}\r\nwebhook-timestamp: {ts}\r\nwebhook-signature: {signature}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body).await.unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.unwrap();
        reply
    };
    let reply = send("msg_forged", now, &forged).await;
    assert!(reply.starts_with("HTTP/1.1 401") && reply.contains("no signature matches"), "{reply}");
    let reply = send("msg_old", now - 3600, &forged).await;
    assert!(reply.starts_with("HTTP/1.1 401") && reply.contains("tolerance"), "{reply}");
    let reply = send("msg_x", now, "").await;
    assert!(reply.starts_with("HTTP/1.1 401"), "{reply}");

    // Real deliveries still get through, each once.
    broker.publish(&topic, Publication::new("real")).await.unwrap();
    let delivery =
        tokio::time::timeout(LIMIT, subscription.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(delivery.as_message().unwrap().payload, "real");
    drop(subscription);
    until("dropping the subscription to delete its endpoint", async || {
        call(server.local_addr(), "GET", "/v1/webhooks", None)
            .await
            .1
            .as_array()
            .unwrap()
            .is_empty()
    })
    .await;
}

/// Forwards connections to `upstream`, but for the first one swallows the answer and closes,
/// as if the acknowledgement was lost on the way back.
async fn ack_losing_proxy(upstream: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut inbound, _)) = listener.accept().await {
            let lose = std::mem::take(&mut first);
            tokio::spawn(async move {
                let mut outbound = TcpStream::connect(upstream).await.unwrap();
                if lose {
                    let mut request = vec![0u8; 1 << 16];
                    let n = inbound.read(&mut request).await.unwrap();
                    outbound.write_all(&request[..n]).await.unwrap();
                    let mut answer = [0u8; 1024];
                    let _ = outbound.read(&mut answer).await; // the receiver took it...
                    return; // ...and the answer never arrives
                }
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_delivery_retried_after_a_lost_ack_reaches_the_application_once() {
    let (server, broker) = start(fast(ServerConfig::default())).await;
    // The receiver listens on a fixed loopback port so the proxy can sit in front of it.
    let receiver_addr = TcpListener::bind(("127.0.0.1", 0)).await.unwrap().local_addr().unwrap();
    let proxy = ack_losing_proxy(receiver_addr).await;
    let config = {
        let mut built =
            pushpull_webhook::ClientConfig::new(format!("http://{}", server.local_addr()));
        built.listen = receiver_addr;
        built.public_url = Some(format!("http://{proxy}"));
        built
    };
    let client = pushpull_webhook::WebhookClient::new(config).unwrap();
    let topic = Topic::new("t").unwrap();
    let mut subscription = client.subscribe(&topic, Cursor::Latest).await.unwrap();
    publish(&broker, "once").await;
    publish(&broker, "then this").await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let delivery =
            tokio::time::timeout(LIMIT, subscription.next()).await.unwrap().unwrap().unwrap();
        got.push(delivery.as_message().unwrap().payload.clone());
    }
    assert_eq!(got, ["once", "then this"], "the retried delivery was dropped as a repeat");
    // The server saw the lost ack as a failure and retried; it counts both as delivered.
    until("the server to count both deliveries", async || {
        let (_, endpoints) = call(server.local_addr(), "GET", "/v1/webhooks", None).await;
        endpoints[0]["delivered"] == 2
    })
    .await;
    let (_, endpoints) = call(server.local_addr(), "GET", "/v1/webhooks", None).await;
    assert!(endpoints[0]["last_error"].as_str().unwrap().contains("closed"), "{endpoints}");
}

/// An endpoint registered for a prefix gets every topic it selects: those that existed, from
/// where the registration started, and those created later, from their first message; each
/// delivery names its topic, and its progress has a cursor per topic.
#[tokio::test]
async fn a_prefix_endpoint_delivers_every_topic_it_selects() {
    let (server, broker) = start(fast(ServerConfig::default())).await;
    let sink = fake(vec![200], Duration::ZERO).await;
    let publish = |topic: &'static str, text: &'static str| {
        let broker = broker.clone();
        async move { broker.publish(&Topic::new(topic).unwrap(), Publication::new(text)).await.unwrap() }
    };
    publish("orders:eu", "before").await;
    let (status, endpoint) = call(
        server.local_addr(),
        "POST",
        "/v1/webhooks",
        Some(
            json!({"url": format!("http://{}/hook", sink.addr), "topics": ["orders:*", "ticker"]}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{endpoint}");
    publish("orders:eu", "eu after").await;
    publish("orders:us", "a new topic").await;
    publish("ticker", "tick").await;
    publish("other", "not selected").await;
    until("three delivered", async || sink.got.lock().unwrap().len() == 3).await;
    let mut got: Vec<(String, String)> = sink
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|(_, body)| {
            let data = &body["data"];
            (data["topic"].as_str().unwrap().to_owned(), data["data"].as_str().unwrap().to_owned())
        })
        .collect();
    got.sort();
    let want = [("orders:eu", "eu after"), ("orders:us", "a new topic"), ("ticker", "tick")];
    assert_eq!(got, want.map(|(t, d)| (t.to_owned(), d.to_owned())));
    let id = endpoint["id"].as_str().unwrap();
    let (_, view) = call(server.local_addr(), "GET", &format!("/v1/webhooks/{id}"), None).await;
    assert_eq!(view["delivered"], 3, "{view}");
    let mut followed: Vec<&str> =
        view["cursors"].as_object().unwrap().keys().map(String::as_str).collect();
    followed.sort_unstable();
    assert_eq!(followed, ["orders:eu", "orders:us", "ticker"], "a cursor per topic: {view}");

    // A bad prefix is refused with the reason.
    let (status, refused) = call(
        server.local_addr(),
        "POST",
        "/v1/webhooks",
        Some(json!({"url": format!("http://{}/hook", sink.addr), "topics": ["orders:*x"]})),
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("orders:*x"), "{refused}");
}
