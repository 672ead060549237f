//! Key layout of a shard's state in the `shard` keyspace:
//! `shard (u32 BE) ++ kind ++ rest`. Kinds are part of the on-disk format.

use chorus_store::keys::shard_key;
use chorus_types::{CustomerId, Identity, ShardId};

/// openraft metadata (applied log id, membership), written with every apply.
pub const RAFT_META: u8 = b'm';
/// Shard counters ([`crate::state::ShardMeta`]).
pub const SHARD_META: u8 = b's';
/// Customer state by id.
pub const CUSTOMER: u8 = b'c';
/// Identity index: identity key bytes → customer id.
pub const INDEX: u8 = b'i';
/// Dedup record: message id → first-seen time.
pub const DEDUP: u8 = b'd';
/// Dedup expiry queue: first-seen time ++ message id.
pub const DEDUP_EXPIRY: u8 = b'e';
/// Outgoing cross-shard messages: target shard ++ seq.
pub const XOUT: u8 = b'x';
/// Highest applied seq per source shard.
pub const XIN: u8 = b'y';
/// Tombstones: merged customer id → survivor id.
pub const TOMB: u8 = b'k';
/// Inputs held back for customers frozen by an in-flight cross-shard merge.
pub const FROZEN: u8 = b'f';
/// Outbox: idempotency key → intent awaiting delivery.
pub const OUTBOX: u8 = b'o';
/// Durable timers: due ms (u64 BE) ++ timer id → timer.
pub const TIMER: u8 = b't';
/// Catalog: `v/` ++ journey id \0 version (u32 BE) → encoded definition;
/// `l/` ++ journey id → lifecycle; `s` → encoded settings; `a/` ++ audience id →
/// (order, version, encoded definition); `r/` ++ journey id → last scheduled run (ms);
/// `t/` ++ template id → (version, source, file); `k/` ++ name → write key (SHA-256, created).
pub const CATALOG: u8 = b'g';
/// Customers holding in a paused journey: journey \0 customer → ().
pub const PAUSED: u8 = b'w';
/// Audience members: audience \0 customer → ().
pub const MEMBER: u8 = b'n';
/// Engagement-tracking records: id (u64 BE) → `render::TrackRecord`.
pub const TRACK: u8 = b'l';
/// Dead letters: idempotency key → (intent, status, detail, failed at).
pub const DEAD: u8 = b'z';
/// Journey counters: journey \0 version (u32 BE) step \0 what → (count, sum).
pub const STATS: u8 = b'u';
/// Inputs parked for quarantined customers: customer ++ seq.
pub const PARKED: u8 = b'q';
/// Attempts started at a provider that does not de-duplicate by key: idempotency key →
/// when (ms, i64 BE). Removed with the intent's outcome.
pub const ATTEMPT: u8 = b'a';
/// Customer history, one record per event: customer (u64 BE) ++ history seq (u64 BE) →
/// `RecentEvent`. The customer record holds everything else (its `history` is empty).
pub const HISTORY: u8 = b'h';

pub fn raft_meta(shard: ShardId) -> Vec<u8> {
    shard_key(shard, RAFT_META, b"")
}
pub fn shard_meta(shard: ShardId) -> Vec<u8> {
    shard_key(shard, SHARD_META, b"")
}
pub fn customer(shard: ShardId, id: CustomerId) -> Vec<u8> {
    shard_key(shard, CUSTOMER, &id.0.to_be_bytes())
}
pub fn history(shard: ShardId, id: CustomerId, seq: u64) -> Vec<u8> {
    let mut rest = [0u8; 16];
    rest[..8].copy_from_slice(&id.0.to_be_bytes());
    rest[8..].copy_from_slice(&seq.to_be_bytes());
    shard_key(shard, HISTORY, &rest)
}
pub fn history_prefix(shard: ShardId, id: CustomerId) -> Vec<u8> {
    shard_key(shard, HISTORY, &id.0.to_be_bytes())
}
/// History seq of a history key.
pub fn history_seq(key: &[u8]) -> Option<u64> {
    key.get(key.len().checked_sub(8)?..).map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
}
pub fn customer_prefix(shard: ShardId) -> Vec<u8> {
    shard_key(shard, CUSTOMER, b"")
}
pub fn index(shard: ShardId, id: &Identity) -> Vec<u8> {
    shard_key(shard, INDEX, &id.key_bytes())
}
pub fn dedup(shard: ShardId, message_id: &str) -> Vec<u8> {
    shard_key(shard, DEDUP, message_id.as_bytes())
}
pub fn dedup_expiry(shard: ShardId, seen_ms: i64, message_id: &str) -> Vec<u8> {
    let mut rest = Vec::with_capacity(8 + message_id.len());
    rest.extend_from_slice(&(seen_ms.max(0) as u64).to_be_bytes());
    rest.extend_from_slice(message_id.as_bytes());
    shard_key(shard, DEDUP_EXPIRY, &rest)
}
pub fn dedup_expiry_prefix(shard: ShardId) -> Vec<u8> {
    shard_key(shard, DEDUP_EXPIRY, b"")
}
pub fn xout(shard: ShardId, target: ShardId, seq: u64) -> Vec<u8> {
    let mut rest = [0u8; 12];
    rest[..4].copy_from_slice(&target.to_be_bytes());
    rest[4..].copy_from_slice(&seq.to_be_bytes());
    shard_key(shard, XOUT, &rest)
}
pub fn xout_prefix(shard: ShardId) -> Vec<u8> {
    shard_key(shard, XOUT, b"")
}
pub fn xin(shard: ShardId, source: ShardId) -> Vec<u8> {
    shard_key(shard, XIN, &source.to_be_bytes())
}
pub fn parked(shard: ShardId, id: CustomerId, seq: u64) -> Vec<u8> {
    let mut rest = [0u8; 16];
    rest[..8].copy_from_slice(&id.0.to_be_bytes());
    rest[8..].copy_from_slice(&seq.to_be_bytes());
    shard_key(shard, PARKED, &rest)
}
/// Everything of one shard.
pub fn shard_prefix(shard: ShardId) -> Vec<u8> {
    shard.to_be_bytes().to_vec()
}
pub fn tomb(shard: ShardId, id: CustomerId) -> Vec<u8> {
    shard_key(shard, TOMB, &id.0.to_be_bytes())
}
pub fn parked_prefix(shard: ShardId) -> Vec<u8> {
    shard_key(shard, PARKED, b"")
}
/// One input held for a frozen customer: customer ++ seq.
pub fn held(shard: ShardId, id: CustomerId, seq: u64) -> Vec<u8> {
    let mut rest = [0u8; 16];
    rest[..8].copy_from_slice(&id.0.to_be_bytes());
    rest[8..].copy_from_slice(&seq.to_be_bytes());
    shard_key(shard, FROZEN, &rest)
}
/// Every input held for `id`.
pub fn held_prefix(shard: ShardId, id: CustomerId) -> Vec<u8> {
    shard_key(shard, FROZEN, &id.0.to_be_bytes())
}
pub fn outbox(shard: ShardId, key: &str) -> Vec<u8> {
    shard_key(shard, OUTBOX, key.as_bytes())
}
pub fn outbox_prefix(shard: ShardId) -> Vec<u8> {
    shard_key(shard, OUTBOX, b"")
}
pub fn timer(shard: ShardId, due_ms: i64, id: &str) -> Vec<u8> {
    let mut rest = Vec::with_capacity(8 + id.len());
    rest.extend_from_slice(&(due_ms.max(0) as u64).to_be_bytes());
    rest.extend_from_slice(id.as_bytes());
    shard_key(shard, TIMER, &rest)
}
pub fn timer_prefix(shard: ShardId) -> Vec<u8> {
    shard_key(shard, TIMER, b"")
}
/// Due time of a timer key.
pub fn timer_due(key: &[u8]) -> Option<i64> {
    key.get(5..13).map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")) as i64)
}
pub fn catalog_journey(shard: ShardId, id: &str, version: u32) -> Vec<u8> {
    let mut rest = b"v/".to_vec();
    rest.extend_from_slice(id.as_bytes());
    rest.push(0);
    rest.extend_from_slice(&version.to_be_bytes());
    shard_key(shard, CATALOG, &rest)
}
pub fn catalog_journeys_prefix(shard: ShardId) -> Vec<u8> {
    shard_key(shard, CATALOG, b"v/")
}
pub fn catalog_lifecycle(shard: ShardId, id: &str) -> Vec<u8> {
    let mut rest = b"l/".to_vec();
    rest.extend_from_slice(id.as_bytes());
    shard_key(shard, CATALOG, &rest)
}
pub fn catalog_lifecycle_prefix(shard: ShardId) -> Vec<u8> {
    shard_key(shard, CATALOG, b"l/")
}
pub fn catalog_settings(shard: ShardId) -> Vec<u8> {
    shard_key(shard, CATALOG, b"s")
}
pub fn catalog_audience(shard: ShardId, id: &str) -> Vec<u8> {
    let mut rest = b"a/".to_vec();
    rest.extend_from_slice(id.as_bytes());
    shard_key(shard, CATALOG, &rest)
}
pub fn catalog_audiences_prefix(shard: ShardId) -> Vec<u8> {
    shard_key(shard, CATALOG, b"a/")
}
pub fn catalog_template(shard: ShardId, id: &str) -> Vec<u8> {
    let mut rest = b"t/".to_vec();
    rest.extend_from_slice(id.as_bytes());
    shard_key(shard, CATALOG, &rest)
}
pub fn catalog_templates_prefix(shard: ShardId) -> Vec<u8> {
    shard_key(shard, CATALOG, b"t/")
}
/// Write key `name` → (SHA-256 of the key, created ms).
pub fn catalog_write_key(shard: ShardId, name: &str) -> Vec<u8> {
    let mut rest = b"k/".to_vec();
    rest.extend_from_slice(name.as_bytes());
    shard_key(shard, CATALOG, &rest)
}
pub fn catalog_write_keys_prefix(shard: ShardId) -> Vec<u8> {
    shard_key(shard, CATALOG, b"k/")
}
/// Present once the catalog has ever held a write key: from then on, having none
/// refuses every key (accept-any is only for a node that never had one).
pub fn catalog_write_keys_required(shard: ShardId) -> Vec<u8> {
    shard_key(shard, CATALOG, b"K")
}
pub fn attempt(shard: ShardId, key: &str) -> Vec<u8> {
    shard_key(shard, ATTEMPT, key.as_bytes())
}
pub fn dead(shard: ShardId, key: &str) -> Vec<u8> {
    shard_key(shard, DEAD, key.as_bytes())
}
pub fn dead_prefix(shard: ShardId) -> Vec<u8> {
    shard_key(shard, DEAD, b"")
}
pub fn track(shard: ShardId, id: u64) -> Vec<u8> {
    shard_key(shard, TRACK, &id.to_be_bytes())
}
pub fn catalog_schedule_run(shard: ShardId, journey: &str) -> Vec<u8> {
    let mut rest = b"r/".to_vec();
    rest.extend_from_slice(journey.as_bytes());
    shard_key(shard, CATALOG, &rest)
}
pub fn catalog_schedule_runs_prefix(shard: ShardId) -> Vec<u8> {
    shard_key(shard, CATALOG, b"r/")
}
pub fn member(shard: ShardId, audience: &str, customer: CustomerId) -> Vec<u8> {
    let mut rest = paused_prefix_rest(audience);
    rest.extend_from_slice(&customer.0.to_be_bytes());
    shard_key(shard, MEMBER, &rest)
}
pub fn members_prefix(shard: ShardId, audience: &str) -> Vec<u8> {
    shard_key(shard, MEMBER, &paused_prefix_rest(audience))
}
/// The customer id at the end of a member or paused key.
pub fn trailing_customer(key: &[u8]) -> Option<CustomerId> {
    let b = key.get(key.len().checked_sub(8)?..)?;
    Some(CustomerId(u64::from_be_bytes(b.try_into().ok()?)))
}
pub fn paused(shard: ShardId, journey: &str, customer: CustomerId) -> Vec<u8> {
    let mut rest = paused_prefix_rest(journey);
    rest.extend_from_slice(&customer.0.to_be_bytes());
    shard_key(shard, PAUSED, &rest)
}
fn paused_prefix_rest(journey: &str) -> Vec<u8> {
    let mut rest = journey.as_bytes().to_vec();
    rest.push(0);
    rest
}
pub fn paused_prefix(shard: ShardId, journey: &str) -> Vec<u8> {
    shard_key(shard, PAUSED, &paused_prefix_rest(journey))
}
pub fn stat(shard: ShardId, journey: &str, version: u32, step: &str, what: &str) -> Vec<u8> {
    let mut rest = Vec::with_capacity(journey.len() + step.len() + what.len() + 7);
    rest.extend_from_slice(journey.as_bytes());
    rest.push(0);
    rest.extend_from_slice(&version.to_be_bytes());
    rest.extend_from_slice(step.as_bytes());
    rest.push(0);
    rest.extend_from_slice(what.as_bytes());
    shard_key(shard, STATS, &rest)
}
pub fn stats_prefix(shard: ShardId, journey: &str) -> Vec<u8> {
    let mut rest = journey.as_bytes().to_vec();
    rest.push(0);
    shard_key(shard, STATS, &rest)
}
/// (version, step, what) of a stats key of `journey`.
pub fn parse_stat(key: &[u8], journey: &str) -> Option<(u32, String, String)> {
    let rest = key.get(5 + journey.len() + 1..)?;
    let version = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    let tail = std::str::from_utf8(&rest[4..]).ok()?;
    let (step, what) = tail.split_once('\0')?;
    Some((version, step.to_string(), what.to_string()))
}
