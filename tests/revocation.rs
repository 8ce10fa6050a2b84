//! Revoking a token across nodes: two servers on one Redis. A revocation made on one node ends
//! the token's connections on the other within about a second (the nodes read each other's
//! revocations from Redis every second), and both refuse the token from then on.

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use pushpull::{BearerToken, BrokerConfig, ClientConfig, Cursor, ErrorKind, ServerConfig, Topic};
use pushpull_auth::{AuthConfig, KeyConfig};
use pushpull_testkit::redis::RedisServer;
use support::{post, raw};

const SECRET: &str = "a shared secret of at least thirty-two bytes";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn token(sub: &str, jti: &str, subscribe: &[&str], admin: bool) -> String {
    let claims = serde_json::json!({
        "sub": sub, "jti": jti, "iat": now() - 1, "exp": now() + 600,
        "pushpull": { "subscribe": subscribe, "admin": admin },
    });
    support::hs256(SECRET, &claims)
}

fn config(redis: &RedisServer) -> ServerConfig {
    let mut config = ServerConfig::default();
    config.broker = BrokerConfig::new("redis").set("url", redis.url());
    let mut auth = AuthConfig::default();
    auth.keys = vec![KeyConfig::hs256(Some("k1"), SECRET)];
    config.auth = Some(auth);
    config
}

#[tokio::test]
async fn a_revocation_on_one_node_ends_the_tokens_connections_on_the_other() {
    let redis = RedisServer::start().unwrap();
    let (one, two) = (support::server(config(&redis)).await, support::server(config(&redis)).await);
    let leaked = token("mallory", "t-leaked", &["rooms:*"], false);
    let topic = Topic::new("rooms:1").unwrap();
    let mut open = Vec::new();
    for transport in ["ws", "sse"] {
        let mut config = ClientConfig::new(transport, format!("http://{}", two.local_addr()));
        config.token = BearerToken::fixed(leaked.clone());
        let client = pushpull::connect(&config).await.unwrap();
        let subscription = client.subscribe(&topic, Cursor::Latest).await.unwrap();
        open.push((transport, client, subscription));
    }

    let admin = token("ops", "t-admin", &[], true);
    let revoked = post(
        one.local_addr(),
        "/v1/admin/revocations",
        &format!("Authorization: Bearer {admin}\r\nContent-Type: application/json"),
        br#"{"jti": "t-leaked"}"#,
    )
    .await;
    assert_eq!(revoked.status, 201, "{}", String::from_utf8_lossy(&revoked.body));

    for (transport, _client, subscription) in &mut open {
        let on_the_other_node = format!("{transport} on the other node");
        support::ends_with(&on_the_other_node, subscription, ErrorKind::Unauthorized, "revoked")
            .await;
    }
    for node in [&one, &two] {
        let head =
            format!("GET /v1/topics/rooms:1/messages HTTP/1.1\r\nAuthorization: Bearer {leaked}");
        let refused = raw(node.local_addr(), &head, b"").await;
        assert_eq!(refused.status, 401, "{}", String::from_utf8_lossy(&refused.body));
        assert!(refused.json()["error"]["message"].as_str().unwrap().contains("revoked"));
    }
}
