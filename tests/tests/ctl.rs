//! `chorusctl` against live nodes, as an operator or a script uses it: event send from
//! flags and from NDJSON files (errors name the line), `-o json` shapes, helpful
//! failures and exit codes, the manual clock, cluster status and shard list.

use chorus_tests::*;
use serde_json::{Value, json};
use std::time::Duration;

fn write_file(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write a test file");
    path.to_str().expect("utf-8 path").to_string()
}

#[tokio::test]
async fn event_send_profile_and_cluster_commands_against_a_live_node() {
    let node = Node::start(NodeOpts::new("ctl").shards(4)).await;
    let files = tempfile::tempdir().unwrap();

    phase("event send from flags, -o json");
    let out = node
        .ctl(&[
            "-o",
            "json",
            "event",
            "send",
            "--name",
            "Product Viewed",
            "--user-id",
            "ctl-u1",
            "--email",
            "Ctl.One@Example.com",
            "--properties",
            r#"{"sku":"A1","price":19.5}"#,
            "--message-id",
            "ctl-m1",
        ])
        .await;
    out.ok();
    let j = out.json();
    assert_eq!(j["summary"], json!({"total": 1, "accepted": 1, "duplicate": 0, "rejected": 0, "retry": 0, "unanswered": 0}), "{j:#}");
    let r = &j["results"][0];
    assert_eq!((r["index"].clone(), r["message_id"].clone(), r["status"].clone()), (json!(0), json!("ctl-m1"), json!("accepted")), "{j:#}");
    let customer = r["customer_id"].as_str().expect("customer_id").to_string();
    assert!(customer.starts_with("cu_") && customer.len() == 19, "{customer}");
    assert_eq!((r["field"].clone(), r["error"].clone()), (Value::Null, Value::Null));

    phase("the same message id again: a duplicate, exit 0, table summary");
    let out = node.ctl(&["event", "send", "--name", "Product Viewed", "--user-id", "ctl-u1", "--message-id", "ctl-m1"]).await;
    out.ok();
    assert!(out.stdout.lines().any(|l| l == "0 accepted, 1 duplicate, 0 rejected"), "{out:#?}");
    assert!(out.stdout.contains("ctl-m1") && out.stdout.contains("duplicate"), "{out:#?}");

    phase("event send rejected by the node: exit 1, the field is named");
    let out = node.ctl(&["-o", "json", "event", "send", "--name", "X", "--user-id", "ctl-u1", "--phone", "555-0123"]).await;
    assert_eq!(out.code(), Some(1), "{out:#?}");
    let j = out.json();
    assert_eq!(j["results"][0]["status"], "rejected");
    assert_eq!(j["results"][0]["field"], "identities[1].value", "{j:#}");
    assert!(j["results"][0]["error"].as_str().unwrap().contains("E.164"), "{j:#}");

    phase("an NDJSON file with invalid JSON on line 3: exit 2, the line is named, nothing sent");
    let bad_json = write_file(
        &files,
        "bad-json.ndjson",
        "{\"messageId\":\"f1\",\"event\":\"A\",\"userId\":\"ctl-file-1\"}\n{\"messageId\":\"f2\",\"event\":\"B\",\"userId\":\"ctl-file-1\"}\n{\"messageId\":\"f3\",\"event\": \"C\" \"userId\": \"ctl-file-1\"}\n",
    );
    let out = node.ctl(&["event", "send", "--file", &bad_json]).await;
    assert_eq!(out.code(), Some(2), "{out:#?}");
    assert!(out.stderr.contains("bad-json.ndjson line 3"), "the error names the file and line: {}", out.stderr);
    assert!(out.stderr.contains("nothing was sent"), "{}", out.stderr);
    let none = node.profile("user_id", "ctl-file-1", 0).await.expect_err("nothing of the bad file was sent");
    assert_eq!(none.code(), tonic::Code::NotFound);

    phase("an NDJSON file with one invalid event on line 3: only that one rejected, with its line");
    let bad_event = write_file(
        &files,
        "bad-event.ndjson",
        concat!(
            "{\"messageId\":\"g1\",\"event\":\"A\",\"userId\":\"ctl-file-2\",\"properties\":{\"n\":1}}\n",
            "\n",
            "{\"messageId\":\"g2\",\"event\":\"B\",\"userId\":\"ctl-file-2\",\"email\":\"not-an-email\"}\n",
            "{\"message_id\":\"g3\",\"type\":\"identify\",\"user_id\":\"ctl-file-2\",\"traits\":{\"plan\":\"pro\"}}\n",
        ),
    );
    let out = node.ctl(&["-o", "json", "event", "send", "--file", &bad_event]).await;
    assert_eq!(out.code(), Some(1), "a rejected event makes the exit code 1: {out:#?}");
    let j = out.json();
    let rows: Vec<(Value, Value, Value)> =
        j["results"].as_array().unwrap().iter().map(|r| (r["line"].clone(), r["message_id"].clone(), r["status"].clone())).collect();
    assert_eq!(
        rows,
        vec![(json!(1), json!("g1"), json!("accepted")), (json!(3), json!("g2"), json!("rejected")), (json!(4), json!("g3"), json!("accepted"))],
        "{j:#}"
    );
    assert_eq!(j["results"][1]["field"], "identities[1].value", "{j:#}");
    let out = node.ctl(&["event", "send", "--file", &bad_event]).await;
    assert_eq!(out.code(), Some(1));
    let header = out.stdout.lines().next().unwrap_or("");
    assert!(header.contains("LINE") && header.contains("STATUS"), "the table names lines: {}", out.stdout);
    assert!(out.stdout.lines().any(|l| l.contains("g2") && l.contains("rejected") && l.split_whitespace().nth(1) == Some("3")), "{}", out.stdout);
    assert!(out.stdout.lines().any(|l| l == "0 accepted, 2 duplicate, 1 rejected"), "{}", out.stdout);

    phase("profile get / find -o json");
    let out = node.ctl(&["-o", "json", "profile", "get", "user_id:ctl-u1", "--events", "5"]).await;
    out.ok();
    let p = out.json();
    assert_eq!(p["customer_id"], customer.as_str());
    assert_eq!(p["event_count"], 1);
    assert_eq!(p["merged_into"], Value::Null);
    assert!(p["identities"].as_array().unwrap().contains(&json!({"kind": "email", "value": "ctl.one@example.com"})), "{p:#}");
    assert_eq!(p["recent_events"][0]["message_id"], "ctl-m1");
    assert_eq!(p["recent_events"][0]["name"], "Product Viewed");
    assert_eq!(p["recent_events"][0]["properties"], json!({"sku": "A1", "price": 19.5}));
    for key in ["shard", "attributes", "consent", "created_ms", "created", "updated_ms", "updated", "merged_from"] {
        assert!(p.get(key).is_some(), "profile JSON has {key}: {p:#}");
    }
    let p = node.ctl(&["-o", "json", "profile", "get", "user_id:ctl-file-2"]).await;
    let p = p.json();
    assert_eq!((p["event_count"].clone(), p["attributes"].clone()), (json!(2), json!({"plan": "pro"})), "{p:#}");
    let found = wait_until(Duration::from_secs(20), "profile find --email finds ctl-u1", || async {
        let out = node.ctl(&["-o", "json", "profile", "find", "--email", "CTL.one@example.com"]).await;
        if out.status.success() { Ok(out.json()) } else { Err(out.stderr) }
    })
    .await;
    assert_eq!(found["customer_id"], customer.as_str());
    let by_id = node.ctl(&["-o", "json", "profile", "get", &customer]).await;
    assert_eq!(by_id.json()["customer_id"], customer.as_str());
    let explain = node.ctl(&["-o", "json", "profile", "explain", "user_id:ctl-u1"]).await;
    explain.ok();
    let ex = explain.json();
    assert_eq!(ex["customer_id"], customer.as_str());
    assert_eq!(ex["decisions"][0]["kind"], "created", "{ex:#}");
    for key in ["at_ms", "at", "kind", "reason", "detail"] {
        assert!(ex["decisions"][0].get(key).is_some(), "decision JSON has {key}: {ex:#}");
    }

    phase("profile get of an unknown email: exit 1 and a helpful message");
    let out = node.ctl(&["profile", "get", "email:nobody@example.com"]).await;
    assert_eq!(out.code(), Some(1), "{out:#?}");
    assert!(out.stdout.is_empty(), "{out:#?}");
    assert!(out.stderr.contains("no customer with email nobody@example.com"), "{}", out.stderr);
    assert!(out.stderr.contains("hint:"), "{}", out.stderr);

    phase("cluster status and shard list show the configured shard count");
    let out = node.ctl(&["-o", "json", "cluster", "status"]).await;
    out.ok();
    let s = out.json();
    assert_eq!(s["shard_count"], 4, "{s:#}");
    assert_eq!((s["leaderless_shards"].clone(), s["under_replicated_shards"].clone()), (json!(0), json!(0)));
    assert_eq!(s["clock_mode"], "system");
    assert_eq!(s["nodes"].as_array().map(Vec::len), Some(1));
    assert_eq!(s["nodes"][0]["healthy"], true);
    assert_eq!(s["nodes"][0]["grpc_addr"], node.grpc_addr().to_string());
    assert_eq!(s["nodes"][0]["shards_led"], 4);
    let out = node.ctl(&["cluster", "status"]).await;
    out.ok();
    assert!(out.stdout.contains("healthy") && out.stdout.contains("4 (0 leaderless, 0 under-replicated)"), "{}", out.stdout);
    let out = node.ctl(&["-o", "json", "shard", "list"]).await;
    out.ok();
    let shards = out.json()["shards"].as_array().expect("shards").clone();
    assert_eq!(shards.iter().map(|s| s["shard"].as_u64().unwrap()).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    assert!(shards.iter().all(|s| s["leader"] == 1 && s["quarantined"] == 0), "{shards:?}");
    let customers: u64 = shards.iter().map(|s| s["customers"].as_u64().unwrap()).sum();
    assert_eq!(customers, 2, "ctl-u1 and ctl-file-2: {shards:?}");
    let out = node.ctl(&["shard", "list"]).await;
    out.ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("SHARD") && lines[0].contains("QUARANTINED"), "{}", out.stdout);
    assert_eq!(lines.len(), 1 + 4, "a header and one row per shard: {}", out.stdout);

    phase("CHORUS_ENDPOINT works instead of --endpoint");
    let args: Vec<String> = ["-o", "json", "cluster", "status"].iter().map(|s| s.to_string()).collect();
    let out = chorusctl(&args, &[("CHORUS_ENDPOINT", &node.grpc_url())], None).await;
    out.ok();
    assert_eq!(out.json()["shard_count"], 4);

    phase("clock advance on a system-clock node is refused");
    let out = node.ctl(&["clock", "advance", "24h"]).await;
    assert_eq!(out.code(), Some(1), "{out:#?}");
    assert!(out.stderr.contains("--clock manual"), "the error says how to get a manual clock: {}", out.stderr);
    let out = node.ctl(&["-o", "json", "clock", "show"]).await;
    out.ok();
    assert_eq!(out.json()["mode"], "system");
}

#[tokio::test]
async fn clock_advance_moves_a_manual_clock_by_exactly_the_duration() {
    let node = Node::start(NodeOpts::new("ctl-clock").shards(2).manual_clock()).await;

    phase("clock show, advance 24h, show again");
    let show = |out: CtlOutput| {
        out.ok();
        let j = out.json();
        assert_eq!(j["mode"], "manual", "{j:#}");
        assert!(j["now"].as_str().is_some_and(|t| t.ends_with('Z')), "{j:#}");
        j["now_ms"].as_i64().expect("now_ms")
    };
    let before = show(node.ctl(&["-o", "json", "clock", "show"]).await);
    let advanced = show(node.ctl(&["-o", "json", "clock", "advance", "24h"]).await);
    assert_eq!(advanced - before, 86_400_000, "advance 24h moves the clock by 86 400 000 ms");
    let after = show(node.ctl(&["-o", "json", "clock", "show"]).await);
    assert_eq!(after - before, 86_400_000, "a manual clock does not move by itself");
    let status = node.ctl(&["-o", "json", "cluster", "status"]).await.json();
    assert_eq!((status["clock_mode"].clone(), status["now_ms"].clone()), (json!("manual"), json!(after)));

    phase("events are stamped with the manual clock");
    node.ctl(&["event", "send", "--name", "Tick", "--user-id", "clock-u1"]).await.ok();
    let p = node.ctl(&["-o", "json", "profile", "get", "user_id:clock-u1"]).await.json();
    assert_eq!(p["recent_events"][0]["received_ms"], after, "{p:#}");

    phase("the clock never goes backwards");
    let out = node.ctl(&["clock", "set", &(after - 1).to_string()]).await;
    assert_eq!(out.code(), Some(1), "{out:#?}");
    assert!(out.stderr.contains("backwards"), "{}", out.stderr);
    let out = node.ctl(&["-o", "json", "clock", "set", &(after + 5_000).to_string()]).await;
    assert_eq!(show(out), after + 5_000);
    let out = node.ctl(&["clock", "advance", "1h30m"]).await;
    out.ok();
    assert!(out.stdout.contains(&format!("({} ms)", after + 5_000 + 5_400_000)), "{}", out.stdout);
}
