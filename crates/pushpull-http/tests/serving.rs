//! Serving over TLS and the connection limits, over real sockets on 127.0.0.1.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use pushpull_chaos::TestCa;
use pushpull_http::tls::ClientStream;
use pushpull_http::{Route, Router, RunningServer, ServeConfig, TlsFiles};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(20);

fn hello() -> Router {
    Router::new().with([Route::new(Method::GET, "/hello", |_, _| async {
        Ok(pushpull_http::json(StatusCode::OK, b"{\"hello\":true}".to_vec()))
    })])
}

async fn serve(config: ServeConfig) -> RunningServer {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    pushpull_http::spawn(listener, hello(), config).unwrap()
}

fn tls(ca: &TestCa) -> ServeConfig {
    let files = TlsFiles::new(ca.cert_file(), ca.key_file());
    {
        let mut built = ServeConfig::default();
        built.tls = Some(files.acceptor().unwrap());
        built
    }
}

#[tokio::test]
async fn https_speaks_http2_to_clients_that_offer_it_and_http1_to_the_rest() {
    let ca = TestCa::new().unwrap();
    let server = serve(tls(&ca)).await;
    let roots = pushpull_http::tls::client_config(Some(&ca.ca_file())).unwrap();
    let addr = server.local_addr();

    // ALPN h2: HTTP/2 on the one connection.
    const BOTH: &[&[u8]] = &[b"h2", b"http/1.1"];
    let roots = pushpull_http::tls::with_alpn(&roots, BOTH);
    let stream = ClientStream::connect(addr, "localhost", Some(&roots)).await.unwrap();
    let ClientStream::Tls(tls) = &stream else { panic!("a TLS stream") };
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(format!("https://localhost:{}/hello", addr.port()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "{\"hello\":true}");

    // The HTTP client: https with the CA file, HTTP/1.1.
    let config = {
        let mut built = pushpull_http::HttpClientConfig::default();
        built.ca_file = Some(ca.ca_file());
        built
    };
    let client =
        pushpull_http::HttpClient::new(&format!("https://localhost:{}", addr.port()), "t", config)
            .unwrap();
    let request = client.request(Method::GET, "/hello").body(Full::new(Bytes::new())).unwrap();
    let response = client.send(request, LIMIT).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // Without the CA, the certificate is not trusted: a connection error that says so.
    let untrusted = pushpull_http::HttpClient::new(
        &format!("https://localhost:{}", addr.port()),
        "t",
        pushpull_http::HttpClientConfig::default(),
    )
    .unwrap();
    let request = untrusted.request(Method::GET, "/hello").body(Full::new(Bytes::new())).unwrap();
    let error = untrusted.send(request, LIMIT).await.unwrap_err();
    assert!(error.to_string().to_lowercase().contains("certificate"), "{error}");
}

#[tokio::test]
async fn a_tls_client_that_handshakes_and_says_nothing_is_cut_off() {
    let ca = TestCa::new().unwrap();
    let config = {
        let mut built = tls(&ca);
        built.header_read_timeout = Duration::from_millis(500);
        built
    };
    let server = serve(config).await;
    const H2: &[&[u8]] = &[b"h2"];
    let roots = pushpull_http::tls::client_config(Some(&ca.ca_file())).unwrap();
    let roots = pushpull_http::tls::with_alpn(&roots, H2);
    let started = tokio::time::Instant::now();
    let mut stream =
        ClientStream::connect(server.local_addr(), "localhost", Some(&roots)).await.unwrap();
    let mut buf = [0u8; 64];
    // The server's TLS session ticket may arrive first; then the connection ends.
    loop {
        match tokio::time::timeout(LIMIT, stream.read(&mut buf)).await.expect("cut in time") {
            Ok(0) | Err(_) => break,
            Ok(_) => continue,
        }
    }
    assert!(started.elapsed() < Duration::from_secs(5), "cut after {:?}", started.elapsed());
    assert_eq!(server.stats().open_connections(), 0);

    // Nor does a plain-text client that never starts its TLS handshake hold a connection.
    let mut plain = TcpStream::connect(server.local_addr()).await.unwrap();
    let read = tokio::time::timeout(LIMIT, plain.read(&mut buf)).await.expect("cut in time");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

/// Opens an HTTP/1.1 keep-alive connection and makes one request on it.
async fn keep_alive(addr: std::net::SocketAddr) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(LIMIT, stream.read(&mut buf)).await.unwrap().unwrap();
    (stream, String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[tokio::test]
async fn one_address_gets_its_share_of_connections_and_429_beyond_it() {
    let config = {
        let mut built = ServeConfig::default();
        built.max_connections_per_address = 3;
        built
    };
    let server = serve(config).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let (stream, answer) = keep_alive(server.local_addr()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        held.push(stream);
    }
    let (_, answer) = keep_alive(server.local_addr()).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("rate_limited") && answer.to_lowercase().contains("retry-after"));
    assert_eq!(server.stats().refused_connections(), 1);
    // Another address is served meanwhile.
    assert_eq!(request_from(OTHER, server.local_addr()).await, "HTTP/1.1 200 OK");
    // Closing one makes room again.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, answer) = keep_alive(server.local_addr()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn at_the_connection_limit_new_clients_wait_until_one_closes() {
    let config = {
        let mut built = ServeConfig::default();
        built.max_connections = 2;
        built
    };
    let server = Arc::new(serve(config).await);
    let (first, _) = keep_alive(server.local_addr()).await;
    let (_second, _) = keep_alive(server.local_addr()).await;
    // The third is not served while two are open...
    let waiting = tokio::spawn({
        let addr = server.local_addr();
        async move { keep_alive(addr).await.1 }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "served beyond the limit");
    assert_eq!(server.stats().open_connections(), 2);
    // ...and is as soon as one closes.
    drop(first);
    let answer = tokio::time::timeout(LIMIT, waiting).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// A writer into a shared buffer, for capturing log lines.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_access_log_has_a_line_per_request_and_never_the_query() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // The test runtime has one thread, so the server's tasks log into this subscriber.
    let _default = tracing::subscriber::set_default(subscriber);
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let server =
        pushpull_http::spawn(listener, hello().with_access_log(true), ServeConfig::default())
            .unwrap();
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    stream
        .write_all(
            b"GET /hello?access_token=s3cr3t HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.unwrap();
    assert!(reply.starts_with(b"HTTP/1.1 200"));
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = log.lines().find(|l| l.contains("pushpull::access")).expect("an access line");
    assert!(line.contains("method=GET") && line.contains("path=\"/hello\""), "{line}");
    assert!(line.contains("status=200") && line.contains("peer=\"127.0.0.1:"), "{line}");
    assert!(!log.contains("s3cr3t"), "a token in the query is never logged: {log}");
}

/// A route whose response never ends: what an event stream holds.
fn holding() -> Router {
    hello().with([Route::new(Method::GET, "/hold", |_, _| async {
        let body = http_body_util::StreamBody::new(futures::stream::pending::<
            Result<http_body::Frame<Bytes>, std::convert::Infallible>,
        >());
        let mut response = http::Response::new(http_body_util::BodyExt::boxed_unsync(body));
        *response.status_mut() = StatusCode::OK;
        Ok(response)
    })])
}

/// A connection from `source` (another loopback address stands for another client).
async fn connect_from(source: std::net::IpAddr, addr: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::new(source, 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

/// One request from `source` on a connection of its own: the status line of the answer.
async fn request_from(source: std::net::IpAddr, addr: std::net::SocketAddr) -> String {
    let mut stream = connect_from(source, addr).await;
    stream.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(LIMIT, stream.read_to_end(&mut answer)).await.unwrap().unwrap();
    String::from_utf8_lossy(&answer).lines().next().unwrap_or("").to_owned()
}

const OTHER: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
const LOOPBACK: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

#[tokio::test]
async fn silent_connections_over_the_address_limit_are_closed_within_a_second() {
    // The head timeout is long: only the refusal deadline can close the extra connections.
    let config = {
        let mut built = ServeConfig::default();
        built.max_connections = 60;
        built.max_connections_per_address = 20;
        built.header_read_timeout = Duration::from_secs(60);
        built
    };
    let server = serve(config).await;
    let addr = server.local_addr();
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(connect_from(LOOPBACK, addr).await);
    }
    // Twice the limit again, sending nothing: each is closed by the server, soon.
    let started = std::time::Instant::now();
    let mut extra = Vec::new();
    for _ in 0..40 {
        extra.push(connect_from(LOOPBACK, addr).await);
    }
    for mut stream in extra {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(LIMIT, stream.read(&mut buf)).await.expect("closed");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    // Generous for a loaded machine, and far below the 60 s head timeout.
    assert!(started.elapsed() < Duration::from_secs(10), "closed after {:?}", started.elapsed());
    assert!(server.stats().refused_connections() >= 40);
    // Another address is served throughout, the silent ones still open.
    assert_eq!(request_from(OTHER, addr).await, "HTTP/1.1 200 OK");
    assert_eq!(server.stats().open_connections(), 20);
    drop(silent);
}

#[tokio::test]
async fn a_request_head_larger_than_the_limit_is_refused_before_it_is_whole() {
    let server = serve(ServeConfig::default()).await;
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    stream.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // Headers of 1 KiB each, slowly, never ending the head: the server answers 431 and closes
    // before a 390 KiB head could be buffered.
    let header = format!("X-Filler: {}\r\n", "f".repeat(1024));
    let mut sent = 0;
    let mut answer = Vec::new();
    while sent < 390 * 1024 {
        if stream.write_all(header.as_bytes()).await.is_err() {
            break;
        }
        sent += header.len();
        let mut buf = [0u8; 256];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(5), stream.read(&mut buf)).await
        {
            answer.extend_from_slice(&buf[..n]);
            break;
        }
    }
    let _ = tokio::time::timeout(LIMIT, stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(sent <= 64 * 1024, "the server took {sent} bytes of head");
}

#[tokio::test]
async fn http2_streams_count_against_the_address_limit() {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let config = {
        let mut built = ServeConfig::default();
        built.max_connections_per_address = 10;
        built
    };
    let server = pushpull_http::spawn(listener, holding(), config).unwrap();
    let addr = server.local_addr();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(TcpStream::connect(addr).await.unwrap()),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let open = |path: &'static str| {
        let mut sender = sender.clone();
        async move {
            let request = http::Request::get(format!("http://{addr}{path}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            sender.send_request(request).await.unwrap()
        }
    };
    // The connection is one, and each held stream one more: nine fit.
    let mut held = Vec::new();
    for _ in 0..9 {
        let response = tokio::time::timeout(LIMIT, open("/hold")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        held.push(response);
    }
    assert_eq!(server.stats().open_streams(), 9);
    let response = tokio::time::timeout(LIMIT, open("/hold")).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("rate_limited"));
    // Another address is served meanwhile; and a stream that ends makes room.
    assert_eq!(request_from(OTHER, addr).await, "HTTP/1.1 200 OK");
    drop(held.pop());
    let deadline = std::time::Instant::now() + LIMIT;
    while server.stats().open_streams() > 8 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let response = tokio::time::timeout(LIMIT, open("/hello")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}
