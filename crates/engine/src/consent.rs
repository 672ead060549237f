//! Consent rules that act after an event (SPEC §4.3): SMS keywords on inbound
//! messages, the help reply, and double opt-in for SMS. Pure: the caller turns the
//! returned send requests into intents with the ordinary send checks.

use crate::guard::Settings;
use crate::profile::set_consent;
use crate::{ConsentChange, ConsentEntry, ConsentStatus, CustomerState, DecisionKind, EngineConfig};
use chorus_types::{Category, Event, JsonMap, SendRequest};
use serde_json::Value;

/// The event an inbound SMS becomes (`properties.body` holds the text).
pub const INBOUND_SMS_EVENT: &str = "sms.received";
/// Keywords that opt the sender out of SMS.
pub const STOP_KEYWORDS: &[&str] = &["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"];
/// Keywords that opt the sender in (and confirm a pending double opt-in).
pub const START_KEYWORDS: &[&str] = &["START", "UNSTOP", "YES"];
/// Keywords answered with the help message.
pub const HELP_KEYWORDS: &[&str] = &["HELP", "INFO"];
/// Template of the reply to HELP / INFO.
pub const HELP_TEMPLATE: &str = "sms-help";
/// Template of the message asking to confirm an SMS opt-in with YES.
pub const DOUBLE_OPT_IN_TEMPLATE: &str = "sms-double-opt-in";
/// Ledger source of keyword changes.
pub const KEYWORD_SOURCE: &str = "sms keyword";
/// An email bounced after it was accepted (`properties.email`, `properties.reason`).
pub const BOUNCED_EVENT: &str = "email.bounced";
/// The recipient marked an email as spam: a hard stop for email (SPEC §4.3).
pub const COMPLAINED_EVENT: &str = "email.complained";

/// The keyword an inbound SMS carries: the whole message, trimmed, case-insensitive.
pub fn keyword(body: &str) -> Option<&'static str> {
    let word = body.trim().to_ascii_uppercase();
    STOP_KEYWORDS.iter().chain(START_KEYWORDS).chain(HELP_KEYWORDS).find(|k| **k == word).copied()
}

/// Apply the consent rules that follow `event` (already applied to the profile;
/// `ledger_before` is the ledger's length before it). Returns the transactional
/// messages to send: the help reply, a double opt-in confirmation request.
pub fn after_event(state: &mut CustomerState, event: &Event, ledger_before: usize, settings: &Settings, now_ms: i64, cfg: &EngineConfig) -> Vec<SendRequest> {
    let mut out = Vec::new();
    let customer = state.id;
    let reply = |template: &str, tag: &str| SendRequest {
        request_id: format!("{tag}/{}", event.message_id),
        customer,
        channel: "sms".into(),
        template: template.into(),
        category: Category::Transactional,
        vars: JsonMap::new(),
        send_at_ms: 0,
        topic: String::new(),
    };
    let mut confirmed_by_keyword = false;
    if event.name == INBOUND_SMS_EVENT && !event.properties.is_empty() {
        let body =
            serde_json::from_str::<Value>(&event.properties).ok().and_then(|p| p.get("body").and_then(Value::as_str).map(str::to_string)).unwrap_or_default();
        if let Some(kw) = keyword(&body) {
            let evidence = format!("keyword {kw} in {}", event.message_id);
            if STOP_KEYWORDS.contains(&kw) {
                set_consent(state, cfg, now_ms, true, "sms", &Value::String("opted_out".into()), KEYWORD_SOURCE, &evidence);
            } else if START_KEYWORDS.contains(&kw) {
                confirmed_by_keyword = true;
                set_consent(state, cfg, now_ms, true, "sms", &Value::String("opted_in".into()), KEYWORD_SOURCE, &evidence);
            } else {
                state.decide(cfg, now_ms, DecisionKind::ConsentChanged, "help requested", evidence);
                out.push(reply(HELP_TEMPLATE, "sms-help"));
            }
        }
    }
    // Bounces and complaints reported after delivery (a provider's webhook).
    if (event.name == BOUNCED_EVENT || event.name == COMPLAINED_EVENT) && !event.properties.is_empty() {
        let props = serde_json::from_str::<Value>(&event.properties).unwrap_or(Value::Null);
        let reason = props.get("reason").and_then(Value::as_str).unwrap_or("").to_string();
        let address = props.get("email").and_then(Value::as_str).map(str::to_string);
        if event.name == BOUNCED_EVENT {
            if let Some(a) = address {
                crate::messaging::mark_contact(state, &a, "bounced", &format!("bounce reported: {reason} ({})", event.message_id), now_ms, cfg);
            }
        } else {
            let evidence = format!("complaint {} {reason}", event.message_id);
            set_consent(state, cfg, now_ms, true, "email", &Value::String("opted_out".into()), "email complaint", evidence.trim());
        }
    }
    // Double opt-in: an SMS opt-in from anywhere but the customer's own phone waits for
    // a YES reply.
    if settings.sms_double_opt_in && !confirmed_by_keyword {
        let start = ledger_before.min(state.consent.ledger.len());
        let opted_in_elsewhere =
            state.consent.ledger[start..].iter().any(|c| c.scope == "channel:sms" && c.status == ConsentStatus::OptedIn && c.source != KEYWORD_SOURCE);
        if opted_in_elsewhere && state.consent.channels.get("sms").is_some_and(|e| e.status == ConsentStatus::OptedIn) {
            let source = "double opt-in".to_string();
            state.consent.channels.insert("sms".into(), ConsentEntry { status: ConsentStatus::Pending, at_ms: now_ms, source: source.clone() });
            state.consent.ledger.push(ConsentChange {
                at_ms: now_ms,
                scope: "channel:sms".into(),
                status: ConsentStatus::Pending,
                source,
                evidence: format!("confirmation requested ({})", event.message_id),
            });
            state.decide(cfg, now_ms, DecisionKind::ConsentChanged, "pending", "channel:sms waits for a YES reply (double opt-in)");
            out.push(reply(DOUBLE_OPT_IN_TEMPLATE, "sms-doi"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_types::{CustomerId, EventInput, Identity, IdentityKind};

    fn customer() -> CustomerState {
        let mut c = CustomerState::new(CustomerId::new(0, 1), 0);
        c.identities.push(Identity { kind: IdentityKind::Phone, value: "+14155550123".into() });
        c
    }

    fn inbound(body: &str, id: &str) -> Event {
        let props = serde_json::json!({"body": body});
        EventInput {
            message_id: id.into(),
            name: INBOUND_SMS_EVENT.into(),
            identities: vec![("phone".into(), "+14155550123".into())],
            properties: props.as_object().cloned().unwrap(),
            ..Default::default()
        }
        .validate()
        .unwrap()
    }

    fn apply(c: &mut CustomerState, e: &Event, settings: &Settings, now: i64) -> Vec<SendRequest> {
        let before = c.consent.ledger.len();
        crate::apply_event(c, e, now, &EngineConfig::default());
        after_event(c, e, before, settings, now, &EngineConfig::default())
    }

    fn sms(c: &CustomerState) -> ConsentStatus {
        c.consent.channels.get("sms").map(|e| e.status).unwrap_or(ConsentStatus::Unknown)
    }

    #[test]
    fn rule_sms_keywords_are_case_insensitive_and_trimmed() {
        assert_eq!(keyword("  stop \n"), Some("STOP"));
        assert_eq!(keyword("Unsubscribe"), Some("UNSUBSCRIBE"));
        assert_eq!(keyword("yes"), Some("YES"));
        assert_eq!(keyword("info"), Some("INFO"));
        assert_eq!(keyword("please stop"), None, "only a message that is the keyword counts");
    }

    #[test]
    fn rule_stop_opts_out_with_the_keyword_as_evidence() {
        let mut c = customer();
        for (i, kw) in STOP_KEYWORDS.iter().enumerate() {
            c.consent.channels.insert("sms".into(), ConsentEntry { status: ConsentStatus::OptedIn, at_ms: 0, source: "api".into() });
            assert!(apply(&mut c, &inbound(&kw.to_lowercase(), &format!("in-{i}")), &Settings::default(), 10 + i as i64).is_empty());
            assert_eq!(sms(&c), ConsentStatus::OptedOut, "{kw}");
        }
        let last = c.consent.ledger.last().unwrap();
        assert_eq!((last.scope.as_str(), last.source.as_str(), last.evidence.as_str()), ("channel:sms", KEYWORD_SOURCE, "keyword QUIT in in-5"));
    }

    #[test]
    fn rule_start_opts_back_in() {
        let mut c = customer();
        apply(&mut c, &inbound("STOP", "a"), &Settings::default(), 1);
        apply(&mut c, &inbound("Start", "b"), &Settings::default(), 2);
        assert_eq!(sms(&c), ConsentStatus::OptedIn);
    }

    #[test]
    fn rule_help_gets_a_transactional_reply_and_changes_nothing() {
        let mut c = customer();
        let out = apply(&mut c, &inbound("help", "h1"), &Settings::default(), 1);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].template.as_str(), out[0].category, out[0].request_id.as_str()), (HELP_TEMPLATE, Category::Transactional, "sms-help/h1"));
        assert_eq!(sms(&c), ConsentStatus::Unknown);
    }

    #[test]
    fn rule_sms_double_opt_in_waits_for_yes() {
        let settings = Settings { sms_double_opt_in: true, ..Settings::default() };
        let mut c = customer();
        let identify = EventInput {
            message_id: "id-1".into(),
            event_type: "identify".into(),
            identities: vec![("phone".into(), "+14155550123".into())],
            traits: serde_json::json!({"consent": {"sms": "opted_in"}}).as_object().cloned().unwrap(),
            ..Default::default()
        }
        .validate()
        .unwrap();
        let out = apply(&mut c, &identify, &settings, 1);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].template, DOUBLE_OPT_IN_TEMPLATE);
        assert_eq!(sms(&c), ConsentStatus::Pending, "not opted in until the customer confirms");
        // Marketing SMS needs an explicit opt-in: pending is not one.
        assert!(apply(&mut c, &inbound("YES", "y1"), &settings, 2).is_empty());
        assert_eq!(sms(&c), ConsentStatus::OptedIn);
        let sources: Vec<&str> = c.consent.ledger.iter().map(|l| l.source.as_str()).collect();
        assert_eq!(sources, vec!["identify", "double opt-in", KEYWORD_SOURCE]);
    }

    #[test]
    fn rule_api_consent_changes_record_their_source_and_evidence() {
        let mut c = customer();
        let mut e = EventInput {
            message_id: "consent/r1".into(),
            event_type: "identify".into(),
            identities: vec![("phone".into(), "+14155550123".into())],
            traits: serde_json::json!({"consent": {"email": "opted_out"}}).as_object().cloned().unwrap(),
            ..Default::default()
        }
        .validate()
        .unwrap();
        e.context = serde_json::json!({"chorus": {"consent_source": "api", "evidence": "support ticket 42"}}).to_string();
        apply(&mut c, &e, &Settings::default(), 1);
        let l = c.consent.ledger.last().unwrap();
        assert_eq!((l.source.as_str(), l.evidence.as_str()), ("api", "support ticket 42 (consent/r1)"));
    }

    #[test]
    fn rule_a_reported_bounce_marks_the_address_and_a_complaint_is_a_hard_stop() {
        let mut c = customer();
        c.identities.push(Identity { kind: IdentityKind::Email, value: "ada@example.com".into() });
        let ev = |name: &str, id: &str| {
            let props = serde_json::json!({"email": "ada@example.com", "reason": "mailbox full"});
            EventInput {
                message_id: id.into(),
                name: name.into(),
                identities: vec![("email".into(), "ada@example.com".into())],
                properties: props.as_object().cloned().unwrap(),
                ..Default::default()
            }
            .validate()
            .unwrap()
        };
        apply(&mut c, &ev(BOUNCED_EVENT, "b1"), &Settings::default(), 1);
        assert_eq!(c.contact_status.get("ada@example.com").map(String::as_str), Some("bounced"));
        assert_eq!(crate::messaging::contact_point(&c, "email"), None);
        apply(&mut c, &ev(COMPLAINED_EVENT, "c1"), &Settings::default(), 2);
        assert_eq!(c.consent.channels["email"].status, ConsentStatus::OptedOut);
        assert_eq!(c.consent.ledger.last().unwrap().source, "email complaint");
    }

    #[test]
    fn rule_clients_cannot_claim_a_consent_source() {
        let err = EventInput {
            message_id: "m".into(),
            event_type: "identify".into(),
            identities: vec![("user_id".into(), "u".into())],
            context: serde_json::json!({"chorus": {"consent_source": "sms keyword"}}).as_object().cloned().unwrap(),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(err.field, "context.chorus");
    }
}
