//! The server half: a TCP listener answering request lines from any broker.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::StreamExt;
use pushpull_core::{Client, Error, Publication, Topic};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::wire::{self, Answer, Request};

/// The longest request line accepted: a payload of the broker's `max_payload` in base64, and
/// its labels.
fn max_line(broker: &dyn Client) -> u64 {
    let max_payload = broker.capabilities().max_payload.unwrap_or(4 * 1024 * 1024) as u64;
    max_payload * 4 / 3 + 64 * 1024
}

/// A line-protocol server running in the background; dropping it stops it and closes every
/// connection.
#[derive(Debug)]
pub struct LineServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl LineServer {
    /// Serves `broker` on `listener`.
    pub fn spawn(listener: TcpListener, broker: Arc<dyn Client>) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                while connections.try_join_next().is_some() {}
                connections.spawn(connection(stream, broker.clone()));
            }
        });
        Ok(Self { addr, task })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for LineServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) async fn connection(stream: TcpStream, broker: Arc<dyn Client>) {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let limit = max_line(&*broker);
    let mut reader = BufReader::new(read);
    loop {
        let mut line = Vec::new();
        match (&mut reader).take(limit).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) if !line.ends_with(b"\n") => {
                let error = Error::new(
                    pushpull_core::ErrorKind::TooLarge,
                    format!("a request line is over {limit} bytes"),
                );
                let _ = write.write_all(&wire::line(&wire::error(&error))).await;
                return;
            }
            Ok(_) => {}
        }
        let request: Request = match serde_json::from_slice(&line) {
            Ok(request) => request,
            Err(e) => {
                let error = Error::bad_request(format!("not a request: {e}"));
                if write.write_all(&wire::line(&wire::error(&error))).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let answer = match request {
            Request::Subscribe { topic, after } => {
                // From here on the connection carries this subscription's deliveries.
                return follow(&*broker, &topic, after, &mut reader, write).await;
            }
            Request::Publish { topic, payload, event, content_type, key } => {
                publish(&*broker, &topic, &payload, event, content_type, key).await
            }
            Request::Fetch { topic, after, limit } => match Topic::new(topic) {
                Ok(topic) => broker.fetch(&topic, after, limit).await.map(|page| wire::page(&page)),
                Err(error) => Err(error),
            },
        };
        let answer = answer.unwrap_or_else(|error| wire::error(&error));
        if write.write_all(&wire::line(&answer)).await.is_err() {
            return;
        }
    }
}

async fn publish(
    broker: &dyn Client,
    topic: &str,
    payload: &str,
    event: Option<String>,
    content_type: Option<String>,
    key: Option<String>,
) -> Result<Answer, Error> {
    let topic = Topic::new(topic)?;
    let mut publication = Publication::new(wire::payload(payload)?);
    if let Some(event) = event {
        publication = publication.event(event);
    }
    if let Some(content_type) = content_type {
        publication = publication.content_type(content_type);
    }
    if let Some(key) = key {
        publication = publication.idempotency_key(key);
    }
    let receipt = broker.publish(&topic, publication).await?;
    Ok(Answer::Receipt(wire::WireReceipt::from_receipt(&receipt)))
}

/// Writes a subscription's deliveries until the client goes away (which releases it).
async fn follow(
    broker: &dyn Client,
    topic: &str,
    after: pushpull_core::Cursor,
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    mut write: OwnedWriteHalf,
) {
    let subscribed = match Topic::new(topic) {
        Ok(topic) => broker.subscribe(&topic, after).await,
        Err(error) => Err(error),
    };
    let mut subscription = match subscribed {
        Ok(subscription) => subscription,
        Err(error) => {
            let _ = write.write_all(&wire::line(&wire::error(&error))).await;
            return;
        }
    };
    let start = Answer::Subscribed(subscription.cursor());
    if write.write_all(&wire::line(&start)).await.is_err() {
        return;
    }
    let mut ignored = [0u8; 64];
    loop {
        tokio::select! {
            delivery = subscription.next() => {
                let answer = match delivery {
                    Some(Ok(delivery)) => wire::delivery(&delivery),
                    Some(Err(error)) => wire::error(&error),
                    None => return,
                };
                if write.write_all(&wire::line(&answer)).await.is_err() {
                    return;
                }
            }
            read = reader.read(&mut ignored) => match read {
                Ok(0) | Err(_) => return, // the client left: the subscription is dropped
                Ok(_) => {}
            },
        }
    }
}
