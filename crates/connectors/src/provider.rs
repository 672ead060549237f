//! Pieces shared by the HTTP provider connectors (Twilio, FCM, APNs): configuration errors,
//! secrets from a value or a named environment variable (looked up through a function
//! the binary supplies: library crates never read the environment themselves), the
//! reqwest client (rustls), PEM keys, bounded response reading and the error → outcome rules
//! common to every provider (timeouts and connection errors are transient).

use crate::DeliveryError;
use serde::Deserialize;
use std::time::Duration;

/// A provider's configuration is unusable; `field` names the setting.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { field: field.into(), message: message.into() }
    }
}

/// Looks up an environment variable by name. The binary passes
/// `&|name| std::env::var(name).ok()`; tests pass a map.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Most bytes of a provider response read (larger bodies are cut: only error details
/// and small JSON documents are expected).
pub const RESPONSE_BYTES_MAX: usize = 64 * 1024;
/// Most characters of a provider message quoted in an outcome detail.
pub const DETAIL_CHARS_MAX: usize = 300;

/// A secret given inline (`value`) or by the name of an environment variable
/// (`env_name`); exactly one must be set.
pub fn secret(field: &str, value: &Option<String>, env_name: &Option<String>, env: EnvLookup<'_>) -> Result<String, ConfigError> {
    match (value.as_deref().filter(|v| !v.is_empty()), env_name.as_deref().filter(|v| !v.is_empty())) {
        (Some(_), Some(_)) => Err(ConfigError::new(field, format!("set either {field} or {field}_env, not both"))),
        (Some(v), None) => Ok(v.to_string()),
        (None, Some(name)) => match env(name) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(ConfigError::new(format!("{field}_env"), format!("the environment variable {name} is not set or empty"))),
        },
        (None, None) => Err(ConfigError::new(field, format!("is required: set {field} or {field}_env (the name of an environment variable holding it)"))),
    }
}

/// Reads durations written as `10s`, `500ms`, `1m` (the format of Chorus's config).
pub fn deserialize_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    let ms = chorus_types::time::parse_duration_ms(&text).map_err(serde::de::Error::custom)?;
    if ms <= 0 {
        return Err(serde::de::Error::custom(format!("duration {text:?} must be positive")));
    }
    Ok(Duration::from_millis(ms as u64))
}

/// The HTTP client of a provider: rustls, the given per-request timeout.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, ConfigError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("chorus/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ConfigError::new("http client", e.to_string()))
}

/// A request that got no HTTP response: always worth retrying.
pub fn request_error(provider: &str, e: &reqwest::Error) -> DeliveryError {
    if e.is_timeout() {
        DeliveryError::Transient(format!("{provider} request timeout: {e}"))
    } else {
        DeliveryError::Transient(format!("{provider} request failed: {e}"))
    }
}

/// The response body, at most [`RESPONSE_BYTES_MAX`] bytes of it.
pub async fn read_body(provider: &str, mut response: reqwest::Response) -> Result<Vec<u8>, DeliveryError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| request_error(provider, &e))? {
        let room = RESPONSE_BYTES_MAX - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == RESPONSE_BYTES_MAX {
            break;
        }
    }
    Ok(body)
}

/// Seconds from a `Retry-After` header: delay-seconds (the form providers use) or an
/// HTTP date, counted from the system clock.
pub fn retry_after_secs(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    parse_retry_after(value, now_s).map(|d| d.as_secs())
}

/// A `Retry-After` value: delay-seconds, or an HTTP date compared with `now_s` (a date in
/// the past is no wait). Unbounded: callers clip it to their `retry_after_max`.
pub fn parse_retry_after(value: &str, now_s: i64) -> Option<std::time::Duration> {
    let value = value.trim();
    let secs = match value.parse::<u64>() {
        Ok(s) => s,
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            let at_s = at.duration_since(std::time::SystemTime::UNIX_EPOCH).ok()?.as_secs() as i64;
            at_s.saturating_sub(now_s).max(0) as u64
        }
    };
    Some(std::time::Duration::from_secs(secs))
}

/// A transient error that waits at least the provider's `Retry-After`, when it gave one.
pub fn transient(detail: String, retry_after: Option<u64>) -> crate::DeliveryError {
    match retry_after {
        Some(s) => crate::DeliveryError::TransientAfter(format!("{detail}: retry after {s}s"), std::time::Duration::from_secs(s)),
        None => crate::DeliveryError::Transient(detail),
    }
}

/// `text` cut to [`DETAIL_CHARS_MAX`] characters for an outcome detail.
pub fn clip(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(DETAIL_CHARS_MAX) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// The DER inside the first PEM block of `pem` (`-----BEGIN …-----`, base64, `-----END …-----`).
pub fn pem_der(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let start = pem.find("-----BEGIN ")?;
    let rest = &pem[start..];
    let body_start = rest.find('\n')? + 1;
    let body_end = rest.find("-----END ")?;
    let b64: String = rest.get(body_start..body_end)?.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// Percent-encodes a query-string component (RFC 3986 unreserved characters are kept).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_come_from_a_value_or_a_named_variable() {
        let env = |name: &str| (name == "TOKEN").then(|| "t0k".to_string());
        assert_eq!(secret("auth_token", &Some("v".into()), &None, &env).unwrap(), "v");
        assert_eq!(secret("auth_token", &None, &Some("TOKEN".into()), &env).unwrap(), "t0k");
        assert_eq!(secret("auth_token", &None, &Some("MISSING".into()), &env).unwrap_err().field, "auth_token_env");
        assert!(secret("auth_token", &Some("v".into()), &Some("TOKEN".into()), &env).is_err());
        assert!(secret("auth_token", &None, &None, &env).unwrap_err().message.contains("auth_token_env"));
    }

    #[test]
    fn percent_encoding_keeps_unreserved_characters() {
        assert_eq!(percent_encode("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(percent_encode("k/1 2:+é"), "k%2F1%202%3A%2B%C3%A9");
    }

    #[test]
    fn pem_blocks_are_decoded() {
        assert_eq!(pem_der("-----BEGIN PRIVATE KEY-----\nAAEC\nAw==\n-----END PRIVATE KEY-----\n").unwrap(), vec![0, 1, 2, 3]);
        assert!(pem_der("no pem").is_none());
    }

    #[test]
    fn clip_cuts_long_details_on_a_character_boundary() {
        let long = "é".repeat(DETAIL_CHARS_MAX + 5);
        assert_eq!(clip(&long).chars().count(), DETAIL_CHARS_MAX + 1);
        assert_eq!(clip(" short "), "short");
    }
}
