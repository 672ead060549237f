//! Consensus for Chorus shards: openraft type config, the fjall-backed log store, the
//! state-machine adapter that hands committed commands to an [`Application`], and the
//! [`Group`] handle other crates use. **Invariant:** no other crate names openraft.

mod log_store;
mod network;
mod state_machine;
pub mod transport;

pub use state_machine::{Application, Applied};
pub use transport::{CallHandler, FaultGate, TlsMaterial, Transport, TransportError};

use chorus_store::Store;
use chorus_types::{NodeId, ShardCommand, ShardResult};
use futures::TryStreamExt;
use openraft::async_runtime::WatchReceiver;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

openraft::declare_raft_types!(
    /// Type config of every shard group.
    pub TypeConfig:
        D = ShardCommand,
        R = ShardResult,
        NodeId = u64,
        Node = openraft::BasicNode,
);

type Raft = transport::Raft;

/// The group id of the placement group (shards are 0..S).
pub const PLACEMENT_GROUP: u32 = u32::MAX;

#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    #[error("shard {group} has no leader on this node (leader: {leader:?}); retry")]
    NotLeader { group: u32, leader: Option<NodeId> },
    #[error("shard {group} is shutting down")]
    ShuttingDown { group: u32 },
    #[error("shard {group} raft error: {detail}")]
    Fatal { group: u32, detail: String },
    #[error("shard {group} storage error: {detail}")]
    Storage { group: u32, detail: String },
}

impl RaftError {
    /// Whether a client may retry the same request.
    pub fn is_retryable(&self) -> bool {
        matches!(self, RaftError::NotLeader { .. } | RaftError::ShuttingDown { .. })
    }
}

/// Timing of a group; tuned for many groups per node (ENGINEERING §1).
#[derive(Clone, Debug)]
pub struct GroupTuning {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Most entries per append/replication batch.
    pub payload_entries_max: u64,
    /// Build a snapshot (and purge the log behind it) after this many entries.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind a snapshot (so a briefly lagging follower catches
    /// up by entries instead of a whole snapshot).
    pub log_kept_after_snapshot: u64,
    /// Whether a replica that led before a restart leads again at once, without an
    /// election. Right for a single voter (it starts serving at once); wrong with
    /// several voters, where the others may have elected a new leader meanwhile and the
    /// restarted one would serve stale reads until it hears of it.
    pub restore_leadership: bool,
    /// Pre-vote (a candidate first asks whether it could win, without raising the term):
    /// a stalled or isolated replica that comes back cannot depose a healthy leader.
    pub pre_vote: bool,
    /// A heartbeat to a follower that acknowledged a replication within this many ms is
    /// skipped (0: never skipped), so a busy group sends appends, not heartbeats too.
    pub heartbeat_suppress_ms: u64,
}

impl Default for GroupTuning {
    fn default() -> Self {
        GroupTuning {
            heartbeat_ms: 300,
            election_min_ms: 1000,
            election_max_ms: 2000,
            payload_entries_max: 256,
            snapshot_after_entries: 20_000,
            log_kept_after_snapshot: 1_000,
            restore_leadership: true,
            pre_vote: false,
            heartbeat_suppress_ms: 0,
        }
    }
}

/// A submitted command awaiting commit and apply.
pub struct Pending {
    group: Group,
    rx: openraft::type_config::alias::OneshotReceiverOf<TypeConfig, openraft::raft::ClientWriteResult<TypeConfig>>,
}

impl Pending {
    pub async fn wait(self) -> Result<(u64, ShardResult), RaftError> {
        match self.rx.await {
            Ok(Ok(resp)) => Ok((resp.log_id.index, resp.data)),
            Ok(Err(e)) => Err(self.group.map_client_error(e)),
            Err(_) => Err(RaftError::ShuttingDown { group: self.group.id }),
        }
    }
}

/// A snapshot of a group's raft state for status displays.
#[derive(Clone, Debug, Default)]
pub struct GroupStatus {
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub is_leader: bool,
}

/// One replicated group (a shard). Cheap to clone.
#[derive(Clone)]
pub struct Group {
    id: u32,
    node: NodeId,
    raft: Raft,
    transport: Transport,
}

impl Group {
    /// Start (or recover) group `id` on this node, backed by `store`; committed commands
    /// are applied by `app`.
    pub async fn start(
        id: u32,
        node: NodeId,
        store: Store,
        app: Arc<dyn Application>,
        tuning: &GroupTuning,
        transport: &Transport,
    ) -> Result<Group, RaftError> {
        let network = network::Network { group: id, router: transport.clone(), addresses: Some(transport.clone()) };
        Group::start_on(id, node, store, app, tuning, transport, network).await
    }

    /// [`Group::start`] over any network (the simulation's in-process one).
    pub(crate) async fn start_on<R: openraft_multi::GroupRouter<TypeConfig, u32, SnapshotData = Vec<u8>>>(
        id: u32,
        node: NodeId,
        store: Store,
        app: Arc<dyn Application>,
        tuning: &GroupTuning,
        transport: &Transport,
        network: network::Network<R>,
    ) -> Result<Group, RaftError> {
        let config = openraft::Config {
            cluster_name: format!("chorus-shard-{id}"),
            heartbeat_interval: tuning.heartbeat_ms,
            election_timeout_min: tuning.election_min_ms,
            election_timeout_max: tuning.election_max_ms,
            max_payload_entries: tuning.payload_entries_max,
            snapshot_policy: if tuning.snapshot_after_entries == 0 {
                openraft::SnapshotPolicy::Never
            } else {
                openraft::SnapshotPolicy::LogsSinceLast(tuning.snapshot_after_entries)
            },
            max_in_snapshot_log_to_keep: tuning.log_kept_after_snapshot,
            enable_leader_restore: Some(tuning.restore_leadership),
            enable_pre_vote: Some(tuning.pre_vote),
            heartbeat_min_interval: (tuning.heartbeat_suppress_ms > 0).then_some(tuning.heartbeat_suppress_ms),
            ..Default::default()
        };
        let config = Arc::new(config.validate().map_err(|e| RaftError::Fatal { group: id, detail: e.to_string() })?);
        let log = log_store::LogStore::new(id, store.clone());
        let sm = state_machine::StateMachine::new(id, app);
        let raft = Raft::new(node, config, network, log, sm).await.map_err(|e| RaftError::Fatal { group: id, detail: e.to_string() })?;
        transport.register(id, raft.clone());
        Ok(Group { id, node, raft, transport: transport.clone() })
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// Make this node the single voter of a fresh group (no-op if already initialized).
    pub async fn initialize_single(&self, addr: &str) -> Result<(), RaftError> {
        let mut nodes = BTreeMap::new();
        nodes.insert(self.node, openraft::BasicNode::new(addr));
        match self.raft.initialize(nodes).await {
            Ok(()) => Ok(()),
            Err(openraft::errors::RaftError::APIError(openraft::errors::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(RaftError::Fatal { group: self.id, detail: e.to_string() }),
        }
    }

    /// Initialize a fresh group with `members` as voters (id → node-to-node address).
    /// Every member may call this with the same members; a group that is already
    /// initialized is left as it is.
    pub async fn initialize(&self, members: &[(NodeId, String)]) -> Result<(), RaftError> {
        let nodes: BTreeMap<NodeId, openraft::BasicNode> = members.iter().map(|(id, a)| (*id, openraft::BasicNode::new(a))).collect();
        for (id, a) in members {
            self.transport.set_address(*id, a);
        }
        match self.raft.initialize(nodes).await {
            Ok(()) => Ok(()),
            Err(openraft::errors::RaftError::APIError(openraft::errors::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(RaftError::Fatal { group: self.id, detail: e.to_string() }),
        }
    }

    /// Whether this replica has a membership (initialized or joined).
    pub async fn is_initialized(&self) -> Result<bool, RaftError> {
        self.raft.is_initialized().await.map_err(|e| RaftError::Fatal { group: self.id, detail: e.to_string() })
    }

    /// Add `node` as a learner and wait until it has caught up with the log (by
    /// entries, or by a streamed snapshot when the log behind it was purged).
    pub async fn add_learner(&self, node: NodeId, addr: &str) -> Result<(), RaftError> {
        self.transport.set_address(node, addr);
        self.raft.add_learner(node, openraft::BasicNode::new(addr), true).await.map(|_| ()).map_err(|e| self.map_write_error(e))
    }

    /// Make `voters` the group's voters (each must be a member already); other members
    /// stay as learners when `keep_others`, else they leave the group.
    pub async fn set_voters(&self, voters: &[NodeId], keep_others: bool) -> Result<(), RaftError> {
        let set: std::collections::BTreeSet<NodeId> = voters.iter().copied().collect();
        self.raft.change_membership(openraft::ChangeMembers::ReplaceAllVoters(set), keep_others).await.map(|_| ()).map_err(|e| self.map_write_error(e))
    }

    /// Remove learners (not voters) from the group.
    pub async fn remove_learners(&self, nodes: &[NodeId]) -> Result<(), RaftError> {
        let set: std::collections::BTreeSet<NodeId> = nodes.iter().copied().collect();
        self.raft.change_membership(openraft::ChangeMembers::RemoveNodes(set), false).await.map(|_| ()).map_err(|e| self.map_write_error(e))
    }

    /// Ask the leader (this node) to hand leadership to `to`.
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), RaftError> {
        self.raft.trigger().transfer_leader(to).await.map_err(|e| RaftError::Fatal { group: self.id, detail: e.to_string() })
    }

    /// The node-to-node address of every member of the group.
    pub fn member_addresses(&self) -> Vec<(NodeId, String)> {
        let m = self.raft.metrics().borrow_watched().clone();
        m.membership_config.membership().nodes().map(|(id, n)| (*id, n.addr.clone())).collect()
    }

    /// Wait until the group knows a leader (any node); returns it.
    pub async fn wait_any_leader(&self, timeout: Duration) -> Result<NodeId, RaftError> {
        let m = self
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .map_err(|e| RaftError::Fatal { group: self.id, detail: e.to_string() })?;
        Ok(m.current_leader.unwrap_or_default())
    }

    /// Wait until this node leads the group.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<(), RaftError> {
        self.raft
            .wait(Some(timeout))
            .state(openraft::ServerState::Leader, "become leader")
            .await
            .map(|_| ())
            .map_err(|e| RaftError::Fatal { group: self.id, detail: e.to_string() })
    }

    /// Wait until the metrics report `index` applied.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), RaftError> {
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "applied")
            .await
            .map(|_| ())
            .map_err(|e| RaftError::Fatal { group: self.id, detail: e.to_string() })
    }

    /// A linearizable read point (raft's ReadIndex): confirm with a quorum that this
    /// replica still leads, then wait until everything committed before the call is
    /// applied. A leader cut off from its quorum (a partition) answers `NotLeader`
    /// instead of serving what may be stale.
    pub async fn ensure_linearizable(&self, timeout: Duration) -> Result<(), RaftError> {
        let not_leader = |leader| RaftError::NotLeader { group: self.id, leader };
        match tokio::time::timeout(timeout, self.raft.ensure_linearizable(openraft::ReadPolicy::ReadIndex)).await {
            Err(_) => Err(not_leader(None)),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(openraft::errors::RaftError::APIError(api))) => match api {
                openraft::errors::LinearizableReadError::ForwardToLeader(f) => Err(not_leader(f.leader_id)),
                openraft::errors::LinearizableReadError::QuorumNotEnough(_) => Err(not_leader(None)),
            },
            Ok(Err(openraft::errors::RaftError::Fatal(openraft::errors::Fatal::Stopped))) => Err(RaftError::ShuttingDown { group: self.id }),
            Ok(Err(e)) => Err(RaftError::Fatal { group: self.id, detail: e.to_string() }),
        }
    }

    /// Propose one command; resolves after it is committed and applied.
    pub async fn propose(&self, cmd: ShardCommand) -> Result<(u64, ShardResult), RaftError> {
        match self.raft.client_write(cmd).await {
            Ok(resp) => Ok((resp.log_id.index, resp.data)),
            Err(e) => Err(self.map_write_error(e)),
        }
    }

    /// Submit a command to the raft core in call order and return a handle to await its
    /// result. Lets a proposer pipeline many entries while keeping their log order.
    pub async fn submit(&self, cmd: ShardCommand) -> Result<Pending, RaftError> {
        let (responder, rx) = openraft::impls::ProgressResponder::<TypeConfig, _>::complete_only();
        self.raft.client_write_ff(cmd, Some(responder)).await.map_err(|e| match e {
            openraft::errors::Fatal::Stopped => RaftError::ShuttingDown { group: self.id },
            other => RaftError::Fatal { group: self.id, detail: other.to_string() },
        })?;
        Ok(Pending { group: self.clone(), rx })
    }

    /// Propose several commands at once (one append, one fsync); results in order.
    pub async fn propose_many(&self, cmds: Vec<ShardCommand>) -> Vec<Result<(u64, ShardResult), RaftError>> {
        let n = cmds.len();
        let mut out = Vec::with_capacity(n);
        match self.raft.client_write_many(cmds).await {
            Ok(mut stream) => {
                loop {
                    match stream.try_next().await {
                        Ok(Some(Ok(w))) => out.push(Ok((w.log_id.index, w.response))),
                        Ok(Some(Err(e))) => out.push(Err(self.map_client_error(e))),
                        Ok(None) => break,
                        Err(e) => {
                            let detail = e.to_string();
                            while out.len() < n {
                                out.push(Err(RaftError::Fatal { group: self.id, detail: detail.clone() }));
                            }
                            break;
                        }
                    }
                }
                while out.len() < n {
                    out.push(Err(RaftError::ShuttingDown { group: self.id }));
                }
            }
            Err(e) => {
                let detail = e.to_string();
                for _ in 0..n {
                    out.push(Err(RaftError::Fatal { group: self.id, detail: detail.clone() }));
                }
            }
        }
        out
    }

    fn map_client_error(&self, e: openraft::errors::ClientWriteError<TypeConfig>) -> RaftError {
        match e {
            openraft::errors::ClientWriteError::ForwardToLeader(f) => RaftError::NotLeader { group: self.id, leader: f.leader_id },
            other => RaftError::Fatal { group: self.id, detail: other.to_string() },
        }
    }

    fn map_write_error(&self, e: openraft::errors::RaftError<TypeConfig, openraft::errors::ClientWriteError<TypeConfig>>) -> RaftError {
        if let Some(f) = e.forward_to_leader() {
            return RaftError::NotLeader { group: self.id, leader: f.leader_id };
        }
        match e {
            openraft::errors::RaftError::APIError(api) => self.map_client_error(api),
            openraft::errors::RaftError::Fatal(f) => match f {
                openraft::errors::Fatal::Stopped => RaftError::ShuttingDown { group: self.id },
                other => RaftError::Fatal { group: self.id, detail: other.to_string() },
            },
        }
    }

    pub fn status(&self) -> GroupStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let learners: Vec<NodeId> = membership.learner_ids().collect();
        let leader = effective_leader(&m, self.node);
        GroupStatus {
            leader,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.as_ref().map(|l| l.index).unwrap_or(0),
            voters,
            learners,
            is_leader: leader == Some(self.node),
        }
    }

    /// Whether this node leads the group (cheap: no copy of the metrics).
    pub fn is_leader(&self) -> bool {
        self.leader() == Some(self.node)
    }

    /// Whether this replica is a voter of the group (cheap).
    pub fn is_voter(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.membership_config.membership().voter_ids().any(|v| v == self.node)
    }

    /// The leader this replica knows of (cheap; see [`effective_leader`]).
    pub fn leader(&self) -> Option<NodeId> {
        effective_leader(&self.raft.metrics().borrow_watched(), self.node)
    }

    pub async fn shutdown(&self) -> Result<(), RaftError> {
        self.transport.unregister(self.id);
        self.raft.shutdown().await.map_err(|e| RaftError::Fatal { group: self.id, detail: e.to_string() })
    }
}

/// The leader metrics name, except this node itself unless it really leads: a replica
/// that restarted may still hold the vote it had as leader without leading.
fn effective_leader(m: &openraft::RaftMetrics<TypeConfig>, node: NodeId) -> Option<NodeId> {
    match m.current_leader {
        Some(l) if l == node && m.state != openraft::ServerState::Leader => None,
        other => other,
    }
}

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
