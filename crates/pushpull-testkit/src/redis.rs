//! A real `redis-server` for tests (started on a unix socket in a scratch directory, stopped
//! on drop), and the conformance harness of [`RedisBroker`].

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pushpull_core::{Client, Error, ErrorKind};
use pushpull_redis::{RedisBroker, RedisConfig};

use crate::{Fixture, Harness, Limits, Skip};

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

/// Runs the suite against [`RedisBroker`] on a real `redis-server` of each case's own.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedisHarness;

/// A broker config that honours `limits`.
pub fn redis_config(url: String, limits: &Limits) -> RedisConfig {
    let memory = crate::memory_config(limits);
    RedisConfig {
        retention: memory.retention,
        max_payload: memory.max_payload,
        ..RedisConfig::new(url)
    }
}

#[async_trait]
impl Harness for RedisHarness {
    async fn start(&self, limits: Limits) -> Result<Box<dyn Fixture>, Error> {
        let server = RedisServer::start()?;
        let broker = RedisBroker::new(redis_config(server.url(), &limits))?;
        Ok(Box::new(RedisFixture { server, broker }))
    }
}

struct RedisFixture {
    server: RedisServer,
    broker: RedisBroker,
}

#[async_trait]
impl Fixture for RedisFixture {
    fn client(&self) -> Arc<dyn Client> {
        Arc::new(self.broker.clone())
    }

    async fn sever(&self) -> Result<(), Skip> {
        // Every connection but this one: the broker's commands and its pub/sub.
        for kind in ["normal", "pubsub"] {
            self.server
                .command(&["CLIENT", "KILL", "TYPE", kind])
                .await
                .map_err(|e| Skip(format!("cannot kill redis connections: {e}")))?;
        }
        Ok(())
    }

    async fn restart(&self) -> Result<(), Skip> {
        // Redis loses everything, as a restart without persistence would.
        self.server.command(&["FLUSHALL"]).await.map_err(|e| Skip(e.to_string()))?;
        Ok(())
    }

    async fn server_subscriptions(&self) -> Result<usize, Skip> {
        Ok(self.broker.subscriber_count())
    }
}
