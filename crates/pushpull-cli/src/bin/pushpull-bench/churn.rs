//! `pushpull bench churn`: clients come and go at a steady rate on every transport (subscribe,
//! read, and leave, cleanly or with their connection cut) while messages are published, against
//! a `pushpull serve` process of the bench's own. At the end the server's resident memory, open
//! file descriptors and live tasks must be back at the baseline taken after a warm-up, and no
//! client may have missed a message.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use pushpull::{ClientConfig, Cursor, Delivery, Error, ErrorKind, Publication, Topic};
use pushpull_chaos::ChaosProxy;

use crate::bench::{RedisBacking, ServerProcess, bench_error, mib, open_idle};

/// The transports that come and go (webhooks are registered, not connected: the fault soak
/// covers them).
const TRANSPORTS: [&str; 5] = ["sse", "ws", "stream", "longpoll", "poll"];
/// Topics the sessions spread over.
const TOPICS: usize = 8;
/// Messages each topic retains: at 40 a second over 8 topics, full within the warm-up.
const RETAINED: usize = 100;
/// How far the tolerance on memory goes: a quarter of the baseline, and at least 8 MiB.
const RSS_SLACK: f64 = 0.25;
const RSS_SLACK_MIN: u64 = 8 * 1024 * 1024;

/// How hard and how long to churn.
pub(crate) struct Churn {
    pub(crate) minutes: f64,
    pub(crate) rate: f64,
    pub(crate) session: Duration,
    pub(crate) spike: usize,
    pub(crate) warmup: Duration,
    pub(crate) quiet: Duration,
    pub(crate) redis: bool,
    pub(crate) json: bool,
}

/// The server's resources at one moment.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Reading {
    rss: u64,
    fds: u64,
    tasks: u64,
    connections: u64,
}

/// What the sessions saw.
#[derive(Debug, Default)]
struct Tally {
    sessions: AtomicU64,
    cut: AtomicU64,
    deliveries: AtomicU64,
    losses: AtomicU64,
    gaps: AtomicU64,
    failures: AtomicU64,
}

pub(crate) async fn run(churn: Churn) -> Result<(), Error> {
    if !(churn.minutes > 0.0 && churn.minutes <= 24.0 * 60.0) {
        return Err(bench_error("--minutes must be more than 0 and at most 1440".into()));
    }
    if !(churn.rate > 0.0 && churn.rate <= 500.0) {
        return Err(bench_error("--rate must be more than 0 and at most 500 a second".into()));
    }
    let redis = RedisBacking::start(churn.redis)?;
    // The spike comes from one address: let it hold more than the default share.
    let mut env = redis.env();
    env.push(("PUSHPULL_HTTP__MAX_CONNECTIONS_PER_ADDRESS", "100000".to_owned()));
    // Logs short enough to be full before the baseline: what the broker retains then stays the
    // same, and growth after it is what sessions left behind.
    env.push(("PUSHPULL_BROKER__RETENTION__MAX_MESSAGES", RETAINED.to_string()));
    let server = ServerProcess::start_with(&env).await?;
    let url = server.url();
    let publisher = pushpull::connect(&ClientConfig::new("poll", &url)).await?;
    let topics: Vec<Topic> =
        (0..TOPICS).map(|n| Topic::new(format!("churn.{n}")).expect("a valid topic")).collect();
    // Every topic gets a message before the first session, so each starts from a cursor.
    for topic in &topics {
        publisher.publish(topic, Publication::new("start")).await?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = tokio::spawn(publish(publisher.clone(), topics.clone(), stop.clone()));

    eprintln!("churn: warming up for {:?} ...", churn.warmup);
    let warm = Arc::new(Tally::default());
    sessions(&url, &topics, &churn, churn.warmup, &warm).await?;
    let baseline = settle(&server).await?;
    eprintln!(
        "churn: baseline {:.1} MiB, {} fds, {} tasks; churning for {} min at {}/s ...",
        mib(baseline.rss),
        baseline.fds,
        baseline.tasks,
        churn.minutes,
        churn.rate
    );
    let mut peak = baseline;
    // A spike: many idle streams at once, then none.
    let spiked = match churn.spike {
        0 => None,
        count => {
            eprintln!("churn: a spike of {count} idle event streams ...");
            let held = open_idle(&server, "/v1/topics/churn.0/events?after=latest", count).await?;
            let deadline = Instant::now() + Duration::from_secs(120);
            while server.live("sse_open_streams").await.unwrap_or(0) < count as u64
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let top = reading(&server).await?;
            peak.rss = peak.rss.max(top.rss);
            peak.fds = peak.fds.max(top.fds);
            peak.connections = peak.connections.max(top.connections);
            peak.tasks = peak.tasks.max(top.tasks);
            drop(held);
            let settled = settle(&server).await?;
            tokio::time::sleep(Duration::from_secs(30)).await;
            let later = reading(&server).await?;
            eprintln!(
                "churn: spike at {:.1} MiB; {:.1} MiB when closed, {:.1} MiB 30 s later",
                mib(top.rss),
                mib(settled.rss),
                mib(later.rss)
            );
            Some((top, later))
        }
    };
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let duration = Duration::from_secs_f64(churn.minutes * 60.0);
    let peak_of = &mut peak;
    let watching = {
        let tally = tally.clone();
        let server = &server;
        async move {
            let peak = peak_of;
            // Resources while churning, every 10 s.
            while started.elapsed() < duration {
                tokio::time::sleep(Duration::from_secs(10)).await;
                if let Ok(now) = reading(server).await {
                    peak.rss = peak.rss.max(now.rss);
                    peak.fds = peak.fds.max(now.fds);
                    peak.tasks = peak.tasks.max(now.tasks);
                    peak.connections = peak.connections.max(now.connections);
                    eprintln!(
                        "churn: {:>4.0} s: {:.1} MiB, {} fds, {} tasks, {} connections; {} sessions",
                        started.elapsed().as_secs_f64(),
                        mib(now.rss),
                        now.fds,
                        now.tasks,
                        now.connections,
                        tally.sessions.load(Ordering::Relaxed)
                    );
                }
            }
        }
    };
    let (churned, ()) = tokio::join!(sessions(&url, &topics, &churn, duration, &tally), watching);
    churned?;
    let end = settle(&server).await?;
    // What the allocator gives back with time: read again after a quiet while.
    tokio::time::sleep(churn.quiet).await;
    let later = reading(&server).await?;
    stop.store(true, Ordering::Relaxed);
    let _ = publishing.await;

    let rss_allowed = baseline.rss + RSS_SLACK_MIN.max((baseline.rss as f64 * RSS_SLACK) as u64);
    let back = later.fds <= baseline.fds + 2
        && later.tasks <= baseline.tasks + 2
        && later.connections <= baseline.connections
        && later.rss <= rss_allowed;
    let clean = tally.losses.load(Ordering::Relaxed) == 0
        && tally.gaps.load(Ordering::Relaxed) == 0
        && tally.failures.load(Ordering::Relaxed) == 0;
    let broker = if churn.redis { "redis" } else { "memory" };
    if churn.json {
        let result = serde_json::json!({
            "bench": "churn", "broker": broker, "minutes": churn.minutes, "rate": churn.rate,
            "session_seconds": churn.session.as_secs_f64(),
            "baseline": baseline, "peak": peak, "settled": end, "after_quiet": later,
            "spike": churn.spike, "spike_top": spiked.map(|s| s.0), "after_spike": spiked.map(|s| s.1),
            "sessions": tally.sessions.load(Ordering::Relaxed),
            "cut": tally.cut.load(Ordering::Relaxed),
            "deliveries": tally.deliveries.load(Ordering::Relaxed),
            "losses": tally.losses.load(Ordering::Relaxed),
            "gaps": tally.gaps.load(Ordering::Relaxed),
            "failures": tally.failures.load(Ordering::Relaxed),
            "back_at_baseline": back,
        });
        println!("{result}");
    } else {
        println!(
            "churn on the {broker} broker: {} min, {}/s, sessions of {:?}, {RETAINED} messages \
             retained per topic",
            churn.minutes, churn.rate, churn.session
        );
        if let Some((top, after)) = spiked {
            println!(
                "spike of {} idle event streams: RSS {:.1} MiB at its top, {:.1} MiB 30 s after it closed",
                churn.spike,
                mib(top.rss),
                mib(after.rss)
            );
        }
        println!(
            "\n| server | baseline | peak | settled | {:?} later |\n|---|---:|---:|---:|---:|",
            churn.quiet
        );
        println!(
            "| RSS | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
            mib(baseline.rss),
            mib(peak.rss),
            mib(end.rss),
            mib(later.rss)
        );
        for (what, of) in [
            ("open fds", (|r: &Reading| r.fds) as fn(&Reading) -> u64),
            ("live tasks", |r: &Reading| r.tasks),
            ("connections", |r: &Reading| r.connections),
        ] {
            println!(
                "| {what} | {} | {} | {} | {} |",
                of(&baseline),
                of(&peak),
                of(&end),
                of(&later)
            );
        }
        println!("\n| sessions | of them cut | deliveries | losses | gaps | failures |");
        println!("|---:|---:|---:|---:|---:|---:|");
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            tally.sessions.load(Ordering::Relaxed),
            tally.cut.load(Ordering::Relaxed),
            tally.deliveries.load(Ordering::Relaxed),
            tally.losses.load(Ordering::Relaxed),
            tally.gaps.load(Ordering::Relaxed),
            tally.failures.load(Ordering::Relaxed)
        );
        println!(
            "\nback at baseline (fds and tasks within 2, connections none over, RSS within {:.0} %, at least {:.0} MiB): {}",
            RSS_SLACK * 100.0,
            mib(RSS_SLACK_MIN),
            if back { "yes" } else { "NO" }
        );
    }
    if back && clean {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Backend,
            "the churn left the server above its baseline, or a client missed a message",
        ))
    }
}

/// Publishes to every topic in turn, 40 messages a second in all, until `stop`.
async fn publish(client: Arc<dyn pushpull::Client>, topics: Vec<Topic>, stop: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(25));
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let topic = &topics[n % topics.len()];
        if let Err(error) = client.publish(topic, Publication::new(format!("m{n}"))).await {
            eprintln!("churn: publish failed: {error}");
        }
        n += 1;
    }
}

/// Starts sessions at `churn.rate` a second for `duration`, then waits for them all.
async fn sessions(
    url: &str,
    topics: &[Topic],
    churn: &Churn,
    duration: Duration,
    tally: &Arc<Tally>,
) -> Result<(), Error> {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / churn.rate));
    let mut running = tokio::task::JoinSet::new();
    let mut n = 0usize;
    while started.elapsed() < duration {
        tick.tick().await;
        while running.try_join_next().is_some() {}
        let transport = TRANSPORTS[n % TRANSPORTS.len()];
        let topic = topics[(n / TRANSPORTS.len()) % topics.len()].clone();
        // Every other session goes through a proxy of its own, cut halfway (the client
        // resumes) and at the end (the server sees the connection vanish, no goodbye).
        let cut = n % 2 == 1;
        running.spawn(session(url.to_owned(), transport, topic, churn.session, cut, tally.clone()));
        n += 1;
    }
    while running.join_next().await.is_some() {}
    Ok(())
}

/// One client: subscribes from a recent cursor, reads for `length`, leaves.
async fn session(
    url: String,
    transport: &'static str,
    topic: Topic,
    length: Duration,
    cut: bool,
    tally: Arc<Tally>,
) {
    tally.sessions.fetch_add(1, Ordering::Relaxed);
    let failed = |what: String| {
        eprintln!("churn: {transport} session: {what}");
        tally.failures.fetch_add(1, Ordering::Relaxed);
    };
    let proxy = match cut {
        false => None,
        true => {
            let upstream = url.trim_start_matches("http://").parse().expect("the server's address");
            match ChaosProxy::start(upstream).await {
                Ok(proxy) => Some(proxy),
                Err(error) => return failed(format!("proxy: {error}")),
            }
        }
    };
    let base = proxy.as_ref().map_or(url, |p| format!("http://{}", p.addr()));
    let config = match crate::soak::client(transport, &base) {
        Ok(config) => config,
        Err(error) => return failed(format!("config: {error}")),
    };
    let client = match pushpull::connect(&config).await {
        Ok(client) => client,
        Err(error) => return failed(format!("connect: {error}")),
    };
    // Start a few messages back, so each session reads retained messages and live ones.
    let start = match client.fetch(&topic, Cursor::Latest, 1).await {
        Ok(page) => match page.next {
            Cursor::After(epoch, offset) => {
                Cursor::After(epoch, pushpull::Offset(offset.0.saturating_sub(3)))
            }
            other => other,
        },
        Err(error) => return failed(format!("fetch: {error}")),
    };
    let mut subscription = match client.subscribe(&topic, start).await {
        Ok(subscription) => subscription,
        Err(error) => return failed(format!("subscribe: {error}")),
    };
    let mut last = start.offset().map(|o| o.0);
    let ends = tokio::time::Instant::now() + length;
    let halfway = tokio::time::Instant::now() + length / 2;
    let mut was_cut = false;
    loop {
        if let (Some(proxy), false) = (&proxy, was_cut)
            && tokio::time::Instant::now() >= halfway
        {
            proxy.sever();
            was_cut = true;
            tally.cut.fetch_add(1, Ordering::Relaxed);
        }
        let until = if proxy.is_some() && !was_cut { halfway } else { ends };
        let delivery = match tokio::time::timeout_at(until, subscription.next()).await {
            Err(_) if tokio::time::Instant::now() >= ends => break,
            Err(_) => continue,
            Ok(None) => return failed("the subscription ended".into()),
            Ok(Some(Err(error))) => return failed(format!("delivery: {error}")),
            Ok(Some(Ok(delivery))) => delivery,
        };
        match delivery {
            Delivery::Message(message) => {
                tally.deliveries.fetch_add(1, Ordering::Relaxed);
                if let Some(previous) = last
                    && message.offset.0 != previous + 1
                {
                    tally.losses.fetch_add(1, Ordering::Relaxed);
                    eprintln!(
                        "churn: {transport} on {topic}: offset {} after {previous}",
                        message.offset.0
                    );
                }
                last = Some(message.offset.0);
            }
            Delivery::Gap(gap) => {
                tally.gaps.fetch_add(1, Ordering::Relaxed);
                eprintln!("churn: {transport} on {topic}: {gap:?}");
                last = gap.cursor.offset().map(|o| o.0);
            }
        }
    }
    if let Some(proxy) = &proxy {
        // Leave without a goodbye: the connection is cut, then the client forgotten.
        proxy.sever();
    }
    drop(subscription);
    drop(client);
    drop(proxy);
}

/// Waits until the server holds no more connections than the publisher's and its count of
/// tasks stops falling, then reads its resources.
async fn settle(server: &ServerProcess) -> Result<Reading, Error> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut previous = reading(server).await?;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = reading(server).await?;
        let quiet = now.connections <= 2 && now.tasks >= previous.tasks;
        if quiet || Instant::now() > deadline {
            return Ok(now);
        }
        previous = now;
    }
}

async fn reading(server: &ServerProcess) -> Result<Reading, Error> {
    let health = server.health().await?;
    let live = &health["live"];
    let count = |name: &str| live[name].as_u64().unwrap_or(0);
    Ok(Reading {
        rss: server.rss()?,
        fds: server.fds()?,
        tasks: count("runtime_tasks"),
        // The health request's own connection is open while it is answered.
        connections: count("open_connections").saturating_sub(1),
    })
}
