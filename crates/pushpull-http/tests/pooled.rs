//! The shared HTTP client over connections that die under it: a request handed to a pooled
//! connection at the moment the network cuts it is answered (on a new connection), never left
//! waiting for its time-out.

use std::sync::Arc;
use std::time::Duration;

use pushpull_chaos::ChaosProxy;
use pushpull_core::{Broker, MemoryBroker, Publication, Topic};
use pushpull_http::{HttpClient, HttpClientConfig};
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_right_after_every_connection_is_cut_is_answered() {
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let router = pushpull_http::api(&pushpull_http::Context::new(broker), None);
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let server = pushpull_http::spawn(listener, router, Default::default()).unwrap();
    // The hang this guards against is a race of a few microseconds: many rounds give it room.
    for round in 0..300 {
        let proxy = ChaosProxy::start(server.local_addr()).await.unwrap();
        let url = format!("http://{}", proxy.addr());
        let client = HttpClient::new(&url, "test", HttpClientConfig::default()).unwrap();
        let topic = Topic::new(format!("cut.{round}")).unwrap();
        for n in 0..3 {
            client.publish(&topic, Publication::new(format!("m{n}"))).await.unwrap();
        }
        proxy.sever();
        // Well below the 30 s request time-out: a request stuck on the dead connection would
        // wait for all of it.
        let published = tokio::time::timeout(
            Duration::from_secs(10),
            client.publish(&topic, Publication::new("after")),
        )
        .await
        .unwrap_or_else(|_| panic!("round {round}: the publish after the cut hung"));
        assert_eq!(published.unwrap().offset.0, 4, "round {round}");
    }
}
