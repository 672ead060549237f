//! Audiences and the other journey entries on a live node (issue "Marketing engine"):
//! an audience applied over existing customers (backfill), kept up to date on every
//! change, counted by scatter-gather, previewed; journeys entered when a customer joins
//! an audience, on a schedule for an audience, and by API.

use chorus_tests::*;
use serde_json::json;
use std::time::Duration;

async fn templates(node: &Node, customer: &str) -> Vec<String> {
    let out = node.ctl(&["-o", "json", "messages", "tail", "--last", "1000", "--customer", customer]).await;
    out.ok();
    out.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["template"].as_str().unwrap().to_string())
        .collect()
}

async fn wait_for_templates(node: &Node, customer: &str, want: &[&str]) {
    wait_until(Duration::from_secs(30), &format!("{want:?} for {customer}"), || async {
        let got = templates(node, customer).await;
        if got == want { Ok(()) } else { Err(format!("{got:?}")) }
    })
    .await
}

async fn count(node: &Node, audience: &str) -> u64 {
    let out = node.ctl(&["-o", "json", "audience", "count", audience]).await;
    out.ok();
    out.json()["count"].as_u64().unwrap()
}

async fn wait_for_count(node: &Node, audience: &str, n: u64) {
    wait_until(Duration::from_secs(30), &format!("{n} in {audience}"), || async {
        let c = count(node, audience).await;
        if c == n { Ok(()) } else { Err(format!("{c}")) }
    })
    .await
}

const AUDIENCE: &str =
    "id: high-value-browsers\nname: High-value browsers\ncondition: 'profile.ltv > 500 && events.count(\"Product Viewed\", duration(\"7d\")) >= 2'\n";
const VIP_WELCOME: &str = "id: vip-welcome\ncategory: marketing\nentry:\n  audience: high-value-browsers\nsteps:\n  - id: hello\n    send: { channel: email, template: vip-welcome }\n";
const WEEKLY: &str = "id: weekly-picks\ncategory: marketing\nentry:\n  schedule: { audience: high-value-browsers, every: 24h }\n  reentry: always\nsteps:\n  - id: picks\n    send: { channel: email, template: weekly-picks }\n";
const WINBACK: &str = "id: winback\ncategory: marketing\nentry:\n  api: true\nsteps:\n  - id: offer\n    send: { channel: email, template: winback }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audiences_and_audience_schedule_and_api_entries_on_a_live_node() {
    let node = Node::start(NodeOpts::new("audiences").shards(4).manual_clock()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let person = |id: &str, ltv: u32, views: usize| {
        let mut events = vec![identify(&format!("{id}-0"), &[("user_id", id), ("email", &format!("{id}@example.com"))], json!({"ltv": ltv}))];
        for n in 0..views {
            events.push(track(&format!("{id}-v{n}"), "Product Viewed", &[("user_id", id)], json!({"sku": n})));
        }
        events
    };

    phase("customers exist before the audience does");
    let mut events = person("ada", 900, 2);
    events.extend(person("bob", 900, 1));
    events.extend(person("cy", 100, 3));
    node.send(events).await;

    phase("a bad audience is refused with its line");
    let bad = file("bad.yaml", "id: broken\ncondition: 'profile.ltv >'\n");
    let out = node.ctl(&["audience", "apply", &bad]).await;
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("bad.yaml:line 2: condition: the condition does not compile"), "{}", out.stderr);

    phase("applying the audience evaluates every existing customer before it returns");
    let aud = file("audience.yaml", AUDIENCE);
    let out = node.ctl(&["-o", "json", "audience", "apply", &aud]).await;
    out.ok();
    assert_eq!(out.json()[0]["evaluated"], 3);
    assert_eq!(out.json()[0]["members"], 1);
    assert_eq!(count(&node, "high-value-browsers").await, 1);
    let preview = node.ctl(&["-o", "json", "audience", "preview", "high-value-browsers"]).await;
    preview.ok();
    let members = preview.json()["members"].as_array().unwrap().clone();
    assert_eq!(members.len(), 1);
    assert!(members[0]["identities"].as_array().unwrap().contains(&json!({"kind": "email", "value": "ada@example.com"})), "{members:?}");

    phase("journeys: on entering the audience, on a schedule for it, and by API");
    let (vip, weekly, winback) = (file("vip.yaml", VIP_WELCOME), file("weekly.yaml", WEEKLY), file("winback.yaml", WINBACK));
    node.apply_simple_templates(&[("vip-welcome", "email"), ("weekly-picks", "email"), ("winback", "email")]).await;
    node.ctl(&["journey", "apply", &vip, &weekly, &winback]).await.ok();
    let ada = node.profile("user_id", "ada", 0).await.unwrap().customer_id;
    let bob = node.profile("user_id", "bob", 0).await.unwrap().customer_id;
    let cy = node.profile("user_id", "cy", 0).await.unwrap().customer_id;
    // The schedule runs at once for the members of the day: Ada.
    wait_for_templates(&node, &ada, &["weekly-picks"]).await;

    phase("membership is incremental: Bob's second view makes him a member and enters him");
    node.send(vec![track("bob-v9", "Product Viewed", &[("user_id", "bob")], json!({}))]).await;
    wait_for_templates(&node, &bob, &["vip-welcome"]).await;
    assert_eq!(count(&node, "high-value-browsers").await, 2);
    let explain = node.ctl(&["-o", "json", "profile", "explain", &bob]).await;
    assert!(
        explain.json()["decisions"].as_array().unwrap().iter().any(|d| d["kind"] == "audience.entered" && d["reason"] == "audience high-value-browsers"),
        "{}",
        explain.stdout
    );

    phase("and leaving: Cy joins when her value rises and leaves when it falls");
    node.send(vec![identify("cy-1", &[("user_id", "cy")], json!({"ltv": 800}))]).await;
    wait_for_count(&node, "high-value-browsers", 3).await;
    node.send(vec![identify("cy-2", &[("user_id", "cy")], json!({"ltv": 50}))]).await;
    wait_for_count(&node, "high-value-browsers", 2).await;
    let list = node.ctl(&["-o", "json", "audience", "list"]).await;
    assert_eq!(list.json()["audiences"][0]["members"], 2);

    phase("the next day the schedule runs again for everyone in the audience");
    node.ctl(&["clock", "advance", "24h"]).await.ok();
    wait_for_templates(&node, &ada, &["weekly-picks", "weekly-picks"]).await;
    wait_for_templates(&node, &bob, &["vip-welcome", "weekly-picks"]).await;

    phase("API entry: enroll Cy in winback; a journey that does not enter by API refuses");
    let out = node.ctl(&["-o", "json", "journey", "enroll", "winback", "user_id:cy", "--properties", "{\"offer\": \"10%\"}"]).await;
    out.ok();
    assert_eq!(out.json()["customer_id"], cy);
    let cy_templates = wait_until(Duration::from_secs(30), "cy's winback", || async {
        let t = templates(&node, &cy).await;
        if t.contains(&"winback".to_string()) { Ok(t) } else { Err(format!("{t:?}")) }
    })
    .await;
    assert!(cy_templates.contains(&"vip-welcome".to_string()), "Cy was briefly a member: {cy_templates:?}");
    let out = node.ctl(&["journey", "enroll", "vip-welcome", "user_id:cy"]).await;
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("not by API"), "{}", out.stderr);
    let out = node.ctl(&["audience", "count", "nobody"]).await;
    assert!(out.stderr.contains("no audience \"nobody\""), "{}", out.stderr);
}
