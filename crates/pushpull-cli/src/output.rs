//! How deliveries are printed.

use std::io::Write;

use base64::Engine as _;
use pushpull::{Delivery, GapReason};
use pushpull_http::wire::{GapJson, MessageJson};

/// The output format of `fetch` and `subscribe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// The payload, one message per line: line breaks inside it are written `\n` and `\r`,
    /// and a payload that is not UTF-8 is written `base64:…`. Gaps go to stderr.
    Text,
    /// One JSON object per line, as on the HTTP wire: messages, and gaps as `{"gap":…}`.
    Json,
}

pub(crate) fn print(out: &mut impl Write, delivery: &Delivery, format: Format, named: bool) {
    let topic = if named { format!("{}\t", delivery.topic()) } else { String::new() };
    let written = match (delivery, format) {
        (Delivery::Message(message), Format::Text) => match message.text() {
            Some(text) => {
                writeln!(out, "{topic}{}", text.replace('\n', "\\n").replace('\r', "\\r"))
            }
            None => writeln!(
                out,
                "{topic}base64:{}",
                base64::engine::general_purpose::STANDARD.encode(&message.payload)
            ),
        },
        (Delivery::Message(message), Format::Json) => {
            let json = serde_json::to_string(&MessageJson::from_message(message)).expect("encodes");
            writeln!(out, "{json}")
        }
        (Delivery::Gap(gap), Format::Text) => {
            let missed = match gap.missed {
                Some(range) => format!("offsets {} to {}", range.first, range.last),
                None => "nothing of the new log".to_owned(),
            };
            let why = match gap.reason {
                GapReason::Retention => "no longer retained".to_owned(),
                GapReason::EpochChanged { previous } => {
                    format!("the log was reset (epoch {previous} is gone)")
                }
            };
            eprintln!("gap: {why}; missed {missed}; continuing after {}", gap.cursor);
            Ok(())
        }
        (Delivery::Gap(gap), Format::Json) => {
            let json = serde_json::json!({ "gap": GapJson::from_gap(gap) });
            writeln!(out, "{json}")
        }
    };
    // A closed stdout (piped into `head`, say) ends the program quietly.
    if written.and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
}
