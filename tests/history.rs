//! History starts (`last:N`, `since:TIME`) as curl asks for them, on every HTTP way to read a
//! topic: a page (short polling), a held page (long polling), Server-Sent Events and chunked
//! streaming.

mod support;

use std::process::Stdio;

use pushpull::ServerConfig;
use support::{LIMIT, get, post, server};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Runs curl on `url` and reads what it prints, line by line, until `enough` says the lines
/// read so far (the non-empty ones) are enough: a stream never ends by itself.
async fn curl_until(url: &str, enough: impl Fn(&[String]) -> bool) -> Vec<String> {
    let mut curl = tokio::process::Command::new("curl")
        .args(["--no-buffer", "--silent", "--show-error", "--max-time", "20", url])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("curl is installed (scripts/test installs it)");
    let mut out = BufReader::new(curl.stdout.take().expect("stdout")).lines();
    let mut read = Vec::new();
    while !enough(&read) {
        let line = tokio::time::timeout(LIMIT, out.next_line())
            .await
            .expect("curl printed in time")
            .expect("read curl's output")
            .unwrap_or_else(|| panic!("curl ended after {read:?}"));
        if !line.is_empty() {
            read.push(line);
        }
    }
    read
}

async fn curl_lines(url: &str, lines: usize) -> Vec<String> {
    curl_until(url, |read| read.len() >= lines).await
}

/// The offsets of the messages of a page, a long poll's page included.
async fn page_offsets(url: &str) -> Vec<u64> {
    let body = curl_lines(url, 1).await.join("\n");
    let page: serde_json::Value = serde_json::from_str(&body).expect("a JSON page");
    assert!(page.get("gap").is_none(), "no gap: {page}");
    let next = page["next"].as_str().expect("next");
    assert!(!next.starts_with("last:") && !next.starts_with("since:"), "next is a position");
    page["messages"].as_array().unwrap().iter().map(|m| m["offset"].as_u64().unwrap()).collect()
}

/// The offsets of the first `count` messages of an SSE stream, by their `id:` lines.
async fn sse_offsets(url: &str, count: usize) -> Vec<u64> {
    let ids = |lines: &[String]| lines.iter().filter(|l| l.starts_with("id: ")).count();
    let lines = curl_until(url, |lines| ids(lines) > count).await;
    let ids: Vec<u64> = lines
        .iter()
        .filter_map(|line| line.strip_prefix("id: "))
        .map(|id| id.rsplit_once('-').expect("EPOCH-OFFSET").1.parse().unwrap())
        .collect();
    // The first id is where the stream starts: resolved, one before the first message.
    assert_eq!(ids[0] + 1, ids[1], "the stream starts just before its first message: {lines:?}");
    ids[1..].iter().copied().take(count).collect()
}

/// The offsets of the first `count` message records of a chunked stream.
async fn stream_offsets(url: &str, count: usize) -> Vec<u64> {
    let records: Vec<serde_json::Value> = curl_lines(url, 1 + count)
        .await
        .iter()
        .map(|line| serde_json::from_str(line).expect("a JSON record"))
        .collect();
    assert_eq!(records[0]["type"], "start");
    let start = records[0]["cursor"].as_str().expect("the start record's cursor");
    assert!(start.rsplit_once('-').is_some(), "the start is a position: {start}");
    records[1..].iter().map(|r| r["offset"].as_u64().expect("a message record")).collect()
}

/// `TIME` as RFC 3339 in UTC, to the millisecond, from the system's `date`.
fn rfc3339(millis: u64) -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{}.{:03}", millis / 1000, millis % 1000)])
        .arg("+%Y-%m-%dT%H:%M:%S.%3NZ")
        .output()
        .expect("date runs");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn curl_reads_last_n_and_since_on_every_http_read() {
    let server = server(ServerConfig::default()).await;
    let base = format!("http://{}/v1/topics/history", server.local_addr());
    let addr = server.local_addr();
    for n in 1..=5 {
        assert_eq!(
            post(addr, "/v1/topics/history", "", format!("m{n}").as_bytes()).await.status,
            201
        );
    }
    // Timestamps are in milliseconds: let some pass, so message 6 is later than message 5.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let mut sixth = 0;
    for n in 6..=10 {
        let reply = post(addr, "/v1/topics/history", "", format!("m{n}").as_bytes()).await;
        if n == 6 {
            sixth = reply.json()["timestamp"].as_u64().unwrap();
        }
    }
    let last5: Vec<u64> = (6..=10).collect();
    let since_rfc = format!("since:{}", rfc3339(sixth));
    let since_ms = format!("since:{sixth}");

    for after in ["last:5", since_rfc.as_str(), since_ms.as_str()] {
        assert_eq!(page_offsets(&format!("{base}/messages?after={after}")).await, last5, "{after}");
        let held = format!("{base}/messages?after={after}&wait=5");
        assert_eq!(page_offsets(&held).await, last5, "long poll {after}");
        let events = format!("{base}/events?after={after}");
        assert_eq!(sse_offsets(&events, 5).await, last5, "SSE {after}");
        let stream = format!("{base}/stream?after={after}");
        assert_eq!(stream_offsets(&stream, 5).await, last5, "stream {after}");
    }
    // The current value, then follow.
    assert_eq!(page_offsets(&format!("{base}/messages?after=last:1")).await, vec![10]);
    assert_eq!(sse_offsets(&format!("{base}/events?after=last:1"), 1).await, vec![10]);

    // A start that does not parse says what it expected.
    let reply = get(addr, "/v1/topics/history/events?after=since:yesterday").await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.error_kind(), "invalid_cursor");
    let message = reply.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("RFC 3339"), "{message}");
    let reply = get(addr, "/v1/topics/history/messages?after=last:ten").await;
    assert_eq!(reply.status, 400);
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("whole number"));
}

#[tokio::test]
async fn curl_pages_back_newest_first() {
    let server = server(ServerConfig::default()).await;
    let addr = server.local_addr();
    let base = format!("http://{addr}/v1/topics/back");
    for n in 1..=5 {
        assert_eq!(post(addr, "/v1/topics/back", "", format!("m{n}").as_bytes()).await.status, 201);
    }
    let mut url = format!("{base}/messages?order=desc&limit=2");
    let mut pages = Vec::new();
    loop {
        let body = curl_lines(&url, 1).await.join("\n");
        let page: serde_json::Value = serde_json::from_str(&body).expect("a JSON page");
        let offsets: Vec<u64> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["offset"].as_u64().unwrap())
            .collect();
        if offsets.is_empty() {
            assert!(page["next"].as_str().unwrap().ends_with("-0"), "{page}");
            break;
        }
        pages.push(offsets);
        url =
            format!("{base}/messages?order=desc&limit=2&before={}", page["next"].as_str().unwrap());
    }
    assert_eq!(pages, vec![vec![5, 4], vec![3, 2], vec![1]]);

    let reply = get(addr, "/v1/topics/back/messages?order=desc&after=beginning").await;
    assert_eq!(reply.status, 400);
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("before="));
    let reply = get(addr, "/v1/topics/back/messages?order=sideways").await;
    assert_eq!(reply.status, 400);
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("desc"));
}
