//! Offline simulation (SPEC §6 "simulate"): run one journey for one customer on a
//! virtual clock over a trace of events, with the same core code the node runs, and
//! return every decision and effect in time order. Pure: the caller supplies the text.

use super::run::{Effect, Input, RunCatalog, on_input};
use crate::{ConsentEntry, ConsentStatus, CustomerState, EngineConfig, apply_event};
use chorus_types::{CustomerId, Event, EventInput, Identity, IdentityKind};
use serde_json::{Map, Value};

/// One line of the simulation's output.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub at_ms: i64,
    /// `event`, `timer`, `decision`, `send`, `timer-set`, `trigger`.
    pub kind: &'static str,
    pub text: String,
}

/// A simulated customer built from a profile JSON object:
/// `{"attributes": {...}, "identities": {"email": "..."} , "consent": {"sms": "opted_in"}}`.
pub fn customer_from_json(profile: &Value) -> Result<CustomerState, String> {
    let mut c = CustomerState::new(CustomerId::new(0, 1), 0);
    let obj = profile.as_object().ok_or("the profile must be a JSON object")?;
    if let Some(a) = obj.get("attributes") {
        c.attributes.0 = a.as_object().cloned().ok_or("profile.attributes must be an object")?;
    }
    if let Some(ids) = obj.get("identities") {
        for (k, v) in ids.as_object().ok_or("profile.identities must be an object of kind → value")? {
            let values: Vec<&Value> = match v {
                Value::Array(a) => a.iter().collect(),
                other => vec![other],
            };
            for v in values {
                let kind = IdentityKind::parse(k).map_err(|e| e.to_string())?;
                let raw = v.as_str().ok_or(format!("profile.identities.{k} must be a string"))?;
                c.identities.push(Identity::normalize(kind, raw).map_err(|e| format!("profile.identities.{k}: {e}"))?);
            }
        }
    }
    if let Some(cons) = obj.get("consent") {
        for (k, v) in cons.as_object().ok_or("profile.consent must be an object")? {
            let status = v.as_str().and_then(ConsentStatus::parse).ok_or(format!("profile.consent.{k}: use opted_in, opted_out or unknown"))?;
            c.consent.channels.insert(k.clone(), ConsentEntry { status, at_ms: 0, source: "simulation".into() });
        }
    }
    Ok(c)
}

/// Parse one trace line: `{"at": RFC3339 | "timestamp_ms": N, "event": "Product Viewed",
/// "type": "track", "properties": {...}}`.
pub fn trace_event(line: &Value, n: usize) -> Result<(i64, Event), String> {
    let o = line.as_object().ok_or(format!("trace line {n}: expected a JSON object"))?;
    let at = match (o.get("at").and_then(Value::as_str), o.get("timestamp_ms").and_then(Value::as_i64)) {
        (Some(t), _) => chorus_types::time::parse_rfc3339_ms(t).ok_or(format!("trace line {n}: at {t:?} is not RFC 3339"))?,
        (None, Some(ms)) => ms,
        _ => {
            return Err(format!("trace line {n}: give `at` (RFC 3339) or `timestamp_ms`"));
        }
    };
    let name = o.get("event").or_else(|| o.get("name")).and_then(Value::as_str).unwrap_or_default();
    let input = EventInput {
        message_id: format!("sim-{n}"),
        event_type: o.get("type").and_then(Value::as_str).unwrap_or("track").to_string(),
        name: name.to_string(),
        identities: vec![("user_id".into(), "simulated".into())],
        properties: o.get("properties").and_then(Value::as_object).cloned().unwrap_or_else(Map::new),
        traits: o.get("traits").and_then(Value::as_object).cloned().unwrap_or_else(Map::new),
        timestamp_ms: at,
        ..Default::default()
    };
    let e = input.validate().map_err(|e| format!("trace line {n}: {e}"))?;
    Ok((at, e))
}

/// Timers pending in a simulation: (due, journey, entry key, seq).
type Timers = Vec<(i64, String, String, u64)>;

/// Run the simulation over the journeys of `catalog` (and its settings: quiet hours,
/// caps, time zone). Timers fire in time order before later events; after the last
/// event, pending timers up to `until_ms` fire too.
pub fn simulate(catalog: &RunCatalog, mut customer: CustomerState, mut trace: Vec<(i64, Event)>, until_ms: i64, cfg: &EngineConfig) -> Vec<Line> {
    trace.sort_by_key(|(t, _)| *t);
    let mut out = Vec::new();
    let mut timers: Timers = Vec::new();
    let mut seen = customer.decisions.len();
    let record = |c: &CustomerState, at: i64, fx: Vec<Effect>, timers: &mut Timers, out: &mut Vec<Line>, seen: &mut usize| {
        for d in c.decisions.iter().skip(*seen) {
            out.push(Line { at_ms: d.at_ms, kind: "decision", text: format!("{} — {} ({})", d.kind.as_str(), d.reason, d.detail) });
        }
        *seen = c.decisions.len();
        for e in fx {
            match e {
                Effect::Send(i) => out.push(Line {
                    at_ms: at,
                    kind: "send",
                    text: format!("{} {} to {} [key {}]", i.channel, i.template, if i.to.is_empty() { "-" } else { &i.to }, i.key),
                }),
                Effect::Timer { journey, entry_key, seq, at_ms } => {
                    timers.push((at_ms, journey, entry_key, seq));
                    out.push(Line { at_ms: at, kind: "timer-set", text: format!("wake at {}", chorus_types::time::format_rfc3339_ms(at_ms)) });
                }
                Effect::Trigger { journey } => out.push(Line { at_ms: at, kind: "trigger", text: format!("enroll in {journey}") }),
                Effect::Stat { .. } => {}
                Effect::Held { journey } => out.push(Line { at_ms: at, kind: "held", text: format!("{journey} is paused: holding") }),
                Effect::Track(_) => {}
                Effect::Cancel { key } => out.push(Line { at_ms: at, kind: "cancel", text: format!("cancel {key} if not delivered yet") }),
            }
        }
    };
    let fire_until = |c: &mut CustomerState, limit: i64, timers: &mut Timers, out: &mut Vec<Line>, seen: &mut usize| loop {
        timers.sort_by_key(|(t, _, _, _)| *t);
        let Some(pos) = timers.iter().position(|(t, _, _, _)| *t <= limit) else {
            break;
        };
        let (at, journey, key, seq) = timers.remove(pos);
        let before = c.decisions.len();
        let fx = on_input(c, &Input::Timer { journey: &journey, entry_key: &key, seq }, catalog, at, cfg);
        let text = if fx.is_empty() && c.decisions.len() == before { "timer fires: nothing to do (the customer moved on)" } else { "timer fires" };
        out.push(Line { at_ms: at, kind: "timer", text: text.into() });
        record(c, at, fx, timers, out, seen);
    };
    for (at, event) in trace {
        fire_until(&mut customer, at, &mut timers, &mut out, &mut seen);
        out.push(Line { at_ms: at, kind: "event", text: format!("{} {}", event.event_type.as_str(), event.name) });
        apply_event(&mut customer, &event, at, cfg);
        let fx = on_input(&mut customer, &Input::Event(&event), catalog, at, cfg);
        record(&customer, at, fx, &mut timers, &mut out, &mut seen);
    }
    fire_until(&mut customer, until_ms, &mut timers, &mut out, &mut seen);
    out
}
