//! The journey interpreter (SPEC §6): pure functions that move a customer through the
//! journeys of the catalog on each input (an event or a timer) and return effects
//! (intents to send, timers to set, journeys to trigger, stats). Every decision goes to
//! the customer's decision log with its reason. No I/O, no clock: `now_ms` comes in.
//!
//! Implemented: entry by event (filter, re-entry never/always/cooldown, one instance per
//! journey, deterministic holdout), exit criteria, goals with window and value,
//! `on_goal` triggers, and the steps send (with fallback channels), wait (durations),
//! wait_for (events and conditions, timeout), branch, split, update, trigger and exit.
//! Not yet: local-time and best-hour waits (treated as errors), caps and quiet hours,
//! per-entry-key concurrency, audience and schedule entries.

use super::model::*;
use crate::expr::{Expr, Scope, compile, evaluate, evaluate_bool};
use crate::messaging::{SendDecision, evaluate as check_send};
use crate::{CustomerState, DecisionKind, EngineConfig};
use chorus_types::{Event, Intent, SendRequest};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

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
    Timer { journey: String, entry_key: String, seq: u64, at_ms: i64 },
    /// Enroll the customer in another journey (by API-style entry).
    Trigger { journey: String },
    /// Count for journey stats: (journey, version, step, what, value).
    Stat { journey: String, version: u32, step: String, what: &'static str, value: f64 },
}

/// What woke the interpreter.
pub enum Input<'a> {
    Event(&'a Event),
    Timer { journey: &'a str, entry_key: &'a str, seq: u64 },
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
    segments: &'a [String],
}

impl<'a> Run<'a> {
    fn scope<'s>(&self, state: &'s CustomerState, event: Option<&'s Event>, inst: Option<&Instance>) -> Scope<'s>
    where
        'a: 's,
    {
        Scope { state, event, entry: None, steps: inst.map(steps_value).unwrap_or(Value::Null), segments: self.segments, now_ms: self.now }
    }

    fn cond(&self, j: &Compiled, src: &str, state: &CustomerState, event: Option<&Event>, inst: Option<&Instance>) -> Result<bool, String> {
        evaluate_bool(j.expr(src), &self.scope(state, event, inst))
    }

    fn stat(&mut self, j: &Compiled, step: &str, what: &'static str, value: f64) {
        self.effects.push(Effect::Stat { journey: j.def.id.clone(), version: j.version, step: step.to_string(), what, value });
    }
}

/// Apply one input to every journey of `catalog` for this customer.
pub fn on_input(state: &mut CustomerState, input: &Input<'_>, catalog: &[&Compiled], segments: &[String], now_ms: i64, cfg: &EngineConfig) -> Vec<Effect> {
    let mut run = Run { cfg, now: now_ms, effects: Vec::new(), segments };
    let by_id: HashMap<&str, &Compiled> = catalog.iter().map(|c| (c.def.id.as_str(), *c)).collect();
    match input {
        Input::Event(event) => {
            // 1. In-flight instances: engagement, exits, goals, wait_for events/conditions.
            let mut i = 0;
            while i < state.journeys.len() {
                let Some(j) = by_id.get(state.journeys[i].journey.as_str()).copied().filter(|j| j.version == state.journeys[i].version) else {
                    i += 1;
                    continue;
                };
                if on_event_in_instance(state, i, j, event, &mut run) {
                    i += 1;
                }
            }
            // 2. Entries.
            for j in catalog {
                if let Trigger::Event(name) = &j.def.entry.trigger {
                    if *name == event.name {
                        try_enter(state, j, Some(event), &mut run);
                    }
                }
            }
        }
        Input::Timer { journey, entry_key, seq } => {
            let Some(pos) = state.journeys.iter().position(|x| x.journey == *journey && x.entry_key == *entry_key && !x.done) else { return run.effects };
            if state.journeys[pos].timer_seq != *seq {
                return run.effects; // stale: the instance moved on or the timer was cancelled
            }
            let Some(j) = by_id.get(*journey).copied() else { return run.effects };
            state.journeys[pos].timer_seq = 0;
            let step = j.step(&state.journeys[pos].step).cloned();
            let next = match step.as_ref().map(|s| &s.kind) {
                Some(StepKind::Wait(_)) => step.as_ref().and_then(|s| s.next.clone()),
                Some(StepKind::WaitFor { on_timeout, .. }) => Some(on_timeout.clone()),
                _ => None,
            };
            advance(state, pos, j, next, "timer", None, &mut run);
        }
    }
    // Triggers from goals and trigger steps enter other journeys now.
    let triggers: Vec<String> = run.effects.iter().filter_map(|e| if let Effect::Trigger { journey } = e { Some(journey.clone()) } else { None }).collect();
    for t in triggers {
        if let Some(j) = by_id.get(t.as_str()) {
            try_enter(state, j, None, &mut run);
        }
    }
    run.effects
}

/// Returns false when the instance was removed (exited or finished).
fn on_event_in_instance(state: &mut CustomerState, i: usize, j: &Compiled, event: &Event, run: &mut Run<'_>) -> bool {
    if state.journeys[i].done {
        let inst = state.journeys[i].clone();
        match &j.def.goal {
            Some(g) if run.now - inst.entered_ms <= g.within_ms => {
                if g.event == event.name {
                    let ok = g.filter.as_ref().map(|f| run.cond(j, f, state, Some(event), Some(&inst)) == Ok(true)).unwrap_or(true);
                    if ok {
                        convert(state, &inst, j, g, event, run);
                        state.journeys.remove(i);
                        return false;
                    }
                }
                return true;
            }
            _ => {
                state.journeys.remove(i); // the goal window closed
                return false;
            }
        }
    }
    // Engagement events name their journey and step (tracking links carry them).
    let props: Value = if event.properties.is_empty() { Value::Null } else { serde_json::from_str(&event.properties).unwrap_or(Value::Null) };
    if props.get("journey").and_then(Value::as_str) == Some(j.def.id.as_str()) {
        if let Some(step) = props.get("step").and_then(Value::as_str) {
            let flags = state.journeys[i].steps.entry(step.to_string()).or_default();
            match event.name.as_str() {
                "email.opened" | "push.opened" | "in_app.viewed" => flags.opened = true,
                "email.clicked" | "push.clicked" | "in_app.clicked" | "sms.clicked" => {
                    flags.clicked = true;
                    flags.opened = true;
                }
                "email.delivered" | "sms.delivered" | "push.delivered" => flags.delivered = true,
                _ => {}
            }
        }
    }
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
    state.decide(run.cfg, run.now, DecisionKind::Converted, format!("goal {}", g.event), format!("{} value {value} after {} ms{}", j.def.id, run.now - inst.entered_ms, if inst.holdout { " (holdout)" } else { "" }));
    run.stat(j, &inst.step, if inst.holdout { "converted_holdout" } else { "converted" }, value);
    if let Some(t) = &j.def.on_goal_trigger {
        run.effects.push(Effect::Trigger { journey: t.clone() });
    }
}

fn try_enter(state: &mut CustomerState, j: &Compiled, event: Option<&Event>, run: &mut Run<'_>) {
    let id = j.def.id.clone();
    if state.journeys.iter().any(|x| x.journey == id && !x.done) {
        return; // one instance per journey (entry keys arrive with max_concurrent)
    }
    match (&j.def.entry.reentry, state.journey_entries.get(&id)) {
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
    state.journeys.retain(|x| x.journey != id); // a finished entry's goal window ends here
    let holdout = (bucket(&state.id.to_string(), &id) as f64) < j.def.entry.holdout_percent * 100.0;
    let first = j.def.steps[0].id.clone();
    state.journey_entries.insert(id.clone(), run.now);
    state.journeys.push(Instance {
        journey: id.clone(),
        version: j.version,
        step: first.clone(),
        entry_key: id.clone(),
        entered_ms: run.now,
        holdout,
        timer_seq: 0,
        steps: BTreeMap::new(),
        path: Vec::new(),
        converted: false,
        sends: 0,
        entry_event: event.map(|e| (e.name.clone(), e.properties.clone())),
        done: false,
    });
    state.decide(run.cfg, run.now, DecisionKind::Entered, event.map(|e| format!("event {}", e.name)).unwrap_or_else(|| "trigger".into()), format!("{id} v{}{}", j.version, if holdout { " (holdout: never messaged)" } else { "" }));
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
            state.decide(run.cfg, run.now, DecisionKind::Advanced, reason.to_string(), format!("{}: {from} → {n}", j.def.id));
            execute(state, pos, j, event, run)
        }
        None => finish(state, pos, j, "completed", run),
    }
}

fn finish(state: &mut CustomerState, pos: usize, j: &Compiled, reason: &str, run: &mut Run<'_>) -> bool {
    let inst = &mut state.journeys[pos];
    let step = inst.step.clone();
    let goal_open = j.def.goal.as_ref().is_some_and(|g| !inst.converted && run.now - inst.entered_ms <= g.within_ms);
    if goal_open {
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
        let Some(step) = j.step(&state.journeys[pos].step).cloned() else {
            return finish(state, pos, j, "unknown step", run);
        };
        state.journeys[pos].path.push(step.id.clone());
        let next = match &step.kind {
            StepKind::Send { channel, template, fallback, topic, .. } => {
                send(state, pos, j, &step.id, channel, template, fallback, topic.as_deref(), run);
                step.next.clone()
            }
            StepKind::Wait(WaitSpec::Duration { ms }) => {
                set_timer(state, pos, run.now + ms, run);
                return true;
            }
            StepKind::Wait(other) => {
                state.decide(run.cfg, run.now, DecisionKind::Skipped, "not yet supported", format!("{}: wait {other:?} is not supported yet; continuing", j.def.id));
                step.next.clone()
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
                send(state, pos, j, &step.id, "webhook", template, &[], None, run);
                step.next.clone()
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

#[allow(clippy::too_many_arguments)]
fn send(state: &mut CustomerState, pos: usize, j: &Compiled, step: &str, channel: &str, template: &str, fallback: &[String], topic: Option<&str>, run: &mut Run<'_>) {
    let inst = state.journeys[pos].clone();
    if inst.holdout {
        state.decide(run.cfg, run.now, DecisionKind::Skipped, "holdout", format!("{} {step}: control group, not messaged", j.def.id));
        run.stat(j, step, "skipped_holdout", 1.0);
        return;
    }
    let mut reasons = Vec::new();
    for (n, ch) in std::iter::once(channel).chain(fallback.iter().map(String::as_str)).enumerate() {
        let req = SendRequest {
            request_id: format!("{}/v{}/{}/{}", j.def.id, j.version, inst.entry_key, step),
            customer: state.id,
            channel: ch.to_string(),
            template: template.to_string(),
            category: j.def.category,
            vars: Default::default(),
            send_at_ms: 0,
            topic: topic.unwrap_or_default().to_string(),
        };
        match check_send(state, &req) {
            SendDecision::Send(mut intent) => {
                // Deterministic per (journey version, step, entry): re-processing yields the same key.
                intent.key = format!("j/{}/v{}/{}/{}/{}/{}", j.def.id, j.version, inst.entry_key, inst.entered_ms, step, state.id);
                intent.journey = j.def.id.clone();
                intent.created_ms = run.now;
                if n > 0 {
                    state.decide(run.cfg, run.now, DecisionKind::Fallback, reasons.join("; "), format!("{} {step}: {channel} → {ch}", j.def.id));
                }
                state.decide(run.cfg, run.now, DecisionKind::Sent, format!("journey {}", j.def.id), format!("{step}: {ch} {template} to {}", if intent.to.is_empty() { "-" } else { &intent.to }));
                let flags = state.journeys[pos].steps.entry(step.to_string()).or_default();
                flags.sent = true;
                state.journeys[pos].sends += 1;
                run.stat(j, step, "sent", 1.0);
                run.effects.push(Effect::Send(intent));
                return;
            }
            SendDecision::Skip { reason } => reasons.push(format!("{ch}: {reason}")),
        }
    }
    state.decide(run.cfg, run.now, DecisionKind::Skipped, reasons.join("; "), format!("{} {step}", j.def.id));
    run.stat(j, step, "skipped", 1.0);
}
