//! The WebSocket server over real sockets: the handshake, requests and their errors, close
//! codes for protocol violations, liveness, and peers that read slowly or not at all.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use pushpull_core::{MemoryBroker, MemoryConfig, Publication, Publish, Retention, Topic};
use pushpull_http::{RunningServer, ServeConfig};
use pushpull_ws::{ServerConfig, WsServer, close};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Fails a test that hangs, instead of hanging CI.
const LIMIT: Duration = Duration::from_secs(30);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Setup {
    server: WsServer,
    running: RunningServer,
    broker: Arc<dyn pushpull_core::Broker>,
}

async fn start_with(broker: impl pushpull_core::Broker + 'static, config: ServerConfig) -> Setup {
    let broker: Arc<dyn pushpull_core::Broker> = Arc::new(broker);
    let server = WsServer::new(broker.clone(), config).unwrap();
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let running = pushpull_http::spawn(listener, server.router(), ServeConfig::default()).unwrap();
    Setup { server, running, broker }
}

async fn start(config: ServerConfig) -> Setup {
    start_with(MemoryBroker::new(), config).await
}

async fn connect(
    addr: SocketAddr,
    headers: &[(&'static str, &str)],
) -> (Socket, http::Response<Option<Vec<u8>>>) {
    let mut request = format!("ws://{addr}/v1/ws").into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().unwrap());
    }
    tokio_tungstenite::connect_async(request).await.expect("handshake")
}

async fn send(socket: &mut Socket, value: Value) {
    socket.send(Message::Text(value.to_string().into())).await.unwrap();
}

/// The next JSON frame (text, or a binary frame's header and payload), skipping pings.
async fn next(socket: &mut Socket) -> (Value, Option<Bytes>) {
    loop {
        let message = tokio::time::timeout(LIMIT, socket.next())
            .await
            .expect("a frame in time")
            .expect("the socket is open")
            .expect("a frame");
        match message {
            Message::Text(text) => return (serde_json::from_str(&text).unwrap(), None),
            Message::Binary(bytes) => {
                let (header, payload) = pushpull_ws::wire::split_binary(&bytes).unwrap();
                return (header, Some(payload));
            }
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => {}
        }
    }
}

async fn reply(socket: &mut Socket) -> Value {
    next(socket).await.0
}

/// Reads until the server closes; returns the close code and reason.
async fn closed(socket: &mut Socket) -> (u16, String) {
    loop {
        match tokio::time::timeout(LIMIT, socket.next()).await.expect("closed in time") {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (frame.code.into(), frame.reason.to_string());
            }
            Some(Ok(Message::Close(None))) => panic!("a close frame without a code"),
            Some(Ok(_)) => {}
            Some(Err(error)) => panic!("no close frame: {error}"),
            None => panic!("the connection ended without a close frame"),
        }
    }
}

#[tokio::test]
async fn the_handshake_echoes_the_subprotocol_and_agrees_to_compression() {
    let setup = start(ServerConfig::default()).await;
    let addr = setup.running.local_addr();
    let (_, response) = connect(
        addr,
        &[
            ("sec-websocket-protocol", "chat, pushpull.v1"),
            ("sec-websocket-extensions", "permessage-deflate; client_max_window_bits"),
        ],
    )
    .await;
    assert_eq!(response.status(), 101);
    assert_eq!(response.headers()["sec-websocket-protocol"], "pushpull.v1");
    assert_eq!(
        response.headers()["sec-websocket-extensions"],
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    );

    let (_, response) = connect(addr, &[]).await;
    assert!(response.headers().get("sec-websocket-protocol").is_none(), "not offered, not echoed");

    // Not an upgrade, or a wrong version: a JSON 400.
    for extra in [
        "",
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    ] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET /v1/ws HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).await.unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
        assert!(text.contains("\"kind\":\"bad_request\""), "{text}");
    }
}

#[tokio::test]
async fn one_socket_subscribes_publishes_and_fetches() {
    let setup = start(ServerConfig::default()).await;
    let (mut socket, _) = connect(setup.running.local_addr(), &[]).await;
    send(&mut socket, json!({"op":"subscribe","id":"s1","topic":"a","after":"beginning"})).await;
    assert_eq!(reply(&mut socket).await["op"], "subscribed");
    send(&mut socket, json!({"op":"subscribe","id":"s2","topic":"b"})).await;
    let subscribed = reply(&mut socket).await;
    assert_eq!(
        (subscribed["op"].as_str(), subscribed["id"].as_str()),
        (Some("subscribed"), Some("s2"))
    );

    send(&mut socket, json!({"op":"publish","id":"p1","topic":"a","event":"x","data":"to a"}))
        .await;
    send(&mut socket, json!({"op":"publish","id":"p2","topic":"b","data_base64":"/wA="})).await;
    let mut seen = Vec::new();
    while seen.len() < 4 {
        seen.push(next(&mut socket).await);
    }
    let ops: Vec<&str> = seen.iter().map(|(v, _)| v["op"].as_str().unwrap()).collect();
    assert_eq!(ops.iter().filter(|op| **op == "published").count(), 2, "{ops:?}");
    let to_a = seen.iter().find(|(v, _)| v["op"] == "message" && v["topic"] == "a").unwrap();
    assert_eq!((to_a.0["data"].as_str(), to_a.0["event"].as_str()), (Some("to a"), Some("x")));
    let to_b = seen.iter().find(|(v, _)| v["op"] == "message" && v["topic"] == "b").unwrap();
    assert_eq!(
        to_b.1.as_deref(),
        Some(&b"\xff\x00"[..]),
        "binary payloads come raw in binary frames"
    );
    assert_eq!(to_b.0["size"], 2);

    send(&mut socket, json!({"op":"fetch","id":"f1","topic":"a","after":"beginning"})).await;
    let page = reply(&mut socket).await;
    assert_eq!((page["op"].as_str(), page["id"].as_str()), (Some("page"), Some("f1")));
    assert_eq!(page["messages"][0]["data"], "to a");

    send(&mut socket, json!({"op":"unsubscribe","id":"u1","topic":"a"})).await;
    assert_eq!(reply(&mut socket).await["op"], "unsubscribed");
    setup.broker.publish(&Topic::new("a").unwrap(), Publication::new("not pushed")).await.unwrap();
    setup.broker.publish(&Topic::new("b").unwrap(), Publication::new("pushed")).await.unwrap();
    let pushed = reply(&mut socket).await;
    assert_eq!((pushed["topic"].as_str(), pushed["data"].as_str()), (Some("b"), Some("pushed")));
}

#[tokio::test]
async fn bad_requests_get_error_frames_and_the_socket_stays_open() {
    let config = {
        let mut built = ServerConfig::default();
        built.max_subscriptions = 2;
        built
    };
    let setup = start(config).await;
    let (mut socket, _) = connect(setup.running.local_addr(), &[]).await;
    let cases = [
        ("{not json", None, "bad_request", "not JSON"),
        (r#"{"op":"dance","id":"r1"}"#, Some("r1"), "bad_request", "unknown variant `dance`"),
        (
            r#"{"op":"publish","id":"r2","data":"x"}"#,
            Some("r2"),
            "bad_request",
            "missing field `topic`",
        ),
        (
            r#"{"op":"subscribe","id":"r3","topic":"no way"}"#,
            Some("r3"),
            "invalid_topic",
            "position 2",
        ),
        (
            r#"{"op":"subscribe","id":"r4","topic":"t","after":"soon"}"#,
            Some("r4"),
            "invalid_cursor",
            "soon",
        ),
        (r#"{"op":"fetch","id":"r5","topic":"t","limit":0}"#, Some("r5"), "bad_request", "limit"),
        (
            r#"{"op":"publish","id":"r6","topic":"t","event":"pushpull-gap","data":"x"}"#,
            Some("r6"),
            "bad_request",
            "reserved",
        ),
        (
            r#"{"op":"publish","id":"r7","topic":"t","data":"x","data_base64":"eA=="}"#,
            Some("r7"),
            "bad_request",
            "exactly one",
        ),
        (
            r#"{"op":"unsubscribe","id":"r8","topic":"t"}"#,
            Some("r8"),
            "bad_request",
            "not subscribed",
        ),
        (r#"{"op":"subscribe","id":"r9"}"#, Some("r9"), "bad_request", "has no token"),
        (
            r#"{"op":"subscribe","id":"r10","topic":"t","sub":"t*"}"#,
            Some("r10"),
            "bad_request",
            "without '*'",
        ),
    ];
    for (text, id, kind, says) in cases {
        socket.send(Message::Text(text.into())).await.unwrap();
        let error = reply(&mut socket).await;
        assert_eq!(error["op"], "error", "{text}");
        assert_eq!(error["id"].as_str(), id, "{text}");
        assert_eq!(error["kind"], kind, "{text}");
        assert!(error["message"].as_str().unwrap().contains(says), "{text}: {error}");
    }
    // A flood of subscriptions stops at the documented limit, with an error for each one over.
    for n in 0..4 {
        send(&mut socket, json!({"op":"subscribe","id":format!("f{n}"),"topic":format!("t{n}")}))
            .await;
        let answer = reply(&mut socket).await;
        if n < 2 {
            assert_eq!(answer["op"], "subscribed");
        } else {
            assert!(
                answer["message"].as_str().unwrap().contains("at most 2 subscriptions"),
                "{answer}"
            );
        }
    }
    // Still open and working.
    send(&mut socket, json!({"op":"publish","id":"ok","topic":"t0","data":"fine"})).await;
    let mut ops = Vec::new();
    for _ in 0..2 {
        ops.push(reply(&mut socket).await["op"].as_str().unwrap().to_owned());
    }
    ops.sort();
    assert_eq!(ops, ["message", "published"]);
}

#[tokio::test]
async fn protocol_violations_close_with_the_rfc_6455_code() {
    let config = {
        let mut built = ServerConfig::default();
        built.max_message_size = Some(4096);
        built.max_bad_frames = 3;
        built
    };
    let setup = start(config).await;
    let addr = setup.running.local_addr();

    let (mut socket, _) = connect(addr, &[]).await;
    let invalid_utf8 =
        Frame::message(Bytes::from_static(b"{\"op\":\"\xff\"}"), OpCode::Data(Data::Text), true);
    socket.send(Message::Frame(invalid_utf8)).await.unwrap();
    assert_eq!(closed(&mut socket).await.0, close::INVALID_UTF8);

    let (mut socket, _) = connect(addr, &[]).await;
    socket.send(Message::Binary(Bytes::from(vec![0u8; 5000]))).await.unwrap();
    let (code, reason) = closed(&mut socket).await;
    assert_eq!(code, close::TOO_BIG);
    assert!(reason.contains("4096"), "{reason}");

    let (mut socket, _) = connect(addr, &[]).await;
    for _ in 0..4 {
        socket.send(Message::Text("garbage".into())).await.unwrap();
    }
    let (code, reason) = closed(&mut socket).await;
    assert_eq!(code, close::POLICY);
    assert!(reason.contains("unreadable"), "{reason}");

    // A frame the client did not mask breaks RFC 6455: 1002, from a hand-written handshake.
    let mut raw = upgrade(addr).await;
    raw.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    assert_eq!(raw_close_code(&mut raw).await, Some(close::PROTOCOL_ERROR));

    // None of that harmed other sockets.
    let (mut socket, _) = connect(addr, &[]).await;
    send(&mut socket, json!({"op":"fetch","id":"f","topic":"t"})).await;
    assert_eq!(reply(&mut socket).await["op"], "page");
}

/// Opens a socket by hand and returns the stream after the 101.
async fn upgrade(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /v1/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    stream
}

/// Reads one raw server frame: its opcode and payload; `None` when the connection ends.
async fn raw_frame(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut header = [0u8; 2];
    stream.read_exact(&mut header).await.ok()?;
    let length = match header[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            stream.read_exact(&mut l).await.ok()?;
            u64::from(u16::from_be_bytes(l))
        }
        127 => {
            let mut l = [0u8; 8];
            stream.read_exact(&mut l).await.ok()?;
            u64::from_be_bytes(l)
        }
        l => u64::from(l),
    };
    let mut payload = vec![0u8; length as usize];
    stream.read_exact(&mut payload).await.ok()?;
    Some((header[0] & 0x0f, payload))
}

/// Reads raw server frames until a close frame; its code.
async fn raw_close_code(stream: &mut TcpStream) -> Option<u16> {
    tokio::time::timeout(LIMIT, async {
        loop {
            let (opcode, payload) = raw_frame(stream).await?;
            if opcode == 0x8 {
                return Some(u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
    })
    .await
    .expect("a close frame in time")
}

#[tokio::test]
async fn silent_peers_are_pinged_then_closed_with_4000() {
    let config = {
        let mut built = ServerConfig::default();
        built.ping_interval = Duration::from_millis(50);
        built.idle_timeout = Duration::from_millis(200);
        built
    };
    let setup = start(config).await;
    // Completes the handshake, then never answers a ping.
    let mut raw = upgrade(setup.running.local_addr()).await;
    let (opcode, _) = tokio::time::timeout(LIMIT, raw_frame(&mut raw)).await.unwrap().unwrap();
    assert_eq!(opcode, 0x9, "the server pings");
    assert_eq!(raw_close_code(&mut raw).await, Some(close::IDLE_TIMEOUT));
}

#[tokio::test]
async fn a_peer_that_stops_reading_is_closed_and_costs_bounded_memory() {
    let retention = {
        let mut built = Retention::default();
        built.max_messages = 100;
        built
    };
    let broker = MemoryBroker::with_config({
        let mut built = MemoryConfig::default();
        built.retention = retention;
        built
    })
    .unwrap();
    let config = {
        let mut built = ServerConfig::default();
        built.write_timeout = Duration::from_millis(300);
        built.write_buffer = 64 * 1024;
        built
    };
    let setup = start_with(broker, config).await;
    let mut raw = upgrade(setup.running.local_addr()).await;
    // A masked subscribe frame, by hand; then never read again.
    let request = br#"{"op":"subscribe","id":"s","topic":"firehose"}"#;
    let mut frame = vec![0x81, 0x80 | request.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(request);
    raw.write_all(&frame).await.unwrap();
    tokio::time::timeout(LIMIT, async {
        while setup.server.open_sockets() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();

    // Keep publishing (the log keeps only 100 messages) until the server gives up on the peer:
    // once the kernel's socket buffers and the bounded write buffer are full, a write waits,
    // and after write_timeout the socket is closed. Bounded: at most 40,000 messages (625 MiB).
    let topic = Topic::new("firehose").unwrap();
    let payload = bytes::Bytes::from("x".repeat(16 * 1024));
    let mut published = 0;
    tokio::time::timeout(LIMIT, async {
        while setup.server.open_sockets() > 0 && published < 40_000 {
            setup.broker.publish(&topic, Publication::new(payload.clone())).await.unwrap();
            published += 1;
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("publishing went on in time");
    tokio::time::timeout(LIMIT, async {
        while setup.server.open_sockets() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("still open after {published} messages"));
    // What the peer could have received: its code, if the close frame got through at all.
    drop(raw);
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1001() {
    let setup = start(ServerConfig::default()).await;
    let (mut socket, _) = connect(setup.running.local_addr(), &[]).await;
    let shutting = tokio::spawn(setup.running.shutdown());
    assert_eq!(closed(&mut socket).await.0, close::GOING_AWAY);
    tokio::time::timeout(LIMIT, shutting).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_slow_reader_falls_behind_into_a_gap() {
    let retention = {
        let mut built = Retention::default();
        built.max_messages = 100;
        built
    };
    let broker = MemoryBroker::with_config({
        let mut built = MemoryConfig::default();
        built.retention = retention;
        built
    })
    .unwrap();
    let setup = start_with(broker, ServerConfig::default()).await;
    let (mut socket, _) = connect(setup.running.local_addr(), &[]).await;
    send(&mut socket, json!({"op":"subscribe","id":"s","topic":"firehose"})).await;
    assert_eq!(reply(&mut socket).await["op"], "subscribed");

    // 64 MiB published while the reader reads nothing.
    let topic = Topic::new("firehose").unwrap();
    let payload = Bytes::from("x".repeat(16 * 1024));
    let mut last = None;
    for _ in 0..4096 {
        last = Some(setup.broker.publish(&topic, Publication::new(payload.clone())).await.unwrap());
        tokio::task::yield_now().await;
    }
    let last = last.unwrap().cursor().to_string();
    let mut gaps = 0;
    loop {
        let (frame, _) = next(&mut socket).await;
        if frame["op"] == "gap" {
            assert_eq!(frame["reason"], "retention");
            gaps += 1;
        }
        if frame["cursor"] == last.as_str() && frame["op"] == "message" {
            break;
        }
    }
    assert!(gaps > 0, "the slow reader was told what it missed");
}

#[tokio::test]
async fn a_message_over_the_payload_limit_closes_with_1009_before_it_is_read_whole() {
    // With payloads of at most 1 KiB, no request can be larger than the base64 of one plus
    // 64 KiB: a 200 KB frame is refused from its header.
    let broker = MemoryBroker::with_config({
        let mut built = MemoryConfig::default();
        built.max_payload = 1024;
        built
    })
    .unwrap();
    let setup = start_with(broker, ServerConfig::default()).await;
    let limit = pushpull_ws::message_limit_for(1024);
    assert!(limit < 72_000, "the limit follows the payload limit: {limit}");
    let mut raw = upgrade(setup.running.local_addr()).await;
    // A masked text frame declaring 200,000 bytes, of which only the first 1 KiB is sent.
    let declared: u64 = 200_000;
    let mut head = vec![0x81, 0x80 | 127];
    head.extend_from_slice(&declared.to_be_bytes());
    head.extend_from_slice(&[1, 2, 3, 4]);
    raw.write_all(&head).await.unwrap();
    raw.write_all(&[b'x' ^ 1; 1024]).await.unwrap();
    assert_eq!(raw_close_code(&mut raw).await, Some(close::TOO_BIG));

    // A message in fragments is bounded the same way: the close comes before the last one.
    let mut raw = upgrade(setup.running.local_addr()).await;
    let fragment = vec![b'y'; 16 * 1024];
    let mut sent = 0;
    let code = loop {
        let first = sent == 0;
        let mut frame = vec![if first { 0x01 } else { 0x00 }, 0x80 | 126];
        frame.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
        frame.extend_from_slice(&[0, 0, 0, 0]); // a zero mask leaves the bytes as they are
        frame.extend_from_slice(&fragment);
        if raw.write_all(&frame).await.is_err() {
            break raw_close_code(&mut raw).await;
        }
        sent += fragment.len();
        assert!(sent <= 2 * limit, "{sent} bytes taken without a close");
        let mut peek = [0u8; 1];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(20), raw.peek(&mut peek)).await
            && n > 0
        {
            break raw_close_code(&mut raw).await;
        }
    };
    assert_eq!(code, Some(close::TOO_BIG));
    assert!(sent <= limit + fragment.len(), "closed only after {sent} bytes");
}

/// A prefix subscription: its start is a cursor set, its frames name their topic and carry
/// the prefix as the subscription's name (`sub`), a topic created while it is open comes from
/// its first message, the set resumes it, and more topics than the server's bound end it with
/// an error that says the bound.
#[tokio::test]
async fn a_prefix_subscription_follows_its_topics_and_resumes_from_its_set() {
    use pushpull_http::{Context, TransportServer};
    let broker = Arc::new(MemoryBroker::new());
    let context = Context::new(broker.clone() as Arc<dyn pushpull_core::Broker>).with_max_topics(2);
    let server = WsServer::build(&context, ServerConfig::default()).unwrap();
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let running = pushpull_http::spawn(listener, server.router(), ServeConfig::default()).unwrap();
    let publish = |topic: &'static str, text: &'static str| {
        let broker = broker.clone();
        async move { broker.publish(&Topic::new(topic).unwrap(), Publication::new(text)).await.unwrap() }
    };
    publish("p:a", "a1").await;
    publish("q:a", "not selected").await;
    let (mut socket, _) = connect(running.local_addr(), &[]).await;
    send(&mut socket, json!({"op":"subscribe","id":"s1","topic":"p:*","after":"beginning"})).await;
    let subscribed = reply(&mut socket).await;
    assert_eq!(
        (subscribed["op"].as_str(), subscribed["topic"].as_str()),
        (Some("subscribed"), Some("p:*"))
    );
    assert!(subscribed["cursor"].as_str().unwrap().starts_with('@'), "{subscribed}");
    let first = reply(&mut socket).await;
    assert_eq!(
        (first["topic"].as_str(), first["sub"].as_str(), first["data"].as_str()),
        (Some("p:a"), Some("p:*"), Some("a1"))
    );
    publish("p:b", "b1").await;
    let second = reply(&mut socket).await;
    assert_eq!((second["topic"].as_str(), second["data"].as_str()), (Some("p:b"), Some("b1")));
    send(&mut socket, json!({"op":"unsubscribe","id":"u1","topic":"p:*"})).await;
    assert_eq!(reply(&mut socket).await["op"], "unsubscribed");

    // Resumed from a set (relative to the prefix alone): only what came since.
    publish("p:a", "a2").await;
    let set =
        format!("@{},0*a~1,0*b~1", first["cursor"].as_str().unwrap().split('-').next().unwrap());
    send(&mut socket, json!({"op":"subscribe","id":"s2","topic":"p:*","after":set})).await;
    assert_eq!(reply(&mut socket).await["op"], "subscribed");
    let resumed = reply(&mut socket).await;
    assert_eq!((resumed["topic"].as_str(), resumed["data"].as_str()), (Some("p:a"), Some("a2")));

    // A third topic is over the bound of two.
    publish("p:c", "c1").await;
    let error = reply(&mut socket).await;
    assert_eq!(
        (error["op"].as_str(), error["topic"].as_str()),
        (Some("error"), Some("p:*")),
        "{error}"
    );
    assert!(error["message"].as_str().unwrap().contains("over the limit of 2"), "{error}");
    let ended = reply(&mut socket).await;
    assert_eq!(
        (ended["op"].as_str(), ended["sub"].as_str()),
        (Some("unsubscribed"), Some("p:*")),
        "{ended}"
    );

    // A bad prefix is refused, and the socket stays open.
    send(&mut socket, json!({"op":"subscribe","id":"s3","topic":"p*x*"})).await;
    let refused = reply(&mut socket).await;
    assert_eq!(
        (refused["op"].as_str(), refused["kind"].as_str()),
        (Some("error"), Some("invalid_topic")),
        "{refused}"
    );
}

/// `publish_many`: each publication's receipt or error, in order, a bad one refused alone;
/// more than the bound is an error that says it, and the socket stays open.
#[tokio::test]
async fn publish_many_answers_each_publication_in_order() {
    let setup = start(ServerConfig::default()).await;
    let (mut socket, _) = connect(setup.running.local_addr(), &[]).await;
    let publications = json!([
        {"topic": "a", "data": "one"},
        {"topic": "not a topic", "data": "two"},
        {"topic": "b", "data_base64": "/wA=", "event": "bin"},
        {"topic": "a", "data": "three", "idempotency_key": "k1"},
        {"topic": "a", "data": "three again", "idempotency_key": "k1"},
    ]);
    send(&mut socket, json!({"op":"publish_many","id":"m1","publications":publications})).await;
    let answer = reply(&mut socket).await;
    assert_eq!(
        (answer["op"].as_str(), answer["id"].as_str()),
        (Some("published_many"), Some("m1"))
    );
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 5, "{answer}");
    assert_eq!((results[0]["topic"].as_str(), results[0]["offset"].as_u64()), (Some("a"), Some(1)));
    assert_eq!(results[1]["error"]["kind"], "invalid_topic", "{answer}");
    assert_eq!(results[2]["offset"], 1, "{answer}");
    assert_eq!(results[3]["offset"], 2, "{answer}");
    assert_eq!(results[4]["offset"], 2, "the same key is stored once: {answer}");
    use pushpull_core::Fetch;
    let page = setup
        .broker
        .fetch(&Topic::new("b").unwrap(), pushpull_core::Cursor::Beginning, 10)
        .await
        .unwrap();
    assert_eq!(
        (&page.messages[0].payload[..], page.messages[0].event.as_deref()),
        (&b"\xff\x00"[..], Some("bin"))
    );

    let many: Vec<Value> =
        (0..=pushpull_http::MAX_BATCH).map(|_| json!({"topic":"a","data":"x"})).collect();
    send(&mut socket, json!({"op":"publish_many","id":"m2","publications":many})).await;
    let refused = reply(&mut socket).await;
    assert_eq!((refused["op"].as_str(), refused["id"].as_str()), (Some("error"), Some("m2")));
    assert!(refused["message"].as_str().unwrap().contains("at most 1000"), "{refused}");
    send(&mut socket, json!({"op":"fetch","id":"f1","topic":"a"})).await;
    let page = reply(&mut socket).await;
    assert_eq!(
        page["messages"].as_array().unwrap().len(),
        2,
        "nothing of the refused batch: {page}"
    );
}

// The fan-out of a topic: once two sockets of one topic have caught up, one task writes each
// new message to both (and to every socket that catches up after them), instead of each
// socket's own task being woken to write it.

/// A socket whose client takes at most a few KiB into its receive buffer: a peer whose socket
/// fills at once when it stops reading.
async fn connect_small(addr: SocketAddr) -> Socket {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let url = format!("ws://{addr}/v1/ws");
    tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)).await.expect("handshake").0
}

async fn subscribed(socket: &mut Socket, topic: &str) {
    send(socket, json!({"op":"subscribe","id":"s","topic":topic})).await;
    assert_eq!(reply(socket).await["op"], "subscribed");
}

/// Reads messages until offset `last`, checking each follows the one before from `first`:
/// every message once, in order, no gap. Answers pongs to nothing; returns the pongs seen.
async fn read_through(socket: &mut Socket, first: u64, last: u64) -> Vec<Bytes> {
    let mut expected = first;
    let mut pongs = Vec::new();
    while expected <= last {
        let message = tokio::time::timeout(LIMIT, socket.next())
            .await
            .unwrap_or_else(|_| panic!("offset {expected} in time"))
            .expect("the socket is open")
            .expect("a frame");
        let frame: Value = match message {
            Message::Text(text) => serde_json::from_str(&text).unwrap(),
            Message::Pong(payload) => {
                pongs.push(payload);
                continue;
            }
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(frame["op"], "message", "{frame}");
        assert_eq!(frame["offset"].as_u64(), Some(expected), "{frame}");
        expected += 1;
    }
    pongs
}

/// Publishes messages to `topic` one at a time, each read by all of `sockets`, until all are
/// seated in its fan-out; returns the last offset.
async fn seat_all(setup: &Setup, topic: &str, mut sockets: Vec<&mut Socket>) -> u64 {
    let fanout = setup.server.fanout().expect("on");
    let mut last = 0;
    while fanout.seated() < sockets.len() {
        assert!(last < 50, "{} of {} seated after {last} messages", fanout.seated(), sockets.len());
        last += 1;
        publishing(setup.broker.clone(), topic, 1, 10, Duration::ZERO).await.unwrap();
        for socket in &mut sockets {
            read_through(socket, last, last).await;
        }
    }
    last
}

/// Publishes `count` messages of `size` bytes to `topic`, `pause` apart (a yield when zero).
fn publishing(
    broker: Arc<dyn pushpull_core::Broker>,
    topic: &str,
    count: usize,
    size: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<()> {
    let topic = Topic::new(topic).unwrap();
    let payload = Bytes::from("x".repeat(size));
    tokio::spawn(async move {
        for _ in 0..count {
            broker.publish(&topic, Publication::new(payload.clone())).await.unwrap();
            match pause.is_zero() {
                true => tokio::task::yield_now().await,
                false => tokio::time::sleep(pause).await,
            }
        }
    })
}

// Sockets that subscribe before a message take seats once their subscribe is answered (all
// but the first to want the topic's fan-out), so the first message after is written by the
// fan-out; its reading, begun before the topic had a log, is not counted as a subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_subscribe_before_a_message_are_seated_and_get_it_from_the_fanout() {
    let setup = start(ServerConfig::default()).await;
    let addr = setup.running.local_addr();
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let (mut socket, _) = connect(addr, &[]).await;
        subscribed(&mut socket, "early").await;
        sockets.push(socket);
    }
    let fanout = setup.server.fanout().expect("on by default");
    let waited = tokio::time::timeout(LIMIT, async {
        while fanout.seated() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    waited.await.unwrap_or_else(|_| panic!("seated before a message: {}", fanout.seated()));
    publishing(setup.broker.clone(), "early", 1, 10, Duration::ZERO).await.unwrap();
    for socket in &mut sockets {
        read_through(socket, 1, 1).await;
    }
    assert_eq!(fanout.written(), 2, "the seated sockets' first message came from the fan-out");
    let topic = Topic::new("early").unwrap();
    let receipt = setup.broker.publish(&topic, Publication::new("counted")).await.unwrap();
    assert_eq!(receipt.subscribers, Some(3), "the fan-out's reading is not counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sockets_of_a_topic_are_written_by_its_fanout_every_message_in_order() {
    let setup = start(ServerConfig::default()).await;
    let addr = setup.running.local_addr();
    let mut sockets = Vec::new();
    for _ in 0..6 {
        let (mut socket, _) = connect(addr, &[]).await;
        subscribed(&mut socket, "news").await;
        sockets.push(socket);
    }
    // Seated as they subscribe (all but the first to want a fan-out, seated after a delivery).
    let publisher = publishing(setup.broker.clone(), "news", 1, 10, Duration::ZERO);
    publisher.await.unwrap();
    for socket in &mut sockets {
        read_through(socket, 1, 1).await;
    }
    // A ping in the middle of the stream is answered between whole frames.
    sockets[0].send(Message::Ping(Bytes::from_static(b"still there?"))).await.unwrap();
    let publisher = publishing(setup.broker.clone(), "news", 300, 100, Duration::ZERO);
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|mut socket| {
            tokio::spawn(async move { (read_through(&mut socket, 2, 301).await, socket) })
        })
        .collect();
    publisher.await.unwrap();
    let mut pongs = Vec::new();
    let mut sockets = Vec::new();
    for reader in readers {
        let (seen, socket) = reader.await.unwrap();
        pongs.extend(seen);
        sockets.push(socket);
    }
    assert_eq!(pongs, vec![Bytes::from_static(b"still there?")]);
    let fanout = setup.server.fanout().expect("on by default");
    assert!(fanout.written() > 0, "the fan-out wrote none of the 1,800 deliveries");
    assert_eq!(fanout.running(), 1);
    // A publish reaches six subscribers, the fan-out reading for them not counted.
    let topic = Topic::new("news").unwrap();
    let receipt = setup.broker.publish(&topic, Publication::new("counted")).await.unwrap();
    assert_eq!(receipt.subscribers, Some(6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_the_sockets_of_a_topic_are_written_by_its_fanout_every_message_in_order() {
    let redis = tokio::task::spawn_blocking(pushpull_testkit::redis::RedisServer::start);
    let redis = redis.await.unwrap().unwrap();
    let broker = pushpull_redis::RedisBroker::new(pushpull_redis::RedisConfig::new(redis.url()));
    let setup = start_with(broker.unwrap(), ServerConfig::default()).await;
    let addr = setup.running.local_addr();
    let mut sockets = Vec::new();
    for _ in 0..4 {
        let (mut socket, _) = connect(addr, &[]).await;
        subscribed(&mut socket, "news").await;
        sockets.push(socket);
    }
    let seated = seat_all(&setup, "news", sockets.iter_mut().collect()).await;
    let publisher = publishing(setup.broker.clone(), "news", 200, 100, Duration::ZERO);
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|mut socket| {
            tokio::spawn(async move { read_through(&mut socket, seated + 1, seated + 200).await })
        })
        .collect();
    publisher.await.unwrap();
    for reader in readers {
        reader.await.unwrap();
    }
    let fanout = setup.server.fanout().expect("on by default");
    assert!(fanout.written() > 0, "the fan-out wrote none of the 800 deliveries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_stops_reading_is_let_go_and_carries_on_from_where_its_fanout_left_it() {
    let setup = start(ServerConfig::default()).await;
    let addr = setup.running.local_addr();
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (mut socket, _) = connect(addr, &[]).await;
        subscribed(&mut socket, "feed").await;
        readers.push(socket);
    }
    let mut lazy = connect_small(addr).await;
    subscribed(&mut lazy, "feed").await;
    let last = seat_all(&setup, "feed", readers.iter_mut().chain([&mut lazy]).collect()).await;
    let (first, end) = (last + 1, last + 400);
    // 400 messages of 8 KiB while the lazy one reads nothing: far more than its socket holds.
    let publisher = publishing(setup.broker.clone(), "feed", 400, 8 * 1024, Duration::ZERO);
    let readers: Vec<_> = readers
        .into_iter()
        .map(|mut socket| {
            tokio::spawn(async move {
                read_through(&mut socket, first, end).await;
                socket
            })
        })
        .collect();
    publisher.await.unwrap();
    let mut sockets = Vec::new();
    for reader in readers {
        sockets.push(reader.await.unwrap());
    }
    let fanout = setup.server.fanout().unwrap();
    assert!(fanout.let_go() >= 1, "the full socket was let go");
    // It gets every message once, in order, from where the fan-out stopped writing to it.
    read_through(&mut lazy, first, end).await;
    // And all of them carry on, the lazy one taking its seat again.
    let written = fanout.written();
    publishing(setup.broker.clone(), "feed", 20, 10, Duration::ZERO).await.unwrap();
    for socket in sockets.iter_mut().chain([&mut lazy]) {
        read_through(socket, end + 1, end + 20).await;
    }
    assert!(fanout.written() > written);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_never_reads_is_closed_while_its_topics_fanout_serves_the_others() {
    let config = {
        let mut built = ServerConfig::default();
        built.write_timeout = Duration::from_millis(300);
        built.write_buffer = 64 * 1024;
        built
    };
    let setup = start(config).await;
    let addr = setup.running.local_addr();
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (mut socket, _) = connect(addr, &[]).await;
        subscribed(&mut socket, "firehose").await;
        readers.push(socket);
    }
    let mut stuck = connect_small(addr).await;
    subscribed(&mut stuck, "firehose").await;
    let last = seat_all(&setup, "firehose", readers.iter_mut().chain([&mut stuck]).collect()).await;
    // 16 KiB messages a millisecond apart until the server gives up on the stuck socket
    // (bounded: 5,000 at most), the others reading every one.
    let topic = Topic::new("firehose").unwrap();
    let payload = Bytes::from("x".repeat(16 * 1024));
    let readers: Vec<_> = readers
        .into_iter()
        .map(|mut socket| {
            tokio::spawn(async move {
                let mut expected = last + 1;
                while let Some(Ok(message)) = socket.next().await {
                    let Message::Text(text) = message else { continue };
                    let frame: Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(frame["offset"].as_u64(), Some(expected), "{frame}");
                    expected += 1;
                    if frame["data"] == "last" {
                        break;
                    }
                }
                expected - 1
            })
        })
        .collect();
    let mut published = 0;
    tokio::time::timeout(LIMIT, async {
        while setup.server.open_sockets() > 3 && published < 5_000 {
            setup.broker.publish(&topic, Publication::new(payload.clone())).await.unwrap();
            published += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("publishing went on in time");
    assert_eq!(setup.server.open_sockets(), 3, "the stuck socket was closed");
    assert!(setup.server.fanout().unwrap().let_go() >= 1, "its fan-out let it go first");
    let last = setup.broker.publish(&topic, Publication::new("last")).await.unwrap();
    for reader in readers {
        assert_eq!(reader.await.unwrap(), last.offset.0, "every message, in order");
    }
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seated_subscription_ends_at_its_unsubscribe_reply() {
    let setup = start(ServerConfig::default()).await;
    let addr = setup.running.local_addr();
    let (mut leaving, _) = connect(addr, &[]).await;
    let (mut staying, _) = connect(addr, &[]).await;
    for socket in [&mut leaving, &mut staying] {
        subscribed(socket, "t").await;
    }
    publishing(setup.broker.clone(), "t", 2, 10, Duration::ZERO).await.unwrap();
    for socket in [&mut leaving, &mut staying] {
        read_through(socket, 1, 2).await;
    }
    send(&mut leaving, json!({"op":"unsubscribe","id":"u","topic":"t"})).await;
    let unsubscribed = loop {
        let (frame, _) = next(&mut leaving).await;
        if frame["op"] != "message" {
            break frame;
        }
    };
    assert_eq!(unsubscribed["op"], "unsubscribed", "{unsubscribed}");
    publishing(setup.broker.clone(), "t", 5, 10, Duration::ZERO).await.unwrap();
    read_through(&mut staying, 3, 7).await;
    // Nothing of the topic after the reply: the next frame is the answer to this fetch.
    send(&mut leaving, json!({"op":"fetch","id":"f","topic":"t","after":"beginning","limit":1}))
        .await;
    let answer = reply(&mut leaving).await;
    assert_eq!(
        (answer["op"].as_str(), answer["id"].as_str()),
        (Some("page"), Some("f")),
        "{answer}"
    );
    assert_eq!(setup.server.fanout().unwrap().seated(), 1, "the one staying");
}

#[tokio::test]
async fn with_fanout_off_every_socket_writes_its_own() {
    let config = {
        let mut built = ServerConfig::default();
        built.fanout = false;
        built
    };
    let setup = start(config).await;
    let addr = setup.running.local_addr();
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let (mut socket, _) = connect(addr, &[]).await;
        subscribed(&mut socket, "news").await;
        sockets.push(socket);
    }
    publishing(setup.broker.clone(), "news", 50, 10, Duration::ZERO).await.unwrap();
    for socket in &mut sockets {
        read_through(socket, 1, 50).await;
    }
    assert!(setup.server.fanout().is_none());
}
