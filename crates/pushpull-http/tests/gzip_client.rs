//! What the page client makes of a server's compressed answers, from a server over 127.0.0.1
//! that answers as told: it asks for gzip (unless told not to), and a body that is not the gzip
//! it claims, a coding it did not ask for, or a small body that inflates past its limit is a
//! clear error, never a page.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use pushpull_core::{Cursor, ErrorKind, Topic};
use pushpull_http::{HttpClient, HttpClientConfig, fetch_page};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A server that answers every request with `headers` and `body`, and keeps each request's head.
async fn answering(headers: &'static str, body: Vec<u8>) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let kept = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (kept, body) = (kept.clone(), body.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                kept.lock().unwrap().push(String::from_utf8_lossy(&head).to_ascii_lowercase());
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{headers}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.write_all(&body).await;
            });
        }
    });
    (addr, heads)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

async fn fetch_from(addr: SocketAddr, config: HttpClientConfig) -> pushpull_core::Error {
    let client = HttpClient::new(&format!("http://{addr}"), "poll", config).unwrap();
    let topic = Topic::new("t").unwrap();
    fetch_page(&client, &topic, Cursor::Beginning, 10).await.expect_err("not a page")
}

#[tokio::test]
async fn a_page_that_is_not_the_gzip_it_claims_is_a_protocol_error() {
    let (addr, heads) = answering("Content-Encoding: gzip", b"{\"messages\":[]}".to_vec()).await;
    let error = fetch_from(addr, HttpClientConfig::default()).await;
    assert_eq!(error.kind(), ErrorKind::Protocol, "{error}");
    assert!(error.to_string().contains("not the gzip it says it is"), "{error}");
    assert!(heads.lock().unwrap()[0].contains("accept-encoding: gzip"), "it asked for gzip");

    // Cut off: the first half of a real gzip page.
    let page = gzip(br#"{"messages":[],"next":"beginning"}"#);
    let (addr, _) = answering("Content-Encoding: gzip", page[..page.len() / 2].to_vec()).await;
    let error = fetch_from(addr, HttpClientConfig::default()).await;
    assert_eq!(error.kind(), ErrorKind::Protocol, "{error}");
}

#[tokio::test]
async fn a_coding_the_client_did_not_ask_for_is_refused_by_name() {
    let (addr, heads) = answering("Content-Encoding: br", b"\x0b\x02\x80{}\x03".to_vec()).await;
    let mut config = HttpClientConfig::default();
    config.accept_gzip = false;
    let error = fetch_from(addr, config).await;
    assert_eq!(error.kind(), ErrorKind::Protocol, "{error}");
    assert!(error.to_string().contains("encoded \"br\""), "{error}");
    assert!(!heads.lock().unwrap()[0].contains("accept-encoding"), "told not to ask");
}

#[tokio::test]
async fn a_small_body_that_inflates_past_the_limit_is_too_large() {
    // 8 MiB of spaces inside a JSON string: a few KiB compressed.
    let mut page = b"{\"messages\":[],\"next\":\"beginning\",\"pad\":\"".to_vec();
    page.extend(std::iter::repeat_n(b' ', 8 << 20));
    page.extend(b"\"}");
    let bomb = gzip(&page);
    assert!(bomb.len() < 64 << 10, "{} bytes", bomb.len());
    let (addr, _) = answering("Content-Encoding: gzip", bomb).await;
    let mut config = HttpClientConfig::default();
    config.max_response_bytes = 1 << 20;
    let error = fetch_from(addr, config).await;
    assert_eq!(error.kind(), ErrorKind::TooLarge, "{error}");
    assert!(error.to_string().contains("over the limit of 1048576 bytes"), "{error}");
}
