//! Supervision and quarantine with a real node run from a config file: a customer
//! actor that panics on every attempt (the `fault_panic_event` testing hook) is
//! restarted, then quarantined and reported, while its shard keeps serving everybody
//! else; the node never crashes, and the quarantine survives a restart.

use chorus_tests::v1::EventStatus;
use chorus_tests::*;
use serde_json::json;
use std::time::Duration;

const CONFIG: &str = r#"
[shards]
fault_panic_event = "Boom"
"#;
const SHARDS: u32 = 2;
const BYSTANDERS: usize = 20;

fn bystander(i: usize) -> String {
    format!("calm-{i}")
}

async fn quarantined_per_shard(node: &Node) -> Result<Vec<u64>, String> {
    let out = node.ctl(&["-o", "json", "shard", "list"]).await;
    if !out.status.success() {
        return Err(out.stderr);
    }
    Ok(out.json()["shards"].as_array().ok_or("no shards")?.iter().map(|s| s["quarantined"].as_u64().unwrap_or(u64::MAX)).collect())
}

#[tokio::test]
async fn a_panicking_customer_is_quarantined_and_its_shard_keeps_serving() {
    let mut node = Node::start(NodeOpts::new("supervision").shards(SHARDS).config(CONFIG)).await;

    phase("the victim and the bystanders exist");
    let mut first = vec![identify("victim-1", &[("user_id", "victim")], json!({"plan": "pro"}))];
    first.extend((0..BYSTANDERS).map(|i| track(&format!("calm-{i}-1"), "Product Viewed", &[("user_id", &bystander(i))], json!({}))));
    let resp = node.send(first).await;
    assert!(resp.results.iter().all(|r| status_of(r) == EventStatus::Accepted), "{:?}", resp.results);
    let victim = node.profile("user_id", "victim", 0).await.expect("victim exists");
    let victim_shard = victim.shard;
    let mut same_shard = Vec::new();
    for i in 0..BYSTANDERS {
        let p = node.profile("user_id", &bystander(i), 0).await.expect("bystander exists");
        if p.shard == victim_shard {
            same_shard.push(i);
        }
    }
    assert!(!same_shard.is_empty(), "some bystanders share the victim's shard {victim_shard}");
    eprintln!("victim {} in shard {victim_shard}; bystanders in that shard: {same_shard:?}", victim.customer_id);

    phase("a Boom event for the victim, in one batch with everybody else's events");
    let mut batch = vec![track("victim-boom", "Boom", &[("user_id", "victim")], json!({}))];
    batch.extend((0..BYSTANDERS).map(|i| track(&format!("calm-{i}-2"), "Product Viewed", &[("user_id", &bystander(i))], json!({}))));
    let resp = node.send(batch).await;
    for r in &resp.results {
        assert_eq!(status_of(r), EventStatus::Accepted, "committed events are acknowledged: {}", show_result(r));
    }

    phase("the shard reports one quarantined customer; the node is alive");
    let per_shard = wait_until(Duration::from_secs(30), "shard list shows the victim's shard with quarantined=1", || async {
        let q = quarantined_per_shard(&node).await?;
        let want: Vec<u64> = (0..SHARDS).map(|s| u64::from(s == victim_shard)).collect();
        if q == want { Ok(q) } else { Err(format!("quarantined per shard {q:?}, want {want:?}")) }
    })
    .await;
    eprintln!("quarantined per shard: {per_shard:?}");
    assert!(node.is_running(), "the node survived the panics; log:\n{}", node.log_tail(40));
    let explain = node.ctl(&["-o", "json", "profile", "explain", "user_id:victim"]).await;
    explain.ok();
    let decisions = explain.json()["decisions"].as_array().expect("decisions").clone();
    assert!(decisions.iter().any(|d| d["kind"] == "quarantined"), "explain shows the quarantine: {decisions:?}");

    phase("everybody else is served, the victim's shard included; the victim's inputs are parked");
    let mut batch: Vec<v1::Event> =
        (0..BYSTANDERS).map(|i| track(&format!("calm-{i}-3"), "Product Viewed", &[("user_id", &bystander(i))], json!({}))).collect();
    batch.push(track("victim-after", "Product Viewed", &[("user_id", "victim")], json!({})));
    let resp = node.send(batch).await;
    for r in &resp.results {
        assert_eq!(status_of(r), EventStatus::Accepted, "{}", show_result(r));
    }
    for i in 0..BYSTANDERS {
        let p = node.profile("user_id", &bystander(i), 5).await.expect("bystander");
        assert_eq!(p.event_count, 3, "bystander {i} (shard {}) has all its events applied", p.shard);
    }
    let fresh = node.send(vec![track("newcomer-1", "Signed Up", &[("user_id", "newcomer")], json!({}))]).await;
    assert_eq!(status_of(&fresh.results[0]), EventStatus::Accepted);
    assert_eq!(node.profile("user_id", "newcomer", 0).await.unwrap().event_count, 1, "new customers are served");
    let v = node.profile("user_id", "victim", 10).await.expect("the victim's profile is still readable");
    assert_eq!(v.event_count, 1, "the Boom event and later ones are parked, not applied: {v:?}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&v.attributes_json).unwrap(), json!({"plan": "pro"}), "the last good state is kept");
    let health = http_request(node.http_addr(), "GET", "/healthz", &[], b"").await;
    assert_eq!(health.status, 200);
    let metrics = http_request(node.http_addr(), "GET", "/metrics", &[], b"").await.text();
    assert!(metrics.contains(&format!("chorus_shard_quarantined_customers{{shard=\"{victim_shard}\"}} 1")), "{metrics}");

    phase("the quarantine survives a restart");
    let status = node.terminate().await;
    assert_eq!(status.code(), Some(0), "clean shutdown");
    node.restart().await;
    let q = quarantined_per_shard(&node).await.expect("shard list");
    assert_eq!(q, (0..SHARDS).map(|s| u64::from(s == victim_shard)).collect::<Vec<_>>());
    let resp = node.send((0..BYSTANDERS).map(|i| track(&format!("calm-{i}-4"), "Product Viewed", &[("user_id", &bystander(i))], json!({}))).collect()).await;
    assert!(resp.results.iter().all(|r| status_of(r) == EventStatus::Accepted));
    for i in same_shard {
        assert_eq!(node.profile("user_id", &bystander(i), 0).await.unwrap().event_count, 4);
    }
    assert_eq!(node.profile("user_id", "victim", 0).await.unwrap().event_count, 1);
}
