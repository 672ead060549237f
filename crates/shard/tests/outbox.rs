//! The outbox and durable timers across restarts (SPEC §3.6, §3.7): an intent whose
//! outcome was never recorded is re-driven after a restart with the same idempotency
//! key, so the capture connector (which honours keys) stores it once; a pending timer
//! fires after a restart.

use chorus_connectors::capture::{CaptureConnector, read_after};
use chorus_connectors::{Connector, Connectors, DeliveryError};
use chorus_shard::{Clock, ShardConfig, Shards};
use chorus_types::{Category, EventInput, Intent, JsonMap, SendOutcome, SendRequest};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Delivers to the capture store, then never reports back (as if the node died
/// between the provider's acceptance and the outcome's commit).
/// The store handle is released before the test reopens the data directory.
struct DeliverThenHang(std::sync::Mutex<Option<Arc<CaptureConnector>>>);

impl Connector for DeliverThenHang {
    fn name(&self) -> &str {
        "deliver-then-hang"
    }
    fn deliver<'a>(&'a self, intent: &'a Intent) -> Pin<Box<dyn Future<Output = Result<String, DeliveryError>> + Send + 'a>> {
        Box::pin(async move {
            let capture = self.0.lock().unwrap().clone().expect("not released yet");
            capture.deliver(intent).await?;
            drop(capture);
            std::future::pending::<()>().await;
            unreachable!()
        })
    }
}

async fn open(store: chorus_store::Store, clock: Arc<Clock>, hang: Option<Arc<DeliverThenHang>>) -> (Shards, chorus_store::Store) {
    let capture = Arc::new(CaptureConnector::new(store.clone(), Box::new(|| 0)).unwrap());
    let connector: Arc<dyn Connector> = match hang {
        Some(h) => {
            *h.0.lock().unwrap() = Some(capture);
            h
        }
        None => capture,
    };
    let connectors = Connectors::start(vec![("email".into(), connector, Default::default())]).await.unwrap();
    let config = ShardConfig { shard_count: 2, ..ShardConfig::default() };
    let tuning = chorus_raft::GroupTuning { heartbeat_ms: 50, election_min_ms: 150, election_max_ms: 300, ..Default::default() };
    (Shards::open(1, "127.0.0.1:0", store.clone(), clock, config, tuning, connectors).await.unwrap(), store)
}

/// Reopen the store once every handle of the previous run is gone.
async fn reopen(dir: &std::path::Path) -> chorus_store::Store {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match chorus_store::Store::open(dir, Default::default()) {
            Ok(s) => return s,
            Err(e) => {
                assert!(Instant::now() < deadline, "store still locked: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undelivered_intents_are_redriven_once_and_timers_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let customer;
    {
        let store = chorus_store::Store::open(dir.path(), Default::default()).unwrap();
        let clock = Arc::new(Clock::manual(store.clone()).unwrap());
        let hang = Arc::new(DeliverThenHang(std::sync::Mutex::new(None)));
        let (shards, store) = open(store, clock.clone(), Some(hang.clone())).await;
        eprintln!("--- a customer with an email, one send now and one in 24h");
        let e = EventInput {
            message_id: "m1".into(),
            event_type: "identify".into(),
            identities: vec![("user_id".into(), "u1".into()), ("email".into(), "ada@example.com".into())],
            timestamp_ms: 1,
            ..Default::default()
        }
        .validate()
        .unwrap();
        let outcome = shards.ingest(vec![e]).await.remove(0).unwrap();
        let chorus_types::EventOutcome::Applied { customer: c } = outcome else { panic!("{outcome:?}") };
        customer = c;
        let now = clock.now_ms();
        let req = |id: &str, at: i64| SendRequest {
            request_id: id.into(),
            customer,
            channel: "email".into(),
            template: "welcome".into(),
            category: Category::Transactional,
            vars: JsonMap::new(),
            send_at_ms: at,
            topic: String::new(),
        };
        let out = shards.send(vec![req("now", 0), req("later", now + 86_400_000)]).await;
        assert_eq!(out[0].as_ref().unwrap(), &SendOutcome::Accepted { customer });
        assert_eq!(out[1].as_ref().unwrap(), &SendOutcome::Scheduled { customer, at_ms: now + 86_400_000 });
        eprintln!("--- the provider accepts the first message but its outcome is never recorded");
        wait_for("the first message to be captured", || read_after(&store, 0, 10).unwrap().len() == 1).await;
        let s = shards.status();
        assert_eq!(s.iter().map(|s| s.pending_intents).sum::<u64>(), 1, "the outcome is not recorded yet");
        assert_eq!(s.iter().map(|s| s.pending_timers).sum::<u64>(), 1);
        shards.shutdown().await;
        hang.0.lock().unwrap().take();
        drop(shards);
        drop(clock);
        drop(store);
        // Let the runtime finish dropping the groups' tasks that hold the store.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!("--- restart with a working connector");
    let store = reopen(dir.path()).await;
    let clock = Arc::new(Clock::manual(store.clone()).unwrap());
    let (shards, store) = open(store, clock.clone(), None).await;
    wait_for("the re-driven intent's outcome", || shards.status().iter().map(|s| s.pending_intents).sum::<u64>() == 0).await;
    let captured = read_after(&store, 0, 10).unwrap();
    assert_eq!(captured.len(), 1, "re-driven with the same key: stored once");
    assert_eq!(captured[0].intent.key, format!("api/now/{customer}"));
    eprintln!("--- the timer is still pending and fires when the clock reaches it");
    assert_eq!(shards.status().iter().map(|s| s.pending_timers).sum::<u64>(), 1);
    clock.advance(86_400_000).unwrap();
    wait_for("the scheduled message", || read_after(&store, 0, 10).unwrap().len() == 2).await;
    let captured = read_after(&store, 0, 10).unwrap();
    assert_eq!(captured[1].intent.key, format!("api/later/{customer}"));
    wait_for("the timer to be gone", || shards.status().iter().map(|s| s.pending_timers).sum::<u64>() == 0).await;
    wait_for("the second outcome", || shards.status().iter().map(|s| s.pending_intents).sum::<u64>() == 0).await;
    let state = shards.customer(customer).await.unwrap().unwrap();
    let kinds: Vec<&str> = state.decisions.iter().map(|d| d.kind.as_str()).collect();
    assert_eq!(kinds, vec!["created", "sent", "scheduled", "delivered", "sent", "delivered"], "{:?}", state.decisions);
    shards.shutdown().await;
}

/// A provider that rejects every message with a permanent error until it is fixed.
struct Rejecting {
    fixed: std::sync::atomic::AtomicBool,
    capture: Arc<CaptureConnector>,
}

impl Connector for Rejecting {
    fn name(&self) -> &str {
        "rejecting"
    }
    fn deliver<'a>(&'a self, intent: &'a Intent) -> Pin<Box<dyn Future<Output = Result<String, DeliveryError>> + Send + 'a>> {
        Box::pin(async move {
            if self.fixed.load(std::sync::atomic::Ordering::SeqCst) {
                self.capture.deliver(intent).await
            } else {
                Err(DeliveryError::Permanent("550 5.7.1 relay denied".into()))
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_messages_go_to_the_dead_letter_list_and_can_be_redriven() {
    let dir = tempfile::tempdir().unwrap();
    let store = chorus_store::Store::open(dir.path(), Default::default()).unwrap();
    let clock = Arc::new(Clock::manual(store.clone()).unwrap());
    let capture = Arc::new(CaptureConnector::new(store.clone(), Box::new(|| 0)).unwrap());
    let provider = Arc::new(Rejecting { fixed: false.into(), capture });
    let connectors = Connectors::start(vec![("email".into(), provider.clone() as Arc<dyn Connector>, Default::default())]).await.unwrap();
    let config = ShardConfig { shard_count: 2, ..ShardConfig::default() };
    let tuning = chorus_raft::GroupTuning { heartbeat_ms: 50, election_min_ms: 150, election_max_ms: 300, ..Default::default() };
    let shards = Shards::open(1, "127.0.0.1:0", store.clone(), clock.clone(), config, tuning, connectors).await.unwrap();
    let e = EventInput {
        message_id: "m1".into(),
        event_type: "identify".into(),
        identities: vec![("email".into(), "ada@example.com".into())],
        ..Default::default()
    }
    .validate()
    .unwrap();
    let chorus_types::EventOutcome::Applied { customer } = shards.ingest(vec![e]).await.remove(0).unwrap() else { panic!() };
    let req = SendRequest {
        request_id: "r1".into(),
        customer,
        channel: "email".into(),
        template: "welcome".into(),
        category: Category::Transactional,
        vars: JsonMap::new(),
        send_at_ms: 0,
        topic: String::new(),
    };
    shards.send(vec![req]).await.remove(0).unwrap();
    eprintln!("--- the provider refuses: the message lands in the dead-letter list with the reason");
    let deadline = Instant::now() + Duration::from_secs(20);
    while shards.dead_letters(10).await.unwrap().len() != 1 {
        assert!(Instant::now() < deadline, "timed out waiting for a dead letter");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead = shards.dead_letters(10).await.unwrap().remove(0);
    assert_eq!(
        (dead.intent.key.as_str(), dead.status.as_str(), dead.detail.as_str()),
        (format!("api/r1/{customer}").as_str(), "failed permanently", "550 5.7.1 relay denied")
    );
    assert_eq!(shards.status().iter().map(|s| s.pending_intents).sum::<u64>(), 0);
    eprintln!("--- once the provider is fixed, a redrive delivers it with the same key");
    provider.fixed.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(shards.redrive(vec![(customer, dead.intent.key.clone())]).await.unwrap(), 1);
    assert_eq!(shards.redrive(vec![(customer, dead.intent.key.clone())]).await.unwrap(), 0, "a key is redriven once");
    wait_for("the redriven message", || read_after(&store, 0, 10).unwrap().len() == 1).await;
    assert_eq!(read_after(&store, 0, 10).unwrap()[0].intent.key, dead.intent.key);
    assert!(shards.dead_letters(10).await.unwrap().is_empty());
    wait_for("the outcome", || shards.status().iter().map(|s| s.pending_intents).sum::<u64>() == 0).await;
    shards.shutdown().await;
}
