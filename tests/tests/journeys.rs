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
            identify("ada-1", &[("user_id", "ada"), ("email", "ada@example.com"), ("phone", "+14155550123")], json!({"ltv": 900, "consent": {"sms": "opted_in"}})),
            track("ada-2", "Product Viewed", &[("user_id", "ada")], json!({"sku": "A"})),
        ])
        .await;
    let ada = resp.results[0].customer_id.clone();
    assert_eq!(wait_for_messages(&node, &ada, 1).await, vec![("email".to_string(), "browse-recos".to_string())]);
    node.ctl(&["clock", "advance", "25h"]).await.ok();
    let sent = wait_for_messages(&node, &ada, 2).await;
    assert_eq!(sent[1], ("sms".to_string(), "direct-incentive".to_string()));

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

    phase("journey stats are merged across shards");
    let stats = node.ctl(&["-o", "json", "journey", "stats", "browse-abandon"]).await;
    stats.ok();
    let st = stats.json();
    assert_eq!(st["entered"].as_u64().unwrap() + st["holdout_entered"].as_u64().unwrap(), 2, "{st}");
    assert_eq!(st["converted"].as_u64().unwrap() + st["holdout_converted"].as_u64().unwrap(), 1, "{st}");
    let counters = st["counters"].as_array().unwrap();
    let count = |step: &str, what: &str| -> u64 {
        counters.iter().filter(|c| c["step"] == step && c["what"] == what).map(|c| c["count"].as_u64().unwrap()).sum()
    };
    assert_eq!(count("recos_email", "sent:email") + count("recos_email", "skipped_holdout"), 2, "{st}");
    if st["converted"] == 1 {
        assert_eq!(st["time_to_conversion"][0], json!({"bucket": "<1h", "count": 1, "mean_ms": 0.0}), "{st}");
    }
    let exits: Vec<(String, u64)> = st["exits"].as_array().unwrap().iter().map(|e| (e["reason"].as_str().unwrap().to_string(), e["count"].as_u64().unwrap())).collect();
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
    std::fs::write(&profile, r#"{"attributes": {"ltv": 900}, "identities": {"email": "ada@example.com", "phone": "+14155550123"}, "consent": {"sms": "opted_in"}}"#).unwrap();
    let sim = node.ctl(&["-o", "json", "journey", "simulate", BROWSE, "--events", trace.to_str().unwrap(), "--profile", profile.to_str().unwrap(), "--until", "2d"]).await;
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
