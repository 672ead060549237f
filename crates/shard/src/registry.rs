//! The live customer actors of one shard: a typed map owned by the shard (not ractor's
//! global registry), a supervising shard actor that learns of failures, passivation of
//! idle actors and LRU eviction beyond `live_actors_max`, and quarantine bookkeeping.

use crate::ShardConfig;
use crate::customer::{CustomerActor, CustomerArgs, CustomerMsg};
use chorus_engine::CustomerState;
use chorus_types::{CustomerId, ShardId};
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct LiveActor {
    actor: ActorRef<CustomerMsg>,
    last_used: Instant,
}

#[derive(Default)]
struct Inner {
    live: HashMap<CustomerId, LiveActor>,
    by_actor: HashMap<ActorId, CustomerId>,
    failures: HashMap<CustomerId, u32>,
    quarantined: HashSet<CustomerId>,
    restarts: u64,
    passivated: u64,
}

/// Cheap to clone; shared by the apply path, the passivation sweeper and the supervisor.
#[derive(Clone)]
pub struct Registry {
    shard: ShardId,
    config: Arc<ShardConfig>,
    inner: Arc<Mutex<Inner>>,
    supervisor: ActorCell,
}

/// Supervises a shard's customer actors: a failed actor is removed from the map so the
/// next input restarts it from the stored state; failures are counted per customer.
struct ShardSupervisor;

struct SupervisorArgs {
    shard: ShardId,
    inner: Arc<Mutex<Inner>>,
}

impl Actor for ShardSupervisor {
    type Msg = ();
    type State = SupervisorArgs;
    type Arguments = SupervisorArgs;

    async fn pre_start(&self, _me: ActorRef<()>, args: SupervisorArgs) -> Result<SupervisorArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle_supervisor_evt(&self, _me: ActorRef<()>, evt: SupervisionEvent, st: &mut SupervisorArgs) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                let mut inner = st.inner.lock().expect("registry lock");
                if let Some(id) = inner.by_actor.remove(&cell.get_id()) {
                    inner.live.remove(&id);
                    inner.restarts += 1;
                    tracing::warn!(shard = st.shard, customer = %id, error = %err, "customer actor failed; it restarts from stored state on its next input");
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                let mut inner = st.inner.lock().expect("registry lock");
                if let Some(id) = inner.by_actor.remove(&cell.get_id()) {
                    inner.live.remove(&id);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl Registry {
    pub async fn start(shard: ShardId, config: Arc<ShardConfig>) -> Result<Registry, String> {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let (sup, _) = Actor::spawn(None, ShardSupervisor, SupervisorArgs { shard, inner: inner.clone() })
            .await
            .map_err(|e| format!("start shard {shard} supervisor: {e}"))?;
        Ok(Registry { shard, config, inner, supervisor: sup.get_cell() })
    }

    /// The live actor of `id`, if any (marks it used).
    pub fn get(&self, id: CustomerId) -> Option<ActorRef<CustomerMsg>> {
        let mut inner = self.inner.lock().expect("registry lock");
        let live = inner.live.get_mut(&id)?;
        live.last_used = Instant::now();
        Some(live.actor.clone())
    }

    /// Start an actor for `state` (activation), linked to the shard supervisor.
    pub async fn activate(&self, state: CustomerState) -> Result<ActorRef<CustomerMsg>, String> {
        let id = state.id;
        let (actor, _) = Actor::spawn_linked(None, CustomerActor, CustomerArgs { config: self.config.clone(), state }, self.supervisor.clone())
            .await
            .map_err(|e| format!("activate customer {id}: {e}"))?;
        let mut inner = self.inner.lock().expect("registry lock");
        inner.by_actor.insert(actor.get_id(), id);
        if let Some(old) = inner.live.insert(id, LiveActor { actor: actor.clone(), last_used: Instant::now() }) {
            inner.by_actor.remove(&old.actor.get_id());
            old.actor.stop(None);
        }
        Ok(actor)
    }

    /// Drop the live actor of `id` (its state is already persisted).
    pub fn deactivate(&self, id: CustomerId) {
        let mut inner = self.inner.lock().expect("registry lock");
        if let Some(old) = inner.live.remove(&id) {
            inner.by_actor.remove(&old.actor.get_id());
            old.actor.stop(None);
        }
    }

    /// Passivate actors idle longer than `actor_idle_ms`, then the least recently used
    /// beyond `live_actors_max`. Only call between apply rounds (state is persisted).
    pub fn passivate(&self) -> usize {
        let mut inner = self.inner.lock().expect("registry lock");
        let idle = Duration::from_millis(self.config.actor_idle_ms);
        let now = Instant::now();
        let mut victims: Vec<CustomerId> = inner.live.iter().filter(|(_, l)| now.duration_since(l.last_used) >= idle).map(|(id, _)| *id).collect();
        let remaining = inner.live.len() - victims.len();
        if remaining > self.config.live_actors_max {
            let mut rest: Vec<(Instant, CustomerId)> =
                inner.live.iter().filter(|(_, l)| now.duration_since(l.last_used) < idle).map(|(id, l)| (l.last_used, *id)).collect();
            rest.sort();
            victims.extend(rest.into_iter().take(remaining - self.config.live_actors_max).map(|(_, id)| id));
        }
        for id in &victims {
            if let Some(old) = inner.live.remove(id) {
                inner.by_actor.remove(&old.actor.get_id());
                old.actor.stop(Some("passivated".into()));
            }
        }
        inner.passivated += victims.len() as u64;
        if !victims.is_empty() {
            tracing::debug!(shard = self.shard, passivated = victims.len(), live = inner.live.len(), "passivated idle customer actors");
        }
        victims.len()
    }

    pub fn live_count(&self) -> usize {
        self.inner.lock().expect("registry lock").live.len()
    }

    pub fn record_failure(&self, id: CustomerId) -> u32 {
        let mut inner = self.inner.lock().expect("registry lock");
        let n = inner.failures.entry(id).or_default();
        *n += 1;
        *n
    }

    pub fn clear_failures(&self, id: CustomerId) {
        self.inner.lock().expect("registry lock").failures.remove(&id);
    }

    pub fn quarantine(&self, id: CustomerId) {
        self.inner.lock().expect("registry lock").quarantined.insert(id);
    }

    pub fn is_quarantined(&self, id: CustomerId) -> bool {
        self.inner.lock().expect("registry lock").quarantined.contains(&id)
    }

    pub fn quarantined(&self) -> Vec<CustomerId> {
        self.inner.lock().expect("registry lock").quarantined.iter().copied().collect()
    }

    pub fn restarts(&self) -> u64 {
        self.inner.lock().expect("registry lock").restarts
    }

    /// Stop every customer actor (state is persisted); the supervisor stays.
    pub fn stop_customers(&self) {
        let mut inner = self.inner.lock().expect("registry lock");
        for (_, l) in inner.live.drain() {
            l.actor.stop(None);
        }
        inner.by_actor.clear();
    }

    pub fn stop_all(&self) {
        let mut inner = self.inner.lock().expect("registry lock");
        for (_, l) in inner.live.drain() {
            l.actor.stop(None);
        }
        inner.by_actor.clear();
        self.supervisor.stop(None);
    }
}
