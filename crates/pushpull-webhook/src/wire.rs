//! Standard Webhooks: secrets, signatures, ids and bodies. Pure, no I/O.
//!
//! A delivery is `POST`ed with the headers `webhook-id` (stable across retries),
//! `webhook-timestamp` (unix seconds of the attempt) and `webhook-signature`: space-separated
//! `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, one per active secret, so a secret
//! can be rotated without downtime. A secret is `whsec_` and the base64 of its key.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD as BASE64_URL};
use hmac::{Hmac, KeyInit, Mac};
use pushpull_core::{Cursor, Delivery, Error, ErrorKind, Topic};
use pushpull_http::wire::{GapJson, MessageJson};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The prefix of a serialized secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// The header with the message id.
pub const ID_HEADER: &str = "webhook-id";
/// The header with the attempt's unix timestamp.
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// The header with the signatures.
pub const SIGNATURE_HEADER: &str = "webhook-signature";
/// The body `type` of a message.
pub const MESSAGE_TYPE: &str = "pushpull.message";
/// The body `type` of a gap.
pub const GAP_TYPE: &str = "pushpull.gap";

/// A signing key.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Secret {
    /// A new random 32-byte key.
    pub fn generate() -> Secret {
        let mut key = vec![0u8; 32];
        getrandom::fill(&mut key).expect("the operating system provides randomness");
        Secret(key)
    }

    /// Reads `whsec_<base64>` (the prefix may be left out); the key is 24 to 64 bytes.
    pub fn parse(text: &str) -> Result<Secret, Error> {
        let encoded = text.strip_prefix(SECRET_PREFIX).unwrap_or(text);
        let key = BASE64.decode(encoded).map_err(|_| {
            Error::bad_request("a secret is \"whsec_\" followed by the base64 of its key")
        })?;
        if !(24..=64).contains(&key.len()) {
            return Err(Error::bad_request(format!(
                "a secret's key is 24 to 64 bytes, this one has {}",
                key.len()
            )));
        }
        Ok(Secret(key))
    }

    /// The key, for tests of other implementations.
    pub fn key(&self) -> &[u8] {
        &self.0
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{SECRET_PREFIX}{}", BASE64.encode(&self.0))
    }
}

/// The `v1,…` signature of one message attempt with one secret.
pub fn sign(secret: &Secret, id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = secret.mac();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header: one signature per secret, space-separated.
pub fn signature_header(secrets: &[Secret], id: &str, timestamp: u64, body: &[u8]) -> String {
    secrets.iter().map(|s| sign(s, id, timestamp, body)).collect::<Vec<_>>().join(" ")
}

/// Why a request failed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// A header is missing or malformed.
    Malformed(String),
    /// The timestamp is outside the tolerance: a replay, or a clock far off.
    Stale {
        /// How far from now the timestamp is, in seconds (negative: in the future).
        age: i64,
    },
    /// No signature matched any secret.
    Forged,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::Malformed(why) => write!(f, "malformed webhook headers: {why}"),
            Rejection::Stale { age } => {
                write!(f, "webhook-timestamp is {age} s from now, outside the tolerance")
            }
            Rejection::Forged => f.write_str("no signature matches"),
        }
    }
}

/// Checks one request: its timestamp within `tolerance` of `now`, and any of its signatures made
/// with any of `secrets`. Signatures are compared in constant time.
pub fn verify(
    secrets: &[Secret],
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: SystemTime,
    tolerance: Duration,
) -> Result<(), Rejection> {
    if id.is_empty() || id.contains('.') {
        return Err(Rejection::Malformed("webhook-id is empty or contains '.'".into()));
    }
    let sent: u64 = timestamp.trim().parse().map_err(|_| {
        Rejection::Malformed(format!("webhook-timestamp {timestamp:?} is not unix seconds"))
    })?;
    let now = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let age = now as i64 - sent as i64;
    if age.unsigned_abs() > tolerance.as_secs() {
        return Err(Rejection::Stale { age });
    }
    let mut any = false;
    for candidate in signatures.split_whitespace() {
        let Some(encoded) = candidate.strip_prefix("v1,") else { continue };
        let Ok(signature) = BASE64.decode(encoded) else { continue };
        any = true;
        for secret in secrets {
            let mut mac = secret.mac();
            mac.update(format!("{id}.{sent}.").as_bytes());
            mac.update(body);
            if mac.verify_slice(&signature).is_ok() {
                return Ok(());
            }
        }
    }
    if !any {
        return Err(Rejection::Malformed("webhook-signature has no v1 signature".into()));
    }
    Err(Rejection::Forged)
}

/// The stable id of a delivery: `msg_` and the URL-safe base64 of topic and cursor, so it
/// holds no `.` (the spec forbids it) and two topics never share one.
pub fn message_id(topic: &Topic, cursor: Cursor) -> String {
    format!("msg_{}", BASE64_URL.encode(format!("{topic}\n{cursor}")))
}

/// A delivery's body.
#[derive(Debug, Serialize, Deserialize)]
pub struct Body {
    /// `pushpull.message` or `pushpull.gap`.
    #[serde(rename = "type")]
    pub kind: String,
    /// When the message was published (for a gap, when it was sent), RFC 3339.
    pub timestamp: String,
    /// The message or gap, as in the HTTP API.
    pub data: serde_json::Value,
}

/// The body of a delivery, as compact JSON.
pub fn encode_body(delivery: &Delivery) -> Vec<u8> {
    let (kind, time, data) = match delivery {
        Delivery::Message(m) => {
            (MESSAGE_TYPE, m.timestamp, serde_json::to_value(MessageJson::from_message(m)))
        }
        Delivery::Gap(g) => {
            (GAP_TYPE, SystemTime::now(), serde_json::to_value(GapJson::from_gap(g)))
        }
    };
    let body = Body {
        kind: kind.into(),
        timestamp: humantime::format_rfc3339_millis(time).to_string(),
        data: data.expect("deliveries encode"),
    };
    serde_json::to_vec(&body).expect("bodies encode")
}

/// The delivery a body carries.
pub fn decode_body(bytes: &[u8]) -> Result<Delivery, Error> {
    let protocol = |why: String| Error::new(ErrorKind::Protocol, why);
    let body: Body =
        serde_json::from_slice(bytes).map_err(|e| protocol(format!("bad webhook body: {e}")))?;
    match body.kind.as_str() {
        MESSAGE_TYPE => {
            let json: MessageJson = serde_json::from_value(body.data)
                .map_err(|e| protocol(format!("bad message: {e}")))?;
            Ok(Delivery::Message(json.into_message()?))
        }
        GAP_TYPE => {
            let json: GapJson =
                serde_json::from_value(body.data).map_err(|e| protocol(format!("bad gap: {e}")))?;
            Ok(Delivery::Gap(json.into_gap()?))
        }
        other => Err(protocol(format!("unknown webhook type {other:?}"))),
    }
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pushpull_core::{Epoch, Offset, Publication};

    #[test]
    fn the_published_test_vector_reproduces() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature =
            sign(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let at = UNIX_EPOCH + Duration::from_secs(1614265330 + 10);
        let header = format!("v1,bm9wZQ== {signature}");
        assert_eq!(
            verify(
                &[secret],
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                "1614265330",
                &header,
                br#"{"test": 2432232314}"#,
                at,
                Duration::from_secs(300)
            ),
            Ok(())
        );
    }

    #[test]
    fn forged_stale_and_malformed_requests_are_rejected() {
        let secret = Secret::generate();
        let other = Secret::generate();
        let now = SystemTime::now();
        let ts = unix_now();
        let body = b"{}";
        let good = sign(&secret, "msg_1", ts, body);
        let tolerance = Duration::from_secs(300);
        assert_eq!(
            verify(
                std::slice::from_ref(&secret),
                "msg_1",
                &ts.to_string(),
                &good,
                body,
                now,
                tolerance
            ),
            Ok(())
        );
        // Rotation: either key verifies.
        let both = signature_header(&[other.clone(), secret.clone()], "msg_1", ts, body);
        assert_eq!(
            verify(
                std::slice::from_ref(&secret),
                "msg_1",
                &ts.to_string(),
                &both,
                body,
                now,
                tolerance
            ),
            Ok(())
        );
        assert_eq!(
            verify(&[other], "msg_1", &ts.to_string(), &good, body, now, tolerance),
            Err(Rejection::Forged)
        );
        assert_eq!(
            verify(
                std::slice::from_ref(&secret),
                "msg_1",
                &ts.to_string(),
                &good,
                b"{ }",
                now,
                tolerance
            ),
            Err(Rejection::Forged)
        );
        assert_eq!(
            verify(
                std::slice::from_ref(&secret),
                "msg_2",
                &ts.to_string(),
                &good,
                body,
                now,
                tolerance
            ),
            Err(Rejection::Forged)
        );
        let old = ts - 301;
        let replayed = sign(&secret, "msg_1", old, body);
        assert!(matches!(
            verify(
                std::slice::from_ref(&secret),
                "msg_1",
                &old.to_string(),
                &replayed,
                body,
                now,
                tolerance
            ),
            Err(Rejection::Stale { .. })
        ));
        assert!(matches!(
            verify(std::slice::from_ref(&secret), "msg_1", "soon", &good, body, now, tolerance),
            Err(Rejection::Malformed(_))
        ));
        assert!(matches!(
            verify(
                std::slice::from_ref(&secret),
                "msg_1",
                &ts.to_string(),
                "v2,abc",
                body,
                now,
                tolerance
            ),
            Err(Rejection::Malformed(_))
        ));
    }

    #[test]
    fn secrets_parse_with_or_without_the_prefix_and_refuse_bad_ones() {
        let secret = Secret::generate();
        assert_eq!(Secret::parse(&secret.to_string()).unwrap(), secret);
        assert_eq!(
            Secret::parse(secret.to_string().trim_start_matches(SECRET_PREFIX)).unwrap(),
            secret
        );
        assert!(Secret::parse("whsec_!!!").unwrap_err().message().contains("base64"));
        assert!(Secret::parse("whsec_c2hvcnQ=").unwrap_err().message().contains("24 to 64"));
    }

    #[test]
    fn ids_are_stable_dotless_and_distinct() {
        let cursor = Cursor::After(Epoch::from_u64(5), Offset(9));
        let a = message_id(&Topic::new("a.b").unwrap(), cursor);
        assert_eq!(a, message_id(&Topic::new("a.b").unwrap(), cursor));
        assert!(!a.contains('.'));
        assert_ne!(a, message_id(&Topic::new("a_b").unwrap(), cursor));
    }

    #[test]
    fn bodies_round_trip() {
        let message = Publication::new(vec![0xffu8, 0]).event("e").into_message(
            Topic::new("t").unwrap(),
            Epoch::from_u64(3),
            Offset(4),
        );
        let decoded = decode_body(&encode_body(&Delivery::Message(message.clone()))).unwrap();
        let decoded = decoded.as_message().unwrap();
        assert_eq!((decoded.payload.clone(), decoded.offset), (message.payload, message.offset));
    }
}
