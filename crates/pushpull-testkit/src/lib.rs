#![doc = include_str!("../README.md")]
// docs.rs builds with `--cfg docsrs`: each feature-gated item shows the feature it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod brokers;
pub mod cases;
mod harness;
#[cfg(feature = "http")]
pub mod http;
mod ledger;
mod memory;
#[cfg(feature = "redis")]
pub mod redis;

pub use brokers::{BrokerHarness, BrokerStore, MemoryBrokers, OpenedBroker, SubscriptionCount};
pub use harness::{Fixture, Harness, Limits, Skip};
pub use ledger::{Ledger, read_into};
pub use memory::{MemoryHarness, memory_config};
pub use pushpull_chaos::{Canned, ChaosProxy};

/// Runs one case on a fresh two-thread runtime; what the [`conformance!`] tests call.
pub fn run<F: std::future::Future<Output = ()>>(case: F) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(case)
}

/// Expands to a module `conformance` with one `#[test]` per case, each running against the
/// harness that `$harness` (an expression, evaluated once per test) builds.
///
/// ```
/// pushpull_testkit::conformance!(pushpull_testkit::MemoryHarness);
/// # fn main() {}
/// ```
///
/// `cargo test conformance` then runs exactly the suite.
#[macro_export]
macro_rules! conformance {
    ($harness:expr) => {
        #[allow(unreachable_pub)]
        mod conformance {
            #[allow(unused_imports)]
            use super::*;
            $crate::conformance!(@cases $harness;
                publish_fetch_round_trip,
                fetch_empty_topic,
                order_under_concurrent_publishers,
                fetch_limit_and_next_cursor,
                subscribe_from_beginning,
                subscribe_from_latest,
                subscribe_from_after,
                subscribe_before_first_publish,
                two_subscriptions_to_one_topic,
                dropped_subscription_releases_server_state,
                resume_after_connection_killed,
                gap_on_retention_loss,
                history_last_n,
                history_since,
                fetch_newest_first,
                many_topics_resume_from_one_cursor_set,
                many_topics_survive_a_killed_connection,
                prefix_follows_new_topics,
                gap_on_epoch_change,
                stale_epoch_gap_on_a_quiet_topic,
                live_subscription_across_restart,
                binary_payloads,
                large_payload,
                many_topics,
                invalid_topic_rejected,
                invalid_cursor_rejected,
                oversize_payload_rejected,
                idempotent_publish,
                batch_publish,
                invalid_labels_rejected,
                presence_join_and_leave,
                presence_resumes_from_a_snapshot,
            );
        }
    };
    (@cases $harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let harness = $harness;
                $crate::run($crate::cases::$case(&harness));
            }
        )*
    };
}
