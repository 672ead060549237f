//! Crash safety of sends (issue "Core platform" item 9): kill -9 the node while the
//! outbox is being delivered and while events stream in; after a restart no message is
//! sent twice (each idempotency key captured once), every accepted send is delivered,
//! and pending durable timers still fire when the (manual) clock reaches them.

use chorus_tests::v1::messages_client::MessagesClient;
use chorus_tests::v1::{MessageRequest, MessageStatus, SendMessagesRequest};
use chorus_tests::*;
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;

const CUSTOMERS: usize = 40;
const NOW_SENDS: usize = 600;
const LATER_SENDS: usize = 40;

fn email(c: usize) -> String {
    format!("m{c}@example.com")
}

fn message(id: &str, c: usize, send_at_ms: i64) -> MessageRequest {
    MessageRequest {
        request_id: id.to_string(),
        profile: Some(by_identity("email", &email(c))),
        channel: "email".into(),
        template: "receipt".into(),
        category: "transactional".into(),
        vars_json: json!({"n": id}).to_string(),
        send_at_ms,
        ..Default::default()
    }
}

/// Every captured message (JSON lines from `chorusctl messages tail`).
async fn captured(node: &Node) -> Vec<serde_json::Value> {
    let out = node.ctl(&["-o", "json", "messages", "tail", "--last", "100000"]).await;
    out.ok();
    out.stdout.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).expect("json line")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_never_sends_twice_and_timers_still_fire() {
    let mut node = Node::start(NodeOpts::new("crash-messages").shards(4).manual_clock()).await;
    phase("customers with email addresses");
    let events: Vec<_> = (0..CUSTOMERS).map(|c| identify(&format!("id-{c}"), &[("email", &email(c))], json!({"n": c}))).collect();
    let resp = node.send(events).await;
    assert!(resp.results.iter().all(|r| status_of(r) == v1::EventStatus::Accepted), "{:?}", resp.results);

    phase("sends now and in one hour; kill -9 right after they are accepted");
    let now = node.admin().await.clock(v1::ClockRequest { op: Some(v1::clock_request::Op::Show(true)) }).await.unwrap().into_inner().now_ms;
    let mut requests: Vec<MessageRequest> = (0..NOW_SENDS).map(|i| message(&format!("now-{i}"), i % CUSTOMERS, 0)).collect();
    requests.extend((0..LATER_SENDS).map(|i| message(&format!("later-{i}"), i % CUSTOMERS, now + 3_600_000)));
    let mut client = MessagesClient::new(node.channel().await);
    let results = client.send(SendMessagesRequest { messages: requests.clone() }).await.unwrap().into_inner().results;
    for (r, req) in results.iter().zip(&requests) {
        let expected = if req.send_at_ms > 0 { MessageStatus::Scheduled } else { MessageStatus::Queued };
        assert_eq!(MessageStatus::try_from(r.status).unwrap(), expected, "{}: {:?}", req.request_id, r);
    }
    // Pull the plug while the outbox is being delivered, with events still streaming in.
    let busy: Vec<_> = (0..200).map(|i| track(&format!("busy-{i}"), "Product Viewed", &[("email", &email(i % CUSTOMERS))], json!({}))).collect();
    let mut ingest = node.ingest().await;
    let streaming = tokio::spawn(async move { ingest.send(v1::IngestRequest { batch_id: 1, events: busy }).await });
    node.kill9().await;
    let _ = streaming.await;
    let before = {
        node.restart().await;
        captured(&node).await.len()
    };
    eprintln!("captured before/at restart: {before} of {NOW_SENDS}");

    phase("after restart every immediate send is delivered exactly once");
    wait_until(Duration::from_secs(60), "all immediate sends are captured", || async {
        let n = captured(&node).await.iter().filter(|m| m["idempotency_key"].as_str().unwrap_or("").starts_with("api/now-")).count();
        if n >= NOW_SENDS { Ok(()) } else { Err(format!("{n} of {NOW_SENDS}")) }
    })
    .await;

    phase("the pending timers fire when the clock reaches them");
    node.ctl(&["clock", "advance", "2h"]).await.ok();
    wait_until(Duration::from_secs(60), "all scheduled sends are captured", || async {
        let n = captured(&node).await.len();
        if n >= NOW_SENDS + LATER_SENDS { Ok(()) } else { Err(format!("{n} of {}", NOW_SENDS + LATER_SENDS)) }
    })
    .await;
    // Let any straggler (a duplicate would arrive late) show up before counting.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let all = captured(&node).await;
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for m in &all {
        *by_key.entry(m["idempotency_key"].as_str().unwrap().to_string()).or_default() += 1;
    }
    let dups: Vec<_> = by_key.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "messages sent twice: {dups:?}");
    assert_eq!(all.len(), NOW_SENDS + LATER_SENDS, "exactly one message per request");
    for i in 0..LATER_SENDS {
        let c = i % CUSTOMERS;
        let found = all.iter().find(|m| m["idempotency_key"].as_str().unwrap().starts_with(&format!("api/later-{i}/")));
        let m = found.unwrap_or_else(|| panic!("later-{i} was not sent"));
        assert_eq!(m["to"], email(c));
        assert_eq!(m["channel"], "email");
    }
    let shards = node.list_shards().await;
    assert_eq!(shards.iter().map(|s| s.pending_timers).sum::<u64>(), 0);
    assert_eq!(shards.iter().map(|s| s.pending_intents).sum::<u64>(), 0);
    node.terminate().await;
}
