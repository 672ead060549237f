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
    let catalog = Catalog {
        templates: Some(["known".to_string()].into()),
        connected_channels: Some(["email".to_string()].into()),
        ..Catalog::default()
    };
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
    let e = one_error(&journey("  - id: w\n    wait_for:\n      branches:\n        - when: 'true'\n          next: done\n      on_timeout: done\n  - id: done\n    exit: {}\n"));
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
    let text = r#"{"id": "j", "category": "transactional", "entry": {"api": true}, "steps": [{"id": "a", "send": {"channel": "email", "template": "receipt"}}]}"#;
    let j = load_journey(text, &Catalog::default()).unwrap();
    assert_eq!(j.entry.trigger, Trigger::Api);
}
