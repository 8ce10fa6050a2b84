//! Binary stream records, split anywhere: never a panic, and a bounded decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pushpull_stream::wire::{Decoder, Framing, delivery};

fuzz_target!(|input: &[u8]| decode(Framing::Binary, input));

fn decode(framing: Framing, input: &[u8]) {
    let Some((&cut, body)) = input.split_first() else { return };
    let cut = usize::from(cut).min(body.len());
    let mut decoder = Decoder::new(framing, 1 << 16);
    for chunk in [&body[..cut], &body[cut..]] {
        match decoder.feed(chunk) {
            Ok(records) => {
                for (record, payload) in records {
                    let _ = delivery(record, payload);
                }
            }
            Err(_) => return,
        }
    }
}
