//! In-process stories of identity resolution across shards (SPEC §3.1, §4.2): a node's
//! shards with real raft groups and storage, driven through `Shards::ingest`.

use chorus_shard::{Clock, ShardConfig, Shards};
use chorus_types::{CustomerId, Event, EventInput, Identity, IdentityKind};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn ev(mid: &str, kind: &str, name: &str, ids: &[(&str, &str)]) -> Event {
    EventInput {
        message_id: mid.into(),
        event_type: kind.into(),
        name: name.into(),
        identities: ids.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        timestamp_ms: 1,
        ..Default::default()
    }
    .validate()
    .unwrap()
}

fn id(kind: IdentityKind, v: &str) -> Identity {
    Identity::normalize(kind, v).unwrap()
}

async fn open(dir: &std::path::Path, shards: u32) -> Shards {
    let store = chorus_store::Store::open(dir, Default::default()).unwrap();
    let config = ShardConfig { shard_count: shards, ..ShardConfig::default() };
    let tuning = chorus_raft::GroupTuning { heartbeat_ms: 50, election_min_ms: 150, election_max_ms: 300, ..Default::default() };
    let capture = chorus_connectors::capture::CaptureConnector::new(store.clone(), Box::new(|| 0)).unwrap();
    let connectors = chorus_connectors::Connectors::start(vec![("email".into(), Arc::new(capture), Default::default())]).await.unwrap();
    Shards::open(1, "127.0.0.1:0", store, Arc::new(Clock::system()), config, tuning, connectors).await.unwrap()
}

async fn send(shards: &Shards, events: Vec<Event>) {
    for r in shards.ingest(events).await {
        r.unwrap();
    }
}

/// Wait until every shard has delivered its cross-shard messages.
async fn settle(shards: &Shards) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pending: u64 = shards.status().iter().map(|s| s.pending_cross_shard).sum();
        if pending == 0 {
            // Twice in a row, a little apart: a delivery may create new messages.
            tokio::time::sleep(Duration::from_millis(300)).await;
            if shards.status().iter().map(|s| s.pending_cross_shard).sum::<u64>() == 0 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "cross-shard messages still pending: {pending}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn owner_of(shards: &Shards, identity: &Identity) -> CustomerId {
    let c = shards.find(identity).await.unwrap().unwrap_or_else(|| panic!("{identity} is not indexed"));
    let (state, _) = shards.customer_following_merges(c).await.unwrap().unwrap();
    state.id
}

async fn classic_story(shard_count: u32) {
    let dir = tempfile::tempdir().unwrap();
    let shards = open(dir.path(), shard_count).await;
    eprintln!("--- anonymous browsing on two devices");
    send(&shards, vec![ev("v1", "track", "Product Viewed", &[("anonymous_id", "A1")])]).await;
    send(&shards, vec![ev("v2", "track", "Product Viewed", &[("anonymous_id", "A1")])]).await;
    send(&shards, vec![ev("v3", "track", "Product Viewed", &[("anonymous_id", "A2")])]).await;
    settle(&shards).await;
    eprintln!("--- login on device 1, email capture on device 2");
    send(&shards, vec![ev("l1", "identify", "", &[("user_id", "U"), ("anonymous_id", "A1")])]).await;
    settle(&shards).await;
    send(&shards, vec![ev("e1", "track", "Signed Up", &[("user_id", "U"), ("email", "ada@example.com"), ("anonymous_id", "A2")])]).await;
    settle(&shards).await;
    eprintln!("--- one profile holds all history");
    let u = owner_of(&shards, &id(IdentityKind::UserId, "U")).await;
    for k in [id(IdentityKind::AnonymousId, "A1"), id(IdentityKind::AnonymousId, "A2"), id(IdentityKind::Email, "ada@example.com")] {
        assert_eq!(owner_of(&shards, &k).await, u, "{k} resolves to the user");
    }
    let (state, _) = shards.customer_following_merges(u).await.unwrap().unwrap();
    assert_eq!(state.event_count, 5, "history: {:?}", state.history.iter().map(|h| &h.message_id).collect::<Vec<_>>());
    let mut mids: Vec<&str> = state.history.iter().map(|h| h.message_id.as_str()).collect();
    mids.sort();
    assert_eq!(mids, vec!["e1", "l1", "v1", "v2", "v3"]);
    assert!(state.identities.contains(&id(IdentityKind::UserId, "U")));
    assert_eq!(state.identities.len(), 4, "{:?}", state.identities);
    shards.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_story_single_shard() {
    classic_story(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_story_across_shards() {
    classic_story(16).await;
}

async fn shared_device(shard_count: u32) {
    let dir = tempfile::tempdir().unwrap();
    let shards = open(dir.path(), shard_count).await;
    eprintln!("--- U1 logs in on device D");
    send(&shards, vec![ev("a", "identify", "", &[("user_id", "U1"), ("anonymous_id", "D")])]).await;
    settle(&shards).await;
    let u1 = owner_of(&shards, &id(IdentityKind::UserId, "U1")).await;
    assert_eq!(owner_of(&shards, &id(IdentityKind::AnonymousId, "D")).await, u1);
    eprintln!("--- U2 logs in on the same device: last login wins, no merge");
    send(&shards, vec![ev("b", "identify", "", &[("user_id", "U2"), ("anonymous_id", "D")])]).await;
    settle(&shards).await;
    let u2 = owner_of(&shards, &id(IdentityKind::UserId, "U2")).await;
    assert_ne!(u1, u2, "two user ids never merge");
    assert_eq!(owner_of(&shards, &id(IdentityKind::AnonymousId, "D")).await, u2, "the device follows the last login");
    let s1 = shards.customer(u1).await.unwrap().unwrap();
    let s2 = shards.customer(u2).await.unwrap().unwrap();
    assert!(s1.merged_into.is_none() && s2.merged_into.is_none());
    assert!(!s1.identities.contains(&id(IdentityKind::AnonymousId, "D")), "{:?}", s1.identities);
    assert!(s2.identities.contains(&id(IdentityKind::AnonymousId, "D")));
    for s in [&s1, &s2] {
        assert!(s.decisions.iter().any(|d| d.kind == chorus_engine::DecisionKind::IdentityConflict), "{} decisions: {:?}", s.id, s.decisions);
    }
    shards.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_device_single_shard() {
    shared_device(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_device_across_shards() {
    shared_device(16).await;
}

/// Events keep arriving for both profiles while their cross-shard merge is in flight:
/// inputs for a frozen customer are held and then applied to (or forwarded to) the
/// survivor — none lost, none applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_during_a_cross_shard_merge_are_held_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let shards = open(dir.path(), 16).await;
    let mut expected = 0u64;
    for round in 0..20 {
        // Each round links a fresh anonymous browser to a fresh email while both keep
        // sending events, without waiting for the merge to finish.
        let anon = format!("anon-{round}");
        let email = format!("user{round}@example.com");
        send(&shards, vec![ev(&format!("a{round}"), "track", "Product Viewed", &[("anonymous_id", &anon)])]).await;
        send(&shards, vec![ev(&format!("e{round}"), "track", "Newsletter", &[("email", &email)])]).await;
        expected += 2;
        let mut burst = vec![ev(&format!("link{round}"), "identify", "", &[("email", &email), ("anonymous_id", &anon)])];
        for i in 0..10 {
            burst.push(ev(&format!("x{round}-{i}"), "track", "Product Viewed", &[("anonymous_id", &anon)]));
            burst.push(ev(&format!("y{round}-{i}"), "track", "Product Viewed", &[("email", &email)]));
        }
        expected += burst.len() as u64;
        send(&shards, burst).await;
        for i in 0..5 {
            send(&shards, vec![ev(&format!("z{round}-{i}"), "track", "Product Viewed", &[("anonymous_id", &anon)])]).await;
        }
        expected += 5;
    }
    settle(&shards).await;
    let mut total = 0;
    for round in 0..20 {
        let a = owner_of(&shards, &id(IdentityKind::AnonymousId, &format!("anon-{round}"))).await;
        let e = owner_of(&shards, &id(IdentityKind::Email, &format!("user{round}@example.com"))).await;
        assert_eq!(a, e, "round {round}: both keys resolve to one customer");
        let (state, _) = shards.customer_following_merges(a).await.unwrap().unwrap();
        let mut mids: Vec<&str> = state.history.iter().map(|h| h.message_id.as_str()).collect();
        mids.sort();
        let before = mids.len();
        mids.dedup();
        assert_eq!(before, mids.len(), "round {round}: an event was applied twice");
        assert_eq!(state.event_count, 28, "round {round}: {mids:?}");
        total += state.event_count;
    }
    assert_eq!(total, expected);
    let held: u64 = shards.status().iter().map(|s| s.held_inputs).sum();
    assert!(held > 0, "the burst arrived while customers were frozen, so inputs were held");
    eprintln!("inputs held during merges: {held}");
    shards.shutdown().await;
}
