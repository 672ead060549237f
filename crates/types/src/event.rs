//! Events (SPEC §2, §9): the validated, normalized form every ingest path produces,
//! and the validation that turns raw input into it with field-named errors.

use crate::json::JsonMap;
use crate::{Identity, IdentityKind};
use serde::{Deserialize, Serialize};

/// Segment's call types. Append-only.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub enum EventType {
    Track,
    Identify,
    Alias,
    Page,
    Screen,
    Group,
}

impl EventType {
    pub fn parse(s: &str) -> Option<EventType> {
        Some(match s.to_ascii_lowercase().as_str() {
            "track" => EventType::Track,
            "identify" => EventType::Identify,
            "alias" => EventType::Alias,
            "page" => EventType::Page,
            "screen" => EventType::Screen,
            "group" => EventType::Group,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Track => "track",
            EventType::Identify => "identify",
            EventType::Alias => "alias",
            EventType::Page => "page",
            EventType::Screen => "screen",
            EventType::Group => "group",
        }
    }
}

/// A validated event: identities normalized and de-duplicated, sizes bounded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Idempotency key: duplicates within the dedup window are not applied twice.
    pub message_id: String,
    pub event_type: EventType,
    /// Track event name, page/screen name, or empty.
    pub name: String,
    pub identities: Vec<Identity>,
    /// The properties object as compact JSON text (empty when there are none): it is
    /// carried and stored as text and parsed only by what reads it.
    pub properties: String,
    pub traits: JsonMap,
    /// The context object as compact JSON text (empty when there is none).
    pub context: String,
    /// Client timestamp in Unix milliseconds; 0 when the client gave none.
    pub timestamp_ms: i64,
}

impl Event {
    /// The identity this event is routed by (SPEC §3.1).
    pub fn strongest_identity(&self) -> &Identity {
        crate::routing::strongest(&self.identities).expect("validated events carry an identity")
    }
}

/// Raw input as any ingest path (gRPC, Segment HTTP, CLI) hands it over.
#[derive(Clone, Debug, Default)]
pub struct EventInput {
    pub message_id: String,
    pub event_type: String,
    pub name: String,
    /// (kind, raw value) pairs.
    pub identities: Vec<(String, String)>,
    pub properties: serde_json::Map<String, serde_json::Value>,
    pub traits: serde_json::Map<String, serde_json::Value>,
    pub context: serde_json::Map<String, serde_json::Value>,
    /// RFC 3339 timestamp or empty.
    pub timestamp: String,
    /// Unix milliseconds; used when `timestamp` is empty.
    pub timestamp_ms: i64,
}

/// Limits applied to every event.
pub const MESSAGE_ID_LEN_MAX: usize = 256;
pub const EVENT_NAME_LEN_MAX: usize = 256;
pub const EVENT_IDENTITIES_MAX: usize = 16;
/// Bytes of JSON in properties + traits + context together.
pub const EVENT_PAYLOAD_BYTES_MAX: usize = 32 * 1024;
/// How deeply properties, traits and context may each nest (the object itself is level 1).
pub const EVENT_JSON_DEPTH_MAX: usize = 32;

/// A validation error naming the offending field by path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { field: field.into(), message: message.into() }
    }
}

impl EventInput {
    /// Validate and normalize. The first problem found is reported with its field path.
    pub fn validate(self) -> Result<Event, FieldError> {
        let message_id = self.message_id.trim().to_string();
        if message_id.is_empty() {
            return Err(FieldError::new("message_id", "is required (it is the idempotency key)"));
        }
        if message_id.len() > MESSAGE_ID_LEN_MAX {
            return Err(FieldError::new("message_id", format!("is {} bytes; the limit is {MESSAGE_ID_LEN_MAX}", message_id.len())));
        }
        let event_type = if self.event_type.is_empty() {
            EventType::Track
        } else {
            EventType::parse(&self.event_type).ok_or_else(|| {
                FieldError::new("type", format!("{:?} is not an event type: use track, identify, alias, page, screen or group", self.event_type))
            })?
        };
        let name = self.name.trim().to_string();
        if event_type == EventType::Track && name.is_empty() {
            return Err(FieldError::new("event", "is required for track events"));
        }
        if name.len() > EVENT_NAME_LEN_MAX {
            return Err(FieldError::new("event", format!("is {} bytes; the limit is {EVENT_NAME_LEN_MAX}", name.len())));
        }
        if self.identities.is_empty() {
            return Err(FieldError::new("identities", "at least one identity is required (user_id, anonymous_id, email, phone, ...)"));
        }
        if self.identities.len() > EVENT_IDENTITIES_MAX {
            return Err(FieldError::new("identities", format!("{} identities given; the limit is {EVENT_IDENTITIES_MAX}", self.identities.len())));
        }
        let mut identities: Vec<Identity> = Vec::with_capacity(self.identities.len());
        for (i, (kind, value)) in self.identities.iter().enumerate() {
            let field = format!("identities[{i}]");
            let kind = IdentityKind::parse(kind).map_err(|e| FieldError::new(format!("{field}.kind"), e.to_string()))?;
            let id = Identity::normalize(kind, value).map_err(|e| FieldError::new(format!("{field}.value"), e.to_string()))?;
            if !identities.contains(&id) {
                identities.push(id);
            }
        }
        if self.context.contains_key(CHORUS_CONTEXT_KEY) {
            return Err(FieldError::new(
                "context.chorus",
                "is reserved for Chorus itself (to set consent with its source and evidence, use Profiles.SetConsent or `chorusctl profile consent set`)",
            ));
        }
        for (field, map) in [("properties", &self.properties), ("traits", &self.traits), ("context", &self.context)] {
            if object_depth(map) > EVENT_JSON_DEPTH_MAX {
                return Err(FieldError::new(field, format!("nests more than {EVENT_JSON_DEPTH_MAX} levels deep (the limit): flatten it")));
            }
        }
        let properties = json_text(&self.properties);
        let context = json_text(&self.context);
        let payload_bytes = properties.len() + json_len(&self.traits) + context.len();
        if payload_bytes > EVENT_PAYLOAD_BYTES_MAX {
            return Err(FieldError::new(
                "properties",
                format!("properties, traits and context are {payload_bytes} bytes of JSON; the limit is {EVENT_PAYLOAD_BYTES_MAX}"),
            ));
        }
        let timestamp_ms = if !self.timestamp.trim().is_empty() {
            parse_rfc3339_ms(self.timestamp.trim())
                .ok_or_else(|| FieldError::new("timestamp", format!("{:?} is not an RFC 3339 timestamp (e.g. 2026-11-27T10:00:00Z)", self.timestamp)))?
        } else {
            self.timestamp_ms
        };
        Ok(Event { message_id, event_type, name, identities, properties, traits: self.traits.into(), context, timestamp_ms })
    }
}

/// Context key only Chorus may set (clients are refused): `{"consent_source", "evidence"}`
/// of consent changes made through the API, so the ledger records where they came from.
pub const CHORUS_CONTEXT_KEY: &str = "chorus";

/// Nesting depth of an object (itself level 1), without recursing past
/// `EVENT_JSON_DEPTH_MAX + 1` levels.
fn object_depth(m: &serde_json::Map<String, serde_json::Value>) -> usize {
    fn value_depth(v: &serde_json::Value, level: usize) -> usize {
        match v {
            _ if !(v.is_object() || v.is_array()) => level - 1,
            _ if level > EVENT_JSON_DEPTH_MAX => level,
            serde_json::Value::Object(m) => m.values().map(|v| value_depth(v, level + 1)).max().unwrap_or(level),
            serde_json::Value::Array(a) => a.iter().map(|v| value_depth(v, level + 1)).max().unwrap_or(level),
            _ => level - 1,
        }
    }
    if m.is_empty() {
        return 1;
    }
    m.values().map(|v| value_depth(v, 2)).max().unwrap_or(1).max(1)
}

fn json_text(m: &serde_json::Map<String, serde_json::Value>) -> String {
    if m.is_empty() { String::new() } else { serde_json::to_string(m).unwrap_or_default() }
}

fn json_len(m: &serde_json::Map<String, serde_json::Value>) -> usize {
    if m.is_empty() { 0 } else { serde_json::to_vec(m).map(|v| v.len()).unwrap_or(usize::MAX) }
}

pub use crate::time::parse_rfc3339_ms;

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> EventInput {
        EventInput {
            message_id: "m-1".into(),
            event_type: "track".into(),
            name: "Product Viewed".into(),
            identities: vec![("anonymous_id".into(), "a-1".into()), ("email".into(), " Ada@Example.com".into())],
            ..Default::default()
        }
    }

    #[test]
    fn a_valid_event_is_normalized() {
        let e = input().validate().unwrap();
        assert_eq!(e.identities[1].value, "ada@example.com");
        assert_eq!(e.strongest_identity().kind, IdentityKind::Email);
    }

    #[test]
    fn validation_errors_name_the_field() {
        let mut i = input();
        i.message_id = " ".into();
        assert_eq!(i.validate().unwrap_err().field, "message_id");
        let mut i = input();
        i.identities[1].1 = "not-an-email".into();
        assert_eq!(i.validate().unwrap_err().field, "identities[1].value");
        let mut i = input();
        i.name.clear();
        assert_eq!(i.validate().unwrap_err().field, "event");
        let mut i = input();
        i.identities.clear();
        assert_eq!(i.validate().unwrap_err().field, "identities");
        let mut i = input();
        i.timestamp = "yesterday".into();
        assert_eq!(i.validate().unwrap_err().field, "timestamp");
        let mut i = input();
        i.properties.insert("blob".into(), serde_json::Value::String("x".repeat(40_000)));
        assert_eq!(i.validate().unwrap_err().field, "properties");
    }

    #[test]
    fn nesting_is_bounded_per_field() {
        let nest = |levels: usize| -> serde_json::Value {
            let mut v = serde_json::json!(1);
            for _ in 0..levels {
                v = serde_json::json!([v]);
            }
            v
        };
        // properties (level 1) → "x": 31 arrays = 32 levels: at the limit.
        let mut i = input();
        i.properties.insert("x".into(), nest(EVENT_JSON_DEPTH_MAX - 1));
        i.properties.insert("flat".into(), serde_json::json!({}));
        assert!(i.validate().is_ok());
        let mut i = input();
        i.properties.insert("x".into(), nest(EVENT_JSON_DEPTH_MAX));
        let e = i.validate().unwrap_err();
        assert_eq!(e.field, "properties");
        assert!(e.message.contains("more than 32 levels"), "{e}");
        let mut i = input();
        i.context.insert("deep".into(), nest(200));
        assert_eq!(i.validate().unwrap_err().field, "context");
        let mut i = input();
        i.traits.insert("a".into(), serde_json::json!({"b": nest(40)}));
        assert_eq!(i.validate().unwrap_err().field, "traits");
    }

    #[test]
    fn rfc3339_parses_offsets_and_fractions() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_ms("2026-11-27T10:00:00.250Z"), Some(1_795_773_600_250));
        assert_eq!(parse_rfc3339_ms("2026-11-27T11:00:00+01:00"), Some(1_795_773_600_000));
        assert_eq!(parse_rfc3339_ms("2026-11-27"), None);
    }
}
