//! Adapter from openraft's state-machine API to Chorus's [`Application`]: committed
//! entries are handed over in batches (one call per apply round), responses go back
//! to the proposers, and raft's own metadata (applied log id, membership) is
//! persisted by the application atomically with its state.

use crate::TypeConfig;
use chorus_types::{ShardCommand, ShardResult};
use futures::Stream;
use futures::TryStreamExt;
use futures::future::BoxFuture;
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use std::io;
use std::sync::{Arc, Mutex};

/// One committed entry as the application sees it.
#[derive(Clone, Debug)]
pub struct Applied {
    pub index: u64,
    /// `None` for raft-internal entries (leader blanks, membership changes).
    pub command: Option<ShardCommand>,
}

/// The replicated application behind a group (a shard's state machine).
pub trait Application: Send + Sync + 'static {
    /// Apply committed entries in log order, deterministically, and persist the new
    /// state together with `raft_meta` in one atomic write. Returns one result per entry.
    fn apply(&self, entries: Vec<Applied>, raft_meta: Vec<u8>) -> BoxFuture<'_, io::Result<Vec<ShardResult>>>;
    /// The `raft_meta` last persisted by [`Application::apply`] or
    /// [`Application::install_snapshot`].
    fn load_raft_meta(&self) -> io::Result<Option<Vec<u8>>>;
    /// A consistent copy of the whole state.
    fn snapshot(&self) -> BoxFuture<'_, io::Result<Vec<u8>>>;
    /// Replace the whole state with a snapshot.
    fn install_snapshot(&self, data: Vec<u8>, raft_meta: Vec<u8>) -> BoxFuture<'_, io::Result<()>>;
}

type Meta = (Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>);

#[derive(Clone)]
pub struct StateMachine {
    group: u32,
    app: Arc<dyn Application>,
    current: Arc<Mutex<Option<(SnapshotMetaOf<TypeConfig>, Vec<u8>)>>>,
}

impl StateMachine {
    pub fn new(group: u32, app: Arc<dyn Application>) -> Self {
        StateMachine { group, app, current: Arc::new(Mutex::new(None)) }
    }

    fn meta(&self) -> io::Result<Meta> {
        match self.app.load_raft_meta()? {
            None => Ok((None, StoredMembershipOf::<TypeConfig>::default())),
            Some(bytes) => chorus_types::encoding::decode(&bytes).map_err(|e| io::Error::other(format!("shard {} raft meta: {e}", self.group))),
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, Vec<u8>>, io::Error> {
        let (applied, membership) = self.meta()?;
        let data = self.app.snapshot().await?;
        let meta = SnapshotMetaOf::<TypeConfig> { last_log_id: applied, last_membership: membership };
        *self.current.lock().expect("snapshot lock") = Some((meta.clone(), data.clone()));
        Ok(SnapshotOf::<TypeConfig, Vec<u8>> { meta, snapshot: data })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<Meta, io::Error> {
        self.meta()
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let (mut applied, mut membership) = self.meta()?;
        let mut batch = Vec::new();
        let mut responders = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            let index = entry.log_id.index;
            applied = Some(entry.log_id);
            let command = match entry.payload {
                EntryPayload::Blank => None,
                EntryPayload::Normal(cmd) => Some(cmd),
                EntryPayload::Membership(m) => {
                    membership = StoredMembershipOf::<TypeConfig>::new(applied, m);
                    None
                }
            };
            batch.push(Applied { index, command });
            responders.push(responder);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let meta = chorus_types::encoding::encode(&(applied, membership));
        let results = self.app.apply(batch, meta).await?;
        for (responder, result) in responders.into_iter().zip(results) {
            if let Some(r) = responder {
                r.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMetaOf<TypeConfig>, snapshot: Vec<u8>) -> Result<(), io::Error> {
        let raft_meta = chorus_types::encoding::encode(&(meta.last_log_id, meta.last_membership.clone()));
        self.app.install_snapshot(snapshot.clone(), raft_meta).await?;
        *self.current.lock().expect("snapshot lock") = Some((meta.clone(), snapshot));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<TypeConfig, Vec<u8>>>, io::Error> {
        let cur = self.current.lock().expect("snapshot lock").clone();
        Ok(cur.map(|(meta, snapshot)| SnapshotOf::<TypeConfig, Vec<u8>> { meta, snapshot }))
    }
}
