//! Group commit: one thread fsyncs the shared journal and then completes every flush
//! request that arrived before the fsync started. Callbacks must be cheap and must not
//! block (they typically complete a oneshot or an openraft IO callback).

use crate::StoreError;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

/// Called once the data written before the request is durable (or the fsync failed).
pub type FlushCallback = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

#[derive(Clone)]
pub struct Flusher {
    tx: mpsc::Sender<FlushCallback>,
    syncs: Arc<AtomicU64>,
}

impl Flusher {
    pub(crate) fn start(db: fjall::Database, batch_max: usize) -> Flusher {
        let (tx, rx) = mpsc::channel::<FlushCallback>();
        let syncs = Arc::new(AtomicU64::new(0));
        let counter = syncs.clone();
        std::thread::Builder::new()
            .name("chorus-flusher".into())
            .spawn(move || {
                let mut pending: Vec<FlushCallback> = Vec::with_capacity(1024);
                while let Ok(first) = rx.recv() {
                    pending.push(first);
                    while pending.len() < batch_max {
                        match rx.try_recv() {
                            Ok(cb) => pending.push(cb),
                            Err(_) => break,
                        }
                    }
                    let result = db.persist(fjall::PersistMode::SyncData);
                    counter.fetch_add(1, Ordering::Relaxed);
                    match result {
                        Ok(()) => pending.drain(..).for_each(|cb| cb(Ok(()))),
                        Err(e) => {
                            tracing::error!(error = %e, "fsync failed; failing every pending flush");
                            let msg = e.to_string();
                            pending.drain(..).for_each(|cb| cb(Err(StoreError::SyncFailed(msg.clone()))));
                        }
                    }
                }
            })
            .expect("spawn flusher thread");
        Flusher { tx, syncs }
    }

    /// Ask for everything written so far to be made durable; `cb` runs after the fsync.
    pub fn request(&self, cb: FlushCallback) {
        if let Err(mpsc::SendError(cb)) = self.tx.send(cb) {
            cb(Err(StoreError::FlusherStopped));
        }
    }

    /// Wait until everything written so far is durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.request(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        rx.await.map_err(|_| StoreError::FlusherStopped)?
    }

    /// How many fsyncs have run (for metrics and tests).
    pub fn sync_count(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }
}
