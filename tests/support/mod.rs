//! Helpers for end-to-end tests: a server on 127.0.0.1 and raw HTTP/1.1 over a socket.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use pushpull::{RunningServer, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Fails a test that hangs, instead of hanging CI.
pub const LIMIT: Duration = Duration::from_secs(20);

pub async fn server(config: ServerConfig) -> RunningServer {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
    pushpull::serve_on(listener, &config).expect("serve")
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The `kind` of a JSON error body.
    pub fn error_kind(&self) -> String {
        self.json()["error"]["kind"].as_str().expect("an error body").to_owned()
    }
}

/// Sends `head` (request line and headers, without the blank line) and `body`, with
/// `Connection: close`, and reads the whole reply.
pub async fn raw(addr: SocketAddr, head: &str, body: &[u8]) -> Reply {
    tokio::time::timeout(LIMIT, async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request = format!("{head}\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write head");
        stream.write_all(body).await.expect("write body");
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).await.expect("read reply");
        parse(&bytes)
    })
    .await
    .expect("the server answered in time")
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    raw(addr, &format!("GET {path} HTTP/1.1"), b"").await
}

pub async fn post(addr: SocketAddr, path: &str, headers: &str, body: &[u8]) -> Reply {
    let mut head = format!("POST {path} HTTP/1.1\r\nContent-Length: {}", body.len());
    if !headers.is_empty() {
        head.push_str("\r\n");
        head.push_str(headers);
    }
    raw(addr, &head, body).await
}

pub fn parse(bytes: &[u8]) -> Reply {
    let split = bytes.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete head");
    let head = std::str::from_utf8(&bytes[..split]).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = bytes[split + 4..].to_vec();
    if headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v == "chunked") {
        body = dechunk(&body);
    }
    Reply { status, headers, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16)
                .expect("hex size");
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// The JSON lines a third-party client script prints.
pub type ClientLines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>;

/// The next line the script printed that `wanted` accepts, skipping the others.
pub async fn next_line(
    lines: &mut ClientLines,
    what: &str,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    loop {
        let line = tokio::time::timeout(LIMIT, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("the client reported no {what} in time"))
            .expect("read the client's output")
            .expect("the client is still running");
        let line: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
        if wanted(&line) {
            return line;
        }
    }
}

/// Runs `tests/py/SCRIPT` with `args` on the PyPI packages `./scripts/test` installs beside the
/// tests (checking `package` is there); the process and its output lines.
pub fn python(script: &str, package: &str, args: &[&str]) -> (tokio::process::Child, ClientLines) {
    use std::path::Path;
    use tokio::io::AsyncBufReadExt;

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let deps = root.join("tests/py/.deps");
    assert!(
        deps.join(package).exists(),
        "the PyPI package {package} is missing: run ./scripts/test, which installs it"
    );
    let mut child = tokio::process::Command::new("python3")
        .arg(root.join("tests/py").join(script))
        .args(args)
        .env("PYTHONPATH", &deps)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 is installed");
    let lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

/// A JWT of `claims` signed with HS256 under `secret`, with the key id `k1`.
pub fn hs256(secret: &str, claims: &serde_json::Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("k1".into());
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).expect("an HS256 key");
    jsonwebtoken::encode(&header, claims, &key).expect("the claims encode")
}

/// Waits for `subscription` to end with an error of `kind` whose text holds `says`.
pub async fn ends_with(
    what: &str,
    subscription: &mut pushpull::Subscription,
    kind: pushpull::ErrorKind,
    says: &str,
) {
    use futures::StreamExt;
    let end = tokio::time::timeout(LIMIT, subscription.next()).await;
    match end.unwrap_or_else(|_| panic!("{what}: still open")) {
        Some(Err(error)) => {
            assert_eq!(error.kind(), kind, "{what}: {error}");
            assert!(error.to_string().contains(says), "{what}: {error}");
        }
        other => panic!("{what}: ended with {other:?}, not the error"),
    }
}
