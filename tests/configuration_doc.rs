//! docs/configuration.md names every key the server and client configurations have, so it
//! cannot fall behind the code: each key of the serialized defaults must appear in it.

use std::collections::BTreeSet;

fn keys(prefix: &str, value: &toml::Value, out: &mut BTreeSet<String>) {
    if let toml::Value::Table(table) = value {
        for (key, value) in table {
            let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
            match value {
                toml::Value::Table(_) => keys(&path, value, out),
                _ => {
                    out.insert(path);
                }
            }
        }
    }
}

fn documented() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md"))
        .expect("docs/configuration.md")
}

#[test]
fn every_server_key_is_documented() {
    let mut config = {
        let mut built = pushpull::ServerConfig::default();
        built.tls = Some(pushpull_http::TlsFiles::new("c", "k"));
        built.auth = Some({
            let mut built = pushpull_auth::AuthConfig::default();
            built.keys = vec![pushpull_auth::KeyConfig::hs256(Some("k"), "s")];
            built.issuer = Some("i".into());
            built.audience = Some("a".into());
            built
        });
        built
    };
    // Every registered transport's section, written out with its defaults.
    let transports = &mut config.transports;
    transports.configure::<pushpull::poll::PollServer>(|_| {}).unwrap();
    transports.configure::<pushpull::longpoll::LongpollServer>(|_| {}).unwrap();
    transports.configure::<pushpull::sse::SseServer>(|_| {}).unwrap();
    transports.configure::<pushpull::ws::WsServer>(|_| {}).unwrap();
    transports.configure::<pushpull::stream::StreamServer>(|_| {}).unwrap();
    transports.configure::<pushpull::webhook::WebhookServer>(|_| {}).unwrap();
    let mut found = BTreeSet::new();
    // Each broker's keys: the memory broker's, then Redis's.
    config
        .broker
        .configure::<pushpull::MemoryBroker>(|memory| {
            memory.retention.max_age = Some(std::time::Duration::from_secs(1))
        })
        .unwrap();
    keys("", &toml::Value::try_from(&config).expect("the config serializes"), &mut found);
    config
        .broker
        .configure::<pushpull::redis::RedisBroker>(|redis| redis.ca_file = Some("ca".into()))
        .unwrap();
    keys("", &toml::Value::try_from(&config).expect("the config serializes"), &mut found);
    let doc = documented();
    let missing: Vec<_> = found.iter().filter(|key| !doc.contains(&format!("`{key}`"))).collect();
    assert!(missing.is_empty(), "docs/configuration.md does not name: {missing:?}");
}

#[test]
fn every_client_key_is_documented() {
    let doc = documented();
    let mut missing = Vec::new();
    let sections: [(&str, toml::Value); 6] = [
        ("poll", toml::Value::try_from(pushpull::poll::ClientConfig::default()).unwrap()),
        ("longpoll", toml::Value::try_from(pushpull::longpoll::ClientConfig::default()).unwrap()),
        ("sse", toml::Value::try_from(pushpull::sse::ClientConfig::default()).unwrap()),
        ("ws", toml::Value::try_from(pushpull::ws::ClientConfig::default()).unwrap()),
        ("stream", toml::Value::try_from(pushpull::stream::ClientConfig::default()).unwrap()),
        ("webhook", toml::Value::try_from(pushpull::webhook::ClientConfig::default()).unwrap()),
    ];
    for (name, value) in sections {
        let mut found = BTreeSet::new();
        keys("", &value, &mut found);
        for key in found {
            if !doc.contains(&format!("`[{name}] {key}`")) {
                missing.push(format!("[{name}] {key}"));
            }
        }
    }
    for key in ["transport", "url", "probe_timeout", "ca_file", "token"] {
        if !doc.contains(&format!("`{key}`")) {
            missing.push(key.to_owned());
        }
    }
    assert!(missing.is_empty(), "docs/configuration.md does not name: {missing:?}");
}
