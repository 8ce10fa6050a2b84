//! gzip for pages (RFC 9110, section 8.4.1.3): the server compresses a page when the client's
//! `Accept-Encoding` takes gzip and the page is long enough to gain from it; the client asks
//! for it and inflates what comes back, never past the body limit it would take uncompressed.
//!
//! Compression is level 1 (the fastest; nginx's default too): a page is JSON, whose repeated
//! keys and cursors shrink most at the first level, and a page is compressed for every request
//! that reads it, so each further level would cost every poll more CPU for little.

use std::io::Read;

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

thread_local! {
    /// A compressor per thread, reset between pages: making one allocates and clears its tables,
    /// which costs far more than compressing a page of a few KiB (80 µs against a few).
    static DEFLATER: std::cell::RefCell<flate2::Compress> =
        std::cell::RefCell::new(flate2::Compress::new(flate2::Compression::new(1), false));
}

/// The gzip header (RFC 1952) this server writes: deflate, no name or time, unknown OS.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// `body`, gzip-compressed at level 1.
pub(crate) fn compress(body: &[u8]) -> Vec<u8> {
    // JSON pages shrink to well under half; a quarter is a fair first guess.
    let mut out = Vec::with_capacity(body.len() / 4 + 64);
    out.extend_from_slice(&HEADER);
    DEFLATER.with_borrow_mut(|deflater| {
        deflater.reset();
        loop {
            let consumed = usize::try_from(deflater.total_in()).expect("a page fits in memory");
            let status = deflater
                .compress_vec(&body[consumed..], &mut out, flate2::FlushCompress::Finish)
                .expect("deflating into a Vec with room cannot fail");
            if status == flate2::Status::StreamEnd {
                break;
            }
            // Out of room: give it more, and go on from where it stopped.
            out.reserve(out.capacity().max(64));
        }
    });
    let mut crc = flate2::Crc::new();
    crc.update(body);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    // ISIZE: the length modulo 2^32.
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out
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
    fn a_body_that_compresses_badly_still_comes_back_whole() {
        // Bytes that do not repeat: the output outgrows its first guess, again and again.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let noise: Vec<u8> = (0..1 << 20)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let compressed = compress(&noise);
        assert!(compressed.len() > noise.len(), "noise does not shrink");
        assert_eq!(inflate(&compressed, noise.len()).unwrap(), Bytes::from(noise));
        // And the compressor, reset, serves the next page as if new.
        let page = b"{\"messages\":[]}".repeat(100);
        assert_eq!(inflate(&compress(&page), page.len()).unwrap(), Bytes::from(page));
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
