//! Properties of the WebSocket protocol's frames over arbitrary input: parsing never panics,
//! and publish frames round-trip whatever their payload.

use bytes::Bytes;
use proptest::prelude::*;
use pushpull_core::{Publication, Topic};
use pushpull_ws::wire::{Frame, parse_binary, parse_reply, parse_text, publish_frame};

fn jsonish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just(r#"{"op":"#.to_owned()),
        Just(r#""subscribe""#.to_owned()),
        Just(r#""publish""#.to_owned()),
        Just(r#""message""#.to_owned()),
        Just(r#","id":"a""#.to_owned()),
        Just(r#","topic":"t""#.to_owned()),
        Just(r#","data":"#.to_owned()),
        Just("}".to_owned()),
        "[ -~]{0,8}",
    ];
    prop::collection::vec(piece, 0..16).prop_map(|pieces| pieces.concat())
}

proptest! {
    #[test]
    fn no_frame_makes_either_side_panic(
        text in jsonish(),
        binary in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let _ = parse_text(&text);
        let _ = parse_reply(Frame::Text(text));
        let binary = Bytes::from(binary);
        let _ = parse_binary(&binary);
        let _ = parse_reply(Frame::Binary(binary));
    }

    #[test]
    fn publish_frames_round_trip(
        payload in prop::collection::vec(any::<u8>(), 0..300),
        event in proptest::option::of("[a-z][a-z0-9._-]{0,20}"),
    ) {
        let topic = Topic::new("t").unwrap();
        let mut publication = Publication::new(payload.clone());
        if let Some(event) = &event {
            publication = publication.event(event);
        }
        let incoming = match publish_frame("p1", &topic, &publication) {
            Frame::Text(text) => parse_text(&text).unwrap(),
            Frame::Binary(bytes) => parse_binary(&bytes).unwrap(),
        };
        match incoming.request {
            pushpull_ws::wire::Request::Publish { data, data_base64, event: got, .. } => {
                let decoded = match (incoming.payload, data, data_base64) {
                    (Some(bytes), None, None) => bytes.to_vec(),
                    (None, Some(text), None) => text.into_bytes(),
                    (None, None, Some(encoded)) => {
                        use base64::Engine as _;
                        base64::engine::general_purpose::STANDARD.decode(encoded).unwrap()
                    }
                    other => panic!("one payload form: {other:?}"),
                };
                prop_assert_eq!(decoded, payload);
                prop_assert_eq!(got, event);
            }
            other => panic!("a publish: {other:?}"),
        }
    }
}
