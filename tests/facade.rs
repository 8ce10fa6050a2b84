//! Choosing a transport by configuration, with no code change.

mod support;

use futures::StreamExt;
use pushpull::{ClientConfig, Cursor, ErrorKind, Publication, Registry, ServerConfig, Topic};
use support::{LIMIT, server};

#[tokio::test]
async fn the_same_code_runs_over_any_configured_transport() {
    let server = server(ServerConfig::default()).await;
    let url = format!("http://{}", server.local_addr());
    // `auto` takes the best transport the server answers on.
    let cases = [
        ("poll", "poll"),
        ("longpoll", "longpoll"),
        ("sse", "sse"),
        ("ws", "ws"),
        ("stream", "stream"),
        ("auto", "ws"),
    ];
    for (transport, expected) in cases {
        let config = ClientConfig::from_toml(&format!(
            "transport = \"{transport}\"\nurl = \"{url}\"\n[longpoll]\nwait = \"5s\"\n"
        ))
        .unwrap();
        let client = pushpull::connect(&config).await.expect("connect");
        let topic = Topic::new(format!("facade.{transport}")).unwrap();
        let mut subscription = client.subscribe(&topic, Cursor::Latest).await.unwrap();
        let receipt = client.publish(&topic, Publication::new("hello")).await.unwrap();
        let delivery = tokio::time::timeout(LIMIT, subscription.next()).await.unwrap().unwrap();
        assert_eq!(delivery.unwrap().cursor(), receipt.cursor());
        assert_eq!(client.capabilities().name, expected);
    }
}

#[tokio::test]
async fn configuration_errors_say_what_to_fix() {
    let unknown = ClientConfig::new("carrier-pigeon", "http://127.0.0.1:1");
    let err = pushpull::connect(&unknown).await.expect_err("an error");
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.message().contains("available: poll, longpoll, sse, ws, stream, webhook"), "{err}");

    let err = ClientConfig::from_toml("transport = \"poll\"\nurll = \"x\"").unwrap_err();
    assert!(err.message().contains("urll"), "{err}");

    let config =
        ClientConfig::from_toml("transport = \"poll\"\n[poll]\npoll_intervall = \"1s\"").unwrap();
    let err = pushpull::connect(&config).await.expect_err("an error");
    assert!(err.message().contains("poll_intervall"), "{err}");

    let config = ClientConfig::from_toml("transport = \"poll\"\n[pidgeon]\nwings = 2").unwrap();
    let err = pushpull::connect(&config).await.expect_err("an error");
    assert!(err.message().contains("[pidgeon]") && err.message().contains("available"), "{err}");

    let config = ClientConfig::from_toml("transport = \"sse\"\n[sse]\nidle_timeout = 5").unwrap();
    let err = pushpull::connect(&config).await.expect_err("an error");
    assert!(err.message().contains("[sse] idle_timeout"), "{err}");

    let config = ClientConfig::new("poll", "ftp://example");
    let err = pushpull::connect(&config).await.expect_err("an error");
    assert!(err.message().contains("http://"), "{err}");

    // `auto` with nothing listening says what each transport ran into.
    let config = ClientConfig::new("auto", "http://127.0.0.1:9");
    let err = pushpull::connect(&config).await.expect_err("an error");
    assert_eq!(err.kind(), ErrorKind::Connect);
    assert!(err.message().contains("poll:"), "{err}");

    assert_eq!(Registry::new().names(), Vec::<&str>::new());
    assert!(Registry::with_defaults().names().contains(&"poll"));
}
