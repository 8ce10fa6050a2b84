//! Many topics on one request over real sockets: the long poll's page of many topics and its
//! cursor set, a prefix's topic created while a request is held, and the bound on topics.

mod support;

use pushpull::ServerConfig;
use support::{get, post, server};

fn offsets_of(page: &serde_json::Value) -> Vec<(String, u64)> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["topic"].as_str().unwrap().to_owned(), m["offset"].as_u64().unwrap()))
        .collect()
}

#[tokio::test]
async fn a_page_of_many_topics_resumes_from_its_cursor_set() {
    let server = server(ServerConfig::default()).await;
    let addr = server.local_addr();
    for topic in ["ticker", "orders:eu", "ticker", "other"] {
        assert_eq!(post(addr, &format!("/v1/topics/{topic}"), "", b"x").await.status, 201);
    }
    let page = get(addr, "/v1/messages?topic=ticker&topic=orders:*").await;
    assert_eq!(page.status, 200);
    let json = page.json();
    let mut got = offsets_of(&json);
    got.sort();
    let want = [("orders:eu", 1), ("ticker", 1), ("ticker", 2)];
    assert_eq!(got, want.map(|(t, o)| (t.to_owned(), o)));
    let next = json["next"].as_str().unwrap().to_owned();
    assert!(next.starts_with('@'), "{next}");

    // From the set: nothing new; then a topic the prefix selects is created while held.
    let again = get(addr, &format!("/v1/messages?topic=ticker&topic=orders:*&after={next}")).await;
    assert!(offsets_of(&again.json()).is_empty());
    let held = tokio::spawn(async move {
        let path = format!("/v1/messages?topic=ticker&topic=orders:*&after={next}&wait=20");
        get(addr, &path).await
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(post(addr, "/v1/topics/orders:us", "", b"new").await.status, 201);
    let held = held.await.unwrap();
    assert_eq!(held.header("pushpull-wait-ms"), Some("20000"));
    let json = held.json();
    assert_eq!(offsets_of(&json), vec![("orders:us".to_owned(), 1)]);
    assert!(json["next"].as_str().unwrap().contains(",1*us~1"), "{json}");
}

#[tokio::test]
async fn more_topics_than_the_bound_is_an_error_that_says_it() {
    let mut config = ServerConfig::default();
    config.http.max_topics_per_connection = 2;
    let server = server(config).await;
    let addr = server.local_addr();
    for path in ["/v1/messages", "/v1/events", "/v1/stream"] {
        let reply = get(addr, &format!("{path}?topic=a&topic=b&topic=c")).await;
        assert_eq!(reply.status, 400, "{path}");
        let message = reply.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains("3 topics") && message.contains("limit of 2"), "{message}");
        let reply = get(addr, path).await;
        assert_eq!(reply.status, 400, "{path}: no topic and no token");
        assert!(reply.json()["error"]["message"].as_str().unwrap().contains("?topic="));
        let reply = get(addr, &format!("{path}?topic=a&after=@0000000000000001,5~1")).await;
        assert_eq!((reply.status, reply.error_kind().as_str()), (400, "invalid_cursor"));
    }
}

#[tokio::test]
async fn a_page_smaller_than_its_topics_still_resumes_every_topic_exactly() {
    let server = server(ServerConfig::default()).await;
    let addr = server.local_addr();
    for topic in ["t1", "t2", "t3"] {
        assert_eq!(post(addr, &format!("/v1/topics/{topic}"), "", b"old").await.status, 201);
    }
    // One message a page, three topics from `latest`: the set must hold every topic's
    // position, not `latest` again for those the page did not reach.
    let query = "topic=t1&topic=t2&topic=t3&limit=1";
    let first = get(addr, &format!("/v1/messages?{query}&after=latest")).await.json();
    assert!(offsets_of(&first).is_empty());
    for topic in ["t1", "t2", "t3"] {
        assert_eq!(post(addr, &format!("/v1/topics/{topic}"), "", b"new").await.status, 201);
    }
    let mut next = first["next"].as_str().unwrap().to_owned();
    let mut got = Vec::new();
    loop {
        let page = get(addr, &format!("/v1/messages?{query}&after={next}")).await.json();
        let offsets = offsets_of(&page);
        if offsets.is_empty() {
            break;
        }
        got.extend(offsets);
        next = page["next"].as_str().unwrap().to_owned();
    }
    got.sort();
    let want: Vec<(String, u64)> = ["t1", "t2", "t3"].iter().map(|t| (t.to_string(), 2)).collect();
    assert_eq!(got, want, "each new message once, none of the old");
}

/// Each transport's Rust client follows twenty topics on one connection (`follow` uses the
/// transport's route for many topics, or the WebSocket's subscriptions on one socket): the
/// server holds one connection while every topic delivers, each in its order.
#[tokio::test]
async fn each_client_follows_twenty_topics_on_one_connection() {
    use futures::StreamExt;
    use pushpull::{Cursor, Delivery, FollowRequest, Selector, follow};
    for transport in ["sse", "stream", "longpoll", "poll", "ws"] {
        let server = server(ServerConfig::default()).await;
        let addr = server.local_addr();
        let config = pushpull::ClientConfig::new(transport, format!("http://{addr}"));
        let client = pushpull::connect(&config).await.expect("connect");
        let topics: Vec<String> = (0..20).map(|n| format!("{transport}.t{n}")).collect();
        let request = FollowRequest {
            selectors: topics
                .iter()
                .map(|t| (t.parse::<Selector>().unwrap(), Cursor::Latest))
                .collect(),
            resume: None,
            max_topics: 100,
        };
        let mut following = follow(client, request).await.expect("follow");
        assert_eq!(server.stats().open_connections(), 1, "{transport}: one connection");
        for round in 1..=2 {
            for topic in &topics {
                let body = format!("{round}");
                assert_eq!(
                    post(addr, &format!("/v1/topics/{topic}"), "", body.as_bytes()).await.status,
                    201
                );
            }
        }
        let mut seen: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for _ in 0..40 {
            let delivery = tokio::time::timeout(support::LIMIT, following.next())
                .await
                .expect("in time")
                .expect("open")
                .expect("a delivery");
            let Delivery::Message(m) = delivery else { panic!("{transport}: a gap {delivery:?}") };
            seen.entry(m.topic.to_string())
                .or_default()
                .push(String::from_utf8_lossy(&m.payload).into());
        }
        for topic in &topics {
            assert_eq!(seen[topic], ["1", "2"], "{transport}: {topic}");
        }
        assert_eq!(following.cursors().len(), 20, "{transport}");
    }
}

/// `event_ids=message`: on a stream of many topics each event's id is its message's own cursor
/// (the first record still carries the set), for clients that keep the set themselves; a value
/// other than `set` or `message` is a 400 that says so.
#[tokio::test]
async fn events_can_carry_their_own_cursors_instead_of_the_set() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = server(ServerConfig::default()).await;
    let addr = server.local_addr();
    for topic in ["a", "b"] {
        assert_eq!(post(addr, &format!("/v1/topics/{topic}"), "", b"x").await.status, 201);
    }
    let bad = get(addr, "/v1/events?topic=a&event_ids=cursor").await;
    assert_eq!(bad.status, 400);
    assert!(
        String::from_utf8_lossy(&bad.body).contains("event_ids=\\\"cursor\\\""),
        "{:?}",
        bad.body
    );

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /v1/events?topic=a&topic=b&after=beginning&event_ids=message HTTP/1.1\r\nHost: {addr}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut seen = String::new();
    let mut buf = vec![0u8; 4096];
    while seen.matches("data: x").count() < 2 {
        let n = tokio::time::timeout(support::LIMIT, stream.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "the stream ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let ids: Vec<&str> = seen.lines().filter_map(|l| l.strip_prefix("id: ")).collect();
    assert!(ids[0].starts_with('@'), "the first record is the set: {seen}");
    assert!(ids[1..].iter().all(|id| id.ends_with("-1") && !id.starts_with('@')), "{seen}");
    let mut topics: Vec<&str> = seen.lines().filter_map(|l| l.strip_prefix("topic: ")).collect();
    topics.sort_unstable();
    assert_eq!(topics, ["a", "b"], "{seen}");
}
