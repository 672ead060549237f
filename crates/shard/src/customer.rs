//! The customer actor: holds one active customer's state in memory and applies that
//! customer's inputs, one at a time and in log order, through the pure decision core.
//! It never touches the store for writes: it returns the encoded state and the shard
//! persists it atomically with the rest of the apply round.

use crate::ShardConfig;
use chorus_engine::{CustomerState, DecisionKind};
use chorus_types::{CustomerId, DispatchOutcome, DispatchStatus, Event, Identity, Intent, SendRequest};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::Arc;

/// One input for a customer, produced by the shard's apply path.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum CustomerInput {
    Event(Event),
    /// Link an identity (its index record points here).
    Link(Identity),
    /// Remove an identity re-linked to another customer ("last login wins").
    Unlink {
        identity: Identity,
        to: CustomerId,
    },
    /// Record an identity conflict decision.
    Conflict {
        identity: Identity,
        other: CustomerId,
    },
    /// Decide a send now (API send, or a scheduled send whose timer fired).
    Send(SendRequest),
    /// Record that a send was scheduled on a durable timer.
    Scheduled {
        request: SendRequest,
        at_ms: i64,
    },
    /// The outcome of delivering one of this customer's intents.
    Outcome(DispatchOutcome),
    /// A journey timer fired.
    JourneyTimer {
        journey: String,
        entry_key: String,
        seq: u64,
    },
    /// A paused journey was resumed or archived: held instances move on.
    JourneyWake {
        journey: String,
    },
    /// Re-evaluate the customer's audiences (an audience was applied).
    Evaluate,
    /// A scheduled entry enrolls the customer in `journey` (its audience's member).
    Enroll {
        journey: String,
        at_ms: i64,
    },
}

/// The journeys the core runs (every version, compiled once per catalog change), their
/// lifecycles and the cluster settings, shared by every actor of the shard.
pub type JourneyCatalog = Arc<chorus_engine::journey::run::RunCatalog>;

/// What the actor hands back after applying inputs.
#[derive(Debug)]
pub struct Applied {
    pub id: CustomerId,
    /// The state's change, to persist with the round.
    pub write: crate::state::StateWrite,
    /// Intents to record in the outbox, in decision order.
    pub intents: Vec<Intent>,
    /// Durable timers to set: (due ms, timer).
    pub timers: Vec<(i64, chorus_types::Timer)>,
    /// Journey counters: (journey, version, step, what, value).
    pub stats: Vec<StatDelta>,
    /// Journeys this customer now holds in because they are paused.
    pub held: Vec<String>,
    /// Audience membership changes: (audience, member now).
    pub membership: Vec<(String, bool)>,
    /// Outbox intents to cancel if they have not gone out yet.
    pub cancelled: Vec<String>,
    /// Engagement-tracking records of rendered messages.
    pub tracks: Vec<chorus_engine::render::TrackRecord>,
}

/// One journey counter increment.
pub type StatDelta = (String, u32, String, String, f64);

pub enum CustomerMsg {
    Apply {
        inputs: Arc<Vec<(i64, CustomerInput)>>,
        catalog: JourneyCatalog,
        reply: RpcReplyPort<Applied>,
    },
    /// A copy of the current state.
    Get(RpcReplyPort<CustomerState>),
    /// Replace the state (after a merge computed by the shard); replies with the encoding.
    Replace(Box<CustomerState>, RpcReplyPort<Applied>),
}

pub struct CustomerActor;

pub struct CustomerArgs {
    pub config: Arc<ShardConfig>,
    pub state: CustomerState,
}

pub struct Live {
    config: Arc<ShardConfig>,
    state: CustomerState,
}

impl Actor for CustomerActor {
    type Msg = CustomerMsg;
    type State = Live;
    type Arguments = CustomerArgs;

    async fn pre_start(&self, _me: ActorRef<Self::Msg>, args: CustomerArgs) -> Result<Live, ActorProcessingErr> {
        Ok(Live { config: args.config, state: args.state })
    }

    async fn handle(&self, _me: ActorRef<Self::Msg>, msg: CustomerMsg, live: &mut Live) -> Result<(), ActorProcessingErr> {
        match msg {
            CustomerMsg::Apply { inputs, catalog, reply } => {
                let mut intents = Vec::new();
                let mut timers = Vec::new();
                let mut stats = Vec::new();
                let mut held = Vec::new();
                let mut cancelled = Vec::new();
                let mut tracks = Vec::new();
                let before = live.state.segments.clone();
                let (seq0, len0) = (live.state.history_seq, live.state.history.len());
                for (now_ms, input) in inputs.iter() {
                    apply_input(&mut live.state, input, *now_ms, &live.config, &catalog, &mut intents, &mut tracks, &mut timers);
                    let mut out = JourneyOutput {
                        intents: &mut intents,
                        timers: &mut timers,
                        stats: &mut stats,
                        held: &mut held,
                        cancelled: &mut cancelled,
                        tracks: &mut tracks,
                    };
                    run_journeys(&mut live.state, input, *now_ms, &live.config, &catalog, &mut out);
                    run_audiences(&mut live.state, input, *now_ms, &live.config, &catalog, &mut out);
                }
                let membership = membership_changes(&before, &live.state.segments);
                let write = crate::state::StateWrite::since(&mut live.state, seq0, len0);
                let _ = reply.send(Applied { id: live.state.id, write, intents, timers, stats, held, membership, cancelled, tracks });
            }
            CustomerMsg::Get(reply) => {
                let _ = reply.send(live.state.clone());
            }
            CustomerMsg::Replace(state, reply) => {
                let membership = membership_changes(&live.state.segments, &state.segments);
                live.state = *state;
                let _ = reply.send(Applied {
                    id: live.state.id,
                    write: crate::state::StateWrite::whole(&mut live.state),
                    intents: Vec::new(),
                    timers: Vec::new(),
                    stats: Vec::new(),
                    held: Vec::new(),
                    membership,
                    cancelled: Vec::new(),
                    tracks: Vec::new(),
                });
            }
        }
        Ok(())
    }
}

/// (audience, member now) for every difference between two sorted membership lists.
fn membership_changes(before: &[String], after: &[String]) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = before.iter().filter(|a| !after.contains(a)).map(|a| (a.clone(), false)).collect();
    out.extend(after.iter().filter(|a| !before.contains(a)).map(|a| (a.clone(), true)));
    out
}

/// Re-evaluate the customer's audiences after an input that can change what they
/// match; each change becomes an `audience.entered` / `audience.exited` event that is
/// recorded in the history and runs the journeys (audience entries, exits, goals).
fn run_audiences(state: &mut CustomerState, input: &CustomerInput, now_ms: i64, config: &ShardConfig, catalog: &JourneyCatalog, out: &mut JourneyOutput<'_>) {
    use chorus_engine::audience::{change_event, evaluate_audiences, forget_removed};
    let relevant = matches!(
        input,
        CustomerInput::Event(_)
            | CustomerInput::Link(_)
            | CustomerInput::Unlink { .. }
            | CustomerInput::Evaluate
            | CustomerInput::JourneyTimer { .. }
            | CustomerInput::JourneyWake { .. }
    );
    if !relevant || state.is_tombstone() || (catalog.audiences.is_empty() && state.segments.is_empty()) {
        return;
    }
    forget_removed(state, &catalog.audiences);
    for (audience, entered) in evaluate_audiences(state, &catalog.audiences, now_ms, &config.engine) {
        let event = change_event(state, &audience, entered, now_ms);
        chorus_engine::apply_event(state, &event, now_ms, &config.engine);
        run_journeys(state, &CustomerInput::Event(event), now_ms, config, catalog, out);
    }
}

/// Where the journey effects of a batch of inputs are collected.
pub struct JourneyOutput<'a> {
    pub intents: &'a mut Vec<Intent>,
    pub timers: &'a mut Vec<(i64, chorus_types::Timer)>,
    pub stats: &'a mut Vec<StatDelta>,
    pub held: &'a mut Vec<String>,
    pub cancelled: &'a mut Vec<String>,
    pub tracks: &'a mut Vec<chorus_engine::render::TrackRecord>,
}

/// Run the journeys on an event or a journey timer (after the profile was updated).
pub fn run_journeys(
    state: &mut CustomerState,
    input: &CustomerInput,
    now_ms: i64,
    config: &ShardConfig,
    catalog: &JourneyCatalog,
    out: &mut JourneyOutput<'_>,
) {
    use chorus_engine::journey::run::{Effect, Input, on_input};
    if state.is_tombstone() {
        return;
    }
    let effects = match input {
        // Opens feed the best-hour histogram, and an opt-out cancels undelivered sends,
        // even when no journey runs.
        CustomerInput::Event(e) if !catalog.journeys.is_empty() || e.name.ends_with(".opened") || !state.pending_intents.is_empty() => {
            on_input(state, &Input::Event(e), catalog, now_ms, &config.engine)
        }
        CustomerInput::JourneyTimer { journey, entry_key, seq } => {
            on_input(state, &Input::Timer { journey, entry_key, seq: *seq }, catalog, now_ms, &config.engine)
        }
        CustomerInput::JourneyWake { journey } => on_input(state, &Input::Wake { journey }, catalog, now_ms, &config.engine),
        CustomerInput::Outcome(o) => {
            let delivered = o.status == DispatchStatus::Delivered;
            on_input(state, &Input::Outcome { key: &o.idempotency_key, delivered, detail: &o.detail }, catalog, now_ms, &config.engine)
        }
        CustomerInput::Enroll { journey, at_ms } => {
            let event = enroll_event(state, journey, *at_ms);
            on_input(state, &Input::Event(&event), catalog, now_ms, &config.engine)
        }
        _ => return,
    };
    for e in effects {
        match e {
            Effect::Send(i) => out.intents.push(i),
            Effect::Timer { journey, entry_key, seq, at_ms } => {
                out.timers.push((at_ms, chorus_types::Timer::Journey { customer: state.id, journey, entry_key, seq }))
            }
            Effect::Stat { journey, version, step, what, value } => out.stats.push((journey, version, step, what, value)),
            Effect::Held { journey } => out.held.push(journey),
            Effect::Cancel { key } => out.cancelled.push(key),
            Effect::Track(r) => out.tracks.push(r),
            Effect::Trigger { .. } => {}
        }
    }
}

/// The event a scheduled entry enrolls a customer with (deterministic per run).
fn enroll_event(state: &CustomerState, journey: &str, at_ms: i64) -> Event {
    use chorus_engine::journey::run::ENROLL_EVENT;
    let input = chorus_types::EventInput {
        message_id: format!("{ENROLL_EVENT}/{journey}/{}/{at_ms}", state.id),
        name: ENROLL_EVENT.into(),
        identities: vec![("user_id".into(), state.id.to_string())],
        properties: serde_json::json!({"journey": journey, "scheduled_at_ms": at_ms}).as_object().cloned().unwrap_or_default(),
        timestamp_ms: at_ms,
        ..Default::default()
    };
    let mut e = input.validate().expect("a well-formed enroll event");
    e.identities.clear();
    e
}

/// Apply one input with the decision core. Pure given (state, input, now, config,
/// settings). Intents the core decided to send are appended to `intents`.
pub fn apply_input(
    state: &mut CustomerState,
    input: &CustomerInput,
    now_ms: i64,
    config: &ShardConfig,
    catalog: &chorus_engine::journey::run::RunCatalog,
    intents: &mut Vec<Intent>,
    tracks: &mut Vec<chorus_engine::render::TrackRecord>,
    timers: &mut Vec<(i64, chorus_types::Timer)>,
) {
    let cfg = &config.engine;
    let settings = &catalog.settings;
    match input {
        // Handled by `run_journeys`.
        CustomerInput::JourneyTimer { .. } | CustomerInput::JourneyWake { .. } | CustomerInput::Enroll { .. } | CustomerInput::Evaluate => {}
        CustomerInput::Send(req) => {
            match chorus_engine::decide_send(state, req, now_ms, cfg, catalog) {
                (chorus_engine::SendDecision::Send(intent), record) => {
                    intents.push(intent);
                    tracks.extend(record);
                }
                // Quiet hours: the same request (same key) is tried again when they end.
                (chorus_engine::SendDecision::Defer { until_ms, .. }, _) => {
                    timers.push((until_ms, chorus_types::Timer::Send(SendRequest { send_at_ms: until_ms, ..req.clone() })));
                }
                (chorus_engine::SendDecision::Skip { .. }, _) => {}
            }
        }
        CustomerInput::Scheduled { request, at_ms } => {
            state.decide(
                cfg,
                now_ms,
                DecisionKind::Scheduled,
                "send_at in the future",
                format!("{} {} at {} ms (request {})", request.channel, request.template, at_ms, request.request_id),
            );
        }
        CustomerInput::Outcome(o) => {
            let (kind, reason) = match o.status {
                DispatchStatus::Delivered => (DecisionKind::Delivered, "provider accepted"),
                DispatchStatus::FailedPermanent => (DecisionKind::DeliveryFailed, "permanent error"),
                DispatchStatus::FailedTransient => (DecisionKind::DeliveryFailed, "gave up after retries"),
            };
            state.decide(cfg, now_ms, kind, reason, format!("{}: {}", o.idempotency_key, o.detail));
        }
        CustomerInput::Event(e) => {
            if config.fault_panic_event.as_deref() == Some(e.name.as_str()) {
                panic!("fault injection: customer {} panics on event {:?}", state.id, e.name);
            }
            // Every identity seen with the customer is theirs (index records were
            // settled by the shard before this input was produced).
            for id in &e.identities {
                if !state.has_identity(id) && state.link_identity(cfg, now_ms, id) && state.event_count > 0 {
                    state.decide(cfg, now_ms, DecisionKind::IdentityLinked, "seen together in an event", id.to_string());
                }
            }
            if state.event_count == 0 && state.decisions.is_empty() {
                state.decide(cfg, now_ms, DecisionKind::Created, "first seen", format!("{} {:?} ({})", e.event_type.as_str(), e.name, e.message_id));
            }
            let ledger_before = state.consent.ledger.len();
            chorus_engine::apply_event(state, e, now_ms, cfg);
            // SMS keywords, the help reply and double opt-in.
            for req in chorus_engine::consent::after_event(state, e, ledger_before, settings, now_ms, cfg) {
                if let (chorus_engine::SendDecision::Send(intent), record) = chorus_engine::decide_send(state, &req, now_ms, cfg, catalog) {
                    intents.push(intent);
                    tracks.extend(record);
                }
            }
        }
        CustomerInput::Link(id) => {
            if state.link_identity(cfg, now_ms, id) {
                state.decide(cfg, now_ms, DecisionKind::IdentityLinked, "seen together in an event", id.to_string());
            }
        }
        CustomerInput::Unlink { identity, to } => {
            if state.unlink_identity(identity) {
                state.decide(
                    cfg,
                    now_ms,
                    DecisionKind::IdentityConflict,
                    "last login wins",
                    format!("{identity} re-linked to {to}: merging would exceed a limit of 1"),
                );
            }
        }
        CustomerInput::Conflict { identity, other } => {
            state.decide(
                cfg,
                now_ms,
                DecisionKind::IdentityConflict,
                "last login wins",
                format!("{identity} taken over from {other}: merging would exceed a limit of 1"),
            );
        }
    }
}
