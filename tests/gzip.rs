//! Pages gzip-compressed for clients that take it (`Accept-Encoding: gzip`), over real sockets:
//! what comes back inflates (with Python's own gzip, and with curl) to the very page an
//! uncompressed request gets; short pages, clients that refuse gzip and a server configured
//! without it get pages as they are; a held long poll is answered compressed too; and
//! pushpull's polling clients ask for it, read it, and can be told not to.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pushpull::{ClientConfig, Cursor, ServerConfig, Topic};
use support::{LIMIT, Reply, get, post, raw, server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A payload of about 300 bytes, much like its neighbours (as events are).
fn event(n: usize) -> String {
    let items: Vec<String> = (0..8)
        .map(|i| format!("{{\"id\":{},\"kind\":\"update\",\"qty\":{i}}}", n * 8 + i))
        .collect();
    format!("[{}]", items.join(","))
}

async fn publish_events(addr: SocketAddr, topic: &str, count: usize) {
    for n in 0..count {
        let reply = post(addr, &format!("/v1/topics/{topic}"), "", event(n).as_bytes()).await;
        assert_eq!(reply.status, 201);
    }
}

async fn get_with(addr: SocketAddr, path: &str, headers: &str) -> Reply {
    raw(addr, &format!("GET {path} HTTP/1.1\r\n{headers}"), b"").await
}

/// `body` inflated by Python's gzip module: a decoder that is not ours.
async fn python_gunzip(body: &[u8]) -> Vec<u8> {
    let script =
        "import gzip, sys; sys.stdout.buffer.write(gzip.decompress(sys.stdin.buffer.read()))";
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (scripts/test installs it)");
    let mut stdin = child.stdin.take().expect("piped");
    stdin.write_all(body).await.unwrap();
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    assert!(output.status.success(), "python's gzip could not read the body");
    output.stdout
}

#[tokio::test]
async fn a_long_page_is_gzipped_for_a_client_that_takes_it_and_inflates_to_the_same_page() {
    let server = server(ServerConfig::default()).await;
    let addr = server.local_addr();
    publish_events(addr, "orders", 20).await;
    let path = "/v1/topics/orders/messages?after=beginning";

    let plain = get(addr, path).await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("content-encoding"), None, "not asked: not compressed");
    assert_eq!(plain.header("vary"), Some("accept-encoding"));
    let strong = plain.header("etag").expect("an ETag").to_owned();
    assert!(strong.starts_with('"'), "only identity possible: a strong ETag, {strong}");
    assert_eq!(plain.json()["messages"].as_array().unwrap().len(), 20);

    let gzipped = get_with(addr, path, "Accept-Encoding: gzip, deflate, br").await;
    assert_eq!(gzipped.status, 200);
    assert_eq!(gzipped.header("content-encoding"), Some("gzip"));
    assert_eq!(gzipped.header("vary"), Some("accept-encoding"));
    assert_eq!(gzipped.header("content-type"), Some("application/json"));
    assert_eq!(
        gzipped.header("etag"),
        Some(format!("W/{strong}").as_str()),
        "weak when compressed"
    );
    let length: usize = gzipped.header("content-length").unwrap().parse().unwrap();
    assert_eq!(length, gzipped.body.len());
    assert!(
        gzipped.body.len() * 4 < plain.body.len(),
        "{} bytes compressed of {}",
        gzipped.body.len(),
        plain.body.len()
    );
    assert_eq!(python_gunzip(&gzipped.body).await, plain.body, "the same page, inflated");

    // The weak tag revalidates: the page has not changed.
    let revalidated =
        get_with(addr, path, &format!("Accept-Encoding: gzip\r\nIf-None-Match: W/{strong}")).await;
    assert_eq!(revalidated.status, 304);
    assert_eq!(revalidated.header("etag"), Some(format!("W/{strong}").as_str()));
    assert_eq!(revalidated.header("vary"), Some("accept-encoding"));
    assert!(revalidated.body.is_empty());

    // A client that refuses gzip, or takes no coding at all, gets the page as it is.
    for refusing in
        ["Accept-Encoding: gzip;q=0", "Accept-Encoding: identity", "Accept-Encoding: br"]
    {
        let reply = get_with(addr, path, refusing).await;
        assert_eq!(reply.header("content-encoding"), None, "{refusing}");
        assert_eq!(reply.body, plain.body, "{refusing}");
    }

    // curl, asking for compressed pages, reads the same page.
    let url = format!("http://{addr}{path}");
    let curl = tokio::process::Command::new("curl")
        .args(["-sS", "--compressed", "-D", "-", &url])
        .output()
        .await
        .expect("curl (scripts/test installs it)");
    assert!(curl.status.success(), "{}", String::from_utf8_lossy(&curl.stderr));
    let reply = support::parse(&curl.stdout);
    assert_eq!(reply.header("content-encoding"), Some("gzip"), "curl asked, and got gzip");
    assert_eq!(reply.body, plain.body, "and inflated it to the same page");
}

#[tokio::test]
async fn short_pages_and_a_server_without_gzip_send_pages_as_they_are() {
    let server = server(ServerConfig::default()).await;
    let addr = server.local_addr();
    publish_events(addr, "small", 1).await;
    let reply =
        get_with(addr, "/v1/topics/small/messages?after=beginning", "Accept-Encoding: gzip").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-encoding"), None, "{} bytes: under 1 KiB", reply.body.len());
    assert!(reply.header("etag").unwrap().starts_with("W/"), "it could have been compressed");
    assert_eq!(reply.json()["messages"][0]["data"], event(0));

    let mut config = ServerConfig::default();
    config.transports.configure::<pushpull::poll::PollServer>(|poll| poll.gzip = false).unwrap();
    let plain_server = support::server(config).await;
    let addr = plain_server.local_addr();
    publish_events(addr, "orders", 20).await;
    let reply =
        get_with(addr, "/v1/topics/orders/messages?after=beginning", "Accept-Encoding: gzip").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-encoding"), None, "gzip = false");
    assert_eq!(reply.header("vary"), None, "nothing varies");
    assert!(reply.header("etag").unwrap().starts_with('"'));
    assert_eq!(reply.json()["messages"].as_array().unwrap().len(), 20);
}

#[tokio::test]
async fn a_held_long_poll_and_a_page_of_many_topics_are_answered_compressed() {
    let server = server(ServerConfig::default()).await;
    let addr = server.local_addr();
    publish_events(addr, "orders", 1).await;
    let first = get(addr, "/v1/topics/orders/messages?after=beginning").await;
    let next = first.json()["next"].as_str().unwrap().to_owned();

    // Held: nothing after `next` yet. Answered when a long message comes.
    let held = tokio::spawn(async move {
        let path = format!("/v1/topics/orders/messages?after={next}&wait=20");
        get_with(addr, &path, "Accept-Encoding: gzip").await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!held.is_finished(), "the poll is held");
    let long = event(1).repeat(8);
    assert_eq!(post(addr, "/v1/topics/orders", "", long.as_bytes()).await.status, 201);
    let reply = tokio::time::timeout(LIMIT, held).await.expect("answered").unwrap();
    assert_eq!(reply.status, 200);
    assert!(reply.header("pushpull-wait-ms").is_some(), "it was held");
    assert_eq!(reply.header("content-encoding"), Some("gzip"));
    let page: serde_json::Value =
        serde_json::from_slice(&python_gunzip(&reply.body).await).unwrap();
    assert_eq!(page["messages"][0]["data"], long);

    publish_events(addr, "invoices", 10).await;
    let path = "/v1/messages?topic=orders&topic=invoices&after=beginning";
    let plain = get(addr, path).await;
    let gzipped = get_with(addr, path, "Accept-Encoding: gzip").await;
    assert_eq!(gzipped.status, 200);
    assert_eq!(gzipped.header("content-encoding"), Some("gzip"));
    assert_eq!(gzipped.header("vary"), Some("accept-encoding"));
    assert_eq!(python_gunzip(&gzipped.body).await, plain.body);
    assert_eq!(plain.json()["messages"].as_array().unwrap().len(), 12);
}

/// A loopback relay to `upstream` that keeps what the server sends back.
async fn recording_relay(upstream: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let record = Arc::new(Mutex::new(Vec::new()));
    let kept = record.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else { return };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                });
                let mut buffer = vec![0u8; 16 * 1024];
                while let Ok(n) = server_read.read(&mut buffer).await {
                    if n == 0 || client_write.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                    kept.lock().unwrap().extend_from_slice(&buffer[..n]);
                }
                up.abort();
            });
        }
    });
    (addr, record)
}

#[tokio::test]
async fn the_polling_clients_ask_for_gzip_read_it_and_can_be_told_not_to() {
    let server = server(ServerConfig::default()).await;
    let addr = server.local_addr();
    publish_events(addr, "orders", 30).await;
    let topic = Topic::new("orders").unwrap();
    for transport in ["poll", "longpoll"] {
        for gzip in [true, false] {
            let (relay, record) = recording_relay(addr).await;
            let mut config = ClientConfig::new(transport, format!("http://{relay}"));
            let mut settings = toml::Table::new();
            settings.insert("gzip".into(), gzip.into());
            config.settings.insert(transport.into(), settings);
            let client = pushpull::connect(&config).await.unwrap();
            let page = client.fetch(&topic, Cursor::Beginning, 100).await.unwrap();
            let texts: Vec<String> =
                page.messages.iter().map(|m| m.text().unwrap().to_owned()).collect();
            assert_eq!(texts, (0..30).map(event).collect::<Vec<_>>(), "{transport}, gzip {gzip}");

            // Its subscription reads compressed pages as well.
            let mut subscription = client.subscribe(&topic, Cursor::Beginning).await.unwrap();
            for n in 0..30 {
                let delivery =
                    tokio::time::timeout(LIMIT, futures::StreamExt::next(&mut subscription))
                        .await
                        .expect("in time")
                        .expect("open")
                        .unwrap();
                assert_eq!(delivery.as_message().unwrap().text(), Some(event(n).as_str()));
            }
            drop(subscription);
            let seen = String::from_utf8_lossy(&record.lock().unwrap()).to_ascii_lowercase();
            assert_eq!(seen.contains("content-encoding: gzip"), gzip, "{transport}, gzip {gzip}");
        }
    }
}
