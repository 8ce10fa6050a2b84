//! The conformance cases. Each is a public function that custom transports may call directly;
//! [`conformance!`](crate::conformance) turns them all into named tests.
//!
//! Every await is under [`STEP_TIMEOUT`]; no case asserts how long anything took.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use std::sync::Arc;

use pushpull_core::{
    Client, Cursor, CursorSet, Delivery, Epoch, Error, ErrorKind, FollowRequest, Gap, GapReason,
    JOIN_EVENT, LEAVE_EVENT, Lease, Member, Message, MultiSubscription, Offset, OffsetRange,
    PresenceSnapshot, Publication, Receipt, Selector, Subscription, Topic, follow,
};

use crate::harness::{Fixture, Harness, Limits, Skip};

/// How long one step of a case may take before the case fails as hung.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, step: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP_TIMEOUT, step).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {STEP_TIMEOUT:?} waiting for {what}"),
    }
}

async fn start(harness: &dyn Harness, limits: Limits) -> Box<dyn Fixture> {
    within("the harness to start", harness.start(limits))
        .await
        .unwrap_or_else(|e| panic!("the harness failed to start: {e}"))
}

fn topic(name: &str) -> Topic {
    Topic::new(format!("conformance.{name}")).expect("valid topic")
}

fn skipped(case: &str, why: Skip) {
    eprintln!("conformance case {case} skipped: {why}");
}

async fn publish(client: &dyn Client, topic: &Topic, payload: impl Into<Bytes>) -> Receipt {
    within("publish", client.publish(topic, Publication::new(payload)))
        .await
        .unwrap_or_else(|e| panic!("publish to {topic} failed: {e:?}"))
}

async fn publish_range(
    client: &dyn Client,
    topic: &Topic,
    numbers: std::ops::RangeInclusive<u32>,
) -> Vec<Receipt> {
    let mut receipts = Vec::new();
    for n in numbers {
        receipts.push(publish(client, topic, format!("m{n}")).await);
    }
    receipts
}

async fn subscribe(client: &dyn Client, topic: &Topic, cursor: Cursor) -> Subscription {
    within("subscribe", client.subscribe(topic, cursor))
        .await
        .unwrap_or_else(|e| panic!("subscribe to {topic} from {cursor} failed: {e:?}"))
}

async fn next_delivery(sub: &mut Subscription) -> Delivery {
    match within("the next delivery", sub.next()).await {
        Some(Ok(delivery)) => delivery,
        Some(Err(e)) => panic!("the subscription to {} failed: {e:?}", sub.topic()),
        None => panic!("the subscription to {} ended", sub.topic()),
    }
}

async fn next_message(sub: &mut Subscription) -> Message {
    match next_delivery(sub).await {
        Delivery::Message(m) => m,
        Delivery::Gap(g) => panic!("expected a message, got {g:?}"),
    }
}

async fn next_gap(sub: &mut Subscription) -> Gap {
    match next_delivery(sub).await {
        Delivery::Gap(g) => g,
        Delivery::Message(m) => {
            panic!("expected a gap, got message {} ({:?})", m.offset, m.payload)
        }
    }
}

/// Reads every page from `cursor` until an empty one; returns the messages and the final cursor.
async fn fetch_all(
    client: &dyn Client,
    topic: &Topic,
    mut cursor: Cursor,
    limit: usize,
) -> (Vec<Message>, Cursor) {
    let mut messages = Vec::new();
    loop {
        let page = within("fetch", client.fetch(topic, cursor, limit))
            .await
            .unwrap_or_else(|e| panic!("fetch {topic} after {cursor} failed: {e:?}"));
        assert!(page.gap.is_none(), "unexpected gap {:?}", page.gap);
        assert!(page.messages.len() <= limit, "asked for {limit}, got {}", page.messages.len());
        if page.messages.is_empty() {
            assert_eq!(page.next.epoch(), cursor.epoch().or(page.next.epoch()));
            return (messages, page.next);
        }
        cursor = page.next;
        messages.extend(page.messages);
    }
}

fn offsets(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.offset.0).collect()
}

fn expect_kind<T: std::fmt::Debug>(result: Result<T, Error>, kind: ErrorKind, what: &str) -> Error {
    match result {
        Ok(value) => panic!("{what}: expected a {kind} error, got {value:?}"),
        Err(err) => {
            assert_eq!(err.kind(), kind, "{what}: wrong kind in {err:?}");
            assert!(!err.message().is_empty(), "{what}: the error says nothing");
            err
        }
    }
}

/// P1, F1: a published message comes back byte for byte with its labels, offset and epoch.
pub async fn publish_fetch_round_trip(harness: &dyn Harness) {
    let fixture = start(harness, Limits::default()).await;
    let client = fixture.client();
    let topic = topic("round-trip");
    let publication = Publication::new("hello").event("greeting").content_type("text/plain");
    let receipt = within("publish", client.publish(&topic, publication)).await.expect("publish");
    assert_eq!(receipt.offset, Offset(1), "the first offset of a topic is 1");
    assert_eq!(receipt.topic, topic);

    let page = within("fetch", client.fetch(&topic, Cursor::Beginning, 10)).await.expect("fetch");
    assert!(page.gap.is_none());
    assert_eq!(page.messages.len(), 1);
    let message = &page.messages[0];
    assert_eq!(message.payload, "hello");
    assert_eq!(message.event.as_deref(), Some("greeting"));
    assert_eq!(message.content_type.as_deref(), Some("text/plain"));
    assert_eq!((message.epoch, message.offset), (receipt.epoch, receipt.offset));
    assert_eq!(message.topic, topic);
    assert_eq!(
        message.timestamp_millis(),
        pushpull_core::millis_since_unix_epoch(receipt.timestamp)
    );
    assert_eq!(page.next, receipt.cursor());

    let again = within("fetch", client.fetch(&topic, page.next, 10)).await.expect("fetch");
    assert!(again.is_empty(), "nothing after the last message: {again:?}");
    assert_eq!(again.next, page.next, "an empty page keeps the cursor");
}

/// F6, F3: a topic nobody published to gives an empty page; `Latest` gives the end.
pub async fn fetch_empty_topic(harness: &dyn Harness) {
    let fixture = start(harness, Limits::default()).await;
    let client = fixture.client();
    let topic = topic("empty");
    for cursor in [Cursor::Beginning, Cursor::Latest] {
        let page = within("fetch", client.fetch(&topic, cursor, 10)).await.expect("fetch");
        assert!(page.is_empty(), "{page:?}");
        assert_eq!(page.next.offset(), Some(Offset(0)), "an empty log stands at offset 0");
    }
    publish_range(&*client, &topic, 1..=3).await;
    let page = within("fetch", client.fetch(&topic, Cursor::Latest, 10)).await.expect("fetch");
    assert!(page.is_empty());
    assert_eq!(page.next.offset(), Some(Offset(3)));
}

/// P2: offsets are dense and each publisher's messages keep their order under concurrency.
pub async fn order_under_concurrent_publishers(harness: &dyn Harness) {
    const PUBLISHERS: u32 = 4;
    const EACH: u32 = 25;
    let fixture = start(harness, Limits::default()).await;
    let client = fixture.client();
    let topic = topic("concurrent");
    let tasks: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let client = client.clone();
            let topic = topic.clone();
            tokio::spawn(async move {
                let mut receipts = Vec::new();
                for n in 0..EACH {
                    receipts.push((publish(&*client, &topic, format!("p{p}-{n}")).await, n));
                }
                receipts
            })
        })
        .collect();
    let mut by_offset = BTreeMap::new();
    for task in tasks {
        for (receipt, _) in within("the publishers", task).await.expect("publisher task") {
            assert!(
                by_offset.insert(receipt.offset.0, receipt).is_none(),
                "an offset was given twice"
            );
        }
    }
    let total = u64::from(PUBLISHERS * EACH);
    assert_eq!(
        by_offset.keys().copied().collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>(),
        "offsets are dense"
    );

    let (messages, _) = fetch_all(&*client, &topic, Cursor::Beginning, 30).await;
    assert_eq!(offsets(&messages), (1..=total).collect::<Vec<_>>());
    let mut last_seen = BTreeMap::new();
    for message in &messages {
        let text = message.text().expect("text payload");
        let (publisher, n) = text.split_once('-').expect("p-n");
        let n: u32 = n.parse().expect("number");
        if let Some(previous) = last_seen.insert(publisher.to_owned(), n) {
            assert!(n > previous, "{publisher}'s messages out of order: {n} after {previous}");
        }
    }
    assert_eq!(last_seen.len(), PUBLISHERS as usize);
}

/// F1, F2: `limit` bounds a page and `next` walks the log without loss or duplicate.
pub async fn fetch_limit_and_next_cursor(harness: &dyn Harness) {
    let fixture = start(harness, Limits::default()).await;
    let client = fixture.client();
    let topic = topic("paging");
    publish_range(&*client, &topic, 1..=10).await;

    let first = within("fetch", client.fetch(&topic, Cursor::Beginning, 3)).await.expect("fetch");
    assert_eq!(offsets(&first.messages), vec![1, 2, 3]);
    assert_eq!(first.next.offset(), Some(Offset(3)));
    let (rest, end) = fetch_all(&*client, &topic, first.next, 3).await;
    assert_eq!(offsets(&rest), (4..=10).collect::<Vec<_>>());
    assert_eq!(end.offset(), Some(Offset(10)));

    let err = expect_kind(
        client.fetch(&topic, Cursor::Beginning, 0).await,
        ErrorKind::BadRequest,
        "limit 0",
    );
    assert!(err.message().contains("limit"), "the error should name the limit: {err}");
}

/// S1, F3: a subscription from `Beginning` delivers what exists, then what comes.
pub async fn subscribe_from_beginning(harness: &dyn Harness) {
    let fixture = start(harness, Limits::default()).await;
    let client = fixture.client();
    let topic = topic("from-beginning");
    publish_range(&*client, &topic, 1..=3).await;
    let mut sub = subscribe(&*client, &topic, Cursor::Beginning).await;
    publish_range(&*client, &topic, 4..=5).await;
    for n in 1..=5u64 {
        let message = next_message(&mut sub).await;
        assert_eq!(message.offset, Offset(n));
        assert_eq!(message.payload, format!("m{n}"));
    }
    assert_eq!(sub.cursor().offset(), Some(Offset(5)));
}

/// S1, F3: a subscription from `Latest` delivers only what is published after it.
pub async fn subscribe_from_latest(harness: &dyn Harness) {
    let fixture = start(harness, Limits::default()).await;
    let client = fixture.client();
    let topic = topic("from-latest");
    publish_range(&*client, &topic, 1..=3).await;
    let mut sub = subscribe(&*client, &topic, Cursor::Latest).await;
    publish_range(&*client, &topic, 4..=5).await;
    assert_eq!(next_message(&mut sub).await.offset, Offset(4));
    assert_eq!(next_message(&mut sub).await.offset, Offset(5));
}

/// S1: a subscription from a cursor delivers what follows it, then what comes.
pub async fn subscribe_from_after(harness: &dyn Harness) {
    let fixture = start(harness, Limits::default()).await;
    let client = fixture.client();
    let topic = topic("from-after");
    let receipts = publish_range(&*client, &topic, 1..=5).await;
    let mut sub = subscribe(&*client, &topic, receipts[2].cursor()).await;
    assert_eq!(next_message(&mut sub).await.offset, Offset(4));
    assert_eq!(next_message(&mut sub).await.offset, Offset(5));
    publish_range(&*client, &topic, 6..=6).await;
    let sixth = next_message(&mut sub).await;
    assert_eq!((sixth.offset, sixth.payload.as_ref()), (Offset(6), &b"m6"[..]));
}

/// S5: subscribing to a topic nobody published to waits for its first message.
pub async fn subscribe_before_first_publish(harness: &dyn Harness) {
    let fixture = start(harness, Limits::default()).await;
    let client = fixture.client();
    let topic = topic("not-yet");
    let mut sub = subscribe(&*client, &topic, Cursor::Beginning).await;
    publish_range(&*client, &topic, 1..=1).await;
    assert_eq!(next_message(&mut sub).await.payload, "m1");
}

/// S1: two subscriptions to one topic on one client, from different cursors, each see every
/// message, in order, once.
pub async fn two_subscriptions_to_one_topic(harness: &dyn Harness) {
    let fixture = start(harness, Limits::default()).await;
    let client = fixture.client();
    let topic = topic("twice");
    let receipts = publish_range(&*client, &topic, 1..=2).await;
    let mut first = subscribe(&*client, &topic, Cursor::Beginning).await;
    let mut second = subscribe(&*client, &topic, receipts[0].cursor()).await;
    publish_range(&*client, &topic, 3..=6).await;
    for n in 1..=6u64 {
        assert_eq!(next_message(&mut first).await.offset, Offset(n), "the first subscription");
    }
    for n in 2..=6u64 {
        assert_eq!(next_message(&mut second).await.offset, Offset(n), "the second subscription");
    }
    // Dropping one leaves the other whole.
    drop(first);
    publish_range(&*client, &topic, 7..=7).await;
    assert_eq!(next_message(&mut second).await.offset, Offset(7), "after the other was dropped");
}

/// S4: dropping a subscription releases what the server held for it.
pub async fn dropped_subscription_releases_server_state(harness: &dyn Harness) {
    let fixture = start(harness, Limits::default()).await;
    let client = fixture.client();
    let before = match fixture.server_subscriptions().await {
        Ok(count) => count,
        Err(why) => return skipped("dropped_subscription_releases_server_state", why),
    };
    let topics = [topic("release.a"), topic("release.b")];
    let mut subs = Vec::new();
    for topic in &topics {
        let mut sub = subscribe(&*client, topic, Cursor::Beginning).await;
        publish_range(&*client, topic, 1..=1).await;
        assert_eq!(next_message(&mut sub).await.offset, Offset(1));
        subs.push(sub);
    }
    drop(subs);
    let mut now = fixture.server_subscriptions().await.expect("counted before");
    within("the server to release the dropped subscriptions", async {
        while now > before {
            tokio::time::sleep(Duration::from_millis(20)).await;
            now = fixture.server_subscriptions().await.expect("counted before");
        }
    })
    .await;
    assert_eq!(now, before, "the server holds no more subscriptions than before");
    // The client still works.
    let mut sub = subscribe(&*client, &topics[0], Cursor::Beginning).await;
    assert_eq!(next_message(&mut sub).await.offset, Offset(1));
}

/// S2: killing the subscriber's connection mid-stream loses nothing and repeats nothing.
pub async fn resume_after_connection_killed(harness: &dyn Harness) {
    let fixture = start(harness, Limits::default()).await;
    let client = fixture.client();
    let topic = topic("resume");
    let mut sub = subscribe(&*client, &topic, Cursor::Beginning).await;
    publish_range(&*client, &topic, 1..=10).await;
    for n in 1..=5u64 {
        assert_eq!(next_message(&mut sub).await.offset, Offset(n));
    }
    if let Err(why) = fixture.sever().await {
        return skipped("resume_after_connection_killed", why);
    }
    publish_range(&*client, &topic, 11..=20).await;
    for n in 6..=20u64 {
        let message = next_message(&mut sub).await;
        assert_eq!(message.offset, Offset(n), "after the connection was killed");
        assert_eq!(message.payload, format!("m{n}"));
    }
    // Severed again while idle: the next message still arrives, once.
    fixture.sever().await.expect("sever worked before");
    publish_range(&*client, &topic, 21..=21).await;
    assert_eq!(next_message(&mut sub).await.offset, Offset(21));
}

/// F4, S1: a reader behind retention gets a gap naming exactly the missed offsets.
pub async fn gap_on_retention_loss(harness: &dyn Harness) {
    let fixture = start(harness, Limits { retention_messages: 5, ..Limits::default() }).await;
    let client = fixture.client();
    let topic = topic("retention");
    let receipts = publish_range(&*client, &topic, 1..=2).await;
    let behind = receipts[1].cursor();
    let epoch = receipts[1].epoch;
    publish_range(&*client, &topic, 3..=12).await; // keeps 8..=12

    let expected = Gap {
        topic: topic.clone(),
        reason: GapReason::Retention,
        missed: Some(OffsetRange { first: Offset(3), last: Offset(7) }),
        cursor: Cursor::After(epoch, Offset(7)),
    };
    let page = within("fetch", client.fetch(&topic, behind, 100)).await.expect("fetch");
    assert_eq!(page.gap.as_ref(), Some(&expected));
    assert_eq!(offsets(&page.messages), (8..=12).collect::<Vec<_>>());

    let mut sub = subscribe(&*client, &topic, behind).await;
    assert_eq!(next_gap(&mut sub).await, expected);
    for n in 8..=12u64 {
        assert_eq!(next_message(&mut sub).await.offset, Offset(n));
    }

    // `Beginning` means the oldest retained message: no gap.
    let page = within("fetch", client.fetch(&topic, Cursor::Beginning, 100)).await.expect("fetch");
    assert!(page.gap.is_none());
    assert_eq!(page.messages.first().map(|m| m.offset), Some(Offset(8)));
}

/// F3, S1: `last:N` starts at the last `N` messages (all of them when there are fewer), and
/// `last:1` is the current value; then the subscription follows. Where `N` reaches past what is
/// retained, a gap names exactly what of the last `N` is gone.
pub async fn history_last_n(harness: &dyn Harness) {
    let fixture = start(harness, Limits::default()).await;
    let client = fixture.client();
    let topic = topic("last-n");
    publish_range(&*client, &topic, 1..=10).await;

    let page = within("fetch", client.fetch(&topic, Cursor::Last(3), 100)).await.expect("fetch");
    assert!(page.gap.is_none(), "unexpected gap {:?}", page.gap);
    assert_eq!(offsets(&page.messages), vec![8, 9, 10]);
    let page = within("fetch", client.fetch(&topic, Cursor::Last(50), 100)).await.expect("fetch");
    assert!(page.gap.is_none(), "fewer than N messages is no gap: {:?}", page.gap);
    assert_eq!(offsets(&page.messages), (1..=10).collect::<Vec<_>>());
    let page = within("fetch", client.fetch(&topic, Cursor::Last(0), 100)).await.expect("fetch");
    assert!(page.messages.is_empty() && page.gap.is_none(), "last:0 is latest: {page:?}");
    assert_eq!(page.next.offset(), Some(Offset(10)));

    let mut current = subscribe(&*client, &topic, Cursor::Last(1)).await;
    let mut three = subscribe(&*client, &topic, Cursor::Last(3)).await;
    assert_eq!(next_message(&mut current).await.payload, "m10");
    for n in 8..=10u64 {
        assert_eq!(next_message(&mut three).await.offset, Offset(n));
    }
    publish_range(&*client, &topic, 11..=11).await;
    assert_eq!(next_message(&mut current).await.payload, "m11");
    assert_eq!(next_message(&mut three).await.payload, "m11");

    let fixture = start(harness, Limits { retention_messages: 5, ..Limits::default() }).await;
    let client = fixture.client();
    let receipts = publish_range(&*client, &topic, 1..=12).await; // keeps 8..=12
    let epoch = receipts[0].epoch;
    let expected = Gap {
        topic: topic.clone(),
        reason: GapReason::Retention,
        missed: Some(OffsetRange { first: Offset(6), last: Offset(7) }),
        cursor: Cursor::After(epoch, Offset(7)),
    };
    let page = within("fetch", client.fetch(&topic, Cursor::Last(7), 100)).await.expect("fetch");
    assert_eq!(page.gap.as_ref(), Some(&expected));
    assert_eq!(offsets(&page.messages), (8..=12).collect::<Vec<_>>());
    let mut sub = subscribe(&*client, &topic, Cursor::Last(7)).await;
    assert_eq!(next_gap(&mut sub).await, expected);
    for n in 8..=12u64 {
        assert_eq!(next_message(&mut sub).await.offset, Offset(n));
    }
}

/// F3, S1: `since:TIME` starts at the first message published at or after `TIME`, then the
/// subscription follows; a time after every message waits for the next one. Where messages
/// that may be at or after `TIME` were dropped by retention, a gap says so.
pub async fn history_since(harness: &dyn Harness) {
    let fixture = start(harness, Limits::default()).await;
    let client = fixture.client();
    let topic = topic("since");
    publish_range(&*client, &topic, 1..=3).await;
    // Timestamps have millisecond precision: let a few pass so that message 4 is later.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let later = publish_range(&*client, &topic, 4..=6).await;
    let since = Cursor::since(later[0].timestamp);

    let page = within("fetch", client.fetch(&topic, since, 100)).await.expect("fetch");
    assert!(page.gap.is_none(), "unexpected gap {:?}", page.gap);
    assert_eq!(offsets(&page.messages), vec![4, 5, 6]);
    let page = within("fetch", client.fetch(&topic, Cursor::Since(0), 100)).await.expect("fetch");
    assert!(page.gap.is_none(), "nothing was dropped: {:?}", page.gap);
    assert_eq!(offsets(&page.messages), (1..=6).collect::<Vec<_>>());

    let mut sub = subscribe(&*client, &topic, since).await;
    for n in 4..=6u64 {
        assert_eq!(next_message(&mut sub).await.offset, Offset(n));
    }
    let future = Cursor::since(later[2].timestamp + Duration::from_secs(3600));
    let page = within("fetch", client.fetch(&topic, future, 100)).await.expect("fetch");
    assert!(page.messages.is_empty() && page.gap.is_none(), "nothing is that new: {page:?}");
    let mut waiting = subscribe(&*client, &topic, future).await;
    publish_range(&*client, &topic, 7..=7).await;
    assert_eq!(next_message(&mut sub).await.payload, "m7");
    assert_eq!(next_message(&mut waiting).await.payload, "m7");

    let fixture = start(harness, Limits { retention_messages: 5, ..Limits::default() }).await;
    let client = fixture.client();
    let receipts = publish_range(&*client, &topic, 1..=12).await; // keeps 8..=12
    let epoch = receipts[0].epoch;
    let page = within("fetch", client.fetch(&topic, Cursor::Since(0), 100)).await.expect("fetch");
    let expected = Gap {
        topic: topic.clone(),
        reason: GapReason::Retention,
        missed: Some(OffsetRange { first: Offset(1), last: Offset(7) }),
        cursor: Cursor::After(epoch, Offset(7)),
    };
    assert_eq!(page.gap.as_ref(), Some(&expected));
    assert_eq!(offsets(&page.messages), (8..=12).collect::<Vec<_>>());
    let mut sub = subscribe(&*client, &topic, Cursor::Since(0)).await;
    assert_eq!(next_gap(&mut sub).await, expected);
    assert_eq!(next_message(&mut sub).await.offset, Offset(8));
}

fn follow_request(selectors: &[(&Topic, Cursor)], resume: Option<CursorSet>) -> FollowRequest {
    FollowRequest {
        selectors: selectors.iter().map(|(t, c)| (Selector::Topic((*t).clone()), *c)).collect(),
        resume,
        max_topics: 100,
    }
}

async fn next_of_many(sub: &mut MultiSubscription) -> Message {
    match within("the next delivery of many topics", sub.next()).await {
        Some(Ok(Delivery::Message(m))) => m,
        Some(Ok(Delivery::Gap(g))) => panic!("expected a message, got {g:?}"),
        Some(Err(e)) => panic!("following many topics failed: {e:?}"),
        None => panic!("following many topics ended"),
    }
}

/// S1, S2 for many topics: one stream follows several topics, each in its order, and its
/// cursor set resumes every one of them with nothing lost or repeated.
pub async fn many_topics_resume_from_one_cursor_set(harness: &dyn Harness) {
    let fixture = start(harness, Limits::default()).await;
    let client = fixture.client();
    let topics: Vec<Topic> = ["a", "b", "c"].iter().map(|n| topic(&format!("many.{n}"))).collect();
    publish(&*client, &topics[0], "before").await;
    let selectors: Vec<(&Topic, Cursor)> = topics.iter().map(|t| (t, Cursor::Latest)).collect();
    let mut sub = within("follow", follow(client.clone(), follow_request(&selectors, None)))
        .await
        .unwrap_or_else(|e| panic!("follow failed: {e:?}"));
    for n in 1..=2 {
        for t in &topics {
            publish(&*client, t, format!("{t}/{n}")).await;
        }
    }
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for _ in 0..6 {
        let m = next_of_many(&mut sub).await;
        seen.entry(m.topic.to_string())
            .or_default()
            .push(String::from_utf8_lossy(&m.payload).into());
    }
    for t in &topics {
        assert_eq!(seen[t.as_str()], vec![format!("{t}/1"), format!("{t}/2")], "{t} in order");
    }
    let resume = sub.cursors().clone();
    assert_eq!(resume.len(), 3);
    drop(sub);

    // Away: more on two of them; then resume from the set.
    publish(&*client, &topics[0], format!("{}/3", topics[0])).await;
    publish(&*client, &topics[2], format!("{}/3", topics[2])).await;
    let mut sub =
        within("follow", follow(client.clone(), follow_request(&selectors, Some(resume))))
            .await
            .unwrap_or_else(|e| panic!("resuming failed: {e:?}"));
    let mut got: Vec<String> = Vec::new();
    for _ in 0..2 {
        got.push(String::from_utf8_lossy(&next_of_many(&mut sub).await.payload).into());
    }
    got.sort();
    assert_eq!(got, vec![format!("{}/3", topics[0]), format!("{}/3", topics[2])]);
    publish(&*client, &topics[1], "after").await;
    assert_eq!(next_of_many(&mut sub).await.payload, "after", "nothing repeated before it");
}

/// S2 for many topics: when the connection that carries several topics is killed, the stream
/// resumes every topic where it stood, with nothing lost or repeated.
pub async fn many_topics_survive_a_killed_connection(harness: &dyn Harness) {
    let fixture = start(harness, Limits::default()).await;
    let client = fixture.client();
    let topics: Vec<Topic> =
        ["a", "b", "c"].iter().map(|n| topic(&format!("many-killed.{n}"))).collect();
    let selectors: Vec<(&Topic, Cursor)> = topics.iter().map(|t| (t, Cursor::Beginning)).collect();
    let mut sub = within("follow", follow(client.clone(), follow_request(&selectors, None)))
        .await
        .unwrap_or_else(|e| panic!("follow failed: {e:?}"));
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for round in [1..=3u32, 4..=6] {
        for t in &topics {
            publish_range(&*client, t, round.clone()).await;
        }
        for _ in 0..9 {
            let m = next_of_many(&mut sub).await;
            assert_eq!(m.payload, format!("m{}", m.offset.0), "{}", m.topic);
            seen.entry(m.topic.to_string()).or_default().push(m.offset.0);
        }
        if round.start() == &1
            && let Err(why) = fixture.sever().await
        {
            return skipped("many_topics_survive_a_killed_connection", why);
        }
    }
    for t in &topics {
        assert_eq!(seen[t.as_str()], (1..=6).collect::<Vec<_>>(), "{t}: each once, in order");
    }
    // Severed again while idle: the next message still arrives, once.
    fixture.sever().await.expect("sever worked before");
    publish(&*client, &topics[1], "m7").await;
    let m = next_of_many(&mut sub).await;
    assert_eq!((m.topic.as_str(), m.offset), (topics[1].as_str(), Offset(7)));
}

/// A prefix follows the topics it selects that exist, and those first published while it is
/// open, from their first message. Skipped where the client cannot list topics.
pub async fn prefix_follows_new_topics(harness: &dyn Harness) {
    let fixture = start(harness, Limits::default()).await;
    let client = fixture.client();
    let existing = topic("prefix.x");
    publish(&*client, &existing, "x1").await;
    publish(&*client, &topic("prefixed-not"), "no").await;
    let prefix: Selector = "conformance.prefix.*".parse().expect("a prefix");
    let request = FollowRequest {
        selectors: vec![(prefix, Cursor::Beginning)],
        resume: None,
        max_topics: 10,
    };
    let mut sub = match within("follow", follow(client.clone(), request)).await {
        Ok(sub) => sub,
        Err(e) if e.kind() == ErrorKind::Unsupported => {
            return skipped("prefix_follows_new_topics", Skip(e.to_string()));
        }
        Err(e) => panic!("follow by prefix failed: {e:?}"),
    };
    let m = next_of_many(&mut sub).await;
    assert_eq!((m.topic.as_str(), &m.payload[..]), (existing.as_str(), &b"x1"[..]));
    let fresh = topic("prefix.y");
    publish(&*client, &fresh, "y1").await;
    publish(&*client, &fresh, "y2").await;
    for payload in ["y1", "y2"] {
        let m = next_of_many(&mut sub).await;
        assert_eq!((m.topic.as_str(), &m.payload[..]), (fresh.as_str(), payload.as_bytes()));
    }
    assert_eq!(sub.cursors().len(), 2);
    // Cut: it resumes each topic where it stood, and a topic created meanwhile from its first.
    if let Err(why) = fixture.sever().await {
        return skipped("prefix_follows_new_topics (after a cut)", why);
    }
    publish(&*client, &fresh, "y3").await;
    let created = topic("prefix.z");
    publish(&*client, &created, "z1").await;
    let mut got: Vec<(String, String)> = Vec::new();
    for _ in 0..2 {
        let m = next_of_many(&mut sub).await;
        got.push((m.topic.to_string(), String::from_utf8_lossy(&m.payload).into()));
    }
    got.sort();
    let want = [(fresh.to_string(), "y3".to_owned()), (created.to_string(), "z1".to_owned())];
    assert_eq!(got, want, "after the cut: nothing lost, nothing repeated");
    publish(&*client, &existing, "x2").await;
    let m = next_of_many(&mut sub).await;
    assert_eq!((m.topic.as_str(), &m.payload[..]), (existing.as_str(), &b"x2"[..]));
}

/// Newest first: pages back from `latest`, each `limit` long, with `next` going back, until
/// the oldest; where retention passed, the page that reaches it names what is gone.
pub async fn fetch_newest_first(harness: &dyn Harness) {
    let fixture = start(harness, Limits { retention_messages: 8, ..Limits::default() }).await;
    let client = fixture.client();
    let topic = topic("newest-first");
    let page = within("fetch", client.fetch_newest_first(&topic, Cursor::Latest, 3))
        .await
        .expect("an empty topic");
    assert!(page.is_empty(), "nothing yet: {page:?}");
    let receipts = publish_range(&*client, &topic, 1..=7).await;
    let epoch = receipts[0].epoch;
    let mut cursor = Cursor::Latest;
    let mut pages = Vec::new();
    loop {
        let page = within("fetch", client.fetch_newest_first(&topic, cursor, 3))
            .await
            .unwrap_or_else(|e| panic!("newest first from {cursor} failed: {e:?}"));
        assert!(page.gap.is_none(), "all retained: {:?}", page.gap);
        if page.messages.is_empty() {
            assert_eq!(page.next, Cursor::After(epoch, Offset(0)));
            break;
        }
        pages.push(offsets(&page.messages));
        cursor = page.next;
    }
    assert_eq!(pages, vec![vec![7, 6, 5], vec![4, 3, 2], vec![1]]);

    // From a message's cursor: it and those before it.
    let page = within("fetch", client.fetch_newest_first(&topic, receipts[4].cursor(), 2))
        .await
        .expect("fetch");
    assert_eq!(offsets(&page.messages), vec![5, 4]);
    assert_eq!(page.next, Cursor::After(epoch, Offset(3)));

    publish_range(&*client, &topic, 8..=12).await; // keeps 5..=12
    let page =
        within("fetch", client.fetch_newest_first(&topic, Cursor::Latest, 6)).await.expect("fetch");
    assert_eq!(offsets(&page.messages), vec![12, 11, 10, 9, 8, 7]);
    let page =
        within("fetch", client.fetch_newest_first(&topic, page.next, 6)).await.expect("fetch");
    assert_eq!(offsets(&page.messages), vec![6, 5]);
    let expected = Gap {
        topic: topic.clone(),
        reason: GapReason::Retention,
        missed: Some(OffsetRange { first: Offset(1), last: Offset(4) }),
        cursor: Cursor::After(epoch, Offset(0)),
    };
    assert_eq!(page.gap, Some(expected));
    assert_eq!(page.next, Cursor::After(epoch, Offset(0)));
    let ahead = Cursor::After(epoch, Offset(99));
    let error = within("fetch", client.fetch_newest_first(&topic, ahead, 6)).await;
    expect_kind(error, ErrorKind::InvalidCursor, "a cursor ahead of the log");
}

/// P1–P5 for a batch: each publication is answered in order with its receipt or its error,
/// one failing without stopping the rest; order per topic is kept, and an idempotency key
/// repeated (in the batch or after it) answers the first receipt.
pub async fn batch_publish(harness: &dyn Harness) {
    let fixture = start(harness, Limits { max_payload: 1024, ..Limits::default() }).await;
    let client = fixture.client();
    let (a, b) = (topic("batch.a"), topic("batch.b"));
    let batch = vec![
        (a.clone(), Publication::new("a1")),
        (b.clone(), Publication::new("b1").event("kind")),
        (a.clone(), Publication::new(vec![0u8; 2048])),
        (a.clone(), Publication::new("a2").idempotency_key("k-1")),
        (b.clone(), Publication::new(vec![0xffu8, 0x00])),
        (a.clone(), Publication::new("a2 again").idempotency_key("k-1")),
    ];
    let answers = within("publish_many", client.publish_many(batch))
        .await
        .unwrap_or_else(|e| panic!("publish_many failed: {e:?}"));
    assert_eq!(answers.len(), 6, "one answer per publication");
    let offset = |n: usize| answers[n].as_ref().map(|r| (r.topic.to_string(), r.offset.0)).ok();
    assert_eq!(offset(0), Some((a.to_string(), 1)));
    assert_eq!(offset(1), Some((b.to_string(), 1)));
    let too_large = answers[2].as_ref().expect_err("over the payload limit");
    assert_eq!(too_large.kind(), ErrorKind::TooLarge, "{too_large}");
    assert_eq!(offset(3), Some((a.to_string(), 2)));
    assert_eq!(offset(4), Some((b.to_string(), 2)));
    assert_eq!(offset(5), Some((a.to_string(), 2)), "the key's first receipt");

    let (messages, _) = fetch_all(&*client, &a, Cursor::Beginning, 10).await;
    let payloads: Vec<&[u8]> = messages.iter().map(|m| &m.payload[..]).collect();
    assert_eq!(payloads, vec![&b"a1"[..], &b"a2"[..]]);
    let (messages, _) = fetch_all(&*client, &b, Cursor::Beginning, 10).await;
    assert_eq!(messages[0].event.as_deref(), Some("kind"));
    assert_eq!(&messages[1].payload[..], &[0xff, 0x00]);
    let empty = within("publish_many", client.publish_many(Vec::new())).await;
    assert!(empty.expect("an empty batch").is_empty());
}

/// F5: a cursor from an earlier incarnation of the log gives a gap, never a silent restart.
pub async fn gap_on_epoch_change(harness: &dyn Harness) {
    let fixture = start(harness, Limits::default()).await;
    let client = fixture.client();
    let topic = topic("epoch");
    let receipts = publish_range(&*client, &topic, 1..=3).await;
    let old = receipts[2].cursor();
    if let Err(why) = fixture.restart().await {
        return skipped("gap_on_epoch_change", why);
    }
    let fresh = publish_range(&*client, &topic, 1..=2).await;
    let epoch = fresh[0].epoch;
    assert_ne!(epoch, receipts[0].epoch, "a restarted broker has a new epoch");
    assert_eq!(fresh[0].offset, Offset(1));

    let expected = Gap {
        topic: topic.clone(),
        reason: GapReason::EpochChanged { previous: receipts[0].epoch },
        missed: None,
        cursor: Cursor::After(epoch, Offset(0)),
    };
    let page = within("fetch", client.fetch(&topic, old, 100)).await.expect("fetch");
    assert_eq!(page.gap.as_ref(), Some(&expected));
    assert_eq!(offsets(&page.messages), vec![1, 2]);
    assert!(page.messages.iter().all(|m| m.epoch == epoch));

    let mut sub = subscribe(&*client, &topic, old).await;
    assert_eq!(next_gap(&mut sub).await, expected);
    assert_eq!(next_message(&mut sub).await.payload, "m1");
    assert_eq!(next_message(&mut sub).await.payload, "m2");
}

/// S1, F5: a subscription from an earlier incarnation's cursor starts with its gap, even when
/// nothing new is published: a reader learns at once that history was reset.
pub async fn stale_epoch_gap_on_a_quiet_topic(harness: &dyn Harness) {
    let fixture = start(harness, Limits::default()).await;
    let client = fixture.client();
    let topic = topic("stale-quiet");
    let receipts = publish_range(&*client, &topic, 1..=3).await;
    let old = receipts[2].cursor();
    if let Err(why) = fixture.restart().await {
        return skipped("stale_epoch_gap_on_a_quiet_topic", why);
    }
    let mut sub = subscribe(&*client, &topic, old).await;
    // Nothing is published after the restart: the gap must come by itself.
    let gap = next_gap(&mut sub).await;
    assert_eq!(gap.reason, GapReason::EpochChanged { previous: receipts[0].epoch });
    assert_eq!(gap.missed, None, "the new log is empty: nothing of it was missed");
    let epoch = gap.cursor.epoch().expect("the gap's cursor names the new epoch");
    assert_ne!(epoch, receipts[0].epoch);
    assert_eq!(gap.cursor, Cursor::After(epoch, Offset(0)));
    // And the subscription goes on in the new log, from its first message.
    let fresh = publish_range(&*client, &topic, 1..=1).await;
    assert_eq!(fresh[0].epoch, epoch);
    let message = next_message(&mut sub).await;
    assert_eq!((message.epoch, message.offset), (epoch, Offset(1)));
}

/// S1, S2, F5: a live subscription carried across a server restart reports the epoch change.
pub async fn live_subscription_across_restart(harness: &dyn Harness) {
    let fixture = start(harness, Limits::default()).await;
    let client = fixture.client();
    let topic = topic("restart-live");
    let mut sub = subscribe(&*client, &topic, Cursor::Beginning).await;
    let receipts = publish_range(&*client, &topic, 1..=2).await;
    for n in 1..=2u64 {
        assert_eq!(next_message(&mut sub).await.offset, Offset(n));
    }
    if let Err(why) = fixture.restart().await {
        return skipped("live_subscription_across_restart", why);
    }
    if let Err(why) = fixture.sever().await {
        return skipped("live_subscription_across_restart", why);
    }
    let fresh = publish_range(&*client, &topic, 1..=1).await;
    let gap = next_gap(&mut sub).await;
    assert_eq!(gap.reason, GapReason::EpochChanged { previous: receipts[0].epoch });
    assert_eq!(gap.cursor.epoch(), Some(fresh[0].epoch));
    let message = next_message(&mut sub).await;
    assert_eq!((message.epoch, message.offset), (fresh[0].epoch, Offset(1)));
}

/// P3: payloads are stored byte for byte, whatever the bytes.
pub async fn binary_payloads(harness: &dyn Harness) {
    let fixture = start(harness, Limits::default()).await;
    let client = fixture.client();
    let topic = topic("binary");
    let payloads: Vec<Bytes> = vec![
        (0..=255u8).collect::<Vec<u8>>().into(),
        Bytes::from_static(b""),
        Bytes::from_static(b"line one\nline two\r\nline three\rend\n"),
        Bytes::from_static(b"\xff\xfe not UTF-8 \xc3\x28"),
        Bytes::from_static("data: id: event: \u{0}\u{feff} ünïcødé 🚀".as_bytes()),
    ];
    let mut sub = subscribe(&*client, &topic, Cursor::Beginning).await;
    for payload in &payloads {
        publish(&*client, &topic, payload.clone()).await;
    }
    let (messages, _) = fetch_all(&*client, &topic, Cursor::Beginning, 100).await;
    let fetched: Vec<Bytes> = messages.into_iter().map(|m| m.payload).collect();
    assert_eq!(fetched, payloads, "fetched payloads differ");
    for payload in &payloads {
        assert_eq!(&next_message(&mut sub).await.payload, payload, "subscribed payload differs");
    }
}

/// P3: a payload of more than 1 MiB goes through whole.
pub async fn large_payload(harness: &dyn Harness) {
    let fixture = start(harness, Limits::default()).await;
    let client = fixture.client();
    let topic = topic("large");
    let payload: Bytes =
        (0..(1024 * 1024 + 17)).map(|i: u32| (i % 251) as u8).collect::<Vec<u8>>().into();
    let mut sub = subscribe(&*client, &topic, Cursor::Beginning).await;
    publish(&*client, &topic, payload.clone()).await;
    let page = within("fetch", client.fetch(&topic, Cursor::Beginning, 1)).await.expect("fetch");
    assert!(page.messages[0].payload == payload, "fetched large payload differs");
    assert!(next_message(&mut sub).await.payload == payload, "subscribed large payload differs");
}

/// Many topics at once keep their messages apart.
pub async fn many_topics(harness: &dyn Harness) {
    const TOPICS: usize = 100;
    let fixture = start(harness, Limits::default()).await;
    let client = fixture.client();
    let topics: Vec<Topic> = (0..TOPICS).map(|i| topic(&format!("many-{i}"))).collect();
    let subscriptions = futures::stream::iter(topics.iter().cloned())
        .map(|t| {
            let client = client.clone();
            async move { subscribe(&*client, &t, Cursor::Beginning).await }
        })
        .buffered(16)
        .collect::<Vec<_>>()
        .await;
    futures::stream::iter(topics.iter().cloned())
        .for_each_concurrent(16, |t| {
            let client = client.clone();
            async move {
                publish(&*client, &t, t.to_string()).await;
            }
        })
        .await;
    let seen = futures::stream::iter(subscriptions)
        .map(|mut sub| async move {
            let message = next_message(&mut sub).await;
            assert_eq!(message.topic, *sub.topic());
            assert_eq!(message.payload, sub.topic().to_string());
            message.topic
        })
        .buffer_unordered(TOPICS)
        .collect::<HashSet<_>>()
        .await;
    assert_eq!(seen.len(), TOPICS);
}

/// Bad topic names are refused with the reason, before anything is sent.
pub async fn invalid_topic_rejected(_harness: &dyn Harness) {
    for name in ["", "has space", "../etc", "a/b", "ünïcødé", &"x".repeat(300)] {
        let err = expect_kind(Topic::new(name), ErrorKind::InvalidTopic, "bad topic");
        assert!(err.message().contains("topic"), "{err}");
    }
}

/// Bad cursors are refused with the reason, in parsing and by the server.
pub async fn invalid_cursor_rejected(harness: &dyn Harness) {
    for text in ["", "yesterday", "42", "0123456789abcdef", "0123456789abcdef-x"] {
        expect_kind(text.parse::<Cursor>(), ErrorKind::InvalidCursor, "bad cursor text");
    }
    let fixture = start(harness, Limits::default()).await;
    let client = fixture.client();
    let topic = topic("ahead");
    let receipt = publish(&*client, &topic, "only").await;
    let ahead = Cursor::After(receipt.epoch, Offset(1000));
    let err = expect_kind(
        client.fetch(&topic, ahead, 10).await,
        ErrorKind::InvalidCursor,
        "cursor ahead of the log",
    );
    assert!(!err.is_retryable(), "retrying a bad cursor cannot help");
    let other_epoch = Cursor::After(Epoch::from_u64(receipt.epoch.as_u64() ^ 1), Offset(1));
    let page = within("fetch", client.fetch(&topic, other_epoch, 10))
        .await
        .expect("another epoch is a gap, not an error");
    assert!(matches!(page.gap.map(|g| g.reason), Some(GapReason::EpochChanged { .. })));
}

/// P3: a payload over the limit is refused, stores nothing and harms nobody.
pub async fn oversize_payload_rejected(harness: &dyn Harness) {
    let limits = Limits::default();
    let max = limits.max_payload;
    let fixture = start(harness, limits).await;
    let client = fixture.client();
    let topic = topic("oversize");
    let too_big = Bytes::from(vec![b'x'; max + 1]);
    let err = expect_kind(
        within("publish", client.publish(&topic, Publication::new(too_big))).await,
        ErrorKind::TooLarge,
        "oversize payload",
    );
    assert!(!err.is_retryable());
    let page = within("fetch", client.fetch(&topic, Cursor::Beginning, 10)).await.expect("fetch");
    assert!(page.messages.is_empty(), "nothing was stored");
    let exactly = Bytes::from(vec![b'y'; max]);
    let receipt = publish(&*client, &topic, exactly).await;
    assert_eq!(receipt.offset, Offset(1), "the refused payload took no offset");
}

/// P5: a publish retried with the same idempotency key is stored once.
pub async fn idempotent_publish(harness: &dyn Harness) {
    let fixture = start(harness, Limits::default()).await;
    let client = fixture.client();
    let topic = topic("idempotent");
    let publication = Publication::new("once").idempotency_key("order-17-attempt");
    let first =
        within("publish", client.publish(&topic, publication.clone())).await.expect("publish");
    let again =
        within("publish", client.publish(&topic, publication)).await.expect("publish again");
    assert_eq!(
        (again.epoch, again.offset),
        (first.epoch, first.offset),
        "the retry got the first receipt"
    );
    let other = publish(&*client, &topic, "twice").await;
    assert_eq!(other.offset, Offset(2));
    let (messages, _) = fetch_all(&*client, &topic, Cursor::Beginning, 10).await;
    assert_eq!(offsets(&messages), vec![1, 2], "stored once");
}

/// Bad labels are refused with the reason.
pub async fn invalid_labels_rejected(harness: &dyn Harness) {
    let fixture = start(harness, Limits::default()).await;
    let client = fixture.client();
    let topic = topic("labels");
    let cases = [
        Publication::new("x").event("two\nlines"),
        Publication::new("x").event("x".repeat(65)),
        Publication::new("x").content_type("text/plain\r\nX-Injected: 1"),
        Publication::new("x").idempotency_key("has space"),
        Publication::new("x").event("pushpull-gap"),
    ];
    for publication in cases {
        let result = within("publish", client.publish(&topic, publication.clone())).await;
        expect_kind(result, ErrorKind::BadRequest, &format!("{publication:?}"));
    }
}

/// A member of a topic while it lives: a subscription through a transport (whose server makes
/// it a member), or, for a broker, a member it holds directly.
enum Joined {
    /// A subscription, read by a task of its own (a polling client polls only while its
    /// subscription is read), until aborted.
    Subscribed(tokio::task::JoinHandle<()>),
    Held(Arc<dyn Client>, Topic, String),
}

impl Joined {
    async fn join(client: &Arc<dyn Client>, topic: &Topic, n: u32) -> Joined {
        match client.members() {
            Some(members) => {
                let id = format!("member-{n}");
                let member = Member::new(&id, Some(format!("user-{n}")), None).expect("a member");
                within("join", members.join(topic, &member, Lease::Held, 1_000))
                    .await
                    .unwrap_or_else(|e| panic!("join {topic} failed: {e:?}"));
                Joined::Held(client.clone(), topic.clone(), id)
            }
            None => {
                let mut subscription = subscribe(&**client, topic, Cursor::Latest).await;
                Joined::Subscribed(tokio::spawn(async move {
                    while let Some(Ok(_)) = subscription.next().await {}
                }))
            }
        }
    }

    async fn leave(self) {
        match self {
            Joined::Subscribed(reading) => reading.abort(),
            Joined::Held(client, topic, id) => {
                let members = client.members().expect("a broker that keeps members");
                within("leave", members.leave(&topic, &id))
                    .await
                    .unwrap_or_else(|e| panic!("leave {topic} failed: {e:?}"));
            }
        }
    }
}

/// The next join or leave on a presence log: its event and member.
async fn next_presence(log: &mut Subscription) -> (String, Member, Offset) {
    let message = next_message(log).await;
    let event = message.event.as_deref().expect("a presence event has a type").to_owned();
    assert!(event == JOIN_EVENT || event == LEAVE_EVENT, "unexpected presence event {event:?}");
    let member = Member::from_json(&message.payload)
        .unwrap_or_else(|e| panic!("a presence payload is a member: {e:?}"));
    (event, member, message.offset)
}

/// Whether the system tells presence: a client that can ask, and a server (or broker) that
/// keeps it (one without answers `unsupported`).
async fn keeps_presence(client: &dyn Client, topic: &Topic) -> Result<(), Skip> {
    let Some(presence) = client.presence() else {
        return Err(Skip("the client cannot tell presence".into()));
    };
    match within("a presence snapshot", presence.snapshot(topic)).await {
        Err(error) if error.kind() == ErrorKind::Unsupported => {
            Err(Skip(format!("no presence here: {error}")))
        }
        _ => Ok(()),
    }
}

async fn snapshot(client: &dyn Client, topic: &Topic) -> PresenceSnapshot {
    let presence = client.presence().expect("checked by the case");
    within("a presence snapshot", presence.snapshot(topic))
        .await
        .unwrap_or_else(|e| panic!("the presence of {topic} failed: {e:?}"))
}

/// R1, M1, M2: a member's join and, when it ends, its leave come once each on the topic's
/// presence log, read from a snapshot's cursor; snapshots and counts agree with them.
pub async fn presence_join_and_leave(harness: &dyn Harness) {
    let fixture = start(harness, Limits::default()).await;
    let client = fixture.client();
    let topic = topic("presence.join");
    if let Err(why) = keeps_presence(&*client, &topic).await {
        return skipped("presence_join_and_leave", why);
    }
    let presence = client.presence().expect("checked");
    let empty = snapshot(&*client, &topic).await;
    assert!(empty.members.is_empty(), "nobody follows it yet: {empty:?}");
    // Reading a presence log makes no member of anything.
    let mut log = subscribe(&*client, &topic.presence(), empty.cursor).await;
    let member = Joined::join(&client, &topic, 1).await;
    let (event, joined, offset) = next_presence(&mut log).await;
    assert_eq!(event, JOIN_EVENT);
    let now = snapshot(&*client, &topic).await;
    assert_eq!(now.members, vec![joined.clone()], "the snapshot holds the member that joined");
    assert_eq!(now.cursor.offset(), Some(offset), "and its cursor is past the join");
    let stats = within("presence stats", presence.stats(&topic)).await.expect("stats");
    assert_eq!((stats.members, stats.users), (1, 1));
    member.leave().await;
    let (event, left, _) = next_presence(&mut log).await;
    assert_eq!((event.as_str(), &left), (LEAVE_EVENT, &joined), "the same member leaves");
    let after = snapshot(&*client, &topic).await;
    assert!(after.members.is_empty(), "nobody follows it now: {after:?}");
    // Publishing to a presence log is the server's alone.
    let refused = within("publish", client.publish(&topic.presence(), Publication::new("x"))).await;
    expect_kind(refused, ErrorKind::Forbidden, "publishing to a presence log");
}

/// R1, S2: presence resumes from a snapshot's cursor exactly: replaying the presence log from
/// the first snapshot over its members gives the latest snapshot, across a severed connection
/// (whose push members leave and join again) and members coming and going.
pub async fn presence_resumes_from_a_snapshot(harness: &dyn Harness) {
    let fixture = start(harness, Limits::default()).await;
    let client = fixture.client();
    let topic = topic("presence.resume");
    if let Err(why) = keeps_presence(&*client, &topic).await {
        return skipped("presence_resumes_from_a_snapshot", why);
    }
    let first = Joined::join(&client, &topic, 1).await;
    let start = snapshot(&*client, &topic).await;
    assert_eq!(start.members.len(), 1, "one member: {start:?}");
    let second = Joined::join(&client, &topic, 2).await;
    let third = Joined::join(&client, &topic, 3).await;
    let severed = fixture.sever().await.is_ok();
    first.leave().await;
    // Wait for the membership to settle: two members (severed ones have come back).
    let mut latest = snapshot(&*client, &topic).await;
    within("two members to remain", async {
        while latest.members.len() != 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            latest = snapshot(&*client, &topic).await;
        }
    })
    .await;
    // Replay: the first snapshot plus every change after its cursor is the latest snapshot.
    let mut members: BTreeMap<String, Member> =
        start.members.iter().map(|m| (m.client.clone(), m.clone())).collect();
    // Severed members may still be leaving and joining again: the changes up to the latest
    // snapshot's cursor are what it must agree with.
    let (changes, end) = fetch_all(&*client, &topic.presence(), start.cursor, 100).await;
    let upto = latest.cursor.offset().expect("a snapshot's cursor is a position");
    assert_eq!(end.epoch(), latest.cursor.epoch(), "one presence log");
    assert!(end.offset() >= Some(upto), "the log reaches the snapshot: {end} < {upto}");
    for change in changes.iter().filter(|change| change.offset <= upto) {
        let member = Member::from_json(&change.payload).expect("a member");
        match change.event.as_deref() {
            Some(JOIN_EVENT) => {
                let old = members.insert(member.client.clone(), member);
                assert!(old.is_none(), "a join of a member already there: {old:?}");
            }
            Some(LEAVE_EVENT) => {
                let old = members.remove(&member.client);
                assert_eq!(old, Some(member), "a leave of a member that was there");
            }
            other => panic!("unexpected presence event {other:?}"),
        }
    }
    let replayed: Vec<&Member> = members.values().collect();
    let mut now: Vec<&Member> = latest.members.iter().collect();
    now.sort_by(|a, b| a.client.cmp(&b.client));
    assert_eq!(replayed, now, "the replayed presence is the snapshot's (severed: {severed})");
    second.leave().await;
    third.leave().await;
}
