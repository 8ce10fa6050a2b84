//! A real `redis-server` of a test's own: started on a unix socket in a scratch directory,
//! killed and restarted on demand (a fault to inject), stopped on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pushpull_core::{Error, ErrorKind};

/// A `redis-server` process of a test's own, on a unix socket in a fresh directory; without
/// persistence unless asked. Dropping it stops the server and removes the directory.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    dir: PathBuf,
    persistent: bool,
    /// With TLS: the loopback port it listens on (besides its unix socket).
    tls_port: Option<u16>,
}

fn setup_error(why: String) -> Error {
    Error::new(ErrorKind::Config, why)
}

impl RedisServer {
    /// Starts one without persistence (a restart loses everything) and waits until it answers.
    /// The README's test command installs `redis-server` (Debian's package) when it is missing.
    pub fn start() -> Result<Self, Error> {
        Self::start_with(false)
    }

    /// Starts one; `persistent` keeps an append-only file written on every command, so a
    /// restart loses nothing.
    pub fn start_with(persistent: bool) -> Result<Self, Error> {
        let unique = pushpull_core::Epoch::random();
        let dir = std::env::temp_dir().join(format!("pushpull-redis-{unique}"));
        std::fs::create_dir_all(&dir)
            .map_err(|e| setup_error(format!("{}: {e}", dir.display())))?;
        let mut server = Self { child: None, dir, persistent, tls_port: None };
        server.spawn()?;
        Ok(server)
    }

    /// Starts one that also serves TLS on a loopback port, with a certificate for 127.0.0.1
    /// signed by a throwaway certificate authority made now (with the `openssl` command):
    /// [`tls_url`](Self::tls_url) and [`ca_file`](Self::ca_file) reach it.
    pub fn start_tls() -> Result<Self, Error> {
        let unique = pushpull_core::Epoch::random();
        let dir = std::env::temp_dir().join(format!("pushpull-redis-{unique}"));
        std::fs::create_dir_all(&dir)
            .map_err(|e| setup_error(format!("{}: {e}", dir.display())))?;
        make_certificates(&dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| setup_error(format!("no free port: {e}")))?
            .port();
        let mut server = Self { child: None, dir, persistent: false, tls_port: Some(port) };
        server.spawn()?;
        Ok(server)
    }

    /// With TLS: `rediss://127.0.0.1:PORT`.
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port.map(|port| format!("rediss://127.0.0.1:{port}"))
    }

    /// With TLS: the PEM file of the certificate authority that signed its certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    fn spawn(&mut self) -> Result<(), Error> {
        let socket = self.dir.join("redis.sock");
        let _ = std::fs::remove_file(&socket);
        let persistence: &[&str] = if self.persistent {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        let tls: Vec<String> = match self.tls_port {
            None => Vec::new(),
            Some(port) => {
                let file = |name: &str| self.dir.join(name).display().to_string();
                vec![
                    "--tls-port".into(),
                    port.to_string(),
                    "--tls-cert-file".into(),
                    file("server.crt"),
                    "--tls-key-file".into(),
                    file("server.key"),
                    "--tls-ca-cert-file".into(),
                    file("ca.crt"),
                    "--tls-auth-clients".into(),
                    "no".into(),
                ]
            }
        };
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--save",
                "",
                "--daemonize",
                "no",
                "--enable-debug-command",
                "yes",
            ])
            .args(persistence)
            .args(&tls)
            .arg("--unixsocket")
            .arg(&socket)
            .args(["--unixsocketperm", "700", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                setup_error(format!(
                    "cannot start redis-server ({e}): run ./scripts/test, which installs it"
                ))
            })?;
        self.child = Some(child);
        let client = redis::Client::open(self.url()).map_err(|e| setup_error(e.to_string()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pong = client
                .get_connection()
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if pong.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(setup_error("redis-server did not answer within 10 s".into()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the server (as a crash would) and leaves it down.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts it again on the same socket: with persistence it comes
    /// back with its data, without it comes back empty.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.kill();
        self.spawn()
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.dir.join("redis.sock").display())
    }

    /// How many times it has run the commands `names` (lower case, as `INFO commandstats`
    /// names them: `evalsha` counts script runs by hash).
    pub async fn calls(&self, names: &[&str]) -> Result<u64, Error> {
        let info = match self.command(&["INFO", "commandstats"]).await? {
            redis::Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            redis::Value::VerbatimString { text, .. } | redis::Value::SimpleString(text) => text,
            other => return Err(setup_error(format!("INFO answered {other:?}"))),
        };
        Ok(info
            .lines()
            .filter_map(|line| line.strip_prefix("cmdstat_")?.split_once(':'))
            .filter(|(name, _)| names.contains(name))
            .filter_map(|(_, stats)| {
                stats.strip_prefix("calls=")?.split(',').next()?.parse::<u64>().ok()
            })
            .sum())
    }

    /// Runs one command on it, on a connection of its own.
    pub async fn command(&self, args: &[&str]) -> Result<redis::Value, Error> {
        let client = redis::Client::open(self.url()).map_err(|e| setup_error(e.to_string()))?;
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| setup_error(e.to_string()))?;
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command.query_async(&mut connection).await.map_err(|e| setup_error(e.to_string()))
    }
}

/// A certificate authority and a certificate for 127.0.0.1 it signed, in `dir`.
fn make_certificates(dir: &std::path::Path) -> Result<(), Error> {
    let openssl = |args: &[&str]| -> Result<(), Error> {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| {
                setup_error(format!("cannot run openssl ({e}): ./scripts/test installs it"))
            })?;
        if status.success() { Ok(()) } else { Err(setup_error(format!("openssl {args:?} failed"))) }
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=pushpull test CA",
        "-days",
        "2",
    ])?;
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ])?;
    std::fs::write(dir.join("san.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        .map_err(|e| setup_error(e.to_string()))?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.cnf",
    ])
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
