//! `auto` opens the push path it is about to use before choosing it, and falls through on a
//! server without that transport, a proxy that refuses WebSocket upgrades, or one that buffers
//! streamed responses; and every transport's `fetch` works whatever subset the server enables.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pushpull::{ClientConfig, Cursor, Publication, ServerConfig, Topic};
use support::{LIMIT, server};
use tokio::net::TcpListener;

fn auto(url: &str) -> ClientConfig {
    ClientConfig::from_toml(&format!(
        "transport = \"auto\"\nurl = \"{url}\"\nprobe_timeout = \"1s\"\n[longpoll]\nwait = \"2s\"\n"
    ))
    .unwrap()
}

/// Publishes, subscribes and fetches over `client`, which must be `transport`.
async fn works_over(client: &dyn pushpull::Client, transport: &str) {
    assert_eq!(client.capabilities().name, transport);
    let topic = Topic::new(format!("auto.{transport}")).unwrap();
    let mut subscription = client.subscribe(&topic, Cursor::Latest).await.unwrap();
    let receipt = client.publish(&topic, Publication::new("hello")).await.unwrap();
    let delivery = tokio::time::timeout(LIMIT, subscription.next()).await.unwrap().unwrap();
    assert_eq!(delivery.unwrap().cursor(), receipt.cursor(), "{transport}");
    let page = client.fetch(&topic, Cursor::Beginning, 10).await.unwrap();
    assert_eq!(page.messages.len(), 1, "{transport}: fetch works");
}

#[tokio::test]
async fn auto_falls_through_transports_the_server_does_not_serve() {
    let cases: [(&[&str], &str); 4] = [
        (&["ws"], "sse"),
        (&["ws", "sse"], "stream"),
        (&["ws", "sse", "stream"], "longpoll"),
        (&["ws", "sse", "stream", "longpoll"], "poll"),
    ];
    for (disabled, expected) in cases {
        let mut config = ServerConfig::default();
        for transport in disabled {
            config.transports.set_enabled(transport, false);
        }
        let server = server(config).await;
        let client = pushpull::connect(&auto(&format!("http://{}", server.local_addr())))
            .await
            .unwrap_or_else(|e| panic!("without {disabled:?}: {e}"));
        works_over(&*client, expected).await;
    }
}

#[tokio::test]
async fn fetch_works_whatever_transports_are_enabled() {
    for only in ["sse", "stream", "ws"] {
        let mut config = ServerConfig::default();
        let transports = &mut config.transports;
        transports.set_enabled("poll", false);
        transports.set_enabled("longpoll", false);
        transports.set_enabled("sse", only == "sse");
        transports.set_enabled("stream", only == "stream");
        transports.set_enabled("ws", only == "ws");
        transports.set_enabled("webhook", false);
        let server = server(config).await;
        let url = format!("http://{}", server.local_addr());
        let client = pushpull::connect(&ClientConfig::new(only, url)).await.unwrap();
        works_over(&*client, only).await;
    }
}

#[tokio::test]
async fn long_polling_a_server_that_cannot_hold_says_so() {
    let mut config = ServerConfig::default();
    config.transports.set_enabled("longpoll", false);
    let server = server(config).await;
    let url = format!("http://{}", server.local_addr());
    let client = pushpull::connect(&ClientConfig::new("longpoll", url)).await.unwrap();
    let topic = Topic::new("cannot-hold").unwrap();
    let error = client.subscribe(&topic, Cursor::Latest).await.expect_err("refused");
    assert_eq!(error.kind(), pushpull::ErrorKind::Unsupported, "{error}");
    assert!(error.message().contains("long polling is not enabled"), "{error}");
    // Fetching needs no holding.
    client.fetch(&topic, Cursor::Beginning, 1).await.unwrap();
}

/// What the proxy in front of the server does to traffic.
#[derive(Clone, Copy, PartialEq)]
enum Proxy {
    /// Answers WebSocket upgrades with 403, as some corporate proxies do; forwards the rest.
    RefusingUpgrades,
    /// Holds every response until its body has ended, as a buffering proxy does.
    Buffering,
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

async fn forward(
    upstream: SocketAddr,
    mode: Proxy,
    request: http::Request<Incoming>,
) -> Result<http::Response<ProxyBody>, Infallible> {
    if mode == Proxy::RefusingUpgrades && request.headers().contains_key(http::header::UPGRADE) {
        let mut refused = http::Response::new(
            Full::new(Bytes::from("upgrades are not allowed")).map_err(|e| match e {}).boxed(),
        );
        *refused.status_mut() = http::StatusCode::FORBIDDEN;
        return Ok(refused);
    }
    let (mut parts, body) = request.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = format!("http://{upstream}{path}").parse().unwrap();
    let client = HttpClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client.request(http::Request::from_parts(parts, Full::new(body))).await;
    let Ok(response) = response else {
        let mut failed =
            http::Response::new(Full::new(Bytes::new()).map_err(|e| match e {}).boxed());
        *failed.status_mut() = http::StatusCode::BAD_GATEWAY;
        return Ok(failed);
    };
    let (parts, body) = response.into_parts();
    let body = match mode {
        Proxy::RefusingUpgrades => body.boxed(),
        Proxy::Buffering => match body.collect().await {
            Ok(collected) => Full::new(collected.to_bytes()).map_err(|e| match e {}).boxed(),
            Err(error) => http_body_util::Empty::new()
                .map_err(move |_| -> hyper::Error { unreachable!("{error}") })
                .boxed(),
        },
    };
    Ok(http::Response::from_parts(parts, body))
}

async fn start_proxy(upstream: SocketAddr, mode: Proxy) -> SocketAddr {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request| forward(upstream, mode, request));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn auto_falls_through_a_proxy_that_refuses_websocket_upgrades() {
    let server = server(ServerConfig::default()).await;
    let proxy = start_proxy(server.local_addr(), Proxy::RefusingUpgrades).await;
    let client = pushpull::connect(&auto(&format!("http://{proxy}"))).await.unwrap();
    works_over(&*client, "sse").await;
}

#[tokio::test]
async fn auto_falls_through_a_proxy_that_buffers_streams() {
    let server = server(ServerConfig::default()).await;
    let proxy = start_proxy(server.local_addr(), Proxy::Buffering).await;
    let client = pushpull::connect(&auto(&format!("http://{proxy}"))).await.unwrap();
    // WebSocket upgrades do not get through a proxy that holds responses; SSE and streaming
    // show nothing until they end; long polling answers each request whole.
    works_over(&*client, "longpoll").await;
}
