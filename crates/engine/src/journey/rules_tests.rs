//! Guardrails (SPEC §5) and versions/lifecycle (SPEC §6) as the interpreter applies
//! them, one test per rule, each driving a customer through real journey files.

use super::run::{Compiled, Effect, Input, Lifecycle, RunCatalog, on_input};
use super::{Catalog, load_journey};
use crate::guard::{CapRule, Contact, Settings, record_contact};
use crate::{ConsentEntry, ConsentStatus, CustomerState, DecisionKind, EngineConfig, apply_event};
use chorus_types::{Category, CustomerId, Event, EventInput, Identity, IdentityKind};
use serde_json::json;
use std::sync::Arc;

const H: i64 = 3_600_000;

fn ms(t: &str) -> i64 {
    chorus_types::time::parse_rfc3339_ms(t).unwrap()
}

fn compile(text: &str, version: u32) -> Arc<Compiled> {
    Arc::new(Compiled::new(load_journey(text, &Catalog::default()).unwrap_or_else(|e| panic!("{e:#?}")), version).unwrap())
}

/// A one-step journey: `event` enters, then one send.
fn sms_journey(id: &str, priority: u8, event: &str, send_extra: &str) -> String {
    format!(
        "id: {id}\ncategory: marketing\npriority: {priority}\nentry:\n  event: {event}\n  reentry: always\nsteps:\n  - id: text\n    send: {{ channel: sms, template: t-{id}{send_extra} }}\n"
    )
}

fn catalog(journeys: Vec<Arc<Compiled>>, settings: Settings) -> RunCatalog {
    RunCatalog { journeys, settings, ..Default::default() }
}

/// A New York customer with a phone, an email and SMS consent.
fn customer() -> CustomerState {
    let mut c = CustomerState::new(CustomerId::new(0, 7), 0);
    c.attributes.0.insert("timezone".into(), json!("America/New_York"));
    c.identities.push(Identity { kind: IdentityKind::Phone, value: "+14155550123".into() });
    c.identities.push(Identity { kind: IdentityKind::Email, value: "ada@example.com".into() });
    c.consent.channels.insert("sms".into(), ConsentEntry { status: ConsentStatus::OptedIn, at_ms: 0, source: "test".into() });
    c
}

fn ev(name: &str, traits: serde_json::Value) -> Event {
    EventInput {
        message_id: format!("{name}-{traits}"),
        event_type: if traits.is_null() { "track".into() } else { "identify".into() },
        name: name.into(),
        identities: vec![("email".into(), "ada@example.com".into())],
        traits: traits.as_object().cloned().unwrap_or_default(),
        timestamp_ms: 1,
        ..Default::default()
    }
    .validate()
    .unwrap()
}

fn event(c: &mut CustomerState, cat: &RunCatalog, name: &str, now: i64) -> Vec<Effect> {
    let e = ev(name, serde_json::Value::Null);
    apply_event(c, &e, now, &EngineConfig::default());
    on_input(c, &Input::Event(&e), cat, now, &EngineConfig::default())
}

fn fire(c: &mut CustomerState, cat: &RunCatalog, fx: &[Effect]) -> Vec<Effect> {
    let (journey, key, seq, at) = fx
        .iter()
        .find_map(|e| if let Effect::Timer { journey, entry_key, seq, at_ms } = e { Some((journey.clone(), entry_key.clone(), *seq, *at_ms)) } else { None })
        .expect("a timer");
    on_input(c, &Input::Timer { journey: &journey, entry_key: &key, seq }, cat, at, &EngineConfig::default())
}

fn timer_at(fx: &[Effect]) -> i64 {
    fx.iter().find_map(|e| if let Effect::Timer { at_ms, .. } = e { Some(*at_ms) } else { None }).expect("a timer")
}

fn sent(fx: &[Effect]) -> Vec<String> {
    fx.iter().filter_map(|e| if let Effect::Send(i) = e { Some(format!("{} {}", i.channel, i.template)) } else { None }).collect()
}

fn stats(fx: &[Effect]) -> Vec<String> {
    fx.iter().filter_map(|e| if let Effect::Stat { what, .. } = e { Some(what.clone()) } else { None }).collect()
}

fn last(c: &CustomerState, kind: DecisionKind) -> String {
    c.decisions
        .iter()
        .rev()
        .find(|d| d.kind == kind)
        .map(|d| format!("{} | {}", d.reason, d.detail))
        .unwrap_or_else(|| panic!("no {kind:?} decision: {:#?}", c.decisions))
}

fn marketing_cap(channels: &[&str], max: u32) -> Settings {
    Settings {
        caps: vec![CapRule {
            name: "daily".into(),
            category: Some(Category::Marketing),
            channels: channels.iter().map(|s| s.to_string()).collect(),
            max,
            window_ms: 24 * H,
            calendar: false,
        }],
        ..Settings::default()
    }
}

fn contacted(c: &mut CustomerState, at: i64, channel: &str) {
    record_contact(c, Contact { at_ms: at, channel: channel.into(), category: Category::Marketing, journey: "earlier".into() });
}

// 22:30 in New York on Thursday 2027-01-14 (EST, UTC-5).
const LATE: &str = "2027-01-15T03:30:00Z";
// Noon in New York on Friday 2027-01-15.
const NOON: &str = "2027-01-15T17:00:00Z";

#[test]
fn rule_quiet_hours_defer_a_marketing_sms_to_the_local_morning() {
    let cat = catalog(vec![compile(&sms_journey("promo", 50, "Browsed", ""), 1)], Settings::default());
    let mut c = customer();
    let fx = event(&mut c, &cat, "Browsed", ms(LATE));
    assert!(sent(&fx).is_empty());
    assert_eq!(timer_at(&fx), ms("2027-01-15T13:00:00Z"), "08:00 New York time");
    assert!(stats(&fx).contains(&"deferred:quiet_hours".to_string()), "{fx:?}");
    assert!(last(&c, DecisionKind::Deferred).starts_with("sms quiet hours 21:00–08:00 in America/New_York (profile)"), "{:?}", c.decisions);
    let fx = fire(&mut c, &cat, &fx);
    assert_eq!(sent(&fx), vec!["sms t-promo"]);
    assert!(last(&c, DecisionKind::Sent).contains("after waiting since 2027-01-15T03:30:00Z (sms quiet hours"), "{:?}", c.decisions);
}

#[test]
fn rule_quiet_hours_skip_when_the_step_says_so() {
    let cat = catalog(vec![compile(&sms_journey("promo", 50, "Browsed", ", quiet_hours: skip"), 1)], Settings::default());
    let mut c = customer();
    let fx = event(&mut c, &cat, "Browsed", ms(LATE));
    assert!(sent(&fx).is_empty());
    assert!(stats(&fx).contains(&"skipped:quiet_hours".to_string()), "{fx:?}");
    assert!(last(&c, DecisionKind::Skipped).starts_with("sms: sms quiet hours 21:00–08:00"), "{:?}", c.decisions);
}

#[test]
fn rule_transactional_sends_ignore_quiet_hours_and_marketing_caps() {
    let text = sms_journey("otp", 50, "Login", "").replace("category: marketing", "category: transactional");
    let cat = catalog(vec![compile(&text, 1)], marketing_cap(&[], 1));
    let mut c = customer();
    contacted(&mut c, ms(LATE) - H, "sms");
    assert_eq!(sent(&event(&mut c, &cat, "Login", ms(LATE))), vec!["sms t-otp"]);
}

#[test]
fn rule_when_capped_skip_is_the_default() {
    let cat = catalog(vec![compile(&sms_journey("promo", 50, "Browsed", ""), 1)], marketing_cap(&[], 1));
    let mut c = customer();
    contacted(&mut c, ms(NOON) - H, "email");
    let fx = event(&mut c, &cat, "Browsed", ms(NOON));
    assert!(sent(&fx).is_empty());
    assert!(stats(&fx).contains(&"skipped:capped".to_string()), "{fx:?}");
    assert!(last(&c, DecisionKind::Skipped).starts_with("sms: capped by daily: at most 1 marketing on any channel per 1d"), "{:?}", c.decisions);
}

#[test]
fn rule_when_capped_defer_waits_until_the_window_frees_a_slot() {
    let cat = catalog(vec![compile(&sms_journey("promo", 50, "Browsed", ", when_capped: defer"), 1)], marketing_cap(&[], 1));
    let mut c = customer();
    contacted(&mut c, ms(NOON) - H, "email");
    let fx = event(&mut c, &cat, "Browsed", ms(NOON));
    assert!(sent(&fx).is_empty());
    assert_eq!(timer_at(&fx), ms(NOON) + 23 * H + 1, "the earlier contact leaves the 24 h window");
    assert!(stats(&fx).contains(&"deferred:capped".to_string()));
    // The freed slot is the cap's last: the send waits out the arbitration window
    // in case a higher-priority send falls due too, then goes.
    let fx = fire(&mut c, &cat, &fx);
    assert_eq!(timer_at(&fx), ms(NOON) + 23 * H + 1 + 1_000);
    let fx = fire(&mut c, &cat, &fx);
    assert_eq!(sent(&fx), vec!["sms t-promo"]);
}

#[test]
fn rule_when_capped_fallback_tries_the_next_channel() {
    let cat = catalog(vec![compile(&sms_journey("promo", 50, "Browsed", ", fallback: [email], when_capped: fallback"), 1)], marketing_cap(&["sms"], 1));
    let mut c = customer();
    contacted(&mut c, ms(NOON) - H, "sms");
    let fx = event(&mut c, &cat, "Browsed", ms(NOON));
    assert_eq!(sent(&fx), vec!["email t-promo"]);
    assert!(last(&c, DecisionKind::Fallback).starts_with("sms: capped by daily: at most 1 marketing on sms per 1d"), "{:?}", c.decisions);
    assert!(stats(&fx).contains(&"fallback:email".to_string()) && stats(&fx).contains(&"sent:email".to_string()), "{fx:?}");
}

#[test]
fn rule_priority_arbitration_gives_the_last_slot_to_the_higher_priority_journey() {
    let low = compile(&sms_journey("low", 10, "Browsed", ""), 1);
    let high = compile(&sms_journey("high", 90, "Abandoned Cart", ""), 1);
    let cat = catalog(vec![low, high], marketing_cap(&[], 1));
    let mut c = customer();
    // The low-priority send falls due first and would take the only slot: it waits
    // for the arbitration window instead.
    let fx_low = event(&mut c, &cat, "Browsed", ms(NOON));
    assert!(sent(&fx_low).is_empty());
    assert_eq!(timer_at(&fx_low), ms(NOON) + 1_000);
    assert!(last(&c, DecisionKind::Deferred).starts_with("arbitration"), "{:?}", c.decisions);
    // The high-priority send 200 ms later joins the same batch.
    let fx_high = event(&mut c, &cat, "Abandoned Cart", ms(NOON) + 200);
    assert_eq!(timer_at(&fx_high), ms(NOON) + 1_000);
    // At the end of the window the batch is released by priority: high wins the slot.
    let fx = fire(&mut c, &cat, &fx_low);
    assert_eq!(sent(&fx), vec!["sms t-high"]);
    assert!(last(&c, DecisionKind::Skipped).starts_with("sms: capped by daily"), "{:?}", c.decisions);
    // The high journey's own timer is stale now: nothing is sent twice.
    assert!(sent(&fire(&mut c, &cat, &fx_high)).is_empty());
}

#[test]
fn rule_deferred_sends_are_released_in_priority_order() {
    let low = compile(&sms_journey("low", 10, "Browsed", ""), 1);
    let high = compile(&sms_journey("high", 90, "Abandoned Cart", ""), 1);
    let cat = catalog(vec![low, high], Settings::default());
    let mut c = customer();
    let fx_low = event(&mut c, &cat, "Browsed", ms(LATE));
    let fx_high = event(&mut c, &cat, "Abandoned Cart", ms(LATE) + 60_000);
    assert_eq!(timer_at(&fx_low), timer_at(&fx_high), "both wait for 08:00");
    let fx = fire(&mut c, &cat, &fx_low);
    assert_eq!(sent(&fx), vec!["sms t-high", "sms t-low"]);
}

#[test]
fn rule_defer_is_bounded_by_defer_max() {
    let settings = Settings { defer_max_ms: H, ..Settings::default() };
    let cat = catalog(vec![compile(&sms_journey("promo", 50, "Browsed", ""), 1)], settings);
    let mut c = customer();
    let fx = event(&mut c, &cat, "Browsed", ms(LATE));
    assert!(sent(&fx).is_empty());
    assert!(stats(&fx).contains(&"skipped:defer_max".to_string()), "{fx:?}");
    assert!(last(&c, DecisionKind::Skipped).contains("would exceed defer_max 1h"), "{:?}", c.decisions);
}

#[test]
fn rule_an_opt_out_while_deferred_stops_the_send() {
    let cat = catalog(vec![compile(&sms_journey("promo", 50, "Browsed", ""), 1)], Settings::default());
    let mut c = customer();
    let fx = event(&mut c, &cat, "Browsed", ms(LATE));
    let e = ev("", json!({"consent": {"sms": "opted_out"}}));
    apply_event(&mut c, &e, ms(LATE) + H, &EngineConfig::default());
    let fx = fire(&mut c, &cat, &fx);
    assert!(sent(&fx).is_empty());
    assert!(last(&c, DecisionKind::Skipped).starts_with("sms: sms opted out"), "{:?}", c.decisions);
}

#[test]
fn rule_recheck_exits_customers_no_longer_eligible() {
    let text = "id: vip\ncategory: marketing\nentry:\n  event: Browsed\n  filter: 'profile.vip == true'\nsteps:\n  - id: pause\n    wait: 1h\n    next: offer\n  - id: offer\n    send: { channel: email, template: vip-offer, recheck: true }\n";
    let cat = catalog(vec![compile(text, 1)], Settings::default());
    let mut c = customer();
    c.attributes.0.insert("vip".into(), json!(true));
    let fx = event(&mut c, &cat, "Browsed", ms(NOON));
    c.attributes.0.insert("vip".into(), json!(false));
    let fx = fire(&mut c, &cat, &fx);
    assert!(sent(&fx).is_empty());
    assert!(c.journeys.is_empty());
    assert!(last(&c, DecisionKind::Exited).starts_with("no longer eligible (entry filter rechecked)"), "{:?}", c.decisions);
}

#[test]
fn rule_local_time_waits_use_the_customers_zone() {
    let text = "id: morning\ncategory: marketing\nentry:\n  event: Browsed\nsteps:\n  - id: until_morning\n    wait: next 10:00\n    next: hello\n  - id: hello\n    send: { channel: email, template: morning }\n";
    let cat = catalog(vec![compile(text, 1)], Settings::default());
    let mut c = customer();
    let fx = event(&mut c, &cat, "Browsed", ms(LATE));
    assert_eq!(timer_at(&fx), ms("2027-01-15T15:00:00Z"), "10:00 New York time");
    assert!(last(&c, DecisionKind::Scheduled).contains("until 2027-01-15 10:00 EST in America/New_York (profile)"), "{:?}", c.decisions);
    assert_eq!(sent(&fire(&mut c, &cat, &fx)), vec!["email morning"]);
}

#[test]
fn rule_best_hour_waits_for_the_customers_most_likely_open_hour() {
    let text = "id: sto\ncategory: marketing\nentry:\n  event: Browsed\nsteps:\n  - id: best\n    wait: best_hour\n    next: hello\n  - id: hello\n    send: { channel: email, template: sto }\n";
    let cat = catalog(vec![compile(text, 1)], Settings::default());
    let mut c = customer();
    for day in ["2027-01-10", "2027-01-11", "2027-01-12"] {
        // 19:xx New York time (00:xx UTC the next day).
        let e = ev("email.opened", serde_json::Value::Null);
        let at = ms(&format!("{day}T00:15:00Z"));
        on_input(&mut c, &Input::Event(&e), &cat, at, &EngineConfig::default());
    }
    let fx = event(&mut c, &cat, "Browsed", ms(NOON));
    assert_eq!(timer_at(&fx), ms("2027-01-16T00:00:00Z"), "19:00 New York time");
}

const V1: &str = "id: onboarding\ncategory: marketing\nentry:\n  event: Signed Up\n  reentry: always\nsteps:\n  - id: wait\n    wait: 1h\n    next: hello\n  - id: hello\n    send: { channel: email, template: hello-v1 }\n";

#[test]
fn rule_customers_in_flight_stay_on_their_version() {
    let v2 = V1.replace("hello-v1", "hello-v2");
    let mut cat = catalog(vec![compile(V1, 1)], Settings::default());
    let mut c = customer();
    let fx = event(&mut c, &cat, "Signed Up", ms(NOON));
    cat.journeys.push(compile(&v2, 2));
    assert_eq!(sent(&fire(&mut c, &cat, &fx)), vec!["email hello-v1"], "still on version 1");
    let mut newcomer = CustomerState::new(CustomerId::new(0, 8), 0);
    newcomer.identities.push(Identity { kind: IdentityKind::Email, value: "bo@example.com".into() });
    let fx = event(&mut newcomer, &cat, "Signed Up", ms(NOON));
    assert_eq!(newcomer.journeys[0].version, 2);
    assert_eq!(sent(&fire(&mut newcomer, &cat, &fx)), vec!["email hello-v2"]);
}

#[test]
fn rule_migrate_moves_customers_in_flight_to_the_new_version() {
    let v2 = "id: onboarding\ncategory: marketing\nentry:\n  event: Signed Up\nmigrate:\n  wait: settle\nsteps:\n  - id: settle\n    wait: 2h\n    next: welcome\n  - id: welcome\n    send: { channel: email, template: welcome-v2 }\n";
    let mut cat = catalog(vec![compile(V1, 1)], Settings::default());
    let mut c = customer();
    let fx = event(&mut c, &cat, "Signed Up", ms(NOON));
    cat.journeys.push(compile(v2, 2));
    // The pending timer carries over to the mapped waiting step.
    let fx = fire(&mut c, &cat, &fx);
    assert_eq!(sent(&fx), vec!["email welcome-v2"]);
    assert!(c.decisions.iter().any(|d| d.reason == "migrated to v2" && d.detail == "onboarding: v1 wait → v2 settle"), "{:?}", c.decisions);
}

#[test]
fn rule_paused_journeys_take_no_entries_and_hold_customers_at_their_next_step() {
    let mut cat = catalog(vec![compile(V1, 1)], Settings::default());
    let mut c = customer();
    let fx = event(&mut c, &cat, "Signed Up", ms(NOON));
    cat.lifecycle.insert("onboarding".into(), Lifecycle::Paused);
    let held = fire(&mut c, &cat, &fx);
    assert!(sent(&held).is_empty());
    assert!(held.iter().any(|e| matches!(e, Effect::Held { journey } if journey == "onboarding")), "{held:?}");
    assert!(c.journeys[0].held && c.journeys[0].step == "hello");
    let mut other = CustomerState::new(CustomerId::new(0, 9), 0);
    assert!(event(&mut other, &cat, "Signed Up", ms(NOON)).is_empty() && other.journeys.is_empty(), "no entries while paused");
    cat.lifecycle.insert("onboarding".into(), Lifecycle::Active);
    let fx = on_input(&mut c, &Input::Wake { journey: "onboarding" }, &cat, ms(NOON) + 2 * H, &EngineConfig::default());
    assert_eq!(sent(&fx), vec!["email hello-v1"]);
}

#[test]
fn rule_archived_journeys_exit_customers_in_flight() {
    let mut cat = catalog(vec![compile(V1, 1)], Settings::default());
    let mut c = customer();
    let fx = event(&mut c, &cat, "Signed Up", ms(NOON));
    cat.lifecycle.insert("onboarding".into(), Lifecycle::Archived);
    assert!(sent(&fire(&mut c, &cat, &fx)).is_empty());
    assert!(c.journeys.is_empty());
    assert!(last(&c, DecisionKind::Exited).starts_with("journey archived"), "{:?}", c.decisions);
}

#[test]
fn rule_an_opt_out_cancels_deferred_sends_at_once() {
    let cat = catalog(vec![compile(&sms_journey("promo", 50, "Browsed", ""), 1)], Settings::default());
    let mut c = customer();
    let deferred = event(&mut c, &cat, "Browsed", ms(LATE));
    // The customer texts STOP at 23:00: the waiting SMS is decided again right then.
    let props = json!({"body": "stop"});
    let stop = EventInput {
        message_id: "in-1".into(),
        name: crate::consent::INBOUND_SMS_EVENT.into(),
        identities: vec![("phone".into(), "+14155550123".into())],
        properties: props.as_object().cloned().unwrap(),
        ..Default::default()
    }
    .validate()
    .unwrap();
    let at = ms(LATE) + 30 * 60_000;
    let before = c.consent.ledger.len();
    apply_event(&mut c, &stop, at, &EngineConfig::default());
    crate::consent::after_event(&mut c, &stop, before, &cat.settings, at, &EngineConfig::default());
    let fx = on_input(&mut c, &Input::Event(&stop), &cat, at, &EngineConfig::default());
    assert!(sent(&fx).is_empty());
    let skipped = c.decisions.iter().rev().find(|d| d.kind == DecisionKind::Skipped).unwrap();
    assert_eq!((skipped.at_ms, skipped.reason.as_str()), (at, "sms: sms opted out"));
    assert!(c.journeys.iter().all(|i| i.deferred.is_none()));
    // The original timer is stale: nothing goes out in the morning.
    assert!(sent(&fire(&mut c, &cat, &deferred)).is_empty());
}

fn track(name: &str, props: serde_json::Value, id: &str) -> Event {
    EventInput {
        message_id: id.into(),
        name: name.into(),
        identities: vec![("email".into(), "ada@example.com".into())],
        properties: props.as_object().cloned().unwrap_or_default(),
        ..Default::default()
    }
    .validate()
    .unwrap()
}

fn on(c: &mut CustomerState, cat: &RunCatalog, e: &Event, now: i64) -> Vec<Effect> {
    apply_event(c, e, now, &EngineConfig::default());
    on_input(c, &Input::Event(e), cat, now, &EngineConfig::default())
}

#[test]
fn rule_entry_keys_allow_one_instance_per_key_up_to_max_concurrent() {
    let text = "id: order-updates\ncategory: transactional\nentry:\n  event: Order Placed\n  entry_key: event.properties.order_id\n  max_concurrent: 2\nsteps:\n  - id: confirm\n    send: { channel: email, template: order-confirmation }\n    next: ship\n  - id: ship\n    wait_for:\n      events:\n        - event: Order Shipped\n          filter: 'event.properties.order_id == entry.properties.order_id'\n          next: shipped\n      timeout: 7d\n      on_timeout: shipped\n  - id: shipped\n    send: { channel: email, template: order-shipped }\n";
    let cat = catalog(vec![compile(text, 1)], Settings::default());
    let mut c = customer();
    assert_eq!(sent(&on(&mut c, &cat, &track("Order Placed", json!({"order_id": "A1"}), "o1"), ms(NOON))), vec!["email order-confirmation"]);
    // The same order again: already in the journey with that key.
    assert!(sent(&on(&mut c, &cat, &track("Order Placed", json!({"order_id": "A1"}), "o1b"), ms(NOON) + 1)).is_empty());
    assert_eq!(sent(&on(&mut c, &cat, &track("Order Placed", json!({"order_id": 77}), "o2"), ms(NOON) + 2)), vec!["email order-confirmation"]);
    // A third order while two are open: max_concurrent.
    assert!(sent(&on(&mut c, &cat, &track("Order Placed", json!({"order_id": "C3"}), "o3"), ms(NOON) + 3)).is_empty());
    assert!(last(&c, DecisionKind::Skipped).starts_with("max_concurrent reached"), "{:?}", c.decisions);
    let keys: Vec<&str> = c.journeys.iter().map(|i| i.entry_key.as_str()).collect();
    assert_eq!(keys, vec!["A1", "77"]);
    // `entry` is each instance's own entry event: shipping order 77 moves only its instance.
    let fx = on(&mut c, &cat, &track("Order Shipped", json!({"order_id": 77}), "s77"), ms(NOON) + 4);
    assert_eq!(sent(&fx), vec!["email order-shipped"]);
    // Order 77's instance has ended (it stays only to count engagement with its emails).
    let keys: Vec<&str> = c.journeys.iter().filter(|i| !i.done).map(|i| i.entry_key.as_str()).collect();
    assert_eq!(keys, vec!["A1"]);
}

#[test]
fn rule_api_entry_enrolls_by_the_enroll_event() {
    let text = "id: winback\ncategory: marketing\nentry:\n  api: true\nsteps:\n  - id: hello\n    send: { channel: email, template: winback }\n";
    let cat = catalog(vec![compile(text, 1)], Settings::default());
    let mut c = customer();
    assert!(on(&mut c, &cat, &track("winback", json!({}), "x"), ms(NOON)).is_empty(), "an event named like the journey does not enroll");
    let fx = on(&mut c, &cat, &track(super::run::ENROLL_EVENT, json!({"journey": "winback", "offer": "10%"}), "e1"), ms(NOON));
    assert_eq!(sent(&fx), vec!["email winback"]);
    assert!(last(&c, DecisionKind::Entered).starts_with("event journey.enroll | winback v1"), "{:?}", c.decisions);
}

#[test]
fn rule_audience_entry_enrolls_when_the_customer_joins_the_audience() {
    use crate::audience::{AudienceDef, CompiledAudience, change_event, evaluate_audiences};
    let text = "id: vip-welcome\ncategory: marketing\nentry:\n  audience: vips\nsteps:\n  - id: hello\n    send: { channel: email, template: vip-welcome }\n";
    let mut cat = catalog(vec![compile(text, 1)], Settings::default());
    cat.audiences.push(Arc::new(
        CompiledAudience::new(AudienceDef { id: "vips".into(), name: "VIPs".into(), description: String::new(), condition: "profile.ltv > 500".into() }, 1)
            .unwrap(),
    ));
    let mut c = customer();
    c.attributes.0.insert("ltv".into(), json!(900));
    let changes = evaluate_audiences(&mut c, &cat.audiences, ms(NOON), &EngineConfig::default());
    assert_eq!(changes, vec![("vips".to_string(), true)]);
    let e = change_event(&c, "vips", true, ms(NOON));
    assert_eq!(sent(&on(&mut c, &cat, &e, ms(NOON))), vec!["email vip-welcome"]);
}

const SEQUENCE: &str = "id: nurture\ncategory: marketing\nentry:\n  event: Signed Up\nexit:\n  - event: Unsubscribed From Nurture\ngoal:\n  event: Order Completed\n  within: 7d\n  value: event.properties.revenue\nsteps:\n  - id: intro\n    send: { channel: email, template: intro }\n    next: check\n  - id: check\n    wait_for:\n      timeout: 2d\n      branches:\n        - when: 'steps.intro.failed'\n          next: by_sms\n        - when: 'steps.intro.clicked'\n          next: thanks\n      on_timeout: thanks\n  - id: by_sms\n    send: { channel: sms, template: intro-sms }\n  - id: thanks\n    send: { channel: email, template: thanks }\n";

fn intent_key(fx: &[Effect]) -> String {
    fx.iter().find_map(|e| if let Effect::Send(i) = e { Some(i.key.clone()) } else { None }).expect("a send")
}

#[test]
fn rule_exit_criteria_cancel_undelivered_intents() {
    let cat = catalog(vec![compile(SEQUENCE, 1)], Settings::default());
    let mut c = customer();
    let fx = on(&mut c, &cat, &track("Signed Up", json!({}), "s"), ms(NOON));
    let key = intent_key(&fx);
    let fx = on(&mut c, &cat, &track("Unsubscribed From Nurture", json!({}), "u"), ms(NOON) + 1_000);
    assert!(fx.iter().any(|e| matches!(e, Effect::Cancel { key: k } if *k == key)), "{fx:?}");
    assert!(last(&c, DecisionKind::Skipped).starts_with("cancelled: nurture exited on Unsubscribed From Nurture"), "{:?}", c.decisions);
    assert!(c.pending_intents.is_empty());
}

#[test]
fn rule_an_opt_out_cancels_undelivered_intents_on_that_channel() {
    let cat = catalog(vec![compile(SEQUENCE, 1)], Settings::default());
    let mut c = customer();
    let key = intent_key(&on(&mut c, &cat, &track("Signed Up", json!({}), "s"), ms(NOON)));
    let out = ev("", json!({"consent": {"email": "opted_out"}}));
    let fx = on(&mut c, &cat, &out, ms(NOON) + 10);
    assert!(fx.iter().any(|e| matches!(e, Effect::Cancel { key: k } if *k == key)), "{fx:?}");
}

#[test]
fn rule_outcomes_reach_the_step_that_sent_and_can_branch() {
    let cat = catalog(vec![compile(SEQUENCE, 1)], Settings::default());
    let mut c = customer();
    let key = intent_key(&on(&mut c, &cat, &track("Signed Up", json!({}), "s"), ms(NOON)));
    let fx = on_input(
        &mut c,
        &Input::Outcome { key: &key, delivered: false, detail: "550 mailbox unavailable: bounced" },
        &cat,
        ms(NOON) + 5,
        &EngineConfig::default(),
    );
    assert!(stats(&fx).contains(&"failed:email:bounced".to_string()), "{fx:?}");
    assert_eq!(sent(&fx), vec!["sms intro-sms"], "steps.intro.failed takes the SMS branch at once");
}

#[test]
fn rule_measurement_counts_engagement_time_to_conversion_and_paths() {
    let cat = catalog(vec![compile(SEQUENCE, 1)], Settings::default());
    let mut c = customer();
    on(&mut c, &cat, &track("Signed Up", json!({}), "s"), ms(NOON));
    let click = json!({"journey": "nurture", "step": "intro"});
    let fx = on(&mut c, &cat, &track("email.clicked", click.clone(), "c1"), ms(NOON) + H);
    let st = stats(&fx);
    assert!(st.contains(&"engaged:opened".to_string()) && st.contains(&"engaged:clicked".to_string()), "{st:?}");
    assert!(st.contains(&"path:intro>check>thanks".to_string()) && st.contains(&"exit:completed".to_string()), "{st:?}");
    // A second click is not a second unique click.
    assert!(!stats(&on(&mut c, &cat, &track("email.clicked", click, "c2"), ms(NOON) + 2 * H)).iter().any(|s| s.starts_with("engaged:")));
    let fx = on(&mut c, &cat, &track("Order Completed", json!({"revenue": 40}), "o"), ms(NOON) + 30 * H);
    assert!(stats(&fx).contains(&"ttc:1d-3d".to_string()), "{fx:?}");
}

#[test]
fn rule_a_bounced_address_is_not_used_again() {
    let cat = catalog(vec![compile(SEQUENCE, 1)], Settings::default());
    let mut c = customer();
    let key = intent_key(&on(&mut c, &cat, &track("Signed Up", json!({}), "s"), ms(NOON)));
    on_input(
        &mut c,
        &Input::Outcome { key: &key, delivered: false, detail: "550 5.1.1 mailbox unavailable (bounced)" },
        &cat,
        ms(NOON) + 5,
        &EngineConfig::default(),
    );
    assert_eq!(c.contact_status.get("ada@example.com").map(String::as_str), Some("bounced"));
    assert!(last(&c, DecisionKind::DeliveryFailed).starts_with("contact point bounced"), "{:?}", c.decisions);
    assert_eq!(crate::messaging::contact_point(&c, "email"), None);
}

const LAST_STEP_EMAIL: &str = "id: welcome\ncategory: marketing\nentry:\n  event: Signed Up\ngoal:\n  event: Order Completed\n  within: 3d\nsteps:\n  - id: hello\n    send: { channel: email, template: hello }\n";
const LAST_STEP_EMAIL_NO_GOAL: &str =
    "id: notice\ncategory: marketing\nentry:\n  event: Signed Up\nsteps:\n  - id: note\n    send: { channel: email, template: note }\n";

/// Opens and clicks after the customer finished a journey whose last step is an email
/// count for the step that sent it, within the goal window (or the engagement window of a
/// journey without a goal), once each; a conversion after them still counts once.
#[test]
fn rule_engagement_after_the_last_step_counts_for_the_step_that_sent_it() {
    let cat = catalog(vec![compile(LAST_STEP_EMAIL, 1), compile(LAST_STEP_EMAIL_NO_GOAL, 1)], Settings::default());
    let mut c = customer();
    let fx = on(&mut c, &cat, &track("Signed Up", json!({}), "s"), ms(NOON));
    assert_eq!(sent(&fx).len(), 2, "{fx:?}");
    assert!(stats(&fx).contains(&"exit:completed".to_string()), "both journeys ended at once: {fx:?}");
    let open = json!({"journey": "welcome", "step": "hello"});
    let st = stats(&on(&mut c, &cat, &track("email.opened", open.clone(), "o1"), ms(NOON) + H));
    assert!(st.contains(&"engaged:opened".to_string()), "{st:?}");
    let st = stats(&on(&mut c, &cat, &track("email.clicked", open.clone(), "c1"), ms(NOON) + 2 * H));
    assert!(st.contains(&"engaged:clicked".to_string()) && !st.contains(&"engaged:opened".to_string()), "unique: {st:?}");
    let st = stats(&on(&mut c, &cat, &track("email.clicked", json!({"journey": "notice", "step": "note"}), "c2"), ms(NOON) + 3 * H));
    assert!(st.contains(&"engaged:clicked".to_string()) && st.contains(&"engaged:opened".to_string()), "no goal: {st:?}");
    // The goal still converts once; engagement after the conversion still counts.
    let st = stats(&on(&mut c, &cat, &track("Order Completed", json!({}), "p1"), ms(NOON) + 4 * H));
    assert!(st.contains(&"converted".to_string()), "{st:?}");
    let st = stats(&on(&mut c, &cat, &track("Order Completed", json!({}), "p2"), ms(NOON) + 5 * H));
    assert!(!st.contains(&"converted".to_string()), "one conversion per entry: {st:?}");
    // After the window nothing is attributed any more and the instance is gone.
    let st = stats(&on(&mut c, &cat, &track("email.opened", json!({"journey": "notice", "step": "note"}), "o3"), ms(NOON) + 8 * 24 * H));
    assert!(st.is_empty(), "{st:?}");
    assert!(c.journeys.is_empty(), "{:?}", c.journeys);
}
