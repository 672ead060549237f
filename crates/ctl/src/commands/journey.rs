//! `journey validate`: offline validation of journey files with the same code the node
//! runs at apply time (chorus-engine), reported as FILE:LINE: FIELD: MESSAGE.

use super::Ctx;
use crate::failure::{EXIT_OK, Failure};
use crate::output::emit_json_line;
use crate::output::{emit, emit_json};
use chorus_engine::journey::{Catalog, load_journey};
use serde_json::{Value, json};
use std::path::Path;
use std::path::PathBuf;

pub fn validate(ctx: &Ctx, files: &[PathBuf]) -> anyhow::Result<u8> {
    let mut reports = Vec::new();
    let mut bad = 0;
    for file in files {
        let text = std::fs::read_to_string(file).map_err(|e| Failure::usage(format!("cannot read {}: {e}", file.display())).hint("check the path"))?;
        match load_journey(&text, &Catalog::default()) {
            Ok(j) => {
                if !ctx.json() {
                    emit(&format!("{}: ok — journey {:?}, {} steps, entry {:?}", file.display(), j.id, j.steps.len(), j.entry.trigger));
                }
                reports.push(json!({"file": file.display().to_string(), "valid": true, "journey": j.id, "steps": j.steps.len(), "problems": []}));
            }
            Err(diags) => {
                bad += 1;
                if !ctx.json() {
                    for d in &diags {
                        let line = d.line.map(|l| format!("{l}:")).unwrap_or_default();
                        let path = if d.path.is_empty() { String::new() } else { format!(" {}:", d.path) };
                        eprintln!("{}:{line}{path} {}", file.display(), d.message);
                    }
                }
                let problems: Vec<Value> = diags.iter().map(|d| json!({"line": d.line, "path": d.path, "message": d.message})).collect();
                reports.push(json!({"file": file.display().to_string(), "valid": false, "journey": Value::Null, "steps": Value::Null, "problems": problems}));
            }
        }
    }
    if ctx.json() {
        emit_json(&Value::Array(reports));
    }
    if bad > 0 {
        if !ctx.json() {
            eprintln!("{bad} of {} files have problems", files.len());
        }
        return Ok(1);
    }
    Ok(EXIT_OK)
}

/// `journey simulate`: offline run of one journey over an NDJSON trace.
pub fn simulate(ctx: &Ctx, file: &Path, events: &Path, profile: Option<&Path>, until_ms: i64, settings: Option<&Path>) -> anyhow::Result<u8> {
    use chorus_engine::journey::run::{Compiled, RunCatalog};
    use chorus_engine::journey::simulate::{customer_from_json, simulate, trace_event};
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| Failure::usage(format!("cannot read {}: {e}", p.display())));
    let text = read(file)?;
    let def = match load_journey(&text, &Catalog::default()) {
        Ok(d) => d,
        Err(diags) => {
            for d in &diags {
                let line = d.line.map(|l| format!("{l}:")).unwrap_or_default();
                eprintln!("{}:{line} {}: {}", file.display(), d.path, d.message);
            }
            return Err(Failure::usage(format!("{} is not a valid journey", file.display())).hint("fix it, then run `chorusctl journey validate`").into());
        }
    };
    let journey = Compiled::new(def, 1).map_err(Failure::usage)?;
    let settings = match settings {
        None => Default::default(),
        Some(p) => super::settings::load(p)?,
    };
    let catalog = RunCatalog { journeys: vec![std::sync::Arc::new(journey)], settings, ..Default::default() };
    let customer = match profile {
        None => customer_from_json(&json!({})),
        Some(p) => {
            let v: Value = serde_json::from_str(&read(p)?).map_err(|e| Failure::usage(format!("{}: invalid JSON: {e}", p.display())))?;
            customer_from_json(&v)
        }
    }
    .map_err(|e| Failure::usage(format!("profile: {e}")))?;
    let mut trace = Vec::new();
    for (n, line) in read(events)?.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| Failure::usage(format!("{} line {}: invalid JSON: {e}", events.display(), n + 1)))?;
        trace.push(trace_event(&v, n + 1).map_err(|e| Failure::usage(format!("{}: {e}", events.display())))?);
    }
    if trace.is_empty() {
        return Err(Failure::usage(format!("{} has no events", events.display())).into());
    }
    let last = trace.iter().map(|(t, _)| *t).max().unwrap_or(0);
    let lines = simulate(&catalog, customer, trace, last.saturating_add(until_ms), &chorus_engine::EngineConfig::default());
    for l in &lines {
        if ctx.json() {
            emit_json_line(&json!({"at_ms": l.at_ms, "at": chorus_types::time::format_rfc3339_ms(l.at_ms), "kind": l.kind, "text": l.text}));
        } else {
            emit(&format!("{}  {:<9} {}", chorus_types::time::format_rfc3339_ms(l.at_ms), l.kind, l.text));
        }
    }
    Ok(EXIT_OK)
}

/// `journey apply`: Journeys.Apply for each file, in order.
pub async fn apply(ctx: &Ctx, files: &[PathBuf]) -> anyhow::Result<u8> {
    use chorus_proto::v1::ApplyJourneyRequest;
    use chorus_proto::v1::journeys_client::JourneysClient;
    let mut client = JourneysClient::new(ctx.connect().await?);
    let mut out = Vec::new();
    for file in files {
        let source = std::fs::read_to_string(file).map_err(|e| Failure::usage(format!("cannot read {}: {e}", file.display())))?;
        let req = ApplyJourneyRequest { source, file_name: file.display().to_string() };
        let resp = ctx.call("apply a journey", client.apply(req)).await?;
        if !ctx.json() {
            emit(&format!("{}: journey {:?} is now version {}", file.display(), resp.id, resp.version));
        }
        out.push(json!({"file": file.display().to_string(), "id": resp.id, "version": resp.version}));
    }
    if ctx.json() {
        emit_json(&Value::Array(out));
    }
    Ok(EXIT_OK)
}

/// `journey list`: Journeys.List.
pub async fn list(ctx: &Ctx) -> anyhow::Result<u8> {
    use chorus_proto::v1::ListJourneysRequest;
    use chorus_proto::v1::journeys_client::JourneysClient;
    let mut client = JourneysClient::new(ctx.connect().await?);
    let resp = ctx.call("list journeys", client.list(ListJourneysRequest {})).await?;
    if ctx.json() {
        let js: Vec<Value> = resp.journeys.iter().map(summary_json).collect();
        emit_json(&json!({"journeys": js}));
    } else if resp.journeys.is_empty() {
        eprintln!("no journeys: apply one with `chorusctl journey apply FILE`");
    } else {
        let mut t = crate::output::Table::new(&["ID", "VERSION", "STATE", "CATEGORY", "PRIORITY", "STEPS", "ENTRY", "NAME"]);
        for j in &resp.journeys {
            t.push(vec![
                j.id.clone(),
                j.version.to_string(),
                j.lifecycle.clone(),
                j.category.clone(),
                j.priority.to_string(),
                j.steps.to_string(),
                j.entry.clone(),
                j.name.clone(),
            ]);
        }
        emit(&t.render());
    }
    Ok(EXIT_OK)
}

fn summary_json(j: &chorus_proto::v1::JourneySummary) -> Value {
    json!({"id": j.id, "version": j.version, "versions": j.versions, "lifecycle": j.lifecycle, "name": j.name, "category": j.category, "priority": j.priority, "entry": j.entry, "steps": j.steps})
}

/// `journey show`: Journeys.Show.
pub async fn show(ctx: &Ctx, id: &str) -> anyhow::Result<u8> {
    use chorus_proto::v1::ShowJourneyRequest;
    use chorus_proto::v1::journeys_client::JourneysClient;
    let mut client = JourneysClient::new(ctx.connect().await?);
    let r = ctx.call("show a journey", client.show(ShowJourneyRequest { id: id.to_string() })).await?;
    let s = r.summary.unwrap_or_default();
    let def: Value = serde_json::from_str(&r.definition_json).unwrap_or(Value::Null);
    if ctx.json() {
        let mut v = summary_json(&s);
        v["definition"] = def;
        emit_json(&v);
        return Ok(EXIT_OK);
    }
    let versions: Vec<String> = s.versions.iter().map(|v| format!("v{v}")).collect();
    emit(&format!("journey     {} — {}", s.id, s.name));
    emit(&format!("state       {}", s.lifecycle));
    emit(&format!("version     v{} (stored: {})", s.version, versions.join(", ")));
    emit(&format!("category    {}, priority {}", s.category, s.priority));
    emit(&format!("entry       {}", s.entry));
    emit(&format!("steps       {}", s.steps));
    emit("");
    emit(&serde_json::to_string_pretty(&def).unwrap_or_default());
    Ok(EXIT_OK)
}

/// `journey pause|resume|archive`: Journeys.SetLifecycle.
pub async fn set_lifecycle(ctx: &Ctx, id: &str, lifecycle: &str) -> anyhow::Result<u8> {
    use chorus_proto::v1::SetLifecycleRequest;
    use chorus_proto::v1::journeys_client::JourneysClient;
    let mut client = JourneysClient::new(ctx.connect().await?);
    let r =
        ctx.call("change a journey's lifecycle", client.set_lifecycle(SetLifecycleRequest { id: id.to_string(), lifecycle: lifecycle.to_string() })).await?;
    if ctx.json() {
        emit_json(&json!({"id": r.id, "lifecycle": r.lifecycle}));
    } else {
        let what = match r.lifecycle.as_str() {
            "paused" => "paused: no new entries; customers in flight hold at their next step",
            "archived" => "archived: no new entries; customers in flight exit at their next step",
            _ => "active: taking entries; held customers move on",
        };
        emit(&format!("journey {:?} is {what}", r.id));
    }
    Ok(EXIT_OK)
}

/// `journey stats`: Journeys.Stats.
pub async fn stats(ctx: &Ctx, id: &str) -> anyhow::Result<u8> {
    use chorus_proto::v1::JourneyStatsRequest;
    use chorus_proto::v1::journeys_client::JourneysClient;
    let mut client = JourneysClient::new(ctx.connect().await?);
    let r = ctx.call("read journey stats", client.stats(JourneyStatsRequest { id: id.to_string() })).await?;
    let num = |x: f64| if x.is_finite() { json!(x) } else { Value::Null };
    if ctx.json() {
        let counters: Vec<Value> =
            r.counters.iter().map(|c| json!({"version": c.version, "step": c.step, "what": c.what, "count": c.count, "sum": c.sum})).collect();
        emit_json(&json!({
            "id": r.id, "entered": r.entered, "converted": r.converted, "revenue": r.revenue,
            "holdout_entered": r.holdout_entered, "holdout_converted": r.holdout_converted,
            "treatment_rate": r.treatment_rate, "holdout_rate": r.holdout_rate,
            "absolute_lift": r.absolute_lift, "relative_lift": num(r.relative_lift),
            "ci95": if r.holdout_entered > 0 { json!([r.ci95_low, r.ci95_high]) } else { Value::Null },
            "counters": counters,
            "time_to_conversion": r.time_to_conversion.iter().map(|b| json!({"bucket": b.bucket, "count": b.count, "mean_ms": b.mean_ms})).collect::<Vec<_>>(),
            "top_paths": r.top_paths.iter().map(|p| json!({"path": p.path, "count": p.count})).collect::<Vec<_>>(),
            "exits": r.exits.iter().map(|e| json!({"reason": e.reason, "count": e.count})).collect::<Vec<_>>(),
        }));
        return Ok(EXIT_OK);
    }
    let pct = |x: f64| format!("{:.2}%", x * 100.0);
    emit(&format!("journey     {}", r.id));
    emit(&format!("entered     {} (+ {} in holdout)", r.entered, r.holdout_entered));
    emit(&format!("converted   {} ({}), revenue {:.2}", r.converted, pct(r.treatment_rate), r.revenue));
    if r.holdout_entered > 0 {
        let rel = if r.relative_lift.is_finite() { pct(r.relative_lift) } else { "n/a".into() };
        emit(&format!("holdout     {} of {} converted ({})", r.holdout_converted, r.holdout_entered, pct(r.holdout_rate)));
        emit(&format!("lift        {} absolute, {} relative, 95% CI [{}, {}]", pct(r.absolute_lift), rel, pct(r.ci95_low), pct(r.ci95_high)));
    } else {
        emit("lift        n/a (no holdout group yet)");
    }
    if r.converted > 0 {
        let ttc: Vec<String> = r.time_to_conversion.iter().filter(|b| b.count > 0).map(|b| format!("{} {}", b.bucket, b.count)).collect();
        emit(&format!("time to convert  {}", ttc.join(", ")));
    }
    if !r.exits.is_empty() {
        let exits: Vec<String> = r.exits.iter().map(|e| format!("{} {}", e.reason, e.count)).collect();
        emit(&format!("ended       {}", exits.join(", ")));
    }
    if !r.top_paths.is_empty() {
        emit("");
        let mut t = crate::output::Table::new(&["COUNT", "PATH"]);
        for p in &r.top_paths {
            t.push(vec![p.count.to_string(), p.path.replace('>', " → ")]);
        }
        emit(&t.render());
    }
    let mut t = crate::output::Table::new(&["VERSION", "STEP", "WHAT", "COUNT", "SUM"]);
    for c in &r.counters {
        t.push(vec![c.version.to_string(), c.step.clone(), c.what.clone(), c.count.to_string(), format!("{:.2}", c.sum)]);
    }
    emit("");
    emit(&t.render());
    Ok(EXIT_OK)
}

/// `journey enroll`: Journeys.Enroll.
pub async fn enroll(ctx: &Ctx, journey: &str, target: &crate::args::ProfileTarget, properties: Option<&str>, request_id: Option<&str>) -> anyhow::Result<u8> {
    use chorus_proto::v1::EnrollRequest;
    use chorus_proto::v1::journeys_client::JourneysClient;
    if let Some(p) = properties {
        match serde_json::from_str::<Value>(p) {
            Ok(Value::Object(_)) => {}
            _ => {
                return Err(Failure::usage(format!("--properties {p:?} is not a JSON object")).hint("e.g. --properties '{\"offer\": \"10%\"}'").into());
            }
        }
    }
    let mut client = JourneysClient::new(ctx.connect().await?);
    let req = EnrollRequest {
        journey: journey.to_string(),
        profile: Some(super::profile::profile_ref(target)),
        properties_json: properties.unwrap_or_default().to_string(),
        request_id: request_id.unwrap_or_default().to_string(),
    };
    let r = ctx.call("enroll a customer", client.enroll(req)).await?;
    if ctx.json() {
        emit_json(&json!({"customer_id": r.customer_id, "journey": r.journey}));
    } else {
        emit(&format!("{} enrolled in journey {:?}", r.customer_id, r.journey));
    }
    Ok(EXIT_OK)
}
