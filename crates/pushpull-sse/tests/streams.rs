//! Event streams over real sockets: the format browsers read, resuming, heartbeats, slow and
//! vanished readers, HTTP/2 multiplexing, and the client's stop conditions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pushpull_core::{
    Cursor, Epoch, ErrorKind, MemoryBroker, MemoryConfig, Publication, Publish, Retention,
    Subscribe, Topic,
};
use pushpull_http::{Route, Router, RunningServer, ServeConfig};
use pushpull_sse::wire::{Event, GAP_EVENT, Parser};
use pushpull_sse::{ServerConfig, SseServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Fails a test that hangs, instead of hanging CI.
const LIMIT: Duration = Duration::from_secs(30);

struct Setup {
    server: SseServer,
    running: RunningServer,
    broker: Arc<MemoryBroker>,
}

async fn start(broker: MemoryBroker, config: ServerConfig) -> Setup {
    let broker = Arc::new(broker);
    let server = SseServer::new(broker.clone() as Arc<dyn pushpull_core::Broker>, config).unwrap();
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let running = pushpull_http::spawn(listener, server.router(), ServeConfig::default()).unwrap();
    Setup { server, running, broker }
}

async fn default_setup() -> Setup {
    start(MemoryBroker::new(), ServerConfig::default()).await
}

/// A GET over a fresh HTTP/1.1 connection made by hyper's client.
async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> http::Response<Incoming> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let mut request = Request::get(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    sender.send_request(request.body(Empty::<Bytes>::new()).unwrap()).await.unwrap()
}

/// Reads the body until `count` events were dispatched (heartbeats and preamble do not count).
async fn events(body: &mut Incoming, parser: &mut Parser, count: usize) -> Vec<Event> {
    let mut events = Vec::new();
    tokio::time::timeout(LIMIT, async {
        while events.len() < count {
            let frame = body.frame().await.expect("the stream goes on").expect("a frame");
            if let Ok(data) = frame.into_data() {
                events.extend(parser.feed(&data).unwrap());
            }
        }
    })
    .await
    .expect("the events arrived");
    events
}

async fn publish(broker: &MemoryBroker, topic: &str, payload: &str) -> Cursor {
    broker
        .publish(&Topic::new(topic).unwrap(), Publication::new(payload.to_owned()))
        .await
        .unwrap()
        .cursor()
}

#[tokio::test]
async fn the_stream_is_what_eventsource_expects() {
    let setup = default_setup().await;
    publish(&setup.broker, "t", "one\ntwo").await;
    let response =
        get(setup.running.local_addr(), "/v1/topics/t/events?after=beginning", &[]).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");
    assert!(headers.get("content-encoding").is_none(), "never compressed");
    assert!(headers.get("content-length").is_none(), "streamed");

    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let text = std::str::from_utf8(&first).unwrap();
    assert!(text.starts_with("retry: 1000\nid: "), "{text:?}");

    let mut parser = Parser::new();
    parser.feed(&first).unwrap();
    let events = events(&mut body, &mut parser, 1).await;
    assert_eq!(events[0].data, "one\ntwo", "multi-line payloads are several data lines");
    assert_eq!(events[0].event_type, "message");
    assert!(events[0].last_event_id.ends_with("-1"));
}

#[tokio::test]
async fn last_event_id_resumes_and_wins_over_after() {
    let setup = default_setup().await;
    let mut cursors = Vec::new();
    for n in 1..=5 {
        cursors.push(publish(&setup.broker, "t", &format!("m{n}")).await);
    }
    let second = cursors[1].to_string();
    let response = get(
        setup.running.local_addr(),
        "/v1/topics/t/events?after=beginning",
        &[("last-event-id", &second)],
    )
    .await;
    let mut body = response.into_body();
    let events = events(&mut body, &mut Parser::new(), 3).await;
    let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(data, ["m3", "m4", "m5"]);
}

#[tokio::test]
async fn bad_cursors_are_400_and_other_epochs_are_gaps() {
    let setup = default_setup().await;
    let addr = setup.running.local_addr();
    for (header, query) in [("garbage", ""), ("", "?after=nope")] {
        let headers: Vec<(&str, &str)> =
            if header.is_empty() { vec![] } else { vec![("last-event-id", header)] };
        let response = get(addr, &format!("/v1/topics/t/events{query}"), &headers).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()["content-type"], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["kind"], "invalid_cursor");
        if !header.is_empty() {
            assert!(json["error"]["message"].as_str().unwrap().contains("Last-Event-ID"));
        }
    }
    let bad_topic = get(addr, "/v1/topics/no%20way/events", &[]).await;
    assert_eq!(bad_topic.status(), StatusCode::BAD_REQUEST);

    publish(&setup.broker, "t", "fresh").await;
    let stale = format!("{}-42", Epoch::random());
    let response = get(addr, "/v1/topics/t/events", &[("last-event-id", &stale)]).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let events = events(&mut body, &mut Parser::new(), 2).await;
    assert_eq!(events[0].event_type, GAP_EVENT);
    let gap: serde_json::Value = serde_json::from_str(&events[0].data).unwrap();
    assert_eq!(gap["reason"], "epoch_changed");
    assert_eq!(events[1].data, "fresh");
}

#[tokio::test]
async fn idle_streams_get_heartbeats() {
    let config = {
        let mut built = ServerConfig::default();
        built.heartbeat = Duration::from_millis(50);
        built
    };
    let setup = start(MemoryBroker::new(), config).await;
    let response = get(setup.running.local_addr(), "/v1/topics/quiet/events", &[]).await;
    let mut body = response.into_body();
    let mut seen = Vec::new();
    tokio::time::timeout(LIMIT, async {
        while !seen.ends_with(b":\n\n:\n\n") {
            let frame = body.frame().await.unwrap().unwrap();
            seen.extend_from_slice(&frame.into_data().unwrap());
        }
    })
    .await
    .expect("heartbeats arrived");
}

#[tokio::test]
async fn a_reader_that_stops_reading_falls_into_a_gap_instead_of_growing_memory() {
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
    let setup = start(broker, ServerConfig::default()).await;
    let addr = setup.running.local_addr();

    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request =
        format!("GET /v1/topics/firehose/events?after=latest HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    tokio::time::timeout(LIMIT, async {
        while setup.server.open_streams() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();

    // 64 MiB published while the reader reads nothing; the log keeps 100 messages (1.6 MiB).
    let payload = "x".repeat(16 * 1024);
    let topic = Topic::new("firehose").unwrap();
    let mut last = None;
    for _ in 0..4096 {
        last = Some(setup.broker.publish(&topic, Publication::new(payload.clone())).await.unwrap());
    }
    let needle = format!("id: {}\n", last.unwrap().cursor());

    // Now read: whatever was buffered (socket buffers and a bounded write buffer), then a gap
    // for what retention dropped, then the newest messages, up to the last.
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    tokio::time::timeout(LIMIT, async {
        loop {
            let searched_to = raw.len().saturating_sub(needle.len());
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream ended");
            raw.extend_from_slice(&buf[..n]);
            if raw[searched_to..].windows(needle.len()).any(|w| w == needle.as_bytes()) {
                break;
            }
        }
    })
    .await
    .expect("the newest message arrived");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.contains("event: pushpull-gap"), "the slow reader was told what it missed");
    assert!(raw.len() < 32 * 1024 * 1024, "far less than the 64 MiB published was buffered");
}

#[tokio::test]
async fn vanished_clients_free_their_streams() {
    let config = {
        let mut built = ServerConfig::default();
        built.heartbeat = Duration::from_millis(50);
        built
    };
    let setup = start(MemoryBroker::new(), config).await;
    let addr = setup.running.local_addr();
    let mut clients = Vec::new();
    for _ in 0..50 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET /v1/topics/t/events HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        clients.push(stream);
    }
    let wait_for = |count: usize| {
        let server = setup.server.clone();
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
    wait_for(50).await;
    drop(clients);
    wait_for(0).await;
}

#[tokio::test]
async fn many_streams_share_one_http2_connection() {
    let setup = default_setup().await;
    let addr = setup.running.local_addr();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);

    const STREAMS: usize = 100;
    let mut bodies = Vec::new();
    for _ in 0..STREAMS {
        let request = Request::get(format!("http://{addr}/v1/topics/shared/events"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.clone().send_request(request).await.unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert_eq!(response.status(), 200);
        bodies.push(response.into_body());
    }
    assert_eq!(setup.server.open_streams(), STREAMS);
    assert_eq!(setup.running.stats().accepted_connections(), 1, "all on one connection");
    publish(&setup.broker, "shared", "to everyone").await;
    let received = futures::future::join_all(
        bodies
            .iter_mut()
            .map(|body| async move { events(body, &mut Parser::new(), 1).await.remove(0).data }),
    )
    .await;
    assert!(received.iter().all(|data| data == "to everyone"));
}

/// A server that answers every event-stream request with `status` and `content_type`.
async fn fake(status: u16, content_type: &'static str) -> RunningServer {
    let route =
        Route::new(http::Method::GET, "/v1/topics/{topic}/events", move |_, _| async move {
            let mut response = http::Response::new(pushpull_http::full("nope"));
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            response
                .headers_mut()
                .insert("content-type", http::HeaderValue::from_static(content_type));
            Ok(response)
        });
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    pushpull_http::spawn(listener, Router::new().with([route]), ServeConfig::default()).unwrap()
}

#[tokio::test]
async fn the_client_stops_on_204_final_statuses_and_wrong_content_types() {
    // (status, content type, kind, whether a retry can help)
    let cases = [
        (204, "text/event-stream", ErrorKind::Closed, false),
        (404, "text/plain", ErrorKind::Protocol, false),
        (410, "text/plain", ErrorKind::Protocol, false),
        (500, "text/plain", ErrorKind::Protocol, true),
        (503, "text/plain", ErrorKind::Backend, true),
        (200, "application/json", ErrorKind::Protocol, false),
    ];
    for (status, content_type, kind, retryable) in cases {
        let server = fake(status, content_type).await;
        let url = format!("http://{}", server.local_addr());
        let client = pushpull_sse::SseClient::new(pushpull_sse::ClientConfig::new(url)).unwrap();
        let result = client.subscribe(&Topic::new("t").unwrap(), Cursor::Latest).await;
        let error = result.expect_err("the first open fails");
        assert_eq!(error.kind(), kind, "status {status} {content_type}: {error}");
        assert_eq!(error.is_retryable(), retryable, "status {status}: {error:?}");
        assert_eq!(error.transport(), Some("sse"));
    }
}

// The fan-out of a topic: once two streams of one topic have caught up, one task writes each
// new event to both (and to every stream that catches up after them), instead of each
// stream's own task being woken to write it.

/// An event stream of `path` as browsers ask for one (the path alone on the request line, as
/// the server answers it itself), over a fresh connection; `small`, from a client that takes
/// at most a few KiB into its receive buffer: a reader whose socket fills at once when it
/// stops reading.
async fn events_of(addr: SocketAddr, path: &str, small: bool) -> Incoming {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if small {
        socket.set_recv_buffer_size(4096).unwrap();
    }
    let stream = socket.connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let request = Request::get(path).header("host", addr.to_string());
    let response = sender.send_request(request.body(Empty::<Bytes>::new()).unwrap()).await;
    let response = response.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body()
}

/// Publishes events `first..=last` to `topic`, each `n:` then `size` bytes of padding.
async fn numbered(broker: &MemoryBroker, topic: &str, first: usize, last: usize, size: usize) {
    let topic = Topic::new(topic).unwrap();
    let padding = "x".repeat(size);
    for n in first..=last {
        let payload = format!("{n}:{padding}");
        broker.publish(&topic, Publication::new(payload)).await.unwrap();
        tokio::task::yield_now().await;
    }
}

/// Reads events `first..=last` from `body`: every one once, in order.
async fn read_numbered(body: &mut Incoming, parser: &mut Parser, first: usize, last: usize) {
    for (n, event) in (first..=last).zip(events(body, parser, last + 1 - first).await) {
        let number = event.data.split(':').next().unwrap();
        assert_eq!(number, n.to_string(), "event {n} in its place");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streams_of_a_topic_are_written_by_its_fanout_every_event_in_order() {
    let setup = default_setup().await;
    let addr = setup.running.local_addr();
    let mut streams = Vec::new();
    for _ in 0..5 {
        streams.push((events_of(addr, "/v1/topics/news/events", false).await, Parser::new()));
    }
    // Seated as they open (all but the first to want a fan-out, seated after a delivery).
    numbered(&setup.broker, "news", 1, 1, 10).await;
    for (body, parser) in &mut streams {
        read_numbered(body, parser, 1, 1).await;
    }
    let readers: Vec<_> = streams
        .into_iter()
        .map(|(mut body, mut parser)| {
            tokio::spawn(async move {
                read_numbered(&mut body, &mut parser, 2, 301).await;
                body
            })
        })
        .collect();
    numbered(&setup.broker, "news", 2, 301, 100).await;
    let mut bodies = Vec::new();
    for reader in readers {
        bodies.push(reader.await.unwrap());
    }
    let fanout = setup.server.fanout();
    assert!(fanout.written() > 0, "the fan-out wrote none of the 1,500 deliveries");
    assert_eq!(fanout.running(), 1);
    let receipt = setup.broker.publish(&Topic::new("news").unwrap(), Publication::new("n")).await;
    assert_eq!(receipt.unwrap().subscribers, Some(5), "the fan-out's reading is not counted");
}

// Streams opened before a message take seats as soon as their heads are written (all but the
// first to want the topic's fan-out, which is not seated until a delivery of its own), so the
// first message after they open is written by the fan-out: a crowd that connects before an
// event does not each have its own task write it. The fan-out's reading, begun before the
// topic had a log, is not counted as a subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_opened_before_a_message_are_seated_and_get_it_from_the_fanout() {
    let setup = default_setup().await;
    let addr = setup.running.local_addr();
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push((events_of(addr, "/v1/topics/early/events", false).await, Parser::new()));
    }
    let fanout = setup.server.fanout();
    let waited = tokio::time::timeout(LIMIT, async {
        while fanout.seated() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    waited.await.unwrap_or_else(|_| panic!("seated before a message: {}", fanout.seated()));
    numbered(&setup.broker, "early", 1, 1, 10).await;
    for (body, parser) in &mut streams {
        read_numbered(body, parser, 1, 1).await;
    }
    assert_eq!(fanout.written(), 2, "the seated streams' first event came from the fan-out");
    let receipt = setup.broker.publish(&Topic::new("early").unwrap(), Publication::new("n")).await;
    assert_eq!(receipt.unwrap().subscribers, Some(3), "the fan-out's reading is not counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_stops_reading_is_let_go_and_carries_on_from_where_its_fanout_left_it() {
    let setup = default_setup().await;
    let addr = setup.running.local_addr();
    let mut readers = Vec::new();
    for _ in 0..2 {
        readers.push((events_of(addr, "/v1/topics/feed/events", false).await, Parser::new()));
    }
    let mut lazy = (events_of(addr, "/v1/topics/feed/events", true).await, Parser::new());
    // Events one at a time, each read by all, until all three are seated.
    let mut last = 0;
    while setup.server.fanout().seated() < 3 {
        assert!(last < 50, "seated after {last} events: {}", setup.server.fanout().seated());
        last += 1;
        numbered(&setup.broker, "feed", last, last, 10).await;
        for (body, parser) in readers.iter_mut().chain([&mut lazy]) {
            read_numbered(body, parser, last, last).await;
        }
    }
    // 400 events of 8 KiB while the lazy one reads nothing: far more than its socket holds.
    let (first, end) = (last + 1, last + 400);
    let readers: Vec<_> = readers
        .into_iter()
        .map(|(mut body, mut parser)| {
            tokio::spawn(async move {
                read_numbered(&mut body, &mut parser, first, end).await;
                (body, parser)
            })
        })
        .collect();
    numbered(&setup.broker, "feed", first, end, 8 * 1024).await;
    let mut streams = Vec::new();
    for reader in readers {
        streams.push(reader.await.unwrap());
    }
    let fanout = setup.server.fanout();
    assert!(fanout.let_go() >= 1, "the full stream was let go");
    // It gets every event once, in order, from where the fan-out stopped writing to it.
    read_numbered(&mut lazy.0, &mut lazy.1, first, end).await;
    // And all of them carry on, the lazy one taking its seat again.
    let written = fanout.written();
    numbered(&setup.broker, "feed", end + 1, end + 20, 10).await;
    for (body, parser) in streams.iter_mut().chain([&mut lazy]) {
        read_numbered(body, parser, end + 1, end + 20).await;
    }
    assert!(fanout.written() > written);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seated_stream_gets_heartbeats_and_ends_cleanly_at_shutdown() {
    let config = {
        let mut built = ServerConfig::default();
        built.heartbeat = Duration::from_millis(200);
        built
    };
    let setup = start(MemoryBroker::new(), config).await;
    let addr = setup.running.local_addr();
    let mut streams = Vec::new();
    for _ in 0..2 {
        streams.push((events_of(addr, "/v1/topics/t/events", false).await, Parser::new()));
    }
    let mut last = 0;
    while setup.server.fanout().seated() < 2 {
        assert!(last < 50, "seated after {last} events");
        last += 1;
        numbered(&setup.broker, "t", last, last, 10).await;
        for (body, parser) in &mut streams {
            read_numbered(body, parser, last, last).await;
        }
    }
    // Silent, each seated stream still gets a heartbeat (a comment) within a few beats.
    let (body, _) = &mut streams[0];
    let heartbeat = tokio::time::timeout(LIMIT, async {
        loop {
            let frame = body.frame().await.expect("the stream goes on").expect("a frame");
            if let Ok(data) = frame.into_data()
                && data.starts_with(b":")
            {
                return data;
            }
        }
    })
    .await
    .expect("a heartbeat in time");
    assert!(heartbeat.ends_with(b"\n\n"), "{heartbeat:?}");
    // At shutdown each stream ends with the last chunk: the body ends without an error.
    let stopping = tokio::spawn(setup.running.shutdown());
    for (mut body, _) in streams {
        let ended = tokio::time::timeout(LIMIT, async {
            while let Some(frame) = body.frame().await {
                frame.expect("well-framed to the end");
            }
        })
        .await;
        assert!(ended.is_ok(), "the stream ended at shutdown");
    }
    stopping.await.unwrap();
}
