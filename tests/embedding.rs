//! A router mounted in a host application has no side effects: it starts no thread, installs
//! no metrics recorder, serves neither `/demo` nor `/metrics`, and records pushpull's metrics
//! into the recorder the host installed. One test in its own process, since a recorder is
//! process-wide.

use std::sync::Arc;

use pushpull::{Broker, MemoryBroker, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The threads of this process now.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map(|tasks| tasks.count()).unwrap_or(0)
}

/// A raw request; the answer's head and body as text.
async fn ask(addr: std::net::SocketAddr, method: &str, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

#[tokio::test(flavor = "current_thread")]
async fn a_router_with_defaults_starts_no_thread_installs_nothing_and_serves_no_demo() {
    let before = threads();
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let router = pushpull::router(broker.clone(), &ServerConfig::default()).unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let server = pushpull_http_spawn(listener, router);
    let addr = server.local_addr();

    assert!(ask(addr, "POST", "/v1/topics/embedded").await.starts_with("HTTP/1.1 201"));
    assert!(ask(addr, "GET", "/v1/health").await.starts_with("HTTP/1.1 200"));
    let demo = ask(addr, "GET", "/demo").await;
    assert!(demo.starts_with("HTTP/1.1 404"), "the demo is served: {demo}");
    let script = ask(addr, "GET", "/pushpull/pushpull.js").await;
    assert!(script.starts_with("HTTP/1.1 404"), "the browser client is served: {script}");
    let metrics = ask(addr, "GET", "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 404"), "/metrics is served: {metrics}");
    assert_eq!(threads(), before, "mounting and serving the router started a thread");

    // No recorder was installed: the host can install its own, and pushpull's metrics of a
    // router built after it land there.
    let host = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("pushpull installed no recorder");
    let router = pushpull::router(broker, &ServerConfig::default()).unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let second = pushpull_http_spawn(listener, router);
    assert!(
        ask(second.local_addr(), "POST", "/v1/topics/embedded").await.starts_with("HTTP/1.1 201")
    );
    let rendered = host.render();
    assert!(
        rendered.contains("pushpull_messages_published_total{transport=\"http\"} 1"),
        "{rendered}"
    );
    second.shutdown().await;
    server.shutdown().await;
}

fn pushpull_http_spawn(
    listener: tokio::net::TcpListener,
    router: pushpull_http::Router,
) -> pushpull::RunningServer {
    pushpull_http::spawn(listener, router, pushpull::ServeConfig::default()).unwrap()
}
