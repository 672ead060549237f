//! Small persistent records of a shard (counters) and reading helpers shared by the
//! apply path and readers.

use crate::keys;
use chorus_engine::CustomerState;
use chorus_store::Store;
use chorus_types::{CustomerId, Identity, ShardId};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardMeta {
    /// Next customer sequence number in this shard.
    pub next_seq: u64,
    /// Customers created here (live or tombstoned).
    pub customers: u64,
    pub tombstones: u64,
    /// Next sequence number of outgoing cross-shard messages (shared by all targets).
    pub next_xseq: u64,
    pub parked_seq: u64,
    pub quarantined: u64,
    /// Customers frozen by an in-flight cross-shard merge (their inputs are held).
    pub frozen: std::collections::BTreeSet<CustomerId>,
    /// Durable timers pending in this shard.
    pub timers: u64,
    /// Intents in the outbox awaiting delivery.
    pub intents: u64,
    /// Next sequence number of an input held for a frozen customer.
    pub held_seq: u64,
    /// Audiences ever applied here: gives each new audience its evaluation order.
    pub audience_orders: u64,
    /// Messages decided here (intents recorded in the outbox), ever.
    pub intents_total: u64,
}

pub fn read_meta(store: &Store, shard: ShardId) -> Result<ShardMeta, String> {
    match store.shard().get(keys::shard_meta(shard)).map_err(|e| e.to_string())? {
        None => Ok(ShardMeta::default()),
        Some(v) => chorus_types::encoding::decode(&v).map_err(|e| format!("shard {shard} meta: {e}")),
    }
}

pub fn read_customer(store: &Store, shard: ShardId, id: CustomerId) -> Result<Option<CustomerState>, String> {
    match store.shard().get(keys::customer(shard, id)).map_err(|e| e.to_string())? {
        None => Ok(None),
        Some(v) => chorus_types::encoding::decode(&v).map(Some).map_err(|e| format!("customer {id}: {e}")),
    }
}

pub fn read_index(store: &Store, shard: ShardId, id: &Identity) -> Result<Option<CustomerId>, String> {
    match store.shard().get(keys::index(shard, id)).map_err(|e| e.to_string())? {
        None => Ok(None),
        Some(v) if v.len() == 8 => Ok(Some(CustomerId(u64::from_be_bytes(v[..8].try_into().expect("8 bytes"))))),
        Some(_) => Err(format!("corrupt index record for {id}")),
    }
}
