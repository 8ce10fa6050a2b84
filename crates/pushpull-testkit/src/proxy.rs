//! A loopback TCP proxy that can sever every live connection: how the suite "kills the
//! connection mid-stream" for any transport without knowing its protocol.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// Forwards every connection made to [`addr`](ChaosProxy::addr) to an upstream address.
///
/// [`sever`](ChaosProxy::sever) closes all live connections at once, as a network failure
/// would; [`set_upstream`](ChaosProxy::set_upstream) points new connections elsewhere, as a
/// load balancer would after a server restart. Dropping the proxy closes everything.
pub struct ChaosProxy {
    addr: SocketAddr,
    shared: Arc<Mutex<ProxyState>>,
    accept: JoinHandle<()>,
}

struct ProxyState {
    upstream: SocketAddr,
    live: Vec<AbortHandle>,
    refusing: bool,
}

impl ChaosProxy {
    /// Starts a proxy on 127.0.0.1 with an ephemeral port, forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared =
            Arc::new(Mutex::new(ProxyState { upstream, live: Vec::new(), refusing: false }));
        let state = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                // Choosing the upstream and registering the connection for `sever` happen under
                // one lock, so no connection slips between a restart and the sever that goes
                // with it.
                let mut state = state.lock().expect("proxy lock");
                if state.refusing {
                    drop(inbound); // as an unreachable server would: the client sees a failure
                    continue;
                }
                let upstream = state.upstream;
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                state.live.retain(|task| !task.is_finished());
                state.live.push(task.abort_handle());
            }
        });
        Ok(Self { addr, shared, accept })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every live connection; later connections go through as before.
    pub fn sever(&self) {
        let live = std::mem::take(&mut self.shared.lock().expect("proxy lock").live);
        for task in live {
            task.abort();
        }
    }

    /// While `refusing`, new connections are closed at once, as if the server were down.
    pub fn set_refusing(&self, refusing: bool) {
        self.shared.lock().expect("proxy lock").refusing = refusing;
    }

    /// Sends new connections to `upstream`.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        self.shared.lock().expect("proxy lock").upstream = upstream;
    }

    /// Points new connections at `upstream` and closes every live one, atomically: what a
    /// load balancer does when a server restarts elsewhere.
    pub fn redirect(&self, upstream: SocketAddr) {
        let live = {
            let mut state = self.shared.lock().expect("proxy lock");
            state.upstream = upstream;
            std::mem::take(&mut state.live)
        };
        for task in live {
            task.abort();
        }
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.sever();
    }
}
