//! Every event during a request carries the spans of its connection (peer) and request
//! (method, path, transport, topic, peer).

use std::io::Write;
use std::sync::{Arc, Mutex};

use http::{Method, StatusCode};
use pushpull_http::{Route, Router};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Collects what the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

// A current-thread runtime: the server's tasks run on this thread, under this subscriber.
#[tokio::test(flavor = "current_thread")]
async fn events_in_a_request_carry_its_transport_topic_and_peer() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(captured.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    // The span names the transport the route was mounted for.
    let router = Router::new().with([Route::new(
        Method::GET,
        "/v1/topics/{topic}/messages",
        |_, _| async {
            tracing::info!("handling the page");
            Ok(pushpull_http::json(StatusCode::OK, b"{}".to_vec()))
        },
    )
    .for_transport("longpoll")]);
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let server = pushpull_http::spawn(listener, router, Default::default()).unwrap();
    let mut socket = TcpStream::connect(server.local_addr()).await.unwrap();
    let client = socket.local_addr().unwrap();
    socket
        .write_all(
            b"GET /v1/topics/news/messages?after=latest&wait=1 HTTP/1.1\r\nHost: x\r\n\
              Connection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut reply = Vec::new();
    socket.read_to_end(&mut reply).await.unwrap();
    assert!(reply.starts_with(b"HTTP/1.1 200"));

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|line| line.contains("handling the page"))
        .unwrap_or_else(|| panic!("the handler's event was not logged: {text}"));
    assert!(line.contains(&format!("connection{{peer={client}}}")), "{line}");
    assert!(
        line.contains(&format!(
            "request{{method=GET path=\"/v1/topics/news/messages\" transport=\"longpoll\" \
             topic=\"news\" peer=\"{client}\"}}"
        )),
        "{line}"
    );
}
