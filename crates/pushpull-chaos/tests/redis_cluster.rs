//! The Redis Cluster fixture itself: six real `redis-server` processes become one cluster of
//! three masters with a replica each; a key written to its slot's master (and replicated)
//! survives that master's death, served by the replica that took over.

#![cfg(feature = "redis")]

use pushpull_chaos::RedisCluster;

fn connect(port: u16) -> redis::Connection {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    client.get_connection().unwrap()
}

fn query(connection: &mut redis::Connection, args: &[&str]) -> redis::Value {
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    command.query(connection).unwrap()
}

#[test]
fn a_master_dies_and_its_replica_serves_its_slots() {
    let mut cluster = RedisCluster::start().unwrap();
    assert_eq!(cluster.urls().len(), 6);
    let key = "{orders}:log";
    let master = cluster.master_of(key).unwrap();
    // WAIT counts replicas that have this connection's last write: the SET and the WAIT must
    // share a connection (on a fresh one, WAIT waits for nothing and returns at once).
    let mut on_master = connect(master);
    assert_eq!(query(&mut on_master, &["SET", key, "kept"]), redis::Value::Okay);
    // Wait until the replica has it: asynchronous replication could lose it otherwise.
    let replicas: i64 =
        redis::from_redis_value(query(&mut on_master, &["WAIT", "1", "5000"])).unwrap();
    assert_eq!(replicas, 1, "one replica acknowledged the write");

    cluster.kill_master(master).unwrap();
    let promoted = cluster.master_of(key).unwrap();
    assert_ne!(promoted, master, "another node serves the slot now");
    let value: String =
        redis::from_redis_value(query(&mut connect(promoted), &["GET", key])).unwrap();
    assert_eq!(value, "kept");
}
