//! Dedup records expire (SPEC §3: a message id is remembered for the dedup window): the
//! records of ids older than the window are deleted by a later apply round, those inside
//! it are kept, and an expired id is accepted again.

use chorus_shard::{Clock, ShardConfig, Shards};
use chorus_types::{Event, EventInput, EventOutcome};
use std::sync::Arc;

fn ev(mid: &str) -> Event {
    EventInput {
        message_id: mid.into(),
        event_type: "track".into(),
        name: "Clicked".into(),
        identities: vec![("user_id".into(), "u1".into())],
        ..Default::default()
    }
    .validate()
    .unwrap()
}

fn dedup_records(store: &chorus_store::Store) -> Vec<String> {
    let prefix = chorus_shard::keys::dedup_expiry_prefix(0);
    store.shard().prefix(&prefix).map(|kv| String::from_utf8_lossy(&kv.key().unwrap()[13..]).into_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_older_than_the_window_are_deleted_and_newer_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = chorus_store::Store::open(dir.path(), Default::default()).unwrap();
    let config = ShardConfig { shard_count: 1, dedup_window_ms: 3_600_000, ..ShardConfig::default() };
    let tuning = chorus_raft::GroupTuning { heartbeat_ms: 50, election_min_ms: 150, election_max_ms: 300, ..Default::default() };
    let connectors = chorus_connectors::Connectors::start(Vec::new()).await.unwrap();
    let clock = Arc::new(Clock::manual(store.clone()).unwrap());
    let shards = Shards::open(1, "127.0.0.1:0", store.clone(), clock.clone(), config, tuning, connectors).await.unwrap();
    let send = |mid: &'static str| {
        let shards = shards.clone();
        async move { shards.ingest(vec![ev(mid)]).await.remove(0).unwrap() }
    };

    assert!(matches!(send("m1").await, EventOutcome::Applied { .. }));
    clock.advance(30 * 60_000).unwrap();
    assert!(matches!(send("m2").await, EventOutcome::Applied { .. }));
    assert!(matches!(send("m1").await, EventOutcome::Duplicate), "inside the window");
    assert_eq!(dedup_records(&store), vec!["m1", "m2"]);

    // 61 minutes after m1: its record goes with the next round, m2's stays.
    clock.advance(31 * 60_000).unwrap();
    assert!(matches!(send("m3").await, EventOutcome::Applied { .. }));
    assert_eq!(dedup_records(&store), vec!["m2", "m3"]);
    // Rounds in between that find nothing old enough leave everything in place.
    assert!(matches!(send("m4").await, EventOutcome::Applied { .. }));
    assert_eq!(dedup_records(&store), vec!["m2", "m3", "m4"]);
    // Past m2's window too, and m1 is accepted again (a new record).
    clock.advance(30 * 60_000).unwrap();
    assert!(matches!(send("m1").await, EventOutcome::Applied { .. }), "expired ids are new again");
    assert_eq!(dedup_records(&store), vec!["m3", "m4", "m1"]);
    shards.shutdown().await;
}
