//! Run with: `cargo run -p ticker`
//!
//! A server on the memory broker publishes a stock price; a client, configured only by a
//! `ClientConfig`, follows it over the network and also pulls the history. Change `transport`
//! in the config and nothing else changes. It stops by itself after ten ticks.

use futures::StreamExt;
use pushpull::{ClientConfig, Cursor, Delivery, Publication, Publish, ServerConfig, Topic};

const TICKS: usize = 10;

#[tokio::main]
async fn main() -> Result<(), pushpull::Error> {
    // The server: the embedded broker behind every enabled transport, on a free port.
    let server_config = ServerConfig::from_toml(
        "listen = \"127.0.0.1:0\"\n[transports.poll]\npoll_interval = \"100ms\"",
    )?;
    let broker = pushpull::broker(&server_config)?;
    let listener = tokio::net::TcpListener::bind(server_config.listen).await.expect("bind");
    let server = pushpull::serve_with(listener, broker.clone(), &server_config)?;
    let url = format!("http://{}", server.local_addr());

    // The client: the transport is configuration.
    let config = ClientConfig::from_toml(&format!("transport = \"poll\"\nurl = \"{url}\""))?;
    let client = pushpull::connect(&config).await?;
    let ticker = Topic::new("ticker.ACME")?;
    let mut prices = client.subscribe(&ticker, Cursor::Latest).await?;

    // The publisher side uses the broker in-process: the same `Publish` trait.
    let publisher = tokio::spawn({
        let ticker = ticker.clone();
        async move {
            let mut price = 100.0_f64;
            for step in 0..TICKS {
                price += if step % 3 == 0 { -0.35 } else { 0.5 };
                let publication = Publication::new(format!("{price:.2}")).event("price");
                broker.publish(&ticker, publication).await?;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Ok::<_, pushpull::Error>(())
        }
    });

    let mut seen = 0;
    while seen < TICKS {
        match prices.next().await.expect("the subscription goes on")? {
            Delivery::Message(tick) => {
                seen += 1;
                println!(
                    "ACME {} (offset {})",
                    String::from_utf8_lossy(&tick.payload),
                    tick.offset
                );
            }
            Delivery::Gap(gap) => println!("missed {:?} ({:?})", gap.missed, gap.reason),
        }
    }
    publisher.await.expect("publisher")?;

    // Pull the history as one page.
    let history = client.fetch(&ticker, Cursor::Beginning, 100).await?;
    println!("history holds {} prices, next cursor {}", history.messages.len(), history.next);
    server.shutdown().await;
    Ok(())
}
