//! What a WebSocket client sends the server: text and binary frames, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushpull_ws::wire::{parse_binary, parse_text};

fuzz_target!(|input: &[u8]| {
    if let Ok(text) = std::str::from_utf8(input) {
        let _ = parse_text(text);
    }
    let _ = parse_binary(&bytes::Bytes::copy_from_slice(input));
});
