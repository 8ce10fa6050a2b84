//! What a load balancer answers while the servers behind it are deployed (503, 502, 429 with
//! `Retry-After`), and what no retry can change (404, 410): every client retries the first and
//! resumes from its cursor with no loss and no duplicate, and stops for good on the second with
//! a typed error that says why.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use pushpull::{Client, ClientConfig, Cursor, Delivery, Publication, Publish, ServerConfig, Topic};
use pushpull_testkit::{Canned, ChaosProxy};
use support::LIMIT;

/// Every transport a client can subscribe with over HTTP or a socket.
const TRANSPORTS: [&str; 5] = ["sse", "stream", "longpoll", "poll", "ws"];

fn client_config(transport: &str, url: &str) -> ClientConfig {
    ClientConfig::from_toml(&format!(
        r#"
        transport = "{transport}"
        url = "{url}"
        [{transport}]
        backoff = {{ initial = "20ms", max = "200ms" }}
        {extra}
        "#,
        extra = match transport {
            "poll" => "poll_interval = \"50ms\"",
            "longpoll" => "wait = \"1s\"",
            _ => "",
        }
    ))
    .unwrap()
}

async fn next_payload(transport: &str, sub: &mut pushpull::Subscription) -> String {
    match tokio::time::timeout(LIMIT, sub.next()).await {
        Ok(Some(Ok(Delivery::Message(m)))) => String::from_utf8(m.payload.to_vec()).unwrap(),
        other => panic!("{transport}: expected a message, got {other:?}"),
    }
}

struct Setup {
    _server: pushpull::RunningServer,
    broker: Arc<dyn Client>,
    proxy: Arc<ChaosProxy>,
}

async fn setup() -> Setup {
    let config = ServerConfig::default();
    let broker = pushpull::broker(&config).unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let server = pushpull::serve_with(listener, broker.clone(), &config).unwrap();
    let proxy = Arc::new(ChaosProxy::start(server.local_addr()).await.unwrap());
    Setup { _server: server, broker, proxy }
}

async fn publish(broker: &Arc<dyn Client>, topic: &Topic, range: std::ops::RangeInclusive<u32>) {
    for n in range {
        broker.publish(topic, Publication::new(format!("m{n}"))).await.unwrap();
    }
}

async fn resumes_through(transport: &str, canned: Canned) {
    let setup = setup().await;
    let topic = Topic::new(format!("outage-{transport}")).unwrap();
    let url = format!("http://{}", setup.proxy.addr());
    let client = pushpull::connect(&client_config(transport, &url)).await.unwrap();
    let mut sub = client.subscribe(&topic, Cursor::Beginning).await.unwrap();
    publish(&setup.broker, &topic, 1..=3).await;
    for n in 1..=3 {
        assert_eq!(next_payload(transport, &mut sub).await, format!("m{n}"));
    }

    // The deploy: every new request is answered by the load balancer, and live connections drop.
    setup.proxy.answer_with(Some(canned));
    setup.proxy.sever();
    publish(&setup.broker, &topic, 4..=6).await;
    // The deploy ends once the client has been turned away twice. Subscriptions only make
    // progress while read, so the reading goes on meanwhile.
    let proxy = setup.proxy.clone();
    let recovery = tokio::spawn(async move {
        while proxy.answered().len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        proxy.answer_with(None);
    });
    for n in 4..=6 {
        assert_eq!(next_payload(transport, &mut sub).await, format!("m{n}"), "{transport}");
    }
    tokio::time::timeout(LIMIT, recovery).await.expect("the client was turned away").unwrap();
    publish(&setup.broker, &topic, 7..=7).await;
    assert_eq!(next_payload(transport, &mut sub).await, "m7", "{transport}: no duplicate");
    if let Some(seconds) = canned.retry_after {
        let answered = setup.proxy.answered();
        for pair in answered.windows(2) {
            assert!(
                pair[1] - pair[0] >= Duration::from_secs(seconds),
                "{transport}: asked again {:?} after a Retry-After of {seconds}s",
                pair[1] - pair[0]
            );
        }
    }
}

#[tokio::test]
async fn every_client_resumes_through_503s_with_no_loss_and_no_duplicate() {
    for transport in TRANSPORTS {
        resumes_through(transport, Canned::status(503)).await;
    }
}

#[tokio::test]
async fn every_client_resumes_through_502s_and_504s() {
    for (transport, status) in [("sse", 502), ("stream", 504), ("ws", 502), ("longpoll", 504)] {
        resumes_through(transport, Canned::status(status)).await;
    }
}

#[tokio::test]
async fn every_client_honours_retry_after_on_429() {
    for transport in TRANSPORTS {
        resumes_through(transport, Canned { status: 429, retry_after: Some(1) }).await;
    }
}

#[tokio::test]
async fn every_client_stops_for_good_on_what_a_retry_cannot_change() {
    for (transport, status) in [("sse", 404), ("stream", 410), ("longpoll", 403), ("poll", 404)]
        .into_iter()
        .chain([("ws", 404)])
    {
        let setup = setup().await;
        let topic = Topic::new("final").unwrap();
        let url = format!("http://{}", setup.proxy.addr());
        let client = pushpull::connect(&client_config(transport, &url)).await.unwrap();
        let mut sub = client.subscribe(&topic, Cursor::Beginning).await.unwrap();
        setup.proxy.answer_with(Some(Canned::status(status)));
        setup.proxy.sever();
        // A message forces the polling clients to ask again.
        publish(&setup.broker, &topic, 1..=1).await;
        let error = loop {
            match tokio::time::timeout(LIMIT, sub.next()).await {
                Ok(Some(Ok(_))) => continue, // delivered before the proxy turned
                Ok(Some(Err(error))) => break error,
                other => panic!("{transport}: expected a final error, got {other:?}"),
            }
        };
        assert!(!error.is_retryable(), "{transport}: {error:?}");
        assert!(error.message().contains(&status.to_string()), "{transport}: says why: {error}");
        assert_eq!(error.transport(), Some(transport), "{error:?}");
        let answered = setup.proxy.answered().len();
        assert!(answered <= 2, "{transport}: asked {answered} times after a final answer");
    }
}
