//! Seeded fault simulation of the whole cluster (SPEC §3, issue "Cluster" item 9): four
//! cluster nodes — each the real `Shards::open_cluster` with its own data directory, its
//! node-to-node tonic server on loopback, placement group, shard groups, actors,
//! timers, outbox and capture connector — run in one process while clients stream
//! events and messages through random nodes, and the seed drives the faults: crashes
//! (`Shards::abort`, then the data directory reopened), partitions and cut links (the
//! transport's fault gate), leadership transfers and shard moves (a replica added on
//! one node, caught up, promoted, removed from another).
//!
//! Safety is checked after every step: never two leaders for one shard in one term.
//! Then a liveness phase heals every link, restarts every crashed node, and requires
//! the cluster to converge: every shard led, every replica caught up, every client
//! request answered. Then the history is checked: every acknowledged event is in its
//! customer's history exactly once and in order, every acknowledged message was decided
//! exactly once (one "sent" decision per idempotency key) and delivered, scheduled ones
//! included (their timers fired once).
//!
//! The fault schedule and the workload are a pure function of the seed, printed with
//! every failure (replay one with `CHORUS_SIM_SEED=N`, run more with
//! `CHORUS_SIM_SEEDS=N`). Thread scheduling, network timing and openraft's election
//! jitter are not under the seed, so a replay repeats the faults, not every
//! interleaving.

use chorus_connectors::capture::{CaptureConnector, read_after};
use chorus_connectors::{Connector, Connectors};
use chorus_shard::cluster::ClusterSetup;
use chorus_shard::{Clock, ShardConfig, Shards};
use chorus_store::Store;
use chorus_types::{Category, CustomerId, EventInput, EventOutcome, Identity, JsonMap, NodeId, SendOutcome, SendRequest};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::time::Instant;

const NODES: usize = 4;
const REPLICATION: u32 = 3;
const SHARDS: u32 = 4;
const CUSTOMERS: usize = 8;
const EVENTS_PER_CUSTOMER: usize = 40;
const MESSAGES: usize = 24;
/// Fault steps of the safety phase.
const STEPS: usize = 36;
/// Longest a client waits for one answer before it re-sends.
const ANSWER_WAIT: Duration = Duration::from_secs(3);
/// How long the healed cluster has to converge and answer every client.
const CONVERGE_WAIT: Duration = Duration::from_secs(90);

type Rng = chorus_types::seeded::SeededRng;

/// The simulated network: which directed links are cut, which nodes are down.
#[derive(Default)]
struct Net {
    cut: HashSet<(NodeId, NodeId)>,
    down: HashSet<NodeId>,
    node_at: HashMap<String, NodeId>,
}

impl Net {
    fn allowed(&self, from: NodeId, to: NodeId, addr: &str) -> bool {
        let to = if to == 0 { self.node_at.get(addr).copied().unwrap_or(0) } else { to };
        !self.down.contains(&from) && !self.down.contains(&to) && !self.cut.contains(&(from, to))
    }
}

/// The nodes clients may talk to right now.
type Live = Arc<RwLock<Vec<Option<Shards>>>>;

struct SimNode {
    id: NodeId,
    dir: PathBuf,
    addr: String,
    running: Option<Running>,
}

struct Running {
    shards: Shards,
    store: Store,
    server_stop: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

struct Sim {
    seed: u64,
    net: Arc<Mutex<Net>>,
    live: Live,
    nodes: Vec<SimNode>,
    _dirs: Vec<tempfile::TempDir>,
    /// (shard, term) → the node that led it then.
    leaders: HashMap<(u32, u64), NodeId>,
    faults: Vec<String>,
}

/// Open the store in `dir` once the previous run's handles are gone.
async fn reopen(dir: &Path) -> Store {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Store::open(dir, Default::default()) {
            Ok(s) => return s,
            Err(e) => {
                assert!(Instant::now() < deadline, "the data directory {} is still held by the crashed instance: {e}", dir.display());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn bind(addr: &str) -> tokio::net::TcpListener {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot bind {addr} again: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

impl Sim {
    async fn start(&mut self, i: usize) {
        let (id, dir, addr) = (self.nodes[i].id, self.nodes[i].dir.clone(), self.nodes[i].addr.clone());
        let store = reopen(&dir).await;
        let listener = bind(&addr).await;
        let transport = chorus_raft::Transport::new(id, None);
        let net = self.net.clone();
        transport.set_fault_gate(Arc::new(move |to, addr| net.lock().unwrap().allowed(id, to, addr)));
        let (server_stop, mut rx) = tokio::sync::watch::channel(false);
        let t = transport.clone();
        let server = tokio::spawn(async move {
            let _ = t
                .serve(listener, async move {
                    let _ = rx.wait_for(|v| *v).await;
                })
                .await;
        });
        let clock = Arc::new(Clock::system());
        let c = clock.clone();
        let capture: Arc<dyn Connector> = Arc::new(CaptureConnector::new(store.clone(), Box::new(move || c.now_ms())).unwrap());
        let connectors = Connectors::start(vec![("email".into(), capture, Default::default())]).await.unwrap();
        let setup = ClusterSetup {
            advertise: addr.clone(),
            seeds: self.nodes.iter().map(|n| n.addr.clone()).collect(),
            grpc_addr: String::new(),
            http_addr: String::new(),
            version: "sim".into(),
        };
        let tuning = chorus_raft::GroupTuning {
            heartbeat_ms: 100,
            election_min_ms: 400,
            election_max_ms: 800,
            restore_leadership: false,
            snapshot_after_entries: 200,
            log_kept_after_snapshot: 20,
            ..Default::default()
        };
        let config = ShardConfig { shard_count: SHARDS, ..ShardConfig::default() };
        let shards = Shards::open_cluster(id, setup, transport, store.clone(), clock, config, tuning, connectors)
            .await
            .unwrap_or_else(|e| panic!("seed {}: node {id} does not open: {e}", self.seed));
        self.live.write().unwrap()[i] = Some(shards.clone());
        self.net.lock().unwrap().down.remove(&id);
        self.nodes[i].running = Some(Running { shards, store, server_stop, server });
    }

    /// Crash node `i`: it stops answering at once, loses its in-memory state and comes
    /// back (later) from what its data directory holds.
    async fn crash(&mut self, i: usize) {
        let Some(r) = self.nodes[i].running.take() else {
            return;
        };
        self.net.lock().unwrap().down.insert(self.nodes[i].id);
        self.live.write().unwrap()[i] = None;
        r.shards.abort().await;
        let _ = r.server_stop.send(true);
        if tokio::time::timeout(Duration::from_secs(5), r.server).await.is_err() {
            // Peers' connections are closed by the graceful stop; one that lingers is cut.
        }
        drop(r.shards);
        drop(r.store);
    }

    fn running(&self) -> Vec<usize> {
        (0..NODES).filter(|i| self.nodes[*i].running.is_some()).collect()
    }

    fn shards(&self, i: usize) -> Option<&Shards> {
        self.nodes[i].running.as_ref().map(|r| &r.shards)
    }

    /// Never two leaders of one shard in one term, as every running node reports it.
    fn check_safety(&mut self) {
        for i in self.running() {
            let s = self.shards(i).unwrap();
            let me = s.node_id();
            for st in s.status() {
                if st.leader == Some(me) {
                    let prev = *self.leaders.entry((st.shard, st.term)).or_insert(me);
                    assert_eq!(
                        prev, me,
                        "seed {}: shard {} has two leaders ({prev} and {me}) in term {}; faults: {:?}",
                        self.seed, st.shard, st.term, self.faults
                    );
                }
            }
        }
    }

    fn isolate(&mut self, id: NodeId) {
        let mut net = self.net.lock().unwrap();
        for other in 1..=NODES as NodeId {
            if other != id {
                net.cut.insert((id, other));
                net.cut.insert((other, id));
            }
        }
    }

    /// No move queued; every shard led, hosted by exactly the replicas placement gives
    /// it, each applied up to its leader's log, as seen from every running node.
    async fn converged(&self) -> Result<(), String> {
        let Some(any) = self.running().first().and_then(|i| self.shards(*i)).cloned() else {
            return Err("no node runs".into());
        };
        let placement = any.fresh_placement().await.map_err(|e| format!("placement: {e}"))?;
        if !placement.moves.is_empty() {
            return Err(format!("moves still queued: {:?}", placement.moves));
        }
        let mut last: BTreeMap<u32, u64> = BTreeMap::new();
        let mut replicas: BTreeMap<u32, BTreeMap<NodeId, u64>> = BTreeMap::new();
        for i in self.running() {
            let s = self.shards(i).unwrap();
            for st in s.status() {
                if st.leader == Some(s.node_id()) {
                    last.insert(st.shard, st.last_log_index);
                }
                replicas.entry(st.shard).or_default().insert(s.node_id(), st.applied_index);
            }
        }
        for shard in 0..SHARDS {
            let Some(l) = last.get(&shard) else {
                return Err(format!("shard {shard} has no leader"));
            };
            let hosted = replicas.get(&shard).cloned().unwrap_or_default();
            let want: BTreeSet<NodeId> = placement.shards[shard as usize].replicas.iter().copied().collect();
            if want.len() != REPLICATION as usize || hosted.keys().copied().collect::<BTreeSet<_>>() != want || hosted.values().any(|a| a < l) {
                return Err(format!("shard {shard}: placement {want:?}, leader at {l}, replicas (node → applied) {hosted:?}"));
            }
        }
        Ok(())
    }
}

fn live_node(live: &Live, rng: &mut Rng) -> Option<Shards> {
    let nodes = live.read().unwrap();
    let up: Vec<&Shards> = nodes.iter().flatten().collect();
    if up.is_empty() {
        return None;
    }
    Some(up[rng.below(up.len() as u64) as usize].clone())
}

fn event(c: usize, seq: usize) -> chorus_types::Event {
    let mut props = serde_json::Map::new();
    props.insert("customer".into(), c.into());
    props.insert("seq".into(), seq.into());
    let mut identities = vec![("user_id".to_string(), format!("sim-{c}"))];
    let (event_type, name) = if seq == 0 {
        identities.push(("email".into(), format!("sim-{c}@example.com")));
        ("identify", "")
    } else {
        ("track", "Sim Step")
    };
    EventInput { message_id: format!("sim-{c}-{seq}"), event_type: event_type.into(), name: name.into(), identities, properties: props, ..Default::default() }
        .validate()
        .unwrap()
}

/// What the clients were told.
#[derive(Default)]
struct Answers {
    /// Customer → its id (from its first acknowledged event).
    customers: HashMap<usize, CustomerId>,
    /// Customer → events acknowledged, in order.
    events: HashMap<usize, usize>,
    /// Request id → the customer it was for (acknowledged messages).
    messages: BTreeMap<String, CustomerId>,
    resent: u64,
    /// The last refusal a client saw (for a failure report).
    last_error: String,
}

/// One customer's lane: its events in order, each re-sent (same message id) to a random
/// running node until one acknowledges it.
async fn lane(c: usize, seed: u64, live: Live, answers: Arc<Mutex<Answers>>) {
    let mut rng = Rng::new(seed, 100 + c as u64);
    for seq in 0..EVENTS_PER_CUSTOMER {
        let e = event(c, seq);
        let identity: Identity = e.strongest_identity().clone();
        loop {
            let Some(node) = live_node(&live, &mut rng) else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let outcome = tokio::time::timeout(ANSWER_WAIT, node.ingest(vec![e.clone()])).await;
            let customer = match outcome {
                Ok(mut v) => match v.remove(0) {
                    Ok(EventOutcome::Applied { customer }) => Some(customer),
                    Ok(EventOutcome::Duplicate) => None,
                    Ok(other) => panic!("seed {seed}: event sim-{c}-{seq} answered {other:?}"),
                    // Unavailable, a node unreachable, a deposed leader: a real client
                    // re-sends; the message id makes that safe.
                    Err(e) => {
                        {
                            let mut a = answers.lock().unwrap();
                            a.resent += 1;
                            a.last_error = format!("event sim-{c}-{seq}: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                Err(_) => {
                    answers.lock().unwrap().resent += 1;
                    continue;
                }
            };
            if seq == 0 {
                let id = match customer {
                    Some(id) => id,
                    // A re-send of an event applied before: ask who the customer is.
                    None => loop {
                        if let Some(n) = live_node(&live, &mut rng)
                            && let Ok(Ok(Some(id))) = tokio::time::timeout(ANSWER_WAIT, n.find(&identity)).await
                        {
                            break id;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    },
                };
                answers.lock().unwrap().customers.insert(c, id);
            }
            answers.lock().unwrap().events.insert(c, seq + 1);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50 + rng.below(500))).await;
    }
}

/// Messages through random nodes, a third of them scheduled a few seconds ahead; each
/// re-sent with the same request id until acknowledged.
async fn sender(seed: u64, live: Live, answers: Arc<Mutex<Answers>>) {
    let mut rng = Rng::new(seed, 7);
    for m in 0..MESSAGES {
        tokio::time::sleep(Duration::from_millis(100 + rng.below(500))).await;
        let c = rng.below(CUSTOMERS as u64) as usize;
        let customer = loop {
            if let Some(id) = answers.lock().unwrap().customers.get(&c) {
                break *id;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let request_id = format!("sim-m{m}");
        let later = m % 3 == 0;
        loop {
            let Some(node) = live_node(&live, &mut rng) else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let send_at_ms = if later { node.now_ms() + 2_000 + rng.below(4_000) as i64 } else { 0 };
            let req = SendRequest {
                request_id: request_id.clone(),
                customer,
                channel: "email".into(),
                template: "sim".into(),
                category: Category::Transactional,
                vars: JsonMap::new(),
                send_at_ms,
                topic: String::new(),
            };
            // No answer in time: re-send, as a real client would.
            if let Ok(mut v) = tokio::time::timeout(ANSWER_WAIT, node.send(vec![req])).await {
                match v.remove(0) {
                    Ok(SendOutcome::Accepted { .. } | SendOutcome::Scheduled { .. } | SendOutcome::Duplicate) => {
                        answers.lock().unwrap().messages.insert(request_id.clone(), customer);
                        break;
                    }
                    Ok(SendOutcome::NotFound) => {
                        panic!("seed {seed}: message {request_id}: customer {customer} not found")
                    }
                    Err(e) => answers.lock().unwrap().last_error = format!("message {request_id}: {e}"),
                }
            }
            answers.lock().unwrap().resent += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn run_seed(seed: u64) {
    let mut rng = Rng::new(seed, 1);
    let net = Arc::new(Mutex::new(Net::default()));
    let mut sim = Sim {
        seed,
        net: net.clone(),
        live: Arc::new(RwLock::new(vec![None; NODES])),
        nodes: Vec::new(),
        _dirs: Vec::new(),
        leaders: HashMap::new(),
        faults: Vec::new(),
    };
    for i in 0..NODES {
        let dir = tempfile::tempdir().unwrap();
        // A fixed port per node (restarts bind it again): take a free one from the OS.
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        let id = i as NodeId + 1;
        net.lock().unwrap().node_at.insert(addr.clone(), id);
        sim.nodes.push(SimNode { id, dir: dir.path().to_path_buf(), addr, running: None });
        sim._dirs.push(dir);
    }
    for i in 0..NODES {
        sim.start(i).await;
    }
    let first = sim.shards(0).unwrap().clone();
    first.cluster_init(SHARDS, REPLICATION).await.unwrap_or_else(|e| panic!("seed {seed}: cluster init: {e}"));
    let deadline = Instant::now() + CONVERGE_WAIT;
    while let Err(e) = sim.converged().await {
        assert!(Instant::now() < deadline, "seed {seed}: the new cluster does not form: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let initial: Vec<Vec<NodeId>> = first.fresh_placement().await.unwrap().shards.iter().map(|s| s.replicas.clone()).collect();
    drop(first);

    let answers = Arc::new(Mutex::new(Answers::default()));
    let mut clients = Vec::new();
    for c in 0..CUSTOMERS {
        clients.push(tokio::spawn(lane(c, seed, sim.live.clone(), answers.clone())));
    }
    clients.push(tokio::spawn(sender(seed, sim.live.clone(), answers.clone())));

    // Safety phase: faults chosen by the seed while the clients run.
    for _ in 0..STEPS {
        let roll = rng.below(100);
        let i = rng.below(NODES as u64) as usize;
        let id = i as NodeId + 1;
        let down: Vec<usize> = (0..NODES).filter(|n| sim.nodes[*n].running.is_none()).collect();
        match roll {
            0..=14 if down.is_empty() => {
                sim.faults.push(format!("crash {id}"));
                sim.crash(i).await;
            }
            15..=29 if !down.is_empty() => {
                let n = down[rng.below(down.len() as u64) as usize];
                sim.faults.push(format!("restart {}", n + 1));
                sim.start(n).await;
            }
            30..=41 => {
                sim.faults.push(format!("isolate {id}"));
                sim.isolate(id);
            }
            42..=51 => {
                let other = (i + 1 + rng.below(NODES as u64 - 1) as usize) % NODES;
                let (a, b) = (id, other as NodeId + 1);
                sim.faults.push(format!("cut {a}-{b}"));
                let mut n = net.lock().unwrap();
                n.cut.insert((a, b));
                n.cut.insert((b, a));
            }
            52..=71 => {
                sim.faults.push("heal".into());
                net.lock().unwrap().cut.clear();
            }
            72..=79 => {
                let shard = rng.below(SHARDS as u64) as u32;
                let via = rng.below(NODES as u64) as usize;
                sim.faults.push(format!("transfer shard {shard} to {id} via {}", via + 1));
                if let Some(s) = sim.shards(via).cloned() {
                    let _ = tokio::time::timeout(Duration::from_secs(5), s.shard_transfer_leader(shard, id)).await;
                }
            }
            80..=89 => {
                // Move a replica of a shard to the node that does not hold one, through
                // a running node (the placement leader queues it; moves run one at a time).
                let shard = rng.below(SHARDS as u64) as u32;
                let running = sim.running();
                let via = running[rng.below(running.len() as u64) as usize];
                let s = sim.shards(via).unwrap().clone();
                if let Ok(Ok(placement)) = tokio::time::timeout(Duration::from_secs(5), s.fresh_placement()).await {
                    let sp = &placement.shards[shard as usize];
                    let from = sp.replicas[rng.below(sp.replicas.len() as u64) as usize];
                    if let Some(to) = (1..=NODES as NodeId).find(|n| !sp.replicas.contains(n) && !sp.learners.contains(n)) {
                        let refused = match tokio::time::timeout(Duration::from_secs(5), s.shard_move(shard, Some(from), to)).await {
                            Ok(Ok(_)) => String::new(),
                            Ok(Err(e)) => format!(" (refused: {e})"),
                            Err(_) => " (no answer)".into(),
                        };
                        sim.faults.push(format!("move shard {shard} {from}→{to} via {}{refused}", via + 1));
                    }
                }
            }
            _ => {}
        }
        let pause = 100 + rng.below(700);
        let until = Instant::now() + Duration::from_millis(pause);
        while Instant::now() < until {
            sim.check_safety();
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    // Liveness phase: heal every link, restart every crashed node; the cluster must
    // converge and every client must get its answers.
    sim.faults.push("heal all".into());
    net.lock().unwrap().cut.clear();
    for i in 0..NODES {
        if sim.nodes[i].running.is_none() {
            sim.start(i).await;
        }
    }
    let deadline = Instant::now() + CONVERGE_WAIT;
    for c in clients {
        loop {
            sim.check_safety();
            if c.is_finished() {
                c.await.unwrap_or_else(|e| panic!("seed {seed}: a client failed: {e}; faults: {:?}", sim.faults));
                break;
            }
            if Instant::now() >= deadline {
                let last = answers.lock().unwrap().last_error.clone();
                let cluster = sim.converged().await;
                panic!(
                    "seed {seed}: clients still unanswered {CONVERGE_WAIT:?} after healing (last refusal: {last}; cluster: {cluster:?}); faults: {:?}",
                    sim.faults
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    loop {
        sim.check_safety();
        match sim.converged().await {
            Ok(()) => break,
            Err(e) => assert!(Instant::now() < deadline, "seed {seed}: no convergence after healing: {e}; faults: {:?}", sim.faults),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Every acknowledged event exactly once, in order, in its customer's history.
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    let via = sim.shards(rng.below(NODES as u64) as usize).unwrap().clone();
    for c in 0..CUSTOMERS {
        let id = answers.customers[&c];
        let state = via.customer(id).await.unwrap_or_else(|e| panic!("seed {seed}: read customer {c}: {e}")).expect("customer exists");
        let got: Vec<&str> = state.history.iter().map(|e| e.message_id.as_str()).collect();
        let want: Vec<String> = (0..answers.events[&c]).map(|s| format!("sim-{c}-{s}")).collect();
        assert_eq!(got, want, "seed {seed}: customer {c}: every acknowledged event exactly once, in order; faults: {:?}", sim.faults);
        assert_eq!(state.event_count, want.len() as u64, "seed {seed}: customer {c}: event count");
    }

    // Every acknowledged message decided once (one "sent" decision per key) and
    // delivered — scheduled ones when their timer fired. A new leader re-drives an
    // undelivered intent with the same key, so a key may reach the provider from two
    // nodes (a provider honouring keys sends it once); a second key would be a second
    // message.
    let deadline = Instant::now() + CONVERGE_WAIT;
    let want: BTreeSet<String> = answers.messages.iter().map(|(r, c)| format!("api/{r}/{c}")).collect();
    loop {
        let mut captured: BTreeSet<String> = BTreeSet::new();
        for i in 0..NODES {
            let store = &sim.nodes[i].running.as_ref().unwrap().store;
            for m in read_after(store, 0, 100_000).unwrap() {
                captured.insert(m.intent.key);
            }
        }
        let unexpected: Vec<&String> = captured.difference(&want).collect();
        assert!(unexpected.is_empty(), "seed {seed}: messages nobody asked for: {unexpected:?}; faults: {:?}", sim.faults);
        if captured == want {
            break;
        }
        assert!(Instant::now() < deadline, "seed {seed}: undelivered: {:?}; faults: {:?}", want.difference(&captured).collect::<Vec<_>>(), sim.faults);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let customers: BTreeSet<CustomerId> = answers.messages.values().copied().collect();
    for customer in customers {
        let state = via.customer(customer).await.unwrap().expect("customer exists");
        let mut keys: BTreeMap<String, u32> = BTreeMap::new();
        for d in state.decisions.iter().filter(|d| d.kind == chorus_engine::profile::DecisionKind::Sent) {
            let key = d.detail.rsplit_once("(key ").map(|(_, k)| k.trim_end_matches(')').to_string()).unwrap_or_default();
            *keys.entry(key).or_default() += 1;
        }
        let mine: BTreeMap<String, u32> = answers.messages.iter().filter(|(_, c)| **c == customer).map(|(r, c)| (format!("api/{r}/{c}"), 1)).collect();
        assert_eq!(keys, mine, "seed {seed}: customer {customer}: one send decision per acknowledged message; faults: {:?}", sim.faults);
    }
    let moved: usize =
        via.fresh_placement().await.unwrap().shards.iter().zip(&initial).map(|(now, before)| now.replicas.iter().filter(|n| !before.contains(n)).count()).sum();
    drop(via);
    eprintln!(
        "sim seed {seed}: ok — {} events and {} messages acknowledged, {} re-sent, {} leader terms seen, {moved} replicas moved; faults: {}",
        answers.events.values().sum::<usize>(),
        answers.messages.len(),
        answers.resent,
        sim.leaders.len(),
        sim.faults.join(", ")
    );
    for i in 0..NODES {
        if let Some(r) = sim.nodes[i].running.take() {
            r.shards.abort().await;
            let _ = r.server_stop.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(5), r.server).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_crashes_and_partitions_of_a_whole_cluster_lose_nothing_and_heal() {
    let seeds: Vec<u64> = match std::env::var("CHORUS_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => {
            let n = std::env::var("CHORUS_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(4u64);
            (1..=n).collect()
        }
    };
    for seed in seeds {
        eprintln!("cluster sim seed {seed} (replay with CHORUS_SIM_SEED={seed})");
        run_seed(seed).await;
    }
}
