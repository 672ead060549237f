//! Passivation (SPEC §3.5): only active customers are actors. Idle actors are stopped
//! after `actor_idle_ms`, the least recently used go beyond `live_actors_max`, and a
//! passivated customer's state is loaded from the store on its next input.

use chorus_shard::{Clock, ShardConfig, Shards};
use chorus_types::{Event, EventInput, Identity, IdentityKind};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn ev(mid: String, user: String) -> Event {
    EventInput {
        message_id: mid,
        event_type: "track".into(),
        name: "Product Viewed".into(),
        identities: vec![("user_id".into(), user)],
        timestamp_ms: 1,
        ..Default::default()
    }
    .validate()
    .unwrap()
}

fn live(shards: &Shards) -> u64 {
    shards.status().iter().map(|s| s.live_actors).sum()
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_excess_actors_are_passivated_and_reactivated_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = chorus_store::Store::open(dir.path(), Default::default()).unwrap();
    let config = ShardConfig { shard_count: 1, actor_idle_ms: 5_000, live_actors_max: 5, ..ShardConfig::default() };
    let tuning = chorus_raft::GroupTuning { heartbeat_ms: 50, election_min_ms: 150, election_max_ms: 300, ..Default::default() };
    let connectors = chorus_connectors::Connectors::start(Vec::new()).await.unwrap();
    let shards = Shards::open(1, "127.0.0.1:0", store, Arc::new(Clock::system()), config, tuning, connectors).await.unwrap();

    eprintln!("--- 20 customers become active: beyond the cap the least recently used go");
    let events: Vec<Event> = (0..20).map(|c| ev(format!("a-{c}"), format!("u{c}"))).collect();
    for r in shards.ingest(events).await {
        r.unwrap();
    }
    wait_for("the cap to be enforced", || live(&shards) <= 5).await;
    assert!(live(&shards) > 0, "the cap, not idleness, passivated them (idle is 5 s)");

    eprintln!("--- idle actors are passivated");
    wait_for("every idle actor to be passivated", || live(&shards) == 0).await;

    eprintln!("--- a passivated customer is reloaded from the store on its next input");
    for round in 1..=3 {
        let events: Vec<Event> = (0..20).map(|c| ev(format!("b{round}-{c}"), format!("u{c}"))).collect();
        for r in shards.ingest(events).await {
            r.unwrap();
        }
    }
    for c in 0..20 {
        let id = shards.find(&Identity::normalize(IdentityKind::UserId, &format!("u{c}")).unwrap()).await.unwrap().unwrap();
        let state = shards.customer(id).await.unwrap().unwrap();
        assert_eq!(state.event_count, 4, "u{c}: events before and after passivation all count");
        let mids: Vec<&str> = state.history.iter().map(|h| h.message_id.as_str()).collect();
        assert_eq!(mids, vec![format!("a-{c}"), format!("b1-{c}"), format!("b2-{c}"), format!("b3-{c}")]);
    }
    shards.shutdown().await;
}
