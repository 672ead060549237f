//! `journey validate`: offline validation of journey files with the same code the node
//! runs at apply time (chorus-engine), reported as FILE:LINE: FIELD: MESSAGE.

use super::Ctx;
use crate::failure::{EXIT_OK, Failure};
use crate::output::{emit, emit_json};
use chorus_engine::journey::{Catalog, load_journey};
use serde_json::{Value, json};
use std::path::PathBuf;

pub fn validate(ctx: &Ctx, files: &[PathBuf]) -> anyhow::Result<u8> {
    let mut reports = Vec::new();
    let mut bad = 0;
    for file in files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| Failure::usage(format!("cannot read {}: {e}", file.display())).hint("check the path"))?;
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
