//! The browser client (clients/js) in headless Chromium (Debian's, driven by playwright-core),
//! against real servers on 127.0.0.1: every transport publishes, fetches and subscribes from
//! each kind of cursor, gets gaps, carries large payloads, resumes through a severed
//! connection with nothing lost or repeated, and uses the application's token hook; `auto`
//! falls back when WebSocket upgrades are refused.

mod support;

use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pushpull::ServerConfig;
use pushpull_auth::{AuthConfig, KeyConfig};
use pushpull_chaos::ChaosProxy;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const TRANSPORTS: [&str; 5] = ["ws", "sse", "stream", "longpoll", "poll"];
const SECRET: &str = "a shared secret of at least thirty-two bytes";

fn token(subscribe_and_publish: &str, exp: u64) -> String {
    let claims = json!({
        "sub": "browser",
        "exp": exp,
        "pushpull": { "publish": [subscribe_and_publish], "subscribe": [subscribe_and_publish] },
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("k1".into());
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

type Lines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

/// Starts `node tests/js/SCRIPT ARG`: the child, its standard input and its output's lines.
fn node(script: &str, arg: &Value) -> (tokio::process::Child, tokio::process::ChildStdin, Lines) {
    let mut child = tokio::process::Command::new("node")
        .arg(format!("{}/tests/js/{script}", env!("CARGO_MANIFEST_DIR")))
        .arg(arg.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (scripts/test installs it, chromium and playwright-core)");
    let stdin = child.stdin.take().unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, stdin, lines)
}

/// Runs the plan in Chromium, severing `proxy`'s connections whenever a case asks.
async fn run(plan: &Value, proxy: &ChaosProxy) -> Vec<Value> {
    let (mut child, mut stdin, mut lines) = node("client-suite.mjs", plan);
    let results = tokio::time::timeout(Duration::from_secs(600), async {
        while let Some(line) = lines.next_line().await.expect("read the script's output") {
            if line == "sever" {
                proxy.sever();
                stdin.write_all(b"severed\n").await.unwrap();
            } else if line.starts_with('[') {
                return serde_json::from_str::<Vec<Value>>(&line).expect("JSON results");
            } else {
                eprintln!("{line}");
            }
        }
        panic!("the script ended without results");
    })
    .await
    .expect("the browser suite finished in time");
    let status = child.wait().await.unwrap();
    assert!(status.success(), "the script failed");
    results
}

fn offsets(deliveries: &Value) -> Vec<u64> {
    deliveries.as_array().unwrap().iter().map(|d| d["offset"].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn the_browser_client_works_over_every_transport() {
    // A: a plain server, reached through a proxy that can sever the page's connections.
    let plain = support::server(ServerConfig::default()).await;
    let proxy = ChaosProxy::start(plain.local_addr()).await.unwrap();
    let via_proxy = format!("http://{}", proxy.addr());
    // B: keeps five messages per topic.
    let short = ServerConfig::from_toml("[broker.retention]\nmax_messages = 5\n").unwrap();
    let short = support::server(short).await;
    // C: refuses WebSocket upgrades.
    let mut no_ws = ServerConfig::default();
    no_ws.transports.set_enabled("ws", false);
    let no_ws = support::server(no_ws).await;
    // D: needs tokens.
    let auth = {
        let mut built = AuthConfig::default();
        built.keys = vec![KeyConfig::hs256(Some("k1"), SECRET)];
        built.leeway = Duration::ZERO;
        built
    };
    let mut secured = {
        let mut built = ServerConfig::default();
        built.auth = Some(auth);
        built
    };
    secured
        .transports
        .configure::<pushpull::longpoll::LongpollServer>(|c| c.max_wait = Duration::from_secs(5))
        .unwrap();
    let secured = support::server(secured).await;
    let url = |server: &pushpull::RunningServer| format!("http://{}", server.local_addr());

    let mut plan = Vec::new();
    for transport in TRANSPORTS {
        let on = |case: &str, url: &str, extra: Value| {
            let mut args = json!({ "url": url, "transport": transport });
            args.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            json!({ "name": format!("{case} over {transport}"), "case": case, "args": args })
        };
        plan.push(on("roundTrip", &via_proxy, json!({})));
        plan.push(on("cursors", &via_proxy, json!({})));
        plan.push(on("twoSubscriptions", &via_proxy, json!({})));
        plan.push(on("large", &via_proxy, json!({})));
        plan.push(on("resume", &via_proxy, json!({})));
        plan.push(on("manyTopics", &via_proxy, json!({})));
        plan.push(on("prefix", &via_proxy, json!({})));
        plan.push(on("gap", &url(&short), json!({})));
        let topic = format!("js.secured.{transport}");
        let tokens = json!({
            "topic": topic,
            "expired": token(&topic, now() - 60),
            "good": token(&topic, now() + 600),
        });
        plan.push(on("token", &url(&secured), tokens));
    }
    plan.push(json!({ "name": "auto", "case": "auto", "args": { "url": url(&no_ws) } }));
    plan.push(json!({
        "name": "refresh", "case": "refresh",
        "args": { "url": url(&secured), "transport": "ws", "topic": "js.refresh", "secret": SECRET },
    }));
    plan.push(json!({
        "name": "eventSourceMany", "case": "eventSourceMany", "args": { "url": via_proxy },
    }));

    let results = run(&json!(plan), &proxy).await;
    assert_eq!(results.len(), plan.len());
    let failed: Vec<&Value> = results.iter().filter(|r| r["ok"] != true).collect();
    assert!(failed.is_empty(), "cases failed in the browser: {failed:#?}");
    let value = |name: &str| -> &Value {
        &results.iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("{name}"))["value"]
    };

    for transport in TRANSPORTS {
        let round = value(&format!("roundTrip over {transport}"));
        assert_eq!(round["transport"], transport);
        assert_eq!(round["receipts"], json!([1, 2, 3]), "{transport}: {round}");
        let deliveries = &round["deliveries"];
        assert_eq!(offsets(deliveries), [1, 2, 3], "{transport}: {round}");
        assert_eq!(deliveries[0]["data"], "hello", "{transport}");
        assert_eq!(deliveries[1]["data"], "bytes:0,255,1", "{transport}: bytes stay bytes");
        assert_eq!(deliveries[2]["data"], "line one\nline two", "{transport}");
        assert_eq!(deliveries[2]["event"], "note", "{transport}");
        assert_eq!(deliveries[2]["contentType"], "text/plain", "{transport}");
        assert!(deliveries[0]["contentType"].is_null(), "{transport}: no content type invented");
        assert!(deliveries[0]["timestamp"].as_u64().unwrap() > 1_700_000_000_000, "{transport}");
        assert_eq!(round["extra"], json!([]), "{transport}: nothing twice");
        assert_eq!(&round["page"], deliveries, "{transport}: fetch gives the same messages");
        assert!(round["stats"]["requests"].as_u64().unwrap() >= 1, "{transport}: {round}");
        assert!(round["stats"]["bytesIn"].as_u64().unwrap() > 0, "{transport}: {round}");

        let cursors = value(&format!("cursors over {transport}"));
        assert_eq!(cursors["latest"], json!([3]), "{transport}: {cursors}");
        assert_eq!(cursors["after"], json!([2, 3]), "{transport}: {cursors}");
        assert_eq!(cursors["extra"], json!([]), "{transport}: {cursors}");

        let two = value(&format!("twoSubscriptions over {transport}"));
        assert_eq!(two["a"], json!([1, 2, 3]), "{transport}: {two}");
        assert_eq!(two["b"], json!([1, 2, 3]), "{transport}: {two}");

        let large = value(&format!("large over {transport}"));
        assert_eq!(large["length"], 1024 * 1024, "{transport}");
        assert_eq!(large["ends"], "xy", "{transport}");

        let resume = value(&format!("resume over {transport}"));
        assert_eq!(resume["offsets"], json!((1..=10).collect::<Vec<_>>()), "{transport}: {resume}");
        let expected: Vec<String> = (1..=10).map(|n| format!("m{n}")).collect();
        assert_eq!(resume["data"], json!(expected), "{transport}");
        assert_eq!(resume["publishes"], json!([6, 7, 8, 9, 10]), "{transport}: stored once each");
        assert_eq!(resume["extra"], json!([]), "{transport}: nothing twice: {resume}");
        if matches!(transport, "ws" | "sse" | "stream") {
            assert_eq!(resume["reconnected"], true, "{transport} noticed the cut: {resume}");
        }

        let many = value(&format!("manyTopics over {transport}"));
        let topics = many["topics"].as_array().unwrap();
        assert_eq!(topics.len(), 20);
        for (n, topic) in topics.iter().enumerate() {
            let want: Vec<u64> = if n < 19 { (1..=5).collect() } else { (1..=4).collect() };
            assert_eq!(many["offsets"][n], json!(want), "{transport}: {topic}: {many}");
            let data: Vec<String> =
                (1..=4).map(|k| format!("{}/{k}", topic.as_str().unwrap())).collect();
            assert_eq!(many["data"][n], json!(data), "{transport}: {topic}");
        }
        assert_eq!(many["joined"], "early", "{transport}: a topic joined from its start");
        assert_eq!(many["extra"], json!([]), "{transport}: nothing twice: {many}");
        if matches!(transport, "ws" | "sse" | "stream") {
            assert_eq!(many["reconnected"], true, "{transport} noticed the cut: {many}");
        }

        let prefix = value(&format!("prefix over {transport}"));
        assert_eq!(
            prefix["seen"],
            json!(["a:a1", "a:a2", "b:b1", "z:z1"]),
            "{transport}: {prefix}"
        );
        assert!(prefix["cursor"].as_str().unwrap().starts_with('@'), "{transport}: {prefix}");
        assert_eq!(prefix["resumed"], "b:b2", "{transport}: resumed from its set: {prefix}");
        assert_eq!(prefix["extra"], json!([]), "{transport}: nothing twice: {prefix}");

        let gap = value(&format!("gap over {transport}"));
        let expected_gap = json!({
            "type": "gap", "reason": "retention", "first": 3, "last": 7,
            "cursor": gap["expectedGapCursor"],
        });
        assert_eq!(gap["page"]["gap"], expected_gap, "{transport}: {gap}");
        assert_eq!(gap["page"]["offsets"], json!([8, 9, 10, 11, 12]), "{transport}");
        assert_eq!(gap["deliveries"][0], expected_gap, "{transport}: {gap}");
        let rest: Vec<u64> = gap["deliveries"].as_array().unwrap()[1..]
            .iter()
            .map(|d| d["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(rest, [8, 9, 10, 11, 12], "{transport}: {gap}");

        let token = value(&format!("token over {transport}"));
        assert_eq!(token["offset"], 1, "{transport}: {token}");
        assert_eq!(token["data"], "with a token", "{transport}");
        assert_eq!(token["asked"][0], false, "{transport}: asked for a token first: {token}");
        assert!(
            token["asked"].as_array().unwrap().contains(&json!(true)),
            "{transport}: renewed after the refusal: {token}"
        );
        assert_eq!(token["refusal"]["kind"], "forbidden", "{transport}: {token}");
        assert_eq!(token["refusal"]["retryable"], false, "{transport}");
    }

    // The WebSocket client took each new token on its one socket, before the last expired.
    let refresh = value("refresh");
    assert_eq!(refresh["offsets"], refresh["sent"], "every message, in order: {refresh}");
    assert!(refresh["asked"].as_u64().unwrap() >= 3, "tokens of four seconds over nine: {refresh}");
    assert_eq!(refresh["sockets"], 1, "one socket the whole time: {refresh}");

    let stock = value("eventSourceMany");
    assert_eq!(stock["total"], 80, "a stock EventSource got each event once: {stock}");
    for (n, topic) in stock["topics"].as_array().unwrap().iter().enumerate() {
        let want: Vec<String> =
            (1..=4).map(|k| format!("{}/{k}", topic.as_str().unwrap())).collect();
        assert_eq!(stock["perTopic"][n], json!(want), "{topic}: in order, none lost: {stock}");
    }
    assert!(stock["errors"].as_u64().unwrap() >= 1, "the cut was seen: {stock}");
    assert!(stock["lastId"].as_str().unwrap().starts_with('@'), "the id is a cursor set: {stock}");

    let auto = value("auto");
    assert_eq!(auto["transport"], "sse", "{auto}");
    assert_eq!(auto["passed"][0]["transport"], "ws", "{auto}");
    assert_eq!(auto["data"], "over the fallback");
}

/// Runs tests/js/presence-pages.mjs: page A through `proxy`, page B straight to the server,
/// cutting and restoring A's network when the script asks.
async fn presence_pages(transport: &str, proxy: &ChaosProxy, direct: &str) -> Value {
    let args =
        json!({ "a": format!("http://{}", proxy.addr()), "b": direct, "transport": transport });
    let (mut child, mut stdin, mut lines) = node("presence-pages.mjs", &args);
    let outcome = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.expect("read the script's output") {
            match line.as_str() {
                "cut" => {
                    // The network goes: open connections are cut, new ones refused.
                    proxy.set_refusing(true);
                    proxy.sever();
                }
                "restore" => proxy.set_refusing(false),
                _ if line.starts_with('{') => return serde_json::from_str::<Value>(&line).unwrap(),
                _ => {
                    eprintln!("{line}");
                    continue;
                }
            }
            stdin.write_all(b"done\n").await.unwrap();
        }
        panic!("the script ended without an outcome");
    })
    .await
    .expect("the presence pages finished in time");
    assert!(child.wait().await.unwrap().success(), "the script failed");
    outcome
}

/// (event, member name) of each presence event.
fn changes(events: &Value) -> Vec<(String, String)> {
    let events = events.as_array().unwrap();
    events
        .iter()
        .map(|e| (e["event"].as_str().unwrap().into(), e["name"].as_str().unwrap_or("").into()))
        .collect()
}

#[tokio::test]
async fn two_pages_see_each_other_come_and_go_and_resume_presence_from_their_cursor() {
    let server = support::server(ServerConfig::default()).await;
    let direct = format!("http://{}", server.local_addr());
    for transport in ["sse", "ws"] {
        let proxy = ChaosProxy::start(server.local_addr()).await.unwrap();
        let outcome = presence_pages(transport, &proxy, &direct).await;
        let of = |what: &str| format!("{transport}: {what}: {outcome:#}");
        assert_eq!(outcome["before"], json!([0, 0]), "{}", of("nobody at first"));
        let both = [("join".to_owned(), "A".to_owned()), ("join".into(), "B".into())];
        assert_eq!(changes(&outcome["seenBeforeCut"]), both, "{}", of("each sees the other"));
        assert_eq!(outcome["left"]["event"], "leave", "{}", of("A's cut"));
        assert_eq!(outcome["left"]["name"], "A", "{}", of("A's cut"));
        let events_a = &outcome["eventsA"];
        let events_b = &outcome["eventsB"];
        let expected: Vec<(String, String)> = [
            ("join", "A"),
            ("join", "B"),
            ("leave", "A"),
            ("join", "C"),
            ("leave", "C"),
            ("join", "A"),
        ]
        .iter()
        .map(|(event, name)| ((*event).to_owned(), (*name).to_owned()))
        .collect();
        // A read what it missed while away (its own leave, C's join and leave), once each.
        assert_eq!(changes(events_a), expected, "{}", of("A resumed its presence log"));
        assert_eq!(changes(events_b), expected, "{}", of("B saw it all"));
        let offsets = |events: &Value| -> Vec<u64> {
            events.as_array().unwrap().iter().map(|e| e["offset"].as_u64().unwrap()).collect()
        };
        assert_eq!(offsets(events_a), offsets(events_b), "{}", of("one log, the same offsets"));
        assert_eq!(events_a[0]["client"], events_a[2]["client"], "{}", of("A's old member left"));
        assert_ne!(events_a[2]["client"], events_a[5]["client"], "{}", of("A came back anew"));
        assert_eq!(outcome["namesA"], json!(["A", "B"]), "{}", of("A's snapshot"));
        assert_eq!(outcome["namesB"], json!(["A", "B"]), "{}", of("B's snapshot"));
    }
}
