//! Crash safety with real processes (SPEC §3, issue "Core platform" item 9): kill -9 the
//! node while a client streams events, restart it on the same data directory, and check
//! the history: every acknowledged event applied exactly once, in per-customer order,
//! nothing unacknowledged applied twice; then re-sending everything only tops up.
//!
//! The client keeps per-customer order by construction: customers are split into lanes,
//! each lane has at most one batch in flight on the shared stream, and events the node
//! asks to retry go back to the front of their lane.

use chorus_tests::v1::{EventStatus, IngestRequest};
use chorus_tests::*;
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

const CUSTOMERS: u32 = 300;
/// Per customer; ≤ 150 so the profile's history (200) holds every event.
const EVENTS_MIN: u32 = 5;
const EVENTS_MAX: u32 = 35;
const LANES: usize = 12;
const BATCH_EVENTS_MAX: usize = 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Ev {
    customer: u32,
    seq: u32,
}

impl Ev {
    fn message_id(self) -> String {
        format!("crash-c{}-s{}", self.customer, self.seq)
    }
    fn to_proto(self) -> v1::Event {
        track(&self.message_id(), "Crash Event", &[("user_id", &user(self.customer))], json!({"seq": self.seq, "customer": self.customer}))
    }
}

fn user(c: u32) -> String {
    format!("crash-u{c}")
}

/// Each lane's events: its customers' events interleaved at random, each customer's in
/// sequence order.
fn plan(rng: &mut Rng) -> (Vec<u32>, Vec<VecDeque<Ev>>) {
    let (counts, lanes) = lane_plan(rng, CUSTOMERS, EVENTS_MIN, EVENTS_MAX, LANES);
    (counts, lanes.into_iter().map(|l| l.into_iter().map(|(customer, seq)| Ev { customer, seq }).collect()).collect())
}

/// What one streaming run observed.
#[derive(Default)]
struct Run {
    /// Final answer per event (ACCEPTED or DUPLICATE).
    answered: HashMap<Ev, EventStatus>,
    /// Every event put on the wire (answered or not).
    sent: HashMap<Ev, u32>,
    retries: usize,
    stream_end: String,
}

/// Stream the lanes on one Ingest.Stream. With `kill_after`, kill -9 the node once that
/// many events are acknowledged and keep reading whatever answers still arrive.
async fn run_lanes(node: &mut Node, mut lanes: Vec<VecDeque<Ev>>, kill_after: Option<usize>) -> Run {
    let (tx, mut answers) = node.open_stream().await.split();
    let mut run = Run::default();
    let mut in_flight: HashMap<u64, (usize, Vec<Ev>)> = HashMap::new();
    let mut next_batch = 0u64;
    let mut killed = false;
    let mut send_next = |lane: usize, lanes: &mut Vec<VecDeque<Ev>>, in_flight: &mut HashMap<u64, (usize, Vec<Ev>)>, run: &mut Run| {
        let n = lanes[lane].len().min(BATCH_EVENTS_MAX);
        if n == 0 {
            return None;
        }
        let evs: Vec<Ev> = lanes[lane].drain(..n).collect();
        for e in &evs {
            *run.sent.entry(*e).or_default() += 1;
        }
        next_batch += 1;
        let req = IngestRequest { batch_id: next_batch, events: evs.iter().map(|e| e.to_proto()).collect() };
        in_flight.insert(next_batch, (lane, evs));
        Some(req)
    };
    for lane in 0..LANES {
        if let Some(req) = send_next(lane, &mut lanes, &mut in_flight, &mut run) {
            tx.send(req).await.expect("stream open");
        }
    }
    loop {
        if in_flight.is_empty() && !killed {
            break;
        }
        let next = tokio::time::timeout(Duration::from_secs(60), answers.message()).await.expect("an answer (or the stream's end) within 60 s");
        let resp = match next {
            Ok(Some(resp)) => resp,
            Ok(None) => {
                run.stream_end = "ended".into();
                break;
            }
            Err(status) => {
                run.stream_end = format!("{status:?}");
                break;
            }
        };
        let (lane, evs) = in_flight.remove(&resp.batch_id).unwrap_or_else(|| panic!("answer for unknown or already answered batch {}", resp.batch_id));
        assert_eq!(resp.results.len(), evs.len(), "batch {}: one result per event", resp.batch_id);
        let mut again = Vec::new();
        for (r, e) in resp.results.iter().zip(&evs) {
            match status_of(r) {
                s @ (EventStatus::Accepted | EventStatus::Duplicate) => {
                    if let Some(prev) = run.answered.insert(*e, s) {
                        panic!("{} answered twice ({prev:?}, then {s:?})", e.message_id());
                    }
                }
                EventStatus::Retry => again.push(*e),
                _ => panic!("{}: {}", e.message_id(), show_result(r)),
            }
        }
        run.retries += again.len();
        for e in again.into_iter().rev() {
            lanes[lane].push_front(e);
        }
        if let Some(limit) = kill_after
            && !killed
            && run.answered.len() >= limit
        {
            node.kill9().await;
            killed = true;
        }
        if !killed && let Some(req) = send_next(lane, &mut lanes, &mut in_flight, &mut run) {
            tx.send(req).await.expect("stream open");
        }
    }
    drop(tx);
    run
}

/// Per customer: the sequence numbers in its history, oldest first, checking message
/// ids and properties on the way. Also returns the profile's event_count.
async fn histories(node: &Node) -> Vec<(Vec<u32>, u64)> {
    use futures::StreamExt;
    let profiles = node.profiles().await;
    // Concurrent reads keep this quick; the answers are put back in customer order.
    let mut out: Vec<(u32, (Vec<u32>, u64))> = futures::stream::iter(0..CUSTOMERS)
        .map(|c| {
            let mut profiles = profiles.clone();
            async move {
                let req = v1::GetProfileRequest { profile: Some(by_identity("user_id", &user(c))), events: 200 };
                let p = match profiles.get(req).await {
                    Ok(p) => p.into_inner(),
                    Err(s) if s.code() == tonic::Code::NotFound => return (c, (Vec::new(), 0)),
                    Err(s) => panic!("get customer {c}: {s:?}"),
                };
                let mut seqs = Vec::new();
                for e in history_oldest_first(&p) {
                    let props: serde_json::Value = serde_json::from_str(&e.properties_json).expect("properties are JSON");
                    let seq = props["seq"].as_u64().expect("seq") as u32;
                    assert_eq!(props["customer"], c, "customer {c} holds another customer's event {}", e.message_id);
                    assert_eq!(e.message_id, Ev { customer: c, seq }.message_id());
                    seqs.push(seq);
                }
                (c, (seqs, p.event_count))
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    out.sort_by_key(|(c, _)| *c);
    out.into_iter().map(|(_, h)| h).collect()
}

#[tokio::test]
async fn kill_9_during_a_stream_loses_no_acknowledged_event_and_applies_none_twice() {
    let mut rng = Rng::seeded("crash");
    let (counts, lanes) = plan(&mut rng);
    let total: u32 = counts.iter().sum();
    let mut node = Node::start(NodeOpts::new("crash").shards(4)).await;

    phase(&format!("stream {total} events of {CUSTOMERS} customers; kill -9 after 40% are acknowledged"));
    let first = run_lanes(&mut node, lanes.clone(), Some(total as usize * 2 / 5)).await;
    let unanswered = first.sent.keys().filter(|e| !first.answered.contains_key(e)).count();
    eprintln!("acknowledged {} events, {unanswered} sent but unanswered, {} retries; stream: {}", first.answered.len(), first.retries, first.stream_end);
    assert!(first.answered.values().all(|s| *s == EventStatus::Accepted), "fresh events are never duplicates");
    assert!(!node.is_running(), "the node was killed");

    phase("restart on the same data directory and check every customer's history");
    node.restart().await;
    let after_crash = histories(&node).await;
    phase("histories read");
    let mut applied_unacked = 0;
    for (c, (seqs, count)) in after_crash.iter().enumerate() {
        let c = c as u32;
        // Contiguous from 0 and increasing: no loss inside, no duplicate, per-customer order.
        let expected: Vec<u32> = (0..seqs.len() as u32).collect();
        assert_eq!(*seqs, expected, "customer {c}: history must be its events 0..k in order, each once");
        assert_eq!(*count, seqs.len() as u64, "customer {c}: event_count counts each applied event once");
        let acked = (0..counts[c as usize]).filter(|s| first.answered.contains_key(&Ev { customer: c, seq: *s })).count();
        let sent = (0..counts[c as usize]).filter(|s| first.sent.contains_key(&Ev { customer: c, seq: *s })).count();
        assert!(seqs.len() >= acked, "customer {c}: {acked} events acknowledged but only {} applied after the crash", seqs.len());
        assert!(seqs.len() <= sent, "customer {c}: {} applied but only {sent} sent", seqs.len());
        applied_unacked += seqs.len() - acked;
    }
    eprintln!("{applied_unacked} unacknowledged events were applied (allowed: committed before the crash, answer lost)");

    phase("re-send every event: applied ones are duplicates, the rest accepted, nothing counted twice");
    let second = run_lanes(&mut node, lanes, None).await;
    assert_eq!(second.answered.len(), total as usize, "every event answered: stream {}", second.stream_end);
    for (c, (seqs, _)) in after_crash.iter().enumerate() {
        for seq in 0..counts[c] {
            let e = Ev { customer: c as u32, seq };
            let want = if (seq as usize) < seqs.len() { EventStatus::Duplicate } else { EventStatus::Accepted };
            assert_eq!(second.answered[&e], want, "{}: applied before the resend = {}", e.message_id(), (seq as usize) < seqs.len());
        }
    }
    phase("every customer now holds all its events");
    let complete = histories(&node).await;
    for (c, (seqs, count)) in complete.iter().enumerate() {
        let expected: Vec<u32> = (0..counts[c]).collect();
        assert_eq!(*seqs, expected, "customer {c}: every event exactly once, in order");
        assert_eq!(*count, counts[c] as u64, "customer {c}: event_count");
    }
}
