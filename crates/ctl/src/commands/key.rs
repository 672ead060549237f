//! `key create|list|revoke`: write keys of the HTTP APIs (Segment, in-app content,
//! bounce webhooks) through Admin.CreateWriteKey, ListWriteKeys and RevokeWriteKey. The
//! cluster keeps only each key's SHA-256: `create` prints the key once.

use super::Ctx;
use crate::failure::{self, EXIT_OK, Failure};
use crate::output::{Table, emit, emit_json, key_values, time_cell, time_json};
use chorus_proto::v1::admin_client::AdminClient;
use chorus_proto::v1::{CreateWriteKeyRequest, ListWriteKeysRequest, RevokeWriteKeyRequest};
use serde_json::json;
use tonic::Code;

fn key_failure(ctx: &Ctx, status: &tonic::Status, action: &str) -> Failure {
    let failure = failure::from_status(status, &ctx.endpoint, action);
    match status.code() {
        Code::NotFound => failure.hint("`chorusctl key list` shows the keys by name"),
        Code::InvalidArgument if status.message().contains("exists") => {
            failure.hint("names are unique: revoke the old key first (`chorusctl key revoke NAME`) or pick another name")
        }
        _ => failure,
    }
}

pub async fn create(ctx: &Ctx, name: &str) -> anyhow::Result<u8> {
    let mut admin = AdminClient::new(ctx.connect().await?);
    let action = format!("create write key {name:?}");
    let r =
        ctx.call_status(&action, admin.create_write_key(CreateWriteKeyRequest { name: name.to_string() })).await?.map_err(|s| key_failure(ctx, &s, &action))?;
    if ctx.json() {
        emit_json(&json!({"name": r.name, "key": r.key, "fingerprint": r.fingerprint}));
    } else {
        emit(&format!(
            "{}\nThe key is shown only now: store it where your senders read it. Every node accepts it \
(HTTP Basic auth with the key as user name, or `writeKey` in a Segment body).",
            key_values(&[("name", r.name), ("key", r.key), ("fingerprint", r.fingerprint)])
        ));
    }
    Ok(EXIT_OK)
}

pub async fn list(ctx: &Ctx) -> anyhow::Result<u8> {
    let mut admin = AdminClient::new(ctx.connect().await?);
    let action = "list write keys".to_string();
    let r = ctx.call_status(&action, admin.list_write_keys(ListWriteKeysRequest {})).await?.map_err(|s| key_failure(ctx, &s, &action))?;
    if ctx.json() {
        emit_json(
            &json!({"keys_required": r.keys_required, "keys": r.keys.iter().map(|k| json!({"name": k.name, "fingerprint": k.fingerprint, "created_ms": k.created_ms, "created": time_json(k.created_ms)})).collect::<Vec<_>>()}),
        );
    } else if r.keys.is_empty() && r.keys_required {
        emit(
            "no write keys in the catalog: every key was revoked, so nodes refuse every key but their [http] write_keys; create one with `chorusctl key create NAME`",
        );
    } else if r.keys.is_empty() {
        emit("no write keys in the catalog (nodes accept the keys in their [http] write_keys; a cluster that never had a key accepts any key)");
    } else {
        let mut t = Table::new(&["NAME", "FINGERPRINT", "CREATED"]);
        for k in &r.keys {
            t.push(vec![k.name.clone(), k.fingerprint.clone(), time_cell(k.created_ms)]);
        }
        emit(&t.render());
    }
    Ok(EXIT_OK)
}

pub async fn revoke(ctx: &Ctx, name: &str) -> anyhow::Result<u8> {
    let mut admin = AdminClient::new(ctx.connect().await?);
    let action = format!("revoke write key {name:?}");
    let r =
        ctx.call_status(&action, admin.revoke_write_key(RevokeWriteKeyRequest { name: name.to_string() })).await?.map_err(|s| key_failure(ctx, &s, &action))?;
    if ctx.json() {
        emit_json(&json!({"name": name, "revoked": true, "remaining": r.remaining}));
    } else if r.remaining == 0 {
        emit(&format!(
            "write key {name:?} revoked. It was the last one: every node now refuses every write key \
(except keys listed in a node's [http] write_keys) until you create one with `chorusctl key create NAME`"
        ));
    } else {
        emit(&format!("write key {name:?} revoked: every node refuses it from now on ({} left)", r.remaining));
    }
    Ok(EXIT_OK)
}
