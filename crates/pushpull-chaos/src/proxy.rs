//! A loopback TCP proxy that can sever every live connection: how the suite "kills the
//! connection mid-stream" for any transport without knowing its protocol.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// Forwards every connection made to [`addr`](ChaosProxy::addr) to an upstream address.
///
/// [`sever`](ChaosProxy::sever) closes all live connections at once, as a network failure
/// would; [`set_upstream`](ChaosProxy::set_upstream) points new connections elsewhere, as a
/// load balancer would after a server restart; [`answer_with`](ChaosProxy::answer_with) makes
/// it answer new connections' requests with an HTTP error itself, as a load balancer does while
/// the servers behind it are deployed; [`set_delay`](ChaosProxy::set_delay) slows new
/// connections down. Dropping the proxy closes everything.
pub struct ChaosProxy {
    addr: SocketAddr,
    shared: Arc<Mutex<ProxyState>>,
    accept: JoinHandle<()>,
}

struct ProxyState {
    upstream: SocketAddr,
    live: Vec<AbortHandle>,
    refusing: bool,
    answer: Option<Canned>,
    delay: Option<Duration>,
    /// When each canned answer was given (the latest 10,000).
    answered: Vec<Instant>,
    /// Connections accepted, in all.
    accepted: u64,
}

/// An HTTP error the proxy gives in place of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Canned {
    /// The status, such as 503.
    pub status: u16,
    /// The `Retry-After` header, in seconds, if any.
    pub retry_after: Option<u64>,
}

impl Canned {
    /// `status` without `Retry-After`.
    pub fn status(status: u16) -> Self {
        Self { status, retry_after: None }
    }

    fn response(&self) -> String {
        let body = format!("<html><body>{} from the proxy</body></html>", self.status);
        let retry = self.retry_after.map(|s| format!("Retry-After: {s}\r\n")).unwrap_or_default();
        format!(
            "HTTP/1.1 {} Canned\r\nContent-Type: text/html\r\nContent-Length: {}\r\n{retry}Connection: close\r\n\r\n{body}",
            self.status,
            body.len()
        )
    }
}

/// Reads a request head (up to 64 KiB, for at most 5 s) and answers it with `canned`.
async fn answer(mut inbound: TcpStream, canned: Canned) {
    let reading = async {
        let mut head = Vec::new();
        let mut buffer = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
            match inbound.read(&mut buffer).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&buffer[..n]),
            }
        }
        true
    };
    if tokio::time::timeout(Duration::from_secs(5), reading).await == Ok(true) {
        let _ = inbound.write_all(canned.response().as_bytes()).await;
        let _ = inbound.shutdown().await;
    }
}

impl ChaosProxy {
    /// Starts a proxy on 127.0.0.1 with an ephemeral port, forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Mutex::new(ProxyState {
            upstream,
            live: Vec::new(),
            refusing: false,
            answer: None,
            delay: None,
            answered: Vec::new(),
            accepted: 0,
        }));
        let state = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                // Choosing the upstream and registering the connection for `sever` happen under
                // one lock, so no connection slips between a restart and the sever that goes
                // with it.
                let mut state = state.lock().expect("proxy lock");
                state.accepted += 1;
                if state.refusing {
                    drop(inbound); // as an unreachable server would: the client sees a failure
                    continue;
                }
                let task = if let Some(canned) = state.answer {
                    if state.answered.len() >= 10_000 {
                        state.answered.remove(0);
                    }
                    state.answered.push(Instant::now());
                    tokio::spawn(answer(inbound, canned))
                } else {
                    let (upstream, delay) = (state.upstream, state.delay);
                    tokio::spawn(async move {
                        if let Some(delay) = delay {
                            tokio::time::sleep(delay).await;
                        }
                        if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    })
                };
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

    /// While `Some`, every new connection's first request is answered with `canned` by the
    /// proxy itself and the connection closed; live connections are left alone.
    pub fn answer_with(&self, canned: Option<Canned>) {
        self.shared.lock().expect("proxy lock").answer = canned;
    }

    /// When each canned answer was given, oldest first.
    pub fn answered(&self) -> Vec<Instant> {
        self.shared.lock().expect("proxy lock").answered.clone()
    }

    /// How many connections the proxy has accepted (refused and answered ones included).
    pub fn accepted(&self) -> u64 {
        self.shared.lock().expect("proxy lock").accepted
    }

    /// While `Some`, new connections wait this long before they are forwarded.
    pub fn set_delay(&self, delay: Option<Duration>) {
        self.shared.lock().expect("proxy lock").delay = delay;
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
