//! `pushpull bench peers`: the same workloads against pushpull and Nchan (nginx's pub/sub
//! module, in C), interleaved, each server a fresh process pinned to one core, with an open-loop
//! load generator of its own: subscribers from many 127.x addresses, a publisher on a fixed
//! schedule that writes each message's scheduled send time into it (so latency includes any
//! queueing: no coordinated omission), HDR histograms, and the servers' CPU time and resident
//! memory from /proc. Loopback only; every run is bounded and stops by itself.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use pushpull::{Error, ErrorKind};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};

/// The servers compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Peer {
    Pushpull,
    Nchan,
}

/// The name of a value on the command line.
fn arg_of(value: &impl clap::ValueEnum) -> String {
    value.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default()
}

impl Transport {
    /// Its name on the command line.
    pub(crate) fn arg(self) -> String {
        arg_of(&self)
    }
}

impl Peer {
    /// Its name on the command line.
    pub(crate) fn arg(self) -> String {
        arg_of(&self)
    }

    fn name(self) -> &'static str {
        match self {
            Peer::Pushpull => "pushpull",
            Peer::Nchan => "Nchan",
        }
    }
}

/// One workload: how clients follow a topic and how fast it is published to.
#[derive(Debug, Clone)]
pub(crate) struct Workload {
    pub(crate) name: String,
    pub(crate) transport: Transport,
    pub(crate) subscribers: usize,
    /// Messages a second; 0 measures idle connections only.
    pub(crate) rate: u64,
    pub(crate) seconds: u64,
    /// Topics the subscribers are spread over (the `n`th follows [`topic_of`]`(topics, n)`)
    /// and the messages published in turn.
    pub(crate) topics: usize,
}

impl Workload {
    /// The deliveries `published` messages make: each to the subscribers of its topic.
    pub(crate) fn expected(&self, published: u64) -> u64 {
        let topics = self.topics.max(1) as u64;
        let subscribers = self.subscribers as u64;
        // Topic `t` has one subscriber more than the even share when `t < subscribers % topics`.
        let (share, extra) = (subscribers / topics, subscribers % topics);
        (0..published).map(|k| share + u64::from(k % topics < extra)).sum()
    }
}

/// The topic the `n`th subscriber of a run over `topics` topics follows, and the `n`th message
/// is published to: `bench` alone, or `bench0`, `bench1`, … in turn (word characters only, as
/// Nchan's channel locations match).
pub(crate) fn topic_of(topics: usize, n: usize) -> String {
    if topics <= 1 { "bench".to_owned() } else { format!("bench{}", n % topics) }
}

/// How subscribers read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Transport {
    Sse,
    Ws,
    Longpoll,
    /// Short polling: a request every [`POLL_INTERVAL`], answered at once (pushpull only).
    Poll,
}

/// How often a short-polling client asks: the interval pushpull's clients poll at by default.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What the subscribers of a run count together: messages seen, and bytes sent and received
/// (HTTP and WebSocket bytes, TCP and IP headers not included).
#[derive(Debug, Clone, Default)]
pub(crate) struct Counters {
    pub(crate) seen: Arc<AtomicU64>,
    pub(crate) bytes: Arc<AtomicU64>,
    /// One latency histogram for all the subscribers, or (`None`) one each.
    pub(crate) latencies: Option<Arc<std::sync::Mutex<Histogram<u64>>>>,
}

impl Counters {
    fn add_bytes(&self, bytes: usize) {
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Measured {
    pub(crate) deliveries: u64,
    pub(crate) expected: u64,
    pub(crate) cpu_per_delivery_us: f64,
    pub(crate) deliveries_per_cpu_second: f64,
    pub(crate) rss_per_connection_kb: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    /// How long opening every subscriber took, one after another (each waits for the
    /// server's answer that it is subscribed, where the protocol has one).
    pub(crate) connect_seconds: f64,
    /// The machine's kernel slab memory added per connection while they were open (both ends
    /// of each: the generator's socket and the server's), from /proc/meminfo.
    pub(crate) kernel_per_connection_kb: f64,
    pub(crate) generator_cpu_share: f64,
    /// The server's CPU time over the publishing time (1.0 = one core busy).
    pub(crate) server_cpu_share: f64,
    /// The server's memory per connection once the messages were published (its topics
    /// holding them), against before the subscribers opened.
    pub(crate) loaded_per_connection_kb: f64,
    /// Publishes the server refused or that failed (not counted in `expected`).
    pub(crate) publish_failures: u64,
}

/// Where a server of either kind listens.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target {
    pub(crate) peer: Peer,
    pub(crate) addr: SocketAddr,
}

impl Target {
    fn sse_path(&self, topic: &str) -> String {
        match self.peer {
            Peer::Pushpull => format!("/v1/topics/{topic}/events"),
            Peer::Nchan => format!("/sub/{topic}"),
        }
    }

    fn publish_path(&self, topic: &str) -> String {
        match self.peer {
            Peer::Pushpull => format!("/v1/topics/{topic}"),
            Peer::Nchan => format!("/pub/{topic}"),
        }
    }
}

/// A server process of either kind, pinned to `core`.
pub(crate) struct Server {
    pub(crate) target: Target,
    child: Child,
    /// The process whose CPU and memory are measured.
    pid: u32,
    /// Whether it has worker processes (nginx with a master).
    workers: bool,
    _dir: Option<TempDir>,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn error(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Backend, message.into())
}

pub(crate) fn free_port() -> Result<u16, Error> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| error(e.to_string()))?;
    Ok(listener.local_addr().map_err(|e| error(e.to_string()))?.port())
}

/// Where Debian installs the Nchan module.
const NCHAN_MODULE: &str = "/usr/lib/nginx/modules/ngx_nchan_module.so";

impl Server {
    pub(crate) async fn start(peer: Peer, core: usize) -> Result<Server, Error> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        match peer {
            // The memory broker's table holds 10,000 topics (and as many presence logs) by
            // default; the topics runs hold up to 19,000 on one process.
            Peer::Pushpull => {
                Self::pushpull(addr, core, &[("PUSHPULL_BROKER__MAX_TOPICS", "100000".into())])
                    .await
            }
            Peer::Nchan => Self::nchan(addr, core, None).await,
        }
    }

    /// A pushpull process on `addr` pinned to `core`, with `env` added to its settings.
    pub(crate) async fn pushpull(
        addr: SocketAddr,
        core: usize,
        env: &[(&str, String)],
    ) -> Result<Server, Error> {
        let exe = crate::bench::server_exe()?;
        let child = Command::new("taskset")
            .args(["-c", &core.to_string()])
            .arg(exe)
            .args(["serve", "--listen", &addr.to_string()])
            .env("PUSHPULL_LOG", "warn")
            // Every subscriber of the bench's one topic is a member (presence is on by
            // default), and the scale runs hold more than the default 10,000.
            .env("PUSHPULL_PRESENCE__MAX_MEMBERS", "100000")
            // The generator connects from many addresses; none is over the limit.
            .env("PUSHPULL_HTTP__MAX_CONNECTIONS_PER_ADDRESS", "100000")
            // As many as its open files allow (it keeps 256 for itself).
            .env(
                "PUSHPULL_HTTP__MAX_CONNECTIONS",
                open_files_limit()?.saturating_sub(256).min(100_000).to_string(),
            )
            .envs(env.iter().map(|(key, value)| (key, value)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| error(format!("cannot start pushpull under taskset: {e}")))?;
        let target = Target { peer: Peer::Pushpull, addr };
        let mut server =
            Server { target, pid: child.id().unwrap_or(0), child, workers: false, _dir: None };
        let stdout = server.child.stdout.take().expect("piped");
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(30), BufReader::new(stdout).read_line(&mut line))
            .await
            .map_err(|_| error("pushpull did not start"))?
            .map_err(|e| error(e.to_string()))?;
        if line.is_empty() {
            return Err(error("pushpull exited at start: see its error above"));
        }
        Ok(server)
    }

    /// nginx with Nchan on `addr` pinned to `core`: one process that serves, or with `workers`,
    /// a master and that many worker processes, each with a listening socket of its own
    /// (`reuseport`, as pushpull's processes share a port).
    pub(crate) async fn nchan(
        addr: SocketAddr,
        core: usize,
        workers: Option<usize>,
    ) -> Result<Server, Error> {
        if !Path::new(NCHAN_MODULE).exists() {
            return Err(error(format!(
                "{NCHAN_MODULE} is missing: install Debian's libnginx-mod-nchan (scripts/bench-peers does)"
            )));
        }
        let port = addr.port();
        let dir =
            std::env::temp_dir().join(format!("pushpull-nchan-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| error(e.to_string()))?;
        let conf = nginx_conf(&dir, port, workers);
        std::fs::write(dir.join("nginx.conf"), conf).map_err(|e| error(e.to_string()))?;
        let child = Command::new("taskset")
            .args(["-c", &core.to_string(), "/usr/sbin/nginx", "-p"])
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| error(format!("cannot start nginx: {e}")))?;
        let pid = child.id().unwrap_or(0);
        let target = Target { peer: Peer::Nchan, addr };
        let server =
            Server { target, child, pid, workers: workers.is_some(), _dir: Some(TempDir(dir)) };
        let started = Instant::now();
        loop {
            if TcpStream::connect(addr).await.is_ok()
                && workers.is_none_or(|workers| server.pids().len() > workers)
            {
                return Ok(server);
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(error("nginx did not start"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's processes: the one started, and its workers (nginx's, with a master).
    pub(crate) fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.pid];
        if self.workers {
            pids.extend(children_of(self.pid));
        }
        pids
    }

    pub(crate) fn cpu(&self) -> Result<Duration, Error> {
        cpu_of(&self.pid.to_string())
    }

    fn rss(&self) -> Result<u64, Error> {
        rss_of(self.pid)
    }

    pub(crate) async fn stop(mut self) {
        if self.workers {
            // nginx's master stops its workers (which a kill of the master alone would orphan).
            let workers = children_of(self.pid);
            let kill = |signal: &str, pid: u32| {
                Command::new("kill").args([signal, &pid.to_string()]).stderr(Stdio::null()).status()
            };
            let _ = kill("-TERM", self.pid).await;
            let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
            // Any worker still there after its master has gone.
            for pid in workers {
                let _ = kill("-KILL", pid).await;
            }
        }
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

fn nginx_conf(dir: &Path, port: u16, workers: Option<usize>) -> String {
    let dir = dir.display();
    let (processes, reuseport) = match workers {
        // One process that serves (no master): what is pinned and measured, and nothing is
        // orphaned when it is stopped.
        None => ("master_process off;".to_owned(), ""),
        Some(workers) => (format!("master_process on;\nworker_processes {workers};"), " reuseport"),
    };
    format!(
        "load_module {NCHAN_MODULE};
{processes}
worker_rlimit_nofile 65536;
daemon off;
error_log {dir}/error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 60000; }}
http {{
  access_log off;
  # The publisher's keep-alive connections carry every publish (nginx closes one after 1,000
  # requests by default).
  keepalive_requests 10000000;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  nchan_max_reserved_memory 512M;
  server {{
    listen 127.0.0.1:{port} backlog=4096{reuseport};
    location ~ ^/pub/(\\w+)$ {{
      nchan_publisher;
      nchan_channel_id $1;
      nchan_message_buffer_length 1000;
      nchan_message_timeout 1h;
    }}
    location ~ ^/sub/(\\w+)$ {{
      nchan_subscriber;
      nchan_channel_id $1;
      nchan_subscriber_first_message newest;
    }}
  }}
}}
"
    )
}

/// Resident memory of process `pid`, in bytes, from /proc.
pub(crate) fn rss_of(pid: u32) -> Result<u64, Error> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| error(format!("reading /proc/{pid}/status: {e} (Linux only)")))?;
    kib_field(&status, "VmRSS:").ok_or_else(|| error("no VmRSS line"))
}

/// Proportional set size of process `pid`'s anonymous and shared memory, in bytes, from /proc:
/// its resident heap, stacks and shared memory with each page shared among processes counted in
/// shares, so that a sum over processes that share memory (nginx's workers, its shared zone)
/// counts each page once. Pages of files (the binary, its libraries) are left out: they are not
/// what connections cost, and their shares change whenever another process maps the same file
/// (a server of the same binary starting elsewhere on the machine made a run's growth
/// negative). Where the kernel does not split it so, the whole proportional set size.
pub(crate) fn pss_of(pid: u32) -> Result<u64, Error> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .map_err(|e| error(format!("reading /proc/{pid}/smaps_rollup: {e} (Linux only)")))?;
    match (kib_field(&rollup, "Pss_Anon:"), kib_field(&rollup, "Pss_Shmem:")) {
        (Some(anon), Some(shmem)) => Ok(anon + shmem),
        _ => kib_field(&rollup, "Pss:").ok_or_else(|| error("no Pss line")),
    }
}

/// The processes whose parent is `pid`, from /proc.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat")).ok().is_some_and(|stat| {
                // After the command's closing parenthesis: state, then the parent's pid.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

/// The kernel's slab memory (sockets, their files and epoll entries among it), in bytes, from
/// /proc/meminfo.
pub(crate) fn slab() -> Result<u64, Error> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| error(format!("reading /proc/meminfo: {e} (Linux only)")))?;
    kib_field(&meminfo, "Slab:").ok_or_else(|| error("no Slab line in /proc/meminfo"))
}

/// The value of the `key` line (`Key:   1234 kB`) of a /proc file, in bytes.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// How many files this process may hold open (the soft limit), from /proc.
pub(crate) fn open_files_limit() -> Result<usize, Error> {
    let limits = std::fs::read_to_string("/proc/self/limits")
        .map_err(|e| error(format!("reading /proc/self/limits: {e} (Linux only)")))?;
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| match v.split_whitespace().next()? {
            "unlimited" => Some(usize::MAX),
            soft => soft.parse().ok(),
        })
        .ok_or_else(|| error("no open files line in /proc/self/limits"))
}

/// CPU time used so far by process `pid` (or `self`): the time its threads have run, in
/// nanoseconds, from each thread's /proc schedstat (clock ticks, at 10 ms, are too coarse for
/// a run of a few thousand deliveries); the user and system time of /proc stat where there is
/// no schedstat.
pub(crate) fn cpu_of(pid: &str) -> Result<Duration, Error> {
    if let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        let mut total = Duration::ZERO;
        let mut read = false;
        for thread in threads.flatten() {
            let Ok(schedstat) = std::fs::read_to_string(thread.path().join("schedstat")) else {
                continue;
            };
            if let Some(ns) = schedstat.split_whitespace().next().and_then(|v| v.parse().ok()) {
                total += Duration::from_nanos(ns);
                read = true;
            }
        }
        if read {
            return Ok(total);
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| error(format!("reading /proc/{pid}/stat: {e}")))?;
    let fields: Vec<&str> =
        stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    Ok(Duration::from_millis(ticks * 10))
}

/// A TCP connection from the `n`th of many 127.0.x.y source addresses, so that per-address
/// limits and ephemeral ports never bind.
async fn connect_from(n: usize, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let host = 2 + (n / 1000) as u8;
    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 1, host));
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Microseconds since the Unix epoch.
fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// A latency histogram: microseconds from 1 to a minute, three significant digits (about
/// 130 KB).
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds")
}

/// Where one subscriber records its latencies: a histogram of its own (made at its first
/// latency), or the one its counters share among all their subscribers (at 100,000
/// subscribers, one each would take 13 GB).
struct Recorder {
    own: Option<Histogram<u64>>,
    counters: Counters,
}

impl Recorder {
    fn new(counters: &Counters) -> Self {
        Self { own: None, counters: counters.clone() }
    }

    /// Every scheduled send time (`t=` followed by digits) in `bytes`, as latencies recorded
    /// now.
    fn record(&mut self, bytes: &[u8]) {
        let now = now_us();
        let mut count = 0;
        let mut shared = self.counters.latencies.as_ref().map(|h| h.lock().expect("latencies"));
        for found in memchr::memmem::find_iter(bytes, b"t=") {
            let digits = bytes[found + 2..].iter().take_while(|b| b.is_ascii_digit());
            let sent =
                digits.fold(0u64, |n, b| n.wrapping_mul(10).wrapping_add(u64::from(b - b'0')));
            if sent > 0 {
                let histogram = match shared.as_deref_mut() {
                    Some(shared) => shared,
                    None => self.own.get_or_insert_with(new_histogram),
                };
                let _ = histogram.record(now.saturating_sub(sent).max(1));
                count += 1;
            }
        }
        if count > 0 {
            self.counters.seen.fetch_add(count, Ordering::Relaxed);
        }
    }

    /// What it recorded in a histogram of its own.
    fn finish(self) -> Option<Histogram<u64>> {
        self.own
    }
}

/// WebSocket frames from a server (unmasked), read from a growing buffer.
#[derive(Default)]
struct Frames {
    buf: Vec<u8>,
    /// Where the next frame starts in `buf`.
    start: usize,
}

impl Frames {
    /// Reads more bytes, counted in `counters`; 0 at the end of the stream.
    async fn fill(
        &mut self,
        reader: &mut tokio::net::tcp::OwnedReadHalf,
        counters: &Counters,
    ) -> Result<usize, Error> {
        self.buf.drain(..self.start);
        self.start = 0;
        let mut chunk = [0u8; 16 * 1024];
        let read = reader.read(&mut chunk).await.map_err(|e| error(e.to_string()))?;
        self.buf.extend_from_slice(&chunk[..read]);
        counters.add_bytes(read);
        Ok(read)
    }

    /// The next whole frame's opcode and where its payload is in `buf`, if it has arrived.
    fn next(&mut self) -> Option<(u8, std::ops::Range<usize>)> {
        let buf = &self.buf[self.start..];
        if buf.len() < 2 {
            return None;
        }
        let opcode = buf[0] & 0x0f;
        let (len, at) = match buf[1] & 0x7f {
            126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
            127 if buf.len() >= 10 => {
                (u64::from_be_bytes(buf[2..10].try_into().ok()?) as usize, 10)
            }
            126 | 127 => return None,
            short => (usize::from(short), 2),
        };
        if buf.len() < at + len {
            return None;
        }
        let payload = self.start + at..self.start + at + len;
        self.start += at + len;
        Some((opcode, payload))
    }
}

/// A client frame (masked, as RFC 6455 requires of clients) of `opcode` carrying `payload`.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x5a, 0x17, 0xc3, 0x2e];
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        len @ 0..=125 => frame.push(0x80 | len as u8),
        len @ 126..=65535 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Opens one subscriber of `topic` and returns once it is subscribed; it then counts what
/// arrives until the server ends it, recording latencies.
pub(crate) async fn subscribe(
    server: &Target,
    transport: Transport,
    n: usize,
    topic: &str,
    counters: Counters,
) -> Result<tokio::task::JoinHandle<Option<Histogram<u64>>>, Error> {
    let addr = server.addr;
    match transport {
        Transport::Sse => {
            let mut stream = connect_from(n, addr).await.map_err(|e| error(e.to_string()))?;
            let request = format!(
                "GET {} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n",
                server.sse_path(topic)
            );
            stream.write_all(request.as_bytes()).await.map_err(|e| error(e.to_string()))?;
            counters.add_bytes(request.len());
            // Wait for the response head, so the subscription is in place.
            let mut buf = vec![0u8; 8192];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let read = stream.read(&mut buf).await.map_err(|e| error(e.to_string()))?;
                if read == 0 {
                    return Err(error("the server closed an event stream"));
                }
                head.extend_from_slice(&buf[..read]);
            }
            counters.add_bytes(head.len());
            if !head.starts_with(b"HTTP/1.1 200") {
                let head = String::from_utf8_lossy(&head).into_owned();
                return Err(error(format!("an event stream was refused: {head}")));
            }
            Ok(tokio::spawn(async move {
                let mut h = Recorder::new(&counters);
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(read) => {
                            counters.add_bytes(read);
                            h.record(&buf[..read]);
                        }
                    }
                }
                h.finish()
            }))
        }
        Transport::Ws => {
            // The handshake and frames by hand: server frames are unmasked and simple, and a
            // general-purpose client costs the generator more CPU than the server under test.
            let stream = connect_from(n, addr).await.map_err(|e| error(e.to_string()))?;
            let (mut reader, mut writer) = stream.into_split();
            let path = match server.peer {
                Peer::Pushpull => "/v1/ws".to_owned(),
                Peer::Nchan => format!("/sub/{topic}"),
            };
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            );
            writer.write_all(request.as_bytes()).await.map_err(|e| error(e.to_string()))?;
            counters.add_bytes(request.len());
            let mut frames = Frames::default();
            let head_end = loop {
                if let Some(end) = memchr::memmem::find(&frames.buf, b"\r\n\r\n") {
                    break end + 4;
                }
                if frames.fill(&mut reader, &counters).await? == 0 {
                    return Err(error("the server closed during the WebSocket handshake"));
                }
            };
            if !frames.buf.starts_with(b"HTTP/1.1 101") {
                let head = String::from_utf8_lossy(&frames.buf[..head_end]).into_owned();
                return Err(error(format!("the WebSocket upgrade was refused: {head}")));
            }
            frames.start = head_end;
            if server.peer == Peer::Pushpull {
                let subscribe = format!(r#"{{"op":"subscribe","id":"s","topic":"{topic}"}}"#);
                let subscribe = client_frame(0x1, subscribe.as_bytes());
                writer.write_all(&subscribe).await.map_err(|e| error(e.to_string()))?;
                counters.add_bytes(subscribe.len());
                // The answer says the subscription is in place.
                loop {
                    match frames.next() {
                        Some((0x1, payload))
                            if memchr::memmem::find(
                                &frames.buf[payload.clone()],
                                b"subscribed",
                            )
                            .is_some() =>
                        {
                            break;
                        }
                        Some((0x1, payload))
                            if memchr::memmem::find(
                                &frames.buf[payload.clone()],
                                br#""op":"error""#,
                            )
                            .is_some() =>
                        {
                            let answer = String::from_utf8_lossy(&frames.buf[payload]);
                            return Err(error(format!("the subscription was refused: {answer}")));
                        }
                        Some(_) => {}
                        None if frames.fill(&mut reader, &counters).await? == 0 => {
                            return Err(error("no subscribed answer"));
                        }
                        None => {}
                    }
                }
            }
            Ok(tokio::spawn(async move {
                let mut h = Recorder::new(&counters);
                loop {
                    while let Some((opcode, payload)) = frames.next() {
                        match opcode {
                            0x1 => h.record(&frames.buf[payload]),
                            0x8 => return h.finish(),
                            0x9 => {
                                let pong = client_frame(0xA, &frames.buf[payload]);
                                counters.add_bytes(pong.len());
                                let _ = writer.write_all(&pong).await;
                            }
                            _ => {}
                        }
                    }
                    match frames.fill(&mut reader, &counters).await {
                        Ok(0) | Err(_) => return h.finish(),
                        Ok(_) => {}
                    }
                }
            }))
        }
        Transport::Longpoll | Transport::Poll => {
            let poll = transport == Transport::Poll;
            if poll && server.peer != Peer::Pushpull {
                return Err(error("short polling is measured against pushpull only"));
            }
            let mut stream = connect_from(n, addr).await.map_err(|e| error(e.to_string()))?;
            let peer = server.peer;
            let topic = topic.to_owned();
            Ok(tokio::spawn(async move {
                let mut h = Recorder::new(&counters);
                let mut cursor = "latest".to_owned();
                let (mut etag, mut modified) = (String::new(), String::new());
                // Short polls are spread over the interval, as independent clients' are.
                let mut ticks = tokio::time::interval_at(
                    tokio::time::Instant::now() + POLL_INTERVAL.mul_f64((n % 1000) as f64 / 1000.0),
                    POLL_INTERVAL,
                );
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    if poll {
                        ticks.tick().await;
                    }
                    let request = match peer {
                        // As pushpull's poll client asks: `304 Not Modified` while nothing is new.
                        Peer::Pushpull if poll && !etag.is_empty() => format!(
                            "GET /v1/topics/{topic}/messages?after={cursor} HTTP/1.1\r\nHost: {addr}\r\nIf-None-Match: {etag}\r\n\r\n"
                        ),
                        Peer::Pushpull if poll => format!(
                            "GET /v1/topics/{topic}/messages?after={cursor} HTTP/1.1\r\nHost: {addr}\r\n\r\n"
                        ),
                        Peer::Pushpull => format!(
                            "GET /v1/topics/{topic}/messages?after={cursor}&wait=30 HTTP/1.1\r\nHost: {addr}\r\n\r\n"
                        ),
                        Peer::Nchan if etag.is_empty() => {
                            format!("GET /sub/{topic} HTTP/1.1\r\nHost: {addr}\r\n\r\n")
                        }
                        Peer::Nchan => format!(
                            "GET /sub/{topic} HTTP/1.1\r\nHost: {addr}\r\nIf-None-Match: {etag}\r\nIf-Modified-Since: {modified}\r\n\r\n"
                        ),
                    };
                    if stream.write_all(request.as_bytes()).await.is_err() {
                        break;
                    }
                    let Ok((headers, body)) = read_response(&mut stream).await else { break };
                    // The head, its blank line, the body.
                    counters.add_bytes(request.len() + headers.len() + 4 + body.len());
                    h.record(&body);
                    match peer {
                        Peer::Pushpull => {
                            if let Some(next) = json_field(&body, "next") {
                                cursor = next;
                            }
                            if let Some(tag) = header(&headers, "etag") {
                                etag = tag;
                            }
                        }
                        Peer::Nchan => {
                            etag = header(&headers, "etag").unwrap_or_default();
                            modified = header(&headers, "last-modified").unwrap_or_default();
                        }
                    }
                }
                h.finish()
            }))
        }
    }
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
    })
}

fn json_field(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let key = format!("\"{name}\":\"");
    let start = text.rfind(&key)? + key.len();
    let end = text[start..].find('"')? + start;
    Some(text[start..end].to_owned())
}

/// Reads one HTTP/1.1 response with a `Content-Length` body.
async fn read_response(stream: &mut TcpStream) -> Result<(String, Vec<u8>), Error> {
    let mut data = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).into_owned();
            let length: usize =
                header(&head, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            let mut body = data[end + 4..].to_vec();
            while body.len() < length {
                let read = stream.read(&mut buf).await.map_err(|e| error(e.to_string()))?;
                if read == 0 {
                    return Err(error("closed mid-body"));
                }
                body.extend_from_slice(&buf[..read]);
            }
            return Ok((head, body));
        }
        let read = stream.read(&mut buf).await.map_err(|e| error(e.to_string()))?;
        if read == 0 {
            return Err(error("closed"));
        }
        data.extend_from_slice(&buf[..read]);
    }
}

/// Publishes `rate` messages a second for `seconds`, each carrying its scheduled send time, over
/// a few keep-alive connections; returns how many were published.
async fn publish(server: &Target, workload: &Workload) -> Result<u64, Error> {
    let interval = Duration::from_secs_f64(1.0 / workload.rate as f64);
    publish_every(server, interval, workload.rate * workload.seconds, workload.topics).await
}

/// Publishes `total` messages, one every `interval`, as [`publish`] does: the `n`th to
/// [`topic_of`]`(topics, n)`.
pub(crate) async fn publish_every(
    server: &Target,
    interval: Duration,
    total: u64,
    topics: usize,
) -> Result<u64, Error> {
    const CONNECTIONS: usize = 8;
    let (free, mut take) = tokio::sync::mpsc::channel::<TcpStream>(CONNECTIONS);
    for n in 0..CONNECTIONS {
        let stream =
            connect_from(60_000 + n, server.addr).await.map_err(|e| error(e.to_string()))?;
        free.send(stream).await.map_err(|_| error("publisher pool"))?;
    }
    let started = tokio::time::Instant::now();
    let addr = server.addr;
    let mut tasks = tokio::task::JoinSet::new();
    let (mut published, mut failed) = (0, 0);
    let mut count = |result: Result<Result<(), Error>, tokio::task::JoinError>| match result
        .map_err(|e| error(e.to_string()))
        .and_then(|r| r)
    {
        Ok(()) => published += 1,
        Err(e) => {
            failed += 1;
            if failed <= 3 {
                eprintln!("bench peers: a publish failed: {e}");
            }
        }
    };
    for n in 0..total {
        let due = started + interval.mul_f64(n as f64);
        tokio::time::sleep_until(due).await;
        let scheduled = now_us().saturating_sub(due.elapsed().as_micros() as u64);
        let mut stream = tokio::time::timeout(Duration::from_secs(10), take.recv())
            .await
            .ok()
            .flatten()
            .ok_or_else(|| error("the publisher has no connection left"))?;
        let free = free.clone();
        let path = server.publish_path(&topic_of(topics, n as usize));
        tasks.spawn(async move {
            let body = format!("t={scheduled} n={n} padding-to-a-typical-small-message");
            let request = format!(
                "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let answer = async {
                stream.write_all(request.as_bytes()).await.map_err(|e| error(e.to_string()))?;
                let (head, _) = read_response(&mut stream).await?;
                match head.split(' ').nth(1) {
                    Some(status) if status.starts_with('2') => Ok(()),
                    _ => Err(error(format!("the server answered {head:?}"))),
                }
            }
            .await;
            // The pool keeps its size: a connection that failed is replaced.
            let stream = match answer {
                Ok(()) => Some(stream),
                Err(_) => connect_from(60_000 + n as usize % 4_000, addr).await.ok(),
            };
            if let Some(stream) = stream {
                let _ = free.send(stream).await;
            }
            answer
        });
        while let Some(result) = tasks.try_join_next() {
            count(result);
        }
    }
    while let Some(result) = tasks.join_next().await {
        count(result);
    }
    if failed > 0 {
        eprintln!("bench peers: {failed} of {total} publishes failed (not counted as expected)");
    }
    Ok(published)
}

/// Runs one workload against a fresh server of `peer` on `core`.
pub(crate) async fn run_once(
    peer: Peer,
    workload: &Workload,
    core: usize,
) -> Result<Measured, Error> {
    let server = Server::start(peer, core).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = server.rss()?;
    let slab_before = slab()?;
    let counters = Counters::default();
    let seen = counters.seen.clone();
    let mut readers = Vec::with_capacity(workload.subscribers);
    let connecting = Instant::now();
    for n in 0..workload.subscribers {
        let reader = tokio::time::timeout(
            Duration::from_secs(20),
            subscribe(
                &server.target,
                workload.transport,
                n,
                &topic_of(workload.topics, n),
                counters.clone(),
            ),
        )
        .await
        .map_err(|_| error("a subscriber did not open in time"))??;
        readers.push(reader);
    }
    let connect_seconds = connecting.elapsed().as_secs_f64();
    // Let the subscriptions settle (long polls are held), then measure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = server.rss()?;
    let per_connection = |bytes: u64| bytes as f64 / workload.subscribers.max(1) as f64 / 1024.0;
    let mut measured = Measured {
        rss_per_connection_kb: per_connection(rss_idle.saturating_sub(rss_before)),
        kernel_per_connection_kb: per_connection(slab()?.saturating_sub(slab_before)),
        connect_seconds,
        ..Measured::default()
    };
    if workload.rate > 0 {
        let own_before = cpu_of("self")?;
        let cpu_before = server.cpu()?;
        let wall = Instant::now();
        let published = publish(&server.target, workload).await?;
        measured.publish_failures = workload.rate * workload.seconds - published;
        measured.expected = workload.expected(published);
        let deadline = stragglers_deadline(workload.subscribers);
        while seen.load(Ordering::Relaxed) < measured.expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cpu = server.cpu()?.saturating_sub(cpu_before);
        let own = cpu_of("self")?.saturating_sub(own_before);
        measured.delivered(seen.load(Ordering::Relaxed), cpu, wall.elapsed());
        measured.generator_cpu_share = own.as_secs_f64() / wall.elapsed().as_secs_f64();
        measured.loaded_per_connection_kb =
            per_connection(server.rss()?.saturating_sub(rss_before));
    }
    let merged = stop_and_merge(server, readers).await;
    measured.latencies(&merged);
    Ok(measured)
}

/// How long a run waits for stragglers after its last publish: two seconds, and one more for
/// every 5,000 subscribers.
pub(crate) fn stragglers_deadline(subscribers: usize) -> Instant {
    Instant::now() + Duration::from_secs(2) + Duration::from_secs_f64(subscribers as f64 / 5000.0)
}

impl Measured {
    /// Notes `deliveries` made with `cpu` of the servers' time over `wall`.
    pub(crate) fn delivered(&mut self, deliveries: u64, cpu: Duration, wall: Duration) {
        self.deliveries = deliveries;
        self.cpu_per_delivery_us = cpu.as_secs_f64() * 1e6 / deliveries.max(1) as f64;
        self.deliveries_per_cpu_second =
            deliveries as f64 / cpu.as_secs_f64().max(f64::MIN_POSITIVE);
        self.server_cpu_share = cpu.as_secs_f64() / wall.as_secs_f64();
    }

    /// Notes the latencies of every delivery.
    pub(crate) fn latencies(&mut self, merged: &Histogram<u64>) {
        self.p50_ms = merged.value_at_quantile(0.5) as f64 / 1000.0;
        self.p99_ms = merged.value_at_quantile(0.99) as f64 / 1000.0;
        self.max_ms = merged.max() as f64 / 1000.0;
    }
}

/// Stops `server`, which ends every subscriber, each handing back its latency histogram;
/// returns them merged.
pub(crate) async fn stop_and_merge(
    server: Server,
    readers: Vec<tokio::task::JoinHandle<Option<Histogram<u64>>>>,
) -> Histogram<u64> {
    server.stop().await;
    let mut merged = new_histogram();
    for reader in readers {
        if let Ok(Ok(Some(h))) = tokio::time::timeout(Duration::from_secs(5), reader).await {
            let _ = merged.add(&h);
        }
    }
    merged
}

/// The workloads of the comparison; `scale` divides subscriber counts (for a quick look).
pub(crate) fn workloads(seconds: u64, scale: usize) -> Vec<Workload> {
    let w = |name: &str, transport, subscribers: usize, rate| Workload {
        name: name.to_owned(),
        transport,
        subscribers: (subscribers / scale).max(1),
        rate,
        seconds,
        topics: 1,
    };
    vec![
        w("SSE, 1,000 subscribers, 50 messages/s", Transport::Sse, 1000, 50),
        w("WebSocket, 1,000 subscribers, 50 messages/s", Transport::Ws, 1000, 50),
        w("SSE, 1,000 subscribers, 100 messages/s", Transport::Sse, 1000, 100),
        w("WebSocket, 1,000 subscribers, 100 messages/s", Transport::Ws, 1000, 100),
        w("SSE, 1,000 subscribers, 200 messages/s", Transport::Sse, 1000, 200),
        w("WebSocket, 1,000 subscribers, 200 messages/s", Transport::Ws, 1000, 200),
        w("WebSocket overload, 1,000 subscribers, 600 messages/s", Transport::Ws, 1000, 600),
        w("long polling, 1,000 clients, 20 messages/s", Transport::Longpoll, 1000, 20),
        w("idle SSE, 5,000 subscribers", Transport::Sse, 5000, 0),
        w("idle WebSocket, 5,000 subscribers", Transport::Ws, 5000, 0),
        w("idle long polling, 5,000 clients", Transport::Longpoll, 5000, 0),
    ]
}

/// Runs every workload `rounds` times against both servers, interleaved (pushpull, Nchan,
/// pushpull, Nchan, …), each server a fresh process on `core`, and prints the medians.
pub(crate) async fn compare(
    rounds: usize,
    seconds: u64,
    scale: usize,
    core: usize,
    only: Option<String>,
) -> Result<(), Error> {
    println!(
        "| workload | measure | pushpull median (min–max) | Nchan median (min–max) | pushpull / Nchan |"
    );
    println!("|---|---|---:|---:|---:|");
    for workload in workloads(seconds, scale) {
        if only.as_deref().is_some_and(|only| !workload.name.contains(only)) {
            continue;
        }
        let mut results: [Vec<Measured>; 2] = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            for (i, peer) in [Peer::Pushpull, Peer::Nchan].into_iter().enumerate() {
                eprintln!("bench peers: {} — {} — round {}", workload.name, peer.name(), round + 1);
                let measured = run_once(peer, &workload, core).await?;
                eprintln!("bench peers:   {measured:?}");
                results[i].push(measured);
            }
        }
        let rows: Vec<Row> = if workload.rate == 0 {
            vec![("memory per connection", |m| m.rss_per_connection_kb, "KB")]
        } else if workload.name.contains("overload") {
            vec![
                ("deliveries per CPU-second", |m| m.deliveries_per_cpu_second / 1000.0, "k/s"),
                (
                    "delivered / expected",
                    |m| m.deliveries as f64 / m.expected.max(1) as f64 * 100.0,
                    "%",
                ),
                ("latency p99", |m| m.p99_ms, "ms"),
            ]
        } else {
            vec![
                ("server CPU per delivery", |m| m.cpu_per_delivery_us, "µs"),
                ("latency p50", |m| m.p50_ms, "ms"),
                ("latency p99", |m| m.p99_ms, "ms"),
                (
                    "delivered / expected",
                    |m| m.deliveries as f64 / m.expected.max(1) as f64 * 100.0,
                    "%",
                ),
                ("load generator CPU (of one core)", |m| m.generator_cpu_share * 100.0, "%"),
            ]
        };
        // A server whose median p50 passes the bound is falling behind its offered rate: its
        // CPU per delivery is not comparable with one that keeps up, so no ratio is given.
        let saturated: Vec<String> = [Peer::Pushpull, Peer::Nchan]
            .iter()
            .zip(&results)
            .filter(|(_, runs)| {
                workload.rate > 0
                    && !workload.name.contains("overload")
                    && summary(runs, |m| m.p50_ms).0 > SATURATED_P50_MS
            })
            .map(|(peer, runs)| {
                format!("{} saturated (p50 {:.0} ms)", peer.name(), summary(runs, |m| m.p50_ms).0)
            })
            .collect();
        for (measure, get, unit) in rows {
            let ours = summary(&results[0], get);
            let theirs = summary(&results[1], get);
            let ratio = if !saturated.is_empty() && measure == "server CPU per delivery" {
                saturated.join(", ")
            } else if theirs.0 > 0.0 {
                format!("{:.2}×", ours.0 / theirs.0)
            } else {
                "–".into()
            };
            println!(
                "| {} | {measure} | {:.2} {unit} ({:.2}–{:.2}) | {:.2} {unit} ({:.2}–{:.2}) | {ratio} |",
                workload.name, ours.0, ours.1, ours.2, theirs.0, theirs.1, theirs.2
            );
        }
    }
    Ok(())
}

/// The latency p50 past which a server is reported as falling behind its offered rate (and its
/// CPU per delivery not compared): twice the longest message interval of the rate workloads
/// (50 ms, at 20 messages/s), and five times what either server shows when it keeps up here
/// (p50 under 20 ms: docs/benchmarks.md). A server falling behind sees p50 grow to seconds.
const SATURATED_P50_MS: f64 = 100.0;

/// The share of its core past which the load generator of a one-process scale run is taken
/// to read late: the latencies of such a run measure the generator, and are not compared.
const GENERATOR_SATURATED: f64 = 0.9;

/// A line of the table: what is measured, how to read it from a run, its unit.
type Row = (&'static str, fn(&Measured) -> f64, &'static str);

/// Median, min and max.
fn summary(runs: &[Measured], get: fn(&Measured) -> f64) -> (f64, f64, f64) {
    let mut values: Vec<f64> = runs.iter().map(get).collect();
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    (values[values.len() / 2], values[0], values[values.len() - 1])
}

/// A rate is sustained when the latency p99 stays within this…
const CAPACITY_P99_MS: f64 = 100.0;
/// …and at least this share of the expected deliveries arrive (within the run and two seconds
/// after it).
const CAPACITY_DELIVERED: f64 = 0.999;
/// The sweep offers no more than this many messages a second (a bounded run).
const CAPACITY_MAX_RATE: u64 = 4000;

/// What a capacity sweep found for one server: the highest sustained rate and the run at it,
/// and the lowest rate that was not sustained (if the sweep reached one) and its run.
struct Capacity {
    sustained: Option<(u64, Measured)>,
    failed: Option<(u64, Measured)>,
}

impl Capacity {
    fn deliveries(&self, subscribers: usize) -> f64 {
        self.sustained.as_ref().map_or(0.0, |(rate, _)| (*rate * subscribers as u64) as f64)
    }
}

fn sustained(m: &Measured) -> bool {
    m.p99_ms <= CAPACITY_P99_MS
        && m.deliveries as f64 >= m.expected as f64 * CAPACITY_DELIVERED
        && m.expected > 0
}

/// Sweeps the message rate offered to `subscribers` readers of one topic on one fresh server
/// per step: up by half each step from 50 messages/s until a rate is not sustained (two runs in
/// a row miss), then three bisections between the last sustained rate and the first that was
/// not.
async fn sweep(
    peer: Peer,
    transport: Transport,
    subscribers: usize,
    seconds: u64,
    core: usize,
) -> Result<Capacity, Error> {
    let run = |rate: u64| {
        let workload = Workload {
            name: format!("capacity sweep, {rate} messages/s"),
            transport,
            subscribers,
            rate,
            seconds,
            topics: 1,
        };
        async move {
            let measured = run_once(peer, &workload, core).await?;
            eprintln!(
                "bench peers: capacity {} {transport:?} {rate}/s: p99 {:.1} ms, delivered {}/{}, server CPU {:.0} %, generator CPU {:.0} %",
                peer.name(),
                measured.p99_ms,
                measured.deliveries,
                measured.expected,
                measured.server_cpu_share * 100.0,
                measured.generator_cpu_share * 100.0,
            );
            Ok::<_, Error>(measured)
        }
    };
    // A rate is not sustained only when two runs in a row miss: one latency spike in a short
    // run (another process, a page fault storm) must not end the sweep below what the server
    // sustains.
    let judge = |rate: u64| {
        let run = &run;
        async move {
            let first = run(rate).await?;
            if sustained(&first) {
                return Ok::<_, Error>((true, first));
            }
            let again = run(rate).await?;
            Ok((sustained(&again), again))
        }
    };
    let mut found = Capacity { sustained: None, failed: None };
    let mut rate = 50;
    while found.failed.is_none() && rate <= CAPACITY_MAX_RATE {
        match judge(rate).await? {
            (true, measured) => {
                found.sustained = Some((rate, measured));
                rate += rate / 2;
            }
            (false, measured) => found.failed = Some((rate, measured)),
        }
    }
    for _ in 0..3 {
        let (Some((low, _)), Some((high, _))) = (&found.sustained, &found.failed) else { break };
        let middle = (low + high) / 2;
        if middle == *low {
            break;
        }
        match judge(middle).await? {
            (true, measured) => found.sustained = Some((middle, measured)),
            (false, measured) => found.failed = Some((middle, measured)),
        }
    }
    Ok(found)
}

/// The capacity of each server on one core: the highest rate of deliveries it sustains to 1,000
/// subscribers of one topic (SSE and WebSocket) with a latency p99 within 100 ms and nothing
/// lost, found by a rate sweep; `rounds` sweeps per server, interleaved, medians reported.
pub(crate) async fn capacity(
    rounds: usize,
    seconds: u64,
    scale: usize,
    core: usize,
    only: Option<String>,
) -> Result<(), Error> {
    let subscribers = (1000 / scale).max(1);
    println!(
        "| workload | pushpull capacity (min–max) | at it: server CPU, p99 | Nchan capacity (min–max) | at it: server CPU, p99 | pushpull / Nchan |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, transport) in [("SSE", Transport::Sse), ("WebSocket", Transport::Ws)] {
        let name = format!("{name}, {subscribers} subscribers");
        if only.as_deref().is_some_and(|only| !name.contains(only)) {
            continue;
        }
        let mut found: [Vec<Capacity>; 2] = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            for (i, peer) in [Peer::Pushpull, Peer::Nchan].into_iter().enumerate() {
                eprintln!("bench peers: capacity — {name} — {} — round {}", peer.name(), round + 1);
                found[i].push(sweep(peer, transport, subscribers, seconds, core).await?);
            }
        }
        let cell = |sweeps: &mut Vec<Capacity>| {
            sweeps.sort_by(|a, b| a.deliveries(subscribers).total_cmp(&b.deliveries(subscribers)));
            let median = &sweeps[sweeps.len() / 2];
            let (min, max) = (&sweeps[0], &sweeps[sweeps.len() - 1]);
            let k = |c: &Capacity| c.deliveries(subscribers) / 1000.0;
            let capacity = match (&median.sustained, &median.failed) {
                (None, _) => "below 50 messages/s".to_owned(),
                (Some(_), None) => format!("≥ {:.1}k/s (the sweep's top rate)", k(median)),
                (Some(_), Some(_)) => {
                    format!("{:.1}k/s ({:.1}–{:.1})", k(median), k(min), k(max))
                }
            };
            let at = median.sustained.as_ref().map_or("–".to_owned(), |(_, m)| {
                format!("{:.0} %, {:.1} ms", m.server_cpu_share * 100.0, m.p99_ms)
            });
            (capacity, at, k(median))
        };
        let (ours, ours_at, ours_k) = cell(&mut found[0]);
        let (theirs, theirs_at, theirs_k) = cell(&mut found[1]);
        let ratio =
            if theirs_k > 0.0 { format!("{:.2}×", ours_k / theirs_k) } else { "–".to_owned() };
        println!("| {name} | {ours} | {ours_at} | {theirs} | {theirs_at} | {ratio} |");
    }
    Ok(())
}

/// A point of a cost curve of one server and transport: connections, median memory per
/// connection (KB), median CPU per delivery (µs).
type CostPoint = (f64, f64, f64);

/// What a cost curve grows.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Grow {
    /// Subscribers of one topic; each of `messages` messages, a second apart, goes to all.
    Connections { messages: u64 },
    /// Topics with one subscriber each; `rate` messages a second go to them in turn, for
    /// `seconds` or until every topic has had one, whichever is longer.
    Topics { rate: u64, seconds: u64 },
}

impl Grow {
    fn workload(self, transport_name: &str, transport: Transport, count: usize) -> Workload {
        match self {
            Grow::Connections { messages } => Workload {
                name: format!("{transport_name}, {count} connections"),
                transport,
                subscribers: count,
                rate: 1,
                seconds: messages,
                topics: 1,
            },
            Grow::Topics { rate, seconds } => Workload {
                name: format!("{transport_name}, {count} topics"),
                transport,
                subscribers: count,
                rate,
                seconds: seconds.max((count as u64).div_ceil(rate.max(1))),
                topics: count,
            },
        }
    }
}

/// How each server's costs grow with its connections or its topics: for each transport and
/// each count in `counts`, that many subscribers on one server process (one core) or spread
/// over processes, then messages as `grow` says. Memory per connection (the server's and the
/// kernel's), time to connect them all, the delivery latency (p50, p99, max of every
/// delivery) and server CPU per delivery; `rounds` interleaved runs per server, medians
/// reported. With `plot`, the cost curves are drawn there as SVG.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn scale(
    rounds: usize,
    counts: &[usize],
    spread: Option<crate::machine::Spread>,
    grow: Grow,
    core: usize,
    only: Option<String>,
    plot: Option<&Path>,
) -> Result<(), Error> {
    if let Some(spread) = spread {
        for &count in counts {
            crate::machine::check_fits(count, spread.processes)?;
        }
    } else {
        // The generator holds every connection's other end, and the server inherits its limit.
        let limit = open_files_limit()?;
        if let Some(&too_many) = counts.iter().find(|&&count| count + 300 > limit) {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "{too_many} connections need {} open files in this process and in each \
                     server, and they may hold {limit}: raise it (ulimit -n), ask for fewer, or \
                     spread them over server processes (--processes)",
                    too_many + 300
                ),
            ));
        }
    }
    let what = match grow {
        Grow::Connections { .. } => "connections",
        Grow::Topics { .. } => "topics, one subscriber each",
    };
    println!(
        "| transport | {what} | measure | pushpull median (min–max) | Nchan median (min–max) | pushpull / Nchan |"
    );
    println!("|---|---:|---|---:|---:|---:|");
    let mut rows: Vec<Row> = vec![
        ("memory per connection", |m| m.rss_per_connection_kb, "KB"),
        ("kernel memory per connection, both ends", |m| m.kernel_per_connection_kb, "KB"),
        ("time to connect all, one after another", |m| m.connect_seconds, "s"),
        ("fan-out latency p50", |m| m.p50_ms, "ms"),
        ("fan-out latency p99", |m| m.p99_ms, "ms"),
        ("fan-out latency max", |m| m.max_ms, "ms"),
        ("server CPU per delivery", |m| m.cpu_per_delivery_us, "µs"),
        ("delivered / expected", |m| m.deliveries as f64 / m.expected.max(1) as f64 * 100.0, "%"),
        ("publishes refused or failed", |m| m.publish_failures as f64, ""),
    ];
    if spread.is_some() {
        rows[0].0 = "memory per connection (PSS of every server process, Redis's too)";
        rows[2].0 = "time to connect all (load generator processes at once)";
    } else {
        rows.push(("load generator CPU (of one core)", |m| m.generator_cpu_share * 100.0, "%"));
    }
    if let Grow::Topics { .. } = grow {
        rows[3].0 = "delivery latency p50";
        rows[4].0 = "delivery latency p99";
        rows[5].0 = "delivery latency max";
        rows.insert(
            1,
            (
                "memory per connection once every topic has messages",
                |m| m.loaded_per_connection_kb,
                "KB",
            ),
        );
    }
    let mut curves: Vec<(String, Vec<CostPoint>)> = Vec::new();
    let transports = [
        ("SSE", Transport::Sse),
        ("WebSocket", Transport::Ws),
        ("long polling", Transport::Longpoll),
    ];
    for (name, transport) in transports {
        if only.as_deref().is_some_and(|only| !name.contains(only)) {
            continue;
        }
        let mut points: [Vec<CostPoint>; 2] = [Vec::new(), Vec::new()];
        for &count in counts {
            let workload = grow.workload(name, transport, count);
            let mut results: [Vec<Measured>; 2] = [Vec::new(), Vec::new()];
            for round in 0..rounds {
                for (i, peer) in [Peer::Pushpull, Peer::Nchan].into_iter().enumerate() {
                    eprintln!(
                        "bench peers: scale — {} — {} — round {}",
                        workload.name,
                        peer.name(),
                        round + 1
                    );
                    let measured = if let Some(spread) = spread {
                        crate::machine::run(peer, &workload, core, spread).await?
                    } else {
                        run_once(peer, &workload, core).await?
                    };
                    eprintln!("bench peers:   {measured:?}");
                    results[i].push(measured);
                }
            }
            // Rounds in which the load generator had its core to itself no more: what it read
            // late says nothing of the server.
            let bound: usize = results
                .iter()
                .flatten()
                .filter(|m| m.generator_cpu_share >= GENERATOR_SATURATED)
                .count();
            for &(measure, get, unit) in &rows {
                let ours = summary(&results[0], get);
                let theirs = summary(&results[1], get);
                let ratio = if bound > 0 && measure.contains("latency") {
                    format!(
                        "load generator saturated in {bound} of {} runs",
                        results[0].len() + results[1].len()
                    )
                } else if theirs.0 > 0.0 {
                    format!("{:.2}×", ours.0 / theirs.0)
                } else {
                    "–".into()
                };
                println!(
                    "| {name} | {count} | {measure} | {:.2} {unit} ({:.2}–{:.2}) | {:.2} {unit} ({:.2}–{:.2}) | {ratio} |",
                    ours.0, ours.1, ours.2, theirs.0, theirs.1, theirs.2
                );
            }
            for (i, runs) in results.iter().enumerate() {
                let memory = summary(runs, |m| m.rss_per_connection_kb).0;
                let cpu = summary(runs, |m| m.cpu_per_delivery_us).0;
                points[i].push((count as f64, memory, cpu));
            }
        }
        for (i, peer) in [Peer::Pushpull, Peer::Nchan].into_iter().enumerate() {
            curves.push((format!("{} {name}", peer.name()), std::mem::take(&mut points[i])));
        }
    }
    if let Some(dir) = plot {
        let on = match spread {
            None => "one process".to_owned(),
            Some(spread) => format!("{} processes", spread.processes),
        };
        let (axis, file, cpu_title) = match grow {
            Grow::Connections { .. } => (
                format!("connections on {on} (log scale)"),
                "cost",
                "Server CPU per delivery, one message a second to every connection".to_owned(),
            ),
            Grow::Topics { rate, .. } => (
                format!("topics, one subscriber each, on {on} (log scale)"),
                "topics",
                format!("Server CPU per delivery, {rate} messages a second over the topics"),
            ),
        };
        let series = |pick: fn(&CostPoint) -> f64, from: f64| -> Vec<(String, Vec<(f64, f64)>)> {
            curves
                .iter()
                .map(|(name, points)| {
                    let points = points.iter().filter(|p| p.0 >= from);
                    (name.clone(), points.map(|p| (p.0, pick(p))).collect())
                })
                .collect()
        };
        // What a handful of connections grew a server by is its allocator's pages, not what a
        // connection costs: the memory curve starts at 100.
        crate::plot::curves(
            &dir.join(format!("{file}-memory.svg")),
            "Server memory per idle connection",
            &axis,
            "KB per connection",
            &series(|p| p.1, 100.0),
        )?;
        crate::plot::curves(
            &dir.join(format!("{file}-cpu.svg")),
            &cpu_title,
            &axis,
            "µs per delivery",
            &series(|p| p.2, 0.0),
        )?;
    }
    Ok(())
}
