//! `profile get|find|explain`: Profiles.Get and Profiles.Explain by customer id or
//! identity, shown as a key/value block and tables, or JSON. Read-only.

use super::Ctx;
use crate::args::ProfileTarget;
use crate::failure::{self, EXIT_OK, Failure};
use crate::output::{self, Table, emit, emit_json, json_text, key_values, opt_string, time_cell, time_json, truncate};
use chorus_proto::v1::profiles_client::ProfilesClient;
use chorus_proto::v1::{ExplainRequest, ExplainResponse, GetProfileRequest, Identity, Profile, ProfileRef, profile_ref};
use serde_json::{Value, json};
use tonic::Code;

/// Widest properties cell in the recent-events table.
const PROPERTIES_CELL_CHARS_MAX: usize = 60;

pub fn profile_ref(target: &ProfileTarget) -> ProfileRef {
    let r = match target {
        ProfileTarget::CustomerId(id) => profile_ref::Ref::CustomerId(id.clone()),
        ProfileTarget::Identity(i) => profile_ref::Ref::Identity(Identity { kind: i.kind.clone(), value: i.value.clone() }),
    };
    ProfileRef { r#ref: Some(r) }
}

/// NOT_FOUND in words about the customer asked for; other statuses as usual.
fn lookup_failure(ctx: &Ctx, target: &ProfileTarget, status: &tonic::Status, action: &str) -> Failure {
    if status.code() != Code::NotFound {
        return failure::from_status(status, &ctx.endpoint, action);
    }
    match target {
        ProfileTarget::CustomerId(id) => Failure::new(format!("no customer {id}")).hint("check the id; a deleted customer is gone for good"),
        ProfileTarget::Identity(i) => Failure::new(format!("no customer with {} {}", i.kind, i.value))
            .hint("identities are matched after normalization (emails lower-cased, phones in E.164); check the spelling or try another identity"),
    }
}

pub async fn get(ctx: &Ctx, target: &ProfileTarget, events: u32) -> anyhow::Result<u8> {
    let mut profiles = ProfilesClient::new(ctx.connect().await?).max_decoding_message_size(super::RESPONSE_BYTES_MAX);
    let action = "get the profile";
    let request = GetProfileRequest { profile: Some(profile_ref(target)), events };
    let profile = ctx.call_status(action, profiles.get(request)).await?.map_err(|s| lookup_failure(ctx, target, &s, action))?;
    if ctx.json() {
        emit_json(&profile_json(&profile));
    } else {
        emit(&profile_text(&profile));
    }
    Ok(EXIT_OK)
}

/// Resolve a target to a customer id (for filters that need an id).
pub async fn resolve(ctx: &Ctx, target: &ProfileTarget) -> Result<String, Failure> {
    if let ProfileTarget::CustomerId(id) = target {
        return Ok(id.clone());
    }
    let mut profiles = ProfilesClient::new(ctx.connect().await?);
    let action = "look up the customer";
    let request = GetProfileRequest { profile: Some(profile_ref(target)), events: 0 };
    let profile = ctx.call_status(action, profiles.get(request)).await?.map_err(|s| lookup_failure(ctx, target, &s, action))?;
    Ok(if profile.merged_into.is_empty() { profile.customer_id } else { profile.merged_into })
}

pub async fn explain(ctx: &Ctx, target: &ProfileTarget, journey: Option<&str>, limit: u32) -> anyhow::Result<u8> {
    let mut profiles = ProfilesClient::new(ctx.connect().await?).max_decoding_message_size(super::RESPONSE_BYTES_MAX);
    let action = "explain the customer's decisions";
    let request = ExplainRequest { profile: Some(profile_ref(target)), journey: journey.unwrap_or_default().to_string(), limit };
    let response = ctx.call_status(action, profiles.explain(request)).await?.map_err(|s| lookup_failure(ctx, target, &s, action))?;
    if ctx.json() {
        emit_json(&explain_json(&response));
    } else {
        emit(&explain_text(&response, journey));
    }
    Ok(EXIT_OK)
}

/// A consent change asked for on the command line.
pub struct ConsentChange {
    pub channel: Option<String>,
    pub topic: Option<String>,
    pub status: String,
    pub evidence: String,
    pub request_id: Option<String>,
}

/// `profile consent ID` (show) and `profile consent set ID ...`.
pub async fn consent(ctx: &Ctx, target: &ProfileTarget, change: Option<ConsentChange>) -> anyhow::Result<u8> {
    use chorus_proto::v1::{GetConsentRequest, SetConsentRequest};
    let mut profiles = ProfilesClient::new(ctx.connect().await?).max_decoding_message_size(super::RESPONSE_BYTES_MAX);
    let r = match change {
        None => {
            let action = "read the customer's consent";
            ctx.call_status(action, profiles.get_consent(GetConsentRequest { profile: Some(profile_ref(target)) }))
                .await?
                .map_err(|s| lookup_failure(ctx, target, &s, action))?
        }
        Some(c) => {
            let action = "set the customer's consent";
            let req = SetConsentRequest {
                profile: Some(profile_ref(target)),
                channel: c.channel.unwrap_or_default(),
                topic: c.topic.unwrap_or_default(),
                status: c.status,
                evidence: c.evidence,
                request_id: c.request_id.unwrap_or_default(),
            };
            ctx.call_status(action, profiles.set_consent(req)).await?.map_err(|s| lookup_failure(ctx, target, &s, action))?
        }
    };
    if ctx.json() {
        emit_json(&json!({
            "customer_id": r.customer_id,
            "current": r.current.iter().map(|c| json!({"scope": c.scope, "status": c.status, "at_ms": c.at_ms, "at": time_json(c.at_ms), "source": c.source})).collect::<Vec<_>>(),
            "ledger": r.ledger.iter().map(|l| json!({"at_ms": l.at_ms, "at": time_json(l.at_ms), "scope": l.scope, "status": l.status, "source": l.source, "evidence": l.evidence})).collect::<Vec<_>>(),
        }));
        return Ok(EXIT_OK);
    }
    emit(&format!("customer {}", r.customer_id));
    if r.current.is_empty() {
        emit("no consent recorded: channel policies for unknown consent apply (email may receive marketing; sms needs an opt-in)");
    } else {
        let mut t = crate::output::Table::new(&["SCOPE", "STATUS", "SINCE", "SOURCE"]);
        for c in &r.current {
            t.push(vec![c.scope.clone(), c.status.clone(), crate::output::time_cell(c.at_ms), c.source.clone()]);
        }
        emit(&t.render());
    }
    if !r.ledger.is_empty() {
        emit("\nledger:");
        let mut t = crate::output::Table::new(&["TIME", "SCOPE", "STATUS", "SOURCE", "EVIDENCE"]);
        for l in &r.ledger {
            t.push(vec![crate::output::time_cell(l.at_ms), l.scope.clone(), l.status.clone(), l.source.clone(), l.evidence.clone()]);
        }
        emit(&t.render());
    }
    Ok(EXIT_OK)
}

fn identities_json(ids: &[Identity]) -> Value {
    Value::Array(ids.iter().map(|i| json!({"kind": i.kind, "value": i.value})).collect())
}

fn profile_json(p: &Profile) -> Value {
    json!({
        "customer_id": p.customer_id,
        "shard": p.shard,
        "identities": identities_json(&p.identities),
        "attributes": json_text(&p.attributes_json),
        "consent": json_text(&p.consent_json),
        "created_ms": p.created_ms,
        "created": time_json(p.created_ms),
        "updated_ms": p.updated_ms,
        "updated": time_json(p.updated_ms),
        "event_count": p.event_count,
        "merged_from": p.merged_from,
        "merged_into": opt_string(&p.merged_into),
        "recent_events": p.recent_events.iter().map(|e| json!({
            "message_id": e.message_id,
            "type": e.r#type,
            "name": e.name,
            "timestamp_ms": e.timestamp_ms,
            "timestamp": time_json(e.timestamp_ms),
            "received_ms": e.received_ms,
            "received": time_json(e.received_ms),
            "properties": json_text(&e.properties_json),
        })).collect::<Vec<_>>(),
    })
}

fn profile_text(p: &Profile) -> String {
    let mut ids = Table::new(&["KIND", "VALUE"]);
    for i in &p.identities {
        ids.push(vec![i.kind.clone(), i.value.clone()]);
    }
    // The identity rows without their header line.
    let identities = if ids.is_empty() { "-".to_string() } else { ids.render().split_once('\n').map(|(_, rows)| rows.to_string()).unwrap_or_default() };
    let list_or_dash = |v: &[String]| {
        if v.is_empty() { "-".to_string() } else { v.join(", ") }
    };
    let mut pairs = vec![
        ("customer", p.customer_id.clone()),
        ("shard", p.shard.to_string()),
        ("created", time_cell(p.created_ms)),
        ("updated", time_cell(p.updated_ms)),
        ("events", p.event_count.to_string()),
        ("merged from", list_or_dash(&p.merged_from)),
    ];
    if !p.merged_into.is_empty() {
        pairs.push(("merged into", format!("{} (this customer was merged away; its survivor holds its state)", p.merged_into)));
    }
    pairs.push(("identities", identities));
    pairs.push(("attributes", output::pretty(&json_text(&p.attributes_json))));
    if !p.consent_json.trim().is_empty() {
        pairs.push(("consent", output::pretty(&json_text(&p.consent_json))));
    }
    let mut out = key_values(&pairs);
    if !p.recent_events.is_empty() {
        out.push_str(&format!("\n\nrecent events ({} of {}):\n", p.recent_events.len(), p.event_count));
        let mut t = Table::new(&["TIME", "RECEIVED", "TYPE", "NAME", "MESSAGE ID", "PROPERTIES"]);
        for e in &p.recent_events {
            let props = json_text(&e.properties_json);
            let props = if props.as_object().is_some_and(|m| m.is_empty()) { "-".to_string() } else { props.to_string() };
            t.push(vec![
                time_cell(e.timestamp_ms),
                time_cell(e.received_ms),
                output::or_dash(&e.r#type),
                output::or_dash(&e.name),
                e.message_id.clone(),
                truncate(&props, PROPERTIES_CELL_CHARS_MAX),
            ]);
        }
        out.push_str(&t.render());
    }
    out
}

fn explain_json(r: &ExplainResponse) -> Value {
    json!({
        "customer_id": r.customer_id,
        "decisions": r.decisions.iter().map(|d| json!({
            "at_ms": d.at_ms,
            "at": time_json(d.at_ms),
            "kind": d.kind,
            "reason": d.reason,
            "detail": d.detail,
        })).collect::<Vec<_>>(),
    })
}

fn explain_text(r: &ExplainResponse, journey: Option<&str>) -> String {
    let about = match journey {
        Some(j) => format!(" about journey {j}"),
        None => String::new(),
    };
    if r.decisions.is_empty() {
        return format!("no decisions recorded for {}{about}", r.customer_id);
    }
    let mut t = Table::new(&["TIME", "KIND", "REASON", "DETAIL"]);
    for d in &r.decisions {
        t.push(vec![time_cell(d.at_ms), output::or_dash(&d.kind), output::or_dash(&d.reason), output::plain_words(&d.detail)]);
    }
    let n = r.decisions.len();
    let noun = if n == 1 { "decision" } else { "decisions" };
    format!("{n} {noun} for {}{about}:\n{}", r.customer_id, t.render())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_proto::v1::{Decision, RecentEvent};

    fn profile() -> Profile {
        Profile {
            customer_id: "cu_0001000000000001".into(),
            identities: vec![Identity { kind: "user_id".into(), value: "42".into() }, Identity { kind: "email".into(), value: "ada@example.com".into() }],
            attributes_json: r#"{"first_name":"Ada","ltv":120.5}"#.into(),
            created_ms: 1_795_773_600_000,
            updated_ms: 1_795_773_660_250,
            event_count: 3,
            recent_events: vec![RecentEvent {
                message_id: "m-1".into(),
                r#type: "track".into(),
                name: "Product Viewed".into(),
                timestamp_ms: 0,
                received_ms: 1_795_773_600_000,
                properties_json: r#"{"sku":"A1"}"#.into(),
            }],
            merged_from: vec!["cu_0002000000000007".into()],
            shard: 1,
            ..Default::default()
        }
    }

    #[test]
    fn profile_json_embeds_real_json_and_rfc3339_times() {
        let j = profile_json(&profile());
        assert_eq!(j["attributes"]["ltv"], 120.5);
        assert_eq!(j["consent"], json!({}));
        assert_eq!(j["created"], "2026-11-27T10:00:00Z");
        assert_eq!(j["updated"], "2026-11-27T10:01:00.250Z");
        assert_eq!(j["merged_into"], Value::Null);
        assert_eq!(j["merged_from"], json!(["cu_0002000000000007"]));
        assert_eq!(j["identities"][1], json!({"kind": "email", "value": "ada@example.com"}));
        assert_eq!(j["recent_events"][0]["timestamp"], Value::Null);
        assert_eq!(j["recent_events"][0]["properties"]["sku"], "A1");
    }

    #[test]
    fn profile_text_is_a_readable_block() {
        let text = profile_text(&profile());
        let expected_start = "\
customer     cu_0001000000000001
shard        1
created      2026-11-27T10:00:00Z
updated      2026-11-27T10:01:00.250Z
events       3
merged from  cu_0002000000000007
identities   user_id  42
             email    ada@example.com
attributes   {
               \"first_name\": \"Ada\",
               \"ltv\": 120.5
             }

recent events (1 of 3):
TIME  RECEIVED              TYPE   NAME            MESSAGE ID  PROPERTIES
-     2026-11-27T10:00:00Z  track  Product Viewed  m-1         {\"sku\":\"A1\"}";
        assert_eq!(text, expected_start);
    }

    #[test]
    fn explain_shows_decisions_in_plain_words() {
        let r = ExplainResponse {
            customer_id: "cu_0001000000000001".into(),
            decisions: vec![Decision {
                at_ms: 1_795_773_600_000,
                kind: "send.skipped".into(),
                reason: "frequency_cap".into(),
                detail: r#"{"channel":"email","cap":"3 per 7d"}"#.into(),
            }],
        };
        let text = explain_text(&r, Some("welcome"));
        assert!(text.starts_with("1 decision for cu_0001000000000001 about journey welcome:\nTIME"), "{text}");
        assert!(text.ends_with("2026-11-27T10:00:00Z  send.skipped  frequency_cap  channel=email, cap=3 per 7d"), "{text}");
        assert_eq!(explain_json(&r)["decisions"][0]["at"], "2026-11-27T10:00:00Z");
        let empty = ExplainResponse { customer_id: "cu_1".into(), decisions: vec![] };
        assert_eq!(explain_text(&empty, None), "no decisions recorded for cu_1");
    }
}
