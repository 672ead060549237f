//! A node as a member of a cluster: the placement group, the node-to-node requests
//! (forwarded ingest, proposals and reads, shard administration at a shard's leader),
//! the reconciler that hosts exactly the replicas placement assigns to this node, and
//! the manager that the placement leader runs (placement-group membership, queued
//! shard moves one at a time, preferred-leader balancing). Operators' cluster commands
//! (init, node add/remove/drain, shard move/transfer-leader/rebalance, status) enter
//! here. Decisions about *where* replicas go are `chorus_placement`'s.

use crate::node::{Shards, Target};
use crate::{Clock, ShardConfig, ShardError};
use chorus_connectors::Connectors;
use chorus_placement::app::PlacementApp;
use chorus_placement::{Member, Move, PlacementOp, PlacementState};
use chorus_raft::{CallHandler, Group, GroupTuning, PLACEMENT_GROUP, Transport};
use chorus_store::Store;
use chorus_types::{CustomerId, Event, EventOutcome, Identity, NodeId, ShardCommand, ShardId, ShardResult};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How long a move waits for a new replica to catch up before it is retried.
pub const CATCH_UP_WAIT_MS_MAX: u64 = 120_000;
/// Pause between two moves (throttling: moves run one at a time).
pub const MOVE_PAUSE_MS: u64 = 500;
/// Most leadership transfers the balancer starts per round.
pub const LEADER_TRANSFERS_PER_ROUND_MAX: usize = 16;

/// What a node needs to be a cluster member.
#[derive(Clone, Debug)]
pub struct ClusterSetup {
    /// The node-to-node address peers dial.
    pub advertise: String,
    /// Node-to-node addresses of the first nodes (for `cluster init`).
    pub seeds: Vec<String>,
    pub grpc_addr: String,
    pub http_addr: String,
    pub version: String,
}

pub(crate) struct ClusterState {
    pub(crate) group: Group,
    pub(crate) app: Arc<PlacementApp>,
    pub(crate) setup: ClusterSetup,
}

/// A read served by a shard replica.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ShardRead {
    Customer {
        id: CustomerId,
    },
    Find {
        identity: Identity,
    },
    CustomerIds,
    JourneyStats {
        journey: String,
    },
    AudienceMembers {
        audience: String,
        sample: usize,
    },
    DeadLetters {
        limit: usize,
    },
    Track {
        id: u64,
    },
    /// The whole catalog (every shard holds it).
    Catalog,
}

/// A copy of the catalog for a node that holds no replica.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CatalogCopy {
    pub journeys: Vec<crate::apply::JourneyInfo>,
    /// (id, version, file, source)
    pub templates: Vec<(String, u32, String, String)>,
    pub settings: chorus_engine::guard::Settings,
    /// In evaluation order.
    pub audiences: Vec<(chorus_engine::audience::AudienceDef, u32)>,
    pub write_keys: crate::apply::WriteKeys,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ShardReadReply {
    Customer(Option<chorus_engine::CustomerState>),
    Find(Option<CustomerId>),
    CustomerIds(Vec<CustomerId>),
    JourneyStats(Vec<((u32, String, String), (u64, f64))>),
    AudienceMembers(u64, Vec<CustomerId>),
    DeadLetters(Vec<crate::apply::DeadLetter>),
    Track(Option<chorus_engine::render::TrackRecord>),
    Catalog(Box<CatalogCopy>),
}

/// Membership work done by a shard's leader.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ShardAdminOp {
    /// Who leads, votes and learns.
    Status,
    AddLearner {
        node: NodeId,
        addr: String,
    },
    SetVoters {
        voters: Vec<NodeId>,
        keep_others: bool,
    },
    TransferLeader {
        to: NodeId,
    },
    RemoveLearners {
        nodes: Vec<NodeId>,
    },
}

/// A node-to-node request (the payload of `Transport::call`).
#[derive(Debug, Serialize, Deserialize)]
pub enum NodeRequest {
    Hello,
    Ingest {
        shard: ShardId,
        events: Vec<Event>,
        hops: u8,
    },
    Propose {
        shard: ShardId,
        cmd: ShardCommand,
        hops: u8,
    },
    Read {
        shard: ShardId,
        read: ShardRead,
        leader: bool,
        hops: u8,
    },
    Placement {
        op: PlacementOp,
        hops: u8,
    },
    ShardAdmin {
        shard: ShardId,
        op: ShardAdminOp,
        hops: u8,
    },
    Status,
    /// The placement as the placement leader has applied it (every acknowledged change).
    PlacementState {
        hops: u8,
    },
    /// Every replica this node hosts, with its counts (for `shard list`).
    ShardStatuses,
}

/// Who a node is.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HelloInfo {
    pub node: NodeId,
    pub addr: String,
    pub grpc_addr: String,
    pub http_addr: String,
    pub version: String,
    /// Empty when the node is not part of an initialized cluster.
    pub cluster_id: String,
}

/// One shard replica as its node sees it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReplicaView {
    pub shard: ShardId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub last_log_index: u64,
    pub applied_index: u64,
}

impl ReplicaView {
    fn of(shard: ShardId, g: chorus_raft::GroupStatus) -> ReplicaView {
        ReplicaView {
            shard,
            leader: g.leader,
            term: g.term,
            voters: g.voters,
            learners: g.learners,
            last_log_index: g.last_log_index,
            applied_index: g.applied_index,
        }
    }
}

/// A node's own view, for `cluster status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeView {
    pub node: NodeId,
    pub version: String,
    pub replicas: Vec<ReplicaView>,
    pub placement_leader: Option<NodeId>,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum NodeReply {
    Hello(HelloInfo),
    Ingested(Vec<EventOutcome>),
    Proposed(u64, ShardResult),
    Read(ShardReadReply),
    Admin(ReplicaView),
    Status(NodeView),
    Placement(Box<PlacementState>),
    Done,
    Failed(Fail),
    ShardStatuses(Vec<(ReplicaView, ShardCounts)>),
}

/// What a replica counts, for `shard list` across the cluster.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ShardCounts {
    pub live_actors: u64,
    pub customers: u64,
    pub pending_timers: u64,
    pub pending_intents: u64,
    pub quarantined: u64,
}

/// A failure carried back to the node that forwarded a request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Fail {
    Overloaded { shard: ShardId, queued: u64, limit: u64 },
    Unavailable { shard: ShardId },
    NotLeader { shard: ShardId, leader: Option<NodeId> },
    ShuttingDown,
    NotFound { what: String },
    NotInitialized,
    Cluster(String),
    Other { node: NodeId, detail: String },
}

impl Fail {
    fn from_error(e: ShardError, node: NodeId) -> Fail {
        match e {
            ShardError::Overloaded { shard, queued, limit } => Fail::Overloaded { shard, queued: queued as u64, limit: limit as u64 },
            ShardError::Unavailable { shard } => Fail::Unavailable { shard },
            ShardError::Raft(chorus_raft::RaftError::NotLeader { group, leader }) => Fail::NotLeader { shard: group, leader },
            ShardError::Raft(r) if r.is_retryable() => Fail::ShuttingDown,
            ShardError::ShuttingDown => Fail::ShuttingDown,
            ShardError::NotFound { what } => Fail::NotFound { what },
            ShardError::NotInitialized => Fail::NotInitialized,
            ShardError::Cluster(m) => Fail::Cluster(m),
            ShardError::Remote { node, detail } => Fail::Other { node, detail },
            other => Fail::Other { node, detail: other.to_string() },
        }
    }
}

impl From<Fail> for ShardError {
    fn from(f: Fail) -> ShardError {
        match f {
            Fail::Overloaded { shard, queued, limit } => ShardError::Overloaded { shard, queued: queued as usize, limit: limit as usize },
            Fail::Unavailable { shard } | Fail::NotLeader { shard, .. } => ShardError::Unavailable { shard },
            Fail::ShuttingDown => ShardError::ShuttingDown,
            Fail::NotFound { what } => ShardError::NotFound { what },
            Fail::NotInitialized => ShardError::NotInitialized,
            Fail::Cluster(m) => ShardError::Cluster(m),
            Fail::Other { node, detail } => ShardError::Remote { node, detail },
        }
    }
}

/// Serves node-to-node requests with this node's shards.
struct Handler {
    shards: Weak<crate::node::Inner>,
}

impl CallHandler for Handler {
    fn call(&self, _from: NodeId, payload: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        let inner = self.shards.upgrade();
        Box::pin(async move {
            let Some(inner) = inner else {
                return Err("the node is shutting down".to_string());
            };
            let shards = Shards { inner };
            let req: NodeRequest = chorus_types::encoding::decode(&payload).map_err(|e| format!("undecodable request: {e}"))?;
            let reply = shards.handle(req).await;
            Ok(chorus_types::encoding::encode(&reply))
        })
    }
}

/// A cluster's member list as an operator sees it.
#[derive(Clone, Debug, Default)]
pub struct NodeStatus {
    pub member: Option<Member>,
    pub node: NodeId,
    pub healthy: bool,
    pub version: String,
    pub shards_led: u32,
    pub shards_followed: u32,
    /// Largest (leader's last index − this replica's applied index) over its replicas.
    pub lag_max: u64,
}

/// The whole cluster as an operator sees it.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    pub cluster_id: String,
    pub replication: u32,
    pub shard_count: u32,
    pub nodes: Vec<NodeStatus>,
    pub leaderless: Vec<ShardId>,
    pub under_replicated: Vec<ShardId>,
    pub moves: Vec<Move>,
    pub placement_leader: Option<NodeId>,
    /// Who leads each shard, as the leaders themselves report it.
    pub shard_leaders: BTreeMap<ShardId, NodeId>,
}

impl Shards {
    /// Open a cluster node: the placement group (recovered, or empty until `cluster
    /// init` / `node add`), the node-to-node handler, and the loops that host this
    /// node's replicas and (on the placement leader) manage the cluster. `transport`
    /// must be served on the advertised address by the caller.
    #[allow(clippy::too_many_arguments)]
    pub async fn open_cluster(
        node: NodeId,
        setup: ClusterSetup,
        transport: Transport,
        store: Store,
        clock: Arc<Clock>,
        config: ShardConfig,
        tuning: GroupTuning,
        connectors: Connectors,
    ) -> Result<Shards, ShardError> {
        config.validate().map_err(ShardError::Corrupt)?;
        if node == 0 {
            return Err(ShardError::Cluster("node id 0 is reserved: give every node a positive id".into()));
        }
        let app = PlacementApp::open(store.clone()).map_err(|e| ShardError::Store(e.to_string()))?;
        let group = Group::start(PLACEMENT_GROUP, node, store.clone(), app.clone(), &tuning, &transport).await?;
        let cluster = ClusterState { group, app, setup };
        let me = Shards::new_inner(node, store, clock, config, tuning, connectors, transport.clone(), Some(cluster));
        transport.set_handler(Arc::new(Handler { shards: Arc::downgrade(&me.inner) }));
        me.spawn_background();
        let mut tasks = Vec::new();
        let m = me.clone();
        tasks.push(tokio::spawn(async move { m.reconcile_loop().await }));
        let m = me.clone();
        tasks.push(tokio::spawn(async move { m.manager_loop().await }));
        me.inner.tasks.lock().expect("tasks lock").extend(tasks);
        let st = me.placement();
        tracing::info!(node, cluster = %st.cluster_id, initialized = st.is_initialized(), "cluster node open");
        Ok(me)
    }

    fn cluster(&self) -> Result<&ClusterState, ShardError> {
        self.inner.cluster.as_ref().ok_or_else(|| ShardError::Cluster("this node runs alone (no [cluster] in its configuration)".into()))
    }

    /// Snapshots streamed to other nodes and installed from them, since start.
    pub fn snapshot_counts(&self) -> (u64, u64) {
        self.inner.transport.snapshot_counts()
    }

    /// Whether this node is part of a cluster (else it runs alone).
    pub fn is_clustered(&self) -> bool {
        self.inner.cluster.is_some()
    }

    /// The placement as this node last applied it (empty when running alone).
    pub fn placement(&self) -> Arc<PlacementState> {
        match &self.inner.cluster {
            Some(c) => c.app.state(),
            None => Arc::new(PlacementState::default()),
        }
    }

    fn hello(&self) -> HelloInfo {
        let (addr, grpc, http, version) = match &self.inner.cluster {
            Some(c) => (c.setup.advertise.clone(), c.setup.grpc_addr.clone(), c.setup.http_addr.clone(), c.setup.version.clone()),
            None => Default::default(),
        };
        HelloInfo { node: self.inner.node, addr, grpc_addr: grpc, http_addr: http, version, cluster_id: self.placement().cluster_id.clone() }
    }

    pub(crate) async fn handle(&self, req: NodeRequest) -> NodeReply {
        let node = self.inner.node;
        let fail = |e: ShardError| NodeReply::Failed(Fail::from_error(e, node));
        match req {
            NodeRequest::Hello => NodeReply::Hello(self.hello()),
            NodeRequest::Ingest { shard, events, hops } => match self.ingest_shard(shard, events, hops).await {
                Ok(o) => NodeReply::Ingested(o),
                Err(ShardError::Unavailable { shard }) => NodeReply::Failed(Fail::NotLeader { shard, leader: self.known_leader(shard) }),
                Err(e) => fail(e),
            },
            NodeRequest::Propose { shard, cmd, hops } => match self.propose_hops(shard, cmd, hops).await {
                Ok((i, r)) => NodeReply::Proposed(i, r),
                Err(ShardError::Unavailable { shard }) => NodeReply::Failed(Fail::NotLeader { shard, leader: self.known_leader(shard) }),
                Err(e) => fail(e),
            },
            NodeRequest::Read { shard, read, leader, hops } => match self.read_hops(shard, read, leader, hops).await {
                Ok(r) => NodeReply::Read(r),
                Err(e) => fail(e),
            },
            NodeRequest::Placement { op, hops } => match self.placement_hops(op, hops).await {
                Ok(()) => NodeReply::Done,
                Err(e) => fail(e),
            },
            NodeRequest::ShardAdmin { shard, op, hops } => match self.shard_admin_hops(shard, op, hops).await {
                Ok(v) => NodeReply::Admin(v),
                Err(e) => fail(e),
            },
            NodeRequest::Status => NodeReply::Status(self.node_view()),
            NodeRequest::ShardStatuses => NodeReply::ShardStatuses(self.replica_statuses()),
            NodeRequest::PlacementState { hops } => match self.fresh_placement_hops(hops).await {
                Ok(st) => NodeReply::Placement(Box::new((*st).clone())),
                Err(e) => fail(e),
            },
        }
    }

    fn known_leader(&self, shard: ShardId) -> Option<NodeId> {
        self.hosted(shard).and_then(|h| h.group.leader())
    }

    fn node_view(&self) -> NodeView {
        let replicas = self.hosted_all().iter().map(|h| ReplicaView::of(h.id, h.group.status())).collect();
        NodeView {
            node: self.inner.node,
            version: self.inner.cluster.as_ref().map(|c| c.setup.version.clone()).unwrap_or_default(),
            replicas,
            placement_leader: self.inner.cluster.as_ref().and_then(|c| c.group.leader()),
        }
    }

    // ---- placement -----------------------------------------------------------------

    /// The placement including every acknowledged change (read at the placement leader),
    /// for plans and operator views.
    pub async fn fresh_placement(&self) -> Result<Arc<PlacementState>, ShardError> {
        self.fresh_placement_hops(crate::node::FORWARD_HOPS_MAX).await
    }

    async fn fresh_placement_hops(&self, hops: u8) -> Result<Arc<PlacementState>, ShardError> {
        let c = self.cluster()?;
        match c.group.leader() {
            Some(l) if l == self.inner.node => Ok(c.app.state()),
            Some(l) if hops > 0 => match self.remote(l, None, NodeRequest::PlacementState { hops: hops - 1 }).await {
                Ok(NodeReply::Placement(st)) => Ok(Arc::new(*st)),
                Ok(NodeReply::Failed(f)) => Err(f.into()),
                Ok(other) => Err(ShardError::Remote { node: l, detail: format!("unexpected reply {other:?}") }),
                // The leader is unreachable: this node's own view is the best there is.
                Err(_) => Ok(c.app.state()),
            },
            _ => Ok(c.app.state()),
        }
    }

    /// Propose a placement change at the placement group's leader.
    pub async fn placement_propose(&self, op: PlacementOp) -> Result<(), ShardError> {
        self.placement_hops(op, crate::node::FORWARD_HOPS_MAX).await
    }

    async fn placement_hops(&self, op: PlacementOp, hops: u8) -> Result<(), ShardError> {
        let c = self.cluster()?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(crate::node::ROUTE_WAIT_MS_MAX);
        loop {
            let unavailable = || {
                if c.app.state().is_initialized() { ShardError::Unavailable { shard: PLACEMENT_GROUP } } else { ShardError::NotInitialized }
            };
            let attempt = match c.group.leader() {
                None => Err(unavailable()),
                Some(l) if l == self.inner.node => {
                    let cmd = chorus_placement::app::command(self.inner.clock.now_ms(), &op);
                    match c.group.propose(cmd).await {
                        Ok((_, ShardResult::Placement(None))) => return Ok(()),
                        Ok((_, ShardResult::Placement(Some(e)))) => {
                            return Err(ShardError::Cluster(e));
                        }
                        Ok((i, other)) => {
                            return Err(ShardError::Corrupt(format!("placement entry {i} returned {other:?}")));
                        }
                        // Refused before it was appended (leadership not established or
                        // just lost): safe to try again.
                        Err(chorus_raft::RaftError::NotLeader { .. }) => Err(unavailable()),
                        Err(e) => return Err(e.into()),
                    }
                }
                Some(_) if hops == 0 => return Err(unavailable()),
                Some(l) => {
                    return match self.remote(l, None, NodeRequest::Placement { op, hops: hops - 1 }).await? {
                        NodeReply::Done => Ok(()),
                        NodeReply::Failed(f) => Err(f.into()),
                        other => Err(ShardError::Remote { node: l, detail: format!("unexpected reply {other:?}") }),
                    };
                }
            };
            if tokio::time::Instant::now() >= deadline {
                return attempt;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Form the cluster: ask every seed who it is, make the placement group, and record
    /// the members and the initial assignment of `shards` shards × `replication`.
    pub async fn cluster_init(&self, shards: u32, replication: u32) -> Result<Arc<PlacementState>, ShardError> {
        let c = self.cluster()?;
        if let Some(id) = Some(c.app.state().cluster_id.clone()).filter(|s| !s.is_empty()) {
            return Err(ShardError::Cluster(format!("the cluster is already initialized (cluster id {id})")));
        }
        let mut members: BTreeMap<NodeId, Member> = BTreeMap::new();
        let me = self.hello();
        members
            .insert(me.node, Member { id: me.node, addr: me.addr.clone(), grpc_addr: me.grpc_addr.clone(), http_addr: me.http_addr.clone(), draining: false });
        let mut failures = Vec::new();
        for seed in &c.setup.seeds {
            if *seed == c.setup.advertise {
                continue;
            }
            let reply = self.inner.transport.call_addr(seed, chorus_types::encoding::encode(&NodeRequest::Hello)).await;
            match reply.map_err(|e| e.to_string()).and_then(|b| chorus_types::encoding::decode::<NodeReply>(&b).map_err(|e| e.to_string())) {
                Ok(NodeReply::Hello(h)) => {
                    if !h.cluster_id.is_empty() {
                        return Err(ShardError::Cluster(format!("seed {seed} (node {}) already belongs to cluster {}", h.node, h.cluster_id)));
                    }
                    if let Some(other) = members.get(&h.node) {
                        return Err(ShardError::Cluster(format!("seeds {} and {seed} both claim node id {}; node ids must be unique", other.addr, h.node)));
                    }
                    members.insert(h.node, Member { id: h.node, addr: h.addr, grpc_addr: h.grpc_addr, http_addr: h.http_addr, draining: false });
                }
                Ok(other) => failures.push(format!("{seed}: unexpected reply {other:?}")),
                Err(e) => failures.push(format!("{seed}: {e}")),
            }
        }
        if !failures.is_empty() {
            return Err(ShardError::Cluster(format!("every seed must answer before the cluster is formed; these did not: {}", failures.join("; "))));
        }
        let probe = {
            let mut s = PlacementState::default();
            s.apply(&PlacementOp::Init { cluster_id: "probe".into(), shards, replication, members: members.values().cloned().collect() })
                .map_err(|e| ShardError::Cluster(e.to_string()))?;
            s
        };
        let voters: Vec<(NodeId, String)> = probe.placement_voters().into_iter().map(|id| (id, members[&id].addr.clone())).collect();
        if !voters.iter().any(|(id, _)| *id == self.inner.node) {
            return Err(ShardError::Cluster(format!("run `cluster init` against one of the first {} nodes by id", chorus_placement::PLACEMENT_VOTERS_MAX)));
        }
        for m in members.values() {
            self.inner.transport.set_address(m.id, &m.addr);
        }
        c.group.initialize(&voters).await?;
        let cluster_id = format!("chorus-{:016x}", xid(self.inner.clock.now_ms(), self.inner.node));
        self.placement_propose(PlacementOp::Init { cluster_id, shards, replication, members: members.into_values().collect() }).await?;
        Ok(c.app.state())
    }

    /// Admit node `id` listening (node-to-node) at `addr`; it hosts nothing until moves
    /// (rebalance) give it replicas.
    pub async fn node_add(&self, id: NodeId, addr: &str) -> Result<Member, ShardError> {
        self.cluster()?;
        let bytes = self
            .inner
            .transport
            .call_addr(addr, chorus_types::encoding::encode(&NodeRequest::Hello))
            .await
            .map_err(|e| ShardError::Cluster(format!("node at {addr} did not answer: {e}")))?;
        let NodeReply::Hello(h) = chorus_types::encoding::decode::<NodeReply>(&bytes).map_err(|e| ShardError::Cluster(format!("node at {addr}: {e}")))? else {
            return Err(ShardError::Cluster(format!("node at {addr} sent an unexpected reply")));
        };
        if h.node != id {
            return Err(ShardError::Cluster(format!("the node at {addr} has id {} (its configuration), not {id}", h.node)));
        }
        if !h.cluster_id.is_empty() {
            return Err(ShardError::Cluster(format!("the node at {addr} already belongs to cluster {}", h.cluster_id)));
        }
        let member = Member { id, addr: h.addr, grpc_addr: h.grpc_addr, http_addr: h.http_addr, draining: false };
        self.placement_propose(PlacementOp::AddNode { member: member.clone() }).await?;
        Ok(member)
    }

    /// Forget a node that holds no replica (drain it first); its id is never reused.
    pub async fn node_remove(&self, id: NodeId) -> Result<(), ShardError> {
        self.placement_propose(PlacementOp::RemoveNode { id }).await
    }

    /// Mark a node draining and queue the moves that empty it; returns them.
    pub async fn node_drain(&self, id: NodeId) -> Result<Vec<Move>, ShardError> {
        let plan = self.fresh_placement().await?.drain_plan(id).map_err(|e| ShardError::Cluster(e.to_string()))?;
        self.placement_propose(PlacementOp::SetDraining { id, draining: true }).await?;
        if !plan.is_empty() {
            self.placement_propose(PlacementOp::QueueMoves { moves: plan.clone() }).await?;
        }
        Ok(plan)
    }

    /// Queue a move of `shard`'s replica from `from` (default: its replica on the node
    /// holding the most replicas) to `to`.
    pub async fn shard_move(&self, shard: ShardId, from: Option<NodeId>, to: NodeId) -> Result<Move, ShardError> {
        let st = self.fresh_placement().await?;
        let sp =
            st.shards.get(shard as usize).ok_or_else(|| ShardError::Cluster(format!("shard {shard} does not exist (the cluster has {})", st.shard_count())))?;
        let counts = st.replica_counts();
        let from = match from {
            Some(f) => f,
            None => *sp
                .replicas
                .iter()
                .max_by_key(|n| (counts.get(n).copied().unwrap_or(0), **n))
                .ok_or_else(|| ShardError::Cluster(format!("shard {shard} has no replicas")))?,
        };
        let m = Move { shard, from, to };
        self.placement_propose(PlacementOp::QueueMoves { moves: vec![m.clone()] }).await?;
        Ok(m)
    }

    /// The moves that would even replicas across nodes; queued unless `dry_run`.
    pub async fn rebalance(&self, dry_run: bool) -> Result<Vec<Move>, ShardError> {
        self.cluster()?;
        let plan = self.fresh_placement().await?.rebalance_plan();
        if !dry_run && !plan.is_empty() {
            self.placement_propose(PlacementOp::QueueMoves { moves: plan.clone() }).await?;
        }
        Ok(plan)
    }

    /// Drop every queued move; a replica the running move added as a learner leaves the
    /// group again. Returns the moves dropped.
    pub async fn cancel_moves(&self) -> Result<Vec<Move>, ShardError> {
        let st = self.fresh_placement().await?;
        let moves = st.moves.clone();
        self.placement_propose(PlacementOp::ClearMoves).await?;
        for (i, sp) in st.shards.iter().enumerate() {
            if sp.learners.is_empty() {
                continue;
            }
            let shard = i as ShardId;
            let view = self.shard_admin(shard, ShardAdminOp::Status).await?;
            let learners: Vec<NodeId> = view.learners.iter().copied().filter(|n| sp.learners.contains(n)).collect();
            if !learners.is_empty() {
                self.shard_admin(shard, ShardAdminOp::RemoveLearners { nodes: learners }).await?;
            }
            // A learner already promoted stays a voter: record what the group has now.
            let view = self.shard_admin(shard, ShardAdminOp::Status).await?;
            self.placement_propose(PlacementOp::SetShard {
                shard,
                replicas: sp.replicas.iter().copied().chain(view.voters.iter().copied().filter(|v| !sp.replicas.contains(v))).collect(),
                learners: vec![],
            })
            .await?;
        }
        Ok(moves)
    }

    /// Ask `shard`'s leader to hand leadership to `to` and wait until it has.
    pub async fn shard_transfer_leader(&self, shard: ShardId, to: NodeId) -> Result<(), ShardError> {
        let view = self.shard_admin(shard, ShardAdminOp::Status).await?;
        if !view.voters.contains(&to) {
            return Err(ShardError::Cluster(format!("node {to} is not a voter of shard {shard} (voters: {:?})", view.voters)));
        }
        if view.leader == Some(to) {
            return Ok(());
        }
        self.shard_admin(shard, ShardAdminOp::TransferLeader { to }).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(v) = self.shard_admin(shard, ShardAdminOp::Status).await
                && v.leader == Some(to)
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ShardError::Cluster(format!("shard {shard}: node {to} did not take leadership within 10 s")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) async fn shard_admin(&self, shard: ShardId, op: ShardAdminOp) -> Result<ReplicaView, ShardError> {
        self.shard_admin_hops(shard, op, crate::node::FORWARD_HOPS_MAX).await
    }

    async fn shard_admin_hops(&self, shard: ShardId, op: ShardAdminOp, hops: u8) -> Result<ReplicaView, ShardError> {
        match self.target(shard).await? {
            Target::Local(h) => {
                match op {
                    ShardAdminOp::Status => {}
                    ShardAdminOp::AddLearner { node, addr } => {
                        match tokio::time::timeout(Duration::from_millis(CATCH_UP_WAIT_MS_MAX), h.group.add_learner(node, &addr)).await {
                            Ok(r) => r?,
                            Err(_) => {
                                return Err(ShardError::Cluster(format!("shard {shard}: node {node} did not catch up within {CATCH_UP_WAIT_MS_MAX} ms")));
                            }
                        }
                    }
                    ShardAdminOp::SetVoters { voters, keep_others } => h.group.set_voters(&voters, keep_others).await?,
                    ShardAdminOp::TransferLeader { to } => h.group.transfer_leader(to).await?,
                    ShardAdminOp::RemoveLearners { nodes } => h.group.remove_learners(&nodes).await?,
                }
                Ok(ReplicaView::of(shard, h.group.status()))
            }
            Target::Remote(node) if hops > 0 => match self.remote(node, Some(shard), NodeRequest::ShardAdmin { shard, op, hops: hops - 1 }).await? {
                NodeReply::Admin(v) => Ok(v),
                NodeReply::Failed(f) => Err(f.into()),
                other => Err(ShardError::Remote { node, detail: format!("unexpected reply {other:?}") }),
            },
            Target::Remote(_) => Err(ShardError::Unavailable { shard }),
        }
    }

    /// Every member's view (members that do not answer are reported unhealthy).
    /// This node's replicas with their counts.
    fn replica_statuses(&self) -> Vec<(ReplicaView, ShardCounts)> {
        self.status()
            .into_iter()
            .map(|s| {
                let view = ReplicaView {
                    shard: s.shard,
                    leader: s.leader,
                    term: s.term,
                    voters: s.voters,
                    learners: s.learners,
                    last_log_index: s.last_log_index,
                    applied_index: s.applied_index,
                };
                (
                    view,
                    ShardCounts {
                        live_actors: s.live_actors,
                        customers: s.customers,
                        pending_timers: s.pending_timers,
                        pending_intents: s.pending_intents,
                        quarantined: s.quarantined,
                    },
                )
            })
            .collect()
    }

    /// Every shard of the cluster (not only those this node hosts), each as its leader
    /// reports it — the leader of the newest term — or, with no leader, as the replica
    /// that applied the most; a shard no live node hosts is listed from placement with no
    /// leader. On a node running alone, its own shards.
    pub async fn every_shard_status(&self) -> Result<Vec<crate::node::ShardStatusInfo>, ShardError> {
        if !self.is_clustered() {
            return Ok(self.status());
        }
        let st = self.fresh_placement().await?;
        let asks = st.members.keys().map(|id| async move {
            if *id == self.inner.node {
                return (*id, self.replica_statuses());
            }
            match tokio::time::timeout(Duration::from_secs(2), self.remote(*id, None, NodeRequest::ShardStatuses)).await {
                Ok(Ok(NodeReply::ShardStatuses(v))) => (*id, v),
                _ => (*id, Vec::new()),
            }
        });
        // Per shard: (reporter leads it, term, applied) orders the candidates.
        let mut best: BTreeMap<ShardId, ((bool, u64, u64), ReplicaView, ShardCounts)> = BTreeMap::new();
        for (node, replicas) in futures::future::join_all(asks).await {
            for (view, counts) in replicas {
                let rank = (view.leader == Some(node), view.term, view.applied_index);
                if best.get(&view.shard).is_none_or(|(r, _, _)| *r < rank) {
                    best.insert(view.shard, (rank, view, counts));
                }
            }
        }
        let mut out = Vec::with_capacity(st.shards.len());
        for (i, sp) in st.shards.iter().enumerate() {
            let shard = i as ShardId;
            out.push(match best.remove(&shard) {
                Some(((leads, _, _), v, c)) => crate::node::ShardStatusInfo {
                    shard,
                    leader: if leads { v.leader } else { None },
                    voters: v.voters,
                    learners: v.learners,
                    term: v.term,
                    last_log_index: v.last_log_index,
                    applied_index: v.applied_index,
                    live_actors: c.live_actors,
                    customers: c.customers,
                    pending_timers: c.pending_timers,
                    pending_intents: c.pending_intents,
                    quarantined: c.quarantined,
                    ..Default::default()
                },
                None => crate::node::ShardStatusInfo { shard, voters: sp.replicas.clone(), ..Default::default() },
            });
        }
        Ok(out)
    }

    pub async fn cluster_view(&self) -> Result<ClusterView, ShardError> {
        let st = self.fresh_placement().await?;
        let mut views: BTreeMap<NodeId, Option<NodeView>> = BTreeMap::new();
        let asks = st.members.keys().map(|id| async move {
            if *id == self.inner.node {
                return (*id, Some(self.node_view()));
            }
            let r = tokio::time::timeout(Duration::from_secs(2), self.remote(*id, None, NodeRequest::Status)).await;
            match r {
                Ok(Ok(NodeReply::Status(v))) => (*id, Some(v)),
                _ => (*id, None),
            }
        });
        for (id, v) in futures::future::join_all(asks).await {
            views.insert(id, v);
        }
        let mut leaders: BTreeMap<ShardId, (NodeId, u64, u64)> = BTreeMap::new();
        for v in views.values().flatten() {
            for r in &v.replicas {
                // A deposed leader that has not heard of its successor claims an older term.
                if r.leader == Some(v.node) && leaders.get(&r.shard).is_none_or(|(_, term, _)| *term < r.term) {
                    leaders.insert(r.shard, (v.node, r.term, r.last_log_index));
                }
            }
        }
        let mut nodes = Vec::new();
        for (id, member) in &st.members {
            let view = views.get(id).cloned().flatten();
            let mut ns = NodeStatus { member: Some(member.clone()), node: *id, healthy: view.is_some(), ..Default::default() };
            if let Some(v) = view {
                ns.version = v.version.clone();
                for r in &v.replicas {
                    // One leader per shard: the newest term's (a deposed leader that has
                    // not heard of its successor yet still names itself).
                    if leaders.get(&r.shard).is_some_and(|(leader, _, _)| leader == id) {
                        ns.shards_led += 1;
                    } else {
                        ns.shards_followed += 1;
                    }
                    if let Some((_, _, last)) = leaders.get(&r.shard) {
                        ns.lag_max = ns.lag_max.max(last.saturating_sub(r.applied_index));
                    }
                }
            }
            nodes.push(ns);
        }
        let healthy: Vec<NodeId> = nodes.iter().filter(|n| n.healthy).map(|n| n.node).collect();
        let mut leaderless = Vec::new();
        let mut under = Vec::new();
        for (i, sp) in st.shards.iter().enumerate() {
            let shard = i as ShardId;
            if !leaders.contains_key(&shard) {
                leaderless.push(shard);
            }
            let live = sp.replicas.iter().filter(|n| healthy.contains(n)).count();
            if live < (st.replication as usize).min(st.members.len()) {
                under.push(shard);
            }
        }
        Ok(ClusterView {
            cluster_id: st.cluster_id.clone(),
            replication: st.replication,
            shard_count: st.shard_count(),
            nodes,
            leaderless,
            under_replicated: under,
            moves: st.moves.clone(),
            placement_leader: self.inner.cluster.as_ref().and_then(|c| c.group.leader()),
            shard_leaders: leaders.into_iter().map(|(shard, (node, _, _))| (shard, node)).collect(),
        })
    }

    // ---- background ----------------------------------------------------------------

    /// Host exactly the replicas placement gives this node.
    async fn reconcile_loop(&self) {
        let Some(c) = &self.inner.cluster else { return };
        let mut rx = c.app.subscribe();
        let mut shutdown = self.inner.shutdown.subscribe();
        loop {
            let st = rx.borrow_and_update().clone();
            if let Err(e) = self.reconcile(&st).await {
                tracing::warn!(error = %e, "reconciling hosted replicas failed; retrying");
            }
            tokio::select! {
                _ = rx.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn reconcile(&self, st: &PlacementState) -> Result<(), ShardError> {
        for m in st.members.values() {
            self.inner.transport.set_address(m.id, &m.addr);
        }
        if !st.is_initialized() {
            return Ok(());
        }
        if !self.is_configured() {
            self.set_config(st.shard_count());
        }
        let me = self.inner.node;
        for (i, sp) in st.shards.iter().enumerate() {
            let shard = i as ShardId;
            let mine = sp.replicas.contains(&me) || sp.learners.contains(&me);
            let hosted = self.hosted(shard).is_some();
            if mine && !hosted {
                // A fresh group is initialized by its preferred replica alone, which
                // then leads it at once; the other replicas join when it reaches them.
                let init: Option<Vec<(NodeId, String)>> = (sp.generation == 0 && sp.replicas.first() == Some(&me))
                    .then(|| sp.replicas.iter().filter_map(|n| st.members.get(n).map(|m| (*n, m.addr.clone()))).collect());
                self.host_shard(shard, init.as_deref()).await?;
            } else if !mine && hosted {
                self.unhost_shard(shard, true).await?;
            }
        }
        Ok(())
    }

    /// On the placement leader: keep the placement group's membership in line with the
    /// members, run queued moves one at a time, and hand each shard's leadership to its
    /// preferred replica (the first) when that node is up.
    async fn manager_loop(&self) {
        let Some(c) = &self.inner.cluster else { return };
        let mut shutdown = self.inner.shutdown.subscribe();
        let mut round: u64 = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(MOVE_PAUSE_MS)) => {}
                _ = shutdown.changed() => return,
            }
            round += 1;
            if !c.group.is_leader() {
                continue;
            }
            let st = c.app.state();
            if !st.is_initialized() {
                continue;
            }
            if let Err(e) = self.sync_placement_members(&st).await {
                tracing::warn!(error = %e, "placement group membership");
            }
            // A draining node whose moves are done (or were refused) but that still
            // holds replicas gets a fresh plan.
            if st.moves.is_empty()
                && let Some(d) = st.members.values().find(|m| m.draining && st.replica_counts().get(&m.id).copied().unwrap_or(0) > 0)
            {
                match st.drain_plan(d.id) {
                    Ok(plan) if !plan.is_empty() => {
                        if let Err(e) = self.placement_propose(PlacementOp::QueueMoves { moves: plan }).await {
                            tracing::warn!(node = d.id, error = %e, "re-planning a drain");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(node = d.id, error = %e, "the draining node cannot be emptied")
                    }
                }
                continue;
            }
            if let Some(m) = st.moves.first().cloned() {
                match self.run_move(&st, &m).await {
                    Ok(()) => tracing::info!(%m, "shard move finished"),
                    Err(e) => tracing::warn!(%m, error = %e, "shard move step failed; retrying"),
                }
                continue;
            }
            if round.is_multiple_of(2)
                && let Err(e) = self.balance_leaders(&st).await
            {
                tracing::debug!(error = %e, "leader balancing");
            }
        }
    }

    async fn sync_placement_members(&self, st: &PlacementState) -> Result<(), ShardError> {
        let c = self.cluster()?;
        let g = c.group.status();
        for m in st.members.values() {
            if !g.voters.contains(&m.id) && !g.learners.contains(&m.id) {
                tracing::info!(node = m.id, "adding a member to the placement group");
                c.group.add_learner(m.id, &m.addr).await?;
            }
        }
        let mut want = st.placement_voters();
        want.sort();
        let g = c.group.status();
        let mut have = g.voters.clone();
        have.sort();
        let gone: Vec<NodeId> = g.voters.iter().chain(&g.learners).filter(|n| !st.members.contains_key(n)).copied().collect();
        if want != have {
            c.group.set_voters(&want, true).await?;
        }
        if !gone.is_empty() {
            let g = c.group.status();
            let voters: Vec<NodeId> = g.voters.iter().filter(|n| st.members.contains_key(n)).copied().collect();
            c.group.set_voters(&voters, true).await?;
            c.group.remove_learners(&gone).await?;
        }
        Ok(())
    }

    /// One move: the new node hosts a learner, catches up (entries or a streamed
    /// snapshot), becomes a voter, takes leadership if the old replica led, and the old
    /// replica leaves. Each step checks the group's actual membership, so a move
    /// interrupted anywhere (a crash, a new placement leader) resumes where it stopped.
    async fn run_move(&self, st: &PlacementState, m: &Move) -> Result<(), ShardError> {
        let sp = st.shards.get(m.shard as usize).ok_or_else(|| ShardError::Cluster(format!("shard {} does not exist", m.shard)))?;
        let to = st.members.get(&m.to).ok_or_else(|| ShardError::Cluster(format!("node {} is not a member", m.to)))?;
        if sp.replicas.contains(&m.to) || !sp.replicas.contains(&m.from) {
            // Placement already has `to` as a replica, or `from` no longer is one (the
            // move was overtaken by another change): running it would shrink or widen
            // the group. Drop it.
            tracing::warn!(%m, replicas = ?sp.replicas, "dropping a move that no longer fits the shard's replicas");
            return self.placement_propose(PlacementOp::MoveFinished { shard: m.shard }).await;
        }
        let mut view = self.shard_admin(m.shard, ShardAdminOp::Status).await?;
        if !view.voters.contains(&m.from) && view.voters.contains(&m.to) {
            // Already done: record it.
            return self.finish_move(sp, m).await;
        }
        if !view.voters.contains(&m.to) {
            if !sp.learners.contains(&m.to) {
                self.placement_propose(PlacementOp::SetShard { shard: m.shard, replicas: sp.replicas.clone(), learners: vec![m.to] }).await?;
            }
            if !view.learners.contains(&m.to) || view.last_log_index > 0 {
                view = self.shard_admin(m.shard, ShardAdminOp::AddLearner { node: m.to, addr: to.addr.clone() }).await?;
            }
            // Promote only a learner that really holds the log (openraft's blocking
            // add_learner also returns for a learner it cannot reach).
            self.wait_caught_up(m.shard, m.to, view.last_log_index).await?;
            self.still_queued(m).await?;
            let mut voters = view.voters.clone();
            voters.push(m.to);
            view = self.shard_admin(m.shard, ShardAdminOp::SetVoters { voters, keep_others: true }).await?;
        }
        if view.leader == Some(m.from) {
            self.shard_transfer_leader(m.shard, m.to).await?;
        }
        self.still_queued(m).await?;
        let voters: Vec<NodeId> = view.voters.iter().copied().filter(|n| *n != m.from).collect();
        self.shard_admin(m.shard, ShardAdminOp::SetVoters { voters, keep_others: false }).await?;
        self.finish_move(sp, m).await
    }

    /// A move cancelled by the operator stops before its next step.
    async fn still_queued(&self, m: &Move) -> Result<(), ShardError> {
        if self.fresh_placement().await?.moves.contains(m) { Ok(()) } else { Err(ShardError::Cluster(format!("{m}: cancelled"))) }
    }

    /// Wait until node `node`'s replica of `shard` has applied at least `index`, asking
    /// the node itself.
    async fn wait_caught_up(&self, shard: ShardId, node: NodeId, index: u64) -> Result<(), ShardError> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(CATCH_UP_WAIT_MS_MAX);
        loop {
            let applied = if node == self.inner.node {
                self.hosted(shard).map(|h| h.group.status().applied_index)
            } else {
                match tokio::time::timeout(Duration::from_secs(2), self.remote(node, None, NodeRequest::Status)).await {
                    Ok(Ok(NodeReply::Status(v))) => v.replicas.iter().find(|r| r.shard == shard).map(|r| r.applied_index),
                    _ => None,
                }
            };
            if applied.is_some_and(|a| a >= index) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ShardError::Cluster(format!("shard {shard}: node {node} has not caught up (applied {applied:?} of {index})")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn finish_move(&self, sp: &chorus_placement::ShardPlacement, m: &Move) -> Result<(), ShardError> {
        let replicas: Vec<NodeId> = sp.replicas.iter().map(|n| if *n == m.from { m.to } else { *n }).collect();
        let mut replicas_dedup = Vec::new();
        for n in replicas {
            if !replicas_dedup.contains(&n) {
                replicas_dedup.push(n);
            }
        }
        self.placement_propose(PlacementOp::SetShard { shard: m.shard, replicas: replicas_dedup, learners: vec![] }).await?;
        self.placement_propose(PlacementOp::MoveFinished { shard: m.shard }).await
    }

    async fn balance_leaders(&self, st: &PlacementState) -> Result<(), ShardError> {
        let view = self.cluster_view().await?;
        let healthy: Vec<NodeId> = view.nodes.iter().filter(|n| n.healthy).map(|n| n.node).collect();
        let eligible = |n: &NodeId| healthy.contains(n) && st.members.get(n).is_some_and(|m| !m.draining);
        // Leaderships now, per member that may lead.
        let mut led: BTreeMap<NodeId, usize> = st.members.keys().filter(|n| eligible(n)).map(|n| (*n, 0)).collect();
        for leader in view.shard_leaders.values() {
            if let Some(c) = led.get_mut(leader) {
                *c += 1;
            }
        }
        let plan = st.leader_plan(&healthy);
        let mut started = 0;
        for (i, sp) in st.shards.iter().enumerate() {
            if started >= LEADER_TRANSFERS_PER_ROUND_MAX {
                break;
            }
            let shard = i as ShardId;
            // The members' views already say who leads: no question per shard.
            let Some(leader) = view.shard_leaders.get(&shard).copied() else { continue };
            if !sp.learners.is_empty() {
                continue; // a move is under way: it hands leadership over itself
            }
            // A replica leading fewest (the plan's pick on ties, then the first replica).
            let count = |n: &NodeId, led: &BTreeMap<NodeId, usize>| led.get(n).copied().unwrap_or(0);
            let Some(to) = sp
                .replicas
                .iter()
                .enumerate()
                .filter(|(_, n)| **n != leader && eligible(n))
                .min_by_key(|(pos, n)| (count(n, &led), plan[i] != Some(**n), *pos))
                .map(|(_, n)| *n)
            else {
                continue;
            };
            // Move only what evens leaderships out (a leader two or more ahead, or one
            // that is draining): an operator's transfer that keeps them even stays.
            let must = !eligible(&leader);
            if !(must || count(&leader, &led) >= count(&to, &led) + 2) {
                continue;
            }
            tracing::info!(shard, from = leader, to, "evening out leadership");
            if self.shard_admin(shard, ShardAdminOp::TransferLeader { to }).await.is_ok() {
                started += 1;
                if let Some(c) = led.get_mut(&leader) {
                    *c = c.saturating_sub(1);
                }
                *led.entry(to).or_default() += 1;
            }
        }
        Ok(())
    }
}

/// A cluster id: unique enough across clusters formed by the same operator.
fn xid(now_ms: i64, node: NodeId) -> u64 {
    let mut x = (now_ms as u64) ^ node.rotate_left(48) ^ 0x9e37_79b9_7f4a_7c15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}
