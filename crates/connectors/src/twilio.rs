//! SMS and MMS over a Twilio-compatible REST API (SPEC §8): one `POST
//! {base_url}/2010-04-01/Accounts/{AccountSid}/Messages.json` per intent, form-encoded,
//! HTTP basic auth, the intent key as Twilio's idempotency token, and a status callback
//! URL pointing back at the node (`/v1/twilio/status`, served by `chorus-api`).
//! Maps provider answers to outcomes; decides nothing else and never retries itself
//! (the connector actor does).

use crate::provider::{self, ConfigError, EnvLookup};
use crate::{Connector, DeliveryError};
use chorus_templates::{Content, Rendered};
use chorus_types::Intent;
use serde::Deserialize;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// The header carrying the intent key: Twilio sends a message once per token.
pub const IDEMPOTENCY_HEADER: &str = "I-Twilio-Idempotency-Token";
/// The path of status callbacks on the node (see `chorus_api::twilio`).
pub const STATUS_CALLBACK_PATH: &str = "/v1/twilio/status";

/// Twilio error codes that mean the number can never receive this message.
/// 21211: invalid 'To' phone number; 21614: 'To' is not a valid mobile number;
/// 21610: the recipient replied STOP (unsubscribed).
pub const INVALID_ADDRESS_CODES: &[u64] = &[21211, 21614];
pub const UNSUBSCRIBED_CODE: u64 = 21610;

/// `[connectors.twilio]`: an account of Twilio or of a Twilio-compatible provider.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioConfig {
    /// The API's root; default `https://api.twilio.com`.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// The account SID (`AC…`): the user name of basic auth and part of the path.
    pub account_sid: String,
    /// The auth token (the password of basic auth; also the key that signs webhooks).
    #[serde(default)]
    pub auth_token: Option<String>,
    /// The name of an environment variable holding the auth token (instead of `auth_token`).
    #[serde(default)]
    pub auth_token_env: Option<String>,
    /// The sending number (E.164) or alphanumeric sender id; or use `messaging_service_sid`.
    #[serde(default)]
    pub from: Option<String>,
    /// A Messaging Service (`MG…`) that picks the sender; or use `from`.
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    /// The node's public URL (e.g. `https://chorus.example.com`). When set, every message
    /// asks for status callbacks at `{status_callback_base}/v1/twilio/status?key=…&customer=…`;
    /// the same URL is what inbound webhook signatures are checked against.
    #[serde(default)]
    pub status_callback_base: Option<String>,
    /// Per-request timeout (`10s` by default); a timeout is a transient error.
    #[serde(default = "default_timeout", deserialize_with = "provider::deserialize_duration")]
    pub timeout: Duration,
}

fn default_base_url() -> String {
    "https://api.twilio.com".into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl TwilioConfig {
    /// The auth token, from `auth_token` or the variable named by `auth_token_env`.
    pub fn auth_token(&self, env: EnvLookup<'_>) -> Result<String, ConfigError> {
        provider::secret("auth_token", &self.auth_token, &self.auth_token_env, env)
    }

    /// Check the settings and resolve the auth token.
    pub fn validate(&self, env: EnvLookup<'_>) -> Result<String, ConfigError> {
        if self.account_sid.trim().is_empty() {
            return Err(ConfigError::new("account_sid", "is required (the AC… id of the account)"));
        }
        if !(self.base_url.starts_with("https://") || self.base_url.starts_with("http://")) {
            return Err(ConfigError::new("base_url", format!("{:?} is not an http(s) URL", self.base_url)));
        }
        let from = self.from.as_deref().is_some_and(|f| !f.is_empty());
        let service = self.messaging_service_sid.as_deref().is_some_and(|f| !f.is_empty());
        if from == service {
            return Err(ConfigError::new("from", "set exactly one of from (a sending number) or messaging_service_sid"));
        }
        if let Some(base) = &self.status_callback_base
            && !(base.starts_with("https://") || base.starts_with("http://"))
        {
            return Err(ConfigError::new("status_callback_base", format!("{base:?} is not an http(s) URL (the node's public URL)")));
        }
        self.auth_token(env)
    }
}

/// The status callback URL of one intent: `{base}/v1/twilio/status?key=…&customer=…`.
pub fn status_callback_url(base: &str, key: &str, customer: &str) -> String {
    format!("{}{STATUS_CALLBACK_PATH}?key={}&customer={}", base.trim_end_matches('/'), provider::percent_encode(key), provider::percent_encode(customer))
}

/// Delivers `sms` and `mms` intents through the Messages resource.
pub struct TwilioConnector {
    client: reqwest::Client,
    messages_url: String,
    account_sid: String,
    auth_token: String,
    from: Option<String>,
    messaging_service_sid: Option<String>,
    status_callback_base: Option<String>,
}

impl TwilioConnector {
    /// Validate `config` (resolving the token through `env`) and build the client.
    pub fn new(config: &TwilioConfig, env: EnvLookup<'_>) -> Result<TwilioConnector, ConfigError> {
        let auth_token = config.validate(env)?;
        Ok(TwilioConnector {
            client: provider::http_client(config.timeout)?,
            messages_url: format!(
                "{}/2010-04-01/Accounts/{}/Messages.json",
                config.base_url.trim_end_matches('/'),
                provider::percent_encode(&config.account_sid)
            ),
            account_sid: config.account_sid.clone(),
            auth_token,
            from: config.from.clone().filter(|f| !f.is_empty()),
            messaging_service_sid: config.messaging_service_sid.clone().filter(|f| !f.is_empty()),
            status_callback_base: config.status_callback_base.clone().filter(|f| !f.is_empty()),
        })
    }

    /// The form fields of one message (in the order they are sent).
    pub fn form(&self, intent: &Intent) -> Result<Vec<(&'static str, String)>, DeliveryError> {
        if intent.to.trim().is_empty() {
            return Err(DeliveryError::Permanent(format!("invalid_address: intent {} has no phone number to send to", intent.key)));
        }
        let rendered: Rendered = match intent.content.trim() {
            "" => {
                return Err(DeliveryError::Permanent(format!(
                    "no rendered content for template {:?}: the node has no template of that id (twilio sends only rendered sms/mms)",
                    intent.template
                )));
            }
            text => serde_json::from_str(text)
                .map_err(|e| DeliveryError::Permanent(format!("the rendered content of template {:?} is not readable: {e}", intent.template)))?,
        };
        let (body, media) = match rendered.content {
            Content::Sms(s) => (Some(s.body), None),
            Content::Mms(m) => (m.body, Some(m.media_url)),
            other => {
                return Err(DeliveryError::Permanent(format!(
                    "template {:?} rendered a {} message; the twilio connector sends only sms and mms",
                    intent.template,
                    other.channel()
                )));
            }
        };
        let mut form = vec![("To", intent.to.clone())];
        match (&self.from, &self.messaging_service_sid) {
            (_, Some(service)) => form.push(("MessagingServiceSid", service.clone())),
            (Some(from), None) => form.push(("From", from.clone())),
            (None, None) => unreachable!("validated: from or messaging_service_sid"),
        }
        if let Some(body) = body.filter(|b| !b.is_empty()) {
            form.push(("Body", body));
        }
        if let Some(media) = media {
            form.push(("MediaUrl", media));
        }
        if !form.iter().any(|(k, _)| *k == "Body" || *k == "MediaUrl") {
            return Err(DeliveryError::Permanent(format!("template {:?} rendered an empty message", intent.template)));
        }
        if let Some(base) = &self.status_callback_base {
            form.push(("StatusCallback", status_callback_url(base, &intent.key, &intent.customer.to_string())));
        }
        Ok(form)
    }

    async fn send(&self, intent: &Intent) -> Result<String, DeliveryError> {
        let form = self.form(intent)?;
        let response = self
            .client
            .post(&self.messages_url)
            .basic_auth(&self.account_sid, Some(&self.auth_token))
            .header(IDEMPOTENCY_HEADER, &intent.key)
            .form(&form)
            .send()
            .await
            .map_err(|e| provider::request_error("twilio", &e))?;
        let status = response.status().as_u16();
        let retry_after = provider::retry_after_secs(response.headers());
        let body = provider::read_body("twilio", response).await?;
        outcome(status, retry_after, &body)
    }
}

#[derive(Deserialize, Default)]
struct MessageJson {
    #[serde(default)]
    sid: String,
    #[serde(default)]
    status: String,
}

#[derive(Deserialize, Default)]
struct ErrorJson {
    #[serde(default)]
    code: Option<u64>,
    #[serde(default)]
    message: String,
}

/// The outcome of a Messages response: status code, `Retry-After` seconds, body.
pub fn outcome(status: u16, retry_after: Option<u64>, body: &[u8]) -> Result<String, DeliveryError> {
    if status == 200 || status == 201 {
        let m: MessageJson = serde_json::from_slice(body).unwrap_or_default();
        return Ok(format!("twilio sid={} status={}", m.sid, m.status));
    }
    let e: ErrorJson = serde_json::from_slice(body).unwrap_or_default();
    let message = if e.message.is_empty() { provider::clip(&String::from_utf8_lossy(body)) } else { provider::clip(&e.message) };
    let code = e.code.map(|c| format!(" error {c}")).unwrap_or_default();
    Err(match status {
        // Twilio's 429 carries Retry-After (seconds); a 503 may too.
        429 => provider::transient(format!("twilio rate limited (429){code}: {message}"), retry_after),
        500..=599 => provider::transient(format!("twilio {status}{code}: {message}"), retry_after),
        _ => match e.code {
            Some(c) if INVALID_ADDRESS_CODES.contains(&c) => DeliveryError::Permanent(format!("invalid_address: twilio {status} error {c}: {message}")),
            Some(UNSUBSCRIBED_CODE) => DeliveryError::Permanent(format!("unsubscribed: twilio {status} error {UNSUBSCRIBED_CODE}: {message}")),
            _ if status == 401 || status == 403 => {
                DeliveryError::Permanent(format!("twilio {status}{code}: authentication refused (check account_sid and auth_token): {message}"))
            }
            _ => DeliveryError::Permanent(format!("twilio {status}{code}: {message}")),
        },
    })
}

/// Most messages of one Messages list page read when reconciling (Twilio's maximum is 1000).
pub const RECONCILE_PAGE_SIZE: u32 = 100;
/// How much earlier than the attempt a matching message may be dated (clock skew).
const RECONCILE_SKEW_MS: i64 = 60_000;

#[derive(Deserialize, Default)]
struct MessagePage {
    #[serde(default)]
    messages: Vec<ListedMessage>,
}

#[derive(Deserialize, Default)]
struct ListedMessage {
    #[serde(default)]
    sid: String,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    date_created: Option<String>,
    #[serde(default)]
    status: String,
}

/// Twilio's dates (RFC 2822, `Wed, 18 Aug 2010 20:01:40 +0000`) in Unix ms.
fn twilio_date_ms(text: &str) -> Option<i64> {
    let gmt = text.trim().strip_suffix("+0000").map(|t| format!("{}GMT", t)).unwrap_or_else(|| text.trim().to_string());
    let at = httpdate::parse_http_date(&gmt).ok()?;
    Some(at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64)
}

impl TwilioConnector {
    /// One page of the Messages list to `intent.to` from our sender, newest first, with
    /// extra filters (`DateSent>`).
    async fn list(&self, intent: &Intent, extra: &[(&str, String)]) -> Result<Vec<ListedMessage>, String> {
        let mut query: Vec<(&str, String)> = vec![("To", intent.to.clone()), ("PageSize", RECONCILE_PAGE_SIZE.to_string())];
        if let Some(from) = &self.from {
            query.push(("From", from.clone()));
        }
        query.extend(extra.iter().cloned());
        let url = format!(
            "{}?{}",
            self.messages_url,
            query.iter().map(|(k, v)| format!("{}={}", provider::percent_encode(k), provider::percent_encode(v))).collect::<Vec<_>>().join("&")
        );
        let response = self
            .client
            .get(&url)
            .basic_auth(&self.account_sid, Some(&self.auth_token))
            .send()
            .await
            .map_err(|e| format!("twilio messages list: {}", provider::request_error("twilio", &e).detail()))?;
        let status = response.status().as_u16();
        let body = provider::read_body("twilio", response).await.map_err(|e| e.detail().to_string())?;
        if status != 200 {
            return Err(format!("twilio messages list answered {status}: {}", provider::clip(&String::from_utf8_lossy(&body))));
        }
        serde_json::from_slice::<MessagePage>(&body).map(|p| p.messages).map_err(|e| format!("twilio messages list is not readable: {e}"))
    }
}

impl Connector for TwilioConnector {
    fn name(&self) -> &str {
        "twilio"
    }

    /// Twilio's Messages API documents no de-duplication of message creation (the
    /// idempotency header is the one Twilio puts on its own webhooks).
    fn honours_idempotency_key(&self) -> bool {
        false
    }

    /// Look the message up in the Messages list: to the same number, from our sender,
    /// created no earlier than the attempt, with the same body (its fingerprint) — first
    /// among those sent since the attempt's day (`DateSent>`), then among the newest
    /// (a message still queued has no send date yet).
    fn reconcile<'a>(&'a self, intent: &'a Intent, attempted_ms: i64) -> Pin<Box<dyn Future<Output = crate::Reconciled> + Send + 'a>> {
        Box::pin(async move {
            let form = match self.form(intent) {
                Ok(f) => f,
                // It could not have been sent: it fails the same way when sent.
                Err(_) => return crate::Reconciled::Absent,
            };
            let body = form.iter().find(|(k, _)| *k == "Body").map(|(_, v)| v.clone());
            let day = chorus_types::time::format_rfc3339_ms(attempted_ms).chars().take(10).collect::<String>();
            let matches = |m: &ListedMessage| {
                m.body.as_deref().map(str::trim) == body.as_deref().map(str::trim)
                    && m.date_created.as_deref().and_then(twilio_date_ms).is_none_or(|at| at >= attempted_ms - RECONCILE_SKEW_MS)
            };
            let mut last_error = None;
            for extra in [vec![("DateSent>", day)], Vec::new()] {
                match self.list(intent, &extra).await {
                    Ok(list) => {
                        if let Some(m) = list.iter().find(|m| matches(m)) {
                            return crate::Reconciled::Found(format!("twilio sid={} status={}", m.sid, m.status));
                        }
                    }
                    Err(e) => last_error = Some(e),
                }
            }
            match last_error {
                Some(e) => crate::Reconciled::Unknown(e),
                None => crate::Reconciled::Absent,
            }
        })
    }

    fn deliver<'a>(&'a self, intent: &'a Intent) -> Pin<Box<dyn Future<Output = Result<String, DeliveryError>> + Send + 'a>> {
        Box::pin(self.send(intent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_twilio_unknown_number_codes_are_permanent_invalid_address() {
        for code in [21211, 21614] {
            let body = format!(r#"{{"code": {code}, "message": "The 'To' number +1555 is not a valid phone number.", "status": 400}}"#);
            let Err(DeliveryError::Permanent(d)) = outcome(400, None, body.as_bytes()) else { panic!("code {code} must be permanent") };
            assert!(d.contains("invalid_address") && d.contains(&code.to_string()), "{d}");
        }
    }

    #[test]
    fn rule_twilio_unsubscribed_recipient_is_permanent() {
        let body = br#"{"code": 21610, "message": "Attempt to send to unsubscribed recipient", "status": 400}"#;
        let Err(DeliveryError::Permanent(d)) = outcome(400, None, body) else { panic!("21610 must be permanent") };
        assert!(d.contains("unsubscribed") && d.contains("21610"), "{d}");
    }

    #[test]
    fn rule_twilio_rate_limit_and_server_errors_are_transient() {
        let Err(DeliveryError::TransientAfter(d, _)) = outcome(429, Some(7), br#"{"code": 20429, "message": "Too Many Requests"}"#) else { panic!() };
        assert!(d.contains("retry after 7s") && d.contains("20429"), "{d}");
        assert!(matches!(outcome(503, None, b"<html>unavailable</html>"), Err(DeliveryError::Transient(_))));
    }

    #[test]
    fn status_callback_url_encodes_the_key() {
        assert_eq!(
            status_callback_url("https://n.example/", "j1/s 2", "cu_0000000000000001"),
            "https://n.example/v1/twilio/status?key=j1%2Fs%202&customer=cu_0000000000000001"
        );
    }
}
