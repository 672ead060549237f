//! Messages Chorus decides to send: API send requests (transactional sends and
//! scheduled sends), durable timers, and outbox intents handed to connectors.

use crate::{CustomerId, JsonMap};
use serde::{Deserialize, Serialize};

/// Journey category (SPEC §4.3): transactional sends ignore marketing caps and topic
/// opt-outs but never a channel-level hard stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Category {
    Marketing,
    Transactional,
}

impl Category {
    pub fn parse(s: &str) -> Option<Category> {
        match s {
            "marketing" | "" => Some(Category::Marketing),
            "transactional" => Some(Category::Transactional),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Marketing => "marketing",
            Category::Transactional => "transactional",
        }
    }
}

/// Channels (SPEC §2). Append-only.
pub const CHANNELS: &[&str] = &["email", "sms", "mms", "push", "in_app", "web", "media", "webhook"];

/// A request to send one message to one customer, by API now or at `send_at_ms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SendRequest {
    /// Client-chosen id: the same id is never sent twice (it is the idempotency root).
    pub request_id: String,
    pub customer: CustomerId,
    pub channel: String,
    pub template: String,
    pub category: Category,
    pub vars: JsonMap,
    /// When to send (Unix ms); 0 or past means now.
    pub send_at_ms: i64,
    /// Topic (subscription group) the message belongs to, if any.
    pub topic: String,
}

/// A durable timer in a shard's timer index (SPEC §3.7).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Timer {
    /// A scheduled API send.
    Send(SendRequest),
    /// A journey wait (or wait_for timeout); stale when `seq` is no longer the
    /// instance's current timer.
    Journey { customer: CustomerId, journey: String, entry_key: String, seq: u64 },
}

impl Timer {
    pub fn customer(&self) -> CustomerId {
        match self {
            Timer::Send(r) => r.customer,
            Timer::Journey { customer, .. } => *customer,
        }
    }
}

/// A decision to send, recorded in the outbox with a deterministic idempotency key and
/// delivered by a connector (SPEC §3.6).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Intent {
    pub key: String,
    pub customer: CustomerId,
    pub channel: String,
    pub template: String,
    pub category: Category,
    /// The contact point (email address, E.164 phone, push token; empty for in-app).
    pub to: String,
    /// Variables for rendering: the customer's attributes overlaid with the request's.
    pub vars: JsonMap,
    pub journey: String,
    pub created_ms: i64,
    /// The rendered message: the JSON of a `chorus_templates::Rendered` (channel,
    /// template, locale and every field: subject/html/text/headers, sms body with
    /// encoding and segments, push title/body, webhook url/method/headers/body, ...).
    /// Empty when the node has no template of that id (the connector then gets only
    /// the template id and `vars`).
    pub content: String,
}
