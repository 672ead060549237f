//! The Twilio connector against a real local HTTP server that implements the shape of
//! Twilio's Messages resource (basic auth, form fields, idempotency token, Twilio JSON
//! and error codes): exact requests, and how each answer becomes an outcome.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Json, Router};
use base64::Engine;
use chorus_connectors::twilio::{TwilioConfig, TwilioConnector};
use chorus_connectors::{Connector, ConnectorLimits, DeliveryError, deliver_with_retries};
use chorus_templates::{Content, Mms, Rendered, Sms, SmsEncoding};
use chorus_types::{Category, CustomerId, DispatchStatus, Intent, JsonMap};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SID: &str = "AC00000000000000000000000000000001";
const TOKEN: &str = "test-auth-token";

/// What the fake provider saw: (account in the path, idempotency token, form fields).
#[derive(Clone, Debug)]
struct Seen {
    account: String,
    token: Option<String>,
    form: BTreeMap<String, String>,
    at: std::time::Instant,
}

#[derive(Clone, Default)]
struct Provider {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Messages created, in order: like Twilio, every POST creates one, whatever its
    /// idempotency header says.
    sent: Arc<Mutex<Vec<String>>>,
    /// Answers still to give before succeeding, per `To`.
    failures_left: Arc<Mutex<HashMap<String, u32>>>,
    /// 429s with `Retry-After: 2` still to give before succeeding, per `To`.
    rate_limited_left: Arc<Mutex<HashMap<String, u32>>>,
}

fn twilio_error(status: u16, code: u64, message: &str) -> Response {
    let body = json!({"code": code, "message": message, "more_info": format!("https://www.twilio.com/docs/errors/{code}"), "status": status});
    (StatusCode::from_u16(status).unwrap(), Json(body)).into_response()
}

async fn messages(State(p): State<Provider>, Path(account): Path<String>, headers: HeaderMap, Form(form): Form<BTreeMap<String, String>>) -> Response {
    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{SID}:{TOKEN}")));
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return twilio_error(401, 20003, "Authenticate");
    }
    let token = headers.get("i-twilio-idempotency-token").and_then(|v| v.to_str().ok()).map(str::to_string);
    p.seen.lock().unwrap().push(Seen { account: account.clone(), token: token.clone(), form: form.clone(), at: std::time::Instant::now() });
    let to = form.get("To").cloned().unwrap_or_default();
    match to.as_str() {
        "+15005550001" => {
            return twilio_error(400, 21211, "The 'To' number +15005550001 is not a valid phone number.");
        }
        "+15005550004" => {
            return twilio_error(400, 21610, "Attempt to send to unsubscribed recipient");
        }
        "+15005550009" => {
            return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "3")], Json(json!({"code": 20429, "message": "Too Many Requests", "status": 429})))
                .into_response();
        }
        "+15005550500" => return twilio_error(500, 20500, "Internal Server Error"),
        _ => {}
    }
    {
        let mut left = p.rate_limited_left.lock().unwrap();
        if let Some(n) = left.get_mut(&to).filter(|n| **n > 0) {
            *n -= 1;
            return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "2")], Json(json!({"code": 20429, "message": "Too Many Requests", "status": 429})))
                .into_response();
        }
    }
    {
        let mut left = p.failures_left.lock().unwrap();
        if let Some(n) = left.get_mut(&to).filter(|n| **n > 0) {
            *n -= 1;
            return twilio_error(503, 20503, "Service Unavailable");
        }
    }
    let mut sent = p.sent.lock().unwrap();
    let sid = format!("SM{:032}", sent.len());
    sent.push(sid.clone());
    (StatusCode::CREATED, Json(json!({"sid": sid, "account_sid": account, "to": to, "status": "queued", "body": form.get("Body")}))).into_response()
}

async fn start(provider: Provider) -> String {
    let app = Router::new().route("/2010-04-01/Accounts/{account}/Messages.json", post(messages)).with_state(provider);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn config(base_url: &str) -> TwilioConfig {
    let toml = json!({
        "base_url": base_url,
        "account_sid": SID,
        "auth_token_env": "TWILIO_TOKEN_FOR_TEST",
        "from": "+15005550006",
        "status_callback_base": "https://chorus.example.com/",
        "timeout": "2s",
    });
    serde_json::from_value(toml).unwrap()
}

fn env(name: &str) -> Option<String> {
    (name == "TWILIO_TOKEN_FOR_TEST").then(|| TOKEN.to_string())
}

fn sms_intent(key: &str, to: &str, body: &str) -> Intent {
    let rendered = Rendered {
        template: "promo".into(),
        locale: None,
        content: Content::Sms(Sms { body: body.into(), encoding: SmsEncoding::Gsm7, units: body.len() as u32, segments: 1 }),
    };
    Intent {
        key: key.into(),
        customer: CustomerId::new(3, 7),
        channel: "sms".into(),
        template: "promo".into(),
        category: Category::Marketing,
        to: to.into(),
        vars: JsonMap::new(),
        journey: "welcome".into(),
        created_ms: 1,
        content: serde_json::to_string(&rendered).unwrap(),
    }
}

fn fast_retries() -> ConnectorLimits {
    ConnectorLimits {
        concurrency_max: 4,
        attempts_max: 4,
        backoff_initial: Duration::from_millis(5),
        backoff_max: Duration::from_millis(20),
        ..Default::default()
    }
}

#[tokio::test]
async fn rule_twilio_sends_the_messages_resource_request() {
    let provider = Provider::default();
    let base = start(provider.clone()).await;
    let twilio = TwilioConnector::new(&config(&base), &env).unwrap();

    let detail = twilio.deliver(&sms_intent("welcome/s1/cu 1", "+14155550123", "Hi Ada, 10% off today")).await.unwrap();
    assert_eq!(detail, format!("twilio sid=SM{:032} status=queued", 0));
    let seen = provider.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].account, SID);
    assert_eq!(seen[0].token.as_deref(), Some("welcome/s1/cu 1"));
    let expected: BTreeMap<String, String> = [
        ("To", "+14155550123"),
        ("From", "+15005550006"),
        ("Body", "Hi Ada, 10% off today"),
        ("StatusCallback", "https://chorus.example.com/v1/twilio/status?key=welcome%2Fs1%2Fcu%201&customer=cu_0003000000000007"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(seen[0].form, expected);

    // The same key again is a second message: Twilio documents no de-duplication of
    // message creation, so the connector says so and the dispatcher records attempts.
    let again = twilio.deliver(&sms_intent("welcome/s1/cu 1", "+14155550123", "Hi Ada, 10% off today")).await.unwrap();
    assert_ne!(again, detail);
    assert_eq!(provider.sent.lock().unwrap().len(), 2);
    assert!(!twilio.honours_idempotency_key());
}

#[tokio::test]
async fn rule_twilio_mms_carries_media_url_and_service_sid() {
    let provider = Provider::default();
    let base = start(provider.clone()).await;
    let mut cfg = config(&base);
    cfg.from = None;
    cfg.messaging_service_sid = Some("MG00000000000000000000000000000002".into());
    cfg.status_callback_base = None;
    let twilio = TwilioConnector::new(&cfg, &env).unwrap();
    let mut intent = sms_intent("k-mms", "+14155550123", "");
    let rendered = Rendered {
        template: "promo".into(),
        locale: None,
        content: Content::Mms(Mms { body: Some("Look".into()), media_url: "https://cdn.example.com/a.png".into() }),
    };
    intent.channel = "mms".into();
    intent.content = serde_json::to_string(&rendered).unwrap();
    twilio.deliver(&intent).await.unwrap();
    let form = provider.seen.lock().unwrap()[0].form.clone();
    assert_eq!(form.get("MessagingServiceSid").map(String::as_str), Some("MG00000000000000000000000000000002"));
    assert_eq!(form.get("MediaUrl").map(String::as_str), Some("https://cdn.example.com/a.png"));
    assert_eq!(form.get("Body").map(String::as_str), Some("Look"));
    assert!(!form.contains_key("From") && !form.contains_key("StatusCallback"), "{form:?}");
}

#[tokio::test]
async fn rule_twilio_outcomes_are_mapped() {
    let provider = Provider::default();
    let base = start(provider.clone()).await;
    let twilio = TwilioConnector::new(&config(&base), &env).unwrap();

    match twilio.deliver(&sms_intent("k1", "+15005550001", "hi")).await {
        Err(DeliveryError::Permanent(d)) => assert!(d.contains("invalid_address") && d.contains("21211") && d.contains("not a valid phone number"), "{d}"),
        other => panic!("bad number: {other:?}"),
    }
    match twilio.deliver(&sms_intent("k2", "+15005550004", "hi")).await {
        Err(DeliveryError::Permanent(d)) => {
            assert!(d.contains("unsubscribed") && d.contains("21610"), "{d}")
        }
        other => panic!("unsubscribed: {other:?}"),
    }
    match twilio.deliver(&sms_intent("k3", "+15005550009", "hi")).await {
        Err(DeliveryError::TransientAfter(d, after)) => assert!(d.contains("429") && d.contains("retry after 3s") && after == Duration::from_secs(3), "{d}"),
        other => panic!("rate limited: {other:?}"),
    }
    match twilio.deliver(&sms_intent("k4", "+15005550500", "hi")).await {
        Err(DeliveryError::Transient(d)) => assert!(d.contains("500"), "{d}"),
        other => panic!("server error: {other:?}"),
    }
    // Content the connector cannot send never reaches the provider.
    let before = provider.seen.lock().unwrap().len();
    let mut empty = sms_intent("k5", "+14155550123", "hi");
    empty.content.clear();
    assert!(matches!(twilio.deliver(&empty).await, Err(DeliveryError::Permanent(d)) if d.contains("no rendered content")));
    let mut push = sms_intent("k6", "+14155550123", "hi");
    push.content = serde_json::to_string(&Rendered {
        template: "p".into(),
        locale: None,
        content: Content::Push(chorus_templates::Push { title: None, body: "b".into(), image: None, deep_link: None }),
    })
    .unwrap();
    assert!(matches!(twilio.deliver(&push).await, Err(DeliveryError::Permanent(d)) if d.contains("only sms and mms")));
    assert_eq!(provider.seen.lock().unwrap().len(), before);

    // A wrong token is refused by the provider: permanent, naming the settings.
    let wrong = |_: &str| Some("wrong".to_string());
    let bad = TwilioConnector::new(&config(&base), &wrong).unwrap();
    assert!(matches!(bad.deliver(&sms_intent("k7", "+14155550123", "hi")).await, Err(DeliveryError::Permanent(d)) if d.contains("auth_token")));
}

#[tokio::test]
async fn rule_twilio_transient_errors_are_retried_until_success() {
    let provider = Provider::default();
    provider.failures_left.lock().unwrap().insert("+14155550199".into(), 2);
    let base = start(provider.clone()).await;
    let twilio = TwilioConnector::new(&config(&base), &env).unwrap();
    let d = deliver_with_retries(&twilio, &sms_intent("k-retry", "+14155550199", "hi"), &fast_retries()).await;
    assert_eq!(d.status, DispatchStatus::Delivered, "{d:?}");
    assert_eq!(d.attempts, 3);
    assert!(d.detail.starts_with("twilio sid=SM"), "{d:?}");
    let seen = provider.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| s.token.as_deref() == Some("k-retry")), "every attempt carries the same idempotency token");

    // A permanent error is not retried.
    let d = deliver_with_retries(&twilio, &sms_intent("k-bad", "+15005550001", "hi"), &fast_retries()).await;
    assert_eq!((d.status, d.attempts), (DispatchStatus::FailedPermanent, 1));
    // Transient errors that never end give up after attempts_max.
    let d = deliver_with_retries(&twilio, &sms_intent("k-down", "+15005550500", "hi"), &fast_retries()).await;
    assert_eq!((d.status, d.attempts), (DispatchStatus::FailedTransient, 4));
}

/// A 429 with `Retry-After: 2` is retried no sooner than 2 s later, although the
/// backoff alone would retry after a few milliseconds.
#[tokio::test]
async fn rule_twilio_retry_after_is_honoured() {
    let provider = Provider::default();
    provider.rate_limited_left.lock().unwrap().insert("+14155550177".into(), 1);
    let base = start(provider.clone()).await;
    let twilio = TwilioConnector::new(&config(&base), &env).unwrap();
    let d = deliver_with_retries(&twilio, &sms_intent("k-429", "+14155550177", "hi"), &fast_retries()).await;
    assert_eq!((d.status, d.attempts), (DispatchStatus::Delivered, 2), "{d:?}");
    let seen = provider.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    let waited = seen[1].at - seen[0].at;
    assert!(waited >= Duration::from_secs(2), "the retry came {waited:?} after the 429 that said Retry-After: 2");
    // A longer hint is clipped to retry_after_max.
    provider.rate_limited_left.lock().unwrap().insert("+14155550178".into(), 1);
    let limits = ConnectorLimits { retry_after_max: Duration::from_millis(300), ..fast_retries() };
    let started = std::time::Instant::now();
    let d = deliver_with_retries(&twilio, &sms_intent("k-429b", "+14155550178", "hi"), &limits).await;
    assert_eq!(d.status, DispatchStatus::Delivered, "{d:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "retry_after_max bounds the wait: {:?}", started.elapsed());
}

#[tokio::test]
async fn rule_twilio_timeout_is_transient() {
    // A server that accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut cfg = config(&format!("http://{addr}"));
    cfg.timeout = Duration::from_millis(200);
    let twilio = TwilioConnector::new(&cfg, &env).unwrap();
    match twilio.deliver(&sms_intent("k-slow", "+14155550123", "hi")).await {
        Err(DeliveryError::Transient(d)) => assert!(d.contains("timeout"), "{d}"),
        other => panic!("timeout: {other:?}"),
    }
}

#[test]
fn rule_twilio_config_is_validated() {
    let mut cfg = config("http://127.0.0.1:1");
    cfg.messaging_service_sid = Some("MG1".into());
    assert_eq!(TwilioConnector::new(&cfg, &env).err().unwrap().field, "from");
    let cfg = config("http://127.0.0.1:1");
    assert_eq!(TwilioConnector::new(&cfg, &|_| None).err().unwrap().field, "auth_token_env");
    let defaults: TwilioConfig = serde_json::from_value(json!({"account_sid": SID, "auth_token": TOKEN, "from": "+1"})).unwrap();
    assert_eq!(defaults.base_url, "https://api.twilio.com");
    assert_eq!(defaults.timeout, Duration::from_secs(10));
}
