//! CEL expressions (SPEC §6.1): compiled once when a journey or audience is applied,
//! evaluated per customer with `profile`, `event`, `entry`, `steps`, `segments` and
//! `now`, and the functions `events.count(name, window)`, `events.last(name)`,
//! `events.sum(name, property, window)`, `duration("7d")` and `in_segment(id)`.
//! Deterministic: `now` comes from the caller, never from a clock. A runtime error is
//! returned as a message (the caller records `skipped: expression error`), never a panic.

use crate::{CustomerState, DAY_MS};
use chorus_types::Event;
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// A compiled expression.
pub struct Expr {
    pub source: String,
    pub program: cel::Program,
    /// What the program reads, so an evaluation builds only those variables (turning
    /// the whole profile into CEL values for `steps.x.opened` was most of its cost).
    needs: Needs,
}

/// The variables and function data a program references.
#[derive(Clone, Copy, Debug, Default)]
struct Needs {
    profile: bool,
    event: bool,
    entry: bool,
    steps: bool,
    segments: bool,
    events: bool,
    /// `events.count`: the daily counters.
    counters: bool,
    /// `events.sum` / `events.last`: the history with parsed properties.
    history: bool,
    /// `in_segment(id)`: the customer's audiences.
    in_segment: bool,
}

impl Needs {
    fn of(program: &cel::Program) -> Needs {
        let r = program.references();
        Needs {
            profile: r.has_variable("profile"),
            event: r.has_variable("event"),
            entry: r.has_variable("entry"),
            steps: r.has_variable("steps"),
            segments: r.has_variable("segments"),
            events: r.has_variable("events"),
            counters: r.has_function("count"),
            history: r.has_function("sum") || r.has_function("last"),
            in_segment: r.has_function("in_segment"),
        }
    }
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

/// Compile `source`, or say why it does not compile.
pub fn compile(source: &str) -> Result<Expr, String> {
    match cel::Program::compile(source) {
        Ok(program) => Ok(Expr { source: source.to_string(), needs: Needs::of(&program), program }),
        Err(e) => Err(e.to_string().lines().next().unwrap_or("syntax error").to_string()),
    }
}

/// Everything an expression may read.
pub struct Scope<'a> {
    pub state: &'a CustomerState,
    /// The event being processed, if any.
    pub event: Option<&'a Event>,
    /// The event that entered the customer into the journey (`{name, properties}`), or
    /// null.
    pub entry: Value,
    /// `steps.<id>.{sent, delivered, opened, clicked, converted, failed}`.
    pub steps: Value,
    /// Audiences the customer belongs to.
    pub segments: &'a [String],
    pub now_ms: i64,
}

/// What the custom functions read while one evaluation runs on this thread.
struct FnData {
    now_ms: i64,
    /// (name, day, count) from the customer's daily counters.
    counters: Vec<(String, u32, u32)>,
    /// (name, received time, properties) of recent events, oldest first; only when used.
    /// Windows count by the time Chorus received the event, like the daily counters.
    history: Vec<(String, i64, Value)>,
    segments: Vec<String>,
}

scoped_tls::scoped_thread_local!(static FN_DATA: FnData);

/// The profile as expressions see it: attributes at the top level (`profile.ltv`), plus
/// `id`, `identities` (kind → values), `consent` (channel → status, `topics`),
/// `created_ms` and `event_count`.
pub fn profile_value(state: &CustomerState) -> Value {
    let mut m: Map<String, Value> = state.attributes.0.clone();
    let mut ids: Map<String, Value> = Map::new();
    for i in &state.identities {
        let e = ids.entry(i.kind.as_str().to_string()).or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(a) = e {
            a.push(Value::String(i.value.clone()));
        }
    }
    let mut consent: Map<String, Value> = state.consent.channels.iter().map(|(k, v)| (k.clone(), json!(v.status.as_str()))).collect();
    consent.insert("topics".into(), Value::Object(state.consent.topics.iter().map(|(k, v)| (k.clone(), json!(v.status.as_str()))).collect()));
    m.insert("id".into(), json!(state.id.to_string()));
    m.insert("identities".into(), Value::Object(ids));
    m.insert("consent".into(), Value::Object(consent));
    m.insert("created_ms".into(), json!(state.created_ms));
    m.insert("event_count".into(), json!(state.event_count));
    Value::Object(m)
}

/// An event as expressions see it.
pub fn event_value(e: &Event) -> Value {
    let props = if e.properties.is_empty() { Value::Object(Map::new()) } else { serde_json::from_str(&e.properties).unwrap_or(Value::Null) };
    json!({
        "name": e.name,
        "type": e.event_type.as_str(),
        "message_id": e.message_id,
        "timestamp_ms": e.timestamp_ms,
        "properties": props,
        "traits": Value::Object(e.traits.0.clone()),
    })
}

fn to_cel(v: &Value) -> Result<cel::Value, String> {
    cel::to_value(v).map_err(|e| format!("cannot pass a value to the expression: {e}"))
}

fn from_cel(v: &cel::Value) -> Value {
    v.json().unwrap_or(Value::Null)
}

fn duration_fn(text: Arc<String>) -> Result<i64, cel::ExecutionError> {
    chorus_types::time::parse_duration_ms(&text).map_err(|e| cel::ExecutionError::function_error("duration", e))
}

fn in_segment_fn(id: Arc<String>) -> bool {
    FN_DATA.with(|d| d.segments.iter().any(|s| **s == *id))
}

fn count_fn(cel::extractors::This(_events): cel::extractors::This<cel::Value>, name: Arc<String>, window_ms: i64) -> i64 {
    FN_DATA.with(|d| {
        let first_day = (d.now_ms - window_ms).div_euclid(DAY_MS).max(0) as u32;
        d.counters.iter().filter(|(n, day, _)| **n == *name && *day >= first_day).map(|(_, _, c)| *c as i64).sum()
    })
}

fn sum_fn(cel::extractors::This(_events): cel::extractors::This<cel::Value>, name: Arc<String>, property: Arc<String>, window_ms: i64) -> f64 {
    FN_DATA.with(|d| {
        let since = d.now_ms - window_ms;
        d.history.iter().filter(|(n, t, _)| **n == *name && *t >= since).filter_map(|(_, _, p)| p.get(property.as_str()).and_then(Value::as_f64)).sum()
    })
}

fn last_fn(cel::extractors::This(_events): cel::extractors::This<cel::Value>, name: Arc<String>) -> cel::Value {
    FN_DATA.with(|d| match d.history.iter().rev().find(|(n, _, _)| **n == *name) {
        Some((n, t, p)) => to_cel(&json!({"name": n, "timestamp_ms": t, "properties": p})).unwrap_or(cel::Value::Null),
        None => cel::Value::Null,
    })
}

/// Evaluate `expr` in `scope`.
pub fn evaluate(expr: &Expr, scope: &Scope<'_>) -> Result<Value, String> {
    static ENV: std::sync::OnceLock<Arc<cel::Env>> = std::sync::OnceLock::new();
    let env = ENV.get_or_init(|| Arc::new(cel::Env::stdlib()));
    let mut ctx = cel::Context::with_env(env.clone());
    ctx.add_function("duration", duration_fn).map_err(|e| e.to_string())?;
    ctx.add_function("in_segment", in_segment_fn).map_err(|e| e.to_string())?;
    ctx.add_function("count", count_fn).map_err(|e| e.to_string())?;
    ctx.add_function("sum", sum_fn).map_err(|e| e.to_string())?;
    ctx.add_function("last", last_fn).map_err(|e| e.to_string())?;
    // Only what the program references: an unreferenced variable is never resolved.
    let needs = expr.needs;
    if needs.profile {
        ctx.add_variable_from_value("profile", to_cel(&profile_value(scope.state))?);
    }
    if needs.event {
        ctx.add_variable_from_value("event", to_cel(&scope.event.map(event_value).unwrap_or(Value::Null))?);
    }
    if needs.entry {
        ctx.add_variable_from_value("entry", to_cel(&scope.entry)?);
    }
    if needs.steps {
        ctx.add_variable_from_value("steps", to_cel(&scope.steps)?);
    }
    if needs.segments {
        ctx.add_variable_from_value("segments", to_cel(&json!(scope.segments))?);
    }
    ctx.add_variable_from_value("now", cel::Value::Int(scope.now_ms));
    if needs.events {
        ctx.add_variable_from_value("events", to_cel(&json!({}))?);
    }
    let data = FnData {
        now_ms: scope.now_ms,
        counters: if needs.counters {
            scope.state.counters.iter().flat_map(|(n, days)| days.iter().map(move |(d, c)| (n.clone(), *d, *c))).collect()
        } else {
            Vec::new()
        },
        history: if needs.history {
            scope
                .state
                .history
                .iter()
                .map(|h| {
                    (
                        h.name.clone(),
                        h.received_ms,
                        if h.properties.is_empty() { Value::Null } else { serde_json::from_str(&h.properties).unwrap_or(Value::Null) },
                    )
                })
                .collect()
        } else {
            Vec::new()
        },
        segments: if needs.in_segment { scope.segments.to_vec() } else { Vec::new() },
    };
    FN_DATA.set(&data, || expr.program.execute(&ctx)).map(|v| from_cel(&v)).map_err(|e| e.to_string())
}

/// Evaluate a condition: it must produce a boolean.
pub fn evaluate_bool(expr: &Expr, scope: &Scope<'_>) -> Result<bool, String> {
    match evaluate(expr, scope)? {
        Value::Bool(b) => Ok(b),
        other => Err(format!("the condition produced {} ({other}), not true or false", chorus_types::json::json_kind(&other))),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_program_names_the_data_it_reads() {
        let n = |src: &str| Needs::of(&compile(src).unwrap().program);
        let a = n(r#"events.count("Order Completed", duration("7d")) == 0"#);
        assert!(a.events && a.counters && !a.history && !a.profile && !a.steps, "{a:?}");
        let b = n("steps.recos_email.clicked || steps.recos_email.opened");
        assert!(b.steps && !b.events && !b.counters && !b.profile && !b.event, "{b:?}");
        let c =
            n(r#"profile.ltv > 100 && event.properties.sku == "A" && in_segment("vip") && events.sum("Order Completed", "revenue", duration("30d")) > 0.0"#);
        assert!(c.profile && c.event && c.in_segment && c.history && c.events && !c.counters && !c.entry, "{c:?}");
        let d = n(r#"events.last("Order Completed") != null && entry.name == "x" && size(segments) > 0"#);
        assert!(d.history && d.entry && d.segments, "{d:?}");
    }

    use super::*;
    use crate::{EngineConfig, apply_event};
    use chorus_types::{CustomerId, EventInput};

    #[test]
    fn spec_expressions_compile_and_bad_ones_do_not() {
        for ok in [
            "profile.ltv > 500 && events.count(\"Order Completed\", duration(\"7d\")) == 0",
            "steps.recos_email.clicked",
            "event.properties.revenue",
            "in_segment(\"vip\") || profile.loyalty_tier == \"gold\"",
        ] {
            compile(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["profile.ltv >", "&& x", "steps..a"] {
            assert!(compile(bad).is_err(), "{bad} compiled");
        }
    }

    fn ev(name: &str, props: Value) -> Event {
        EventInput {
            message_id: format!("m-{name}"),
            event_type: "track".into(),
            name: name.into(),
            identities: vec![("user_id".into(), "u".into())],
            properties: props.as_object().cloned().unwrap_or_default(),
            timestamp_ms: 1,
            ..Default::default()
        }
        .validate()
        .unwrap()
    }

    fn customer() -> CustomerState {
        let cfg = EngineConfig::default();
        let mut c = CustomerState::new(CustomerId::new(0, 1), 0);
        c.attributes.0.insert("ltv".into(), json!(900));
        c.attributes.0.insert("loyalty_tier".into(), json!("gold"));
        c.identities.push(chorus_types::Identity { kind: chorus_types::IdentityKind::UserId, value: "u".into() });
        let day = 20_000 * DAY_MS;
        apply_event(&mut c, &ev("Product Viewed", json!({"sku": "A"})), day, &cfg);
        apply_event(&mut c, &ev("Order Completed", json!({"revenue": 40.5})), day + 1_000, &cfg);
        apply_event(&mut c, &ev("Order Completed", json!({"revenue": 9.5})), day + 2 * DAY_MS, &cfg);
        c
    }

    fn eval(src: &str, c: &CustomerState, now: i64, event: Option<&Event>) -> Result<Value, String> {
        let steps = json!({"recos_email": {"sent": true, "opened": true, "clicked": false}});
        evaluate(&compile(src).unwrap(), &Scope { state: c, event, entry: Value::Null, steps, segments: &["vip".to_string()], now_ms: now })
    }

    #[test]
    fn the_spec_entry_filter_evaluates_against_profile_and_counters() {
        let c = customer();
        let now = 20_002 * DAY_MS + 5_000;
        let filter = "profile.ltv > 500 && events.count(\"Order Completed\", duration(\"7d\")) == 0";
        assert_eq!(eval(filter, &c, now, None).unwrap(), json!(false), "two orders in the last 7 days");
        assert_eq!(eval(filter, &c, now + 30 * DAY_MS, None).unwrap(), json!(true), "none in the 7 days before a month later");
        assert_eq!(eval("events.count(\"Order Completed\", duration(\"7d\"))", &c, now, None).unwrap(), json!(2));
    }

    #[test]
    fn variables_and_functions_of_spec_6_1() {
        let c = customer();
        let now = 20_002 * DAY_MS + 5_000;
        let e = ev("Order Completed", json!({"revenue": 12.0}));
        assert_eq!(eval("event.properties.revenue", &c, now, Some(&e)).unwrap(), json!(12.0));
        assert_eq!(eval("steps.recos_email.opened && !steps.recos_email.clicked", &c, now, None).unwrap(), json!(true));
        assert_eq!(eval("in_segment(\"vip\") && !in_segment(\"churned\")", &c, now, None).unwrap(), json!(true));
        assert_eq!(eval("profile.loyalty_tier == \"gold\"", &c, now, None).unwrap(), json!(true));
        assert_eq!(eval("events.sum(\"Order Completed\", \"revenue\", duration(\"30d\"))", &c, now, None).unwrap(), json!(50.0));
        assert_eq!(eval("events.last(\"Product Viewed\").properties.sku", &c, now, None).unwrap(), json!("A"));
        assert_eq!(eval("now", &c, now, None).unwrap(), json!(now));
        assert_eq!(eval("profile.identities.user_id[0]", &c, now, None).unwrap(), json!("u"));
    }

    #[test]
    fn runtime_errors_are_messages_not_panics() {
        let c = customer();
        assert!(eval("profile.missing.deeper > 3", &c, 0, None).is_err());
        assert!(eval("duration(\"forever\") > 0", &c, 0, None).unwrap_err().contains("duration"));
        let err = evaluate_bool(
            &compile("profile.ltv").unwrap(),
            &Scope { state: &c, event: None, entry: Value::Null, steps: Value::Null, segments: &[], now_ms: 0 },
        )
        .unwrap_err();
        assert!(err.contains("not true or false"), "{err}");
    }
}
