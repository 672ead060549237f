//! The webhook connector against a real HTTP server: an axum receiver on 127.0.0.1 that
//! verifies each request exactly as the Standard Webhooks specification tells receivers
//! to (its own HMAC code, not the connector's), records it, and answers from a script:
//! 500 then 200 (retried to success), 429 with Retry-After, 410 (permanent), a hang
//! (timeout), 401 for a bad signature.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chorus_connectors::webhook::{WebhookConfig, WebhookConnector};
use chorus_connectors::{Connector, ConnectorLimits, DeliveryError, deliver_with_retries};
use chorus_templates::{Content, Rendered, Webhook};
use chorus_types::{Category, CustomerId, DispatchStatus, Intent, JsonMap};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The receiver's secret (`whsec_` + base64 of 32 bytes).
const SECRET: &str = "whsec_dGhpcy1pcy1hLTMyLWJ5dGUtdGVzdC1zZWNyZXQtMDE=";
/// The instant of every attempt in these tests (the connector's injected clock), and
/// the receiver's "now".
const NOW_S: i64 = 1_790_000_000;
/// The receiver's tolerance for `webhook-timestamp`, as the specification recommends.
const TOLERANCE_S: i64 = 5 * 60;

fn phase(what: &str) {
    eprintln!("--- {what}");
}

/// What the receiver answers next (then 200 when the script is empty).
#[derive(Clone)]
enum Reply {
    Status(u16),
    RetryAfter(u16, &'static str),
    Hang,
}

#[derive(Clone, Debug)]
struct Received {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: String,
    signature_ok: bool,
}

#[derive(Clone, Default)]
struct Receiver {
    script: Arc<Mutex<VecDeque<Reply>>>,
    received: Arc<Mutex<Vec<Received>>>,
}

/// Verification per the Standard Webhooks specification: the key is the base64 after
/// `whsec_`; the signed content is `{webhook-id}.{webhook-timestamp}.{body}`; the
/// `webhook-signature` header is a space-delimited list of `v1,<base64>` signatures, any
/// of which may match (compared in constant time); the timestamp must be within the
/// tolerance of now.
fn verify(headers: &HeaderMap, body: &[u8], now_s: i64) -> bool {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let (Some(id), Some(ts), Some(sigs)) = (get("webhook-id"), get("webhook-timestamp"), get("webhook-signature")) else {
        return false;
    };
    let Ok(ts_n) = ts.parse::<i64>() else {
        return false;
    };
    if (now_s - ts_n).abs() > TOLERANCE_S {
        return false;
    }
    let key = BASE64.decode(SECRET.strip_prefix("whsec_").unwrap()).unwrap();
    sigs.split(' ').any(|sig| {
        let Some(("v1", b64)) = sig.split_once(',') else {
            return false;
        };
        let Ok(given) = BASE64.decode(b64) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        mac.verify_slice(&given).is_ok()
    })
}

async fn receive(State(r): State<Receiver>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let signature_ok = verify(&headers, &body, NOW_S);
    r.received.lock().unwrap().push(Received {
        method,
        path: uri.path().to_string(),
        headers: headers.clone(),
        body: String::from_utf8_lossy(&body).into_owned(),
        signature_ok,
    });
    if !signature_ok {
        return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
    }
    let next = r.script.lock().unwrap().pop_front();
    match next {
        None => (StatusCode::OK, "thanks").into_response(),
        Some(Reply::Status(s)) => (StatusCode::from_u16(s).unwrap(), format!("scripted {s}")).into_response(),
        Some(Reply::RetryAfter(s, after)) => (StatusCode::from_u16(s).unwrap(), [("retry-after", after)], "slow down").into_response(),
        Some(Reply::Hang) => std::future::pending().await,
    }
}

/// Starts the receiver on 127.0.0.1:0; returns it and its base URL.
async fn start_receiver(script: Vec<Reply>) -> (Receiver, String) {
    let r = Receiver { script: Arc::new(Mutex::new(script.into())), ..Default::default() };
    let app = Router::new().fallback(receive).with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (r, format!("http://{addr}"))
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn connector(secret: &str, timeout: &str) -> WebhookConnector {
    let cfg = WebhookConfig { timeout: timeout.into(), ..WebhookConfig::with_secret(secret) };
    WebhookConnector::new(cfg, &no_env, Box::new(|| NOW_S * 1000 + 250)).expect("connector")
}

fn intent(key: &str, url: &str) -> Intent {
    let mut headers = BTreeMap::new();
    headers.insert("X-Tenant".to_string(), "acme".to_string());
    let hook = Webhook { url: url.into(), method: "POST".into(), headers, body: Some(r#"{"event":"cart_abandoned","customer":"c-7"}"#.into()) };
    let rendered = Rendered { template: "crm-sync".into(), locale: None, content: Content::Webhook(hook) };
    Intent {
        key: key.into(),
        customer: CustomerId::new(3, 7),
        channel: "webhook".into(),
        template: "crm-sync".into(),
        category: Category::Transactional,
        to: String::new(),
        vars: JsonMap::new(),
        journey: "cart".into(),
        created_ms: 1,
        content: serde_json::to_string(&rendered).unwrap(),
    }
}

fn fast_limits() -> ConnectorLimits {
    ConnectorLimits { attempts_max: 4, backoff_initial: Duration::from_millis(1), retry_after_max: Duration::from_millis(20), ..Default::default() }
}

#[tokio::test]
async fn a_500_is_retried_to_success_with_the_same_signed_message() {
    phase("the receiver answers 500, then 200");
    let (r, base) = start_receiver(vec![Reply::Status(500)]).await;
    let hooks = connector(SECRET, "10s");
    let d = deliver_with_retries(&hooks, &intent("shard-2/out-5", &format!("{base}/hooks/chorus?src=test")), &fast_limits()).await;
    assert_eq!((d.status, d.attempts), (DispatchStatus::Delivered, 2), "{d:?}");
    assert_eq!(d.detail, "200 OK: thanks");

    phase("both requests verified per Standard Webhooks, with the same id, timestamp and body");
    let got = r.received.lock().unwrap().clone();
    assert_eq!(got.len(), 2);
    for req in &got {
        assert!(req.signature_ok, "{req:?}");
        assert_eq!(req.method, Method::POST);
        assert_eq!(req.path, "/hooks/chorus");
        assert_eq!(req.headers["webhook-id"], "shard-2/out-5");
        assert_eq!(req.headers["webhook-timestamp"], NOW_S.to_string().as_str());
        assert!(req.headers["webhook-signature"].to_str().unwrap().starts_with("v1,"));
        assert_eq!(req.headers["content-type"], "application/json");
        assert_eq!(req.headers["x-tenant"], "acme");
        assert_eq!(req.body, r#"{"event":"cart_abandoned","customer":"c-7"}"#);
    }
}

#[tokio::test]
async fn a_429_returns_its_retry_after() {
    phase("the receiver answers 429 with Retry-After: 7");
    let (_r, base) = start_receiver(vec![Reply::RetryAfter(429, "7"), Reply::RetryAfter(503, "1")]).await;
    let hooks = connector(SECRET, "10s");
    let err = hooks.deliver(&intent("k-429", &format!("{base}/h"))).await.unwrap_err();
    match &err {
        DeliveryError::TransientAfter(detail, after) => {
            assert_eq!(*after, Duration::from_secs(7));
            assert_eq!(detail, "429 Too Many Requests (retry after 7s): slow down");
        }
        other => panic!("429 must be transient with a retry-after hint: {other:?}"),
    }

    phase("503 with Retry-After, then 200, through the retry loop (the hint capped by retry_after_max)");
    let d = deliver_with_retries(&hooks, &intent("k-429", &format!("{base}/h")), &fast_limits()).await;
    assert_eq!((d.status, d.attempts), (DispatchStatus::Delivered, 2), "{d:?}");
}

#[tokio::test]
async fn a_410_and_other_4xx_are_permanent() {
    let (r, base) = start_receiver(vec![Reply::Status(410), Reply::Status(400), Reply::Status(408)]).await;
    let hooks = connector(SECRET, "10s");
    phase("410 Gone: permanent, not retried");
    let d = deliver_with_retries(&hooks, &intent("k-410", &format!("{base}/h")), &fast_limits()).await;
    assert_eq!((d.status, d.attempts), (DispatchStatus::FailedPermanent, 1), "{d:?}");
    assert!(d.detail.starts_with("410 Gone"), "{d:?}");
    phase("400: permanent");
    let err = hooks.deliver(&intent("k-400", &format!("{base}/h"))).await.unwrap_err();
    assert!(matches!(&err, DeliveryError::Permanent(d) if d == "400 Bad Request: scripted 400"), "{err:?}");
    phase("408: transient");
    let err = hooks.deliver(&intent("k-408", &format!("{base}/h"))).await.unwrap_err();
    assert!(matches!(&err, DeliveryError::Transient(d) if d.starts_with("408")), "{err:?}");
    assert_eq!(r.received.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn the_receiver_refuses_a_wrong_secret() {
    phase("a connector signing with another secret: the receiver's verification fails (401, permanent)");
    let (r, base) = start_receiver(vec![]).await;
    let other = connector("whsec_b3RoZXItc2VjcmV0LW9mLWF0LWxlYXN0LTI0LWJ5dGVz", "10s");
    let err = other.deliver(&intent("k-forged", &format!("{base}/h"))).await.unwrap_err();
    assert!(matches!(&err, DeliveryError::Permanent(d) if d.starts_with("401")), "{err:?}");
    assert!(!r.received.lock().unwrap()[0].signature_ok);
}

#[tokio::test]
async fn timeouts_and_refused_connections_are_transient() {
    phase("the receiver never answers: the request times out (transient)");
    let (_r, base) = start_receiver(vec![Reply::Hang]).await;
    let hooks = connector(SECRET, "300ms");
    let err = hooks.deliver(&intent("k-hang", &format!("{base}/h"))).await.unwrap_err();
    assert!(matches!(&err, DeliveryError::Transient(d) if d.contains("timed out")), "{err:?}");

    phase("nothing listens: transient");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err = hooks.deliver(&intent("k-refused", &format!("http://127.0.0.1:{port}/h"))).await.unwrap_err();
    assert!(matches!(&err, DeliveryError::Transient(_)), "{err:?}");

    phase("a file: URL is refused before any I/O (permanent)");
    let err = hooks.deliver(&intent("k-file", "file:///etc/passwd")).await.unwrap_err();
    assert!(matches!(&err, DeliveryError::Permanent(d) if d.contains("scheme \"file\" is not allowed")), "{err:?}");
}
