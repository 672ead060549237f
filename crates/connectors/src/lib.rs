//! Channel connectors (SPEC §8): each channel's provider behind a supervised actor
//! with bounded concurrency and retries with exponential backoff for transient errors.
//! The capture connector stores messages locally (idempotently by key) so a new user
//! sees messages without a provider account; real providers arrive with issue
//! "Channels". Connectors never decide anything: they deliver intents.

pub mod capture;
pub mod fcm;
pub mod provider;
pub mod twilio;

use chorus_types::{DispatchStatus, Intent};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DeliveryError {
    /// Worth retrying (timeouts, 429, 5xx).
    #[error("transient delivery error: {0}")]
    Transient(String),
    /// Not worth retrying (bad address, rejected content).
    #[error("permanent delivery error: {0}")]
    Permanent(String),
}

/// A provider of one or more channels.
pub trait Connector: Send + Sync + 'static {
    fn name(&self) -> &str;
    /// Deliver one intent. Must be idempotent by `intent.key`: delivering the same key
    /// twice sends once (providers that take idempotency keys get it passed).
    fn deliver<'a>(&'a self, intent: &'a Intent) -> Pin<Box<dyn Future<Output = Result<String, DeliveryError>> + Send + 'a>>;
}

/// Tunables of a connector's actor.
#[derive(Clone, Debug)]
pub struct ConnectorLimits {
    /// Deliveries in flight at once.
    pub concurrency_max: usize,
    /// Attempts per intent before a transient error is reported as final.
    pub attempts_max: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for ConnectorLimits {
    fn default() -> Self {
        ConnectorLimits { concurrency_max: 64, attempts_max: 5, backoff_initial: Duration::from_millis(100), backoff_max: Duration::from_secs(10) }
    }
}

/// The final outcome of delivering an intent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub status: DispatchStatus,
    pub detail: String,
    pub attempts: u32,
}

pub enum ConnectorMsg {
    Deliver(Box<Intent>, RpcReplyPort<Delivery>),
}

struct ConnectorActor;

struct ConnectorState {
    connector: Arc<dyn Connector>,
    limits: ConnectorLimits,
    permits: Arc<tokio::sync::Semaphore>,
}

impl Actor for ConnectorActor {
    type Msg = ConnectorMsg;
    type State = ConnectorState;
    type Arguments = (Arc<dyn Connector>, ConnectorLimits);

    async fn pre_start(&self, _me: ActorRef<ConnectorMsg>, (connector, limits): Self::Arguments) -> Result<ConnectorState, ActorProcessingErr> {
        let permits = Arc::new(tokio::sync::Semaphore::new(limits.concurrency_max));
        Ok(ConnectorState { connector, limits, permits })
    }

    async fn handle(&self, _me: ActorRef<ConnectorMsg>, msg: ConnectorMsg, st: &mut ConnectorState) -> Result<(), ActorProcessingErr> {
        let ConnectorMsg::Deliver(intent, reply) = msg;
        // Bounded concurrency: wait for a slot here, so the mailbox (bounded by the
        // dispatcher's in-flight limit) holds the rest.
        let permit = st.permits.clone().acquire_owned().await?;
        let connector = st.connector.clone();
        let limits = st.limits.clone();
        tokio::spawn(async move {
            let delivery = deliver_with_retries(connector.as_ref(), &intent, &limits).await;
            drop(permit);
            let _ = reply.send(delivery);
        });
        Ok(())
    }
}

/// Deliver with exponential backoff (deterministic jitter from the key) on transient errors.
pub async fn deliver_with_retries(connector: &dyn Connector, intent: &Intent, limits: &ConnectorLimits) -> Delivery {
    let mut backoff = limits.backoff_initial;
    let jitter_seed = intent.key.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    for attempt in 1..=limits.attempts_max {
        match connector.deliver(intent).await {
            Ok(detail) => return Delivery { status: DispatchStatus::Delivered, detail, attempts: attempt },
            Err(DeliveryError::Permanent(d)) => return Delivery { status: DispatchStatus::FailedPermanent, detail: d, attempts: attempt },
            Err(DeliveryError::Transient(d)) => {
                if attempt == limits.attempts_max {
                    return Delivery { status: DispatchStatus::FailedTransient, detail: d, attempts: attempt };
                }
                let jitter = Duration::from_millis((jitter_seed.rotate_left(attempt) % 100) * backoff.as_millis() as u64 / 400);
                tokio::time::sleep(backoff + jitter).await;
                backoff = (backoff * 2).min(limits.backoff_max);
            }
        }
    }
    Delivery { status: DispatchStatus::FailedTransient, detail: "no attempts configured".into(), attempts: 0 }
}

/// Supervises connector actors and restarts any that fail.
struct Supervisor;

struct SupervisorState {
    specs: HashMap<String, (Arc<dyn Connector>, ConnectorLimits)>,
    routes: Arc<std::sync::Mutex<HashMap<String, ActorRef<ConnectorMsg>>>>,
}

impl Actor for Supervisor {
    type Msg = ();
    type State = SupervisorState;
    type Arguments = SupervisorState;

    async fn pre_start(&self, me: ActorRef<()>, st: SupervisorState) -> Result<SupervisorState, ActorProcessingErr> {
        for (channel, (c, l)) in &st.specs {
            let (a, _) = Actor::spawn_linked(None, ConnectorActor, (c.clone(), l.clone()), me.get_cell()).await?;
            st.routes.lock().expect("routes lock").insert(channel.clone(), a);
        }
        Ok(st)
    }

    async fn handle_supervisor_evt(&self, me: ActorRef<()>, evt: SupervisionEvent, st: &mut SupervisorState) -> Result<(), ActorProcessingErr> {
        let failed = match &evt {
            SupervisionEvent::ActorFailed(cell, err) => Some((cell.get_id(), err.to_string())),
            SupervisionEvent::ActorTerminated(cell, _, reason) => Some((cell.get_id(), reason.clone().unwrap_or_else(|| "terminated".into()))),
            _ => None,
        };
        if let Some((cell_id, err)) = failed {
            let failed: Vec<String> =
                st.routes.lock().expect("routes lock").iter().filter(|(_, a)| a.get_id() == cell_id).map(|(c, _)| c.clone()).collect();
            for channel in failed {
                tracing::warn!(%channel, error = %err, "connector actor failed; restarting it");
                let (c, l) = st.specs[&channel].clone();
                let (a, _) = Actor::spawn_linked(None, ConnectorActor, (c, l), me.get_cell()).await?;
                st.routes.lock().expect("routes lock").insert(channel, a);
            }
        }
        Ok(())
    }
}

/// Routes intents to the connector of their channel. Cheap to clone.
#[derive(Clone)]
pub struct Connectors {
    routes: Arc<std::sync::Mutex<HashMap<String, ActorRef<ConnectorMsg>>>>,
    supervisor: ActorRef<()>,
}

impl Connectors {
    /// Start one supervised actor per (channel, connector).
    pub async fn start(channels: Vec<(String, Arc<dyn Connector>, ConnectorLimits)>) -> Result<Connectors, String> {
        let routes = Arc::new(std::sync::Mutex::new(HashMap::new()));
        let specs = channels.into_iter().map(|(ch, c, l)| (ch, (c, l))).collect();
        let (supervisor, _) = Actor::spawn(None, Supervisor, SupervisorState { specs, routes: routes.clone() })
            .await
            .map_err(|e| format!("start connectors: {e}"))?;
        Ok(Connectors { routes, supervisor })
    }

    pub fn channels(&self) -> Vec<String> {
        let mut c: Vec<String> = self.routes.lock().expect("routes lock").keys().cloned().collect();
        c.sort();
        c
    }

    /// Deliver one intent; resolves with the final outcome (after retries).
    pub async fn deliver(&self, intent: Intent) -> Delivery {
        let actor = self.routes.lock().expect("routes lock").get(&intent.channel).cloned();
        let Some(actor) = actor else {
            return Delivery { status: DispatchStatus::FailedPermanent, detail: format!("no connector configured for channel {}", intent.channel), attempts: 0 };
        };
        match actor.call(|reply| ConnectorMsg::Deliver(Box::new(intent), reply), None).await {
            Ok(ractor::rpc::CallResult::Success(d)) => d,
            _ => Delivery { status: DispatchStatus::FailedTransient, detail: "connector restarted during delivery".into(), attempts: 0 },
        }
    }

    pub fn stop(&self) {
        self.supervisor.stop(None);
    }
}
