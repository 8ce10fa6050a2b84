//! The client's side of liveness: a server that goes silent is left, and the subscription is
//! taken up again on a new socket from where it stood.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pushpull_core::{Cursor, Epoch, Offset, Subscribe, Topic};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

const LIMIT: Duration = Duration::from_secs(30);

/// Accepts a WebSocket handshake, echoing the `pushpull.v1` subprotocol as the real server does.
// The callback's error type is tungstenite's, large by its design.
#[allow(clippy::result_large_err)]
async fn accept(stream: tokio::net::TcpStream) -> WebSocketStream<tokio::net::TcpStream> {
    let echo = |_: &Request, mut response: Response| {
        response.headers_mut().insert("sec-websocket-protocol", "pushpull.v1".parse().unwrap());
        Ok(response)
    };
    tokio_tungstenite::accept_hdr_async(stream, echo).await.unwrap()
}

/// Reads the next text frame as JSON.
async fn request<S>(socket: &mut S) -> Value
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(LIMIT, socket.next()).await.unwrap().unwrap().unwrap() {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            _ => continue,
        }
    }
}

#[tokio::test]
async fn a_silent_server_is_left_and_the_subscription_resumes_elsewhere() {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let start = Cursor::After(Epoch::from_u64(0xabc), Offset(41));

    let server = tokio::spawn(async move {
        // First socket: answer the subscribe, then go silent (read nothing, so no pongs).
        let (stream, _) = listener.accept().await.unwrap();
        let mut first = accept(stream).await;
        let subscribe = request(&mut first).await;
        let reply =
            json!({"op":"subscribed","id":subscribe["id"],"topic":"t","cursor":start.to_string()});
        first.send(Message::Text(reply.to_string().into())).await.unwrap();
        // Second socket: the client came back on its own.
        let (stream, _) = listener.accept().await.unwrap();
        let mut second = accept(stream).await;
        let again = request(&mut second).await;
        drop(first);
        again
    });

    let config = pushpull_ws::ClientConfig {
        ping_interval: Duration::from_millis(50),
        idle_timeout: Duration::from_millis(300),
        ..pushpull_ws::ClientConfig::new(url)
    };
    let client = pushpull_ws::Client::new(config).unwrap();
    let subscription =
        client.subscribe(&Topic::new("t").unwrap(), Cursor::Beginning).await.unwrap();
    assert_eq!(subscription.cursor(), start);

    let again = tokio::time::timeout(LIMIT, server).await.expect("the client reconnected").unwrap();
    assert_eq!(again["op"], "subscribe");
    assert_eq!(again["topic"], "t");
    assert_eq!(again["after"], start.to_string(), "resubscribed from where it stood");
    drop(subscription);
}

#[tokio::test]
async fn a_subscription_nobody_reads_does_not_stall_the_socket() {
    use pushpull_core::{Client, Fetch, MemoryBroker, Publication, Publish};
    use std::sync::Arc;

    let broker = Arc::new(MemoryBroker::new());
    let server =
        pushpull_ws::Server::new(broker.clone() as Arc<dyn Client>, Default::default()).unwrap();
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let running = pushpull_http::spawn(listener, server.router(), Default::default()).unwrap();
    let config = pushpull_ws::ClientConfig {
        subscription_buffer: 4,
        ..pushpull_ws::ClientConfig::new(format!("http://{}", running.local_addr()))
    };
    let client = pushpull_ws::Client::new(config).unwrap();
    let slow = Topic::new("slow").unwrap();
    let mut unread = client.subscribe(&slow, Cursor::Beginning).await.unwrap();
    for n in 0..50 {
        broker.publish(&slow, Publication::new(format!("m{n}"))).await.unwrap();
    }
    // While that subscription's buffer is full, the same socket still answers.
    let other = Topic::new("other").unwrap();
    broker.publish(&other, Publication::new("x")).await.unwrap();
    let page = tokio::time::timeout(LIMIT, client.fetch(&other, Cursor::Beginning, 10))
        .await
        .expect("fetch answered while a subscription is unread")
        .unwrap();
    assert_eq!(page.messages.len(), 1);
    // And the unread subscription loses nothing once it is read.
    for n in 0..50 {
        let delivery = tokio::time::timeout(LIMIT, unread.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(delivery.as_message().unwrap().payload, format!("m{n}"));
    }
}
