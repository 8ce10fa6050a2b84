//! Chat rooms on pushpull: a room is a topic, a line is a JSON message `{"from", "text"}`.
//!
//! [`Chat`] is written once against `pushpull::Client`. Over WebSocket (the default) one socket
//! carries both directions: the room's lines pushed in, the participant's lines published out.
//! Switched to another transport in the client configuration, the same code runs unchanged.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use pushpull::{Client, Cursor, Delivery, Error, ErrorKind, Publication, Topic};
use serde::{Deserialize, Serialize};

/// One line said in a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// Who said it.
    pub from: String,
    /// What they said.
    pub text: String,
}

/// What a participant sees in a room: lines, or a note that some were missed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A line.
    Line(Line),
    /// Lines that went by unseen (the room's history was trimmed, or the server restarted).
    Missed,
}

/// A participant: one client, any transport.
#[derive(Clone)]
pub struct Chat {
    client: Arc<dyn Client>,
    name: String,
}

impl Chat {
    /// `name` chatting through `client`.
    pub fn new(client: Arc<dyn Client>, name: impl Into<String>) -> Self {
        Self { client, name: name.into() }
    }

    fn room(room: &str) -> Result<Topic, Error> {
        Topic::new(format!("chat.{room}"))
    }

    /// Joins `room`: what was said there before, then what is said from now on.
    pub async fn join(
        &self,
        room: &str,
    ) -> Result<impl Stream<Item = Result<Seen, Error>> + use<>, Error> {
        let subscription = self.client.subscribe(&Self::room(room)?, Cursor::Beginning).await?;
        Ok(subscription.map(|delivery| match delivery? {
            Delivery::Message(message) => serde_json::from_slice(&message.payload)
                .map(Seen::Line)
                .map_err(|e| Error::new(ErrorKind::Protocol, format!("not a chat line: {e}"))),
            Delivery::Gap(_) => Ok(Seen::Missed),
        }))
    }

    /// Says `text` in `room`.
    pub async fn say(&self, room: &str, text: &str) -> Result<(), Error> {
        let line = Line { from: self.name.clone(), text: text.to_owned() };
        let payload = serde_json::to_vec(&line).expect("a line encodes");
        let publication = Publication::new(payload).event("chat").content_type("application/json");
        self.client.publish(&Self::room(room)?, publication).await.map(|_| ())
    }
}
