//! Tests of the log store and state-machine adapter: openraft's own storage suite, a
//! single-voter group that survives a restart, and a three-replica group over the real
//! tonic transport on loopback (replication, failover, a new member caught up by a
//! streamed snapshot).

use super::*;
use chorus_types::{EventOutcome, ShardOp};
use futures::future::BoxFuture;
use std::io;
use std::sync::Mutex;

/// A small real application: counts applied commands per group in the store.
struct Counter {
    group: u32,
    store: Store,
    seen: Mutex<Vec<u64>>,
}

impl Counter {
    fn key(&self, what: u8) -> Vec<u8> {
        chorus_store::keys::shard_key(self.group, what, b"")
    }
}

impl Application for Counter {
    fn apply(&self, entries: Vec<Applied>, raft_meta: Vec<u8>) -> BoxFuture<'_, io::Result<Vec<ShardResult>>> {
        Box::pin(async move {
            let mut count: u64 =
                self.store.shard().get(self.key(b'n')).map_err(io::Error::other)?.map(|v| u64::from_le_bytes(v[..8].try_into().unwrap())).unwrap_or(0);
            let mut results = Vec::new();
            for e in &entries {
                self.seen.lock().unwrap().push(e.index);
                if e.command.is_some() {
                    count += 1;
                }
                results.push(ShardResult::Ingest(vec![EventOutcome::Duplicate; count as usize % 3]));
            }
            let mut b = self.store.batch();
            b.insert(self.store.shard(), self.key(b'n'), count.to_le_bytes().to_vec());
            b.insert(self.store.shard(), self.key(b'm'), raft_meta);
            b.commit().map_err(io::Error::other)?;
            Ok(results)
        })
    }
    fn load_raft_meta(&self) -> io::Result<Option<Vec<u8>>> {
        Ok(self.store.shard().get(self.key(b'm')).map_err(io::Error::other)?.map(|v| v.to_vec()))
    }
    fn snapshot(&self) -> BoxFuture<'_, io::Result<Vec<u8>>> {
        Box::pin(async move { Ok(self.store.shard().get(self.key(b'n')).map_err(io::Error::other)?.map(|v| v.to_vec()).unwrap_or_default()) })
    }
    fn install_snapshot(&self, data: Vec<u8>, raft_meta: Vec<u8>) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            let mut b = self.store.batch();
            if data.is_empty() {
                b.remove(self.store.shard(), self.key(b'n'));
            } else {
                b.insert(self.store.shard(), self.key(b'n'), data);
            }
            b.insert(self.store.shard(), self.key(b'm'), raft_meta);
            b.commit().map_err(io::Error::other)
        })
    }
}

struct Builder {
    dirs: Mutex<Vec<tempfile::TempDir>>,
}

impl openraft::testing::log::StoreBuilder<TypeConfig, log_store::LogStore, state_machine::StateMachine, ()> for Builder {
    async fn build(&self) -> Result<((), log_store::LogStore, state_machine::StateMachine), openraft::StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), chorus_store::StoreOptions::default()).unwrap();
        self.dirs.lock().unwrap().push(dir);
        let app = Arc::new(Counter { group: 7, store: store.clone(), seen: Mutex::new(Vec::new()) });
        Ok(((), log_store::LogStore::new(7, store), state_machine::StateMachine::new(7, app)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes_on_the_fjall_log_store() {
    openraft::testing::log::Suite::test_all(Builder { dirs: Mutex::new(Vec::new()) }).await.unwrap();
}

fn cmd(i: i64) -> ShardCommand {
    ShardCommand { now_ms: i, op: ShardOp::Noop }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_voter_group_commits_and_recovers_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let tuning = GroupTuning { heartbeat_ms: 50, election_min_ms: 150, election_max_ms: 300, ..Default::default() };
    let last_index;
    {
        let store = Store::open(dir.path(), chorus_store::StoreOptions::default()).unwrap();
        let app = Arc::new(Counter { group: 3, store: store.clone(), seen: Mutex::new(Vec::new()) });
        let group = Group::start(3, 1, store.clone(), app.clone(), &tuning, &Transport::new(1, None)).await.unwrap();
        group.initialize_single("127.0.0.1:0").await.unwrap();
        group.wait_leader(Duration::from_secs(5)).await.unwrap();
        let (i1, _) = group.propose(cmd(1)).await.unwrap();
        let results = group.propose_many((0..5).map(cmd).collect()).await;
        assert_eq!(results.len(), 5);
        let indexes: Vec<u64> = results.into_iter().map(|r| r.unwrap().0).collect();
        assert_eq!(indexes, (i1 + 1..=i1 + 5).collect::<Vec<_>>());
        last_index = indexes[4];
        group.wait_applied(last_index, Duration::from_secs(5)).await.unwrap();
        let status = group.status();
        assert!(status.is_leader);
        assert_eq!(status.voters, vec![1]);
        assert_eq!(status.applied_index, last_index);
        group.shutdown().await.unwrap();
    }
    // Reopen: the group is already initialized, keeps its applied state and log.
    let store = Store::open(dir.path(), chorus_store::StoreOptions::default()).unwrap();
    let app = Arc::new(Counter { group: 3, store: store.clone(), seen: Mutex::new(Vec::new()) });
    let group = Group::start(3, 1, store.clone(), app.clone(), &tuning, &Transport::new(1, None)).await.unwrap();
    group.initialize_single("127.0.0.1:0").await.unwrap();
    group.wait_leader(Duration::from_secs(5)).await.unwrap();
    let (next, _) = group.propose(cmd(9)).await.unwrap();
    assert!(next > last_index, "log continues after restart: {next} > {last_index}");
    let count = store.shard().get(chorus_store::keys::shard_key(3, b'n', b"")).unwrap().unwrap();
    assert_eq!(u64::from_le_bytes(count[..8].try_into().unwrap()), 7, "each command applied exactly once");
    group.shutdown().await.unwrap();
}

fn count(store: &Store, group: u32) -> u64 {
    store.shard().get(chorus_store::keys::shard_key(group, b'n', b"")).unwrap().map(|v| u64::from_le_bytes(v[..8].try_into().unwrap())).unwrap_or(0)
}

struct TestNode {
    id: NodeId,
    _dir: tempfile::TempDir,
    store: Store,
    transport: Transport,
    addr: String,
    group: Option<Group>,
}

async fn test_node(id: NodeId) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), chorus_store::StoreOptions::default()).unwrap();
    let transport = Transport::new(id, None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let t = transport.clone();
    tokio::spawn(async move { t.serve(listener, std::future::pending()).await.unwrap() });
    TestNode { id, _dir: dir, store, transport, addr, group: None }
}

async fn leader_of(nodes: &[TestNode], timeout: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(i) = nodes.iter().position(|n| n.group.as_ref().is_some_and(|g| g.is_leader())) {
            return i;
        }
        assert!(tokio::time::Instant::now() < deadline, "no leader within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_replicate_fail_over_and_catch_up_a_new_member_by_snapshot() {
    const G: u32 = 5;
    let tuning = GroupTuning {
        heartbeat_ms: 50,
        election_min_ms: 200,
        election_max_ms: 400,
        snapshot_after_entries: 40,
        log_kept_after_snapshot: 0,
        restore_leadership: false,
        ..Default::default()
    };
    let mut nodes = Vec::new();
    for id in 1..=4 {
        nodes.push(test_node(id).await);
    }
    let members: Vec<(NodeId, String)> = nodes[..3].iter().map(|n| (n.id, n.addr.clone())).collect();
    for n in &mut nodes[..3] {
        let app = Arc::new(Counter { group: G, store: n.store.clone(), seen: Mutex::new(Vec::new()) });
        let g = Group::start(G, n.id, n.store.clone(), app, &tuning, &n.transport).await.unwrap();
        g.initialize(&members).await.unwrap();
        n.group = Some(g);
    }
    tracing::info!("--- a leader is elected and commands replicate to every voter");
    let l = leader_of(&nodes, Duration::from_secs(10)).await;
    let leader = nodes[l].group.clone().unwrap();
    let mut last = 0;
    for chunk in 0..10 {
        for r in leader.propose_many((0..10).map(|i| cmd(chunk * 10 + i)).collect()).await {
            last = r.unwrap().0;
        }
    }
    for n in &nodes[..3] {
        n.group.as_ref().unwrap().wait_applied(last, Duration::from_secs(10)).await.unwrap();
        assert_eq!(count(&n.store, G), 100, "node {} applied every command once", n.id);
    }
    assert_eq!(leader.status().voters, vec![1, 2, 3]);

    tracing::info!("--- the leader stops: another voter takes over and commits");
    let old = nodes[l].id;
    leader.shutdown().await.unwrap();
    nodes[l].group = None;
    let mut l2 = leader_of(&nodes, Duration::from_secs(10)).await;
    assert_ne!(nodes[l2].id, old);
    // A fresh leader on a loaded machine may lose an early election race: a command
    // it refuses as not the leader was never appended, so it goes to whoever leads next.
    for i in 0..10 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match nodes[l2].group.clone().unwrap().propose(cmd(i)).await {
                Ok((index, _)) => {
                    last = index;
                    break;
                }
                Err(RaftError::NotLeader { .. }) if tokio::time::Instant::now() < deadline => {
                    l2 = leader_of(&nodes, Duration::from_secs(10)).await;
                }
                Err(e) => panic!("command {i} after the failover: {e}"),
            }
        }
    }
    assert_ne!(nodes[l2].id, old);
    let leader = nodes[l2].group.clone().unwrap();
    leader.wait_applied(last, Duration::from_secs(10)).await.unwrap();
    assert_eq!(count(&nodes[l2].store, G), 110);

    tracing::info!("--- a fourth node joins as a learner: the purged log means a streamed snapshot");
    let app = Arc::new(Counter { group: G, store: nodes[3].store.clone(), seen: Mutex::new(Vec::new()) });
    let g4 = Group::start(G, 4, nodes[3].store.clone(), app.clone(), &tuning, &nodes[3].transport).await.unwrap();
    nodes[3].group = Some(g4.clone());
    leader.add_learner(4, &nodes[3].addr).await.unwrap();
    g4.wait_applied(last, Duration::from_secs(10)).await.unwrap();
    assert_eq!(count(&nodes[3].store, G), 110, "the learner has the state");
    assert!(app.seen.lock().unwrap().len() < 110, "the learner got most of it by snapshot, not by replaying entries");

    tracing::info!("--- the learner replaces the stopped voter");
    let mut voters: Vec<NodeId> = nodes.iter().filter(|n| n.group.is_some()).map(|n| n.id).collect();
    voters.sort();
    leader.set_voters(&voters, false).await.unwrap();
    assert_eq!(leader.status().voters, voters);
    let (i, _) = leader.propose(cmd(1)).await.unwrap();
    g4.wait_applied(i, Duration::from_secs(10)).await.unwrap();
    assert_eq!(count(&nodes[3].store, G), 111);
    for n in &nodes {
        if let Some(g) = &n.group {
            g.shutdown().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_quorum_refuses_linearizable_reads() {
    const G: u32 = 6;
    let tuning = GroupTuning { heartbeat_ms: 50, election_min_ms: 200, election_max_ms: 400, restore_leadership: false, ..Default::default() };
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(test_node(id).await);
    }
    let members: Vec<(NodeId, String)> = nodes.iter().map(|n| (n.id, n.addr.clone())).collect();
    for n in &mut nodes {
        let app = Arc::new(Counter { group: G, store: n.store.clone(), seen: Mutex::new(Vec::new()) });
        let g = Group::start(G, n.id, n.store.clone(), app, &tuning, &n.transport).await.unwrap();
        g.initialize(&members).await.unwrap();
        n.group = Some(g);
    }
    let l = leader_of(&nodes, Duration::from_secs(10)).await;
    let leader = nodes[l].group.clone().unwrap();
    let (index, _) = leader.propose(cmd(1)).await.unwrap();
    leader.ensure_linearizable(Duration::from_secs(5)).await.expect("a leader with its quorum serves linearizable reads");
    assert!(leader.status().applied_index >= index, "the read point waits for what was committed before it");
    for (i, n) in nodes.iter_mut().enumerate() {
        if i != l {
            n.group.take().unwrap().shutdown().await.unwrap();
        }
    }
    // Without its followers the leader cannot confirm it still leads: it refuses (a
    // partitioned old leader would otherwise answer with a state others moved past).
    let refused = leader.ensure_linearizable(Duration::from_secs(2)).await;
    assert!(matches!(refused, Err(RaftError::NotLeader { .. })), "{refused:?}");
    leader.shutdown().await.unwrap();
}
