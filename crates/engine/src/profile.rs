//! Customer state (SPEC §4.1) and the pure rules that change it on an event:
//! identities, attributes from traits, consent from the reserved `consent` trait,
//! bounded history, daily counters and the decision log.

use crate::EngineConfig;
use chorus_types::{CustomerId, Event, EventType, Identity, JsonMap};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};

pub const DAY_MS: i64 = 86_400_000;

/// Everything Chorus keeps about one customer. Stored per customer in the shard state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CustomerState {
    pub id: CustomerId,
    pub identities: Vec<Identity>,
    pub attributes: JsonMap,
    pub consent: Consent,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub event_count: u64,
    pub history: VecDeque<RecentEvent>,
    /// Per event name: (day number, count), oldest first, bounded by `counter_days_max`.
    pub counters: BTreeMap<String, VecDeque<(u32, u32)>>,
    pub decisions: VecDeque<Decision>,
    pub merged_from: Vec<CustomerId>,
    /// Set when this profile was merged away: it is a tombstone forwarding here.
    pub merged_into: Option<CustomerId>,
    /// Journeys the customer is in (SPEC §4.1 "active journey positions").
    pub journeys: Vec<crate::journey::run::Instance>,
    /// Journey id → when the customer last entered it (re-entry rules).
    pub journey_entries: BTreeMap<String, i64>,
    /// Source of timer sequence numbers: a timer whose seq is no longer the instance's
    /// is stale and does nothing when it fires.
    pub timer_seq: u64,
    /// Messages sent, for frequency caps (SPEC §4.1 "contact ledger", §5.2).
    pub contacts: VecDeque<crate::guard::Contact>,
    /// Opens per local hour of day (24 slots once the first open is seen), for `best_hour`.
    pub open_hours: Vec<u32>,
    /// Audiences the customer belongs to, sorted (SPEC §4.1 "segment memberships").
    pub segments: Vec<String>,
    /// Intents in the outbox whose outcome is not known yet.
    pub pending_intents: Vec<crate::messaging::PendingIntent>,
    /// In-app messages waiting to be shown.
    pub inbox: Vec<crate::inbox::InAppMessage>,
    /// Contact points that must not be used: address → bounced / undeliverable /
    /// unregistered (SPEC §4.1).
    pub contact_status: BTreeMap<String, String>,
    /// Sequence number of the next history entry: the entries in `history` are numbered
    /// `history_seq - history.len() ..` (the store keeps one record per entry under this
    /// number, so a round appends instead of rewriting the whole history).
    pub history_seq: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecentEvent {
    pub message_id: String,
    pub event_type: EventType,
    pub name: String,
    pub timestamp_ms: i64,
    pub received_ms: i64,
    /// The event's properties as JSON text: stored and copied as text (cheap to
    /// encode on every state write), parsed only when read.
    pub properties: String,
}

/// A decision with a machine-readable kind and reason (SPEC §2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub at_ms: i64,
    pub kind: DecisionKind,
    pub reason: String,
    pub detail: String,
}

impl Decision {
    /// Whether this decision is about journey `id`: a journey's decisions name it in the
    /// reason (`journey J` on sends) or as a word of the detail (`J v2`, `J step: …`,
    /// `email J step (key …)`). Words are compared whole, so `welcome` does not match
    /// `welcome-2`.
    pub fn concerns_journey(&self, id: &str) -> bool {
        if id.is_empty() {
            return false;
        }
        let word = |w: &str| w.trim_matches(|c: char| matches!(c, ':' | ',' | '(' | ')' | ';')) == id;
        self.reason.strip_prefix("journey ").is_some_and(|j| j.split_whitespace().next() == Some(id)) || self.detail.split_whitespace().any(word)
    }
}

/// Append-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DecisionKind {
    Created,
    IdentityLinked,
    IdentityConflict,
    Merged,
    MergedInto,
    ConsentChanged,
    AttributeRejected,
    IdentityLimit,
    Quarantined,
    /// An intent to send was recorded in the outbox.
    Sent,
    Skipped,
    /// A durable timer will act later.
    Scheduled,
    Delivered,
    DeliveryFailed,
    Entered,
    Advanced,
    Exited,
    Converted,
    Fallback,
    /// A send waits: quiet hours, a cap, or priority arbitration.
    Deferred,
    AudienceEntered,
    AudienceExited,
}

impl DecisionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionKind::Created => "created",
            DecisionKind::IdentityLinked => "identity.linked",
            DecisionKind::IdentityConflict => "identity.conflict",
            DecisionKind::Merged => "merged",
            DecisionKind::MergedInto => "merged_into",
            DecisionKind::ConsentChanged => "consent.changed",
            DecisionKind::AttributeRejected => "attribute.rejected",
            DecisionKind::IdentityLimit => "identity.limit",
            DecisionKind::Quarantined => "quarantined",
            DecisionKind::Sent => "sent",
            DecisionKind::Skipped => "skipped",
            DecisionKind::Scheduled => "scheduled",
            DecisionKind::Delivered => "delivered",
            DecisionKind::DeliveryFailed => "failed",
            DecisionKind::Entered => "entered",
            DecisionKind::Advanced => "advanced",
            DecisionKind::Exited => "exited",
            DecisionKind::Converted => "converted",
            DecisionKind::Fallback => "fallback",
            DecisionKind::Deferred => "deferred",
            DecisionKind::AudienceEntered => "audience.entered",
            DecisionKind::AudienceExited => "audience.exited",
        }
    }
}

/// Consent per channel and topic (SPEC §4.3) plus the ledger of every change.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Consent {
    pub channels: BTreeMap<String, ConsentEntry>,
    pub topics: BTreeMap<String, ConsentEntry>,
    pub ledger: Vec<ConsentChange>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsentStatus {
    OptedIn,
    OptedOut,
    Unknown,
    /// Double opt-in requested, waiting for confirmation.
    Pending,
}

impl ConsentStatus {
    pub fn parse(s: &str) -> Option<ConsentStatus> {
        Some(match s {
            "opted_in" | "in" | "subscribed" | "true" => ConsentStatus::OptedIn,
            "opted_out" | "out" | "unsubscribed" | "false" => ConsentStatus::OptedOut,
            "unknown" => ConsentStatus::Unknown,
            "pending" => ConsentStatus::Pending,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentStatus::OptedIn => "opted_in",
            ConsentStatus::OptedOut => "opted_out",
            ConsentStatus::Unknown => "unknown",
            ConsentStatus::Pending => "pending",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsentEntry {
    pub status: ConsentStatus,
    pub at_ms: i64,
    pub source: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsentChange {
    pub at_ms: i64,
    /// `channel:email` or `topic:promotions`.
    pub scope: String,
    pub status: ConsentStatus,
    pub source: String,
    /// Evidence: the message id that carried the change.
    pub evidence: String,
}

/// Bound on the consent ledger kept inline; older changes are summarized by the
/// current entries (the full export is a later addition).
pub const CONSENT_LEDGER_MAX: usize = 1000;

/// Reserved trait that sets consent (SPEC §4.3).
pub const CONSENT_TRAIT: &str = "consent";

impl CustomerState {
    pub fn new(id: CustomerId, now_ms: i64) -> Self {
        CustomerState {
            id,
            identities: Vec::new(),
            attributes: JsonMap::new(),
            consent: Consent::default(),
            created_ms: now_ms,
            updated_ms: now_ms,
            event_count: 0,
            history: VecDeque::new(),
            counters: BTreeMap::new(),
            decisions: VecDeque::new(),
            merged_from: Vec::new(),
            merged_into: None,
            journeys: Vec::new(),
            journey_entries: BTreeMap::new(),
            timer_seq: 0,
            contacts: VecDeque::new(),
            open_hours: Vec::new(),
            segments: Vec::new(),
            pending_intents: Vec::new(),
            inbox: Vec::new(),
            contact_status: BTreeMap::new(),
            history_seq: 0,
        }
    }

    pub fn is_tombstone(&self) -> bool {
        self.merged_into.is_some()
    }

    pub fn has_identity(&self, id: &Identity) -> bool {
        self.identities.contains(id)
    }

    pub fn count_of_kind(&self, kind: &chorus_types::IdentityKind) -> usize {
        self.identities.iter().filter(|i| &i.kind == kind).count()
    }

    /// Record a decision, keeping the log bounded.
    pub fn decide(&mut self, cfg: &EngineConfig, at_ms: i64, kind: DecisionKind, reason: impl Into<String>, detail: impl Into<String>) {
        self.decisions.push_back(Decision { at_ms, kind, reason: reason.into(), detail: detail.into() });
        while self.decisions.len() > cfg.decisions_max {
            self.decisions.pop_front();
        }
    }

    /// Add an identity if the kind's limit allows. For limit-1 kinds a different value is
    /// never added (the caller applies the conflict rule first). Returns whether it was added.
    pub fn link_identity(&mut self, cfg: &EngineConfig, now_ms: i64, id: &Identity) -> bool {
        if self.has_identity(id) {
            return false;
        }
        let limit = cfg.identity_limits.limit(&id.kind) as usize;
        if self.count_of_kind(&id.kind) >= limit {
            if limit > 1 {
                // Keep the newest: drop the oldest of that kind.
                if let Some(pos) = self.identities.iter().position(|i| i.kind == id.kind) {
                    let dropped = self.identities.remove(pos);
                    self.decide(cfg, now_ms, DecisionKind::IdentityLimit, "identity limit reached", format!("{dropped} replaced by {id}"));
                }
            } else {
                self.decide(cfg, now_ms, DecisionKind::IdentityConflict, "identity limit of 1", format!("{id} not linked"));
                return false;
            }
        }
        self.identities.push(id.clone());
        true
    }

    pub fn unlink_identity(&mut self, id: &Identity) -> bool {
        let before = self.identities.len();
        self.identities.retain(|i| i != id);
        before != self.identities.len()
    }
}

/// Apply one event that has been resolved to this customer. Returns true if consent changed.
pub fn apply_event(state: &mut CustomerState, event: &Event, now_ms: i64, cfg: &EngineConfig) -> bool {
    state.updated_ms = now_ms;
    state.event_count += 1;
    // Attributes: identify/group traits are merged into the profile.
    let mut consent_changed = false;
    // Group traits describe the group, not the person: only their consent applies.
    let traits_are_the_customers = event.event_type != EventType::Group;
    if !event.traits.is_empty() {
        for (k, v) in event.traits.0.iter() {
            if k == CONSENT_TRAIT {
                let (source, evidence) = consent_origin(event);
                consent_changed |= apply_consent_trait(state, v, now_ms, &evidence, &source, cfg);
                continue;
            }
            if !traits_are_the_customers {
                continue;
            }
            if !state.attributes.0.contains_key(k) && state.attributes.0.len() >= cfg.attributes_max {
                state.decide(cfg, now_ms, DecisionKind::AttributeRejected, "attribute limit reached", k.clone());
                continue;
            }
            if v.is_null() {
                state.attributes.0.remove(k);
            } else {
                state.attributes.0.insert(k.clone(), v.clone());
            }
        }
    }
    // History, bounded.
    state.history.push_back(RecentEvent {
        message_id: event.message_id.clone(),
        event_type: event.event_type,
        name: event.name.clone(),
        timestamp_ms: if event.timestamp_ms != 0 { event.timestamp_ms } else { now_ms },
        received_ms: now_ms,
        properties: event.properties.clone(),
    });
    state.history_seq += 1;
    while state.history.len() > cfg.history_max {
        state.history.pop_front();
    }
    // Daily counters per event name (by the leader's clock, so replays agree).
    if !event.name.is_empty() {
        let day = (now_ms.div_euclid(DAY_MS)) as u32;
        let known = state.counters.contains_key(&event.name);
        if known || state.counters.len() < cfg.counter_names_max {
            let days = state.counters.entry(event.name.clone()).or_default();
            match days.back_mut() {
                Some((d, c)) if *d == day => *c = c.saturating_add(1),
                _ => days.push_back((day, 1)),
            }
            let oldest_kept = day.saturating_sub(cfg.counter_days_max.saturating_sub(1));
            while days.front().is_some_and(|(d, _)| *d < oldest_kept) {
                days.pop_front();
            }
        }
    }
    crate::inbox::on_event(state, event);
    consent_changed
}

/// Count events named `name` in the last `window_ms` (day granularity).
pub fn count_events(state: &CustomerState, name: &str, window_ms: i64, now_ms: i64) -> u64 {
    let Some(days) = state.counters.get(name) else {
        return 0;
    };
    let first_day = (now_ms - window_ms).div_euclid(DAY_MS).max(0) as u32;
    days.iter().filter(|(d, _)| *d >= first_day).map(|(_, c)| *c as u64).sum()
}

/// Where a consent change in `event` comes from: Chorus's own API marks its events in
/// `context.chorus` (clients cannot set it); anything else is an identify call.
fn consent_origin(event: &Event) -> (String, String) {
    if event.context.contains("\"chorus\"") {
        if let Ok(Value::Object(ctx)) = serde_json::from_str::<Value>(&event.context) {
            if let Some(c) = ctx.get(chorus_types::event::CHORUS_CONTEXT_KEY) {
                let source = c.get("consent_source").and_then(Value::as_str).unwrap_or("api").to_string();
                let evidence = c
                    .get("evidence")
                    .and_then(Value::as_str)
                    .filter(|e| !e.is_empty())
                    .map(|e| format!("{e} ({})", event.message_id))
                    .unwrap_or_else(|| event.message_id.clone());
                return (source, evidence);
            }
        }
    }
    ("identify".to_string(), event.message_id.clone())
}

/// Apply `{"email": "opted_in", "topics": {"promotions": "opted_out"}}`.
fn apply_consent_trait(state: &mut CustomerState, v: &Value, now_ms: i64, evidence: &str, source: &str, cfg: &EngineConfig) -> bool {
    let Value::Object(map) = v else {
        state.decide(cfg, now_ms, DecisionKind::AttributeRejected, "consent trait must be an object", v.to_string());
        return false;
    };
    let mut changed = false;
    for (k, val) in map {
        if k == "topics" {
            if let Value::Object(topics) = val {
                for (topic, tv) in topics {
                    changed |= set_consent(state, cfg, now_ms, false, topic, tv, source, evidence);
                }
            }
        } else {
            changed |= set_consent(state, cfg, now_ms, true, k, val, source, evidence);
        }
    }
    changed
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn set_consent(
    state: &mut CustomerState,
    cfg: &EngineConfig,
    now_ms: i64,
    channel: bool,
    name: &str,
    val: &Value,
    source: &str,
    evidence: &str,
) -> bool {
    let status = match val {
        Value::String(s) => ConsentStatus::parse(&s.to_ascii_lowercase()),
        Value::Bool(true) => Some(ConsentStatus::OptedIn),
        Value::Bool(false) => Some(ConsentStatus::OptedOut),
        _ => None,
    };
    let scope = if channel { format!("channel:{name}") } else { format!("topic:{name}") };
    let Some(status) = status else {
        state.decide(cfg, now_ms, DecisionKind::AttributeRejected, "unknown consent value", format!("{scope} = {val}"));
        return false;
    };
    let map = if channel { &mut state.consent.channels } else { &mut state.consent.topics };
    if map.get(name).is_some_and(|e| e.status == status) {
        return false;
    }
    map.insert(name.to_string(), ConsentEntry { status, at_ms: now_ms, source: source.to_string() });
    state.consent.ledger.push(ConsentChange { at_ms: now_ms, scope: scope.clone(), status, source: source.to_string(), evidence: evidence.to_string() });
    if state.consent.ledger.len() > CONSENT_LEDGER_MAX {
        state.consent.ledger.remove(0);
    }
    state.decide(cfg, now_ms, DecisionKind::ConsentChanged, status.as_str(), format!("{scope} via {source}"));
    true
}

/// Merge `other` into `survivor` (SPEC §4.2 state-merge rules). `other` becomes a tombstone.
pub fn merge_into(survivor: &mut CustomerState, other: &mut CustomerState, now_ms: i64, cfg: &EngineConfig) {
    // Identities: union (limits: keep the survivor's, then fill).
    for id in std::mem::take(&mut other.identities) {
        survivor.link_identity(cfg, now_ms, &id);
    }
    // Attributes: survivor wins, missing ones filled.
    for (k, v) in std::mem::take(&mut other.attributes.0) {
        survivor.attributes.0.entry(k).or_insert(v);
    }
    // Consent: per scope the most recent decision wins; ties: opt-out wins.
    merge_consent_maps(&mut survivor.consent.channels, &other.consent.channels);
    merge_consent_maps(&mut survivor.consent.topics, &other.consent.topics);
    survivor.consent.ledger.extend(other.consent.ledger.drain(..));
    survivor.consent.ledger.sort_by_key(|c| c.at_ms);
    while survivor.consent.ledger.len() > CONSENT_LEDGER_MAX {
        survivor.consent.ledger.remove(0);
    }
    // History and counters: union.
    let mut history: Vec<RecentEvent> = survivor.history.drain(..).chain(other.history.drain(..)).collect();
    history.sort_by_key(|e| (e.received_ms, e.timestamp_ms));
    let skip = history.len().saturating_sub(cfg.history_max);
    survivor.history = history.into_iter().skip(skip).collect();
    for (name, days) in std::mem::take(&mut other.counters) {
        let mine = survivor.counters.entry(name).or_default();
        let mut all: BTreeMap<u32, u32> = mine.drain(..).collect();
        for (d, c) in days {
            *all.entry(d).or_default() += c;
        }
        *mine = all.into_iter().collect();
    }
    // Journeys: union; where both are in the same journey the survivor's position stays
    // and the other's exits with reason `merged` (no duplicate messages). Moved
    // instances keep their timer numbers; the counter stays above all of them.
    for inst in std::mem::take(&mut other.journeys) {
        if survivor.journeys.iter().any(|s| s.journey == inst.journey && s.entry_key == inst.entry_key && !s.done) {
            survivor.decide(cfg, now_ms, DecisionKind::Exited, "merged", format!("{} of {} (this profile is already in it)", inst.journey, other.id));
        } else {
            survivor.journeys.retain(|s| !(s.journey == inst.journey && s.entry_key == inst.entry_key));
            survivor.journeys.push(inst);
        }
    }
    for (j, at) in std::mem::take(&mut other.journey_entries) {
        let e = survivor.journey_entries.entry(j).or_insert(at);
        *e = (*e).max(at);
    }
    survivor.timer_seq = survivor.timer_seq.max(other.timer_seq);
    // Contact ledger: union, so caps keep counting across both profiles.
    let mut contacts: Vec<_> = survivor.contacts.drain(..).chain(other.contacts.drain(..)).collect();
    contacts.sort_by_key(|c| c.at_ms);
    let skip = contacts.len().saturating_sub(crate::guard::CONTACTS_MAX);
    survivor.contacts = contacts.into_iter().skip(skip).collect();
    if !other.open_hours.is_empty() {
        survivor.open_hours.resize(24, 0);
        for (mine, theirs) in survivor.open_hours.iter_mut().zip(std::mem::take(&mut other.open_hours)) {
            *mine = mine.saturating_add(theirs);
        }
    }
    survivor.event_count += other.event_count;
    // Stays at or above the merged history's length (the history is rewritten whole).
    survivor.history_seq = (survivor.history_seq + other.history_seq).max(survivor.history.len() as u64);
    survivor.created_ms = survivor.created_ms.min(other.created_ms);
    survivor.updated_ms = now_ms;
    survivor.merged_from.push(other.id);
    survivor.merged_from.extend(other.merged_from.iter().copied());
    survivor.decide(cfg, now_ms, DecisionKind::Merged, "identity link", format!("{} merged into this profile", other.id));
    survivor.pending_intents.append(&mut other.pending_intents);
    survivor.inbox.append(&mut other.inbox);
    survivor.contact_status.append(&mut other.contact_status);
    // Memberships are re-evaluated for the survivor at its next change; the tombstone
    // belongs to none.
    other.segments.clear();
    other.merged_into = Some(survivor.id);
    other.updated_ms = now_ms;
    other.history.clear();
    other.decide(cfg, now_ms, DecisionKind::MergedInto, "identity link", format!("merged into {}", survivor.id));
}

fn merge_consent_maps(into: &mut BTreeMap<String, ConsentEntry>, from: &BTreeMap<String, ConsentEntry>) {
    for (k, theirs) in from {
        match into.get(k) {
            None => {
                into.insert(k.clone(), theirs.clone());
            }
            Some(mine) => {
                let take = theirs.at_ms > mine.at_ms || (theirs.at_ms == mine.at_ms && theirs.status == ConsentStatus::OptedOut);
                if take {
                    into.insert(k.clone(), theirs.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(kind: DecisionKind, reason: &str, detail: &str) -> Decision {
        Decision { at_ms: 0, kind, reason: reason.into(), detail: detail.into() }
    }

    #[test]
    fn decisions_concern_the_journey_they_name_whole() {
        // The shapes the interpreter and the send path write.
        assert!(d(DecisionKind::Sent, "journey welcome", "hello: email hi to a@example.com").concerns_journey("welcome"));
        assert!(d(DecisionKind::Entered, "event Signed Up", "welcome v2 (holdout: never messaged)").concerns_journey("welcome"));
        assert!(d(DecisionKind::Skipped, "holdout", "welcome hello: control group, not messaged").concerns_journey("welcome"));
        assert!(d(DecisionKind::Skipped, "cancelled: exit", "email welcome hello (key k) if not delivered yet").concerns_journey("welcome"));
        // Another journey whose id merely contains it, an API send, an empty filter.
        assert!(!d(DecisionKind::Sent, "journey welcome-2", "hello: email hi to -").concerns_journey("welcome"));
        assert!(!d(DecisionKind::Entered, "event X", "welcome-2 v1").concerns_journey("welcome"));
        assert!(!d(DecisionKind::Sent, "api send", "email welcome-note to a@example.com (key k)").concerns_journey("welcome"));
        assert!(!d(DecisionKind::Sent, "journey welcome", "x").concerns_journey(""));
    }
}
