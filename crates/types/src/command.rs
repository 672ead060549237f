//! Shard log commands and their results: every input to a shard is one of these,
//! stamped with the leader's clock (SPEC §3.3). Variants are append-only.

use crate::{CustomerId, Event, Identity, SendRequest, ShardId};
use serde::{Deserialize, Serialize};

/// One entry of a shard's replicated log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardCommand {
    /// The proposing leader's clock (Unix ms); the decision core's only notion of now.
    pub now_ms: i64,
    pub op: ShardOp,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ShardOp {
    /// Events routed to this shard by their strongest identity.
    Ingest { events: Vec<Event> },
    /// Messages from another shard's log, each with the source's per-target sequence
    /// number; the target applies each (source shard, seq) at most once.
    CrossShard { source_shard: ShardId, messages: Vec<(u64, CrossShardMessage)> },
    /// The source learns that its messages to `target_shard` up to `upto_seq` were
    /// applied there and drops them from its outbox.
    CrossShardDelivered { target_shard: ShardId, upto_seq: u64 },
    /// Fire every durable timer due at or before the command's `now_ms`.
    Tick,
    /// The outcome of delivering an outbox intent.
    DispatchOutcome { outcomes: Vec<DispatchOutcome> },
    /// No effect; used to commit leadership and to move the clock forward.
    Noop,
    /// Send (or schedule) messages to customers homed in this shard.
    Send { requests: Vec<SendRequest> },
    /// A change to the catalog (journeys, ...), applied by every shard at its position
    /// in that shard's log.
    Catalog { change: CatalogChange },
    /// Re-evaluate these customers' audiences (backfill after an audience is applied).
    Evaluate { customers: Vec<CustomerId> },
    /// Move dead letters back into the outbox (same idempotency keys) to try again.
    Redrive { keys: Vec<String> },
    /// A change to the cluster's placement (members, shard replicas); only the
    /// placement group's log carries it (an encoded `chorus_placement::PlacementOp`).
    Placement { op: Vec<u8> },
    /// The leader is about to hand these outbox intents to a provider that does not
    /// de-duplicate by key: an intent found later with this record and no outcome was
    /// perhaps sent, and is reconciled with the provider before it is sent again.
    AttemptsStarted { keys: Vec<String> },
}

/// Catalog changes. Definitions travel encoded (the core owns their types).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CatalogChange {
    /// Publish version `version` of journey `id` (an encoded `JourneyDef`); earlier
    /// versions stop taking new entries.
    PutJourney { id: String, version: u32, def: Vec<u8> },
    /// Set journey `id`'s lifecycle: `active`, `paused` or `archived`.
    SetLifecycle { id: String, lifecycle: String },
    /// Replace the cluster settings (an encoded `guard::Settings`).
    PutSettings { settings: Vec<u8> },
    /// Publish version `version` of audience `id` (an encoded `AudienceDef`).
    PutAudience { id: String, version: u32, def: Vec<u8> },
    /// A scheduled entry of journey `journey` is due at `at_ms`: each shard enrolls its
    /// members of the journey's audience.
    RunSchedule { journey: String, at_ms: i64 },
    /// Publish version `version` of template `id`: its source text (validated before it
    /// was proposed; parsed again by every shard).
    PutTemplate { id: String, version: u32, source: String, file: String },
    /// Add write key `name` for the HTTP APIs: only its SHA-256 is stored (the key itself
    /// is shown once, to whoever created it).
    PutWriteKey { name: String, sha256: Vec<u8>, created_ms: i64 },
    /// Revoke write key `name`.
    RevokeWriteKey { name: String },
}

/// A message between shards (SPEC §3.1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CrossShardMessage {
    /// Events whose customer lives in the target shard.
    Forward { customer: CustomerId, event: Event },
    /// Link `identity` (indexed in the target shard) to `customer`. If the index points
    /// to one of `replaces` (customers merged into `customer`), it is re-pointed.
    Claim { identity: Identity, customer: CustomerId, replaces: Vec<CustomerId> },
    /// Cross-shard merge, step 1 (to `other`'s home): `key` was seen with `owner` but
    /// belongs to `other`. The home freezes `other` and offers its state.
    MergeRequest { key: Identity, owner: CustomerId, other: CustomerId },
    /// Step 2 (to `owner`'s home): `other`'s encoded state, frozen at its home. The
    /// owner's home decides (SPEC §4.2): merge into owner, absorb into other, or re-link.
    MergeOffer { key: Identity, owner: CustomerId, other: CustomerId, other_state: Vec<u8> },
    /// Step 3b (to `survivor`'s home, where `survivor` is frozen): merge `merged_state`
    /// (frozen at its own home) into `survivor`.
    MergeAbsorb { key: Identity, survivor: CustomerId, merged: CustomerId, merged_state: Vec<u8> },
    /// Final step (to `merged`'s home): `merged` becomes a tombstone forwarding to
    /// `survivor`; inputs parked while frozen are forwarded.
    MergeDone { merged: CustomerId, survivor: CustomerId },
    /// The merge did not happen: unfreeze `customer` (re-linking `key` away to `to` when
    /// the limit-1 rule said so).
    MergeCancel { customer: CustomerId, relink: Option<(Identity, CustomerId)> },
    /// A durable timer of a customer merged into a customer of the target shard fired:
    /// it acts there (journey positions and scheduled sends moved with the merge).
    FireTimer { timer: crate::Timer },
    /// From `identity`'s shard (the only one that decides which profile lists a key):
    /// its index record now names `customer`, so `customer` lists it.
    Link { customer: CustomerId, identity: Identity },
    /// From `identity`'s shard: its index record moved from `customer` to `to`, so
    /// `customer` no longer lists it.
    Unlink { customer: CustomerId, identity: Identity, to: CustomerId },
    /// To `identity`'s shard: the limit-1 rule gave the key to `to` (SPEC §4.2 "last
    /// login wins"); re-point it there if it still names `from` (or nobody).
    Relink { identity: Identity, to: CustomerId, from: CustomerId },
    /// To `identity`'s shard: a claim of it by `customer` could not be decided (a merge
    /// was in flight). Unless the index names `customer`, it drops the key.
    ClaimRefused { identity: Identity, customer: CustomerId },
}

/// Result of delivering one outbox intent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DispatchOutcome {
    pub idempotency_key: String,
    pub customer: CustomerId,
    pub status: DispatchStatus,
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DispatchStatus {
    Delivered,
    FailedPermanent,
    FailedTransient,
}

/// What applying a command produced, returned to the proposer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub enum ShardResult {
    #[default]
    Done,
    /// One outcome per event, in the order of the command.
    Ingest(Vec<EventOutcome>),
    /// One outcome per send request, in order.
    Send(Vec<SendOutcome>),
    /// How many items the command acted on (e.g. dead letters redriven).
    Count(u64),
    /// A placement change was refused (why), or applied (`None`).
    Placement(Option<String>),
}

/// What happened to a send request when its entry was applied. The send decision
/// itself (sent, skipped and why) is in the customer's decision log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SendOutcome {
    /// Handed to the customer's actor now.
    Accepted { customer: CustomerId },
    /// A durable timer will send it at `at_ms`.
    Scheduled { customer: CustomerId, at_ms: i64 },
    /// This request id was seen before within the dedup window.
    Duplicate,
    /// No such customer in this shard.
    NotFound,
}

/// The outcome of one ingested event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventOutcome {
    /// Applied to this customer.
    Applied { customer: CustomerId },
    /// Seen before within the dedup window; not applied again.
    Duplicate,
    /// Durably recorded and forwarded to the shard that holds the customer.
    Forwarded { customer: CustomerId, shard: ShardId },
    /// Durably recorded but parked: the customer is quarantined after repeated failures.
    Parked { customer: CustomerId },
}

impl std::fmt::Display for ShardCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.op {
            ShardOp::Ingest { events } => {
                write!(f, "ingest({} events)@{}", events.len(), self.now_ms)
            }
            ShardOp::CrossShard { source_shard, messages } => {
                write!(f, "cross-shard({} msgs from {source_shard})@{}", messages.len(), self.now_ms)
            }
            ShardOp::CrossShardDelivered { target_shard, upto_seq } => write!(f, "delivered({target_shard}<={upto_seq})"),
            ShardOp::Tick => write!(f, "tick@{}", self.now_ms),
            ShardOp::DispatchOutcome { outcomes } => write!(f, "outcomes({})", outcomes.len()),
            ShardOp::Noop => write!(f, "noop@{}", self.now_ms),
            ShardOp::Send { requests } => write!(f, "send({})@{}", requests.len(), self.now_ms),
            ShardOp::Catalog { .. } => write!(f, "catalog@{}", self.now_ms),
            ShardOp::Evaluate { customers } => {
                write!(f, "evaluate({})@{}", customers.len(), self.now_ms)
            }
            ShardOp::Redrive { keys } => write!(f, "redrive({})@{}", keys.len(), self.now_ms),
            ShardOp::Placement { .. } => write!(f, "placement@{}", self.now_ms),
            ShardOp::AttemptsStarted { keys } => write!(f, "attempts({})@{}", keys.len(), self.now_ms),
        }
    }
}
