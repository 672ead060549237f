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

/// A customer as stored: its record (with an empty `history`) plus one record per
/// history entry, in sequence order.
pub fn read_customer(store: &Store, shard: ShardId, id: CustomerId) -> Result<Option<CustomerState>, String> {
    let Some(v) = store.shard().get(keys::customer(shard, id)).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let mut state: CustomerState = chorus_types::encoding::decode(&v).map_err(|e| format!("customer {id}: {e}"))?;
    for kv in store.shard().prefix(keys::history_prefix(shard, id)) {
        let v = kv.value().map_err(|e| e.to_string())?;
        state.history.push_back(history_entry(id, &v)?);
    }
    Ok(Some(state))
}

fn history_entry(id: CustomerId, bytes: &[u8]) -> Result<chorus_engine::profile::RecentEvent, String> {
    chorus_types::encoding::decode(bytes).map_err(|e| format!("customer {id} history: {e}"))
}

/// The stored history records of `id` as (seq, key).
fn stored_history(store: &Store, shard: ShardId, id: CustomerId) -> Result<Vec<(u64, Vec<u8>)>, String> {
    let mut out = Vec::new();
    for kv in store.shard().prefix(keys::history_prefix(shard, id)) {
        let k = kv.key().map_err(|e| e.to_string())?;
        out.extend(keys::history_seq(&k).map(|seq| (seq, k.to_vec())));
    }
    Ok(out)
}

/// What one apply round writes for a customer. The record is rewritten every time (it
/// is small); the history — up to `history_max` events with their properties, most of a
/// hot customer's bytes — only gains the new events and loses the evicted ones.
#[derive(Debug)]
pub struct StateWrite {
    /// The customer record, encoded with an empty `history`.
    pub core: Vec<u8>,
    /// Replace every stored history record (new customer, merge, quarantine).
    pub rewrite: bool,
    /// Stored history records `delete_from..first` were evicted.
    pub delete_from: u64,
    /// Sequence number of the oldest history entry the customer now has.
    pub first: u64,
    /// History records to write: (seq, encoded `RecentEvent`), ascending, all `>= first`.
    pub appended: Vec<(u64, Vec<u8>)>,
}

/// Encode `state` without its history (which is put back afterwards).
fn encode_core(state: &mut CustomerState) -> Vec<u8> {
    let history = std::mem::take(&mut state.history);
    let core = chorus_types::encoding::encode(&*state);
    state.history = history;
    core
}

impl StateWrite {
    /// The whole state, replacing whatever history is stored.
    pub fn whole(state: &mut CustomerState) -> StateWrite {
        // Entries are numbered `history_seq - len ..`: the counter must cover them.
        state.history_seq = state.history_seq.max(state.history.len() as u64);
        let first = state.history_seq - state.history.len() as u64;
        let appended = state.history.iter().enumerate().map(|(i, e)| (first + i as u64, chorus_types::encoding::encode(e))).collect();
        StateWrite { core: encode_core(state), rewrite: true, delete_from: first, first, appended }
    }

    /// What changed since the state's history ended at sequence `seq0` with `len0`
    /// entries (what the store holds, or what this round already wrote).
    pub fn since(state: &mut CustomerState, seq0: u64, len0: usize) -> StateWrite {
        let (seq1, len1) = (state.history_seq, state.history.len() as u64);
        if seq1 < seq0 || seq1 < len1 || seq0 < len0 as u64 || seq1 - seq0 < len1.saturating_sub(len0 as u64) {
            // Not a plain append (cannot happen through the engine): write it all.
            return StateWrite::whole(state);
        }
        let first = seq1 - len1;
        let new_from = seq0.max(first);
        let appended =
            state.history.iter().skip((new_from - first) as usize).enumerate().map(|(i, e)| (new_from + i as u64, chorus_types::encoding::encode(e))).collect();
        StateWrite { core: encode_core(state), rewrite: false, delete_from: seq0 - len0 as u64, first, appended }
    }

    /// This write followed by `next` in the same round, as one write.
    pub fn then(mut self, next: StateWrite) -> StateWrite {
        if next.rewrite {
            return next;
        }
        self.appended.retain(|(seq, _)| *seq >= next.first);
        self.appended.extend(next.appended);
        StateWrite { core: next.core, rewrite: self.rewrite, delete_from: self.delete_from.min(next.delete_from), first: next.first, appended: self.appended }
    }

    /// The full state this write leaves, given the store before the round.
    pub fn state(&self, store: &Store, shard: ShardId, id: CustomerId) -> Result<CustomerState, String> {
        let mut state: CustomerState = chorus_types::encoding::decode(&self.core).map_err(|e| format!("customer {id}: {e}"))?;
        let upto = self.appended.first().map(|(seq, _)| *seq).unwrap_or(u64::MAX);
        if !self.rewrite {
            for kv in store.shard().range(keys::history(shard, id, self.first)..keys::history(shard, id, upto.min(state.history_seq))) {
                let v = kv.value().map_err(|e| e.to_string())?;
                state.history.push_back(history_entry(id, &v)?);
            }
        }
        for (_, v) in &self.appended {
            state.history.push_back(history_entry(id, v)?);
        }
        Ok(state)
    }

    /// Put this write into `batch`.
    pub fn write(self, batch: &mut chorus_store::WriteBatch, store: &Store, shard: ShardId, id: CustomerId) -> Result<(), String> {
        let ks = store.shard();
        if self.rewrite {
            let end = self.appended.last().map(|(seq, _)| seq + 1).unwrap_or(self.first);
            for (seq, key) in stored_history(store, shard, id)? {
                if seq < self.first || seq >= end {
                    batch.remove(ks, key);
                }
            }
        } else {
            for seq in self.delete_from..self.first {
                batch.remove(ks, keys::history(shard, id, seq));
            }
        }
        for (seq, v) in self.appended {
            batch.insert(ks, keys::history(shard, id, seq), v);
        }
        batch.insert(ks, keys::customer(shard, id), self.core);
        Ok(())
    }
}

pub fn read_index(store: &Store, shard: ShardId, id: &Identity) -> Result<Option<CustomerId>, String> {
    match store.shard().get(keys::index(shard, id)).map_err(|e| e.to_string())? {
        None => Ok(None),
        Some(v) if v.len() == 8 => Ok(Some(CustomerId(u64::from_be_bytes(v[..8].try_into().expect("8 bytes"))))),
        Some(_) => Err(format!("corrupt index record for {id}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_engine::profile::RecentEvent;
    use chorus_types::EventType;

    const MAX: usize = 5;

    /// What the engine does per event: append, number, evict beyond `MAX`.
    fn events(state: &mut CustomerState, names: std::ops::Range<u32>) {
        for n in names {
            state.history.push_back(RecentEvent {
                message_id: format!("m{n}"),
                event_type: EventType::Track,
                name: format!("e{n}"),
                timestamp_ms: i64::from(n),
                received_ms: i64::from(n),
                properties: format!("{{\"n\":{n}}}"),
            });
            state.history_seq += 1;
            state.event_count += 1;
            while state.history.len() > MAX {
                state.history.pop_front();
            }
        }
    }

    fn commit(store: &Store, w: StateWrite, id: CustomerId) {
        let mut batch = store.batch();
        w.write(&mut batch, store, 1, id).unwrap();
        batch.commit().unwrap();
    }

    fn stored_seqs(store: &Store, id: CustomerId) -> Vec<u64> {
        stored_history(store, 1, id).unwrap().into_iter().map(|(s, _)| s).collect()
    }

    #[test]
    fn rounds_append_and_evict_history_records_and_reads_see_the_whole_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let id = CustomerId(7);
        let mut s = CustomerState::new(id, 0);

        // A new customer's first round.
        events(&mut s, 0..3);
        commit(&store, StateWrite::since(&mut s, 0, 0), id);
        assert_eq!(read_customer(&store, 1, id).unwrap().unwrap(), s);
        assert_eq!(stored_seqs(&store, id), vec![0, 1, 2]);

        // A round that overflows the bound: two records in, three out... then two more.
        let (seq0, len0) = (s.history_seq, s.history.len());
        events(&mut s, 3..9);
        let w = StateWrite::since(&mut s, seq0, len0);
        assert_eq!(w.appended.iter().map(|(q, _)| *q).collect::<Vec<_>>(), vec![4, 5, 6, 7, 8], "only what is still held is written");
        assert!(!w.rewrite);
        commit(&store, w, id);
        assert_eq!(stored_seqs(&store, id), vec![4, 5, 6, 7, 8]);
        assert_eq!(read_customer(&store, 1, id).unwrap().unwrap(), s);
        assert_eq!(s.history.front().unwrap().name, "e4");
    }

    #[test]
    fn two_changes_in_one_round_fold_and_a_pending_change_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let id = CustomerId(9);
        let mut s = CustomerState::new(id, 0);
        events(&mut s, 0..4);
        commit(&store, StateWrite::since(&mut s, 0, 0), id);

        let (seq0, len0) = (s.history_seq, s.history.len());
        events(&mut s, 4..6);
        let first = StateWrite::since(&mut s, seq0, len0);
        assert_eq!(first.state(&store, 1, id).unwrap(), s, "the round reads its own pending change");
        let (seq1, len1) = (s.history_seq, s.history.len());
        events(&mut s, 6..9);
        let folded = first.then(StateWrite::since(&mut s, seq1, len1));
        assert_eq!(folded.state(&store, 1, id).unwrap(), s);
        commit(&store, folded, id);
        assert_eq!(stored_seqs(&store, id), vec![4, 5, 6, 7, 8], "records appended and evicted within the round were never kept");
        assert_eq!(read_customer(&store, 1, id).unwrap().unwrap(), s);
    }

    #[test]
    fn a_whole_rewrite_replaces_every_stored_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let id = CustomerId(11);
        let mut s = CustomerState::new(id, 0);
        events(&mut s, 0..5);
        commit(&store, StateWrite::since(&mut s, 0, 0), id);

        // A merge renumbers and reorders the history; a delta earlier in the round is
        // superseded by the rewrite.
        let (seq0, len0) = (s.history_seq, s.history.len());
        events(&mut s, 5..6);
        let delta = StateWrite::since(&mut s, seq0, len0);
        let mut merged = s.clone();
        merged.history.truncate(2);
        merged.history_seq = 40;
        let w = delta.then(StateWrite::whole(&mut merged));
        assert!(w.rewrite);
        commit(&store, w, id);
        assert_eq!(stored_seqs(&store, id), vec![38, 39]);
        assert_eq!(read_customer(&store, 1, id).unwrap().unwrap(), merged);

        // A tombstone keeps no history at all.
        let mut tomb = merged.clone();
        tomb.history.clear();
        commit(&store, StateWrite::whole(&mut tomb), id);
        assert!(stored_seqs(&store, id).is_empty());
        assert_eq!(read_customer(&store, 1, id).unwrap().unwrap(), tomb);
    }
}
