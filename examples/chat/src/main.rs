//! Run with: `cargo run -p chat` (or `cargo run -p chat -- sse` for another transport)
//!
//! Serves the embedded broker on a free port; Alice and Bob, each with a client of the chosen
//! transport (WebSocket by default: both directions on one socket), talk in the lobby. The
//! transport is a line of client configuration; the chat code does not change.

use std::time::Duration;

use chat::{Chat, Seen};
use futures::StreamExt;
use pushpull::{ClientConfig, ServerConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let transport = std::env::args().nth(1).unwrap_or_else(|| "ws".into());
    let config = ServerConfig::default();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let server = pushpull::serve_on(listener, &config)?;
    let client_config = ClientConfig::new(&transport, format!("http://{}", server.local_addr()));

    let alice = Chat::new(pushpull::connect(&client_config).await?, "alice");
    let bob = Chat::new(pushpull::connect(&client_config).await?, "bob");
    let mut alice_sees = alice.join("lobby").await?;
    let mut bob_sees = bob.join("lobby").await?;
    alice.say("lobby", "hello, anyone here?").await?;
    bob.say("lobby", &format!("hi alice, over {transport}")).await?;
    for _ in 0..2 {
        for (who, seen) in [("alice", &mut alice_sees), ("bob", &mut bob_sees)] {
            match tokio::time::timeout(Duration::from_secs(10), seen.next()).await? {
                Some(Ok(Seen::Line(line))) => println!("[{who} sees] {}: {}", line.from, line.text),
                Some(Ok(Seen::Missed)) => println!("[{who} sees] (some lines went by)"),
                Some(Err(error)) => return Err(error.into()),
                None => return Ok(()),
            }
        }
    }
    server.shutdown().await;
    Ok(())
}
