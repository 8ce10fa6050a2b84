//! A bounded soak under faults: subscribers over any transports follow several topics through a
//! [`ChaosProxy`] that kills, refuses, delays and answers 503 at random, while publishers write
//! concurrently. At the end every subscriber must have every message of every topic in order,
//! or gaps that name exactly what it missed, and no duplicate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use pushpull_core::{Client, Cursor, Delivery, Publication, Topic};

use crate::proxy::{Canned, ChaosProxy};

/// How long and how hard to soak.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// How long publishers and faults run.
    pub duration: Duration,
    /// Topics every subscriber follows.
    pub topics: usize,
    /// Publishers writing concurrently.
    pub publishers: usize,
    /// The pause between one publisher's messages.
    pub publish_interval: Duration,
    /// The mean pause between two faults.
    pub fault_interval: Duration,
    /// How long subscribers may take to catch up once the faults stop.
    pub settle: Duration,
    /// The Redis the server's broker stores its logs in, if any: restarting it becomes one of
    /// the faults (with persistence, nothing may be lost).
    #[cfg(feature = "redis")]
    pub redis: Option<Arc<std::sync::Mutex<crate::RedisServer>>>,
    /// The Redis Cluster the server's broker stores its logs in, if any: killing a master (its
    /// replica takes over; the killed one comes back as a replica) becomes one of the faults.
    /// Publishes a master acknowledged but never replicated are lost: readers must be told, by
    /// a gap, and the tally counts what they had read of them as rewound, not repeated.
    #[cfg(feature = "redis")]
    pub cluster: Option<Arc<std::sync::Mutex<crate::RedisCluster>>>,
}

impl Default for SoakConfig {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(30),
            topics: 3,
            publishers: 3,
            publish_interval: Duration::from_millis(20),
            fault_interval: Duration::from_millis(700),
            settle: Duration::from_secs(60),
            #[cfg(feature = "redis")]
            redis: None,
            #[cfg(feature = "redis")]
            cluster: None,
        }
    }
}

/// What a soak did and found, per subscriber and in all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SoakReport {
    /// Messages published.
    pub messages: u64,
    /// Messages delivered, over every subscription.
    pub deliveries: u64,
    /// Live connections killed at once.
    pub kills: u64,
    /// Spells of refused connections.
    pub refusals: u64,
    /// Spells of 503 answers.
    pub unavailable: u64,
    /// Spells of slow connections.
    pub delays: u64,
    /// Restarts of the Redis behind the broker, or masters of its cluster killed.
    pub redis_restarts: u64,
    /// Messages readers had that Redis then lost (a failover), told by a gap and read again
    /// as the log holds them now.
    pub rewound: u64,
    /// Connections the proxy accepted beyond the first one per subscriber: reconnects and
    /// requests (polling clients make one per poll).
    pub connections: u64,
    /// Gaps delivered.
    pub gaps: u64,
    /// Deliveries of a message already delivered.
    pub duplicates: u64,
    /// Messages never delivered and named by no gap.
    pub losses: u64,
    /// Subscriptions that ended with an error instead of resuming.
    pub ended: u64,
    /// Per subscriber (by name): deliveries, gaps, duplicates, losses.
    pub per_subscriber: BTreeMap<String, [u64; 4]>,
}

impl SoakReport {
    /// Whether every subscriber got every message once, in order, or an exact gap.
    pub fn is_clean(&self) -> bool {
        self.duplicates == 0 && self.losses == 0 && self.ended == 0
    }
}

/// One subscription's tally.
#[derive(Default)]
struct Tally {
    /// The offset it expects next.
    next: u64,
    deliveries: u64,
    gaps: u64,
    duplicates: u64,
    losses: u64,
    rewound: u64,
    ended: bool,
}

impl Tally {
    fn take(&mut self, delivery: &Delivery) {
        match delivery {
            Delivery::Message(message) => {
                let offset = message.offset.0;
                if offset < self.next {
                    self.duplicates += 1;
                    return;
                }
                self.losses += offset - self.next;
                self.deliveries += 1;
                self.next = offset + 1;
            }
            Delivery::Gap(gap) => {
                self.gaps += 1;
                // A new epoch may resume before where the reader was: what it had past there
                // was lost by Redis, and those offsets come again with what they hold now.
                if let (pushpull_core::GapReason::EpochChanged { .. }, Cursor::After(_, at)) =
                    (gap.reason, gap.cursor)
                    && at.0 + 1 < self.next
                {
                    self.rewound += self.next - (at.0 + 1);
                    self.next = at.0 + 1;
                }
                if let Some(missed) = gap.missed {
                    if missed.first.0 > self.next {
                        self.losses += missed.first.0 - self.next;
                    }
                    self.next = self.next.max(missed.last.0 + 1);
                }
            }
        }
    }
}

/// A small xorshift generator: faults need variety, not quality.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % sides.max(1)
    }
}

/// Runs the soak: `publisher` writes (straight to the server's broker, say), each of
/// `subscribers` (a name and a client that reaches the server through `proxy`) follows every
/// topic from the beginning, and `proxy` injects faults until `config.duration` has passed.
/// Then the faults stop, and each subscription has `config.settle` to catch up.
pub async fn soak(
    proxy: Arc<ChaosProxy>,
    publisher: Arc<dyn Client>,
    subscribers: Vec<(String, Arc<dyn Client>)>,
    config: &SoakConfig,
) -> SoakReport {
    let prefix = format!("soak.{}", pushpull_core::Epoch::random());
    let topics: Vec<Topic> = (0..config.topics)
        .map(|n| Topic::new(format!("{prefix}.{n}")).expect("valid topic"))
        .collect();
    let start_connections = proxy.accepted();
    let mut report = SoakReport::default();

    // Subscribers.
    let mut readers = Vec::new();
    for (name, client) in &subscribers {
        for topic in &topics {
            let subscription = match client.subscribe(topic, Cursor::Beginning).await {
                Ok(subscription) => subscription,
                Err(error) => panic!("{name}: subscribe to {topic} failed: {error}"),
            };
            let (name, topic) = (name.clone(), topic.clone());
            let goal = Arc::new(AtomicU64::new(u64::MAX));
            let reader_goal = goal.clone();
            readers.push((
                name.clone(),
                topic.clone(),
                goal,
                tokio::spawn(async move {
                    let mut tally = Tally { next: 1, ..Tally::default() };
                    let mut subscription = subscription;
                    while tally.next <= reader_goal.load(Ordering::Acquire) {
                        let wait = Duration::from_millis(200);
                        match tokio::time::timeout(wait, subscription.next()).await {
                            Err(_) => continue,
                            Ok(Some(Ok(delivery))) => tally.take(&delivery),
                            Ok(Some(Err(error))) => {
                                tracing::warn!(%name, %topic, %error, "a soak subscription ended");
                                tally.ended = true;
                                break;
                            }
                            Ok(None) => {
                                tally.ended = true;
                                break;
                            }
                        }
                    }
                    tally
                }),
            ));
        }
    }

    // Publishers.
    let running = Arc::new(AtomicBool::new(true));
    let mut writers = Vec::new();
    for n in 0..config.publishers {
        let (publisher, topics, running) = (publisher.clone(), topics.clone(), running.clone());
        let interval = config.publish_interval;
        writers.push(tokio::spawn(async move {
            let mut dice = Dice(0x9e37_79b9_7f4a_7c15 ^ (n as u64 + 1));
            let mut sent = 0u64;
            while running.load(Ordering::Acquire) {
                let topic = &topics[dice.roll(topics.len() as u64) as usize];
                let publication = Publication::new(format!("p{n}-{sent}"));
                if publisher.publish(topic, publication).await.is_ok() {
                    sent += 1;
                }
                tokio::time::sleep(interval).await;
            }
            sent
        }));
    }

    // Faults.
    let deadline = Instant::now() + config.duration;
    let mut dice = Dice(u64::from(std::process::id()) << 20 | 0x5eed);
    while Instant::now() < deadline {
        let pause = config.fault_interval / 2
            + config.fault_interval.mul_f64(dice.roll(1000) as f64 / 1000.0);
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        let spell = Duration::from_millis(100 + dice.roll(400));
        #[cfg(feature = "redis")]
        let kinds = if config.redis.is_some() || config.cluster.is_some() { 5 } else { 4 };
        #[cfg(not(feature = "redis"))]
        let kinds = 4;
        match dice.roll(kinds) {
            0 => {
                proxy.sever();
                report.kills += 1;
            }
            1 => {
                proxy.set_refusing(true);
                proxy.sever();
                tokio::time::sleep(spell).await;
                proxy.set_refusing(false);
                report.refusals += 1;
            }
            2 => {
                proxy.answer_with(Some(Canned::status(503)));
                proxy.sever();
                tokio::time::sleep(spell).await;
                proxy.answer_with(None);
                report.unavailable += 1;
            }
            #[cfg(feature = "redis")]
            4 => {
                if let Some(redis) = config.redis.clone() {
                    let restarted = tokio::task::spawn_blocking(move || {
                        redis.lock().expect("redis lock").restart()
                    })
                    .await
                    .expect("the restart task");
                    if let Err(error) = restarted {
                        panic!("could not restart redis: {error}");
                    }
                    report.redis_restarts += 1;
                }
                if let Some(cluster) = config.cluster.clone() {
                    let pick = dice.roll(3) as usize;
                    let killed = tokio::task::spawn_blocking(move || {
                        let mut cluster = cluster.lock().expect("cluster lock");
                        let masters = cluster.masters()?;
                        let master = masters[pick % masters.len()];
                        cluster.kill_master(master)?;
                        cluster.restart_node(master)
                    })
                    .await
                    .expect("the failover task");
                    if let Err(error) = killed {
                        panic!("could not fail a master over: {error}");
                    }
                    report.redis_restarts += 1;
                }
            }
            _ => {
                proxy.set_delay(Some(spell));
                proxy.sever();
                tokio::time::sleep(spell * 2).await;
                proxy.set_delay(None);
                report.delays += 1;
            }
        }
    }
    running.store(false, Ordering::Release);
    for writer in writers {
        report.messages += writer.await.expect("a publisher panicked");
    }

    // Every topic's last offset is now known: each reader stops once it got there.
    let mut last = BTreeMap::new();
    for topic in &topics {
        let page = publisher.fetch(topic, Cursor::Latest, 1).await.expect("fetch the tail");
        last.insert(topic.clone(), page.next.offset().map_or(0, |o| o.0));
    }
    for (_, topic, goal, _) in &readers {
        goal.store(last[topic], Ordering::Release);
    }
    let settle = tokio::time::Instant::now() + config.settle;
    for (name, _, goal, reader) in readers {
        let tally = match tokio::time::timeout_at(settle, reader).await {
            Ok(tally) => tally.expect("a reader panicked"),
            Err(_) => {
                // Still short of the tail when time ran out: what it lacks is lost.
                let goal = goal.load(Ordering::Acquire);
                tracing::warn!(%name, goal, "a soak subscriber did not catch up");
                Tally { next: 1, ended: true, ..Tally::default() }
            }
        };
        let losses = tally.losses + (goal.load(Ordering::Acquire) + 1).saturating_sub(tally.next);
        report.deliveries += tally.deliveries;
        report.gaps += tally.gaps;
        report.rewound += tally.rewound;
        report.duplicates += tally.duplicates;
        report.losses += losses;
        report.ended += u64::from(tally.ended);
        let entry = report.per_subscriber.entry(name).or_default();
        entry[0] += tally.deliveries;
        entry[1] += tally.gaps;
        entry[2] += tally.duplicates;
        entry[3] += losses;
    }
    report.connections = proxy.accepted().saturating_sub(start_connections);
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use pushpull_core::{Epoch, Gap, GapReason, Offset, OffsetRange};

    fn message(offset: u64) -> Delivery {
        Delivery::Message(Publication::new("m").into_message(
            Topic::new("t").unwrap(),
            Epoch::from_u64(1),
            Offset(offset),
        ))
    }

    #[test]
    fn the_tally_counts_repeats_holes_and_gaps() {
        let mut tally = Tally { next: 1, ..Tally::default() };
        for offset in [1, 2, 2, 4] {
            tally.take(&message(offset));
        }
        assert_eq!((tally.deliveries, tally.duplicates, tally.losses), (3, 1, 1));
        tally.take(&Delivery::Gap(Gap {
            topic: Topic::new("t").unwrap(),
            reason: GapReason::Retention,
            missed: Some(OffsetRange { first: Offset(5), last: Offset(9) }),
            cursor: Cursor::After(Epoch::from_u64(1), Offset(9)),
        }));
        tally.take(&message(10));
        assert_eq!((tally.gaps, tally.losses, tally.next), (1, 1, 11), "a gap is no loss");
    }
}
