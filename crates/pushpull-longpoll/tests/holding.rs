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
    assert_eq!(broker.subscriber_count(), 1000, "they wait on one shared wake-up");

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
