//! Journeys on a live node (issue "Marketing engine", first slice): publish journey
//! files, drive customers with events and the manual clock, and check what is sent,
//! the decision log, and that an offline simulation of the same trace agrees.

use chorus_tests::*;
use serde_json::json;
use std::time::Duration;

const BROWSE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/journeys/browse-abandon.yaml");
const POST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/journeys/post-purchase.yaml");

async fn captured(node: &Node, customer: &str) -> Vec<(String, String)> {
    let out = node.ctl(&["-o", "json", "messages", "tail", "--last", "1000", "--customer", customer]).await;
    out.ok();
    out.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["channel"].as_str().unwrap().to_string(), v["template"].as_str().unwrap().to_string())
        })
        .collect()
}

async fn wait_for_messages(node: &Node, customer: &str, n: usize) -> Vec<(String, String)> {
    wait_until(Duration::from_secs(30), &format!("{n} messages for {customer}"), || async {
        let m = captured(node, customer).await;
        if m.len() >= n { Ok(m) } else { Err(format!("{m:?}")) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browse_abandon_and_post_purchase_run_on_a_live_node() {
    let node = Node::start(NodeOpts::new("journeys").shards(8).manual_clock()).await;
    // The manual clock starts at the real time; move it to the next 14:00 UTC (09:00 in
    // New York) so the sends below never fall in the default quiet hours, whenever the
    // test runs.
    let now = clock_now(&node).await;
    const DAY_MS: i64 = 86_400_000;
    let morning = (now.div_euclid(DAY_MS) + 1) * DAY_MS + 14 * 3_600_000;
    node.admin().await.clock(v1::ClockRequest { op: Some(v1::clock_request::Op::SetMs(morning)) }).await.unwrap();
    phase("a journey whose templates are not on the node is refused with its line");
    let out = node.ctl(&["journey", "apply", POST]).await;
    assert_eq!(out.code(), Some(1));
    assert!(out.stderr.contains("unknown template \"order-thanks\""), "{}", out.stderr);
    node.apply_example_templates().await;
    phase("a journey that triggers an unknown journey is refused with its line");
    let out = node.ctl(&["journey", "apply", BROWSE]).await;
    assert_eq!(out.code(), Some(1));
    assert!(out.stderr.contains("on_goal.trigger: unknown journey \"post-purchase\""), "{}", out.stderr);
    phase("publish both journeys");
    let out = node.ctl(&["-o", "json", "journey", "apply", POST, BROWSE]).await;
    out.ok();
    assert_eq!(out.json()[1]["version"], 1);
    let list = node.ctl(&["-o", "json", "journey", "list"]).await;
    assert_eq!(list.json()["journeys"].as_array().unwrap().len(), 2);

    phase("Ada browses and never opens: email now, SMS after the 24 h timeout");
    let resp = node
        .send(vec![
            identify(
                "ada-1",
                &[("user_id", "ada"), ("email", "ada@example.com"), ("phone", "+14155550123")],
                json!({"ltv": 900, "consent": {"sms": "opted_in"}}),
            ),
            track("ada-2", "Product Viewed", &[("user_id", "ada")], json!({"sku": "A"})),
        ])
        .await;
    let ada = resp.results[0].customer_id.clone();
    assert_eq!(wait_for_messages(&node, &ada, 1).await, vec![("email".to_string(), "browse-recos".to_string())]);
    node.ctl(&["clock", "advance", "25h"]).await.ok();
    let sent = wait_for_messages(&node, &ada, 2).await;
    assert_eq!(sent[1], ("sms".to_string(), "direct-incentive".to_string()));
    phase("time travel fired the 24 h timeout at its due time (not an hour late at the clock's new time), and /metrics says so");
    let metrics = http_request(node.http_addr(), "GET", "/metrics", &[], b"").await.text();
    let line =
        |prefix: &str| -> Vec<u64> { metrics.lines().filter(|l| l.starts_with(prefix)).map(|l| l.rsplit(' ').next().unwrap().parse().unwrap()).collect() };
    assert_eq!(line("chorus_timer_fire_lateness_ms_count "), vec![1], "{metrics}");
    assert_eq!(line("chorus_timer_fire_lateness_ms_sum "), vec![0], "{metrics}");
    assert_eq!(line("chorus_timer_fire_lateness_ms_bucket{le=\"60000\"}"), vec![1], "{metrics}");
    assert_eq!(line("chorus_timer_fire_lateness_ms_bucket{le=\"+Inf\"}"), vec![1], "{metrics}");
    assert_eq!(line("chorus_shard_timer_lateness_max_ms{").iter().max(), Some(&0), "{metrics}");
    assert_eq!(line("chorus_shard_pending_timers{").iter().sum::<u64>(), 0, "Ada's journey ended: {metrics}");

    phase("Bob browses and buys mid-wait: exits, converts, enters post-purchase");
    let resp = node
        .send(vec![
            identify("bob-1", &[("user_id", "bob"), ("email", "bob@example.com")], json!({"ltv": 700})),
            track("bob-2", "Product Viewed", &[("user_id", "bob")], json!({"sku": "B"})),
        ])
        .await;
    let bob = resp.results[0].customer_id.clone();
    wait_for_messages(&node, &bob, 1).await;
    node.send(vec![track("bob-3", "Order Completed", &[("user_id", "bob")], json!({"revenue": 250.0}))]).await;
    let sent = wait_for_messages(&node, &bob, 2).await;
    assert_eq!(sent[1], ("email".to_string(), "order-thanks".to_string()));
    node.ctl(&["clock", "advance", "49h"]).await.ok();
    let sent = wait_for_messages(&node, &bob, 3).await;
    assert_eq!(sent[2], ("email".to_string(), "review-request".to_string()), "no SMS for Bob: he converted");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(captured(&node, &bob).await.len(), 3);
    let explain = node.ctl(&["-o", "json", "profile", "explain", &bob]).await;
    let kinds: Vec<String> = explain.json()["decisions"].as_array().unwrap().iter().map(|d| d["kind"].as_str().unwrap().to_string()).collect();
    for k in ["entered", "sent", "exited", "converted"] {
        assert!(kinds.contains(&k.to_string()), "{k} missing from {kinds:?}");
    }
    // Filtered by journey, the journey's sends are there too (they name it in the reason).
    let about = node.ctl(&["-o", "json", "profile", "explain", &bob, "--journey", "browse-abandon"]).await;
    about.ok();
    let about = about.json();
    let about: Vec<(&str, &str)> =
        about["decisions"].as_array().unwrap().iter().map(|d| (d["kind"].as_str().unwrap(), d["reason"].as_str().unwrap())).collect();
    assert!(about.contains(&("sent", "journey browse-abandon")), "{about:?}");
    assert!(about.iter().any(|(k, _)| *k == "entered") && about.iter().any(|(k, _)| *k == "exited"), "{about:?}");
    assert!(!about.contains(&("sent", "journey post-purchase")), "only this journey's decisions: {about:?}");

    phase("journey stats are merged across shards");
    let stats = node.ctl(&["-o", "json", "journey", "stats", "browse-abandon"]).await;
    stats.ok();
    let st = stats.json();
    assert_eq!(st["entered"].as_u64().unwrap() + st["holdout_entered"].as_u64().unwrap(), 2, "{st}");
    assert_eq!(st["converted"].as_u64().unwrap() + st["holdout_converted"].as_u64().unwrap(), 1, "{st}");
    let counters = st["counters"].as_array().unwrap();
    let count =
        |step: &str, what: &str| -> u64 { counters.iter().filter(|c| c["step"] == step && c["what"] == what).map(|c| c["count"].as_u64().unwrap()).sum() };
    assert_eq!(count("recos_email", "sent:email") + count("recos_email", "skipped_holdout"), 2, "{st}");
    if st["converted"] == 1 {
        assert_eq!(st["time_to_conversion"][0], json!({"bucket": "<1h", "count": 1, "mean_ms": 0.0}), "{st}");
    }
    let exits: Vec<(String, u64)> =
        st["exits"].as_array().unwrap().iter().map(|e| (e["reason"].as_str().unwrap().to_string(), e["count"].as_u64().unwrap())).collect();
    assert!(exits.contains(&("event Order Completed".to_string(), 1)), "{st}");
    assert!(exits.contains(&("completed".to_string(), 1)), "{st}");
    let paths: Vec<&str> = st["top_paths"].as_array().unwrap().iter().map(|p| p["path"].as_str().unwrap()).collect();
    assert!(paths.contains(&"recos_email>wait_engagement>sms_incentive"), "{st}");
    assert!(paths.contains(&"recos_email>wait_engagement"), "Bob left mid-wait: {st}");
    let missing = node.ctl(&["journey", "stats", "no-such-journey"]).await;
    assert_eq!(missing.code(), Some(1));
    assert!(missing.stderr.contains("no journey \"no-such-journey\""), "{}", missing.stderr);

    phase("a simulation of Ada's trace agrees with the live run");
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.ndjson");
    std::fs::write(&trace, "{\"at\": \"2026-12-01T10:00:00Z\", \"event\": \"Product Viewed\", \"properties\": {\"sku\": \"A\"}}\n").unwrap();
    let profile = dir.path().join("ada.json");
    std::fs::write(
        &profile,
        r#"{"attributes": {"ltv": 900}, "identities": {"email": "ada@example.com", "phone": "+14155550123"}, "consent": {"sms": "opted_in"}}"#,
    )
    .unwrap();
    let sim = node
        .ctl(&["-o", "json", "journey", "simulate", BROWSE, "--events", trace.to_str().unwrap(), "--profile", profile.to_str().unwrap(), "--until", "2d"])
        .await;
    sim.ok();
    let simulated: Vec<(String, String)> = sim
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "send")
        .map(|v| {
            let t = v["text"].as_str().unwrap().to_string();
            let mut parts = t.split_whitespace();
            (parts.next().unwrap().to_string(), parts.next().unwrap().to_string())
        })
        .collect();
    assert_eq!(simulated, captured(&node, &ada).await, "simulation and live run send the same messages");
}

/// The customer's decisions as (kind, reason) pairs.
async fn decisions(node: &Node, customer: &str) -> Vec<(String, String)> {
    let out = node.ctl(&["-o", "json", "profile", "explain", customer, "--limit", "500"]).await;
    out.ok();
    out.json()["decisions"].as_array().unwrap().iter().map(|d| (d["kind"].as_str().unwrap().to_string(), d["reason"].as_str().unwrap().to_string())).collect()
}

async fn has_decision(node: &Node, customer: &str, kind: &str, reason_starts: &str) -> bool {
    decisions(node, customer).await.iter().any(|(k, r)| k == kind && r.starts_with(reason_starts))
}

async fn wait_for_decision(node: &Node, customer: &str, kind: &str, reason_starts: &str) {
    wait_until(Duration::from_secs(30), &format!("{kind} {reason_starts:?} for {customer}"), || async {
        if has_decision(node, customer, kind, reason_starts).await { Ok(()) } else { Err(format!("{:#?}", decisions(node, customer).await)) }
    })
    .await
}

fn shard_of(customer_id: &str) -> u64 {
    u64::from_str_radix(&customer_id["cu_".len()..], 16).unwrap() >> 48
}

fn msg(channel: &str, template: &str) -> (String, String) {
    (channel.to_string(), template.to_string())
}

/// SPEC §6's browse-abandon journey with customers taking every branch: clicked,
/// opened only, no open, purchase mid-wait, capped, quiet hours, no SMS consent, STOP
/// reply, and merged mid-journey (into a customer of another shard).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browse_abandon_every_branch_on_a_live_node() {
    let node = Node::start(NodeOpts::new("journeys-branches").shards(8).manual_clock()).await;
    let dir = tempfile::tempdir().unwrap();
    // No holdout here: every customer's path is asserted.
    let browse = dir.path().join("browse-abandon.yaml");
    std::fs::write(&browse, std::fs::read_to_string(BROWSE).unwrap().replace("holdout: 10%", "holdout: 0%")).unwrap();
    let settings = dir.path().join("settings.yaml");
    std::fs::write(&settings, "caps:\n  - { name: sms-daily, channels: [sms], max: 1, window: 24h }\n").unwrap();
    node.ctl(&["settings", "apply", settings.to_str().unwrap()]).await.ok();
    node.apply_example_templates().await;
    node.ctl(&["journey", "apply", POST, browse.to_str().unwrap()]).await.ok();
    let t0 = future_anchor(1_799_938_800_000, clock_now(&node).await); // 2027-01-14T15:00:00Z
    node.ctl(&["clock", "set", &t0.to_string()]).await.ok();

    phase("nine customers browse");
    let who = ["clicker", "opener", "silent", "buyer", "capped", "night", "noconsent", "stopper"];
    let mut events = Vec::new();
    for (i, name) in who.iter().enumerate() {
        let tz = if *name == "night" { "Asia/Tokyo" } else { "UTC" };
        let mut traits = json!({"ltv": 900, "timezone": tz});
        if !matches!(*name, "noconsent") {
            traits["consent"] = json!({"sms": "opted_in"});
        }
        let phone = format!("+1415555{:04}", 100 + i);
        events.push(identify(&format!("{name}-id"), &[("user_id", name), ("email", &format!("{name}@example.com")), ("phone", &phone)], traits));
        events.push(track(&format!("{name}-view"), "Product Viewed", &[("user_id", name)], json!({"sku": "A"})));
    }
    // The merged story: B browses anonymously with an email; A (a user in another
    // shard, not in the journey) logs in on B's device later.
    events.push(identify("b-id", &[("anonymous_id", "anon-b"), ("email", "b@example.com")], json!({"ltv": 900, "timezone": "UTC"})));
    let resp = node.send(events).await;
    let id = |n: usize| resp.results[n * 2].customer_id.clone();
    let c: std::collections::HashMap<&str, String> = who.iter().enumerate().map(|(i, n)| (*n, id(i))).collect();
    let b = resp.results[who.len() * 2].customer_id.clone();
    // B's anonymous id is indexed in its own shard by a cross-shard claim: browse once
    // it resolves to B.
    wait_until(Duration::from_secs(30), "anon-b resolves to B", || async {
        match node.profile("anonymous_id", "anon-b", 0).await {
            Ok(p) if p.customer_id == b => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    node.send(vec![track("b-view", "Product Viewed", &[("anonymous_id", "anon-b")], json!({"sku": "B"}))]).await;
    for (name, cid) in &c {
        assert_eq!(wait_for_messages(&node, cid, 1).await, vec![msg("email", "browse-recos")], "{name}");
    }
    wait_for_messages(&node, &b, 1).await;
    let mut a_user = String::new();
    let mut a = String::new();
    for n in 0..64 {
        let user = format!("alex-{n}");
        let r = node
            .send(vec![identify(
                &format!("{user}-id"),
                &[("user_id", &user), ("phone", "+14155559999")],
                json!({"ltv": 100, "timezone": "UTC", "consent": {"sms": "opted_in"}}),
            )])
            .await;
        if shard_of(&r.results[0].customer_id) != shard_of(&b) {
            a_user = user;
            a = r.results[0].customer_id.clone();
            break;
        }
    }
    assert!(!a.is_empty(), "a user id homed in another shard than {b}");

    phase("an hour later: a click, an open, a purchase, a STOP reply");
    node.ctl(&["clock", "advance", "1h"]).await.ok();
    let at = |s: &str| json!({"journey": "browse-abandon", "step": s});
    node.send(vec![
        track("clicker-click", "email.clicked", &[("user_id", "clicker")], at("recos_email")),
        track("opener-open", "email.opened", &[("user_id", "opener")], at("recos_email")),
        track("buyer-buy", "Order Completed", &[("user_id", "buyer")], json!({"revenue": 120.0})),
        track("stopper-stop", "sms.received", &[("phone", "+14155550107")], json!({"body": "STOP"})),
    ])
    .await;
    assert_eq!(wait_for_messages(&node, &c["clicker"], 2).await[1], msg("webhook", "meta-retargeting-add"), "clicked → retarget");
    assert_eq!(wait_for_messages(&node, &c["opener"], 2).await[1], msg("email", "tighter-benefit"), "opened only → push, no token → email fallback");
    assert_eq!(wait_for_messages(&node, &c["buyer"], 2).await[1], msg("email", "order-thanks"), "purchase mid-wait → exit, convert, post-purchase");
    wait_for_decision(&node, &c["stopper"], "consent.changed", "opted_out").await;
    wait_for_decision(&node, &c["opener"], "fallback", "push: no valid push token").await;

    phase("at 23 h: a marketing SMS for `capped`, and Alex logs in on B's device (cross-shard merge)");
    node.ctl(&["clock", "advance", "22h"]).await.ok();
    node.ctl(&["messages", "send", "--to", "user_id:capped", "--channel", "sms", "--template", "flash-sale", "--request-id", "flash-1"]).await.ok();
    assert_eq!(wait_for_messages(&node, &c["capped"], 2).await[1], msg("sms", "flash-sale"));
    node.send(vec![identify("alex-login", &[("user_id", &a_user), ("anonymous_id", "anon-b")], json!({}))]).await;
    wait_for_decision(&node, &a, "merged", "identity link").await;

    phase("24 h: the wait times out for everyone still waiting");
    node.ctl(&["clock", "advance", "1h"]).await.ok();
    // The day's only SMS slot: sends wait out the 1 s arbitration window, then go.
    wait_for_decision(&node, &c["silent"], "deferred", "arbitration").await;
    // Alex's step runs when B's timer, forwarded from B's shard, arrives: wait for it
    // before the clock moves on.
    wait_for_decision(&node, &a, "deferred", "arbitration").await;
    node.ctl(&["clock", "advance", "2s"]).await.ok();
    assert_eq!(wait_for_messages(&node, &c["silent"], 2).await[1], msg("sms", "direct-incentive"), "no open → SMS");
    assert_eq!(wait_for_messages(&node, &a, 1).await, vec![msg("sms", "direct-incentive")], "B's journey went on as Alex's, its timer forwarded across shards");
    wait_for_decision(&node, &c["noconsent"], "skipped", "sms: no sms consent").await;
    wait_for_decision(&node, &c["stopper"], "skipped", "sms: sms opted out").await;
    wait_for_decision(&node, &c["capped"], "deferred", "capped by sms-daily").await;
    wait_for_decision(&node, &c["night"], "deferred", "sms quiet hours 21:00–08:00 in Asia/Tokyo (profile)").await;
    assert_eq!(captured(&node, &c["night"]).await.len(), 1);
    assert_eq!(captured(&node, &c["capped"]).await.len(), 2);

    phase("08:00 in Tokyo: the night customer's SMS goes");
    node.ctl(&["clock", "advance", "8h"]).await.ok();
    wait_for_decision(&node, &c["night"], "deferred", "arbitration").await;
    node.ctl(&["clock", "advance", "2s"]).await.ok();
    assert_eq!(wait_for_messages(&node, &c["night"], 2).await[1], msg("sms", "direct-incentive"), "quiet hours → deferred to 08:00 local");

    phase("47 h: the capped customer's SMS goes once the earlier one leaves the 24 h window");
    node.ctl(&["clock", "advance", "15h"]).await.ok();
    wait_for_decision(&node, &c["capped"], "deferred", "arbitration").await;
    node.ctl(&["clock", "advance", "2s"]).await.ok();
    assert_eq!(wait_for_messages(&node, &c["capped"], 3).await[2], msg("sms", "direct-incentive"), "capped → deferred, then sent");

    phase("nobody got anything twice");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let expected = [("clicker", 2), ("opener", 2), ("silent", 2), ("buyer", 2), ("capped", 3), ("night", 2), ("noconsent", 1), ("stopper", 1)];
    for (name, n) in expected {
        let got = captured(&node, &c[name]).await;
        assert_eq!(got.len(), n, "{name}: {got:?}");
    }
    assert_eq!(captured(&node, &a).await.len(), 1);
    assert_eq!(captured(&node, &b).await.len(), 1);
}

const TWO_WAITS: &str = "id: two-waits\nname: Two waits\ncategory: transactional\nentry:\n  event: Signed Up\nsteps:\n  - id: first_wait\n    wait: 1h\n    next: first\n  - id: first\n    send: { channel: email, template: hello }\n    next: second_wait\n  - id: second_wait\n    wait: 1h\n    next: second\n  - id: second\n    send: { channel: email, template: again }\n";

/// One `clock advance 3h` over `wait 1h → send → wait 1h → send` fires each wait at its
/// own due time (the second one created by the first), as `journey simulate` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_advance_fires_every_timer_at_its_own_due_time() {
    let node = Node::start(NodeOpts::new("journeys-time-travel").shards(4).manual_clock()).await;
    node.apply_simple_templates(&[("hello", "email"), ("again", "email")]).await;
    let dir = tempfile::tempdir().unwrap();
    let journey = dir.path().join("two-waits.yaml");
    std::fs::write(&journey, TWO_WAITS).unwrap();
    node.ctl(&["journey", "apply", journey.to_str().unwrap()]).await.ok();
    let t0 = clock_now(&node).await;

    phase("a customer signs up, then one clock advance of 3h");
    let resp = node
        .send(vec![identify("tt-1", &[("user_id", "tt"), ("email", "tt@example.com")], json!({})), track("tt-2", "Signed Up", &[("user_id", "tt")], json!({}))])
        .await;
    let tt = resp.results[0].customer_id.clone();
    let entered_at = {
        let out = node.ctl(&["-o", "json", "profile", "explain", &tt, "--journey", "two-waits"]).await;
        out.ok();
        let j = out.json();
        j["decisions"].as_array().unwrap().iter().find(|d| d["kind"] == "entered").map(|d| d["at_ms"].as_i64().unwrap()).expect("entered")
    };
    assert!(entered_at >= t0);
    let out = node.ctl(&["-o", "json", "clock", "advance", "3h"]).await;
    out.ok();

    phase("both messages were decided by the time the advance returned, each at its own time");
    let out = node.ctl(&["-o", "json", "profile", "explain", &tt, "--journey", "two-waits"]).await;
    out.ok();
    let j = out.json();
    let sent: Vec<i64> = j["decisions"].as_array().unwrap().iter().filter(|d| d["kind"] == "sent").map(|d| d["at_ms"].as_i64().unwrap()).collect();
    assert_eq!(sent, vec![entered_at + 3_600_000, entered_at + 7_200_000], "{j}");
    let messages = wait_for_messages(&node, &tt, 2).await;
    assert_eq!(messages, vec![msg("email", "hello"), msg("email", "again")]);

    phase("an open of the last message after the customer finished the journey reaches journey stats");
    node.send(vec![track("tt-3", "email.opened", &[("user_id", "tt")], json!({"journey": "two-waits", "step": "second"}))]).await;
    let stats = node.ctl(&["-o", "json", "journey", "stats", "two-waits"]).await;
    stats.ok();
    let st = stats.json();
    let counters = st["counters"].as_array().unwrap();
    assert!(counters.iter().any(|c| c["step"] == "second" && c["what"] == "engaged:opened" && c["count"] == 1), "{st}");

    phase("the simulation of the same trace sends at the same offsets");
    let trace = dir.path().join("trace.ndjson");
    std::fs::write(&trace, "{\"at\": \"2026-12-01T10:00:00Z\", \"event\": \"Signed Up\"}\n").unwrap();
    let profile = dir.path().join("tt.json");
    std::fs::write(&profile, r#"{"identities": {"email": "tt@example.com"}}"#).unwrap();
    let sim = node
        .ctl(&[
            "-o",
            "json",
            "journey",
            "simulate",
            journey.to_str().unwrap(),
            "--events",
            trace.to_str().unwrap(),
            "--profile",
            profile.to_str().unwrap(),
            "--until",
            "3h",
        ])
        .await;
    sim.ok();
    let start: i64 = 1_796_119_200_000; // 2026-12-01T10:00:00Z
    let simulated: Vec<i64> = sim
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "send")
        .map(|v| v["at_ms"].as_i64().unwrap() - start)
        .collect();
    assert_eq!(simulated, sent.iter().map(|t| t - entered_at).collect::<Vec<_>>(), "{}", sim.stdout);
}
