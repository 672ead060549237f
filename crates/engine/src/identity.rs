//! Identity resolution rules (SPEC §3.1, §4.2) as pure functions: which customer an
//! event belongs to, which keys to link, claim or contest, and whether two profiles
//! merge (and who survives) or conflict ("last login wins").

use crate::{CustomerState, EngineConfig};
use chorus_types::routing::shard_of;
use chorus_types::{CustomerId, Event, Identity, IdentityKind, ShardId};

/// How an event's identities relate to this shard's identity index.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ResolvePlan {
    /// The existing customer the event applies to; `None` creates a new customer here.
    pub owner: Option<CustomerId>,
    /// Keys indexed in this shard that are free: link them to the owner.
    pub link_local: Vec<Identity>,
    /// Keys indexed in this shard that belong to another customer: merge or conflict.
    pub contested_local: Vec<(Identity, CustomerId)>,
    /// Keys indexed in other shards: claim them by a cross-shard message.
    pub claim_remote: Vec<(Identity, ShardId)>,
}

/// Plan the resolution of `event` routed to `shard`. `lookup` reads this shard's index.
/// Identities are considered in priority order; the first one already indexed names
/// the owner (so an anonymous browser who logs in keeps their history).
pub fn plan_resolution(event: &Event, shard: ShardId, shard_count: u32, mut lookup: impl FnMut(&Identity) -> Option<CustomerId>) -> ResolvePlan {
    let mut ids: Vec<&Identity> = event.identities.iter().collect();
    ids.sort_by_key(|i| i.kind.priority());
    let mut plan = ResolvePlan::default();
    let mut local: Vec<(&Identity, Option<CustomerId>)> = Vec::with_capacity(ids.len());
    for id in ids {
        let home = shard_of(id, shard_count);
        if home == shard {
            local.push((id, lookup(id)));
        } else {
            plan.claim_remote.push((id.clone(), home));
        }
    }
    plan.owner = local.iter().find_map(|(_, c)| *c);
    for (id, owner) in local {
        match (owner, plan.owner) {
            (None, _) => plan.link_local.push(id.clone()),
            (Some(c), Some(o)) if c == o => {}
            (Some(c), _) => plan.contested_local.push((id.clone(), c)),
        }
    }
    plan
}

/// What to do when an event links `key` to `event_owner` but `key` belongs to `other`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkDecision {
    /// Merge `merged` into `survivor`; `merged` becomes a tombstone.
    Merge { survivor: CustomerId, merged: CustomerId },
    /// The merge would exceed a limit of 1 (e.g. two user ids): no merge. `key` moves
    /// from `from` to `to` ("last login wins") and both get an `identity.conflict`.
    Relink { key: Identity, from: CustomerId, to: CustomerId, kind: IdentityKind },
}

/// Apply SPEC §4.2 to two distinct, live profiles.
pub fn decide_link(event_owner: &CustomerState, other: &CustomerState, key: &Identity, cfg: &EngineConfig) -> LinkDecision {
    if let Some(kind) = limit_one_conflict(event_owner, other, cfg) {
        return LinkDecision::Relink { key: key.clone(), from: other.id, to: event_owner.id, kind };
    }
    let (survivor, merged) = choose_survivor(event_owner, other);
    LinkDecision::Merge { survivor, merged }
}

/// The first limit-1 kind both profiles hold with different values, if any.
pub fn limit_one_conflict(a: &CustomerState, b: &CustomerState, cfg: &EngineConfig) -> Option<IdentityKind> {
    for ia in &a.identities {
        if cfg.identity_limits.limit(&ia.kind) != 1 {
            continue;
        }
        if b.identities.iter().any(|ib| ib.kind == ia.kind && ib.value != ia.value) {
            return Some(ia.kind.clone());
        }
    }
    None
}

/// Survivor: the profile holding a `user_id`; otherwise the older profile (ties: the
/// smaller id, so every replica agrees).
pub fn choose_survivor(a: &CustomerState, b: &CustomerState) -> (CustomerId, CustomerId) {
    let has_uid = |s: &CustomerState| s.identities.iter().any(|i| i.kind == IdentityKind::UserId);
    let a_first = match (has_uid(a), has_uid(b)) {
        (true, false) => true,
        (false, true) => false,
        _ => (a.created_ms, a.id) <= (b.created_ms, b.id),
    };
    if a_first { (a.id, b.id) } else { (b.id, a.id) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DecisionKind, merge_into};
    use chorus_types::{EventInput, IdentityKind};

    fn ev(ids: &[(&str, &str)]) -> Event {
        EventInput {
            message_id: "m".into(),
            event_type: "track".into(),
            name: "Product Viewed".into(),
            identities: ids.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        }
        .validate()
        .unwrap()
    }

    fn customer(seq: u64, created: i64, ids: &[(IdentityKind, &str)]) -> CustomerState {
        let mut c = CustomerState::new(CustomerId::new(0, seq), created);
        c.identities = ids.iter().map(|(k, v)| Identity { kind: k.clone(), value: v.to_string() }).collect();
        c
    }

    #[test]
    fn rule_strongest_indexed_key_names_the_owner() {
        // Single shard: every key is local.
        let e = ev(&[("anonymous_id", "anon-1"), ("email", "ada@example.com")]);
        let owner = CustomerId::new(0, 1);
        let plan = plan_resolution(&e, 0, 1, |id| (id.kind == IdentityKind::AnonymousId).then_some(owner));
        assert_eq!(plan.owner, Some(owner));
        assert_eq!(plan.link_local, vec![Identity { kind: IdentityKind::Email, value: "ada@example.com".into() }]);
        assert!(plan.contested_local.is_empty() && plan.claim_remote.is_empty());
    }

    #[test]
    fn rule_unknown_keys_create_a_new_customer() {
        let e = ev(&[("anonymous_id", "anon-1")]);
        let plan = plan_resolution(&e, 0, 1, |_| None);
        assert_eq!(plan.owner, None);
        assert_eq!(plan.link_local.len(), 1);
    }

    #[test]
    fn rule_keys_of_other_shards_are_claimed() {
        let e = ev(&[("user_id", "u-1"), ("anonymous_id", "anon-1"), ("email", "x@example.com")]);
        let shard = shard_of(e.strongest_identity(), 64);
        let plan = plan_resolution(&e, shard, 64, |_| None);
        for (id, home) in &plan.claim_remote {
            assert_eq!(*home, shard_of(id, 64));
            assert_ne!(*home, shard);
        }
        assert_eq!(plan.claim_remote.len() + plan.link_local.len(), 3);
    }

    #[test]
    fn rule_keys_owned_by_another_customer_are_contested() {
        let e = ev(&[("email", "ada@example.com"), ("anonymous_id", "anon-2")]);
        let a = CustomerId::new(0, 1);
        let b = CustomerId::new(0, 2);
        let plan = plan_resolution(&e, 0, 1, |id| Some(if id.kind == IdentityKind::Email { a } else { b }));
        assert_eq!(plan.owner, Some(a));
        assert_eq!(plan.contested_local, vec![(Identity { kind: IdentityKind::AnonymousId, value: "anon-2".into() }, b)]);
    }

    #[test]
    fn rule_survivor_is_the_profile_with_a_user_id() {
        let old_anon = customer(1, 100, &[(IdentityKind::AnonymousId, "a")]);
        let new_user = customer(2, 200, &[(IdentityKind::UserId, "u")]);
        assert_eq!(choose_survivor(&old_anon, &new_user), (new_user.id, old_anon.id));
    }

    #[test]
    fn rule_survivor_otherwise_is_the_older_profile() {
        let older = customer(5, 100, &[(IdentityKind::AnonymousId, "a")]);
        let newer = customer(2, 200, &[(IdentityKind::Email, "e@x.io")]);
        assert_eq!(choose_survivor(&newer, &older), (older.id, newer.id));
    }

    #[test]
    fn rule_limit_one_conflict_relinks_instead_of_merging() {
        // Shared device: anon-1 was used by user u-1; now u-2 logs in on it.
        let cfg = EngineConfig::default();
        let u1 = customer(1, 100, &[(IdentityKind::UserId, "u-1"), (IdentityKind::AnonymousId, "anon-1")]);
        let u2 = customer(2, 200, &[(IdentityKind::UserId, "u-2")]);
        let key = Identity { kind: IdentityKind::AnonymousId, value: "anon-1".into() };
        assert_eq!(decide_link(&u2, &u1, &key, &cfg), LinkDecision::Relink { key, from: u1.id, to: u2.id, kind: IdentityKind::UserId });
    }

    #[test]
    fn rule_profiles_without_conflict_merge() {
        let cfg = EngineConfig::default();
        let anon = customer(1, 100, &[(IdentityKind::AnonymousId, "anon-1")]);
        let user = customer(2, 200, &[(IdentityKind::UserId, "u-1")]);
        let key = Identity { kind: IdentityKind::AnonymousId, value: "anon-1".into() };
        assert_eq!(decide_link(&user, &anon, &key, &cfg), LinkDecision::Merge { survivor: user.id, merged: anon.id });
    }

    #[test]
    fn rule_state_merge_unions_history_and_keeps_survivor_attributes() {
        let cfg = EngineConfig::default();
        let mut s = customer(1, 100, &[(IdentityKind::UserId, "u-1")]);
        let mut o = customer(2, 50, &[(IdentityKind::AnonymousId, "anon-1")]);
        s.attributes.0.insert("first_name".into(), "Ada".into());
        o.attributes.0.insert("first_name".into(), "Anon".into());
        o.attributes.0.insert("plan".into(), "pro".into());
        crate::apply_event(&mut o, &ev(&[("anonymous_id", "anon-1")]), 1_000, &cfg);
        crate::apply_event(&mut s, &ev(&[("user_id", "u-1")]), 2_000, &cfg);
        merge_into(&mut s, &mut o, 3_000, &cfg);
        assert_eq!(s.attributes.0["first_name"], "Ada");
        assert_eq!(s.attributes.0["plan"], "pro");
        assert_eq!(s.history.len(), 2);
        assert_eq!(s.history[0].received_ms, 1_000, "history is ordered by time");
        assert_eq!(s.event_count, 2);
        assert_eq!(s.created_ms, 50);
        assert_eq!(s.identities.len(), 2);
        assert_eq!(s.merged_from, vec![o.id]);
        assert_eq!(o.merged_into, Some(s.id));
        assert_eq!(s.decisions.back().unwrap().kind, DecisionKind::Merged);
        assert_eq!(crate::count_events(&s, "Product Viewed", 7 * crate::DAY_MS, 3_000), 2);
    }

    #[test]
    fn rule_consent_merge_most_recent_wins_and_ties_opt_out() {
        let cfg = EngineConfig::default();
        let mut s = customer(1, 100, &[(IdentityKind::UserId, "u-1")]);
        let mut o = customer(2, 50, &[(IdentityKind::AnonymousId, "a")]);
        let identify = |c: &mut CustomerState, consent: serde_json::Value, at| {
            let mut e = ev(&[("user_id", "u-1")]);
            e.event_type = chorus_types::EventType::Identify;
            e.traits.0.insert("consent".into(), consent);
            crate::apply_event(c, &e, at, &cfg);
        };
        identify(&mut s, serde_json::json!({"email": "opted_in", "sms": "opted_in"}), 10);
        identify(&mut o, serde_json::json!({"email": "opted_out", "sms": "opted_out"}), 20);
        identify(&mut s, serde_json::json!({"sms": "opted_in", "topics": {"promotions": "opted_in"}}), 20);
        // sms tie at t=20: s re-set sms? unchanged value means no new entry, so s.sms is at 10.
        merge_into(&mut s, &mut o, 30, &cfg);
        assert_eq!(s.consent.channels["email"].status, crate::ConsentStatus::OptedOut, "more recent wins");
        assert_eq!(s.consent.channels["sms"].status, crate::ConsentStatus::OptedOut);
        assert_eq!(s.consent.topics["promotions"].status, crate::ConsentStatus::OptedIn);
        assert_eq!(s.consent.ledger.len(), 5);
    }

    #[test]
    fn rule_consent_tie_goes_to_opt_out() {
        let cfg = EngineConfig::default();
        let mut s = customer(1, 100, &[(IdentityKind::UserId, "u-1")]);
        let mut o = customer(2, 50, &[]);
        s.consent.channels.insert("email".into(), crate::ConsentEntry { status: crate::ConsentStatus::OptedIn, at_ms: 7, source: "api".into() });
        o.consent.channels.insert("email".into(), crate::ConsentEntry { status: crate::ConsentStatus::OptedOut, at_ms: 7, source: "api".into() });
        merge_into(&mut s, &mut o, 30, &cfg);
        assert_eq!(s.consent.channels["email"].status, crate::ConsentStatus::OptedOut);
    }

    #[test]
    fn rule_history_is_bounded() {
        let cfg = EngineConfig { history_max: 3, ..EngineConfig::default() };
        let mut c = customer(1, 0, &[]);
        for i in 0..10 {
            crate::apply_event(&mut c, &ev(&[("user_id", "u")]), i, &cfg);
        }
        assert_eq!(c.history.len(), 3);
        assert_eq!(c.event_count, 10);
    }
}
