//! Engagement tracking on the HTTP port (SPEC §7, §8): the open pixel, click redirects
//! and the unsubscribe page with RFC 8058 one-click POST. URLs carry a signed token
//! with no customer data; the shard's tracking record says who, which journey and
//! step, and where each link goes. Every hit becomes an event of that customer
//! (`email.opened`, `email.clicked`, `unsubscribed`), so journeys react to it.

use crate::ApiConfig;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use chorus_engine::render::{TrackRecord, verify};
use chorus_shard::Shards;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Clone)]
struct TrackState {
    shards: Shards,
    config: Arc<ApiConfig>,
}

pub fn router(shards: Shards, config: Arc<ApiConfig>) -> Router {
    Router::new()
        .route("/t/o/{pixel}", get(open))
        .route("/t/c/{token}/{index}", get(click))
        .route("/t/u/{token}", get(unsubscribe_page).post(unsubscribe))
        .with_state(TrackState { shards, config })
}

/// A transparent 1×1 GIF.
const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00,
    0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, Html(format!("<!doctype html><title>Not found</title><p>This {what} link is not valid or has expired.</p>"))).into_response()
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, Html(format!("<!doctype html><title>Try again</title><p>Please try again in a moment ({e}).</p>"))).into_response()
}

/// The record behind a token, if the token is genuine.
async fn record(st: &TrackState, token: &str) -> Result<Option<TrackRecord>, Response> {
    let Some((shard, id)) = verify(token, &st.config.tracking.secret) else {
        return Ok(None);
    };
    st.shards.track_record(shard, id).await.map_err(unavailable)
}

/// Ingest `name` for the record's customer (routed by their strongest identity).
async fn emit(
    st: &TrackState,
    rec: &TrackRecord,
    name: &str,
    message_id: String,
    properties: Value,
    traits: Value,
    chorus: Option<Value>,
) -> Result<(), Response> {
    let state = match st.shards.customer_following_merges(rec.customer).await {
        Ok(Some((s, _))) => s,
        Ok(None) => return Err(not_found("tracking")),
        Err(e) => return Err(unavailable(e)),
    };
    let input = chorus_types::EventInput {
        message_id,
        event_type: if traits.is_null() { "track".into() } else { "identify".into() },
        name: name.to_string(),
        properties: properties.as_object().cloned().unwrap_or_default(),
        traits: traits.as_object().cloned().unwrap_or_default(),
        ..Default::default()
    };
    crate::convert::ingest_as_customer(&st.shards, &state, input, chorus).await.map_err(unavailable)
}

fn props(rec: &TrackRecord) -> Value {
    json!({"journey": rec.journey, "step": rec.step, "key": rec.key, "channel": rec.channel})
}

async fn open(State(st): State<TrackState>, Path(pixel): Path<String>) -> Response {
    let token = pixel.strip_suffix(".gif").unwrap_or(&pixel);
    let rec = match record(&st, token).await {
        Ok(Some(r)) => r,
        Ok(None) => return not_found("tracking"),
        Err(r) => return r,
    };
    let at = st.shards.now_ms();
    if let Err(r) = emit(&st, &rec, &format!("{}.opened", rec.channel), format!("t/o/{token}/{at}"), props(&rec), Value::Null, None).await {
        return r;
    }
    ([(header::CONTENT_TYPE, "image/gif"), (header::CACHE_CONTROL, "no-store, max-age=0")], PIXEL).into_response()
}

async fn click(State(st): State<TrackState>, Path((token, index)): Path<(String, usize)>) -> Response {
    let rec = match record(&st, &token).await {
        Ok(Some(r)) => r,
        Ok(None) => return not_found("tracking"),
        Err(r) => return r,
    };
    let Some(url) = rec.links.get(index).filter(|u| !u.is_empty()).cloned() else {
        return not_found("tracking");
    };
    let at = st.shards.now_ms();
    let mut p = props(&rec);
    p["url"] = Value::String(url.clone());
    p["link_index"] = json!(index);
    if let Err(r) = emit(&st, &rec, &format!("{}.clicked", rec.channel), format!("t/c/{token}/{index}/{at}"), p, Value::Null, None).await {
        return r;
    }
    (StatusCode::FOUND, [(header::LOCATION, url), (header::CACHE_CONTROL, "no-store".to_string())]).into_response()
}

/// GET only shows the page: mail scanners follow links, so nothing changes until the
/// customer presses the button (or their mail client POSTs the one-click request).
async fn unsubscribe_page(State(st): State<TrackState>, Path(token): Path<String>) -> Response {
    match record(&st, &token).await {
        Ok(Some(rec)) => Html(format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Unsubscribe</title></head><body>\
             <h1>Unsubscribe</h1><p>Stop receiving marketing {} from us?</p>\
             <form method=\"post\"><button type=\"submit\">Unsubscribe</button></form></body></html>",
            if rec.channel == "email" { "emails" } else { "messages" }
        ))
        .into_response(),
        Ok(None) => not_found("unsubscribe"),
        Err(r) => r,
    }
}

async fn unsubscribe(
    State(st): State<TrackState>,
    Path(token): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let rec = match record(&st, &token).await {
        Ok(Some(r)) => r,
        Ok(None) => return not_found("unsubscribe"),
        Err(r) => return r,
    };
    // RFC 8058: the mail client POSTs `List-Unsubscribe=One-Click`.
    let one_click = String::from_utf8_lossy(&body).contains("List-Unsubscribe=One-Click");
    let source = if one_click { "list-unsubscribe one-click" } else { "unsubscribe link" };
    let ip = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(',').next().unwrap_or("").trim().to_string())
        .unwrap_or_else(|| peer.ip().to_string());
    let evidence = format!("message {} from {ip}", rec.key);
    let consent = json!({"consent": { rec.channel.clone(): "opted_out" }});
    let chorus = json!({"consent_source": source, "evidence": evidence});
    if let Err(r) = emit(&st, &rec, "", format!("t/u/{token}/consent"), Value::Null, consent, Some(chorus)).await {
        return r;
    }
    if let Err(r) = emit(&st, &rec, "unsubscribed", format!("t/u/{token}/event"), props(&rec), Value::Null, None).await {
        return r;
    }
    Html("<!doctype html><html><head><meta charset=\"utf-8\"><title>Unsubscribed</title></head><body><h1>You are unsubscribed</h1><p>You will not receive marketing messages on this channel any more.</p></body></html>".to_string()).into_response()
}
