//! Run with: `cargo run -p notifications`
//!
//! A shop serves pushpull with webhooks on and publishes an order event for each sale. The
//! notifier is another process (this binary again, as `notifications receive URL COUNT`): it
//! listens on a port of its own, registers it as a webhook endpoint for `orders`, and prints
//! each order it is called with — every delivery signed (Standard Webhooks) and checked, repeats
//! dropped, none lost — then unregisters and exits. The shop waits for it and prints what it
//! printed.

use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use pushpull::{ClientConfig, Cursor, Delivery, Publication, ServerConfig, Topic};
use tokio::io::{AsyncBufReadExt, BufReader};

const ORDERS: [(&str, &str, u32); 3] =
    [("1001", "a kettle", 39), ("1002", "two mugs", 18), ("1003", "a teapot", 45)];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [mode, url, count] if mode == "receive" => receive(url, count.parse()?).await,
        [] => shop().await,
        _ => Err("usage: notifications [receive URL COUNT]".into()),
    }
}

/// The shop: a server with webhooks, a notifier process, and three sales.
async fn shop() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = ServerConfig::default();
    // The notifier runs on this machine: let webhooks call loopback addresses (off by default,
    // so that a registered URL cannot reach services behind the server).
    config
        .transports
        .configure::<pushpull::webhook::WebhookServer>(|c| c.allow_loopback = true)
        .unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let server = pushpull::serve_on(listener, &config)?;
    let url = format!("http://{}", server.local_addr());

    let mut notifier = tokio::process::Command::new(std::env::current_exe()?)
        .args(["receive", &url, &ORDERS.len().to_string()])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(notifier.stdout.take().expect("piped")).lines();
    // The notifier says when its endpoint is registered; sales before that would still reach
    // it (it subscribes from the beginning), but the story reads better in order.
    let ready = lines.next_line().await?.unwrap_or_default();
    println!("[shop] {ready}");

    let shop = pushpull::connect(&ClientConfig::new("poll", &url)).await?;
    let orders = Topic::new("orders")?;
    for (id, what, euros) in ORDERS {
        let body = format!("{{\"order\":\"{id}\",\"item\":\"{what}\",\"total_eur\":{euros}}}");
        let publication =
            Publication::new(body).event("order.paid").content_type("application/json");
        let receipt = shop.publish(&orders, publication).await?;
        println!("[shop] sold {what} (order {id}, offset {})", receipt.offset);
    }
    let printed = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            println!("[notifier] {line}");
        }
        notifier.wait().await
    })
    .await??;
    if !printed.success() {
        return Err(format!("the notifier failed: {printed}").into());
    }
    server.shutdown().await;
    Ok(())
}

/// The notifier: receives `count` orders by webhook, then unregisters and exits.
async fn receive(url: &str, count: usize) -> Result<(), Box<dyn std::error::Error>> {
    // The receiver listens on a free loopback port; the server is told its address.
    let config = ClientConfig::new("webhook", url).set("webhook", "listen", "127.0.0.1:0");
    let client = pushpull::connect(&config).await?;
    let mut orders = client.subscribe(&Topic::new("orders")?, Cursor::Beginning).await?;
    println!("notifier registered, waiting for {count} orders");
    let mut seen = 0;
    while seen < count {
        match tokio::time::timeout(Duration::from_secs(20), orders.next()).await? {
            Some(Ok(Delivery::Message(message))) => {
                seen += 1;
                let event = message.event.as_deref().unwrap_or("message");
                let body = String::from_utf8_lossy(&message.payload);
                println!("{event} #{}: {body}", message.offset);
            }
            Some(Ok(Delivery::Gap(gap))) => println!("missed {:?} ({:?})", gap.missed, gap.reason),
            Some(Err(error)) => return Err(error.into()),
            None => return Err("the subscription ended".into()),
        }
    }
    // Dropping the subscription deletes its endpoint on the server.
    drop(orders);
    Ok(())
}
