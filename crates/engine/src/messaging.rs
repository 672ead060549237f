//! Send decisions (SPEC §4.3, §5.1 steps 2–3 and 6): consent per channel and topic with
//! transactional exemptions, the contact point, and a deterministic idempotency key.
//! The journey interpreter applies caps, quiet hours and priority on top of these checks
//! (see `guard`). API sends (`decide_send`) get the same SPEC §5.1 order: a marketing
//! send in the channel's quiet hours is deferred to their end (a durable timer re-runs
//! it then), one over a cap is skipped with the rule in the decision; transactional sends
//! keep their exemptions. Every send is recorded on the contact ledger.

use crate::{ConsentStatus, CustomerState, DecisionKind, EngineConfig};
use chorus_types::{Category, IdentityKind, Intent, SendRequest};
use serde::{Deserialize, Serialize};

/// What the core decided about one send.
#[derive(Clone, Debug, PartialEq)]
pub enum SendDecision {
    Send(Intent),
    /// `code` is a stable machine-readable reason for counters: `consent`, `topic`,
    /// `contact`, `merged`.
    Skip {
        reason: String,
        code: &'static str,
    },
    /// Not now: try again at `until_ms` (an API send in quiet hours).
    Defer {
        until_ms: i64,
        reason: String,
        code: &'static str,
    },
}

/// An intent handed to the outbox whose outcome is not known yet. Kept on the customer
/// so outcomes reach the journey step that sent it, and so an exit or an opt-out can
/// cancel what has not gone out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingIntent {
    pub key: String,
    pub channel: String,
    /// Empty for API sends.
    pub journey: String,
    pub version: u32,
    pub step: String,
    pub entry_key: String,
    pub at_ms: i64,
    /// The contact point it went to (marked when the provider says it is bad).
    pub to: String,
}

/// Most pending intents remembered per customer (the oldest are forgotten first; their
/// outcomes are still recorded, just not attributed to a step).
pub const PENDING_INTENTS_MAX: usize = 256;

pub fn track_pending(state: &mut CustomerState, p: PendingIntent) {
    state.pending_intents.push(p);
    if state.pending_intents.len() > PENDING_INTENTS_MAX {
        state.pending_intents.remove(0);
    }
}

/// The status a permanent delivery failure gives the contact point, if any:
/// `bounced`, `undeliverable` or `unregistered`.
pub fn contact_status_of_failure(detail: &str) -> Option<&'static str> {
    let d = detail.to_ascii_lowercase();
    if d.contains("unregistered") || d.contains("invalid token") {
        Some("unregistered")
    } else if d.contains("bounce") || d.contains("complaint") {
        Some("bounced")
    } else if d.contains("invalid_address") || d.contains("undeliverable") || d.contains("bad address") {
        Some("undeliverable")
    } else {
        None
    }
}

/// Mark a contact point bad (it is skipped from now on, with the reason in explain).
pub fn mark_contact(state: &mut CustomerState, to: &str, status: &str, detail: &str, now_ms: i64, cfg: &EngineConfig) {
    if to.is_empty() || state.contact_status.get(to).is_some_and(|s| s == status) {
        return;
    }
    state.contact_status.insert(to.to_string(), status.to_string());
    state.decide(cfg, now_ms, DecisionKind::DeliveryFailed, format!("contact point {status}"), format!("{to} will not be used again: {detail}"));
}

/// Forget a pending intent once its outcome is known; returns it.
pub fn settle(state: &mut CustomerState, key: &str) -> Option<PendingIntent> {
    let pos = state.pending_intents.iter().position(|p| p.key == key)?;
    Some(state.pending_intents.remove(pos))
}

/// The deterministic idempotency key of an API send: re-processing the same request
/// after a crash yields the same key, so a provider that honours keys sends once.
pub fn api_send_key(req: &SendRequest) -> String {
    format!("api/{}/{}", req.request_id, req.customer)
}

fn consent(state: &CustomerState, channel: &str) -> ConsentStatus {
    state.consent.channels.get(channel).map(|e| e.status).unwrap_or(ConsentStatus::Unknown)
}

/// The contact point for `channel`, if the customer has a valid one (SPEC §4.1: a
/// bounced, undeliverable or unregistered address is not used again).
pub fn contact_point(state: &CustomerState, channel: &str) -> Option<String> {
    let usable = |v: &str| !state.contact_status.contains_key(v);
    let identity = |kind: IdentityKind| state.identities.iter().rev().find(|i| i.kind == kind && usable(&i.value)).map(|i| i.value.clone());
    match channel {
        "email" => identity(IdentityKind::Email).or_else(|| state.attributes.get("email").and_then(|v| v.as_str()).filter(|v| usable(v)).map(str::to_string)),
        "sms" | "mms" => identity(IdentityKind::Phone),
        "push" => identity(IdentityKind::PushToken),
        _ => Some(String::new()),
    }
}

/// Decide one send (rendering it with its template when the catalog has one) and
/// record the decision on the customer. Returns the tracking record of a rendered send.
pub fn decide_send(
    state: &mut CustomerState,
    req: &SendRequest,
    now_ms: i64,
    cfg: &EngineConfig,
    catalog: &crate::journey::run::RunCatalog,
) -> (SendDecision, Option<crate::render::TrackRecord>) {
    let mut decision = evaluate(state, req, &catalog.settings);
    if matches!(decision, SendDecision::Send(_)) && req.category == Category::Marketing {
        if let Some(d) = marketing_guard(state, req, &catalog.settings, now_ms) {
            decision = d;
        }
    }
    let mut record = None;
    if let SendDecision::Send(intent) = &mut decision {
        intent.created_ms = now_ms;
        if let Some(t) = catalog.templates.get(&req.template) {
            match crate::render::render_intent(state, intent, t, None, "", &cfg.tracking, now_ms) {
                Ok(r) => record = Some(r),
                Err(e) => decision = SendDecision::Skip { reason: format!("template error: {e}"), code: "template" },
            }
        }
    }
    if let SendDecision::Send(intent) = &decision {
        crate::guard::record_contact(
            state,
            crate::guard::Contact { at_ms: now_ms, channel: intent.channel.clone(), category: intent.category, journey: String::new() },
        );
        let p = PendingIntent {
            key: intent.key.clone(),
            channel: intent.channel.clone(),
            journey: String::new(),
            version: 0,
            step: String::new(),
            entry_key: String::new(),
            at_ms: now_ms,
            to: intent.to.clone(),
        };
        track_pending(state, p);
        crate::inbox::store(state, intent, now_ms);
    }
    match &decision {
        SendDecision::Send(intent) => state.decide(
            cfg,
            now_ms,
            DecisionKind::Sent,
            "api send",
            format!("{} {} to {} (key {})", req.channel, req.template, if intent.to.is_empty() { "-" } else { &intent.to }, intent.key),
        ),
        SendDecision::Skip { reason, .. } => {
            state.decide(cfg, now_ms, DecisionKind::Skipped, reason.clone(), format!("{} {} (request {})", req.channel, req.template, req.request_id))
        }
        SendDecision::Defer { until_ms, reason, .. } => {
            let (tz, _) = crate::guard::customer_zone(state, &catalog.settings);
            let until = crate::guard::describe_local(*until_ms, &tz);
            state.decide(
                cfg,
                now_ms,
                DecisionKind::Deferred,
                reason.clone(),
                format!("api send: {} {} until {until} (request {})", req.channel, req.template, req.request_id),
            )
        }
    }
    (decision, record)
}

/// SPEC §5.1 steps 4–5 for a marketing API send: quiet hours in the customer's zone
/// (deferred to their end, unless that is beyond `defer_max`) and the cluster's caps
/// (skipped: the caller chose the moment, so it is not moved to when a slot frees).
fn marketing_guard(state: &CustomerState, req: &SendRequest, settings: &crate::guard::Settings, now_ms: i64) -> Option<SendDecision> {
    let (tz, tz_source) = crate::guard::customer_zone(state, settings);
    if let Some(quiet) = settings.quiet_hours.get(&req.channel) {
        if let Some(until) = crate::guard::quiet_until(now_ms, &tz, quiet) {
            let why = format!("{} quiet hours {} in {tz_source}", req.channel, quiet.describe());
            if until - now_ms > settings.defer_max_ms {
                return Some(SendDecision::Skip {
                    reason: format!(
                        "{why}: waiting until {} would exceed defer_max {}",
                        crate::guard::describe_local(until, &tz),
                        chorus_types::time::format_duration_ms(settings.defer_max_ms)
                    ),
                    code: "quiet_hours",
                });
            }
            return Some(SendDecision::Defer { until_ms: until, reason: why, code: "quiet_hours" });
        }
    }
    match crate::guard::check_caps(state, settings, &tz, &req.channel, req.category, None, now_ms) {
        crate::guard::CapCheck::Capped { rule, .. } => Some(SendDecision::Skip { reason: format!("capped by {rule}"), code: "capped" }),
        crate::guard::CapCheck::Open { .. } => None,
    }
}

/// The send checks without recording a decision (the journey interpreter records its own).
pub(crate) fn evaluate(state: &CustomerState, req: &SendRequest, settings: &crate::guard::Settings) -> SendDecision {
    if state.is_tombstone() {
        return SendDecision::Skip { reason: "customer merged away".into(), code: "merged" };
    }
    let marketing = req.category == Category::Marketing;
    // Channel consent: an opt-out is a hard stop for every category.
    let channel_consent = consent(state, &req.channel);
    if channel_consent == ConsentStatus::OptedOut {
        return SendDecision::Skip { reason: format!("{} opted out", req.channel), code: "consent" };
    }
    if marketing {
        if channel_consent != ConsentStatus::OptedIn && !settings.unknown_consent_allows_marketing(&req.channel) {
            return SendDecision::Skip { reason: format!("no {} consent (marketing needs an explicit opt-in)", req.channel), code: "consent" };
        }
        if !req.topic.is_empty() && state.consent.topics.get(&req.topic).is_some_and(|t| t.status == ConsentStatus::OptedOut) {
            return SendDecision::Skip { reason: format!("topic {} opted out", req.topic), code: "topic" };
        }
    }
    let Some(to) = contact_point(state, &req.channel) else {
        let what = match req.channel.as_str() {
            "email" => "no email address",
            "sms" | "mms" => "no phone number",
            "push" => "no valid push token",
            _ => "no contact point",
        };
        return SendDecision::Skip { reason: what.into(), code: "contact" };
    };
    let mut vars = state.attributes.clone();
    for (k, v) in req.vars.0.iter() {
        vars.0.insert(k.clone(), v.clone());
    }
    SendDecision::Send(Intent {
        key: api_send_key(req),
        customer: state.id,
        channel: req.channel.clone(),
        template: req.template.clone(),
        category: req.category,
        to,
        vars,
        journey: String::new(),
        created_ms: 0,
        content: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConsentEntry;
    use chorus_types::{CustomerId, Identity, JsonMap};

    fn customer() -> CustomerState {
        let mut c = CustomerState::new(CustomerId::new(0, 1), 0);
        c.identities.push(Identity { kind: IdentityKind::Email, value: "ada@example.com".into() });
        c
    }

    fn req(channel: &str, category: Category) -> SendRequest {
        SendRequest {
            request_id: "r1".into(),
            customer: CustomerId::new(0, 1),
            channel: channel.into(),
            template: "welcome".into(),
            category,
            vars: JsonMap::new(),
            send_at_ms: 0,
            topic: String::new(),
        }
    }

    fn set(c: &mut CustomerState, channel: &str, status: ConsentStatus) {
        c.consent.channels.insert(channel.into(), ConsentEntry { status, at_ms: 0, source: "api".into() });
    }

    #[test]
    fn rule_email_unknown_consent_may_send_marketing() {
        let mut c = customer();
        let d = decide_send(&mut c, &req("email", Category::Marketing), 5, &EngineConfig::default(), &crate::journey::run::RunCatalog::default()).0;
        let SendDecision::Send(i) = d else { panic!("{d:?}") };
        assert_eq!(i.to, "ada@example.com");
        assert_eq!(i.key, "api/r1/cu_0000000000000001");
        assert_eq!(i.created_ms, 5);
        assert_eq!(c.decisions.back().unwrap().kind, DecisionKind::Sent);
        // The send is on the contact ledger, so caps count it.
        assert_eq!(c.contacts.len(), 1);
        assert_eq!(c.contacts[0].channel, "email");
    }

    #[test]
    fn rule_channel_opt_out_is_a_hard_stop_even_for_transactional() {
        let mut c = customer();
        set(&mut c, "email", ConsentStatus::OptedOut);
        let d = decide_send(&mut c, &req("email", Category::Transactional), 0, &EngineConfig::default(), &crate::journey::run::RunCatalog::default()).0;
        assert_eq!(d, SendDecision::Skip { reason: "email opted out".into(), code: "consent" });
        assert_eq!(c.decisions.back().unwrap().kind, DecisionKind::Skipped);
    }

    #[test]
    fn rule_sms_marketing_needs_explicit_opt_in() {
        let mut c = customer();
        c.identities.push(Identity { kind: IdentityKind::Phone, value: "+14155550123".into() });
        let cfg = EngineConfig::default();
        assert!(matches!(
            decide_send(&mut c, &req("sms", Category::Marketing), 0, &cfg, &crate::journey::run::RunCatalog::default()).0,
            SendDecision::Skip { .. }
        ));
        assert!(matches!(
            decide_send(&mut c, &req("sms", Category::Transactional), 0, &cfg, &crate::journey::run::RunCatalog::default()).0,
            SendDecision::Send(_)
        ));
        set(&mut c, "sms", ConsentStatus::OptedIn);
        assert!(matches!(decide_send(&mut c, &req("sms", Category::Marketing), 0, &cfg, &crate::journey::run::RunCatalog::default()).0, SendDecision::Send(_)));
    }

    #[test]
    fn rule_topic_opt_out_blocks_marketing_but_not_transactional() {
        let mut c = customer();
        c.consent.topics.insert("promotions".into(), ConsentEntry { status: ConsentStatus::OptedOut, at_ms: 0, source: "api".into() });
        let mut r = req("email", Category::Marketing);
        r.topic = "promotions".into();
        let cfg = EngineConfig::default();
        assert!(matches!(decide_send(&mut c, &r, 0, &cfg, &crate::journey::run::RunCatalog::default()).0, SendDecision::Skip { .. }));
        r.category = Category::Transactional;
        assert!(matches!(decide_send(&mut c, &r, 0, &cfg, &crate::journey::run::RunCatalog::default()).0, SendDecision::Send(_)));
    }

    #[test]
    fn rule_unknown_consent_policies_are_configurable() {
        let mut c = customer();
        let mut catalog = crate::journey::run::RunCatalog::default();
        catalog.settings.unknown_consent.insert("email".into(), false);
        let (d, _) = decide_send(&mut c, &req("email", Category::Marketing), 0, &EngineConfig::default(), &catalog);
        assert_eq!(d, SendDecision::Skip { reason: "no email consent (marketing needs an explicit opt-in)".into(), code: "consent" });
        // Transactional messages do not need marketing consent.
        assert!(matches!(decide_send(&mut c, &req("email", Category::Transactional), 0, &EngineConfig::default(), &catalog).0, SendDecision::Send(_)));
    }

    #[test]
    fn rule_a_send_needs_a_contact_point() {
        let mut c = CustomerState::new(CustomerId::new(0, 2), 0);
        let d = decide_send(&mut c, &req("push", Category::Transactional), 0, &EngineConfig::default(), &crate::journey::run::RunCatalog::default()).0;
        assert_eq!(d, SendDecision::Skip { reason: "no valid push token".into(), code: "contact" });
    }
}
