//! Durations as human text (`"250ms"`, `"15s"`, `"1h 30m"`) in configuration files, for
//! `#[serde(with = "pushpull_core::duration_text")]`. Bare numbers are refused, because a
//! bare `30` does not say whether it means seconds or milliseconds.

use std::time::Duration;

/// Writes `duration` as text such as `"1m 30s"`.
pub fn serialize<S: serde::Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*duration))
}

/// Reads text such as `"250ms"` or `"1m 30s"`.
pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
    parse(&text).map_err(serde::de::Error::custom)
}

/// Parses a duration such as `"250ms"` with an error that shows the accepted form.
pub fn parse(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| {
        format!("invalid duration {text:?} ({e}); write it like \"250ms\", \"15s\" or \"1h\"")
    })
}

/// The same for `Option<Duration>`: absent or text.
pub mod option {
    use std::time::Duration;

    /// Writes the duration, if any.
    pub fn serialize<S: serde::Serializer>(
        duration: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match duration {
            Some(d) => super::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    /// Reads a duration.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        super::deserialize(d).map(Some)
    }
}
