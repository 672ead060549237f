//! Twilio webhooks (SPEC §8): `POST /v1/twilio/inbound` (incoming messages, which carry
//! the SMS keywords of SPEC §4.3) and `POST /v1/twilio/status` (delivery status
//! callbacks). Every request must carry a valid `X-Twilio-Signature`; each becomes a
//! Chorus event ingested exactly as the Segment API ingests (validate, route by
//! identity, acknowledge after commit). Decides nothing: the engine applies keywords.
//!
//! Mount with `.merge(twilio::router(shards, config))` at the root (not nested): the
//! signed URL is `public_url` followed by the request's path and query.

use crate::convert::{self, ItemResult};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use chorus_shard::Shards;
use chorus_types::{CustomerId, EventInput, FieldError};
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// The path of incoming messages.
pub const INBOUND_PATH: &str = "/v1/twilio/inbound";
/// The path of status callbacks (`chorus_connectors::twilio` asks for it per message).
pub const STATUS_PATH: &str = chorus_connectors::twilio::STATUS_CALLBACK_PATH;
/// The header Twilio signs requests with.
pub const SIGNATURE_HEADER: &str = "x-twilio-signature";
/// The event of a delivered message.
pub const DELIVERED_EVENT: &str = "sms.delivered";
/// The event of a message that failed or was undelivered.
pub const FAILED_EVENT: &str = "sms.failed";
/// Webhook bodies above this are refused (Twilio's are a few hundred bytes).
pub const WEBHOOK_BODY_BYTES_MAX: usize = 64 * 1024;
/// Empty TwiML: no automatic reply (HELP replies are sent by journeys' connectors).
pub const EMPTY_TWIML: &str = "<Response/>";

/// What the webhooks need to know.
#[derive(Clone)]
pub struct TwilioWebhookConfig {
    /// The account's auth token: the HMAC key of `X-Twilio-Signature`.
    pub auth_token: String,
    /// The URL the node believes Twilio reaches it at (e.g. `https://chorus.example.com`),
    /// without a trailing slash; the signed URL is this plus the path and query.
    pub public_url: String,
}

impl std::fmt::Debug for TwilioWebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioWebhookConfig").field("public_url", &self.public_url).finish_non_exhaustive()
    }
}

impl TwilioWebhookConfig {
    /// From the connector's settings: its auth token and `status_callback_base` (the
    /// node's public URL, required to check signatures).
    pub fn from_connector(
        config: &chorus_connectors::twilio::TwilioConfig,
        env: chorus_connectors::provider::EnvLookup<'_>,
    ) -> Result<TwilioWebhookConfig, chorus_connectors::provider::ConfigError> {
        let auth_token = config.auth_token(env)?;
        let public_url = config.status_callback_base.clone().filter(|b| !b.is_empty()).ok_or_else(|| {
            chorus_connectors::provider::ConfigError::new("status_callback_base", "is required to receive Twilio webhooks: set it to the node's public URL")
        })?;
        Ok(TwilioWebhookConfig { auth_token, public_url: public_url.trim_end_matches('/').to_string() })
    }
}

#[derive(Clone)]
struct WebhookState {
    shards: Shards,
    config: Arc<TwilioWebhookConfig>,
}

/// The Twilio webhook routes, to merge into the node's HTTP router.
pub fn router(shards: Shards, config: Arc<TwilioWebhookConfig>) -> Router {
    Router::new()
        .route(INBOUND_PATH, post(inbound))
        .route(STATUS_PATH, post(status))
        .layer(DefaultBodyLimit::max(WEBHOOK_BODY_BYTES_MAX))
        .with_state(WebhookState { shards, config })
}

/// The signed data: the full URL, then every POST parameter sorted by name (then
/// value), each as name followed by value.
fn signed_data(url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    let mut data = String::with_capacity(url.len() + params.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>());
    data.push_str(url);
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    data
}

fn hmac_key(auth_token: &str) -> aws_lc_rs::hmac::Key {
    aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, auth_token.as_bytes())
}

/// Twilio's request signature: base64 of HMAC-SHA1, keyed by the auth token, over the
/// full URL followed by every POST parameter sorted by name, each as name then value.
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let tag = aws_lc_rs::hmac::sign(&hmac_key(auth_token), signed_data(url, params).as_bytes());
    base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
}

/// Whether `given` (the header) is the signature of this request; constant time.
pub fn signature_matches(auth_token: &str, url: &str, params: &[(String, String)], given: &str) -> bool {
    let Ok(tag) = base64::engine::general_purpose::STANDARD.decode(given.trim()) else {
        return false;
    };
    aws_lc_rs::hmac::verify(&hmac_key(auth_token), signed_data(url, params).as_bytes(), &tag).is_ok()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
}

/// The event of an incoming message: `sms.received` from the sender's phone.
pub fn inbound_event(params: &[(String, String)]) -> Result<EventInput, FieldError> {
    let sid = param(params, "MessageSid").or_else(|| param(params, "SmsSid")).ok_or_else(|| FieldError::new("MessageSid", "is required"))?;
    let from = param(params, "From").ok_or_else(|| FieldError::new("From", "is required (the sender's phone number)"))?;
    let phone = chorus_types::Identity::normalize(chorus_types::IdentityKind::Phone, from).map_err(|e| FieldError::new("From", e.to_string()))?;
    let mut properties = Map::new();
    properties.insert("body".into(), param(params, "Body").unwrap_or("").into());
    properties.insert("to".into(), param(params, "To").unwrap_or("").into());
    properties.insert("message_sid".into(), sid.into());
    Ok(EventInput {
        message_id: format!("twilio:{sid}"),
        event_type: "track".into(),
        name: chorus_engine::consent::INBOUND_SMS_EVENT.into(),
        identities: vec![("phone".into(), phone.value)],
        properties,
        ..Default::default()
    })
}

/// The event name a message status becomes, if any (`queued`, `sent`, … are progress
/// and become nothing).
pub fn status_event_name(status: &str) -> Option<&'static str> {
    match status {
        "delivered" | "read" => Some(DELIVERED_EVENT),
        "failed" | "undelivered" => Some(FAILED_EVENT),
        _ => None,
    }
}

/// The event of a status callback for the customer known by `identity` (kind, value).
pub fn status_event(key: &str, params: &[(String, String)], identity: (String, String)) -> Result<Option<EventInput>, FieldError> {
    let sid = param(params, "MessageSid").or_else(|| param(params, "SmsSid")).ok_or_else(|| FieldError::new("MessageSid", "is required"))?;
    let status = param(params, "MessageStatus").or_else(|| param(params, "SmsStatus")).ok_or_else(|| FieldError::new("MessageStatus", "is required"))?;
    let Some(name) = status_event_name(status) else {
        return Ok(None);
    };
    let mut properties = Map::new();
    properties.insert("key".into(), key.into());
    properties.insert("status".into(), status.into());
    properties.insert("error_code".into(), param(params, "ErrorCode").map(Value::from).unwrap_or(Value::Null));
    properties.insert("message_sid".into(), sid.into());
    Ok(Some(EventInput {
        message_id: format!("twilio:{sid}:{status}"),
        event_type: "track".into(),
        name: name.into(),
        identities: vec![identity],
        properties,
        ..Default::default()
    }))
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (status, axum::Json(json!({"code": code, "message": message}))).into_response()
}

/// The form parameters, after checking the request's signature.
fn verified_params(config: &TwilioWebhookConfig, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Result<Vec<(String, String)>, Box<Response>> {
    let params: Vec<(String, String)> =
        serde_urlencoded::from_bytes(body).map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, "invalid_request", format!("the body is not a form: {e}"))))?;
    let url = format!("{}{}", config.public_url.trim_end_matches('/'), uri.path_and_query().map(|p| p.as_str()).unwrap_or(uri.path()));
    let given = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
    if given.is_empty() || !signature_matches(&config.auth_token, &url, &params, given) {
        tracing::debug!(%url, "twilio webhook signature mismatch");
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "invalid_signature",
            "X-Twilio-Signature does not match this request (check the auth token and that status_callback_base is the URL Twilio calls)".into(),
        )));
    }
    Ok(params)
}

/// Ingest one event; `None` when it was accepted (or a duplicate).
async fn ingest(shards: &Shards, input: EventInput) -> Option<Response> {
    let now = shards.clock().now_ms();
    let result = convert::ingest_inputs(shards, vec![Ok(input)], now).await.into_iter().next();
    match result {
        Some(ItemResult::Outcome(_)) => None,
        Some(ItemResult::Rejected(fe)) => Some(error(StatusCode::BAD_REQUEST, "invalid_request", fe.to_string())),
        Some(ItemResult::Failed(e)) => {
            let status = if matches!(e, chorus_shard::ShardError::Overloaded { .. }) { StatusCode::TOO_MANY_REQUESTS } else { StatusCode::SERVICE_UNAVAILABLE };
            Some(error(status, "retry", format!("the event could not be accepted now: {e}")))
        }
        None => Some(error(StatusCode::SERVICE_UNAVAILABLE, "retry", "no result".into())),
    }
}

async fn inbound(State(st): State<WebhookState>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let params = match verified_params(&st.config, &uri, &headers, &body) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let input = match inbound_event(&params) {
        Ok(i) => i,
        Err(fe) => return error(StatusCode::BAD_REQUEST, "invalid_request", fe.to_string()),
    };
    if let Some(r) = ingest(&st.shards, input).await {
        return r;
    }
    ([(header::CONTENT_TYPE, "text/xml")], EMPTY_TWIML).into_response()
}

async fn status(State(st): State<WebhookState>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let params = match verified_params(&st.config, &uri, &headers, &body) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let query: Vec<(String, String)> = serde_urlencoded::from_str(uri.query().unwrap_or("")).unwrap_or_default();
    let key = param(&query, "key").unwrap_or("").to_string();
    let Some(customer) = param(&query, "customer").and_then(|c| c.parse::<CustomerId>().ok()) else {
        return error(StatusCode::BAD_REQUEST, "invalid_request", "customer: the query string must carry the customer id (cu_…) of the message".into());
    };
    // The customer's strongest identity routes the event to them (following merges).
    let state = match st.shards.customer_following_merges(customer).await {
        Ok(Some((state, _))) => state,
        Ok(None) => {
            return error(StatusCode::NOT_FOUND, "not_found", format!("customer {customer} is not known to this cluster"));
        }
        Err(e) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, "retry", format!("read customer {customer}: {e}"));
        }
    };
    let Some(identity) = state.identities.iter().min_by_key(|i| i.kind.priority()) else {
        return error(StatusCode::NOT_FOUND, "not_found", format!("customer {customer} has no identity left"));
    };
    let input = match status_event(&key, &params, (identity.kind.as_str().to_string(), identity.value.clone())) {
        Ok(Some(i)) => i,
        Ok(None) => return StatusCode::OK.into_response(),
        Err(fe) => return error(StatusCode::BAD_REQUEST, "invalid_request", fe.to_string()),
    };
    if let Some(r) = ingest(&st.shards, input).await {
        return r;
    }
    StatusCode::OK.into_response()
}

#[cfg(test)]
mod tests;
