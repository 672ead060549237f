//! Push over FCM HTTP v1 (SPEC §8): `POST {base_url}/v1/projects/{project_id}/messages:send`
//! with an OAuth2 access token obtained from a service-account key by the JWT bearer
//! grant (RFC 7523: an RS256-signed assertion posted to the key's `token_uri`), cached
//! until shortly before it expires. Unregistered tokens are reported as permanent
//! failures whose detail says "unregistered" (the caller marks the token invalid).
//!
//! RS256 is signed with aws-lc-rs (`RsaKeyPair`, PKCS#1 v1.5 SHA-256): it is already in
//! the build as the rustls crypto provider of reqwest, so it adds no second crypto
//! stack; the pure-Rust `rsa` crate carries an unfixed RustSec advisory
//! (RUSTSEC-2023-0071, Marvin timing side channel on private-key operations).

use crate::provider::{self, ConfigError, EnvLookup};
use crate::{Connector, DeliveryError};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chorus_templates::{Content, Rendered};
use chorus_types::Intent;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The OAuth2 scope of sending through FCM.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// The grant type of the JWT bearer flow (RFC 7523).
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Lifetime asked of each assertion (Google's maximum).
pub const ASSERTION_LIFETIME_SECS_MAX: u64 = 3600;
/// An access token is refreshed this long before it expires.
pub const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// `[connectors.fcm]`: a Firebase project and the service account that sends for it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmConfig {
    /// The Firebase project id (the `{project_id}` of the send URL).
    pub project_id: String,
    /// The API's root; default `https://fcm.googleapis.com`.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Path of the service-account key file (JSON with client_email, private_key, token_uri).
    #[serde(default)]
    pub service_account_file: Option<PathBuf>,
    /// The name of an environment variable holding the key's JSON (instead of a file).
    #[serde(default)]
    pub service_account_json_env: Option<String>,
    /// Overrides the key's `token_uri` (the OAuth2 token endpoint).
    #[serde(default)]
    pub token_uri: Option<String>,
    /// Per-request timeout (`10s` by default); a timeout is a transient error.
    #[serde(default = "default_timeout", deserialize_with = "provider::deserialize_duration")]
    pub timeout: Duration,
}

fn default_base_url() -> String {
    "https://fcm.googleapis.com".into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The fields of a Google service-account key file that the JWT grant needs.
#[derive(Clone, Deserialize)]
pub struct ServiceAccountKey {
    pub client_email: String,
    /// PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), as Google issues it.
    pub private_key: String,
    #[serde(default = "default_token_uri")]
    pub token_uri: String,
}

fn default_token_uri() -> String {
    "https://oauth2.googleapis.com/token".into()
}

impl std::fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountKey").field("client_email", &self.client_email).field("token_uri", &self.token_uri).finish_non_exhaustive()
    }
}

impl FcmConfig {
    /// Read the service-account key from the file or the named environment variable.
    pub fn service_account(&self, env: EnvLookup<'_>) -> Result<ServiceAccountKey, ConfigError> {
        let (field, text) = match (&self.service_account_file, self.service_account_json_env.as_deref().filter(|v| !v.is_empty())) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new("service_account_file", "set either service_account_file or service_account_json_env, not both"));
            }
            (Some(path), None) => (
                "service_account_file",
                std::fs::read_to_string(path).map_err(|e| ConfigError::new("service_account_file", format!("cannot read {}: {e}", path.display())))?,
            ),
            (None, Some(name)) => (
                "service_account_json_env",
                env(name)
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| ConfigError::new("service_account_json_env", format!("the environment variable {name} is not set or empty")))?,
            ),
            (None, None) => {
                return Err(ConfigError::new(
                    "service_account_file",
                    "is required: set service_account_file or service_account_json_env (a service-account key JSON)",
                ));
            }
        };
        serde_json::from_str(&text)
            .map_err(|e| ConfigError::new(field, format!("is not a service-account key JSON (client_email, private_key, token_uri): {e}")))
    }
}

/// Signs RS256 JWT assertions with a service account's private key.
pub struct Signer {
    key: aws_lc_rs::signature::RsaKeyPair,
    client_email: String,
    token_uri: String,
}

impl Signer {
    pub fn new(key: &ServiceAccountKey) -> Result<Signer, ConfigError> {
        let der =
            provider::pem_der(&key.private_key).ok_or_else(|| ConfigError::new("private_key", "is not a PEM private key (-----BEGIN PRIVATE KEY-----)"))?;
        let pair = aws_lc_rs::signature::RsaKeyPair::from_pkcs8(&der)
            .or_else(|_| aws_lc_rs::signature::RsaKeyPair::from_der(&der))
            .map_err(|e| ConfigError::new("private_key", format!("is not an RSA private key: {e}")))?;
        Ok(Signer { key: pair, client_email: key.client_email.clone(), token_uri: key.token_uri.clone() })
    }

    /// A signed assertion issued at `now_secs` (Unix seconds).
    pub fn assertion(&self, now_secs: u64) -> Result<String, String> {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": now_secs,
            "exp": now_secs + ASSERTION_LIFETIME_SECS_MAX,
        });
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{header}.{claims}");
        let mut signature = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(&aws_lc_rs::signature::RSA_PKCS1_SHA256, &aws_lc_rs::rand::SystemRandom::new(), signing_input.as_bytes(), &mut signature)
            .map_err(|e| format!("sign the assertion: {e}"))?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

struct CachedToken {
    token: String,
    refresh_at: Instant,
}

/// Delivers `push` intents to FCM registration tokens.
pub struct FcmConnector {
    client: reqwest::Client,
    send_url: String,
    signer: Signer,
    token: tokio::sync::Mutex<Option<CachedToken>>,
}

impl FcmConnector {
    /// Validate `config`, read the service-account key (file or `env`) and build the client.
    pub fn new(config: &FcmConfig, env: EnvLookup<'_>) -> Result<FcmConnector, ConfigError> {
        let mut key = config.service_account(env)?;
        if let Some(uri) = config.token_uri.as_ref().filter(|u| !u.is_empty()) {
            key.token_uri = uri.clone();
        }
        Self::with_key(config, &key)
    }

    /// Like [`FcmConnector::new`] with the key already read.
    pub fn with_key(config: &FcmConfig, key: &ServiceAccountKey) -> Result<FcmConnector, ConfigError> {
        if config.project_id.trim().is_empty() {
            return Err(ConfigError::new("project_id", "is required (the Firebase project id)"));
        }
        Ok(FcmConnector {
            client: provider::http_client(config.timeout)?,
            send_url: format!("{}/v1/projects/{}/messages:send", config.base_url.trim_end_matches('/'), provider::percent_encode(&config.project_id)),
            signer: Signer::new(key)?,
            token: tokio::sync::Mutex::new(None),
        })
    }

    /// The request body of one intent.
    pub fn message(intent: &Intent) -> Result<Value, DeliveryError> {
        if intent.to.trim().is_empty() {
            return Err(DeliveryError::Permanent(format!("unregistered: intent {} has no push token", intent.key)));
        }
        let rendered: Rendered = match intent.content.trim() {
            "" => {
                return Err(DeliveryError::Permanent(format!(
                    "no rendered content for template {:?}: the node has no template of that id (fcm sends only rendered push)",
                    intent.template
                )));
            }
            text => serde_json::from_str(text)
                .map_err(|e| DeliveryError::Permanent(format!("the rendered content of template {:?} is not readable: {e}", intent.template)))?,
        };
        let Content::Push(push) = rendered.content else {
            return Err(DeliveryError::Permanent(format!(
                "template {:?} rendered a {} message; the fcm connector sends only push",
                intent.template,
                rendered.content.channel()
            )));
        };
        let mut notification = Map::new();
        if let Some(title) = push.title.filter(|t| !t.is_empty()) {
            notification.insert("title".into(), title.into());
        }
        notification.insert("body".into(), push.body.into());
        if let Some(image) = push.image.filter(|t| !t.is_empty()) {
            notification.insert("image".into(), image.into());
        }
        let mut data = Map::new();
        if let Some(link) = push.deep_link.filter(|t| !t.is_empty()) {
            data.insert("deep_link".into(), link.into());
        }
        data.insert("chorus_key".into(), intent.key.clone().into());
        Ok(json!({"message": {"token": intent.to, "notification": notification, "data": data}}))
    }

    /// A valid access token: the cached one, or a new one from the token endpoint.
    async fn access_token(&self, force: bool) -> Result<String, DeliveryError> {
        let mut cached = self.token.lock().await;
        if !force && let Some(t) = cached.as_ref().filter(|t| Instant::now() < t.refresh_at) {
            return Ok(t.token.clone());
        }
        *cached = None;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let assertion = self.signer.assertion(now).map_err(|e| DeliveryError::Transient(format!("fcm auth: {e}")))?;
        let started = Instant::now();
        let response = self
            .client
            .post(&self.signer.token_uri)
            .form(&[("grant_type", JWT_BEARER_GRANT), ("assertion", assertion.as_str())])
            .send()
            .await
            .map_err(|e| provider::request_error("fcm token endpoint", &e))?;
        let status = response.status().as_u16();
        let body = provider::read_body("fcm token endpoint", response).await?;
        if status != 200 {
            // Not the recipient's fault: retried, and re-drivable once the key is fixed.
            return Err(DeliveryError::Transient(format!("fcm auth: token endpoint answered {status}: {}", provider::clip(&String::from_utf8_lossy(&body)))));
        }
        #[derive(Deserialize)]
        struct TokenJson {
            access_token: String,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let t: TokenJson = serde_json::from_slice(&body).map_err(|e| DeliveryError::Transient(format!("fcm auth: unreadable token response: {e}")))?;
        let lifetime = Duration::from_secs(t.expires_in.unwrap_or(3600));
        let refresh_at = started + lifetime.saturating_sub(TOKEN_REFRESH_MARGIN);
        *cached = Some(CachedToken { token: t.access_token.clone(), refresh_at });
        Ok(t.access_token)
    }

    async fn send(&self, intent: &Intent) -> Result<String, DeliveryError> {
        let message = Self::message(intent)?;
        let mut refreshed = false;
        loop {
            let token = self.access_token(refreshed).await?;
            let response = self.client.post(&self.send_url).bearer_auth(&token).json(&message).send().await.map_err(|e| provider::request_error("fcm", &e))?;
            let status = response.status().as_u16();
            let retry_after = provider::retry_after_secs(response.headers());
            let body = provider::read_body("fcm", response).await?;
            if status == 401 && !refreshed {
                refreshed = true;
                continue;
            }
            return outcome(status, retry_after, &body);
        }
    }
}

/// The outcome of a `messages:send` response: status code, `Retry-After` seconds, body.
pub fn outcome(status: u16, retry_after: Option<u64>, body: &[u8]) -> Result<String, DeliveryError> {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if status == 200 {
        return Ok(format!("fcm name={}", json.get("name").and_then(Value::as_str).unwrap_or("")));
    }
    let error = json.get("error").cloned().unwrap_or(Value::Null);
    let message = error.get("message").and_then(Value::as_str).map(provider::clip).unwrap_or_else(|| provider::clip(&String::from_utf8_lossy(body)));
    let grpc_status = error.get("status").and_then(Value::as_str).unwrap_or("").to_string();
    let error_code = error
        .get("details")
        .and_then(Value::as_array)
        .and_then(|d| d.iter().find_map(|x| x.get("errorCode").and_then(Value::as_str)))
        .unwrap_or("")
        .to_string();
    let code = if error_code.is_empty() { grpc_status.clone() } else { error_code.clone() };
    let token_refused = error_code == "UNREGISTERED"
        || status == 404
        || (status == 400 && (error_code == "INVALID_ARGUMENT" || grpc_status == "INVALID_ARGUMENT") && message.to_ascii_lowercase().contains("token"));
    Err(match status {
        429 => provider::transient(format!("fcm rate limited (429) {code}: {message}"), retry_after),
        500..=599 => provider::transient(format!("fcm {status} {code}: {message}"), retry_after),
        401 => DeliveryError::Transient(format!("fcm 401 {code}: access token refused after a refresh: {message}")),
        _ if token_refused => DeliveryError::Permanent(format!("unregistered: fcm {status} {code}: {message}")),
        _ => DeliveryError::Permanent(format!("fcm {status} {code}: {message}")),
    })
}

impl Connector for FcmConnector {
    fn name(&self) -> &str {
        "fcm"
    }

    /// FCM v1 does not de-duplicate sends (a collapse key replaces a notification on the
    /// device only while it is undelivered).
    fn honours_idempotency_key(&self) -> bool {
        false
    }

    fn deliver<'a>(&'a self, intent: &'a Intent) -> Pin<Box<dyn Future<Output = Result<String, DeliveryError>> + Send + 'a>> {
        Box::pin(self.send(intent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_unregistered_push_token_is_permanent() {
        let body = br#"{"error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND", "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}]}}"#;
        let Err(DeliveryError::Permanent(d)) = outcome(404, None, body) else { panic!("must be permanent") };
        assert!(d.contains("unregistered") && d.contains("UNREGISTERED"), "{d}");
        let body = br#"{"error": {"code": 400, "message": "The registration token is not a valid FCM registration token", "status": "INVALID_ARGUMENT", "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "INVALID_ARGUMENT"}]}}"#;
        let Err(DeliveryError::Permanent(d)) = outcome(400, None, body) else { panic!("must be permanent") };
        assert!(d.contains("unregistered"), "{d}");
    }

    #[test]
    fn rule_push_payload_errors_are_permanent_but_not_unregistered() {
        let body = br#"{"error": {"code": 400, "message": "Invalid value at 'message.data'", "status": "INVALID_ARGUMENT"}}"#;
        let Err(DeliveryError::Permanent(d)) = outcome(400, None, body) else { panic!("must be permanent") };
        assert!(!d.contains("unregistered"), "{d}");
    }

    #[test]
    fn rule_push_rate_limit_and_server_errors_are_transient() {
        let Err(DeliveryError::TransientAfter(d, _)) =
            outcome(429, Some(3), br#"{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "quota"}}"#)
        else {
            panic!()
        };
        assert!(d.contains("retry after 3s"), "{d}");
        assert!(matches!(outcome(503, None, b""), Err(DeliveryError::Transient(_))));
    }
}
