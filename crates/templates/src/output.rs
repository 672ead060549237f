//! What rendering produces: one message per channel with every field, serializable
//! (JSON: `{template, locale, channel, …fields}`), and what rendering reads.

use crate::sms::SmsEncoding;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// A rendered message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rendered {
    /// The template id.
    pub template: String,
    /// The locale whose overrides were used (as written in the template), if any.
    pub locale: Option<String>,
    #[serde(flatten)]
    pub content: Content,
}

/// The channel and its fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "channel", rename_all = "snake_case")]
pub enum Content {
    Email(Email),
    Sms(Sms),
    Mms(Mms),
    Push(Push),
    InApp(InApp),
    Webhook(Webhook),
}

impl Content {
    pub fn channel(&self) -> &'static str {
        match self {
            Content::Email(_) => "email",
            Content::Sms(_) => "sms",
            Content::Mms(_) => "mms",
            Content::Push(_) => "push",
            Content::InApp(_) => "in_app",
            Content::Webhook(_) => "webhook",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Email {
    pub subject: String,
    pub preheader: Option<String>,
    pub html: Option<String>,
    pub text: Option<String>,
    /// Headers the message must carry: for marketing email, `List-Unsubscribe` and
    /// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058).
    pub headers: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sms {
    pub body: String,
    pub encoding: SmsEncoding,
    /// GSM-7 septets or UCS-2 code units.
    pub units: u32,
    pub segments: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mms {
    pub body: Option<String>,
    pub media_url: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Push {
    pub title: Option<String>,
    pub body: String,
    pub image: Option<String>,
    pub deep_link: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Button {
    pub label: String,
    pub action: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InApp {
    pub title: Option<String>,
    pub body: String,
    pub buttons: Vec<Button>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    pub url: String,
    pub method: String,
    pub headers: BTreeMap<String, String>,
    pub body: Option<String>,
}

/// Everything a template can read while rendering for one customer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Context {
    /// `profile.id`.
    pub customer_id: String,
    /// The customer's attributes (`profile.*`).
    pub profile: Map<String, Value>,
    /// The triggering event's properties (`event.*`); empty for API sends.
    pub event: Map<String, Value>,
    /// Per-send variables (`vars.*`).
    pub vars: Map<String, Value>,
    /// The journey and step sending the message (`journey.id`, `journey.step`).
    pub journey: Option<JourneyRef>,
    /// `message.id`.
    pub message_id: String,
    /// `links.unsubscribe`, `links.preferences`.
    pub links: Links,
    /// The locale to render in; when None, the profile's `locale` attribute.
    pub locale: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JourneyRef {
    pub id: String,
    pub step: String,
}

/// URLs the caller signs for this message.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Links {
    pub unsubscribe: String,
    pub preferences: String,
}

/// Rewrites a link for click tracking: `(url, index of the tracked link) → url`.
pub type ClickTracker<'a> = &'a dyn Fn(&str, usize) -> String;

/// Email engagement tracking, supplied by the caller.
#[derive(Clone, Copy, Default)]
pub struct Tracking<'a> {
    /// Rewrites each trackable link (see [`crate::track_links`]).
    pub click: Option<ClickTracker<'a>>,
    /// An open-pixel URL, inserted as a 1×1 image before `</body>`.
    pub open_pixel: Option<&'a str>,
}

impl std::fmt::Debug for Tracking<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracking").field("click", &self.click.is_some()).field("open_pixel", &self.open_pixel).finish()
    }
}
