//! The raft log of one group in the node's fjall store. Appends are written to the
//! shared journal and acknowledged through the group-commit flusher, so one fsync
//! covers many groups' appends. The vote is fsync'd before `save_vote` returns.

use crate::TypeConfig;
use chorus_store::{Store, keys};
use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

const META_VOTE: u8 = b'v';
const META_COMMITTED: u8 = b'c';
const META_PURGED: u8 = b'p';

#[derive(Clone)]
pub struct LogStore {
    group: u32,
    store: Store,
}

fn meta_key(group: u32, what: u8) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[..4].copy_from_slice(&group.to_be_bytes());
    k[4] = what;
    k
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl LogStore {
    pub fn new(group: u32, store: Store) -> Self {
        LogStore { group, store }
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, what: u8) -> io::Result<Option<T>> {
        match self.store.raft_meta().get(meta_key(self.group, what)).map_err(io_err)? {
            None => Ok(None),
            Some(v) => chorus_types::encoding::decode(&v).map(Some).map_err(io_err),
        }
    }

    fn write_meta<T: serde::Serialize>(&self, what: u8, value: &T) -> io::Result<()> {
        self.store.raft_meta().insert(meta_key(self.group, what), chorus_types::encoding::encode(value)).map_err(io_err)
    }

    /// Inclusive key bounds of an index range, or `None` when the range is empty.
    fn range_keys(&self, range: &impl RangeBounds<u64>) -> Option<(Vec<u8>, Vec<u8>)> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.checked_add(1)?,
            Bound::Unbounded => 0,
        };
        let end_incl = match range.end_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.checked_sub(1)?,
            Bound::Unbounded => u64::MAX,
        };
        if start > end_incl {
            return None;
        }
        Some((keys::group_index(self.group, start).to_vec(), keys::group_index(self.group, end_incl).to_vec()))
    }

    fn read_range(&self, range: impl RangeBounds<u64>) -> io::Result<Vec<EntryOf<TypeConfig>>> {
        let Some((lo, hi)) = self.range_keys(&range) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for kv in self.store.raft_log().range(lo..=hi) {
            let (_, v) = kv.into_inner().map_err(io_err)?;
            let entry: EntryOf<TypeConfig> = chorus_types::encoding::decode(&v).map_err(io_err)?;
            out.push(entry);
        }
        Ok(out)
    }

    fn last_entry_id(&self) -> io::Result<Option<LogIdOf<TypeConfig>>> {
        let lo = keys::group_index(self.group, 0);
        let hi = keys::group_index(self.group, u64::MAX);
        match self.store.raft_log().range(lo..=hi).next_back() {
            None => Ok(None),
            Some(kv) => {
                let (_, v) = kv.into_inner().map_err(io_err)?;
                let entry: EntryOf<TypeConfig> = chorus_types::encoding::decode(&v).map_err(io_err)?;
                Ok(Some(entry.log_id()))
            }
        }
    }

    fn remove_range(&self, range: impl RangeBounds<u64>) -> io::Result<()> {
        let Some((lo, hi)) = self.range_keys(&range) else {
            return Ok(());
        };
        let mut batch = self.store.batch();
        for kv in self.store.raft_log().range(lo..=hi) {
            let key = kv.key().map_err(io_err)?;
            batch.remove(self.store.raft_log(), key);
        }
        batch.commit().map_err(io_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(&mut self, range: RB) -> Result<Vec<EntryOf<TypeConfig>>, io::Error> {
        self.read_range(range)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        self.read_meta(META_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged: Option<LogIdOf<TypeConfig>> = self.read_meta(META_PURGED)?;
        let last = self.last_entry_id()?.or(last_purged);
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> Result<(), io::Error> {
        self.write_meta(META_VOTE, vote)?;
        // Durable on return: a vote must never be forgotten after a crash.
        self.store.flusher().flush().await.map_err(io_err)
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<TypeConfig>>) -> Result<(), io::Error> {
        self.write_meta(META_COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<TypeConfig>>, io::Error> {
        Ok(self.read_meta::<Option<LogIdOf<TypeConfig>>>(META_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = self.store.batch();
        for entry in entries {
            let key = keys::group_index(self.group, entry.log_id().index);
            batch.insert(self.store.raft_log(), key.to_vec(), chorus_types::encoding::encode(&entry));
        }
        batch.commit().map_err(io_err)?;
        // Group commit: IOFlushed fires only after the shared fsync.
        self.store.flusher().request(Box::new(move |r| callback.io_completed(r.map_err(io_err))));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<TypeConfig>>) -> Result<(), io::Error> {
        let from = last_log_id.map(|l| l.index + 1).unwrap_or(0);
        self.remove_range(from..)
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        self.write_meta(META_PURGED, &log_id)?;
        self.remove_range(..=log_id.index)
    }
}
