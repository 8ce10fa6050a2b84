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
        let mut server = Self { child: None, dir, persistent };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<(), Error> {
        let socket = self.dir.join("redis.sock");
        let _ = std::fs::remove_file(&socket);
        let persistence: &[&str] = if self.persistent {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--daemonize", "no"])
            .args(persistence)
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

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.dir.join("redis.sock").display())
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

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
