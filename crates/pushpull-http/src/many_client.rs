//! What a client that follows many topics on one connection keeps: the request's selectors and
//! starts, and where each topic stands, written as the query of the routes for many topics
//! (`/v1/events`, `/v1/stream`, `/v1/messages`).

use std::fmt;

use pushpull_core::{
    Continuity, Cursor, CursorSet, Delivery, Error, FollowRequest, Position, Selector,
};

/// Where a client of many topics stands, and the query that resumes it.
///
/// Until a server has announced where each topic starts, the query names every selector with
/// its start (`topic=ticker@last:5&topic=orders:*@latest`); from then on it names the selectors
/// alone and the cursor set (`topic=ticker&topic=orders:*&after=@…`), so a reopened connection
/// resumes every topic exactly.
///
/// ```
/// use pushpull_core::{Cursor, FollowRequest};
/// use pushpull_http::ManyQuery;
/// let request = FollowRequest {
///     selectors: vec![
///         ("ticker".parse().unwrap(), Cursor::Last(5)),
///         ("orders:*".parse().unwrap(), Cursor::Latest),
///     ],
///     resume: None,
///     max_topics: 100,
/// };
/// let query = ManyQuery::new(&request);
/// assert_eq!(query.query(), "topic=ticker%40last%3A5&topic=orders%3A*%40latest");
/// ```
#[derive(Debug, Clone)]
pub struct ManyQuery {
    starts: Vec<(Selector, Cursor)>,
    keys: Vec<Selector>,
    /// After the last delivery handed over, per topic.
    positions: CursorSet,
    /// Whether `positions` covers the request (a server announced it, or the request resumed).
    announced: bool,
}

impl ManyQuery {
    /// Where `request` starts (its resumed set, else its selectors' starts).
    pub fn new(request: &FollowRequest) -> Self {
        Self {
            starts: request.selectors.clone(),
            keys: request.keys(),
            positions: request.resume.clone().unwrap_or_default(),
            announced: request.resume.is_some(),
        }
    }

    /// The selectors, in order: what cursor sets are written relative to.
    pub fn keys(&self) -> &[Selector] {
        &self.keys
    }

    /// Where each topic stands.
    pub fn positions(&self) -> &CursorSet {
        &self.positions
    }

    /// The selectors and the starts the request asked for.
    pub fn starts(&self) -> &[(Selector, Cursor)] {
        &self.starts
    }

    /// The cursor set that resumes it, once a server announced where its topics start (or
    /// the request resumed one); `None` before.
    pub fn resume_token(&self) -> Option<String> {
        self.announced.then(|| self.positions.encode(&self.keys))
    }

    /// The query (form-encoded, without `?`) that opens or resumes the connection.
    pub fn query(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        if self.announced {
            for key in &self.keys {
                query.append_pair("topic", &key.to_string());
            }
            query.append_pair("after", &self.positions.encode(&self.keys));
        } else {
            for (selector, start) in &self.starts {
                query.append_pair("topic", &format!("{selector}@{start}"));
            }
        }
        query.finish()
    }

    /// Takes what a server announced (a stream's first record, a page's `next`): topics it has
    /// no position for, or only a starting point such as `latest`, go on from the server's.
    pub fn announce(&mut self, set: &CursorSet) {
        for (topic, cursor) in set.iter() {
            if !self.positions.get(topic).is_some_and(|c| c.is_position()) {
                self.positions.set(topic.clone(), cursor);
            }
        }
        self.announced = true;
    }

    /// Takes a page's `next` as it is: the server read every topic up to it.
    pub fn replace(&mut self, set: CursorSet) {
        self.positions = set;
        self.announced = true;
    }

    /// Parses a set the server wrote relative to this request's selectors.
    pub fn parse(&self, text: &str) -> Result<CursorSet, Error> {
        CursorSet::parse(text, &self.keys)
    }

    /// Whether `delivery` comes next on its topic, repeats, or skips ahead. A topic with no
    /// position yet (one a prefix found since) takes any delivery.
    pub fn check(&self, delivery: &Delivery) -> Continuity {
        let cursor = self.positions.get(delivery.topic()).unwrap_or(Cursor::Beginning);
        Position::new(cursor).check(delivery)
    }

    /// Records that `delivery` was handed over.
    pub fn advance(&mut self, delivery: &Delivery) {
        self.positions.advance(delivery);
    }
}

/// Where a subscription stands: on its one topic, or on each topic of many. What the clients
/// that resume by themselves (SSE, streaming, WebSocket) check each delivery against.
#[derive(Debug, Clone)]
pub enum Track {
    /// One topic: after the last delivery handed over.
    One {
        /// The topic.
        topic: pushpull_core::Topic,
        /// After the last delivery handed over: where a reopened stream starts.
        position: Position,
    },
    /// Many topics, each on its own.
    Many(ManyQuery),
}

impl Track {
    /// Whether `delivery` comes next on its topic, repeats, or skips ahead.
    pub fn check(&self, delivery: &Delivery) -> Continuity {
        match self {
            Track::One { position, .. } => position.check(delivery),
            Track::Many(query) => query.check(delivery),
        }
    }

    /// Records that `delivery` was handed over.
    pub fn advance(&mut self, delivery: &Delivery) {
        match self {
            Track::One { position, .. } => position.advance(delivery),
            Track::Many(query) => query.advance(delivery),
        }
    }

    /// Where it stands on `topic` (`beginning` for a topic of many it has not seen yet).
    pub fn position_of(&self, topic: &pushpull_core::Topic) -> Cursor {
        match self {
            Track::One { position, .. } => position.cursor(),
            Track::Many(query) => query.positions().get(topic).unwrap_or(Cursor::Beginning),
        }
    }
}

impl fmt::Display for Track {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Track::One { topic, .. } => write!(f, "{topic}"),
            Track::Many(query) => write!(f, "{query}"),
        }
    }
}

impl fmt::Display for ManyQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, key) in self.keys.iter().enumerate() {
            if n > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{key}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pushpull_core::{Epoch, Offset, Publication, Topic};

    #[test]
    fn once_announced_it_resumes_from_its_own_positions() {
        let request = FollowRequest {
            selectors: vec![
                ("a".parse().unwrap(), Cursor::Latest),
                ("p:*".parse().unwrap(), Cursor::Beginning),
            ],
            resume: None,
            max_topics: 10,
        };
        let mut query = ManyQuery::new(&request);
        assert_eq!(query.query(), "topic=a%40latest&topic=p%3A*%40beginning");
        let epoch = Epoch::from_u64(7);
        let (a, x): (Topic, Topic) = ("a".parse().unwrap(), "p:x".parse().unwrap());
        let mut announced = CursorSet::new();
        announced.set(a.clone(), Cursor::After(epoch, Offset(4)));
        query.announce(&announced);
        let message = |topic: &Topic, offset| {
            Delivery::Message(Publication::new("m").into_message(
                topic.clone(),
                epoch,
                Offset(offset),
            ))
        };
        assert_eq!(query.check(&message(&a, 4)), Continuity::Repeat);
        assert_eq!(query.check(&message(&a, 6)), Continuity::Skip);
        assert_eq!(query.check(&message(&a, 5)), Continuity::Next);
        query.advance(&message(&a, 5));
        // A topic the prefix found since: from whatever comes first.
        assert_eq!(query.check(&message(&x, 3)), Continuity::Next);
        query.advance(&message(&x, 3));
        // A later announcement does not move what was handed over.
        let mut later = CursorSet::new();
        later.set(a.clone(), Cursor::After(epoch, Offset(2)));
        query.announce(&later);
        assert_eq!(query.positions().get(&a), Some(Cursor::After(epoch, Offset(5))));
        assert_eq!(
            query.query(),
            "topic=a&topic=p%3A*&after=%400000000000000007%2C0%7E5%2C1*x%7E3"
        );
    }
}
