//! `pushpull bench`: measures the transports side by side, against a server running as its own
//! process on 127.0.0.1, so its memory is measured alone. Every run is bounded in count and
//! time and stops by itself.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use pushpull::{ClientConfig, Cursor, Error, ErrorKind, Publication, Topic};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

/// What to measure.
#[derive(clap::Subcommand)]
pub(crate) enum Bench {
    /// Server memory per idle SSE stream, WebSocket or held long-poll request.
    Idle {
        /// `sse`, `ws` or `longpoll`, or several separated by commas (each against a fresh
        /// server).
        #[arg(long, value_delimiter = ',', default_value = "sse")]
        transport: Vec<String>,
        /// How many idle connections to open (each side needs a file descriptor).
        #[arg(long, default_value_t = 2000)]
        connections: usize,
        #[command(flatten)]
        report: Report,
    },
    /// Server memory per presence member: polls that each name another client make members
    /// of one topic (no connection stays open), measured with presence on and off.
    Members {
        /// How many members to make.
        #[arg(long, default_value_t = 20_000)]
        members: usize,
        /// Print the results as JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Peak memory of the server and a streaming client moving one large payload.
    Large {
        /// The payload's size in MiB.
        #[arg(long, default_value_t = 100)]
        size_mib: usize,
        /// Print the results as JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Server CPU per delivered message when many SSE streams follow one topic.
    Fanout {
        /// Streams following the topic.
        #[arg(long, default_value_t = 500)]
        subscribers: usize,
        /// Messages published.
        #[arg(long, default_value_t = 200)]
        messages: usize,
        /// Store the logs in Redis (a redis-server of the bench's own).
        #[arg(long)]
        redis: bool,
        /// With `--redis`: publish on another server process than the one streaming (whose
        /// CPU is measured).
        #[arg(long, requires = "redis")]
        two_nodes: bool,
        /// Print the results as JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Subscribers over every transport, webhooks included, follow several topics through a
    /// fault-injecting proxy (kills, refusals, delays, 503s) while publishers write; fails if
    /// any subscriber lost or repeated a message.
    Soak {
        /// How long the faults and publishers run, in minutes (fractions allowed).
        #[arg(long, default_value_t = 1.0)]
        minutes: f64,
        /// Subscribers per transport.
        #[arg(long, default_value_t = 2)]
        per_transport: usize,
        /// Store the logs in Redis (a redis-server of the soak's own, with persistence) and
        /// restart it among the faults.
        #[arg(long)]
        redis: bool,
        /// With `--redis`: a Redis Cluster of the soak's own (three masters, three replicas)
        /// instead, killing a master among the faults (it comes back as a replica).
        #[arg(long, requires = "redis")]
        cluster: bool,
    },
    /// Clients connect, subscribe, read and leave (cleanly, or with their connection cut) at a
    /// steady rate on every transport while messages are published, against a server process
    /// of the bench's own; fails unless its memory, open files and tasks come back to the
    /// baseline taken after a warm-up and no client missed a message.
    Churn {
        /// How long to churn, in minutes (fractions allowed).
        #[arg(long, default_value_t = 30.0)]
        minutes: f64,
        /// Sessions started a second.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// How long each session reads, in seconds.
        #[arg(long, default_value_t = 2.0)]
        session_seconds: f64,
        /// Before churning, open this many idle event streams at once and close them: what a
        /// spike leaves behind shows in the memory that follows (0: no spike).
        #[arg(long, default_value_t = 8000)]
        spike: usize,
        /// Seconds of churn before the baseline is taken.
        #[arg(long, default_value_t = 20)]
        warmup: u64,
        /// Seconds of quiet after the churn before the last reading (what the allocator gives
        /// back with time).
        #[arg(long, default_value_t = 60)]
        quiet: u64,
        /// Store the logs in Redis (a redis-server of the bench's own).
        #[arg(long)]
        redis: bool,
        /// Print the results as JSON instead of the tables.
        #[arg(long)]
        json: bool,
    },
    /// The Redis broker on a Redis Cluster of the bench's own (six redis-server processes)
    /// beside one Redis: wake-ups each node receives per publish with 1, 2 and 3 nodes
    /// following disjoint topics, and publish latency with each durability setting.
    Cluster {
        /// Publishes per measurement.
        #[arg(long, default_value_t = 2000)]
        publishes: usize,
        /// Also draw the publish latency distributions as an SVG plot here.
        #[arg(long)]
        plot: Option<std::path::PathBuf>,
        /// Print the results as JSON instead of the tables.
        #[arg(long)]
        json: bool,
    },
    /// The same workloads against pushpull and Nchan (nginx's module, from Debian's
    /// libnginx-mod-nchan), interleaved, each server a fresh process pinned to one core: server
    /// CPU per delivery, latency, loss, memory per connection. `scripts/bench-peers` installs
    /// Nchan and runs this pinned to the other core.
    #[command(group = clap::ArgGroup::new("curve").args(["connections", "topics"]))]
    Peers {
        /// Rounds of each workload per server (medians are reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// How long each loaded run publishes.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Divide every subscriber count by this (a quick look; the tables use 1).
        #[arg(long, default_value_t = 1)]
        scale: usize,
        /// The core the servers are pinned to.
        #[arg(long, default_value_t = 1)]
        core: usize,
        /// Run only the workloads whose name contains this.
        #[arg(long)]
        only: Option<String>,
        /// Instead of the fixed workloads, find each server's capacity: the highest rate of
        /// deliveries to 1,000 SSE and 1,000 WebSocket subscribers it sustains on one core with
        /// a latency p99 within 100 ms and nothing lost (a rate sweep, a fresh server per step).
        #[arg(long)]
        capacity: bool,
        /// Instead of the fixed workloads, measure how costs grow with connections: this many
        /// subscribers of one topic per run (a comma-separated list, e.g.
        /// 1000,5000,10000,19000), over SSE, WebSocket and long polling, then `--messages`
        /// messages a second apart, each fanned out to all of them.
        #[arg(long, value_delimiter = ',', conflicts_with = "capacity")]
        connections: Vec<usize>,
        /// Messages fanned out per run with `--connections`.
        #[arg(long, default_value_t = 5, requires = "connections")]
        messages: u64,
        /// Instead of the fixed workloads, measure how costs grow with topics: this many
        /// topics with one subscriber each per run (a comma-separated list, e.g.
        /// 1,1000,10000,19000), over SSE, WebSocket and long polling, then `--rate` messages a
        /// second published to the topics in turn, for `--seconds` or until every topic has
        /// had one.
        #[arg(long, value_delimiter = ',', conflicts_with_all = ["capacity", "connections"])]
        topics: Vec<usize>,
        /// Messages a second with `--topics`.
        #[arg(long, default_value_t = 2000, requires = "topics", value_parser = clap::value_parser!(u64).range(1..=100_000))]
        rate: u64,
        /// With `--connections` or `--topics`, draw the cost curves as SVG in this directory
        /// (cost-memory.svg and cost-cpu.svg, or topics-memory.svg and topics-cpu.svg).
        #[arg(long, requires = "curve")]
        plot: Option<std::path::PathBuf>,
        /// With `--connections` or `--topics`, spread the subscribers over this many server
        /// processes on one port: pushpull's on one Redis of the bench's own, Nchan's as
        /// workers of one master; the subscribers are opened by load generator processes (for
        /// more connections than one process may hold open files for, e.g. `--connections
        /// 100000 --processes 6`).
        #[arg(long, default_value_t = 1, requires = "curve", value_parser = clap::value_parser!(u16).range(1..=64))]
        processes: u16,
        /// With `--processes`, the most subscribers one load generator process opens.
        #[arg(long, default_value_t = 16_000, hide = true, value_parser = clap::value_parser!(u32).range(1..))]
        per_generator: u32,
    },
    /// A load generator process of `peers --processes` (not for use by hand): opens `count`
    /// subscribers and reports what they see on its standard output.
    #[command(hide = true)]
    Generate {
        #[arg(long, value_enum)]
        peer: crate::peers::Peer,
        #[arg(long, value_enum)]
        transport: crate::peers::Transport,
        #[arg(long)]
        addr: std::net::SocketAddr,
        #[arg(long)]
        first: usize,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 1)]
        topics: usize,
    },
    /// What each way of reading costs the server per client per hour as the topic's message
    /// rate goes from one an hour to 100 a second: short polling (every second), long polling,
    /// SSE and WebSocket, each measured idle and at `--rates` against a fresh pushpull process
    /// pinned to `--core` (run this pinned to another core), and the cheapest transport by
    /// rate. `--plot` draws the push-or-pull charts.
    PushOrPull {
        /// Readers of the topic.
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Message rates measured (messages a second, comma-separated), besides idle.
        #[arg(long, value_delimiter = ',', default_values_t = vec![0.2, 1.0, 10.0, 100.0])]
        rates: Vec<f64>,
        /// How long each run with messages lasts (longer at low rates: five messages at least).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// How long the idle run lasts: longer than the longest periodic cost (a held poll's
        /// 30 s wait).
        #[arg(long, default_value_t = 65)]
        idle_seconds: u64,
        /// The core the server is pinned to.
        #[arg(long, default_value_t = 1)]
        core: usize,
        /// Draw the charts as SVG in this directory (push-or-pull-cpu-CLIENTS.svg,
        /// push-or-pull-bytes-CLIENTS.svg).
        #[arg(long)]
        plot: Option<std::path::PathBuf>,
    },
    /// One event stream of many topics against one stream per topic: readers follow the same
    /// topics both ways (each against a fresh server process), messages are published to
    /// every topic, and the bench reports bytes and server CPU per delivery, and connections.
    Many {
        /// Readers, each following every topic.
        #[arg(long, default_value_t = 50)]
        readers: usize,
        /// Topics each reader follows.
        #[arg(long, default_value_t = 20)]
        topics: usize,
        /// Messages published to each topic.
        #[arg(long, default_value_t = 100)]
        messages: usize,
        /// Print the results as JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Webhook deliveries a second to a local sink against h2load's raw request rate to it
    /// (h2load from Debian's nghttp2-client).
    Webhooks {
        /// Messages delivered (and requests h2load makes).
        #[arg(long, default_value_t = 20_000)]
        messages: usize,
        /// Print the results as JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// What following a topic nobody publishes to costs each transport's client, per hour:
    /// requests, and bytes both ways (heartbeats, pings, polls), through a counting relay.
    Quiet {
        /// The transports, followed side by side.
        #[arg(long, value_delimiter = ',', default_value = "poll,longpoll,sse,ws,stream")]
        transports: Vec<String>,
        /// How long to follow (the numbers are scaled to an hour).
        #[arg(long, default_value_t = 120)]
        seconds: u64,
        #[command(flatten)]
        report: Report,
    },
    /// Latency, bytes and requests per message, and burst throughput, for each transport.
    Compare {
        /// The transports to compare, in order.
        #[arg(long, value_delimiter = ',', default_value = "poll,longpoll,sse,ws,stream")]
        transports: Vec<String>,
        /// Messages published one at a time, `interval` apart, for latency.
        #[arg(long, default_value_t = 100)]
        messages: usize,
        /// The pause between those messages.
        #[arg(long, default_value = "20ms", value_parser = parse_duration)]
        interval: Duration,
        /// Messages published back to back, for throughput.
        #[arg(long, default_value_t = 2000)]
        burst: usize,
        /// Pad each message to about this many bytes with JSON-like text (0: a timestamp
        /// alone), to see what compression saves.
        #[arg(long, default_value_t = 0)]
        payload: usize,
        /// Also measure WebSocket with permessage-deflate off, in a row of its own
        /// (`ws, no permessage-deflate`), beside the `ws` row that offers it.
        #[arg(long)]
        ws_plain: bool,
        /// Also measure polling and long polling with gzip off, in rows of their own
        /// (`poll, no gzip`, `longpoll, no gzip`), beside the rows that ask for it.
        #[arg(long)]
        pages_plain: bool,
        /// Store the logs in Redis (a redis-server of the bench's own).
        #[arg(long)]
        redis: bool,
        /// With `--redis`: publish on one server process and subscribe on another.
        #[arg(long, requires = "redis")]
        two_nodes: bool,
        #[command(flatten)]
        report: Report,
    },
}

/// How a bench reports, besides its Markdown table.
#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct Report {
    /// Print the results as one JSON object instead of the table (for scripts).
    #[arg(long)]
    json: bool,
    /// Also draw the results as an SVG plot to this file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<std::path::PathBuf>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    pushpull::duration_text::parse(text)
}

/// No single step of a bench may take longer than this.
const STEP: Duration = Duration::from_secs(120);

/// The `pushpull` binary the benchmarks serve with: the one installed beside this one.
pub(crate) fn server_exe() -> Result<std::path::PathBuf, Error> {
    let own = std::env::current_exe().map_err(|e| bench_error(format!("own path: {e}")))?;
    let server = own.with_file_name(format!("pushpull{}", std::env::consts::EXE_SUFFIX));
    if !server.exists() {
        return Err(bench_error(format!(
            "{} is not there: the benchmarks serve with the pushpull binary installed beside \
             pushpull-bench",
            server.display()
        )));
    }
    Ok(server)
}

pub(crate) async fn run(bench: Bench) -> Result<(), Error> {
    match bench {
        Bench::Idle { transport, connections, report } => {
            idle(&transport, connections, &report).await
        }
        Bench::Members { members, json } => presence_members(members, json).await,
        Bench::Large { size_mib, json } => large(size_mib, json).await,
        Bench::Fanout { subscribers, messages, redis, two_nodes, json } => {
            let redis = RedisBacking::start(redis)?;
            fanout(subscribers, messages, &redis, two_nodes, json).await
        }
        Bench::Soak { minutes, per_transport, redis, cluster } => {
            crate::soak::run(minutes, per_transport, redis, cluster).await
        }
        Bench::Webhooks { messages, json } => webhooks(messages, json).await,
        Bench::Many { readers, topics, messages, json } => {
            many(readers, topics, messages, json).await
        }
        Bench::Churn { minutes, rate, session_seconds, spike, warmup, quiet, redis, json } => {
            let session = Duration::from_secs_f64(session_seconds.clamp(0.2, 600.0));
            let (warmup, quiet) = (Duration::from_secs(warmup), Duration::from_secs(quiet));
            let churn =
                crate::churn::Churn { minutes, rate, session, spike, warmup, quiet, redis, json };
            crate::churn::run(churn).await
        }
        Bench::Cluster { publishes, plot, json } => {
            crate::cluster::run(publishes.max(100), plot, json).await
        }
        Bench::PushOrPull { clients, rates, seconds, idle_seconds, core, plot } => {
            plot.as_deref().map(crate::plot::directory).transpose()?;
            crate::pushorpull::run(clients, &rates, seconds, idle_seconds, core, plot.as_deref())
                .await
        }
        Bench::Peers {
            rounds,
            seconds,
            core,
            only,
            connections,
            messages,
            topics,
            rate,
            plot,
            processes,
            per_generator,
            ..
        } if !connections.is_empty() || !topics.is_empty() => {
            let spread = (processes > 1).then_some(crate::machine::Spread {
                processes: usize::from(processes),
                per_generator: per_generator as usize,
            });
            let (counts, grow) = if connections.is_empty() {
                (topics, crate::peers::Grow::Topics { rate, seconds })
            } else {
                (connections, crate::peers::Grow::Connections { messages })
            };
            if let Some(&zero) = counts.iter().find(|&&count| count == 0) {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("a count of {zero} measures nothing: give counts of at least 1"),
                ));
            }
            plot.as_deref().map(crate::plot::directory).transpose()?;
            crate::peers::scale(rounds, &counts, spread, grow, core, only, plot.as_deref()).await
        }
        Bench::Generate { peer, transport, addr, first, count, topics } => {
            let target = crate::peers::Target { peer, addr };
            crate::machine::generate(target, transport, first, count, topics).await
        }
        Bench::Peers { rounds, seconds, scale, core, only, capacity: true, .. } => {
            crate::peers::capacity(rounds, seconds, scale, core, only).await
        }
        Bench::Peers { rounds, seconds, scale, core, only, capacity: false, .. } => {
            crate::peers::compare(rounds, seconds, scale, core, only).await
        }
        Bench::Quiet { transports, seconds, report } => quiet(&transports, seconds, &report).await,
        Bench::Compare {
            transports,
            messages,
            interval,
            burst,
            payload,
            ws_plain,
            pages_plain,
            redis,
            two_nodes,
            report,
        } => {
            let redis = RedisBacking::start(redis)?;
            let mut transports: Vec<(String, String)> =
                transports.iter().map(|t| (t.clone(), t.clone())).collect();
            if ws_plain && let Some(at) = transports.iter().position(|(t, _)| t == "ws") {
                transports.insert(at + 1, ("ws".into(), WS_PLAIN.into()));
            }
            for (transport, plain) in [("poll", POLL_PLAIN), ("longpoll", LONGPOLL_PLAIN)] {
                if pages_plain && let Some(at) = transports.iter().position(|(t, _)| t == transport)
                {
                    transports.insert(at + 1, (transport.into(), plain.into()));
                }
            }
            let shape = Shape { messages, interval, burst, payload };
            compare(&transports, shape, &redis, two_nodes, &report).await
        }
    }
}

/// Where the bench's servers keep their logs: their own memory, or a redis-server of the
/// bench's own (stopped when the bench ends).
pub(crate) struct RedisBacking(Option<pushpull_chaos::RedisServer>);

impl RedisBacking {
    pub(crate) fn start(redis: bool) -> Result<Self, Error> {
        Ok(Self(if redis { Some(pushpull_chaos::RedisServer::start()?) } else { None }))
    }

    /// The server process a bench measures and, with `two_nodes`, another on the same Redis
    /// that messages are published on.
    pub(crate) async fn nodes(
        &self,
        two_nodes: bool,
    ) -> Result<(ServerProcess, Option<ServerProcess>), Error> {
        let measured = ServerProcess::start_with(&self.env()).await?;
        let publishing = match two_nodes {
            true => Some(ServerProcess::start_with(&self.env()).await?),
            false => None,
        };
        Ok((measured, publishing))
    }

    /// The environment that points a `pushpull serve` at it.
    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        match &self.0 {
            None => Vec::new(),
            Some(server) => vec![
                ("PUSHPULL_BROKER__KIND", "redis".to_owned()),
                ("PUSHPULL_BROKER__URL", server.url()),
            ],
        }
    }
}

/// A `pushpull serve` child process on an ephemeral loopback port.
pub(crate) struct ServerProcess {
    child: Child,
    addr: SocketAddr,
}

impl ServerProcess {
    async fn start() -> Result<Self, Error> {
        Self::start_with(&[]).await
    }

    pub(crate) async fn start_with(env: &[(&str, String)]) -> Result<Self, Error> {
        let exe = server_exe()?;
        let mut child = Command::new(exe)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("PUSHPULL_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| bench_error(format!("cannot start the server: {e}")))?;
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        tokio::time::timeout(STEP, BufReader::new(stdout).read_line(&mut line))
            .await
            .map_err(|_| bench_error("the server did not start".into()))?
            .map_err(|e| bench_error(format!("reading the server's output: {e}")))?;
        let addr = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("http://"))
            .and_then(|addr| addr.parse().ok())
            .ok_or_else(|| bench_error(format!("no address in {line:?}")))?;
        Ok(Self { child, addr })
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Resident memory, in bytes, from /proc.
    pub(crate) fn rss(&self) -> Result<u64, Error> {
        let pid = self.child.id().ok_or_else(|| bench_error("the server exited".into()))?;
        crate::peers::rss_of(pid)
    }

    /// CPU time (user and system) used so far, from /proc.
    fn cpu(&self) -> Result<Duration, Error> {
        let pid = self.child.id().ok_or_else(|| bench_error("the server exited".into()))?;
        crate::peers::cpu_of(&pid.to_string())
    }

    /// Peak resident memory, in bytes, from /proc.
    fn peak(&self) -> Result<u64, Error> {
        let pid = self.child.id().ok_or_else(|| bench_error("the server exited".into()))?;
        peak_of(&pid.to_string())
    }

    /// Open file descriptors, from /proc.
    pub(crate) fn fds(&self) -> Result<u64, Error> {
        let pid = self.child.id().ok_or_else(|| bench_error("the server exited".into()))?;
        let entries = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map_err(|e| bench_error(format!("reading /proc/{pid}/fd: {e} (Linux only)")))?;
        Ok(entries.count() as u64)
    }

    pub(crate) async fn health(&self) -> Result<serde_json::Value, Error> {
        self.get_json("/v1/health").await
    }

    /// GETs `path` on a connection of its own and reads the JSON answer.
    async fn get_json(&self, path: &str) -> Result<serde_json::Value, Error> {
        let mut stream =
            TcpStream::connect(self.addr).await.map_err(|e| bench_error(e.to_string()))?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.addr);
        stream.write_all(request.as_bytes()).await.map_err(|e| bench_error(e.to_string()))?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await.map_err(|e| bench_error(e.to_string()))?;
        let body = reply
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|at| &reply[at + 4..])
            .ok_or_else(|| bench_error(format!("bad reply to GET {path}")))?;
        serde_json::from_slice(body).map_err(|e| bench_error(format!("GET {path}: {e}")))
    }

    pub(crate) async fn live(&self, gauge: &str) -> Result<u64, Error> {
        Ok(self.health().await?["live"][gauge].as_u64().unwrap_or(0))
    }
}

async fn idle(transports: &[String], connections: usize, report: &Report) -> Result<(), Error> {
    let mut rows = Vec::new();
    for transport in transports {
        rows.push(idle_one(transport, connections).await?);
    }
    if report.json {
        println!(
            "{}",
            serde_json::json!({ "bench": "idle", "connections": connections, "results": rows })
        );
    } else {
        println!("| transport | idle connections | server RSS before | after | per connection |");
        println!("|---|---:|---:|---:|---:|");
        for row in &rows {
            println!(
                "| {} | {connections} | {:.1} MiB | {:.1} MiB | {:.1} KiB |",
                row.transport,
                mib(row.rss_before),
                mib(row.rss_after),
                row.bytes_per_connection / 1024.0
            );
        }
    }
    if let Some(path) = &report.plot {
        let bars: Vec<(String, f64)> =
            rows.iter().map(|r| (r.transport.clone(), r.bytes_per_connection / 1024.0)).collect();
        crate::plot::bars(path, "Server memory per idle connection", "KiB per connection", &bars)?;
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct MembersRow {
    presence: bool,
    members: u64,
    rss_before: u64,
    rss_after: u64,
    bytes_per_member: f64,
}

async fn presence_members(members: usize, json: bool) -> Result<(), Error> {
    let mut rows = Vec::new();
    for presence in [true, false] {
        rows.push(members_one(presence, members).await?);
    }
    if json {
        println!("{}", serde_json::json!({ "bench": "members", "results": rows }));
        return Ok(());
    }
    println!("| presence | members | server RSS before | after | per member |");
    println!("|---|---:|---:|---:|---:|");
    for row in &rows {
        println!(
            "| {} | {} | {:.1} MiB | {:.1} MiB | {:.0} B |",
            if row.presence { "on" } else { "off" },
            row.members,
            mib(row.rss_before),
            mib(row.rss_after),
            row.bytes_per_member
        );
    }
    Ok(())
}

async fn members_one(presence: bool, members: usize) -> Result<MembersRow, Error> {
    let server = ServerProcess::start_with(&[
        ("PUSHPULL_PRESENCE__ENABLED", presence.to_string()),
        ("PUSHPULL_PRESENCE__MAX_MEMBERS", (members + 1000).to_string()),
        // Nobody's lease lapses while the bench measures.
        ("PUSHPULL_PRESENCE__POLL_LEASE", "1h".to_owned()),
    ])
    .await?;
    let poll = |n: usize| format!("/v1/topics/bench.members/messages?after=latest&client=m{n}");
    // Warm up allocator pools, the topic and its presence log first.
    for n in 0..500 {
        server.get_json(&poll(members + n)).await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = server.rss()?;
    let progress = progress_bar(members as u64, "polls making members");
    for n in 0..members {
        progress.inc(1);
        server.get_json(&poll(n)).await?;
    }
    progress.finish_and_clear();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = server.rss()?;
    let counted = match presence {
        true => server.get_json("/v1/topics/bench.members/presence/stats").await?["members"]
            .as_u64()
            .unwrap_or(0),
        false => 0,
    };
    if presence && counted != (members + 500) as u64 {
        return Err(bench_error(format!("{counted} members, not {}", members + 500)));
    }
    Ok(MembersRow {
        presence,
        members: members as u64,
        rss_before: before,
        rss_after: after,
        bytes_per_member: after.saturating_sub(before) as f64 / members as f64,
    })
}

#[derive(serde::Serialize)]
struct IdleRow {
    transport: String,
    rss_before: u64,
    rss_after: u64,
    bytes_per_connection: f64,
}

async fn idle_one(transport: &str, connections: usize) -> Result<IdleRow, Error> {
    let (path, gauge) = match transport {
        "sse" => ("/v1/topics/bench.idle/events", "sse_open_streams"),
        "ws" => ("/v1/ws", "ws_open_sockets"),
        "longpoll" => {
            ("/v1/topics/bench.idle/messages?after=latest&wait=30", "longpoll_held_requests")
        }
        other => {
            return Err(bench_error(format!("idle measures sse, ws or longpoll, not {other:?}")));
        }
    };
    // Every connection comes from 127.0.0.1: let the server take them all from one address.
    let per_address =
        ("PUSHPULL_HTTP__MAX_CONNECTIONS_PER_ADDRESS", (connections + 100).to_string());
    let server = ServerProcess::start_with(&[per_address]).await?;
    // Warm up allocator pools and the topic with a few connections first.
    let warm = open_idle(&server, path, 50).await?;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = server.rss()?;
    let started = Instant::now();
    let progress =
        progress_bar(connections as u64, &format!("{transport}: opening idle connections"));
    let held = open_idle_with(&server, path, connections, Some(&progress)).await?;
    progress.finish_and_clear();
    tokio::time::timeout(STEP, async {
        while server.live(gauge).await.unwrap_or(0) < connections as u64 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .map_err(|_| {
        bench_error(format!("the server never reported {connections} idle connections"))
    })?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = server.rss()?;
    let per = after.saturating_sub(before) as f64 / connections as f64;
    eprintln!("{transport}: opened in {:?}", started.elapsed());
    drop(held);
    Ok(IdleRow {
        transport: transport.to_owned(),
        rss_before: before,
        rss_after: after,
        bytes_per_connection: per,
    })
}

/// A progress bar on stderr, hidden when stderr is not a terminal (so logs stay clean).
pub(crate) fn progress_bar(length: u64, message: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(length),
        indicatif::ProgressDrawTarget::stderr_with_hz(8),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:40} [{bar:30}] {pos}/{len} ({elapsed})")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message(message.to_owned());
    bar
}

pub(crate) async fn open_idle(
    server: &ServerProcess,
    path: &str,
    count: usize,
) -> Result<Vec<TcpStream>, Error> {
    open_idle_with(server, path, count, None).await
}

async fn open_idle_with(
    server: &ServerProcess,
    path: &str,
    count: usize,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<Vec<TcpStream>, Error> {
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        if let Some(progress) = progress {
            progress.inc(1);
        }
        let mut stream = TcpStream::connect(server.addr)
            .await
            .map_err(|e| bench_error(format!("connect: {e} (raise `ulimit -n`?)")))?;
        let upgrade = if path == "/v1/ws" {
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        } else {
            ""
        };
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n{upgrade}\r\n", server.addr);
        stream.write_all(request.as_bytes()).await.map_err(|e| bench_error(e.to_string()))?;
        streams.push(stream);
    }
    Ok(streams)
}

async fn quiet(transports: &[String], seconds: u64, report: &Report) -> Result<(), Error> {
    // Each transport against a server of its own, side by side: its request count is then
    // the transport's alone.
    let mut followers = Vec::new();
    for transport in transports {
        let server = ServerProcess::start().await?;
        let relay = CountingRelay::start(server.addr).await?;
        let url = format!("http://{}", relay.addr);
        let client = pushpull::connect(&ClientConfig::new(transport, url)).await?;
        let topic = Topic::new(format!("bench.quiet.{transport}"))?;
        let mut subscription = client.subscribe(&topic, Cursor::Latest).await?;
        // A subscription works as it is read (a polling client polls when asked for more).
        let reading = tokio::spawn(async move { while subscription.next().await.is_some() {} });
        followers.push((transport.clone(), server, relay, client, AbortOnDrop(reading)));
    }
    // Counted from here: the subscriptions are open; what follows is the cost of staying so.
    let mut start = Vec::new();
    for (_, server, relay, ..) in &followers {
        let bytes = (relay.up.load(Ordering::Relaxed), relay.down.load(Ordering::Relaxed));
        start.push((server.live("requests").await?, bytes));
    }
    let progress = progress_bar(seconds, "following idle topics");
    for _ in 0..seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        progress.inc(1);
    }
    progress.finish_and_clear();
    let per_hour = 3600.0 / seconds as f64;
    let mut rows = Vec::new();
    for ((transport, server, relay, ..), (requests, (up, down))) in followers.iter().zip(start) {
        // The health request that reads the count is counted too: not the client's.
        let requests = server.live("requests").await?.saturating_sub(requests + 1);
        let up = relay.up.load(Ordering::Relaxed) - up;
        let down = relay.down.load(Ordering::Relaxed) - down;
        rows.push(serde_json::json!({
            "transport": transport,
            "requests_per_hour": requests as f64 * per_hour,
            "bytes_up_per_hour": up as f64 * per_hour,
            "bytes_down_per_hour": down as f64 * per_hour,
        }));
    }
    drop(followers);
    let number = |row: &serde_json::Value, key: &str| row[key].as_f64().unwrap_or_default();
    if report.json {
        println!(
            "{}",
            serde_json::json!({ "bench": "quiet", "seconds": seconds, "results": rows })
        );
    } else {
        println!("| transport | requests / hour | bytes up / hour | bytes down / hour |");
        println!("|---|---:|---:|---:|");
        for row in &rows {
            println!(
                "| {} | {:.0} | {:.0} | {:.0} |",
                row["transport"].as_str().unwrap_or_default(),
                number(row, "requests_per_hour"),
                number(row, "bytes_up_per_hour"),
                number(row, "bytes_down_per_hour"),
            );
        }
    }
    if let Some(path) = &report.plot {
        let bars: Vec<(String, f64)> = rows
            .iter()
            .map(|row| {
                let total = number(row, "bytes_up_per_hour") + number(row, "bytes_down_per_hour");
                (row["transport"].as_str().unwrap_or_default().to_owned(), total / 1024.0)
            })
            .collect();
        crate::plot::bars(path, "Following an idle topic for an hour", "KiB on the wire", &bars)?;
    }
    Ok(())
}

/// Stops a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The workload of `bench compare`.
#[derive(Debug, Clone, Copy)]
struct Shape {
    messages: usize,
    interval: Duration,
    burst: usize,
    /// About how many bytes each message's payload has (0: a timestamp alone).
    payload: usize,
}

/// The row of `bench compare --ws-plain`: WebSocket with permessage-deflate off.
const WS_PLAIN: &str = "ws, no permessage-deflate";
/// The rows of `bench compare --pages-plain`: pages asked for without gzip.
const POLL_PLAIN: &str = "poll, no gzip";
const LONGPOLL_PLAIN: &str = "longpoll, no gzip";

/// A message's payload: `stamp`, padded to about `size` bytes with JSON-like text (an event
/// much like the next, as compression meets them).
fn padded(stamp: impl std::fmt::Display, size: usize) -> String {
    let mut text = stamp.to_string();
    let mut n = 0;
    while text.len() < size {
        text.push_str(&format!(
            " {{\"id\":{n},\"kind\":\"update\",\"price\":{}.{:02}}}",
            100 + n % 7,
            n * 13 % 100
        ));
        n += 1;
    }
    text
}

async fn compare(
    transports: &[(String, String)],
    shape: Shape,
    redis: &RedisBacking,
    two_nodes: bool,
    report: &Report,
) -> Result<(), Error> {
    let Shape { messages, burst, .. } = shape;
    let (server, publishing_node) = redis.nodes(two_nodes).await?;
    let publish_to = publishing_node.as_ref().unwrap_or(&server);
    if !report.json {
        println!(
            "| transport | latency p50 | p90 | p99 | max | bytes to subscriber / message | requests / message | burst of {burst}: messages/s |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    }
    let mut rows = Vec::new();
    for (transport, name) in transports {
        let progress =
            progress_bar((messages + burst) as u64, &format!("{name}: latency, then burst"));
        let row = measure(&server, publish_to, transport, name, shape, &progress).await?;
        progress.finish_and_clear();
        let at = |q| row.percentile(q);
        if !report.json {
            println!(
                "| {name} | {} | {} | {} | {} | {:.0} | {:.2} | {:.0} |",
                ms(at(50)),
                ms(at(90)),
                ms(at(99)),
                ms(*row.latencies.last().expect("measured")),
                row.bytes_per_message,
                row.requests_per_message,
                row.burst_rate,
            );
        }
        rows.push((name.clone(), row));
    }
    if report.json {
        let seconds = |d: Duration| d.as_secs_f64();
        let results: Vec<serde_json::Value> = rows
            .iter()
            .map(|(transport, row)| {
                let at = |q| row.percentile(q);
                serde_json::json!({
                    "transport": transport,
                    "latency_seconds": {
                        "p50": seconds(at(50)), "p90": seconds(at(90)), "p99": seconds(at(99)),
                        "max": seconds(*row.latencies.last().expect("measured")),
                    },
                    "bytes_per_message": row.bytes_per_message,
                    "requests_per_message": row.requests_per_message,
                    "burst_messages_per_second": row.burst_rate,
                })
            })
            .collect();
        let shape = serde_json::json!({
            "messages": messages, "interval_seconds": shape.interval.as_secs_f64(),
            "burst": burst, "payload": shape.payload,
        });
        println!(
            "{}",
            serde_json::json!({ "bench": "compare", "shape": shape, "results": results })
        );
    }
    if let Some(path) = &report.plot {
        let series: Vec<(String, Vec<Duration>)> =
            rows.into_iter().map(|(transport, row)| (transport, row.latencies)).collect();
        crate::plot::latency_distribution(path, &series)?;
    }
    Ok(())
}

struct Row {
    /// Sorted.
    latencies: Vec<Duration>,
    bytes_per_message: f64,
    requests_per_message: f64,
    burst_rate: f64,
}

impl Row {
    /// The latency at percentile `q` (0 to 100).
    fn percentile(&self, q: usize) -> Duration {
        self.latencies[(self.latencies.len() * q / 100).min(self.latencies.len() - 1)]
    }
}

async fn measure(
    server: &ServerProcess,
    publish_to: &ServerProcess,
    transport: &str,
    name: &str,
    Shape { messages, interval, burst, payload }: Shape,
    progress: &indicatif::ProgressBar,
) -> Result<Row, Error> {
    let relay = CountingRelay::start(server.addr).await?;
    let mut config = ClientConfig::new(transport, format!("http://{}", relay.addr));
    if name == WS_PLAIN {
        let mut ws = toml::Table::new();
        ws.insert("permessage_deflate".into(), false.into());
        config.settings.insert("ws".into(), ws);
    }
    let pages_plain = name == POLL_PLAIN || name == LONGPOLL_PLAIN;
    if pages_plain {
        let mut pages = toml::Table::new();
        pages.insert("gzip".into(), false.into());
        config.settings.insert(transport.into(), pages);
    }
    let subscriber = pushpull::connect(&config).await?;
    let publisher = pushpull::connect(&ClientConfig::new("poll", publish_to.url())).await?;
    let plain = if name == WS_PLAIN || pages_plain { ".plain" } else { "" };
    let topic = Topic::new(format!("bench.{transport}{plain}"))?;
    let mut subscription = subscriber.subscribe(&topic, Cursor::Latest).await?;

    // Latency: one message at a time, each carrying its send time.
    let requests_before = server.live("requests").await?;
    let bytes_before = relay.down.load(Ordering::Relaxed);
    let publishing = {
        let (publisher, topic) = (publisher.clone(), topic.clone());
        tokio::spawn(async move {
            for _ in 0..messages {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_nanos();
                publisher.publish(&topic, Publication::new(padded(now, payload))).await?;
                tokio::time::sleep(interval).await;
            }
            Ok::<_, Error>(())
        })
    };
    let mut latencies = Vec::with_capacity(messages);
    while latencies.len() < messages {
        let delivery = tokio::time::timeout(STEP, subscription.next())
            .await
            .map_err(|_| bench_error(format!("{transport}: a message did not arrive")))?
            .ok_or_else(|| bench_error(format!("{transport}: the subscription ended")))??;
        if let Some(message) = delivery.as_message() {
            let stamp = message.text().and_then(|t| t.split(' ').next());
            let sent: u128 = stamp.and_then(|t| t.parse().ok()).unwrap_or_default();
            let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_nanos();
            latencies.push(Duration::from_nanos(now.saturating_sub(sent) as u64));
            progress.inc(1);
        }
    }
    publishing.await.map_err(|e| bench_error(e.to_string()))??;
    let bytes = relay.down.load(Ordering::Relaxed) - bytes_before;
    // The publisher's requests and the two health requests are not the subscriber's.
    let requests =
        server.live("requests").await?.saturating_sub(requests_before + messages as u64 + 1);
    latencies.sort();

    // Throughput: a burst published with eight requests in flight.
    let started = Instant::now();
    let bursting = {
        let (publisher, topic) = (publisher.clone(), topic.clone());
        tokio::spawn(async move {
            futures::stream::iter(0..burst)
                .map(|n| {
                    let (publisher, topic) = (publisher.clone(), topic.clone());
                    let text = padded(n, payload);
                    async move { publisher.publish(&topic, Publication::new(text)).await }
                })
                .buffer_unordered(8)
                .collect::<Vec<_>>()
                .await
        })
    };
    let mut received = 0;
    while received < burst {
        let delivery = tokio::time::timeout(STEP, subscription.next())
            .await
            .map_err(|_| bench_error(format!("{transport}: the burst stalled")))?
            .ok_or_else(|| bench_error(format!("{transport}: the subscription ended")))??;
        if delivery.as_message().is_some() {
            received += 1;
            progress.inc(1);
        }
    }
    let elapsed = started.elapsed();
    for result in bursting.await.map_err(|e| bench_error(e.to_string()))? {
        result?;
    }
    Ok(Row {
        latencies,
        bytes_per_message: bytes as f64 / messages as f64,
        requests_per_message: requests as f64 / messages as f64,
        burst_rate: burst as f64 / elapsed.as_secs_f64(),
    })
}

/// A loopback TCP relay that counts the bytes flowing back to the client.
struct CountingRelay {
    addr: SocketAddr,
    /// Bytes from the server to the client.
    down: Arc<AtomicU64>,
    /// Bytes from the client to the server.
    up: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// Copies `from` to `to`, counting the bytes in `counter`, until either side closes.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    counter: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

impl CountingRelay {
    async fn start(upstream: SocketAddr) -> Result<Self, Error> {
        let listener =
            TcpListener::bind(("127.0.0.1", 0)).await.map_err(|e| bench_error(e.to_string()))?;
        let addr = listener.local_addr().map_err(|e| bench_error(e.to_string()))?;
        let (down, up) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let counters = (down.clone(), up.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (down, up) = (counters.0.clone(), counters.1.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else { return };
                    // Without these, Nagle's algorithm and delayed ACKs add ~40 ms stalls that
                    // belong to the relay, not to the transport measured.
                    let _ = (client.set_nodelay(true), server.set_nodelay(true));
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::select! {
                        () = pump(client_read, server_write, up) => {},
                        () = pump(server_read, client_write, down) => {},
                    }
                });
            }
        });
        Ok(Self { addr, down, up, task })
    }
}

impl Drop for CountingRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub(crate) fn bench_error(message: String) -> Error {
    Error::new(ErrorKind::Backend, format!("bench: {message}"))
}

/// Peak memory of a server and a streaming client moving one large payload.
pub(crate) async fn large(size_mib: usize, json: bool) -> Result<(), Error> {
    let size = size_mib * 1024 * 1024;
    let server = ServerProcess::start_with(&[
        ("PUSHPULL_BROKER__MAX_PAYLOAD", (size + 1024).to_string()),
        ("PUSHPULL_BROKER__RETENTION__MAX_BYTES", (2 * size + 4096).to_string()),
    ])
    .await?;
    let url = server.url();
    let client_before = own_peak()?;
    let server_before = server.peak()?;
    let stream = pushpull::connect(&ClientConfig::from_toml(&format!(
        "transport = \"stream\"\nurl = \"{url}\"\n[stream]\nframing = \"binary\"\nmax_payload = {}",
        size + 1024
    ))?)
    .await?;
    let topic = Topic::new("bench.large")?;
    let mut subscription = stream.subscribe(&topic, Cursor::Latest).await?;
    let payload = bytes::Bytes::from(vec![b'x'; size]);
    let started = Instant::now();
    stream.publish(&topic, Publication::new(payload.clone())).await?;
    let delivery = tokio::time::timeout(STEP, subscription.next())
        .await
        .map_err(|_| bench_error("the payload did not arrive".into()))?
        .ok_or_else(|| bench_error("the subscription ended".into()))??;
    let elapsed = started.elapsed();
    let received = delivery.as_message().map_or(0, |m| m.payload.len());
    if received != size {
        return Err(bench_error(format!("received {received} bytes, not {size}")));
    }
    let server_peak = server.peak()?;
    let client_peak = own_peak()?;
    // The server keeps one copy (the broker's); the client holds what it published and what it
    // received. Whatever is above that is transport overhead.
    let server_over = server_peak.saturating_sub(server_before + size as u64);
    let client_over = client_peak.saturating_sub(client_before + 2 * size as u64);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "bench": "large", "payload_bytes": size, "seconds": elapsed.as_secs_f64(),
                "server_peak_over_payload_bytes": server_over,
                "client_peak_over_two_copies_bytes": client_over,
            })
        );
    } else {
        println!(
            "| payload | publish + stream time | server peak RSS over the payload | client peak RSS over its two copies |"
        );
        println!("|---:|---:|---:|---:|");
        println!(
            "| {size_mib} MiB | {} | {:.1} MiB | {:.1} MiB |",
            ms(elapsed),
            mib(server_over),
            mib(client_over)
        );
    }
    drop(payload);
    Ok(())
}

/// This process's peak resident memory, in bytes.
fn own_peak() -> Result<u64, Error> {
    peak_of("self")
}

fn peak_of(pid: &str) -> Result<u64, Error> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| bench_error(format!("reading /proc/{pid}/status: {e} (Linux only)")))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| bench_error("no VmHWM line".into()))
}

/// Many SSE streams on one topic: the server's CPU time per message delivered.
async fn fanout(
    subscribers: usize,
    messages: usize,
    redis: &RedisBacking,
    two_nodes: bool,
    json: bool,
) -> Result<(), Error> {
    let (server, publishing_node) = redis.nodes(two_nodes).await?;
    let publish_to = publishing_node.as_ref().unwrap_or(&server);
    let streams = open_idle(&server, "/v1/topics/bench.fanout/events", subscribers).await?;
    tokio::time::timeout(STEP, async {
        while server.live("sse_open_streams").await.unwrap_or(0) < subscribers as u64 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .map_err(|_| bench_error("the streams did not open".into()))?;
    // Each reader counts the message events it gets (one `timestamp:` field each).
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                let (mut seen, mut buf, mut tail) = (0usize, vec![0u8; 16 * 1024], Vec::new());
                while seen < messages {
                    let n = match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    tail.extend_from_slice(&buf[..n]);
                    seen += tail.windows(11).filter(|w| w == b"timestamp: ").count();
                    let keep = tail.len().saturating_sub(10);
                    tail.drain(..keep);
                }
                seen
            })
        })
        .collect();
    let publisher = pushpull::connect(&ClientConfig::new("poll", publish_to.url())).await?;
    let topic = Topic::new("bench.fanout")?;
    let cpu_before = server.cpu()?;
    let started = Instant::now();
    for n in 0..messages {
        let payload = format!("{{\"tick\":{n},\"price\":{:.2}}}", 100.0 + n as f64 / 100.0);
        publisher.publish(&topic, Publication::new(payload)).await?;
    }
    let mut delivered = 0;
    for reader in readers {
        delivered += tokio::time::timeout(STEP, reader)
            .await
            .map_err(|_| bench_error("a stream stalled".into()))?
            .map_err(|e| bench_error(e.to_string()))?;
    }
    let elapsed = started.elapsed();
    let cpu = server.cpu()?.saturating_sub(cpu_before);
    let per_delivery = cpu.as_secs_f64() / delivered.max(1) as f64;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "bench": "fanout", "subscribers": subscribers, "messages": messages,
                "deliveries": delivered, "seconds": elapsed.as_secs_f64(),
                "server_cpu_seconds": cpu.as_secs_f64(), "cpu_seconds_per_delivery": per_delivery,
            })
        );
    } else {
        println!(
            "| subscribers | messages | deliveries | wall time | server CPU | CPU per delivery |"
        );
        println!("|---:|---:|---:|---:|---:|---:|");
        println!(
            "| {subscribers} | {messages} | {delivered} | {} | {} | {:.2} µs |",
            ms(elapsed),
            ms(cpu),
            per_delivery * 1e6
        );
    }
    Ok(())
}

/// How the readers of `bench many` follow their topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ManyShape {
    /// One stream of every topic, its events' ids the cursor set (what EventSource resumes).
    Set,
    /// One stream of every topic, its events' ids their own cursors (`event_ids=message`).
    MessageIds,
    /// A stream per topic.
    PerTopic,
}

/// What one way of following many topics cost.
struct ManyRun {
    connections: usize,
    deliveries: usize,
    bytes: usize,
    elapsed: Duration,
    cpu: Duration,
}

/// `readers` readers each follow `topics` topics over SSE: on one stream of many topics
/// (`/v1/events?topic=…`), or on one stream per topic; `messages` are published to each topic
/// (one batch of a message per topic at a time). Bytes are the response bodies after each
/// stream's first record (chunk framing included), CPU the server process's.
async fn many_run(
    readers: usize,
    topics: usize,
    messages: usize,
    shape: ManyShape,
) -> Result<ManyRun, Error> {
    let multiplexed = shape != ManyShape::PerTopic;
    // Every connection comes from this one address.
    let per_address = (readers * topics + 64).to_string();
    let server =
        ServerProcess::start_with(&[("PUSHPULL_HTTP__MAX_CONNECTIONS_PER_ADDRESS", per_address)])
            .await?;
    let names: Vec<String> = (0..topics).map(|n| format!("bench.many.{n}")).collect();
    let paths: Vec<String> = if multiplexed {
        let query: Vec<String> = names.iter().map(|t| format!("topic={t}")).collect();
        let ids = if shape == ManyShape::MessageIds { "&event_ids=message" } else { "" };
        vec![format!("/v1/events?{}{ids}", query.join("&"))]
    } else {
        names.iter().map(|t| format!("/v1/topics/{t}/events")).collect()
    };
    let mut streams = Vec::new();
    for path in &paths {
        streams.extend(open_idle(&server, path, readers).await?);
    }
    let connections = streams.len();
    tokio::time::timeout(STEP, async {
        while server.live("sse_open_streams").await.unwrap_or(0) < connections as u64 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .map_err(|_| bench_error("the streams did not open".into()))?;
    let per_stream = if multiplexed { topics * messages } else { messages };
    // Each reader skips the head and the first record, then counts bytes and message events
    // (one `timestamp:` field each).
    let counting: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                let (mut seen, mut bytes, mut buf) = (0usize, 0usize, vec![0u8; 16 * 1024]);
                let (mut head, mut started, mut tail) = (Vec::new(), false, Vec::new());
                while seen < per_stream {
                    let n = match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let mut chunk = &buf[..n];
                    if !started {
                        head.extend_from_slice(chunk);
                        let Some(end) = head.windows(2).position(|w| w == b"\n\n") else {
                            continue;
                        };
                        started = true;
                        let rest = head.split_off(end + 2);
                        bytes += rest.len();
                        tail = rest;
                        chunk = &[];
                    }
                    bytes += chunk.len();
                    tail.extend_from_slice(chunk);
                    seen += tail.windows(11).filter(|w| w == b"timestamp: ").count();
                    let keep = tail.len().saturating_sub(10);
                    tail.drain(..keep);
                }
                (seen, bytes)
            })
        })
        .collect();
    let publisher = pushpull::connect(&ClientConfig::new("poll", server.url())).await?;
    let topics: Vec<Topic> = names.iter().map(Topic::new).collect::<Result<_, _>>()?;
    let cpu_before = server.cpu()?;
    let started = Instant::now();
    for n in 0..messages {
        let batch = topics
            .iter()
            .map(|topic| {
                let payload = format!("{{\"tick\":{n},\"price\":{:.2}}}", 100.0 + n as f64 / 100.0);
                (topic.clone(), Publication::new(payload))
            })
            .collect();
        for answer in publisher.publish_many(batch).await? {
            answer?;
        }
    }
    let (mut deliveries, mut bytes) = (0, 0);
    for reader in counting {
        let (seen, read) = tokio::time::timeout(STEP, reader)
            .await
            .map_err(|_| bench_error("a stream stalled".into()))?
            .map_err(|e| bench_error(e.to_string()))?;
        deliveries += seen;
        bytes += read;
    }
    let elapsed = started.elapsed();
    let cpu = server.cpu()?.saturating_sub(cpu_before);
    Ok(ManyRun { connections, deliveries, bytes, elapsed, cpu })
}

async fn many(readers: usize, topics: usize, messages: usize, json: bool) -> Result<(), Error> {
    if readers == 0 || topics == 0 || messages == 0 {
        return Err(bench_error("readers, topics and messages must each be at least 1".into()));
    }
    let shapes = [
        (format!("one stream of {topics} topics, ids the set"), ManyShape::Set),
        (format!("one stream of {topics} topics, event_ids=message"), ManyShape::MessageIds),
        (format!("{topics} streams of one topic"), ManyShape::PerTopic),
    ];
    let mut rows = Vec::new();
    for (name, shape) in shapes {
        rows.push((name, many_run(readers, topics, messages, shape).await?));
    }
    if json {
        let runs: Vec<_> = rows
            .iter()
            .map(|(name, run)| {
                serde_json::json!({
                    "shape": name, "connections": run.connections, "deliveries": run.deliveries,
                    "bytes": run.bytes, "seconds": run.elapsed.as_secs_f64(),
                    "server_cpu_seconds": run.cpu.as_secs_f64(),
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "bench": "many", "readers": readers, "runs": runs }));
        return Ok(());
    }
    println!(
        "| {readers} readers | connections | deliveries | bytes per delivery | wall time | \
         server CPU | CPU per delivery |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, run) in rows {
        let delivered = run.deliveries.max(1) as f64;
        println!(
            "| {name} | {} | {} | {:.1} | {} | {} | {:.2} µs |",
            run.connections,
            run.deliveries,
            run.bytes as f64 / delivered,
            ms(run.elapsed),
            ms(run.cpu),
            run.cpu.as_secs_f64() / delivered * 1e6
        );
    }
    Ok(())
}

/// Webhook deliveries a second to a local sink, against `h2load`'s raw request rate to the same
/// sink in the same run (one connection, one request at a time: a webhook endpoint receives its
/// messages in order, one at a time).
async fn webhooks(messages: usize, json: bool) -> Result<(), Error> {
    use std::sync::atomic::AtomicUsize;
    // The sink: answers every POST with 204 and counts them.
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let route = pushpull_http::Route::new(http::Method::POST, "/hook", move |request, _| {
        let counter = counter.clone();
        async move {
            let _ = pushpull_http::request::body(request, 1 << 20, Duration::from_secs(10)).await?;
            counter.fetch_add(1, Ordering::Relaxed);
            let mut response = http::Response::new(pushpull_http::empty());
            *response.status_mut() = http::StatusCode::NO_CONTENT;
            Ok(response)
        }
    });
    let listener =
        TcpListener::bind(("127.0.0.1", 0)).await.map_err(|e| bench_error(e.to_string()))?;
    let sink = pushpull_http::spawn(
        listener,
        pushpull_http::Router::new().with([route]),
        pushpull_http::ServeConfig::default(),
    )
    .map_err(|e| bench_error(e.to_string()))?;
    let hook = format!("http://{}/hook", sink.local_addr());

    // h2load, HTTP/1.1, one connection, one request at a time, a body like a delivery's.
    let body = std::env::temp_dir().join(format!("pushpull-bench-body-{}", std::process::id()));
    let sample = r#"{"type":"message","timestamp":"2026-11-26T00:00:00Z","data":{"topic":"bench","cursor":"0000000000000001-1","offset":1,"data":"{\"tick\":1,\"price\":100.01}"}}"#;
    std::fs::write(&body, sample).map_err(|e| bench_error(e.to_string()))?;
    let output = Command::new("h2load")
        .args(["--h1", "-c", "1", "-m", "1", "-n", &messages.to_string()])
        .arg("-d")
        .arg(&body)
        .args(["-H", "content-type: application/json", &hook])
        .output()
        .await
        .map_err(|e| bench_error(format!("cannot run h2load (Debian's nghttp2-client): {e}")))?;
    let _ = std::fs::remove_file(&body);
    let text = String::from_utf8_lossy(&output.stdout);
    let raw = text
        .lines()
        .find_map(|line| line.split(", ").find_map(|part| part.strip_suffix(" req/s")))
        .and_then(|rate| rate.trim().parse::<f64>().ok())
        .ok_or_else(|| bench_error(format!("no req/s in h2load's output: {text}")))?;

    // pushpull: the messages are published first, then an endpoint registered from the
    // beginning receives them as fast as it delivers.
    let server = ServerProcess::start_with(&[
        ("PUSHPULL_TRANSPORTS__WEBHOOK__ALLOW_LOOPBACK", "true".to_owned()),
        // Every message stays in the log until it is delivered.
        ("PUSHPULL_BROKER__RETENTION__MAX_MESSAGES", messages.max(1).to_string()),
    ])
    .await?;
    let publisher = pushpull::connect(&ClientConfig::new("poll", server.url())).await?;
    let topic = Topic::new("bench.webhooks")?;
    for n in 0..messages {
        let payload = format!("{{\"tick\":{n},\"price\":{:.2}}}", 100.0 + n as f64 / 100.0);
        publisher.publish(&topic, Publication::new(payload)).await?;
    }
    received.store(0, Ordering::Relaxed);
    let registration =
        serde_json::json!({ "url": hook, "topics": [topic.as_str()], "after": "beginning" });
    let started = Instant::now();
    let mut stream =
        TcpStream::connect(server.addr).await.map_err(|e| bench_error(e.to_string()))?;
    let body = registration.to_string();
    let request = format!(
        "POST /v1/webhooks HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        server.addr,
        body.len()
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| bench_error(e.to_string()))?;
    tokio::time::timeout(STEP, async {
        while received.load(Ordering::Relaxed) < messages {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .map_err(|_| {
        let got = received.load(Ordering::Relaxed);
        bench_error(format!("{got} of {messages} deliveries arrived in {STEP:?}"))
    })?;
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "bench": "webhooks", "messages": messages, "h2load_requests_per_second": raw,
                "deliveries_per_second": rate,
            })
        );
    } else {
        println!(
            "| messages | h2load to the sink (req/s) | webhook deliveries to the sink (/s) | ratio |"
        );
        println!("|---:|---:|---:|---:|");
        println!("| {messages} | {raw:.0} | {rate:.0} | {:.0} % |", rate / raw * 100.0);
    }
    Ok(())
}
