//! Event streams, split anywhere: never a panic, the same events however the bytes are
//! chunked, and every event decodes to a delivery or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushpull_core::Topic;
use pushpull_sse::wire::{Parser, decode_event};

fuzz_target!(|input: &[u8]| {
    let Some((&cut, body)) = input.split_first() else { return };
    let cut = usize::from(cut).min(body.len());
    let whole = Parser::with_limit(1 << 16).feed(body);
    let mut parser = Parser::with_limit(1 << 16);
    let split = parser.feed(&body[..cut]).and_then(|mut first| {
        first.extend(parser.feed(&body[cut..])?);
        Ok(first)
    });
    if let (Ok(whole), Ok(split)) = (&whole, &split) {
        assert_eq!(whole, split, "chunking changed the events");
    }
    let topic = Topic::new("fuzz").unwrap();
    for event in whole.unwrap_or_default() {
        let _ = decode_event(&topic, event);
    }
});
