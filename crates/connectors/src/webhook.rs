//! The webhook connector (SPEC §8): sends an intent's rendered `Webhook` (url, method,
//! headers, body) as an HTTP request signed per the Standard Webhooks convention
//! (<https://www.standardwebhooks.com/>), with reqwest over rustls. It never decides
//! whether to send and never reads the environment or the system clock itself.
//!
//! Signing: three headers on every request —
//! - `webhook-id`: the intent key (the same on every retry, so receivers de-duplicate);
//! - `webhook-timestamp`: Unix seconds of this attempt, from the injected clock;
//! - `webhook-signature`: `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")),
//!   where the key is the bytes of the secret: the secret is written `whsec_<base64>`
//!   (the `whsec_` prefix is dropped and the rest base64-decoded; 24 to 64 bytes, as the
//!   convention recommends). An empty body signs the empty string.
//!
//! Outcomes: 2xx → `Ok`; 408, 429, 5xx, timeouts and connection failures → transient
//! (with the server's `Retry-After`, in seconds or as an HTTP date, returned as
//! [`DeliveryError::TransientAfter`] and written in the detail); 3xx → permanent
//! (redirects are not followed: a signed request goes only where the template says);
//! other 4xx → permanent (410 Gone means the receiver dropped the endpoint). A URL whose
//! scheme is not allowed (only http and https can be) is permanent before any I/O.

use crate::{Connector, DeliveryError, Env, rendered_content};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chorus_templates::{Content, Webhook};
use chorus_types::Intent;
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use sha2::Sha256;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// Bytes of a response body quoted in an outcome's detail at most.
pub const RESPONSE_EXCERPT_MAX: usize = 256;
/// Secret length bounds (decoded bytes), per the Standard Webhooks recommendation.
pub const SECRET_BYTES_MIN: usize = 24;
pub const SECRET_BYTES_MAX: usize = 64;
/// The longest `Retry-After` taken from a server (a larger one is clipped to it).
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(24 * 3600);
/// HTTP methods a rendered webhook may use.
pub const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];
/// Headers the connector writes itself; a rendered webhook may not set them.
const RESERVED_HEADERS: &[&str] = &["webhook-id", "webhook-timestamp", "webhook-signature", "host", "content-length", "transfer-encoding", "connection"];

/// The current time in Unix milliseconds (the node's system clock in production; a
/// fixed or stepped value in tests).
pub type Clock = Box<dyn Fn() -> i64 + Send + Sync>;

/// Settings of the webhook connector (the `[webhook]` table of a node's config).
///
/// ```toml
/// secret_env = "CHORUS_WEBHOOK_SECRET"   # or secret = "whsec_…"
/// timeout = "10s"
/// allowed_schemes = ["https"]            # default ["https", "http"]
/// ```
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The signing secret, `whsec_` followed by the base64 of 24–64 random bytes
    /// (e.g. `echo "whsec_$(head -c 32 /dev/urandom | base64)"`). Prefer `secret_env`.
    #[serde(default)]
    pub secret: Option<String>,
    /// The name of the environment variable holding the signing secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Timeout of one request, connection to last byte, e.g. "10s".
    #[serde(default = "default_timeout")]
    pub timeout: String,
    /// URL schemes a rendered webhook may use: any of "https" and "http".
    #[serde(default = "default_schemes")]
    pub allowed_schemes: Vec<String>,
}

fn default_timeout() -> String {
    "10s".into()
}

fn default_schemes() -> Vec<String> {
    vec!["https".into(), "http".into()]
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_env", &self.secret_env)
            .field("timeout", &self.timeout)
            .field("allowed_schemes", &self.allowed_schemes)
            .finish()
    }
}

impl WebhookConfig {
    /// A config signing with `secret` (`whsec_…`), with the defaults for the rest.
    pub fn with_secret(secret: impl Into<String>) -> WebhookConfig {
        WebhookConfig { secret: Some(secret.into()), secret_env: None, timeout: default_timeout(), allowed_schemes: default_schemes() }
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Result<Duration, String> {
        let ms = chorus_types::time::parse_duration_ms(&self.timeout).map_err(|e| format!("webhook timeout: {e}"))?;
        if ms <= 0 {
            return Err("webhook timeout must be positive".into());
        }
        Ok(Duration::from_millis(ms as u64))
    }

    /// The signing secret: `secret`, or the variable `secret_env` names (looked up with `env`).
    pub fn resolve_secret(&self, env: Env<'_>) -> Result<WebhookSecret, String> {
        let text = match (&self.secret, &self.secret_env) {
            (Some(_), Some(_)) => return Err("webhook: set secret or secret_env, not both".into()),
            (Some(s), None) => s.clone(),
            (None, Some(name)) => env(name).ok_or_else(|| format!("webhook secret_env: the variable {name} is not set"))?,
            (None, None) => return Err("webhook: a signing secret is required (secret_env or secret, `whsec_<base64>`)".into()),
        };
        WebhookSecret::parse(&text)
    }

    /// Check every field (without connecting).
    pub fn validate(&self, env: Env<'_>) -> Result<(), String> {
        self.timeout()?;
        self.resolve_secret(env)?;
        if self.allowed_schemes.is_empty() {
            return Err("webhook allowed_schemes is empty".into());
        }
        for s in &self.allowed_schemes {
            if s != "https" && s != "http" {
                return Err(format!("webhook allowed_schemes: {s:?} is not allowed (only \"https\" and \"http\")"));
            }
        }
        Ok(())
    }
}

/// The key bytes of a `whsec_<base64>` secret.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebhookSecret(<{} bytes>)", self.0.len())
    }
}

impl WebhookSecret {
    /// Parse `whsec_<base64>` (standard alphabet, padded).
    pub fn parse(text: &str) -> Result<WebhookSecret, String> {
        let b64 = text.trim().strip_prefix("whsec_").ok_or("webhook secret must start with whsec_ (whsec_<base64 of the key>)")?;
        let key = BASE64.decode(b64).map_err(|e| format!("webhook secret: the part after whsec_ is not base64: {e}"))?;
        if !(SECRET_BYTES_MIN..=SECRET_BYTES_MAX).contains(&key.len()) {
            return Err(format!("webhook secret: {} bytes; it must be {SECRET_BYTES_MIN} to {SECRET_BYTES_MAX} bytes", key.len()));
        }
        Ok(WebhookSecret(key))
    }

    /// The `webhook-signature` value for a message: `v1,<base64 HMAC-SHA256>` of
    /// `"{id}.{timestamp}.{body}"`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }
}

/// Sends signed webhooks. Cheap to share: connections are pooled inside.
pub struct WebhookConnector {
    client: reqwest::Client,
    secret: WebhookSecret,
    allowed_schemes: Vec<String>,
    clock: Clock,
}

impl WebhookConnector {
    /// A connector for `cfg` (validated; `env` resolves `secret_env`) stamping requests
    /// with `clock` (Unix milliseconds).
    pub fn new(cfg: WebhookConfig, env: Env<'_>, clock: Clock) -> Result<WebhookConnector, String> {
        cfg.validate(env)?;
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout()?)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("chorus-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("webhook http client: {e}"))?;
        Ok(WebhookConnector { client, secret: cfg.resolve_secret(env)?, allowed_schemes: cfg.allowed_schemes, clock })
    }

    /// The request this connector sends for `intent` at Unix second `timestamp`.
    pub fn request(&self, intent: &Intent, timestamp: i64) -> Result<reqwest::Request, DeliveryError> {
        let Content::Webhook(hook) = rendered_content(intent, "webhook")? else { unreachable!("rendered_content checks the channel") };
        self.build(intent, &hook, timestamp)
    }

    fn build(&self, intent: &Intent, hook: &Webhook, timestamp: i64) -> Result<reqwest::Request, DeliveryError> {
        let permanent = |m: String| DeliveryError::Permanent(format!("intent {}: {m}", intent.key));
        let url = reqwest::Url::parse(hook.url.trim()).map_err(|e| permanent(format!("bad url {:?}: {e}", hook.url)))?;
        if !self.allowed_schemes.iter().any(|s| s == url.scheme()) {
            return Err(permanent(format!("url scheme {:?} is not allowed (allowed: {})", url.scheme(), self.allowed_schemes.join(", "))));
        }
        let method = hook.method.trim().to_ascii_uppercase();
        let method = match METHODS.iter().find(|m| **m == method) {
            Some(m) => reqwest::Method::from_bytes(m.as_bytes()).expect("known method"),
            None => {
                return Err(permanent(format!("method {:?} is not one of {}", hook.method, METHODS.join(", "))));
            }
        };
        let body = hook.body.clone().unwrap_or_default();
        let mut headers = HeaderMap::new();
        for (name, value) in &hook.headers {
            if RESERVED_HEADERS.iter().any(|r| r.eq_ignore_ascii_case(name)) {
                return Err(permanent(format!("header {name} is set by the connector, not by the template")));
            }
            let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| permanent(format!("header name {name:?} is not valid")))?;
            let v = HeaderValue::from_str(value).map_err(|_| permanent(format!("header {name} has a value that is not valid in HTTP")))?;
            headers.append(n, v);
        }
        if hook.body.is_some() && !headers.contains_key(reqwest::header::CONTENT_TYPE) {
            headers.insert(reqwest::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let signature = self.secret.sign(&intent.key, timestamp, body.as_bytes());
        let id = HeaderValue::from_str(&intent.key).map_err(|_| permanent("the intent key is not a valid header value".into()))?;
        headers.insert("webhook-id", id);
        headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
        headers.insert("webhook-signature", HeaderValue::from_str(&signature).expect("base64 is a valid header value"));
        let mut req = self.client.request(method, url).headers(headers);
        if hook.body.is_some() {
            req = req.body(body);
        }
        req.build().map_err(|e| permanent(format!("cannot build the request: {e}")))
    }
}

impl Connector for WebhookConnector {
    fn name(&self) -> &str {
        "webhook"
    }

    fn deliver<'a>(&'a self, intent: &'a Intent) -> Pin<Box<dyn Future<Output = Result<String, DeliveryError>> + Send + 'a>> {
        Box::pin(async move {
            let now_s = (self.clock)().div_euclid(1000);
            let request = self.request(intent, now_s)?;
            let target = format!("{} {}", request.method(), request.url());
            let mut response = match self.client.execute(request).await {
                Ok(r) => r,
                Err(e) if e.is_builder() => {
                    return Err(DeliveryError::Permanent(format!("{target}: {e}")));
                }
                Err(e) if e.is_timeout() => {
                    return Err(DeliveryError::Transient(format!("{target}: timed out: {e}")));
                }
                Err(e) => return Err(DeliveryError::Transient(format!("{target}: {e}"))),
            };
            let status = response.status();
            let retry_after = response.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| parse_retry_after(v, now_s));
            let location = response.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_string);
            let excerpt = excerpt(&mut response).await;
            let reply = format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or("")).trim_end().to_string();
            let with_body = |s: String| {
                if excerpt.is_empty() { s } else { format!("{s}: {excerpt}") }
            };
            let code = status.as_u16();
            if status.is_success() {
                return Ok(with_body(reply));
            }
            if code == 408 || code == 429 || status.is_server_error() {
                return Err(match retry_after {
                    Some(after) => DeliveryError::TransientAfter(with_body(format!("{reply} (retry after {}s)", after.as_secs())), after),
                    None => DeliveryError::Transient(with_body(reply)),
                });
            }
            if status.is_redirection() {
                let to = location.map(|l| format!(" to {l}")).unwrap_or_default();
                return Err(DeliveryError::Permanent(format!("{reply}: redirect{to} not followed (signed webhooks go only to the rendered url)")));
            }
            if code == 410 {
                return Err(DeliveryError::Permanent(with_body(format!("{reply} (the receiver removed this endpoint)"))));
            }
            Err(DeliveryError::Permanent(with_body(reply)))
        })
    }
}

/// A `Retry-After` value: delay-seconds, or an HTTP date compared with `now_s`, at most
/// [`RETRY_AFTER_MAX`].
pub fn parse_retry_after(value: &str, now_s: i64) -> Option<Duration> {
    crate::provider::parse_retry_after(value, now_s).map(|d| d.min(RETRY_AFTER_MAX))
}

/// The first bytes of a response body, on one line, at most [`RESPONSE_EXCERPT_MAX`].
async fn excerpt(response: &mut reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < RESPONSE_EXCERPT_MAX {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk[..chunk.len().min(RESPONSE_EXCERPT_MAX - bytes.len())]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_templates::Rendered;
    use chorus_types::{Category, CustomerId, JsonMap};
    use std::collections::BTreeMap;

    /// The example of the Standard Webhooks specification and its reference libraries.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn rule_webhook_signature_follows_standard_webhooks() {
        let secret = WebhookSecret::parse(SPEC_SECRET).unwrap();
        // Computed independently with Python's hmac:
        // python3 -c 'import hmac,hashlib,base64; k=base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        //   print(base64.b64encode(hmac.new(k, b"msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{\"test\": 2432232314}",
        //   hashlib.sha256).digest()).decode())'
        // → g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE= (also the spec libraries' test vector)
        assert_eq!(secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#), "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        // An empty body signs "{id}.{timestamp}.":
        // python3 -c 'import hmac,hashlib,base64; k=base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        //   print(base64.b64encode(hmac.new(k, b"k1.1790000000.", hashlib.sha256).digest()).decode())'
        assert_eq!(secret.sign("k1", 1790000000, b""), "v1,As2pwTNPdv22essazx9KktqATXhttesFWgWWLn70dBc=");
    }

    #[test]
    fn rule_webhook_secret_is_whsec_base64_of_24_to_64_bytes() {
        assert!(WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err().contains("whsec_"));
        assert!(WebhookSecret::parse("whsec_not*base64").unwrap_err().contains("not base64"));
        assert!(WebhookSecret::parse("whsec_c2hvcnQ=").unwrap_err().contains("5 bytes"));
        assert_eq!(format!("{:?}", WebhookSecret::parse(SPEC_SECRET).unwrap()), "WebhookSecret(<24 bytes>)");
    }

    fn hook(url: &str, method: &str, body: Option<&str>) -> Content {
        Content::Webhook(Webhook { url: url.into(), method: method.into(), headers: BTreeMap::new(), body: body.map(Into::into) })
    }

    fn intent(key: &str, content: Content) -> Intent {
        Intent {
            key: key.into(),
            customer: CustomerId::new(1, 2),
            channel: "webhook".into(),
            template: "crm-sync".into(),
            category: Category::Transactional,
            to: String::new(),
            vars: JsonMap::new(),
            journey: String::new(),
            created_ms: 1,
            content: serde_json::to_string(&Rendered { template: "crm-sync".into(), locale: None, content }).unwrap(),
        }
    }

    fn connector(schemes: &[&str]) -> WebhookConnector {
        let cfg = WebhookConfig { allowed_schemes: schemes.iter().map(|s| s.to_string()).collect(), ..WebhookConfig::with_secret(SPEC_SECRET) };
        WebhookConnector::new(cfg, &no_env, Box::new(|| 1_790_000_000_999)).unwrap()
    }

    #[test]
    fn rule_webhook_request_carries_id_timestamp_and_signature() {
        let c = connector(&["https", "http"]);
        let mut content = hook("https://crm.example/hooks/chorus", "post", Some(r#"{"event":"cart"}"#));
        if let Content::Webhook(w) = &mut content {
            w.headers.insert("X-Tenant".into(), "acme".into());
        }
        let req = c.request(&intent("out/7", content), 1_790_000_000).unwrap();
        assert_eq!(req.method(), reqwest::Method::POST);
        assert_eq!(req.url().as_str(), "https://crm.example/hooks/chorus");
        let h = |n: &str| req.headers().get(n).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(h("webhook-id").as_deref(), Some("out/7"));
        assert_eq!(h("webhook-timestamp").as_deref(), Some("1790000000"));
        let expected = WebhookSecret::parse(SPEC_SECRET).unwrap().sign("out/7", 1_790_000_000, br#"{"event":"cart"}"#);
        assert_eq!(h("webhook-signature"), Some(expected));
        assert_eq!(h("content-type").as_deref(), Some("application/json"));
        assert_eq!(h("x-tenant").as_deref(), Some("acme"));
        assert_eq!(req.body().and_then(|b| b.as_bytes()), Some(&br#"{"event":"cart"}"#[..]));
    }

    #[test]
    fn rule_webhook_refuses_other_schemes_methods_and_signature_headers() {
        let c = connector(&["https"]);
        let permanent = |content: Content, why: &str| {
            let err = c.request(&intent("k", content), 1).unwrap_err();
            assert!(matches!(&err, DeliveryError::Permanent(d) if d.contains(why)), "{why}: {err}");
        };
        permanent(hook("http://crm.example/x", "POST", None), "scheme \"http\" is not allowed");
        permanent(hook("file:///etc/passwd", "POST", None), "scheme \"file\" is not allowed");
        permanent(hook("not a url", "POST", None), "bad url");
        permanent(hook("https://crm.example/x", "TRACE", None), "method \"TRACE\"");
        let mut spoof = hook("https://crm.example/x", "POST", None);
        if let Content::Webhook(w) = &mut spoof {
            w.headers.insert("Webhook-Signature".into(), "v1,forged".into());
        }
        permanent(spoof, "set by the connector");
        let email =
            Content::Email(chorus_templates::Email { subject: "s".into(), preheader: None, html: None, text: Some("t".into()), headers: BTreeMap::new() });
        permanent(email, "is a email message, not webhook");
        let cfg = WebhookConfig { allowed_schemes: vec!["ftp".into()], ..WebhookConfig::with_secret(SPEC_SECRET) };
        assert!(cfg.validate(&no_env).unwrap_err().contains("\"ftp\" is not allowed"));
    }

    #[test]
    fn rule_retry_after_is_seconds_or_an_http_date() {
        assert_eq!(parse_retry_after("7", 0), Some(Duration::from_secs(7)));
        // 1994-11-06T08:49:37Z = 784111777
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784_111_770), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784_111_800), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", 0), None);
        assert_eq!(parse_retry_after("99999999", 0), Some(RETRY_AFTER_MAX));
    }

    #[test]
    fn config_resolves_the_secret_from_env_and_redacts_it() {
        let cfg: WebhookConfig = serde_json::from_value(serde_json::json!({"secret_env": "HOOK_SECRET", "timeout": "3s"})).unwrap();
        let env = |k: &str| (k == "HOOK_SECRET").then(|| SPEC_SECRET.to_string());
        assert_eq!(cfg.timeout().unwrap(), Duration::from_secs(3));
        assert_eq!(cfg.allowed_schemes, vec!["https", "http"]);
        cfg.validate(&env).unwrap();
        assert!(cfg.validate(&no_env).unwrap_err().contains("HOOK_SECRET is not set"));
        assert!(WebhookConfig { secret_env: None, ..cfg.clone() }.validate(&env).unwrap_err().contains("secret is required"));
        assert!(!format!("{:?}", WebhookConfig::with_secret(SPEC_SECRET)).contains("MfKQ"));
    }
}
