//! `pushpull bench peers --connections N --processes P`: more connections than one process may
//! hold open files for, on one machine. P pushpull processes share one port (`SO_REUSEPORT`)
//! on one Redis of the bench's own; Nchan runs a master and P workers, each worker with a
//! listening socket of its own (`reuseport`). The subscribers are opened by load generator
//! processes (this binary's hidden `generate` command), each holding at most
//! [`Spread::per_generator`] of them, which report what they saw and their latency histograms back on
//! their standard output. Memory is summed over every server process as its proportional set
//! size (PSS), so pages nginx's workers share are counted once; pushpull's include Redis's.
//! pushpull's presence is off here (see [`Fleet::start`]).

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pushpull::{Error, ErrorKind};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::peers::{
    Counters, Measured, Peer, Server, Target, Transport, Workload, cpu_of, error, free_port,
    new_histogram, open_files_limit, pss_of, publish_every, slab, stragglers_deadline, subscribe,
    topic_of,
};

/// How a run is spread over processes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spread {
    /// Server processes (Nchan: workers).
    pub(crate) processes: usize,
    /// The most subscribers one load generator process opens (each is an open file there).
    pub(crate) per_generator: usize,
}

/// `SO_REUSEPORT` spreads connections over the processes by a hash of their addresses, not
/// evenly: each process is sized for this share more than its even part.
const SPREAD_MARGIN: f64 = 1.05;

/// Checks that `count` connections over `processes` server processes fit every process's
/// open-file limit, with a clear error when they do not.
pub(crate) fn check_fits(count: usize, processes: usize) -> Result<(), Error> {
    let limit = open_files_limit()?;
    let each = (count as f64 / processes as f64 * SPREAD_MARGIN).ceil() as usize + 300;
    if each > limit {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "{count} connections over {processes} processes need about {each} open files in \
                 each (an even share, {:.0} % more for how SO_REUSEPORT spreads them, and some \
                 for the server itself), and a process may hold {limit}: ask for more processes \
                 or fewer connections",
                (SPREAD_MARGIN - 1.0) * 100.0
            ),
        ));
    }
    Ok(())
}

/// The server processes of one run and, for pushpull, the Redis they share.
struct Fleet {
    target: Target,
    servers: Vec<Server>,
    redis: Option<pushpull_chaos::RedisServer>,
}

impl Fleet {
    async fn start(peer: Peer, processes: usize, core: usize) -> Result<Fleet, Error> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let target = Target { peer, addr };
        match peer {
            Peer::Pushpull => {
                let redis = pushpull_chaos::RedisServer::start()?;
                if let Some(pid) = redis.pid() {
                    // Redis does the servers' work too: on their core.
                    let pinned = Command::new("taskset")
                        .args(["-a", "-p", "-c", &core.to_string(), &pid.to_string()])
                        .stdout(Stdio::null())
                        .status()
                        .await
                        .map_err(|e| error(format!("cannot run taskset: {e}")))?;
                    if !pinned.success() {
                        return Err(error("taskset could not pin redis-server"));
                    }
                }
                let env = [
                    // Presence in Redis renews each member (a write per member every few
                    // seconds): at 100,000 members of one topic it is most of the work, and
                    // Nchan keeps no presence to compare it with.
                    ("PUSHPULL_PRESENCE__ENABLED", "false".to_owned()),
                    ("PUSHPULL_HTTP__REUSE_PORT", "true".to_owned()),
                    ("PUSHPULL_BROKER__KIND", "redis".to_owned()),
                    ("PUSHPULL_BROKER__URL", redis.url()),
                ];
                let mut servers = Vec::with_capacity(processes);
                for _ in 0..processes {
                    servers.push(Server::pushpull(addr, core, &env).await?);
                }
                Ok(Fleet { target, servers, redis: Some(redis) })
            }
            Peer::Nchan => {
                let server = Server::nchan(addr, core, Some(processes)).await?;
                Ok(Fleet { target, servers: vec![server], redis: None })
            }
        }
    }

    fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.servers.iter().flat_map(Server::pids).collect();
        pids.extend(self.redis.as_ref().and_then(pushpull_chaos::RedisServer::pid));
        pids
    }

    fn cpu(&self) -> Result<Duration, Error> {
        self.pids().iter().map(|pid| cpu_of(&pid.to_string())).sum()
    }

    fn memory(&self) -> Result<u64, Error> {
        self.pids().into_iter().map(pss_of).sum()
    }

    /// Stops every server, which ends every subscriber.
    async fn stop(self) {
        for server in self.servers {
            server.stop().await;
        }
        drop(self.redis);
    }
}

/// One load generator process and what it has reported.
struct Generator {
    child: Child,
    /// Messages its subscribers have seen, as last reported.
    seen: Arc<AtomicU64>,
    /// Whether it has opened all its subscribers.
    connected: tokio::sync::watch::Receiver<bool>,
    /// Its subscribers' latency histogram, once they have ended.
    histogram: tokio::task::JoinHandle<Result<Histogram<u64>, Error>>,
}

impl Generator {
    fn spawn(
        target: Target,
        workload: &Workload,
        first: usize,
        count: usize,
    ) -> Result<Generator, Error> {
        let exe = std::env::current_exe().map_err(|e| error(e.to_string()))?;
        let mut child = Command::new(exe)
            .arg("generate")
            .args(["--peer", &target.peer.arg(), "--transport", &workload.transport.arg()])
            .args(["--addr", &target.addr.to_string()])
            .args(["--first", &first.to_string(), "--count", &count.to_string()])
            .args(["--topics", &workload.topics.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| error(format!("cannot start a load generator: {e}")))?;
        let stdout = child.stdout.take().expect("piped");
        let seen = Arc::new(AtomicU64::new(0));
        let (connected_tx, connected) = tokio::sync::watch::channel(false);
        let reported = seen.clone();
        let histogram = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(line) = lines.next_line().await.map_err(|e| error(e.to_string()))? {
                let (what, rest) = line.split_once(' ').unwrap_or((&line, ""));
                match what {
                    "connected" => {
                        connected_tx.send_replace(true);
                    }
                    "seen" => reported.store(rest.parse().unwrap_or(0), Ordering::Relaxed),
                    "histogram" => return parse_histogram(rest),
                    _ => {}
                }
            }
            Err(error("a load generator ended without its histogram: see its error above"))
        });
        Ok(Generator { child, seen, connected, histogram })
    }
}

/// A histogram as a generator writes it: pairs of value and count.
fn parse_histogram(text: &str) -> Result<Histogram<u64>, Error> {
    let mut histogram = new_histogram();
    let numbers: Vec<u64> = text
        .split_whitespace()
        .map(|n| n.parse().map_err(|_| error(format!("a generator wrote {n:?} in a histogram"))))
        .collect::<Result<_, _>>()?;
    for pair in numbers.chunks_exact(2) {
        histogram.record_n(pair[0], pair[1]).map_err(|e| error(e.to_string()))?;
    }
    Ok(histogram)
}

/// A histogram as pairs of value and count.
fn write_histogram(histogram: &Histogram<u64>) -> String {
    use std::fmt::Write;
    let mut text = String::new();
    for value in histogram.iter_recorded() {
        let _ = write!(text, " {} {}", value.value_iterated_to(), value.count_at_value());
    }
    text
}

/// The hidden `generate` command: opens `count` subscribers (the `first`th on, each of its
/// topic of `topics`) at `target` one after another, prints `connected SECONDS`, then `seen N`
/// every 100 ms until the server ends them, then `histogram` and their merged latencies.
pub(crate) async fn generate(
    target: Target,
    transport: Transport,
    first: usize,
    count: usize,
    topics: usize,
) -> Result<(), Error> {
    // One histogram for all: one each would take 130 KB per subscriber.
    let latencies = Arc::new(std::sync::Mutex::new(new_histogram()));
    let counters = Counters { latencies: Some(latencies.clone()), ..Counters::default() };
    let started = Instant::now();
    let mut readers = Vec::with_capacity(count);
    for n in first..first + count {
        let reader = tokio::time::timeout(
            Duration::from_secs(20),
            subscribe(&target, transport, n, &topic_of(topics, n), counters.clone()),
        )
        .await
        .map_err(|_| error("a subscriber did not open in time"))??;
        readers.push(reader);
    }
    println!("connected {}", started.elapsed().as_secs_f64());
    let seen = counters.seen.clone();
    let report = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            println!("seen {}", seen.load(Ordering::Relaxed));
        }
    });
    for reader in readers {
        let _ = reader.await;
    }
    report.abort();
    println!("seen {}", counters.seen.load(Ordering::Relaxed));
    let merged = latencies.lock().expect("latencies");
    println!("histogram{}", write_histogram(&merged));
    Ok(())
}

/// Runs one workload against `spread.processes` fresh server processes of `peer` on `core`, the
/// subscribers opened by generator processes at once (each one after another).
pub(crate) async fn run(
    peer: Peer,
    workload: &Workload,
    core: usize,
    spread: Spread,
) -> Result<Measured, Error> {
    let fleet = Fleet::start(peer, spread.processes, core).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let memory_before = fleet.memory()?;
    let slab_before = slab()?;
    let count = workload.subscribers;
    let mut generators = Vec::new();
    let connecting = Instant::now();
    for first in (0..count).step_by(spread.per_generator.max(1)) {
        let each = spread.per_generator.min(count - first);
        generators.push(Generator::spawn(fleet.target, workload, first, each)?);
    }
    // Opening takes about a millisecond per subscriber; a generator that takes far longer
    // has failed.
    let open_in = Duration::from_secs(60) + Duration::from_millis(2 * count as u64);
    for generator in &mut generators {
        let opened = tokio::time::timeout_at(
            (connecting + open_in).into(),
            generator.connected.wait_for(|connected| *connected),
        )
        .await;
        if !matches!(opened, Ok(Ok(_))) {
            return Err(error(
                "a load generator did not open its subscribers: see its error above",
            ));
        }
    }
    let connect_seconds = connecting.elapsed().as_secs_f64();
    // Let the subscriptions settle (long polls are held), then measure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let per_connection = |bytes: u64| bytes as f64 / count.max(1) as f64 / 1024.0;
    let mut measured = Measured {
        rss_per_connection_kb: per_connection(fleet.memory()?.saturating_sub(memory_before)),
        kernel_per_connection_kb: per_connection(slab()?.saturating_sub(slab_before)),
        connect_seconds,
        ..Measured::default()
    };
    let seen = || generators.iter().map(|g| g.seen.load(Ordering::Relaxed)).sum::<u64>();
    if workload.rate > 0 {
        let cpu_before = fleet.cpu()?;
        let wall = Instant::now();
        let interval = Duration::from_secs_f64(1.0 / workload.rate as f64);
        let total = workload.rate * workload.seconds;
        let published = publish_every(&fleet.target, interval, total, workload.topics).await?;
        measured.publish_failures = total - published;
        measured.expected = workload.expected(published);
        let deadline = stragglers_deadline(count);
        while seen() < measured.expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // What the generators last reported (each reports every 100 ms).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let cpu = fleet.cpu()?.saturating_sub(cpu_before);
        measured.delivered(seen(), cpu, wall.elapsed());
        measured.loaded_per_connection_kb =
            per_connection(fleet.memory()?.saturating_sub(memory_before));
    }
    fleet.stop().await;
    let mut merged = new_histogram();
    for generator in generators {
        let histogram = tokio::time::timeout(Duration::from_secs(60), generator.histogram)
            .await
            .map_err(|_| error("a load generator did not end after its server stopped"))?
            .map_err(|e| error(e.to_string()))??;
        let _ = merged.add(&histogram);
        let mut child = generator.child;
        let _ = child.wait().await;
    }
    measured.latencies(&merged);
    Ok(measured)
}
