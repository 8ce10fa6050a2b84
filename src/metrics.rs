//! `GET /metrics`: what the server counts, in Prometheus's text format.
//!
//! The counters and histograms are recorded by the transports through the [`metrics`] facade
//! (their names are listed in [`pushpull_http::metrics`]); this module installs the Prometheus
//! recorder for the process and serves it, adding the gauges read from the servers' live counts
//! at each scrape:
//!
//! | name | labels | what |
//! |---|---|---|
//! | `pushpull_http_connections` | — | TCP (or TLS) connections open now |
//! | `pushpull_http_connections_accepted_total` | — | connections accepted since start |
//! | `pushpull_http_requests_total` | — | requests read since start |
//! | `pushpull_connections` | `transport` | open SSE and chunked streams, WebSockets, held long polls |
//! | `pushpull_subscriptions` | `transport` | subscriptions they serve |

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{HeaderValue, Method, Response, StatusCode, header};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use pushpull_http::{Measure, Route};

use crate::live::{Export, Live};

/// The path of the metrics route.
pub const METRICS_PATH: &str = "/metrics";

/// The bounds of every `…_seconds` histogram: half a millisecond to ten seconds.
const SECONDS_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// How often histogram samples are folded into their buckets between scrapes, so that a server
/// nobody scrapes does not keep them.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The process's Prometheus recorder, installed on first call. `None` when the application had
/// already installed a recorder of its own: pushpull's metrics then go to that one, and the
/// server does not serve `/metrics`.
pub fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
                .expect("the buckets are not empty");
            match builder.install_recorder() {
                Ok(handle) => {
                    pushpull_http::metrics::describe();
                    describe_gauges();
                    let upkeep = handle.clone();
                    std::thread::Builder::new()
                        .name("pushpull-metrics".into())
                        .spawn(move || {
                            loop {
                                std::thread::sleep(UPKEEP_EVERY);
                                upkeep.run_upkeep();
                            }
                        })
                        .expect("a thread can be started");
                    Some(handle)
                }
                Err(error) => {
                    tracing::info!(
                        %error,
                        "a metrics recorder is already installed: pushpull records into it and \
                         does not serve /metrics"
                    );
                    None
                }
            }
        })
        .clone()
}

fn describe_gauges() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!("pushpull_http_connections", "Connections open now");
    describe_gauge!("pushpull_http_streams", "HTTP/2 streams open now");
    describe_gauge!("pushpull_runtime_tasks", "Tasks alive on the server's runtime");
    describe_counter!("pushpull_http_connections_accepted_total", "Connections accepted");
    describe_counter!("pushpull_http_requests_total", "HTTP requests read");
    describe_gauge!(
        "pushpull_connections",
        "Open push connections (streams, sockets) and held long polls, by transport"
    );
    describe_gauge!("pushpull_subscriptions", "Subscriptions served now, by transport");
}

/// `GET /metrics` rendering `handle`, after setting the gauges from `readings`.
pub(crate) fn route(handle: PrometheusHandle, live: Arc<Live>) -> Route {
    Route::new(Method::GET, METRICS_PATH, move |_, _| {
        for count in &live.counts {
            let value = (count.read)();
            match count.export {
                Export::Gauge(gauge) => metrics::gauge!(gauge).set(value as f64),
                Export::Counter(counter) => metrics::counter!(counter).absolute(value as u64),
                Export::Transport(transport, measures) => {
                    for measure in measures {
                        let gauge = match measure {
                            Measure::Connections => "pushpull_connections",
                            Measure::Subscriptions => "pushpull_subscriptions",
                            _ => continue,
                        };
                        metrics::gauge!(gauge, "transport" => transport).set(value as f64);
                    }
                }
            }
        }
        let text = handle.render();
        async move {
            let mut response = Response::new(pushpull_http::full(text));
            *response.status_mut() = StatusCode::OK;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            Ok(response)
        }
    })
}
