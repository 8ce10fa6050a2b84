//! The live counts a server reports: on the health route, and as Prometheus metrics.

use std::sync::Arc;

use pushpull_http::{LiveCount, Measure, Reading, ServerStats};

/// The live counts a server reports: on the health route, and as Prometheus gauges.
#[derive(Default)]
pub(crate) struct Live {
    pub(crate) counts: Vec<LiveReading>,
}

/// One live count: its name on the health route, and what it is in Prometheus.
pub(crate) struct LiveReading {
    pub(crate) name: String,
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    pub(crate) export: Export,
    pub(crate) read: Reading,
}

/// How a live count is exported as a Prometheus metric.
#[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
pub(crate) enum Export {
    /// A gauge of its own.
    Gauge(&'static str),
    /// A running total kept by the server.
    Counter(&'static str),
    /// A transport's count: `pushpull_connections` and/or `pushpull_subscriptions`, labelled.
    Transport(&'static str, &'static [Measure]),
}

impl Live {
    pub(crate) fn server(&mut self, stats: Arc<ServerStats>) {
        let (open, accepted, streams) = (stats.clone(), stats.clone(), stats.clone());
        self.push("open_connections", Export::Gauge("pushpull_http_connections"), move || {
            open.open_connections()
        });
        self.push("open_streams", Export::Gauge("pushpull_http_streams"), move || {
            streams.open_streams()
        });
        self.push(
            "accepted_connections",
            Export::Counter("pushpull_http_connections_accepted_total"),
            move || accepted.accepted_connections(),
        );
        self.push("requests", Export::Counter("pushpull_http_requests_total"), move || {
            stats.requests()
        });
        // Tasks alive on the server's runtime: what a leak of sessions would grow.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let metrics = runtime.metrics();
            self.push("runtime_tasks", Export::Gauge("pushpull_runtime_tasks"), move || {
                metrics.num_alive_tasks()
            });
        }
    }

    pub(crate) fn transport(&mut self, transport: &'static str, counts: Vec<LiveCount>) {
        for count in counts {
            self.counts.push(LiveReading {
                name: format!("{transport}_{}", count.name),
                export: Export::Transport(transport, count.measures),
                read: count.read,
            });
        }
    }

    fn push(
        &mut self,
        name: &str,
        export: Export,
        read: impl Fn() -> usize + Send + Sync + 'static,
    ) {
        self.counts.push(LiveReading { name: name.to_owned(), export, read: Box::new(read) });
    }
}
