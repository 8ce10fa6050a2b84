//! The `pushpull` binary, run as a user would: serve, then publish, fetch and subscribe.

use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_pushpull");
use support::LIMIT;

struct Served {
    child: Child,
    url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(extra: &[&str]) -> Served {
    let (child, url) = support::serve(extra, &[]);
    Served { child, url }
}

fn run(args: &[&str], url: &str, stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .args(["--url", url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pushpull");
    let mut input = child.stdin.take().unwrap();
    if let Some(data) = stdin {
        input.write_all(data).unwrap();
    }
    drop(input);
    wait(child)
}

fn wait(child: Child) -> Output {
    let (tx, rx) = mpsc::channel();
    let id = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(LIMIT) {
        Ok(output) => output.expect("wait"),
        Err(_) => {
            let _ = Command::new("kill").arg(id.to_string()).status();
            panic!("pushpull did not finish within {LIMIT:?}");
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn publish_fetch_and_subscribe_over_poll() {
    let server = serve(&[]);
    let url = server.url.as_str();

    let published = run(&["publish", "ticker", "42.17", "--event", "price"], url, None);
    assert!(published.status.success(), "{}", text(&published.stderr));
    let cursor = text(&published.stdout).trim().to_owned();
    assert!(cursor.ends_with("-1"), "publish prints the cursor: {cursor}");

    let from_stdin = run(&["publish", "ticker", "-", "--json"], url, Some(b"two\nlines"));
    assert!(from_stdin.status.success());
    let receipt: serde_json::Value = serde_json::from_slice(&from_stdin.stdout).expect("JSON");
    assert_eq!((receipt["topic"].as_str(), receipt["offset"].as_u64()), (Some("ticker"), Some(2)));
    assert!(receipt["cursor"].as_str().unwrap().ends_with("-2"), "{receipt}");

    let fetched = run(&["fetch", "ticker", "--transport", "poll"], url, None);
    assert!(fetched.status.success(), "{}", text(&fetched.stderr));
    assert_eq!(text(&fetched.stdout), "42.17\ntwo\\nlines\n");
    assert!(text(&fetched.stderr).contains("next: "));

    let after = run(&["fetch", "ticker", "--after", &cursor, "--format", "json"], url, None);
    let line = text(&after.stdout);
    let json: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON line");
    assert_eq!(json["data"], "two\nlines");
    assert_eq!(json["offset"], 2);

    // Subscribe from the beginning, then receive one published while subscribed.
    let subscriber = Command::new(BIN)
        .args(["subscribe", "ticker", "--transport", "poll", "--after", "beginning"])
        .args(["--count", "3", "--url", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let late = run(&["publish", "ticker", "43.01"], url, None);
    assert!(late.status.success());
    let output = wait(subscriber);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "42.17\ntwo\\nlines\n43.01\n");

    // Several topics and a prefix on one connection: each line names its topic.
    for (topic, payload) in [("orders:eu", "o1"), ("orders:us", "o2")] {
        assert!(run(&["publish", topic, payload], url, None).status.success());
    }
    let many = run(
        &["subscribe", "orders:*", "ticker", "--transport", "sse", "--after", "beginning"]
            .into_iter()
            .chain(["--count", "5"])
            .collect::<Vec<_>>(),
        url,
        None,
    );
    assert!(many.status.success(), "{}", text(&many.stderr));
    let mut lines: Vec<String> = text(&many.stdout).lines().map(str::to_owned).collect();
    lines.sort();
    let want =
        ["orders:eu\to1", "orders:us\to2", "ticker\t42.17", "ticker\t43.01", "ticker\ttwo\\nlines"];
    assert_eq!(lines, want);
}

#[test]
fn client_errors_are_clear_and_exit_with_2() {
    let server = serve(&[]);
    let url = server.url.as_str();
    let cases: [(&[&str], &str); 4] = [
        (&["publish", "bad topic", "x"], "invalid topic"),
        (&["fetch", "t", "--after", "yesterday"], "invalid cursor"),
        (
            &["fetch", "t", "--transport", "carrier-pigeon"],
            "available: poll, longpoll, sse, ws, stream, webhook",
        ),
        (&["fetch", "t", "--limit", "0"], "limit"),
    ];
    for (args, says) in cases {
        let output = run(args, url, None);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", text(&output.stderr));
        assert!(text(&output.stderr).contains(says), "{args:?}: {}", text(&output.stderr));
    }
    // Nothing listening: a connection error, exit 1.
    let output = run(&["fetch", "t", "--transport", "poll"], "http://127.0.0.1:9", None);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("could not connect"), "{}", text(&output.stderr));
}

#[test]
fn serve_with_tls_prints_an_https_url() {
    let ca = pushpull_chaos::TestCa::new().unwrap();
    let config = ca.dir().join("tls.toml");
    let text = format!(
        "[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        ca.cert_file().display().to_string(),
        ca.key_file().display().to_string()
    );
    std::fs::write(&config, text).unwrap();
    let (mut child, url) = support::serve(&["--config", config.to_str().unwrap()], &[]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
}

#[test]
fn presence_tells_who_follows_a_topic() {
    let server = serve(&[]);
    let url = server.url.as_str();
    // A subscriber over SSE is a member while it follows.
    let mut subscriber = Command::new(BIN)
        .args(["subscribe", "room", "--transport", "sse", "--url", url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let members = || {
        let shown = run(&["presence", "room", "--transport", "poll"], url, None);
        assert!(shown.status.success(), "{}", text(&shown.stderr));
        serde_json::from_slice::<serde_json::Value>(&shown.stdout).expect("JSON")
    };
    let deadline = std::time::Instant::now() + LIMIT;
    let mut snapshot = members();
    while snapshot["members"].as_array().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the subscriber never joined: {snapshot}");
        std::thread::sleep(std::time::Duration::from_millis(50));
        snapshot = members();
    }
    assert_eq!(snapshot["topic"], "room");
    assert!(snapshot["cursor"].as_str().unwrap().ends_with("-1"), "{snapshot}");
    let stats = run(&["presence", "room", "--stats"], url, None);
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("JSON");
    assert_eq!(stats, serde_json::json!({"members": 1, "users": 1}));
    let _ = subscriber.kill();
    let _ = subscriber.wait();
    // Its leave is on the presence log, after its join.
    let events = || -> Vec<String> {
        let log = run(&["fetch", ".presence:room", "--format", "json"], url, None);
        let lines = text(&log.stdout);
        lines
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .map(|message| message["event"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut seen = events();
    while seen.len() < 2 {
        assert!(std::time::Instant::now() < deadline, "the subscriber never left: {seen:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
        seen = events();
    }
    assert_eq!(seen, ["join", "leave"]);
    let bad = run(&["presence", "no such topic"], url, None);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));
}

#[test]
fn completions_cover_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let output = Command::new(env!("CARGO_BIN_EXE_pushpull"))
            .args(["completions", shell])
            .output()
            .expect("run pushpull");
        assert!(output.status.success(), "{shell}: {}", text(&output.stderr));
        let script = text(&output.stdout);
        for command in ["serve", "publish", "fetch", "subscribe", "presence", "bench"] {
            assert!(script.contains(command), "{shell} completes {command}");
        }
    }
    let refused = Command::new(env!("CARGO_BIN_EXE_pushpull"))
        .args(["completions", "tcsh"])
        .output()
        .expect("run pushpull");
    assert_eq!(refused.status.code(), Some(2), "an unknown shell is a usage error");
}

#[test]
fn bad_config_files_name_the_key() {
    let dir = std::env::temp_dir().join(format!("pushpull-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("unknown.toml", "lisen = \"127.0.0.1:0\"\n", "lisen"),
        ("value.toml", "[transports.poll]\npoll_interval = 5\n", "poll_interval"),
        ("range.toml", "[broker.retention]\nmax_messages = 0\n", "max_messages"),
        ("syntax.toml", "[broker\n", "line 1"),
    ];
    for (name, content, says) in cases {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        let output = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&path)
            .output()
            .expect("run pushpull serve");
        assert_eq!(output.status.code(), Some(2), "{name}");
        assert!(text(&output.stderr).contains(says), "{name}: {}", text(&output.stderr));
    }
    let missing =
        Command::new(BIN).args(["serve", "--config"]).arg(dir.join("nope.toml")).output().unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("nope.toml"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(unix)]
#[test]
fn ctrl_c_shuts_down_gracefully() {
    let mut server = serve(&[]);
    let published = run(&["publish", "t", "x"], &server.url, None);
    assert!(published.status.success());
    let status = Command::new("kill").args(["-INT", &server.child.id().to_string()]).status();
    assert!(status.unwrap().success());
    let (tx, rx) = mpsc::channel();
    let mut child = std::mem::replace(&mut server.child, Command::new("true").spawn().unwrap());
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let exit = rx.recv_timeout(LIMIT).expect("the server stopped").unwrap();
    assert!(exit.success(), "exit status {exit:?}");
}

#[test]
fn bench_runs_side_by_side_and_stops_by_itself() {
    let compare = Command::new(BIN)
        .args(["bench", "compare", "--messages", "5", "--interval", "5ms", "--burst", "20"])
        .args(["--transports", "longpoll,sse"])
        .stderr(Stdio::inherit())
        .output()
        .expect("run pushpull bench");
    assert!(compare.status.success());
    let table = text(&compare.stdout);
    assert!(table.contains("| longpoll |") && table.contains("| sse |"), "{table}");

    let idle = Command::new(BIN)
        .args(["bench", "idle", "--transport", "sse", "--connections", "20"])
        .output()
        .expect("run pushpull bench");
    assert!(idle.status.success(), "{}", text(&idle.stderr));
    assert!(text(&idle.stdout).contains("| sse | 20 |"), "{}", text(&idle.stdout));
}

#[test]
fn bench_writes_json_for_scripts_and_svg_plots() {
    let dir = std::env::temp_dir().join(format!("pushpull-plots-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (latency, memory) = (dir.join("latency.svg"), dir.join("memory.svg"));
    let compare = Command::new(BIN)
        .args(["bench", "compare", "--messages", "5", "--interval", "5ms", "--burst", "20"])
        .args(["--transports", "ws,sse", "--json", "--plot"])
        .arg(&latency)
        .output()
        .expect("run pushpull bench");
    assert!(compare.status.success(), "{}", text(&compare.stderr));
    let json: serde_json::Value = serde_json::from_slice(&compare.stdout).expect("JSON");
    assert_eq!(json["bench"], "compare");
    let results = json["results"].as_array().unwrap();
    assert_eq!(results.iter().map(|r| r["transport"].clone()).collect::<Vec<_>>(), ["ws", "sse"]);
    for result in results {
        let p50 = result["latency_seconds"]["p50"].as_f64().unwrap();
        assert!(p50 > 0.0 && p50 < 5.0, "{result}");
        assert!(result["bytes_per_message"].as_f64().unwrap() > 10.0, "{result}");
    }
    let svg = std::fs::read_to_string(&latency).expect("the latency plot was written");
    assert!(svg.starts_with("<svg") && svg.contains("Latency distribution"), "{svg}");
    assert!(svg.contains("\nws\n") && svg.contains("\nsse\n"), "the legend names the transports");
    assert!(svg.matches("<polyline").count() >= 2, "one line per transport");

    let idle = Command::new(BIN)
        .args(["bench", "idle", "--transport", "sse,ws", "--connections", "20", "--json", "--plot"])
        .arg(&memory)
        .output()
        .expect("run pushpull bench");
    assert!(idle.status.success(), "{}", text(&idle.stderr));
    let json: serde_json::Value = serde_json::from_slice(&idle.stdout).expect("JSON");
    assert_eq!(json["results"][1]["transport"], "ws");
    assert!(json["results"][0]["bytes_per_connection"].as_f64().is_some(), "{json}");
    let fanout = Command::new(BIN)
        .args(["bench", "fanout", "--subscribers", "10", "--messages", "5", "--json"])
        .output()
        .expect("run pushpull bench");
    assert!(fanout.status.success(), "{}", text(&fanout.stderr));
    let json: serde_json::Value = serde_json::from_slice(&fanout.stdout).expect("JSON");
    assert_eq!(json["deliveries"], 50, "{json}");
    let many = Command::new(BIN)
        .args(["bench", "many", "--readers", "2", "--topics", "3", "--messages", "4", "--json"])
        .output()
        .expect("run pushpull bench");
    assert!(many.status.success(), "{}", text(&many.stderr));
    let json: serde_json::Value = serde_json::from_slice(&many.stdout).expect("JSON");
    let runs = json["runs"].as_array().unwrap();
    let connections: Vec<u64> = runs.iter().map(|r| r["connections"].as_u64().unwrap()).collect();
    assert_eq!(connections, [2, 2, 6], "{json}");
    assert!(
        runs.iter().all(|r| r["deliveries"] == 24 && r["bytes"].as_u64() > Some(24 * 40)),
        "{json}"
    );
    let svg = std::fs::read_to_string(&memory).expect("the memory plot was written");
    assert!(svg.contains("memory per idle connection") && svg.contains("<rect"), "{svg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_client_config_file_is_used_unless_a_flag_says_otherwise() {
    let server = serve(&[]);
    let dir = std::env::temp_dir().join(format!("pushpull-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("client.toml");
    let command = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .arg("--client-config")
            .arg(&file)
            .env_remove("PUSHPULL_URL")
            .env_remove("PUSHPULL_TRANSPORT")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    // The file's url and transport are used: no --url is given.
    std::fs::write(&file, format!("transport = \"sse\"\nurl = \"{}\"\n", server.url)).unwrap();
    let published = wait(command(&["publish", "notes", "from the file"]));
    assert!(published.status.success(), "{}", text(&published.stderr));
    let got = wait(command(&["subscribe", "notes", "--after", "beginning", "--count", "1"]));
    assert!(got.status.success(), "{}", text(&got.stderr));
    assert_eq!(text(&got.stdout), "from the file\n");

    // The file's transport is the one tried...
    std::fs::write(&file, format!("transport = \"carrier-pigeon\"\nurl = \"{}\"\n", server.url))
        .unwrap();
    let refused = wait(command(&["fetch", "notes"]));
    assert!(!refused.status.success());
    assert!(text(&refused.stderr).contains("carrier-pigeon"), "{}", text(&refused.stderr));
    // ...unless a flag says otherwise.
    let fetched = wait(command(&["fetch", "notes", "--transport", "poll"]));
    assert!(fetched.status.success(), "{}", text(&fetched.stderr));
    assert_eq!(text(&fetched.stdout), "from the file\n");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_quiet_shows_polling_pays_requests_on_an_idle_topic_and_push_does_not() {
    let quiet = Command::new(BIN)
        .args(["bench", "quiet", "--transports", "poll,sse", "--seconds", "3", "--json"])
        .output()
        .expect("run pushpull bench");
    assert!(quiet.status.success(), "{}", text(&quiet.stderr));
    let json: serde_json::Value = serde_json::from_slice(&quiet.stdout).expect("JSON");
    let (poll, sse) = (&json["results"][0], &json["results"][1]);
    assert_eq!(
        (poll["transport"].as_str(), sse["transport"].as_str()),
        (Some("poll"), Some("sse"))
    );
    // The server hints one poll a second: about three in three seconds, 3,600 an hour.
    let polls = poll["requests_per_hour"].as_f64().unwrap();
    assert!((1200.0..=6000.0).contains(&polls), "{json}");
    assert!(poll["bytes_up_per_hour"].as_f64().unwrap() > 0.0, "{json}");
    assert_eq!(sse["requests_per_hour"].as_f64(), Some(0.0), "{json}");
}

#[test]
fn bench_push_or_pull_measures_each_transport_idle_and_loaded_and_draws_the_charts() {
    let dir = std::env::temp_dir().join(format!("pushpull-push-or-pull-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = Command::new(BIN)
        .args(["bench", "push-or-pull", "--clients", "20", "--rates", "5", "--seconds", "2"])
        .args(["--idle-seconds", "3", "--core", "0", "--plot"])
        .arg(&dir)
        .output()
        .expect("run pushpull bench");
    assert!(run.status.success(), "{}", text(&run.stderr));
    let table = text(&run.stdout);
    // Per transport: the idle run, then the run at 5 messages/s.
    let rows = |name: &str| -> Vec<Vec<String>> {
        table
            .lines()
            .filter(|line| line.starts_with(&format!("| {name}")))
            .map(|line| line.split('|').map(|cell| cell.trim().to_owned()).collect())
            .collect()
    };
    let kb = |cell: &str| cell.trim_end_matches(" KB").parse::<f64>().unwrap();
    for name in ["short polling", "long polling", "SSE", "WebSocket"] {
        let rows = rows(name);
        assert_eq!(rows.len(), 2, "{table}");
        assert_eq!(rows[0][2], "0", "the first run is idle: {table}");
        assert!(rows[1][5].starts_with("100.00 %"), "every message delivered: {table}");
        assert!(kb(&rows[1][4]) > kb(&rows[0][4]), "messages cost bytes: {table}");
    }
    // Idle, short polling asks every second; an event stream says nothing for 15 s.
    let (polling, sse) = (rows("short polling"), rows("SSE"));
    assert!(kb(&polling[0][4]) > 100.0 && kb(&sse[0][4]) < kb(&polling[0][4]), "{table}");
    assert!(table.contains("Modelled server CPU per client-hour"), "{table}");
    for chart in ["push-or-pull-cpu-20.svg", "push-or-pull-bytes-20.svg"] {
        let svg = std::fs::read_to_string(dir.join(chart)).expect("the chart was written");
        assert!(svg.matches("<polyline").count() >= 4, "a line per transport: {chart}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The README's own `PUSHPULL_TOKEN=… pushpull subscribe` leaves the variable in a shell; the
/// server used to take it, and every other `PUSHPULL_*` a client or script sets, for a config
/// key and refuse to start ("unknown field `token`").
#[test]
fn the_clients_variables_do_not_stop_the_server() {
    let env = [
        ("PUSHPULL_TOKEN", "x"),
        ("PUSHPULL_TRANSPORT", "sse"),
        ("PUSHPULL_CA_FILE", "/nowhere/ca.pem"),
        ("PUSHPULL_CONFIG", "/nowhere/client.toml"),
        ("PUSHPULL_BIN", BIN),
    ];
    let (child, url) = support::serve(&[], &env);
    let server = Served { child, url };
    let published = run(&["publish", "t", "started", "--transport", "poll"], &server.url, None);
    assert!(published.status.success(), "{}", text(&published.stderr));
}

/// Runs `pushpull bench peers` with `args` (split at spaces; Nchan's nginx on the path), which
/// must succeed; its table.
fn bench_peers(args: &str) -> String {
    let run = Command::new(BIN)
        .args(["bench", "peers"])
        .args(args.split_whitespace())
        .env("PATH", format!("{}:/usr/sbin", std::env::var("PATH").unwrap_or_default()))
        .output()
        .expect("run pushpull bench");
    assert!(run.status.success(), "{}", text(&run.stderr));
    text(&run.stdout)
}

/// The cells of the row of `table` that starts with `start` and names `measure`.
fn table_row(table: &str, start: &str, measure: &str) -> Vec<String> {
    let line = table
        .lines()
        .find(|line| line.starts_with(start) && line.contains(measure))
        .unwrap_or_else(|| panic!("no {measure} row starting {start}: {table}"));
    line.split('|').map(|cell| cell.trim().to_owned()).collect()
}

/// More connections than one process may hold: several server processes of each kind on one
/// port (pushpull on a Redis of the bench's own, Nchan as workers of one master), the
/// subscribers opened by several load generator processes.
#[test]
fn bench_peers_spreads_connections_over_server_and_generator_processes() {
    let table = bench_peers(
        "--connections 300 --processes 2 --rounds 1 --messages 2 --core 0 --only SSE \
         --per-generator 120",
    );
    let row = |measure: &str| table_row(&table, "| SSE | 300 |", measure);
    // Both servers: every message to every subscriber of the three generators.
    let delivered = row("delivered / expected");
    assert!(delivered[4].starts_with("100.00 %"), "pushpull: {table}");
    assert!(delivered[5].starts_with("100.00 %"), "Nchan: {table}");
    let memory = row("PSS of every server process");
    let kb = |cell: &str| cell.split(' ').next().unwrap().parse::<f64>().unwrap();
    assert!(kb(&memory[4]) > 0.5 && kb(&memory[5]) > 0.5, "memory per connection: {table}");
    let p99 = row("fan-out latency p99");
    assert!(kb(&p99[4]) > 0.0 && kb(&p99[5]) > 0.0, "latencies came back: {table}");
}

/// Connections on one process each: the table says how busy the load generator was, and gives
/// no latency ratio for a run whose generator was saturated (its latencies measure it).
#[test]
fn bench_peers_scale_reports_the_load_generators_share_and_flags_it_saturated() {
    let table = bench_peers("--connections 100 --rounds 1 --messages 2 --core 0 --only SSE");
    let row = |measure: &str| table_row(&table, "| SSE | 100 |", measure);
    let share = |cell: &str| cell.split(' ').next().unwrap().parse::<f64>().unwrap();
    let generator = row("load generator CPU");
    let (ours, theirs) = (share(&generator[4]), share(&generator[5]));
    assert!((0.0..=100.0).contains(&ours) && (0.0..=100.0).contains(&theirs), "{table}");
    // One round each: the medians are the runs.
    let saturated = ours >= 90.0 || theirs >= 90.0;
    let p99 = row("fan-out latency p99");
    assert_eq!(p99[6].contains("load generator saturated"), saturated, "{table}");
    assert!(row("server CPU per delivery")[6].ends_with('×'), "{table}");
}

#[test]
fn bench_peers_grows_topics_with_one_subscriber_each() {
    let table = bench_peers(
        "--topics 1,40 --processes 2 --rounds 1 --rate 200 --seconds 1 --core 0 \
         --only WebSocket --per-generator 15",
    );
    for topics in ["1", "40"] {
        let start = format!("| WebSocket | {topics} |");
        let row = |measure: &str| table_row(&table, &start, measure);
        // Each message reached its topic's one subscriber, no other: a subscriber of the
        // wrong topic would make it more than 100 %, a lost one less.
        let delivered = row("delivered / expected");
        assert!(delivered[4].starts_with("100.00 %"), "pushpull, {topics} topics: {table}");
        assert!(delivered[5].starts_with("100.00 %"), "Nchan, {topics} topics: {table}");
        // Memory once the topics have messages is measured for both (at one or forty
        // connections, what a server's pages grew by may be nothing at all).
        let loaded = row("once every topic has messages");
        let kb = |cell: &str| cell.split(' ').next().unwrap().parse::<f64>().ok();
        assert!(kb(&loaded[4]).is_some() && kb(&loaded[5]).is_some(), "memory: {table}");
    }
}

#[test]
fn bench_peers_refuses_a_count_of_nothing() {
    let run = Command::new(BIN)
        .args(["bench", "peers", "--topics", "0,10", "--rounds", "1"])
        .output()
        .expect("run pushpull bench");
    assert_eq!(run.status.code(), Some(2), "{}", text(&run.stderr));
    assert!(text(&run.stderr).contains("a count of 0 measures nothing"), "{}", text(&run.stderr));
}

#[test]
fn bench_peers_counts_every_publish_past_a_keep_alive_connections_request_limit() {
    // 10,000 publishes over the publisher's 8 keep-alive connections: nginx closes one after
    // 1,000 requests unless told otherwise, and a publish that failed was once counted as made.
    let run = Command::new(BIN)
        .args(["bench", "peers", "--topics", "1", "--rate", "10000", "--seconds", "1"])
        .args(["--rounds", "1", "--core", "0", "--only", "SSE"])
        .env("PATH", format!("{}:/usr/sbin", std::env::var("PATH").unwrap_or_default()))
        .output()
        .expect("run pushpull bench");
    assert!(run.status.success(), "{}", text(&run.stderr));
    let table = text(&run.stdout);
    let cells = table_row(&table, "| SSE | 1 |", "delivered / expected");
    assert!(cells[4].starts_with("100.00 %"), "pushpull: {table}");
    assert!(cells[5].starts_with("100.00 %"), "Nchan: {table}");
    assert!(!text(&run.stderr).contains("publishes failed"), "{}", text(&run.stderr));
}
