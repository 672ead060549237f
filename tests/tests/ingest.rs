//! Ingest over gRPC against a real node: per-event results of Send (validation errors
//! name the field, good events of a bad batch still land), dedup on resend, Stream
//! answering every batch exactly once, the batch limit, and a graceful SIGTERM during
//! a stream followed by a restart that still holds every acknowledged event once.

use chorus_tests::v1::{EventStatus, IngestRequest};
use chorus_tests::*;
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

#[tokio::test]
async fn send_answers_per_event_and_dedups_a_resend() {
    let node = Node::start(NodeOpts::new("ingest-send").shards(4)).await;

    phase("a batch mixing good and bad events");
    let bad_props = v1::Event { properties_json: "{not json".into(), ..event("track", "bad-props", "Clicked", &[("user_id", "send-u3")]) };
    let props_array = v1::Event { properties_json: "[1,2]".into(), ..event("track", "props-array", "Clicked", &[("user_id", "send-u3")]) };
    let good_1 = track("good-1", "Product Viewed", &[("user_id", "send-u1"), ("email", "Ada.Send@Example.com")], json!({"sku": "A1"}));
    let batch = vec![
        /* 0 */ good_1.clone(),
        /* 1 */ track("", "Product Viewed", &[("user_id", "send-u1")], json!({})),
        /* 2 */
        track("bad-email", "Product Viewed", &[("user_id", "send-u1"), ("email", "not-an-email")], json!({})),
        /* 3 */
        track("bad-phone", "Product Viewed", &[("phone", "555-0123")], json!({})),
        /* 4 */ bad_props,
        /* 5 */ track("no-name", "", &[("user_id", "send-u1")], json!({})),
        /* 6 */
        identify("good-2", &[("user_id", "send-u2")], json!({"first_name": "Grace", "plan": "pro"})),
        /* 7 */
        event("page", "good-3", "Pricing", &[("anonymous_id", "send-anon-1")]),
        /* 8 */ track("no-identity", "Product Viewed", &[], json!({})),
        /* 9 */ props_array,
        /* 10 */ good_1, // the same message id again, same batch
    ];
    let resp = node.send(batch.clone()).await;
    let shown: Vec<String> = resp.results.iter().map(show_result).collect();
    eprintln!("results:\n  {}", shown.join("\n  "));
    for (i, r) in resp.results.iter().enumerate() {
        assert_eq!(r.index as usize, i, "results are in batch order: {shown:?}");
    }
    let expect_rejected = |i: usize, field: &str, says: &str| {
        let r = &resp.results[i];
        assert_eq!(status_of(r), EventStatus::Rejected, "event {i}: {}", show_result(r));
        assert_eq!(r.field, field, "event {i}: {}", show_result(r));
        assert!(r.error.contains(says), "event {i}: error should mention {says:?}: {}", show_result(r));
        assert!(r.customer_id.is_empty(), "a rejected event has no customer: {}", show_result(r));
    };
    expect_rejected(1, "message_id", "required");
    expect_rejected(2, "identities[1].value", "not-an-email");
    expect_rejected(3, "identities[0].value", "E.164");
    expect_rejected(4, "properties_json", "not valid JSON");
    expect_rejected(5, "event", "required");
    expect_rejected(8, "identities", "at least one identity");
    expect_rejected(9, "properties_json", "JSON object");
    let mut customers = HashMap::new();
    for (i, who) in [(0, "send-u1"), (6, "send-u2"), (7, "send-anon-1")] {
        let r = &resp.results[i];
        assert_eq!(status_of(r), EventStatus::Accepted, "event {i}: {}", show_result(r));
        assert!(r.customer_id.starts_with("cu_") && r.customer_id.len() == 19, "event {i} has a customer id: {}", show_result(r));
        assert!(r.field.is_empty() && r.error.is_empty(), "{}", show_result(r));
        customers.insert(who, r.customer_id.clone());
    }
    assert_eq!(status_of(&resp.results[10]), EventStatus::Duplicate, "the same message id twice in one batch: {}", show_result(&resp.results[10]));
    assert_eq!(customers.values().collect::<HashSet<_>>().len(), 3, "three distinct customers: {customers:?}");

    phase("the good events were applied, once");
    let u1 = node.profile("user_id", "send-u1", 10).await.expect("send-u1 exists");
    assert_eq!(u1.customer_id, customers["send-u1"]);
    assert_eq!(u1.event_count, 1, "{u1:?}");
    assert_eq!(u1.recent_events.len(), 1);
    assert_eq!(u1.recent_events[0].message_id, "good-1");
    assert_eq!(u1.recent_events[0].name, "Product Viewed");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&u1.recent_events[0].properties_json).unwrap(), json!({"sku": "A1"}));
    assert!(has_identity(&u1, "email", "ada.send@example.com"), "the email is normalized and linked: {:?}", u1.identities);
    assert!(!has_identity(&u1, "email", "not-an-email"), "a rejected event links nothing: {:?}", u1.identities);
    let u2 = node.profile("user_id", "send-u2", 0).await.expect("send-u2 exists");
    assert_eq!(u2.customer_id, customers["send-u2"]);
    let attrs: serde_json::Value = serde_json::from_str(&u2.attributes_json).unwrap();
    assert_eq!(attrs, json!({"first_name": "Grace", "plan": "pro"}));
    let anon = node.profile("anonymous_id", "send-anon-1", 1).await.expect("send-anon-1 exists");
    assert_eq!(anon.customer_id, customers["send-anon-1"]);
    assert_eq!((anon.event_count, anon.recent_events[0].r#type.as_str(), anon.recent_events[0].name.as_str()), (1, "page", "Pricing"));
    let missing = node.profile("phone", "+14155550199", 0).await.expect_err("nobody has this phone");
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    // The email is claimed by its own shard asynchronously (cross-shard entry).
    let by_email = wait_until(Duration::from_secs(20), "the email finds send-u1", || async {
        node.profile("email", "ADA.send@example.COM", 0).await.map_err(|s| format!("{s:?}"))
    })
    .await;
    assert_eq!(by_email.customer_id, customers["send-u1"]);

    phase("re-sending the batch: good events are duplicates, bad ones rejected again");
    let again = node.send(batch).await;
    for i in [0, 6, 7, 10] {
        assert_eq!(status_of(&again.results[i]), EventStatus::Duplicate, "event {i}: {}", show_result(&again.results[i]));
    }
    for (i, field) in [
        (1, "message_id"),
        (2, "identities[1].value"),
        (3, "identities[0].value"),
        (4, "properties_json"),
        (5, "event"),
        (8, "identities"),
        (9, "properties_json"),
    ] {
        assert_eq!((status_of(&again.results[i]), again.results[i].field.as_str()), (EventStatus::Rejected, field), "event {i}");
    }
    for (kind, value) in [("user_id", "send-u1"), ("user_id", "send-u2"), ("anonymous_id", "send-anon-1")] {
        let p = node.profile(kind, value, 10).await.unwrap();
        assert_eq!(p.event_count, 1, "{kind}:{value} counted once: {p:?}");
    }

    phase("a batch above the limit is refused whole, naming `events`");
    let too_many: Vec<v1::Event> = (0..10_001).map(|i| track(&format!("big-{i}"), "E", &[("user_id", "big")], json!({}))).collect();
    let status = node.ingest().await.send(IngestRequest { batch_id: 9, events: too_many }).await.expect_err("10 001 events exceed the 10 000 limit");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("events:"), "the error names the field: {status:?}");
    assert!(status.message().contains("10001") && status.message().contains("10000"), "{status:?}");
    let none = node.profile("user_id", "big", 0).await.expect_err("nothing of the refused batch was applied");
    assert_eq!(none.code(), tonic::Code::NotFound);
    // On a stream the refusal answers that batch alone, naming it; the stream stays open
    // and the next good batch on it is applied and acknowledged.
    let mut stream = node.open_stream().await;
    let too_many: Vec<v1::Event> = (0..10_001).map(|i| track(&format!("big-{i}"), "E", &[("user_id", "big")], json!({}))).collect();
    assert!(stream.send(IngestRequest { batch_id: 77, events: too_many }).await);
    let refused = tokio::time::timeout(Duration::from_secs(60), stream.next())
        .await
        .expect("an answer")
        .expect("no gRPC error: the stream survives")
        .expect("the refusal is an answer, not the end of the stream");
    assert_eq!(refused.batch_id, 77, "the refusal names the batch: {refused:?}");
    assert!(refused.results.is_empty(), "{refused:?}");
    let error = refused.error.as_ref().expect("a batch error");
    assert_eq!((error.code.as_str(), error.field.as_str()), ("invalid_argument", "events"), "{error:?}");
    assert!(error.message.contains("10001") && error.message.contains("10000"), "{error:?}");
    let good: Vec<v1::Event> = (0..3).map(|i| track(&format!("after-{i}"), "E", &[("user_id", "after-big")], json!({}))).collect();
    assert!(stream.send(IngestRequest { batch_id: 78, events: good }).await, "the stream is still open");
    let acked = tokio::time::timeout(Duration::from_secs(60), stream.next())
        .await
        .expect("an answer")
        .expect("no gRPC error")
        .expect("the next batch is answered on the same stream");
    assert_eq!(acked.batch_id, 78);
    assert!(acked.error.is_none() && acked.results.len() == 3, "{acked:?}");
    assert!(acked.results.iter().all(|r| status_of(r) == EventStatus::Accepted), "{acked:?}");
    stream.close();
    assert_eq!(node.profile("user_id", "after-big", 0).await.unwrap().event_count, 3);
    assert_eq!(node.profile("user_id", "big", 0).await.expect_err("nothing of the refused batch").code(), tonic::Code::NotFound);
    // The limit itself is fine.
    let at_limit: Vec<v1::Event> = (0..10_000).map(|i| track(&format!("lim-{i}"), "E", &[("user_id", "limit")], json!({}))).collect();
    let resp = node.send(at_limit).await;
    assert!(resp.results.iter().all(|r| status_of(r) == EventStatus::Accepted), "10 000 events are accepted");
    assert_eq!(node.profile("user_id", "limit", 0).await.unwrap().event_count, 10_000);
}

/// Event `j` of batch `b` goes to customer `(b * per_batch + j) % customers`.
fn stream_batch(prefix: &str, b: u64, per_batch: u64, customers: u64) -> IngestRequest {
    let events = (0..per_batch)
        .map(|j| {
            let n = b * per_batch + j;
            let c = n % customers;
            track(&format!("{prefix}-{n}"), "Stream Event", &[("user_id", &format!("{prefix}-u{c}"))], json!({"n": n}))
        })
        .collect();
    IngestRequest { batch_id: b + 1, events }
}

#[tokio::test]
async fn stream_answers_every_batch_once_and_counts_are_exact() {
    const BATCHES: u64 = 50;
    const PER_BATCH: u64 = 200;
    const CUSTOMERS: u64 = 20;
    let node = Node::start(NodeOpts::new("ingest-stream").shards(4)).await;

    phase("stream 50 batches × 200 events over 20 customers");
    let stream = node.open_stream().await;
    let (tx, mut answers) = stream.split();
    let sender = tokio::spawn(async move {
        for b in 0..BATCHES {
            tx.send(stream_batch("st", b, PER_BATCH, CUSTOMERS)).await.expect("stream open");
        }
        // Dropping tx half-closes the stream: the server answers the rest and ends it.
    });
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    let mut customer_ids: HashMap<u64, String> = HashMap::new();
    let read = async {
        while let Some(resp) = answers.message().await.expect("stream answers without error") {
            *seen.entry(resp.batch_id).or_default() += 1;
            let b = resp.batch_id - 1;
            assert!(b < BATCHES, "answer for a batch never sent: {}", resp.batch_id);
            assert_eq!(resp.results.len() as u64, PER_BATCH, "batch {} has one result per event", resp.batch_id);
            for (j, r) in resp.results.iter().enumerate() {
                assert_eq!(r.index as usize, j);
                assert_eq!(status_of(r), EventStatus::Accepted, "batch {} event {j}: {}", resp.batch_id, show_result(r));
                let c = (b * PER_BATCH + j as u64) % CUSTOMERS;
                let id = customer_ids.entry(c).or_insert_with(|| r.customer_id.clone());
                assert_eq!(*id, r.customer_id, "customer {c} keeps one id");
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), read).await.expect("the stream ends after the last answer");
    sender.await.unwrap();
    let expected: BTreeMap<u64, usize> = (1..=BATCHES).map(|b| (b, 1)).collect();
    assert_eq!(seen, expected, "every batch answered exactly once");
    assert_eq!(customer_ids.values().collect::<HashSet<_>>().len() as u64, CUSTOMERS);

    phase("every customer holds exactly its events");
    for c in 0..CUSTOMERS {
        let p = node.profile("user_id", &format!("st-u{c}"), 0).await.expect("customer exists");
        assert_eq!(p.customer_id, customer_ids[&c]);
        assert_eq!(p.event_count, BATCHES * PER_BATCH / CUSTOMERS, "customer st-u{c}");
    }
}

#[tokio::test]
async fn sigterm_during_a_stream_exits_cleanly_and_keeps_every_acked_event() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    const CUSTOMERS: u64 = 20;
    const PER_BATCH: u64 = 40; // two events per customer per batch
    const BATCHES_MAX: u64 = 70; // ≤ 140 events per customer: history holds them all
    const IN_FLIGHT_MAX: usize = 8;
    const SIGTERM_AFTER: u64 = 10;
    let mut node = Node::start(NodeOpts::new("ingest-sigterm").shards(4)).await;

    phase("stream batches; SIGTERM once 10 are answered; the client then finishes its stream");
    let (tx, mut answers) = node.open_stream().await.split();
    let stop = Arc::new(AtomicBool::new(false));
    let window = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_MAX));
    let sender = tokio::spawn({
        let (stop, window) = (stop.clone(), window.clone());
        async move {
            let mut sent = 0u64;
            while sent < BATCHES_MAX {
                window.acquire().await.expect("semaphore open").forget();
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                if tx.send(stream_batch("term", sent, PER_BATCH, CUSTOMERS)).await.is_err() {
                    break;
                }
                sent += 1;
            }
            sent // dropping tx half-closes the stream
        }
    });
    let mut acked: HashMap<u64, Vec<String>> = HashMap::new(); // customer → acknowledged message ids
    let mut retry = 0usize;
    let mut answers_seen: BTreeMap<u64, usize> = BTreeMap::new();
    let stream_end = loop {
        let next = tokio::time::timeout(Duration::from_secs(60), answers.message()).await.expect("an answer or the end of the stream within 60 s");
        match next {
            Ok(Some(resp)) => {
                *answers_seen.entry(resp.batch_id).or_default() += 1;
                let b = resp.batch_id - 1;
                assert_eq!(resp.results.len() as u64, PER_BATCH);
                for (j, r) in resp.results.iter().enumerate() {
                    let n = b * PER_BATCH + j as u64;
                    match status_of(r) {
                        EventStatus::Accepted => acked.entry(n % CUSTOMERS).or_default().push(format!("term-{n}")),
                        EventStatus::Retry => retry += 1,
                        _ => panic!("batch {} event {j}: {}", resp.batch_id, show_result(r)),
                    }
                }
                if answers_seen.len() as u64 == SIGTERM_AFTER {
                    stop.store(true, Ordering::SeqCst);
                    node.sigterm();
                }
                window.add_permits(1);
            }
            Ok(None) => break Ok(()),
            Err(status) => break Err(status),
        }
    };
    let sent = sender.await.unwrap();
    let status = node.wait_exit().await;
    eprintln!("sent {sent} batches, {} answered, {retry} events answered RETRY, stream ended with {stream_end:?}", answers_seen.len());
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean shutdown (exit 0); log:\n{}", node.log_tail(40));
    assert!(stream_end.is_ok(), "a client that finishes its stream during shutdown gets every answer and a clean end: {stream_end:?}");
    let expected: BTreeMap<u64, usize> = (1..=sent).map(|b| (b, 1)).collect();
    assert_eq!(answers_seen, expected, "every batch sent is answered exactly once");

    phase("restart on the same data directory: every acknowledged event is there exactly once");
    node.restart().await;
    for c in 0..CUSTOMERS {
        let p = node.profile("user_id", &format!("term-u{c}"), 200).await.expect("customer exists after restart");
        let mut history: Vec<&str> = p.recent_events.iter().map(|e| e.message_id.as_str()).collect();
        history.sort_unstable();
        let mut mine: Vec<&str> = acked.get(&c).map(|v| v.iter().map(String::as_str).collect()).unwrap_or_default();
        mine.sort_unstable();
        assert_eq!(p.event_count, mine.len() as u64, "customer term-u{c}: event_count equals the acknowledged count");
        // Batches run concurrently, so order across batches is not defined here (crash.rs checks order).
        assert_eq!(history, mine, "customer term-u{c}: history holds exactly the acknowledged events, each once");
    }
}

#[tokio::test]
async fn sigterm_with_a_stream_left_open_still_exits_and_keeps_every_acked_event() {
    use std::sync::Arc;
    const CUSTOMERS: u64 = 20;
    const PER_BATCH: u64 = 40;
    const BATCHES_MAX: u64 = 70; // ≤ 140 events per customer: history holds them all
    const IN_FLIGHT_MAX: usize = 8;
    const SIGTERM_AFTER: u64 = 10;
    let mut node = Node::start(NodeOpts::new("ingest-sigterm-open").shards(4)).await;

    phase("stream batches and never half-close; SIGTERM once 10 are answered");
    let (tx, mut answers) = node.open_stream().await.split();
    let window = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_MAX));
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<()>();
    let sender = tokio::spawn({
        let window = window.clone();
        async move {
            let mut sent = 0u64;
            while sent < BATCHES_MAX {
                window.acquire().await.expect("semaphore open").forget();
                if tx.send(stream_batch("open", sent, PER_BATCH, CUSTOMERS)).await.is_err() {
                    break;
                }
                sent += 1;
            }
            // A careless client: keeps its side open until the server ends the stream.
            let _ = ended_rx.await;
            drop(tx);
            sent
        }
    });
    let mut acked: HashMap<u64, Vec<String>> = HashMap::new();
    let mut answers_seen: BTreeMap<u64, usize> = BTreeMap::new();
    let stream_end = loop {
        let next = tokio::time::timeout(NODE_STOP_TIMEOUT, answers.message()).await.expect("an answer or the end of the stream");
        match next {
            Ok(Some(resp)) => {
                *answers_seen.entry(resp.batch_id).or_default() += 1;
                let b = resp.batch_id - 1;
                for (j, r) in resp.results.iter().enumerate() {
                    let n = b * PER_BATCH + j as u64;
                    match status_of(r) {
                        EventStatus::Accepted => acked.entry(n % CUSTOMERS).or_default().push(format!("open-{n}")),
                        EventStatus::Retry => {}
                        _ => panic!("batch {} event {j}: {}", resp.batch_id, show_result(r)),
                    }
                }
                if answers_seen.len() as u64 == SIGTERM_AFTER {
                    node.sigterm();
                }
                window.add_permits(1);
            }
            Ok(None) => break Ok(()),
            Err(status) => break Err(status),
        }
    };
    let _ = ended_tx.send(());
    let sent = sender.await.unwrap();
    let status = node.wait_exit().await;
    eprintln!("sent {sent} batches, {} answered, stream ended with {stream_end:?}", answers_seen.len());
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean shutdown even with a stream left open; log:\n{}", node.log_tail(40));
    assert!(answers_seen.values().all(|&n| n == 1), "no batch answered twice: {answers_seen:?}");

    phase("restart: every acknowledged event is there exactly once; nothing unknown, nothing twice");
    node.restart().await;
    for c in 0..CUSTOMERS {
        let p = node.profile("user_id", &format!("open-u{c}"), 200).await.expect("customer exists after restart");
        let history: Vec<&str> = p.recent_events.iter().map(|e| e.message_id.as_str()).collect();
        let unique: HashSet<&str> = history.iter().copied().collect();
        assert_eq!(unique.len(), history.len(), "customer open-u{c}: no event applied twice: {history:?}");
        assert_eq!(p.event_count, history.len() as u64, "customer open-u{c}: event_count matches its history");
        for id in acked.get(&c).into_iter().flatten() {
            assert!(unique.contains(id.as_str()), "customer open-u{c}: acknowledged event {id} is missing after restart");
        }
        for id in &history {
            let n: u64 = id.strip_prefix("open-").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("unknown event {id}"));
            assert!(n < sent * PER_BATCH && n % CUSTOMERS == c, "customer open-u{c}: {id} was never sent to it");
        }
    }
}
