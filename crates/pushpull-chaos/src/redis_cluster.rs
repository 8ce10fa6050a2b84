//! A real Redis Cluster of a test's own: six `redis-server` processes (three masters, three
//! replicas) on free loopback ports, made one cluster with `redis-cli --cluster create`; a
//! master can be killed (its replica takes over), a slot moved to another master, and the
//! whole cluster stops on drop. Each server runs on a leash (a shell that holds a pipe from
//! the test process), so it stops when the test process ends even if nothing dropped it: a
//! cluster [`shared`](RedisCluster::shared) by a test binary's cases lives in a static.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pushpull_core::{Error, ErrorKind};

/// How long a master may be unreachable before its replica is promoted.
const NODE_TIMEOUT: Duration = Duration::from_millis(1000);

fn setup_error(why: String) -> Error {
    Error::new(ErrorKind::Config, why)
}

/// One `redis-server` of the cluster: the leash (a shell whose stdin is a pipe from this
/// process) and the server's process id.
#[derive(Debug)]
struct Node {
    port: u16,
    child: Option<Child>,
    pid: u32,
}

impl Node {
    /// Kills the server at once (as a crash would), and its leash.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-KILL", &self.pid.to_string()]).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Six `redis-server` processes in cluster mode, without persistence, in a fresh directory.
/// Dropping it stops them and removes the directory.
#[derive(Debug)]
pub struct RedisCluster {
    dir: PathBuf,
    nodes: Vec<Node>,
}

/// `n` different free loopback ports whose cluster bus ports (the port plus 10000) are free too.
/// Every port is held (bound here) until all are chosen: a port let go at once could be handed
/// to the next `bind` again (the kernel may reuse it), before the node meant to have it has
/// bound it, and two nodes of one cluster on one port make `redis-cli --cluster create` give one
/// server two nodes' slots.
fn free_port_pairs(n: usize) -> Result<Vec<u16>, Error> {
    let bind = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port));
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..100 * n {
        if ports.len() == n {
            break;
        }
        let listener = bind(0).map_err(|e| setup_error(format!("no free port: {e}")))?;
        let port = listener.local_addr().map_err(|e| setup_error(e.to_string()))?.port();
        held.push(listener);
        if port > 55_535 {
            continue;
        }
        if let Ok(bus) = bind(port + 10_000) {
            held.push(bus);
            ports.push(port);
        }
    }
    if ports.len() < n {
        return Err(setup_error(format!("no {n} free pairs of ports for a cluster's nodes")));
    }
    Ok(ports)
}

impl RedisCluster {
    /// Starts six nodes, makes them a cluster of three masters each with a replica, and waits
    /// until every node says the cluster is ok. The README's test command installs
    /// `redis-server` and `redis-cli` (Debian's package) when they are missing.
    pub fn start() -> Result<Self, Error> {
        let unique = pushpull_core::Epoch::random();
        let dir = std::env::temp_dir().join(format!("pushpull-redis-cluster-{unique}"));
        std::fs::create_dir_all(&dir)
            .map_err(|e| setup_error(format!("{}: {e}", dir.display())))?;
        let mut cluster = Self { dir, nodes: Vec::new() };
        for port in free_port_pairs(6)? {
            let mut node = Node { port, child: None, pid: 0 };
            spawn(&cluster.dir, &mut node)?;
            cluster.nodes.push(node);
        }
        for node in &cluster.nodes {
            cluster.wait_for_pong(node.port)?;
        }
        // Six servers, not fewer answering for more: a port taken by something else between
        // its choice and the server's bind is named here, not as a cluster that never forms.
        let mut ids = std::collections::HashSet::new();
        for node in &cluster.nodes {
            let id = Self::query(node.port, &["CLUSTER", "MYID"])
                .ok()
                .and_then(|v| redis::from_redis_value::<String>(v).ok())
                .ok_or_else(|| setup_error(format!("port {}: not a cluster node", node.port)))?;
            if !ids.insert(id) {
                return Err(setup_error(format!(
                    "port {}: another node answered there (the port was taken meanwhile)",
                    node.port
                )));
            }
        }
        let addresses: Vec<String> =
            cluster.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| {
                setup_error(format!("cannot run redis-cli ({e}): ./scripts/test installs it"))
            })?;
        if !created.status.success() {
            return Err(setup_error(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&created.stderr)
            )));
        }
        cluster.wait_until_ok(Duration::from_secs(30))?;
        cluster.wait_for_replicas(Duration::from_secs(30))?;
        Ok(cluster)
    }

    /// One cluster for every caller in this process, started by the first: for suites whose
    /// cases each take a key prefix of their own and kill no node. Its servers stop when the
    /// process ends.
    pub fn shared() -> Result<&'static RedisCluster, Error> {
        static SHARED: std::sync::Mutex<Option<&'static RedisCluster>> =
            std::sync::Mutex::new(None);
        let mut shared = SHARED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(cluster) = *shared {
            return Ok(cluster);
        }
        let cluster: &'static RedisCluster = Box::leak(Box::new(Self::start()?));
        *shared = Some(cluster);
        Ok(cluster)
    }

    /// The ports of the live masters.
    pub fn masters(&self) -> Result<Vec<u16>, Error> {
        let live = self.nodes.iter().find(|n| n.child.is_some()).expect("a live node");
        let mut masters: Vec<u16> =
            Self::slot_masters(live.port)?.into_iter().map(|(_, _, port)| port).collect();
        masters.sort_unstable();
        masters.dedup();
        Ok(masters)
    }

    /// Deletes every key that starts with `prefix`, on every master (what a restart without
    /// persistence loses, for one user of a shared cluster).
    pub fn delete_prefixed(&self, prefix: &str) -> Result<(), Error> {
        let pattern: String = prefix
            .chars()
            .flat_map(|c| {
                let special = matches!(c, '*' | '?' | '[' | ']' | '\\');
                special.then_some('\\').into_iter().chain([c])
            })
            .chain(['*'])
            .collect();
        for master in self.masters()? {
            let mut cursor = "0".to_owned();
            loop {
                let answer =
                    Self::query(master, &["SCAN", &cursor, "MATCH", &pattern, "COUNT", "1000"])
                        .map_err(|e| setup_error(format!("SCAN: {e}")))?;
                let (next, keys): (String, Vec<String>) = redis::from_redis_value(answer)
                    .map_err(|e| setup_error(format!("SCAN: {e}")))?;
                for key in keys {
                    Self::query(master, &["DEL", &key])
                        .map_err(|e| setup_error(format!("DEL: {e}")))?;
                }
                if next == "0" {
                    break;
                }
                cursor = next;
            }
        }
        Ok(())
    }

    /// The slot of `key`.
    pub fn slot_of(&self, key: &str) -> Result<u16, Error> {
        let live = self.nodes.iter().find(|n| n.child.is_some()).expect("a live node");
        Self::query(live.port, &["CLUSTER", "KEYSLOT", key])
            .ok()
            .and_then(|v| redis::from_redis_value::<u16>(v).ok())
            .ok_or_else(|| setup_error("CLUSTER KEYSLOT failed".into()))
    }

    /// Moves `key`'s slot, keys and all, to another master, by the steps `redis-cli --cluster
    /// reshard` takes (importing, migrating, `MIGRATE` of its keys, the new owner announced);
    /// returns the port of the master that serves it now.
    pub fn move_slot_of(&self, key: &str) -> Result<u16, Error> {
        let slot = self.slot_of(key)?;
        let from = self.master_of(key)?;
        let to = *self
            .masters()?
            .iter()
            .find(|port| **port != from)
            .ok_or_else(|| setup_error("no other master".into()))?;
        let node_id = |port: u16| -> Result<String, Error> {
            Self::query(port, &["CLUSTER", "MYID"])
                .ok()
                .and_then(|v| redis::from_redis_value::<String>(v).ok())
                .ok_or_else(|| setup_error("CLUSTER MYID failed".into()))
        };
        let (from_id, to_id) = (node_id(from)?, node_id(to)?);
        // Move exactly that slot: the way redis-cli does it, step by step.
        let slot = slot.to_string();
        let step = |port: u16, args: &[&str]| {
            Self::query(port, args).map_err(|e| setup_error(format!("{}: {e}", args.join(" "))))
        };
        step(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id])?;
        step(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id])?;
        loop {
            let keys: Vec<String> =
                redis::from_redis_value(step(from, &["CLUSTER", "GETKEYSINSLOT", &slot, "100"])?)
                    .map_err(|e| setup_error(format!("GETKEYSINSLOT: {e}")))?;
            if keys.is_empty() {
                break;
            }
            let mut migrate = vec!["MIGRATE", "127.0.0.1"];
            let port = to.to_string();
            let timeout = "5000".to_owned();
            migrate.extend([port.as_str(), "", "0", timeout.as_str(), "KEYS"]);
            migrate.extend(keys.iter().map(String::as_str));
            step(from, &migrate)?;
        }
        for port in self.masters()? {
            step(port, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id])?;
        }
        Ok(to)
    }

    /// Waits until each master's replica is online (synced, taking the master's writes).
    fn wait_for_replicas(&self, within: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + within;
        loop {
            let online = self
                .nodes
                .iter()
                .filter_map(|node| {
                    Self::query(node.port, &["INFO", "replication"])
                        .ok()
                        .and_then(|v| redis::from_redis_value::<String>(v).ok())
                })
                .filter(|info| info.contains("role:master"))
                .filter(|info| info.contains("state=online"))
                .count();
            if online == 3 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(setup_error(format!(
                    "replicas were not online within {within:?};{}",
                    self.what_the_nodes_say()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the node on `port` again after [`kill_master`](Self::kill_master): it rejoins
    /// (its cluster config kept) as a replica of the master that replaced it. Returns once it
    /// is an online replica again, so another master can be killed.
    pub fn restart_node(&mut self, port: u16) -> Result<(), Error> {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .ok_or_else(|| setup_error(format!("no node on {port}")))?;
        if node.child.is_none() {
            spawn(&self.dir, node)?;
        }
        self.wait_for_pong(port)?;
        self.wait_until_ok(Duration::from_secs(30))?;
        self.wait_for_replicas(Duration::from_secs(30))
    }

    /// Sends one command to the node on `port`.
    pub fn query(port: u16, args: &[&str]) -> Result<redis::Value, redis::RedisError> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
        let mut connection = client.get_connection_with_timeout(Duration::from_secs(1))?;
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command.query(&mut connection)
    }

    fn wait_for_pong(&self, port: u16) -> Result<(), Error> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Self::query(port, &["PING"]).is_err() {
            if Instant::now() > deadline {
                return Err(setup_error(format!("redis-server on {port} did not answer")));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Waits until every live node reports `cluster_state:ok` and three masters serving slots.
    pub fn wait_until_ok(&self, within: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + within;
        loop {
            let ok = self.nodes.iter().filter(|n| n.child.is_some()).all(|node| {
                let info = Self::query(node.port, &["CLUSTER", "INFO"])
                    .ok()
                    .and_then(|v| redis::from_redis_value::<String>(v).ok())
                    .unwrap_or_default();
                info.contains("cluster_state:ok") && info.contains("cluster_size:3")
            });
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(setup_error(format!(
                    "the cluster was not ok within {within:?};{}",
                    self.what_the_nodes_say()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A URL of each node (`redis://127.0.0.1:PORT`): what a cluster client is seeded with.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("redis://127.0.0.1:{}", n.port)).collect()
    }

    /// The port of the live master that serves `key`'s slot.
    pub fn master_of(&self, key: &str) -> Result<u16, Error> {
        let live = self.nodes.iter().find(|n| n.child.is_some()).expect("a live node");
        let slot: i64 = Self::query(live.port, &["CLUSTER", "KEYSLOT", key])
            .ok()
            .and_then(|v| redis::from_redis_value(v).ok())
            .ok_or_else(|| setup_error("CLUSTER KEYSLOT failed".into()))?;
        Self::slot_masters(live.port)?
            .into_iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .map(|(_, _, port)| port)
            .ok_or_else(|| setup_error(format!("no master serves slot {slot}")))
    }

    /// Each range of slots and the port of its master, as the node on `port` sees them.
    fn slot_masters(port: u16) -> Result<Vec<(i64, i64, u16)>, Error> {
        let shards = Self::query(port, &["CLUSTER", "SLOTS"])
            .map_err(|e| setup_error(format!("CLUSTER SLOTS: {e}")))?;
        // Each entry: first slot, last slot, the master ([host, port, id, …]), its replicas.
        let entries: Vec<Vec<redis::Value>> = redis::from_redis_value(shards)
            .map_err(|e| setup_error(format!("CLUSTER SLOTS: {e}")))?;
        let int = |v: &redis::Value| redis::from_redis_value::<i64>(v.clone()).ok();
        Ok(entries
            .iter()
            .filter_map(|entry| {
                let [first, last, master, ..] = entry.as_slice() else { return None };
                let master: Vec<redis::Value> = redis::from_redis_value(master.clone()).ok()?;
                let port = u16::try_from(int(master.get(1)?)?).ok()?;
                Some((int(first)?, int(last)?, port))
            })
            .collect())
    }

    /// Kills the master on `port` (as a crash would) and waits until its replica has taken
    /// over and the cluster is ok again.
    pub fn kill_master(&mut self, port: u16) -> Result<(), Error> {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .ok_or_else(|| setup_error(format!("no node on {port}")))?;
        node.kill();
        // The replica is promoted after NODE_TIMEOUT and an election: wait until no live node
        // names the dead one as a master any more, and the cluster is ok.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let promoted = self.nodes.iter().filter(|n| n.child.is_some()).all(|node| {
                Self::slot_masters(node.port)
                    .is_ok_and(|masters| masters.iter().all(|(_, _, master)| *master != port))
            });
            if promoted {
                break;
            }
            if Instant::now() > deadline {
                return Err(setup_error(format!(
                    "no replica took over from {port} within 30 s;{}",
                    self.what_the_nodes_say()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.wait_until_ok(Duration::from_secs(30))
    }
}

impl RedisCluster {
    /// Each live node's view of the cluster (`CLUSTER NODES`) and the end of its log, without
    /// a replica's once-a-second retries to reach a dead master and other noise: what a failed wait reports, so
    /// that its cause (an election not held, votes refused, a replica's data too old) can be
    /// read from the failure alone. Errors print on one line: ` | ` separates lines.
    fn what_the_nodes_say(&self) -> String {
        const NOISE: [&str; 4] = [
            "Connecting to MASTER",
            "MASTER <-> REPLICA sync started",
            "socket for SYNC",
            "Memory overcommit",
        ];
        let mut said = String::new();
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let view = Self::query(node.port, &["CLUSTER", "NODES"])
                .map_err(|e| e.to_string())
                .and_then(|v| redis::from_redis_value::<String>(v).map_err(|e| e.to_string()))
                .unwrap_or_else(|e| format!("CLUSTER NODES: {e}"));
            let log = std::fs::read_to_string(log_of(&self.dir, node.port)).unwrap_or_default();
            let lines: Vec<&str> =
                log.lines().filter(|line| !NOISE.iter().any(|n| line.contains(n))).collect();
            let tail = lines[lines.len().saturating_sub(20)..].join(" | ");
            let view = view.trim_end().replace('\n', " | ");
            said.push_str(&format!(" || node {}: {view} || its log: {tail}", node.port));
        }
        said
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where the server on `port` of the cluster in `dir` writes its log.
fn log_of(dir: &std::path::Path, port: u16) -> PathBuf {
    dir.join(port.to_string()).join("redis.log")
}

/// Starts `node`'s server (on its leash) in its directory under `dir`, logging to its file.
fn spawn(dir: &std::path::Path, node: &mut Node) -> Result<(), Error> {
    let log = log_of(dir, node.port);
    let dir = dir.join(node.port.to_string());
    std::fs::create_dir_all(&dir).map_err(|e| setup_error(format!("{}: {e}", dir.display())))?;
    // The shell starts the server, says its pid, and kills it when its stdin closes: when
    // this process ends, however it ends.
    let leash = r#"redis-server "$@" >/dev/null & pid=$!; echo "$pid"; read _; kill "$pid""#;
    let mut child = Command::new("sh")
        .args(["-c", leash, "sh"])
        .args(["--port", &node.port.to_string(), "--bind", "127.0.0.1"])
        .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
        .args(["--cluster-node-timeout", &NODE_TIMEOUT.as_millis().to_string()])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        // A replica's first sync starts at once (the default waits 5 s for more replicas).
        .args(["--repl-diskless-sync-delay", "0"])
        // A replica takes over however long its master has been gone: by default it stops
        // trying once its link has been down ten node timeouts plus the ping period (20 s
        // here), which turns an election slowed by a busy machine into none at all.
        .args(["--cluster-replica-validity-factor", "0"])
        .arg("--dir")
        .arg(&dir)
        .arg("--logfile")
        .arg(&log)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| setup_error(format!("cannot start sh: {e}")))?;
    let mut line = String::new();
    let stdout = child.stdout.take().expect("piped");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
        .map_err(|e| setup_error(format!("redis-server's pid: {e}")))?;
    node.pid = line.trim().parse().map_err(|_| {
        setup_error("cannot start redis-server: run ./scripts/test, which installs it".into())
    })?;
    node.child = Some(child);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ports_of_a_clusters_nodes_are_all_different() {
        // Enough that ports chosen one at a time and let go would repeat (a birthday draw from
        // about 23,000 ephemeral ports: 400 draws repeat nineteen times in twenty).
        let ports = free_port_pairs(400).unwrap();
        let mut taken = std::collections::HashSet::new();
        for port in &ports {
            assert!(taken.insert(*port), "{port} twice");
            assert!(taken.insert(port + 10_000), "{} twice", port + 10_000);
        }
        assert_eq!(taken.len(), 800);
    }
}
