//! Tests of the Twilio webhooks: the signature algorithm against a known answer, the
//! mapping of webhooks to events, and the router in process (`oneshot`) against a
//! node's real shards (raft groups and storage in a temporary directory).

use super::*;
use axum::body::Body;
use axum::http::Request;
use chorus_shard::{Clock, ShardConfig};
use chorus_types::{Identity, IdentityKind};
use std::time::{Duration, Instant};
use tower::ServiceExt;

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Twilio's documented example ("Validating requests"), computed independently with:
/// python3 -c "import hmac,hashlib,base64; u='https://mycompany.com/myapp.php?foo=1&bar=2';
///   p={'CallSid':'CA1234567890ABCDE','Caller':'+12349013030','Digits':'1234','From':'+12349013030','To':'+18005551212'};
///   s=u+''.join(k+p[k] for k in sorted(p));
///   print(base64.b64encode(hmac.new(b'12345', s.encode(), hashlib.sha1).digest()).decode())"
/// → 0/KCTR6DLpKmkAf8muzZqo1nDgQ=
#[test]
fn rule_twilio_signature_is_hmac_sha1_of_url_and_sorted_params() {
    let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
    let params = pairs(&[("Digits", "1234"), ("To", "+18005551212"), ("From", "+12349013030"), ("Caller", "+12349013030"), ("CallSid", "CA1234567890ABCDE")]);
    assert_eq!(signature("12345", url, &params), "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
    assert!(signature_matches("12345", url, &params, "0/KCTR6DLpKmkAf8muzZqo1nDgQ="));
}

#[test]
fn rule_twilio_signature_mismatch_is_refused() {
    let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
    let params = pairs(&[("CallSid", "CA1234567890ABCDE"), ("Caller", "+12349013030"), ("Digits", "1234"), ("From", "+12349013030"), ("To", "+18005551212")]);
    let good = "0/KCTR6DLpKmkAf8muzZqo1nDgQ=";
    assert!(!signature_matches("54321", url, &params, good), "another auth token");
    assert!(!signature_matches("12345", "https://mycompany.com/myapp.php?foo=1&bar=3", &params, good), "another URL");
    let mut changed = params.clone();
    changed[2].1 = "9999".into();
    assert!(!signature_matches("12345", url, &changed, good), "another parameter value");
    assert!(!signature_matches("12345", url, &params, "not base64!"));
    assert!(!signature_matches("12345", url, &params, ""));
}

#[test]
fn rule_inbound_sms_becomes_sms_received_from_the_sender_phone() {
    let params = pairs(&[("MessageSid", "SM123"), ("From", "+1 415 555 0123"), ("To", "+15005550006"), ("Body", " stop ")]);
    let input = inbound_event(&params).unwrap();
    assert_eq!(input.message_id, "twilio:SM123");
    assert_eq!(input.name, "sms.received");
    assert_eq!(input.identities, vec![("phone".to_string(), "+14155550123".to_string())]);
    assert_eq!(Value::Object(input.properties.clone()), json!({"body": " stop ", "to": "+15005550006", "message_sid": "SM123"}));
    let event = input.validate().unwrap();
    assert_eq!(chorus_engine::consent::keyword(&serde_json::from_str::<Value>(&event.properties).unwrap()["body"].as_str().unwrap()), Some("STOP"));
    assert_eq!(inbound_event(&pairs(&[("From", "+14155550123")])).unwrap_err().field, "MessageSid");
    assert_eq!(inbound_event(&pairs(&[("MessageSid", "SM1"), ("From", "not a phone")])).unwrap_err().field, "From");
}

#[test]
fn rule_status_callback_becomes_delivered_or_failed() {
    let id = ("user_id".to_string(), "u-1".to_string());
    let delivered = status_event("k/1", &pairs(&[("MessageSid", "SM9"), ("MessageStatus", "delivered")]), id.clone()).unwrap().unwrap();
    assert_eq!((delivered.name.as_str(), delivered.message_id.as_str()), ("sms.delivered", "twilio:SM9:delivered"));
    assert_eq!(Value::Object(delivered.properties), json!({"key": "k/1", "status": "delivered", "error_code": null, "message_sid": "SM9"}));
    assert_eq!(delivered.identities, vec![id.clone()]);
    let failed = status_event("k/1", &pairs(&[("MessageSid", "SM9"), ("MessageStatus", "undelivered"), ("ErrorCode", "30003")]), id.clone()).unwrap().unwrap();
    assert_eq!((failed.name.as_str(), failed.message_id.as_str()), ("sms.failed", "twilio:SM9:undelivered"));
    assert_eq!(failed.properties["error_code"], json!("30003"));
    for progress in ["queued", "sending", "sent", "accepted"] {
        assert!(status_event("k", &pairs(&[("MessageSid", "SM9"), ("MessageStatus", progress)]), id.clone()).unwrap().is_none(), "{progress}");
    }
}

const TOKEN: &str = "test-auth-token";
const PUBLIC: &str = "https://chorus.example.com";

async fn open_shards(dir: &std::path::Path) -> Shards {
    let store = chorus_store::Store::open(dir, Default::default()).unwrap();
    let config = ShardConfig { shard_count: 2, ..ShardConfig::default() };
    let tuning = chorus_raft::GroupTuning { heartbeat_ms: 50, election_min_ms: 150, election_max_ms: 300, ..Default::default() };
    let connectors = chorus_connectors::Connectors::start(Vec::new()).await.unwrap();
    Shards::open(1, "127.0.0.1:0", store, Arc::new(Clock::system()), config, tuning, connectors).await.unwrap()
}

fn signed(path_and_query: &str, params: &[(&str, &str)], token: &str) -> Request<Body> {
    let params = pairs(params);
    let sig = signature(token, &format!("{PUBLIC}{path_and_query}"), &params);
    Request::post(path_and_query)
        .header("content-type", "application/x-www-form-urlencoded")
        .header(SIGNATURE_HEADER, sig)
        .body(Body::from(serde_urlencoded::to_string(&params).unwrap()))
        .unwrap()
}

async fn call(app: &Router, req: Request<Body>) -> (StatusCode, Option<String>, String) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let ctype = resp.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_string());
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (status, ctype, String::from_utf8_lossy(&body).into_owned())
}

/// Wait (with a deadline) until the customer's history has an event with `message_id`.
async fn wait_for_event(shards: &Shards, customer: CustomerId, message_id: &str) -> chorus_engine::CustomerState {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some((state, _)) = shards.customer_following_merges(customer).await.unwrap()
            && state.history.iter().any(|e| e.message_id == message_id)
        {
            return state;
        }
        assert!(Instant::now() < deadline, "event {message_id} never reached {customer}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn rule_twilio_webhooks_become_events_of_the_customer() {
    let dir = tempfile::tempdir().unwrap();
    let shards = open_shards(dir.path()).await;
    let app = router(shards.clone(), Arc::new(TwilioWebhookConfig { auth_token: TOKEN.into(), public_url: PUBLIC.into() }));
    let phone = Identity::normalize(IdentityKind::Phone, "+14155550123").unwrap();

    tracing::info!("--- a signed inbound message becomes sms.received and gets empty TwiML");
    let inbound = [("MessageSid", "SM1"), ("AccountSid", "AC1"), ("From", "+14155550123"), ("To", "+15005550006"), ("Body", "STOP")];
    let (status, ctype, body) = call(&app, signed(INBOUND_PATH, &inbound, TOKEN)).await;
    assert_eq!((status, ctype.as_deref(), body.as_str()), (StatusCode::OK, Some("text/xml"), EMPTY_TWIML));
    let customer = shards.find(&phone).await.unwrap().expect("the sender's phone is indexed");
    let state = wait_for_event(&shards, customer, "twilio:SM1").await;
    let event = state.history.iter().find(|e| e.message_id == "twilio:SM1").unwrap();
    assert_eq!(event.name, "sms.received");
    assert_eq!(serde_json::from_str::<Value>(&event.properties).unwrap(), json!({"body": "STOP", "to": "+15005550006", "message_sid": "SM1"}));
    assert_eq!(state.consent.channels.get("sms").map(|c| c.status), Some(chorus_engine::ConsentStatus::OptedOut), "the engine applied STOP");

    tracing::info!("--- a redelivered webhook is idempotent");
    let (status, _, _) = call(&app, signed(INBOUND_PATH, &inbound, TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    let count = |s: &chorus_engine::CustomerState| s.history.iter().filter(|e| e.message_id == "twilio:SM1").count();
    assert_eq!(count(&shards.customer(customer).await.unwrap().unwrap()), 1);

    tracing::info!("--- a status callback becomes sms.delivered for the customer in the query string");
    let path = format!("{STATUS_PATH}?key=welcome%2Fs1&customer={customer}");
    let cb = [("MessageSid", "SM77"), ("MessageStatus", "delivered"), ("AccountSid", "AC1")];
    let (status, _, body) = call(&app, signed(&path, &cb, TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let state = wait_for_event(&shards, customer, "twilio:SM77:delivered").await;
    let event = state.history.iter().find(|e| e.message_id == "twilio:SM77:delivered").unwrap();
    assert_eq!(event.name, "sms.delivered");
    assert_eq!(
        serde_json::from_str::<Value>(&event.properties).unwrap(),
        json!({"key": "welcome/s1", "status": "delivered", "error_code": null, "message_sid": "SM77"})
    );
    let unknown = format!("{STATUS_PATH}?key=k&customer={}", CustomerId::new(1, 999));
    assert_eq!(call(&app, signed(&unknown, &cb, TOKEN)).await.0, StatusCode::NOT_FOUND);

    tracing::info!("--- requests with a wrong or missing signature are refused and ingest nothing");
    let other = [("MessageSid", "SM2"), ("From", "+14155550999"), ("To", "+15005550006"), ("Body", "hi")];
    assert_eq!(call(&app, signed(INBOUND_PATH, &other, "another-token")).await.0, StatusCode::FORBIDDEN);
    let mut unsigned = signed(INBOUND_PATH, &other, TOKEN);
    unsigned.headers_mut().remove(SIGNATURE_HEADER);
    assert_eq!(call(&app, unsigned).await.0, StatusCode::FORBIDDEN);
    // Signed for another URL (the query string is part of what is signed).
    let forged = signed(&format!("{STATUS_PATH}?key=k&customer={customer}"), &cb, TOKEN);
    let (mut parts, body) = forged.into_parts();
    parts.uri = format!("{STATUS_PATH}?key=other&customer={customer}").parse().unwrap();
    assert_eq!(call(&app, Request::from_parts(parts, body)).await.0, StatusCode::FORBIDDEN);
    assert_eq!(shards.find(&Identity::normalize(IdentityKind::Phone, "+14155550999").unwrap()).await.unwrap(), None);
    shards.shutdown().await;
}

#[test]
fn webhook_config_comes_from_the_connector_settings() {
    let cfg: chorus_connectors::twilio::TwilioConfig = serde_json::from_value(json!({
        "account_sid": "AC1", "auth_token_env": "TOKEN_VAR", "from": "+15005550006", "status_callback_base": "https://chorus.example.com/"
    }))
    .unwrap();
    let env = |name: &str| (name == "TOKEN_VAR").then(|| "secret".to_string());
    let w = TwilioWebhookConfig::from_connector(&cfg, &env).unwrap();
    assert_eq!((w.auth_token.as_str(), w.public_url.as_str()), ("secret", "https://chorus.example.com"));
    let without = chorus_connectors::twilio::TwilioConfig { status_callback_base: None, ..cfg };
    assert_eq!(TwilioWebhookConfig::from_connector(&without, &env).unwrap_err().field, "status_callback_base");
}
