//! The bounded soak under faults, short: subscribers over every transport (webhooks included)
//! follow several topics through a proxy that kills, refuses, delays and answers 503 at random
//! while publishers write concurrently. Every subscriber must end with every message in order,
//! or exact gaps, and no duplicate. `pushpull bench soak --minutes N` is the long run.

mod support;

use std::sync::Arc;
use std::time::Duration;

use pushpull::{ClientConfig, ServerConfig};
use pushpull_testkit::ChaosProxy;
use pushpull_testkit::soak::{SoakConfig, soak};

/// The client settings of the soak: quick retries, so catching up after the faults is quick.
fn client(transport: &str, url: &str) -> ClientConfig {
    let extra = match transport {
        "poll" => "poll_interval = \"100ms\"\nbackoff = { initial = \"20ms\", max = \"500ms\" }",
        "webhook" => "check_interval = \"500ms\"",
        _ => "backoff = { initial = \"20ms\", max = \"500ms\" }",
    };
    ClientConfig::from_toml(&format!(
        "transport = \"{transport}\"\nurl = \"{url}\"\n[{transport}]\n{extra}\n"
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_survives_faults_without_loss_or_duplicate() {
    let mut config = ServerConfig::default();
    config.transports.webhook.server.allow_loopback = true;
    config.transports.webhook.server.schedule =
        vec![Duration::ZERO, Duration::from_millis(50), Duration::from_millis(200)];
    let broker = pushpull::broker(&config).unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let server = pushpull::serve_with(listener, broker.clone(), &config).unwrap();
    let proxy = Arc::new(ChaosProxy::start(server.local_addr()).await.unwrap());
    let url = format!("http://{}", proxy.addr());

    let mut subscribers = Vec::new();
    for transport in ["sse", "stream", "longpoll", "poll", "ws", "webhook"] {
        let client = pushpull::connect(&client(transport, &url)).await.unwrap();
        subscribers.push((transport.to_owned(), client));
    }
    let config = SoakConfig { duration: Duration::from_secs(25), ..SoakConfig::default() };
    let report = soak(proxy, broker, subscribers, &config).await;
    eprintln!("{report:#?}");
    assert!(report.messages > 100, "the publishers ran: {report:?}");
    assert!(report.kills + report.refusals + report.unavailable + report.delays > 10);
    for (name, [deliveries, ..]) in &report.per_subscriber {
        assert!(*deliveries > 0, "{name} delivered nothing");
    }
    assert!(report.is_clean(), "loss, duplicate or an ended subscription: {report:#?}");
}
