//! Chorus shards: each shard is a replicated state machine (an openraft group via
//! `chorus-raft`) whose committed entries are applied by [`apply::ShardApp`], which
//! resolves identities and hands each customer's inputs to that customer's actor
//! ([`customer`]). Live actors are supervised and passivated ([`registry`]);
//! proposals are batched per shard ([`proposer`]); [`node::Shards`] is the node-level
//! entry point. Decisions come from `chorus-engine`; this crate only moves data.

pub mod apply;
pub mod clock;
pub mod cluster;
pub mod customer;
pub mod keys;
pub mod node;
pub mod proposer;
pub mod registry;
pub mod state;

pub use clock::{Clock, ClockError, ClockMode};
pub use node::{ShardStatusInfo, Shards};

use chorus_engine::EngineConfig;
use chorus_types::NodeId;

/// Tunables of every shard on a node; each bound is named `*_max`.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    /// Number of shards S (fixed at cluster creation).
    pub shard_count: u32,
    pub engine: EngineConfig,
    /// How long a message id is remembered for de-duplication.
    pub dedup_window_ms: i64,
    /// Most expired dedup records removed per apply round (bounds apply latency).
    pub dedup_expire_batch_max: usize,
    /// Idle time after which a customer actor is passivated.
    pub actor_idle_ms: u64,
    /// Most live customer actors per shard; beyond it the least recently used go.
    pub live_actors_max: usize,
    /// Consecutive failures after which a customer is quarantined.
    pub quarantine_after: u32,
    /// Events queued per shard awaiting a proposal; beyond it ingest is refused
    /// with RESOURCE_EXHAUSTED.
    pub ingest_queue_max: usize,
    /// Most events in one raft entry.
    pub proposal_events_max: usize,
    /// Most proposals in flight per shard.
    pub proposals_in_flight_max: usize,
    /// Most cross-shard messages delivered in one entry.
    pub cross_shard_batch_max: usize,
    /// Most timers fired by one tick entry.
    pub timers_fire_batch_max: usize,
    /// Most intents handed to connectors at once per shard.
    pub dispatch_in_flight_max: usize,
    /// Testing only: customer actors panic on events with this name
    /// (exercises supervision and quarantine).
    pub fault_panic_event: Option<String>,
}

/// The longest dedup window accepted.
pub const DEDUP_WINDOW_MS_MAX: i64 = 7 * 86_400_000;

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig {
            shard_count: 16,
            engine: EngineConfig::default(),
            dedup_window_ms: 86_400_000,
            dedup_expire_batch_max: 10_000,
            actor_idle_ms: 60_000,
            live_actors_max: 4_096,
            quarantine_after: 3,
            ingest_queue_max: 100_000,
            proposal_events_max: 4096,
            proposals_in_flight_max: 8,
            cross_shard_batch_max: 1024,
            timers_fire_batch_max: 4096,
            dispatch_in_flight_max: 256,
            fault_panic_event: None,
        }
    }
}

impl ShardConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.shard_count == 0 || self.shard_count > chorus_types::SHARD_COUNT_MAX {
            return Err(format!("shard_count must be between 1 and {}", chorus_types::SHARD_COUNT_MAX));
        }
        if self.dedup_window_ms <= 0 || self.dedup_window_ms > DEDUP_WINDOW_MS_MAX {
            return Err(format!("dedup window must be between 1ms and {}ms (7 days)", DEDUP_WINDOW_MS_MAX));
        }
        if self.live_actors_max == 0 {
            return Err("live_actors_max must be at least 1".into());
        }
        if self.quarantine_after == 0 {
            return Err("quarantine_after must be at least 1".into());
        }
        if self.proposal_events_max == 0 || self.proposal_events_max > self.ingest_queue_max {
            return Err("proposal_events_max must be between 1 and ingest_queue_max".into());
        }
        if self.proposals_in_flight_max == 0 {
            return Err("proposals_in_flight_max must be at least 1".into());
        }
        Ok(())
    }
}

/// How an error names a raft group: a shard by number, or the placement group.
fn group_name(group: u32) -> String {
    if group == chorus_raft::PLACEMENT_GROUP { "the placement group".to_string() } else { format!("shard {group}") }
}

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("shard {shard} is overloaded ({queued} events queued, limit {limit}); retry with backoff")]
    Overloaded { shard: u32, queued: usize, limit: usize },
    #[error("{} is not served by this node right now (no leader it can reach); retry", group_name(*shard))]
    Unavailable { shard: u32 },
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("no customer matches {what}")]
    NotFound { what: String },
    #[error(transparent)]
    Raft(#[from] chorus_raft::RaftError),
    #[error("storage: {0}")]
    Store(String),
    #[error("corrupt shard state: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Clock(#[from] ClockError),
    #[error("the cluster is not initialized yet: run `chorusctl cluster init` against any node")]
    NotInitialized,
    #[error("node {node} holds no shard replica yet, so it cannot answer catalog reads; ask another node")]
    NoReplica { node: NodeId },
    #[error("node {node} failed the request: {detail}")]
    Remote { node: NodeId, detail: String },
    /// A cluster change refused (already initialized, unknown node, ...).
    #[error("{0}")]
    Cluster(String),
}

impl ShardError {
    pub fn is_retryable(&self) -> bool {
        match self {
            ShardError::Overloaded { .. } | ShardError::Unavailable { .. } | ShardError::ShuttingDown => true,
            ShardError::Raft(r) => r.is_retryable(),
            _ => false,
        }
    }
}
