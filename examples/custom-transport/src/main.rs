//! Run with: `cargo run -p custom-transport`
//!
//! Serves a memory broker over the line protocol on a free port, then picks the transport by
//! name from a client configuration, as an application would, publishes and follows a topic.

use std::sync::Arc;

use custom_transport::{LineClient, LineServer};
use futures::StreamExt;
use pushpull_core::{Client, Cursor, MemoryBroker, Publication, Publish, Subscribe, Topic};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker: Arc<dyn Client> = Arc::new(MemoryBroker::new());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let server = LineServer::spawn(listener, broker)?;
    let url = format!("tcp://{}", server.local_addr());
    println!("serving the line protocol on {url}");

    let client = LineClient::new(custom_transport::LineConfig { url, ..Default::default() })?;
    let topic = Topic::new("greetings")?;
    let mut greetings = client.subscribe(&topic, Cursor::Beginning).await?;
    for word in ["hello", "bonjour", "hallo"] {
        client.publish(&topic, Publication::new(word)).await?;
    }
    for _ in 0..3 {
        if let Some(delivery) = greetings.next().await {
            let delivery = delivery?;
            let message = delivery.as_message().expect("no gap here");
            println!("{} {}", message.cursor(), String::from_utf8_lossy(&message.payload));
        }
    }
    Ok(())
}
