//! What the servers count, through the [`metrics`] facade: nothing is recorded until an
//! application (or `pushpull serve`, which serves them as `GET /metrics`) installs a recorder,
//! and then each count is an atomic add on a handle looked up once per stream, socket or route.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `pushpull_messages_published_total` | counter | `transport` (`http`, `ws`) |
//! | `pushpull_publish_duration_seconds` | histogram | — |
//! | `pushpull_deliveries_total` | counter | `transport` |
//! | `pushpull_delivered_bytes_total` | counter | `transport` |
//! | `pushpull_fanout_lag_seconds` | histogram | `transport` |
//! | `pushpull_gaps_total` | counter | `transport`, `reason` (`retention`, `epoch_changed`) |
//! | `pushpull_broker_errors_total` | counter | `operation` (`publish`, `fetch`, `subscribe`) |
//!
//! A transport may count more of its own (webhooks count attempts in `pushpull-webhook`).
//!
//! The gauges (open connections and subscriptions by transport) are read from the servers' live
//! counts when the metrics are rendered; see `pushpull::metrics`.

use std::time::{Duration, Instant, SystemTime};

use metrics::{Counter, Histogram, counter, histogram};
use pushpull_core::{Delivery, Error, GapReason};

/// `pushpull_messages_published_total`.
pub const PUBLISHED: &str = "pushpull_messages_published_total";
/// `pushpull_publish_duration_seconds`.
pub const PUBLISH_DURATION: &str = "pushpull_publish_duration_seconds";
/// `pushpull_deliveries_total`.
pub const DELIVERIES: &str = "pushpull_deliveries_total";
/// `pushpull_delivered_bytes_total`.
pub const DELIVERED_BYTES: &str = "pushpull_delivered_bytes_total";
/// `pushpull_fanout_lag_seconds`.
pub const FANOUT_LAG: &str = "pushpull_fanout_lag_seconds";
/// `pushpull_gaps_total`.
pub const GAPS: &str = "pushpull_gaps_total";
/// `pushpull_broker_errors_total`.
pub const BROKER_ERRORS: &str = "pushpull_broker_errors_total";

/// Gives every metric its help text (`# HELP` in Prometheus's format). Call it once, after
/// installing a recorder.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(PUBLISHED, "Messages published, by the transport they came in by");
    describe_histogram!(PUBLISH_DURATION, Unit::Seconds, "Time the broker took to store a publish");
    describe_counter!(DELIVERIES, "Messages handed to subscribers' connections, by transport");
    describe_counter!(DELIVERED_BYTES, Unit::Bytes, "Bytes of deliveries written, by transport");
    describe_histogram!(
        FANOUT_LAG,
        Unit::Seconds,
        "Time from a message's publish to its delivery being written, by transport"
    );
    describe_counter!(GAPS, "Gaps told to readers, by transport and reason");
    describe_counter!(BROKER_ERRORS, "Broker failures, by operation");
}

/// Counts one transport's deliveries. Made once per stream, socket or route, so a delivery
/// costs two atomic adds and a histogram sample.
#[derive(Clone)]
pub struct DeliveryMeter {
    transport: &'static str,
    deliveries: Counter,
    bytes: Counter,
    lag: Histogram,
}

impl std::fmt::Debug for DeliveryMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryMeter").field("transport", &self.transport).finish()
    }
}

impl DeliveryMeter {
    /// The meter of `transport` (`sse`, `ws`, …).
    pub fn new(transport: &'static str) -> Self {
        Self {
            transport,
            deliveries: counter!(DELIVERIES, "transport" => transport),
            bytes: counter!(DELIVERED_BYTES, "transport" => transport),
            lag: histogram!(FANOUT_LAG, "transport" => transport),
        }
    }

    /// `delivery` was handed to the connection: a message counts as a delivery with its lag
    /// since it was published, a gap by its reason. (Its bytes are counted by [`bytes`](Self::bytes).)
    pub fn delivered(&self, delivery: &Delivery) {
        match delivery {
            Delivery::Message(message) => {
                self.deliveries.increment(1);
                let lag = SystemTime::now().duration_since(message.timestamp).unwrap_or_default();
                self.lag.record(lag);
            }
            Delivery::Gap(gap) => gap_counted(self.transport, &gap.reason),
        }
    }

    /// A page was answered (polling): each of its messages is a delivery.
    pub fn page(&self, page: &pushpull_core::Page) {
        self.deliveries.increment(page.messages.len() as u64);
        let now = SystemTime::now();
        for message in &page.messages {
            self.lag.record(now.duration_since(message.timestamp).unwrap_or_default());
        }
        if let Some(gap) = &page.gap {
            gap_counted(self.transport, &gap.reason);
        }
    }

    /// A fan-out wrote `deliveries` deliveries of `messages` (to as many subscribers in
    /// all), `bytes` in all: each message's lag is sampled once per subscriber it reached, as
    /// nearly as the counts allow.
    pub fn fanned_out<'a>(
        &self,
        messages: impl ExactSizeIterator<Item = &'a Delivery>,
        deliveries: u64,
        bytes: u64,
    ) {
        self.deliveries.increment(deliveries);
        self.bytes.increment(bytes);
        let per_message = deliveries / (messages.len().max(1) as u64);
        let now = SystemTime::now();
        for delivery in messages {
            if let Delivery::Message(message) = delivery {
                let lag = now.duration_since(message.timestamp).unwrap_or_default();
                for _ in 0..per_message {
                    self.lag.record(lag);
                }
            }
        }
    }

    /// `bytes` more bytes were written (a page's body, say).
    pub fn bytes(&self, bytes: usize) {
        self.bytes.increment(bytes as u64);
    }
}

fn gap_counted(transport: &'static str, reason: &GapReason) {
    let reason = match reason {
        GapReason::Retention => "retention",
        GapReason::EpochChanged { .. } => "epoch_changed",
    };
    counter!(GAPS, "transport" => transport, "reason" => reason).increment(1);
}

/// Counts a publish through `transport` that took `took`, or the broker error it met.
pub fn published(transport: &'static str, took: Duration, outcome: Result<(), &Error>) {
    match outcome {
        Ok(()) => {
            counter!(PUBLISHED, "transport" => transport).increment(1);
            histogram!(PUBLISH_DURATION).record(took);
        }
        Err(error) => broker_error("publish", error),
    }
}

/// Times `publish` (a broker publish) and counts it as [`published`] does.
pub async fn timed_publish<T>(
    transport: &'static str,
    publish: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let started = Instant::now();
    let result = publish.await;
    published(transport, started.elapsed(), result.as_ref().map(|_| ()));
    result
}

/// Counts `error` from the broker's `operation` when it is the broker's failure (a 5xx), not
/// the request's fault.
pub fn broker_error(operation: &'static str, error: &Error) {
    if crate::status_for(error.kind()).is_server_error() {
        counter!(BROKER_ERRORS, "operation" => operation).increment(1);
    }
}
