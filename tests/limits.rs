//! The per-address connection limit holds for upgraded WebSockets too: one client address
//! cannot open more sockets than its share, and other addresses are served meanwhile.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use pushpull::ServerConfig;
use support::LIMIT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

async fn connect_from(source: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Reads a response head; returns its status code.
async fn status(stream: &mut TcpStream) -> u16 {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(LIMIT, stream.read(&mut byte)).await.unwrap().unwrap_or(0);
        if n == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    head.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0)
}

/// Opens a WebSocket from `source` by hand; the status of the handshake's answer.
async fn upgrade(source: IpAddr, addr: SocketAddr) -> (TcpStream, u16) {
    let mut stream = connect_from(source, addr).await;
    let request = format!(
        "GET /v1/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let status = status(&mut stream).await;
    (stream, status)
}

#[tokio::test]
async fn websockets_past_the_per_address_limit_are_refused_and_others_are_served() {
    let config = ServerConfig::default();
    let limit = config.http.max_connections_per_address;
    assert_eq!(limit, 1_000, "the documented default");
    let server = support::server(config).await;
    let addr = server.local_addr();
    let mut sockets = Vec::new();
    for n in 0..limit {
        let (socket, code) = upgrade(CLIENT, addr).await;
        assert_eq!(code, 101, "socket {n} of {limit}");
        sockets.push(socket);
    }
    // The sockets stay counted after their upgrade: the next one is refused.
    let (_, code) = upgrade(CLIENT, addr).await;
    assert_eq!(code, 429, "socket {} of an address allowed {limit}", limit + 1);
    assert_eq!(server.stats().refused_connections(), 1);
    // Another address is served, with a WebSocket as well as a plain request.
    let (_other, code) = upgrade(OTHER, addr).await;
    assert_eq!(code, 101);
    let mut plain = connect_from(OTHER, addr).await;
    plain.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_eq!(status(&mut plain).await, 200);
    // Closing sockets gives their address its share back.
    sockets.truncate(limit - 10);
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let (socket, code) = upgrade(CLIENT, addr).await;
        if code == 101 {
            sockets.push(socket);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no room after closing ten sockets");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
