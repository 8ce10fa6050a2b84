//! Cursors and topic names over arbitrary text: parsing never panics, and what parses prints
//! back as it was read.

use proptest::prelude::*;
use pushpull_core::{Cursor, Epoch, Offset, Topic};

proptest! {
    #[test]
    fn cursors_parse_and_print_back(text in "\\PC{0,40}") {
        if let Ok(cursor) = text.parse::<Cursor>() {
            let again: Cursor = cursor.to_string().parse().unwrap();
            prop_assert_eq!(again, cursor);
        }
    }

    #[test]
    fn every_cursor_round_trips(epoch in any::<u64>(), offset in any::<u64>()) {
        let cursor = Cursor::After(Epoch::from_u64(epoch), Offset(offset));
        prop_assert_eq!(cursor.to_string().parse::<Cursor>().unwrap(), cursor);
    }

    #[test]
    fn topics_are_accepted_verbatim_or_refused(text in "\\PC{0,300}") {
        if let Ok(topic) = Topic::new(text.as_str()) {
            prop_assert_eq!(topic.as_str(), text.as_str());
            prop_assert_eq!(topic.to_string(), text);
        }
    }
}
