//! All shards hosted by one node: opening them (one raft group each), routing every
//! request to its shard's leader (locally, or forwarded over the node-to-node transport
//! when another node leads it), reads, background loops (cross-shard delivery, timers,
//! dispatch, passivation) and orderly shutdown. The API layer talks to this type only.

use crate::apply::ShardApp;
use crate::cluster::{ClusterState, Fail, NodeReply, NodeRequest, ShardRead, ShardReadReply};
use crate::proposer::Proposer;
use crate::{Clock, ShardConfig, ShardError, state};
use chorus_connectors::Connectors;
use chorus_engine::CustomerState;
use chorus_raft::{Group, GroupTuning, Transport};
use chorus_store::Store;
use chorus_types::{
    CrossShardMessage, CustomerId, DispatchOutcome, Event, EventOutcome, Identity, NodeId, SendOutcome, SendRequest, ShardCommand, ShardId, ShardOp,
    ShardResult,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// How long a request waits for its shard to have a leader (an election) before it
/// fails with a retryable error.
pub const ROUTE_WAIT_MS_MAX: u64 = 5_000;
/// Most node-to-node hops a forwarded request may take (a stale leader hint costs one).
pub const FORWARD_HOPS_MAX: u8 = 2;
/// Longest wait for a leader to confirm its leadership before a linearizable read.
pub const READ_INDEX_WAIT_MAX: Duration = Duration::from_secs(3);

pub(crate) struct Hosted {
    pub(crate) id: ShardId,
    pub(crate) app: Arc<ShardApp>,
    pub(crate) group: Group,
    pub(crate) proposer: Proposer,
    stop: watch::Sender<bool>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Hosted {
    async fn close(&self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.group.shutdown().await {
            tracing::warn!(shard = self.id, error = %e, "raft shutdown");
        }
        self.app.registry.stop_all();
        for t in std::mem::take(&mut *self.tasks.lock().expect("tasks lock")) {
            t.abort();
        }
    }
}

/// Where a shard's requests go now.
pub(crate) enum Target {
    Local(Arc<Hosted>),
    Remote(NodeId),
}

/// Status of one shard for operators.
#[derive(Clone, Debug, Default)]
pub struct ShardStatusInfo {
    pub shard: ShardId,
    pub leader: Option<NodeId>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub live_actors: u64,
    pub customers: u64,
    pub pending_cross_shard: u64,
    pub quarantined: u64,
    pub queued_events: u64,
    pub pending_timers: u64,
    pub pending_intents: u64,
    /// Messages decided by the shard, ever.
    pub intents_total: u64,
    /// Inputs held back (since start) while their customer was frozen by a merge.
    pub held_inputs: u64,
    /// Uncertain attempts: found at the provider, absent, resent, skipped.
    pub uncertain: [u64; 4],
    /// Timer lateness since start: cumulative counts per bucket of
    /// [`crate::apply::TIMER_LATENESS_BUCKETS_MS`] (then `+Inf`), sum (ms) and count.
    pub timer_lateness: (Vec<u64>, u64, u64),
    /// The latest any timer fired since start (ms after its due time).
    pub timer_lateness_max_ms: u64,
}

pub(crate) struct Inner {
    pub(crate) node: NodeId,
    pub(crate) store: Store,
    pub(crate) clock: Arc<Clock>,
    base_config: ShardConfig,
    /// The shard configuration in force (its shard count fixed when the data directory
    /// or the cluster was created); unset until a cluster node learns it.
    config: OnceLock<Arc<ShardConfig>>,
    pub(crate) tuning: GroupTuning,
    hosted: RwLock<BTreeMap<ShardId, Arc<Hosted>>>,
    connectors: Connectors,
    pub(crate) transport: Transport,
    pub(crate) cluster: Option<ClusterState>,
    leader_hints: RwLock<HashMap<ShardId, NodeId>>,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// One manual-clock move at a time (each steps through the timers it passes).
    clock_moves: tokio::sync::Mutex<()>,
}

/// The node's shards. Cheap to clone.
#[derive(Clone)]
pub struct Shards {
    pub(crate) inner: Arc<Inner>,
}

const SHARD_COUNT_KEY: &[u8] = b"shard_count";

/// Most instants one manual clock move fires timers at (each step fires every timer due
/// at one instant); beyond it the clock jumps to the target and the rest fire there.
pub const CLOCK_STEPS_MAX: usize = 100_000;
/// Longest wait of a clock move for cross-shard messages to be delivered between steps.
const SETTLE_WAIT_MS_MAX: u64 = 10_000;

impl Shards {
    /// Open every shard in `store` as a single-voter group led by `node`.
    pub async fn open(
        node: NodeId,
        addr: &str,
        store: Store,
        clock: Arc<Clock>,
        config: ShardConfig,
        tuning: GroupTuning,
        connectors: Connectors,
    ) -> Result<Shards, ShardError> {
        config.validate().map_err(ShardError::Corrupt)?;
        // S is fixed when the data directory is created.
        match store.node_meta().get(SHARD_COUNT_KEY).map_err(|e| ShardError::Store(e.to_string()))? {
            Some(v) if v.len() == 4 => {
                let existing = u32::from_be_bytes(v[..4].try_into().expect("4 bytes"));
                if existing != config.shard_count {
                    return Err(ShardError::Corrupt(format!(
                        "the data directory {} was created with {existing} shards but {} were configured; the shard count is fixed at creation (use {existing}, or a new data directory)",
                        store.path().display(),
                        config.shard_count
                    )));
                }
            }
            _ => {
                store.node_meta().insert(SHARD_COUNT_KEY, config.shard_count.to_be_bytes().to_vec()).map_err(|e| ShardError::Store(e.to_string()))?;
                store.sync().map_err(|e| ShardError::Store(e.to_string()))?;
            }
        }
        let me = Shards::new_inner(node, store, clock, config.clone(), tuning, connectors, Transport::new(node, None), None);
        me.set_config(config.shard_count);
        let members = vec![(node, addr.to_string())];
        for id in 0..me.config().shard_count {
            me.host_shard(id, Some(&members)).await?;
        }
        for h in me.hosted_all() {
            h.group.wait_leader(Duration::from_secs(30)).await?;
        }
        me.spawn_background();
        tracing::info!(node, shards = me.shard_count(), "shards open and led by this node");
        Ok(me)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new_inner(
        node: NodeId,
        store: Store,
        clock: Arc<Clock>,
        base_config: ShardConfig,
        tuning: GroupTuning,
        connectors: Connectors,
        transport: Transport,
        cluster: Option<ClusterState>,
    ) -> Shards {
        let (shutdown, _) = watch::channel(false);
        Shards {
            inner: Arc::new(Inner {
                node,
                store,
                clock,
                base_config,
                config: OnceLock::new(),
                tuning,
                hosted: RwLock::default(),
                connectors,
                transport,
                cluster,
                leader_hints: RwLock::default(),
                shutdown,
                tasks: std::sync::Mutex::new(Vec::new()),
                clock_moves: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Fix the shard count (once: single node at open, cluster node at init).
    pub(crate) fn set_config(&self, shard_count: u32) {
        let mut c = self.inner.base_config.clone();
        c.shard_count = shard_count;
        let _ = self.inner.config.set(Arc::new(c));
    }

    pub(crate) fn is_configured(&self) -> bool {
        self.inner.config.get().is_some()
    }

    /// Open shard `id` on this node (a replica of its group) and start its loops.
    /// `initialize` makes a fresh group with those voters (passed by one replica only:
    /// the preferred one, or the only one of a node running alone); the other replicas
    /// pass `None` and join when the leader reaches them.
    pub(crate) async fn host_shard(&self, id: ShardId, initialize: Option<&[(NodeId, String)]>) -> Result<Arc<Hosted>, ShardError> {
        if let Some(h) = self.hosted(id) {
            return Ok(h);
        }
        let config = self.inner.config.get().cloned().ok_or(ShardError::NotInitialized)?;
        let app = ShardApp::open(id, self.inner.store.clone(), config.clone()).await.map_err(ShardError::Store)?;
        let group = Group::start(id, self.inner.node, self.inner.store.clone(), app.clone(), &self.inner.tuning, &self.inner.transport).await?;
        if let Some(members) = initialize {
            group.initialize(members).await?;
        }
        let (proposer, task) = Proposer::spawn(group.clone(), self.inner.clock.clone(), config);
        let (stop, _) = watch::channel(false);
        let h = Arc::new(Hosted { id, app, group, proposer, stop, tasks: std::sync::Mutex::new(vec![task]) });
        self.inner.hosted.write().expect("hosted lock").insert(id, h.clone());
        let mut tasks = Vec::new();
        let (me, hh, rx) = (self.clone(), h.clone(), h.stop.subscribe());
        tasks.push(tokio::spawn(async move { me.cross_shard_pump(&hh, rx).await }));
        let (me, hh, rx) = (self.clone(), h.clone(), h.stop.subscribe());
        tasks.push(tokio::spawn(async move { me.ticker(&hh, rx).await }));
        let (me, hh, rx) = (self.clone(), h.clone(), h.stop.subscribe());
        tasks.push(tokio::spawn(async move { me.dispatcher(&hh, rx).await }));
        h.tasks.lock().expect("tasks lock").extend(tasks);
        tracing::info!(shard = id, node = self.inner.node, "hosting a replica");
        Ok(h)
    }

    /// Stop hosting shard `id`; with `delete`, drop its state and log from the store
    /// (the node no longer holds a replica).
    pub(crate) async fn unhost_shard(&self, id: ShardId, delete: bool) -> Result<(), ShardError> {
        let h = self.inner.hosted.write().expect("hosted lock").remove(&id);
        if let Some(h) = h {
            h.close().await;
        }
        if delete {
            let store = &self.inner.store;
            let mut batch = store.batch();
            for ks in [store.shard(), store.raft_log(), store.raft_meta()] {
                for kv in ks.prefix(id.to_be_bytes()) {
                    batch.remove(ks, kv.key().map_err(|e| ShardError::Store(e.to_string()))?);
                }
            }
            batch.commit().map_err(|e| ShardError::Store(e.to_string()))?;
            tracing::info!(shard = id, "replica removed and its data deleted");
        }
        Ok(())
    }

    pub(crate) fn hosted(&self, shard: ShardId) -> Option<Arc<Hosted>> {
        self.inner.hosted.read().expect("hosted lock").get(&shard).cloned()
    }

    pub(crate) fn hosted_all(&self) -> Vec<Arc<Hosted>> {
        self.inner.hosted.read().expect("hosted lock").values().cloned().collect()
    }

    pub(crate) fn hosted_ids(&self) -> Vec<ShardId> {
        self.inner.hosted.read().expect("hosted lock").keys().copied().collect()
    }

    pub(crate) fn spawn_background(&self) {
        let mut tasks = Vec::new();
        let me = self.clone();
        let rx = self.inner.shutdown.subscribe();
        tasks.push(tokio::spawn(async move { me.scheduler(rx).await }));
        let me = self.clone();
        let mut rx = self.inner.shutdown.subscribe();
        tasks.push(tokio::spawn(async move {
            let period = Duration::from_millis((me.inner.base_config.actor_idle_ms / 4).clamp(50, 5_000));
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = rx.changed() => return,
                }
                for h in me.hosted_all() {
                    h.app.passivate().await;
                }
            }
        }));
        self.inner.tasks.lock().expect("tasks lock").extend(tasks);
    }

    /// Run scheduled journey entries when due (by the node clock): every shard enrolls
    /// its members of the journey's audience at the same log-ordered catalog entry.
    /// Missed runs (the node was down, or the clock jumped) collapse into one.
    async fn scheduler(&self, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = shutdown.changed() => return,
            }
            // Shard 0's leader runs the schedules for the whole cluster.
            let Some(h) = self.hosted(0) else { continue };
            if !h.group.is_leader() {
                continue;
            }
            let catalog = h.app.catalog();
            let now = self.inner.clock.now_ms();
            for j in catalog.latest_versions() {
                let chorus_engine::journey::Trigger::Schedule { every_ms, at, .. } = &j.def.entry.trigger else {
                    continue;
                };
                if catalog.lifecycle(&j.def.id) != chorus_engine::journey::run::Lifecycle::Active {
                    continue;
                }
                let first = at.as_deref().and_then(chorus_types::time::parse_rfc3339_ms);
                let due = match (catalog.schedule_runs.get(&j.def.id), every_ms) {
                    (None, _) => first.unwrap_or(now),
                    (Some(last), Some(every)) if *every > 0 => last + ((now - last) / every).max(1) * every,
                    (Some(_), _) => continue, // a one-time schedule that ran
                };
                if due > now {
                    continue;
                }
                tracing::info!(journey = %j.def.id, at_ms = due, "scheduled entry is due");
                if let Err(e) = self.propose_catalog(chorus_types::CatalogChange::RunSchedule { journey: j.def.id.clone(), at_ms: due }).await {
                    tracing::warn!(journey = %j.def.id, error = %e, "scheduled entry failed; retrying");
                }
            }
        }
    }

    /// Move the manual clock forward to `to_ms` the way time would pass: every timer of
    /// this node's leader replicas due on the way fires at its own due time, in due
    /// order, with `now` = that time — timers set by earlier ones included — so a live
    /// run under `clock advance` decides what `journey simulate` decides. Returns once
    /// everything due up to `to_ms` is applied and the cross-shard messages it caused are
    /// delivered. (In a cluster, each node's clock drives the leaders it hosts.)
    pub async fn move_clock_to(&self, to_ms: i64) -> Result<i64, ShardError> {
        let clock = &self.inner.clock;
        if clock.mode() != crate::ClockMode::Manual {
            return Err(crate::ClockError::NotManual.into());
        }
        let _one_at_a_time = self.inner.clock_moves.lock().await;
        let now = clock.now_ms();
        if to_ms < now {
            return Err(crate::ClockError::Backwards { now_ms: now, asked_ms: to_ms }.into());
        }
        for _ in 0..CLOCK_STEPS_MAX {
            self.settle_cross_shard().await;
            let leaders: Vec<Arc<Hosted>> = self.hosted_all().into_iter().filter(|h| h.group.is_leader()).collect();
            let Some(due) = leaders.iter().map(|h| h.app.stats.next_timer_ms.load(Ordering::Relaxed)).min() else { break };
            if due > to_ms {
                break;
            }
            let at = due.max(clock.now_ms());
            clock.set(at)?;
            let ticks = leaders.iter().filter(|h| h.app.stats.next_timer_ms.load(Ordering::Relaxed) <= at).map(|h| async move {
                h.group.propose(ShardCommand { now_ms: at, op: ShardOp::Tick }).await.map_err(|e| not_leader_to_unavailable(ShardError::Raft(e), h.id))
            });
            for r in futures::future::join_all(ticks).await {
                r?;
            }
        }
        clock.set(to_ms)?;
        self.settle_cross_shard().await;
        Ok(to_ms)
    }

    /// Wait (at most `SETTLE_WAIT_MS_MAX`) until this node's leader replicas have no
    /// undelivered cross-shard messages.
    async fn settle_cross_shard(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(SETTLE_WAIT_MS_MAX);
        while tokio::time::Instant::now() < deadline {
            let pending: u64 = self.hosted_all().iter().filter(|h| h.group.is_leader()).map(|h| h.app.stats.pending_cross_shard.load(Ordering::Relaxed)).sum();
            if pending == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Propose a tick whenever shard `i`'s earliest timer is due (by the node clock,
    /// so a manual clock fires timers as soon as it is advanced).
    async fn ticker(&self, h: &Hosted, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = shutdown.changed() => return,
            }
            let next = h.app.stats.next_timer_ms.load(Ordering::Relaxed);
            if next == i64::MAX || next > self.inner.clock.now_ms() || !h.group.is_leader() {
                continue;
            }
            let cmd = ShardCommand { now_ms: self.inner.clock.now_ms(), op: ShardOp::Tick };
            if let Err(e) = h.group.propose(cmd).await {
                tracing::warn!(shard = h.id, error = %e, "tick proposal failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// Hand shard `i`'s outbox intents to the connectors and record each outcome as a
    /// log entry. After a restart or failover the outbox is re-driven with the same
    /// idempotency keys, so a provider that honours them sends once.
    async fn dispatcher(&self, h: &Hosted, mut shutdown: watch::Receiver<bool>) {
        let in_flight: Arc<std::sync::Mutex<HashSet<String>>> = Arc::default();
        // Per channel whose attempts are recorded: attempts started and not finished. No
        // more are recorded than the connector makes at once, so a crash leaves only
        // those few uncertain.
        let attempting: Arc<std::sync::Mutex<HashMap<String, usize>>> = Arc::default();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<DispatchOutcome>(self.inner.base_config.dispatch_in_flight_max.max(1));
        loop {
            tokio::select! {
                _ = h.app.intent_notify.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                Some(first) = done_rx.recv() => {
                    let mut outcomes = vec![first];
                    while let Ok(o) = done_rx.try_recv() {
                        outcomes.push(o);
                    }
                    let keys: Vec<String> = outcomes.iter().map(|o| o.idempotency_key.clone()).collect();
                    let cmd = ShardCommand { now_ms: self.inner.clock.now_ms(), op: ShardOp::DispatchOutcome { outcomes } };
                    let result = h.group.propose(cmd).await;
                    let mut set = in_flight.lock().expect("in-flight lock");
                    for k in keys {
                        set.remove(&k);
                    }
                    if let Err(e) = result {
                        // Not recorded: the intents stay in the outbox and are re-driven.
                        tracing::warn!(shard = h.id, error = %e, "recording dispatch outcomes failed; the intents will be re-driven");
                    }
                }
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            if !h.group.is_leader() || h.app.stats.pending_intents.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let room = self.inner.base_config.dispatch_in_flight_max.saturating_sub(in_flight.lock().expect("in-flight lock").len());
            if room == 0 {
                continue;
            }
            let skip = in_flight.lock().expect("in-flight lock").clone();
            let intents = match crate::apply::read_outbox(&self.inner.store, h.id, room, &skip) {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(shard = h.id, error = %e, "cannot read the outbox");
                    continue;
                }
            };
            // Providers that do not de-duplicate by key (Twilio, SMTP): an attempt is
            // recorded (committed) before it is made; one found recorded without an
            // outcome was perhaps sent before a crash, and is reconciled first.
            let mut ready = Vec::with_capacity(intents.len());
            let mut fresh = Vec::new();
            let mut uncertain = Vec::new();
            let mut budget: HashMap<String, usize> = HashMap::new();
            for intent in intents {
                if !self.inner.connectors.records_attempts(&intent.channel) {
                    in_flight.lock().expect("in-flight lock").insert(intent.key.clone());
                    ready.push(intent);
                    continue;
                }
                match crate::apply::read_attempt(&self.inner.store, h.id, &intent.key) {
                    Ok(Some(at)) => {
                        in_flight.lock().expect("in-flight lock").insert(intent.key.clone());
                        uncertain.push((intent, at));
                    }
                    Ok(None) => {
                        let left = budget.entry(intent.channel.clone()).or_insert_with(|| {
                            let busy = attempting.lock().expect("attempting lock").get(&intent.channel).copied().unwrap_or(0);
                            self.inner.connectors.concurrency(&intent.channel).saturating_sub(busy)
                        });
                        if *left == 0 {
                            continue; // offered again once an attempt of the channel ends
                        }
                        *left -= 1;
                        in_flight.lock().expect("in-flight lock").insert(intent.key.clone());
                        fresh.push(intent);
                    }
                    Err(e) => tracing::error!(shard = h.id, error = %e, "cannot read an attempt record"),
                }
            }
            if !fresh.is_empty() {
                let keys: Vec<String> = fresh.iter().map(|i| i.key.clone()).collect();
                match h.group.propose(ShardCommand { now_ms: self.inner.clock.now_ms(), op: ShardOp::AttemptsStarted { keys } }).await {
                    Ok(_) => {
                        for intent in fresh {
                            *attempting.lock().expect("attempting lock").entry(intent.channel.clone()).or_default() += 1;
                            spawn_delivery(self.inner.connectors.clone(), intent, done_tx.clone(), in_flight.clone(), Some(attempting.clone()));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(shard = h.id, error = %e, "recording attempts failed; they are offered again");
                        let mut set = in_flight.lock().expect("in-flight lock");
                        for i in &fresh {
                            set.remove(&i.key);
                        }
                    }
                }
            }
            for intent in ready {
                spawn_delivery(self.inner.connectors.clone(), intent, done_tx.clone(), in_flight.clone(), None);
            }
            for (intent, at) in uncertain {
                let (connectors, tx, waiting, app, attempting) =
                    (self.inner.connectors.clone(), done_tx.clone(), in_flight.clone(), h.app.clone(), attempting.clone());
                tokio::spawn(async move {
                    let count = |i: usize| app.stats.uncertain[i].fetch_add(1, Ordering::Relaxed);
                    let outcome = |status, detail| DispatchOutcome { idempotency_key: intent.key.clone(), customer: intent.customer, status, detail };
                    match connectors.reconcile(&intent, at).await {
                        chorus_connectors::Reconciled::Found(detail) => {
                            count(0);
                            let detail = format!("reconciled after a restart: the provider has it ({detail})");
                            let _ = tx.send(outcome(chorus_types::DispatchStatus::Delivered, detail)).await;
                        }
                        chorus_connectors::Reconciled::Absent => {
                            count(1);
                            *attempting.lock().expect("attempting lock").entry(intent.channel.clone()).or_default() += 1;
                            spawn_delivery(connectors, intent, tx, waiting, Some(attempting));
                        }
                        chorus_connectors::Reconciled::Unknown(why) => match connectors.uncertain_policy(&intent.channel) {
                            chorus_connectors::Uncertain::Resend => {
                                count(2);
                                tracing::warn!(key = %intent.key, %why, "an attempt has no recorded outcome and the provider cannot tell; sending again (uncertain = resend)");
                                *attempting.lock().expect("attempting lock").entry(intent.channel.clone()).or_default() += 1;
                                spawn_delivery(connectors, intent, tx, waiting, Some(attempting));
                            }
                            chorus_connectors::Uncertain::Skip => {
                                count(3);
                                tracing::warn!(key = %intent.key, %why, "an attempt has no recorded outcome and the provider cannot tell; not sending again (uncertain = skip)");
                                let detail = format!(
                                    "uncertain: an attempt started at {} has no recorded outcome and the provider cannot tell ({why}); not sent again (uncertain = skip): re-drive it from the dead-letter list if it must go",
                                    chorus_types::time::format_rfc3339_ms(at)
                                );
                                let _ = tx.send(outcome(chorus_types::DispatchStatus::FailedPermanent, detail)).await;
                            }
                        },
                    }
                });
            }
        }
    }

    /// Send (or schedule) messages: each request goes to its customer's home shard.
    pub async fn send(&self, requests: Vec<SendRequest>) -> Vec<Result<SendOutcome, ShardError>> {
        let n = requests.len();
        let mut per_shard: std::collections::BTreeMap<ShardId, (Vec<usize>, Vec<SendRequest>)> = Default::default();
        for (i, r) in requests.into_iter().enumerate() {
            let e = per_shard.entry(r.customer.home_shard()).or_default();
            e.0.push(i);
            e.1.push(r);
        }
        let mut out: Vec<Option<Result<SendOutcome, ShardError>>> = (0..n).map(|_| None).collect();
        let mut futs = Vec::new();
        for (shard, (idx, reqs)) in per_shard {
            let now = self.inner.clock.now_ms();
            futs.push(async move { (idx, self.propose_to(shard, ShardCommand { now_ms: now, op: ShardOp::Send { requests: reqs } }).await) });
        }
        for (idx, r) in futures::future::join_all(futs).await {
            match r {
                Ok((_, ShardResult::Send(outcomes))) => {
                    for (i, o) in idx.into_iter().zip(outcomes) {
                        out[i] = Some(Ok(o));
                    }
                }
                Ok((index, other)) => {
                    for i in idx {
                        out[i] = Some(Err(ShardError::Corrupt(format!("entry {index} returned {other:?}"))));
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    for i in idx {
                        out[i] = Some(Err(if e.is_retryable() { clone_retryable(&e) } else { ShardError::Store(msg.clone()) }));
                    }
                }
            }
        }
        out.into_iter().map(|o| o.unwrap_or(Err(ShardError::ShuttingDown))).collect()
    }

    /// Propose a catalog change to every shard: each applies it at a definite position
    /// of its log, so inputs before it run with the old catalog and inputs after with
    /// the new one.
    async fn propose_catalog(&self, change: chorus_types::CatalogChange) -> Result<(), ShardError> {
        let now = self.inner.clock.now_ms();
        let proposals = (0..self.shard_count()).map(|s| self.propose_to(s, ShardCommand { now_ms: now, op: ShardOp::Catalog { change: change.clone() } }));
        let mut indexes = Vec::with_capacity(self.shard_count() as usize);
        for (shard, r) in futures::future::join_all(proposals).await.into_iter().enumerate() {
            indexes.push((shard as ShardId, r?.0));
        }
        // Read your writes: the replica this node answers catalog reads from (write-key
        // checks, listings) has the change before the caller hears "done". Other nodes'
        // replicas apply it with their next append from the leader.
        if let Ok(shard) = self.catalog_shard()
            && let Some(h) = self.hosted(shard)
            && let Some(&(_, index)) = indexes.iter().find(|(s, _)| *s == shard)
            && let Err(e) = h.group.wait_applied(index, Duration::from_millis(ROUTE_WAIT_MS_MAX)).await
        {
            tracing::warn!(shard, index, error = %e, "this node's replica has not applied a committed catalog change yet");
        }
        Ok(())
    }

    /// Publish a new version of a journey to every shard; returns the version. A new
    /// version of an archived journey makes it active again.
    pub async fn publish_journey(&self, def: &chorus_engine::journey::JourneyDef) -> Result<u32, ShardError> {
        let current = self.journeys().await?;
        let existing = current.iter().find(|j| j.id == def.id);
        let version = existing.map(|j| j.version + 1).unwrap_or(1);
        let change = chorus_types::CatalogChange::PutJourney { id: def.id.clone(), version, def: chorus_types::encoding::encode(def) };
        self.propose_catalog(change).await?;
        if existing.is_some_and(|j| j.lifecycle == chorus_engine::journey::run::Lifecycle::Archived) {
            self.set_lifecycle(&def.id, chorus_engine::journey::run::Lifecycle::Active).await?;
        }
        Ok(version)
    }

    /// Pause, resume (`Active`) or archive a journey on every shard.
    pub async fn set_lifecycle(&self, id: &str, lifecycle: chorus_engine::journey::run::Lifecycle) -> Result<(), ShardError> {
        self.propose_catalog(chorus_types::CatalogChange::SetLifecycle { id: id.to_string(), lifecycle: lifecycle.as_str().to_string() }).await
    }

    /// Replace the cluster settings (caps, quiet hours, time zone) on every shard.
    pub async fn put_settings(&self, settings: &chorus_engine::guard::Settings) -> Result<(), ShardError> {
        self.propose_catalog(chorus_types::CatalogChange::PutSettings { settings: chorus_types::encoding::encode(settings) }).await
    }

    /// Publish a new version of an audience to every shard, then evaluate every existing
    /// customer against it (in log-ordered batches) so counts are right at once.
    /// Returns (version, customers evaluated).
    pub async fn publish_audience(&self, def: &chorus_engine::audience::AudienceDef) -> Result<(u32, u64), ShardError> {
        let version = self.audiences().await.iter().find(|a| a.def.id == def.id).map(|a| a.version + 1).unwrap_or(1);
        self.propose_catalog(chorus_types::CatalogChange::PutAudience { id: def.id.clone(), version, def: chorus_types::encoding::encode(def) }).await?;
        const BATCH: usize = 512;
        let backfills = (0..self.shard_count()).map(|shard| async move {
            let ShardReadReply::CustomerIds(ids) = self.read(shard, ShardRead::CustomerIds, true).await? else {
                return Err(ShardError::Corrupt("unexpected read reply".into()));
            };
            let n = ids.len() as u64;
            for chunk in ids.chunks(BATCH) {
                let cmd = ShardCommand { now_ms: self.inner.clock.now_ms(), op: ShardOp::Evaluate { customers: chunk.to_vec() } };
                self.propose_to(shard, cmd).await?;
            }
            Ok::<u64, ShardError>(n)
        });
        let mut evaluated = 0;
        for r in futures::future::join_all(backfills).await {
            evaluated += r?;
        }
        Ok((version, evaluated))
    }

    /// Publish a new version of a template (already validated) to every shard.
    pub async fn publish_template(&self, id: &str, source: &str, file: &str) -> Result<u32, ShardError> {
        let version = self.templates().await?.iter().find(|t| t.0 == id).map(|t| t.1 + 1).unwrap_or(1);
        self.propose_catalog(chorus_types::CatalogChange::PutTemplate { id: id.to_string(), version, source: source.to_string(), file: file.to_string() })
            .await?;
        Ok(version)
    }

    /// Templates in the catalog: (id, version, file, source).
    pub async fn templates(&self) -> Result<Vec<(String, u32, String, String)>, ShardError> {
        match self.catalog_shard() {
            Ok(shard) => crate::apply::list_templates(&self.inner.store, shard).map_err(ShardError::Store),
            Err(_) => Ok(self.remote_catalog().await?.templates),
        }
    }

    /// The write keys of the HTTP APIs in the catalog (hashes only), and whether the
    /// catalog ever held one (then having none refuses every key).
    pub async fn write_keys(&self) -> Result<crate::apply::WriteKeys, ShardError> {
        match self.catalog_shard() {
            Ok(shard) => crate::apply::read_write_keys(&self.inner.store, shard).map_err(ShardError::Store),
            Err(_) => Ok(self.remote_catalog().await?.write_keys),
        }
    }

    /// Add write key `name` (its SHA-256) to the catalog of every shard.
    pub async fn put_write_key(&self, name: &str, sha256: Vec<u8>) -> Result<(), ShardError> {
        let created_ms = self.inner.clock.now_ms();
        self.propose_catalog(chorus_types::CatalogChange::PutWriteKey { name: name.to_string(), sha256, created_ms }).await
    }

    /// Remove write key `name` from every shard's catalog.
    pub async fn revoke_write_key(&self, name: &str) -> Result<(), ShardError> {
        self.propose_catalog(chorus_types::CatalogChange::RevokeWriteKey { name: name.to_string() }).await
    }

    /// A shard replica on this node whose catalog answers catalog reads (every shard
    /// holds the whole catalog).
    fn catalog_shard(&self) -> Result<ShardId, ShardError> {
        match self.hosted(0) {
            Some(_) => Ok(0),
            None => self.hosted_ids().first().copied().ok_or(ShardError::NoReplica { node: self.inner.node }),
        }
    }

    fn catalog_app(&self) -> Option<Arc<ShardApp>> {
        self.catalog_shard().ok().and_then(|s| self.hosted(s)).map(|h| h.app.clone())
    }

    /// The catalog as shard 0 holds it, for a node that holds no replica.
    async fn remote_catalog(&self) -> Result<crate::cluster::CatalogCopy, ShardError> {
        if self.shard_count() == 0 {
            return Err(ShardError::NotInitialized);
        }
        match self.read(0, ShardRead::Catalog, false).await? {
            ShardReadReply::Catalog(c) => Ok(*c),
            _ => Err(ShardError::Corrupt("unexpected read reply".into())),
        }
    }

    /// A parsed template of the catalog.
    pub async fn template(&self, id: &str) -> Option<Arc<chorus_templates::Template>> {
        if let Some(app) = self.catalog_app() {
            return app.catalog().templates.get(id).cloned();
        }
        let copy = self.remote_catalog().await.ok()?;
        let (_, _, file, source) = copy.templates.into_iter().find(|t| t.0 == id)?;
        chorus_templates::parse(&source, &file).ok().map(Arc::new)
    }

    /// Dead letters across every shard (most `limit` per shard).
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<crate::apply::DeadLetter>, ShardError> {
        let mut out = Vec::new();
        for shard in 0..self.shard_count() {
            let ShardReadReply::DeadLetters(d) = self.read(shard, ShardRead::DeadLetters { limit }, false).await? else {
                return Err(ShardError::Corrupt("unexpected read reply".into()));
            };
            out.extend(d);
        }
        out.sort_by_key(|d| d.at_ms);
        Ok(out)
    }

    /// Put dead letters back in their shards' outboxes (same keys); returns how many.
    pub async fn redrive(&self, keys: Vec<(CustomerId, String)>) -> Result<u64, ShardError> {
        let mut per_shard: std::collections::BTreeMap<ShardId, Vec<String>> = Default::default();
        for (customer, key) in keys {
            per_shard.entry(customer.home_shard()).or_default().push(key);
        }
        let mut n = 0;
        for (shard, keys) in per_shard {
            if let (_, chorus_types::ShardResult::Count(c)) =
                self.propose_to(shard, ShardCommand { now_ms: self.inner.clock.now_ms(), op: ShardOp::Redrive { keys } }).await?
            {
                n += c;
            }
        }
        Ok(n)
    }

    /// The engagement-tracking record `id` of `shard`.
    pub async fn track_record(&self, shard: ShardId, id: u64) -> Result<Option<chorus_engine::render::TrackRecord>, ShardError> {
        if shard >= self.shard_count() {
            return Ok(None);
        }
        match self.read(shard, ShardRead::Track { id }, false).await? {
            ShardReadReply::Track(t) => Ok(t),
            _ => Err(ShardError::Corrupt("unexpected read reply".into())),
        }
    }

    /// The audiences in the catalog, in evaluation order.
    pub async fn audiences(&self) -> Vec<Arc<chorus_engine::audience::CompiledAudience>> {
        if let Some(app) = self.catalog_app() {
            return app.catalog().audiences.clone();
        }
        match self.remote_catalog().await {
            Ok(c) => c.audiences.into_iter().filter_map(|(def, v)| chorus_engine::audience::CompiledAudience::new(def, v).ok().map(Arc::new)).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// How many customers are in `audience` now, per shard, and a sample of up to
    /// `sample` members (scatter-gather over every shard's member index).
    pub async fn audience_members(&self, audience: &str, sample: usize) -> Result<(Vec<(ShardId, u64)>, Vec<CustomerId>), ShardError> {
        let mut counts = Vec::new();
        let mut members = Vec::new();
        for shard in 0..self.shard_count() {
            let read = ShardRead::AudienceMembers { audience: audience.to_string(), sample: sample.saturating_sub(members.len()) };
            let ShardReadReply::AudienceMembers(n, first) = self.read(shard, read, false).await? else {
                return Err(ShardError::Corrupt("unexpected read reply".into()));
            };
            counts.push((shard, n));
            members.extend(first);
        }
        Ok((counts, members))
    }

    /// The node clock (manual clocks included).
    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    /// The cluster settings in force.
    pub async fn settings(&self) -> Result<chorus_engine::guard::Settings, ShardError> {
        match self.catalog_shard() {
            Ok(shard) => crate::apply::read_settings(&self.inner.store, shard).map_err(ShardError::Store),
            Err(_) => Ok(self.remote_catalog().await?.settings),
        }
    }

    /// A journey's counters merged across every shard: (version, step, what) → (count, sum).
    pub async fn journey_stats(&self, journey: &str) -> Result<std::collections::BTreeMap<(u32, String, String), (u64, f64)>, ShardError> {
        let mut out: std::collections::BTreeMap<(u32, String, String), (u64, f64)> = Default::default();
        for shard in 0..self.shard_count() {
            let ShardReadReply::JourneyStats(stats) = self.read(shard, ShardRead::JourneyStats { journey: journey.to_string() }, false).await? else {
                return Err(ShardError::Corrupt("unexpected read reply".into()));
            };
            for (k, (c, s)) in stats {
                let e = out.entry(k).or_insert((0, 0.0));
                e.0 += c;
                e.1 += s;
            }
        }
        Ok(out)
    }

    /// The journeys in the catalog.
    pub async fn journeys(&self) -> Result<Vec<crate::apply::JourneyInfo>, ShardError> {
        match self.catalog_shard() {
            Ok(shard) => crate::apply::list_journeys(&self.inner.store, shard).map_err(ShardError::Store),
            Err(_) => Ok(self.remote_catalog().await?.journeys),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Deliver shard `i`'s outgoing cross-shard messages to their target shards, then
    /// tell the source they were delivered. Redelivery after a crash is harmless: the
    /// target applies each (source, seq) once.
    async fn cross_shard_pump(&self, h: &Hosted, mut shutdown: watch::Receiver<bool>) {
        // Per target: every message up to this seq is delivered and acknowledged (its key
        // is a tombstone now), so scans start after it. Forgotten while not leading.
        let mut delivered: HashMap<ShardId, u64> = HashMap::new();
        loop {
            let pending = h.app.stats.pending_cross_shard.load(Ordering::Relaxed);
            if pending == 0 {
                tokio::select! {
                    _ = h.app.outbox_notify.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shutdown.changed() => return,
                }
            }
            if *shutdown.borrow() {
                return;
            }
            if !h.group.is_leader() {
                // Followers do not deliver (their apply rounds keep the gauge and the
                // target set as the leader's).
                delivered.clear();
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shutdown.changed() => return,
                }
                continue;
            }
            match self.deliver_once(h, &mut delivered).await {
                Ok(0) => {
                    // Nothing deliverable right now; avoid spinning on a stale counter.
                    h.app.stats.pending_cross_shard.store(0, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(shard = h.id, error = %e, "cross-shard delivery failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// One pass of the cross-shard pump: the stored messages of every target that may
    /// have some (`ShardApp::xout_targets`), read from after what was last delivered to
    /// it, proposed to the targets and then acknowledged at the source.
    async fn deliver_once(&self, h: &Hosted, delivered: &mut HashMap<ShardId, u64>) -> Result<usize, ShardError> {
        let targets = std::mem::take(&mut *h.app.xout_targets.lock().expect("xout targets lock"));
        let mut by_target: Vec<(ShardId, Vec<(u64, CrossShardMessage)>)> = Vec::new();
        let mut total = 0;
        let mut unread = Vec::new();
        for target in targets {
            if total >= self.inner.base_config.cross_shard_batch_max {
                unread.push(target);
                continue;
            }
            let after = delivered.get(&target).copied().unwrap_or(0);
            let lo = crate::keys::xout(h.id, target, after.saturating_add(1));
            let hi = crate::keys::xout(h.id, target, u64::MAX);
            let mut list = Vec::new();
            for kv in self.inner.store.shard().range(lo..=hi) {
                if total >= self.inner.base_config.cross_shard_batch_max {
                    unread.push(target); // more left for the next pass
                    break;
                }
                let (k, v) = kv.into_inner().map_err(|e| ShardError::Store(e.to_string()))?;
                let seq = u64::from_be_bytes(k[k.len() - 8..].try_into().expect("8 bytes"));
                let msg: CrossShardMessage = chorus_types::encoding::decode(&v).map_err(|e| ShardError::Corrupt(e.to_string()))?;
                list.push((seq, msg));
                total += 1;
            }
            if !list.is_empty() {
                by_target.push((target, list));
            }
        }
        // Targets not finished (or failing below) stay in the set for the next pass.
        let mut retry = unread;
        // Deliver to every target at once, then acknowledge every delivery at once: a
        // pass costs two commit latencies, not two per target.
        let now = self.inner.clock.now_ms();
        let mut sent = Vec::with_capacity(by_target.len());
        let mut sends = Vec::with_capacity(by_target.len());
        for (target, messages) in by_target {
            let upto = messages.last().map(|(s, _)| *s).unwrap_or(0);
            sent.push((target, upto));
            sends.push(self.propose_to(target, ShardCommand { now_ms: now, op: ShardOp::CrossShard { source_shard: h.id, messages } }));
        }
        let results = futures::future::join_all(sends).await;
        let mut acks = Vec::with_capacity(sent.len());
        let mut first_err = None;
        let mut acked = Vec::with_capacity(sent.len());
        for ((target, upto), r) in sent.into_iter().zip(results) {
            match r {
                Ok(_) => {
                    acked.push((target, upto));
                    acks.push(
                        h.group.propose(ShardCommand {
                            now_ms: self.inner.clock.now_ms(),
                            op: ShardOp::CrossShardDelivered { target_shard: target, upto_seq: upto },
                        }),
                    )
                }
                Err(e) => {
                    retry.push(target);
                    first_err.get_or_insert(e);
                }
            }
        }
        let mut ack_err = None;
        for ((target, upto), r) in acked.into_iter().zip(futures::future::join_all(acks).await) {
            match r {
                Ok(_) => {
                    delivered.insert(target, upto);
                }
                Err(e) => {
                    retry.push(target);
                    ack_err.get_or_insert(e);
                }
            }
        }
        if !retry.is_empty() {
            h.app.xout_targets.lock().expect("xout targets lock").extend(retry);
        }
        if let Some(e) = ack_err {
            return Err(e.into());
        }
        if let Some(e) = first_err {
            return Err(e.into());
        }
        Ok(total)
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.node
    }
    /// The number of shards (0 on a cluster node before `cluster init`).
    pub fn shard_count(&self) -> u32 {
        self.inner.config.get().map(|c| c.shard_count).unwrap_or(0)
    }
    pub fn clock(&self) -> &Arc<Clock> {
        &self.inner.clock
    }
    pub fn config(&self) -> &ShardConfig {
        self.inner.config.get().map(|c| &**c).unwrap_or(&self.inner.base_config)
    }

    /// Ingest validated events: each is routed to the shard of its strongest identity;
    /// shards are proposed to concurrently. One result per event, in order.
    pub async fn ingest(&self, events: Vec<Event>) -> Vec<Result<EventOutcome, ShardError>> {
        let n = events.len();
        let count = self.shard_count();
        if count == 0 {
            return (0..n).map(|_| Err(ShardError::NotInitialized)).collect();
        }
        let mut per_shard: Vec<(Vec<usize>, Vec<Event>)> = (0..count).map(|_| (Vec::new(), Vec::new())).collect();
        for (i, e) in events.into_iter().enumerate() {
            let s = chorus_types::routing::shard_of(e.strongest_identity(), count) as usize;
            per_shard[s].0.push(i);
            per_shard[s].1.push(e);
        }
        let mut futs = Vec::new();
        for (s, (idx, evs)) in per_shard.into_iter().enumerate() {
            if evs.is_empty() {
                continue;
            }
            futs.push(async move { (idx, self.ingest_shard(s as ShardId, evs, FORWARD_HOPS_MAX).await) });
        }
        let mut out: Vec<Option<Result<EventOutcome, ShardError>>> = (0..n).map(|_| None).collect();
        for (idx, result) in futures::future::join_all(futs).await {
            match result {
                Ok(outcomes) => {
                    for (i, o) in idx.into_iter().zip(outcomes) {
                        out[i] = Some(Ok(o));
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    let retry = e.is_retryable();
                    for i in idx {
                        out[i] = Some(Err(if retry { clone_retryable(&e) } else { ShardError::Store(msg.clone()) }));
                    }
                }
            }
        }
        out.into_iter().map(|o| o.unwrap_or(Err(ShardError::ShuttingDown))).collect()
    }

    /// The customer an identity points to, if any (following merges); read where the
    /// identity's shard is led, so a write acknowledged anywhere is seen.
    pub async fn find(&self, identity: &Identity) -> Result<Option<CustomerId>, ShardError> {
        let count = self.shard_count();
        if count == 0 {
            return Err(ShardError::NotInitialized);
        }
        let shard = chorus_types::routing::shard_of(identity, count);
        match self.read(shard, ShardRead::Find { identity: identity.clone() }, true).await? {
            ShardReadReply::Find(c) => Ok(c),
            _ => Err(ShardError::Corrupt("unexpected read reply".into())),
        }
    }

    /// A customer's state by id (a tombstone if it was merged away).
    pub async fn customer(&self, id: CustomerId) -> Result<Option<CustomerState>, ShardError> {
        if id.home_shard() >= self.shard_count() {
            return Ok(None);
        }
        match self.read(id.home_shard(), ShardRead::Customer { id }, true).await? {
            ShardReadReply::Customer(c) => Ok(c),
            _ => Err(ShardError::Corrupt("unexpected read reply".into())),
        }
    }

    /// Follow `merged_into` links to the surviving profile; the flag says whether
    /// `id` itself was merged away.
    pub async fn customer_following_merges(&self, id: CustomerId) -> Result<Option<(CustomerState, bool)>, ShardError> {
        let mut current = id;
        for _ in 0..16 {
            match self.customer(current).await? {
                None => return Ok(None),
                Some(s) => match s.merged_into {
                    Some(next) => current = next,
                    None => return Ok(Some((s, current != id))),
                },
            }
        }
        Err(ShardError::Corrupt(format!("merge chain of {id} is longer than 16")))
    }

    /// The shards this node holds a replica of.
    pub fn status(&self) -> Vec<ShardStatusInfo> {
        self.hosted_all()
            .iter()
            .map(|h| {
                let g = h.group.status();
                ShardStatusInfo {
                    shard: h.id,
                    leader: g.leader,
                    voters: g.voters,
                    learners: g.learners,
                    term: g.term,
                    last_log_index: g.last_log_index,
                    applied_index: g.applied_index.max(h.app.stats.applied_index.load(Ordering::Relaxed)),
                    live_actors: h.app.registry.live_count() as u64,
                    customers: h.app.stats.customers.load(Ordering::Relaxed),
                    pending_cross_shard: h.app.stats.pending_cross_shard.load(Ordering::Relaxed),
                    quarantined: h.app.registry.quarantined().len() as u64,
                    queued_events: h.proposer.queued() as u64,
                    pending_timers: h.app.stats.pending_timers.load(Ordering::Relaxed),
                    timer_lateness: h.app.stats.timer_lateness.snapshot(),
                    timer_lateness_max_ms: h.app.stats.timer_lateness.max_ms.load(Ordering::Relaxed),
                    pending_intents: h.app.stats.pending_intents.load(Ordering::Relaxed),
                    intents_total: h.app.stats.intents_total.load(Ordering::Relaxed),
                    held_inputs: h.app.stats.held_inputs.load(Ordering::Relaxed),
                    uncertain: std::array::from_fn(|i| h.app.stats.uncertain[i].load(Ordering::Relaxed)),
                }
            })
            .collect()
    }

    /// Stop taking work, finish in-flight proposals, stop raft and actors, fsync.
    pub async fn shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
        if self.inner.cluster.is_some() {
            self.hand_over_leadership().await;
        }
        let tasks: Vec<_> = std::mem::take(&mut *self.inner.tasks.lock().expect("tasks lock"));
        for h in self.hosted_all() {
            h.close().await;
        }
        if let Some(c) = &self.inner.cluster {
            if let Err(e) = c.group.shutdown().await {
                tracing::warn!(error = %e, "placement raft shutdown");
            }
        }
        for t in tasks {
            t.abort();
        }
        self.inner.connectors.stop();
        if let Err(e) = self.inner.store.sync() {
            tracing::error!(error = %e, "final fsync failed");
        }
    }

    /// Stop as abruptly as a process can from inside (a crash, for simulations): no
    /// leadership hand-over, no final fsync; raft, actors and loops stop where they are.
    /// What the store holds afterwards is what group commit had made durable plus what
    /// the OS had been given. Reopen the data directory to "restart".
    pub async fn abort(&self) {
        let _ = self.inner.shutdown.send(true);
        let tasks: Vec<_> = std::mem::take(&mut *self.inner.tasks.lock().expect("tasks lock"));
        for t in &tasks {
            t.abort();
        }
        let hosted: Vec<Arc<Hosted>> = std::mem::take(&mut *self.inner.hosted.write().expect("hosted lock")).into_values().collect();
        for h in hosted {
            h.close().await;
        }
        if let Some(c) = &self.inner.cluster {
            let _ = c.group.shutdown().await;
        }
        self.inner.connectors.stop();
    }

    /// Before a cluster node stops: hand every shard it leads to another voter, so
    /// clients see a leadership change instead of an election timeout (bounded wait).
    async fn hand_over_leadership(&self) {
        let led: Vec<Arc<Hosted>> = self.hosted_all().into_iter().filter(|h| h.group.is_leader()).collect();
        for h in &led {
            if let Some(to) = h.group.status().voters.into_iter().find(|v| *v != self.inner.node)
                && let Err(e) = h.group.transfer_leader(to).await
            {
                tracing::debug!(shard = h.id, error = %e, "leadership hand-over");
            }
        }
        if let Some(c) = &self.inner.cluster
            && c.group.is_leader()
            && let Some(to) = c.group.status().voters.into_iter().find(|v| *v != self.inner.node)
        {
            let _ = c.group.transfer_leader(to).await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while tokio::time::Instant::now() < deadline && led.iter().any(|h| h.group.is_leader()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let still = led.iter().filter(|h| h.group.is_leader()).count();
        tracing::info!(handed_over = led.len() - still, still_leading = still, "leadership handed over before stopping");
    }

    // ---- routing -------------------------------------------------------------------

    /// Where shard `shard`'s requests go: its leader, here or on another node. Waits
    /// (up to `ROUTE_WAIT_MS_MAX`) while the shard elects a leader.
    pub(crate) async fn target(&self, shard: ShardId) -> Result<Target, ShardError> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ROUTE_WAIT_MS_MAX);
        loop {
            if *self.inner.shutdown.borrow() {
                return Err(ShardError::ShuttingDown);
            }
            let local = self.hosted(shard);
            let (leader, votes) = match &local {
                Some(h) => (h.group.leader(), h.group.is_voter()),
                None => (None, false),
            };
            match (local, leader) {
                (Some(h), Some(l)) if l == self.inner.node => return Ok(Target::Local(h)),
                (_, Some(l)) => return Ok(Target::Remote(l)),
                // A voter without a leader: an election is under way here; wait for it.
                (Some(_), None) if votes => {}
                // No replica here, or one still joining (a learner learns its leader only
                // when the leader first reaches it): ask who placement says holds it.
                (_, None) => {
                    if let Some(l) = self.inner.leader_hints.read().expect("hints lock").get(&shard) {
                        return Ok(Target::Remote(*l));
                    }
                    if let Some(first) = self.placement_replicas(shard).into_iter().find(|n| *n != self.inner.node) {
                        return Ok(Target::Remote(first));
                    }
                    if self.inner.cluster.is_none() {
                        return Err(ShardError::Unavailable { shard });
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ShardError::Unavailable { shard });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn placement_replicas(&self, shard: ShardId) -> Vec<NodeId> {
        match &self.inner.cluster {
            Some(c) => c.app.state().shards.get(shard as usize).map(|s| s.replicas.clone()).unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// Remember (or forget) who leads a shard this node holds no replica of.
    pub(crate) fn hint(&self, shard: ShardId, leader: Option<NodeId>) {
        let mut hints = self.inner.leader_hints.write().expect("hints lock");
        match leader {
            Some(l) if l != self.inner.node => {
                hints.insert(shard, l);
            }
            _ => {
                hints.remove(&shard);
            }
        }
    }

    /// Send a request to another node and decode its reply.
    pub(crate) async fn remote(&self, node: NodeId, shard: Option<ShardId>, req: NodeRequest) -> Result<NodeReply, ShardError> {
        let payload = chorus_types::encoding::encode(&req);
        match self.inner.transport.call(node, payload).await {
            Ok(bytes) => {
                let reply: NodeReply =
                    chorus_types::encoding::decode(&bytes).map_err(|e| ShardError::Remote { node, detail: format!("undecodable reply: {e}") })?;
                if let (Some(shard), NodeReply::Failed(Fail::NotLeader { leader, .. })) = (shard, &reply) {
                    self.hint(shard, *leader);
                }
                Ok(reply)
            }
            Err(e) => {
                if let Some(shard) = shard {
                    self.hint(shard, None);
                }
                tracing::debug!(node, error = %e, "forwarding failed");
                Err(match shard {
                    Some(shard) => ShardError::Unavailable { shard },
                    None => ShardError::Remote { node, detail: e.to_string() },
                })
            }
        }
    }

    /// Ingest events of one shard at its leader; `hops` bounds forwarding.
    ///
    /// A forward that fails, or whose leader this node sees lose its leadership while
    /// waiting (an election started: the leader died, stopped or was cut off), is sent
    /// again to the new leader for up to `ROUTE_WAIT_MS_MAX`, instead of answering
    /// "retry": events are de-duplicated by message id, so a second copy is harmless.
    pub(crate) async fn ingest_shard(&self, shard: ShardId, events: Vec<Event>, hops: u8) -> Result<Vec<EventOutcome>, ShardError> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ROUTE_WAIT_MS_MAX);
        loop {
            let node = match self.target(shard).await? {
                Target::Local(h) => return h.proposer.submit(events).await.map_err(|e| not_leader_to_unavailable(e, shard)),
                Target::Remote(_) if hops == 0 => return Err(ShardError::Unavailable { shard }),
                Target::Remote(node) => node,
            };
            let forward = self.remote(node, Some(shard), NodeRequest::Ingest { shard, events: events.clone(), hops: hops - 1 });
            let reply = tokio::select! {
                r = forward => r,
                () = self.leadership_leaves(shard, node) => Err(ShardError::Unavailable { shard }),
            };
            let error = match reply {
                Ok(NodeReply::Ingested(o)) => return Ok(o),
                Ok(NodeReply::Failed(f)) => ShardError::from(f),
                Ok(other) => return Err(ShardError::Remote { node, detail: format!("unexpected reply {other:?}") }),
                Err(e) => e,
            };
            if !matches!(error, ShardError::Unavailable { .. }) || tokio::time::Instant::now() >= deadline {
                return Err(error);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Resolves once this node's replica of `shard` no longer names `leader` as its
    /// leader (never, without a replica here).
    async fn leadership_leaves(&self, shard: ShardId, leader: NodeId) {
        let Some(h) = self.hosted(shard) else { return std::future::pending().await };
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if h.group.leader() != Some(leader) {
                return;
            }
        }
    }

    /// Propose one command to a shard at its leader (forwarded when it is elsewhere).
    pub(crate) async fn propose_to(&self, shard: ShardId, cmd: ShardCommand) -> Result<(u64, ShardResult), ShardError> {
        self.propose_hops(shard, cmd, FORWARD_HOPS_MAX).await
    }

    pub(crate) async fn propose_hops(&self, shard: ShardId, cmd: ShardCommand, hops: u8) -> Result<(u64, ShardResult), ShardError> {
        match self.target(shard).await? {
            Target::Local(h) => h.group.propose(cmd).await.map_err(|e| not_leader_to_unavailable(e.into(), shard)),
            Target::Remote(node) if hops > 0 => match self.remote(node, Some(shard), NodeRequest::Propose { shard, cmd, hops: hops - 1 }).await? {
                NodeReply::Proposed(index, result) => Ok((index, result)),
                NodeReply::Failed(f) => Err(f.into()),
                other => Err(ShardError::Remote { node, detail: format!("unexpected reply {other:?}") }),
            },
            Target::Remote(_) => Err(ShardError::Unavailable { shard }),
        }
    }

    /// Read from a shard: at its leader when `leader` (so acknowledged writes are
    /// seen), else from any replica, this node's first.
    pub(crate) async fn read(&self, shard: ShardId, read: ShardRead, leader: bool) -> Result<ShardReadReply, ShardError> {
        self.read_hops(shard, read, leader, FORWARD_HOPS_MAX).await
    }

    pub(crate) async fn read_hops(&self, shard: ShardId, read: ShardRead, leader: bool, hops: u8) -> Result<ShardReadReply, ShardError> {
        if !leader && let Some(h) = self.hosted(shard) {
            return self.read_local(&h, read).await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ROUTE_WAIT_MS_MAX);
        loop {
            return match self.target(shard).await? {
                Target::Local(h) => {
                    if leader && let Err(e) = h.group.ensure_linearizable(READ_INDEX_WAIT_MAX).await {
                        // Linearizable: a deposed leader cut off by a partition refuses
                        // rather than serving a state the new leader has moved past. A
                        // leadership in motion (an election, a hand-over) is waited out.
                        if e.is_retryable() && tokio::time::Instant::now() < deadline {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                        return Err(not_leader_to_unavailable(e.into(), shard));
                    }
                    self.read_local(&h, read).await
                }
                Target::Remote(node) if hops > 0 => match self.remote(node, Some(shard), NodeRequest::Read { shard, read, leader, hops: hops - 1 }).await? {
                    NodeReply::Read(r) => Ok(r),
                    NodeReply::Failed(f) => Err(f.into()),
                    other => Err(ShardError::Remote { node, detail: format!("unexpected reply {other:?}") }),
                },
                Target::Remote(_) => Err(ShardError::Unavailable { shard }),
            };
        }
    }

    pub(crate) async fn read_local(&self, h: &Hosted, read: ShardRead) -> Result<ShardReadReply, ShardError> {
        let store = &self.inner.store;
        let shard = h.id;
        Ok(match read {
            ShardRead::Customer { id } => ShardReadReply::Customer(h.app.read_customer(id).await.map_err(ShardError::Store)?),
            ShardRead::Find { identity } => ShardReadReply::Find(state::read_index(store, shard, &identity).map_err(ShardError::Store)?),
            ShardRead::CustomerIds => {
                let mut ids = Vec::new();
                for kv in store.shard().prefix(crate::keys::customer_prefix(shard)) {
                    let k = kv.key().map_err(|e| ShardError::Store(e.to_string()))?;
                    ids.extend(crate::keys::trailing_customer(&k));
                }
                ShardReadReply::CustomerIds(ids)
            }
            ShardRead::JourneyStats { journey } => ShardReadReply::JourneyStats(crate::apply::read_stats(store, shard, &journey).map_err(ShardError::Store)?),
            ShardRead::AudienceMembers { audience, sample } => {
                let (n, first) = crate::apply::audience_members(store, shard, &audience, sample).map_err(ShardError::Store)?;
                ShardReadReply::AudienceMembers(n, first)
            }
            ShardRead::DeadLetters { limit } => ShardReadReply::DeadLetters(crate::apply::read_dead_letters(store, shard, limit).map_err(ShardError::Store)?),
            ShardRead::Track { id } => ShardReadReply::Track(crate::apply::read_track(store, shard, id).map_err(ShardError::Store)?),
            ShardRead::Catalog => {
                let catalog = h.app.catalog();
                ShardReadReply::Catalog(Box::new(crate::cluster::CatalogCopy {
                    journeys: crate::apply::list_journeys(store, shard).map_err(ShardError::Store)?,
                    templates: crate::apply::list_templates(store, shard).map_err(ShardError::Store)?,
                    settings: crate::apply::read_settings(store, shard).map_err(ShardError::Store)?,
                    audiences: catalog.audiences.iter().map(|a| (a.def.clone(), a.version)).collect(),
                    write_keys: crate::apply::read_write_keys(store, shard).map_err(ShardError::Store)?,
                }))
            }
        })
    }
}

/// A local proposal refused because leadership just moved: retryable.
fn not_leader_to_unavailable(e: ShardError, shard: ShardId) -> ShardError {
    match e {
        ShardError::Raft(chorus_raft::RaftError::NotLeader { .. }) => ShardError::Unavailable { shard },
        other => other,
    }
}

fn clone_retryable(e: &ShardError) -> ShardError {
    match e {
        ShardError::Overloaded { shard, queued, limit } => ShardError::Overloaded { shard: *shard, queued: *queued, limit: *limit },
        ShardError::Unavailable { shard } => ShardError::Unavailable { shard: *shard },
        ShardError::Raft(chorus_raft::RaftError::NotLeader { group, .. }) => ShardError::Unavailable { shard: *group },
        _ => ShardError::ShuttingDown,
    }
}

/// Hand one intent to its connector; its outcome goes to `done` (to be recorded), or,
/// when the circuit is open, the intent is offered again after the wait.
fn spawn_delivery(
    connectors: Connectors,
    intent: chorus_types::Intent,
    done: tokio::sync::mpsc::Sender<DispatchOutcome>,
    in_flight: Arc<std::sync::Mutex<HashSet<String>>>,
    attempting: Option<Arc<std::sync::Mutex<HashMap<String, usize>>>>,
) {
    tokio::spawn(async move {
        let key = intent.key.clone();
        let customer = intent.customer;
        let channel = intent.channel.clone();
        let d = connectors.deliver(intent).await;
        if let Some(a) = attempting {
            if let Some(n) = a.lock().expect("attempting lock").get_mut(&channel) {
                *n = n.saturating_sub(1);
            }
        }
        if let Some(wait) = d.retry_later {
            // Not attempted (circuit open): the intent stays in the outbox and is offered
            // again once the wait is over.
            tokio::time::sleep(wait).await;
            in_flight.lock().expect("in-flight lock").remove(&key);
            return;
        }
        let _ = done.send(DispatchOutcome { idempotency_key: key, customer, status: d.status, detail: d.detail }).await;
    });
}
