//! The HTTP API of `pushpull serve` over real sockets: publishing, pages, caching headers, and
//! every kind of bad input, each answered with a clear error that harms no other client.

mod support;

use std::time::Duration;

use pushpull::{Cursor, ServerConfig};
use support::{LIMIT, get, post, raw, server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn small_config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.broker.configure::<pushpull::MemoryBroker>(|memory| memory.max_payload = 1024).unwrap();
    config.http.header_read_timeout = Duration::from_millis(500);
    config
}

#[tokio::test]
async fn publish_keeps_content_type_and_event() {
    let server = server(small_config()).await;
    let addr = server.local_addr();
    let reply =
        post(addr, "/v1/topics/ticker?event=price", "Content-Type: text/plain", b"42.17").await;
    assert_eq!(reply.status, 201);
    let receipt = reply.json();
    assert_eq!(receipt["offset"], 1);
    let cursor: Cursor = receipt["cursor"].as_str().unwrap().parse().unwrap();

    let reply = post(addr, "/v1/topics/ticker", "Pushpull-Event: close", b"43").await;
    assert_eq!(reply.status, 201);

    let page = get(addr, "/v1/topics/ticker/messages").await;
    assert_eq!(page.status, 200);
    let json = page.json();
    assert_eq!(json["messages"][0]["data"], "42.17");
    assert_eq!(json["messages"][0]["event"], "price");
    assert_eq!(json["messages"][0]["content_type"], "text/plain");
    assert_eq!(json["messages"][1]["event"], "close");
    assert_eq!(json["messages"][0]["cursor"], cursor.to_string());
}

#[tokio::test]
async fn pages_carry_etag_cache_control_and_poll_hint_and_304_when_unchanged() {
    let server = server(small_config()).await;
    let addr = server.local_addr();
    post(addr, "/v1/topics/t", "", b"one").await;
    let first = get(addr, "/v1/topics/t/messages?after=beginning").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("cache-control"), Some("no-cache"));
    assert_eq!(first.header("pushpull-poll-interval-ms"), Some("1000"));
    let next = first.json()["next"].as_str().unwrap().to_owned();

    let path = format!("/v1/topics/t/messages?after={next}");
    let empty = get(addr, &path).await;
    assert_eq!(empty.status, 200);
    let etag = empty.header("etag").expect("an ETag").to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "a strong ETag: {etag}");

    let head = format!("GET {path} HTTP/1.1\r\nIf-None-Match: {etag}");
    let unchanged = raw(addr, &head, b"").await;
    assert_eq!(unchanged.status, 304);
    assert!(unchanged.body.is_empty());
    assert_eq!(unchanged.header("etag"), Some(etag.as_str()));

    post(addr, "/v1/topics/t", "", b"two").await;
    let changed = raw(addr, &head, b"").await;
    assert_eq!(changed.status, 200);
    assert_ne!(changed.header("etag"), Some(etag.as_str()));
    assert_eq!(changed.json()["messages"][0]["data"], "two");

    let head_only = raw(addr, &format!("HEAD {path} HTTP/1.1"), b"").await;
    assert_eq!(head_only.status, 200);
    assert!(head_only.body.is_empty());
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let server = server(small_config()).await;
    let addr = server.local_addr();
    post(addr, "/v1/topics/t", "", b"x").await;
    let cases: [(&str, u16, &str, &str); 9] = [
        ("/v1/topics/bad%20topic/messages", 400, "invalid_topic", "position 3"),
        ("/v1/topics/.hidden/messages", 400, "invalid_topic", "start with"),
        ("/v1/topics/t/messages?after=yesterday", 400, "invalid_cursor", "yesterday"),
        ("/v1/topics/t/messages?after=0123456789abcdef-", 400, "invalid_cursor", "offset"),
        ("/v1/topics/t/messages?limit=0", 400, "bad_request", "between 1 and 1000"),
        ("/v1/topics/t/messages?limit=1000000000000", 400, "bad_request", "between 1 and 1000"),
        ("/v1/topics/t/messages?limit=ten", 400, "bad_request", "whole number"),
        ("/v1/nothing/here", 404, "not_found", "/v1/nothing/here"),
        ("/v1/topics/t/messages/extra", 404, "not_found", "no route"),
    ];
    for (path, status, kind, says) in cases {
        let reply = get(addr, path).await;
        assert_eq!(reply.status, status, "{path}");
        assert_eq!(reply.header("content-type"), Some("application/json"), "{path}");
        assert_eq!(reply.error_kind(), kind, "{path}");
        let message = reply.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(says), "{path}: {message}");
    }

    let header_cursor =
        raw(addr, "GET /v1/topics/t/messages HTTP/1.1\r\nPushpull-Cursor: nope", b"").await;
    assert_eq!(
        (header_cursor.status, header_cursor.error_kind().as_str()),
        (400, "invalid_cursor")
    );

    let wrong_method = raw(addr, "DELETE /v1/topics/t/messages HTTP/1.1", b"").await;
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.header("allow"), Some("GET, HEAD"));
    assert_eq!(wrong_method.error_kind(), "method_not_allowed");
    let put = raw(addr, "PUT /v1/topics/t HTTP/1.1\r\nContent-Length: 0", b"").await;
    assert_eq!((put.status, put.header("allow")), (405, Some("POST")));

    let bad_event = post(addr, "/v1/topics/t?event=a%0Ab", "", b"x").await;
    assert_eq!((bad_event.status, bad_event.error_kind().as_str()), (400, "bad_request"));
    assert!(bad_event.json()["error"]["message"].as_str().unwrap().contains("event type"));
}

#[tokio::test]
async fn cursors_of_another_epoch_or_ahead_of_the_log() {
    let server = server(small_config()).await;
    let addr = server.local_addr();
    let receipt = post(addr, "/v1/topics/t", "", b"x").await.json();
    let cursor: Cursor = receipt["cursor"].as_str().unwrap().parse().unwrap();
    let epoch = cursor.epoch().unwrap();

    let other = pushpull::Epoch::from_u64(epoch.as_u64() ^ 0xff);
    let reply = get(addr, &format!("/v1/topics/t/messages?after={other}-5")).await;
    assert_eq!(reply.status, 200, "another epoch is a gap, not an error");
    let json = reply.json();
    assert_eq!(json["gap"]["reason"], "epoch_changed");
    assert_eq!(json["gap"]["previous_epoch"], other.to_string());
    assert_eq!(json["messages"][0]["data"], "x");

    let reply = get(addr, &format!("/v1/topics/t/messages?after={epoch}-99")).await;
    assert_eq!((reply.status, reply.error_kind().as_str()), (400, "invalid_cursor"));
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("ahead"));
}

#[tokio::test]
async fn oversize_bodies_get_413_and_store_nothing() {
    let server = server(small_config()).await;
    let addr = server.local_addr();
    let big = vec![b'x'; 1025];
    let declared = post(addr, "/v1/topics/t", "", &big).await;
    assert_eq!((declared.status, declared.error_kind().as_str()), (413, "too_large"));
    assert!(declared.json()["error"]["message"].as_str().unwrap().contains("1024"));

    // Chunked, so the size is only known while reading.
    let mut chunked = Vec::new();
    for _ in 0..3 {
        chunked.extend_from_slice(b"200\r\n");
        chunked.extend_from_slice(&[b'y'; 0x200]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let streamed =
        raw(addr, "POST /v1/topics/t HTTP/1.1\r\nTransfer-Encoding: chunked", &chunked).await;
    assert_eq!((streamed.status, streamed.error_kind().as_str()), (413, "too_large"));

    let page = get(addr, "/v1/topics/t/messages").await.json();
    assert_eq!(page["messages"].as_array().unwrap().len(), 0, "nothing was stored");
    let exactly = post(addr, "/v1/topics/t", "", &[b'z'; 1024]).await;
    assert_eq!(exactly.status, 201);
    assert_eq!(exactly.json()["offset"], 1);
}

#[tokio::test]
async fn silent_and_slow_clients_are_dropped_without_harming_others() {
    let server = server(small_config()).await;
    let addr = server.local_addr();

    // Connects and sends nothing.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    // Sends half a request head, then stalls.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /v1/topics/t/messages HTTP/1.1\r\nHost: x\r\n").await.unwrap();

    // Others are served meanwhile.
    assert_eq!(post(addr, "/v1/topics/t", "", b"fine").await.status, 201);
    assert_eq!(get(addr, "/v1/topics/t/messages").await.status, 200);

    // Both are disconnected once the header read timeout passes (LIMIT only guards a hang).
    let mut buf = Vec::new();
    let silent_end = tokio::time::timeout(LIMIT, silent.read_to_end(&mut buf)).await;
    assert!(matches!(silent_end, Ok(Ok(0)) | Ok(Err(_))), "the silent client was dropped");
    let mut buf = Vec::new();
    let slow_end = tokio::time::timeout(LIMIT, slow.read_to_end(&mut buf)).await;
    assert!(slow_end.is_ok(), "the slow client was dropped");
    if !buf.is_empty() {
        assert_eq!(support::parse(&buf).status, 408, "a slow client, if answered, gets 408");
    }

    // The server counts no connection left behind once the clients are gone.
    assert_eq!(get(addr, "/v1/topics/t/messages").await.json()["messages"][0]["data"], "fine");
    tokio::time::timeout(LIMIT, async {
        while server.stats().open_connections() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every connection was closed");
}

#[tokio::test]
async fn http2_prior_knowledge_is_served_on_the_same_port() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let server = server(small_config()).await;
    let addr = server.local_addr();
    post(addr, "/v1/topics/h2", "", b"over h2").await;

    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    tokio::spawn(connection);
    // Several requests multiplexed on one connection.
    let requests = (0..8).map(|_| {
        let request = http::Request::get(format!("http://{addr}/v1/topics/h2/messages"))
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        sender.send_request(request)
    });
    for response in futures::future::join_all(requests).await {
        let response = response.expect("h2 response");
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["messages"][0]["data"], "over h2");
    }
}

#[tokio::test]
async fn health_names_the_broker_and_transports() {
    let server = server(small_config()).await;
    let health = get(server.local_addr(), "/v1/health").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["broker"], "memory");
    assert_eq!(
        health.json()["transports"],
        serde_json::json!(["poll", "longpoll", "sse", "ws", "stream", "webhook"])
    );
    assert_eq!(health.json()["live"]["sse_open_streams"], 0);
    assert_eq!(health.json()["live"]["longpoll_held_requests"], 0);
}

#[tokio::test]
async fn bodies_larger_than_the_drain_cap_but_allowed_are_stored_whole() {
    // A regression: reading stopped at 16 MiB (the cap on draining oversize bodies) even for
    // bodies under the limit, and stored them cut short.
    use pushpull::{Cursor, Fetch, Topic};
    let mut config = ServerConfig::default();
    config
        .broker
        .configure::<pushpull::MemoryBroker>(|memory| {
            memory.max_payload = 20 * 1024 * 1024;
            memory.retention.max_bytes = 64 * 1024 * 1024;
        })
        .unwrap();
    let broker = pushpull::broker(&config).unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let server = pushpull::serve_with(listener, broker.clone(), &config).unwrap();
    let body: Vec<u8> = (0..20 * 1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    let reply = post(server.local_addr(), "/v1/topics/big", "", &body).await;
    assert_eq!(reply.status, 201);
    let page = broker.fetch(&Topic::new("big").unwrap(), Cursor::Beginning, 1).await.unwrap();
    assert_eq!(page.messages[0].payload.len(), body.len());
    assert!(page.messages[0].payload == body, "stored byte for byte");
    let over =
        post(server.local_addr(), "/v1/topics/big", "", &vec![0u8; 20 * 1024 * 1024 + 1]).await;
    assert_eq!(over.status, 413);
}

#[tokio::test]
async fn browsers_on_allowed_origins_get_cors_headers_and_others_do_not() {
    let mut config = small_config();
    config.http.cors_origins = vec!["https://app.example".into()];
    let server = server(config).await;
    let addr = server.local_addr();

    let preflight = raw(
        addr,
        "OPTIONS /v1/topics/t HTTP/1.1\r\nOrigin: https://app.example\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type, idempotency-key",
        b"",
    )
    .await;
    assert_eq!(preflight.status, 204);
    assert_eq!(preflight.header("access-control-allow-origin"), Some("https://app.example"));
    assert_eq!(preflight.header("access-control-allow-methods"), Some("POST"));
    assert!(preflight.header("access-control-allow-headers").unwrap().contains("idempotency-key"));

    let page =
        raw(addr, "GET /v1/topics/t/messages HTTP/1.1\r\nOrigin: https://app.example", b"").await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("access-control-allow-origin"), Some("https://app.example"));
    assert!(page.header("access-control-expose-headers").unwrap().contains("etag"));
    // Errors carry the headers too, so a script can read what went wrong.
    let error =
        raw(addr, "GET /v1/topics/t/messages?limit=0 HTTP/1.1\r\nOrigin: https://app.example", b"")
            .await;
    assert_eq!(
        (error.status, error.header("access-control-allow-origin")),
        (400, Some("https://app.example"))
    );

    let stranger =
        raw(addr, "GET /v1/topics/t/messages HTTP/1.1\r\nOrigin: https://evil.example", b"").await;
    assert_eq!(stranger.status, 200);
    assert!(stranger.header("access-control-allow-origin").is_none(), "other origins get nothing");
    let stranger_preflight = raw(
        addr,
        "OPTIONS /v1/topics/t HTTP/1.1\r\nOrigin: https://evil.example\r\nAccess-Control-Request-Method: POST",
        b"",
    )
    .await;
    assert_eq!(stranger_preflight.status, 405);

    // Off by default.
    let closed = server_default_cors().await;
    let page = raw(
        closed.local_addr(),
        "GET /v1/topics/t/messages HTTP/1.1\r\nOrigin: https://app.example",
        b"",
    )
    .await;
    assert!(page.header("access-control-allow-origin").is_none());
}

async fn server_default_cors() -> pushpull::RunningServer {
    server(small_config()).await
}

#[tokio::test]
async fn a_body_too_slow_is_the_clients_408_and_a_declared_oversize_body_a_413_at_once() {
    let mut config = ServerConfig::default();
    config.http.body_timeout = Duration::from_millis(300);
    let slow = server(config).await;
    let addr = slow.local_addr();
    // Two bytes of the ten announced, then nothing: the client is too slow.
    let reply = tokio::time::timeout(LIMIT, async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /v1/topics/slow HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 10\r\n\r\nab"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut bytes = vec![0u8; 4096];
        let n = stream.read(&mut bytes).await.unwrap();
        support::parse(&bytes[..n])
    })
    .await
    .expect("answered");
    assert_eq!(reply.status, 408, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.error_kind(), "request_timeout");

    // A Content-Length over the limit is refused before any body is sent, even with a body
    // timeout far longer than the test waits.
    let mut config = ServerConfig::default();
    config.http.body_timeout = Duration::from_secs(600);
    let patient = server(config).await;
    let too_large = pushpull::MemoryConfig::default().max_payload + 1;
    let reply = tokio::time::timeout(LIMIT, async {
        let mut stream = TcpStream::connect(patient.local_addr()).await.unwrap();
        let head = format!(
            "POST /v1/topics/big HTTP/1.1\r\nHost: x\r\nContent-Length: {too_large}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut bytes = vec![0u8; 4096];
        let n = stream.read(&mut bytes).await.unwrap();
        support::parse(&bytes[..n])
    })
    .await
    .expect("answered without waiting for the body");
    assert_eq!(reply.status, 413);
    assert_eq!(reply.error_kind(), "too_large");
}

#[tokio::test]
async fn health_counts_websocket_connections_as_open() {
    use pushpull::{ClientConfig, Topic};

    let server = server(ServerConfig::default()).await;
    let addr = server.local_addr();
    let open =
        |health: &support::Reply| health.json()["live"]["open_connections"].as_u64().unwrap();
    let idle = open(&get(addr, "/v1/health").await);
    let client =
        pushpull::connect(&ClientConfig::new("ws", format!("http://{addr}"))).await.unwrap();
    let subscription =
        client.subscribe(&Topic::new("counted").unwrap(), Cursor::Latest).await.unwrap();
    let health = get(addr, "/v1/health").await;
    assert_eq!(health.json()["live"]["ws_open_sockets"], 1);
    assert_eq!(open(&health), idle + 1, "the socket's connection is open: {}", health.json());
    drop(subscription);
    drop(client);
    let released = tokio::time::timeout(LIMIT, async {
        while open(&get(addr, "/v1/health").await) > idle {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(released.is_ok(), "the closed socket is no longer counted");
}

#[tokio::test]
async fn websocket_upgrades_from_other_origins_are_refused() {
    let mut config = ServerConfig::default();
    config.http.cors_origins = vec!["https://app.example.com".into()];
    let server = server(config).await;
    let addr = server.local_addr();
    let upgrade = |origin: Option<String>| {
        let mut head = String::from(
            "GET /v1/ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        );
        if let Some(origin) = origin {
            head.push_str(&format!("\r\nOrigin: {origin}"));
        }
        head
    };
    // raw() adds Host: 127.0.0.1:PORT and reads until the server closes; an accepted upgrade
    // does not close, so only the status line is read for those.
    async fn status_of(addr: std::net::SocketAddr, head: String) -> u16 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("{head}\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut bytes = vec![0u8; 1024];
        let n = tokio::time::timeout(LIMIT, stream.read(&mut bytes)).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&bytes[..n]).into_owned();
        text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
    }
    assert_eq!(status_of(addr, upgrade(None)).await, 101, "no Origin: not a browser");
    assert_eq!(status_of(addr, upgrade(Some(format!("http://{addr}")))).await, 101, "same origin");
    let allowed = Some("https://app.example.com".to_owned());
    assert_eq!(status_of(addr, upgrade(allowed)).await, 101, "an allowed origin");
    let refused = raw(addr, &upgrade(Some("https://evil.example".into())), b"").await;
    assert_eq!(refused.status, 403, "{}", String::from_utf8_lossy(&refused.body));
    assert_eq!(refused.error_kind(), "forbidden");
}

/// A publish receipt says how many subscriptions followed the topic then: an application can
/// tell that nobody was listening. Two event streams open: 2; a topic nobody reads: 0.
#[tokio::test]
async fn receipts_say_how_many_were_listening() {
    let running = server(ServerConfig::default()).await;
    let addr = running.local_addr();
    let config = pushpull::ClientConfig::new("sse", format!("http://{addr}"));
    let client = pushpull::connect(&config).await.unwrap();
    let topic = pushpull::Topic::new("watched").unwrap();
    let _one = client.subscribe(&topic, Cursor::Latest).await.unwrap();
    let _two = client.subscribe(&topic, Cursor::Latest).await.unwrap();
    let receipt = client.publish(&topic, pushpull::Publication::new("hi")).await.unwrap();
    assert_eq!(receipt.subscribers, Some(2), "two streams follow it");
    let reply = post(addr, "/v1/topics/unread", "", b"x").await;
    assert_eq!(reply.status, 201);
    assert_eq!(reply.json()["subscribers"], 0, "nobody was listening");
}
