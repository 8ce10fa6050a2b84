//! The same chat code over WebSocket and, by configuration alone, over other transports.

use std::time::Duration;

use chat::{Chat, Line, Seen};
use futures::StreamExt;
use pushpull::{ClientConfig, ServerConfig};

async fn next(
    seen: &mut (impl futures::Stream<Item = Result<Seen, pushpull::Error>> + Unpin),
) -> Line {
    match tokio::time::timeout(Duration::from_secs(20), seen.next()).await {
        Ok(Some(Ok(Seen::Line(line)))) => line,
        other => panic!("expected a line, got {other:?}"),
    }
}

#[tokio::test]
async fn two_people_talk_in_a_room_over_any_transport() {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let server = pushpull::serve_on(listener, &ServerConfig::default()).unwrap();
    let url = format!("http://{}", server.local_addr());
    for transport in ["ws", "sse", "stream", "longpoll"] {
        let config = ClientConfig::new(transport, &url);
        let room = format!("room-{transport}");
        let alice = Chat::new(pushpull::connect(&config).await.unwrap(), "alice");
        alice.say(&room, "before anyone came").await.unwrap();
        let bob = Chat::new(pushpull::connect(&config).await.unwrap(), "bob");
        let mut alice_sees = Box::pin(alice.join(&room).await.unwrap());
        let mut bob_sees = Box::pin(bob.join(&room).await.unwrap());
        alice.say(&room, "hello").await.unwrap();
        bob.say(&room, "hi alice").await.unwrap();
        let expected = [("alice", "before anyone came"), ("alice", "hello"), ("bob", "hi alice")];
        for seen in [&mut alice_sees, &mut bob_sees] {
            for (from, text) in expected {
                let line = next(seen).await;
                assert_eq!((line.from.as_str(), line.text.as_str()), (from, text), "{transport}");
            }
        }
    }
}
