//! Properties of both stream framings over arbitrary input: decoding never panics and holds
//! bounded memory, and deliveries round-trip however the bytes are chunked.

use proptest::prelude::*;
use pushpull_core::{Delivery, Epoch, Offset, Publication, Topic};
use pushpull_stream::wire::{Decoder, Framing, delivery, encode};

fn framing() -> impl Strategy<Value = Framing> {
    prop_oneof![Just(Framing::Ndjson), Just(Framing::Binary)]
}

fn decode_all(
    decoder: &mut Decoder,
    input: &[u8],
    cuts: &[prop::sample::Index],
) -> Result<Vec<Delivery>, pushpull_core::Error> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
    at.sort_unstable();
    let mut out = Vec::new();
    let mut start = 0;
    for end in at.into_iter().chain(std::iter::once(input.len())) {
        for (record, payload) in decoder.feed(&input[start..end])? {
            out.extend(delivery(record, payload)?);
        }
        start = end;
    }
    Ok(out)
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(
        framing in framing(),
        input in prop::collection::vec(any::<u8>(), 0..1024),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let _ = decode_all(&mut Decoder::new(framing, 4096), &input, &cuts);
    }

    #[test]
    fn a_declared_size_over_the_limit_is_refused_before_it_is_read(
        size in 4097u64..u64::MAX,
    ) {
        // A record (header length, JSON header, payload size) claiming a huge payload is an
        // error at once, not a buffer waiting to fill.
        let header = r#"{"type":"message","topic":"t","cursor":"0000000000000007-1","offset":1,"timestamp":1}"#;
        let mut frame = (header.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(header.as_bytes());
        frame.extend_from_slice(&size.to_be_bytes());
        prop_assert!(Decoder::new(Framing::Binary, 4096).feed(&frame).is_err());
    }

    #[test]
    fn deliveries_round_trip_in_both_framings(
        framing in framing(),
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..6),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let topic = Topic::new("t").unwrap();
        let sent: Vec<Delivery> = payloads
            .into_iter()
            .enumerate()
            .map(|(n, payload)| {
                let mut message = Publication::new(payload)
                    .into_message(topic.clone(), Epoch::from_u64(7), Offset(n as u64 + 1));
                message.timestamp = pushpull_core::time_from_millis(1_795_000_000_000);
                Delivery::Message(message)
            })
            .collect();
        let bytes: Vec<u8> = sent.iter().flat_map(|d| encode(d, framing)).flatten().collect();
        let got = decode_all(&mut Decoder::new(framing, 1 << 20), &bytes, &cuts).unwrap();
        prop_assert_eq!(got, sent);
    }
}
