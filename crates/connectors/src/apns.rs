//! Push over APNs, the Apple Push Notification service (SPEC §8): `POST
//! {base_url}/3/device/{device token}` over HTTP/2 with token-based authentication (a
//! provider token: an ES256 JWT signed with the team's .p8 key, reused for
//! [`TOKEN_REUSE_MAX`]). It sends only rendered push content, decides nothing and retries
//! nothing itself: refused device tokens are permanent failures whose detail says
//! "unregistered" (the engine marks the token invalid); 429, 5xx and timeouts are
//! transient.
//!
//! HTTP/2 only: production talks `https` and offers only `h2` in ALPN (APNs speaks
//! nothing else); an `http://` base URL (tests, a local relay) speaks cleartext HTTP/2
//! with prior knowledge (h2c). ES256 is signed with aws-lc-rs (`EcdsaKeyPair`, P-256
//! SHA-256, the fixed-length `r‖s` encoding JWS wants): it is already in the build as the
//! rustls crypto provider, so it adds no second crypto stack.

use crate::provider::{self, ConfigError, EnvLookup};
use crate::{Connector, DeliveryError};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chorus_templates::Content;
use chorus_types::Intent;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// APNs production.
pub const PRODUCTION_BASE_URL: &str = "https://api.push.apple.com";
/// APNs sandbox (development builds of an app).
pub const SANDBOX_BASE_URL: &str = "https://api.sandbox.push.apple.com";
/// How long one provider token is reused. Apple refuses tokens older than an hour
/// (403 `ExpiredProviderToken`) and signing new ones more often than every 20 minutes
/// (429 `TooManyProviderTokenUpdates`); 50 minutes sits between with a margin for
/// clock differences.
pub const TOKEN_REUSE_MAX: Duration = Duration::from_secs(50 * 60);
/// The largest payload of an alert notification APNs accepts (bytes); a larger one is a
/// permanent failure before anything is sent (Apple would answer 413 `PayloadTooLarge`).
pub const PAYLOAD_BYTES_MAX: usize = 4096;

/// `[connectors.apns]`: an Apple developer team's push key and the app it sends to.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsConfig {
    /// The API's root: `https://api.push.apple.com` (default) or the sandbox
    /// `https://api.sandbox.push.apple.com` for development builds of the app.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// The Apple developer team id (the `iss` of provider tokens).
    pub team_id: String,
    /// The id of the push key (the `kid` of provider tokens), shown beside the key in
    /// the developer account.
    pub key_id: String,
    /// Path of the key's `.p8` file (PKCS#8 PEM of an EC P-256 private key).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name of an environment variable holding the `.p8` PEM (instead of a file;
    /// newlines may be written as `\n`).
    #[serde(default)]
    pub key_pem_env: Option<String>,
    /// The app's bundle id (the `apns-topic` of every request).
    pub topic: String,
    /// Per-request timeout (`10s` by default); a timeout is a transient error.
    #[serde(default = "default_timeout", deserialize_with = "provider::deserialize_duration")]
    pub timeout: Duration,
}

fn default_base_url() -> String {
    PRODUCTION_BASE_URL.into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl ApnsConfig {
    /// The `.p8` PEM, read from `key_file` or the environment variable `key_pem_env` names.
    pub fn key_pem(&self, env: EnvLookup<'_>) -> Result<String, ConfigError> {
        match (&self.key_file, self.key_pem_env.as_deref().filter(|v| !v.is_empty())) {
            (Some(_), Some(_)) => Err(ConfigError::new("key_file", "set either key_file or key_pem_env, not both")),
            (Some(path), None) => std::fs::read_to_string(path).map_err(|e| ConfigError::new("key_file", format!("cannot read {}: {e}", path.display()))),
            (None, Some(name)) => env(name)
                .filter(|v| !v.trim().is_empty())
                // A PEM squeezed onto one line of an env file.
                .map(|v| if v.contains('\n') { v } else { v.replace("\\n", "\n") })
                .ok_or_else(|| ConfigError::new("key_pem_env", format!("the environment variable {name} is not set or empty"))),
            (None, None) => Err(ConfigError::new("key_file", "is required: set key_file or key_pem_env (the .p8 push key from the Apple developer account)")),
        }
    }
}

/// Signs provider tokens: `{"alg":"ES256","kid":key_id}.{"iss":team_id,"iat":now}`.
pub struct TokenSigner {
    key: EcdsaKeyPair,
    key_id: String,
    team_id: String,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner").field("key_id", &self.key_id).field("team_id", &self.team_id).finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// `pem` is the `.p8` key: PKCS#8 PEM of an EC P-256 private key.
    pub fn new(pem: &str, key_id: &str, team_id: &str) -> Result<TokenSigner, ConfigError> {
        let der = provider::pem_der(pem).ok_or_else(|| ConfigError::new("key", "is not a PEM private key (a .p8 file: -----BEGIN PRIVATE KEY-----)"))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
            .map_err(|e| ConfigError::new("key", format!("is not a PKCS#8 EC P-256 private key (an APNs .p8 key): {e}")))?;
        Ok(TokenSigner { key, key_id: key_id.to_string(), team_id: team_id.to_string() })
    }

    /// A provider token issued at `iat_secs` (Unix seconds).
    pub fn token(&self, iat_secs: u64) -> Result<String, String> {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": "ES256", "kid": self.key_id}).to_string());
        let claims = URL_SAFE_NO_PAD.encode(json!({"iss": self.team_id, "iat": iat_secs}).to_string());
        let signing_input = format!("{header}.{claims}");
        let signature = self.key.sign(&aws_lc_rs::rand::SystemRandom::new(), signing_input.as_bytes()).map_err(|e| format!("sign the provider token: {e}"))?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref())))
    }
}

/// The `apns-id` of an intent: a UUID derived from its key, so every attempt of one
/// intent carries the same id (Apple identifies the notification by it and echoes it in
/// its answer and in the delivery log of the developer console). It is a version-8
/// (custom) UUID per RFC 9562 made of the first 16 bytes of SHA-256(key), lowercase
/// 8-4-4-4-12. It also serves as `apns-collapse-id`: should a retry follow an attempt
/// whose answer was lost, the device shows the notification once (APNs has no
/// idempotency key).
pub fn apns_id(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x80; // version 8
    b[8] = (b[8] & 0x3f) | 0x80; // variant 10 (RFC 9562)
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// The JSON payload of one intent: `aps.alert` from the rendered push (title, body),
/// `mutable-content: 1` when there is an image (so a notification service extension of
/// the app can fetch it), and beside `aps` the intent key, the deep link and the image.
pub fn payload(intent: &Intent) -> Result<Value, DeliveryError> {
    let push = match crate::rendered_content(intent, "push")? {
        Content::Push(push) => push,
        other => {
            return Err(DeliveryError::Permanent(format!("intent {}: rendered content is a {} message, not push", intent.key, other.channel())));
        }
    };
    let mut alert = Map::new();
    if let Some(title) = push.title.filter(|t| !t.is_empty()) {
        alert.insert("title".into(), title.into());
    }
    alert.insert("body".into(), push.body.into());
    let image = push.image.filter(|t| !t.is_empty());
    let mut aps = Map::new();
    aps.insert("alert".into(), alert.into());
    if image.is_some() {
        aps.insert("mutable-content".into(), 1.into());
    }
    let mut body = Map::new();
    body.insert("aps".into(), aps.into());
    body.insert("chorus_key".into(), intent.key.clone().into());
    if let Some(link) = push.deep_link.filter(|t| !t.is_empty()) {
        body.insert("deep_link".into(), link.into());
    }
    if let Some(image) = image {
        body.insert("image".into(), image.into());
    }
    Ok(Value::Object(body))
}

/// A provider token and when it was signed.
struct ProviderToken {
    jwt: String,
    signed: Instant,
}

impl ProviderToken {
    /// Whether to send with this token at `now`: younger than [`TOKEN_REUSE_MAX`] and
    /// not the token APNs just refused as expired.
    fn reusable(&self, now: Instant, refused: Option<&str>) -> bool {
        now.saturating_duration_since(self.signed) < TOKEN_REUSE_MAX && refused != Some(self.jwt.as_str())
    }
}

/// Delivers `push` intents to APNs device tokens.
pub struct ApnsConnector {
    client: reqwest::Client,
    base_url: String,
    topic: String,
    signer: TokenSigner,
    token: tokio::sync::Mutex<Option<ProviderToken>>,
}

impl ApnsConnector {
    /// Validate `config`, read the `.p8` key (file or `env`) and build the HTTP/2 client.
    pub fn new(config: &ApnsConfig, env: EnvLookup<'_>) -> Result<ApnsConnector, ConfigError> {
        let pem = config.key_pem(env)?;
        Self::with_key(config, &pem)
    }

    /// Like [`ApnsConnector::new`] with the key's PEM already read.
    pub fn with_key(config: &ApnsConfig, pem: &str) -> Result<ApnsConnector, ConfigError> {
        for (field, value, what) in [
            ("team_id", &config.team_id, "the Apple developer team id"),
            ("key_id", &config.key_id, "the push key's id"),
            ("topic", &config.topic, "the app's bundle id"),
        ] {
            if value.trim().is_empty() {
                return Err(ConfigError::new(field, format!("is required ({what})")));
            }
        }
        let base_url = config.base_url.trim_end_matches('/').to_string();
        if !(base_url.starts_with("https://") || base_url.starts_with("http://")) {
            return Err(ConfigError::new("base_url", format!("{base_url:?} is not an http(s) URL (APNs: {PRODUCTION_BASE_URL} or {SANDBOX_BASE_URL})")));
        }
        let signer = TokenSigner::new(pem, &config.key_id, &config.team_id)
            .map_err(|e| ConfigError::new(if config.key_file.is_some() { "key_file" } else { "key_pem_env" }, e.message))?;
        Ok(ApnsConnector { client: http2_client(config.timeout)?, base_url, topic: config.topic.clone(), signer, token: tokio::sync::Mutex::new(None) })
    }

    /// The provider token to send with: the cached one, or a newly signed one when it is
    /// too old or is `refused` (the token APNs just answered `ExpiredProviderToken` to;
    /// concurrent deliveries refused the same token re-sign it once between them).
    async fn provider_token(&self, refused: Option<&str>) -> Result<String, DeliveryError> {
        let mut cached = self.token.lock().await;
        let now = Instant::now();
        if let Some(t) = cached.as_ref().filter(|t| t.reusable(now, refused)) {
            return Ok(t.jwt.clone());
        }
        let iat = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let jwt = self.signer.token(iat).map_err(|e| DeliveryError::Transient(format!("apns auth: {e}")))?;
        *cached = Some(ProviderToken { jwt: jwt.clone(), signed: now });
        Ok(jwt)
    }

    async fn send(&self, intent: &Intent) -> Result<String, DeliveryError> {
        if intent.to.trim().is_empty() {
            return Err(DeliveryError::Permanent(format!("unregistered: intent {} has no device token", intent.key)));
        }
        let body = serde_json::to_vec(&payload(intent)?).map_err(|e| DeliveryError::Permanent(format!("apns payload: {e}")))?;
        if body.len() > PAYLOAD_BYTES_MAX {
            return Err(DeliveryError::Permanent(format!(
                "apns payload of template {:?} is {} bytes; APNs accepts at most {PAYLOAD_BYTES_MAX}",
                intent.template,
                body.len()
            )));
        }
        let url = format!("{}/3/device/{}", self.base_url, provider::percent_encode(intent.to.trim()));
        let id = apns_id(&intent.key);
        let mut refused: Option<String> = None;
        loop {
            let jwt = self.provider_token(refused.as_deref()).await?;
            let response = self
                .client
                .post(&url)
                .header(reqwest::header::AUTHORIZATION, format!("bearer {jwt}"))
                .header("apns-topic", &self.topic)
                .header("apns-push-type", "alert")
                .header("apns-priority", "10")
                .header("apns-id", &id)
                .header("apns-collapse-id", &id)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
                .send()
                .await
                .map_err(|e| provider::request_error("apns", &e))?;
            let status = response.status().as_u16();
            let retry_after = provider::retry_after_secs(response.headers());
            let answered_id = response.headers().get("apns-id").and_then(|v| v.to_str().ok()).map(str::to_string);
            let answer = provider::read_body("apns", response).await?;
            if status == 403 && refused.is_none() && reason(&answer) == "ExpiredProviderToken" {
                refused = Some(jwt);
                continue;
            }
            return outcome(status, answered_id.as_deref(), retry_after, &answer);
        }
    }
}

/// The HTTP/2-only client: over `https` ALPN offers only `h2`; over `http://` it speaks
/// h2c with prior knowledge. Redirects are not followed.
fn http2_client(timeout: Duration) -> Result<reqwest::Client, ConfigError> {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("chorus/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ConfigError::new("http client", e.to_string()))
}

/// Apple's `reason` in an error answer (`{"reason": "BadDeviceToken"}`), or "".
fn reason(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body).ok().and_then(|v| v.get("reason").and_then(Value::as_str).map(provider::clip)).unwrap_or_default()
}

/// The outcome of an APNs answer: status code, its `apns-id` header, `Retry-After`
/// seconds, body.
pub fn outcome(status: u16, apns_id: Option<&str>, retry_after: Option<u64>, body: &[u8]) -> Result<String, DeliveryError> {
    if status == 200 {
        return Ok(format!("apns-id={}", apns_id.unwrap_or("")));
    }
    let reason = reason(body);
    let reason = if reason.is_empty() { provider::clip(&String::from_utf8_lossy(body)) } else { reason };
    let transient = |detail: String| match retry_after {
        Some(s) => DeliveryError::TransientAfter(format!("{detail}: retry after {s}s"), Duration::from_secs(s)),
        None => DeliveryError::Transient(detail),
    };
    Err(match (status, reason.as_str()) {
        // The device token is no longer active for the topic (app removed, token
        // rotated), or was never a token of this app and environment.
        (410, _) | (400, "BadDeviceToken" | "DeviceTokenNotForTopic") => DeliveryError::Permanent(format!("unregistered: apns {status} {reason}")),
        (429, _) | (500..=599, _) => transient(format!("apns {status} {reason}")),
        // APNs closed an idle connection under the request.
        (400, "IdleTimeout") => transient(format!("apns {status} {reason}")),
        // Refused again after re-signing: our clock or key, not the recipient.
        (403, "ExpiredProviderToken") => {
            DeliveryError::Transient(format!("apns 403 {reason}: the provider token was refused after re-signing it (is the clock right?)"))
        }
        _ => DeliveryError::Permanent(format!("apns {status} {reason}")),
    })
}

impl Connector for ApnsConnector {
    fn name(&self) -> &str {
        "apns"
    }

    fn deliver<'a>(&'a self, intent: &'a Intent) -> Pin<Box<dyn Future<Output = Result<String, DeliveryError>> + Send + 'a>> {
        Box::pin(self.send(intent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, KeyPair, UnparsedPublicKey};
    use chorus_templates::{Push, Rendered};
    use chorus_types::{Category, CustomerId, JsonMap};

    fn intent(key: &str, push: Push) -> Intent {
        let rendered = Rendered { template: "t".into(), locale: None, content: Content::Push(push) };
        Intent {
            key: key.into(),
            customer: CustomerId::new(1, 2),
            channel: "push".into(),
            template: "t".into(),
            category: Category::Marketing,
            to: "a1b2".into(),
            vars: JsonMap::new(),
            journey: String::new(),
            created_ms: 1,
            content: serde_json::to_string(&rendered).unwrap(),
        }
    }

    fn pem(der: &[u8]) -> String {
        use base64::engine::general_purpose::STANDARD;
        format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", STANDARD.encode(der))
    }

    #[test]
    fn rule_apns_id_is_derived_from_the_intent_key() {
        let id = apns_id("shard-3/out-42");
        assert_eq!(id, apns_id("shard-3/out-42"), "every attempt carries the same id");
        assert_ne!(id, apns_id("shard-3/out-43"));
        // printf 'shard-3/out-42' | sha256sum | cut -c1-32, with the version and variant bits set
        let hex = format!("{:x}", Sha256::digest(b"shard-3/out-42"));
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12], "{id}");
        assert_eq!(parts[0], &hex[..8]);
        assert_eq!(parts[1], &hex[8..12]);
        assert!(parts[2].starts_with('8') && parts[2][1..] == hex[13..16], "version 8: {id}");
        assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'), "RFC 9562 variant: {id}");
        assert_eq!(parts[4], &hex[20..32]);
        assert!(id.chars().all(|c| c == '-' || c.is_ascii_digit() || c.is_ascii_lowercase()));
    }

    #[test]
    fn rule_unregistered_device_token_is_permanent() {
        for (status, body) in [
            (410, &br#"{"reason":"Unregistered","timestamp":1700000000000}"#[..]),
            (410, br#"{"reason":"ExpiredToken"}"#),
            (400, br#"{"reason":"BadDeviceToken"}"#),
            (400, br#"{"reason":"DeviceTokenNotForTopic"}"#),
        ] {
            let Err(DeliveryError::Permanent(d)) = outcome(status, None, None, body) else { panic!("{status} must be permanent") };
            assert!(d.starts_with("unregistered: apns"), "{d}");
        }
    }

    #[test]
    fn rule_other_client_errors_are_permanent_with_apples_reason() {
        for (status, reason) in [(400, "BadTopic"), (403, "InvalidProviderToken"), (413, "PayloadTooLarge"), (400, "TopicDisallowed")] {
            let body = json!({ "reason": reason }).to_string();
            let Err(DeliveryError::Permanent(d)) = outcome(status, None, None, body.as_bytes()) else { panic!("{reason} must be permanent") };
            assert_eq!(d, format!("apns {status} {reason}"));
        }
    }

    #[test]
    fn rule_rate_limit_and_server_errors_are_transient() {
        assert_eq!(
            outcome(429, None, Some(7), br#"{"reason":"TooManyRequests"}"#),
            Err(DeliveryError::TransientAfter("apns 429 TooManyRequests: retry after 7s".into(), Duration::from_secs(7)))
        );
        assert_eq!(
            outcome(429, None, None, br#"{"reason":"TooManyProviderTokenUpdates"}"#),
            Err(DeliveryError::Transient("apns 429 TooManyProviderTokenUpdates".into()))
        );
        assert_eq!(outcome(503, None, None, br#"{"reason":"ServiceUnavailable"}"#), Err(DeliveryError::Transient("apns 503 ServiceUnavailable".into())));
        assert!(matches!(outcome(500, None, None, b""), Err(DeliveryError::Transient(_))));
        assert!(matches!(outcome(400, None, None, br#"{"reason":"IdleTimeout"}"#), Err(DeliveryError::Transient(_))));
        assert_eq!(outcome(200, Some("abc"), None, b""), Ok("apns-id=abc".into()));
    }

    #[test]
    fn rule_provider_token_is_reused_for_50_minutes() {
        let signed = Instant::now();
        let t = ProviderToken { jwt: "jwt-1".into(), signed };
        assert!(t.reusable(signed, None));
        assert!(t.reusable(signed + Duration::from_secs(49 * 60 + 59), None));
        assert!(!t.reusable(signed + TOKEN_REUSE_MAX, None), "re-signed after 50 minutes");
        assert!(!t.reusable(signed, Some("jwt-1")), "a refused token is re-signed at once");
        assert!(t.reusable(signed, Some("jwt-0")), "a token refused earlier was already replaced");
        const { assert!(TOKEN_REUSE_MAX.as_secs() > 20 * 60 && TOKEN_REUSE_MAX.as_secs() < 60 * 60) };
    }

    #[test]
    fn rule_provider_token_is_an_es256_jwt_of_the_team_and_key() {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &aws_lc_rs::rand::SystemRandom::new()).unwrap();
        let public = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap().public_key().as_ref().to_vec();
        let signer = TokenSigner::new(&pem(pkcs8.as_ref()), "KEY1234567", "TEAM123456").unwrap();
        let jwt = signer.token(1_700_000_000).unwrap();
        let [header, claims, signature] = jwt.split('.').collect::<Vec<_>>()[..] else { panic!("{jwt}") };
        let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
        assert_eq!(signature.len(), 64, "r‖s, 32 bytes each");
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &public).verify(format!("{header}.{claims}").as_bytes(), &signature).unwrap();
        let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
        let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
        assert_eq!(header, json!({"alg": "ES256", "kid": "KEY1234567"}));
        assert_eq!(claims, json!({"iss": "TEAM123456", "iat": 1_700_000_000}));
        // Not a P-256 key: refused when the connector is built.
        let p384 = EcdsaKeyPair::generate_pkcs8(&aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING, &aws_lc_rs::rand::SystemRandom::new()).unwrap();
        assert!(TokenSigner::new(&pem(p384.as_ref()), "K", "T").unwrap_err().message.contains("P-256"));
        assert!(TokenSigner::new("not a pem", "K", "T").is_err());
    }

    #[test]
    fn rule_push_payload_carries_the_alert_key_link_and_image() {
        let push = Push {
            title: Some("Back".into()),
            body: "In stock".into(),
            image: Some("https://cdn.example.com/x.png".into()),
            deep_link: Some("shop://p/1".into()),
        };
        assert_eq!(
            payload(&intent("k1", push)).unwrap(),
            json!({"aps": {"alert": {"title": "Back", "body": "In stock"}, "mutable-content": 1}, "chorus_key": "k1", "deep_link": "shop://p/1", "image": "https://cdn.example.com/x.png"})
        );
        let plain = Push { title: None, body: "Hi".into(), image: Some(String::new()), deep_link: None };
        assert_eq!(payload(&intent("k2", plain)).unwrap(), json!({"aps": {"alert": {"body": "Hi"}}, "chorus_key": "k2"}));
    }

    #[test]
    fn rule_missing_or_non_push_content_is_permanent() {
        let mut i = intent("k", Push { title: None, body: "b".into(), image: None, deep_link: None });
        i.content = String::new();
        assert!(matches!(payload(&i), Err(DeliveryError::Permanent(d)) if d.contains("no rendered content")));
        i.content = serde_json::to_string(&Rendered {
            template: "t".into(),
            locale: None,
            content: Content::Mms(chorus_templates::Mms { body: None, media_url: "u".into() }),
        })
        .unwrap();
        assert!(matches!(payload(&i), Err(DeliveryError::Permanent(d)) if d.contains("not push")));
    }

    #[test]
    fn config_reads_the_key_from_a_file_or_a_named_variable() {
        let config = |extra: Value| -> ApnsConfig {
            let mut v = json!({"team_id": "TEAM123456", "key_id": "KEY1234567", "topic": "com.example.shop"});
            v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            serde_json::from_value(v).unwrap()
        };
        let c = config(json!({}));
        assert_eq!((c.base_url.as_str(), c.timeout), (PRODUCTION_BASE_URL, Duration::from_secs(10)));
        assert_eq!(c.key_pem(&|_| None).unwrap_err().field, "key_file");
        let c = config(json!({"key_pem_env": "APNS_KEY"}));
        assert_eq!(
            c.key_pem(&|n| (n == "APNS_KEY").then(|| "-----BEGIN PRIVATE KEY-----\\nAAEC\\n-----END PRIVATE KEY-----".into())).unwrap(),
            "-----BEGIN PRIVATE KEY-----\nAAEC\n-----END PRIVATE KEY-----"
        );
        assert_eq!(c.key_pem(&|_| None).unwrap_err().field, "key_pem_env");
        assert!(config(json!({"key_pem_env": "APNS_KEY", "key_file": "/k.p8"})).key_pem(&|_| Some("x".into())).is_err());
        let unknown = serde_json::from_value::<ApnsConfig>(json!({"team_id": "T", "key_id": "K", "topic": "t", "bundle": "x"}));
        assert!(unknown.unwrap_err().to_string().contains("unknown field"));
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &aws_lc_rs::rand::SystemRandom::new()).unwrap();
        let key = pem(pkcs8.as_ref());
        assert_eq!(ApnsConnector::with_key(&config(json!({"topic": " "})), &key).err().unwrap().field, "topic");
        assert_eq!(ApnsConnector::with_key(&config(json!({"base_url": "api.push.apple.com"})), &key).err().unwrap().field, "base_url");
        assert_eq!(ApnsConnector::with_key(&config(json!({"key_pem_env": "APNS_KEY"})), "junk").err().unwrap().field, "key_pem_env");
        assert!(ApnsConnector::with_key(&config(json!({"base_url": SANDBOX_BASE_URL})), &key).is_ok());
    }
}
