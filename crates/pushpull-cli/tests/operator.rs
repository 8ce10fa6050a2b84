//! The operator's commands, run as an operator would: `config check`, `config show`, `token`
//! (its tokens accepted by a server with `[auth]`), and JSON logs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_pushpull");

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A directory of the test's own, removed when the test ends.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("pushpull-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pushpull(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("PUSHPULL_LOG_FORMAT")
        .output()
        .expect("run pushpull")
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn config_check_reports_every_error_with_its_key() {
    let dir = Scratch::new("config-check");
    let bad = dir.file(
        "bad.toml",
        "listen = \"nowhere\"\n[http]\nmax_connections = \"lots\"\n\
         [transports.sse]\nretry = 5\n[transports.wss]\n[broker]\nkind = \"memory\"\nurl = \"redis://x\"\n",
    );
    let output = pushpull(&["config", "check", path(&bad)], &[]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    for key in
        ["listen", "http.max_connections", "transports.sse.retry", "transports.wss", "broker.url"]
    {
        assert!(stderr.contains(key), "{key} is not named:\n{stderr}");
    }
    assert!(stderr.contains("5 errors"), "{stderr}");

    let good =
        dir.file("good.toml", "listen = \"127.0.0.1:7171\"\n[transports.sse]\nretry = \"2s\"\n");
    let output = pushpull(&["config", "check", path(&good)], &[]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(text(&output.stdout).ends_with(": ok\n"));

    // The environment is checked with the file, as `serve` would read them.
    let output =
        pushpull(&["config", "check", path(&good)], &[("PUSHPULL_HTTP__MAX_CONNECTIONS", "x")]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("max_connections"));

    let output = pushpull(&["config", "check", path(&dir.0.join("missing.toml"))], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("missing.toml"));
}

#[test]
fn config_show_says_where_each_value_came_from_and_masks_secrets() {
    let dir = Scratch::new("config-show");
    let file = dir.file(
        "pushpull.toml",
        "[broker]\nkind = \"redis\"\nurl = \"redis://:hunter2@127.0.0.1:6379\"\n\
         [transports.ws]\nping_interval = \"20s\"\n",
    );
    let output = pushpull(
        &["config", "show", "--config", path(&file)],
        &[("PUSHPULL_HTTP__MAX_CONNECTIONS", "5000"), ("PUSHPULL_TOKEN", "not a setting")],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let shown = text(&output.stdout);
    let line = |key: &str| {
        shown
            .lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in:\n{shown}"))
            .to_owned()
    };
    assert!(line("http.max_connections").ends_with("= 5000  # PUSHPULL_HTTP__MAX_CONNECTIONS"));
    assert!(line("transports.ws.ping_interval").ends_with(&format!("\"20s\"  # {}", path(&file))));
    assert!(line("listen").ends_with("\"127.0.0.1:7070\"  # default"));
    assert!(
        line("broker.url").contains("redis://:********@127.0.0.1:6379"),
        "{}",
        line("broker.url")
    );
    assert!(!shown.contains("hunter2"));
    // What it prints is a config `serve` reads back.
    let shown_file = dir.file("shown.toml", &shown);
    let output = pushpull(&["config", "check", path(&shown_file)], &[]);
    assert!(output.status.success(), "{}", text(&output.stderr));
}

#[test]
fn a_minted_token_is_accepted_for_what_it_grants_only() {
    let dir = Scratch::new("token");
    let secret = dir.file("jwt-secret", "a development secret of at least thirty-two bytes\n");
    let config = dir.file(
        "server.toml",
        &format!(
            "[[auth.keys]]\nkid = \"dev\"\nalgorithm = \"HS256\"\nsecret_file = \"{}\"\n",
            path(&secret)
        ),
    );
    let minted = pushpull(
        &["token", "--secret-file", path(&secret), "--kid", "dev", "--sub", "ops"]
            .into_iter()
            .chain(["--subscribe", "orders:*", "--publish", "orders:*", "--ttl", "10m"])
            .collect::<Vec<_>>(),
        &[],
    );
    assert!(minted.status.success(), "{}", text(&minted.stderr));
    let token = text(&minted.stdout).trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");

    let (mut child, url) = support::serve(&["--config", path(&config)], &[]);
    let client = |args: &[&str], token: Option<&str>| {
        let mut command = Command::new(BIN);
        command.args(args).args(["--url", &url, "--transport", "poll"]);
        command.env_remove("PUSHPULL_TOKEN");
        if let Some(token) = token {
            command.env("PUSHPULL_TOKEN", token);
        }
        command.output().unwrap()
    };
    let published = client(&["publish", "orders:42", "shipped"], Some(&token));
    let fetched = client(&["fetch", "orders:42"], Some(&token));
    let elsewhere = client(&["publish", "billing", "x"], Some(&token));
    let anonymous = client(&["fetch", "orders:42"], None);
    let _ = child.kill();
    let _ = child.wait();
    assert!(published.status.success(), "{}", text(&published.stderr));
    assert_eq!(text(&fetched.stdout), "shipped\n", "{}", text(&fetched.stderr));
    assert!(!elsewhere.status.success());
    assert!(text(&elsewhere.stderr).contains("403"), "{}", text(&elsewhere.stderr));
    assert!(!anonymous.status.success());
    assert!(text(&anonymous.stderr).contains("401"), "{}", text(&anonymous.stderr));

    // Mistakes are named.
    let nope = dir.0.join("nope");
    let short = dir.file("short-secret", "too short\n");
    let cases: [(&[&str], &str); 5] = [
        (&["token", "--secret-file", path(&short)], "under 32 bytes"),
        (&["token", "--algorithm", "HS999"], "--algorithm HS999"),
        (&["token"], "--secret-file"),
        (&["token", "--algorithm", "RS256", "--secret-file", path(&secret)], "--key-file"),
        (&["token", "--secret-file", path(&nope)], "nope"),
    ];
    for (args, says) in cases {
        let output = pushpull(args, &[]);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(text(&output.stderr).contains(says), "{args:?}: {}", text(&output.stderr));
    }
}

#[cfg(unix)]
#[test]
fn json_logs_are_one_object_a_line() {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("PUSHPULL_LOG_FORMAT", "json")
        .env_remove("PUSHPULL_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.contains("listening on http://127.0.0.1:"), "{first}");
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let stderr = text(&output.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["level"] == "INFO"
            && l["fields"]["message"].as_str().is_some_and(|m| m.starts_with("shutting down"))),
        "{stderr}"
    );
    assert!(lines.iter().all(|l| l["timestamp"].is_string() && l["target"].is_string()));
}
