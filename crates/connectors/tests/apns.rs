//! The APNs connector against a real local HTTP/2 server (axum over cleartext h2 with
//! prior knowledge) shaped like Apple's `POST /3/device/{token}`: it verifies each
//! provider token's ES256 signature with the test key's public key, its header and
//! claims, the `apns-*` headers and the JSON payload, and answers as APNs does (200 with
//! an `apns-id`, 410 `Unregistered`, 400 `BadDeviceToken`, 429, 403
//! `ExpiredProviderToken`, 5xx). The P-256 key is generated when the test runs: it is a
//! test key and never leaves the process.

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chorus_connectors::apns::{ApnsConfig, ApnsConnector, apns_id};
use chorus_connectors::{Connector, ConnectorLimits, DeliveryError, deliver_with_retries};
use chorus_templates::{Content, Push, Rendered};
use chorus_types::{Category, CustomerId, DispatchStatus, Intent, JsonMap};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const TEAM_ID: &str = "TEAM123456";
const KEY_ID: &str = "KEY1234567";
const TOPIC: &str = "com.example.shop";

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    device: String,
    jwt: String,
    headers: BTreeMap<String, String>,
    body: Value,
}

#[derive(Clone)]
struct Apple {
    /// The uncompressed P-256 public point of the test key.
    public_key: Arc<Vec<u8>>,
    /// Problems found in requests (the connector must cause none).
    errors: Arc<Mutex<Vec<String>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Answer `ExpiredProviderToken` to this many requests; their tokens stay refused.
    expire_left: Arc<Mutex<u32>>,
    expired: Arc<Mutex<HashSet<String>>>,
    /// Answer 429 to this many requests for `busy-token`.
    throttle_left: Arc<Mutex<u32>>,
}

/// Verifies a provider token as APNs does: ES256 over `header.claims` with the team's
/// key, `kid` and `iss` of the team, `iat` within the last hour.
fn check_jwt(public_key: &[u8], jwt: &str) -> Result<(), String> {
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return Err(format!("{} parts", parts.len()));
    };
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|e| format!("signature encoding: {e}"))?;
    if signature.len() != 64 {
        return Err(format!("signature of {} bytes, not r‖s (64)", signature.len()));
    }
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public_key)
        .verify(format!("{header}.{claims}").as_bytes(), &signature)
        .map_err(|_| "signature does not verify with the test key's public key".to_string())?;
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    if header != json!({"alg": "ES256", "kid": KEY_ID}) {
        return Err(format!("header {header}"));
    }
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let iat = claims["iat"].as_i64().ok_or("no iat")?;
    if claims["iss"] != TEAM_ID || claims.as_object().map(|o| o.len()) != Some(2) || !(now - 3600..=now + 5).contains(&iat) {
        return Err(format!("claims {claims}"));
    }
    Ok(())
}

fn is_uuid(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12]) && parts.iter().all(|p| p.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()))
}

fn reason(status: u16, reason: &str) -> Response {
    (StatusCode::from_u16(status).unwrap(), Json(json!({ "reason": reason }))).into_response()
}

async fn push(State(apple): State<Apple>, version: Version, Path(device): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let jwt = header("authorization").strip_prefix("bearer ").unwrap_or("").to_string();
    let mut problems = Vec::new();
    if version != Version::HTTP_2 {
        problems.push(format!("{version:?}, not HTTP/2"));
    }
    if let Err(e) = check_jwt(&apple.public_key, &jwt) {
        problems.push(format!("provider token: {e}"));
    }
    for (name, want) in [("apns-topic", TOPIC), ("apns-push-type", "alert"), ("apns-priority", "10"), ("content-type", "application/json")] {
        if header(name) != want {
            problems.push(format!("{name}: {:?}", header(name)));
        }
    }
    if !is_uuid(&header("apns-id")) || header("apns-collapse-id") != header("apns-id") {
        problems.push(format!("apns-id {:?}, apns-collapse-id {:?}", header("apns-id"), header("apns-collapse-id")));
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        problems.push(format!("body is not JSON: {e}"));
        Value::Null
    });
    if !body["aps"]["alert"]["body"].is_string() {
        problems.push(format!("no aps.alert.body in {body}"));
    }
    let mut seen_headers = BTreeMap::new();
    for (name, value) in &headers {
        seen_headers.insert(name.to_string(), value.to_str().unwrap_or("").to_string());
    }
    apple.seen.lock().unwrap().push(Seen { device: device.clone(), jwt: jwt.clone(), headers: seen_headers, body });
    if !problems.is_empty() {
        apple.errors.lock().unwrap().extend(problems);
        return reason(400, "TestCheckFailed");
    }
    {
        let mut left = apple.expire_left.lock().unwrap();
        let mut expired = apple.expired.lock().unwrap();
        if *left > 0 {
            *left -= 1;
            expired.insert(jwt.clone());
        }
        if expired.contains(&jwt) {
            return reason(403, "ExpiredProviderToken");
        }
    }
    match device.as_str() {
        "gone-token" => (StatusCode::GONE, Json(json!({"reason": "Unregistered", "timestamp": 1_700_000_000_000u64}))).into_response(),
        "bad-token" => reason(400, "BadDeviceToken"),
        "other-app-token" => reason(400, "DeviceTokenNotForTopic"),
        "topic-token" => reason(400, "TopicDisallowed"),
        "down-token" => reason(503, "ServiceUnavailable"),
        "hang-token" => std::future::pending().await,
        "busy-token"
            if {
                let mut left = apple.throttle_left.lock().unwrap();
                let throttle = *left > 0;
                *left = left.saturating_sub(1);
                throttle
            } =>
        {
            (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], Json(json!({"reason": "TooManyRequests"}))).into_response()
        }
        _ => (StatusCode::OK, [("apns-id", header("apns-id"))]).into_response(),
    }
}

struct Fixture {
    apple: Apple,
    base: String,
    key_pem: String,
}

fn pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"))
}

async fn start() -> Fixture {
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &aws_lc_rs::rand::SystemRandom::new()).unwrap();
    let public_key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap().public_key().as_ref().to_vec();
    let apple = Apple {
        public_key: Arc::new(public_key),
        errors: Arc::default(),
        seen: Arc::default(),
        expire_left: Arc::default(),
        expired: Arc::default(),
        throttle_left: Arc::default(),
    };
    let app = Router::new().route("/3/device/{device}", post(push)).with_state(apple.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    // axum's server (hyper-util's auto builder) takes HTTP/2 prior-knowledge connections.
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Fixture { apple, base, key_pem: pem(pkcs8.as_ref()) }
}

impl Fixture {
    fn config(&self, timeout: &str) -> ApnsConfig {
        serde_json::from_value(
            json!({"base_url": self.base, "team_id": TEAM_ID, "key_id": KEY_ID, "key_pem_env": "APNS_KEY_FOR_TEST", "topic": TOPIC, "timeout": timeout}),
        )
        .unwrap()
    }
    fn connector(&self) -> ApnsConnector {
        let key = self.key_pem.clone();
        ApnsConnector::new(&self.config("5s"), &move |name| (name == "APNS_KEY_FOR_TEST").then(|| key.clone())).unwrap()
    }
    fn seen(&self) -> Vec<Seen> {
        self.apple.seen.lock().unwrap().clone()
    }
    fn assert_requests_valid(&self) {
        let errors = self.apple.errors.lock().unwrap();
        assert!(errors.is_empty(), "{errors:?}");
    }
}

fn push_intent(key: &str, device: &str) -> Intent {
    let rendered = Rendered {
        template: "back-in-stock".into(),
        locale: None,
        content: Content::Push(Push {
            title: Some("Back in stock".into()),
            body: "Your size is back".into(),
            image: Some("https://cdn.example.com/x.png".into()),
            deep_link: Some("shop://p/X1".into()),
        }),
    };
    Intent {
        key: key.into(),
        customer: CustomerId::new(1, 9),
        channel: "push".into(),
        template: "back-in-stock".into(),
        category: Category::Marketing,
        to: device.into(),
        vars: JsonMap::new(),
        journey: "restock".into(),
        created_ms: 1,
        content: serde_json::to_string(&rendered).unwrap(),
    }
}

#[tokio::test]
async fn rule_push_is_sent_over_http2_with_a_signed_provider_token() {
    tracing::info!("--- two pushes: one provider token, every header and the payload as Apple wants them");
    let fx = start().await;
    let apns = fx.connector();
    let detail = apns.deliver(&push_intent("shard-1/out-1", "a1b2c3d4")).await.unwrap();
    assert_eq!(detail, format!("apns-id={}", apns_id("shard-1/out-1")));
    apns.deliver(&push_intent("shard-1/out-2", "e5f6a7b8")).await.unwrap();
    fx.assert_requests_valid();
    let seen = fx.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].jwt, seen[1].jwt, "the provider token is reused");
    assert_eq!((seen[0].device.as_str(), seen[1].device.as_str()), ("a1b2c3d4", "e5f6a7b8"));
    assert_eq!(seen[0].headers["apns-id"], apns_id("shard-1/out-1"));
    assert_eq!(seen[0].headers["apns-topic"], TOPIC);
    assert_eq!(
        seen[0].body,
        json!({
            "aps": {"alert": {"title": "Back in stock", "body": "Your size is back"}, "mutable-content": 1},
            "chorus_key": "shard-1/out-1",
            "deep_link": "shop://p/X1",
            "image": "https://cdn.example.com/x.png",
        })
    );

    tracing::info!("--- the server's check can fail: a tampered or foreign token does not verify");
    check_jwt(&fx.apple.public_key, &seen[0].jwt).unwrap();
    assert!(check_jwt(&fx.apple.public_key, &seen[0].jwt.replacen('.', ".e", 1)).is_err());
    let other = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &aws_lc_rs::rand::SystemRandom::new()).unwrap();
    let foreign = chorus_connectors::apns::TokenSigner::new(&pem(other.as_ref()), KEY_ID, TEAM_ID).unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert!(check_jwt(&fx.apple.public_key, &foreign.token(now).unwrap()).is_err());
}

#[tokio::test]
async fn rule_unregistered_device_token_is_permanent() {
    let fx = start().await;
    let apns = fx.connector();
    for device in ["gone-token", "bad-token", "other-app-token"] {
        match apns.deliver(&push_intent("k", device)).await {
            Err(DeliveryError::Permanent(d)) => {
                assert!(d.starts_with("unregistered: "), "{device}: {d}")
            }
            other => panic!("{device}: {other:?}"),
        }
    }
    let d = deliver_with_retries(&apns, &push_intent("k", "gone-token"), &ConnectorLimits::default()).await;
    assert_eq!((d.status, d.attempts, d.detail.as_str()), (DispatchStatus::FailedPermanent, 1, "unregistered: apns 410 Unregistered"));
    // Another client error is permanent with Apple's reason, and not "unregistered".
    let d = deliver_with_retries(&apns, &push_intent("k", "topic-token"), &ConnectorLimits::default()).await;
    assert_eq!((d.status, d.attempts, d.detail.as_str()), (DispatchStatus::FailedPermanent, 1, "apns 400 TopicDisallowed"));
    fx.assert_requests_valid();
}

#[tokio::test]
async fn rule_rate_limit_is_transient_and_retried() {
    let fx = start().await;
    let apns = fx.connector();
    *fx.apple.throttle_left.lock().unwrap() = 1;
    match apns.deliver(&push_intent("k1", "busy-token")).await {
        Err(DeliveryError::TransientAfter(d, after)) => assert_eq!((d.as_str(), after), ("apns 429 TooManyRequests: retry after 1s", Duration::from_secs(1))),
        other => panic!("{other:?}"),
    }

    tracing::info!("--- 429, then 200: delivered on the second attempt");
    *fx.apple.throttle_left.lock().unwrap() = 1;
    let limits = ConnectorLimits { backoff_initial: Duration::from_millis(5), retry_after_max: Duration::from_millis(20), ..Default::default() };
    let d = deliver_with_retries(&apns, &push_intent("k2", "busy-token"), &limits).await;
    assert_eq!((d.status, d.attempts), (DispatchStatus::Delivered, 2), "{d:?}");
    let seen = fx.seen();
    let ids: Vec<&str> = seen[1..].iter().map(|s| s.headers["apns-id"].as_str()).collect();
    assert_eq!(ids, [apns_id("k2"), apns_id("k2")], "every attempt of an intent carries its apns-id");

    tracing::info!("--- 503 is transient: every attempt is used");
    let limits = ConnectorLimits { attempts_max: 3, backoff_initial: Duration::from_millis(1), ..Default::default() };
    let d = deliver_with_retries(&apns, &push_intent("k3", "down-token"), &limits).await;
    assert_eq!((d.status, d.attempts, d.detail.as_str()), (DispatchStatus::FailedTransient, 3, "apns 503 ServiceUnavailable"));
    fx.assert_requests_valid();
}

#[tokio::test]
async fn rule_expired_provider_token_is_re_signed_once() {
    let fx = start().await;
    let apns = fx.connector();
    apns.deliver(&push_intent("k1", "a1b2c3d4")).await.unwrap();

    tracing::info!("--- APNs calls the token expired: re-signed, the send succeeds");
    *fx.apple.expire_left.lock().unwrap() = 1;
    apns.deliver(&push_intent("k2", "a1b2c3d4")).await.unwrap();
    let seen = fx.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].jwt, seen[1].jwt);
    assert_ne!(seen[1].jwt, seen[2].jwt, "the retry carries a newly signed token");
    check_jwt(&fx.apple.public_key, &seen[2].jwt).unwrap();
    assert_eq!(seen[1].headers["apns-id"], seen[2].headers["apns-id"]);

    tracing::info!("--- the new token is kept for the next sends");
    apns.deliver(&push_intent("k3", "a1b2c3d4")).await.unwrap();
    assert_eq!(fx.seen()[3].jwt, seen[2].jwt);

    tracing::info!("--- refused again after re-signing: transient, and only one re-sign per delivery");
    *fx.apple.expire_left.lock().unwrap() = 2;
    match apns.deliver(&push_intent("k4", "a1b2c3d4")).await {
        Err(DeliveryError::Transient(d)) => {
            assert!(d.starts_with("apns 403 ExpiredProviderToken"), "{d}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fx.seen().len(), 6);
    fx.assert_requests_valid();
}

#[tokio::test]
async fn rule_concurrent_sends_re_sign_an_expired_token_once() {
    // Apple refuses re-signing more often than every 20 minutes: sends refused together
    // share one new token.
    let fx = start().await;
    let apns = fx.connector();
    *fx.apple.expire_left.lock().unwrap() = 1;
    let intents: Vec<Intent> = (0..8).map(|i| push_intent(&format!("k{i}"), "a1b2c3d4")).collect();
    let results = futures::future::join_all(intents.iter().map(|i| apns.deliver(i))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let tokens: HashSet<String> = fx.seen().into_iter().map(|s| s.jwt).collect();
    assert_eq!(tokens.len(), 2, "one token, then one re-signed token");
    fx.assert_requests_valid();
}

#[tokio::test]
async fn rule_a_timeout_is_transient() {
    let fx = start().await;
    let key = fx.key_pem.clone();
    let apns = ApnsConnector::new(&fx.config("300ms"), &move |_| Some(key.clone())).unwrap();
    match apns.deliver(&push_intent("k", "hang-token")).await {
        Err(DeliveryError::Transient(d)) => assert!(d.contains("timeout"), "{d}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn rule_the_key_can_come_from_a_p8_file_and_content_must_be_push() {
    let fx = start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("AuthKey_TEST.p8");
    std::fs::write(&path, &fx.key_pem).unwrap();
    let config: ApnsConfig =
        serde_json::from_value(json!({"base_url": fx.base, "team_id": TEAM_ID, "key_id": KEY_ID, "key_file": path, "topic": TOPIC})).unwrap();
    let apns = ApnsConnector::new(&config, &|_| None).unwrap();
    apns.deliver(&push_intent("k1", "a1b2c3d4")).await.unwrap();
    fx.assert_requests_valid();

    // Content that is not a push message, or none, never reaches APNs.
    let mut sms = push_intent("k2", "a1b2c3d4");
    sms.content = serde_json::to_string(&Rendered {
        template: "t".into(),
        locale: None,
        content: Content::Sms(chorus_templates::Sms { body: "b".into(), encoding: chorus_templates::SmsEncoding::Gsm7, units: 1, segments: 1 }),
    })
    .unwrap();
    assert!(matches!(apns.deliver(&sms).await, Err(DeliveryError::Permanent(d)) if d.contains("not push")));
    let mut empty = push_intent("k3", "a1b2c3d4");
    empty.content = String::new();
    assert!(matches!(apns.deliver(&empty).await, Err(DeliveryError::Permanent(d)) if d.contains("no rendered content")));
    // Too large for APNs: refused before sending.
    let mut big = push_intent("k4", "a1b2c3d4");
    big.content = serde_json::to_string(&Rendered {
        template: "t".into(),
        locale: None,
        content: Content::Push(Push { title: None, body: "x".repeat(5000), image: None, deep_link: None }),
    })
    .unwrap();
    assert!(matches!(apns.deliver(&big).await, Err(DeliveryError::Permanent(d)) if d.contains("at most 4096")));
    assert_eq!(fx.seen().len(), 1);
}
