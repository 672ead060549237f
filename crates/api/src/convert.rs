//! Wire ↔ domain conversions: proto events to `EventInput`, profiles to proto, and
//! the shared ingest pipeline (validate, ingest, per-event results).

use crate::ApiError;
use chorus_engine::CustomerState;
use chorus_proto::v1;
use chorus_shard::{ShardError, Shards};
use chorus_types::{EventInput, EventOutcome, FieldError, Identity, IdentityKind};
use serde_json::{Map, Value};

fn parse_object(field: &str, text: &str) -> Result<Map<String, Value>, FieldError> {
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(FieldError::new(field, format!("must be a JSON object, got {}", chorus_types::json::json_kind(&other)))),
        Err(e) => Err(FieldError::new(field, format!("is not valid JSON: {e}"))),
    }
}

/// A proto event as raw input (JSON fields parsed; validation happens after).
pub fn event_input(e: v1::Event) -> Result<EventInput, FieldError> {
    Ok(EventInput {
        message_id: e.message_id,
        event_type: e.r#type,
        name: e.name,
        identities: e.identities.into_iter().map(|i| (i.kind, i.value)).collect(),
        properties: parse_object("properties_json", &e.properties_json)?,
        traits: parse_object("traits_json", &e.traits_json)?,
        context: parse_object("context_json", &e.context_json)?,
        timestamp: e.timestamp,
        timestamp_ms: e.timestamp_ms,
    })
}

/// The result of one event of a batch.
pub enum ItemResult {
    Outcome(EventOutcome),
    Rejected(FieldError),
    Failed(ShardError),
}

/// Validate inputs and ingest the valid ones; one result per input, in order.
/// A bad input never affects the others.
pub async fn ingest_inputs(shards: &Shards, inputs: Vec<Result<EventInput, FieldError>>, received_ms: i64) -> Vec<ItemResult> {
    let n = inputs.len();
    let mut results: Vec<Option<ItemResult>> = (0..n).map(|_| None).collect();
    let mut valid = Vec::with_capacity(n);
    let mut positions = Vec::with_capacity(n);
    for (i, input) in inputs.into_iter().enumerate() {
        match input.and_then(|mut inp| {
            if inp.timestamp.is_empty() && inp.timestamp_ms == 0 {
                inp.timestamp_ms = received_ms;
            }
            inp.validate()
        }) {
            Ok(e) => {
                valid.push(e);
                positions.push(i);
            }
            Err(fe) => results[i] = Some(ItemResult::Rejected(fe)),
        }
    }
    let outcomes = shards.ingest(valid).await;
    for (pos, outcome) in positions.into_iter().zip(outcomes) {
        results[pos] = Some(match outcome {
            Ok(o) => ItemResult::Outcome(o),
            Err(e) => ItemResult::Failed(e),
        });
    }
    results.into_iter().map(|r| r.expect("every input has a result")).collect()
}

/// Per-event proto results, and the overload message when overload kept every
/// valid event out (unary calls answer that with RESOURCE_EXHAUSTED).
pub fn proto_results(results: Vec<ItemResult>) -> (Vec<v1::EventResult>, Option<String>) {
    let mut out = Vec::with_capacity(results.len());
    let mut overloaded = 0;
    let mut accepted = 0;
    let mut first_overload = None;
    for (i, r) in results.into_iter().enumerate() {
        let mut er = v1::EventResult { index: i as u32, ..Default::default() };
        match r {
            ItemResult::Outcome(o) => {
                accepted += 1;
                match o {
                    EventOutcome::Applied { customer } | EventOutcome::Forwarded { customer, .. } | EventOutcome::Parked { customer } => {
                        er.status = v1::EventStatus::Accepted as i32;
                        er.customer_id = customer.to_string();
                    }
                    EventOutcome::Duplicate => er.status = v1::EventStatus::Duplicate as i32,
                }
            }
            ItemResult::Rejected(fe) => {
                er.status = v1::EventStatus::Rejected as i32;
                er.field = fe.field;
                er.error = fe.message;
            }
            ItemResult::Failed(e) => {
                if matches!(e, ShardError::Overloaded { .. }) {
                    overloaded += 1;
                    first_overload.get_or_insert_with(|| e.to_string());
                }
                er.status = v1::EventStatus::Retry as i32;
                er.error = e.to_string();
            }
        }
        out.push(er);
    }
    let all_overloaded = (overloaded > 0 && accepted == 0).then(|| first_overload.unwrap_or_default());
    (out, all_overloaded)
}

/// Parse `kind` + raw value into a normalized identity.
pub fn identity(kind: &str, value: &str) -> Result<Identity, ApiError> {
    let k = IdentityKind::parse(kind).map_err(|e| ApiError::invalid("identity.kind", e.to_string()))?;
    Identity::normalize(k, value).map_err(|e| ApiError::invalid("identity.value", e.to_string()))
}

pub fn profile(state: &CustomerState, merged_into: Option<String>, events: usize) -> v1::Profile {
    let consent = serde_json::json!({
        "channels": state.consent.channels.iter().map(|(k, v)| (k.clone(), serde_json::json!({"status": v.status.as_str(), "at_ms": v.at_ms, "source": v.source}))).collect::<Map<String, Value>>(),
        "topics": state.consent.topics.iter().map(|(k, v)| (k.clone(), serde_json::json!({"status": v.status.as_str(), "at_ms": v.at_ms, "source": v.source}))).collect::<Map<String, Value>>(),
    });
    v1::Profile {
        customer_id: state.id.to_string(),
        identities: state.identities.iter().map(|i| v1::Identity { kind: i.kind.as_str().to_string(), value: i.value.clone() }).collect(),
        attributes_json: serde_json::to_string(&state.attributes.0).unwrap_or_default(),
        created_ms: state.created_ms,
        updated_ms: state.updated_ms,
        event_count: state.event_count,
        recent_events: state
            .history
            .iter()
            .rev()
            .take(events)
            .map(|e| v1::RecentEvent {
                message_id: e.message_id.clone(),
                r#type: e.event_type.as_str().to_string(),
                name: e.name.clone(),
                timestamp_ms: e.timestamp_ms,
                received_ms: e.received_ms,
                properties_json: if e.properties.is_empty() { "{}".to_string() } else { e.properties.clone() },
            })
            .collect(),
        merged_from: state.merged_from.iter().map(|c| c.to_string()).collect(),
        merged_into: merged_into.unwrap_or_default(),
        shard: state.id.home_shard(),
        consent_json: consent.to_string(),
    }
}

/// A customer's consent and its ledger.
pub fn consent(state: &CustomerState) -> v1::ConsentResponse {
    let current = |kind: &str, m: &std::collections::BTreeMap<String, chorus_engine::ConsentEntry>| -> Vec<v1::ConsentState> {
        m.iter()
            .map(|(k, e)| v1::ConsentState { scope: format!("{kind}:{k}"), status: e.status.as_str().to_string(), at_ms: e.at_ms, source: e.source.clone() })
            .collect()
    };
    let mut all = current("channel", &state.consent.channels);
    all.extend(current("topic", &state.consent.topics));
    v1::ConsentResponse {
        customer_id: state.id.to_string(),
        current: all,
        ledger: state
            .consent
            .ledger
            .iter()
            .map(|c| v1::ConsentLedgerEntry {
                at_ms: c.at_ms,
                scope: c.scope.clone(),
                status: c.status.as_str().to_string(),
                source: c.source.clone(),
                evidence: c.evidence.clone(),
            })
            .collect(),
    }
}

/// Ingest `input` as an event of `state`'s customer: routed by the customer's strongest
/// identity (so it is ordered with the rest of their inputs), with `context.chorus`
/// set when Chorus itself is the source (clients may not set it). Waits for the commit.
pub async fn ingest_as_customer(
    shards: &chorus_shard::Shards,
    state: &CustomerState,
    mut input: chorus_types::EventInput,
    chorus: Option<Value>,
) -> Result<(), ApiError> {
    let identity = chorus_types::routing::strongest(&state.identities).ok_or_else(|| ApiError::Internal(format!("customer {} has no identity", state.id)))?;
    input.identities = vec![(identity.kind.as_str().to_string(), identity.value.clone())];
    let mut event = input.validate().map_err(|e| ApiError::invalid(e.field, e.message))?;
    if let Some(c) = chorus {
        event.context = serde_json::json!({ chorus_types::event::CHORUS_CONTEXT_KEY: c }).to_string();
    }
    for r in shards.ingest(vec![event]).await {
        r.map_err(ApiError::from)?;
    }
    Ok(())
}
