//! A server safe to expose: every transport over TLS with tokens checked, refusals as RFC 6750
//! says, the cross-origin WebSocket refused, tokens renewed with no message lost, and
//! subscription floods that no longer lock publishers out.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::Full;
use pushpull::{
    BearerToken, Client, ClientConfig, Cursor, ErrorKind, Publication, RunningServer, ServerConfig,
    TokenSource, Topic,
};
use pushpull_auth::{AuthConfig, KeyConfig};
use pushpull_chaos::TestCa;
use pushpull_http::{HttpClient, HttpClientConfig};
use support::LIMIT;

const SECRET: &str = "a shared secret of at least thirty-two bytes";
const TRANSPORTS: [&str; 6] = ["poll", "longpoll", "sse", "ws", "stream", "webhook"];

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A token granting `publish` and `subscribe` on those patterns (and `admin`), valid for `ttl`
/// seconds.
fn token(publish: &[&str], subscribe: &[&str], admin: bool, ttl: u64) -> String {
    let claims = serde_json::json!({
        "sub": format!("user-{}", NEXT.fetch_add(1, Ordering::Relaxed)),
        "exp": now() + ttl,
        "pushpull": { "publish": publish, "subscribe": subscribe, "admin": admin },
    });
    support::hs256(SECRET, &claims)
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A server on every transport over TLS, with auth on.
async fn secured(ca: &TestCa, tweak: impl FnOnce(&mut ServerConfig)) -> (RunningServer, String) {
    let tls = pushpull_http::TlsFiles::new(ca.cert_file(), ca.key_file());
    let auth = {
        let mut built = AuthConfig::default();
        built.keys = vec![KeyConfig::hs256(Some("k1"), SECRET)];
        built.leeway = Duration::ZERO;
        built
    };
    let mut config = {
        let mut built = ServerConfig::default();
        built.tls = Some(tls);
        built.auth = Some(auth);
        built
    };
    config
        .transports
        .configure::<pushpull::webhook::WebhookServer>(|c| c.allow_loopback = true)
        .unwrap();
    config
        .transports
        .configure::<pushpull::longpoll::LongpollServer>(|c| c.max_wait = Duration::from_secs(5))
        .unwrap();
    tweak(&mut config);
    let server = support::server(config).await;
    let url = format!("https://localhost:{}", server.local_addr().port());
    (server, url)
}

async fn client(transport: &str, url: &str, ca: &TestCa, token: BearerToken) -> Arc<dyn Client> {
    let mut config = ClientConfig::new(transport, url);
    config.ca_file = Some(ca.ca_file());
    config.token = token;
    if transport == "longpoll" {
        config = config.set("longpoll", "wait", "5s");
    }
    pushpull::connect(&config).await.unwrap_or_else(|e| panic!("{transport}: {e}"))
}

#[tokio::test]
async fn every_transport_over_tls_needs_a_token_granting_the_topic() {
    let ca = TestCa::new().unwrap();
    let (_server, url) = secured(&ca, |_| {}).await;
    for transport in TRANSPORTS {
        let topic = Topic::new(format!("orders:{transport}")).unwrap();
        let webhook = transport == "webhook";

        let anonymous = client(transport, &url, &ca, BearerToken::none()).await;
        let error = anonymous.publish(&topic, Publication::new("x")).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Unauthorized, "{transport} publish: {error}");
        let error = anonymous.subscribe(&topic, Cursor::Latest).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Unauthorized, "{transport} subscribe: {error}");

        let other = token(&["other:*"], &["other:*"], false, 60);
        let elsewhere = client(transport, &url, &ca, BearerToken::fixed(other)).await;
        let error = elsewhere.publish(&topic, Publication::new("x")).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Forbidden, "{transport} publish: {error}");
        let error = elsewhere.subscribe(&topic, Cursor::Latest).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Forbidden, "{transport} subscribe: {error}");

        // Webhook endpoints are managed with the admin right.
        let right = token(&["orders:*"], &["orders:*"], webhook, 60);
        let allowed = client(transport, &url, &ca, BearerToken::fixed(right)).await;
        let mut subscription =
            tokio::time::timeout(LIMIT, allowed.subscribe(&topic, Cursor::Latest))
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("{transport} subscribe: {e}"));
        let receipt = allowed.publish(&topic, Publication::new("over tls")).await.unwrap();
        let delivery = tokio::time::timeout(LIMIT, subscription.next()).await.unwrap().unwrap();
        let delivery = delivery.unwrap_or_else(|e| panic!("{transport}: {e}"));
        assert_eq!(delivery.cursor(), receipt.cursor(), "{transport}");
        assert_eq!(delivery.as_message().unwrap().payload, "over tls", "{transport}");
    }
}

/// A plain request with the test CA trusted.
async fn request(
    url: &str,
    ca: &TestCa,
    method: http::Method,
    path: &str,
    headers: &[(&str, String)],
) -> (http::StatusCode, http::HeaderMap, serde_json::Value) {
    let config = {
        let mut built = HttpClientConfig::default();
        built.ca_file = Some(ca.ca_file());
        built
    };
    let client = HttpClient::new(url, "test", config).unwrap();
    let mut builder = client.request(method, path);
    for (name, value) in headers {
        builder = builder.header(*name, value);
    }
    let response =
        client.send(builder.body(Full::new(Bytes::new())).unwrap(), LIMIT).await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let body = client.read_body(response, LIMIT).await.unwrap();
    (status, headers, serde_json::from_slice(&body).unwrap_or_default())
}

#[tokio::test]
async fn refusals_follow_rfc_6750() {
    let ca = TestCa::new().unwrap();
    let (_server, url) = secured(&ca, |_| {}).await;
    let path = "/v1/topics/orders:1/messages";
    let challenge = |headers: &http::HeaderMap| {
        headers.get("www-authenticate").expect("a challenge").to_str().unwrap().to_owned()
    };

    // No token: 401 with a bare challenge.
    let (status, headers, body) = request(&url, &ca, http::Method::GET, path, &[]).await;
    assert_eq!(status, 401);
    assert_eq!(challenge(&headers), "Bearer realm=\"pushpull\"");
    assert_eq!(body["error"]["kind"], "unauthorized");

    // Expired, badly signed, unknown kid: 401 invalid_token, saying which.
    let expired = {
        let claims = serde_json::json!({ "exp": now() - 60, "pushpull": { "subscribe": ["*"] } });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("k1".into());
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    };
    let forged = {
        let claims = serde_json::json!({ "exp": now() + 60, "pushpull": { "admin": true } });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("k1".into());
        let key = jsonwebtoken::EncodingKey::from_secret(b"another secret, thirty-two bytes long")
            .unwrap();
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    };
    for (bad, why) in
        [(expired, "expired"), (forged, "signature"), ("not.a.token".to_owned(), "cannot be read")]
    {
        let auth = ("authorization", format!("Bearer {bad}"));
        let (status, headers, body) = request(&url, &ca, http::Method::GET, path, &[auth]).await;
        assert_eq!(status, 401, "{why}");
        assert!(challenge(&headers).contains("error=\"invalid_token\""), "{why}");
        assert_eq!(body["error"]["bearer_error"], "invalid_token", "{why}");
        assert!(body["error"]["message"].as_str().unwrap().contains(why), "{body}");
    }

    // A token without the right: 403 insufficient_scope, naming the scope.
    let reader = token(&[], &["news:*"], false, 60);
    let auth = ("authorization", format!("Bearer {reader}"));
    let (status, headers, body) = request(&url, &ca, http::Method::GET, path, &[auth]).await;
    assert_eq!(status, 403);
    assert!(challenge(&headers).contains("error=\"insufficient_scope\""));
    assert!(challenge(&headers).contains("scope=\"subscribe:orders:1\""));
    assert_eq!(body["error"]["kind"], "forbidden");

    // The webhook API needs admin; the token may also come in the query or (for reads) a cookie.
    let plain = token(&["*"], &["*"], false, 60);
    let auth = ("authorization", format!("Bearer {plain}"));
    let (status, ..) = request(&url, &ca, http::Method::GET, "/v1/webhooks", &[auth]).await;
    assert_eq!(status, 403);
    let admin = token(&[], &[], true, 60);
    let query = format!("/v1/webhooks?access_token={admin}");
    let (status, ..) = request(&url, &ca, http::Method::GET, &query, &[]).await;
    assert_eq!(status, 200);
    let cookie = ("cookie", format!("theme=dark; pushpull_token={plain}"));
    let (status, ..) =
        request(&url, &ca, http::Method::GET, path, std::slice::from_ref(&cookie)).await;
    assert_eq!(status, 200, "a cookie authorizes reads");
    let (status, _, body) =
        request(&url, &ca, http::Method::POST, "/v1/topics/orders:1", &[cookie]).await;
    assert_eq!(status, 401, "a cookie never authorizes a publish: {body}");
    // Health stays open for probes.
    let (status, ..) = request(&url, &ca, http::Method::GET, "/v1/health", &[]).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_websocket_checks_origin_and_every_operation() {
    let ca = TestCa::new().unwrap();
    let (_server, url) = secured(&ca, |_| {}).await;
    let upgrade = |origin: Option<&str>, token: &str| {
        let mut headers = vec![
            ("connection", "Upgrade".to_owned()),
            ("upgrade", "websocket".to_owned()),
            ("sec-websocket-version", "13".to_owned()),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==".to_owned()),
            ("authorization", format!("Bearer {token}")),
        ];
        if let Some(origin) = origin {
            headers.push(("origin", origin.to_owned()));
        }
        headers
    };
    let reader = token(&[], &["orders:*"], false, 60);
    let (status, _, body) = request(
        &url,
        &ca,
        http::Method::GET,
        "/v1/ws",
        &upgrade(Some("https://evil.example"), &reader),
    )
    .await;
    assert_eq!(status, 403, "a page of another origin: {body}");
    assert_eq!(body["error"]["kind"], "forbidden");

    // On an open socket, each operation is checked against the token's rights.
    let client = client("ws", &url, &ca, BearerToken::fixed(reader)).await;
    let mine = Topic::new("orders:7").unwrap();
    let theirs = Topic::new("payroll").unwrap();
    let _subscription = client.subscribe(&mine, Cursor::Latest).await.unwrap();
    let error = client.subscribe(&theirs, Cursor::Latest).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Forbidden, "{error}");
    let error = client.fetch(&theirs, Cursor::Beginning, 10).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Forbidden, "{error}");
    let error = client.publish(&mine, Publication::new("x")).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Forbidden, "a reader may not publish: {error}");
}

/// Tokens valid for two seconds, counting how many were asked for.
struct ShortLived {
    asked: AtomicUsize,
}

#[pushpull::async_trait]
impl TokenSource for ShortLived {
    async fn token(&self, _rejected: Option<&str>) -> Result<String, pushpull::Error> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        Ok(token(&[], &["ticks"], false, 2))
    }
}

#[tokio::test]
async fn an_expiring_token_is_renewed_and_the_reader_misses_nothing() {
    let ca = TestCa::new().unwrap();
    let (_server, url) = secured(&ca, |_| {}).await;
    let topic = Topic::new("ticks").unwrap();
    let publisher = token(&["ticks"], &[], false, 120);
    let publisher = client("poll", &url, &ca, BearerToken::fixed(publisher)).await;
    for transport in ["sse", "ws", "stream", "longpoll"] {
        let source = Arc::new(ShortLived { asked: AtomicUsize::new(0) });
        let reader = client(transport, &url, &ca, BearerToken::from_source(source.clone())).await;
        let mut subscription = reader.subscribe(&topic, Cursor::Latest).await.unwrap();
        // Publish across several expiries; every message arrives, in order, once.
        let mut sent = Vec::new();
        for n in 0..12 {
            let payload = format!("{transport}-{n}");
            sent.push(publisher.publish(&topic, Publication::new(payload)).await.unwrap());
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        for receipt in &sent {
            let delivery = tokio::time::timeout(LIMIT, subscription.next()).await.unwrap();
            let delivery = delivery.unwrap().unwrap_or_else(|e| panic!("{transport}: {e}"));
            assert_eq!(delivery.cursor(), receipt.cursor(), "{transport}: in order, none missed");
        }
        let asked = source.asked.load(Ordering::SeqCst);
        // The client asks again only when the server refused the expired token.
        assert!(asked >= 2, "{transport}: tokens of two seconds over six, asked {asked} times");
    }
}

#[tokio::test]
async fn each_token_has_a_publish_allowance_over_every_transport() {
    let ca = TestCa::new().unwrap();
    let (_server, url) = secured(&ca, |config| {
        let auth = config.auth.as_mut().unwrap();
        auth.publish_rate = 1.0;
        auth.publish_burst = 2;
    })
    .await;
    let topic = Topic::new("busy").unwrap();
    let publisher = token(&["busy"], &[], false, 60);
    // HTTP and WebSocket publishes of one token draw on one allowance.
    let http = client("poll", &url, &ca, BearerToken::fixed(publisher.clone())).await;
    let ws = client("ws", &url, &ca, BearerToken::fixed(publisher)).await;
    http.publish(&topic, Publication::new("1")).await.unwrap();
    ws.publish(&topic, Publication::new("2")).await.unwrap();
    for (name, client) in [("poll", &http), ("ws", &ws)] {
        let error = client.publish(&topic, Publication::new("3")).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::RateLimited, "{name}: {error}");
    }
    // Another token has its own.
    let other =
        client("poll", &url, &ca, BearerToken::fixed(token(&["busy"], &[], false, 60))).await;
    other.publish(&topic, Publication::new("4")).await.unwrap();
}

#[tokio::test]
async fn a_subscription_flood_does_not_lock_publishers_out() {
    let ca = TestCa::new().unwrap();
    let (_server, url) =
        secured(&ca, |config| config.broker = config.broker.clone().set("max_topics", 5)).await;
    let anything = token(&["*"], &["*"], false, 60);
    let flooder = client("sse", &url, &ca, BearerToken::fixed(anything.clone())).await;
    let mut flood = Vec::new();
    for n in 0..40 {
        let topic = Topic::new(format!("made-up-{n}")).unwrap();
        flood.push(flooder.subscribe(&topic, Cursor::Latest).await.unwrap());
    }
    let publisher = client("poll", &url, &ca, BearerToken::fixed(anything)).await;
    for n in 0..5 {
        let topic = Topic::new(format!("real-{n}")).unwrap();
        publisher.publish(&topic, Publication::new("still served")).await.unwrap();
    }
}

#[tokio::test]
async fn a_held_long_poll_is_answered_401_when_its_token_expires() {
    let ca = TestCa::new().unwrap();
    let (_server, url) = secured(&ca, |config| {
        config
            .transports
            .configure::<pushpull::longpoll::LongpollServer>(|c| {
                c.max_wait = Duration::from_secs(120)
            })
            .unwrap();
    })
    .await;
    // Valid for two seconds; the poll asks to be held for two minutes on a quiet topic.
    let short = token(&[], &["quiet"], false, 2);
    let started = std::time::Instant::now();
    let (status, headers, body) = request(
        &url,
        &ca,
        http::Method::GET,
        "/v1/topics/quiet/messages?after=latest&wait=120",
        &[("authorization", format!("Bearer {short}"))],
    )
    .await;
    assert_eq!(status, http::StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["kind"], "unauthorized");
    assert!(body["error"]["message"].as_str().unwrap().contains("expired"), "{body}");
    let challenge = headers.get("www-authenticate").unwrap().to_str().unwrap();
    assert!(challenge.contains("invalid_token"), "{challenge}");
    // Answered at the expiry (LIMIT bounds it), not when the two minutes are up.
    assert!(started.elapsed() < LIMIT, "held for {:?}", started.elapsed());
}

/// A batch needs the right for each publication (a refusal is that one's answer), a prefix
/// needs a right covering it whole, and a stream of many topics with no topic follows what the
/// token may read.
#[tokio::test]
async fn batches_prefixes_and_server_decided_topics_follow_the_token() {
    let ca = TestCa::new().unwrap();
    let (_server, url) = secured(&ca, |_| {}).await;
    let rights = token(&["orders:*"], &["orders:eu*", "ticker"], false, 60);
    let sse = client("sse", &url, &ca, BearerToken::fixed(rights.clone())).await;
    let answers = sse
        .publish_many(vec![
            (Topic::new("orders:eu").unwrap(), Publication::new("1")),
            (Topic::new("secret").unwrap(), Publication::new("2")),
            (Topic::new("orders:us").unwrap(), Publication::new("3")),
        ])
        .await
        .unwrap();
    assert_eq!(answers[0].as_ref().unwrap().offset.0, 1);
    let refused = answers[1].as_ref().unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Forbidden, "{refused}");
    assert!(refused.to_string().contains("publish:secret"), "{refused}");
    assert_eq!(answers[2].as_ref().unwrap().offset.0, 1, "the refusal stopped nothing");

    let bearer = [("authorization", format!("Bearer {rights}"))];
    // `orders:eu*` covers `orders:eu:north*`, not `orders:*`.
    let wide = "/v1/messages?topic=orders:*";
    let (status, _, body) = request(&url, &ca, http::Method::GET, wide, &bearer).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("subscribe:orders:*"), "{body}");
    let narrow = "/v1/messages?topic=orders:eu:north*&after=beginning";
    let (status, _, _) = request(&url, &ca, http::Method::GET, narrow, &bearer).await;
    assert_eq!(status, 200);
    // No topic: what the token may read, `orders:eu*` and `ticker`.
    let (status, _, body) =
        request(&url, &ca, http::Method::GET, "/v1/messages?after=beginning", &bearer).await;
    assert_eq!(status, 200, "{body}");
    let topics: Vec<&str> =
        body["messages"].as_array().unwrap().iter().map(|m| m["topic"].as_str().unwrap()).collect();
    assert_eq!(topics, vec!["orders:eu"], "{body}");
    let (status, _, _) = request(&url, &ca, http::Method::GET, "/v1/messages", &[]).await;
    assert_eq!(status, 401, "no token, no topics");

    // Over a WebSocket, the same rule for a prefix subscription.
    let ws = client("ws", &url, &ca, BearerToken::fixed(rights)).await;
    let prefix = |text: &str| pushpull::FollowRequest {
        selectors: vec![(text.parse().unwrap(), pushpull::Cursor::Beginning)],
        resume: None,
        max_topics: 10,
    };
    let refused = pushpull::follow(ws.clone(), prefix("orders:*")).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Forbidden, "{refused}");
    assert!(refused.to_string().contains("subscribe:orders:*"), "{refused}");
    pushpull::follow(ws, prefix("orders:eu:north*")).await.expect("a prefix the token covers");

    // Server-decided over HTTP, resumed with a token whose rights differ: the cursor set names
    // its topics, so a renewed token listing its rights in another order, or fewer of them,
    // resumes each topic it still grants from where it was (an index into the old token's
    // list would map positions onto other topics).
    let (_, _, first) =
        request(&url, &ca, http::Method::GET, "/v1/messages?after=beginning", &bearer).await;
    let next = first["next"].as_str().unwrap().to_owned();
    assert!(next.starts_with("@=") && next.contains(",orders:eu~1"), "{next}");
    let writer = client("poll", &url, &ca, BearerToken::fixed(token(&["*"], &[], false, 60))).await;
    writer.publish(&Topic::new("ticker").unwrap(), Publication::new("t1")).await.unwrap();
    writer.publish(&Topic::new("orders:eu").unwrap(), Publication::new("o2")).await.unwrap();
    let resume = |rights: &[&str]| {
        [
            ("authorization", format!("Bearer {}", token(&[], rights, false, 60))),
            ("pushpull-cursor", next.clone()),
        ]
    };
    let reordered = resume(&["ticker", "orders:eu*"]);
    let (status, _, page) = request(&url, &ca, http::Method::GET, "/v1/messages", &reordered).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(payloads(&page), ["ticker t1", "orders:eu o2"], "from where it was: {page}");
    let narrower = resume(&["ticker"]);
    let (status, _, page) = request(&url, &ca, http::Method::GET, "/v1/messages", &narrower).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(payloads(&page), ["ticker t1"], "only what the new token grants: {page}");
    // A set written against topic parameters is not taken for a server-decided one's.
    let indexed = [bearer[0].clone(), ("pushpull-cursor", "@,0~beginning".to_owned())];
    let (status, _, refused) =
        request(&url, &ca, http::Method::GET, "/v1/messages", &indexed).await;
    assert_eq!(status, 400, "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("(@=…)"), "{refused}");
}

/// `TOPIC PAYLOAD` of each message of a page.
fn payloads(page: &serde_json::Value) -> Vec<String> {
    let messages = page["messages"].as_array().unwrap();
    let text = |m: &serde_json::Value, field: &str| m[field].as_str().unwrap().to_owned();
    messages.iter().map(|m| format!("{} {}", text(m, "topic"), text(m, "data"))).collect()
}

type TlsSocket =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A WebSocket over TLS opened with `token`, speaking the protocol's frames by hand.
async fn raw_socket(url: &str, ca: &TestCa, token: &str) -> TlsSocket {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let config = pushpull_http::tls::client_config(Some(&ca.ca_file())).unwrap();
    let config = pushpull_http::tls::with_alpn(&config, &[b"http/1.1"]);
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.unwrap();
    let mut request = format!("wss://localhost:{port}/v1/ws").into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    headers.insert("sec-websocket-protocol", "pushpull.v1".parse().unwrap());
    tokio_tungstenite::client_async(request, tls).await.unwrap().0
}

/// Sends a request frame and reads the next text frame.
async fn exchange(socket: &mut TlsSocket, frame: serde_json::Value) -> serde_json::Value {
    use futures::SinkExt;
    let text = tokio_tungstenite::tungstenite::Message::text(frame.to_string());
    socket.send(text).await.unwrap();
    next_frame(socket).await
}

async fn next_frame(socket: &mut TlsSocket) -> serde_json::Value {
    loop {
        let frame = tokio::time::timeout(LIMIT, socket.next()).await.unwrap().unwrap().unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(text) = frame {
            return serde_json::from_str(text.as_str()).unwrap();
        }
    }
}

/// `TOPIC PAYLOAD SUB` of a pushed message frame.
fn pushed(frame: &serde_json::Value) -> String {
    assert_eq!(frame["op"], "message", "{frame}");
    let text = |field: &str| frame[field].as_str().unwrap_or("-").to_owned();
    format!("{} {} {}", text("topic"), text("data"), text("sub"))
}

/// A subscribe without a topic follows what the socket's token may read (its names and
/// prefixes, topics first published later included); its frames carry `sub: "@token"`; its
/// start is a set that names its topics, which resumes it on a socket whose token lists the
/// same rights in another order.
#[tokio::test]
async fn a_websocket_subscription_without_a_topic_follows_the_token() {
    let ca = TestCa::new().unwrap();
    let (_server, url) = secured(&ca, |_| {}).await;
    let writer = client("poll", &url, &ca, BearerToken::fixed(token(&["*"], &[], false, 60))).await;
    let publish = |topic: &'static str, text: &'static str| {
        let writer = writer.clone();
        async move {
            writer.publish(&Topic::new(topic).unwrap(), Publication::new(text)).await.unwrap();
        }
    };
    publish("orders:eu", "o1").await;
    publish("secret", "s1").await;

    let rights = token(&[], &["orders:*", "ticker"], false, 60);
    let mut socket = raw_socket(&url, &ca, &rights).await;
    let subscribe = serde_json::json!({"op": "subscribe", "id": "s1", "after": "beginning"});
    let subscribed = exchange(&mut socket, subscribe).await;
    assert_eq!((&subscribed["op"], &subscribed["id"]), (&"subscribed".into(), &"s1".into()));
    assert!(subscribed.get("topic").is_none(), "server-decided: no topic: {subscribed}");
    assert_eq!(subscribed["sub"], "@token", "{subscribed}");
    assert!(subscribed["cursor"].as_str().unwrap().starts_with("@="), "{subscribed}");
    assert_eq!(pushed(&next_frame(&mut socket).await), "orders:eu o1 @token");
    publish("secret", "s2").await;
    publish("ticker", "t1").await;
    publish("orders:us", "o2").await;
    assert_eq!(pushed(&next_frame(&mut socket).await), "ticker t1 @token", "not secret");
    assert_eq!(pushed(&next_frame(&mut socket).await), "orders:us o2 @token", "a new topic");
    // One unnamed server-decided subscription per socket; unsubscribed without a topic.
    let twice = exchange(&mut socket, serde_json::json!({"op": "subscribe", "id": "s2"})).await;
    assert_eq!(twice["op"], "error", "{twice}");
    let message = twice["message"].as_str().unwrap();
    assert!(message.contains("already subscribed to what the token may read"), "{twice}");
    let gone = exchange(&mut socket, serde_json::json!({"op": "unsubscribe", "id": "u1"})).await;
    assert_eq!((&gone["op"], gone.get("topic")), (&"unsubscribed".into(), None), "{gone}");
    assert_eq!(gone["sub"], "@token", "{gone}");

    // Resumed on another socket, whose token lists the same rights the other way round, from
    // the set of what was read (a page's `next`, written the same way): only what came since.
    let bearer = [("authorization", format!("Bearer {rights}"))];
    let (_, _, page) =
        request(&url, &ca, http::Method::GET, "/v1/messages?after=beginning", &bearer).await;
    let after = page["next"].as_str().unwrap();
    let mut again = raw_socket(&url, &ca, &token(&[], &["ticker", "orders:*"], false, 60)).await;
    let subscribe =
        serde_json::json!({"op": "subscribe", "id": "r1", "after": after, "sub": "mine"});
    let resumed = exchange(&mut again, subscribe).await;
    assert_eq!((&resumed["op"], &resumed["sub"]), (&"subscribed".into(), &"mine".into()));
    publish("ticker", "t2").await;
    assert_eq!(pushed(&next_frame(&mut again).await), "ticker t2 mine");
}

/// A token with an id (`jti`) and an issue time, for revoking.
fn token_with_id(subscribe: &[&str], sub: &str, jti: &str) -> String {
    let claims = serde_json::json!({
        "sub": sub,
        "jti": jti,
        "iat": now() - 1,
        "exp": now() + 600,
        "pushpull": { "publish": subscribe, "subscribe": subscribe },
    });
    support::hs256(SECRET, &claims)
}

/// Revoking a token ends every connection it holds open, on every transport that keeps one
/// (an event stream, a chunked stream, a held long poll, a WebSocket; a short poll's next
/// request), and refuses it from then on; another subject's connections go on.
#[tokio::test]
async fn a_revoked_token_ends_its_connections_and_is_refused() {
    let ca = TestCa::new().unwrap();
    let (_server, url) = secured(&ca, |_| {}).await;
    let admin = [("authorization", format!("Bearer {}", token(&[], &[], true, 60)))];
    let leaked = token_with_id(&["rooms:*"], "mallory", "t-leaked");
    let other = token_with_id(&["rooms:*"], "alice", "t-fine");
    let topic = Topic::new("rooms:1").unwrap();
    let mut open = Vec::new();
    for transport in ["sse", "stream", "longpoll", "poll", "ws"] {
        let client = client(transport, &url, &ca, BearerToken::fixed(leaked.clone())).await;
        let subscription = client.subscribe(&topic, Cursor::Latest).await.unwrap();
        open.push((transport, client, subscription));
    }
    let bystander = client("ws", &url, &ca, BearerToken::fixed(other)).await;
    let mut watching = bystander.subscribe(&topic, Cursor::Latest).await.unwrap();

    // Only an admin revokes, and a revocation names one subject or one token.
    let reader = [("authorization", format!("Bearer {leaked}"))];
    let revoke = |body: serde_json::Value, headers: [(&'static str, String); 1]| {
        let (url, ca) = (url.clone(), &ca);
        async move { post_json(&url, ca, "/v1/admin/revocations", &body, &headers).await }
    };
    let (status, body) = revoke(serde_json::json!({"jti": "t-leaked"}), reader.clone()).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = revoke(serde_json::json!({"sub": "a", "jti": "b"}), admin.clone()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("exactly one"), "{body}");
    let (status, body) = revoke(serde_json::json!({"jti": "t-leaked"}), admin.clone()).await;
    assert_eq!(status, 201, "{body}");
    assert!(body["until"].as_u64().unwrap() > now(), "{body}");

    for (transport, _client, subscription) in &mut open {
        support::ends_with(transport, subscription, ErrorKind::Unauthorized, "revoked").await;
    }
    let (status, _, body) =
        request(&url, &ca, http::Method::GET, "/v1/topics/rooms:1/messages", &reader).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("revoked"), "{body}");
    let (status, _, listed) =
        request(&url, &ca, http::Method::GET, "/v1/admin/revocations", &admin).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["revocations"][0]["jti"], "t-leaked", "{listed}");

    // The other subject's socket was not touched.
    let writer = client("poll", &url, &ca, BearerToken::fixed(token(&["*"], &[], false, 60))).await;
    let receipt = writer.publish(&topic, Publication::new("still here")).await.unwrap();
    let delivery = tokio::time::timeout(LIMIT, watching.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(delivery.cursor(), receipt.cursor());
}

/// A JSON `POST` with the test CA trusted.
async fn post_json(
    url: &str,
    ca: &TestCa,
    path: &str,
    body: &serde_json::Value,
    headers: &[(&str, String)],
) -> (http::StatusCode, serde_json::Value) {
    let config = {
        let mut built = HttpClientConfig::default();
        built.ca_file = Some(ca.ca_file());
        built
    };
    let client = HttpClient::new(url, "test", config).unwrap();
    let mut builder =
        client.request(http::Method::POST, path).header("content-type", "application/json");
    for (name, value) in headers {
        builder = builder.header(*name, value);
    }
    let body = Full::new(Bytes::from(body.to_string()));
    let response = client.send(builder.body(body).unwrap(), LIMIT).await.unwrap();
    let status = response.status();
    let body = client.read_body(response, LIMIT).await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

/// A token of subject `sub` valid for `ttl` seconds, reading and writing `topics`.
fn token_of(sub: &str, topics: &[&str], ttl: u64) -> String {
    let claims = serde_json::json!({
        "sub": sub, "exp": now() + ttl,
        "pushpull": { "publish": topics, "subscribe": topics },
    });
    support::hs256(SECRET, &claims)
}

/// `refresh` takes a new token in place: checked as at the upgrade, for the same subject, and
/// granting what the socket follows; the socket then outlives its first token.
#[tokio::test]
async fn a_websocket_takes_a_new_token_in_place() {
    let ca = TestCa::new().unwrap();
    let (_server, url) = secured(&ca, |_| {}).await;
    let mut socket = raw_socket(&url, &ca, &token_of("carol", &["rooms:*"], 5)).await;
    let subscribe = serde_json::json!({"op": "subscribe", "id": "s1", "topic": "rooms:1"});
    assert_eq!(exchange(&mut socket, subscribe).await["op"], "subscribed");
    let refresh =
        |id: &str, token: String| serde_json::json!({"op": "refresh", "id": id, "token": token});
    let cases = [
        ("r1", "not a token".to_owned(), "unauthorized", "cannot be read"),
        ("r2", token_of("dave", &["rooms:*"], 60), "forbidden", "keeps the socket's subject"),
        (
            "r3",
            token_of("carol", &["other:*"], 60),
            "forbidden",
            "unsubscribe what it does not grant",
        ),
    ];
    for (id, token, kind, says) in cases {
        let refused = exchange(&mut socket, refresh(id, token)).await;
        assert_eq!(
            (&refused["op"], &refused["id"], &refused["kind"]),
            (&"error".into(), &id.into(), &kind.into()),
            "{refused}"
        );
        assert!(refused["message"].as_str().unwrap().contains(says), "{refused}");
    }
    let refreshed = exchange(&mut socket, refresh("r4", token_of("carol", &["rooms:*"], 60))).await;
    assert_eq!(refreshed["op"], "refreshed", "{refreshed}");
    assert!(refreshed["expires"].as_u64().unwrap() > now() + 30, "{refreshed}");
    // Past the first token's expiry, the socket is open and serving.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let publish =
        serde_json::json!({"op": "publish", "id": "p1", "topic": "rooms:1", "data": "later"});
    let mut ops = vec![];
    let first = exchange(&mut socket, publish).await;
    ops.push(first["op"].as_str().unwrap().to_owned());
    ops.push(next_frame(&mut socket).await["op"].as_str().unwrap().to_owned());
    ops.sort();
    assert_eq!(ops, ["message", "published"]);
}

/// Four-second tokens of one subject, counting how many were asked for.
struct SameSubject {
    asked: AtomicUsize,
}

#[pushpull::async_trait]
impl TokenSource for SameSubject {
    async fn token(&self, _rejected: Option<&str>) -> Result<String, pushpull::Error> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        Ok(token_of("erin", &["ticks"], 4))
    }
}

/// The Rust WebSocket client refreshes its token on the socket before it expires: across
/// several expiries the socket is never reopened, and nothing is missed.
#[tokio::test]
async fn the_websocket_client_refreshes_before_expiry_on_one_socket() {
    let ca = TestCa::new().unwrap();
    let (server, url) = secured(&ca, |_| {}).await;
    let source = Arc::new(SameSubject { asked: AtomicUsize::new(0) });
    let client = client("ws", &url, &ca, BearerToken::from_source(source.clone())).await;
    let topic = Topic::new("ticks").unwrap();
    let mut subscription = client.subscribe(&topic, Cursor::Latest).await.unwrap();
    let mut sent = Vec::new();
    for n in 0..18 {
        sent.push(client.publish(&topic, Publication::new(format!("tick {n}"))).await.unwrap());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for receipt in &sent {
        let delivery = tokio::time::timeout(LIMIT, subscription.next()).await.unwrap();
        assert_eq!(delivery.unwrap().unwrap().cursor(), receipt.cursor(), "in order, none missed");
    }
    assert!(source.asked.load(Ordering::SeqCst) >= 3, "tokens of four seconds over nine");
    assert_eq!(server.stats().accepted_connections(), 1, "one socket the whole time");
}
