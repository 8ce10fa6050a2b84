//! Holding requests: what a held request costs, who answers it, and what frees it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pushpull_core::{MemoryBroker, Publication, Publish, Topic};
use pushpull_http::{RunningServer, ServeConfig};
use pushpull_longpoll::{LongpollServer, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Fails a test that hangs, instead of hanging CI.
const LIMIT: Duration = Duration::from_secs(30);

async fn start(config: ServerConfig) -> (LongpollServer, RunningServer, Arc<MemoryBroker>) {
    let broker = Arc::new(MemoryBroker::new());
    let server =
        LongpollServer::new(broker.clone() as Arc<dyn pushpull_core::Broker>, config).unwrap();
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let running = pushpull_http::spawn(listener, server.router(), ServeConfig::default()).unwrap();
    (server, running, broker)
}

async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(LIMIT, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "gave up waiting for {what}");
}

/// Sends a held request and returns the open socket.
async fn held_request(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

async fn reply(mut stream: TcpStream) -> (u16, String, String) {
    let mut bytes = Vec::new();
    tokio::time::timeout(LIMIT, stream.read_to_end(&mut bytes)).await.unwrap().unwrap();
    let text = String::from_utf8(bytes).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

#[tokio::test]
async fn a_thousand_held_requests_are_freed_when_their_clients_hang_up() {
    let (server, running, broker) = start(ServerConfig::default()).await;
    let addr = running.local_addr();
    let mut clients = Vec::new();
    for _ in 0..1000 {
        clients.push(held_request(addr, "/v1/topics/quiet/messages?after=latest&wait=30").await);
    }
    until("1000 held requests", || server.held_requests() == 1000).await;
    assert_eq!(broker.topic_count(), 0, "held requests take no topic slot: nobody published");
    // And their topic's task, which answers them when a message comes, reads the topic too.
    assert_eq!(broker.subscriber_count(), 1001, "they wait on one shared wake-up");

    drop(clients);
    until("every hold to be freed", || server.held_requests() == 0).await;
    until("every connection to close", || running.stats().open_connections() == 0).await;
}

#[tokio::test]
async fn one_publish_answers_every_held_request_on_the_topic() {
    let (server, running, broker) = start(ServerConfig::default()).await;
    let addr = running.local_addr();
    let topic = Topic::new("news").unwrap();
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(held_request(addr, "/v1/topics/news/messages?after=latest&wait=30").await);
    }
    until("50 held requests", || server.held_requests() == 50).await;
    let receipt = broker.publish(&topic, Publication::new("extra!")).await.unwrap();

    for client in clients {
        let (status, head, body) = reply(client).await;
        assert_eq!(status, 200);
        assert!(head.contains("pushpull-wait-ms: 30000"), "{head}");
        let page: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(page["messages"][0]["data"], "extra!");
        assert_eq!(page["next"], receipt.cursor().to_string());
    }
    assert_eq!(server.held_requests(), 0);
}

#[tokio::test]
async fn a_wait_that_passes_answers_an_empty_page_with_the_same_cursor() {
    let config = {
        let mut built = ServerConfig::default();
        built.max_wait = Duration::from_millis(200);
        built
    };
    let (_server, running, broker) = start(config).await;
    let addr = running.local_addr();
    let receipt = broker.publish(&Topic::new("t").unwrap(), Publication::new("old")).await.unwrap();
    let cursor = receipt.cursor();

    // The asked-for 60 s is cut to max_wait.
    let client = held_request(addr, &format!("/v1/topics/t/messages?after={cursor}&wait=60")).await;
    let (status, head, body) = reply(client).await;
    assert_eq!(status, 200);
    assert!(head.contains("pushpull-wait-ms: 200"), "{head}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["messages"].as_array().unwrap().len(), 0);
    assert_eq!(page["next"], cursor.to_string());

    // Something already there is answered at once, whatever the wait.
    let client = held_request(addr, "/v1/topics/t/messages?after=beginning&wait=60").await;
    let (status, _, body) = reply(client).await;
    assert_eq!(status, 200);
    assert!(body.contains("\"old\""));
}

#[tokio::test]
async fn a_bad_wait_is_a_clear_400() {
    let (_server, running, _broker) = start(ServerConfig::default()).await;
    for wait in ["soon", "-1", "NaN", "inf"] {
        let path = format!("/v1/topics/t/messages?wait={wait}");
        let (status, _, body) = reply(held_request(running.local_addr(), &path).await).await;
        assert_eq!(status, 400, "wait={wait}");
        assert!(body.contains("not a number of seconds"), "{body}");
    }
}

#[tokio::test]
async fn shutdown_answers_held_requests_instead_of_waiting_for_them() {
    let (server, running, _broker) = start(ServerConfig::default()).await;
    let addr = running.local_addr();
    let client = held_request(addr, "/v1/topics/t/messages?after=latest&wait=30").await;
    until("the request to be held", || server.held_requests() == 1).await;
    tokio::time::timeout(LIMIT, running.shutdown()).await.expect("shutdown finished");
    let (status, _, body) = reply(client).await;
    assert_eq!(status, 200);
    assert!(body.contains("\"messages\":[]"), "{body}");
}

#[tokio::test]
async fn curl_is_held_and_then_answered() {
    let (server, running, broker) = start(ServerConfig::default()).await;
    let url =
        format!("http://{}/v1/topics/curl/messages?after=latest&wait=20", running.local_addr());
    let curl = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--fail", &url])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl is installed (scripts/test installs it)");
    until("curl's request to be held", || server.held_requests() == 1).await;
    broker.publish(&Topic::new("curl").unwrap(), Publication::new("to curl")).await.unwrap();
    let output = tokio::time::timeout(LIMIT, curl.wait_with_output()).await.unwrap().unwrap();
    assert!(output.status.success());
    let page: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(page["messages"][0]["data"], "to curl");
}

#[tokio::test]
async fn held_polls_on_redis_wait_without_reading_redis_each() {
    use pushpull_redis::{RedisBroker, RedisConfig};
    use pushpull_testkit::redis::RedisServer;
    const POLLS: usize = 30;

    let redis = tokio::task::spawn_blocking(RedisServer::start).await.unwrap().unwrap();
    let scripts = || async { redis.calls(&["evalsha", "eval"]).await.unwrap() };
    let broker = Arc::new(RedisBroker::new(RedisConfig::new(redis.url())).unwrap());
    let server =
        LongpollServer::new(broker.clone() as Arc<dyn pushpull_core::Broker>, Default::default())
            .unwrap();
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let running = pushpull_http::spawn(listener, server.router(), ServeConfig::default()).unwrap();
    let addr = running.local_addr();
    let topic = Topic::new("news").unwrap();
    let cursor = broker.publish(&topic, Publication::new("old")).await.unwrap().cursor();
    let path = format!("/v1/topics/news/messages?after={cursor}&wait=30");
    // The first held poll starts this node's window of the topic.
    let mut clients = vec![held_request(addr, &path).await];
    until("the first held poll", || server.held_requests() == 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let before = scripts().await;
    for _ in 1..POLLS {
        clients.push(held_request(addr, &path).await);
    }
    until("every held poll", || server.held_requests() == POLLS).await;
    // A poll at the end of this node's window of the topic waits on its subscription: it
    // reads nothing from Redis.
    let holding = scripts().await - before;

    let before = scripts().await;
    let receipt = broker.publish(&topic, Publication::new("extra!")).await.unwrap();
    for client in clients {
        let (status, _, body) = reply(client).await;
        assert_eq!(status, 200);
        let page: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(page["messages"][0]["data"], "extra!", "{body}");
        assert_eq!(page["next"], receipt.cursor().to_string());
    }
    // The publish, and one read for all: the answers come from the subscriptions.
    let answering = scripts().await - before;
    assert!(holding < 5, "{holding} reads of Redis to hold {} polls at the tail", POLLS - 1);
    assert!(answering < 10, "{answering} scripts run on Redis to answer {POLLS} held polls");
}

/// A kept-alive connection to `addr`.
struct Connection {
    stream: TcpStream,
    read: Vec<u8>,
}

impl Connection {
    async fn open(addr: SocketAddr) -> Self {
        Self { stream: TcpStream::connect(addr).await.unwrap(), read: Vec::new() }
    }

    /// Sends a `GET` of `path` with `extra` header lines.
    async fn get(&mut self, path: &str, extra: &str) {
        let request = format!("GET {path} HTTP/1.1\r\nHost: pushpull\r\n{extra}\r\n");
        self.stream.write_all(request.as_bytes()).await.unwrap();
    }

    /// The next response: status, head (lowercase) and body, framed by `Content-Length`.
    async fn response(&mut self, limit: Duration) -> (u16, String, String) {
        let (status, head, body) = self.response_bytes(limit).await;
        (status, head, String::from_utf8(body).unwrap())
    }

    /// The next response, its body as it came.
    async fn response_bytes(&mut self, limit: Duration) -> (u16, String, Vec<u8>) {
        let read = tokio::time::timeout(limit, async {
            loop {
                if let Some(end) = self.read.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8(self.read[..end].to_vec()).unwrap();
                    let head = head.to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|line| line.strip_prefix("content-length: "))
                        .map_or(0, |n| n.trim().parse().unwrap());
                    if self.read.len() >= end + 4 + length {
                        let body = self.read[end + 4..end + 4 + length].to_vec();
                        self.read.drain(..end + 4 + length);
                        return (head, body);
                    }
                }
                let mut bytes = [0u8; 4096];
                let n = self.stream.read(&mut bytes).await.unwrap();
                assert!(n > 0, "the server closed before a whole response");
                self.read.extend_from_slice(&bytes[..n]);
            }
        })
        .await;
        let (head, body) = read.expect("a response in time");
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head, body)
    }
}

/// The one message of `body`, a page, and its `next`.
fn one_message(body: &str) -> (String, String) {
    let page: serde_json::Value = serde_json::from_str(body).unwrap();
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{body}");
    (messages[0]["data"].as_str().unwrap().to_owned(), page["next"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn polls_held_at_a_topics_end_are_answered_by_its_task_and_their_connections_go_on() {
    let (server, running, broker) = start(ServerConfig::default()).await;
    let addr = running.local_addr();
    let topic = Topic::new("news").unwrap();
    let first = broker.publish(&topic, Publication::new("m0")).await.unwrap().cursor();
    let mut connections = Vec::new();
    for _ in 0..20 {
        let mut connection = Connection::open(addr).await;
        connection.get(&format!("/v1/topics/news/messages?after={first}&wait=30"), "").await;
        connections.push(connection);
    }
    until("20 held polls", || server.held_requests() == 20).await;
    let receipt = broker.publish(&topic, Publication::new("m1")).await.unwrap();
    // Seated polls keep their subscriptions (parked): counted, as every held poll is.
    assert_eq!(receipt.subscribers, Some(20), "the topic's task is not counted, its polls are");
    let second = receipt.cursor();
    let mut etag = None;
    for connection in &mut connections {
        let (status, head, body) = connection.response(LIMIT).await;
        assert_eq!(status, 200, "{head}");
        assert!(head.contains("pushpull-wait-ms: 30000"), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(head.contains("cache-control: no-cache"), "{head}");
        assert!(!head.contains("connection: close"), "{head}");
        let tag = head.lines().find(|l| l.starts_with("etag: ")).unwrap().to_owned();
        assert_eq!(etag.get_or_insert_with(|| tag.clone()), &tag, "one page, one tag");
        assert_eq!(one_message(&body), ("m1".to_owned(), second.to_string()));
    }
    // The first poll of the topic answered itself; the others were seated with the topic's
    // task, which the second one started.
    assert_eq!(server.answered_by_topic(), 19);
    assert_eq!(server.held_requests(), 0, "answered polls are no longer held");

    // Each connection's next poll is read, held, and answered by the task: all 20 this time.
    for connection in &mut connections {
        connection.get(&format!("/v1/topics/news/messages?after={second}&wait=30"), "").await;
    }
    until("20 held polls again", || server.held_requests() == 20).await;
    let third = broker.publish(&topic, Publication::new("m2")).await.unwrap().cursor();
    for connection in &mut connections {
        let (status, _, body) = connection.response(LIMIT).await;
        assert_eq!(status, 200);
        assert_eq!(one_message(&body), ("m2".to_owned(), third.to_string()));
    }
    assert_eq!(server.answered_by_topic(), 39);
}

#[tokio::test]
async fn a_poll_answered_by_its_topics_task_that_asked_to_close_is_closed_at_once() {
    let (server, running, broker) = start(ServerConfig::default()).await;
    let addr = running.local_addr();
    let topic = Topic::new("news").unwrap();
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(held_request(addr, "/v1/topics/news/messages?after=latest&wait=30").await);
    }
    until("3 held polls", || server.held_requests() == 3).await;
    broker.publish(&topic, Publication::new("bye")).await.unwrap();
    for client in clients {
        // Read to the end: the connection closes after the answer, not when the wait passes.
        let mut bytes = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            let mut client = client;
            client.read_to_end(&mut bytes).await.unwrap();
        });
        read.await.expect("closed after the answer, long before the 30 s wait");
        let text = String::from_utf8(bytes).unwrap().to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 200 ok\r\n"), "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");
        assert!(text.contains("\"data\":\"bye\""), "{text}");
    }
    assert_eq!(server.answered_by_topic(), 2);
}

#[tokio::test]
async fn a_request_pipelined_behind_a_poll_its_topics_task_answers_is_answered_next() {
    let (server, running, broker) = start(ServerConfig::default()).await;
    let addr = running.local_addr();
    let topic = Topic::new("news").unwrap();
    let mut first = Connection::open(addr).await;
    first.get("/v1/topics/news/messages?after=latest&wait=30", "").await;
    let mut second = Connection::open(addr).await;
    second.get("/v1/topics/news/messages?after=latest&wait=30", "").await;
    until("2 held polls", || server.held_requests() == 2).await;
    // Behind the seated poll, a plain poll of the topic's beginning.
    second.get("/v1/topics/news/messages?after=beginning", "").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    broker.publish(&topic, Publication::new("m1")).await.unwrap();
    let (status, _, body) = second.response(LIMIT).await;
    assert_eq!((status, one_message(&body).0), (200, "m1".to_owned()));
    assert_eq!(server.answered_by_topic(), 1, "the second poll was the task's");
    // Answered next, not when the held poll's 30 s would have passed.
    let (status, head, body) = second.response(Duration::from_secs(10)).await;
    assert_eq!(status, 200);
    assert!(!head.contains("pushpull-wait-ms"), "a plain poll: {head}");
    assert_eq!(one_message(&body).0, "m1");
    let (status, _, _) = first.response(LIMIT).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn seated_polls_whose_wait_passes_get_an_empty_page_and_their_connections_go_on() {
    let config = {
        let mut built = ServerConfig::default();
        built.max_wait = Duration::from_millis(300);
        built
    };
    let (server, running, broker) = start(config).await;
    let addr = running.local_addr();
    let topic = Topic::new("quiet").unwrap();
    let cursor = broker.publish(&topic, Publication::new("old")).await.unwrap().cursor();
    let mut connections = Vec::new();
    for _ in 0..3 {
        let mut connection = Connection::open(addr).await;
        connection.get(&format!("/v1/topics/quiet/messages?after={cursor}&wait=60"), "").await;
        connections.push(connection);
    }
    for connection in &mut connections {
        let (status, head, body) = connection.response(LIMIT).await;
        assert_eq!(status, 200);
        assert!(head.contains("pushpull-wait-ms: 300"), "{head}");
        let page: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(page["messages"].as_array().unwrap().len(), 0);
        assert_eq!(page["next"], cursor.to_string());
    }
    assert_eq!(server.answered_by_topic(), 0);
    assert_eq!(server.held_requests(), 0);
    // The same connections poll on, and a message reaches them all.
    for connection in &mut connections {
        connection.get(&format!("/v1/topics/quiet/messages?after={cursor}&wait=60"), "").await;
    }
    until("3 held polls", || server.held_requests() == 3).await;
    broker.publish(&topic, Publication::new("new")).await.unwrap();
    for connection in &mut connections {
        let (status, _, body) = connection.response(LIMIT).await;
        assert_eq!((status, one_message(&body).0), (200, "new".to_owned()));
    }
    assert_eq!(server.answered_by_topic(), 3, "all seated: the task was running");
}

#[tokio::test]
async fn a_seated_poll_carries_the_routers_cors_headers() {
    let broker = Arc::new(MemoryBroker::new());
    let server = LongpollServer::new(
        broker.clone() as Arc<dyn pushpull_core::Broker>,
        ServerConfig::default(),
    )
    .unwrap();
    let router = server.router().with_cors(pushpull_http::Cors::new(["https://app.example"]));
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let running = pushpull_http::spawn(listener, router, ServeConfig::default()).unwrap();
    let addr = running.local_addr();
    let origin = "Origin: https://app.example\r\n";
    let mut connections = Vec::new();
    for _ in 0..2 {
        let mut connection = Connection::open(addr).await;
        connection.get("/v1/topics/news/messages?after=latest&wait=30", origin).await;
        connections.push(connection);
    }
    until("2 held polls", || server.held_requests() == 2).await;
    broker.publish(&Topic::new("news").unwrap(), Publication::new("m1")).await.unwrap();
    for connection in &mut connections {
        let (status, head, _) = connection.response(LIMIT).await;
        assert_eq!(status, 200);
        assert!(head.contains("access-control-allow-origin: https://app.example"), "{head}");
        assert!(head.contains("vary: origin"), "{head}");
        assert!(head.contains("access-control-expose-headers: "), "{head}");
    }
    assert_eq!(server.answered_by_topic(), 1);
}

#[tokio::test]
async fn with_the_fanout_off_every_poll_answers_itself() {
    let config = {
        let mut built = ServerConfig::default();
        built.fanout = false;
        built
    };
    let (server, running, broker) = start(config).await;
    let addr = running.local_addr();
    let mut connections = Vec::new();
    for _ in 0..3 {
        let mut connection = Connection::open(addr).await;
        connection.get("/v1/topics/news/messages?after=latest&wait=30", "").await;
        connections.push(connection);
    }
    until("3 held polls", || server.held_requests() == 3).await;
    broker.publish(&Topic::new("news").unwrap(), Publication::new("m1")).await.unwrap();
    for connection in &mut connections {
        let (status, _, body) = connection.response(LIMIT).await;
        assert_eq!((status, one_message(&body).0), (200, "m1".to_owned()));
    }
    assert_eq!(server.answered_by_topic(), 0);
}

#[tokio::test]
async fn each_seated_poll_gets_its_own_limit_and_encoding_from_its_topics_task() {
    let (server, running, broker) = start(ServerConfig::default()).await;
    let addr = running.local_addr();
    let topic = Topic::new("news").unwrap();
    let start = broker.publish(&topic, Publication::new("m0")).await.unwrap().cursor();
    let path =
        |limit: usize| format!("/v1/topics/news/messages?after={start}&wait=30&limit={limit}");
    let gzip = "Accept-Encoding: gzip\r\n";
    // The first connection wants the topic's task; the others are seated with it.
    let mut first = Connection::open(addr).await;
    first.get(&path(100), "").await;
    let mut asks = Vec::new();
    for (limit, extra) in [(1, ""), (100, ""), (1, gzip), (100, gzip)] {
        let mut connection = Connection::open(addr).await;
        connection.get(&path(limit), extra).await;
        asks.push((connection, limit, !extra.is_empty()));
    }
    until("5 held polls", || server.held_requests() == 5).await;
    // Long enough to be compressed for the clients that take gzip.
    let payloads: Vec<String> = (1..=3).map(|n| format!("m{n}:{}", "x".repeat(2048))).collect();
    let publications =
        payloads.iter().map(|p| (topic.clone(), Publication::new(p.clone()))).collect();
    broker.publish_many(publications).await.unwrap();
    for (connection, limit, gzip) in &mut asks {
        let (status, head, body) = connection.response_bytes(LIMIT).await;
        assert_eq!(status, 200, "{head}");
        assert!(head.contains("vary: accept-encoding"), "{head}");
        assert_eq!(head.contains("content-encoding: gzip"), *gzip, "{head}");
        assert_eq!(head.contains("etag: w/"), *gzip, "a weak tag when compressed: {head}");
        let json = match gzip {
            true => {
                let mut json = Vec::new();
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut json)
                    .unwrap();
                json
            }
            false => body,
        };
        let page: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let got: Vec<&str> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["data"].as_str().unwrap())
            .collect();
        // From the first new message on, in order, as many as asked for (all three at most:
        // the task answers with what it read together).
        assert!(!got.is_empty() && got.len() <= *limit, "{got:?}");
        assert_eq!(
            got[..],
            payloads[..got.len()].iter().map(String::as_str).collect::<Vec<_>>()[..]
        );
        let last = page["messages"].as_array().unwrap().last().unwrap();
        assert_eq!(page["next"], last["cursor"], "a page's next is its last message's cursor");
    }
    assert_eq!(server.answered_by_topic(), 4);
    let (status, _, _) = first.response_bytes(LIMIT).await;
    assert_eq!(status, 200);
}
