//! Properties of the event-stream format over arbitrary input: decoding never panics, chunking
//! never changes what is decoded, messages round-trip, and an event holds bounded memory.

use proptest::prelude::*;
use pushpull_core::{Delivery, Epoch, Offset, Publication, Topic};
use pushpull_sse::wire::{Parser, decode_event, encode_message};

/// Feeds `input` in pieces cut at `cuts` (indexes into it).
fn feed(
    parser: &mut Parser,
    input: &[u8],
    cuts: &[prop::sample::Index],
) -> Result<Vec<pushpull_sse::wire::Event>, pushpull_core::Error> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
    at.sort_unstable();
    let mut events = Vec::new();
    let mut start = 0;
    for end in at.into_iter().chain(std::iter::once(input.len())) {
        events.extend(parser.feed(&input[start..end])?);
        start = end;
    }
    Ok(events)
}

/// Bytes that look like an event stream: field names, separators and line ends are common.
fn streamish() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"data: ".to_vec()),
        Just(b"data:".to_vec()),
        Just(b"id: ".to_vec()),
        Just(b"event: ".to_vec()),
        Just(b"retry: ".to_vec()),
        Just(b": ".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\xEF\xBB\xBF".to_vec()),
        prop::collection::vec(any::<u8>(), 0..12),
    ];
    prop::collection::vec(piece, 0..48).prop_map(|pieces| pieces.concat())
}

proptest! {
    #[test]
    fn any_input_decodes_the_same_however_it_is_chunked(
        input in streamish(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let whole = Parser::with_limit(1 << 16).feed(&input).unwrap();
        let split = feed(&mut Parser::with_limit(1 << 16), &input, &cuts).unwrap();
        prop_assert_eq!(&whole, &split);
        let topic = Topic::new("t").unwrap();
        for event in whole {
            let _ = decode_event(&topic, event);
        }
    }

    #[test]
    fn messages_round_trip_whatever_their_payload(
        payload in prop::collection::vec(any::<u8>(), 0..300),
        event in proptest::option::of("[a-z][a-z0-9._-]{0,20}"),
        offset in 1u64..u64::MAX / 2,
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
    ) {
        let topic = Topic::new("t").unwrap();
        let mut publication = Publication::new(payload);
        if let Some(event) = &event {
            publication = publication.event(event);
        }
        let message = publication.into_message(topic.clone(), Epoch::from_u64(7), Offset(offset));
        let events = feed(&mut Parser::new(), &encode_message(&message), &cuts).unwrap();
        prop_assert_eq!(events.len(), 1);
        let Delivery::Message(decoded) = decode_event(&topic, events[0].clone()).unwrap() else {
            panic!("not a message");
        };
        prop_assert_eq!(decoded.payload, message.payload);
        prop_assert_eq!(decoded.offset, message.offset);
        prop_assert_eq!(decoded.event, message.event);
    }

    #[test]
    fn an_event_holds_at_most_its_limit(len in 0usize..4096, limit in 16usize..2048) {
        let mut parser = Parser::with_limit(limit);
        let mut line = b"data: ".to_vec();
        line.extend(std::iter::repeat_n(b'x', len));
        let fed = parser.feed(&line);
        prop_assert_eq!(fed.is_err(), line.len() > limit, "{} bytes, limit {}", line.len(), limit);
        // After an overflow the parser reads the next event normally.
        let next = parser.feed(b"\n\ndata: after\n\n").unwrap();
        prop_assert_eq!(next.last().map(|e| e.data.as_str()), Some("after"));
    }
}
