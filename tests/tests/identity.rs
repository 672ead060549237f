//! Identity resolution stories (SPEC §3.1, §4.2) against a real node: anonymous
//! browsing on two devices, a login and an email capture end as ONE profile holding all
//! history; two user ids on one shared device never merge ("last login wins", with an
//! `identity.conflict` decision on both). Told once on one shard (every merge is local)
//! and once on 16 shards (the same story needs cross-shard merges).

use chorus_tests::v1::EventStatus;
use chorus_tests::*;
use serde_json::json;
use std::time::Duration;

/// Deadline for cross-shard index updates to settle (they are asynchronous log entries).
const SETTLE: Duration = Duration::from_secs(20);

async fn accepted(node: &Node, events: Vec<v1::Event>) -> Vec<String> {
    let resp = node.send(events).await;
    resp.results
        .iter()
        .map(|r| {
            assert_eq!(status_of(r), EventStatus::Accepted, "{}", show_result(r));
            r.customer_id.clone()
        })
        .collect()
}

/// Which customer each identity resolves to right now ("-" when none).
async fn owners(node: &Node, keys: &[(&str, &str)]) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in keys {
        out.push(match node.profile(k, v, 0).await {
            Ok(p) => p.customer_id,
            Err(s) if s.code() == tonic::Code::NotFound => "-".to_string(),
            Err(s) => panic!("get {k}:{v}: {s:?}"),
        });
    }
    out
}

async fn explain_kinds(node: &Node, target: &str) -> Vec<String> {
    let out = node.ctl(&["-o", "json", "profile", "explain", target, "--limit", "500"]).await;
    out.ok();
    out.json()["decisions"].as_array().expect("decisions").iter().map(|d| d["kind"].as_str().unwrap_or("").to_string()).collect()
}

async fn two_devices_login_and_email_capture_make_one_profile(node: &Node, p: &str) {
    let (a1, a2, u, e) = (format!("{p}-anon-1"), format!("{p}-anon-2"), format!("{p}-user"), format!("{p}.ada@example.com"));

    phase("anonymous browsing on two devices");
    let c1 = accepted(
        node,
        vec![
            track(&format!("{p}-1"), "Product Viewed", &[("anonymous_id", &a1)], json!({"sku": "A1"})),
            track(&format!("{p}-2"), "Product Viewed", &[("anonymous_id", &a1)], json!({"sku": "A2"})),
        ],
    )
    .await;
    assert_eq!(c1[0], c1[1], "one browser, one profile");
    let c2 = accepted(node, vec![track(&format!("{p}-3"), "Product Viewed", &[("anonymous_id", &a2)], json!({"sku": "B1"}))]).await;
    assert_ne!(c1[0], c2[0], "two unknown devices are two profiles until something links them");
    let (device1, device2) = (c1[0].clone(), c2[0].clone());

    phase("login on device 1: identify with user_id + anonymous_id");
    accepted(node, vec![identify(&format!("{p}-4"), &[("user_id", &u), ("anonymous_id", &a1)], json!({"first_name": "Ada"}))]).await;

    phase("email capture on device 2: track with user_id + email + anonymous_id");
    accepted(node, vec![track(&format!("{p}-5"), "Newsletter Signup", &[("user_id", &u), ("email", &e), ("anonymous_id", &a2)], json!({}))]).await;

    phase("one profile: every key finds it and it holds all five events");
    let keys = [("anonymous_id", a1.as_str()), ("anonymous_id", a2.as_str()), ("user_id", u.as_str()), ("email", e.as_str())];
    let survivor = wait_until(SETTLE, "all four keys resolve to one customer holding 5 events", || async {
        let ids = owners(node, &keys).await;
        let p = node.profile("user_id", &u, 10).await.map_err(|s| format!("{s:?}"))?;
        let one = ids.iter().all(|i| *i == p.customer_id);
        if one && p.event_count == 5 {
            Ok(p)
        } else {
            Err(format!("owners of {keys:?} = {ids:?}; user profile {} has event_count {}", p.customer_id, p.event_count))
        }
    })
    .await;
    let mut history: Vec<&str> = survivor.recent_events.iter().map(|e| e.message_id.as_str()).collect();
    history.sort_unstable();
    assert_eq!(history, (1..=5).map(|i| format!("{p}-{i}")).collect::<Vec<_>>(), "all history in one profile");
    for (k, v) in keys {
        assert!(has_identity(&survivor, k, v), "survivor holds {k}:{v}: {:?}", survivor.identities);
    }
    assert_eq!(serde_json::from_str::<serde_json::Value>(&survivor.attributes_json).unwrap()["first_name"], "Ada");
    let merged_away = if survivor.customer_id == device1 { &device2 } else { &device1 };
    assert!(survivor.merged_from.contains(merged_away), "survivor {} lists {merged_away} in merged_from: {:?}", survivor.customer_id, survivor.merged_from);
    let tomb = node.profile_by_id(merged_away, 0).await.expect("the merged-away id still answers");
    assert_eq!(tomb.merged_into, survivor.customer_id, "the merged-away id reports its survivor");
    assert_eq!(tomb.customer_id, survivor.customer_id, "reading a merged-away id gives the survivor's profile");
    let kinds = explain_kinds(node, &format!("user_id:{u}")).await;
    assert!(kinds.iter().any(|k| k == "merged"), "the survivor's decision log shows the merge: {kinds:?}");
}

async fn shared_device_never_merges_two_user_ids(node: &Node, p: &str) {
    let (d, u1, u2) = (format!("{p}-shared-device"), format!("{p}-user-1"), format!("{p}-user-2"));

    phase("user 1 logs in on the shared device");
    let c1 = accepted(node, vec![identify(&format!("{p}-1"), &[("user_id", &u1), ("anonymous_id", &d)], json!({"first_name": "Ada"}))]).await;
    wait_until(SETTLE, "the device resolves to user 1", || async {
        let ids = owners(node, &[("anonymous_id", &d)]).await;
        if ids[0] == c1[0] { Ok(()) } else { Err(format!("device → {ids:?}, user 1 is {}", c1[0])) }
    })
    .await;

    phase("user 2 logs in on the same device");
    accepted(node, vec![identify(&format!("{p}-2"), &[("user_id", &u2), ("anonymous_id", &d)], json!({"first_name": "Grace"}))]).await;

    phase("two customers; the device now belongs to user 2 (last login wins)");
    let (p1, p2) = wait_until(SETTLE, "u1 and u2 are different customers and the device belongs to u2", || async {
        let p1 = node.profile("user_id", &u1, 10).await.map_err(|s| format!("u1: {s:?}"))?;
        let p2 = node.profile("user_id", &u2, 10).await.map_err(|s| format!("u2: {s:?}"))?;
        let dev = owners(node, &[("anonymous_id", &d)]).await;
        let ok =
            p1.customer_id != p2.customer_id && dev[0] == p2.customer_id && has_identity(&p2, "anonymous_id", &d) && !has_identity(&p1, "anonymous_id", &d);
        if ok {
            Ok((p1, p2))
        } else {
            Err(format!("u1 → {} {:?}, u2 → {} {:?}, device → {}", p1.customer_id, p1.identities, p2.customer_id, p2.identities, dev[0]))
        }
    })
    .await;
    assert!(p1.merged_into.is_empty() && p2.merged_into.is_empty(), "nobody was merged away: {p1:?} {p2:?}");
    assert!(!has_identity(&p1, "user_id", &u2) && !has_identity(&p2, "user_id", &u1), "each profile keeps only its own user id");
    assert_eq!((p1.event_count, p2.event_count), (1, 1), "each login counts on its own profile");
    let attrs = |p: &v1::Profile| serde_json::from_str::<serde_json::Value>(&p.attributes_json).unwrap()["first_name"].clone();
    assert_eq!((attrs(&p1), attrs(&p2)), (json!("Ada"), json!("Grace")), "traits never cross between the two users");
    for u in [&u1, &u2] {
        let kinds = explain_kinds(node, &format!("user_id:{u}")).await;
        assert!(kinds.iter().any(|k| k == "identity.conflict"), "explain of {u} shows identity.conflict: {kinds:?}");
    }
}

#[tokio::test]
async fn one_shard_two_devices_login_and_email_capture_make_one_profile() {
    let node = Node::start(NodeOpts::new("identity-1-merge").shards(1)).await;
    two_devices_login_and_email_capture_make_one_profile(&node, "s1").await;
}

#[tokio::test]
async fn one_shard_shared_device_never_merges_two_user_ids() {
    let node = Node::start(NodeOpts::new("identity-1-shared").shards(1)).await;
    shared_device_never_merges_two_user_ids(&node, "s1").await;
}

#[tokio::test]
async fn sixteen_shards_two_devices_login_and_email_capture_make_one_profile() {
    let node = Node::start(NodeOpts::new("identity-16-merge").shards(16)).await;
    two_devices_login_and_email_capture_make_one_profile(&node, "s16").await;
}

#[tokio::test]
async fn sixteen_shards_shared_device_never_merges_two_user_ids() {
    let node = Node::start(NodeOpts::new("identity-16-shared").shards(16)).await;
    shared_device_never_merges_two_user_ids(&node, "s16").await;
}
