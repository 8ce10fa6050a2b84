//! A real browser over TLS: headless Chromium (Debian's, driven by playwright-core from npm)
//! opens more EventSources on one page than HTTP/1.1's six connections per host allow, and
//! every one gets its message, because the server speaks HTTP/2 (ALPN h2).

mod support;

use std::process::Stdio;

use pushpull::ServerConfig;
use pushpull_chaos::TestCa;

#[tokio::test]
async fn chromium_opens_more_than_six_event_sources_on_one_page_over_tls() {
    let ca = TestCa::new().unwrap();
    let tls = pushpull_http::TlsFiles::new(ca.cert_file(), ca.key_file());
    let config = {
        let mut built = ServerConfig::default();
        built.tls = Some(tls);
        built
    };
    let server = support::server(config).await;
    let url = format!("https://localhost:{}", server.local_addr().port());
    let count = 10;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js/many-eventsources.mjs");
    let result = run_node(script, &[&url, &count.to_string()]).await;
    assert_eq!(result["outcome"], "done", "every stream got its message: {result}");
    assert_eq!(result["opened"], count, "{result}");
    for (i, data) in result["received"].as_array().unwrap().iter().enumerate() {
        assert_eq!(data, &serde_json::json!(format!("hello {i}")), "{result}");
    }
    let protocols = result["protocols"].as_array().unwrap();
    assert!(protocols.contains(&serde_json::json!("h2")), "the page used HTTP/2: {result}");
}

/// Runs `script` under node with `args`, within a minute, and parses the JSON it prints.
async fn run_node(script: &str, args: &[&str]) -> serde_json::Value {
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(90),
        tokio::process::Command::new("node")
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser finished in time")
    .expect("node runs (scripts/test installs it, chromium and playwright-core)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{script} failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[tokio::test]
async fn the_demo_page_shows_the_ticker_over_every_transport_and_takes_a_screenshot() {
    let server = support::server(ServerConfig::default()).await;
    let url = format!("http://127.0.0.1:{}", server.local_addr().port());
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("demo.png");
    let _ = std::fs::remove_file(&shot);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js/demo-screenshot.mjs");
    let result = run_node(script, &[&url, shot.to_str().unwrap()]).await;

    assert_eq!(result["errors"], serde_json::json!([]), "no script errors on the page: {result}");
    for transport in ["ws", "sse", "stream", "longpoll", "poll"] {
        assert_eq!(result["seen"][transport], transport, "{result}");
        let row = result["costs"].as_array().unwrap().iter().find(|r| r["transport"] == transport);
        let row = row.unwrap_or_else(|| panic!("a cost row for {transport}: {result}"));
        assert!(row["messages"].as_u64().unwrap() >= 2, "{transport} delivered: {result}");
        assert!(row["requests"].as_u64().unwrap() >= 1, "{transport} counted requests: {result}");
        assert!(row["bytesIn"].as_u64().unwrap() > 0, "{transport} counted bytes: {result}");
    }
    assert_eq!(result["seen"]["auto"], "auto → ws", "{result}");
    // Switching transports five times resumed from the last price: nothing lost or repeated.
    let shown: Vec<u64> =
        result["shown"].as_array().unwrap().iter().map(|o| o.as_u64().unwrap()).collect();
    assert!(shown.len() >= 12, "{result}");
    assert!(shown.windows(2).all(|w| w[1] == w[0] + 1), "consecutive offsets: {shown:?}");
    assert_eq!(result["gaps"], 0);

    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(png.len() > 20_000, "a page, not a blank: {} bytes", png.len());
}

/// The other half of the claim: over plain HTTP/1.1 the same page gets six streams, and the
/// seventh (and the page's own publishing requests) wait for a free connection.
#[tokio::test]
async fn over_http1_chromium_opens_only_six_event_sources_per_host() {
    let server = support::server(ServerConfig::default()).await;
    let url = format!("http://127.0.0.1:{}", server.local_addr().port());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js/many-eventsources.mjs");
    let result = run_node(script, &[&url, "10", "3000"]).await;
    assert_eq!(result["outcome"], "timeout", "{result}");
    assert_eq!(result["opened"], 6, "{result}");
    let protocols = result["protocols"].as_array().unwrap();
    assert!(protocols.contains(&serde_json::json!("http/1.1")), "{result}");
}
