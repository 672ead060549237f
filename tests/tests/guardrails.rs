//! Guardrails, consent and journey lifecycle on a live node with a manual clock
//! (issue "Marketing engine"): settings applied with chorusctl, quiet hours in the
//! customer's zone, a calendar-day cap, an SMS STOP reply cancelling a waiting send,
//! consent set by API with its ledger, and pause / resume / archive of a journey.

use chorus_tests::*;
use serde_json::json;
use std::time::Duration;

async fn captured(node: &Node, customer: &str) -> Vec<serde_json::Value> {
    let out = node.ctl(&["-o", "json", "messages", "tail", "--last", "1000", "--customer", customer]).await;
    out.ok();
    out.stdout.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

async fn wait_for_messages(node: &Node, customer: &str, n: usize) -> Vec<serde_json::Value> {
    wait_until(Duration::from_secs(30), &format!("{n} messages for {customer}"), || async {
        let m = captured(node, customer).await;
        if m.len() >= n { Ok(m) } else { Err(format!("{m:?}")) }
    })
    .await
}

/// The customer's decisions as (kind, reason) pairs.
async fn decisions(node: &Node, customer: &str) -> Vec<(String, String)> {
    let out = node.ctl(&["-o", "json", "profile", "explain", customer, "--limit", "500"]).await;
    out.ok();
    out.json()["decisions"].as_array().unwrap().iter().map(|d| (d["kind"].as_str().unwrap().to_string(), d["reason"].as_str().unwrap().to_string())).collect()
}

async fn wait_for_decision(node: &Node, customer: &str, kind: &str, reason_starts: &str) -> Vec<(String, String)> {
    wait_until(Duration::from_secs(30), &format!("{kind} decision for {customer}"), || async {
        let d = decisions(node, customer).await;
        if d.iter().any(|(k, r)| k == kind && r.starts_with(reason_starts)) { Ok(d) } else { Err(format!("{d:#?}")) }
    })
    .await
}

const PROMO: &str = "id: promo\nname: Evening promo\ncategory: marketing\npriority: 40\nentry:\n  event: Browsed\n  reentry: always\nsteps:\n  - id: text\n    send: { channel: sms, template: promo-sms }\n";
const CART: &str = "id: cart\nname: Cart reminder\ncategory: marketing\npriority: 90\nentry:\n  event: Cart Abandoned\n  reentry: always\nsteps:\n  - id: text\n    send: { channel: sms, template: cart-sms }\n";
const ONBOARDING: &str = "id: onboarding\nname: Onboarding\ncategory: marketing\nentry:\n  event: Signed Up\nsteps:\n  - id: settle\n    wait: 1h\n    next: hello\n  - id: hello\n    send: { channel: email, template: hello }\n";
const SETTINGS: &str =
    "timezone: UTC\ncaps:\n  - { name: sms-per-day, channels: [sms], max: 1, window: 1d, calendar: true }\nquiet_hours:\n  sms: 21:00-08:00\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_hours_caps_stop_replies_and_lifecycle_on_a_live_node() {
    let node = Node::start(NodeOpts::new("guardrails").shards(4).manual_clock()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };

    phase("bad settings are refused with their line; good ones apply to every shard");
    let bad = file("bad.yaml", "caps:\n  - { name: x, max: 1, window: 36h, calendar: true }\n");
    let out = node.ctl(&["settings", "apply", &bad]).await;
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("bad.yaml:2: caps[0].window: a calendar cap counts whole days"), "{}", out.stderr);
    let settings = file("settings.yaml", SETTINGS);
    node.ctl(&["settings", "apply", &settings]).await.ok();
    let shown = node.ctl(&["-o", "json", "settings", "show"]).await;
    shown.ok();
    assert_eq!(shown.json()["caps"][0]["name"], "sms-per-day");
    assert_eq!(shown.json()["quiet_hours"], json!({"sms": "21:00-08:00"}));

    let (promo, cart, onboarding) = (file("promo.yaml", PROMO), file("cart.yaml", CART), file("onboarding.yaml", ONBOARDING));
    node.apply_simple_templates(&[("promo-sms", "sms"), ("cart-sms", "sms"), ("hello", "email")]).await;
    node.ctl(&["journey", "apply", &promo, &cart, &onboarding]).await.ok();
    // 22:30 in New York on Thursday 2027-01-14 (or the same weekday and time a whole
    // number of 52-week steps later, when the test runs after it).
    let t0 = future_anchor(1_799_983_800_000, clock_now(&node).await); // 2027-01-15T03:30:00Z
    node.ctl(&["clock", "set", &t0.to_string()]).await.ok();

    phase("Ada (New York) browses at 22:30: the SMS waits for 08:00 her time");
    let resp = node
        .send(vec![
            identify("ada-1", &[("user_id", "ada"), ("phone", "+14155550123")], json!({"timezone": "America/New_York", "consent": {"sms": "opted_in"}})),
            track("ada-2", "Browsed", &[("user_id", "ada")], json!({})),
        ])
        .await;
    let ada = resp.results[0].customer_id.clone();
    wait_for_decision(&node, &ada, "deferred", "sms quiet hours 21:00–08:00 in America/New_York (profile)").await;
    assert!(captured(&node, &ada).await.is_empty());

    phase("Bob texts STOP while his SMS waits: it is cancelled at once");
    let resp = node
        .send(vec![
            identify("bob-1", &[("user_id", "bob"), ("phone", "+14155550124")], json!({"timezone": "America/New_York", "consent": {"sms": "opted_in"}})),
            track("bob-2", "Browsed", &[("user_id", "bob")], json!({})),
        ])
        .await;
    let bob = resp.results[0].customer_id.clone();
    wait_for_decision(&node, &bob, "deferred", "sms quiet hours").await;
    node.send(vec![track("bob-3", "sms.received", &[("phone", "+14155550124")], json!({"body": " stop "}))]).await;
    wait_for_decision(&node, &bob, "skipped", "sms: sms opted out").await;
    let consent = node.ctl(&["-o", "json", "profile", "consent", &bob]).await;
    consent.ok();
    let ledger = consent.json()["ledger"].as_array().unwrap().clone();
    assert_eq!(ledger.last().unwrap()["source"], "sms keyword");
    assert_eq!(ledger.last().unwrap()["evidence"], "keyword STOP in bob-3");
    assert_eq!(ledger.last().unwrap()["status"], "opted_out");

    phase("08:00 in New York: Ada's SMS goes (after the arbitration window: it takes the day's only SMS slot), Bob's does not");
    node.ctl(&["clock", "set", &(t0 + 34_200_000).to_string()]).await.ok(); // 13:00Z
    wait_for_decision(&node, &ada, "deferred", "arbitration: sms would take the last slot of a cap").await;
    node.ctl(&["clock", "advance", "1s"]).await.ok();
    let sent = wait_for_messages(&node, &ada, 1).await;
    assert_eq!(sent[0]["template"], "promo-sms");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(captured(&node, &bob).await.is_empty(), "Bob opted out");

    phase("the calendar-day SMS cap: Ada's cart reminder the same day is skipped");
    node.ctl(&["clock", "set", &(t0 + 48_600_000).to_string()]).await.ok(); // 17:00Z
    node.send(vec![track("ada-3", "Cart Abandoned", &[("user_id", "ada")], json!({}))]).await;
    wait_for_decision(&node, &ada, "skipped", "sms: capped by sms-per-day: at most 1 marketing on sms per 1 calendar day(s)").await;
    assert_eq!(captured(&node, &ada).await.len(), 1);
    let stats = node.ctl(&["-o", "json", "journey", "stats", "cart"]).await;
    let counters = stats.json()["counters"].as_array().unwrap().clone();
    assert!(counters.iter().any(|c| c["what"] == "skipped:capped" && c["count"] == 1), "{counters:?}");

    phase("consent set by API is in the ledger with its source and evidence");
    let out = node
        .ctl(&["-o", "json", "profile", "consent", "set", "user_id:bob", "--channel", "email", "--status", "opted_out", "--evidence", "support ticket 42"])
        .await;
    out.ok();
    let last = out.json()["ledger"].as_array().unwrap().last().unwrap().clone();
    assert_eq!((last["scope"].as_str(), last["source"].as_str(), last["status"].as_str()), (Some("channel:email"), Some("api"), Some("opted_out")));
    assert!(last["evidence"].as_str().unwrap().starts_with("support ticket 42"), "{last}");
    let text = node.ctl(&["profile", "consent", "user_id:bob"]).await;
    text.ok();
    assert!(text.stdout.contains("channel:sms") && text.stdout.contains("sms keyword") && text.stdout.contains("support ticket 42"), "{}", text.stdout);

    phase("pause holds customers at their next step; resume lets them go on");
    let resp = node
        .send(vec![identify("cy-1", &[("user_id", "cy"), ("email", "cy@example.com")], json!({})), track("cy-2", "Signed Up", &[("user_id", "cy")], json!({}))])
        .await;
    let cy = resp.results[0].customer_id.clone();
    wait_for_decision(&node, &cy, "entered", "event Signed Up").await;
    node.ctl(&["journey", "pause", "onboarding"]).await.ok();
    let list = node.ctl(&["-o", "json", "journey", "list"]).await;
    let states: Vec<(String, String)> = list.json()["journeys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| (j["id"].as_str().unwrap().to_string(), j["lifecycle"].as_str().unwrap().to_string()))
        .collect();
    assert!(states.contains(&("onboarding".into(), "paused".into())), "{states:?}");
    node.ctl(&["clock", "advance", "2h"]).await.ok();
    wait_for_decision(&node, &cy, "scheduled", "journey paused").await;
    // Nobody new enters a paused journey.
    let resp = node
        .send(vec![identify("di-1", &[("user_id", "di"), ("email", "di@example.com")], json!({})), track("di-2", "Signed Up", &[("user_id", "di")], json!({}))])
        .await;
    let di = resp.results[0].customer_id.clone();
    assert!(captured(&node, &cy).await.is_empty());
    node.ctl(&["journey", "resume", "onboarding"]).await.ok();
    let sent = wait_for_messages(&node, &cy, 1).await;
    assert_eq!(sent[0]["template"], "hello");
    assert!(!decisions(&node, &di).await.iter().any(|(k, _)| k == "entered"), "di signed up while the journey was paused");

    phase("archive: in-flight customers exit at their next step");
    node.send(vec![
        identify("ed-1", &[("user_id", "ed"), ("email", "ed@example.com")], json!({})),
        track("ed-2", "Signed Up", &[("user_id", "ed")], json!({})),
    ])
    .await;
    let ed = node.profile("user_id", "ed", 0).await.unwrap().customer_id;
    wait_for_decision(&node, &ed, "entered", "event Signed Up").await;
    node.ctl(&["journey", "archive", "onboarding"]).await.ok();
    node.ctl(&["clock", "advance", "2h"]).await.ok();
    wait_for_decision(&node, &ed, "exited", "journey archived").await;
    assert!(captured(&node, &ed).await.is_empty());
    let show = node.ctl(&["-o", "json", "journey", "show", "onboarding"]).await;
    show.ok();
    assert_eq!(show.json()["lifecycle"], "archived");
    assert_eq!(show.json()["versions"], json!([1]));
    assert_eq!(show.json()["definition"]["id"], "onboarding");

    phase("API sends get the same checks: over the day's SMS cap a marketing send is skipped, a transactional one goes");
    // 21:00Z (16:00 in New York), the day Ada already had her one marketing SMS.
    let api = |request: &'static str, category: &'static str, template: &'static str| {
        let node = &node;
        async move {
            node.ctl(&["messages", "send", "--to", "user_id:ada", "--channel", "sms", "--template", template, "--category", category, "--request-id", request])
                .await
                .ok();
        }
    };
    api("api-m1", "marketing", "promo-sms").await;
    wait_for_decision(&node, &ada, "skipped", "capped by sms-per-day: at most 1 marketing on sms per 1 calendar day(s)").await;
    api("api-t1", "transactional", "cart-sms").await;
    let sent = wait_for_messages(&node, &ada, 2).await;
    assert_eq!(sent[1]["template"], "cart-sms", "transactional sends ignore marketing caps");

    phase("a marketing API send in quiet hours waits for their end, then goes with its key");
    node.ctl(&["clock", "set", &(t0 + 86_400_000).to_string()]).await.ok(); // 22:30 in New York, the next day
    api("api-m2", "marketing", "promo-sms").await;
    wait_for_decision(&node, &ada, "deferred", "sms quiet hours 21:00–08:00 in America/New_York (profile)").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(captured(&node, &ada).await.len(), 2, "nothing goes in quiet hours");
    node.ctl(&["clock", "set", &(t0 + 86_400_000 + 34_200_000).to_string()]).await.ok(); // 08:00 in New York
    let sent = wait_for_messages(&node, &ada, 3).await;
    assert_eq!(sent[2]["template"], "promo-sms");
    assert!(sent[2]["idempotency_key"].as_str().is_some_and(|k| k.starts_with("api/api-m2/")), "{:?}", sent[2]);
}
