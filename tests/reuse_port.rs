//! `http.reuse_port`: several server processes (here, two servers in one) listen on one address
//! with `SO_REUSEPORT`, the kernel spreads new connections among them, and when one stops the
//! other keeps serving every new connection: a restart that refuses nobody. Without the setting
//! the second bind is refused with an error that names the address.

#![cfg(unix)]

mod support;

use std::net::SocketAddr;

use pushpull::{ErrorKind, ServerConfig};
use support::get;

fn config(listen: SocketAddr, reuse_port: bool) -> ServerConfig {
    let mut config = ServerConfig::default();
    config.listen = listen;
    config.http.reuse_port = reuse_port;
    config
}

/// Opens `count` connections, one request each, all answered.
async fn requests(addr: SocketAddr, count: usize) {
    for _ in 0..count {
        assert_eq!(get(addr, "/v1/ready").await.status, 200);
    }
}

#[tokio::test]
async fn two_servers_share_a_port_and_one_serves_on_when_the_other_stops() {
    let first = pushpull::serve(&config("127.0.0.1:0".parse().unwrap(), true)).await.unwrap();
    let addr = first.local_addr();
    let second = pushpull::serve(&config(addr, true)).await.expect("a second server on the port");
    assert_eq!(second.local_addr(), addr);

    // The kernel picks a listener by a hash of each connection's address and port: 64
    // connections all landing on one of two listeners has a chance of 2^-63.
    requests(addr, 64).await;
    let (one, two) = (first.stats().accepted_connections(), second.stats().accepted_connections());
    assert_eq!(one + two, 64);
    assert!(one > 0 && two > 0, "both servers took connections: {one} and {two}");

    first.shutdown().await;
    requests(addr, 32).await;
    assert_eq!(second.stats().accepted_connections(), two + 32, "the other served every one");
    second.shutdown().await;
}

#[tokio::test]
async fn without_reuse_port_a_second_server_is_refused_the_address() {
    let first = pushpull::serve(&config("127.0.0.1:0".parse().unwrap(), false)).await.unwrap();
    let addr = first.local_addr();
    let refused = pushpull::serve(&config(addr, false)).await.expect_err("the port is taken");
    assert_eq!(refused.kind(), ErrorKind::Config);
    let message = refused.to_string();
    assert!(message.contains(&format!("cannot listen on {addr}")), "{message}");
    assert!(message.contains("in use"), "{message}");
    // One that asks to share cannot take a port held by one that did not.
    let refused = pushpull::serve(&config(addr, true)).await.expect_err("not shared");
    assert!(refused.to_string().contains("with SO_REUSEPORT"), "{refused}");
    first.shutdown().await;
}
