//! Seeded fault simulation of the consensus layer: five nodes (each with its own fjall
//! store) run two replicated groups over an in-process network that the seed drives —
//! partitions, crashes and restarts from disk, delayed messages — while a client writes.
//! Safety is checked after every step (never two leaders for one group and term; a
//! write acknowledged once is never lost and nothing is applied twice) and a liveness
//! phase heals everything and requires every replica to converge on the same state.
//!
//! The fault schedule is a pure function of the seed (printed; replay one with
//! `CHORUS_SIM_SEED=N`, run more with `CHORUS_SIM_SEEDS=N`). Thread scheduling and
//! openraft's election jitter are not under the seed, so a replay repeats the faults,
//! not every interleaving.

use super::*;
use crate::transport::Raft;
use chorus_types::ShardOp;
use futures::future::BoxFuture;
use openraft::OptionalSend;
use openraft::alias::{SnapshotOf, VoteOf};
use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse};
use openraft_multi::GroupRouter;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::sync::Mutex;

const NODES: u64 = 5;
/// Each group's voters.
const GROUPS: [(u32, [u64; 3]); 2] = [(10, [1, 2, 3]), (11, [3, 4, 5])];
const STEPS: usize = 60;

type Rng = chorus_types::seeded::SeededRng;

#[derive(Default)]
struct World {
    rafts: HashMap<(NodeId, u32), Raft>,
    cut: HashSet<(NodeId, NodeId)>,
    down: HashSet<NodeId>,
}

#[derive(Clone)]
struct SimRouter {
    me: NodeId,
    world: Arc<Mutex<World>>,
}

impl SimRouter {
    fn target(&self, to: NodeId, group: u32) -> Result<Raft, Unreachable<TypeConfig>> {
        let w = self.world.lock().unwrap();
        if w.down.contains(&self.me) || w.down.contains(&to) || w.cut.contains(&(self.me, to)) || w.cut.contains(&(to, self.me)) {
            return Err(Unreachable::from_string(format!("{} cannot reach {to}", self.me)));
        }
        w.rafts.get(&(to, group)).cloned().ok_or_else(|| Unreachable::from_string(format!("{to} does not host {group}")))
    }
}

fn unreachable(e: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(e))
}

impl GroupRouter<TypeConfig, u32> for SimRouter {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &self,
        to: NodeId,
        g: u32,
        rpc: AppendEntriesRequest<TypeConfig>,
        _o: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let r = self.target(to, g).map_err(RPCError::Unreachable)?;
        r.append_entries(rpc).await.map_err(unreachable)
    }
    async fn vote(&self, to: NodeId, g: u32, rpc: VoteRequest<TypeConfig>, _o: RPCOption) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let r = self.target(to, g).map_err(RPCError::Unreachable)?;
        r.vote(rpc).await.map_err(unreachable)
    }
    async fn pre_vote(&self, to: NodeId, g: u32, rpc: VoteRequest<TypeConfig>, _o: RPCOption) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let r = self.target(to, g).map_err(RPCError::Unreachable)?;
        r.pre_vote(rpc).await.map_err(unreachable)
    }
    async fn transfer_leader(
        &self,
        to: NodeId,
        g: u32,
        req: TransferLeaderRequest<TypeConfig>,
        _o: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let r = self.target(to, g).map_err(RPCError::Unreachable)?;
        r.handle_transfer_leader(req).await.map_err(unreachable)
    }
    async fn full_snapshot(
        &self,
        to: NodeId,
        g: u32,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, Vec<u8>>,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _o: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let r = self.target(to, g).map_err(StreamingError::Unreachable)?;
        r.install_full_snapshot(vote, snapshot).await.map_err(|e| StreamingError::Unreachable(Unreachable::from_string(e)))
    }
}

/// A ledger: how many times each command id was applied.
struct Ledger {
    group: u32,
    store: Store,
}

impl Ledger {
    fn key(&self, id: u64) -> Vec<u8> {
        chorus_store::keys::shard_key(self.group, b'l', &id.to_be_bytes())
    }
    fn meta_key(&self) -> Vec<u8> {
        chorus_store::keys::shard_key(self.group, b'm', b"")
    }
    fn entries(&self) -> BTreeMap<u64, u32> {
        let prefix = chorus_store::keys::shard_key(self.group, b'l', b"");
        self.store
            .shard()
            .prefix(&prefix)
            .map(|kv| {
                let (k, v) = kv.into_inner().unwrap();
                (u64::from_be_bytes(k[prefix.len()..].try_into().unwrap()), u32::from_be_bytes(v[..4].try_into().unwrap()))
            })
            .collect()
    }
}

impl Application for Ledger {
    fn apply(&self, entries: Vec<Applied>, raft_meta: Vec<u8>) -> BoxFuture<'_, io::Result<Vec<ShardResult>>> {
        Box::pin(async move {
            let mut b = self.store.batch();
            let mut seen: HashMap<u64, u32> = HashMap::new();
            let mut out = Vec::new();
            for e in entries {
                if let Some(cmd) = e.command {
                    let id = cmd.now_ms as u64;
                    let before = match seen.get(&id) {
                        Some(n) => *n,
                        None => {
                            self.store.shard().get(self.key(id)).map_err(io::Error::other)?.map(|v| u32::from_be_bytes(v[..4].try_into().unwrap())).unwrap_or(0)
                        }
                    };
                    seen.insert(id, before + 1);
                    b.insert(self.store.shard(), self.key(id), (before + 1).to_be_bytes().to_vec());
                }
                out.push(ShardResult::Done);
            }
            b.insert(self.store.shard(), self.meta_key(), raft_meta);
            b.commit().map_err(io::Error::other)?;
            Ok(out)
        })
    }
    fn load_raft_meta(&self) -> io::Result<Option<Vec<u8>>> {
        Ok(self.store.shard().get(self.meta_key()).map_err(io::Error::other)?.map(|v| v.to_vec()))
    }
    fn snapshot(&self) -> BoxFuture<'_, io::Result<Vec<u8>>> {
        Box::pin(async move { Ok(chorus_types::encoding::encode(&self.entries().into_iter().collect::<Vec<_>>())) })
    }
    fn install_snapshot(&self, data: Vec<u8>, raft_meta: Vec<u8>) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            let pairs: Vec<(u64, u32)> = chorus_types::encoding::decode(&data).map_err(io::Error::other)?;
            let mut b = self.store.batch();
            for (id, _) in self.entries() {
                b.remove(self.store.shard(), self.key(id));
            }
            for (id, n) in pairs {
                b.insert(self.store.shard(), self.key(id), n.to_be_bytes().to_vec());
            }
            b.insert(self.store.shard(), self.meta_key(), raft_meta);
            b.commit().map_err(io::Error::other)
        })
    }
}

struct SimNode {
    id: NodeId,
    _dir: tempfile::TempDir,
    store: Store,
    groups: BTreeMap<u32, Group>,
}

struct Sim {
    seed: u64,
    world: Arc<Mutex<World>>,
    nodes: Vec<SimNode>,
    tuning: GroupTuning,
    /// (group, term) → the node that led it.
    leaders: HashMap<(u32, u64), NodeId>,
    acked: BTreeMap<u32, Vec<u64>>,
    next_id: u64,
}

impl Sim {
    async fn start_group(&mut self, node: usize, group: u32) {
        let n = &self.nodes[node];
        let app = Arc::new(Ledger { group, store: n.store.clone() });
        let net = network::Network { group, router: SimRouter { me: n.id, world: self.world.clone() }, addresses: None };
        let g = Group::start_on(group, n.id, n.store.clone(), app, &self.tuning, &Transport::new(n.id, None), net).await.unwrap();
        self.world.lock().unwrap().rafts.insert((n.id, group), g.raft.clone());
        self.nodes[node].groups.insert(group, g);
    }

    async fn crash(&mut self, node: usize) {
        let id = self.nodes[node].id;
        self.world.lock().unwrap().down.insert(id);
        for (group, g) in std::mem::take(&mut self.nodes[node].groups) {
            self.world.lock().unwrap().rafts.remove(&(id, group));
            g.raft.shutdown().await.unwrap();
        }
    }

    async fn restart(&mut self, node: usize) {
        let id = self.nodes[node].id;
        for (group, voters) in GROUPS {
            if voters.contains(&id) {
                self.start_group(node, group).await;
            }
        }
        self.world.lock().unwrap().down.remove(&id);
    }

    fn check_safety(&mut self) {
        for n in &self.nodes {
            for (group, g) in &n.groups {
                let m = g.raft.metrics().borrow_watched().clone();
                if m.state == openraft::ServerState::Leader {
                    let prev = *self.leaders.entry((*group, m.current_term)).or_insert(n.id);
                    assert_eq!(prev, n.id, "seed {}: group {group} has two leaders ({prev} and {}) in term {}", self.seed, n.id, m.current_term);
                }
            }
        }
    }

    async fn write(&mut self, rng: &mut Rng) {
        let (group, _) = GROUPS[rng.below(GROUPS.len() as u64) as usize];
        let leader = self.nodes.iter().filter_map(|n| n.groups.get(&group)).find(|g| g.is_leader()).cloned();
        let Some(leader) = leader else { return };
        self.next_id += 1;
        let id = self.next_id;
        let cmd = ShardCommand { now_ms: id as i64, op: ShardOp::Noop };
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), leader.propose(cmd)).await {
            self.acked.entry(group).or_default().push(id);
        }
    }
}

async fn run_seed(seed: u64) {
    let mut rng = Rng::new(seed, 0);
    let tuning = GroupTuning {
        heartbeat_ms: 40,
        election_min_ms: 150,
        election_max_ms: 300,
        snapshot_after_entries: 15,
        log_kept_after_snapshot: 2,
        restore_leadership: false,
        ..Default::default()
    };
    let mut sim = Sim { seed, world: Arc::default(), nodes: Vec::new(), tuning, leaders: HashMap::new(), acked: BTreeMap::new(), next_id: 0 };
    for id in 1..=NODES {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), chorus_store::StoreOptions::default()).unwrap();
        sim.nodes.push(SimNode { id, _dir: dir, store, groups: BTreeMap::new() });
    }
    for (group, voters) in GROUPS {
        let members: Vec<(NodeId, String)> = voters.iter().map(|v| (*v, format!("sim-{v}"))).collect();
        for v in voters {
            sim.start_group(v as usize - 1, group).await;
            sim.nodes[v as usize - 1].groups[&group].initialize(&members).await.unwrap();
        }
    }

    // Safety phase: faults chosen by the seed, writes in between, invariants after each step.
    let mut log = Vec::new();
    for _ in 0..STEPS {
        let roll = rng.below(100);
        let node = rng.below(NODES) as usize;
        let down: Vec<usize> = (0..NODES as usize).filter(|i| sim.world.lock().unwrap().down.contains(&(*i as u64 + 1))).collect();
        match roll {
            0..=49 => {
                for _ in 0..1 + rng.below(4) {
                    sim.write(&mut rng).await;
                }
            }
            50..=59 if down.len() < 2 && !down.contains(&node) => {
                log.push(format!("crash {}", node + 1));
                sim.crash(node).await;
            }
            60..=69 if !down.is_empty() => {
                let n = down[rng.below(down.len() as u64) as usize];
                log.push(format!("restart {}", n + 1));
                sim.restart(n).await;
            }
            70..=79 => {
                let id = node as u64 + 1;
                log.push(format!("isolate {id}"));
                let mut w = sim.world.lock().unwrap();
                for other in 1..=NODES {
                    if other != id {
                        w.cut.insert((id, other));
                    }
                }
            }
            80..=89 => {
                log.push("heal links".into());
                sim.world.lock().unwrap().cut.clear();
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(rng.below(120))).await;
        sim.check_safety();
    }

    // Liveness phase: heal and restart everything; every replica must converge.
    sim.world.lock().unwrap().cut.clear();
    for i in 0..NODES as usize {
        if sim.nodes[i].groups.is_empty() {
            sim.restart(i).await;
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        sim.check_safety();
        let mut converged = true;
        for (group, voters) in GROUPS {
            let gs: Vec<&Group> = voters.iter().map(|v| &sim.nodes[*v as usize - 1].groups[&group]).collect();
            let Some(leader) = gs.iter().find(|g| g.is_leader()) else {
                converged = false;
                continue;
            };
            let last = leader.status().last_log_index;
            converged &= gs.iter().all(|g| g.status().applied_index == last);
        }
        if converged {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "seed {seed}: no convergence within 30 s after healing; faults: {log:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every acknowledged write is on every replica, and nothing was applied twice.
    for (group, voters) in GROUPS {
        let ledgers: Vec<BTreeMap<u64, u32>> = voters.iter().map(|v| Ledger { group, store: sim.nodes[*v as usize - 1].store.clone() }.entries()).collect();
        for (v, l) in voters.iter().zip(&ledgers) {
            assert!(l.values().all(|n| *n == 1), "seed {seed}: node {v} applied a write of group {group} twice; faults: {log:?}");
            for id in sim.acked.get(&group).into_iter().flatten() {
                assert!(l.contains_key(id), "seed {seed}: node {v} lost acknowledged write {id} of group {group}; faults: {log:?}");
            }
            assert_eq!(l, &ledgers[0], "seed {seed}: replicas of group {group} differ; faults: {log:?}");
        }
    }
    let acked: usize = sim.acked.values().map(Vec::len).sum();
    eprintln!("sim seed {seed}: ok — {acked} writes acknowledged, {} leader terms seen, faults: {}", sim.leaders.len(), log.join(", "));
    for n in &sim.nodes {
        for g in n.groups.values() {
            let _ = g.raft.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_faults_never_break_safety_and_healing_converges() {
    let seeds: Vec<u64> = match std::env::var("CHORUS_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => {
            let n = std::env::var("CHORUS_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(6u64);
            (1..=n).collect()
        }
    };
    for seed in seeds {
        eprintln!("sim seed {seed} (replay with CHORUS_SIM_SEED={seed})");
        run_seed(seed).await;
    }
}
