//! permessage-deflate (RFC 7692) over real sockets, frame by frame: what is negotiated, that
//! larger messages arrive compressed (one frame, the same bytes for every subscriber) and small
//! ones plain, that compressed requests are inflated, fragmented or not, and that a compressed
//! message that inflates too far, does not inflate, or breaks the framing closes its socket
//! with the code that says so, harming no other.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use futures::StreamExt;
use pushpull_core::{Cursor, Fetch, MemoryBroker, Publication, Publish, Subscribe, Topic};
use pushpull_http::{RunningServer, ServeConfig};
use pushpull_ws::{ClientConfig, ServerConfig, WsClient, WsServer, close};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Fails a test that hangs, instead of hanging CI.
const LIMIT: Duration = Duration::from_secs(30);

const OFFER: &str = "permessage-deflate; client_max_window_bits";

async fn start(config: ServerConfig) -> (RunningServer, Arc<MemoryBroker>) {
    let broker = Arc::new(MemoryBroker::new());
    let server = WsServer::new(broker.clone() as Arc<dyn pushpull_core::Broker>, config).unwrap();
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let running = pushpull_http::spawn(listener, server.router(), ServeConfig::default()).unwrap();
    (running, broker)
}

/// Opens a socket by hand, offering `extensions` if any; the stream after the 101, and the
/// answer's `Sec-WebSocket-Extensions`.
async fn upgrade(addr: SocketAddr, extensions: Option<&str>) -> (TcpStream, Option<String>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let offer =
        extensions.map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n")).unwrap_or_default();
    let request = format!(
        "GET /v1/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{offer}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let accepted = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-extensions").then(|| value.trim().to_owned())
    });
    (stream, accepted)
}

/// A masked client frame: FIN, RSV1 and opcode as given.
fn client_frame(fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![u8::from(fin) << 7 | u8::from(rsv1) << 6 | opcode];
    match payload.len() {
        short @ 0..=125 => frame.push(0x80 | short as u8),
        medium @ 126..=0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(medium as u16).to_be_bytes());
        }
        long => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(long as u64).to_be_bytes());
        }
    }
    let mask = [0x12, 0x34, 0x56, 0x78];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// `data` compressed on its own, as RFC 7692 sends it (the sync flush's tail left off).
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut deflater = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    deflater.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

fn inflate(data: &[u8]) -> Vec<u8> {
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(1 << 20);
    Decompress::new(false).decompress_vec(&input, &mut out, FlushDecompress::Sync).unwrap();
    out
}

/// One server frame as it came: its first byte (FIN, RSV, opcode) and payload.
struct Raw {
    first: u8,
    payload: Vec<u8>,
}

impl Raw {
    fn rsv1(&self) -> bool {
        self.first & 0x40 != 0
    }

    fn opcode(&self) -> u8 {
        self.first & 0x0f
    }

    /// Its JSON, inflated first if it came compressed.
    fn json(&self) -> Value {
        let text = if self.rsv1() { inflate(&self.payload) } else { self.payload.clone() };
        serde_json::from_slice(&text).unwrap()
    }
}

async fn raw_frame(stream: &mut TcpStream) -> Option<Raw> {
    tokio::time::timeout(LIMIT, async {
        let mut header = [0u8; 2];
        stream.read_exact(&mut header).await.ok()?;
        let length = match header[1] & 0x7f {
            126 => u64::from(stream.read_u16().await.ok()?),
            127 => stream.read_u64().await.ok()?,
            short => u64::from(short),
        };
        let mut payload = vec![0u8; length as usize];
        stream.read_exact(&mut payload).await.ok()?;
        Some(Raw { first: header[0], payload })
    })
    .await
    .expect("a frame in time")
}

/// The next frame that is not a ping.
async fn next(stream: &mut TcpStream) -> Raw {
    loop {
        let frame = raw_frame(stream).await.expect("the socket is open");
        if frame.opcode() != 0x9 {
            return frame;
        }
    }
}

/// Reads until a close frame; its code and reason.
async fn closed(stream: &mut TcpStream) -> (u16, String) {
    loop {
        let frame = raw_frame(stream).await.expect("a close frame before the end");
        if frame.opcode() == 0x8 {
            let code = u16::from_be_bytes([frame.payload[0], frame.payload[1]]);
            return (code, String::from_utf8_lossy(&frame.payload[2..]).into_owned());
        }
    }
}

async fn subscribe(stream: &mut TcpStream, topic: &str) {
    let request = json!({"op": "subscribe", "id": "s", "topic": topic}).to_string();
    stream.write_all(&client_frame(true, false, 0x1, request.as_bytes())).await.unwrap();
    let answer = next(stream).await;
    assert!(!answer.rsv1(), "a small answer goes plain");
    assert_eq!(answer.json()["op"], "subscribed", "{}", answer.json());
}

fn large(n: usize) -> String {
    format!("{n}: ") + &"the same words again and again, ".repeat(40)
}

#[tokio::test]
async fn larger_messages_arrive_compressed_in_the_same_frame_for_every_subscriber() {
    let (running, broker) = start(ServerConfig::default()).await;
    let addr = running.local_addr();
    let (mut first, accepted) = upgrade(addr, Some(OFFER)).await;
    assert_eq!(
        accepted.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    let (mut second, _) = upgrade(addr, Some(OFFER)).await;
    let (mut plain, none) = upgrade(addr, None).await;
    assert_eq!(none, None, "nothing offered, nothing agreed");
    for socket in [&mut first, &mut second, &mut plain] {
        subscribe(socket, "news").await;
    }

    let topic = Topic::new("news").unwrap();
    broker.publish(&topic, Publication::new(large(1))).await.unwrap();
    let (a, b) = (next(&mut first).await, next(&mut second).await);
    assert!(a.rsv1() && a.opcode() == 0x1, "one compressed text frame");
    assert_eq!(a.payload, b.payload, "compressed once, the same bytes to each");
    assert_eq!(a.json()["data"], large(1));
    let uncompressed = next(&mut plain).await;
    assert!(!uncompressed.rsv1());
    assert_eq!(uncompressed.json()["data"], large(1));
    assert!(a.payload.len() * 3 < uncompressed.payload.len(), "{} bytes", a.payload.len());

    // Each message on its own (no context takeover): the next inflates without the first.
    broker.publish(&topic, Publication::new(large(2))).await.unwrap();
    assert_eq!(next(&mut second).await.json()["data"], large(2));
    assert_eq!(next(&mut first).await.json()["data"], large(2));
    // Below deflate_min_bytes a message goes plain.
    broker.publish(&topic, Publication::new("short")).await.unwrap();
    let small = next(&mut first).await;
    assert!(!small.rsv1());
    assert_eq!(small.json()["data"], "short");
}

#[tokio::test]
async fn compressed_requests_are_inflated_whole_or_in_fragments() {
    let (running, broker) = start(ServerConfig::default()).await;
    let (mut socket, _) = upgrade(running.local_addr(), Some(OFFER)).await;

    // One compressed frame.
    let request = json!({"op": "subscribe", "id": "s", "topic": "t"}).to_string();
    socket.write_all(&client_frame(true, true, 0x1, &deflate(request.as_bytes()))).await.unwrap();
    assert_eq!(next(&mut socket).await.json()["op"], "subscribed");

    // A compressed publish in three fragments, a ping between two of them.
    let publish = json!({"op": "publish", "id": "p", "topic": "t", "data": large(3)}).to_string();
    let compressed = deflate(publish.as_bytes());
    let (one, rest) = compressed.split_at(compressed.len() / 3);
    let (two, three) = rest.split_at(rest.len() / 2);
    let mut bytes = client_frame(false, true, 0x1, one);
    bytes.extend(client_frame(false, false, 0x0, two));
    bytes.extend(client_frame(true, false, 0x9, b"between"));
    bytes.extend(client_frame(true, false, 0x0, three));
    socket.write_all(&bytes).await.unwrap();
    let pong = raw_frame(&mut socket).await.unwrap();
    assert_eq!((pong.opcode(), pong.payload.as_slice()), (0xA, &b"between"[..]));
    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.push(next(&mut socket).await.json());
    }
    let published = seen.iter().find(|v| v["op"] == "published").expect("the publish answered");
    assert_eq!(published["id"], "p", "{seen:?}");
    let delivered = seen.iter().find(|v| v["op"] == "message").expect("the message delivered");
    assert_eq!(delivered["data"], large(3));
    let page = broker.fetch(&Topic::new("t").unwrap(), Cursor::Beginning, 10).await.unwrap();
    assert_eq!(page.messages[0].text(), Some(large(3).as_str()));

    // Plain frames still pass as they are, on the same socket.
    let fetch = json!({"op": "fetch", "id": "f", "topic": "t"}).to_string();
    socket.write_all(&client_frame(true, false, 0x1, fetch.as_bytes())).await.unwrap();
    assert_eq!(next(&mut socket).await.json()["op"], "page");
}

#[tokio::test]
async fn compressed_messages_that_cannot_be_taken_close_their_socket_with_the_code_that_says_why() {
    let config = {
        let mut built = ServerConfig::default();
        built.max_message_size = Some(4096);
        built
    };
    let (running, _broker) = start(config).await;
    let addr = running.local_addr();

    // Inflates to 100 KB from a few hundred bytes: stopped at the limit, not inflated whole.
    let (mut socket, _) = upgrade(addr, Some(OFFER)).await;
    let bomb = deflate(&vec![b' '; 100_000]);
    assert!(bomb.len() < 4096);
    socket.write_all(&client_frame(true, true, 0x1, &bomb)).await.unwrap();
    let (code, reason) = closed(&mut socket).await;
    assert_eq!(code, close::TOO_BIG, "{reason}");
    assert!(reason.contains("4096"), "{reason}");

    // Not DEFLATE data.
    let (mut socket, _) = upgrade(addr, Some(OFFER)).await;
    socket.write_all(&client_frame(true, true, 0x1, &[0xff; 40])).await.unwrap();
    let (code, reason) = closed(&mut socket).await;
    assert_eq!(code, close::INVALID_UTF8, "{reason}");
    assert!(reason.contains("does not inflate"), "{reason}");

    // RSV1 belongs on a message's first frame only.
    let (mut socket, _) = upgrade(addr, Some(OFFER)).await;
    let mut bytes = client_frame(false, true, 0x1, &deflate(b"{\"op\":"));
    bytes.extend(client_frame(true, true, 0x0, b"x"));
    socket.write_all(&bytes).await.unwrap();
    let (code, reason) = closed(&mut socket).await;
    assert_eq!(code, close::PROTOCOL_ERROR, "{reason}");

    // A new message before the compressed one has ended.
    let (mut socket, _) = upgrade(addr, Some(OFFER)).await;
    let mut bytes = client_frame(false, true, 0x1, &deflate(b"{\"op\":"));
    bytes.extend(client_frame(true, false, 0x1, b"{}"));
    socket.write_all(&bytes).await.unwrap();
    assert_eq!(closed(&mut socket).await.0, close::PROTOCOL_ERROR);

    // Compression that was not agreed: RSV1 breaks RFC 6455.
    let (mut socket, none) = upgrade(addr, None).await;
    assert_eq!(none, None);
    let request = json!({"op": "fetch", "id": "f", "topic": "t"}).to_string();
    socket.write_all(&client_frame(true, true, 0x1, &deflate(request.as_bytes()))).await.unwrap();
    assert_eq!(closed(&mut socket).await.0, close::PROTOCOL_ERROR);

    // None of that harmed another socket.
    let (mut socket, _) = upgrade(addr, Some(OFFER)).await;
    subscribe(&mut socket, "fine").await;
}

#[tokio::test]
async fn offers_are_declined_when_compression_is_off_or_the_offer_cannot_be_honoured() {
    let off = {
        let mut built = ServerConfig::default();
        built.permessage_deflate = false;
        built
    };
    let (running, broker) = start(off).await;
    let (mut socket, accepted) = upgrade(running.local_addr(), Some(OFFER)).await;
    assert_eq!(accepted, None);
    subscribe(&mut socket, "t").await;
    broker.publish(&Topic::new("t").unwrap(), Publication::new(large(4))).await.unwrap();
    let frame = next(&mut socket).await;
    assert!(!frame.rsv1());
    assert_eq!(frame.json()["data"], large(4));

    // A window the server does not compress with (it always uses 15 bits), then one it does:
    // the second offer is taken.
    let (running, _) = start(ServerConfig::default()).await;
    let addr = running.local_addr();
    let (_, accepted) = upgrade(addr, Some("permessage-deflate; server_max_window_bits=10")).await;
    assert_eq!(accepted, None);
    let two = "permessage-deflate; server_max_window_bits=10, permessage-deflate";
    let (_, accepted) = upgrade(addr, Some(two)).await;
    assert!(accepted.is_some_and(|a| a.starts_with("permessage-deflate;")));
}

/// Relays to `addr` from a port of its own, counting the bytes that flow back to the client.
async fn counting_relay(addr: SocketAddr) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let relay = listener.local_addr().unwrap();
    let down = Arc::new(AtomicU64::new(0));
    let counted = down.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(addr).await else { return };
            let down = counted.clone();
            tokio::spawn(async move {
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let back = async {
                    let mut buf = [0u8; 8192];
                    loop {
                        let n = server_read.read(&mut buf).await.unwrap_or(0);
                        if n == 0 || client_write.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        down.fetch_add(n as u64, Ordering::Relaxed);
                    }
                };
                tokio::select! {
                    _ = tokio::io::copy(&mut client_read, &mut server_write) => {}
                    () = back => {}
                }
            });
        }
    });
    (relay, down)
}

#[tokio::test]
async fn the_client_offers_compression_and_reads_what_the_server_compresses() {
    let (running, broker) = start(ServerConfig::default()).await;
    let mut bytes = Vec::new();
    for deflate in [true, false] {
        let (relay, down) = counting_relay(running.local_addr()).await;
        let mut config = ClientConfig::new(format!("http://{relay}"));
        config.permessage_deflate = deflate;
        let client = WsClient::new(config).unwrap();
        let topic = Topic::new(format!("client-{deflate}")).unwrap();
        let mut subscription = client.subscribe(&topic, Cursor::Latest).await.unwrap();
        let before = down.load(Ordering::Relaxed);
        for n in 0..20 {
            broker.publish(&topic, Publication::new(large(n))).await.unwrap();
        }
        for n in 0..20 {
            let delivery = tokio::time::timeout(LIMIT, subscription.next())
                .await
                .expect("a delivery in time")
                .expect("the subscription is open")
                .expect("a delivery");
            let message = delivery.as_message().expect("a message");
            assert_eq!(message.text(), Some(large(n).as_str()), "in order, whole");
        }
        bytes.push(down.load(Ordering::Relaxed) - before);
    }
    assert!(bytes[0] * 3 < bytes[1], "compressed {} bytes, plain {}", bytes[0], bytes[1]);
}
