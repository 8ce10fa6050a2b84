//! What a WebSocket server sends the client: text and binary frames, never a panic, and every
//! reply's message, page or gap decodes or is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushpull_ws::wire::{Frame, parse_reply};

fuzz_target!(|input: &[u8]| {
    if let Ok(text) = std::str::from_utf8(input) {
        let _ = parse_reply(Frame::Text(text.to_owned()));
    }
    let _ = parse_reply(Frame::Binary(bytes::Bytes::copy_from_slice(input)));
});
