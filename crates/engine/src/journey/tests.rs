//! Journey loading and validation, one test per rule of SPEC §6 "Validation".

use super::*;

const BROWSE_ABANDON: &str = r#"id: browse-abandon
name: Browse abandonment
category: marketing
priority: 50
entry:
  event: Product Viewed
  filter: 'profile.ltv > 500 && events.count("Order Completed", duration("7d")) == 0'
  reentry: { cooldown: 7d }
  holdout: 10%
exit:
  - event: Order Completed
goal:
  event: Order Completed
  within: 7d
  value: event.properties.revenue
steps:
  - id: recos_email
    send: { channel: email, template: browse-recos }
    next: wait_engagement
  - id: wait_engagement
    wait_for:
      timeout: 24h
      branches:
        - when: 'steps.recos_email.clicked'
          next: retarget
        - when: 'steps.recos_email.opened'
          next: push_nudge
      on_timeout: sms_incentive
  - id: push_nudge
    send: { channel: push, template: tighter-benefit, fallback: [email] }
  - id: retarget
    audience: { add: meta-retargeting, for: 14d }
  - id: sms_incentive
    send: { channel: sms, template: direct-incentive, when_capped: defer }
on_goal:
  trigger: post-purchase
"#;

fn errors(text: &str) -> Vec<Diagnostic> {
    load_journey(text, &Catalog::default()).unwrap_err()
}

fn one_error(text: &str) -> Diagnostic {
    let e = errors(text);
    assert_eq!(e.len(), 1, "{e:#?}");
    e.into_iter().next().unwrap()
}

#[test]
fn the_spec_example_parses_once_audience_steps_are_replaced() {
    let e = one_error(BROWSE_ABANDON);
    assert_eq!(e.line, Some(32));
    assert!(e.message.contains("not yet supported"), "{e}");
    let text = BROWSE_ABANDON.replace("audience: { add: meta-retargeting, for: 14d }", "webhook: { template: retarget-hook }");
    let j = load_journey(&text, &Catalog::default()).unwrap();
    assert_eq!(j.id, "browse-abandon");
    assert_eq!(j.priority, 50);
    assert_eq!(j.entry.trigger, Trigger::Event("Product Viewed".into()));
    assert_eq!(j.entry.reentry, Reentry::Cooldown { ms: 7 * 86_400_000 });
    assert_eq!(j.entry.holdout_percent, 10.0);
    assert_eq!(j.goal.as_ref().unwrap().within_ms, 7 * 86_400_000);
    assert_eq!(j.steps.len(), 5);
    assert!(matches!(&j.steps[1].kind, StepKind::WaitFor { timeout_ms: 86_400_000, branches, .. } if branches.len() == 2));
    assert!(matches!(&j.steps[4].kind, StepKind::Send { when_capped: WhenCapped::Defer, .. }));
    assert_eq!(j.on_goal_trigger.as_deref(), Some("post-purchase"));
}

fn journey(steps: &str) -> String {
    format!("id: j\ncategory: marketing\nentry:\n  event: Signed Up\nsteps:\n{steps}")
}

#[test]
fn rule_unknown_steps_are_rejected_with_a_suggestion() {
    let e = one_error(&journey("  - id: welcome\n    send: { channel: email, template: w }\n    next: wiat\n  - id: wait\n    wait: 1d\n"));
    // (the step after it is unreachable too, but that follows from the typo and is not repeated)
    assert_eq!(e.line, Some(8));
    assert!(e.message.contains("unknown step \"wiat\"") && e.message.contains("did you mean \"wait\""), "{e}");
}

#[test]
fn rule_unreachable_steps_are_rejected() {
    let e = one_error(&journey("  - id: a\n    send: { channel: email, template: w }\n  - id: orphan\n    exit: {}\n"));
    assert_eq!(e.line, Some(8));
    assert!(e.message.contains("unreachable"), "{e}");
}

#[test]
fn rule_cycles_without_a_wait_are_rejected() {
    let text = journey(
        "  - id: a\n    send: { channel: email, template: w }\n    next: b\n  - id: b\n    branch:\n      conditions:\n        - when: 'true'\n          next: a\n      else: a\n",
    );
    let e = one_error(&text);
    assert!(e.message.contains("cycle without a wait"), "{e}");
    // The same loop through a wait is fine.
    let ok = journey("  - id: a\n    send: { channel: email, template: w }\n    next: b\n  - id: b\n    wait: 7d\n    next: a\n");
    load_journey(&ok, &Catalog::default()).unwrap();
}

#[test]
fn rule_unknown_channels_and_catalog_references_are_rejected() {
    let e = one_error(&journey("  - id: a\n    send: { channel: emial, template: w }\n"));
    assert_eq!(e.line, Some(7));
    assert!(e.message.contains("did you mean \"email\""), "{e}");
    let catalog = Catalog { templates: Some(["known".to_string()].into()), connected_channels: Some(["email".to_string()].into()), ..Catalog::default() };
    let errs = load_journey(&journey("  - id: a\n    send: { channel: sms, template: unknown }\n"), &catalog).unwrap_err();
    let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert_eq!(errs.len(), 2, "{text:#?}");
    assert!(text.iter().any(|t| t.contains("no connector is configured for channel \"sms\"")));
    assert!(text.iter().any(|t| t.contains("unknown template \"unknown\"")));
}

#[test]
fn rule_cel_that_does_not_compile_is_rejected() {
    let text = "id: j\ncategory: marketing\nentry:\n  event: Signed Up\n  filter: 'profile.ltv >'\nsteps:\n  - id: a\n    exit: {}\n";
    let e = one_error(text);
    assert_eq!((e.line, e.path.as_str()), (Some(5), "entry.filter"));
    assert!(e.message.contains("does not compile"), "{e}");
}

#[test]
fn rule_waits_need_timeouts() {
    let e = one_error(&journey(
        "  - id: w\n    wait_for:\n      branches:\n        - when: 'true'\n          next: done\n      on_timeout: done\n  - id: done\n    exit: {}\n",
    ));
    assert!(e.message.contains("needs a timeout"), "{e}");
    assert_eq!(e.line, Some(7));
}

#[test]
fn rule_every_problem_is_reported_with_its_line() {
    let text = "id: Bad Id\ncategory: promo\nentry:\n  evnt: X\nsteps:\n  - id: a\n    send: { channel: email }\n";
    let errs = errors(text);
    let lines: Vec<Option<usize>> = errs.iter().map(|e| e.line).collect();
    assert!(errs.len() >= 4, "{errs:#?}");
    assert!(lines.contains(&Some(1)) && lines.contains(&Some(2)) && lines.contains(&Some(4)) && lines.contains(&Some(7)), "{errs:#?}");
    assert!(errs.iter().any(|e| e.message.contains("did you mean \"event\"")), "{errs:#?}");
}

#[test]
fn rule_local_time_waits_parse() {
    assert_eq!(parse_wait("next 10:00").unwrap(), WaitSpec::LocalTime { weekday: None, hour: 10, minute: 0 });
    assert_eq!(parse_wait("next monday 09:30").unwrap(), WaitSpec::LocalTime { weekday: Some(0), hour: 9, minute: 30 });
    assert_eq!(parse_wait("best_hour").unwrap(), WaitSpec::BestHour);
    assert!(parse_wait("next 25:00").is_err());
    assert!(parse_wait("soon").is_err());
}

#[test]
fn json_journeys_are_accepted() {
    let text =
        r#"{"id": "j", "category": "transactional", "entry": {"api": true}, "steps": [{"id": "a", "send": {"channel": "email", "template": "receipt"}}]}"#;
    let j = load_journey(text, &Catalog::default()).unwrap();
    assert_eq!(j.entry.trigger, Trigger::Api);
}

/// A run catalog holding these compiled journeys (default settings).
pub(crate) fn catalog_of(journeys: Vec<super::run::Compiled>) -> super::run::RunCatalog {
    super::run::RunCatalog { journeys: journeys.into_iter().map(std::sync::Arc::new).collect(), ..Default::default() }
}

mod interpreter {
    use super::super::run::{Compiled, Effect, Input, RunCatalog, on_input};
    use super::super::{Catalog, load_journey};
    use super::catalog_of;
    use crate::{CustomerState, DecisionKind, EngineConfig, apply_event};
    use chorus_types::{CustomerId, Event, EventInput, Identity, IdentityKind};
    use serde_json::json;

    const H: i64 = 3_600_000;
    const T0: i64 = 1_800_000_000_000;

    fn journey(holdout: &str) -> RunCatalog {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/journeys/browse-abandon.yaml")).unwrap();
        let text = text.replace("holdout: 10%", &format!("holdout: {holdout}"));
        catalog_of(vec![Compiled::new(load_journey(&text, &Catalog::default()).unwrap(), 1).unwrap()])
    }

    fn customer(seq: u64) -> CustomerState {
        let mut c = CustomerState::new(CustomerId::new(0, seq), 0);
        c.attributes.0.insert("ltv".into(), json!(900));
        c.identities.push(Identity { kind: IdentityKind::Email, value: "ada@example.com".into() });
        c.identities.push(Identity { kind: IdentityKind::Phone, value: "+14155550123".into() });
        c
    }

    fn ev(name: &str, props: serde_json::Value) -> Event {
        EventInput {
            message_id: format!("{name}-{props}"),
            event_type: "track".into(),
            name: name.into(),
            identities: vec![("email".into(), "ada@example.com".into())],
            properties: props.as_object().cloned().unwrap_or_default(),
            timestamp_ms: 1,
            ..Default::default()
        }
        .validate()
        .unwrap()
    }

    /// Apply an event as the shard would: to the profile, then to the journeys.
    fn event(c: &mut CustomerState, j: &RunCatalog, name: &str, props: serde_json::Value, now: i64) -> Vec<Effect> {
        let e = ev(name, props);
        let cfg = EngineConfig::default();
        apply_event(c, &e, now, &cfg);
        on_input(c, &Input::Event(&e), j, now, &cfg)
    }

    fn timer(c: &mut CustomerState, j: &RunCatalog, seq: u64, now: i64) -> Vec<Effect> {
        on_input(c, &Input::Timer { journey: "browse-abandon", entry_key: "browse-abandon", seq }, j, now, &EngineConfig::default())
    }

    fn sends(effects: &[Effect]) -> Vec<(String, String)> {
        effects.iter().filter_map(|e| if let Effect::Send(i) = e { Some((i.channel.clone(), i.template.clone())) } else { None }).collect()
    }

    fn timer_of(effects: &[Effect]) -> (u64, i64) {
        effects.iter().find_map(|e| if let Effect::Timer { seq, at_ms, .. } = e { Some((*seq, *at_ms)) } else { None }).expect("a timer")
    }

    fn kinds(c: &CustomerState) -> Vec<&'static str> {
        c.decisions.iter().map(|d| d.kind.as_str()).collect()
    }

    #[test]
    fn story_clicked_goes_to_retarget_and_completes() {
        let j = journey("0%");
        let mut c = customer(1);
        let fx = event(&mut c, &j, "Product Viewed", json!({"sku": "A"}), T0);
        assert_eq!(sends(&fx), vec![("email".into(), "browse-recos".into())]);
        let (_, at) = timer_of(&fx);
        assert_eq!(at, T0 + 24 * H);
        assert_eq!(c.journeys[0].step, "wait_engagement");
        let fx = event(&mut c, &j, "email.clicked", json!({"journey": "browse-abandon", "step": "recos_email"}), T0 + H);
        assert_eq!(sends(&fx), vec![("webhook".into(), "meta-retargeting-add".into())]);
        assert!(c.journeys.iter().all(|i| i.done), "completed after the retarget step (kept only for its goal window)");
        assert_eq!(kinds(&c), vec!["entered", "sent", "advanced", "sent", "exited"]);
    }

    #[test]
    fn story_opened_only_goes_to_push_with_email_fallback() {
        let j = journey("0%");
        let mut c = customer(1);
        event(&mut c, &j, "Product Viewed", json!({}), T0);
        let fx = event(&mut c, &j, "email.opened", json!({"journey": "browse-abandon", "step": "recos_email"}), T0 + H);
        // No push token: the push step falls back to email.
        assert_eq!(sends(&fx), vec![("email".into(), "tighter-benefit".into())]);
        assert!(c.decisions.iter().any(|d| d.kind == DecisionKind::Fallback && d.reason.contains("no valid push token")), "{:?}", c.decisions);
    }

    #[test]
    fn story_no_open_times_out_to_sms_which_needs_consent() {
        let j = journey("0%");
        let mut c = customer(1);
        let fx = event(&mut c, &j, "Product Viewed", json!({}), T0);
        let (seq, at) = timer_of(&fx);
        let fx = timer(&mut c, &j, seq, at);
        assert!(sends(&fx).is_empty(), "no SMS consent: skipped");
        assert!(c.decisions.iter().any(|d| d.kind == DecisionKind::Skipped && d.reason.contains("no sms consent")), "{:?}", c.decisions);
        assert!(c.journeys.iter().all(|i| i.done));
    }

    #[test]
    fn story_purchase_mid_wait_exits_converts_and_cancels_the_timer() {
        let j = journey("0%");
        let mut c = customer(1);
        let fx = event(&mut c, &j, "Product Viewed", json!({}), T0);
        let (seq, at) = timer_of(&fx);
        let fx = event(&mut c, &j, "Order Completed", json!({"revenue": 120.5}), T0 + 2 * H);
        assert!(c.journeys.is_empty(), "exit criteria apply mid-wait");
        assert!(fx.iter().any(|e| matches!(e, Effect::Stat { what, value, .. } if what == "converted" && *value == 120.5)), "{fx:?}");
        assert!(fx.iter().any(|e| matches!(e, Effect::Trigger { journey } if journey == "post-purchase")));
        assert!(timer(&mut c, &j, seq, at).is_empty(), "the timer is stale");
        assert!(kinds(&c).contains(&"converted") && kinds(&c).contains(&"exited"));
    }

    #[test]
    fn reentry_respects_the_cooldown_and_the_entry_filter() {
        let j = journey("0%");
        let mut c = customer(1);
        event(&mut c, &j, "Product Viewed", json!({}), T0);
        event(&mut c, &j, "Order Completed", json!({"revenue": 1}), T0 + H);
        // Within the 7-day cooldown (and with a recent order the filter says no anyway).
        assert!(sends(&event(&mut c, &j, "Product Viewed", json!({}), T0 + 24 * H)).is_empty());
        // Eight days later: cooldown over, no order in the last 7 days.
        let fx = event(&mut c, &j, "Product Viewed", json!({}), T0 + 8 * 24 * H);
        assert_eq!(sends(&fx).len(), 1, "{:?}", c.decisions);
        // Low-value customers never enter.
        let mut poor = customer(2);
        poor.attributes.0.insert("ltv".into(), json!(10));
        assert!(event(&mut poor, &j, "Product Viewed", json!({}), T0).is_empty());
        assert!(poor.journeys.is_empty());
    }

    #[test]
    fn holdout_customers_move_through_without_messages() {
        let j = journey("100%");
        let mut c = customer(1);
        let fx = event(&mut c, &j, "Product Viewed", json!({}), T0);
        assert!(sends(&fx).is_empty());
        assert!(c.journeys[0].holdout);
        assert!(c.decisions.iter().any(|d| d.reason == "holdout"), "{:?}", c.decisions);
        let fx = event(&mut c, &j, "Order Completed", json!({"revenue": 3}), T0 + H);
        assert!(fx.iter().any(|e| matches!(e, Effect::Stat { what, .. } if what == "converted_holdout")), "{fx:?}");
    }

    #[test]
    fn holdout_split_is_deterministic_per_customer() {
        let b1 = super::super::run::bucket("cu_1", "browse-abandon");
        assert_eq!(b1, super::super::run::bucket("cu_1", "browse-abandon"));
        let in_holdout = (0..10_000).filter(|i| super::super::run::bucket(&format!("cu_{i}"), "j") < 1_000).count();
        assert!((800..1200).contains(&in_holdout), "10% ± 2%: {in_holdout}");
    }
}

#[test]
fn simulation_runs_the_trace_on_a_virtual_clock() {
    use super::run::Compiled;
    use super::simulate::{customer_from_json, simulate, trace_event};
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/journeys/browse-abandon.yaml"))
        .unwrap()
        .replace("holdout: 10%", "holdout: 0%");
    let j = catalog_of(vec![Compiled::new(load_journey(&text, &Catalog::default()).unwrap(), 1).unwrap()]);
    let profile =
        serde_json::json!({"attributes": {"ltv": 900}, "identities": {"email": "ada@example.com", "phone": "+14155550123"}, "consent": {"sms": "opted_in"}});
    let c = customer_from_json(&profile).unwrap();
    let trace: Vec<_> = [
        serde_json::json!({"at": "2026-12-01T10:00:00Z", "event": "Product Viewed", "properties": {"sku": "A"}}),
        serde_json::json!({"at": "2026-12-01T12:00:00Z", "event": "App Opened"}),
    ]
    .iter()
    .enumerate()
    .map(|(n, v)| trace_event(v, n + 1).unwrap())
    .collect();
    let start = chorus_types::time::parse_rfc3339_ms("2026-12-01T10:00:00Z").unwrap();
    let lines = simulate(&j, c, trace, start + 2 * 86_400_000, &crate::EngineConfig::default());
    let text: Vec<String> = lines.iter().map(|l| format!("{} {}", l.kind, l.text)).collect();
    let sends: Vec<&String> = text.iter().filter(|t| t.starts_with("send ")).collect();
    assert_eq!(sends.len(), 2, "{text:#?}");
    assert!(sends[0].starts_with("send email browse-recos to ada@example.com"), "{text:#?}");
    assert!(sends[1].starts_with("send sms direct-incentive to +14155550123"), "the 24 h timeout leads to the SMS: {text:#?}");
    let timer_at = lines.iter().find(|l| l.kind == "timer").unwrap().at_ms;
    assert_eq!(timer_at, start + 86_400_000);
    assert!(text.iter().rev().take(2).any(|t| t.contains("exited — completed")), "{text:#?}");
}

#[test]
fn goals_count_within_the_window_even_after_the_journey_ended() {
    use super::run::Compiled;
    use super::simulate::{customer_from_json, simulate, trace_event};
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/journeys/browse-abandon.yaml"))
        .unwrap()
        .replace("holdout: 10%", "holdout: 0%");
    let j = catalog_of(vec![Compiled::new(load_journey(&text, &Catalog::default()).unwrap(), 1).unwrap()]);
    let c = customer_from_json(&serde_json::json!({"attributes": {"ltv": 900}, "identities": {"email": "ada@example.com"}})).unwrap();
    let run = |order_at: &str| {
        let trace: Vec<_> = [
            serde_json::json!({"at": "2026-12-01T10:00:00Z", "event": "Product Viewed"}),
            serde_json::json!({"at": "2026-12-01T10:20:00Z", "event": "email.opened", "properties": {"journey": "browse-abandon", "step": "recos_email"}}),
            serde_json::json!({"at": order_at, "event": "Order Completed", "properties": {"revenue": 129.0}}),
        ]
        .iter()
        .enumerate()
        .map(|(n, v)| trace_event(v, n + 1).unwrap())
        .collect();
        simulate(&j, c.clone(), trace, i64::MAX / 2, &crate::EngineConfig::default())
    };
    let within = run("2026-12-02T09:00:00Z");
    assert!(within.iter().any(|l| l.text.starts_with("converted") && l.text.contains("value 129")), "{within:#?}");
    let too_late = run("2026-12-09T09:00:00Z");
    assert!(!too_late.iter().any(|l| l.text.starts_with("converted")), "8 days later is outside the 7-day window: {too_late:#?}");
}

#[test]
fn rule_merged_profiles_keep_one_position_per_journey() {
    use super::run::{Compiled, Input, on_input};
    use crate::{CustomerState, EngineConfig, apply_event, merge_into};
    use chorus_types::{CustomerId, EventInput, Identity, IdentityKind};
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/journeys/browse-abandon.yaml"))
        .unwrap()
        .replace("holdout: 10%", "holdout: 0%");
    let j = catalog_of(vec![Compiled::new(load_journey(&text, &Catalog::default()).unwrap(), 1).unwrap()]);
    let cfg = EngineConfig::default();
    let viewed = EventInput {
        message_id: "v".into(),
        name: "Product Viewed".into(),
        identities: vec![("user_id".into(), "x".into())],
        timestamp_ms: 1,
        ..Default::default()
    }
    .validate()
    .unwrap();
    let mk = |seq: u64| {
        let mut c = CustomerState::new(CustomerId::new(0, seq), seq as i64);
        c.attributes.0.insert("ltv".into(), serde_json::json!(900));
        c.identities.push(Identity { kind: IdentityKind::Email, value: format!("c{seq}@example.com") });
        c
    };
    let (mut a, mut b, mut lone) = (mk(1), mk(2), mk(3));
    for c in [&mut a, &mut b] {
        apply_event(c, &viewed, 1_000, &cfg);
        on_input(c, &Input::Event(&viewed), &j, 1_000, &cfg);
        assert_eq!(c.journeys.len(), 1);
    }
    merge_into(&mut a, &mut b, 2_000, &cfg);
    assert_eq!(a.journeys.len(), 1, "one position per journey after a merge");
    assert!(a.decisions.iter().any(|d| d.reason == "merged"), "{:?}", a.decisions);
    // A journey only the merged profile was in moves to the survivor.
    let mut fresh = mk(4);
    apply_event(&mut lone, &viewed, 1_000, &cfg);
    on_input(&mut lone, &Input::Event(&viewed), &j, 1_000, &cfg);
    let seq = lone.journeys[0].timer_seq;
    merge_into(&mut fresh, &mut lone, 2_000, &cfg);
    assert_eq!(fresh.journeys.len(), 1);
    assert_eq!(fresh.journeys[0].timer_seq, seq, "its pending timer still matches");
    assert!(fresh.timer_seq >= seq);
}
