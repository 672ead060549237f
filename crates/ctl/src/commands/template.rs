//! `template validate` and `template render`: offline checks and previews of template
//! files with the code the node uses (chorus-templates). Reads the files; the crate
//! does the rest. Problems are FILE:LINE: FIELD: MESSAGE.

use super::Ctx;
use crate::failure::{EXIT_FAILED, EXIT_OK, Failure};
use crate::output::{emit, emit_json, key_values};
use chorus_templates::{Context, Links, Tracking};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};

/// Preview links: clearly not real (RFC 2606 `.invalid`), so nothing is signed.
const PREVIEW_UNSUBSCRIBE: &str = "https://chorus.invalid/unsubscribe/preview";
const PREVIEW_PREFERENCES: &str = "https://chorus.invalid/preferences/preview";
/// `profile.id` when the profile file does not give one.
const PREVIEW_CUSTOMER: &str = "cu_preview";

fn read(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())).hint("check the path"))
}

fn read_object(path: &Path, what: &str) -> Result<Map<String, Value>, Failure> {
    match serde_json::from_str::<Value>(&read(path)?) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(Failure::usage(format!("{}: {what} must be a JSON object, got {}", path.display(), crate::args::json_kind(&other)))),
        Err(e) => Err(Failure::usage(format!("{}: invalid JSON: {e}", path.display()))),
    }
}

pub fn validate(ctx: &Ctx, files: &[PathBuf]) -> anyhow::Result<u8> {
    let mut reports = Vec::new();
    let mut bad = 0;
    for file in files {
        let text = read(file)?;
        let name = file.display().to_string();
        match chorus_templates::parse(&text, &name) {
            Ok(t) => {
                if !ctx.json() {
                    let locales = if t.locales().is_empty() { String::new() } else { format!(", locales {}", t.locales().join(", ")) };
                    emit(&format!("{name}: ok — template {:?} ({}), channels {}{locales}", t.id(), t.category().as_str(), t.channels().join(", ")));
                }
                reports.push(json!({"file": name, "valid": true, "template": t.id(), "channels": t.channels(), "locales": t.locales(), "problems": []}));
            }
            Err(diags) => {
                bad += 1;
                if !ctx.json() {
                    for d in &diags {
                        eprintln!("{d}");
                    }
                }
                let problems: Vec<Value> = diags.iter().map(|d| json!({"line": d.line, "path": d.path, "message": d.message})).collect();
                reports.push(json!({"file": name, "valid": false, "template": Value::Null, "channels": [], "locales": [], "problems": problems}));
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
        return Ok(EXIT_FAILED);
    }
    Ok(EXIT_OK)
}

/// The optional inputs of `template render`.
pub struct Inputs {
    pub profile: Option<PathBuf>,
    pub vars: Option<PathBuf>,
    pub event: Option<PathBuf>,
    pub locale: Option<String>,
}

pub fn render(ctx: &Ctx, file: &Path, channel: &str, inputs: Inputs) -> anyhow::Result<u8> {
    let name = file.display().to_string();
    let template = match chorus_templates::parse(&read(file)?, &name) {
        Ok(t) => t,
        Err(diags) => {
            for d in &diags {
                eprintln!("{d}");
            }
            return Err(Failure::usage(format!("{name} is not a valid template")).hint("fix it, then run `chorusctl template validate`").into());
        }
    };
    let mut customer_id = PREVIEW_CUSTOMER.to_string();
    let profile = match &inputs.profile {
        None => Map::new(),
        Some(p) => {
            let mut m = read_object(p, "a profile")?;
            if let Some(Value::String(id)) = m.get("customer_id") {
                customer_id = id.clone();
            }
            // The `journey simulate` shape: {"attributes": {...}, "identities": ..., ...}.
            match m.remove("attributes") {
                Some(Value::Object(attrs)) => attrs,
                Some(other) => {
                    m.insert("attributes".into(), other);
                    m
                }
                None => m,
            }
        }
    };
    let object = |p: &Option<PathBuf>, what: &str| p.as_ref().map_or(Ok(Map::new()), |p| read_object(p, what));
    let context = Context {
        customer_id,
        profile,
        event: object(&inputs.event, "an event")?,
        vars: object(&inputs.vars, "vars")?,
        journey: None,
        message_id: "preview".into(),
        links: Links { unsubscribe: PREVIEW_UNSUBSCRIBE.into(), preferences: PREVIEW_PREFERENCES.into() },
        locale: inputs.locale,
    };
    let rendered = template.render(channel, &context, &Tracking::default()).map_err(|e| Failure::new(e.to_string()))?;
    let value = serde_json::to_value(&rendered).map_err(|e| Failure::new(format!("cannot show the rendered message: {e}")))?;
    if ctx.json() {
        emit_json(&value);
        return Ok(EXIT_OK);
    }
    let Value::Object(fields) = value else {
        return Ok(EXIT_OK);
    };
    let pairs: Vec<(&str, String)> = fields.iter().map(|(k, v)| (k.as_str(), cell(v))).collect();
    emit(&key_values(&pairs));
    Ok(EXIT_OK)
}

/// A field's value for people: text as is, `-` for none, headers as `Name: value`
/// lines, buttons as `label → action` lines.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Object(m) if m.is_empty() => "-".into(),
        Value::Object(m) => m.iter().map(|(k, v)| format!("{k}: {}", v.as_str().map_or_else(|| v.to_string(), str::to_string))).collect::<Vec<_>>().join("\n"),
        Value::Array(items) if items.is_empty() => "-".into(),
        Value::Array(items) => {
            items.iter().map(|b| format!("{} → {}", b["label"].as_str().unwrap_or(""), b["action"].as_str().unwrap_or(""))).collect::<Vec<_>>().join("\n")
        }
        other => other.to_string(),
    }
}

/// `template apply`: Templates.Apply for each file, in order.
pub async fn apply(ctx: &Ctx, files: &[PathBuf]) -> anyhow::Result<u8> {
    use chorus_proto::v1::ApplyTemplateRequest;
    use chorus_proto::v1::templates_client::TemplatesClient;
    let mut client = TemplatesClient::new(ctx.connect().await?);
    let mut out = Vec::new();
    for file in files {
        let source = read(file)?;
        let req = ApplyTemplateRequest { source, file_name: file.display().to_string() };
        let r = ctx.call("apply a template", client.apply(req)).await?;
        if !ctx.json() {
            emit(&format!("{}: template {:?} is now version {}", file.display(), r.id, r.version));
        }
        out.push(json!({"file": file.display().to_string(), "id": r.id, "version": r.version}));
    }
    if ctx.json() {
        emit_json(&Value::Array(out));
    }
    Ok(EXIT_OK)
}

/// `template list`: Templates.List.
pub async fn list(ctx: &Ctx) -> anyhow::Result<u8> {
    use chorus_proto::v1::ListTemplatesRequest;
    use chorus_proto::v1::templates_client::TemplatesClient;
    let mut client = TemplatesClient::new(ctx.connect().await?);
    let r = ctx.call("list templates", client.list(ListTemplatesRequest {})).await?;
    if ctx.json() {
        let list: Vec<Value> = r.templates.iter().map(|t| json!({"id": t.id, "version": t.version, "name": t.name, "category": t.category, "channels": t.channels, "locales": t.locales, "file": t.file})).collect();
        emit_json(&json!({"templates": list}));
    } else if r.templates.is_empty() {
        eprintln!("no templates: apply some with `chorusctl template apply FILE...`");
    } else {
        let mut t = crate::output::Table::new(&["ID", "VERSION", "CATEGORY", "CHANNELS", "LOCALES", "NAME"]);
        for x in &r.templates {
            t.push(vec![x.id.clone(), x.version.to_string(), x.category.clone(), x.channels.join(","), x.locales.join(","), x.name.clone()]);
        }
        emit(&t.render());
    }
    Ok(EXIT_OK)
}
