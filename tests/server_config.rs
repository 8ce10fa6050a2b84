//! The server's configuration file: every section read, every error naming its key.

use std::time::Duration;

use pushpull::poll::PollServer;
use pushpull::sse::SseServer;
use pushpull::ws::WsServer;
use pushpull::{ErrorKind, ServerConfig};

#[test]
fn defaults_serve_on_loopback() {
    let config = ServerConfig::from_toml("").unwrap();
    assert_eq!(config.listen.ip().to_string(), "127.0.0.1");
    assert!(config.transports.is_enabled("poll"));
}

#[test]
fn reads_every_section() {
    let config = ServerConfig::from_toml(
        r#"
        listen = "127.0.0.1:9000"
        [broker]
        max_payload = 1024
        [broker.retention]
        max_messages = 5
        max_age = "90s"
        [http]
        header_read_timeout = "5s"
        [transports.poll]
        poll_interval = "250ms"
        "#,
    )
    .unwrap();
    assert_eq!(config.listen.port(), 9000);
    assert_eq!(
        config.broker.config::<pushpull::MemoryBroker>().unwrap().retention.max_age,
        Some(Duration::from_secs(90))
    );
    assert_eq!(
        config.transports.config::<PollServer>().unwrap().poll_interval,
        Duration::from_millis(250)
    );
}

#[test]
fn errors_name_the_key() {
    let mut cases = vec![
        ("lisen = \"127.0.0.1:1\"", "lisen"),
        ("[broker]\nmax_paylod = 1", "max_paylod"),
        ("[transports.poll]\npoll_interval = 5", "poll_interval"),
        ("[transports.poll]\npoll_interval = \"soon\"", "soon"),
        ("[transports.smoke]\nenabled = true", "smoke"),
        ("listen = \"localhost\"", "listen"),
        ("[broker]\nkind = \"postgres\"", "postgres"),
        ("[broker.retention]\nmax_messages = 0", "max_messages"),
        ("[transports.poll]\nmax_limit = 0", "transports.poll.max_limit"),
        ("[broker]\nmax_payload = 100000000", "max_bytes"),
        ("listen = ", "line 1"),
    ];
    cases.extend([
        ("[transports.webhook]\nallow_loopbak = true", "allow_loopbak"),
        ("[transports.webhook]\nschedule = [\"soon\"]", "soon"),
    ]);
    cases.extend([
        ("[transports.ws]\nping_intervall = \"1s\"", "ping_intervall"),
        ("[transports.ws]\nread_buffer = \"big\"", "read_buffer"),
    ]);
    cases.push(("[transports.sse]\nheartbeat = \"0s\"", "transports.sse.heartbeat"));
    cases.push(("[transports.longpoll]\nmax_wait = \"0s\"", "transports.longpoll.max_wait"));
    cases.push(("[transports.stream]\nenabled = \"yes\"", "enabled"));
    for (text, expected) in cases {
        let err = ServerConfig::from_toml(text).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains(expected), "{text:?} gave: {err}");
    }
}

#[test]
fn every_key_a_transport_crate_has_can_be_set() {
    let config = ServerConfig::from_toml(
        r#"
        [transports.ws]
        read_buffer = 4096
        max_bad_frames = 3
        [transports.sse]
        enabled = false
        retry = "2s"
        "#,
    )
    .unwrap();
    assert_eq!(config.transports.config::<WsServer>().unwrap().read_buffer, 4096);
    assert_eq!(config.transports.config::<WsServer>().unwrap().max_bad_frames, 3);
    assert!(config.transports.is_enabled("ws"));
    assert!(!config.transports.is_enabled("sse"));
    assert_eq!(config.transports.config::<SseServer>().unwrap().retry, Duration::from_secs(2));
}

#[test]
fn environment_overrides_the_file() {
    let env = [
        ("PUSHPULL_LISTEN".to_owned(), "127.0.0.1:9100".to_owned()),
        ("PUSHPULL_BROKER__RETENTION__MAX_MESSAGES".to_owned(), "7".to_owned()),
        ("PUSHPULL_TRANSPORTS__POLL__POLL_INTERVAL".to_owned(), "2s".to_owned()),
        ("PUSHPULL_URL".to_owned(), "http://elsewhere".to_owned()),
        ("HOME".to_owned(), "/".to_owned()),
    ];
    let config = ServerConfig::load(None, env).unwrap();
    assert_eq!(config.listen.port(), 9100);
    assert_eq!(config.broker.config::<pushpull::MemoryBroker>().unwrap().retention.max_messages, 7);
    assert_eq!(
        config.transports.config::<PollServer>().unwrap().poll_interval,
        Duration::from_secs(2)
    );
    // A misspelt section with a level under it is an error that names the sections.
    let err =
        ServerConfig::load(None, [("PUSHPULL_HTTPS__MAX_CONNECTIONS".to_owned(), "5".to_owned())])
            .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.message().contains("PUSHPULL_HTTPS__MAX_CONNECTIONS"), "{err}");
    assert!(err.message().contains("PUSHPULL_BROKER"), "{err}");
    // A misspelt key inside a section is an error that names it.
    let err = ServerConfig::load(None, [("PUSHPULL_HTTP__MAX_CONECTIONS".to_owned(), "5".into())])
        .unwrap_err();
    assert!(err.message().contains("max_conections"), "{err}");
}

/// The client's variables, and any a script sets for itself, share the prefix but are not the
/// server's settings: each of them used to stop the server with "unknown field".
#[test]
fn variables_that_are_not_settings_are_not_read() {
    let env = [
        ("PUSHPULL_TOKEN", "eyJ.x.y"),
        ("PUSHPULL_TRANSPORT", "sse"),
        ("PUSHPULL_CA_FILE", "/nowhere/ca.pem"),
        ("PUSHPULL_CONFIG", "/nowhere/client.toml"),
        ("PUSHPULL_URL", "http://elsewhere"),
        ("PUSHPULL_LOG", "debug"),
        ("PUSHPULL_BIN", "/usr/bin/pushpull"),
        ("PUSHPULL_", "x"),
        ("PUSHPULL_LISTEN", "127.0.0.1:9101"),
    ];
    let config = ServerConfig::load(None, env.map(|(k, v)| (k.to_owned(), v.to_owned()))).unwrap();
    assert_eq!(config.listen.port(), 9101);
    assert_eq!(config.http, ServerConfig::default().http);
}

/// `ENV_SECTIONS` lists every top-level key of the server's config, so that none can be set by
/// the file but not by a variable.
#[test]
fn every_section_can_come_from_the_environment() {
    let config = ServerConfig::from_toml(
        r#"
        [tls]
        cert_file = "cert.pem"
        key_file = "key.pem"
        [[auth.keys]]
        algorithm = "HS256"
        secret_file = "secret"
        "#,
    )
    .unwrap();
    config.validate().unwrap();
    let table = toml::Table::try_from(&config).unwrap();
    let mut keys: Vec<&str> = table.keys().map(String::as_str).collect();
    let mut sections = pushpull::ENV_SECTIONS.to_vec();
    keys.sort();
    sections.sort();
    assert_eq!(keys, sections);
}
