//! The batching proposer of one shard: ingest requests queue here (bounded by
//! `ingest_queue_max`, beyond which callers get `Overloaded`), are packed into raft
//! entries of up to `proposal_events_max` events, submitted to raft in arrival order
//! (so per-customer order holds) and pipelined up to `proposals_in_flight_max`.

use crate::{Clock, ShardConfig, ShardError};
use chorus_raft::Group;
use chorus_types::{Event, EventOutcome, ShardCommand, ShardOp, ShardResult};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{Semaphore, mpsc, oneshot};

type Reply = oneshot::Sender<Result<Vec<EventOutcome>, ShardError>>;

struct Request {
    events: Vec<Event>,
    reply: Reply,
}

#[derive(Clone)]
pub struct Proposer {
    shard: u32,
    tx: mpsc::UnboundedSender<Request>,
    queued: Arc<AtomicUsize>,
    limit: usize,
}

impl Proposer {
    pub fn spawn(group: Group, clock: Arc<Clock>, config: Arc<ShardConfig>) -> (Proposer, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let p = Proposer { shard: group.id(), tx, queued: queued.clone(), limit: config.ingest_queue_max };
        let task = tokio::spawn(run(group, clock, config, rx, queued));
        (p, task)
    }

    /// Events currently queued or in flight.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Propose `events` (all routed to this shard); resolves once they are committed
    /// and applied, with one outcome per event.
    pub async fn submit(&self, events: Vec<Event>) -> Result<Vec<EventOutcome>, ShardError> {
        let n = events.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        // Admission control: the bound is on events, checked before queueing.
        let before = self.queued.fetch_add(n, Ordering::AcqRel);
        if before + n > self.limit {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            return Err(ShardError::Overloaded { shard: self.shard, queued: before, limit: self.limit });
        }
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Request { events, reply }).is_err() {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            return Err(ShardError::ShuttingDown);
        }
        rx.await.map_err(|_| ShardError::ShuttingDown)?
    }
}

async fn run(group: Group, clock: Arc<Clock>, config: Arc<ShardConfig>, mut rx: mpsc::UnboundedReceiver<Request>, queued: Arc<AtomicUsize>) {
    let shard = group.id();
    let in_flight = Arc::new(Semaphore::new(config.proposals_in_flight_max));
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(first) = rx.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        // Everything that queued while we waited for a slot joins this entry.
        let mut reqs = vec![first];
        let mut count = reqs[0].events.len();
        while count < config.proposal_events_max {
            match rx.try_recv() {
                Ok(r) => {
                    count += r.events.len();
                    reqs.push(r);
                }
                Err(_) => break,
            }
        }
        let mut sizes = Vec::with_capacity(reqs.len());
        let mut events = Vec::with_capacity(count);
        let mut replies = Vec::with_capacity(reqs.len());
        for r in reqs {
            sizes.push(r.events.len());
            events.extend(r.events);
            replies.push(r.reply);
        }
        let cmd = ShardCommand { now_ms: clock.now_ms(), op: ShardOp::Ingest { events } };
        let pending = group.submit(cmd).await;
        let queued = queued.clone();
        tasks.spawn(async move {
            let result = match pending {
                Ok(p) => p.wait().await.map_err(ShardError::from),
                Err(e) => Err(ShardError::from(e)),
            };
            queued.fetch_sub(count, Ordering::AcqRel);
            drop(permit);
            match result {
                Ok((_, ShardResult::Ingest(outcomes))) if outcomes.len() == count => {
                    let mut it = outcomes.into_iter();
                    for (size, reply) in sizes.into_iter().zip(replies) {
                        let _ = reply.send(Ok(it.by_ref().take(size).collect()));
                    }
                }
                Ok((index, other)) => {
                    tracing::error!(index, result = ?other, "ingest entry applied with an unexpected result");
                    for reply in replies {
                        let _ = reply.send(Err(ShardError::Corrupt(format!("entry {index} returned {other:?}"))));
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    let retryable = e.is_retryable();
                    for reply in replies {
                        let err = if retryable { ShardError::Unavailable { shard } } else { ShardError::Store(msg.clone()) };
                        let _ = reply.send(Err(err));
                    }
                }
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    // Drain: let every in-flight proposal finish so no batch is left half-answered.
    while tasks.join_next().await.is_some() {}
}
