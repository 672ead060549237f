//! The placement group's raft application: applies committed `PlacementOp`s to the
//! state in log order, persists it with raft's metadata in one atomic write, and
//! publishes every new state on a watch channel that the node's reconciler follows.

use crate::{PlacementOp, PlacementState};
use chorus_raft::{Application, Applied, PLACEMENT_GROUP};
use chorus_store::Store;
use chorus_types::{ShardOp, ShardResult};
use futures::future::BoxFuture;
use std::io;
use std::sync::Arc;
use tokio::sync::watch;

pub struct PlacementApp {
    store: Store,
    state: watch::Sender<Arc<PlacementState>>,
    /// Serializes apply rounds with snapshots.
    lock: tokio::sync::Mutex<()>,
}

fn key(kind: u8) -> Vec<u8> {
    chorus_store::keys::shard_key(PLACEMENT_GROUP, kind, b"")
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl PlacementApp {
    /// Open the placement state kept in `store` (empty on a new node).
    pub fn open(store: Store) -> io::Result<Arc<PlacementApp>> {
        let state: PlacementState = match store.shard().get(key(b'p')).map_err(io_err)? {
            Some(v) => chorus_types::encoding::decode(&v).map_err(|e| io_err(format!("placement state: {e}")))?,
            None => PlacementState::default(),
        };
        let (tx, _) = watch::channel(Arc::new(state));
        Ok(Arc::new(PlacementApp { store, state: tx, lock: tokio::sync::Mutex::new(()) }))
    }

    /// The state as of the last applied entry.
    pub fn state(&self) -> Arc<PlacementState> {
        self.state.borrow().clone()
    }

    /// Follow every applied change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<PlacementState>> {
        self.state.subscribe()
    }

    fn persist(&self, state: &PlacementState, raft_meta: Vec<u8>) -> io::Result<()> {
        let mut b = self.store.batch();
        b.insert(self.store.shard(), key(b'p'), chorus_types::encoding::encode(state));
        b.insert(self.store.shard(), key(b'm'), raft_meta);
        b.commit().map_err(io_err)
    }
}

/// Encode a placement change as the placement group's log command.
pub fn command(now_ms: i64, op: &PlacementOp) -> chorus_types::ShardCommand {
    chorus_types::ShardCommand { now_ms, op: ShardOp::Placement { op: chorus_types::encoding::encode(op) } }
}

impl Application for PlacementApp {
    fn apply(&self, entries: Vec<Applied>, raft_meta: Vec<u8>) -> BoxFuture<'_, io::Result<Vec<ShardResult>>> {
        Box::pin(async move {
            let _g = self.lock.lock().await;
            let mut state = (*self.state()).clone();
            let mut results = Vec::with_capacity(entries.len());
            for e in entries {
                let r = match e.command.map(|c| c.op) {
                    None => ShardResult::Done,
                    Some(ShardOp::Placement { op }) => match chorus_types::encoding::decode::<PlacementOp>(&op) {
                        Ok(op) => match state.apply(&op) {
                            Ok(()) => {
                                tracing::info!(index = e.index, ?op, version = state.version, "placement changed");
                                ShardResult::Placement(None)
                            }
                            Err(err) => ShardResult::Placement(Some(err.to_string())),
                        },
                        Err(err) => ShardResult::Placement(Some(format!("undecodable placement change: {err}"))),
                    },
                    Some(other) => ShardResult::Placement(Some(format!("the placement group does not take {other:?}"))),
                };
                results.push(r);
            }
            self.persist(&state, raft_meta)?;
            self.state.send_replace(Arc::new(state));
            Ok(results)
        })
    }

    fn load_raft_meta(&self) -> io::Result<Option<Vec<u8>>> {
        Ok(self.store.shard().get(key(b'm')).map_err(io_err)?.map(|v| v.to_vec()))
    }

    fn snapshot(&self) -> BoxFuture<'_, io::Result<Vec<u8>>> {
        Box::pin(async move {
            let _g = self.lock.lock().await;
            Ok(chorus_types::encoding::encode(&*self.state()))
        })
    }

    fn install_snapshot(&self, data: Vec<u8>, raft_meta: Vec<u8>) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            let _g = self.lock.lock().await;
            let state: PlacementState = chorus_types::encoding::decode(&data).map_err(|e| io_err(format!("placement snapshot: {e}")))?;
            self.persist(&state, raft_meta)?;
            self.state.send_replace(Arc::new(state));
            Ok(())
        })
    }
}
