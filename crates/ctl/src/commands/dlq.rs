//! `dlq list|show|redrive`: messages that could not be delivered (SPEC §8).

use super::Ctx;
use crate::failure::{EXIT_OK, Failure};
use crate::output::{emit, emit_json, time_cell, time_json};
use chorus_proto::v1::admin_client::AdminClient;
use serde_json::{Value, json};

fn letter_json(d: &chorus_proto::v1::DeadLetter) -> Value {
    json!({
        "idempotency_key": d.idempotency_key, "customer_id": d.customer_id, "channel": d.channel, "template": d.template,
        "journey": d.journey, "to": d.to, "status": d.status, "detail": d.detail, "at_ms": d.at_ms, "at": time_json(d.at_ms),
        "content": serde_json::from_str::<Value>(&d.content_json).unwrap_or(Value::Null),
    })
}

/// `dlq list` (every letter) or `dlq show KEY` (one, in full).
pub async fn list(ctx: &Ctx, limit: u32, key: Option<&str>) -> anyhow::Result<u8> {
    use chorus_proto::v1::ListDeadLettersRequest;
    let mut client = AdminClient::new(ctx.connect().await?);
    let r = ctx.call("list dead letters", client.list_dead_letters(ListDeadLettersRequest { limit })).await?;
    if let Some(k) = key {
        let Some(d) = r.letters.iter().find(|d| d.idempotency_key == k) else {
            return Err(Failure::new(format!("no dead letter with key {k:?}")).hint("see `chorusctl dlq list`").into());
        };
        if ctx.json() {
            emit_json(&letter_json(d));
        } else {
            emit(&serde_json::to_string_pretty(&letter_json(d)).unwrap_or_default());
        }
        return Ok(EXIT_OK);
    }
    if ctx.json() {
        emit_json(&json!({"letters": r.letters.iter().map(letter_json).collect::<Vec<_>>()}));
    } else if r.letters.is_empty() {
        eprintln!("no dead letters: every message was delivered or is still being delivered");
    } else {
        let mut t = crate::output::Table::new(&["TIME", "KEY", "CUSTOMER", "CHANNEL", "TEMPLATE", "STATUS", "DETAIL"]);
        for d in &r.letters {
            t.push(vec![
                time_cell(d.at_ms),
                d.idempotency_key.clone(),
                d.customer_id.clone(),
                d.channel.clone(),
                d.template.clone(),
                d.status.clone(),
                d.detail.clone(),
            ]);
        }
        emit(&t.render());
    }
    Ok(EXIT_OK)
}

pub async fn redrive(ctx: &Ctx, keys: Vec<String>, all: bool) -> anyhow::Result<u8> {
    use chorus_proto::v1::RedriveRequest;
    let mut client = AdminClient::new(ctx.connect().await?);
    let r = ctx.call("redrive dead letters", client.redrive(RedriveRequest { keys, all })).await?;
    if ctx.json() {
        emit_json(&json!({"redriven": r.redriven}));
    } else {
        emit(&format!("{} message(s) back in the outbox", r.redriven));
    }
    Ok(EXIT_OK)
}
