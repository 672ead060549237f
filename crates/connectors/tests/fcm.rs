//! The FCM connector against a real local HTTP server that serves both Google's OAuth2
//! token endpoint (it verifies the JWT assertion's RS256 signature with the test key's
//! public key and its claims) and FCM HTTP v1 `messages:send` (bearer check, message
//! body, UNREGISTERED tokens, one 401 to force a refresh). The RSA key is generated
//! when the test runs: it is a test key and never leaves the process.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair as _;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Json, Router};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chorus_connectors::fcm::{FcmConfig, FcmConnector, JWT_BEARER_GRANT, SCOPE};
use chorus_connectors::{Connector, ConnectorLimits, DeliveryError, deliver_with_retries};
use chorus_templates::{Content, Push, Rendered};
use chorus_types::{Category, CustomerId, DispatchStatus, Intent, JsonMap};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const CLIENT_EMAIL: &str = "chorus-test@test-project.iam.gserviceaccount.com";
const PROJECT: &str = "test-project";

#[derive(Default)]
struct Seen {
    token_requests: u32,
    /// Problems found in assertions (the connector must produce none).
    assertion_errors: Vec<String>,
    /// (bearer, body) of every send.
    sends: Vec<(String, Value)>,
}

#[derive(Clone)]
struct Google {
    /// PKCS#1 RSAPublicKey DER of the test key.
    public_key: Arc<Vec<u8>>,
    token_uri: Arc<Mutex<String>>,
    expires_in: Arc<Mutex<u64>>,
    valid_tokens: Arc<Mutex<HashSet<String>>>,
    /// Answer 401 to this many sends, whatever the bearer.
    unauthorized_left: Arc<Mutex<u32>>,
    /// Answer 503 to this many sends.
    unavailable_left: Arc<Mutex<u32>>,
    seen: Arc<Mutex<Seen>>,
}

fn check_assertion(g: &Google, assertion: &str) -> Result<(), String> {
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return Err(format!("{} parts", parts.len()));
    };
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|e| format!("signature encoding: {e}"))?;
    aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256, g.public_key.as_slice())
        .verify(format!("{header}.{claims}").as_bytes(), &signature)
        .map_err(|_| "signature does not verify with the test key's public key".to_string())?;
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).map_err(|e| e.to_string())?;
    if header["alg"] != "RS256" || header["typ"] != "JWT" {
        return Err(format!("header {header}"));
    }
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).map_err(|e| e.to_string())?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let iat = claims["iat"].as_i64().ok_or("no iat")?;
    let exp = claims["exp"].as_i64().ok_or("no exp")?;
    let aud = g.token_uri.lock().unwrap().clone();
    if claims["iss"] != CLIENT_EMAIL || claims["scope"] != SCOPE || claims["aud"] != aud.as_str() || (iat - now).abs() > 300 || exp - iat != 3600 {
        return Err(format!("claims {claims}"));
    }
    Ok(())
}

async fn token(State(g): State<Google>, Form(form): Form<BTreeMap<String, String>>) -> Response {
    let mut seen = g.seen.lock().unwrap();
    seen.token_requests += 1;
    let checked = if form.get("grant_type").map(String::as_str) != Some(JWT_BEARER_GRANT) {
        Err(format!("grant_type {:?}", form.get("grant_type")))
    } else {
        check_assertion(&g, form.get("assertion").map(String::as_str).unwrap_or(""))
    };
    if let Err(e) = checked {
        seen.assertion_errors.push(e.clone());
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_grant", "error_description": e}))).into_response();
    }
    let access = format!("ya29.test-{}", seen.token_requests);
    g.valid_tokens.lock().unwrap().insert(access.clone());
    Json(json!({"access_token": access, "expires_in": *g.expires_in.lock().unwrap(), "token_type": "Bearer"})).into_response()
}

fn fcm_error(status: u16, grpc: &str, code: Option<&str>, message: &str) -> Response {
    let details: Vec<Value> = code.map(|c| json!({"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": c})).into_iter().collect();
    (StatusCode::from_u16(status).unwrap(), Json(json!({"error": {"code": status, "message": message, "status": grpc, "details": details}}))).into_response()
}

async fn send(State(g): State<Google>, Path((project, action)): Path<(String, String)>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    assert_eq!((project.as_str(), action.as_str()), (PROJECT, "messages:send"));
    let bearer = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("").to_string();
    g.seen.lock().unwrap().sends.push((bearer.clone(), body.clone()));
    {
        let mut left = g.unauthorized_left.lock().unwrap();
        if *left > 0 {
            *left -= 1;
            g.valid_tokens.lock().unwrap().clear();
        }
    }
    if !g.valid_tokens.lock().unwrap().contains(&bearer) {
        return fcm_error(401, "UNAUTHENTICATED", None, "Request had invalid authentication credentials.");
    }
    {
        let mut left = g.unavailable_left.lock().unwrap();
        if *left > 0 {
            *left -= 1;
            return fcm_error(503, "UNAVAILABLE", Some("UNAVAILABLE"), "The service is currently unavailable.");
        }
    }
    match body["message"]["token"].as_str().unwrap_or("") {
        "stale-token" => fcm_error(404, "NOT_FOUND", Some("UNREGISTERED"), "Requested entity was not found."),
        "not-a-token" => fcm_error(400, "INVALID_ARGUMENT", Some("INVALID_ARGUMENT"), "The registration token is not a valid FCM registration token"),
        "busy-token" => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "5")],
            Json(json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "Quota exceeded"}})),
        )
            .into_response(),
        _ => Json(json!({"name": format!("projects/{PROJECT}/messages/{}", g.seen.lock().unwrap().sends.len())})).into_response(),
    }
}

struct Fixture {
    google: Google,
    base: String,
    key_json: String,
}

fn pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"))
}

async fn start() -> Fixture {
    let test_key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let pkcs8 = test_key.as_der().unwrap();
    let google = Google {
        public_key: Arc::new(test_key.public_key().as_ref().to_vec()),
        token_uri: Arc::default(),
        expires_in: Arc::new(Mutex::new(3600)),
        valid_tokens: Arc::default(),
        unauthorized_left: Arc::default(),
        unavailable_left: Arc::default(),
        seen: Arc::default(),
    };
    let app = Router::new().route("/token", post(token)).route("/v1/projects/{project}/{action}", post(send)).with_state(google.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    *google.token_uri.lock().unwrap() = format!("{base}/token");
    let key_json = json!({
        "type": "service_account",
        "project_id": PROJECT,
        "client_email": CLIENT_EMAIL,
        "private_key": pem(pkcs8.as_ref()),
        "token_uri": format!("{base}/token"),
    })
    .to_string();
    Fixture { google, base, key_json }
}

impl Fixture {
    fn connector(&self) -> FcmConnector {
        let config: FcmConfig =
            serde_json::from_value(json!({"project_id": PROJECT, "base_url": self.base, "service_account_json_env": "FCM_KEY_FOR_TEST", "timeout": "2s"}))
                .unwrap();
        let key = self.key_json.clone();
        FcmConnector::new(&config, &move |name| (name == "FCM_KEY_FOR_TEST").then(|| key.clone())).unwrap()
    }
    fn token_requests(&self) -> u32 {
        self.google.seen.lock().unwrap().token_requests
    }
    fn assert_assertions_valid(&self) {
        let seen = self.google.seen.lock().unwrap();
        assert!(seen.assertion_errors.is_empty(), "{:?}", seen.assertion_errors);
    }
}

fn push_intent(key: &str, token: &str) -> Intent {
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
        to: token.into(),
        vars: JsonMap::new(),
        journey: "restock".into(),
        created_ms: 1,
        content: serde_json::to_string(&rendered).unwrap(),
    }
}

#[tokio::test]
async fn rule_push_is_sent_with_a_cached_service_account_token() {
    let fx = start().await;
    let fcm = fx.connector();
    let detail = fcm.deliver(&push_intent("k1", "device-token-1")).await.unwrap();
    assert_eq!(detail, format!("fcm name=projects/{PROJECT}/messages/1"));
    fcm.deliver(&push_intent("k2", "device-token-2")).await.unwrap();
    fx.assert_assertions_valid();
    assert_eq!(fx.token_requests(), 1, "the access token is cached until shortly before it expires");
    // The server's check can fail: a tampered assertion does not verify.
    let key: chorus_connectors::fcm::ServiceAccountKey = serde_json::from_str(&fx.key_json).unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let good = chorus_connectors::fcm::Signer::new(&key).unwrap().assertion(now).unwrap();
    check_assertion(&fx.google, &good).unwrap();
    let tampered = good.replacen('.', ".e", 1);
    assert!(check_assertion(&fx.google, &tampered).is_err());
    let seen = fx.google.seen.lock().unwrap();
    assert_eq!(seen.sends[0].0, "ya29.test-1");
    assert_eq!(
        seen.sends[0].1,
        json!({"message": {
            "token": "device-token-1",
            "notification": {"title": "Back in stock", "body": "Your size is back", "image": "https://cdn.example.com/x.png"},
            "data": {"deep_link": "shop://p/X1", "chorus_key": "k1"},
        }})
    );
}

#[tokio::test]
async fn rule_unregistered_push_token_is_permanent() {
    let fx = start().await;
    let fcm = fx.connector();
    for token in ["stale-token", "not-a-token"] {
        match fcm.deliver(&push_intent("k", token)).await {
            Err(DeliveryError::Permanent(d)) => assert!(d.contains("unregistered"), "{token}: {d}"),
            other => panic!("{token}: {other:?}"),
        }
    }
    let d = deliver_with_retries(&fcm, &push_intent("k", "stale-token"), &ConnectorLimits::default()).await;
    assert_eq!((d.status, d.attempts), (DispatchStatus::FailedPermanent, 1), "{d:?}");
}

#[tokio::test]
async fn rule_push_rate_limit_and_unavailable_are_transient() {
    let fx = start().await;
    let fcm = fx.connector();
    match fcm.deliver(&push_intent("k", "busy-token")).await {
        Err(DeliveryError::TransientAfter(d, after)) => assert!(d.contains("429") && d.contains("retry after 5s") && after == Duration::from_secs(5), "{d}"),
        other => panic!("{other:?}"),
    }
    *fx.google.unavailable_left.lock().unwrap() = 2;
    let limits = ConnectorLimits {
        concurrency_max: 1,
        attempts_max: 5,
        backoff_initial: Duration::from_millis(5),
        backoff_max: Duration::from_millis(20),
        ..Default::default()
    };
    let d = deliver_with_retries(&fcm, &push_intent("k-flaky", "device-token-1"), &limits).await;
    assert_eq!((d.status, d.attempts), (DispatchStatus::Delivered, 3), "{d:?}");
}

#[tokio::test]
async fn rule_push_refreshes_the_access_token_once_on_401() {
    let fx = start().await;
    let fcm = fx.connector();
    fcm.deliver(&push_intent("k1", "device-token-1")).await.unwrap();
    assert_eq!(fx.token_requests(), 1);

    // The provider forgets the token: one 401, a new token, the send succeeds.
    *fx.google.unauthorized_left.lock().unwrap() = 1;
    fcm.deliver(&push_intent("k2", "device-token-1")).await.unwrap();
    assert_eq!(fx.token_requests(), 2);
    {
        let seen = fx.google.seen.lock().unwrap();
        let bearers: Vec<&str> = seen.sends.iter().map(|(b, _)| b.as_str()).collect();
        assert_eq!(bearers, ["ya29.test-1", "ya29.test-1", "ya29.test-2"]);
    }

    // Refused again after the refresh: transient, and only one refresh per delivery.
    *fx.google.unauthorized_left.lock().unwrap() = 2;
    match fcm.deliver(&push_intent("k3", "device-token-1")).await {
        Err(DeliveryError::Transient(d)) => assert!(d.contains("401"), "{d}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(fx.token_requests(), 3);
    fx.assert_assertions_valid();
}

#[tokio::test]
async fn rule_push_token_is_refreshed_before_it_expires() {
    let fx = start().await;
    // Tokens that live less than the refresh margin are used once each.
    *fx.google.expires_in.lock().unwrap() = 30;
    let fcm = fx.connector();
    fcm.deliver(&push_intent("k1", "device-token-1")).await.unwrap();
    fcm.deliver(&push_intent("k2", "device-token-1")).await.unwrap();
    assert_eq!(fx.token_requests(), 2);
    fx.assert_assertions_valid();
}

#[tokio::test]
async fn rule_push_key_file_and_token_uri_override() {
    let fx = start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test-service-account.json");
    // A key whose token_uri points nowhere: the config's token_uri wins.
    let mut key: Value = serde_json::from_str(&fx.key_json).unwrap();
    key["token_uri"] = json!("http://127.0.0.1:1/unused");
    std::fs::write(&path, key.to_string()).unwrap();
    let config: FcmConfig =
        serde_json::from_value(json!({"project_id": PROJECT, "base_url": fx.base, "service_account_file": path, "token_uri": format!("{}/token", fx.base)}))
            .unwrap();
    let fcm = FcmConnector::new(&config, &|_| None).unwrap();
    fcm.deliver(&push_intent("k1", "device-token-1")).await.unwrap();
    fx.assert_assertions_valid();

    let missing: FcmConfig = serde_json::from_value(json!({"project_id": PROJECT})).unwrap();
    assert_eq!(FcmConnector::new(&missing, &|_| None).err().unwrap().field, "service_account_file");
    // Content that is not a push message never reaches FCM.
    let mut sms = push_intent("k2", "device-token-1");
    sms.content = serde_json::to_string(&Rendered {
        template: "t".into(),
        locale: None,
        content: Content::Sms(chorus_templates::Sms { body: "b".into(), encoding: chorus_templates::SmsEncoding::Gsm7, units: 1, segments: 1 }),
    })
    .unwrap();
    assert!(matches!(fcm.deliver(&sms).await, Err(DeliveryError::Permanent(d)) if d.contains("only push")));
}
