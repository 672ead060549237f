//! Channel connectors (SPEC §8): each channel's provider behind a supervised actor
//! with bounded concurrency and retries with exponential backoff for transient errors.
//! The capture connector stores messages locally (idempotently by key) so a new user
//! sees messages without a provider account; `smtp` sends email over SMTP, `twilio` SMS
//! and MMS, `fcm` and `apns` push, and `webhook` makes signed HTTP calls (Standard
//! Webhooks). Each actor also applies a token-bucket rate limit and a circuit breaker.
//! Connectors never decide anything: they
//! deliver intents, and they read no environment variables (secrets named by `*_env`
//! settings are looked up through a function the binary passes in).

pub mod apns;
pub mod capture;
pub mod fcm;
pub mod provider;
pub mod smtp;
pub mod twilio;
pub mod webhook;

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
    /// Worth retrying, but not before the delay the provider asked for (an HTTP
    /// `Retry-After`); retries wait at most [`ConnectorLimits::retry_after_max`].
    #[error("transient delivery error (retry after {secs}s): {0}", secs = .1.as_secs())]
    TransientAfter(String, Duration),
}

impl DeliveryError {
    /// Whether another attempt may succeed.
    pub fn is_transient(&self) -> bool {
        !matches!(self, DeliveryError::Permanent(_))
    }

    /// The human-readable detail, without the kind.
    pub fn detail(&self) -> &str {
        match self {
            DeliveryError::Transient(d) | DeliveryError::Permanent(d) | DeliveryError::TransientAfter(d, _) => d,
        }
    }
}

/// Looks up a secret by the name a `*_env` setting gives (binaries pass
/// `&|name| std::env::var(name).ok()`; tests pass a map). Library crates never read the
/// environment themselves.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The rendered message an intent carries (`Intent::content`), or a permanent error
/// naming the intent when it was not rendered or is not for `channel`.
pub fn rendered_content(intent: &Intent, channel: &str) -> Result<chorus_templates::Content, DeliveryError> {
    if intent.content.trim().is_empty() {
        return Err(DeliveryError::Permanent(format!(
            "intent {} (template {}) has no rendered content: the {channel} connector needs a rendered {channel} message",
            intent.key, intent.template
        )));
    }
    let rendered: chorus_templates::Rendered =
        serde_json::from_str(&intent.content).map_err(|e| DeliveryError::Permanent(format!("intent {}: rendered content is not valid: {e}", intent.key)))?;
    if rendered.content.channel() != channel {
        return Err(DeliveryError::Permanent(format!("intent {}: rendered content is a {} message, not {channel}", intent.key, rendered.content.channel())));
    }
    Ok(rendered.content)
}

/// A provider of one or more channels.
pub trait Connector: Send + Sync + 'static {
    fn name(&self) -> &str;
    /// Deliver one intent. Providers that take idempotency keys get `intent.key`, so
    /// delivering the same key twice sends once ([`Connector::honours_idempotency_key`]).
    fn deliver<'a>(&'a self, intent: &'a Intent) -> Pin<Box<dyn Future<Output = Result<String, DeliveryError>> + Send + 'a>>;
    /// Whether the provider itself de-duplicates by the intent key (documented
    /// idempotency keys, Standard Webhooks ids, APNs collapse ids, our own capture
    /// store). When it does not (Twilio's Messages API, SMTP), the dispatcher records a
    /// durable "attempt started" before each call and, when it finds one without an
    /// outcome (a crash between the call and the recorded outcome), asks
    /// [`Connector::reconcile`] before sending again.
    fn honours_idempotency_key(&self) -> bool {
        true
    }
    /// Whether the provider has this intent's message already (an attempt started at
    /// `attempted_ms` has no recorded outcome). `Unknown` when the provider cannot be
    /// asked; the channel's `uncertain` policy decides then.
    fn reconcile<'a>(&'a self, _intent: &'a Intent, _attempted_ms: i64) -> Pin<Box<dyn Future<Output = Reconciled> + Send + 'a>> {
        Box::pin(async { Reconciled::Unknown(format!("{} cannot look a message up", self.name())) })
    }
}

/// Lookups of one uncertain attempt before its channel's policy decides.
pub const RECONCILE_ATTEMPTS_MAX: u32 = 4;
/// Wait before the second lookup (doubling after).
const RECONCILE_BACKOFF_INITIAL: Duration = Duration::from_millis(500);

/// What a provider says about a message whose attempt has no recorded outcome.
#[derive(Clone, Debug, PartialEq)]
pub enum Reconciled {
    /// It has it (the detail names it, e.g. its sid): record it as delivered.
    Found(String),
    /// It has no such message: send it.
    Absent,
    /// It cannot tell (no lookup, or the lookup failed: why).
    Unknown(String),
}

/// What to do with an uncertain attempt the provider cannot reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Uncertain {
    /// Send again: a duplicate is possible, a lost message is not.
    Resend,
    /// Do not send again: a lost message is possible (it goes to the dead-letter list,
    /// from where an operator can re-drive it), a duplicate is not.
    Skip,
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
    /// The longest wait honoured for a provider's `Retry-After` before the next attempt
    /// (a longer hint is waited this long, then retried).
    pub retry_after_max: Duration,
    /// Deliveries started per second (a token bucket with a one-second burst); 0 means
    /// no limit. Providers' own rate limits are honoured without burning attempts.
    pub rate_per_sec: u32,
    /// Messages in a row that end in a transient failure (retries exhausted) before the
    /// circuit opens: while open, nothing is attempted and intents wait in the outbox.
    pub breaker_failures_max: u32,
    /// What an attempt without a recorded outcome that the provider cannot reconcile
    /// becomes (only for providers that do not honour idempotency keys).
    pub uncertain: Uncertain,
    /// How long the circuit stays open before one message tries again.
    pub breaker_cooldown: Duration,
}

/// A circuit breaker over a connector's final outcomes.
#[derive(Default)]
struct Breaker {
    consecutive: u32,
    open_until: Option<tokio::time::Instant>,
}

/// A token bucket: `rate` tokens per second, holding at most `rate` (a second's burst).
struct TokenBucket {
    rate: f64,
    state: tokio::sync::Mutex<(f64, tokio::time::Instant)>,
}

impl TokenBucket {
    fn new(rate: u32) -> Option<TokenBucket> {
        (rate > 0).then(|| TokenBucket { rate: rate as f64, state: tokio::sync::Mutex::new((rate as f64, tokio::time::Instant::now())) })
    }

    /// Wait until a token is available and take it.
    async fn take(&self) {
        let mut s = self.state.lock().await;
        loop {
            let now = tokio::time::Instant::now();
            s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.rate).min(self.rate);
            s.1 = now;
            if s.0 >= 1.0 {
                s.0 -= 1.0;
                return;
            }
            tokio::time::sleep(Duration::from_secs_f64((1.0 - s.0) / self.rate)).await;
        }
    }
}

impl Default for ConnectorLimits {
    fn default() -> Self {
        ConnectorLimits {
            concurrency_max: 64,
            attempts_max: 5,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            retry_after_max: Duration::from_secs(60),
            uncertain: Uncertain::Resend,
            rate_per_sec: 0,
            breaker_failures_max: 5,
            breaker_cooldown: Duration::from_secs(30),
        }
    }
}

/// The final outcome of delivering an intent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub status: DispatchStatus,
    pub detail: String,
    pub attempts: u32,
    /// Not attempted (the provider's circuit is open): leave the intent in the outbox
    /// and offer it again after this long. No outcome is recorded.
    pub retry_later: Option<Duration>,
}

pub enum ConnectorMsg {
    Deliver(Box<Intent>, RpcReplyPort<Delivery>),
}

struct ConnectorActor;

struct ConnectorState {
    connector: Arc<dyn Connector>,
    limits: ConnectorLimits,
    permits: Arc<tokio::sync::Semaphore>,
    bucket: Option<TokenBucket>,
    breaker: Arc<std::sync::Mutex<Breaker>>,
}

impl Actor for ConnectorActor {
    type Msg = ConnectorMsg;
    type State = ConnectorState;
    type Arguments = (Arc<dyn Connector>, ConnectorLimits);

    async fn pre_start(&self, _me: ActorRef<ConnectorMsg>, (connector, limits): Self::Arguments) -> Result<ConnectorState, ActorProcessingErr> {
        let permits = Arc::new(tokio::sync::Semaphore::new(limits.concurrency_max));
        let bucket = TokenBucket::new(limits.rate_per_sec);
        Ok(ConnectorState { connector, limits, permits, bucket, breaker: Arc::default() })
    }

    async fn handle(&self, _me: ActorRef<ConnectorMsg>, msg: ConnectorMsg, st: &mut ConnectorState) -> Result<(), ActorProcessingErr> {
        let ConnectorMsg::Deliver(intent, reply) = msg;
        // An open circuit: the provider keeps failing; do not burn attempts on it.
        let open = st.breaker.lock().expect("breaker lock").open_until.and_then(|t| t.checked_duration_since(tokio::time::Instant::now()));
        if let Some(wait) = open {
            let detail = format!(
                "circuit open: {} failed {} messages in a row; trying again in {}s",
                st.connector.name(),
                st.limits.breaker_failures_max,
                wait.as_secs().max(1)
            );
            let _ = reply.send(Delivery { status: DispatchStatus::FailedTransient, detail, attempts: 0, retry_later: Some(wait) });
            return Ok(());
        }
        // Bounded concurrency: wait for a slot here, so the mailbox (bounded by the
        // dispatcher's in-flight limit) holds the rest.
        let permit = st.permits.clone().acquire_owned().await?;
        // The rate limit holds the mailbox too: the dispatcher's in-flight bound stops
        // it from reading more of the outbox meanwhile.
        if let Some(b) = &st.bucket {
            b.take().await;
        }
        let connector = st.connector.clone();
        let limits = st.limits.clone();
        let breaker = st.breaker.clone();
        tokio::spawn(async move {
            let delivery = deliver_with_retries(connector.as_ref(), &intent, &limits).await;
            drop(permit);
            {
                let mut b = breaker.lock().expect("breaker lock");
                if delivery.status == DispatchStatus::FailedTransient && delivery.attempts > 0 {
                    b.consecutive += 1;
                    if limits.breaker_failures_max > 0 && b.consecutive >= limits.breaker_failures_max {
                        tracing::warn!(
                            connector = connector.name(),
                            failures = b.consecutive,
                            cooldown_s = limits.breaker_cooldown.as_secs(),
                            "circuit open: pausing deliveries"
                        );
                        b.open_until = Some(tokio::time::Instant::now() + limits.breaker_cooldown);
                    }
                } else {
                    b.consecutive = 0;
                    b.open_until = None;
                }
            }
            let _ = reply.send(delivery);
        });
        Ok(())
    }
}

/// Deliver with exponential backoff (deterministic jitter from the key) on transient
/// errors; a provider's retry-after hint lengthens the wait (up to `retry_after_max`).
pub async fn deliver_with_retries(connector: &dyn Connector, intent: &Intent, limits: &ConnectorLimits) -> Delivery {
    let mut backoff = limits.backoff_initial;
    let jitter_seed = intent.key.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    for attempt in 1..=limits.attempts_max {
        let (detail, hint) = match connector.deliver(intent).await {
            Ok(detail) => {
                return Delivery { status: DispatchStatus::Delivered, detail, attempts: attempt, retry_later: None };
            }
            Err(DeliveryError::Permanent(d)) => {
                return Delivery { status: DispatchStatus::FailedPermanent, detail: d, attempts: attempt, retry_later: None };
            }
            Err(DeliveryError::Transient(d)) => (d, Duration::ZERO),
            Err(DeliveryError::TransientAfter(d, after)) => (d, after.min(limits.retry_after_max)),
        };
        if attempt == limits.attempts_max {
            return Delivery { status: DispatchStatus::FailedTransient, detail, attempts: attempt, retry_later: None };
        }
        let jitter = Duration::from_millis((jitter_seed.rotate_left(attempt) % 100) * backoff.as_millis() as u64 / 400);
        tokio::time::sleep((backoff + jitter).max(hint)).await;
        backoff = (backoff * 2).min(limits.backoff_max);
    }
    Delivery { status: DispatchStatus::FailedTransient, detail: "no attempts configured".into(), attempts: 0, retry_later: None }
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
            let failed: Vec<String> = st.routes.lock().expect("routes lock").iter().filter(|(_, a)| a.get_id() == cell_id).map(|(c, _)| c.clone()).collect();
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
    /// Per channel: its connector and limits (for attempt records and reconciliation).
    specs: Arc<HashMap<String, (Arc<dyn Connector>, ConnectorLimits)>>,
    /// Per channel: lookups at the provider in flight, bounded like its deliveries.
    lookups: Arc<HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

impl Connectors {
    /// Start one supervised actor per (channel, connector).
    pub async fn start(channels: Vec<(String, Arc<dyn Connector>, ConnectorLimits)>) -> Result<Connectors, String> {
        let routes = Arc::new(std::sync::Mutex::new(HashMap::new()));
        let specs: HashMap<String, (Arc<dyn Connector>, ConnectorLimits)> = channels.into_iter().map(|(ch, c, l)| (ch, (c, l))).collect();
        let (supervisor, _) = Actor::spawn(None, Supervisor, SupervisorState { specs: specs.clone(), routes: routes.clone() })
            .await
            .map_err(|e| format!("start connectors: {e}"))?;
        let lookups = specs.iter().map(|(ch, (_, l))| (ch.clone(), Arc::new(tokio::sync::Semaphore::new(l.concurrency_max.max(1))))).collect();
        Ok(Connectors { routes, supervisor, specs: Arc::new(specs), lookups: Arc::new(lookups) })
    }

    /// Whether `channel`'s provider does not de-duplicate by key, so each attempt is
    /// recorded before it is made.
    pub fn records_attempts(&self, channel: &str) -> bool {
        self.specs.get(channel).is_some_and(|(c, _)| !c.honours_idempotency_key())
    }

    /// Ask `intent`'s provider whether it has the message of an attempt started at
    /// `attempted_ms`.
    pub async fn reconcile(&self, intent: &Intent, attempted_ms: i64) -> Reconciled {
        let (Some((c, _)), Some(permits)) = (self.specs.get(&intent.channel), self.lookups.get(&intent.channel)) else {
            return Reconciled::Unknown(format!("no connector configured for channel {}", intent.channel));
        };
        let Ok(_permit) = permits.acquire().await else { return Reconciled::Unknown("the connectors are stopping".into()) };
        // A lookup that fails (a timeout, a 5xx) is tried again before the channel's
        // uncertain policy decides: skipping loses a message, resending may double it.
        let mut wait = RECONCILE_BACKOFF_INITIAL;
        for _ in 1..RECONCILE_ATTEMPTS_MAX {
            match c.reconcile(intent, attempted_ms).await {
                Reconciled::Unknown(_) => {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                known => return known,
            }
        }
        c.reconcile(intent, attempted_ms).await
    }

    /// Deliveries the channel's connector makes at once.
    pub fn concurrency(&self, channel: &str) -> usize {
        self.specs.get(channel).map_or(1, |(_, l)| l.concurrency_max.max(1))
    }

    /// The channel's policy for attempts that cannot be reconciled.
    pub fn uncertain_policy(&self, channel: &str) -> Uncertain {
        self.specs.get(channel).map_or(Uncertain::Resend, |(_, l)| l.uncertain)
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
            return Delivery {
                status: DispatchStatus::FailedPermanent,
                detail: format!("no connector configured for channel {}", intent.channel),
                attempts: 0,
                retry_later: None,
            };
        };
        match actor.call(|reply| ConnectorMsg::Deliver(Box::new(intent), reply), None).await {
            Ok(ractor::rpc::CallResult::Success(d)) => d,
            _ => Delivery { status: DispatchStatus::FailedTransient, detail: "connector restarted during delivery".into(), attempts: 0, retry_later: None },
        }
    }

    pub fn stop(&self) {
        self.supervisor.stop(None);
    }
}

#[cfg(test)]
mod rate_tests {
    use super::*;

    /// A provider that is down.
    struct Down(std::sync::atomic::AtomicU32);
    impl Connector for Down {
        fn name(&self) -> &str {
            "down"
        }
        fn deliver<'a>(&'a self, _intent: &'a Intent) -> Pin<Box<dyn Future<Output = Result<String, DeliveryError>> + Send + 'a>> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async { Err(DeliveryError::Transient("503 service unavailable".into())) })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rule_a_failing_provider_opens_the_circuit_and_intents_wait() {
        let down = Arc::new(Down(0.into()));
        let limits = ConnectorLimits {
            attempts_max: 2,
            backoff_initial: Duration::from_millis(1),
            breaker_failures_max: 3,
            breaker_cooldown: Duration::from_secs(30),
            ..Default::default()
        };
        let c = Connectors::start(vec![("sms".into(), down.clone() as Arc<dyn Connector>, limits)]).await.unwrap();
        let intent = |k: &str| Intent {
            key: k.into(),
            customer: chorus_types::CustomerId::new(0, 1),
            channel: "sms".into(),
            template: "t".into(),
            category: chorus_types::Category::Marketing,
            to: "+14155550123".into(),
            vars: Default::default(),
            journey: String::new(),
            created_ms: 0,
            content: String::new(),
        };
        for k in ["a", "b", "c"] {
            let d = c.deliver(intent(k)).await;
            assert_eq!((d.status, d.attempts, d.retry_later), (DispatchStatus::FailedTransient, 2, None));
        }
        let calls = down.0.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(calls, 6);
        // Open: nothing is attempted; the intent waits.
        let d = c.deliver(intent("d")).await;
        assert_eq!(d.attempts, 0);
        assert!(d.retry_later.is_some_and(|w| w <= Duration::from_secs(30)), "{d:?}");
        assert!(d.detail.starts_with("circuit open: down failed 3 messages in a row"), "{}", d.detail);
        assert_eq!(down.0.load(std::sync::atomic::Ordering::SeqCst), calls);
        // After the cooldown one message tries again.
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(c.deliver(intent("e")).await.attempts, 2);
        c.stop();
    }

    #[tokio::test(start_paused = true)]
    async fn rule_the_token_bucket_spaces_deliveries_at_the_rate() {
        let b = TokenBucket::new(10).unwrap();
        let start = tokio::time::Instant::now();
        for _ in 0..10 {
            b.take().await; // the first second's burst
        }
        assert!(start.elapsed() < Duration::from_millis(1));
        for _ in 0..5 {
            b.take().await;
        }
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(499) && waited <= Duration::from_millis(520), "{waited:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_types::{Category, CustomerId, JsonMap};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A provider that asks to wait `after` once, then accepts.
    struct Throttled {
        calls: AtomicU32,
        after: Duration,
    }

    impl Connector for Throttled {
        fn name(&self) -> &str {
            "throttled"
        }
        fn deliver<'a>(&'a self, _i: &'a Intent) -> Pin<Box<dyn Future<Output = Result<String, DeliveryError>> + Send + 'a>> {
            Box::pin(async move {
                match self.calls.fetch_add(1, Ordering::SeqCst) {
                    0 => Err(DeliveryError::TransientAfter("429 (retry after)".into(), self.after)),
                    _ => Ok("200".into()),
                }
            })
        }
    }

    fn intent() -> Intent {
        Intent {
            key: "k".into(),
            customer: CustomerId::new(1, 2),
            channel: "webhook".into(),
            template: "t".into(),
            category: Category::Transactional,
            to: String::new(),
            vars: JsonMap::new(),
            journey: String::new(),
            created_ms: 1,
            content: String::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rule_retry_after_hint_is_honoured_up_to_retry_after_max() {
        let limits = ConnectorLimits { backoff_initial: Duration::from_millis(10), retry_after_max: Duration::from_secs(60), ..Default::default() };
        for (after, waited_min, waited_max) in [
            (Duration::from_secs(7), Duration::from_secs(7), Duration::from_secs(8)),
            (Duration::from_secs(3600), Duration::from_secs(60), Duration::from_secs(61)),
        ] {
            let c = Throttled { calls: AtomicU32::new(0), after };
            let start = tokio::time::Instant::now();
            let d = deliver_with_retries(&c, &intent(), &limits).await;
            let waited = start.elapsed();
            assert_eq!((d.status, d.attempts), (DispatchStatus::Delivered, 2));
            assert!(waited >= waited_min && waited < waited_max, "hint {after:?}: waited {waited:?}");
        }
    }

    #[test]
    fn delivery_error_kinds() {
        let e = DeliveryError::TransientAfter("429 Too Many Requests".into(), Duration::from_secs(7));
        assert_eq!(e.to_string(), "transient delivery error (retry after 7s): 429 Too Many Requests");
        assert!(e.is_transient() && DeliveryError::Transient("x".into()).is_transient());
        assert!(!DeliveryError::Permanent("x".into()).is_transient());
        assert_eq!(e.detail(), "429 Too Many Requests");
    }
}
