//! `pushpull bench soak`: the fault soak of `pushpull_chaos::soak`, as long as asked, against a
//! server in this process on 127.0.0.1 reached through a fault-injecting loopback proxy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pushpull::{ClientConfig, Error, ErrorKind, ServerConfig};
use pushpull_chaos::ChaosProxy;
use pushpull_chaos::soak::{SoakConfig, soak};

/// The transports soaked, webhooks included.
const TRANSPORTS: [&str; 6] = ["sse", "stream", "longpoll", "poll", "ws", "webhook"];

/// A client of `transport` at `url` that backs off briefly (and polls often): what a soak needs.
pub(crate) fn client(transport: &str, url: &str) -> Result<ClientConfig, Error> {
    let extra = match transport {
        "poll" => "poll_interval = \"100ms\"\nbackoff = { initial = \"20ms\", max = \"1s\" }",
        "webhook" => "check_interval = \"1s\"",
        _ => "backoff = { initial = \"20ms\", max = \"1s\" }",
    };
    ClientConfig::from_toml(&format!(
        "transport = \"{transport}\"\nurl = \"{url}\"\n[{transport}]\n{extra}\n"
    ))
}

pub(crate) async fn run(
    minutes: f64,
    per_transport: usize,
    redis: bool,
    cluster: bool,
) -> Result<(), Error> {
    if !(minutes > 0.0 && minutes <= 24.0 * 60.0) {
        return Err(Error::new(
            ErrorKind::Config,
            "--minutes must be more than 0 and at most 1440",
        ));
    }
    let io = |e: std::io::Error| Error::new(ErrorKind::Connect, format!("soak: {e}"));
    let mut config = ServerConfig::default();
    config.transports.configure::<pushpull::webhook::WebhookServer>(|webhook| {
        webhook.allow_loopback = true;
        webhook.schedule = vec![
            Duration::ZERO,
            Duration::from_millis(50),
            Duration::from_millis(200),
            Duration::from_secs(1),
        ];
    })?;
    let redis_cluster = match cluster {
        false => None,
        true => {
            let cluster = tokio::task::spawn_blocking(pushpull_chaos::RedisCluster::start)
                .await
                .map_err(|e| Error::new(ErrorKind::Backend, e.to_string()))??;
            config.broker = pushpull::BrokerConfig::new("redis").set("cluster", cluster.urls());
            Some(Arc::new(std::sync::Mutex::new(cluster)))
        }
    };
    let redis_server = match redis && !cluster {
        false => None,
        true => {
            let server = pushpull_chaos::RedisServer::start_with(true)?;
            config.broker = pushpull::BrokerConfig::new("redis").set("url", server.url());
            Some(Arc::new(std::sync::Mutex::new(server)))
        }
    };
    let broker = pushpull::broker(&config)?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.map_err(io)?;
    let server = pushpull::serve_with(listener, broker.clone(), &config)?;
    let proxy = Arc::new(ChaosProxy::start(server.local_addr()).await.map_err(io)?);
    let url = format!("http://{}", proxy.addr());
    let mut subscribers = Vec::new();
    for transport in TRANSPORTS {
        for n in 0..per_transport.max(1) {
            let client = pushpull::connect(&client(transport, &url)?).await?;
            subscribers.push((format!("{transport}#{n}"), client));
        }
    }
    let soak_config = SoakConfig {
        duration: Duration::from_secs_f64(minutes * 60.0),
        redis: redis_server.clone(),
        cluster: redis_cluster.clone(),
        ..SoakConfig::default()
    };
    eprintln!(
        "soaking {} subscribers over {} transports for {minutes} min on the {} broker ...",
        subscribers.len(),
        TRANSPORTS.len(),
        if cluster {
            "redis (a cluster of 6)"
        } else if redis {
            "redis"
        } else {
            "memory"
        },
    );
    let started = Instant::now();
    let report = soak(proxy, broker, subscribers, &soak_config).await;
    println!("| what | count |\n|---|---|");
    let rows = [
        ("messages published", report.messages),
        ("deliveries", report.deliveries),
        ("kills (every live connection cut)", report.kills),
        ("refusal spells", report.refusals),
        ("503 spells", report.unavailable),
        ("slow-connection spells", report.delays),
        (if cluster { "masters killed" } else { "redis restarts" }, report.redis_restarts),
        ("messages Redis lost, told by a gap and read again", report.rewound),
        ("connections through the proxy", report.connections),
        ("gaps", report.gaps),
        ("duplicates", report.duplicates),
        ("losses", report.losses),
        ("subscriptions ended", report.ended),
    ];
    for (what, count) in rows {
        println!("| {what} | {count} |");
    }
    println!("\n| subscriber | deliveries | gaps | duplicates | losses |\n|---|---|---|---|---|");
    for (name, [deliveries, gaps, duplicates, losses]) in &report.per_subscriber {
        println!("| {name} | {deliveries} | {gaps} | {duplicates} | {losses} |");
    }
    eprintln!("done in {:.1?}", started.elapsed());
    server.shutdown().await;
    if report.is_clean() {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Backend,
            "the soak found a loss, a duplicate or an ended subscription",
        ))
    }
}
