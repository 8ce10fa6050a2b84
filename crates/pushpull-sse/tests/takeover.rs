//! An event stream that is the first request of a plain HTTP/1.1 connection is written by the
//! server itself rather than by hyper (see pushpull-http's `takeover`): these check that what
//! goes on the wire is still correct HTTP/1.1 — head, chunked framing, the last chunk at
//! shutdown — that a connection whose first answer is not a stream goes on serving requests, and
//! that a client that goes away ends its stream at once, heartbeat or not.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pushpull_core::{MemoryBroker, Publication, Publish, Topic};
use pushpull_http::{RunningServer, ServeConfig};
use pushpull_sse::wire::Parser;
use pushpull_sse::{ServerConfig, SseServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(30);

async fn start(config: ServerConfig) -> (SseServer, RunningServer, Arc<MemoryBroker>) {
    let broker = Arc::new(MemoryBroker::new());
    let server = SseServer::new(broker.clone() as Arc<dyn pushpull_core::Broker>, config).unwrap();
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    // A grace period longer than any test waits: a connection left open at shutdown fails
    // the test instead of being closed when the grace ends.
    let mut serve = ServeConfig::default();
    serve.shutdown_grace = Duration::from_secs(120);
    let running = pushpull_http::spawn(listener, server.router(), serve).unwrap();
    (server, running, broker)
}

/// Reads from `stream` until `buf` holds a response head; returns the head's length.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    tokio::time::timeout(LIMIT, async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return end + 4;
            }
            let mut chunk = [0u8; 4096];
            let read = stream.read(&mut chunk).await.unwrap();
            assert!(read > 0, "closed before a head: {:?}", String::from_utf8_lossy(buf));
            buf.extend_from_slice(&chunk[..read]);
        }
    })
    .await
    .expect("a head in time")
}

/// Decodes the chunked body in `bytes`: the data of each complete chunk, and whether the last
/// (zero-length) chunk was among them.
fn chunks(bytes: &[u8]) -> (Vec<u8>, bool) {
    let mut data = Vec::new();
    let mut at = 0;
    while let Some(line) = bytes[at..].windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&bytes[at..at + line]).unwrap(), 16)
            .expect("a chunk size in hex");
        let start = at + line + 2;
        if size == 0 {
            assert_eq!(&bytes[start..], b"\r\n", "nothing after the last chunk");
            return (data, true);
        }
        if bytes.len() < start + size + 2 {
            break;
        }
        data.extend_from_slice(&bytes[start..start + size]);
        assert_eq!(&bytes[start + size..start + size + 2], b"\r\n", "each chunk ends in CRLF");
        at = start + size + 2;
    }
    (data, false)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

#[tokio::test]
async fn a_stream_is_chunked_http_and_ends_with_the_last_chunk_at_shutdown() {
    let (_server, running, broker) = start(ServerConfig::default()).await;
    let addr = running.local_addr();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /v1/topics/t/events HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let head_end = read_head(&mut stream, &mut buf).await;
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(header(&head, "content-type"), Some("text/event-stream"));
    assert_eq!(header(&head, "transfer-encoding"), Some("chunked"));
    assert_eq!(header(&head, "cache-control"), Some("no-cache"));
    assert!(header(&head, "date").is_some_and(|d| d.ends_with(" GMT")), "{head}");
    assert_eq!(header(&head, "content-length"), None);
    let mut body = buf[head_end..].to_vec();

    let topic = Topic::new("t").unwrap();
    for payload in ["one", "two\nlines", "three"] {
        broker.publish(&topic, Publication::new(payload)).await.unwrap();
    }
    let mut parser = Parser::new();
    tokio::time::timeout(LIMIT, async {
        loop {
            let (data, _) = chunks(&body);
            let mut fresh = Parser::new();
            let events = fresh.feed(&data).unwrap();
            if events.len() == 3 {
                let payloads: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
                assert_eq!(payloads, ["one", "two\nlines", "three"]);
                break;
            }
            let mut chunk = [0u8; 4096];
            let read = stream.read(&mut chunk).await.unwrap();
            assert!(read > 0, "the stream ended early");
            body.extend_from_slice(&chunk[..read]);
        }
    })
    .await
    .expect("three events");

    // Shutdown ends the stream properly: the last chunk, then the connection closes (at once,
    // not when the grace period ends).
    let stopping = tokio::spawn(running.shutdown());
    tokio::time::timeout(LIMIT, async {
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        body.extend_from_slice(&rest);
    })
    .await
    .expect("the stream ended at shutdown");
    let (data, last) = chunks(&body);
    assert!(last, "the body ends with the last chunk: {:?}", String::from_utf8_lossy(&body));
    assert_eq!(parser.feed(&data).unwrap().len(), 3, "nothing but the three events");
    stopping.await.unwrap();
}

#[tokio::test]
async fn a_connection_whose_first_answer_is_not_a_stream_serves_the_next_request() {
    let (_server, running, broker) = start(ServerConfig::default()).await;
    let addr = running.local_addr();
    broker.publish(&Topic::new("t").unwrap(), Publication::new("kept")).await.unwrap();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // A bad cursor: a 400 with a body of known length, on a keep-alive connection.
    let request = format!("GET /v1/topics/t/events?after=zz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let head_end = read_head(&mut stream, &mut buf).await;
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
    let length: usize = header(&head, "content-length").expect("a length").parse().unwrap();
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).await.unwrap();
        assert!(read > 0);
        buf.extend_from_slice(&chunk[..read]);
    }
    let error: serde_json::Value = serde_json::from_slice(&buf[head_end..]).unwrap();
    assert_eq!(error["error"]["kind"], "invalid_cursor", "{error}");
    assert_eq!(buf.len(), head_end + length, "nothing after the body");

    // The same connection: a stream from the beginning, which hyper now serves.
    let request =
        format!("GET /v1/topics/t/events?after=beginning HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let head_end = read_head(&mut stream, &mut buf).await;
    assert!(buf.starts_with(b"HTTP/1.1 200 OK\r\n"));
    let mut body = buf[head_end..].to_vec();
    tokio::time::timeout(LIMIT, async {
        while !String::from_utf8_lossy(&chunks(&body).0).contains("data: kept\n") {
            let mut chunk = [0u8; 4096];
            let read = stream.read(&mut chunk).await.unwrap();
            assert!(read > 0);
            body.extend_from_slice(&chunk[..read]);
        }
    })
    .await
    .expect("the message on the second request");
}

#[tokio::test]
async fn a_client_that_goes_away_ends_its_stream_without_waiting_for_a_heartbeat() {
    let config = {
        let mut built = ServerConfig::default();
        built.heartbeat = Duration::from_secs(3600);
        built
    };
    let (server, running, _broker) = start(config).await;
    let addr = running.local_addr();
    let open = |count: usize| {
        let server = server.clone();
        async move {
            tokio::time::timeout(LIMIT, async {
                while server.open_streams() != count {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("open streams never reached {count}"));
        }
    };
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(stream_from(addr).await);
    }
    open(20).await;
    drop(clients);
    open(0).await;
}

async fn stream_from(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /v1/topics/t/events HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    read_head(&mut stream, &mut buf).await;
    stream
}
