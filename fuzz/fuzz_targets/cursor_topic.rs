//! Cursors and topic names: never a panic, and what parses prints back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushpull_core::{Cursor, Topic};

fuzz_target!(|input: &str| {
    if let Ok(cursor) = input.parse::<Cursor>() {
        let again: Cursor = cursor.to_string().parse().expect("a printed cursor parses");
        assert_eq!(again, cursor);
    }
    if let Ok(topic) = Topic::new(input) {
        assert_eq!(topic.as_str(), input);
    }
});
