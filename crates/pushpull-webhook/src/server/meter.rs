//! What the webhook server counts besides deliveries, through the [`metrics`] facade.

use metrics::{Counter, counter, describe_counter};

/// `pushpull_webhook_attempts_total`.
pub const WEBHOOK_ATTEMPTS: &str = "pushpull_webhook_attempts_total";
/// `pushpull_webhook_failures_total`.
pub const WEBHOOK_FAILURES: &str = "pushpull_webhook_failures_total";
/// `pushpull_webhook_dead_total`.
pub const WEBHOOK_DEAD: &str = "pushpull_webhook_dead_total";

/// Counts a webhook server's attempts, failures and given-up messages, looked up once.
#[derive(Clone)]
pub(crate) struct WebhookMeter {
    pub(crate) attempts: Counter,
    pub(crate) failures: Counter,
    pub(crate) dead: Counter,
}

impl WebhookMeter {
    /// The counters, from the recorder installed now, described to it.
    pub(crate) fn new() -> Self {
        describe_counter!(WEBHOOK_ATTEMPTS, "Webhook delivery attempts");
        describe_counter!(WEBHOOK_FAILURES, "Webhook delivery attempts that failed");
        describe_counter!(WEBHOOK_DEAD, "Webhook messages that used up their attempts");
        Self {
            attempts: counter!(WEBHOOK_ATTEMPTS),
            failures: counter!(WEBHOOK_FAILURES),
            dead: counter!(WEBHOOK_DEAD),
        }
    }
}
