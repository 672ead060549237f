//! The Segment HTTP API against a real node: the official `segment-analytics-python`
//! SDK (tests/python/segment_sdk_send.py) sends identify/track/page/screen/group/alias
//! and a gzip'd batch, and what it printed is read back over gRPC and chorusctl; raw
//! HTTP/1.1 checks write keys, malformed bodies and per-item batch results.

use chorus_tests::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

const SDK_HINT: &str = "pip install -r tests/python/requirements.txt";
const SDK_TIMEOUT: Duration = Duration::from_secs(120);

fn python_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python")
}

/// Fail (never skip) when Python or the SDK is missing: CI installs them.
async fn require_sdk() {
    let out = tokio::process::Command::new("python3").args(["-c", "import segment.analytics"]).output().await;
    match out {
        Err(e) => panic!("python3 is needed for the Segment SDK test ({e}): install Python 3, then {SDK_HINT}"),
        Ok(o) if !o.status.success() => {
            panic!("the official Segment SDK (segment-analytics-python) is not installed: {SDK_HINT}\n{}", String::from_utf8_lossy(&o.stderr))
        }
        Ok(_) => {}
    }
}

/// Run the SDK script; its stdout has one JSON line per call sent.
async fn run_sdk(node: &Node, write_key: &str) -> Vec<Value> {
    let script = python_dir().join("segment_sdk_send.py");
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(&script).args(["all", "--host", &node.http_url(), "--write-key", write_key]).kill_on_drop(true);
    let out = tokio::time::timeout(SDK_TIMEOUT, cmd.output()).await.expect("the SDK script finishes").expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "the SDK reported errors sending to Chorus:\nstdout:\n{stdout}\nstderr:\n{stderr}");
    stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("SDK script line is not JSON ({e}): {l}"))).collect()
}

#[tokio::test]
async fn the_official_python_sdk_works_unchanged() {
    require_sdk().await;
    let node = Node::start(NodeOpts::new("segment-sdk").shards(4)).await;

    phase("segment-analytics-python sends identify, track, page, screen, group, alias and a gzip'd track");
    let sent = run_sdk(&node, "any-key").await;
    let calls: Vec<(&str, &str, bool)> =
        sent.iter().map(|l| (l["call"].as_str().unwrap(), l["type"].as_str().unwrap(), l["gzip"].as_bool().unwrap())).collect();
    assert_eq!(
        calls,
        vec![
            ("identify", "identify", false),
            ("track", "track", false),
            ("page", "page", false),
            ("screen", "screen", false),
            ("group", "group", false),
            ("alias", "alias", false),
            ("track_gzip", "track", true),
        ]
    );
    let message_ids: BTreeSet<String> = sent.iter().map(|l| l["message_id"].as_str().expect("message id").to_string()).collect();
    assert_eq!(message_ids.len(), 7, "distinct message ids: {message_ids:?}");

    phase("one profile holds every call, with the identify traits");
    let p = node.profile("user_id", "sdk-user-1", 50).await.expect("the SDK's user exists");
    let history: BTreeSet<String> = p.recent_events.iter().map(|e| e.message_id.clone()).collect();
    assert_eq!(history, message_ids, "every message id the SDK printed is in the history, and nothing else");
    assert_eq!(p.event_count, 7);
    let attrs: Value = serde_json::from_str(&p.attributes_json).unwrap();
    assert_eq!(
        attrs,
        json!({"email": "ada.sdk@example.com", "first_name": "Ada", "last_name": "Lovelace", "plan": "pro",
               "phone": "+14155550123", "timezone": "Europe/Paris"}),
        "identify traits become attributes; group traits and the consent trait do not"
    );
    for (k, v) in
        [("user_id", "sdk-user-1"), ("anonymous_id", "sdk-anon-1"), ("email", "ada.sdk@example.com"), ("phone", "+14155550123"), ("device_id", "sdk-device-1")]
    {
        assert!(has_identity(&p, k, v), "profile holds {k}:{v}: {:?}", p.identities);
    }
    let consent: Value = serde_json::from_str(&p.consent_json).unwrap();
    assert_eq!(consent["topics"]["advertising"]["status"], "opted_in", "{consent}");
    assert_eq!(consent["topics"]["product_news"]["status"], "opted_out", "{consent}");

    let by_call = |call: &str| {
        let id = sent.iter().find(|l| l["call"] == call).unwrap()["message_id"].as_str().unwrap().to_string();
        let e = p.recent_events.iter().find(|e| e.message_id == id).unwrap_or_else(|| panic!("{call} ({id}) in history"));
        (e.r#type.clone(), e.name.clone(), serde_json::from_str::<Value>(&e.properties_json).unwrap())
    };
    assert_eq!(
        by_call("track"),
        (
            "track".into(),
            "Product Viewed".into(),
            json!({"product_id": "sku-1234", "name": "Analytical Engine", "price": 19.99, "currency": "EUR", "category": "Machines"})
        )
    );
    assert_eq!(
        by_call("track_gzip"),
        (
            "track".into(),
            "Order Completed".into(),
            json!({"order_id": "ord-0001", "revenue": 39.98, "currency": "EUR", "products": [{"product_id": "sku-1234", "quantity": 2}]})
        )
    );
    let (t, name, props) = by_call("page");
    assert_eq!((t.as_str(), name.as_str(), &props["path"]), ("page", "Docs Pricing", &json!("/pricing")));
    let (t, name, _) = by_call("screen");
    assert_eq!((t.as_str(), name.as_str()), ("screen", "Checkout"));
    let (t, _, props) = by_call("group");
    assert_eq!((t.as_str(), &props["group_id"]), ("group", &json!("acme-co")));
    let (t, _, props) = by_call("alias");
    assert_eq!((t.as_str(), &props["previous_id"]), ("alias", &json!("sdk-anon-1")));

    phase("every identity finds the same profile (gRPC and chorusctl)");
    for (k, v) in [("email", "ada.sdk@example.com"), ("anonymous_id", "sdk-anon-1"), ("phone", "+14155550123"), ("device_id", "sdk-device-1")] {
        let found =
            wait_until(Duration::from_secs(20), &format!("{k}:{v} resolves"), || async { node.profile(k, v, 0).await.map_err(|s| format!("{s:?}")) }).await;
        assert_eq!(found.customer_id, p.customer_id, "{k}:{v}");
    }
    let out = node.ctl(&["-o", "json", "profile", "find", "--email", "Ada.SDK@example.com", "--events", "10"]).await;
    out.ok();
    let j = out.json();
    assert_eq!(j["customer_id"], p.customer_id.as_str());
    assert_eq!(j["event_count"], 7);
    assert_eq!(j["attributes"]["plan"], "pro");
}

async fn post(node: &Node, path: &str, auth: Option<&str>, extra: &[(&str, &str)], body: &str) -> HttpResponse {
    let auth_value = auth.map(|a| a.to_string());
    let mut headers: Vec<(&str, &str)> = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth_value {
        headers.push(("Authorization", a));
    }
    headers.extend_from_slice(extra);
    http_request(node.http_addr(), "POST", path, &headers, body.as_bytes()).await
}

fn assert_error(r: &HttpResponse, status: u16, code: &str) -> String {
    assert_eq!(r.status, status, "{r:?} {}", r.text());
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("application/json")), "JSON error body: {r:?}");
    let j = r.json();
    assert_eq!(j["code"], code, "{j}");
    let msg = j["message"].as_str().unwrap_or_default().to_string();
    assert!(!msg.is_empty(), "the error has a message: {j}");
    msg
}

#[tokio::test]
async fn raw_http_write_keys_malformed_bodies_and_per_item_results() {
    let node = Node::start(NodeOpts::new("segment-http").shards(4).env("CHORUS_WRITE_KEYS", "good")).await;
    let good = basic_auth("good");
    let track_body = |mid: &str, user: &str| json!({"messageId": mid, "userId": user, "event": "Clicked", "properties": {"n": 1}}).to_string();

    phase("write keys: only the configured key is accepted");
    let r = post(&node, "/v1/track", Some(&basic_auth("bad")), &[], &track_body("k-1", "http-u0")).await;
    let msg = assert_error(&r, 401, "invalid_write_key");
    assert!(msg.contains("write key"), "{msg}");
    let r = post(&node, "/v1/track", None, &[], &track_body("k-2", "http-u0")).await;
    assert_error(&r, 401, "missing_write_key");
    let r = post(&node, "/v1/track", Some("Bearer abc"), &[], &track_body("k-3", "http-u0")).await;
    assert_error(&r, 401, "bad_authorization");
    let r = post(&node, "/v1/track", None, &[], &json!({"writeKey": "bad", "messageId": "k-4", "userId": "http-u0", "event": "Clicked"}).to_string()).await;
    assert_error(&r, 401, "invalid_write_key");
    assert_eq!(node.profile("user_id", "http-u0", 0).await.expect_err("nothing refused was applied").code(), tonic::Code::NotFound);

    let r = post(&node, "/v1/track", Some(&good), &[], &track_body("k-5", "http-u1")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["success"], true);
    assert_eq!((j["results"][0]["index"].clone(), j["results"][0]["status"].clone()), (json!(0), json!("accepted")), "{j}");
    let u1 = j["results"][0]["customer_id"].as_str().expect("customer id").to_string();
    let r = post(&node, "/v1/track", None, &[], &json!({"writeKey": "good", "messageId": "k-6", "userId": "http-u1", "event": "Clicked"}).to_string()).await;
    assert_eq!(r.status, 200, "writeKey in the body is accepted: {}", r.text());
    let r = post(&node, "/v1/track", Some(&good), &[], &track_body("k-5", "http-u1")).await;
    assert_eq!(r.json()["results"][0]["status"], "duplicate", "a retried call is a duplicate");
    let p = node.profile("user_id", "http-u1", 5).await.unwrap();
    assert_eq!((p.customer_id.as_str(), p.event_count), (u1.as_str(), 2));

    phase("malformed bodies: 400 with a JSON error");
    let r = post(&node, "/v1/track", Some(&good), &[], "{\"userId\": \"x\", ").await;
    let msg = assert_error(&r, 400, "bad_json");
    assert!(msg.contains("not valid JSON"), "{msg}");
    let r = post(&node, "/v1/batch", Some(&good), &[], "[1, 2]").await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = post(&node, "/v1/track", Some(&good), &[("Content-Encoding", "gzip")], &track_body("k-7", "http-u1")).await;
    assert_error(&r, 400, "bad_gzip");
    let r = post(&node, "/v1/track", Some(&good), &[], &json!({"messageId": "k-8", "userId": "http-u1"}).to_string()).await;
    let msg = assert_error(&r, 400, "invalid_request");
    assert!(msg.starts_with("event:"), "a bad single call names its field: {msg}");
    let r = post(&node, "/v1/nope", Some(&good), &[], "{}").await;
    assert_error(&r, 404, "not_found");

    phase("a batch with one bad call among good ones: 200, only the bad one rejected");
    let batch = json!({"batch": [
        {"type": "track", "messageId": "b-1", "userId": "http-u2", "event": "Clicked", "properties": {"i": 1}},
        {"type": "track", "messageId": "b-2", "userId": "http-u2"},
        {"type": "identify", "messageId": "b-3", "userId": "http-u3", "traits": {"plan": "team"}},
        {"type": "page", "messageId": "b-4", "anonymousId": "http-anon-4", "name": "Home"},
    ]});
    let r = post(&node, "/v1/batch", Some(&good), &[], &batch.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    let results = j["results"].as_array().expect("per-item results");
    let statuses: Vec<&str> = results.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["accepted", "rejected", "accepted", "accepted"], "{j}");
    assert_eq!(results[1]["field"], "batch[1].event", "{j}");
    assert!(results[1]["message"].as_str().unwrap().contains("required"), "{j}");
    assert_eq!(results.iter().map(|r| r["index"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1, 2, 3]);
    let u2 = node.profile("user_id", "http-u2", 5).await.unwrap();
    assert_eq!((u2.event_count, u2.recent_events[0].message_id.as_str()), (1, "b-1"));
    let u3 = node.profile("user_id", "http-u3", 0).await.unwrap();
    assert_eq!(serde_json::from_str::<Value>(&u3.attributes_json).unwrap(), json!({"plan": "team"}));
    assert_eq!(node.profile("anonymous_id", "http-anon-4", 0).await.unwrap().event_count, 1);

    phase("one call nested 200 levels deep in a batch: only it is rejected, the good calls are applied");
    let deep =
        format!(r#"{{"type":"track","messageId":"d-2","userId":"http-u5","event":"Deep","properties":{{"x":{}1{}}}}}"#, "[".repeat(200), "]".repeat(200));
    let body = format!(
        r#"{{"batch":[{{"type":"track","messageId":"d-1","userId":"http-u5","event":"Clicked"}},{deep},{{"type":"track","messageId":"d-3","userId":"http-u5","event":"Clicked"}}]}}"#
    );
    let r = post(&node, "/v1/batch", Some(&good), &[], &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    let statuses: Vec<&str> = j["results"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["accepted", "rejected", "accepted"], "{j}");
    assert_eq!(j["results"][1]["field"], "batch[1]", "{j}");
    assert!(j["results"][1]["message"].as_str().unwrap().contains("levels deep"), "{j}");
    let u5 = node.profile("user_id", "http-u5", 5).await.unwrap();
    assert_eq!(u5.event_count, 2, "d-1 and d-3 were applied");
    let r = post(&node, "/v1/track", Some(&good), &[], &deep).await;
    assert_error(&r, 400, "too_deep");

    phase("errors made by the HTTP layer itself are JSON too: a 10 MB body, a wrong method, an unknown path");
    let huge = format!(r#"{{"messageId":"big","userId":"http-u6","event":"Clicked","properties":{{"blob":"{}"}}}}"#, "x".repeat(10 * 1024 * 1024));
    let r = post(&node, "/v1/batch", Some(&good), &[], &huge).await;
    let msg = assert_error(&r, 413, "too_large");
    assert!(msg.contains("bytes"), "{msg}");
    let r = http_request(node.http_addr(), "GET", "/v1/track", &[], b"").await;
    assert_error(&r, 405, "method_not_allowed");
    let r = http_request(node.http_addr(), "GET", "/nope", &[], b"").await;
    assert_error(&r, 404, "not_found");
    assert!(node.profile("user_id", "http-u6", 0).await.is_err(), "nothing of the refused body was applied");

    phase("health, readiness and metrics");
    let r = http_request(node.http_addr(), "GET", "/healthz", &[], b"").await;
    assert_eq!((r.status, r.text().trim()), (200, "ok"));
    let r = http_request(node.http_addr(), "GET", "/readyz", &[], b"").await;
    assert_eq!((r.status, r.text().trim()), (200, "ready"));
    let r = http_request(node.http_addr(), "GET", "/metrics", &[], b"").await;
    assert_eq!(r.status, 200);
    let text = r.text();
    for s in 0..4 {
        assert!(text.contains(&format!("chorus_shard_is_leader{{shard=\"{s}\"}} 1")), "{text}");
    }
    assert!(text.contains("# TYPE chorus_shard_applied_index gauge"), "{text}");
}

#[tokio::test]
async fn write_keys_created_with_chorusctl_are_accepted_listed_and_revoked() {
    let node = Node::start(NodeOpts::new("segment-keys").shards(4)).await;
    let body = |mid: &str| json!({"messageId": mid, "userId": "key-u1", "event": "Clicked"}).to_string();

    phase("with no key anywhere, any key is accepted (a fresh dev node)");
    let r = post(&node, "/v1/track", Some(&basic_auth("anything")), &[], &body("wk-1")).await;
    assert_eq!(r.status, 200, "{}", r.text());

    phase("create a key: printed once, listed by name and fingerprint only");
    let out = node.ctl(&["-o", "json", "key", "create", "segment-prod"]).await;
    out.ok();
    let created = out.json();
    let key = created["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("ck_") && key.len() == 67, "{created}");
    let list = node.ctl(&["-o", "json", "key", "list"]).await;
    list.ok();
    assert_eq!(list.json()["keys"][0]["name"], "segment-prod");
    assert_eq!(list.json()["keys"][0]["fingerprint"], created["fingerprint"]);
    assert!(!list.stdout.contains(&key), "the key itself is never listed: {}", list.stdout);
    let dup = node.ctl(&["key", "create", "segment-prod"]).await;
    assert_eq!(dup.code(), Some(1));
    assert!(dup.stderr.contains("exists"), "{}", dup.stderr);
    let bad = node.ctl(&["key", "create", "no spaces"]).await;
    assert_eq!(bad.code(), Some(1));
    assert!(bad.stderr.contains("not allowed"), "{}", bad.stderr);

    phase("now only that key is accepted, in the header or in the body");
    let r = post(&node, "/v1/track", Some(&basic_auth("anything")), &[], &body("wk-2")).await;
    assert_error(&r, 401, "invalid_write_key");
    let r = post(&node, "/v1/track", Some(&basic_auth(&key)), &[], &body("wk-3")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post(&node, "/v1/track", None, &[], &json!({"writeKey": key, "messageId": "wk-4", "userId": "key-u1", "event": "Clicked"}).to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text());

    phase("revoking the last key does not open the node: the revoked key and made-up keys are refused, and the CLI says so");
    let revoked = node.ctl(&["key", "revoke", "segment-prod"]).await;
    revoked.ok();
    assert!(revoked.stdout.contains("It was the last one") && revoked.stdout.contains("refuses every write key"), "{}", revoked.stdout);
    let r = post(&node, "/v1/track", Some(&basic_auth(&key)), &[], &body("wk-5")).await;
    assert_error(&r, 401, "invalid_write_key");
    assert!(r.text().contains("revoked"), "the error says why: {}", r.text());
    let r = post(&node, "/v1/track", Some(&basic_auth("made-up")), &[], &body("wk-5b")).await;
    assert_error(&r, 401, "invalid_write_key");
    let listed = node.ctl(&["-o", "json", "key", "list"]).await;
    listed.ok();
    assert_eq!(listed.json()["keys_required"], true, "{}", listed.stdout);
    assert_eq!(listed.json()["keys"].as_array().map(Vec::len), Some(0), "{}", listed.stdout);

    phase("a new key is accepted; the revoked one stays refused");
    let out = node.ctl(&["-o", "json", "key", "create", "other"]).await;
    out.ok();
    let other = out.json()["key"].as_str().unwrap().to_string();
    let r = post(&node, "/v1/track", Some(&basic_auth(&other)), &[], &body("wk-5c")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post(&node, "/v1/track", Some(&basic_auth(&key)), &[], &body("wk-6")).await;
    assert_error(&r, 401, "invalid_write_key");
    let missing = node.ctl(&["key", "revoke", "segment-prod"]).await;
    assert_eq!(missing.code(), Some(1));
    assert!(missing.stderr.contains("no write key named"), "{}", missing.stderr);
    let p = node.profile("user_id", "key-u1", 0).await.expect("the accepted events made a profile");
    assert_eq!(p.event_count, 4, "wk-1, wk-3, wk-4 and wk-5c were applied, the refused ones not");
}
