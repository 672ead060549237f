//! The cluster's placement (SPEC §3.4): members, the shard → replicas map and queued
//! shard moves, as a deterministic state machine replicated by the placement raft group
//! (`app`), plus the pure plans operators ask for (the initial assignment, rebalancing,
//! draining a node). It performs no moves itself: the node's mover carries plans out and
//! records each finished step here.

pub mod app;

use chorus_types::{NodeId, ShardId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Most voters of the placement group; further members follow it as learners.
pub const PLACEMENT_VOTERS_MAX: usize = 5;
/// Most shards a cluster may be created with.
pub const SHARDS_MAX: u32 = 4096;
/// Highest replication factor.
pub const REPLICATION_MAX: u32 = 7;
/// Most moves one plan may queue.
pub const MOVES_MAX: usize = 100_000;

/// A node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    /// Node-to-node address peers dial.
    pub addr: String,
    /// Public gRPC address (for operators and redirects).
    pub grpc_addr: String,
    pub http_addr: String,
    /// A draining node gets no new replicas and gives its replicas away.
    pub draining: bool,
}

/// Where one shard's replicas live.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPlacement {
    /// The voters (the first is the preferred leader).
    pub replicas: Vec<NodeId>,
    /// Nodes catching up to join (a move in progress).
    pub learners: Vec<NodeId>,
    /// Bumped by every change; 0 means the replicas are the ones the cluster was
    /// created with (only those may initialize a fresh group).
    pub generation: u64,
}

/// Move one replica of `shard` from node `from` to node `to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    pub shard: ShardId,
    pub from: NodeId,
    pub to: NodeId,
}

impl std::fmt::Display for Move {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shard {}: node {} → node {}", self.shard, self.from, self.to)
    }
}

/// The replicated placement state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementState {
    /// Empty until `cluster init`.
    pub cluster_id: String,
    pub replication: u32,
    pub members: BTreeMap<NodeId, Member>,
    /// Ids of removed nodes: never used again.
    pub removed: BTreeSet<NodeId>,
    pub shards: Vec<ShardPlacement>,
    /// Moves waiting to run, in order (the first runs next).
    pub moves: Vec<Move>,
    /// Bumped by every applied change.
    pub version: u64,
}

/// A change to the placement, proposed through the placement group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlacementOp {
    /// Create the cluster: members and the initial assignment.
    Init {
        cluster_id: String,
        shards: u32,
        replication: u32,
        members: Vec<Member>,
    },
    /// A new node joins (it hosts nothing until moves give it replicas).
    AddNode {
        member: Member,
    },
    /// Forget a node that hosts nothing any more.
    RemoveNode {
        id: NodeId,
    },
    SetDraining {
        id: NodeId,
        draining: bool,
    },
    /// Record a shard's replicas as the shard group now has them.
    SetShard {
        shard: ShardId,
        replicas: Vec<NodeId>,
        learners: Vec<NodeId>,
    },
    /// Append moves to the queue.
    QueueMoves {
        moves: Vec<Move>,
    },
    /// Drop the first queued move (finished, or impossible now).
    MoveFinished {
        shard: ShardId,
    },
    /// Drop every queued move.
    ClearMoves,
}

/// Why a placement change is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("the cluster is already initialized (cluster id {cluster_id})")]
    AlreadyInitialized { cluster_id: String },
    #[error("the cluster is not initialized: run `chorusctl cluster init` first")]
    NotInitialized,
    #[error("{what} must be between {min} and {max}, got {got}")]
    OutOfRange { what: &'static str, min: u64, max: u64, got: u64 },
    #[error("replication {replication} needs at least {replication} nodes, but {nodes} are known")]
    TooFewNodes { replication: u32, nodes: usize },
    #[error("node id {id} was used by a removed node; node ids are never reused")]
    IdReused { id: NodeId },
    #[error("node {id} is already a member (at {addr})")]
    AlreadyMember { id: NodeId, addr: String },
    #[error("address {addr} is already used by node {id}")]
    AddressTaken { addr: String, id: NodeId },
    #[error("node {id} is not a member")]
    UnknownNode { id: NodeId },
    #[error("node {id} still holds replicas of {shards} shard(s); drain it first (`chorusctl node drain {id}`)")]
    NodeNotEmpty { id: NodeId, shards: usize },
    #[error("shard {shard} does not exist (the cluster has {count})")]
    UnknownShard { shard: ShardId, count: u32 },
    #[error("node id 0 is reserved")]
    ZeroId,
    #[error("{0}")]
    Invalid(String),
}

impl PlacementState {
    pub fn is_initialized(&self) -> bool {
        !self.cluster_id.is_empty()
    }

    pub fn shard_count(&self) -> u32 {
        self.shards.len() as u32
    }

    /// Apply one change; a refused change leaves the state as it was.
    pub fn apply(&mut self, op: &PlacementOp) -> Result<(), PlacementError> {
        let mut next = self.clone();
        next.apply_inner(op)?;
        next.version += 1;
        *self = next;
        Ok(())
    }

    fn apply_inner(&mut self, op: &PlacementOp) -> Result<(), PlacementError> {
        match op {
            PlacementOp::Init { cluster_id, shards, replication, members } => {
                if self.is_initialized() {
                    return Err(PlacementError::AlreadyInitialized { cluster_id: self.cluster_id.clone() });
                }
                range("shards", *shards as u64, 1, SHARDS_MAX as u64)?;
                range("replication", *replication as u64, 1, REPLICATION_MAX as u64)?;
                if members.len() < *replication as usize {
                    return Err(PlacementError::TooFewNodes { replication: *replication, nodes: members.len() });
                }
                if cluster_id.is_empty() {
                    return Err(PlacementError::Invalid("the cluster id must not be empty".into()));
                }
                for m in members {
                    self.check_new_member(m)?;
                    self.members.insert(m.id, m.clone());
                }
                self.cluster_id = cluster_id.clone();
                self.replication = *replication;
                self.shards = initial_assignment(*shards, *replication, &self.members.keys().copied().collect::<Vec<_>>());
            }
            PlacementOp::AddNode { member } => {
                self.initialized()?;
                self.check_new_member(member)?;
                self.members.insert(member.id, member.clone());
            }
            PlacementOp::RemoveNode { id } => {
                self.initialized()?;
                if !self.members.contains_key(id) {
                    return Err(PlacementError::UnknownNode { id: *id });
                }
                let holding = self.shards.iter().filter(|s| s.replicas.contains(id) || s.learners.contains(id)).count();
                if holding > 0 {
                    return Err(PlacementError::NodeNotEmpty { id: *id, shards: holding });
                }
                self.members.remove(id);
                self.removed.insert(*id);
                self.moves.retain(|m| m.to != *id && m.from != *id);
            }
            PlacementOp::SetDraining { id, draining } => {
                self.initialized()?;
                let m = self.members.get_mut(id).ok_or(PlacementError::UnknownNode { id: *id })?;
                m.draining = *draining;
            }
            PlacementOp::SetShard { shard, replicas, learners } => {
                self.initialized()?;
                let count = self.shard_count();
                for n in replicas.iter().chain(learners) {
                    if !self.members.contains_key(n) {
                        return Err(PlacementError::UnknownNode { id: *n });
                    }
                }
                if replicas.is_empty() {
                    return Err(PlacementError::Invalid(format!("shard {shard} must keep at least one voter")));
                }
                let s = self.shards.get_mut(*shard as usize).ok_or(PlacementError::UnknownShard { shard: *shard, count })?;
                s.replicas = replicas.clone();
                s.learners = learners.clone();
                s.generation += 1;
            }
            PlacementOp::QueueMoves { moves } => {
                self.initialized()?;
                if self.moves.len() + moves.len() > MOVES_MAX {
                    return Err(PlacementError::Invalid(format!("at most {MOVES_MAX} moves may be queued")));
                }
                // Each new move is checked against the replicas as the moves queued before
                // it will leave them (two moves queued for one shard must still agree: a
                // second move onto a node the first one fills would drop a replica).
                let mut projected = self.clone();
                for m in &self.moves {
                    projected.project(m);
                }
                let mut queued = Vec::new();
                for m in moves {
                    // A move already queued is not queued twice (a drain asked again).
                    if self.moves.contains(m) || queued.contains(m) {
                        continue;
                    }
                    projected.check_move(m).map_err(|e| match e {
                        PlacementError::Invalid(why) if !self.moves.is_empty() || !queued.is_empty() => {
                            PlacementError::Invalid(format!("{why} once the moves queued before it have run ({m})"))
                        }
                        other => other,
                    })?;
                    projected.project(m);
                    queued.push(m.clone());
                }
                self.moves.extend(queued);
            }
            PlacementOp::MoveFinished { shard } => {
                if let Some(i) = self.moves.iter().position(|m| m.shard == *shard) {
                    self.moves.remove(i);
                }
            }
            PlacementOp::ClearMoves => self.moves.clear(),
        }
        Ok(())
    }

    fn initialized(&self) -> Result<(), PlacementError> {
        if self.is_initialized() { Ok(()) } else { Err(PlacementError::NotInitialized) }
    }

    fn check_new_member(&self, m: &Member) -> Result<(), PlacementError> {
        if m.id == 0 {
            return Err(PlacementError::ZeroId);
        }
        if self.removed.contains(&m.id) {
            return Err(PlacementError::IdReused { id: m.id });
        }
        if let Some(existing) = self.members.get(&m.id) {
            return Err(PlacementError::AlreadyMember { id: m.id, addr: existing.addr.clone() });
        }
        if let Some(other) = self.members.values().find(|o| o.addr == m.addr) {
            return Err(PlacementError::AddressTaken { addr: m.addr.clone(), id: other.id });
        }
        if m.addr.is_empty() {
            return Err(PlacementError::Invalid(format!("node {} has no address", m.id)));
        }
        Ok(())
    }

    /// The replicas as they are once move `m` has run.
    fn project(&mut self, m: &Move) {
        if let Some(s) = self.shards.get_mut(m.shard as usize)
            && s.replicas.contains(&m.from)
            && !s.replicas.contains(&m.to)
        {
            for n in s.replicas.iter_mut() {
                if *n == m.from {
                    *n = m.to;
                }
            }
        }
    }

    fn check_move(&self, m: &Move) -> Result<(), PlacementError> {
        let count = self.shard_count();
        let s = self.shards.get(m.shard as usize).ok_or(PlacementError::UnknownShard { shard: m.shard, count })?;
        if !self.members.contains_key(&m.to) {
            return Err(PlacementError::UnknownNode { id: m.to });
        }
        if !s.replicas.contains(&m.from) {
            return Err(PlacementError::Invalid(format!("node {} holds no replica of shard {}", m.from, m.shard)));
        }
        if s.replicas.contains(&m.to) {
            return Err(PlacementError::Invalid(format!("node {} already holds a replica of shard {}", m.to, m.shard)));
        }
        Ok(())
    }

    /// Replicas (voters) per member, members with none included.
    pub fn replica_counts(&self) -> BTreeMap<NodeId, usize> {
        let mut counts: BTreeMap<NodeId, usize> = self.members.keys().map(|id| (*id, 0)).collect();
        for s in &self.shards {
            for n in &s.replicas {
                *counts.entry(*n).or_default() += 1;
            }
        }
        counts
    }

    /// The voters of the placement group: the first `PLACEMENT_VOTERS_MAX` members that
    /// are not draining (by id), or draining ones if there are no others.
    pub fn placement_voters(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.members.values().filter(|m| !m.draining).map(|m| m.id).take(PLACEMENT_VOTERS_MAX).collect();
        if v.is_empty() {
            v = self.members.keys().copied().take(PLACEMENT_VOTERS_MAX).collect();
        }
        v
    }

    /// Moves that take every replica off `node`, each to the eligible member with the
    /// fewest replicas that does not already hold the shard.
    pub fn drain_plan(&self, node: NodeId) -> Result<Vec<Move>, PlacementError> {
        if !self.members.contains_key(&node) {
            return Err(PlacementError::UnknownNode { id: node });
        }
        let mut counts = self.replica_counts();
        counts.remove(&node);
        let eligible: Vec<NodeId> = self.members.values().filter(|m| !m.draining && m.id != node).map(|m| m.id).collect();
        let mut moves = Vec::new();
        for (i, s) in self.shards.iter().enumerate() {
            if !s.replicas.contains(&node) {
                continue;
            }
            let to = eligible
                .iter()
                .filter(|n| !s.replicas.contains(n))
                .min_by_key(|n| (counts.get(n).copied().unwrap_or(0), **n))
                .copied()
                .ok_or_else(|| PlacementError::Invalid(format!("no other node can take shard {i}'s replica: add a node first")))?;
            *counts.entry(to).or_default() += 1;
            moves.push(Move { shard: i as ShardId, from: node, to });
        }
        Ok(moves)
    }

    /// Moves that even the replica counts across non-draining members (each node ends
    /// within one replica of the others), moving as few replicas as possible.
    pub fn rebalance_plan(&self) -> Vec<Move> {
        let eligible: Vec<NodeId> = self.members.values().filter(|m| !m.draining).map(|m| m.id).collect();
        if eligible.is_empty() {
            return Vec::new();
        }
        let mut replicas: Vec<Vec<NodeId>> = self.shards.iter().map(|s| s.replicas.clone()).collect();
        let mut counts: BTreeMap<NodeId, usize> = eligible.iter().map(|n| (*n, 0)).collect();
        for r in &replicas {
            for n in r {
                if let Some(c) = counts.get_mut(n) {
                    *c += 1;
                }
            }
        }
        let mut moves = Vec::new();
        loop {
            let (&max_node, &max) = counts.iter().max_by_key(|(n, c)| (**c, std::cmp::Reverse(**n))).expect("eligible is not empty");
            let (&min_node, &min) = counts.iter().min_by_key(|(n, c)| (**c, **n)).expect("eligible is not empty");
            if max <= min + 1 {
                break;
            }
            let Some(shard) = replicas.iter().position(|r| r.contains(&max_node) && !r.contains(&min_node)) else {
                break;
            };
            let r = &mut replicas[shard];
            let pos = r.iter().position(|n| *n == max_node).expect("holds it");
            r[pos] = min_node;
            *counts.get_mut(&max_node).expect("counted") -= 1;
            *counts.get_mut(&min_node).expect("counted") += 1;
            moves.push(Move { shard: shard as ShardId, from: max_node, to: min_node });
        }
        moves
    }
}

impl PlacementState {
    /// Who should lead each shard so that leaderships are even over the `up` members
    /// that are not draining: shard by shard, the replica leading fewest so far (ties:
    /// the earlier replica, so the initial assignment's first replicas keep leading).
    /// `None` when no replica of the shard is up. A node that gained replicas by a
    /// rebalance gets its share of leaderships, not every shard where it took the first
    /// place.
    pub fn leader_plan(&self, up: &[NodeId]) -> Vec<Option<NodeId>> {
        let eligible = |n: &NodeId| up.contains(n) && self.members.get(n).is_some_and(|m| !m.draining);
        let mut led: BTreeMap<NodeId, usize> = BTreeMap::new();
        let mut plan: Vec<Option<NodeId>> = self
            .shards
            .iter()
            .map(|s| {
                let pick =
                    s.replicas.iter().enumerate().filter(|(_, n)| eligible(n)).min_by_key(|(pos, n)| (led.get(n).copied().unwrap_or(0), *pos)).map(|(_, n)| *n);
                if let Some(n) = pick {
                    *led.entry(n).or_default() += 1;
                }
                pick
            })
            .collect();
        // The greedy pass can leave a node two or more ahead of one of a shard's other
        // replicas: hand such shards over until none is left (each hand-over lowers the
        // sum of squared counts, so this ends).
        let mut changed = true;
        while changed {
            changed = false;
            for (i, s) in self.shards.iter().enumerate() {
                let Some(a) = plan[i] else { continue };
                let to = s.replicas.iter().filter(|n| eligible(n)).min_by_key(|n| (led.get(n).copied().unwrap_or(0), **n)).copied();
                if let Some(b) = to {
                    if led.get(&a).copied().unwrap_or(0) > led.get(&b).copied().unwrap_or(0) + 1 {
                        *led.entry(a).or_default() -= 1;
                        *led.entry(b).or_default() += 1;
                        plan[i] = Some(b);
                        changed = true;
                    }
                }
            }
        }
        plan
    }
}

fn range(what: &'static str, got: u64, min: u64, max: u64) -> Result<(), PlacementError> {
    if got < min || got > max { Err(PlacementError::OutOfRange { what, min, max, got }) } else { Ok(()) }
}

/// Spread `shards` × `replication` replicas over `nodes`: shard i's replicas start at
/// node i mod n, so replicas and preferred leaders are even.
pub fn initial_assignment(shards: u32, replication: u32, nodes: &[NodeId]) -> Vec<ShardPlacement> {
    let n = nodes.len();
    (0..shards as usize)
        .map(|i| ShardPlacement { replicas: (0..(replication as usize).min(n)).map(|k| nodes[(i + k) % n]).collect(), learners: Vec::new(), generation: 0 })
        .collect()
}

#[cfg(test)]
mod tests;
