//! The node's embedded store: one fjall database with a keyspace per concern (raft log,
//! raft metadata, shard state) and one group-commit flusher whose single fsync covers
//! every shard's appends. It knows bytes and keys, never shard or raft semantics.

mod flusher;

pub use fjall::{Keyspace, OwnedWriteBatch as WriteBatch, Slice};
pub use flusher::{FlushCallback, Flusher};

use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error in {path}: {source}")]
    Fjall { path: PathBuf, source: fjall::Error },
    #[error("storage error: {0}")]
    Io(#[from] fjall::Error),
    #[error("the flusher has stopped; the node is shutting down")]
    FlusherStopped,
    #[error("fsync failed: {0}")]
    SyncFailed(String),
    #[error("corrupt value under key {key}: {detail}")]
    Corrupt { key: String, detail: String },
}

/// Tunables for the store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Block cache size in bytes.
    pub cache_bytes_max: u64,
    /// Most flush requests one fsync may acknowledge (bounds the callback batch).
    pub flush_batch_max: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { cache_bytes_max: 256 * 1024 * 1024, flush_batch_max: 65_536 }
    }
}

/// One node's storage. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: fjall::Database,
    raft_log: Keyspace,
    raft_meta: Keyspace,
    shard: Keyspace,
    node_meta: Keyspace,
    captured: Keyspace,
    flusher: Flusher,
    path: PathBuf,
}

impl Store {
    /// Open (or create) the store under `dir`.
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Fjall { path: dir.to_path_buf(), source: e.into() })?;
        let db = fjall::Database::builder(dir.join("db"))
            .cache_size(opts.cache_bytes_max)
            // We persist explicitly: the flusher fsyncs once for many appends.
            .manual_journal_persist(true)
            .open()
            .map_err(|source| StoreError::Fjall { path: dir.to_path_buf(), source })?;
        let ks = |name: &str| db.keyspace(name, fjall::KeyspaceCreateOptions::default);
        let raft_log = ks("raft_log")?;
        let raft_meta = ks("raft_meta")?;
        let shard = ks("shard")?;
        let node_meta = ks("node_meta")?;
        let captured = ks("captured")?;
        let flusher = Flusher::start(db.clone(), opts.flush_batch_max);
        Ok(Store { inner: Arc::new(Inner { db, raft_log, raft_meta, shard, node_meta, captured, flusher, path: dir.to_path_buf() }) })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }
    /// Raft log entries of every group: key = group (u32 BE) ++ index (u64 BE).
    pub fn raft_log(&self) -> &Keyspace {
        &self.inner.raft_log
    }
    /// Raft vote, committed and purged ids per group.
    pub fn raft_meta(&self) -> &Keyspace {
        &self.inner.raft_meta
    }
    /// Shard state machines: key = shard (u32 BE) ++ kind byte ++ rest.
    pub fn shard(&self) -> &Keyspace {
        &self.inner.shard
    }
    /// Node-level metadata (node id, cluster id, clock settings).
    pub fn node_meta(&self) -> &Keyspace {
        &self.inner.node_meta
    }
    /// Messages stored by the capture connector (a local stand-in for providers).
    pub fn captured(&self) -> &Keyspace {
        &self.inner.captured
    }
    /// A new atomic cross-keyspace batch; durable only after a flush.
    pub fn batch(&self) -> WriteBatch {
        self.inner.db.batch()
    }
    pub fn flusher(&self) -> &Flusher {
        &self.inner.flusher
    }
    /// Write buffered journal data to the OS without fsync (survives a process crash,
    /// not a power loss).
    pub fn persist_buffer(&self) -> Result<(), StoreError> {
        self.inner.db.persist(fjall::PersistMode::Buffer)?;
        Ok(())
    }
    /// Fsync now, bypassing group commit (shutdown, tests).
    pub fn sync(&self) -> Result<(), StoreError> {
        self.inner.db.persist(fjall::PersistMode::SyncData)?;
        Ok(())
    }
}

/// Big-endian key helpers: keys sort in numeric order.
pub mod keys {
    pub fn group_index(group: u32, index: u64) -> [u8; 12] {
        let mut k = [0u8; 12];
        k[..4].copy_from_slice(&group.to_be_bytes());
        k[4..].copy_from_slice(&index.to_be_bytes());
        k
    }
    pub fn split_group_index(key: &[u8]) -> Option<(u32, u64)> {
        if key.len() != 12 {
            return None;
        }
        Some((u32::from_be_bytes(key[..4].try_into().ok()?), u64::from_be_bytes(key[4..].try_into().ok()?)))
    }
    /// `shard (u32 BE) ++ kind ++ rest`.
    pub fn shard_key(shard: u32, kind: u8, rest: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(5 + rest.len());
        k.extend_from_slice(&shard.to_be_bytes());
        k.push(kind);
        k.extend_from_slice(rest);
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn flushed_writes_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
            let mut b = store.batch();
            b.insert(store.raft_log(), keys::group_index(3, 7).to_vec(), b"entry".to_vec());
            b.insert(store.shard(), keys::shard_key(3, 1, b"x"), b"state".to_vec());
            b.commit().unwrap();
            store.flusher().flush().await.unwrap();
        }
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(&*store.raft_log().get(keys::group_index(3, 7)).unwrap().unwrap(), b"entry");
        assert_eq!(&*store.shard().get(keys::shard_key(3, 1, b"x")).unwrap().unwrap(), b"state");
    }

    #[tokio::test]
    async fn many_concurrent_flush_requests_share_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut b = s.batch();
                b.insert(s.raft_log(), keys::group_index(1, i).to_vec(), b"e".to_vec());
                b.commit().unwrap();
                s.flusher().flush().await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let syncs = store.flusher().sync_count();
        assert!(syncs >= 1 && syncs <= 200, "syncs = {syncs}");
        assert_eq!(keys::split_group_index(&keys::group_index(9, 42)), Some((9, 42)));
    }
}
