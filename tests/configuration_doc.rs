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
    let mut auth = pushpull_auth::AuthConfig::default();
    auth.keys = vec![pushpull_auth::KeyConfig::hs256(Some("k"), "s")];
    auth.issuer = Some("i".into());
    auth.audience = Some("a".into());
    let mut config = pushpull::ServerConfig::default();
    config.tls = Some(pushpull_http::TlsFiles::new("c", "k"));
    config.auth = Some(auth);
    let mut found = BTreeSet::new();
    keys("", &toml::Value::try_from(&config).expect("the config serializes"), &mut found);
    // Every registered transport's section and every registered broker's keys, at their
    // defaults: a transport or broker added to the build is checked here without a line more.
    let registry = pushpull::Registry::with_defaults();
    for (name, mut defaults) in registry.server_defaults() {
        defaults.insert("enabled".into(), toml::Value::Boolean(true));
        keys(&format!("transports.{name}"), &toml::Value::Table(defaults), &mut found);
    }
    for (name, mut defaults) in registry.broker_defaults() {
        defaults.insert("kind".into(), toml::Value::String(name.into()));
        keys("broker", &toml::Value::Table(defaults), &mut found);
    }
    // Keys absent at their defaults (optional ones).
    for key in ["broker.ca_file", "broker.retention.max_age"] {
        found.insert(key.to_owned());
    }
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

/// The TOML blocks of the pages that show a server's configuration, each read as one.
#[test]
fn every_server_config_example_reads() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut read = 0;
    for page in ["README.md", "docs/deploying.md", "docs/security.md"] {
        let text = std::fs::read_to_string(format!("{root}/{page}")).expect(page);
        for block in text.split("```toml\n").skip(1) {
            let block = block.split("```").next().expect("a closed block");
            if let Err(error) = pushpull::ServerConfig::from_toml(block) {
                panic!("{page}: an example does not read: {error}\n{block}");
            }
            read += 1;
        }
    }
    assert!(read >= 4, "found {read} examples");
}
