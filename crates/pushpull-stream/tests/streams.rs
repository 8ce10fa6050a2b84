//! Streams over real sockets: negotiation and headers, heartbeats, curl reading records as
//! they are published, and a 100 MiB payload end to end.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use pushpull_core::{
    Cursor, MemoryBroker, MemoryConfig, Publication, Publish, Retention, Subscribe, Topic,
};
use pushpull_http::{RunningServer, ServeConfig};
use pushpull_stream::{ClientConfig, FramingChoice, ServerConfig, StreamServer};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::ChildStdout;

const LIMIT: Duration = Duration::from_secs(60);

async fn start(
    broker: MemoryBroker,
    config: ServerConfig,
) -> (StreamServer, RunningServer, Arc<MemoryBroker>) {
    let broker = Arc::new(broker);
    let server =
        StreamServer::new(broker.clone() as Arc<dyn pushpull_core::Broker>, config).unwrap();
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let running = pushpull_http::spawn(listener, server.router(), ServeConfig::default()).unwrap();
    (server, running, broker)
}

/// The response head and the body of a raw GET, read until the body contains `until`.
async fn head_and_start(
    addr: std::net::SocketAddr,
    path: &str,
    accept: &str,
    until: &str,
) -> (String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(LIMIT, async {
        while !String::from_utf8_lossy(&bytes).contains(until) {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0);
            bytes.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap();
    let split = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    (String::from_utf8_lossy(&bytes[..split]).to_ascii_lowercase(), bytes[split + 4..].to_vec())
}

#[tokio::test]
async fn the_accept_header_picks_the_framing_and_idle_streams_get_heartbeats() {
    let config = {
        let mut built = ServerConfig::default();
        built.heartbeat = Duration::from_millis(20);
        built
    };
    let (_, running, _) = start(MemoryBroker::new(), config).await;
    let addr = running.local_addr();

    let (head, body) = head_and_start(addr, "/v1/topics/t/stream", "*/*", "heartbeat").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: application/x-ndjson"), "{head}");
    assert!(
        head.contains("x-accel-buffering: no") && head.contains("cache-control: no-cache"),
        "{head}"
    );
    assert!(
        head.contains("transfer-encoding: chunked") && !head.contains("content-encoding"),
        "{head}"
    );
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains(r#"{"type":"start","cursor":""#), "{text}");
    assert!(text.contains(r#"{"type":"heartbeat"}"#), "{text}");

    let (head, _) =
        head_and_start(addr, "/v1/topics/t/stream", "application/vnd.pushpull.stream", "start")
            .await;
    assert!(head.contains("content-type: application/vnd.pushpull.stream"), "{head}");

    let (head, body) =
        head_and_start(addr, "/v1/topics/t/stream?after=nope", "*/*", "invalid_cursor").await;
    assert!(head.starts_with("http/1.1 400"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("invalid_cursor"));
}

/// curl reading `url` as it comes, and the lines it prints.
fn curl(url: &str) -> (tokio::process::Child, tokio::io::Lines<BufReader<ChildStdout>>) {
    let mut curl = tokio::process::Command::new("curl")
        .args(["--no-buffer", "--silent", "--show-error", url])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("curl is installed (scripts/test installs it)");
    let lines = BufReader::new(curl.stdout.take().unwrap()).lines();
    (curl, lines)
}

#[tokio::test]
async fn curl_reads_records_as_they_are_published() {
    let (server, running, broker) = start(MemoryBroker::new(), ServerConfig::default()).await;
    let url = format!("http://{}/v1/topics/live/stream?after=latest", running.local_addr());
    let (_curl, mut lines) = curl(&url);
    let mut next = async || -> serde_json::Value {
        let line = tokio::time::timeout(LIMIT, lines.next_line()).await.unwrap().unwrap().unwrap();
        serde_json::from_str(&line).unwrap()
    };
    assert_eq!(next().await["type"], "start");
    assert_eq!(server.open_streams(), 1);
    let topic = Topic::new("live").unwrap();
    for text in ["one", "twø 🚀"] {
        broker.publish(&topic, Publication::new(text)).await.unwrap();
        let record = next().await;
        assert_eq!(
            (record["type"].as_str(), record["data"].as_str()),
            (Some("message"), Some(text))
        );
    }
    broker.publish(&topic, Publication::new(vec![0xffu8, 0x00])).await.unwrap();
    assert_eq!(next().await["data_base64"], "/wA=");
}

#[tokio::test]
async fn a_100_mib_payload_streams_through_the_binary_framing() {
    const SIZE: usize = 100 * 1024 * 1024;
    let config = {
        let mut built = MemoryConfig::default();
        built.max_payload = SIZE + 1024;
        built.retention = {
            let mut built = Retention::default();
            built.max_bytes = 2 * SIZE + 4096;
            built
        };
        built
    };
    let (_, running, broker) =
        start(MemoryBroker::with_config(config).unwrap(), ServerConfig::default()).await;
    let client = pushpull_stream::StreamClient::new({
        let mut built = ClientConfig::new(format!("http://{}", running.local_addr()));
        built.framing = FramingChoice::Binary;
        built
    })
    .unwrap();
    let topic = Topic::new("large").unwrap();
    let mut subscription = client.subscribe(&topic, Cursor::Latest).await.unwrap();
    let payload = Bytes::from((0..SIZE).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    broker.publish(&topic, Publication::new(payload.clone())).await.unwrap();
    broker.publish(&topic, Publication::new("after")).await.unwrap();
    let first = tokio::time::timeout(LIMIT, subscription.next()).await.unwrap().unwrap().unwrap();
    let message = first.as_message().expect("a message");
    assert_eq!(message.payload.len(), SIZE);
    assert!(message.payload == payload, "the 100 MiB payload arrived intact");
    let second = tokio::time::timeout(LIMIT, subscription.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(second.as_message().unwrap().payload, "after");
}

#[tokio::test]
async fn a_reader_that_stops_reading_falls_into_a_gap_instead_of_growing_memory() {
    let config = {
        let mut built = MemoryConfig::default();
        built.retention = {
            let mut built = Retention::default();
            built.max_messages = 100;
            built
        };
        built
    };
    let (server, running, broker) =
        start(MemoryBroker::with_config(config).unwrap(), ServerConfig::default()).await;
    let addr = running.local_addr();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request =
        format!("GET /v1/topics/firehose/stream?after=latest HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    tokio::time::timeout(LIMIT, async {
        while server.open_streams() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    // 64 MiB published while the reader reads nothing; the log keeps 100 messages.
    let topic = Topic::new("firehose").unwrap();
    let payload = Bytes::from("x".repeat(16 * 1024));
    let mut last = None;
    for _ in 0..4096 {
        last = Some(broker.publish(&topic, Publication::new(payload.clone())).await.unwrap());
        tokio::task::yield_now().await;
    }
    let needle = format!("\"cursor\":\"{}\"", last.unwrap().cursor());
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
    assert!(text.contains("\"type\":\"gap\""), "the slow reader was told what it missed");
    assert!(raw.len() < 32 * 1024 * 1024, "far less than the 64 MiB published was buffered");
}

#[tokio::test]
async fn records_flow_over_http2_data_frames() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let (_, running, broker) = start(MemoryBroker::new(), ServerConfig::default()).await;
    let addr = running.local_addr();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(format!("http://{addr}/v1/topics/h2/stream?after=latest"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let mut body = response.into_body();
    broker.publish(&Topic::new("h2").unwrap(), Publication::new("over h2")).await.unwrap();
    let mut text = String::new();
    tokio::time::timeout(LIMIT, async {
        while !text.contains("over h2") {
            let frame = body.frame().await.unwrap().unwrap();
            text.push_str(&String::from_utf8_lossy(&frame.into_data().unwrap()));
        }
    })
    .await
    .expect("the record arrived in a data frame");
    assert!(text.starts_with(r#"{"type":"start""#), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curls_reading_one_topic_are_written_by_its_fanout_every_record_in_order() {
    let (server, running, broker) = start(MemoryBroker::new(), ServerConfig::default()).await;
    let url = format!("http://{}/v1/topics/live/stream?after=latest", running.local_addr());
    let mut readers = Vec::new();
    for _ in 0..3 {
        readers.push(curl(&url));
    }
    async fn record(lines: &mut tokio::io::Lines<BufReader<ChildStdout>>) -> serde_json::Value {
        let line = tokio::time::timeout(LIMIT, lines.next_line()).await.unwrap().unwrap().unwrap();
        serde_json::from_str(&line).unwrap()
    }
    for (_, lines) in &mut readers {
        assert_eq!(record(lines).await["type"], "start");
    }
    let topic = Topic::new("live").unwrap();
    // Records one at a time, each read by all, until the three are seated in the fan-out.
    let mut last = 0;
    while server.fanout().seated() < 3 {
        assert!(last < 50, "seated after {last} records: {}", server.fanout().seated());
        last = broker.publish(&topic, Publication::new("warm")).await.unwrap().offset.0;
        for (_, lines) in &mut readers {
            assert_eq!(record(lines).await["offset"], last);
        }
    }
    for n in 1..=200 {
        broker.publish(&topic, Publication::new(format!("{n}"))).await.unwrap();
        tokio::task::yield_now().await;
    }
    for (_, lines) in &mut readers {
        for n in 1..=200u64 {
            let record = record(lines).await;
            assert_eq!(record["offset"], last + n, "{record}");
            assert_eq!(record["data"], n.to_string());
        }
    }
    assert!(server.fanout().written() >= 3 * 200, "{}", server.fanout().written());
}
