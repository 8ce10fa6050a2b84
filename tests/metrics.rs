//! `GET /metrics`: a Prometheus scrape whose values move with what the server does.
//!
//! One test in its own binary: the recorder is the process's, so nothing else here may count.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::StreamExt;
use pushpull::{Client, Cursor, Delivery, Publication, ServerConfig, Topic};
use support::{LIMIT, get, server};

/// Every sample of a scrape, keyed by name and labels as written (`name{a="b"}`).
async fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let reply = get(addr, "/metrics").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    let text = String::from_utf8(reply.body).expect("UTF-8");
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (key, value) = line.rsplit_once(' ').expect("a sample is `key value`");
            (key.to_owned(), value.parse().unwrap_or_else(|_| panic!("a number in {line:?}")))
        })
        .collect()
}

fn value(samples: &HashMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or(0.0)
}

async fn client(transport: &str, addr: SocketAddr) -> Arc<dyn Client> {
    let config = pushpull::ClientConfig::from_toml(&format!(
        "transport = \"{transport}\"\nurl = \"http://{addr}\"\n"
    ))
    .expect("client config");
    pushpull::connect(&config).await.expect("client")
}

async fn next(subscription: &mut pushpull::Subscription) -> Delivery {
    tokio::time::timeout(LIMIT, subscription.next())
        .await
        .expect("a delivery in time")
        .expect("open")
        .expect("a delivery")
}

#[tokio::test]
async fn metrics_count_publishes_deliveries_gaps_and_open_subscriptions() {
    let config = ServerConfig::from_toml("[broker.retention]\nmax_messages = 5\n").unwrap();
    let server = server(config).await;
    let addr = server.local_addr();
    let before = scrape(addr).await;
    assert_eq!(value(&before, "pushpull_connections{transport=\"sse\"}"), 0.0);

    let topic = Topic::new("metrics.ticker").unwrap();
    let (sse, ws, poll) =
        (client("sse", addr).await, client("ws", addr).await, client("poll", addr).await);
    let mut over_sse = sse.subscribe(&topic, Cursor::Latest).await.unwrap();
    let mut over_ws = ws.subscribe(&topic, Cursor::Latest).await.unwrap();
    for n in 0..3 {
        sse.publish(&topic, Publication::new(format!("price {n}"))).await.unwrap();
    }
    ws.publish(&topic, Publication::new("price 3")).await.unwrap();
    for _ in 0..4 {
        next(&mut over_sse).await;
        next(&mut over_ws).await;
    }
    let page = poll.fetch(&topic, Cursor::Beginning, 10).await.unwrap();
    assert_eq!(page.messages.len(), 4);

    let during = scrape(addr).await;
    let moved = |key: &str| value(&during, key) - value(&before, key);
    assert_eq!(moved("pushpull_messages_published_total{transport=\"http\"}"), 3.0);
    assert_eq!(moved("pushpull_messages_published_total{transport=\"ws\"}"), 1.0);
    assert_eq!(moved("pushpull_publish_duration_seconds_count"), 4.0);
    assert_eq!(moved("pushpull_deliveries_total{transport=\"sse\"}"), 4.0);
    assert_eq!(moved("pushpull_deliveries_total{transport=\"ws\"}"), 4.0);
    assert_eq!(moved("pushpull_deliveries_total{transport=\"poll\"}"), 4.0);
    for transport in ["sse", "ws", "poll"] {
        let bytes = moved(&format!("pushpull_delivered_bytes_total{{transport=\"{transport}\"}}"));
        assert!(bytes >= 4.0 * "price 0".len() as f64, "{transport}: {bytes} bytes");
        let lags =
            moved(&format!("pushpull_fanout_lag_seconds_count{{transport=\"{transport}\"}}"));
        assert_eq!(lags, 4.0, "{transport}: one lag sample per delivery");
    }
    assert_eq!(value(&during, "pushpull_connections{transport=\"sse\"}"), 1.0);
    assert_eq!(value(&during, "pushpull_connections{transport=\"ws\"}"), 1.0);
    assert_eq!(value(&during, "pushpull_subscriptions{transport=\"ws\"}"), 1.0);
    assert!(value(&during, "pushpull_http_connections") >= 2.0);
    assert!(moved("pushpull_http_requests_total") >= 6.0);

    // A reader behind retention gets a gap, counted by reason.
    let receipt = poll.publish(&topic, Publication::new("price 4")).await.unwrap();
    for n in 5..12 {
        poll.publish(&topic, Publication::new(format!("price {n}"))).await.unwrap();
    }
    let behind = poll.fetch(&topic, receipt.cursor(), 10).await.unwrap();
    assert!(behind.gap.is_some());
    let after = scrape(addr).await;
    let gaps = value(&after, "pushpull_gaps_total{transport=\"poll\",reason=\"retention\"}")
        - value(&before, "pushpull_gaps_total{transport=\"poll\",reason=\"retention\"}");
    assert_eq!(gaps, 1.0);

    // Closed subscriptions leave the gauges.
    drop((over_sse, over_ws, sse, ws));
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let now = scrape(addr).await;
        let open = value(&now, "pushpull_connections{transport=\"sse\"}")
            + value(&now, "pushpull_connections{transport=\"ws\"}");
        if open == 0.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{open} still open");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
