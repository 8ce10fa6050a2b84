//! Rules per family of topics (`[[topics]]`): what each family keeps and allows, the longest
//! matching pattern winning, on both brokers; and configuration errors that name the entry.

mod support;

use pushpull::{ErrorKind, Registry, ServerConfig};
use pushpull_testkit::redis::RedisServer;
use support::{get, post};

const RULES: &str = r#"
[[topics]]
pattern = "chat:*"
retention = { max_messages = 3 }

[[topics]]
pattern = "chat:vip"
retention = { max_messages = 5 }

[[topics]]
pattern = "live:*"
history = false

[[topics]]
pattern = "small:*"
max_payload = 10

[[topics]]
pattern = "slow:*"
publish_rate = 0.1
"#;

/// The offsets a page from the beginning holds.
async fn kept(addr: std::net::SocketAddr, topic: &str) -> Vec<u64> {
    let page = get(addr, &format!("/v1/topics/{topic}/messages?after=beginning")).await.json();
    let messages = page["messages"].as_array().unwrap();
    messages.iter().map(|m| m["offset"].as_u64().unwrap()).collect()
}

async fn families_keep_and_allow_what_their_rules_say(config: ServerConfig) {
    let running = support::server(config).await;
    let addr = running.local_addr();
    for topic in ["chat:a", "chat:vip", "other"] {
        for n in 0..6 {
            let reply =
                post(addr, &format!("/v1/topics/{topic}"), "", format!("m{n}").as_bytes()).await;
            assert_eq!(reply.status, 201, "{topic}");
        }
    }
    assert_eq!(kept(addr, "chat:a").await, [4, 5, 6], "chat:* keeps 3");
    assert_eq!(kept(addr, "chat:vip").await, [2, 3, 4, 5, 6], "the exact name wins: 5");
    assert_eq!(kept(addr, "other").await, [1, 2, 3, 4, 5, 6], "no rule: the broker's");

    // History off: no reading back, but latest and a given cursor work.
    post(addr, "/v1/topics/live:a", "", b"now").await;
    let refused = get(addr, "/v1/topics/live:a/messages?after=beginning").await;
    assert_eq!(refused.status, 403, "{}", String::from_utf8_lossy(&refused.body));
    let message = refused.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("history is off") && message.contains("live:*"), "{message}");
    assert_eq!(get(addr, "/v1/topics/live:a/messages?after=last:1").await.status, 403);
    assert_eq!(get(addr, "/v1/topics/live:a/messages?after=latest").await.status, 200);

    // A family's payload limit, below the broker's.
    let big = post(addr, "/v1/topics/small:a", "", b"eleven byte").await;
    assert_eq!(big.status, 413, "{}", String::from_utf8_lossy(&big.body));
    assert!(big.json()["error"]["message"].as_str().unwrap().contains("small:*"));
    assert_eq!(post(addr, "/v1/topics/small:a", "", b"ten bytes!").await.status, 201);

    // A family's publish rate: one now, then 429 with when to come back.
    assert_eq!(post(addr, "/v1/topics/slow:a", "", b"1").await.status, 201);
    let limited = post(addr, "/v1/topics/slow:a", "", b"2").await;
    assert_eq!(limited.status, 429, "{}", String::from_utf8_lossy(&limited.body));
    assert!(limited.header("retry-after").is_some());
    assert_eq!(post(addr, "/v1/topics/slow:b", "", b"1").await.status, 201, "per topic");
}

#[tokio::test]
async fn on_the_memory_broker() {
    families_keep_and_allow_what_their_rules_say(ServerConfig::from_toml(RULES).unwrap()).await;
}

#[tokio::test]
async fn on_the_redis_broker() {
    let redis = RedisServer::start().unwrap();
    let text = format!("[broker]\nkind = \"redis\"\nurl = \"{}\"\n{RULES}", redis.url());
    families_keep_and_allow_what_their_rules_say(ServerConfig::from_toml(&text).unwrap()).await;
}

#[tokio::test]
async fn bad_entries_are_errors_that_name_them() {
    let cases = [
        ("[[topics]]\npattern = \"a:*\"\ncolour = 1", "topics[0]", "colour"),
        (
            "[[topics]]\npattern = \"a:*\"\n[[topics]]\npattern = \"a:*\"",
            "topics[1]",
            "same pattern as topics[0]",
        ),
        ("[[topics]]\npattern = \"a*b\"", "topics[0]", "may only end"),
        ("[[topics]]\npattern = \"a\"\npublish_rate = 0.0", "topics[0]", "more than 0"),
        ("[[topics]]\npattern = \"a\"\npublish_burst = 3", "topics[0]", "needs a publish_rate"),
        ("[[topics]]\npattern = \"a\"\nretention = { max_age = \"soon\" }", "topics[0]", "soon"),
        ("[[topics]]\npattern = \"a\"\nmax_payload = 100000000", "topics[0]", "over the broker's"),
        (
            "[[topics]]\npattern = \"a\"\nretention = { max_bytes = 10 }\nmax_payload = 100",
            "topics[0]",
            "at least max_payload",
        ),
    ];
    for (text, entry, says) in cases {
        let error = match ServerConfig::from_toml(text) {
            Err(error) => error,
            Ok(config) => Registry::with_defaults()
                .broker(&config)
                .err()
                .unwrap_or_else(|| panic!("{text}: accepted")),
        };
        assert_eq!(error.kind(), ErrorKind::Config, "{text}");
        let message = error.to_string();
        assert!(message.contains(entry) && message.contains(says), "{text}: {message}");
    }
}

/// `anonymous` opens a family to requests without a token, or closes one that
/// `auth.anonymous` opens; a prefix is readable only when every topic under it is.
#[tokio::test]
async fn families_open_or_close_to_requests_without_a_token() {
    let text = r#"
[auth]
keys = [{ kid = "k1", algorithm = "HS256", secret = "a shared secret of at least thirty-two bytes" }]
anonymous = { subscribe = ["*"] }

[[topics]]
pattern = "private:*"
anonymous = { subscribe = false }

[[topics]]
pattern = "private:lobby"
anonymous = { subscribe = true }

[[topics]]
pattern = "public:*"
anonymous = { publish = true }
"#;
    let running = support::server(ServerConfig::from_toml(text).unwrap()).await;
    let addr = running.local_addr();
    let read = |path: &'static str| async move { get(addr, path).await.status };
    assert_eq!(read("/v1/topics/news/messages").await, 200, "auth.anonymous reads every topic");
    assert_eq!(read("/v1/topics/private:x/messages").await, 401, "but not private:*");
    assert_eq!(read("/v1/topics/private:lobby/messages").await, 200, "the exact name wins");
    assert_eq!(post(addr, "/v1/topics/public:x", "", b"hi").await.status, 201, "open to publish");
    assert_eq!(post(addr, "/v1/topics/news", "", b"hi").await.status, 401, "closed to publish");
    assert_eq!(read("/v1/messages?topic=public:*").await, 200, "a prefix all open");
    assert_eq!(read("/v1/messages?topic=*").await, 401, "a prefix with private:* under it");
    let refused = get(addr, "/v1/messages?topic=private:*").await;
    assert_eq!(refused.status, 401, "bring a token: {}", String::from_utf8_lossy(&refused.body));
    assert_eq!(refused.header("www-authenticate"), Some("Bearer realm=\"pushpull\""));
    assert!(refused.json()["error"]["message"].as_str().unwrap().contains("needs a token"));
}
