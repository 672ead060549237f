//! Request body decoding: optional gzip, bounded so a small compressed body cannot
//! expand without limit (gzip bomb). Must not parse JSON (that is `parse`).

use crate::SegmentError;
use std::borrow::Cow;
use std::io::Read as _;

/// The body as JSON bytes: gunzipped when `content_encoding` is `gzip` (or `x-gzip`),
/// as is when it is absent or `identity`. More than `body_bytes_max` bytes after
/// decoding → `SegmentError::TooLarge`; the decoder never produces more than
/// `body_bytes_max + 1` bytes, whatever the compressed input claims.
pub fn decode_body<'a>(body: &'a [u8], content_encoding: Option<&str>, body_bytes_max: usize) -> Result<Cow<'a, [u8]>, SegmentError> {
    let too_large = || SegmentError::TooLarge { limit_bytes: body_bytes_max };
    let encoding = content_encoding.map(str::trim).unwrap_or("");
    if encoding.is_empty() || encoding.eq_ignore_ascii_case("identity") {
        if body.len() > body_bytes_max {
            return Err(too_large());
        }
        return Ok(Cow::Borrowed(body));
    }
    if !(encoding.eq_ignore_ascii_case("gzip") || encoding.eq_ignore_ascii_case("x-gzip")) {
        return Err(SegmentError::UnsupportedEncoding { encoding: encoding.chars().take(64).collect() });
    }
    let limit = u64::try_from(body_bytes_max).unwrap_or(u64::MAX).saturating_add(1);
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(body_bytes_max.saturating_add(1)));
    flate2::read::MultiGzDecoder::new(body).take(limit).read_to_end(&mut out).map_err(|e| SegmentError::BadGzip { reason: e.to_string().to_lowercase() })?;
    if out.len() > body_bytes_max {
        return Err(too_large());
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn gzip_body_is_decoded() {
        let json = br#"{"batch":[]}"#;
        assert_eq!(&*decode_body(&gzip(json), Some("gzip"), 1024).unwrap(), json);
        assert_eq!(&*decode_body(&gzip(json), Some(" GZIP "), 1024).unwrap(), json);
    }

    #[test]
    fn plain_body_is_borrowed_not_copied() {
        let json = br#"{"a":1}"#;
        assert!(matches!(decode_body(json, None, 1024).unwrap(), Cow::Borrowed(_)));
        assert!(matches!(decode_body(json, Some("identity"), 1024).unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn size_limit_applies_to_plain_bodies_and_names_the_limit() {
        assert!(decode_body(&[b' '; 100], None, 100).is_ok());
        let e = decode_body(&[b' '; 101], None, 100).unwrap_err();
        assert_eq!(e, SegmentError::TooLarge { limit_bytes: 100 });
        assert_eq!(e.http_status(), 413);
        assert!(e.to_string().contains("100 bytes"), "{e}");
    }

    #[test]
    fn size_limit_applies_after_gzip_decoding_so_bombs_are_bounded() {
        // 50 MB of zeros compresses to ~50 KB; decoding stops after limit+1 bytes.
        let bomb = gzip(&vec![0u8; 50 * 1024 * 1024]);
        assert!(bomb.len() < 100 * 1024);
        assert_eq!(decode_body(&bomb, Some("gzip"), 500 * 1024).unwrap_err(), SegmentError::TooLarge { limit_bytes: 500 * 1024 });
        let exact = gzip(&[b' '; 100]);
        assert_eq!(decode_body(&exact, Some("gzip"), 100).unwrap().len(), 100);
        assert!(decode_body(&exact, Some("gzip"), 99).is_err());
    }

    #[test]
    fn corrupt_gzip_and_unknown_encodings_are_rejected() {
        let e = decode_body(b"{\"not\":\"gzip\"}", Some("gzip"), 1024).unwrap_err();
        assert!(matches!(e, SegmentError::BadGzip { .. }), "{e:?}");
        assert_eq!(e.http_status(), 400);
        let mut truncated = gzip(br#"{"batch":[]}"#);
        truncated.truncate(truncated.len() - 6);
        assert!(matches!(decode_body(&truncated, Some("gzip"), 1024), Err(SegmentError::BadGzip { .. })));
        let e = decode_body(b"x", Some("br"), 1024).unwrap_err();
        assert_eq!(e.http_status(), 415);
    }
}
