//! A due timer fires once even when one apply round holds several ticks (a follower
//! catching up, a new leader applying its predecessor's entries, ticks proposed faster
//! than they commit): the first tick's removal of the timer is still in the round's
//! batch when the second tick looks for due timers. Found by the cluster simulation.

use chorus_raft::{Application, Applied};
use chorus_shard::ShardConfig;
use chorus_shard::apply::ShardApp;
use chorus_types::{Category, EventInput, EventOutcome, JsonMap, SendOutcome, SendRequest, ShardCommand, ShardOp, ShardResult};
use std::sync::Arc;
use std::sync::atomic::Ordering;

fn entry(index: u64, now_ms: i64, op: ShardOp) -> Applied {
    Applied { index, command: Some(ShardCommand { now_ms, op }) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_ticks_in_one_round_fire_a_due_timer_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = chorus_store::Store::open(dir.path(), Default::default()).unwrap();
    let config = Arc::new(ShardConfig { shard_count: 1, ..ShardConfig::default() });
    let app = ShardApp::open(0, store.clone(), config).await.unwrap();

    let identify = EventInput {
        message_id: "m1".into(),
        event_type: "identify".into(),
        identities: vec![("user_id".into(), "u1".into()), ("email".into(), "ada@example.com".into())],
        timestamp_ms: 1,
        ..Default::default()
    }
    .validate()
    .unwrap();
    let out = app.apply(vec![entry(1, 1_000, ShardOp::Ingest { events: vec![identify] })], Vec::new()).await.unwrap();
    let ShardResult::Ingest(outcomes) = &out[0] else { panic!("{out:?}") };
    let EventOutcome::Applied { customer } = outcomes[0] else { panic!("{outcomes:?}") };

    let send = SendRequest {
        request_id: "later".into(),
        customer,
        channel: "email".into(),
        template: "receipt".into(),
        category: Category::Transactional,
        vars: JsonMap::new(),
        send_at_ms: 5_000,
        topic: String::new(),
    };
    let out = app.apply(vec![entry(2, 2_000, ShardOp::Send { requests: vec![send] })], Vec::new()).await.unwrap();
    assert_eq!(out[0], ShardResult::Send(vec![SendOutcome::Scheduled { customer, at_ms: 5_000 }]));
    assert_eq!(app.stats.pending_timers.load(Ordering::Relaxed), 1);
    assert_eq!(app.stats.intents_total.load(Ordering::Relaxed), 0);

    // Three ticks past the due time, applied in one round.
    let ticks = vec![entry(3, 6_000, ShardOp::Tick), entry(4, 6_100, ShardOp::Tick), entry(5, 6_200, ShardOp::Tick)];
    app.apply(ticks, Vec::new()).await.unwrap();
    assert_eq!(app.stats.pending_timers.load(Ordering::Relaxed), 0, "the timer is gone");
    assert_eq!(app.stats.intents_total.load(Ordering::Relaxed), 1, "one message decided, not one per tick");

    // And a later round's tick finds nothing left to fire.
    app.apply(vec![entry(6, 7_000, ShardOp::Tick)], Vec::new()).await.unwrap();
    assert_eq!(app.stats.intents_total.load(Ordering::Relaxed), 1);
}
