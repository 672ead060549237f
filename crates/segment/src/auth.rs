//! Write-key authentication as Segment does it: HTTP Basic with the write key as the
//! user name and an empty (ignored) password. Must not compare keys (the server owns
//! the key list) nor put the header's contents into errors.

use crate::SegmentError;
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// Longest Authorization header accepted, in bytes (a write key is ~32 characters).
pub const AUTHORIZATION_LEN_MAX: usize = 1024;

/// Standard alphabet; padding optional (some HTTP clients strip it).
const BASE64: GeneralPurpose =
    GeneralPurpose::new(&base64::alphabet::STANDARD, GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent));

/// The write key from a raw `Authorization` header value, `Basic base64("WRITE_KEY:")`.
/// `None` header → `Ok(None)` (the key may still come as `writeKey` in the body).
/// The password part is ignored; a value without `:` is taken whole as the key.
pub fn write_key_from_header(header: Option<&str>) -> Result<Option<String>, SegmentError> {
    let Some(header) = header else {
        return Ok(None);
    };
    let bad = |reason: &str| SegmentError::BadAuthorization { reason: reason.to_string() };
    let header = header.trim();
    if header.is_empty() {
        return Ok(None);
    }
    if header.len() > AUTHORIZATION_LEN_MAX {
        return Err(bad(&format!("it is longer than {AUTHORIZATION_LEN_MAX} bytes")));
    }
    let (scheme, credentials) = header.split_once(' ').unwrap_or((header, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(bad("only the Basic scheme is supported (OAuth bearer tokens are not)"));
    }
    let decoded = BASE64.decode(credentials.trim()).map_err(|_| bad("the Basic credentials are not valid base64"))?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad("the Basic credentials are not UTF-8"))?;
    let key = decoded.split_once(':').map_or(decoded.as_str(), |(user, _password)| user).trim();
    if key.is_empty() {
        return Err(bad("the write key (basic-auth user name) is empty"));
    }
    Ok(Some(key.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(credentials: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(credentials))
    }

    #[test]
    fn auth_header_with_write_key_and_empty_password_gives_the_key() {
        assert_eq!(write_key_from_header(Some(&basic("wk_123:"))).unwrap(), Some("wk_123".to_string()));
    }

    #[test]
    fn auth_header_password_part_is_ignored() {
        assert_eq!(write_key_from_header(Some(&basic("wk_123:whatever"))).unwrap(), Some("wk_123".to_string()));
        assert_eq!(write_key_from_header(Some(&basic("wk_123"))).unwrap(), Some("wk_123".to_string()));
    }

    #[test]
    fn auth_header_scheme_is_case_insensitive_and_padding_optional() {
        // "wk:" is 3 bytes → "d2s6" (no padding needed); "wk_1:" → "d2tfMTo=".
        assert_eq!(write_key_from_header(Some("basic d2tfMTo")).unwrap(), Some("wk_1".to_string()));
        assert_eq!(write_key_from_header(Some("BASIC d2tfMTo=")).unwrap(), Some("wk_1".to_string()));
    }

    #[test]
    fn auth_header_missing_is_not_an_error() {
        assert_eq!(write_key_from_header(None).unwrap(), None);
        assert_eq!(write_key_from_header(Some("  ")).unwrap(), None);
    }

    #[test]
    fn auth_header_bad_base64_is_rejected_with_401() {
        let e = write_key_from_header(Some("Basic !!!not-base64!!!")).unwrap_err();
        assert!(matches!(e, SegmentError::BadAuthorization { .. }));
        assert_eq!(e.http_status(), 401);
        assert!(e.to_string().contains("base64"), "{e}");
    }

    #[test]
    fn auth_header_other_schemes_and_empty_keys_are_rejected() {
        assert!(write_key_from_header(Some("Bearer abc.def")).unwrap_err().to_string().contains("Basic"));
        assert!(write_key_from_header(Some(&basic(":secret"))).unwrap_err().to_string().contains("empty"));
        assert!(write_key_from_header(Some("Basic")).is_err());
    }

    #[test]
    fn auth_header_errors_do_not_echo_credentials() {
        let e = write_key_from_header(Some("Basic c2VjcmV0LWtleTo=\u{0}")).unwrap_err();
        assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
    }
}
