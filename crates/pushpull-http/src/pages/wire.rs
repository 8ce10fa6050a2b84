//! The pure parts of the page route: ETags, `If-None-Match`, the interval and wait headers.

use std::time::Duration;

use pushpull_core::Page;

/// The response header carrying the poll interval the server asks for, in milliseconds.
pub const POLL_INTERVAL_HEADER: &str = "pushpull-poll-interval-ms";

/// The response header a long-polling server sets to the wait it applied, in milliseconds.
/// Its absence tells a long-polling client that the server does not hold requests.
pub const WAIT_HEADER: &str = "pushpull-wait-ms";

/// The path of a topic's messages.
pub fn messages_path(topic: &str) -> String {
    format!("/v1/topics/{topic}/messages")
}

/// The strong ETag of a page answering a request for messages after some cursor.
///
/// For a given request URL (cursor and limit), the page is fixed by where it ends (`next`) and,
/// when messages were lost, where the gap puts the reader; messages themselves never change.
/// So the ETag is built from those two cursors, and it changes exactly when the body would.
pub fn etag(page: &Page) -> String {
    match &page.gap {
        None => format!("\"{}\"", page.next),
        Some(gap) => format!("\"{}/{}\"", page.next, gap.cursor),
    }
}

/// Whether an `If-None-Match` value matches `etag` (weak comparison, as RFC 9110 asks).
pub fn if_none_match_matches(header: &str, etag: &str) -> bool {
    let strip = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    let wanted = strip(etag);
    header.split(',').any(|candidate| {
        let candidate = candidate.trim();
        candidate == "*" || strip(candidate) == wanted
    })
}

/// The interval hint in a header value, if it is a sane number of milliseconds.
pub fn parse_interval_hint(value: &str) -> Option<Duration> {
    let millis: u64 = value.trim().parse().ok()?;
    (1..=3_600_000).contains(&millis).then(|| Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pushpull_core::{Cursor, Epoch, Gap, GapReason, Offset, Topic};

    #[test]
    fn etag_follows_the_body() {
        let epoch = Epoch::random();
        let plain = Page { gap: None, messages: vec![], next: Cursor::After(epoch, Offset(4)) };
        assert_eq!(etag(&plain), format!("\"{epoch}-4\""));
        let with_gap = Page {
            gap: Some(Gap {
                topic: Topic::new("t").unwrap(),
                reason: GapReason::Retention,
                missed: None,
                cursor: Cursor::After(epoch, Offset(2)),
            }),
            ..plain.clone()
        };
        assert_ne!(etag(&plain), etag(&with_gap));
    }

    #[test]
    fn if_none_match_forms() {
        let tag = "\"abc-1\"";
        assert!(if_none_match_matches("\"abc-1\"", tag));
        assert!(if_none_match_matches("W/\"abc-1\"", tag));
        assert!(if_none_match_matches("\"x\", \"abc-1\"", tag));
        assert!(if_none_match_matches("*", tag));
        assert!(!if_none_match_matches("\"abc-2\"", tag));
        assert!(!if_none_match_matches("", tag));
    }

    #[test]
    fn interval_hints() {
        assert_eq!(parse_interval_hint("250"), Some(Duration::from_millis(250)));
        assert_eq!(parse_interval_hint("0"), None);
        assert_eq!(parse_interval_hint("soon"), None);
        assert_eq!(parse_interval_hint("99999999999"), None);
    }
}
