//! pushpull mounted in an axum application: subscribed over SSE and WebSocket through the
//! application, published and fetched through it, wrapped by the application's own layer, and
//! shut down with it while streams and sockets are open.

use std::time::Duration;

use futures::StreamExt;
use pushpull::{ClientConfig, Cursor, Delivery, Publication, Topic};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(20);

/// A raw `GET`; the answer's head and body as text.
async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(LIMIT, stream.read_to_string(&mut answer)).await.unwrap().unwrap();
    answer
}

/// A raw `POST` with no body; the answer's head and body as text.
async fn post(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(LIMIT, stream.read_to_string(&mut answer)).await.unwrap().unwrap();
    answer
}

async fn next_payload(sub: &mut pushpull::Subscription) -> String {
    match tokio::time::timeout(LIMIT, sub.next()).await {
        Ok(Some(Ok(Delivery::Message(m)))) => String::from_utf8(m.payload.to_vec()).unwrap(),
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test]
async fn pushpull_is_served_through_the_application_and_shuts_down_with_it() {
    let broker = pushpull::broker(&pushpull::ServerConfig::default()).unwrap();
    let (app, realtime) = axum_app::app(broker).unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
                realtime.shutdown();
            })
            .await
    });

    // The application's own routes, and its layer on pushpull's answers too.
    assert!(get(addr, "/").await.contains("the application's own page"));
    let health = get(addr, "/realtime/v1/health").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.to_ascii_lowercase().contains("x-served-by: axum-app"), "{health}");
    assert!(health.contains("\"transports\""), "{health}");

    let base = format!("http://{addr}/realtime");
    let topic = Topic::new("news").unwrap();
    let sse = pushpull::connect(&ClientConfig::new("sse", &base)).await.unwrap();
    let ws = pushpull::connect(&ClientConfig::new("ws", &base)).await.unwrap();
    let mut over_sse = sse.subscribe(&topic, Cursor::Latest).await.unwrap();
    let mut over_ws = ws.subscribe(&topic, Cursor::Latest).await.unwrap();
    sse.publish(&topic, Publication::new("first")).await.unwrap();
    ws.publish(&topic, Publication::new("second")).await.unwrap();
    for sub in [&mut over_sse, &mut over_ws] {
        assert_eq!(next_payload(sub).await, "first");
        assert_eq!(next_payload(sub).await, "second");
    }
    let page = sse.fetch(&topic, Cursor::Beginning, 10).await.unwrap();
    assert_eq!(page.messages.len(), 2);

    // The application's own handler publishes through the broker it shares with pushpull.
    let order = Topic::new("orders.42").unwrap();
    let mut shipping = sse.subscribe(&order, Cursor::Latest).await.unwrap();
    let shipped = post(addr, "/api/orders/42/ship").await;
    assert!(shipped.starts_with("HTTP/1.1 200"), "{shipped}");
    assert_eq!(next_payload(&mut shipping).await, "shipped");

    // The application shuts down while a stream and a socket are open: they end, and the
    // shutdown completes instead of waiting for them forever.
    stop.send(()).unwrap();
    let finished = tokio::time::timeout(LIMIT, server).await;
    assert!(finished.is_ok(), "the graceful shutdown was held up by pushpull's streams");
    finished.unwrap().unwrap().unwrap();
}
