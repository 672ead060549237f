//! The journey interpreter (SPEC §6): pure functions that move a customer through the
//! journeys of the catalog on each input (an event or a timer) and return effects
//! (intents to send, timers to set, journeys to trigger, stats). Every decision goes to
//! the customer's decision log with its reason. No I/O, no clock: `now_ms` comes in.
//!
//! Implemented: entry by event (filter, re-entry never/always/cooldown, one instance per
//! journey, deterministic holdout), exit criteria, goals with window and value,
//! `on_goal` triggers, versions (instances stay on their version unless the latest one
//! migrates their step), pause/resume/archive, and the steps send (the SPEC §5.1 order of
//! checks: recheck, consent, contact point, quiet hours, caps with skip/defer/fallback,
//! priority arbitration, idempotent keys), wait (durations, local clock targets,
//! best hour), wait_for (events and conditions, timeout), branch, split, update,
//! trigger and exit.
//! Not yet: per-entry-key concurrency, audience and schedule entries.

use super::model::*;
use crate::expr::{Expr, Scope, compile, evaluate, evaluate_bool};
use crate::guard::{self, CapCheck, JourneyCaps, Settings};
use crate::messaging::{SendDecision, evaluate as check_send};
use crate::{CustomerState, DecisionKind, EngineConfig};
use chorus_types::{Category, Event, Intent, SendRequest};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Engagement seen for one step of one instance (`steps.<id>.*` in expressions).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepFlags {
    pub sent: bool,
    pub delivered: bool,
    pub opened: bool,
    pub clicked: bool,
    pub converted: bool,
    pub failed: bool,
}

/// A customer's position in one journey.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub journey: String,
    pub version: u32,
    pub step: String,
    pub entry_key: String,
    pub entered_ms: i64,
    pub holdout: bool,
    /// The pending timer's sequence number (0: none).
    pub timer_seq: u64,
    pub steps: BTreeMap<String, StepFlags>,
    pub path: Vec<String>,
    pub converted: bool,
    pub sends: u32,
    /// The entry event's name and properties (JSON text), for `entry.*`.
    pub entry_event: Option<(String, String)>,
    /// The journey ended for this entry but its goal window is still open: only goal
    /// events are watched (conversions count per entry within the window, SPEC §6).
    pub done: bool,
    /// Set while the instance waits at a send step that was deferred.
    pub deferred: Option<Deferral>,
    /// The journey is paused: the instance holds at `step` until it resumes.
    pub held: bool,
}

/// Why and until when a send waits (SPEC §5: quiet hours, caps, arbitration).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Deferral {
    /// When the send was first deferred (`defer_max` counts from here).
    pub since_ms: i64,
    pub until_ms: i64,
    pub reason: String,
    /// Held for the arbitration window: released once, without holding again.
    pub arbitration: bool,
}

/// A journey's lifecycle (SPEC §6 "Versions").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lifecycle {
    Active,
    /// No new entries; in-flight customers hold at their next step.
    Paused,
    /// No new entries; in-flight customers exit at their next step.
    Archived,
}

impl Lifecycle {
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Active => "active",
            Lifecycle::Paused => "paused",
            Lifecycle::Archived => "archived",
        }
    }
}

/// The journeys that run — every stored version, so customers in flight finish on
/// theirs — with each journey's lifecycle, and the settings sends are checked against.
#[derive(Clone, Default)]
pub struct RunCatalog {
    pub journeys: Vec<Arc<Compiled>>,
    pub lifecycle: BTreeMap<String, Lifecycle>,
    pub settings: Settings,
    /// Audiences, evaluated on every change to a customer, in this order.
    pub audiences: Vec<Arc<crate::audience::CompiledAudience>>,
    /// Scheduled journeys → when their entry last ran.
    pub schedule_runs: BTreeMap<String, i64>,
    /// Templates by id (latest version); sends render with them at decision time.
    pub templates: BTreeMap<String, Arc<chorus_templates::Template>>,
}

impl RunCatalog {
    /// The latest version of `id`.
    pub fn latest(&self, id: &str) -> Option<&Compiled> {
        self.journeys.iter().filter(|c| c.def.id == id).max_by_key(|c| c.version).map(|c| c.as_ref())
    }
    pub fn version(&self, id: &str, version: u32) -> Option<&Compiled> {
        self.journeys.iter().find(|c| c.def.id == id && c.version == version).map(|c| c.as_ref())
    }
    pub fn lifecycle(&self, id: &str) -> Lifecycle {
        self.lifecycle.get(id).copied().unwrap_or(Lifecycle::Active)
    }
    /// The latest version of every journey, in catalog order.
    pub fn latest_versions(&self) -> Vec<&Compiled> {
        let mut out: Vec<&Compiled> = Vec::new();
        for c in &self.journeys {
            match out.iter_mut().find(|x| x.def.id == c.def.id) {
                Some(x) if x.version < c.version => *x = c,
                Some(_) => {}
                None => out.push(c),
            }
        }
        out
    }
}

/// A journey version ready to run: the definition with its expressions compiled.
pub struct Compiled {
    pub def: JourneyDef,
    pub version: u32,
    exprs: HashMap<String, Expr>,
    index: HashMap<String, usize>,
}

impl Compiled {
    pub fn new(def: JourneyDef, version: u32) -> Result<Compiled, String> {
        let mut exprs = HashMap::new();
        for (_, src) in super::expressions(&def) {
            let e = compile(&src).map_err(|e| format!("{src:?}: {e}"))?;
            exprs.insert(src, e);
        }
        let index = def.steps.iter().enumerate().map(|(i, s)| (s.id.clone(), i)).collect();
        Ok(Compiled { def, version, exprs, index })
    }
    fn step(&self, id: &str) -> Option<&Step> {
        self.index.get(id).map(|i| &self.def.steps[*i])
    }
    fn expr(&self, src: &str) -> &Expr {
        self.exprs.get(src).expect("every expression of a journey is compiled")
    }
}

/// What the shard must do after the interpreter ran.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    Send(Intent),
    /// Wake `journey` (instance `entry_key`) at `at_ms` with timer `seq`.
    Timer {
        journey: String,
        entry_key: String,
        seq: u64,
        at_ms: i64,
    },
    /// Enroll the customer in another journey (by API-style entry).
    Trigger {
        journey: String,
    },
    /// Count for journey stats: (journey, version, step, what, value). `what` is
    /// `entered`, `exited`, `converted`, `sent:<channel>`, `skipped:<reason>`,
    /// `deferred:<reason>`, `fallback:<channel>`, … (holdout variants end in `_holdout`).
    Stat {
        journey: String,
        version: u32,
        step: String,
        what: String,
        value: f64,
    },
    /// The instance holds because its journey is paused: wake it on resume.
    Held {
        journey: String,
    },
    /// Take this intent out of the outbox if it has not gone yet (exit, opt-out).
    Cancel {
        key: String,
    },
    /// Keep this record for engagement tracking (open pixel, clicks, unsubscribe).
    Track(crate::render::TrackRecord),
}

/// The event that enrolls a customer in a journey whose entry is `api` (or a
/// schedule): properties `{"journey": id, ...}` (the rest is the entry event's data).
pub const ENROLL_EVENT: &str = "journey.enroll";

/// What woke the interpreter.
pub enum Input<'a> {
    Event(&'a Event),
    Timer {
        journey: &'a str,
        entry_key: &'a str,
        seq: u64,
    },
    /// The journey was resumed or archived: held instances move on (or exit).
    Wake {
        journey: &'a str,
    },
    /// The outcome of delivering one of the customer's intents.
    Outcome {
        key: &'a str,
        delivered: bool,
        detail: &'a str,
    },
}

/// Deterministic per-customer bucket in [0, 10000) for holdouts and splits.
pub fn bucket(customer: &str, salt: &str) -> u32 {
    let h = chorus_types::routing::stable_hash(format!("{customer}\0{salt}").as_bytes());
    (h % 10_000) as u32
}

fn steps_value(inst: &Instance) -> Value {
    Value::Object(inst.steps.iter().map(|(k, f)| (k.clone(), serde_json::to_value(f).unwrap_or(Value::Null))).collect())
}

struct Run<'a> {
    cfg: &'a EngineConfig,
    now: i64,
    effects: Vec<Effect>,
    catalog: &'a RunCatalog,
}

impl<'a> Run<'a> {
    fn scope<'s>(&self, state: &'s CustomerState, event: Option<&'s Event>, inst: Option<&Instance>) -> Scope<'s>
    where
        'a: 's,
    {
        // Before entry (filter, entry key) the entry event is the current one.
        let entry = match inst {
            Some(i) => i.entry_event.as_ref().map(|(name, props)| {
                let props = if props.is_empty() { Value::Object(Default::default()) } else { serde_json::from_str(props).unwrap_or(Value::Null) };
                serde_json::json!({"name": name, "properties": props})
            }),
            None => event.map(crate::expr::event_value),
        };
        Scope {
            state,
            event,
            entry: entry.unwrap_or(Value::Null),
            steps: inst.map(steps_value).unwrap_or(Value::Null),
            segments: &state.segments,
            now_ms: self.now,
        }
    }

    fn cond(&self, j: &Compiled, src: &str, state: &CustomerState, event: Option<&Event>, inst: Option<&Instance>) -> Result<bool, String> {
        evaluate_bool(j.expr(src), &self.scope(state, event, inst))
    }

    fn stat(&mut self, j: &Compiled, step: &str, what: impl Into<String>, value: f64) {
        self.effects.push(Effect::Stat { journey: j.def.id.clone(), version: j.version, step: step.to_string(), what: what.into(), value });
    }
    fn settings(&self) -> &'a Settings {
        &self.catalog.settings
    }
}

/// The compiled version an instance runs on.
fn version_of<'c>(catalog: &'c RunCatalog, inst: &Instance) -> Option<&'c Compiled> {
    catalog.version(&inst.journey, inst.version)
}

/// Apply one input to every journey of `catalog` for this customer.
pub fn on_input(state: &mut CustomerState, input: &Input<'_>, catalog: &RunCatalog, now_ms: i64, cfg: &EngineConfig) -> Vec<Effect> {
    let mut run = Run { cfg, now: now_ms, effects: Vec::new(), catalog };
    if let Input::Event(e) = input {
        if matches!(e.name.as_str(), "email.opened" | "push.opened") {
            guard::record_open(state, now_ms, &catalog.settings);
        }
    }
    migrate(state, &mut run);
    match input {
        Input::Event(event) => {
            // 0. An opt-out acts at once on sends waiting on that channel or topic: they
            // are decided again now (skipped, or sent on a fallback channel).
            cancel_opted_out(state, &mut run);
            // 1. In-flight instances: engagement, exits, goals, wait_for events/conditions.
            let mut i = 0;
            while i < state.journeys.len() {
                let Some(j) = version_of(catalog, &state.journeys[i]) else {
                    i += 1;
                    continue;
                };
                if on_event_in_instance(state, i, j, event, &mut run) {
                    i += 1;
                }
            }
            // 2. Entries, into the latest version of active journeys.
            let reserved = matches!(event.name.as_str(), crate::audience::AUDIENCE_ENTERED | ENROLL_EVENT);
            let props: Value =
                if reserved && !event.properties.is_empty() { serde_json::from_str(&event.properties).unwrap_or(Value::Null) } else { Value::Null };
            let prop = |k: &str| props.get(k).and_then(Value::as_str).unwrap_or_default();
            for j in catalog.latest_versions() {
                let enters = match &j.def.entry.trigger {
                    Trigger::Event(name) => *name == event.name,
                    Trigger::Audience(a) => event.name == crate::audience::AUDIENCE_ENTERED && prop("audience") == a,
                    Trigger::Api | Trigger::Schedule { .. } => event.name == ENROLL_EVENT && prop("journey") == j.def.id,
                };
                if enters && catalog.lifecycle(&j.def.id) == Lifecycle::Active {
                    try_enter(state, j, Some(event), &mut run);
                }
            }
        }
        Input::Timer { journey, entry_key, seq } => {
            let Some(pos) = state.journeys.iter().position(|x| x.journey == *journey && x.entry_key == *entry_key && !x.done) else {
                return run.effects;
            };
            if state.journeys[pos].timer_seq != *seq {
                return run.effects; // stale: the instance moved on or the timer was cancelled
            }
            let Some(j) = version_of(catalog, &state.journeys[pos]) else {
                return run.effects;
            };
            state.journeys[pos].timer_seq = 0;
            let step = j.step(&state.journeys[pos].step).cloned();
            match step.as_ref().map(|s| &s.kind) {
                Some(StepKind::Send { .. }) if state.journeys[pos].deferred.is_some() => release_deferred(state, &mut run),
                Some(StepKind::Wait(_)) => {
                    advance(state, pos, j, step.as_ref().and_then(|s| s.next.clone()), "timer", None, &mut run);
                }
                Some(StepKind::WaitFor { on_timeout, .. }) => {
                    advance(state, pos, j, Some(on_timeout.clone()), "timer", None, &mut run);
                }
                // A migrated instance whose new step does not wait: run it now.
                Some(_) => {
                    execute(state, pos, j, None, &mut run);
                }
                None => {
                    finish(state, pos, j, "unknown step", &mut run);
                }
            }
        }
        Input::Outcome { key, delivered, detail } => on_outcome(state, key, *delivered, detail, &mut run),
        Input::Wake { journey } => {
            let mut i = 0;
            while i < state.journeys.len() {
                let inst = &state.journeys[i];
                if inst.journey != *journey || !inst.held || inst.done {
                    i += 1;
                    continue;
                }
                let Some(j) = version_of(catalog, inst) else {
                    i += 1;
                    continue;
                };
                state.journeys[i].held = false;
                if execute(state, i, j, None, &mut run) {
                    i += 1;
                }
            }
        }
    }
    // Triggers from goals and trigger steps enter other journeys now.
    let triggers: Vec<String> = run.effects.iter().filter_map(|e| if let Effect::Trigger { journey } = e { Some(journey.clone()) } else { None }).collect();
    for t in triggers {
        if let Some(j) = catalog.latest(&t) {
            if catalog.lifecycle(&t) == Lifecycle::Active {
                try_enter(state, j, None, &mut run);
            }
        }
    }
    run.effects
}

/// Attribute a delivery outcome to the journey step that sent it: `steps.<id>.delivered`
/// / `failed` in expressions, and the step's counters by channel and reason.
fn on_outcome(state: &mut CustomerState, key: &str, delivered: bool, detail: &str, run: &mut Run<'_>) {
    let Some(p) = crate::messaging::settle(state, key) else {
        return;
    };
    if !delivered {
        if let Some(status) = crate::messaging::contact_status_of_failure(detail) {
            crate::messaging::mark_contact(state, &p.to, status, detail, run.now, run.cfg);
        }
    }
    if p.journey.is_empty() {
        return;
    }
    let Some(j) = run.catalog.version(&p.journey, p.version) else {
        return;
    };
    let what = if delivered { format!("delivered:{}", p.channel) } else { format!("failed:{}:{}", p.channel, failure_reason(detail)) };
    run.stat(j, &p.step, what, 1.0);
    let Some(i) = state.journeys.iter().position(|x| x.journey == p.journey && x.entry_key == p.entry_key) else {
        return;
    };
    let flags = state.journeys[i].steps.entry(p.step.clone()).or_default();
    if delivered {
        flags.delivered = true;
    } else {
        flags.failed = true;
    }
    // A waiting instance may move on (`when: steps.x.failed`).
    if state.journeys[i].done || state.journeys[i].version != j.version {
        return;
    }
    if let Some(Step { kind: StepKind::WaitFor { branches, .. }, .. }) = j.step(&state.journeys[i].step).cloned() {
        for b in &branches {
            if run.cond(j, &b.when, state, None, Some(&state.journeys[i])) == Ok(true) {
                advance(state, i, j, Some(b.next.clone()), &format!("condition {}", b.when), None, run);
                return;
            }
        }
    }
}

/// A short, stable reason for failure counters from a connector's detail text.
fn failure_reason(detail: &str) -> String {
    let d = detail.to_ascii_lowercase();
    let reason = if d.contains("bounce") {
        "bounced"
    } else if d.contains("unregistered") || d.contains("invalid token") {
        "unregistered"
    } else if d.contains("invalid") || d.contains("bad address") || d.contains("undeliverable") {
        "invalid_address"
    } else if d.contains("rate") || d.contains("429") {
        "rate_limited"
    } else if d.contains("timeout") || d.contains("timed out") {
        "timeout"
    } else if d.contains("template") {
        "template"
    } else {
        "error"
    };
    reason.to_string()
}

/// Cancel the pending intents matching `which`: out of the outbox if not gone yet.
fn cancel_pending(state: &mut CustomerState, run: &mut Run<'_>, reason: &str, which: impl Fn(&crate::messaging::PendingIntent) -> bool) {
    let (cancel, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut state.pending_intents).into_iter().partition(|p| which(p));
    state.pending_intents = keep;
    for p in cancel {
        state.decide(
            run.cfg,
            run.now,
            DecisionKind::Skipped,
            format!("cancelled: {reason}"),
            format!(
                "{} {} (key {}) if not delivered yet",
                p.channel,
                if p.journey.is_empty() { "api send".to_string() } else { format!("{} {}", p.journey, p.step) },
                p.key
            ),
        );
        run.effects.push(Effect::Cancel { key: p.key });
    }
}

/// Decide again, now, every deferred send whose channel or topic is opted out, and
/// cancel undelivered intents on opted-out channels.
fn cancel_opted_out(state: &mut CustomerState, run: &mut Run<'_>) {
    let out_channels: Vec<String> = state.consent.channels.iter().filter(|(_, e)| e.status == crate::ConsentStatus::OptedOut).map(|(c, _)| c.clone()).collect();
    if !out_channels.is_empty() && state.pending_intents.iter().any(|p| out_channels.contains(&p.channel)) {
        cancel_pending(state, run, "opted out", |p| out_channels.contains(&p.channel));
    }
    let mut i = 0;
    while i < state.journeys.len() {
        let inst = &state.journeys[i];
        let blocked = match (&inst.deferred, version_of(run.catalog, inst)) {
            (Some(_), Some(j)) => match j.step(&inst.step).map(|s| &s.kind) {
                Some(StepKind::Send { channel, topic, .. }) => {
                    let out = |e: Option<&crate::ConsentEntry>| e.is_some_and(|e| e.status == crate::ConsentStatus::OptedOut);
                    out(state.consent.channels.get(channel))
                        || topic.as_ref().is_some_and(|t| j.def.category == Category::Marketing && out(state.consent.topics.get(t)))
                }
                _ => false,
            },
            _ => false,
        };
        if blocked {
            let j = version_of(run.catalog, &state.journeys[i]).expect("checked above");
            state.journeys[i].timer_seq = 0;
            if !execute(state, i, j, None, run) {
                continue; // the instance ended
            }
        }
        i += 1;
    }
}

/// Move in-flight instances of older versions whose step the latest version maps
/// (`migrate:`). A migrated instance that lands on a waiting step keeps its pending
/// timer (the deadline carries over); one that lands on any other step runs on when the
/// timer fires, or at once if it had none.
fn migrate(state: &mut CustomerState, run: &mut Run<'_>) {
    for i in 0..state.journeys.len() {
        let inst = &state.journeys[i];
        if inst.done {
            continue;
        }
        let Some(latest) = run.catalog.latest(&inst.journey) else {
            continue;
        };
        if latest.version <= inst.version {
            continue;
        }
        let Some(to) = latest.def.migrate.get(&inst.step).cloned() else {
            continue;
        };
        let from = format!("v{} {}", inst.version, inst.step);
        let inst = &mut state.journeys[i];
        inst.version = latest.version;
        inst.step = to.clone();
        inst.deferred = None;
        state.decide(
            run.cfg,
            run.now,
            DecisionKind::Advanced,
            format!("migrated to v{}", latest.version),
            format!("{}: {from} → v{} {to}", latest.def.id, latest.version),
        );
    }
}

/// How long after entering an instance that has ended still counts engagement with what
/// it sent (and, within the goal window, conversions): the goal window, or
/// [`ENGAGEMENT_WINDOW_MS`] for a journey without a goal.
fn after_end_window_ms(j: &Compiled) -> i64 {
    j.def.goal.as_ref().map_or(ENGAGEMENT_WINDOW_MS, |g| g.within_ms)
}

/// How long a journey without a goal keeps counting opens and clicks of its messages
/// after the customer finished it.
pub const ENGAGEMENT_WINDOW_MS: i64 = 7 * 86_400_000;

/// Opens, clicks and deliveries of a message name its journey and step (tracking links
/// carry them): set the step's flags and count unique engagement.
fn attribute_engagement(state: &mut CustomerState, i: usize, j: &Compiled, event: &Event, run: &mut Run<'_>) {
    if !matches!(event.name.split_once('.'), Some(("email" | "push" | "in_app" | "sms", _))) {
        return;
    }
    let props: Value = if event.properties.is_empty() { Value::Null } else { serde_json::from_str(&event.properties).unwrap_or(Value::Null) };
    if props.get("journey").and_then(Value::as_str) != Some(j.def.id.as_str()) {
        return;
    }
    let Some(step) = props.get("step").and_then(Value::as_str) else { return };
    let flags = state.journeys[i].steps.entry(step.to_string()).or_default();
    let before = flags.clone();
    match event.name.as_str() {
        "email.opened" | "push.opened" | "in_app.viewed" => flags.opened = true,
        "email.clicked" | "push.clicked" | "in_app.clicked" | "sms.clicked" => {
            flags.clicked = true;
            flags.opened = true;
        }
        "email.delivered" | "sms.delivered" | "push.delivered" => flags.delivered = true,
        _ => {}
    }
    // Engagement counts once per step and entry (unique opens and clicks).
    let (opened, clicked) = (flags.opened && !before.opened, flags.clicked && !before.clicked);
    if opened {
        run.stat(j, step, "engaged:opened", 1.0);
    }
    if clicked {
        run.stat(j, step, "engaged:clicked", 1.0);
    }
}

/// Returns false when the instance was removed (exited or finished).
fn on_event_in_instance(state: &mut CustomerState, i: usize, j: &Compiled, event: &Event, run: &mut Run<'_>) -> bool {
    if state.journeys[i].done {
        // The journey ended for this entry: engagement with what it sent still counts,
        // and so does the goal, while the window after its entry is open.
        if run.now - state.journeys[i].entered_ms > after_end_window_ms(j) {
            state.journeys.remove(i);
            return false;
        }
        attribute_engagement(state, i, j, event, run);
        let inst = state.journeys[i].clone();
        if let Some(g) = &j.def.goal {
            if !inst.converted && g.event == event.name && run.now - inst.entered_ms <= g.within_ms {
                let ok = g.filter.as_ref().map(|f| run.cond(j, f, state, Some(event), Some(&inst)) == Ok(true)).unwrap_or(true);
                if ok {
                    convert(state, &inst, j, g, event, run);
                    state.journeys[i].converted = true;
                }
            }
        }
        return true;
    }
    attribute_engagement(state, i, j, event, run);
    // Exit criteria apply at once, from any step.
    for rule in &j.def.exit {
        if rule.event == event.name {
            let pass = match &rule.filter {
                None => Ok(true),
                Some(f) => run.cond(j, f, state, Some(event), Some(&state.journeys[i])),
            };
            if pass == Ok(true) {
                let inst = state.journeys.remove(i);
                state.decide(run.cfg, run.now, DecisionKind::Exited, format!("exit event {}", event.name), format!("{} at step {}", j.def.id, inst.step));
                run.stat(j, &inst.step, "exited", 1.0);
                run.stat(j, "", format!("exit:event {}", event.name), 1.0);
                run.stat(j, "", path_stat(&inst), 1.0);
                let (jid, key) = (inst.journey.clone(), inst.entry_key.clone());
                cancel_pending(state, run, &format!("{jid} exited on {}", event.name), |p| p.journey == jid && p.entry_key == key);
                // Goal first if the exit event is also the goal.
                if let Some(g) = &j.def.goal {
                    if g.event == event.name && !inst.converted && run.now - inst.entered_ms <= g.within_ms {
                        convert(state, &inst, j, g, event, run);
                    }
                }
                return false;
            }
        }
    }
    if let Some(g) = &j.def.goal {
        let inst = &state.journeys[i];
        if g.event == event.name && !inst.converted && run.now - inst.entered_ms <= g.within_ms {
            let ok = g.filter.as_ref().map(|f| run.cond(j, f, state, Some(event), Some(inst)) == Ok(true)).unwrap_or(true);
            if ok {
                let inst = inst.clone();
                state.journeys[i].converted = true;
                convert(state, &inst, j, g, event, run);
            }
        }
    }
    // A waiting instance may move on.
    let step = j.step(&state.journeys[i].step).cloned();
    if let Some(Step { kind: StepKind::WaitFor { events, branches, .. }, .. }) = step {
        for m in &events {
            if m.event == event.name {
                let ok = m.filter.as_ref().map(|f| run.cond(j, f, state, Some(event), Some(&state.journeys[i])) == Ok(true)).unwrap_or(true);
                if ok {
                    return advance(state, i, j, Some(m.next.clone()), &format!("event {}", event.name), Some(event), run);
                }
            }
        }
        for b in &branches {
            if run.cond(j, &b.when, state, Some(event), Some(&state.journeys[i])) == Ok(true) {
                return advance(state, i, j, Some(b.next.clone()), &format!("condition {}", b.when), Some(event), run);
            }
        }
    }
    true
}

fn convert(state: &mut CustomerState, inst: &Instance, j: &Compiled, g: &Goal, event: &Event, run: &mut Run<'_>) {
    let value = match &g.value {
        Some(v) => evaluate(j.expr(v), &run.scope(state, Some(event), Some(inst))).ok().and_then(|v| v.as_f64()).unwrap_or(0.0),
        None => 0.0,
    };
    state.decide(
        run.cfg,
        run.now,
        DecisionKind::Converted,
        format!("goal {}", g.event),
        format!("{} value {value} after {} ms{}", j.def.id, run.now - inst.entered_ms, if inst.holdout { " (holdout)" } else { "" }),
    );
    run.stat(j, &inst.step, if inst.holdout { "converted_holdout" } else { "converted" }, value);
    if !inst.holdout {
        run.stat(j, "", format!("ttc:{}", ttc_bucket(run.now - inst.entered_ms)), (run.now - inst.entered_ms) as f64);
    }
    if let Some(t) = &j.def.on_goal_trigger {
        run.effects.push(Effect::Trigger { journey: t.clone() });
    }
}

fn try_enter(state: &mut CustomerState, j: &Compiled, event: Option<&Event>, run: &mut Run<'_>) {
    let id = j.def.id.clone();
    // The instance's entry key: the journey id, or the value of `entry_key` (e.g. an
    // order id) so one customer can be in the journey once per key.
    let key = match &j.def.entry.entry_key {
        None => id.clone(),
        Some(src) => match evaluate(j.expr(src), &run.scope(state, event, None)) {
            Ok(Value::String(s)) if !s.is_empty() => s,
            Ok(Value::Number(n)) => n.to_string(),
            Ok(other) => {
                state.decide(run.cfg, run.now, DecisionKind::Skipped, "expression error", format!("{id} entry_key gave {other}, not a string or number"));
                return;
            }
            Err(e) => {
                state.decide(run.cfg, run.now, DecisionKind::Skipped, "expression error", format!("{id} entry_key: {e}"));
                return;
            }
        },
    };
    if state.journeys.iter().any(|x| x.journey == id && x.entry_key == key && !x.done) {
        return; // already in the journey with this key
    }
    let active = state.journeys.iter().filter(|x| x.journey == id && !x.done).count() as u32;
    if active >= j.def.entry.max_concurrent {
        if j.def.entry.entry_key.is_some() {
            state.decide(
                run.cfg,
                run.now,
                DecisionKind::Skipped,
                "max_concurrent reached",
                format!("{id} key {key}: already in it {active} time(s) (max_concurrent {})", j.def.entry.max_concurrent),
            );
        }
        return;
    }
    // Re-entry counts per journey, or per key for keyed journeys.
    let entries_key = if j.def.entry.entry_key.is_some() { format!("{id}\u{0}{key}") } else { id.clone() };
    match (&j.def.entry.reentry, state.journey_entries.get(&entries_key)) {
        (Reentry::Never, Some(_)) => return,
        (Reentry::Cooldown { ms }, Some(last)) if run.now - last < *ms => return,
        _ => {}
    }
    if let Some(f) = &j.def.entry.filter {
        match run.cond(j, f, state, event, None) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                state.decide(run.cfg, run.now, DecisionKind::Skipped, "expression error", format!("{id} entry filter: {e}"));
                return;
            }
        }
    }
    state.journeys.retain(|x| !(x.journey == id && x.entry_key == key)); // a finished entry's goal window ends here
    let holdout = (bucket(&state.id.to_string(), &id) as f64) < j.def.entry.holdout_percent * 100.0;
    let first = j.def.steps[0].id.clone();
    state.journey_entries.insert(entries_key, run.now);
    state.journeys.push(Instance {
        journey: id.clone(),
        version: j.version,
        step: first.clone(),
        entry_key: key.clone(),
        entered_ms: run.now,
        holdout,
        timer_seq: 0,
        steps: BTreeMap::new(),
        path: Vec::new(),
        converted: false,
        sends: 0,
        entry_event: event.map(|e| (e.name.clone(), e.properties.clone())),
        done: false,
        deferred: None,
        held: false,
    });
    let keyed = if j.def.entry.entry_key.is_some() { format!(" key {key}") } else { String::new() };
    state.decide(
        run.cfg,
        run.now,
        DecisionKind::Entered,
        event.map(|e| format!("event {}", e.name)).unwrap_or_else(|| "trigger".into()),
        format!("{id} v{}{keyed}{}", j.version, if holdout { " (holdout: never messaged)" } else { "" }),
    );
    run.stat(j, &first, if holdout { "entered_holdout" } else { "entered" }, 1.0);
    let pos = state.journeys.len() - 1;
    execute(state, pos, j, event, run);
}

/// Move instance `pos` to `next` (or finish) and run steps until one pauses.
/// Returns false when the instance finished.
fn advance(state: &mut CustomerState, pos: usize, j: &Compiled, next: Option<String>, reason: &str, event: Option<&Event>, run: &mut Run<'_>) -> bool {
    match next {
        Some(n) => {
            let from = std::mem::replace(&mut state.journeys[pos].step, n.clone());
            state.journeys[pos].timer_seq = 0;
            state.journeys[pos].deferred = None;
            state.decide(run.cfg, run.now, DecisionKind::Advanced, reason.to_string(), format!("{}: {from} → {n}", j.def.id));
            execute(state, pos, j, event, run)
        }
        None => finish(state, pos, j, "completed", run),
    }
}

/// Release every deferred send of this customer that is due, highest journey priority
/// first (SPEC §5.2), each re-checked from the start of the order of checks.
fn release_deferred(state: &mut CustomerState, run: &mut Run<'_>) {
    let mut due: Vec<(u8, i64, String, String)> = Vec::new();
    for inst in &state.journeys {
        if let (Some(d), false) = (&inst.deferred, inst.done) {
            if d.until_ms <= run.now {
                let priority = version_of(run.catalog, inst).map(|j| j.def.priority).unwrap_or(0);
                due.push((priority, d.until_ms, inst.journey.clone(), inst.entry_key.clone()));
            }
        }
    }
    due.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    for (_, _, journey, key) in due {
        let Some(pos) = state.journeys.iter().position(|x| x.journey == journey && x.entry_key == key && !x.done) else {
            continue;
        };
        let Some(j) = version_of(run.catalog, &state.journeys[pos]) else {
            continue;
        };
        state.journeys[pos].timer_seq = 0; // its own timer, if not the one that fired, is now stale
        execute(state, pos, j, None, run);
    }
}

/// Time-to-conversion histogram buckets (SPEC §10).
pub const TTC_BUCKETS: &[(&str, i64)] =
    &[("<1h", 3_600_000), ("1h-6h", 6 * 3_600_000), ("6h-24h", 86_400_000), ("1d-3d", 3 * 86_400_000), ("3d-7d", 7 * 86_400_000)];

fn ttc_bucket(ms: i64) -> &'static str {
    TTC_BUCKETS.iter().find(|(_, upto)| ms < *upto).map(|(b, _)| *b).unwrap_or(">7d")
}

/// Steps in a path counter (longer paths are cut, so paths stay few).
const PATH_STEPS_MAX: usize = 12;

/// `path:a>b>c` for the top-paths table.
fn path_stat(inst: &Instance) -> String {
    let mut p: Vec<&str> = Vec::new();
    for s in &inst.path {
        if p.last() != Some(&s.as_str()) {
            p.push(s);
        }
    }
    let cut = p.len() > PATH_STEPS_MAX;
    p.truncate(PATH_STEPS_MAX);
    format!("path:{}{}", p.join(">"), if cut { ">…" } else { "" })
}

fn finish(state: &mut CustomerState, pos: usize, j: &Compiled, reason: &str, run: &mut Run<'_>) -> bool {
    run.stat(j, "", format!("exit:{reason}"), 1.0);
    let path = path_stat(&state.journeys[pos]);
    run.stat(j, "", path, 1.0);
    let inst = &mut state.journeys[pos];
    let step = inst.step.clone();
    // Kept while engagement with what it sent, or an open goal, still counts.
    let watched = inst.sends > 0 || (j.def.goal.is_some() && !inst.converted);
    if watched && run.now - inst.entered_ms <= after_end_window_ms(j) {
        inst.done = true;
        inst.timer_seq = 0;
    } else {
        state.journeys.remove(pos);
    }
    state.decide(run.cfg, run.now, DecisionKind::Exited, reason.to_string(), format!("{} at step {step}", j.def.id));
    run.stat(j, &step, "exited", 1.0);
    false
}

/// Run steps from the instance's current step until one pauses or the journey ends.
fn execute(state: &mut CustomerState, pos: usize, j: &Compiled, event: Option<&Event>, run: &mut Run<'_>) -> bool {
    // Validation forbids cycles without a wait; the bound is a second line of defence.
    for _ in 0..(j.def.steps.len() * 2 + 2) {
        match run.catalog.lifecycle(&j.def.id) {
            Lifecycle::Active => {}
            Lifecycle::Archived => return finish(state, pos, j, "journey archived", run),
            Lifecycle::Paused => {
                // Hold at this step; a deferred send here is checked again on resume.
                let inst = &mut state.journeys[pos];
                inst.held = true;
                inst.deferred = None;
                inst.timer_seq = 0;
                let step = inst.step.clone();
                state.decide(run.cfg, run.now, DecisionKind::Scheduled, "journey paused", format!("{} holds at {step} until resumed", j.def.id));
                run.effects.push(Effect::Held { journey: j.def.id.clone() });
                return true;
            }
        }
        let Some(step) = j.step(&state.journeys[pos].step).cloned() else {
            return finish(state, pos, j, "unknown step", run);
        };
        if state.journeys[pos].deferred.is_none() {
            state.journeys[pos].path.push(step.id.clone());
        }
        let next = match &step.kind {
            StepKind::Send { .. } => match send(state, pos, j, &step, event, run) {
                Sent::Continue => step.next.clone(),
                Sent::Paused => return true,
                Sent::Ended => return false,
            },
            StepKind::Wait(WaitSpec::Duration { ms }) => {
                set_timer(state, pos, run.now + ms, run);
                return true;
            }
            StepKind::Wait(spec) => {
                let (tz, source) = guard::customer_zone(state, run.settings());
                let (at, what) = match spec {
                    WaitSpec::LocalTime { weekday, hour, minute } => {
                        let day = weekday.map(|w| format!("{} ", guard::weekday_name(w))).unwrap_or_default();
                        (guard::next_local_time(run.now, &tz, *weekday, *hour, *minute), format!("next {day}{hour:02}:{minute:02}"))
                    }
                    WaitSpec::BestHour => {
                        let h = guard::best_hour(state, run.settings());
                        (guard::next_local_time(run.now, &tz, None, h, 0), format!("best hour {h:02}:00"))
                    }
                    WaitSpec::Duration { .. } => unreachable!("handled above"),
                };
                state.decide(
                    run.cfg,
                    run.now,
                    DecisionKind::Scheduled,
                    what,
                    format!("{} {}: until {} in {source}", j.def.id, step.id, guard::describe_local(at, &tz)),
                );
                set_timer(state, pos, at, run);
                return true;
            }
            StepKind::WaitFor { branches, timeout_ms, .. } => {
                // A condition that already holds is taken at once.
                for b in branches {
                    if run.cond(j, &b.when, state, event, Some(&state.journeys[pos])) == Ok(true) {
                        return advance(state, pos, j, Some(b.next.clone()), &format!("condition {}", b.when), event, run);
                    }
                }
                set_timer(state, pos, run.now + timeout_ms, run);
                return true;
            }
            StepKind::Branch { branches, otherwise } => {
                let mut chosen = otherwise.clone();
                for b in branches {
                    match run.cond(j, &b.when, state, event, Some(&state.journeys[pos])) {
                        Ok(true) => {
                            chosen = b.next.clone();
                            break;
                        }
                        Ok(false) => {}
                        Err(e) => state.decide(run.cfg, run.now, DecisionKind::Skipped, "expression error", format!("{} {}: {e}", j.def.id, step.id)),
                    }
                }
                Some(chosen)
            }
            StepKind::Split { paths } => {
                let total: u32 = paths.iter().map(|(w, _)| *w).sum::<u32>().max(1);
                let point = bucket(&state.id.to_string(), &format!("{}/{}", j.def.id, step.id)) as u64 * total as u64 / 10_000;
                let mut acc = 0u64;
                let mut chosen = paths.last().map(|(_, n)| n.clone());
                for (w, n) in paths {
                    acc += *w as u64;
                    if point < acc {
                        chosen = Some(n.clone());
                        break;
                    }
                }
                chosen
            }
            StepKind::Update { set, unset } => {
                for (k, v) in set {
                    state.attributes.0.insert(k.clone(), v.0.clone());
                }
                for k in unset {
                    state.attributes.0.remove(k);
                }
                step.next.clone()
            }
            StepKind::Webhook { template } => {
                let as_send = Step {
                    id: step.id.clone(),
                    kind: StepKind::Send {
                        channel: "webhook".into(),
                        template: template.clone(),
                        fallback: Vec::new(),
                        when_capped: WhenCapped::Skip,
                        recheck: false,
                        topic: None,
                        when_quiet: WhenQuiet::Defer,
                    },
                    next: step.next.clone(),
                };
                match send(state, pos, j, &as_send, event, run) {
                    Sent::Continue => step.next.clone(),
                    Sent::Paused => return true,
                    Sent::Ended => return false,
                }
            }
            StepKind::Trigger { journey } => {
                run.effects.push(Effect::Trigger { journey: journey.clone() });
                step.next.clone()
            }
            StepKind::Exit => return finish(state, pos, j, "exit step", run),
        };
        match next {
            Some(n) => state.journeys[pos].step = n,
            None => return finish(state, pos, j, "completed", run),
        }
    }
    finish(state, pos, j, "step limit reached", run)
}

fn set_timer(state: &mut CustomerState, pos: usize, at_ms: i64, run: &mut Run<'_>) {
    state.timer_seq += 1;
    let seq = state.timer_seq;
    let inst = &mut state.journeys[pos];
    inst.timer_seq = seq;
    run.effects.push(Effect::Timer { journey: inst.journey.clone(), entry_key: inst.entry_key.clone(), seq, at_ms });
}

/// How a send step ended.
enum Sent {
    /// Sent or skipped: go on to the next step.
    Continue,
    /// Deferred: the instance waits at the step for its timer.
    Paused,
    /// The instance left the journey (no longer eligible).
    Ended,
}

/// A send step, in the order of checks of SPEC §5.1: (1) eligibility (`recheck`),
/// (2) channel and topic consent, (3) a contact point — trying fallback channels —,
/// (4) quiet hours, (5) caps and priority arbitration, (6) the idempotency key.
fn send(state: &mut CustomerState, pos: usize, j: &Compiled, step: &Step, event: Option<&Event>, run: &mut Run<'_>) -> Sent {
    let StepKind::Send { channel, template, fallback, when_capped, recheck, topic, when_quiet } = &step.kind else {
        return Sent::Continue;
    };
    let sid = step.id.as_str();
    let inst = state.journeys[pos].clone();
    let releasing = inst.deferred.clone();
    if inst.holdout {
        state.decide(run.cfg, run.now, DecisionKind::Skipped, "holdout", format!("{} {sid}: control group, not messaged", j.def.id));
        run.stat(j, sid, "skipped_holdout", 1.0);
        return Sent::Continue;
    }
    // 1. Still eligible?
    if *recheck {
        if let Some(f) = &j.def.entry.filter {
            match run.cond(j, f, state, event, Some(&inst)) {
                Ok(true) => {}
                Ok(false) => {
                    state.journeys[pos].deferred = None;
                    return if finish(state, pos, j, "no longer eligible (entry filter rechecked)", run) { Sent::Paused } else { Sent::Ended };
                }
                Err(e) => {
                    state.journeys[pos].deferred = None;
                    state.decide(run.cfg, run.now, DecisionKind::Skipped, "expression error", format!("{} {sid} recheck: {e}", j.def.id));
                    run.stat(j, sid, "skipped:expression", 1.0);
                    return Sent::Continue;
                }
            }
        }
    }
    let settings = run.settings();
    let (tz, tz_source) = guard::customer_zone(state, settings);
    let mut reasons: Vec<String> = Vec::new();
    let mut skip_code = "contact";
    let mut defer: Option<(i64, String, &'static str, bool)> = None;
    for (n, ch) in std::iter::once(channel.as_str()).chain(fallback.iter().map(String::as_str)).enumerate() {
        let req = SendRequest {
            request_id: format!("{}/v{}/{}/{}", j.def.id, j.version, inst.entry_key, sid),
            customer: state.id,
            channel: ch.to_string(),
            template: template.to_string(),
            category: j.def.category,
            vars: Default::default(),
            send_at_ms: 0,
            topic: topic.clone().unwrap_or_default(),
        };
        // 2–3. Consent and a contact point: on failure, try the next channel.
        let mut intent = match check_send(state, &req, settings) {
            SendDecision::Send(intent) => intent,
            SendDecision::Skip { reason, code } | SendDecision::Defer { reason, code, .. } => {
                reasons.push(format!("{ch}: {reason}"));
                skip_code = code;
                continue;
            }
        };
        let marketing = j.def.category == Category::Marketing;
        // 4. Quiet hours (transactional messages are exempt).
        if let (true, Some(quiet)) = (marketing, settings.quiet_hours.get(ch)) {
            if let Some(until) = guard::quiet_until(run.now, &tz, quiet) {
                let why = format!("{ch} quiet hours {} in {tz_source}", quiet.describe());
                match when_quiet {
                    WhenQuiet::Defer => {
                        defer = Some((until, why, "quiet_hours", false));
                        break;
                    }
                    WhenQuiet::Skip => {
                        reasons.push(format!("{ch}: {why}"));
                        skip_code = "quiet_hours";
                        continue;
                    }
                }
            }
        }
        // 5. Caps and priority.
        let jcaps =
            JourneyCaps { journey: &j.def.id, sends_this_entry: inst.sends, per_entry_max: j.def.sends_per_entry_max, per_day_max: j.def.sends_per_day_max };
        match guard::check_caps(state, settings, &tz, ch, j.def.category, Some(&jcaps), run.now) {
            CapCheck::Capped { rule, free_at_ms } => {
                let why = format!("{ch}: capped by {rule}");
                skip_code = "capped";
                match (when_capped, free_at_ms) {
                    (WhenCapped::Fallback, _) => {
                        reasons.push(why);
                        continue;
                    }
                    (WhenCapped::Defer, Some(free)) => {
                        defer = Some((free, format!("capped by {rule}"), "capped", false));
                        break;
                    }
                    (WhenCapped::Defer, None) => {
                        reasons.push(format!("{why} (no slot frees for this entry)"));
                        break;
                    }
                    (WhenCapped::Skip, _) => {
                        reasons.push(why);
                        break;
                    }
                }
            }
            CapCheck::Open { last_slot } => {
                let window = settings.arbitration_window_ms;
                if last_slot && window > 0 && !releasing.as_ref().is_some_and(|d| d.arbitration) {
                    // Join the customer's open arbitration batch, or open one.
                    let until = state
                        .journeys
                        .iter()
                        .filter_map(|x| x.deferred.as_ref().filter(|d| d.arbitration && d.until_ms >= run.now).map(|d| d.until_ms))
                        .min()
                        .unwrap_or(run.now + window);
                    defer = Some((
                        until,
                        format!(
                            "arbitration: {ch} would take the last slot of a cap; sends due within {} go by priority",
                            chorus_types::time::format_duration_ms(window)
                        ),
                        "arbitration",
                        true,
                    ));
                    break;
                }
            }
        }
        // 6. Send, with a key deterministic per (journey version, step, entry).
        intent.key = format!("j/{}/v{}/{}/{}/{}/{}", j.def.id, j.version, inst.entry_key, inst.entered_ms, sid, state.id);
        intent.journey = j.def.id.clone();
        intent.created_ms = run.now;
        // Render now: a template that cannot render for this customer is a decision.
        if let Some(t) = run.catalog.templates.get(template.as_str()) {
            let entry_props = inst.entry_event.as_ref().map(|(_, p)| p.as_str()).unwrap_or("");
            match crate::render::render_intent(state, &mut intent, t, Some((&j.def.id, sid)), entry_props, &run.cfg.tracking, run.now) {
                Ok(record) => run.effects.push(Effect::Track(record)),
                Err(e) => {
                    reasons.push(format!("{ch}: template error: {e}"));
                    skip_code = "template";
                    continue;
                }
            }
        }
        if n > 0 {
            state.decide(run.cfg, run.now, DecisionKind::Fallback, reasons.join("; "), format!("{} {sid}: {channel} → {ch}", j.def.id));
            run.stat(j, sid, format!("fallback:{ch}"), 1.0);
        }
        let waited = releasing
            .as_ref()
            .map(|d| format!(" after waiting since {} ({})", chorus_types::time::format_rfc3339_ms(d.since_ms), d.reason))
            .unwrap_or_default();
        state.decide(
            run.cfg,
            run.now,
            DecisionKind::Sent,
            format!("journey {}", j.def.id),
            format!("{sid}: {ch} {template} to {}{waited}", if intent.to.is_empty() { "-" } else { &intent.to }),
        );
        guard::record_contact(state, guard::Contact { at_ms: run.now, channel: ch.to_string(), category: j.def.category, journey: j.def.id.clone() });
        crate::messaging::track_pending(
            state,
            crate::messaging::PendingIntent {
                key: intent.key.clone(),
                channel: ch.to_string(),
                journey: j.def.id.clone(),
                version: j.version,
                step: sid.to_string(),
                entry_key: inst.entry_key.clone(),
                at_ms: run.now,
                to: intent.to.clone(),
            },
        );
        crate::inbox::store(state, &intent, run.now);
        let inst = &mut state.journeys[pos];
        inst.deferred = None;
        inst.steps.entry(sid.to_string()).or_default().sent = true;
        inst.sends += 1;
        run.stat(j, sid, format!("sent:{ch}"), 1.0);
        run.effects.push(Effect::Send(intent));
        return Sent::Continue;
    }
    if let Some((until, why, code, arbitration)) = defer {
        let since = releasing.as_ref().map(|d| d.since_ms).unwrap_or(run.now);
        if until - since <= settings.defer_max_ms {
            state.journeys[pos].deferred = Some(Deferral { since_ms: since, until_ms: until, reason: why.clone(), arbitration });
            set_timer(state, pos, until, run);
            state.decide(run.cfg, run.now, DecisionKind::Deferred, why, format!("{} {sid}: {channel} until {}", j.def.id, guard::describe_local(until, &tz)));
            run.stat(j, sid, format!("deferred:{code}"), 1.0);
            return Sent::Paused;
        }
        reasons.push(format!(
            "{why}: waiting until {} would exceed defer_max {}",
            guard::describe_local(until, &tz),
            chorus_types::time::format_duration_ms(settings.defer_max_ms)
        ));
        skip_code = "defer_max";
    }
    state.journeys[pos].deferred = None;
    state.decide(run.cfg, run.now, DecisionKind::Skipped, reasons.join("; "), format!("{} {sid}", j.def.id));
    run.stat(j, sid, format!("skipped:{skip_code}"), 1.0);
    Sent::Continue
}
