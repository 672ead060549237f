//! In-app and web messages (SPEC §8 "in-app / web"): a message sent on the `in_app`
//! channel is kept on the profile until it expires or the customer dismisses it;
//! `Content.Get(customer, placement)` returns what to show. The SDK reports views and
//! dismissals as events (`in_app.viewed`, `in_app.dismissed` with `properties.key`).

use crate::CustomerState;
use chorus_types::{Event, Intent};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Messages kept per customer (the oldest go first).
pub const INBOX_MAX: usize = 50;
/// How long an in-app message stays available.
pub const IN_APP_TTL_MS: i64 = 30 * 86_400_000;
pub const VIEWED_EVENT: &str = "in_app.viewed";
pub const DISMISSED_EVENT: &str = "in_app.dismissed";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InAppMessage {
    pub key: String,
    /// Where the app shows it: `vars.placement` of the send, else `default`.
    pub placement: String,
    pub template: String,
    /// The rendered message (JSON of `chorus_templates::Rendered`), or empty.
    pub content: String,
    pub journey: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub viewed: bool,
}

/// Keep an in-app intent on the profile (called when the intent is decided).
pub fn store(state: &mut CustomerState, intent: &Intent, now_ms: i64) {
    if intent.channel != "in_app" || state.inbox.iter().any(|m| m.key == intent.key) {
        return;
    }
    let placement = intent.vars.get("placement").and_then(Value::as_str).unwrap_or("default").to_string();
    state.inbox.retain(|m| m.expires_ms > now_ms);
    state.inbox.push(InAppMessage {
        key: intent.key.clone(),
        placement,
        template: intent.template.clone(),
        content: intent.content.clone(),
        journey: intent.journey.clone(),
        created_ms: now_ms,
        expires_ms: now_ms + IN_APP_TTL_MS,
        viewed: false,
    });
    if state.inbox.len() > INBOX_MAX {
        state.inbox.remove(0);
    }
}

/// Apply a view or dismissal reported by the app.
pub fn on_event(state: &mut CustomerState, event: &Event) {
    if event.name != VIEWED_EVENT && event.name != DISMISSED_EVENT || event.properties.is_empty() {
        return;
    }
    let Ok(props) = serde_json::from_str::<Value>(&event.properties) else {
        return;
    };
    let Some(key) = props.get("key").and_then(Value::as_str) else {
        return;
    };
    if event.name == DISMISSED_EVENT {
        state.inbox.retain(|m| m.key != key);
    } else if let Some(m) = state.inbox.iter_mut().find(|m| m.key == key) {
        m.viewed = true;
    }
}

/// What to show in `placement` now (newest first).
pub fn visible<'a>(state: &'a CustomerState, placement: &str, now_ms: i64) -> Vec<&'a InAppMessage> {
    let mut out: Vec<&InAppMessage> = state.inbox.iter().filter(|m| m.placement == placement && m.expires_ms > now_ms).collect();
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_types::{Category, CustomerId, EventInput, JsonMap};

    fn intent(key: &str, placement: Option<&str>) -> Intent {
        let mut vars = JsonMap::new();
        if let Some(p) = placement {
            vars.0.insert("placement".into(), p.into());
        }
        Intent {
            key: key.into(),
            customer: CustomerId::new(0, 1),
            channel: "in_app".into(),
            template: "promo".into(),
            category: Category::Marketing,
            to: String::new(),
            vars,
            journey: "j".into(),
            created_ms: 0,
            content: String::new(),
        }
    }

    fn ev(name: &str, key: &str) -> Event {
        EventInput {
            message_id: format!("{name}-{key}"),
            name: name.into(),
            identities: vec![("user_id".into(), "u".into())],
            properties: serde_json::json!({"key": key}).as_object().cloned().unwrap(),
            ..Default::default()
        }
        .validate()
        .unwrap()
    }

    #[test]
    fn rule_in_app_messages_wait_on_the_profile_until_dismissed_or_expired() {
        let mut c = CustomerState::new(CustomerId::new(0, 1), 0);
        store(&mut c, &intent("a", None), 10);
        store(&mut c, &intent("b", Some("home_banner")), 20);
        store(&mut c, &intent("a", None), 30); // the same intent again: kept once
        assert_eq!(visible(&c, "default", 40).iter().map(|m| m.key.as_str()).collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(visible(&c, "home_banner", 40).len(), 1);
        on_event(&mut c, &ev(VIEWED_EVENT, "a"));
        assert!(c.inbox.iter().find(|m| m.key == "a").unwrap().viewed);
        on_event(&mut c, &ev(DISMISSED_EVENT, "a"));
        assert!(visible(&c, "default", 40).is_empty());
        assert!(visible(&c, "home_banner", 20 + IN_APP_TTL_MS).is_empty(), "expired");
    }
}
