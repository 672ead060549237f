//! The shard state machine: applies committed entries in rounds. A round resolves
//! every event's identities against the shard's index (with an overlay of this round's
//! writes), hands each customer's inputs to that customer's actor, collects the new
//! states and writes everything — states, index, dedup records, cross-shard outbox,
//! counters and raft's metadata — in one atomic batch. Deterministic: the same log
//! gives the same state on every replica and every replay.

use crate::customer::{Applied as CustomerApplied, CustomerInput, CustomerMsg, JourneyCatalog};
use crate::registry::Registry;
use crate::state::{self, ShardMeta};
use crate::{ShardConfig, keys};
use chorus_engine::{CustomerState, DecisionKind, LinkDecision};
use chorus_raft::{Application, Applied};
use chorus_store::{Store, WriteBatch};
use chorus_types::{
    CrossShardMessage, CustomerId, DispatchOutcome, Event, EventOutcome, Identity, Intent, SendOutcome, SendRequest, ShardCommand, ShardId, ShardOp,
    ShardResult, Timer,
};
use futures::future::BoxFuture;
use ractor::ActorRef;
use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Due time of the earliest timer of `shard`.
pub fn first_timer(store: &Store, shard: ShardId) -> Result<Option<i64>, String> {
    match store.shard().prefix(keys::timer_prefix(shard)).next() {
        None => Ok(None),
        Some(kv) => Ok(keys::timer_due(&kv.key().map_err(|e| e.to_string())?)),
    }
}

/// Up to `limit` intents of `shard`'s outbox, skipping keys in `skip`.
pub fn read_outbox(store: &Store, shard: ShardId, limit: usize, skip: &HashSet<String>) -> Result<Vec<Intent>, String> {
    let mut out = Vec::new();
    for kv in store.shard().prefix(keys::outbox_prefix(shard)) {
        if out.len() >= limit {
            break;
        }
        let (k, v) = kv.into_inner().map_err(|e| e.to_string())?;
        let key = String::from_utf8_lossy(&k[5..]).into_owned();
        if skip.contains(&key) {
            continue;
        }
        out.push(chorus_types::encoding::decode(&v).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// The cross-shard messages stored in `shard`'s outbox: how many, and for which targets.
fn stored_xout(store: &Store, shard: ShardId) -> Result<(u64, std::collections::BTreeSet<ShardId>), String> {
    let prefix = keys::xout_prefix(shard);
    let mut count = 0;
    let mut targets = std::collections::BTreeSet::new();
    for kv in store.shard().prefix(&prefix) {
        let k = kv.key().map_err(|e| e.to_string())?;
        if let Some(t) = k.get(prefix.len()..prefix.len() + 4) {
            targets.insert(u32::from_be_bytes(t.try_into().expect("4 bytes")));
        }
        count += 1;
    }
    Ok((count, targets))
}

/// Counters readable without the apply lock.
#[derive(Default)]
pub struct ApplyStats {
    pub applied_index: AtomicU64,
    pub events_applied: AtomicU64,
    pub duplicates: AtomicU64,
    pub forwarded: AtomicU64,
    pub merges: AtomicU64,
    pub conflicts: AtomicU64,
    pub deferred_cross_shard_merges: AtomicU64,
    pub parked: AtomicU64,
    pub customers: AtomicU64,
    pub pending_cross_shard: AtomicU64,
    pub pending_timers: AtomicU64,
    pub pending_intents: AtomicU64,
    /// Messages decided by this shard, ever.
    pub intents_total: AtomicU64,
    /// Inputs ever held back for customers frozen by a cross-shard merge.
    pub held_inputs: AtomicU64,
    /// Attempts without a recorded outcome at providers that do not de-duplicate by key,
    /// by what became of them: found at the provider, absent (sent), resent, skipped.
    pub uncertain: [AtomicU64; 4],
    /// Earliest pending timer (ms), or i64::MAX.
    pub next_timer_ms: std::sync::atomic::AtomicI64,
    /// A lower bound of the oldest dedup record's first-seen time (ms); 0 until known.
    /// Rounds skip the expiry scan while nothing can have expired.
    pub dedup_oldest_ms: std::sync::atomic::AtomicI64,
    /// How late timers fired (fire time − due time), by [`TIMER_LATENESS_BUCKETS_MS`].
    pub timer_lateness: LatenessHistogram,
}

/// Upper bounds (ms, inclusive) of the timer lateness histogram's buckets; one more
/// bucket counts everything later.
pub const TIMER_LATENESS_BUCKETS_MS: [i64; 14] = [5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 20_000, 40_000, 60_000];

/// A lock-free histogram of timer lateness (a Prometheus histogram per shard).
#[derive(Default)]
pub struct LatenessHistogram {
    /// Per bucket (not cumulative); the last one is `+Inf`.
    pub buckets: [AtomicU64; TIMER_LATENESS_BUCKETS_MS.len() + 1],
    pub sum_ms: AtomicU64,
    pub max_ms: AtomicU64,
}

impl LatenessHistogram {
    pub fn record(&self, late_ms: i64) {
        let late = late_ms.max(0);
        let i = TIMER_LATENESS_BUCKETS_MS.iter().position(|&b| late <= b).unwrap_or(TIMER_LATENESS_BUCKETS_MS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ms.fetch_add(late as u64, Ordering::Relaxed);
        self.max_ms.fetch_max(late as u64, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket (the Prometheus `le` form), the sum and the count.
    pub fn snapshot(&self) -> (Vec<u64>, u64, u64) {
        let mut acc = 0;
        let cumulative: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| {
                acc += b.load(Ordering::Relaxed);
                acc
            })
            .collect();
        (cumulative, self.sum_ms.load(Ordering::Relaxed), acc)
    }
}

pub struct ShardApp {
    pub shard: ShardId,
    store: Store,
    config: Arc<ShardConfig>,
    pub registry: Registry,
    meta: tokio::sync::Mutex<ShardMeta>,
    pub stats: ApplyStats,
    /// Woken after a round that wrote cross-shard messages.
    pub outbox_notify: tokio::sync::Notify,
    /// Target shards that may have undelivered cross-shard messages from this shard
    /// (added after the round that wrote them is committed; the pump takes the set and
    /// scans only those targets, from where it last delivered, instead of the whole
    /// outbox with the tombstones of everything delivered before).
    pub xout_targets: std::sync::Mutex<std::collections::BTreeSet<ShardId>>,
    /// Woken after a round that recorded intents.
    pub intent_notify: tokio::sync::Notify,
    /// The journeys that run (latest version of each), rebuilt on catalog changes.
    catalog: std::sync::RwLock<JourneyCatalog>,
}

/// Every stored version of every journey of `shard`'s catalog, compiled, with the
/// journeys' lifecycles and the cluster settings.
pub fn load_catalog(store: &Store, shard: ShardId) -> Result<JourneyCatalog, String> {
    let mut out = chorus_engine::journey::run::RunCatalog::default();
    for kv in store.shard().prefix(keys::catalog_journeys_prefix(shard)) {
        let (k, v) = kv.into_inner().map_err(|e| e.to_string())?;
        let version = k.len().checked_sub(4).map(|at| u32::from_be_bytes(k[at..].try_into().expect("4 bytes"))).ok_or("short catalog key")?;
        let def: chorus_engine::journey::JourneyDef = chorus_types::encoding::decode(&v).map_err(|e| e.to_string())?;
        out.journeys.push(Arc::new(chorus_engine::journey::run::Compiled::new(def, version)?));
    }
    for kv in store.shard().prefix(keys::catalog_lifecycle_prefix(shard)) {
        let (k, v) = kv.into_inner().map_err(|e| e.to_string())?;
        let id = String::from_utf8_lossy(&k[keys::catalog_lifecycle_prefix(shard).len()..]).into_owned();
        out.lifecycle.insert(id, chorus_types::encoding::decode(&v).map_err(|e| e.to_string())?);
    }
    if let Some(v) = store.shard().get(keys::catalog_settings(shard)).map_err(|e| e.to_string())? {
        out.settings = chorus_types::encoding::decode(&v).map_err(|e| e.to_string())?;
    }
    let mut audiences = Vec::new();
    for kv in store.shard().prefix(keys::catalog_audiences_prefix(shard)) {
        let (_, v) = kv.into_inner().map_err(|e| e.to_string())?;
        let (order, version, def): (u64, u32, Vec<u8>) = chorus_types::encoding::decode(&v).map_err(|e| e.to_string())?;
        let def: chorus_engine::audience::AudienceDef = chorus_types::encoding::decode(&def).map_err(|e| e.to_string())?;
        audiences.push((order, Arc::new(chorus_engine::audience::CompiledAudience::new(def, version)?)));
    }
    audiences.sort_by_key(|(o, _)| *o);
    out.audiences = audiences.into_iter().map(|(_, a)| a).collect();
    for kv in store.shard().prefix(keys::catalog_templates_prefix(shard)) {
        let (_, v) = kv.into_inner().map_err(|e| e.to_string())?;
        let (_version, source, file): (u32, String, String) = chorus_types::encoding::decode(&v).map_err(|e| e.to_string())?;
        let t = chorus_templates::parse(&source, &file)
            .map_err(|d| format!("template {file}: {}", d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("; ")))?;
        out.templates.insert(t.id().to_string(), Arc::new(t));
    }
    let runs_prefix = keys::catalog_schedule_runs_prefix(shard);
    for kv in store.shard().prefix(&runs_prefix) {
        let (k, v) = kv.into_inner().map_err(|e| e.to_string())?;
        let id = String::from_utf8_lossy(&k[runs_prefix.len()..]).into_owned();
        out.schedule_runs.insert(id, chorus_types::encoding::decode(&v).map_err(|e| e.to_string())?);
    }
    Ok(Arc::new(out))
}

/// An intent that could not be delivered, kept for operators.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct DeadLetter {
    pub intent: Intent,
    pub status: String,
    pub detail: String,
    pub at_ms: i64,
}

/// Dead letters of `shard`, oldest key first, at most `limit`.
pub fn read_dead_letters(store: &Store, shard: ShardId, limit: usize) -> Result<Vec<DeadLetter>, String> {
    let mut out = Vec::new();
    for kv in store.shard().prefix(keys::dead_prefix(shard)) {
        if out.len() >= limit {
            break;
        }
        let (_, v) = kv.into_inner().map_err(|e| e.to_string())?;
        out.push(chorus_types::encoding::decode(&v).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// The engagement-tracking record `id` of `shard`.
pub fn read_track(store: &Store, shard: ShardId, id: u64) -> Result<Option<chorus_engine::render::TrackRecord>, String> {
    match store.shard().get(keys::track(shard, id)).map_err(|e| e.to_string())? {
        Some(v) => chorus_types::encoding::decode(&v).map(Some).map_err(|e| e.to_string()),
        None => Ok(None),
    }
}

/// (id, version, file) of every template in `shard`'s catalog.
pub fn list_templates(store: &Store, shard: ShardId) -> Result<Vec<(String, u32, String, String)>, String> {
    let mut out = Vec::new();
    for kv in store.shard().prefix(keys::catalog_templates_prefix(shard)) {
        let (k, v) = kv.into_inner().map_err(|e| e.to_string())?;
        let id = String::from_utf8_lossy(&k[keys::catalog_templates_prefix(shard).len()..]).into_owned();
        let (version, source, file): (u32, String, String) = chorus_types::encoding::decode(&v).map_err(|e| e.to_string())?;
        out.push((id, version, file, source));
    }
    Ok(out)
}

/// A write key of the catalog (only its hash is kept).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WriteKey {
    pub name: String,
    pub sha256: Vec<u8>,
    pub created_ms: i64,
}

/// When an attempt of outbox intent `key` was started at a provider that does not
/// de-duplicate by key, if one was and its outcome is not recorded yet.
pub fn read_attempt(store: &Store, shard: ShardId, key: &str) -> Result<Option<i64>, String> {
    match store.shard().get(keys::attempt(shard, key)).map_err(|e| e.to_string())? {
        Some(v) if v.len() == 8 => Ok(Some(i64::from_be_bytes(v[..8].try_into().expect("8 bytes")))),
        _ => Ok(None),
    }
}

/// The write keys of a catalog, and whether it ever held one.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WriteKeys {
    pub keys: Vec<WriteKey>,
    /// The catalog has held a write key (created or revoked one): with none left, every
    /// key is refused. Only a catalog that never had one accepts any key.
    pub required: bool,
}

/// The write keys in `shard`'s catalog, by name, and whether keys are required.
pub fn read_write_keys(store: &Store, shard: ShardId) -> Result<WriteKeys, String> {
    let keys = list_write_keys(store, shard)?;
    let required = !keys.is_empty() || store.shard().get(keys::catalog_write_keys_required(shard)).map_err(|e| e.to_string())?.is_some();
    Ok(WriteKeys { keys, required })
}

/// The write keys in `shard`'s catalog, by name.
pub fn list_write_keys(store: &Store, shard: ShardId) -> Result<Vec<WriteKey>, String> {
    let prefix = keys::catalog_write_keys_prefix(shard);
    let mut out = Vec::new();
    for kv in store.shard().prefix(&prefix) {
        let (k, v) = kv.into_inner().map_err(|e| e.to_string())?;
        let name = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
        let (sha256, created_ms): (Vec<u8>, i64) = chorus_types::encoding::decode(&v).map_err(|e| e.to_string())?;
        out.push(WriteKey { name, sha256, created_ms });
    }
    Ok(out)
}

/// Members of `audience` in `shard`: how many, and the first `sample` of them.
pub fn audience_members(store: &Store, shard: ShardId, audience: &str, sample: usize) -> Result<(u64, Vec<CustomerId>), String> {
    let mut count = 0;
    let mut first = Vec::new();
    for kv in store.shard().prefix(keys::members_prefix(shard, audience)) {
        let k = kv.key().map_err(|e| e.to_string())?;
        count += 1;
        if first.len() < sample {
            first.extend(keys::trailing_customer(&k));
        }
    }
    Ok((count, first))
}

/// Journey counters of `shard`: (version, step, what) → (count, sum).
pub fn read_stats(store: &Store, shard: ShardId, journey: &str) -> Result<Vec<((u32, String, String), (u64, f64))>, String> {
    let mut out = Vec::new();
    for kv in store.shard().prefix(keys::stats_prefix(shard, journey)) {
        let (k, v) = kv.into_inner().map_err(|e| e.to_string())?;
        let Some(id) = keys::parse_stat(&k, journey) else {
            continue;
        };
        out.push((id, chorus_types::encoding::decode(&v).map_err(|e| e.to_string())?));
    }
    Ok(out)
}

/// One journey of the catalog as operators see it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct JourneyInfo {
    pub id: String,
    /// The latest version.
    pub version: u32,
    pub def: chorus_engine::journey::JourneyDef,
    pub lifecycle: chorus_engine::journey::run::Lifecycle,
    /// Every stored version, oldest first.
    pub versions: Vec<u32>,
}

/// Every journey in `shard`'s catalog (latest version first-class, older ones listed).
pub fn list_journeys(store: &Store, shard: ShardId) -> Result<Vec<JourneyInfo>, String> {
    let catalog = load_catalog(store, shard)?;
    Ok(catalog
        .latest_versions()
        .into_iter()
        .map(|c| JourneyInfo {
            id: c.def.id.clone(),
            version: c.version,
            def: c.def.clone(),
            lifecycle: catalog.lifecycle(&c.def.id),
            versions: catalog.journeys.iter().filter(|x| x.def.id == c.def.id).map(|x| x.version).collect(),
        })
        .collect())
}

/// The cluster settings as stored in `shard`'s catalog (defaults if never set).
pub fn read_settings(store: &Store, shard: ShardId) -> Result<chorus_engine::guard::Settings, String> {
    match store.shard().get(keys::catalog_settings(shard)).map_err(|e| e.to_string())? {
        Some(v) => chorus_types::encoding::decode(&v).map_err(|e| e.to_string()),
        None => Ok(Default::default()),
    }
}

impl ShardApp {
    pub async fn open(shard: ShardId, store: Store, config: Arc<ShardConfig>) -> Result<Arc<ShardApp>, String> {
        let meta = state::read_meta(&store, shard)?;
        let registry = Registry::start(shard, config.clone()).await?;
        // Rebuild the quarantine set from parked inputs.
        for kv in store.shard().prefix(keys::parked_prefix(shard)) {
            let key = kv.key().map_err(|e| e.to_string())?;
            let rest = &key[5..];
            if rest.len() >= 8 {
                registry.quarantine(CustomerId(u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"))));
            }
        }
        let catalog = load_catalog(&store, shard)?;
        let stats = ApplyStats::default();
        stats.customers.store(meta.customers - meta.tombstones, Ordering::Relaxed);
        let (pending, xout_targets) = stored_xout(&store, shard)?;
        stats.pending_cross_shard.store(pending, Ordering::Relaxed);
        stats.pending_timers.store(meta.timers, Ordering::Relaxed);
        stats.pending_intents.store(meta.intents, Ordering::Relaxed);
        stats.intents_total.store(meta.intents_total, Ordering::Relaxed);
        stats.next_timer_ms.store(first_timer(&store, shard)?.unwrap_or(i64::MAX), Ordering::Relaxed);
        Ok(Arc::new(ShardApp {
            shard,
            store,
            config,
            registry,
            meta: tokio::sync::Mutex::new(meta),
            stats,
            outbox_notify: tokio::sync::Notify::new(),
            xout_targets: std::sync::Mutex::new(xout_targets),
            intent_notify: tokio::sync::Notify::new(),
            catalog: std::sync::RwLock::new(catalog),
        }))
    }

    pub fn config(&self) -> &ShardConfig {
        &self.config
    }

    /// The catalog this shard applies inputs with now.
    pub fn catalog(&self) -> JourneyCatalog {
        self.catalog.read().expect("catalog lock").clone()
    }

    /// Passivate idle actors between apply rounds (their state is persisted).
    pub async fn passivate(&self) -> usize {
        let _round = self.meta.lock().await;
        self.registry.passivate()
    }

    /// Read a customer's current state: from its live actor if active, else the store.
    pub async fn read_customer(&self, id: CustomerId) -> Result<Option<CustomerState>, String> {
        if let Some(actor) = self.registry.get(id) {
            if let Ok(ractor::rpc::CallResult::Success(s)) = actor.call(CustomerMsg::Get, None).await {
                return Ok(Some(s));
            }
        }
        state::read_customer(&self.store, self.shard, id)
    }

    async fn apply_round(&self, entries: Vec<Applied>, raft_meta: Vec<u8>) -> io::Result<Vec<ShardResult>> {
        let mut meta = self.meta.lock().await;
        let mut round = Round::new(self, meta.clone());
        let mut results = Vec::with_capacity(entries.len());
        let mut last_index = 0;
        for entry in entries {
            last_index = entry.index;
            let Some(cmd) = entry.command else {
                results.push(ShardResult::Done);
                continue;
            };
            results.push(round.apply_command(cmd).await?);
            round.flush_after();
        }
        round.flush_all().await?;
        round.expire_dedup()?;
        let xout_targets: std::collections::BTreeSet<ShardId> = round.xout.iter().map(|(t, _, _)| *t).collect();
        let wrote_intents = !round.intents.is_empty();
        let new_catalog = round.catalog_changed.then(|| round.catalog.clone());
        let new_meta = round.finish(raft_meta)?;
        *meta = new_meta;
        if let Some(c) = new_catalog {
            *self.catalog.write().expect("catalog lock") = c;
        }
        drop(meta);
        self.stats.applied_index.store(last_index, Ordering::Relaxed);
        if !xout_targets.is_empty() {
            // After the commit: the pump that takes a target from the set finds its messages.
            self.xout_targets.lock().expect("xout targets lock").extend(xout_targets);
            self.outbox_notify.notify_one();
        }
        if wrote_intents {
            self.intent_notify.notify_one();
        }
        Ok(results)
    }

    fn snapshot_data(&self) -> io::Result<Vec<u8>> {
        let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let raft_key = keys::raft_meta(self.shard);
        for kv in self.store.shard().prefix(keys::shard_prefix(self.shard)) {
            let (k, v) = kv.into_inner().map_err(io_err)?;
            if *k != *raft_key {
                pairs.push((k.to_vec(), v.to_vec()));
            }
        }
        Ok(chorus_types::encoding::encode(&pairs))
    }
}

impl Application for ShardApp {
    fn apply(&self, entries: Vec<Applied>, raft_meta: Vec<u8>) -> BoxFuture<'_, io::Result<Vec<ShardResult>>> {
        Box::pin(self.apply_round(entries, raft_meta))
    }

    fn load_raft_meta(&self) -> io::Result<Option<Vec<u8>>> {
        Ok(self.store.shard().get(keys::raft_meta(self.shard)).map_err(io_err)?.map(|v| v.to_vec()))
    }

    fn snapshot(&self) -> BoxFuture<'_, io::Result<Vec<u8>>> {
        Box::pin(async move {
            let _guard = self.meta.lock().await;
            self.snapshot_data()
        })
    }

    fn install_snapshot(&self, data: Vec<u8>, raft_meta: Vec<u8>) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            let mut meta = self.meta.lock().await;
            let pairs: Vec<(Vec<u8>, Vec<u8>)> = chorus_types::encoding::decode(&data).map_err(io_err)?;
            let mut batch = self.store.batch();
            for kv in self.store.shard().prefix(keys::shard_prefix(self.shard)) {
                batch.remove(self.store.shard(), kv.key().map_err(io_err)?);
            }
            for (k, v) in pairs {
                batch.insert(self.store.shard(), k, v);
            }
            batch.insert(self.store.shard(), keys::raft_meta(self.shard), raft_meta);
            batch.commit().map_err(io_err)?;
            self.registry.stop_customers();
            *meta = state::read_meta(&self.store, self.shard).map_err(io_err)?;
            // Everything kept in memory is rebuilt from the installed state.
            *self.catalog.write().expect("catalog lock") = load_catalog(&self.store, self.shard).map_err(io_err)?;
            for kv in self.store.shard().prefix(keys::parked_prefix(self.shard)) {
                let key = kv.key().map_err(io_err)?;
                if key.len() >= 13 {
                    self.registry.quarantine(CustomerId(u64::from_be_bytes(key[5..13].try_into().expect("8 bytes"))));
                }
            }
            let next = first_timer(&self.store, self.shard).map_err(io_err)?.unwrap_or(i64::MAX);
            self.stats.next_timer_ms.store(next, Ordering::Relaxed);
            self.stats.dedup_oldest_ms.store(0, Ordering::Relaxed); // unknown: the next round looks
            self.stats.customers.store(meta.customers - meta.tombstones, Ordering::Relaxed);
            let (pending, targets) = stored_xout(&self.store, self.shard).map_err(io_err)?;
            self.stats.pending_cross_shard.store(pending, Ordering::Relaxed);
            *self.xout_targets.lock().expect("xout targets lock") = targets;
            self.stats.pending_timers.store(meta.timers, Ordering::Relaxed);
            self.stats.pending_intents.store(meta.intents, Ordering::Relaxed);
            self.stats.intents_total.store(meta.intents_total, Ordering::Relaxed);
            self.outbox_notify.notify_one();
            self.intent_notify.notify_one();
            Ok(())
        })
    }
}

/// One apply round: overlays of this round's writes and the customers' pending inputs.
struct Round<'a> {
    app: &'a ShardApp,
    meta: ShardMeta,
    batch: WriteBatch,
    index: HashMap<Identity, CustomerId>,
    dedup: HashSet<String>,
    /// Customers with pending inputs, in order of first input.
    order: Vec<CustomerId>,
    pending: HashMap<CustomerId, Vec<(i64, CustomerInput)>>,
    /// Customers created this round and not yet activated.
    created: HashMap<CustomerId, CustomerState>,
    /// Customer state changes to write.
    states: HashMap<CustomerId, state::StateWrite>,
    tombs: HashMap<CustomerId, CustomerId>,
    /// Cross-shard messages of this round: (target, sequence number, message). The
    /// number is taken when the message is sent, so it does not depend on how entries
    /// are grouped into rounds.
    xout: Vec<(ShardId, u64, CrossShardMessage)>,
    xin: HashMap<ShardId, u64>,
    /// Inputs held this round for frozen customers: (seq, (now, input)), written at
    /// the end, one key each (appending never reads or rewrites earlier ones).
    held: HashMap<CustomerId, Vec<(u64, (i64, CustomerInput))>>,
    /// Intents decided this round (written to the outbox at the end).
    intents: Vec<Intent>,
    /// Timers added this round: (due, id, timer).
    timers: Vec<(i64, String, Timer)>,
    /// Outbox keys removed this round (delivered or failed).
    outbox_removed: HashSet<String>,
    /// Whether this round removed timers (the earliest due time must be re-read).
    timers_fired: bool,
    /// Keys of the timers fired this round: their removal is in the batch, not yet in
    /// the store, so a second tick of the same round must not fire them again.
    fired_timers: HashSet<Vec<u8>>,
    /// Journey counter increments of this round: key → (count, sum).
    stats: HashMap<Vec<u8>, (u64, f64)>,
    /// The catalog inputs are applied with (replaced by catalog entries).
    catalog: JourneyCatalog,
    catalog_changed: bool,
    /// Customers that started holding in a paused journey this round.
    paused_marks: HashSet<(String, CustomerId)>,
    /// Audience membership changes of this round, in order: (audience, customer, member).
    membership: Vec<(String, CustomerId, bool)>,
    now_ms: i64,
    /// Unlinks of a claimant whose claim was refused, delivered once the command that
    /// made the claim is applied (after the event that listed the key on it).
    after: Vec<(Identity, CustomerId)>,
}

impl<'a> Round<'a> {
    fn new(app: &'a ShardApp, meta: ShardMeta) -> Self {
        Round {
            app,
            meta,
            batch: app.store.batch(),
            index: HashMap::new(),
            dedup: HashSet::new(),
            order: Vec::new(),
            pending: HashMap::new(),
            created: HashMap::new(),
            states: HashMap::new(),
            tombs: HashMap::new(),
            xout: Vec::new(),
            xin: HashMap::new(),
            held: HashMap::new(),
            intents: Vec::new(),
            timers: Vec::new(),
            outbox_removed: HashSet::new(),
            timers_fired: false,
            fired_timers: HashSet::new(),
            stats: HashMap::new(),
            catalog: app.catalog.read().expect("catalog lock").clone(),
            catalog_changed: false,
            paused_marks: HashSet::new(),
            membership: Vec::new(),
            now_ms: 0,
            after: Vec::new(),
        }
    }

    fn shard(&self) -> ShardId {
        self.app.shard
    }

    fn store(&self) -> &Store {
        &self.app.store
    }

    async fn apply_command(&mut self, cmd: ShardCommand) -> io::Result<ShardResult> {
        // The leader's clock, never allowed to run backwards within the state machine.
        self.now_ms = self.now_ms.max(cmd.now_ms);
        let now = cmd.now_ms;
        match cmd.op {
            ShardOp::Ingest { events } => {
                let mut outcomes = Vec::with_capacity(events.len());
                for event in events {
                    outcomes.push(self.ingest(event, now).await?);
                    self.flush_after();
                }
                Ok(ShardResult::Ingest(outcomes))
            }
            ShardOp::CrossShard { source_shard, messages } => {
                let mut last = self.last_xin(source_shard)?;
                for (seq, msg) in messages {
                    if seq <= last {
                        continue; // already applied: a redelivery
                    }
                    last = seq;
                    self.apply_cross_shard(msg, now).await?;
                    self.flush_after();
                }
                self.xin.insert(source_shard, last);
                Ok(ShardResult::Done)
            }
            ShardOp::CrossShardDelivered { target_shard, upto_seq } => {
                let lo = keys::xout(self.shard(), target_shard, 0);
                let hi = keys::xout(self.shard(), target_shard, upto_seq);
                let mut removed = 0u64;
                for kv in self.store().shard().range(lo..=hi) {
                    self.batch.remove(self.app.store.shard(), kv.key().map_err(io_err)?);
                    removed += 1;
                }
                // Messages sent earlier in this same round are not stored yet (a replica
                // catching up applies the round that sent them and their acknowledgement
                // together): they are delivered too, so they are not written at all.
                // (They are counted in the gauge only when written, so only the stored ones
                // come off it.)
                self.xout.retain(|(t, seq, _)| !(*t == target_shard && *seq <= upto_seq));
                let p = &self.app.stats.pending_cross_shard;
                let _ = p.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(removed)));
                Ok(ShardResult::Done)
            }
            ShardOp::Send { requests } => {
                let mut outcomes = Vec::with_capacity(requests.len());
                for req in requests {
                    outcomes.push(self.send_request(req, now)?);
                }
                Ok(ShardResult::Send(outcomes))
            }
            ShardOp::Tick => {
                self.fire_timers(now)?;
                Ok(ShardResult::Done)
            }
            ShardOp::DispatchOutcome { outcomes } => {
                for o in outcomes {
                    self.dispatch_outcome(o, now)?;
                }
                Ok(ShardResult::Done)
            }
            ShardOp::Noop => Ok(ShardResult::Done),
            ShardOp::AttemptsStarted { keys } => {
                let shard = self.shard();
                for key in keys {
                    // Only for intents still waiting (an outcome may have come first).
                    let waiting = self.intents.iter().any(|i| i.key == key) || self.store().shard().get(keys::outbox(shard, &key)).map_err(io_err)?.is_some();
                    if waiting && !self.outbox_removed.contains(&key) {
                        self.batch.insert(self.app.store.shard(), keys::attempt(shard, &key), now.to_be_bytes().to_vec());
                    }
                }
                Ok(ShardResult::Done)
            }
            ShardOp::Placement { .. } => Ok(ShardResult::Placement(Some("a shard does not take placement changes".into()))),
            ShardOp::Redrive { keys: dead } => {
                let shard = self.shard();
                let mut n = 0;
                for key in dead {
                    if self.intents.iter().any(|i| i.key == key) {
                        continue; // re-driven by an earlier entry of this round
                    }
                    let dk = keys::dead(shard, &key);
                    let Some(v) = self.app.store.shard().get(&dk).map_err(io_err)? else {
                        continue;
                    };
                    let record: DeadLetter = chorus_types::encoding::decode(&v).map_err(io_err)?;
                    self.batch.remove(self.app.store.shard(), dk);
                    self.outbox_removed.remove(&key);
                    self.intents.push(record.intent);
                    n += 1;
                }
                Ok(ShardResult::Count(n))
            }
            ShardOp::Evaluate { customers } => {
                for c in customers {
                    let c = self.resolve_tomb(c)?;
                    if c.home_shard() == self.shard() && (self.created.contains_key(&c) || self.load_state(c).is_ok()) {
                        self.push(c, now, CustomerInput::Evaluate);
                    }
                }
                Ok(ShardResult::Done)
            }
            ShardOp::Catalog { change } => {
                // Inputs before this entry run with the catalog they were committed under.
                self.flush_all().await?;
                let shard = self.shard();
                let mut next = (*self.catalog).clone();
                match change {
                    chorus_types::CatalogChange::PutJourney { id, version, def } => {
                        let decoded: chorus_engine::journey::JourneyDef = chorus_types::encoding::decode(&def).map_err(io_err)?;
                        let compiled = chorus_engine::journey::run::Compiled::new(decoded, version).map_err(io_err)?;
                        self.batch.insert(self.app.store.shard(), keys::catalog_journey(shard, &id, version), def);
                        next.journeys.retain(|c| !(c.def.id == id && c.version == version));
                        next.journeys.push(Arc::new(compiled));
                    }
                    chorus_types::CatalogChange::SetLifecycle { id, lifecycle } => {
                        use chorus_engine::journey::run::Lifecycle;
                        let l = match lifecycle.as_str() {
                            "active" => Lifecycle::Active,
                            "paused" => Lifecycle::Paused,
                            "archived" => Lifecycle::Archived,
                            other => return Err(io_err(format!("unknown lifecycle {other:?}"))),
                        };
                        self.batch.insert(self.app.store.shard(), keys::catalog_lifecycle(shard, &id), chorus_types::encoding::encode(&l));
                        next.lifecycle.insert(id.clone(), l);
                        if l != Lifecycle::Paused {
                            // Wake every customer holding in it (they run on with the new catalog).
                            let mut woken: Vec<CustomerId> = self.paused_marks.iter().filter(|(j, _)| *j == id).map(|(_, c)| *c).collect();
                            self.paused_marks.retain(|(j, _)| *j != id);
                            let prefix = keys::paused_prefix(shard, &id);
                            for kv in self.app.store.shard().prefix(&prefix) {
                                let k = kv.key().map_err(io_err)?;
                                if let Some(b) = k.get(prefix.len()..prefix.len() + 8) {
                                    woken.push(CustomerId(u64::from_be_bytes(b.try_into().expect("8 bytes"))));
                                }
                                self.batch.remove(self.app.store.shard(), k.to_vec());
                            }
                            woken.sort_unstable();
                            woken.dedup();
                            self.catalog = Arc::new(next);
                            self.catalog_changed = true;
                            for c in woken {
                                let c = self.resolve_tomb(c)?;
                                if c.home_shard() == shard {
                                    self.push(c, now, CustomerInput::JourneyWake { journey: id.clone() });
                                }
                            }
                            return Ok(ShardResult::Done);
                        }
                    }
                    chorus_types::CatalogChange::PutSettings { settings } => {
                        next.settings = chorus_types::encoding::decode(&settings).map_err(io_err)?;
                        self.batch.insert(self.app.store.shard(), keys::catalog_settings(shard), settings);
                    }
                    chorus_types::CatalogChange::PutAudience { id, version, def } => {
                        let decoded: chorus_engine::audience::AudienceDef = chorus_types::encoding::decode(&def).map_err(io_err)?;
                        let compiled = Arc::new(chorus_engine::audience::CompiledAudience::new(decoded, version).map_err(io_err)?);
                        // An audience keeps its place in the evaluation order when updated.
                        let order = match self.app.store.shard().get(keys::catalog_audience(shard, &id)).map_err(io_err)? {
                            Some(v) => chorus_types::encoding::decode::<(u64, u32, Vec<u8>)>(&v).map_err(io_err)?.0,
                            None => {
                                self.meta.audience_orders += 1;
                                self.meta.audience_orders
                            }
                        };
                        self.batch.insert(self.app.store.shard(), keys::catalog_audience(shard, &id), chorus_types::encoding::encode(&(order, version, def)));
                        match next.audiences.iter().position(|a| a.def.id == id) {
                            Some(p) => next.audiences[p] = compiled,
                            None => next.audiences.push(compiled),
                        }
                    }
                    chorus_types::CatalogChange::PutTemplate { id, version, source, file } => {
                        let t = chorus_templates::parse(&source, &file)
                            .map_err(|d| io_err(format!("template {id}: {}", d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("; "))))?;
                        self.batch.insert(self.app.store.shard(), keys::catalog_template(shard, &id), chorus_types::encoding::encode(&(version, source, file)));
                        next.templates.insert(id, Arc::new(t));
                    }
                    chorus_types::CatalogChange::PutWriteKey { name, sha256, created_ms } => {
                        self.batch.insert(self.app.store.shard(), keys::catalog_write_key(shard, &name), chorus_types::encoding::encode(&(sha256, created_ms)));
                        self.batch.insert(self.app.store.shard(), keys::catalog_write_keys_required(shard), Vec::new());
                    }
                    chorus_types::CatalogChange::RevokeWriteKey { name } => {
                        self.batch.remove(self.app.store.shard(), keys::catalog_write_key(shard, &name));
                        // A catalog that had a key never goes back to accepting any key.
                        self.batch.insert(self.app.store.shard(), keys::catalog_write_keys_required(shard), Vec::new());
                    }
                    chorus_types::CatalogChange::RunSchedule { journey, at_ms } => {
                        if next.schedule_runs.get(&journey).is_some_and(|last| *last >= at_ms) {
                            return Ok(ShardResult::Done); // this run was already applied
                        }
                        next.schedule_runs.insert(journey.clone(), at_ms);
                        self.batch.insert(self.app.store.shard(), keys::catalog_schedule_run(shard, &journey), chorus_types::encoding::encode(&at_ms));
                        let audience = next.latest(&journey).and_then(|j| match &j.def.entry.trigger {
                            chorus_engine::journey::Trigger::Schedule { audience, .. } => Some(audience.clone()),
                            _ => None,
                        });
                        self.catalog = Arc::new(next);
                        self.catalog_changed = true;
                        if let Some(audience) = audience {
                            let mut members: Vec<CustomerId> = Vec::new();
                            for kv in self.app.store.shard().prefix(keys::members_prefix(shard, &audience)) {
                                members.extend(keys::trailing_customer(&kv.key().map_err(io_err)?));
                            }
                            for (a, c, member) in &self.membership {
                                if *a == audience {
                                    if *member {
                                        members.push(*c);
                                    } else {
                                        members.retain(|m| m != c);
                                    }
                                }
                            }
                            members.sort_unstable();
                            members.dedup();
                            for c in members {
                                self.push(c, now, CustomerInput::Enroll { journey: journey.clone(), at_ms });
                            }
                        }
                        return Ok(ShardResult::Done);
                    }
                }
                self.catalog = Arc::new(next);
                self.catalog_changed = true;
                Ok(ShardResult::Done)
            }
        }
    }

    fn send_request(&mut self, req: SendRequest, now: i64) -> io::Result<SendOutcome> {
        let dedup_id = format!("send/{}", req.request_id);
        if self.is_duplicate(&dedup_id)? {
            return Ok(SendOutcome::Duplicate);
        }
        let customer = self.resolve_tomb(req.customer)?;
        if customer.home_shard() != self.shard() || (!self.created.contains_key(&customer) && self.load_state(customer).is_err()) {
            return Ok(SendOutcome::NotFound);
        }
        self.remember(&dedup_id, now);
        let req = SendRequest { customer, ..req };
        if req.send_at_ms > now {
            let at_ms = req.send_at_ms;
            let id = chorus_engine::api_send_key(&req);
            self.push(customer, now, CustomerInput::Scheduled { request: req.clone(), at_ms });
            self.timers.push((at_ms, id, Timer::Send(req)));
            return Ok(SendOutcome::Scheduled { customer, at_ms });
        }
        self.push(customer, now, CustomerInput::Send(req));
        Ok(SendOutcome::Accepted { customer })
    }

    /// Fire every timer due at or before `now` (bounded per entry; the ticker proposes
    /// another tick while timers remain due).
    fn fire_timers(&mut self, now: i64) -> io::Result<()> {
        let shard = self.shard();
        let lo = keys::timer_prefix(shard);
        let hi = keys::timer(shard, now.saturating_add(1), "");
        let mut fired = Vec::new();
        for kv in self.app.store.shard().range(lo..hi) {
            if fired.len() >= self.app.config.timers_fire_batch_max {
                break;
            }
            let (k, v) = kv.into_inner().map_err(io_err)?;
            if self.fired_timers.contains(k.as_ref()) {
                continue; // fired by an earlier tick of this round
            }
            let timer: Timer = chorus_types::encoding::decode(&v).map_err(io_err)?;
            fired.push((k.to_vec(), timer));
        }
        self.timers_fired |= !fired.is_empty();
        for (key, timer) in fired {
            self.fired_timers.insert(key.clone());
            if let Some(due) = keys::timer_due(&key) {
                self.app.stats.timer_lateness.record(now - due);
            }
            self.batch.remove(self.app.store.shard(), key);
            self.meta.timers = self.meta.timers.saturating_sub(1);
            self.fire_timer(timer, now)?;
        }
        Ok(())
    }

    /// Act on a fired timer for its customer — here, or in the shard of the customer it
    /// was merged into.
    fn fire_timer(&mut self, timer: Timer, now: i64) -> io::Result<()> {
        let shard = self.shard();
        match timer {
            Timer::Journey { customer, journey, entry_key, seq } => {
                let customer = self.resolve_tomb(customer)?;
                if customer.home_shard() == shard {
                    self.push(customer, now, CustomerInput::JourneyTimer { journey, entry_key, seq });
                } else {
                    self.send_cross(customer.home_shard(), CrossShardMessage::FireTimer { timer: Timer::Journey { customer, journey, entry_key, seq } });
                }
            }
            Timer::Send(req) => {
                let customer = self.resolve_tomb(req.customer)?;
                if customer.home_shard() == shard {
                    self.push(customer, now, CustomerInput::Send(SendRequest { customer, ..req }));
                } else {
                    self.send_cross(customer.home_shard(), CrossShardMessage::FireTimer { timer: Timer::Send(SendRequest { customer, ..req }) });
                }
            }
        }
        Ok(())
    }

    fn add_stats(&mut self, stats: Vec<crate::customer::StatDelta>) {
        let shard = self.shard();
        for (journey, version, step, what, value) in stats {
            let e = self.stats.entry(keys::stat(shard, &journey, version, &step, &what)).or_insert((0, 0.0));
            e.0 += 1;
            e.1 += value;
        }
    }

    /// Take cancelled intents out of the outbox unless they already went (an intent the
    /// dispatcher holds right now may still be delivered; its outcome is then ignored).
    fn cancel_intents(&mut self, keys: Vec<String>) -> io::Result<()> {
        let shard = self.shard();
        for key in keys {
            if self.outbox_removed.contains(&key) {
                continue;
            }
            if let Some(pos) = self.intents.iter().position(|i| i.key == key) {
                self.intents.remove(pos); // decided and cancelled within this round
                continue;
            }
            let k = keys::outbox(shard, &key);
            if self.app.store.shard().get(&k).map_err(io_err)?.is_some() {
                self.batch.remove(self.app.store.shard(), k);
                self.outbox_removed.insert(key);
                self.meta.intents = self.meta.intents.saturating_sub(1);
            }
        }
        Ok(())
    }

    /// Keep the audience member index in step with the customers' memberships.
    fn add_membership(&mut self, customer: CustomerId, changes: Vec<(String, bool)>) {
        let shard = self.shard();
        for (audience, member) in changes {
            let key = keys::member(shard, &audience, customer);
            if member {
                self.batch.insert(self.app.store.shard(), key, b"".to_vec());
            } else {
                self.batch.remove(self.app.store.shard(), key);
            }
            self.membership.push((audience, customer, member));
        }
    }

    /// Remember customers holding in paused journeys, so resuming wakes them.
    fn add_paused(&mut self, customer: CustomerId, journeys: Vec<String>) {
        let shard = self.shard();
        for j in journeys {
            self.batch.insert(self.app.store.shard(), keys::paused(shard, &j, customer), b"".to_vec());
            self.paused_marks.insert((j, customer));
        }
    }

    fn add_timers(&mut self, timers: Vec<(i64, Timer)>) {
        for (due, t) in timers {
            let id = match &t {
                Timer::Journey { customer, journey, seq, .. } => format!("j/{customer}/{journey}/{seq}"),
                Timer::Send(r) => chorus_engine::api_send_key(r),
            };
            self.timers.push((due, id, t));
        }
    }

    fn dispatch_outcome(&mut self, o: DispatchOutcome, now: i64) -> io::Result<()> {
        let shard = self.shard();
        let key = keys::outbox(shard, &o.idempotency_key);
        let present = self.intents.iter().any(|i| i.key == o.idempotency_key) || self.app.store.shard().get(&key).map_err(io_err)?.is_some();
        if !present || self.outbox_removed.contains(&o.idempotency_key) {
            return Ok(()); // already settled: a repeated outcome
        }
        // A message that could not be delivered goes to the dead-letter list, from
        // which an operator can look at it and redrive it (`chorusctl dlq`).
        if o.status != chorus_types::DispatchStatus::Delivered {
            let intent = match self.intents.iter().find(|i| i.key == o.idempotency_key) {
                Some(i) => Some(i.clone()),
                None => self.app.store.shard().get(&key).map_err(io_err)?.map(|v| chorus_types::encoding::decode::<Intent>(&v)).transpose().map_err(io_err)?,
            };
            if let Some(intent) = intent {
                let status = match o.status {
                    chorus_types::DispatchStatus::FailedPermanent => "failed permanently",
                    _ => "gave up after retries",
                };
                let record = DeadLetter { intent, status: status.to_string(), detail: o.detail.clone(), at_ms: now };
                self.batch.insert(self.app.store.shard(), keys::dead(shard, &o.idempotency_key), chorus_types::encoding::encode(&record));
            }
        }
        self.batch.remove(self.app.store.shard(), key);
        self.batch.remove(self.app.store.shard(), keys::attempt(shard, &o.idempotency_key));
        self.outbox_removed.insert(o.idempotency_key.clone());
        self.meta.intents = self.meta.intents.saturating_sub(1);
        let customer = self.resolve_tomb(o.customer)?;
        if customer.home_shard() == shard {
            self.push(customer, now, CustomerInput::Outcome(o));
        }
        Ok(())
    }

    fn last_xin(&self, source: ShardId) -> io::Result<u64> {
        if let Some(v) = self.xin.get(&source) {
            return Ok(*v);
        }
        Ok(match self.store().shard().get(keys::xin(self.shard(), source)).map_err(io_err)? {
            Some(v) if v.len() == 8 => u64::from_be_bytes(v[..8].try_into().expect("8 bytes")),
            _ => 0,
        })
    }

    fn is_duplicate(&self, message_id: &str) -> io::Result<bool> {
        if self.dedup.contains(message_id) {
            return Ok(true);
        }
        match self.store().shard().get(keys::dedup(self.shard(), message_id)).map_err(io_err)? {
            Some(v) if v.len() == 8 => {
                let seen = i64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
                Ok(seen >= self.now_ms - self.app.config.dedup_window_ms)
            }
            _ => Ok(false),
        }
    }

    fn remember(&mut self, message_id: &str, now: i64) {
        let shard = self.shard();
        self.batch.insert(self.app.store.shard(), keys::dedup(shard, message_id), now.to_be_bytes().to_vec());
        self.batch.insert(self.app.store.shard(), keys::dedup_expiry(shard, now, message_id), Vec::new());
        self.dedup.insert(message_id.to_string());
    }

    fn lookup(&self, id: &Identity) -> io::Result<Option<CustomerId>> {
        if let Some(c) = self.index.get(id) {
            return Ok(Some(*c));
        }
        state::read_index(self.store(), self.shard(), id).map_err(io_err)
    }

    /// Point `id`'s index record (this shard holds it) at `customer`. This shard alone
    /// decides which profile lists the key: when the record moves from one customer to
    /// another, the previous one is told to drop the key and the new one to list it, in
    /// this shard's log order (so the last word any profile hears about the key agrees
    /// with the index). Customers in `merged` (absorbed into `customer`) are not told to
    /// drop it.
    fn set_index_merging(&mut self, id: &Identity, customer: CustomerId, merged: &[CustomerId]) -> io::Result<()> {
        let previous = self.lookup(id)?;
        let shard = self.shard();
        self.batch.insert(self.app.store.shard(), keys::index(shard, id), customer.0.to_be_bytes().to_vec());
        self.index.insert(id.clone(), customer);
        if let Some(raw) = previous.filter(|p| *p != customer) {
            let (p, n) = (self.resolve_tomb(raw)?, self.resolve_tomb(customer)?);
            if p != n {
                if !merged.contains(&raw) && !merged.contains(&p) {
                    self.tell(p, CustomerInput::Unlink { identity: id.clone(), to: n });
                }
                // Also after a merge (the survivor already lists it): a refusal sent to
                // the survivor while the merge was in flight must not have the last word.
                self.tell(n, CustomerInput::Link(id.clone()));
            }
        }
        Ok(())
    }

    fn set_index(&mut self, id: &Identity, customer: CustomerId) -> io::Result<()> {
        self.set_index_merging(id, customer, &[])
    }

    /// Hand a `Link` or `Unlink` to `customer`: here, or at its home shard.
    fn tell(&mut self, customer: CustomerId, input: CustomerInput) {
        let home = customer.home_shard();
        if home == self.shard() {
            self.push(customer, self.now_ms, input);
            return;
        }
        match input {
            CustomerInput::Link(identity) => self.send_cross(home, CrossShardMessage::Link { customer, identity }),
            CustomerInput::Unlink { identity, to } => self.send_cross(home, CrossShardMessage::Unlink { customer, identity, to }),
            _ => {}
        }
    }

    /// Deliver the refusals of the event or message just applied (after what it listed).
    fn flush_after(&mut self) {
        for (key, claimant) in std::mem::take(&mut self.after) {
            let home = chorus_types::routing::shard_of(&key, self.app.config.shard_count);
            if home == self.shard() {
                // A failure here is a store error the next claim meets again.
                let _ = self.claim_refused(key, claimant);
            } else {
                self.send_cross(home, CrossShardMessage::ClaimRefused { identity: key, customer: claimant });
            }
        }
    }

    /// At `key`'s shard: a claim of it by `claimant` was refused. The claimant keeps the
    /// key only if the index names it (or nobody: then it takes it).
    fn claim_refused(&mut self, key: Identity, claimant: CustomerId) -> io::Result<()> {
        let claimant = self.resolve_tomb(claimant)?;
        match self.lookup(&key)? {
            None => self.set_index(&key, claimant),
            Some(c) => {
                let holder = self.resolve_tomb(c)?;
                if holder != claimant {
                    self.tell(claimant, CustomerInput::Unlink { identity: key, to: holder });
                }
                Ok(())
            }
        }
    }

    /// A claim of `key` by `claimant` could not be decided (a merge is in flight): the
    /// key's shard, which alone knows where the key is now, has the claimant drop it
    /// unless the index names it — once the event or message being applied is done (so
    /// after the event that listed the key on the claimant).
    fn refuse_claim(&mut self, claimant: CustomerId, key: &Identity) {
        self.after.push((key.clone(), claimant));
    }

    /// The limit-1 rule gave `key` to `to`, away from `from`: re-point its index record
    /// (here, or by a message to the key's shard, which tells both profiles).
    async fn relink(&mut self, key: &Identity, to: CustomerId, from: CustomerId, now: i64) -> io::Result<()> {
        let home = chorus_types::routing::shard_of(key, self.app.config.shard_count);
        if home != self.shard() {
            self.send_cross(home, CrossShardMessage::Relink { identity: key.clone(), to, from });
            return Ok(());
        }
        let current = match self.lookup(key)? {
            Some(c) => Some(self.resolve_tomb(c)?),
            None => None,
        };
        match current {
            None => self.set_index(key, to),
            Some(c) if c == from => self.set_index(key, to),
            Some(c) if c == to => Ok(()),
            // Moved on meanwhile (its holder was told then): `to` contests the holder.
            Some(c) => self.link_contested(to, key, c, now).await.map(|_| ()),
        }
    }

    /// `customer` (homed here) was seen with `identity` (an event listed it on the
    /// profile): link it in the index, or contest the key's holder.
    async fn claim(&mut self, identity: Identity, customer: CustomerId, replaces: &[CustomerId], now: i64) -> io::Result<()> {
        match self.lookup(&identity)? {
            None => self.set_index(&identity, customer)?,
            Some(c) if c == customer => {}
            Some(c) if replaces.contains(&c) => self.set_index_merging(&identity, customer, replaces)?,
            Some(c) => {
                let other = self.resolve_tomb(c)?;
                let owner = self.resolve_tomb(customer)?;
                if other == owner {
                    self.set_index(&identity, owner)?;
                } else {
                    self.link_contested(owner, &identity, other, now).await?;
                }
            }
        }
        Ok(())
    }

    fn send_cross(&mut self, target: ShardId, msg: CrossShardMessage) {
        self.meta.next_xseq += 1;
        self.xout.push((target, self.meta.next_xseq, msg));
    }

    fn create_customer(&mut self, now: i64) -> CustomerId {
        let id = CustomerId::new(self.shard(), self.meta.next_seq);
        self.meta.next_seq += 1;
        self.meta.customers += 1;
        self.created.insert(id, CustomerState::new(id, now));
        id
    }

    fn push(&mut self, id: CustomerId, now: i64, input: CustomerInput) {
        if self.meta.frozen.contains(&id) {
            let seq = self.meta.held_seq;
            self.meta.held_seq += 1;
            self.app.stats.held_inputs.fetch_add(1, Ordering::Relaxed);
            self.held.entry(id).or_default().push((seq, (now, input)));
            return;
        }
        let list = self.pending.entry(id).or_insert_with(|| {
            self.order.push(id);
            Vec::new()
        });
        list.push((now, input));
    }

    fn freeze(&mut self, id: CustomerId) -> io::Result<()> {
        self.flush_one_sync_guard(id);
        self.meta.frozen.insert(id);
        Ok(())
    }

    /// Unfreeze and return the inputs held meanwhile (in order): the stored ones, read
    /// once and deleted, then this round's.
    fn unfreeze(&mut self, id: CustomerId) -> io::Result<Vec<(i64, CustomerInput)>> {
        if !self.meta.frozen.remove(&id) {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let ks = self.app.store.shard().clone();
        for kv in ks.prefix(keys::held_prefix(self.shard(), id)) {
            let (k, v) = kv.into_inner().map_err(io_err)?;
            out.push(chorus_types::encoding::decode::<(i64, CustomerInput)>(&v).map_err(io_err)?);
            self.batch.remove(&ks, k);
        }
        if let Some(list) = self.held.remove(&id) {
            out.extend(list.into_iter().map(|(_, x)| x));
        }
        Ok(out)
    }

    fn flush_one_sync_guard(&self, id: CustomerId) {
        debug_assert!(!self.pending.contains_key(&id), "flush {id} before freezing it");
    }

    fn is_frozen(&self, id: CustomerId) -> bool {
        self.meta.frozen.contains(&id)
    }

    /// Point every identity in `ids` at `survivor`: locally, or by claims to their shards.
    fn repoint(&mut self, ids: &[Identity], survivor: CustomerId, absorbed: &[CustomerId]) -> io::Result<()> {
        let shard = self.shard();
        for id in ids {
            let home = chorus_types::routing::shard_of(id, self.app.config.shard_count);
            if home == shard {
                self.set_index_merging(id, survivor, absorbed)?;
            } else {
                self.send_cross(home, CrossShardMessage::Claim { identity: id.clone(), customer: survivor, replaces: absorbed.to_vec() });
            }
        }
        Ok(())
    }

    /// Deliver a message to `target`'s shard: applied now if that is this shard.
    fn route(&mut self, target: ShardId, msg: CrossShardMessage) -> Option<CrossShardMessage> {
        if target == self.shard() {
            Some(msg)
        } else {
            self.send_cross(target, msg);
            None
        }
    }

    /// The survivor a tombstoned customer forwards to (following chains), or itself.
    fn resolve_tomb(&self, mut id: CustomerId) -> io::Result<CustomerId> {
        for _ in 0..16 {
            let next = match self.tombs.get(&id) {
                Some(s) => Some(*s),
                None => match self.store().shard().get(keys::tomb(self.shard(), id)).map_err(io_err)? {
                    Some(v) if v.len() == 8 => Some(CustomerId(u64::from_be_bytes(v[..8].try_into().expect("8 bytes")))),
                    _ => None,
                },
            };
            match next {
                Some(s) => id = s,
                None => return Ok(id),
            }
        }
        Ok(id)
    }

    async fn ingest(&mut self, event: Event, now: i64) -> io::Result<EventOutcome> {
        if self.is_duplicate(&event.message_id)? {
            self.app.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            return Ok(EventOutcome::Duplicate);
        }
        self.remember(&event.message_id, now);
        let shard = self.shard();
        let count = self.app.config.shard_count;
        let mut lookup_err = None;
        let plan = chorus_engine::plan_resolution(&event, shard, count, |id| match self.lookup(id) {
            Ok(c) => c,
            Err(e) => {
                lookup_err = Some(e);
                None
            }
        });
        if let Some(e) = lookup_err {
            return Err(e);
        }
        if let Some(owner) = plan.owner {
            if self.app.registry.is_quarantined(owner) {
                self.push(owner, now, CustomerInput::Event(event));
                return Ok(EventOutcome::Parked { customer: owner });
            }
        }
        let mut contested = plan.contested_local.clone();
        let mut owner = match plan.owner {
            Some(c) => self.resolve_tomb(c)?,
            None => self.create_customer(now),
        };
        // "Last login wins": a new limit-1 key (say a second user_id) never joins a
        // profile that already holds another value of that kind; it starts its own
        // profile and takes the shared lower-priority keys over.
        if plan.owner.is_some() {
            let limits = &self.app.config.engine.identity_limits;
            let fresh_limit_one: Vec<Identity> = plan.link_local.iter().filter(|i| limits.limit(&i.kind) == 1).cloned().collect();
            if !fresh_limit_one.is_empty() {
                // A remote owner's identities are not visible here: start the new key's
                // profile and let the merge protocol decide (merge or re-link).
                let clash = if owner.home_shard() == shard {
                    let current = self.customer_state(owner).await?;
                    fresh_limit_one.iter().any(|f| current.identities.iter().any(|i| i.kind == f.kind && i.value != f.value))
                } else {
                    true
                };
                if clash {
                    let previous = owner;
                    owner = self.create_customer(now);
                    let mut s = self.created.remove(&owner).expect("just created");
                    s.identities.extend(fresh_limit_one.iter().cloned());
                    self.created.insert(owner, s);
                    // Every key of the event that pointed at the previous owner is contested.
                    for id in &event.identities {
                        if !fresh_limit_one.contains(id) && self.lookup(id)?.is_some_and(|c| c == previous || self.resolve_tomb(c).ok() == Some(previous)) {
                            contested.push((id.clone(), previous));
                        }
                    }
                }
            }
        }
        for (key, other) in contested {
            let other = self.resolve_tomb(other)?;
            owner = self.link_contested(owner, &key, other, now).await?;
        }
        for key in &plan.link_local {
            self.set_index(key, owner)?;
        }
        // The other keys are claimed from the customer's home, in the round that lists
        // them on the profile, so an answer from a key's shard always comes after it: here,
        // or by the home when it applies the forwarded event.
        if owner.home_shard() == shard {
            for (key, target) in &plan.claim_remote {
                self.send_cross(*target, CrossShardMessage::Claim { identity: key.clone(), customer: owner, replaces: Vec::new() });
            }
        }
        if owner.home_shard() == shard {
            self.push(owner, now, CustomerInput::Event(event));
            self.app.stats.events_applied.fetch_add(1, Ordering::Relaxed);
            Ok(EventOutcome::Applied { customer: owner })
        } else {
            let home = owner.home_shard();
            self.send_cross(home, CrossShardMessage::Forward { customer: owner, event });
            self.app.stats.forwarded.fetch_add(1, Ordering::Relaxed);
            Ok(EventOutcome::Forwarded { customer: owner, shard: home })
        }
    }

    async fn apply_cross_shard(&mut self, msg: CrossShardMessage, now: i64) -> io::Result<()> {
        match msg {
            CrossShardMessage::Forward { customer, event } => {
                let target = self.resolve_tomb(customer)?;
                if target.home_shard() == self.shard() {
                    let identities = event.identities.clone();
                    self.push(target, now, CustomerInput::Event(event));
                    // The event lists its keys on the profile now: claim them from here.
                    let shard = self.shard();
                    for id in identities {
                        let home = chorus_types::routing::shard_of(&id, self.app.config.shard_count);
                        if home == shard {
                            Box::pin(self.claim(id, target, &[], now)).await?;
                        } else {
                            self.send_cross(home, CrossShardMessage::Claim { identity: id, customer: target, replaces: Vec::new() });
                        }
                    }
                } else {
                    self.send_cross(target.home_shard(), CrossShardMessage::Forward { customer: target, event });
                }
            }
            CrossShardMessage::FireTimer { timer } => self.fire_timer(timer, now)?,
            CrossShardMessage::MergeRequest { key, owner, other } => Box::pin(self.merge_request(key, owner, other, now)).await?,
            CrossShardMessage::MergeOffer { key, owner, other, other_state } => self.merge_offer(key, owner, other, other_state, now).await?,
            CrossShardMessage::MergeAbsorb { key, survivor, merged, merged_state } => self.merge_absorb(key, survivor, merged, merged_state, now).await?,
            CrossShardMessage::MergeDone { merged, survivor } => self.merge_done(merged, survivor, now).await?,
            // A re-link (`relink`) is carried out by the key's shard, which tells this
            // customer to drop the key (`Unlink`) in its own order.
            CrossShardMessage::MergeCancel { customer, relink: _ } => {
                let held = self.unfreeze(customer)?;
                for (t, input) in held {
                    self.push(customer, t, input);
                }
            }
            CrossShardMessage::Claim { identity, customer, replaces } => Box::pin(self.claim(identity, customer, &replaces, now)).await?,
            CrossShardMessage::Link { customer, identity } => {
                let c = self.resolve_tomb(customer)?;
                self.tell(c, CustomerInput::Link(identity));
            }
            CrossShardMessage::Unlink { customer, identity, to } => {
                // Told to a customer merged away since: its survivor holds the key now,
                // unless the key went to the survivor itself.
                let c = self.resolve_tomb(customer)?;
                if c != self.resolve_tomb(to)? {
                    self.tell(c, CustomerInput::Unlink { identity, to });
                }
            }
            CrossShardMessage::Relink { identity, to, from } => Box::pin(self.relink(&identity, to, from, now)).await?,
            CrossShardMessage::ClaimRefused { identity, customer } => self.claim_refused(identity, customer)?,
        }
        Ok(())
    }

    /// `key` is seen with `owner` but indexed to `other`: merge or re-link (SPEC §4.2).
    /// Returns the customer the event now belongs to.
    async fn link_contested(&mut self, owner: CustomerId, key: &Identity, other: CustomerId, now: i64) -> io::Result<CustomerId> {
        if owner == other {
            return Ok(owner);
        }
        let shard = self.shard();
        if owner.home_shard() != shard || other.home_shard() != shard {
            // Both states must meet in one place: the cross-shard merge protocol
            // (MergeRequest → MergeOffer → MergeAbsorb/MergeDone/MergeCancel).
            Box::pin(self.merge_request(key.clone(), owner, other, now)).await?;
            return Ok(owner);
        }
        if self.is_frozen(owner) || self.is_frozen(other) {
            self.app.stats.deferred_cross_shard_merges.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(shard, %owner, %other, key = %key, "a merge is already in flight for one of these customers; the key stays where it is");
            self.refuse_claim(owner, key);
            return Ok(owner);
        }
        let a = self.customer_state(owner).await?;
        let b = self.customer_state(other).await?;
        let cfg = &self.app.config.engine;
        match chorus_engine::decide_link(&a, &b, key, cfg) {
            LinkDecision::Relink { key, from, to, .. } => {
                // The index record moves: `from` is told to drop the key, `to` to list it.
                self.set_index(&key, to)?;
                self.push(to, now, CustomerInput::Conflict { identity: key.clone(), other: from });
                self.app.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                Ok(to)
            }
            LinkDecision::Merge { survivor, merged } => {
                let (mut s, mut m) = if survivor == a.id { (a, b) } else { (b, a) };
                let merged_ids = m.identities.clone();
                let absorbed: Vec<CustomerId> = std::iter::once(m.id).chain(m.merged_from.iter().copied()).collect();
                chorus_engine::merge_into(&mut s, &mut m, now, cfg);
                for id in &merged_ids {
                    let home = chorus_types::routing::shard_of(id, self.app.config.shard_count);
                    if home == shard {
                        self.set_index_merging(id, survivor, &absorbed)?;
                    } else {
                        self.send_cross(home, CrossShardMessage::Claim { identity: id.clone(), customer: survivor, replaces: absorbed.clone() });
                    }
                }
                self.set_index_merging(key, survivor, &absorbed)?;
                self.tombs.insert(merged, survivor);
                self.batch.insert(self.app.store.shard(), keys::tomb(shard, merged), survivor.0.to_be_bytes().to_vec());
                self.meta.tombstones += 1;
                self.replace_state(s).await?;
                self.replace_state(m).await?;
                self.app.stats.merges.fetch_add(1, Ordering::Relaxed);
                Ok(survivor)
            }
        }
    }

    /// Step 1 at `other`'s home: freeze `other` and offer its state to `owner`'s home.
    async fn merge_request(&mut self, key: Identity, owner: CustomerId, other: CustomerId, now: i64) -> io::Result<()> {
        let shard = self.shard();
        let raw = other;
        let other = self.resolve_tomb(other)?;
        if other != raw {
            // The key's index record names a customer merged away (its tombstone lives
            // here, not in the key's shard): point it at the survivor, so a re-link
            // decided for the survivor finds it there.
            let home = chorus_types::routing::shard_of(&key, self.app.config.shard_count);
            let hint = CrossShardMessage::Claim { identity: key.clone(), customer: other, replaces: vec![raw] };
            if let Some(CrossShardMessage::Claim { identity, customer, replaces }) = self.route(home, hint) {
                Box::pin(self.claim(identity, customer, &replaces, now)).await?;
            }
        }
        if other.home_shard() != shard {
            if let Some(CrossShardMessage::MergeRequest { key, owner, other }) =
                self.route(other.home_shard(), CrossShardMessage::MergeRequest { key, owner, other })
            {
                Box::pin(self.merge_request(key, owner, other, now)).await?;
            }
            return Ok(());
        }
        if other == owner {
            return Ok(());
        }
        if owner.home_shard() == shard {
            self.link_contested(owner, &key, other, now).await?;
            return Ok(());
        }
        if self.is_frozen(other) || self.load_state(other).map(|s| s.is_tombstone()).unwrap_or(true) {
            self.app.stats.deferred_cross_shard_merges.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(shard, %owner, %other, key = %key, "merge skipped: the customer is already in another merge");
            self.refuse_claim(owner, &key);
            return Ok(());
        }
        let state = self.customer_state(other).await?;
        self.freeze(other)?;
        self.send_cross(owner.home_shard(), CrossShardMessage::MergeOffer { key, owner, other, other_state: chorus_types::encoding::encode(&state) });
        Ok(())
    }

    /// Step 2 at `owner`'s home: decide with both states (SPEC §4.2).
    async fn merge_offer(&mut self, key: Identity, owner: CustomerId, other: CustomerId, other_state: Vec<u8>, now: i64) -> io::Result<()> {
        let shard = self.shard();
        let owner = self.resolve_tomb(owner)?;
        if owner.home_shard() != shard {
            let msg = CrossShardMessage::MergeOffer { key, owner, other, other_state };
            if let Some(CrossShardMessage::MergeOffer { key, owner, other, other_state }) = self.route(owner.home_shard(), msg) {
                return Box::pin(self.merge_offer(key, owner, other, other_state, now)).await;
            }
            return Ok(());
        }
        if owner == other || self.is_frozen(owner) {
            self.app.stats.deferred_cross_shard_merges.fetch_add(1, Ordering::Relaxed);
            self.cancel_merge(other)?;
            if owner != other {
                self.refuse_claim(owner, &key);
            }
            return Ok(());
        }
        let a = self.customer_state(owner).await?;
        let b: CustomerState = chorus_types::encoding::decode(&other_state).map_err(io_err)?;
        let cfg = self.app.config.engine.clone();
        match chorus_engine::decide_link(&a, &b, &key, &cfg) {
            LinkDecision::Relink { key, to, from, .. } => {
                self.push(to, now, CustomerInput::Conflict { identity: key.clone(), other });
                self.cancel_merge(other)?;
                Box::pin(self.relink(&key, to, from, now)).await?;
                self.app.stats.conflicts.fetch_add(1, Ordering::Relaxed);
            }
            LinkDecision::Merge { survivor, merged } if survivor == owner => {
                let (mut s, mut m) = (a, b);
                let absorbed: Vec<CustomerId> = std::iter::once(m.id).chain(m.merged_from.iter().copied()).collect();
                let ids = m.identities.clone();
                chorus_engine::merge_into(&mut s, &mut m, now, &cfg);
                self.replace_state(s).await?;
                self.repoint(&ids, survivor, &absorbed)?;
                self.send_cross(merged.home_shard(), CrossShardMessage::MergeDone { merged, survivor });
                self.app.stats.merges.fetch_add(1, Ordering::Relaxed);
            }
            LinkDecision::Merge { survivor, merged } => {
                // `other` survives: ship the owner's state to it and freeze the owner.
                self.freeze(merged)?;
                self.send_cross(
                    survivor.home_shard(),
                    CrossShardMessage::MergeAbsorb { key, survivor, merged, merged_state: chorus_types::encoding::encode(&a) },
                );
            }
        }
        Ok(())
    }

    /// The merge of `customer` (frozen at its home) did not happen: unfreeze it and let
    /// its held inputs through, in order — here, or by a `MergeCancel` to its home.
    fn cancel_merge(&mut self, customer: CustomerId) -> io::Result<()> {
        if customer.home_shard() != self.shard() {
            self.send_cross(customer.home_shard(), CrossShardMessage::MergeCancel { customer, relink: None });
            return Ok(());
        }
        for (t, input) in self.unfreeze(customer)? {
            self.push(customer, t, input);
        }
        Ok(())
    }

    /// Step 3b at the survivor's home (the survivor is frozen since step 1).
    async fn merge_absorb(&mut self, _key: Identity, survivor: CustomerId, merged: CustomerId, merged_state: Vec<u8>, now: i64) -> io::Result<()> {
        if survivor.home_shard() != self.shard() || !self.is_frozen(survivor) {
            tracing::error!(%survivor, %merged, "merge absorb for a customer that is not frozen here; cancelling");
            self.cancel_merge(merged)?;
            return Ok(());
        }
        let held = self.unfreeze(survivor)?;
        let mut s = self.customer_state(survivor).await?;
        let mut m: CustomerState = chorus_types::encoding::decode(&merged_state).map_err(io_err)?;
        let absorbed: Vec<CustomerId> = std::iter::once(m.id).chain(m.merged_from.iter().copied()).collect();
        let ids = m.identities.clone();
        let cfg = self.app.config.engine.clone();
        chorus_engine::merge_into(&mut s, &mut m, now, &cfg);
        self.replace_state(s).await?;
        self.repoint(&ids, survivor, &absorbed)?;
        for (t, input) in held {
            self.push(survivor, t, input);
        }
        if let Some(CrossShardMessage::MergeDone { merged, survivor }) = self.route(merged.home_shard(), CrossShardMessage::MergeDone { merged, survivor }) {
            Box::pin(self.merge_done(merged, survivor, now)).await?;
        }
        self.app.stats.merges.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Final step at the merged customer's home: tombstone it and forward held events.
    async fn merge_done(&mut self, merged: CustomerId, survivor: CustomerId, now: i64) -> io::Result<()> {
        let shard = self.shard();
        if merged.home_shard() != shard {
            return Ok(());
        }
        let held = self.unfreeze(merged)?;
        let mut st = self.customer_state(merged).await?;
        let cfg = self.app.config.engine.clone();
        st.merged_into = Some(survivor);
        st.updated_ms = now;
        st.history.clear();
        st.identities.clear();
        st.decide(&cfg, now, DecisionKind::MergedInto, "identity link", format!("merged into {survivor}"));
        self.replace_state(st).await?;
        self.tombs.insert(merged, survivor);
        self.batch.insert(self.app.store.shard(), keys::tomb(shard, merged), survivor.0.to_be_bytes().to_vec());
        self.meta.tombstones += 1;
        for (t, input) in held {
            match input {
                CustomerInput::Event(event) => {
                    if survivor.home_shard() == shard {
                        self.push(survivor, t, CustomerInput::Event(event));
                    } else {
                        self.send_cross(survivor.home_shard(), CrossShardMessage::Forward { customer: survivor, event });
                    }
                }
                // What a key's shard said about the merged customer's keys now concerns
                // the survivor, which holds them.
                input @ (CustomerInput::Link(_) | CustomerInput::Unlink { .. }) => self.tell(survivor, input),
                _ => {}
            }
        }
        Ok(())
    }

    /// Current state of a local customer including this round's pending inputs.
    async fn customer_state(&mut self, id: CustomerId) -> io::Result<CustomerState> {
        self.flush_one(id).await?;
        if let Some(s) = self.created.get(&id) {
            return Ok(s.clone());
        }
        let actor = self.actor_for(id).await?;
        match actor.call(CustomerMsg::Get, None).await {
            Ok(ractor::rpc::CallResult::Success(s)) => Ok(s),
            _ => {
                // The actor failed; fall back to the last state of this round or the store.
                self.load_state(id)
            }
        }
    }

    async fn replace_state(&mut self, state: CustomerState) -> io::Result<()> {
        let id = state.id;
        self.created.remove(&id);
        self.app.registry.deactivate(id);
        let mut state = state;
        self.put_state(id, state::StateWrite::whole(&mut state));
        Ok(())
    }

    /// Record a customer's state change; a second change in the same round folds into
    /// the first.
    fn put_state(&mut self, id: CustomerId, write: state::StateWrite) {
        let write = match self.states.remove(&id) {
            Some(earlier) => earlier.then(write),
            None => write,
        };
        self.states.insert(id, write);
    }

    fn load_state(&self, id: CustomerId) -> io::Result<CustomerState> {
        if let Some(s) = self.created.get(&id) {
            return Ok(s.clone());
        }
        if let Some(write) = self.states.get(&id) {
            return write.state(self.store(), self.shard(), id).map_err(io_err);
        }
        state::read_customer(self.store(), self.shard(), id)
            .map_err(io_err)?
            .ok_or_else(|| io_err(format!("customer {id} has no state in shard {}", self.shard())))
    }

    async fn actor_for(&mut self, id: CustomerId) -> io::Result<ActorRef<CustomerMsg>> {
        if let Some(a) = self.app.registry.get(id) {
            return Ok(a);
        }
        let state = match self.created.remove(&id) {
            Some(s) => s,
            None => self.load_state(id)?,
        };
        self.app.registry.activate(state).await.map_err(io_err)
    }

    async fn flush_one(&mut self, id: CustomerId) -> io::Result<()> {
        if let Some(inputs) = self.pending.remove(&id) {
            self.order.retain(|c| *c != id);
            self.run_inputs(vec![(id, inputs)]).await?;
        }
        Ok(())
    }

    async fn flush_all(&mut self) -> io::Result<()> {
        let order = std::mem::take(&mut self.order);
        let mut work = Vec::with_capacity(order.len());
        for id in order {
            if let Some(inputs) = self.pending.remove(&id) {
                work.push((id, inputs));
            }
        }
        self.run_inputs(work).await?;
        // Customers created but never given an input (cannot normally happen) still persist.
        for (id, mut s) in std::mem::take(&mut self.created) {
            self.put_state(id, state::StateWrite::whole(&mut s));
        }
        Ok(())
    }

    /// Send each customer's inputs to its actor concurrently and collect the states.
    /// A customer whose actor fails is retried from its last good state; after
    /// `quarantine_after` failures its inputs are parked and it is quarantined.
    async fn run_inputs(&mut self, work: Vec<(CustomerId, Vec<(i64, CustomerInput)>)>) -> io::Result<()> {
        let mut waiting = Vec::with_capacity(work.len());
        for (id, inputs) in work {
            if self.app.registry.is_quarantined(id) {
                self.park(id, inputs);
                continue;
            }
            let actor = self.actor_for(id).await?;
            let (tx, rx) = ractor::concurrency::oneshot::<CustomerApplied>();
            let inputs = Arc::new(inputs);
            let msg = CustomerMsg::Apply { inputs: inputs.clone(), catalog: self.catalog.clone(), reply: tx.into() };
            if actor.cast(msg).is_err() {
                waiting.push((id, inputs, None));
            } else {
                waiting.push((id, inputs, Some(rx)));
            }
        }
        for (id, inputs, rx) in waiting {
            let ok = match rx {
                Some(rx) => rx.await.ok(),
                None => None,
            };
            match ok {
                Some(applied) => {
                    self.absorb(id, applied)?;
                }
                None => {
                    let inputs = Arc::try_unwrap(inputs).unwrap_or_else(|shared| (*shared).clone());
                    self.retry_or_park(id, inputs).await?
                }
            }
        }
        Ok(())
    }

    /// Take what a customer actor produced into this round's batch.
    fn absorb(&mut self, id: CustomerId, applied: CustomerApplied) -> io::Result<()> {
        self.put_state(id, applied.write);
        self.intents.extend(applied.intents);
        self.add_timers(applied.timers);
        self.add_stats(applied.stats);
        self.add_paused(id, applied.held);
        self.add_membership(id, applied.membership);
        self.cancel_intents(applied.cancelled)?;
        for r in applied.tracks {
            self.batch.insert(self.app.store.shard(), keys::track(self.app.shard, r.id), chorus_types::encoding::encode(&r));
        }
        Ok(())
    }

    async fn retry_or_park(&mut self, id: CustomerId, inputs: Vec<(i64, CustomerInput)>) -> io::Result<()> {
        let registry = self.app.registry.clone();
        let mut failures = registry.record_failure(id);
        while failures < self.app.config.quarantine_after {
            registry.deactivate(id);
            let actor = self.actor_for(id).await?;
            let shared = Arc::new(inputs.clone());
            let catalog = self.catalog.clone();
            match actor.call(|reply| CustomerMsg::Apply { inputs: shared, catalog, reply }, None).await {
                Ok(ractor::rpc::CallResult::Success(applied)) => {
                    self.absorb(id, applied)?;
                    registry.clear_failures(id);
                    return Ok(());
                }
                _ => failures = registry.record_failure(id),
            }
        }
        tracing::error!(shard = self.shard(), customer = %id, failures, "customer quarantined after repeated failures; its inputs are parked");
        registry.deactivate(id);
        registry.quarantine(id);
        self.meta.quarantined += 1;
        // Record the decision on the stored profile so `explain` shows it.
        if let Ok(mut s) = self.load_state(id) {
            s.decide(
                &self.app.config.engine,
                self.now_ms,
                DecisionKind::Quarantined,
                "repeated failures",
                format!("{failures} failed attempts; inputs parked"),
            );
            self.put_state(id, state::StateWrite::whole(&mut s));
        }
        self.park(id, inputs);
        Ok(())
    }

    fn park(&mut self, id: CustomerId, inputs: Vec<(i64, CustomerInput)>) {
        let shard = self.shard();
        for input in inputs {
            let seq = self.meta.parked_seq;
            self.meta.parked_seq += 1;
            self.batch.insert(self.app.store.shard(), keys::parked(shard, id, seq), chorus_types::encoding::encode(&input));
            self.app.stats.parked.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn expire_dedup(&mut self) -> io::Result<()> {
        let shard = self.shard();
        let cutoff = self.now_ms - self.app.config.dedup_window_ms;
        if cutoff <= 0 || self.app.stats.dedup_oldest_ms.load(Ordering::Relaxed) >= cutoff {
            return Ok(()); // nothing is old enough to expire
        }
        let lo = keys::dedup_expiry_prefix(shard);
        let hi = keys::dedup_expiry(shard, cutoff, "");
        let mut n = 0;
        for kv in self.app.store.shard().range(lo.clone()..hi.clone()) {
            if n >= self.app.config.dedup_expire_batch_max {
                break;
            }
            let key = kv.key().map_err(io_err)?;
            let message_id = &key[5 + 8..];
            let mid = String::from_utf8_lossy(message_id).into_owned();
            if !self.dedup.contains(&mid) {
                self.batch.remove(self.app.store.shard(), keys::dedup(shard, &mid));
            }
            self.batch.remove(self.app.store.shard(), key);
            n += 1;
        }
        if n < self.app.config.dedup_expire_batch_max {
            // Everything before the cutoff is gone: the oldest left is the first stored
            // record at or after it (records of this round are newer still).
            let oldest = match self.app.store.shard().range(hi..).next() {
                Some(kv) => {
                    let key = kv.key().map_err(io_err)?;
                    match key.get(5..13).filter(|_| key.starts_with(&lo)) {
                        Some(b) => u64::from_be_bytes(b.try_into().expect("8 bytes")) as i64,
                        None => self.now_ms,
                    }
                }
                None => self.now_ms,
            };
            self.app.stats.dedup_oldest_ms.store(oldest.min(self.now_ms), Ordering::Relaxed);
        }
        Ok(())
    }

    fn finish(mut self, raft_meta: Vec<u8>) -> io::Result<ShardMeta> {
        let shard = self.shard();
        let ks = self.app.store.shard().clone();
        for (id, write) in std::mem::take(&mut self.states) {
            write.write(&mut self.batch, &self.app.store, shard, id).map_err(io_err)?;
        }
        for (source, seq) in self.xin.drain() {
            self.batch.insert(&ks, keys::xin(shard, source), seq.to_be_bytes().to_vec());
        }
        let xcount = self.xout.len() as u64;
        for (target, seq, msg) in self.xout.drain(..) {
            self.batch.insert(&ks, keys::xout(shard, target, seq), chorus_types::encoding::encode(&msg));
        }
        self.app.stats.pending_cross_shard.fetch_add(xcount, Ordering::Relaxed);
        for (id, list) in self.held.drain() {
            for (seq, item) in list {
                self.batch.insert(&ks, keys::held(shard, id, seq), chorus_types::encoding::encode(&item));
            }
        }
        for intent in self.intents.drain(..) {
            let k = keys::outbox(shard, &intent.key);
            // Idempotent: an intent is recorded once, whatever re-processing happens.
            if ks.get(&k).map_err(io_err)?.is_none() {
                self.meta.intents += 1;
                self.meta.intents_total += 1;
            }
            self.batch.insert(&ks, k, chorus_types::encoding::encode(&intent));
        }
        for (k, (count, sum)) in self.stats.drain() {
            let (c0, s0): (u64, f64) = match ks.get(&k).map_err(io_err)? {
                Some(v) => chorus_types::encoding::decode(&v).map_err(io_err)?,
                None => (0, 0.0),
            };
            self.batch.insert(&ks, k, chorus_types::encoding::encode(&(c0 + count, s0 + sum)));
        }
        let mut earliest = i64::MAX;
        for (due, id, timer) in self.timers.drain(..) {
            let k = keys::timer(shard, due, &id);
            if ks.get(&k).map_err(io_err)?.is_none() {
                self.meta.timers += 1;
            }
            earliest = earliest.min(due);
            self.batch.insert(&ks, k, chorus_types::encoding::encode(&timer));
        }
        self.batch.insert(&ks, keys::shard_meta(shard), chorus_types::encoding::encode(&self.meta));
        self.batch.insert(&ks, keys::raft_meta(shard), raft_meta);
        self.batch.commit().map_err(io_err)?;
        self.app.stats.pending_timers.store(self.meta.timers, Ordering::Relaxed);
        self.app.stats.pending_intents.store(self.meta.intents, Ordering::Relaxed);
        self.app.stats.intents_total.store(self.meta.intents_total, Ordering::Relaxed);
        // Only a round that fired timers can move the earliest due time later: re-read it
        // then; otherwise new timers can only bring it earlier.
        let known = if self.timers_fired {
            first_timer(&self.app.store, shard).map_err(io_err)?.unwrap_or(i64::MAX)
        } else {
            self.app.stats.next_timer_ms.load(Ordering::Relaxed)
        };
        let next = known.min(earliest);
        self.app.stats.next_timer_ms.store(next, Ordering::Relaxed);
        self.app.stats.customers.store(self.meta.customers - self.meta.tombstones, Ordering::Relaxed);
        Ok(self.meta)
    }
}
