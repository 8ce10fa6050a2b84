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

/// A WebSocket server over `broker` on a free port.
async fn serve(
    broker: std::sync::Arc<pushpull_core::MemoryBroker>,
) -> pushpull_http::RunningServer {
    let server = pushpull_ws::WsServer::new(
        broker as std::sync::Arc<dyn pushpull_core::Broker>,
        Default::default(),
    )
    .unwrap();
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    pushpull_http::spawn(listener, server.router(), Default::default()).unwrap()
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

    let config = {
        let mut built = pushpull_ws::ClientConfig::new(url);
        built.ping_interval = Duration::from_millis(50);
        built.idle_timeout = Duration::from_millis(300);
        built
    };
    let client = pushpull_ws::WsClient::new(config).unwrap();
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
    use pushpull_core::{Fetch, MemoryBroker, Publication, Publish};
    use std::sync::Arc;

    let broker = Arc::new(MemoryBroker::new());
    let running = serve(broker.clone()).await;
    let config = {
        let mut built = pushpull_ws::ClientConfig::new(format!("http://{}", running.local_addr()));
        built.subscription_buffer = 4;
        built
    };
    let client = pushpull_ws::WsClient::new(config).unwrap();
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

/// A scripted server pushing message `n` of topic `t` in epoch `E`.
fn pushed(epoch: Epoch, n: u64) -> Message {
    let cursor = Cursor::After(epoch, Offset(n)).to_string();
    let frame = json!({"op":"message","topic":"t","cursor":cursor,"offset":n,"timestamp":0,"data":format!("m{n}")});
    Message::Text(frame.to_string().into())
}

#[tokio::test]
async fn frames_of_an_earlier_subscription_never_skip_messages() {
    use tokio::sync::oneshot;

    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let epoch = Epoch::from_u64(0xe);
    let at = move |n: u64| Cursor::After(epoch, Offset(n)).to_string();
    let (paused_tx, paused) = oneshot::channel();
    let (read_tx, read) = oneshot::channel::<()>();

    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut socket = accept(stream).await;
        let subscribe = request(&mut socket).await;
        let reply = json!({"op":"subscribed","id":subscribe["id"],"topic":"t","cursor":at(0)});
        socket.send(Message::Text(reply.to_string().into())).await.unwrap();
        for n in 1..=3 {
            socket.send(pushed(epoch, n)).await.unwrap();
        }
        // The client's buffer holds two: it pauses the topic.
        let pause = request(&mut socket).await;
        assert_eq!(pause["op"], "unsubscribe", "{pause}");
        paused_tx.send(()).unwrap();
        // Once the application has read, it resumes from its cursor...
        let resume = request(&mut socket).await;
        assert_eq!(
            (resume["op"].as_str(), resume["after"].as_str()),
            (Some("subscribe"), Some(&*at(2)))
        );
        // ...while frames of the old subscription are still on their way.
        for n in 4..=5 {
            socket.send(pushed(epoch, n)).await.unwrap();
        }
        let reply = json!({"op":"subscribed","id":resume["id"],"topic":"t","cursor":at(2)});
        socket.send(Message::Text(reply.to_string().into())).await.unwrap();
        for n in 3..=4 {
            socket.send(pushed(epoch, n)).await.unwrap();
        }
        read.await.unwrap();
        // A delivery that skips one (5) makes the client read again from its cursor.
        socket.send(pushed(epoch, 6)).await.unwrap();
        let unsubscribe = request(&mut socket).await;
        assert_eq!(unsubscribe["op"], "unsubscribe", "{unsubscribe}");
        let again = request(&mut socket).await;
        assert_eq!(
            (again["op"].as_str(), again["after"].as_str()),
            (Some("subscribe"), Some(&*at(4)))
        );
        let reply = json!({"op":"subscribed","id":again["id"],"topic":"t","cursor":at(4)});
        socket.send(Message::Text(reply.to_string().into())).await.unwrap();
        for n in 5..=6 {
            socket.send(pushed(epoch, n)).await.unwrap();
        }
        socket
    });

    let config = {
        let mut built = pushpull_ws::ClientConfig::new(url);
        built.subscription_buffer = 2;
        built
    };
    let client = pushpull_ws::WsClient::new(config).unwrap();
    let mut subscription =
        client.subscribe(&Topic::new("t").unwrap(), Cursor::Beginning).await.unwrap();
    tokio::time::timeout(LIMIT, paused).await.expect("the client paused").unwrap();
    let mut got = Vec::new();
    let mut read_tx = Some(read_tx);
    for n in 1..=6 {
        let delivery = tokio::time::timeout(LIMIT, subscription.next()).await.unwrap().unwrap();
        got.push(delivery.unwrap().as_message().unwrap().offset.0);
        if n == 4 {
            read_tx.take().unwrap().send(()).unwrap();
        }
    }
    assert_eq!(got, [1, 2, 3, 4, 5, 6], "every message once, in order");
    let _socket = tokio::time::timeout(LIMIT, server).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_resubscribe_refused_for_a_while_is_tried_again_not_ended() {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let epoch = Epoch::from_u64(0xb);
    let at = move |n: u64| Cursor::After(epoch, Offset(n)).to_string();

    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut first = accept(stream).await;
        let subscribe = request(&mut first).await;
        let reply = json!({"op":"subscribed","id":subscribe["id"],"topic":"t","cursor":at(0)});
        first.send(Message::Text(reply.to_string().into())).await.unwrap();
        first.send(pushed(epoch, 1)).await.unwrap();
        drop(first); // the connection breaks
        let (stream, _) = listener.accept().await.unwrap();
        let mut second = accept(stream).await;
        // The server's broker is still loading: the resubscribe is refused, twice.
        for _ in 0..2 {
            let again = request(&mut second).await;
            assert_eq!(again["op"], "subscribe", "{again}");
            assert_eq!(again["after"], at(1), "from where it stood: {again}");
            let refused =
                json!({"op":"error","id":again["id"],"kind":"backend","message":"loading"});
            second.send(Message::Text(refused.to_string().into())).await.unwrap();
        }
        let again = request(&mut second).await;
        let reply = json!({"op":"subscribed","id":again["id"],"topic":"t","cursor":at(1)});
        second.send(Message::Text(reply.to_string().into())).await.unwrap();
        second.send(pushed(epoch, 2)).await.unwrap();
        second
    });

    let config = {
        let mut built = pushpull_ws::ClientConfig::new(url);
        built.backoff =
            pushpull_core::Backoff::new(Duration::from_millis(10), Duration::from_millis(50));
        built
    };
    let client = pushpull_ws::WsClient::new(config).unwrap();
    let mut subscription =
        client.subscribe(&Topic::new("t").unwrap(), Cursor::Beginning).await.unwrap();
    for n in 1..=2u64 {
        let delivery = tokio::time::timeout(LIMIT, subscription.next()).await.unwrap().unwrap();
        assert_eq!(delivery.unwrap().as_message().unwrap().offset.0, n, "no end, no loss");
    }
    let _socket = tokio::time::timeout(LIMIT, server).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_subscribe_nobody_answers_is_taken_back_when_it_times_out() {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    // A server that reads every request and answers none.
    let (frames, mut heard) = tokio::sync::mpsc::unbounded_channel::<Value>();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut socket = accept(stream).await;
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Text(text) = message {
                let _ = frames.send(serde_json::from_str(&text).unwrap());
            }
        }
    });
    let config = {
        let mut built = pushpull_ws::ClientConfig::new(url);
        built.request_timeout = Duration::from_millis(200);
        built
    };
    let client = pushpull_ws::WsClient::new(config).unwrap();
    let topic = Topic::new("t").unwrap();
    let Err(error) = client.subscribe(&topic, Cursor::Beginning).await else {
        panic!("a subscribe nobody answers cannot succeed");
    };
    assert!(error.is_timeout(), "{error:?}");
    // Every attempt was taken back before the next: none was left behind in the client, so
    // each went out as the topic's first (unnamed) subscription, and the server was told.
    let mut subscribes = 0;
    loop {
        let frame = tokio::time::timeout(LIMIT, heard.recv()).await.unwrap().unwrap();
        match frame["op"].as_str().unwrap() {
            "subscribe" => {
                assert!(frame.get("sub").is_none(), "an attempt was left behind: {frame}");
                subscribes += 1;
            }
            "unsubscribe" => {
                assert_eq!(frame["topic"], "t");
                if subscribes == 4 {
                    break;
                }
            }
            other => panic!("unexpected {other}: {frame}"),
        }
    }
}

/// A batch larger than one request may carry goes as several `publish_many` requests on the
/// socket: all stored, in order, none twice; the socket is never closed for a frame too large.
#[tokio::test]
async fn a_large_batch_is_split_into_requests_the_server_accepts() {
    use pushpull_core::{Fetch, MemoryBroker, MemoryConfig, Publication, Publish};
    use std::sync::Arc;

    let mut config = MemoryConfig::default();
    config.max_payload = 256 * 1024;
    let broker = Arc::new(MemoryBroker::with_config(config).unwrap());
    let running = serve(broker.clone()).await;
    let client = pushpull_ws::WsClient::new(pushpull_ws::ClientConfig::new(format!(
        "http://{}",
        running.local_addr()
    )))
    .unwrap();
    let topic = Topic::new("big").unwrap();
    // Eight payloads of half the limit, as bytes (base64 in the batch): far over one frame.
    let batch: Vec<(Topic, Publication)> =
        (0..8u8).map(|n| (topic.clone(), Publication::new(vec![0xff - n; 120 * 1024]))).collect();
    let answers = tokio::time::timeout(LIMIT, client.publish_many(batch)).await.unwrap().unwrap();
    let offsets: Vec<u64> = answers.iter().map(|a| a.as_ref().unwrap().offset.0).collect();
    assert_eq!(offsets, (1..=8).collect::<Vec<_>>());
    let page = broker.fetch(&topic, Cursor::Beginning, 100).await.unwrap();
    assert_eq!(page.messages.len(), 8);
    assert!(page.messages.iter().enumerate().all(|(n, m)| m.payload[0] == 0xff - n as u8));
}
