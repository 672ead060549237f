//! The HTTP server: Segment's tracking API (`/v1/*`) so analytics SDKs work unchanged,
//! `/healthz`, `/readyz` and `/metrics` (Prometheus text).

use crate::ApiConfig;
use crate::convert::{self, ItemResult};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chorus_segment::{Endpoint, SegmentError, SegmentItemError};
use chorus_shard::Shards;
use serde_json::json;
use std::fmt::Write;
use std::sync::Arc;

#[derive(Clone)]
struct AppState {
    shards: Shards,
    config: Arc<ApiConfig>,
}

/// Raw bodies above this are refused before decoding (gzip can only shrink below it).
const RAW_BODY_BYTES_MAX: usize = 1024 * 1024;

pub fn router(shards: Shards, config: Arc<ApiConfig>) -> Router {
    let router = Router::new()
        .route("/v1/{endpoint}", post(segment))
        .route("/v1/content/{placement}", get(content))
        .route("/v1/email/bounces", post(bounces))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(RAW_BODY_BYTES_MAX))
        .with_state(AppState { shards: shards.clone(), config: config.clone() })
        .merge(crate::tracking::router(shards.clone(), config.clone()));
    let router = match &config.twilio {
        Some(t) => router.merge(crate::twilio::router(shards, t.clone())),
        None => router,
    };
    router
        .fallback(|uri: axum::http::Uri| async move { error(404, "not_found", format!("no endpoint at {}", uri.path())) })
        .layer(axum::middleware::map_response(json_errors))
}

/// Longest plain-text error body carried into the JSON error's message.
const ERROR_TEXT_BYTES_MAX: usize = 4096;

/// Every error answer has the JSON shape `{"code", "message"}`: errors made by axum
/// itself (a body over the limit, a wrong method, a bad header) come as plain text and
/// are rewritten here. HTML pages (tracking links opened in a browser) stay HTML.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let content_type = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.starts_with("application/json") || content_type.starts_with("text/html") {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, ERROR_TEXT_BYTES_MAX).await.map(|b| String::from_utf8_lossy(&b).trim().to_string()).unwrap_or_default();
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::TOO_MANY_REQUESTS => "overloaded",
        s if s.is_server_error() => "unavailable",
        _ => "bad_request",
    };
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => format!("the request body is over the limit of {RAW_BODY_BYTES_MAX} bytes: send fewer events per request"),
        StatusCode::METHOD_NOT_ALLOWED => {
            format!("this endpoint does not take that method{}", if text.is_empty() { String::new() } else { format!(" ({text})") })
        }
        _ if text.is_empty() => status.canonical_reason().unwrap_or("error").to_lowercase(),
        _ => text,
    };
    let mut out = error(status.as_u16(), code, message);
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

fn error(status: u16, code: &str, message: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, axum::Json(json!({"code": code, "message": message}))).into_response()
}

fn seg_error(e: SegmentError) -> Response {
    error(e.http_status(), e.code(), e.to_string())
}

/// Check the HTTP Basic write key of a non-Segment endpoint (content, bounces).
async fn authorize(st: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let key = match chorus_segment::write_key_from_header(authorization) {
        Ok(Some(k)) => k,
        Ok(None) => {
            return Err(error(401, "missing_write_key", "send the write key as HTTP Basic auth (the key as user name)".into()));
        }
        Err(e) => return Err(seg_error(e)),
    };
    check_write_key(st, &key).await
}

/// Accept `key` when it is one of this node's `[http] write_keys` or a write key of the
/// catalog (`chorusctl key create`). Only a node that has no `[http] write_keys` and
/// whose cluster never had a catalog key accepts every key (a fresh `chorus dev`): once
/// a key was created, revoking the last one refuses every key.
async fn check_write_key(st: &AppState, key: &str) -> Result<(), Response> {
    if st.config.write_keys.iter().any(|k| crate::keys::equal(k.as_bytes(), key.as_bytes())) {
        return Ok(());
    }
    let catalog = match st.shards.write_keys().await {
        Ok(k) => k,
        Err(e) => {
            return Err(error(503, "unavailable", format!("cannot read the cluster's write keys right now ({e}); retry")));
        }
    };
    if st.config.write_keys.is_empty() && !catalog.required {
        return Ok(());
    }
    let hashes: Vec<Vec<u8>> = catalog.keys.into_iter().map(|k| k.sha256).collect();
    if crate::keys::matches_any(key, &hashes) {
        return Ok(());
    }
    if hashes.is_empty() && st.config.write_keys.is_empty() {
        return Err(error(
            401,
            "invalid_write_key",
            "every write key of this Chorus cluster has been revoked, so every key is refused: create one with `chorusctl key create NAME`".into(),
        ));
    }
    Err(error(
        401,
        "invalid_write_key",
        "the write key is not known to this Chorus cluster: create one with `chorusctl key create NAME`, or list it in the node's [http] write_keys".into(),
    ))
}

/// `GET /v1/content/{placement}?identity=kind:value` (or `?customer_id=cu_…`): the
/// customer's in-app messages, authenticated with a write key like the Segment API.
async fn content(
    State(st): State<AppState>,
    Path(placement): Path<String>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&st, &headers).await {
        return r;
    }
    let id = match (q.get("customer_id"), q.get("identity")) {
        (Some(c), _) => match c.parse::<chorus_types::CustomerId>() {
            Ok(id) => id,
            Err(e) => return error(400, "invalid_argument", format!("customer_id: {e}")),
        },
        (None, Some(i)) => {
            let Some((kind, value)) = i.split_once(':') else {
                return error(400, "invalid_argument", "identity: use kind:value, e.g. user_id:42".into());
            };
            let identity = match convert::identity(kind, value) {
                Ok(id) => id,
                Err(e) => return error(400, "invalid_argument", e.to_string()),
            };
            match st.shards.find(&identity).await {
                Ok(Some(id)) => id,
                Ok(None) => return error(404, "not_found", format!("no customer with {identity}")),
                Err(e) => return error(503, "unavailable", e.to_string()),
            }
        }
        (None, None) => {
            return error(400, "invalid_argument", "give ?identity=kind:value or ?customer_id=cu_…".into());
        }
    };
    match crate::grpc::content(&st.shards, id, &placement).await {
        Ok(r) => {
            let messages: Vec<serde_json::Value> = r
                .messages
                .iter()
                .map(|m| {
                    json!({
                        "key": m.key, "placement": m.placement, "template": m.template, "journey": m.journey,
                        "created_ms": m.created_ms, "expires_ms": m.expires_ms, "viewed": m.viewed,
                        "content": serde_json::from_str::<serde_json::Value>(&m.content_json).unwrap_or(serde_json::Value::Null),
                    })
                })
                .collect();
            axum::Json(json!({"customer_id": r.customer_id, "messages": messages})).into_response()
        }
        Err(crate::error::ApiError::NotFound(m)) => error(404, "not_found", m),
        Err(e) => error(503, "unavailable", e.to_string()),
    }
}

/// `POST /v1/email/bounces`: bounces and complaints reported by an email provider after
/// it accepted a message. Body: `{"bounces": [{"id", "email", "type": "bounce" |
/// "complaint", "reason"}]}` (or one such object). Each becomes `email.bounced` /
/// `email.complained` for the customer with that address: a bounce marks the address, a
/// complaint opts the customer out of email. Unknown addresses are reported, not created.
async fn bounces(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = authorize(&st, &headers).await {
        return r;
    }
    let json: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(400, "invalid_json", format!("the body is not JSON: {e}")),
    };
    let items: Vec<serde_json::Value> = match json.get("bounces") {
        Some(serde_json::Value::Array(a)) => a.clone(),
        Some(_) => return error(400, "invalid_argument", "bounces must be a list".into()),
        None => vec![json],
    };
    let mut results = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let field = |k: &str| item.get(k).and_then(serde_json::Value::as_str).unwrap_or("").trim().to_string();
        let (id, email, kind, reason) = (field("id"), field("email"), field("type"), field("reason"));
        let name = match kind.as_str() {
            "bounce" | "" => chorus_engine::consent::BOUNCED_EVENT,
            "complaint" => chorus_engine::consent::COMPLAINED_EVENT,
            other => {
                results.push(json!({"index": i, "status": "rejected", "error": format!("type {other:?}: use bounce or complaint")}));
                continue;
            }
        };
        if id.is_empty() {
            results.push(json!({"index": i, "status": "rejected", "error": "id is required (the provider's event id; it makes retries safe)"}));
            continue;
        }
        let identity = match convert::identity("email", &email) {
            Ok(x) => x,
            Err(e) => {
                results.push(json!({"index": i, "status": "rejected", "error": format!("email: {e}")}));
                continue;
            }
        };
        match st.shards.find(&identity).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                results.push(json!({"index": i, "status": "unknown", "error": format!("no customer has {}", identity.value)}));
                continue;
            }
            Err(e) => return error(503, "unavailable", e.to_string()),
        }
        let input = chorus_types::EventInput {
            message_id: format!("bounce/{id}"),
            name: name.to_string(),
            identities: vec![("email".into(), identity.value.clone())],
            properties:
                json!({"email": identity.value, "reason": reason, "type": if name == chorus_engine::consent::BOUNCED_EVENT { "bounce" } else { "complaint" }})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            ..Default::default()
        };
        let now = st.shards.clock().now_ms();
        let outcome = convert::ingest_inputs(&st.shards, vec![Ok(input)], now).await;
        results.push(match outcome.into_iter().next() {
            Some(ItemResult::Outcome(_)) => json!({"index": i, "status": "accepted"}),
            _ => json!({"index": i, "status": "retry", "error": "not recorded; retry"}),
        });
    }
    axum::Json(json!({"results": results})).into_response()
}

async fn segment(State(st): State<AppState>, Path(endpoint): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(endpoint) = Endpoint::from_path(&endpoint) else {
        return error(404, "not_found", format!("unknown endpoint /v1/{endpoint}: use track, identify, alias, page, screen, group or batch"));
    };
    let header_str = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    let header_key = match chorus_segment::write_key_from_header(header_str(header::AUTHORIZATION)) {
        Ok(k) => k,
        Err(e) => return seg_error(e),
    };
    let json = match chorus_segment::decode_body(&body, header_str(header::CONTENT_ENCODING), endpoint.body_bytes_max()) {
        Ok(j) => j,
        Err(e) => return seg_error(e),
    };
    let request = match chorus_segment::parse_request(endpoint, &json) {
        Ok(r) => r,
        Err(e) => return seg_error(e),
    };
    let key = match request.resolve_write_key(header_key) {
        Ok(k) => k,
        Err(e) => return seg_error(e),
    };
    if let Err(r) = check_write_key(&st, &key).await {
        return r;
    }
    let mut item_errors: Vec<Option<SegmentItemError>> = Vec::with_capacity(request.items.len());
    let mut inputs = Vec::with_capacity(request.items.len());
    for item in request.items {
        match item {
            Ok(input) => {
                item_errors.push(None);
                inputs.push(Ok(input));
            }
            Err(e) => {
                let fe = chorus_types::FieldError::new(e.field.clone(), e.message.clone());
                item_errors.push(Some(e));
                inputs.push(Err(fe));
            }
        }
    }
    let single = endpoint != Endpoint::Batch;
    let now = st.shards.clock().now_ms();
    let results = convert::ingest_inputs(&st.shards, inputs, now).await;
    let mut out = Vec::with_capacity(results.len());
    let mut rejected = 0;
    let mut retry = 0;
    let mut overloaded = false;
    for (i, r) in results.into_iter().enumerate() {
        out.push(match r {
            ItemResult::Outcome(o) => match o {
                chorus_types::EventOutcome::Duplicate => json!({"index": i, "status": "duplicate"}),
                chorus_types::EventOutcome::Applied { customer }
                | chorus_types::EventOutcome::Forwarded { customer, .. }
                | chorus_types::EventOutcome::Parked { customer } => {
                    json!({"index": i, "status": "accepted", "customer_id": customer.to_string()})
                }
            },
            ItemResult::Rejected(fe) => {
                rejected += 1;
                let field = match &item_errors[i] {
                    Some(e) => e.field.clone(),
                    None => SegmentItemError::from_validation(endpoint, i, fe.clone()).field,
                };
                json!({"index": i, "status": "rejected", "field": field, "message": fe.message})
            }
            ItemResult::Failed(e) => {
                retry += 1;
                overloaded |= matches!(e, chorus_shard::ShardError::Overloaded { .. });
                json!({"index": i, "status": "retry", "message": e.to_string()})
            }
        });
    }
    if retry > 0 && retry + rejected == out.len() {
        // Nothing accepted: let the SDK retry the whole call (429 / 503 are retried).
        let status = if overloaded { 429 } else { 503 };
        return error(status, "retry", format!("{retry} events could not be accepted now; retry with backoff"));
    }
    if single && rejected == 1 {
        let r = &out[0];
        return error(400, "invalid_request", format!("{}: {}", r["field"].as_str().unwrap_or(""), r["message"].as_str().unwrap_or("")));
    }
    (StatusCode::OK, axum::Json(json!({"success": true, "results": out}))).into_response()
}

async fn readyz(State(st): State<AppState>) -> Response {
    if st.shards.is_clustered() && st.shards.shard_count() == 0 {
        return (StatusCode::SERVICE_UNAVAILABLE, "the cluster is not initialized: run `chorusctl cluster init`\n").into_response();
    }
    let leaderless = st.shards.status().iter().filter(|s| s.leader.is_none()).count();
    if leaderless == 0 {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("{leaderless} shards have no leader\n")).into_response()
    }
}

async fn metrics(State(st): State<AppState>) -> Response {
    let shards = st.shards.status();
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: &dyn Fn(&chorus_shard::ShardStatusInfo) -> u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for s in &shards {
            let _ = writeln!(out, "{name}{{shard=\"{}\"}} {}", s.shard, value(s));
        }
    };
    gauge("chorus_shard_applied_index", "Last raft log index applied by the shard.", &|s| s.applied_index);
    gauge("chorus_shard_raft_term", "Current raft term of the shard.", &|s| s.term);
    gauge("chorus_shard_live_actors", "Customer actors currently resident.", &|s| s.live_actors);
    gauge("chorus_shard_customers", "Customers (not merged away) homed in the shard.", &|s| s.customers);
    gauge("chorus_shard_queued_events", "Events queued or in flight in the shard's proposer.", &|s| s.queued_events);
    gauge("chorus_shard_pending_cross_shard", "Cross-shard messages not yet delivered.", &|s| s.pending_cross_shard);
    gauge("chorus_shard_quarantined_customers", "Customers quarantined after repeated failures.", &|s| s.quarantined);
    gauge("chorus_shard_messages_decided_total", "Messages decided by the shard (intents recorded in its outbox), ever.", &|s| s.intents_total);
    gauge("chorus_shard_is_leader", "1 when this node leads the shard.", &|s| u64::from(s.leader == Some(st.shards.node_id())));
    gauge("chorus_shard_raft_last_log_index", "Last raft log index this replica holds.", &|s| s.last_log_index);
    gauge("chorus_shard_raft_apply_lag", "Entries this replica holds but has not applied yet.", &|s| s.last_log_index.saturating_sub(s.applied_index));
    gauge("chorus_shard_raft_voters", "Voters of the shard's raft group.", &|s| s.voters.len() as u64);
    gauge("chorus_shard_raft_learners", "Learners (replicas catching up) of the shard's raft group.", &|s| s.learners.len() as u64);
    gauge("chorus_shard_pending_timers", "Durable timers (journey waits, scheduled sends) pending in the shard.", &|s| s.pending_timers);
    gauge("chorus_shard_timer_lateness_max_ms", "The latest any timer of the shard fired after its due time since start (ms).", &|s| s.timer_lateness_max_ms);
    // One node-wide histogram: per-shard buckets would multiply the series by 13.
    let buckets = chorus_shard::apply::TIMER_LATENESS_BUCKETS_MS;
    let mut cumulative = vec![0u64; buckets.len() + 1];
    let (mut sum, mut count) = (0u64, 0u64);
    for s in &shards {
        for (c, v) in cumulative.iter_mut().zip(&s.timer_lateness.0) {
            *c += v;
        }
        sum += s.timer_lateness.1;
        count += s.timer_lateness.2;
    }
    let _ = writeln!(
        out,
        "# HELP chorus_dispatch_uncertain_total Attempts at providers that do not de-duplicate by key found without a recorded outcome (a crash or failover between the call and the outcome), by what became of them: found at the provider (recorded delivered), absent (sent), resent or skipped (the provider could not tell; the channel's uncertain policy).\n# TYPE chorus_dispatch_uncertain_total counter"
    );
    for s in &shards {
        for (i, result) in ["found", "absent", "resent", "skipped"].iter().enumerate() {
            let _ = writeln!(out, "chorus_dispatch_uncertain_total{{shard=\"{}\",result=\"{result}\"}} {}", s.shard, s.uncertain[i]);
        }
    }
    let _ = writeln!(
        out,
        "# HELP chorus_timer_fire_lateness_ms How long after its due time each timer fired on this node (ms), since start.\n# TYPE chorus_timer_fire_lateness_ms histogram"
    );
    for (le, c) in buckets.iter().map(|b| b.to_string()).chain(["+Inf".to_string()]).zip(&cumulative) {
        let _ = writeln!(out, "chorus_timer_fire_lateness_ms_bucket{{le=\"{le}\"}} {c}");
    }
    let _ = writeln!(out, "chorus_timer_fire_lateness_ms_sum {sum}\nchorus_timer_fire_lateness_ms_count {count}");
    let (sent, received) = st.shards.snapshot_counts();
    let _ = writeln!(
        out,
        "# HELP chorus_raft_snapshots_sent_total Snapshots streamed to other nodes since start.\n# TYPE chorus_raft_snapshots_sent_total counter\nchorus_raft_snapshots_sent_total {sent}"
    );
    let _ = writeln!(
        out,
        "# HELP chorus_raft_snapshots_installed_total Snapshots received and installed since start.\n# TYPE chorus_raft_snapshots_installed_total counter\nchorus_raft_snapshots_installed_total {received}"
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
