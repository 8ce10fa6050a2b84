//! Following many topics as one stream on the memory broker: exact topics, prefixes (topics
//! first published while following included), the cursor set that resumes them all, the bound.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use pushpull_core::{
    Client, Cursor, CursorSet, Delivery, ErrorKind, FollowRequest, MemoryBroker, MultiSubscription,
    Publication, Publish, Selector, Topic, follow,
};

fn topic(name: &str) -> Topic {
    Topic::new(name).unwrap()
}

fn request(selectors: &[(&str, Cursor)], resume: Option<CursorSet>) -> FollowRequest {
    FollowRequest {
        selectors: selectors.iter().map(|(s, c)| (s.parse::<Selector>().unwrap(), *c)).collect(),
        resume,
        max_topics: 4,
    }
}

async fn next(sub: &mut MultiSubscription) -> (String, String) {
    let delivery = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a delivery in time")
        .expect("the stream goes on")
        .expect("no error");
    match delivery {
        Delivery::Message(m) => {
            (m.topic.to_string(), String::from_utf8(m.payload.to_vec()).unwrap())
        }
        Delivery::Gap(g) => panic!("unexpected gap {g:?}"),
    }
}

async fn publish(broker: &MemoryBroker, name: &str, payload: &str) {
    broker.publish(&topic(name), Publication::new(payload.to_owned())).await.unwrap();
}

#[tokio::test]
async fn topics_and_prefixes_follow_as_one_and_resume_from_the_set() {
    let broker = MemoryBroker::new();
    let client: Arc<dyn Client> = Arc::new(broker.clone());
    publish(&broker, "orders:eu", "old").await;
    publish(&broker, "ticker", "old").await;
    let selectors = [("ticker", Cursor::Latest), ("orders:*", Cursor::Latest)];
    let mut sub = follow(client.clone(), request(&selectors, None)).await.unwrap();
    let keys = request(&selectors, None).keys();
    assert_eq!(sub.cursors().len(), 2, "the prefix's existing topic is followed at once");

    publish(&broker, "ticker", "t1").await;
    publish(&broker, "orders:eu", "e1").await;
    publish(&broker, "other", "x").await;
    publish(&broker, "orders:us", "u1").await; // first published while following
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next(&mut sub).await);
    }
    got.sort();
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    };
    assert_eq!(got, pairs(&[("orders:eu", "e1"), ("orders:us", "u1"), ("ticker", "t1")]));
    let token = sub.cursors().encode(&keys);
    assert!(token.starts_with('@') && token.contains("1*us~1"), "{token}");
    drop(sub);

    // Meanwhile: more on each, and a topic new since the set.
    publish(&broker, "ticker", "t2").await;
    publish(&broker, "orders:us", "u2").await;
    publish(&broker, "orders:asia", "a1").await;
    let resume = CursorSet::parse(&token, &keys).unwrap();
    let mut sub = follow(client.clone(), request(&selectors, Some(resume))).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next(&mut sub).await);
    }
    got.sort();
    assert_eq!(got, pairs(&[("orders:asia", "a1"), ("orders:us", "u2"), ("ticker", "t2")]));
    // Nothing repeats: the next delivery is what is published next.
    publish(&broker, "orders:eu", "e2").await;
    assert_eq!(next(&mut sub).await, ("orders:eu".into(), "e2".into()));

    // A fifth topic is over the bound of four: the stream says so and ends.
    publish(&broker, "orders:africa", "f1").await;
    let error = tokio::time::timeout(Duration::from_secs(10), sub.next()).await.unwrap();
    let error = error.expect("an item").expect_err("over the bound");
    assert_eq!(error.kind(), ErrorKind::BadRequest);
    assert!(error.to_string().contains("over the limit of 4"), "{error}");
    assert!(sub.next().await.is_none());

    // And a request over the bound fails at once.
    let error = follow(client, request(&selectors, None)).await.unwrap_err();
    assert!(error.to_string().contains("5 topics"), "{error}");
}
