//! `pushpull bench push-or-pull`: what each way of reading a topic costs the server, per client
//! per hour, as the topic's message rate goes from one an hour to a hundred a second: short
//! polling (a request a second), long polling, SSE and WebSocket, each against a fresh pushpull
//! process pinned to one core, with the load generator of `bench peers`.
//!
//! Each transport is measured idle (no messages, over a window long enough to hold every
//! periodic cost: heartbeats, pings, long polls that time out and are asked again) and at a few
//! message rates. Between measured rates the cost is interpolated linearly in the rate (a cost
//! per connection-hour plus a cost per message); below the lowest measured rate it is the idle
//! cost plus the per-message cost of the lowest rate. Measured points are marked on the charts.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pushpull::{Error, ErrorKind};

use crate::peers::{Counters, Peer, Server, Transport};
use crate::plot::Marked;

/// A transport's measured costs: its name, (messages per hour, CPU ms per client-hour) and
/// (messages per hour, bytes per client-hour), by rate.
type Measured = (&'static str, Vec<(f64, f64)>, Vec<(f64, f64)>);

/// One measured run: a transport at a rate.
#[derive(Debug, Clone)]
struct Run {
    /// Messages per hour actually published over the run.
    per_hour: f64,
    /// Server CPU per client per hour, in milliseconds.
    cpu_ms: f64,
    /// Bytes sent and received per client per hour.
    bytes: f64,
    delivered: f64,
    p50_ms: f64,
    /// The server's CPU time over the run's time (1.0: its core was busy throughout).
    cpu_share: f64,
}

/// The transports charted, with the names the tables and charts use.
const TRANSPORTS: [(&str, Transport); 4] = [
    ("short polling (every 1 s)", Transport::Poll),
    ("long polling (wait 30 s)", Transport::Longpoll),
    ("SSE", Transport::Sse),
    ("WebSocket", Transport::Ws),
];

/// A run is saturated (the server falling behind the rate) and left off the charts when the
/// server's core was busier than this share of the run…
const SATURATED_CPU_SHARE: f64 = 0.9;
/// …and the latency p50 passed this. Neither alone: one message to 10,000 readers takes most of
/// 100 ms to write while the server keeps up, and a server near its capacity batches and keeps
/// up with its core busy.
const SATURATED_P50_MS: f64 = 100.0;

/// Measures one transport at one rate (0: idle) with `clients` readers of one topic.
async fn measure(
    transport: Transport,
    clients: usize,
    rate: f64,
    window: Duration,
    core: usize,
) -> Result<Run, Error> {
    let server = Server::start(Peer::Pushpull, core).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let counters = Counters::default();
    let mut readers = Vec::with_capacity(clients);
    for n in 0..clients {
        let reader = tokio::time::timeout(
            Duration::from_secs(20),
            crate::peers::subscribe(&server.target, transport, n, "bench", counters.clone()),
        )
        .await
        .map_err(|_| Error::new(ErrorKind::Backend, "a subscriber did not open in time"))??;
        readers.push(reader);
    }
    // Opening costs are not the hour's: measure from when every reader is in place.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu_before, bytes_before) = (server.cpu()?, counters.bytes.load(Ordering::Relaxed));
    let seen_before = counters.seen.load(Ordering::Relaxed);
    let started = Instant::now();
    let published = if rate > 0.0 {
        let total = (rate * window.as_secs_f64()).round().max(1.0) as u64;
        let interval = Duration::from_secs_f64(1.0 / rate);
        crate::peers::publish_every(&server.target, interval, total, 1).await?
    } else {
        0
    };
    // The rest of the window, then stragglers (a short poll sees a message up to an interval
    // late), up to a bound.
    tokio::time::sleep(window.saturating_sub(started.elapsed())).await;
    let expected = published * clients as u64;
    let deadline = Instant::now() + Duration::from_secs(3);
    while counters.seen.load(Ordering::Relaxed) - seen_before < expected
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = server.cpu()?.saturating_sub(cpu_before).as_secs_f64();
    let bytes = counters.bytes.load(Ordering::Relaxed).saturating_sub(bytes_before) as f64;
    let delivered = (counters.seen.load(Ordering::Relaxed) - seen_before) as f64;
    let histogram = crate::peers::stop_and_merge(server, readers).await;
    let per_client_hour = 3600.0 / elapsed / clients as f64;
    Ok(Run {
        per_hour: published as f64 * 3600.0 / elapsed,
        cpu_ms: cpu * 1000.0 * per_client_hour,
        bytes: bytes * per_client_hour,
        delivered: if expected == 0 { 1.0 } else { delivered / expected as f64 },
        p50_ms: histogram.value_at_quantile(0.5) as f64 / 1000.0,
        cpu_share: cpu / elapsed,
    })
}

/// Whether the server fell behind in `run`.
fn saturated(run: &Run) -> bool {
    (run.cpu_share > SATURATED_CPU_SHARE && run.p50_ms > SATURATED_P50_MS) || run.delivered < 0.999
}

/// The modelled cost at `per_hour` messages an hour from measured `points` (messages per hour,
/// cost; sorted by rate, the first idle).
fn cost_at(points: &[(f64, f64)], per_hour: f64) -> f64 {
    let Some(&(_, idle)) = points.first() else { return 0.0 };
    let Some(&(x1, y1)) = points.get(1) else { return idle };
    if per_hour <= x1 {
        return idle + per_hour * (y1 - idle) / x1;
    }
    for pair in points[1..].windows(2) {
        let ((xa, ya), (xb, yb)) = (pair[0], pair[1]);
        if per_hour <= xb {
            return ya + (per_hour - xa) * (yb - ya) / (xb - xa);
        }
    }
    // Past the highest measured rate: the last segment's slope.
    let n = points.len();
    let ((xa, ya), (xb, yb)) = (points[n.saturating_sub(2).max(1)], points[n - 1]);
    if xb > xa { yb + (per_hour - xb) * (yb - ya) / (xb - xa) } else { yb }
}

/// Runs every transport idle and at each of `rates` (messages a second) with `clients` readers,
/// prints the table and where the transports' costs cross, and draws the charts in `plot`.
pub(crate) async fn run(
    clients: usize,
    rates: &[f64],
    seconds: u64,
    idle_seconds: u64,
    core: usize,
    plot: Option<&Path>,
) -> Result<(), Error> {
    if rates.iter().any(|r| !r.is_finite() || *r <= 0.0) {
        return Err(Error::new(ErrorKind::Config, "--rates: each rate must be more than zero"));
    }
    println!(
        "| transport | messages/hour | server CPU per client-hour | bytes per client-hour | delivered | latency p50 | server CPU share |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    // Per transport: its name, its (messages per hour, CPU) and (messages per hour, bytes).
    let mut measured: Vec<Measured> = Vec::new();
    for (name, transport) in TRANSPORTS {
        let mut cpu = Vec::new();
        let mut bytes = Vec::new();
        for &rate in std::iter::once(&0.0).chain(rates) {
            // At least a few messages per run, and the idle run long enough for the slowest
            // periodic cost.
            let window = if rate == 0.0 {
                Duration::from_secs(idle_seconds)
            } else {
                Duration::from_secs_f64((seconds as f64).max(5.0 / rate))
            };
            eprintln!("bench push-or-pull: {name}, {clients} clients, {rate} messages/s");
            let run = measure(transport, clients, rate, window, core).await?;
            eprintln!("bench push-or-pull:   {run:?}");
            let note = if saturated(&run) { " (saturated: left off)" } else { "" };
            println!(
                "| {name} | {:.0} | {:.2} ms | {:.1} KB | {:.2} %{note} | {:.1} ms | {:.0} % |",
                run.per_hour,
                run.cpu_ms,
                run.bytes / 1000.0,
                run.delivered * 100.0,
                run.p50_ms,
                run.cpu_share * 100.0
            );
            if !saturated(&run) {
                cpu.push((run.per_hour, run.cpu_ms));
                bytes.push((run.per_hour, run.bytes));
            }
        }
        measured.push((name, cpu, bytes));
    }
    // The modelled costs at rates a decade apart, and the cheapest there (every transport
    // within a tenth of the cheapest counts: closer than that is within a run's noise).
    let grid: Vec<f64> = (0..=240).map(|i| 10f64.powf(i as f64 / 40.0)).collect();
    for (what, pick, unit) in [("server CPU", 1usize, "ms"), ("bytes", 2, "KB")] {
        println!();
        println!("Modelled {what} per client-hour, {clients} clients:");
        println!();
        let names: Vec<&str> = measured.iter().map(|m| m.0).collect();
        println!("| messages/hour | {} | cheapest |", names.join(" | "));
        println!("|---:|{}---|", "---:|".repeat(names.len()));
        for per_hour in [1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0, 360_000.0] {
            let costs: Vec<Option<f64>> = measured
                .iter()
                .map(|(_, cpu, bytes)| {
                    let points = if pick == 1 { cpu } else { bytes };
                    // No cost past the highest rate measured without falling behind.
                    let top = points.last().map_or(0.0, |p| p.0);
                    (points.len() > 1 && per_hour <= top * 1.05).then(|| cost_at(points, per_hour))
                })
                .collect();
            let least = costs.iter().flatten().copied().fold(f64::INFINITY, f64::min);
            let cheapest: Vec<&str> = names
                .iter()
                .zip(&costs)
                .filter(|(_, cost)| cost.is_some_and(|c| c <= least * 1.1))
                .map(|(name, _)| *name)
                .collect();
            let cells: Vec<String> = costs
                .iter()
                .map(|cost| match cost {
                    Some(c) if pick == 1 => format!("{c:.1} {unit}"),
                    Some(c) => format!("{:.1} {unit}", c / 1000.0),
                    None => "–".to_owned(),
                })
                .collect();
            println!("| {per_hour:.0} | {} | {} |", cells.join(" | "), cheapest.join(", "));
        }
    }
    if let Some(dir) = plot {
        for (file, title, unit, pick) in [
            (
                format!("push-or-pull-cpu-{clients}.svg"),
                format!("Server CPU per client per hour, {clients} clients of one topic"),
                "ms of CPU per client-hour (log scale)",
                1usize,
            ),
            (
                format!("push-or-pull-bytes-{clients}.svg"),
                format!("Bytes per client per hour, {clients} clients of one topic"),
                "bytes per client-hour, both ways (log scale)",
                2,
            ),
        ] {
            let series: Vec<Marked> = measured
                .iter()
                .map(|(name, cpu, bytes)| {
                    let points = if pick == 1 { cpu } else { bytes };
                    let top = points.last().map_or(0.0, |p| p.0);
                    let line: Vec<(f64, f64)> = grid
                        .iter()
                        .copied()
                        .filter(|&x| x <= top.max(1.0))
                        .map(|x| (x, cost_at(points, x)))
                        .collect();
                    let marks = points.iter().copied().filter(|p| p.0 > 0.0).collect();
                    Marked { name: name.to_string(), line, marks }
                })
                .collect();
            crate::plot::log_log(
                &dir.join(file),
                &title,
                "messages per hour on the topic (log scale)",
                unit,
                &series,
            )?;
        }
    }
    Ok(())
}
