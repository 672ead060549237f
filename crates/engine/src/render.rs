//! Rendering a message at decision time (SPEC §7), so a template that cannot render
//! for this customer is a `skipped(template error)` decision, never a failed delivery,
//! and the outbox holds exactly what goes out. Email links get engagement tracking:
//! every message has a signed token that carries no customer data — only the shard
//! and an id under which the shard keeps a [`TrackRecord`] (who, which journey and
//! step, the original links) — used by the open pixel, click redirects and the
//! unsubscribe page on the node's HTTP port.

use crate::CustomerState;
use base64::Engine;
use chorus_templates::{Context, JourneyRef, Links, Template, Tracking};
use chorus_types::Intent;
use hmac::Mac;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;

/// Where tracking links point and the key that signs them (node configuration, the
/// same on every node of a cluster).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrackingConfig {
    /// The node's public HTTP base URL, e.g. `https://t.example.com`.
    pub base_url: String,
    /// HMAC key for tokens.
    pub secret: Vec<u8>,
    /// Rewrite email links for click tracking and add the open pixel.
    pub email_tracking: bool,
}

impl Default for TrackingConfig {
    fn default() -> Self {
        TrackingConfig { base_url: "http://127.0.0.1:8080".into(), secret: b"chorus-dev-tracking-key".to_vec(), email_tracking: true }
    }
}

/// What the shard keeps per tracked message, under `(shard, id)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrackRecord {
    pub id: u64,
    pub customer: chorus_types::CustomerId,
    pub key: String,
    pub channel: String,
    pub journey: String,
    pub step: String,
    /// The original URLs, by tracked-link index.
    pub links: Vec<String>,
    pub at_ms: i64,
}

const MAC_LEN: usize = 12;

fn mac(secret: &[u8], body: &[u8]) -> [u8; MAC_LEN] {
    let mut m = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes keys of any length");
    m.update(body);
    let full = m.finalize().into_bytes();
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&full[..MAC_LEN]);
    out
}

/// The token of the message with idempotency key `key` in `shard`: 32 URL-safe
/// characters (shard, id, and a truncated HMAC-SHA256).
pub fn token(shard: u32, key: &str, secret: &[u8]) -> (u64, String) {
    let id = chorus_types::routing::stable_hash(key.as_bytes());
    let mut body = Vec::with_capacity(12 + MAC_LEN);
    body.extend_from_slice(&shard.to_be_bytes());
    body.extend_from_slice(&id.to_be_bytes());
    let m = mac(secret, &body);
    body.extend_from_slice(&m);
    (id, base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(body))
}

/// Check a token's signature; returns (shard, id).
pub fn verify(token: &str, secret: &[u8]) -> Option<(u32, u64)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.as_bytes()).ok()?;
    if raw.len() != 12 + MAC_LEN {
        return None;
    }
    let (body, sig) = raw.split_at(12);
    let expected = mac(secret, body);
    // Constant time compare.
    let diff = expected.iter().zip(sig).fold(0u8, |d, (a, b)| d | (a ^ b));
    if diff != 0 {
        return None;
    }
    Some((u32::from_be_bytes(body[..4].try_into().ok()?), u64::from_be_bytes(body[4..12].try_into().ok()?)))
}

/// Tracking URLs of a message.
pub fn open_url(cfg: &TrackingConfig, token: &str) -> String {
    format!("{}/t/o/{token}.gif", cfg.base_url.trim_end_matches('/'))
}
pub fn click_url(cfg: &TrackingConfig, token: &str, index: usize) -> String {
    format!("{}/t/c/{token}/{index}", cfg.base_url.trim_end_matches('/'))
}
pub fn unsubscribe_url(cfg: &TrackingConfig, token: &str) -> String {
    format!("{}/t/u/{token}", cfg.base_url.trim_end_matches('/'))
}

/// Render `template` for the intent's channel and put the result in `intent.content`.
/// Returns the record the shard keeps for tracking, or the reason it cannot render.
pub fn render_intent(
    state: &CustomerState,
    intent: &mut Intent,
    template: &Template,
    journey: Option<(&str, &str)>,
    event_properties: &str,
    tracking: &TrackingConfig,
    now_ms: i64,
) -> Result<TrackRecord, String> {
    let shard = state.id.home_shard();
    let (id, token) = token(shard, &intent.key, &tracking.secret);
    let event = if event_properties.is_empty() { Default::default() } else { serde_json::from_str(event_properties).unwrap_or_default() };
    let ctx = Context {
        customer_id: state.id.to_string(),
        profile: state.attributes.0.clone(),
        event,
        vars: intent.vars.0.clone(),
        journey: journey.map(|(j, s)| JourneyRef { id: j.to_string(), step: s.to_string() }),
        message_id: intent.key.clone(),
        links: Links { unsubscribe: unsubscribe_url(tracking, &token), preferences: unsubscribe_url(tracking, &token) },
        locale: None,
    };
    let links: RefCell<Vec<String>> = RefCell::new(Vec::new());
    let track = |url: &str, i: usize| {
        let mut l = links.borrow_mut();
        if l.len() <= i {
            l.resize(i + 1, String::new());
        }
        l[i] = url.to_string();
        click_url(tracking, &token, i)
    };
    let pixel = open_url(tracking, &token);
    let email_tracking = tracking.email_tracking && intent.channel == "email";
    let t = Tracking { click: email_tracking.then_some(&track as &dyn Fn(&str, usize) -> String), open_pixel: email_tracking.then_some(pixel.as_str()) };
    let rendered = template.render(&intent.channel, &ctx, &t).map_err(|e| e.to_string())?;
    intent.content = serde_json::to_string(&rendered).map_err(|e| e.to_string())?;
    let (journey, step) = journey.map(|(j, s)| (j.to_string(), s.to_string())).unwrap_or_default();
    Ok(TrackRecord {
        id,
        customer: state.id,
        key: intent.key.clone(),
        channel: intent.channel.clone(),
        journey,
        step,
        links: links.into_inner(),
        at_ms: now_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_types::{Category, CustomerId, JsonMap};

    const TEMPLATE: &str = "id: hello\ncategory: marketing\nemail:\n  subject: 'Hi {{ profile.first_name | default: \"there\" }}'\n  html: '<p>See <a href=\"https://shop.example/p/{{ event.sku }}\">it</a></p><p><a href=\"{{ links.unsubscribe }}\">Unsubscribe</a></p>'\n  text: 'See https://shop.example/p/{{ event.sku }} — unsubscribe: {{ links.unsubscribe }}'\nsms:\n  body: 'Hi {{ profile.first_name }}'\n";

    fn intent(channel: &str) -> Intent {
        Intent {
            key: "j/hello/v1/k/1/s/cu_1".into(),
            customer: CustomerId::new(3, 1),
            channel: channel.into(),
            template: "hello".into(),
            category: Category::Marketing,
            to: "ada@example.com".into(),
            vars: JsonMap::new(),
            journey: "welcome".into(),
            created_ms: 0,
            content: String::new(),
        }
    }

    #[test]
    fn rule_tracking_tokens_are_signed_and_carry_no_customer_data() {
        let secret = b"s3cret";
        let (id, t) = token(3, "j/hello/v1/k/1/s/cu_0003000000000001", secret);
        assert_eq!(t.len(), 32);
        assert!(!t.contains("cu_") && !t.contains("hello"));
        assert_eq!(verify(&t, secret), Some((3, id)));
        assert_eq!(verify(&t, b"other"), None, "another key does not verify");
        let mut forged = t.clone().into_bytes();
        forged[3] = if forged[3] == b'A' { b'B' } else { b'A' };
        assert_eq!(verify(std::str::from_utf8(&forged).unwrap(), secret), None);
    }

    #[test]
    fn rule_emails_are_rendered_with_tracked_links_pixel_and_unsubscribe() {
        let template = chorus_templates::parse(TEMPLATE, "hello.yaml").unwrap();
        let mut c = CustomerState::new(CustomerId::new(3, 1), 0);
        c.attributes.0.insert("first_name".into(), "Ada".into());
        let mut i = intent("email");
        let cfg = TrackingConfig { base_url: "https://t.example".into(), secret: b"k".to_vec(), email_tracking: true };
        let rec = render_intent(&c, &mut i, &template, Some(("welcome", "hello")), r#"{"sku":"A1"}"#, &cfg, 5).unwrap();
        let (_, tok) = token(3, &i.key, b"k");
        let v: serde_json::Value = serde_json::from_str(&i.content).unwrap();
        assert_eq!(v["subject"], "Hi Ada");
        let html = v["html"].as_str().unwrap();
        assert!(html.contains(&format!("href=\"https://t.example/t/c/{tok}/0\"")), "{html}");
        assert!(html.contains(&format!("https://t.example/t/u/{tok}")), "the unsubscribe link is not click-tracked: {html}");
        assert!(html.contains(&format!("https://t.example/t/o/{tok}.gif")), "{html}");
        assert_eq!(rec.links, vec!["https://shop.example/p/A1".to_string()]);
        assert_eq!((rec.journey.as_str(), rec.step.as_str(), rec.customer), ("welcome", "hello", c.id));
        assert!(v["headers"]["List-Unsubscribe"].as_str().unwrap().contains(&tok), "{v}");
    }

    #[test]
    fn rule_a_template_that_cannot_render_is_an_error_not_a_crash() {
        let template = chorus_templates::parse(TEMPLATE, "hello.yaml").unwrap();
        let c = CustomerState::new(CustomerId::new(3, 1), 0);
        let mut i = intent("sms");
        let err = render_intent(&c, &mut i, &template, None, "", &TrackingConfig::default(), 0).unwrap_err();
        assert!(err.contains("first_name"), "{err}");
        let mut i = intent("push");
        assert!(render_intent(&c, &mut i, &template, None, "", &TrackingConfig::default(), 0).unwrap_err().contains("push"));
    }
}
