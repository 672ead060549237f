//! `audience validate|apply|list|count|preview` (SPEC §6.2).

use super::Ctx;
use crate::failure::{EXIT_OK, Failure};
use crate::output::{emit, emit_json};
use chorus_proto::v1::audiences_client::AudiencesClient;
use serde_json::{Value, json};
use std::path::PathBuf;

fn read(file: &PathBuf) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(file).map_err(|e| Failure::usage(format!("cannot read {}: {e}", file.display())).hint("check the path"))?)
}

pub fn validate(ctx: &Ctx, files: &[PathBuf]) -> anyhow::Result<u8> {
    let mut reports = Vec::new();
    let mut bad = 0;
    for file in files {
        match chorus_engine::audience::parse_audience(&read(file)?) {
            Ok(a) => {
                if !ctx.json() {
                    emit(&format!("{}: ok — audience {:?}: {}", file.display(), a.id, a.condition));
                }
                reports.push(json!({"file": file.display().to_string(), "valid": true, "audience": a.id, "problems": []}));
            }
            Err(diags) => {
                bad += 1;
                for d in &diags {
                    if !ctx.json() {
                        let line = d.line.map(|l| format!("{l}:")).unwrap_or_default();
                        let path = if d.path.is_empty() { String::new() } else { format!(" {}:", d.path) };
                        eprintln!("{}:{line}{path} {}", file.display(), d.message);
                    }
                }
                let problems: Vec<Value> = diags.iter().map(|d| json!({"line": d.line, "path": d.path, "message": d.message})).collect();
                reports.push(json!({"file": file.display().to_string(), "valid": false, "audience": Value::Null, "problems": problems}));
            }
        }
    }
    if ctx.json() {
        emit_json(&Value::Array(reports));
    }
    Ok(if bad > 0 { 1 } else { EXIT_OK })
}

pub async fn apply(ctx: &Ctx, files: &[PathBuf]) -> anyhow::Result<u8> {
    use chorus_proto::v1::ApplyAudienceRequest;
    let mut client = AudiencesClient::new(ctx.connect().await?);
    let mut out = Vec::new();
    for file in files {
        let req = ApplyAudienceRequest { source: read(file)?, file_name: file.display().to_string() };
        let r = ctx.call("apply an audience", client.apply(req)).await?;
        if !ctx.json() {
            emit(&format!("{}: audience {:?} is now version {} — {} customers evaluated, {} members", file.display(), r.id, r.version, r.evaluated, r.members));
        }
        out.push(json!({"file": file.display().to_string(), "id": r.id, "version": r.version, "evaluated": r.evaluated, "members": r.members}));
    }
    if ctx.json() {
        emit_json(&Value::Array(out));
    }
    Ok(EXIT_OK)
}

pub async fn list(ctx: &Ctx) -> anyhow::Result<u8> {
    use chorus_proto::v1::ListAudiencesRequest;
    let mut client = AudiencesClient::new(ctx.connect().await?);
    let r = ctx.call("list audiences", client.list(ListAudiencesRequest {})).await?;
    if ctx.json() {
        let list: Vec<Value> = r
            .audiences
            .iter()
            .map(|a| json!({"id": a.id, "version": a.version, "name": a.name, "description": a.description, "condition": a.condition, "members": a.members}))
            .collect();
        emit_json(&json!({"audiences": list}));
    } else if r.audiences.is_empty() {
        eprintln!("no audiences: apply one with `chorusctl audience apply FILE`");
    } else {
        let mut t = crate::output::Table::new(&["ID", "VERSION", "MEMBERS", "NAME", "CONDITION"]);
        for a in &r.audiences {
            t.push(vec![a.id.clone(), a.version.to_string(), a.members.to_string(), a.name.clone(), a.condition.clone()]);
        }
        emit(&t.render());
    }
    Ok(EXIT_OK)
}

pub async fn count(ctx: &Ctx, id: &str) -> anyhow::Result<u8> {
    use chorus_proto::v1::AudienceCountRequest;
    let mut client = AudiencesClient::new(ctx.connect().await?);
    let r = ctx.call("count an audience", client.count(AudienceCountRequest { id: id.to_string() })).await?;
    if ctx.json() {
        let per: Vec<Value> = r.per_shard.iter().map(|s| json!({"shard": s.shard, "count": s.count})).collect();
        emit_json(&json!({"id": r.id, "count": r.count, "per_shard": per}));
    } else {
        emit(&format!("{} customers in audience {:?}", r.count, r.id));
    }
    Ok(EXIT_OK)
}

pub async fn preview(ctx: &Ctx, id: &str, limit: u32) -> anyhow::Result<u8> {
    use chorus_proto::v1::AudiencePreviewRequest;
    let mut client = AudiencesClient::new(ctx.connect().await?);
    let r = ctx.call("preview an audience", client.preview(AudiencePreviewRequest { id: id.to_string(), limit })).await?;
    if ctx.json() {
        let members: Vec<Value> = r
            .members
            .iter()
            .map(|m| json!({"customer_id": m.customer_id, "identities": m.identities.iter().map(|i| json!({"kind": i.kind, "value": i.value})).collect::<Vec<_>>()}))
            .collect();
        emit_json(&json!({"id": r.id, "count": r.count, "members": members}));
    } else {
        emit(&format!("{} customers in audience {:?}; showing {}", r.count, r.id, r.members.len()));
        let mut t = crate::output::Table::new(&["CUSTOMER", "IDENTITIES"]);
        for m in &r.members {
            t.push(vec![m.customer_id.clone(), m.identities.iter().map(|i| format!("{}:{}", i.kind, i.value)).collect::<Vec<_>>().join(" ")]);
        }
        emit(&t.render());
    }
    Ok(EXIT_OK)
}
