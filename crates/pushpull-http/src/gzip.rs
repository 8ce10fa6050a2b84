//! gzip for pages (RFC 9110, section 8.4.1.3): the server compresses a page when the client's
//! `Accept-Encoding` takes gzip and the page is long enough to gain from it; the client asks
//! for it and inflates what comes back, never past the body limit it would take uncompressed.
//!
//! Compression is level 1 (the fastest; nginx's default too): a page is JSON, whose repeated
//! keys and cursors shrink most at the first level, and a page is compressed for every request
//! that reads it, so each further level would cost every poll more CPU for little.

use std::io::{Read, Write};

use bytes::Bytes;
use http::{HeaderMap, header};

/// The coding name in `Content-Encoding` and `Accept-Encoding`.
pub(crate) const GZIP: &str = "gzip";

/// Whether `headers`' `Accept-Encoding` takes gzip: `gzip` (or its old name `x-gzip`) with a
/// weight above zero, or else `*` with one; a missing header takes no coding (the server need
/// not guess, and answers as it always did).
pub(crate) fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut gzip: Option<f32> = None;
    let mut any: Option<f32> = None;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(text) = value.to_str() else { continue };
        for item in text.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or_default().trim();
            let weight = parts
                .find_map(|p| {
                    let p = p.trim();
                    p.strip_prefix("q=").or_else(|| p.strip_prefix("Q="))
                })
                // A weight that does not parse takes nothing: the safe reading.
                .map_or(1.0, |q| q.trim().parse::<f32>().unwrap_or(0.0));
            if coding.eq_ignore_ascii_case(GZIP) || coding.eq_ignore_ascii_case("x-gzip") {
                gzip = Some(gzip.map_or(weight, |w| w.max(weight)));
            } else if coding == "*" {
                any = Some(weight);
            }
        }
    }
    gzip.or(any).is_some_and(|weight| weight > 0.0)
}

/// `body`, gzip-compressed at level 1.
pub(crate) fn compress(body: &[u8]) -> Vec<u8> {
    // JSON pages shrink to well under half; a quarter is a fair first guess.
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::new(1),
    );
    encoder.write_all(body).expect("writing to a Vec cannot fail");
    encoder.finish().expect("writing to a Vec cannot fail")
}

/// Why a compressed body could not be read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum InflateError {
    /// It inflates past `max` bytes.
    TooLarge,
    /// It is not gzip, or it is cut off; the reason.
    Corrupt(String),
}

/// `body`, a gzip stream, inflated: at most `max` bytes, or [`InflateError::TooLarge`] (a small
/// body may inflate to any size, and is stopped at the limit, not after).
pub(crate) fn inflate(body: &[u8], max: usize) -> Result<Bytes, InflateError> {
    let mut inflated = Vec::with_capacity(body.len().saturating_mul(4).min(max));
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    flate2::read::GzDecoder::new(body)
        .take(limit)
        .read_to_end(&mut inflated)
        .map_err(|e| InflateError::Corrupt(e.to_string()))?;
    if inflated.len() > max {
        return Err(InflateError::TooLarge);
    }
    Ok(Bytes::from(inflated))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn accepts(values: &[&str]) -> bool {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::ACCEPT_ENCODING, HeaderValue::from_str(value).unwrap());
        }
        accepts_gzip(&headers)
    }

    #[test]
    fn accept_encoding_forms() {
        assert!(!accepts(&[]), "no header: no coding");
        assert!(accepts(&["gzip"]));
        assert!(accepts(&["GZip"]), "codings are case-insensitive");
        assert!(accepts(&["x-gzip"]));
        assert!(accepts(&["gzip, deflate, br, zstd"]), "what browsers send");
        assert!(accepts(&["br;q=1.0, gzip;q=0.8, *;q=0.1"]));
        assert!(accepts(&["br", "gzip"]), "header lines add up");
        assert!(accepts(&["*"]), "anything goes");
        assert!(!accepts(&["gzip;q=0"]), "weight zero refuses");
        assert!(!accepts(&["gzip;q=0.000"]));
        assert!(!accepts(&["*, gzip;q=0"]), "a named coding overrides *");
        assert!(accepts(&["*;q=0, gzip"]));
        assert!(!accepts(&["*;q=0"]));
        assert!(!accepts(&["identity"]));
        assert!(!accepts(&["br, deflate"]));
        assert!(!accepts(&["gzip;q=abc"]), "a weight that does not parse takes nothing");
        assert!(!accepts(&["gzipped"]), "a coding is matched whole");
    }

    #[test]
    fn what_is_compressed_inflates_to_itself() {
        let body =
            br#"{"messages":[{"offset":1,"data":"hello"},{"offset":2,"data":"hello"}]}"#.repeat(50);
        let compressed = compress(&body);
        assert!(compressed.len() * 4 < body.len(), "{} of {}", compressed.len(), body.len());
        assert_eq!(inflate(&compressed, body.len()).unwrap(), Bytes::from(body.clone()));
        assert_eq!(inflate(&compressed, body.len() - 1), Err(InflateError::TooLarge));
    }

    #[test]
    fn a_body_that_is_not_gzip_or_is_cut_off_says_so() {
        assert!(matches!(inflate(b"{\"plain\":true}", 1024), Err(InflateError::Corrupt(_))));
        let compressed = compress(&[b'x'; 4096]);
        let cut = &compressed[..compressed.len() - 6];
        assert!(matches!(inflate(cut, 1 << 20), Err(InflateError::Corrupt(_))));
    }

    #[test]
    fn a_small_body_that_inflates_past_the_limit_is_stopped_there() {
        // 16 MiB of zeros compress to a hundredth of that, and less.
        let bomb = compress(&vec![0u8; 16 << 20]);
        assert!(bomb.len() < (16 << 20) / 100, "{}", bomb.len());
        assert_eq!(inflate(&bomb, 1 << 20), Err(InflateError::TooLarge));
    }
}
