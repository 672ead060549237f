//! `settings show|validate|apply`: the cluster's guardrail settings (SPEC §5) — caps,
//! quiet hours, default time zone — as a file operators edit and apply.

use super::Ctx;
use crate::failure::{EXIT_OK, Failure};
use crate::output::{emit, emit_json};
use chorus_engine::guard::Settings;
use serde_json::{Value, json};
use std::path::Path;

/// Read and validate a settings file, printing each problem as FILE:LINE: FIELD: MESSAGE.
pub fn load(file: &Path) -> anyhow::Result<Settings> {
    let text = std::fs::read_to_string(file).map_err(|e| Failure::usage(format!("cannot read {}: {e}", file.display())).hint("check the path"))?;
    chorus_engine::settings::parse_settings(&text).map_err(|diags| {
        for d in &diags {
            let line = d.line.map(|l| format!("{l}:")).unwrap_or_default();
            let path = if d.path.is_empty() { String::new() } else { format!(" {}:", d.path) };
            eprintln!("{}:{line}{path} {}", file.display(), d.message);
        }
        Failure::usage(format!("{} is not a valid settings file ({} problem(s))", file.display(), diags.len())).into()
    })
}

pub fn validate(ctx: &Ctx, file: &Path) -> anyhow::Result<u8> {
    let s = load(file)?;
    if ctx.json() {
        emit_json(&json!({"file": file.display().to_string(), "valid": true, "settings": chorus_engine::settings::settings_json(&s)}));
    } else {
        emit(&format!("{}: ok — {} cap(s), quiet hours on {} channel(s), default zone {}", file.display(), s.caps.len(), s.quiet_hours.len(), s.timezone));
    }
    Ok(EXIT_OK)
}

fn print(ctx: &Ctx, r: &chorus_proto::v1::SettingsResponse) {
    if ctx.json() {
        emit_json(&serde_json::from_str::<Value>(&r.json).unwrap_or(Value::Null));
    } else {
        emit(r.text.trim_end());
    }
}

pub async fn show(ctx: &Ctx) -> anyhow::Result<u8> {
    use chorus_proto::v1::GetSettingsRequest;
    use chorus_proto::v1::settings_client::SettingsClient;
    let mut client = SettingsClient::new(ctx.connect().await?);
    let r = ctx.call("read the settings", client.get(GetSettingsRequest {})).await?;
    print(ctx, &r);
    Ok(EXIT_OK)
}

pub async fn apply(ctx: &Ctx, file: &Path) -> anyhow::Result<u8> {
    use chorus_proto::v1::PutSettingsRequest;
    use chorus_proto::v1::settings_client::SettingsClient;
    load(file)?; // the same validation offline first: problems print with their lines
    let source = std::fs::read_to_string(file).map_err(|e| Failure::usage(format!("cannot read {}: {e}", file.display())))?;
    let mut client = SettingsClient::new(ctx.connect().await?);
    let r = ctx.call("apply the settings", client.put(PutSettingsRequest { source, file_name: file.display().to_string() })).await?;
    if !ctx.json() {
        eprintln!("{}: settings applied on every shard", file.display());
    }
    print(ctx, &r);
    Ok(EXIT_OK)
}
