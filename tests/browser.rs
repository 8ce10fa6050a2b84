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
    let tls = pushpull_http::TlsFiles { cert_file: ca.cert_file(), key_file: ca.key_file() };
    let config = ServerConfig { tls: Some(tls), ..ServerConfig::default() };
    let server = support::server(config).await;
    let url = format!("https://localhost:{}", server.local_addr().port());
    let count = 10;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js/many-eventsources.mjs");
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::process::Command::new("node")
            .arg(script)
            .arg(&url)
            .arg(count.to_string())
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
        "the browser script failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert_eq!(result["outcome"], "done", "every stream got its message: {result}");
    assert_eq!(result["opened"], count, "{result}");
    for (i, data) in result["received"].as_array().unwrap().iter().enumerate() {
        assert_eq!(data, &serde_json::json!(format!("hello {i}")), "{result}");
    }
    let protocols = result["protocols"].as_array().unwrap();
    assert!(protocols.contains(&serde_json::json!("h2")), "the page used HTTP/2: {result}");
}
