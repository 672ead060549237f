//! Audiences (SPEC §6.2): named CEL predicates over the profile and its event history,
//! evaluated incrementally on every change to a customer. Membership changes become
//! the events `audience.entered` / `audience.exited` (properties `{"audience": id}`)
//! that journeys can enter on. Pure: the caller hands in the state and the catalog.
//!
//! ```yaml
//! id: high-value-browsers
//! name: High-value browsers
//! condition: 'profile.ltv > 500 && events.count("Product Viewed", duration("7d")) >= 2'
//! ```
//!
//! A condition that depends on time alone (a window sliding past an event) is seen at
//! the customer's next change, or when the audience is applied again.

use crate::expr::{Expr, Scope, compile, evaluate_bool};
use crate::journey::Diagnostic;
use crate::journey::source::{self};
use crate::{CustomerState, DecisionKind, EngineConfig};
use chorus_types::{Event, EventInput};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const AUDIENCE_ENTERED: &str = "audience.entered";
pub const AUDIENCE_EXITED: &str = "audience.exited";
/// Most audiences a cluster holds (each is evaluated on every change to a customer).
pub const AUDIENCES_MAX: usize = 500;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AudienceDef {
    pub id: String,
    pub name: String,
    pub description: String,
    pub condition: String,
}

/// An audience ready to evaluate.
pub struct CompiledAudience {
    pub def: AudienceDef,
    pub version: u32,
    expr: Expr,
}

impl CompiledAudience {
    pub fn new(def: AudienceDef, version: u32) -> Result<CompiledAudience, String> {
        let expr = compile(&def.condition).map_err(|e| format!("condition: {e}"))?;
        Ok(CompiledAudience { def, version, expr })
    }

    /// Whether the customer matches now.
    pub fn matches(&self, state: &CustomerState, segments: &[String], now_ms: i64) -> Result<bool, String> {
        evaluate_bool(&self.expr, &Scope { state, event: None, entry: Value::Null, steps: Value::Null, segments, now_ms })
    }
}

/// Parse and validate an audience file (YAML or JSON), every problem with its line.
pub fn parse_audience(text: &str) -> Result<AudienceDef, Vec<Diagnostic>> {
    let (value, lines) = source::load(text).map_err(|e| vec![Diagnostic { line: Some(e.line), path: String::new(), message: e.message }])?;
    let mut problems: Vec<(String, String)> = Vec::new();
    let get = |key: &str, required: bool, problems: &mut Vec<(String, String)>| -> Option<String> {
        match value.get(key) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
            None | Some(Value::Null) if !required => None,
            None | Some(Value::Null) => {
                problems.push((key.to_string(), format!("{key} is required")));
                None
            }
            Some(_) => {
                problems.push((key.to_string(), format!("{key} must be a non-empty string")));
                None
            }
        }
    };
    if !value.is_object() {
        return Err(vec![Diagnostic { line: Some(1), path: String::new(), message: "an audience is a mapping with id, name and condition".into() }]);
    }
    const KEYS: &[&str] = &["id", "name", "description", "condition"];
    for k in value.as_object().into_iter().flat_map(|m| m.keys()) {
        if !KEYS.contains(&k.as_str()) {
            let hint = crate::journey::closest(k, KEYS).map(|c| format!(" (did you mean {c}?)")).unwrap_or_default();
            problems.push((k.clone(), format!("unknown key {k:?}{hint}; an audience has {}", KEYS.join(", "))));
        }
    }
    let id = get("id", true, &mut problems);
    if let Some(id) = &id {
        if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') || id.len() > 64 {
            problems.push(("id".into(), format!("{id:?}: an id uses letters, digits, - and _ (at most 64)")));
        }
    }
    let name = get("name", false, &mut problems);
    let description = get("description", false, &mut problems);
    let condition = get("condition", true, &mut problems);
    if let Some(c) = &condition {
        if let Err(e) = compile(c) {
            problems.push(("condition".into(), format!("the condition does not compile: {e}")));
        }
    }
    if problems.is_empty() {
        let id = id.expect("checked");
        return Ok(AudienceDef {
            name: name.unwrap_or_else(|| id.clone()),
            id,
            description: description.unwrap_or_default(),
            condition: condition.expect("checked"),
        });
    }
    let mut diags: Vec<Diagnostic> = problems.into_iter().map(|(path, message)| Diagnostic { line: lines.line_of(&path), path, message }).collect();
    diags.sort_by_key(|d| d.line.unwrap_or(0));
    Err(diags)
}

/// Re-evaluate every audience for the customer, in catalog order (a condition may use
/// `in_segment` of one listed before it). Updates `state.segments`, records a decision
/// per change, and returns the changes as (audience id, entered).
pub fn evaluate_audiences(state: &mut CustomerState, audiences: &[std::sync::Arc<CompiledAudience>], now_ms: i64, cfg: &EngineConfig) -> Vec<(String, bool)> {
    let mut changes = Vec::new();
    if state.is_tombstone() {
        return changes;
    }
    for a in audiences {
        let id = &a.def.id;
        let was = state.segments.iter().any(|s| s == id);
        let (now_in, why) = match a.matches(state, &state.segments, now_ms) {
            Ok(b) => (b, String::new()),
            Err(e) => (false, format!(" (expression error: {e})")),
        };
        if now_in == was {
            continue;
        }
        if now_in {
            let pos = state.segments.binary_search(id).unwrap_or_else(|p| p);
            state.segments.insert(pos, id.clone());
            state.decide(cfg, now_ms, DecisionKind::AudienceEntered, format!("audience {id}"), format!("{} now holds", a.def.condition));
        } else {
            state.segments.retain(|s| s != id);
            state.decide(cfg, now_ms, DecisionKind::AudienceExited, format!("audience {id}"), format!("{} no longer holds{why}", a.def.condition));
        }
        changes.push((id.clone(), now_in));
    }
    changes
}

/// Drop memberships of audiences that no longer exist.
pub fn forget_removed(state: &mut CustomerState, audiences: &[std::sync::Arc<CompiledAudience>]) {
    state.segments.retain(|s| audiences.iter().any(|a| a.def.id == *s));
}

/// The event a membership change becomes, deterministic for (customer, change, time).
pub fn change_event(state: &CustomerState, audience: &str, entered: bool, now_ms: i64) -> Event {
    let name = if entered { AUDIENCE_ENTERED } else { AUDIENCE_EXITED };
    let props = serde_json::json!({ "audience": audience });
    let input = EventInput {
        message_id: format!("{name}/{audience}/{}/{now_ms}/{}", state.id, state.event_count),
        event_type: "track".into(),
        name: name.into(),
        identities: vec![("user_id".into(), state.id.to_string())],
        properties: props.as_object().cloned().unwrap_or_default(),
        timestamp_ms: now_ms,
        ..Default::default()
    };
    let mut e = input.validate().expect("a well-formed audience event");
    // The event belongs to this customer already: it carries no identity to link.
    e.identities.clear();
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_types::CustomerId;
    use serde_json::json;
    use std::sync::Arc;

    fn audience(id: &str, condition: &str) -> Arc<CompiledAudience> {
        Arc::new(CompiledAudience::new(AudienceDef { id: id.into(), name: id.into(), description: String::new(), condition: condition.into() }, 1).unwrap())
    }

    fn viewed(c: &mut CustomerState, n: u64, now: i64) {
        let e =
            EventInput { message_id: format!("v{n}"), name: "Product Viewed".into(), identities: vec![("user_id".into(), "u".into())], ..Default::default() }
                .validate()
                .unwrap();
        crate::apply_event(c, &e, now, &EngineConfig::default());
    }

    #[test]
    fn rule_audiences_are_evaluated_on_every_change_and_emit_entered_and_exited() {
        let auds = vec![audience("browsers", r#"events.count("Product Viewed", duration("7d")) >= 2 && profile.ltv > 500"#)];
        let mut c = CustomerState::new(CustomerId::new(0, 1), 0);
        c.attributes.0.insert("ltv".into(), json!(900));
        let cfg = EngineConfig::default();
        viewed(&mut c, 1, 1_000);
        assert!(evaluate_audiences(&mut c, &auds, 1_000, &cfg).is_empty());
        viewed(&mut c, 2, 2_000);
        assert_eq!(evaluate_audiences(&mut c, &auds, 2_000, &cfg), vec![("browsers".to_string(), true)]);
        assert_eq!(c.segments, vec!["browsers".to_string()]);
        assert!(evaluate_audiences(&mut c, &auds, 2_500, &cfg).is_empty(), "no change, no event");
        c.attributes.0.insert("ltv".into(), json!(100));
        assert_eq!(evaluate_audiences(&mut c, &auds, 3_000, &cfg), vec![("browsers".to_string(), false)]);
        let kinds: Vec<_> = c.decisions.iter().map(|d| d.kind).collect();
        assert!(kinds.contains(&DecisionKind::AudienceEntered) && kinds.contains(&DecisionKind::AudienceExited));
        let e = change_event(&c, "browsers", false, 3_000);
        assert_eq!((e.name.as_str(), e.properties.as_str()), (AUDIENCE_EXITED, r#"{"audience":"browsers"}"#));
    }

    #[test]
    fn rule_audiences_can_build_on_earlier_audiences() {
        let auds = vec![audience("vip", "profile.ltv > 500"), audience("vip-fr", r#"in_segment("vip") && profile.country == "FR""#)];
        let mut c = CustomerState::new(CustomerId::new(0, 1), 0);
        c.attributes.0.insert("ltv".into(), json!(900));
        c.attributes.0.insert("country".into(), json!("FR"));
        let changes = evaluate_audiences(&mut c, &auds, 1, &EngineConfig::default());
        assert_eq!(changes, vec![("vip".to_string(), true), ("vip-fr".to_string(), true)]);
    }

    #[test]
    fn rule_an_expression_error_is_not_membership() {
        let auds = vec![audience("odd", "profile.ltv > 500")];
        let mut c = CustomerState::new(CustomerId::new(0, 1), 0);
        c.attributes.0.insert("ltv".into(), json!(900));
        evaluate_audiences(&mut c, &auds, 1, &EngineConfig::default());
        c.attributes.0.insert("ltv".into(), json!("lots"));
        assert_eq!(evaluate_audiences(&mut c, &auds, 2, &EngineConfig::default()), vec![("odd".to_string(), false)]);
        assert!(c.decisions.back().unwrap().detail.contains("expression error"), "{:?}", c.decisions);
    }

    #[test]
    fn rule_bad_audience_files_are_rejected_with_line() {
        let e = parse_audience("id: vip\nname: VIPs\ncondtion: profile.ltv > 5\n").unwrap_err();
        let text: Vec<String> = e.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            text,
            vec![
                "condition: condition is required".to_string(),
                "line 3: condtion: unknown key \"condtion\" (did you mean condition?); an audience has id, name, description, condition".to_string()
            ]
        );
        let e = parse_audience("id: vip\ncondition: 'profile.ltv >'\n").unwrap_err();
        assert_eq!(e[0].line, Some(2));
        assert!(e[0].message.starts_with("the condition does not compile"), "{e:?}");
        let a = parse_audience("id: vip\ncondition: profile.ltv > 500\n").unwrap();
        assert_eq!((a.name.as_str(), a.condition.as_str()), ("vip", "profile.ltv > 500"));
    }
}
