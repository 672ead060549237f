//! Templates on a live node and engagement tracking over real HTTP (issue "Channels"):
//! messages are rendered when decided (a template that cannot render is a skipped
//! decision), email links are click-tracked with signed tokens, the open pixel and
//! clicks become events that move the journey, and the unsubscribe page only acts on
//! POST (RFC 8058 one-click), recording the opt-out in the consent ledger.

use chorus_tests::*;
use serde_json::json;
use std::time::Duration;

const BROWSE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/journeys/browse-abandon.yaml");
const POST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/journeys/post-purchase.yaml");

async fn messages(node: &Node, customer: &str) -> Vec<serde_json::Value> {
    let out = node.ctl(&["-o", "json", "messages", "tail", "--last", "100", "--customer", customer]).await;
    out.ok();
    out.stdout.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

async fn wait_for_messages(node: &Node, customer: &str, n: usize) -> Vec<serde_json::Value> {
    wait_until(Duration::from_secs(30), &format!("{n} messages for {customer}"), || async {
        let m = messages(node, customer).await;
        if m.len() >= n { Ok(m) } else { Err(format!("{m:?}")) }
    })
    .await
}

/// The path part of a URL on the node (`http://127.0.0.1:PORT/t/...` → `/t/...`).
fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    format!("/{}", rest.split_once('/').map(|(_, p)| p).unwrap_or(""))
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let from = text.find(start).unwrap_or_else(|| panic!("{start:?} not in {text}")) + start.len();
    let to = text[from..].find(end).unwrap() + from;
    &text[from..to]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_messages_and_engagement_tracking_over_http() {
    let node = Node::start(NodeOpts::new("tracking").shards(4)).await;
    node.apply_example_templates().await;
    let list = node.ctl(&["-o", "json", "template", "list"]).await;
    list.ok();
    assert!(list.json()["templates"].as_array().unwrap().iter().any(|t| t["id"] == "browse-recos" && t["locales"] == json!(["fr"])), "{}", list.stdout);
    let dir = tempfile::tempdir().unwrap();
    let browse = dir.path().join("browse-abandon.yaml");
    std::fs::write(&browse, std::fs::read_to_string(BROWSE).unwrap().replace("holdout: 10%", "holdout: 0%")).unwrap();
    node.ctl(&["journey", "apply", POST, browse.to_str().unwrap()]).await.ok();

    phase("a template that cannot render for this customer is a skipped decision");
    let resp = node.send(vec![identify("ada-1", &[("user_id", "ada"), ("email", "ada@example.com")], json!({"ltv": 900, "first_name": "Ada"}))]).await;
    let ada = resp.results[0].customer_id.clone();
    // browse-recos needs the viewed product (event.sku): an API send has no event.
    node.ctl(&["messages", "send", "--to", "user_id:ada", "--channel", "email", "--template", "browse-recos", "--request-id", "r1"]).await.ok();
    let explain = node.ctl(&["-o", "json", "profile", "explain", &ada]).await;
    let skipped = explain.json()["decisions"].as_array().unwrap().iter().find(|d| d["kind"] == "skipped").cloned().expect("a skipped decision");
    assert!(skipped["reason"].as_str().unwrap().starts_with("template error:"), "{skipped}");
    assert!(skipped["reason"].as_str().unwrap().contains("event.sku"), "{skipped}");

    phase("the journey's email is rendered, with tracked links, an open pixel and one-click unsubscribe");
    node.send(vec![track("ada-2", "Product Viewed", &[("user_id", "ada")], json!({"sku": "A-1", "name": "Blue shoes"}))]).await;
    let sent = wait_for_messages(&node, &ada, 1).await;
    let body = &sent[0]["body"];
    assert_eq!(body["subject"], "Ada, still thinking about Blue shoes?");
    let html = body["html"].as_str().unwrap();
    let base = node.http_url();
    assert!(html.contains(&format!("{base}/t/c/")), "{html}");
    assert!(!html.contains("https://shop.example.com/p/A-1"), "the product link is tracked: {html}");
    let unsubscribe = body["headers"]["List-Unsubscribe"].as_str().unwrap().trim_matches(['<', '>']).to_string();
    assert!(unsubscribe.starts_with(&format!("{base}/t/u/")), "{unsubscribe}");
    assert_eq!(body["headers"]["List-Unsubscribe-Post"], "List-Unsubscribe=One-Click");
    let pixel = format!("{base}/t/o/{}", between(html, &format!("{base}/t/o/"), "\""));
    let first_link = format!("{base}/t/c/{}", between(html, &format!("{base}/t/c/"), "\""));

    phase("a forged token is refused");
    let forged = http_request(node.http_addr(), "GET", "/t/c/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/0", &[], b"").await;
    assert_eq!(forged.status, 404);

    phase("a click redirects to the real link and moves the journey (clicked → retarget)");
    let click = http_request(node.http_addr(), "GET", &path_of(&first_link), &[], b"").await;
    assert_eq!(click.status, 302, "{}", click.text());
    let location = click.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("location")).map(|(_, v)| v.clone()).unwrap();
    assert_eq!(location, "https://shop.example.com/p/A-1");
    let sent = wait_for_messages(&node, &ada, 2).await;
    assert_eq!(sent[1]["template"], "meta-retargeting-add");
    let opened = http_request(node.http_addr(), "GET", &path_of(&pixel), &[], b"").await;
    assert_eq!(opened.status, 200);
    assert!(opened.headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("content-type") && v == "image/gif"));
    let stats = node.ctl(&["-o", "json", "journey", "stats", "browse-abandon"]).await;
    let counters = stats.json()["counters"].as_array().unwrap().clone();
    let count = |what: &str| counters.iter().filter(|c| c["what"] == what).map(|c| c["count"].as_u64().unwrap()).sum::<u64>();
    assert_eq!((count("engaged:clicked"), count("engaged:opened")), (1, 1), "unique engagement: {counters:?}");

    phase("the unsubscribe page changes nothing on GET; the one-click POST opts the customer out");
    let page = http_request(node.http_addr(), "GET", &path_of(&unsubscribe), &[], b"").await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<form method=\"post\">"), "{}", page.text());
    let consent = node.ctl(&["-o", "json", "profile", "consent", &ada]).await;
    assert!(consent.json()["ledger"].as_array().unwrap().is_empty(), "{}", consent.stdout);
    let post =
        http_request(node.http_addr(), "POST", &path_of(&unsubscribe), &[("Content-Type", "application/x-www-form-urlencoded")], b"List-Unsubscribe=One-Click")
            .await;
    assert_eq!(post.status, 200, "{}", post.text());
    let consent = node.ctl(&["-o", "json", "profile", "consent", &ada]).await;
    let last = consent.json()["ledger"].as_array().unwrap().last().cloned().expect("a ledger entry");
    assert_eq!(
        (last["scope"].as_str(), last["status"].as_str(), last["source"].as_str()),
        (Some("channel:email"), Some("opted_out"), Some("list-unsubscribe one-click"))
    );
    assert!(last["evidence"].as_str().unwrap().contains("message j/browse-abandon/v1/"), "{last}");
    let explain = node.ctl(&["-o", "json", "profile", "explain", &ada]).await;
    assert!(
        explain.json()["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["kind"] == "consent.changed" && d["detail"] == "channel:email via list-unsubscribe one-click"),
        "{}",
        explain.stdout
    );

    phase("after the opt-out, marketing email is skipped");
    node.ctl(&["messages", "send", "--to", "user_id:ada", "--channel", "email", "--template", "tighter-benefit", "--request-id", "r2"]).await.ok();
    let explain = node.ctl(&["-o", "json", "profile", "explain", &ada]).await;
    assert!(explain.json()["decisions"].as_array().unwrap().iter().any(|d| d["kind"] == "skipped" && d["reason"] == "email opted out"), "{}", explain.stdout);

    phase("in-app: the message waits on the profile for its placement until dismissed");
    let dir2 = tempfile::tempdir().unwrap();
    let t = dir2.path().join("banner.yaml");
    std::fs::write(&t, "id: spring-banner\ncategory: marketing\nin_app:\n  title: 'Spring sale, {{ profile.first_name }}'\n  body: '20% off everything'\n  buttons:\n    - { label: Shop, action: 'app://sale' }\n").unwrap();
    node.ctl(&["template", "apply", t.to_str().unwrap()]).await.ok();
    node.ctl(&[
        "messages",
        "send",
        "--to",
        "user_id:ada",
        "--channel",
        "in_app",
        "--template",
        "spring-banner",
        "--vars",
        "{\"placement\": \"home\"}",
        "--request-id",
        "r3",
    ])
    .await
    .ok();
    let auth = basic_auth("wk_test");
    let get = || async { http_request(node.http_addr(), "GET", "/v1/content/home?identity=user_id:ada", &[("Authorization", auth.as_str())], b"").await };
    let r = wait_until(Duration::from_secs(30), "the in-app message", || async {
        let r = get().await;
        if r.status == 200 && !r.json()["messages"].as_array().unwrap().is_empty() { Ok(r) } else { Err(r.text()) }
    })
    .await;
    let m = r.json()["messages"][0].clone();
    assert_eq!(m["content"]["title"], "Spring sale, Ada");
    assert_eq!(m["content"]["buttons"][0]["action"], "app://sale");
    assert_eq!(m["placement"], "home");
    let unauth = http_request(node.http_addr(), "GET", "/v1/content/home?identity=user_id:ada", &[], b"").await;
    assert_eq!(unauth.status, 401);
    let other = http_request(node.http_addr(), "GET", "/v1/content/footer?identity=user_id:ada", &[("Authorization", auth.as_str())], b"").await;
    assert!(other.json()["messages"].as_array().unwrap().is_empty());
    let key = m["key"].as_str().unwrap().to_string();
    node.send(vec![track("ada-dismiss", "in_app.dismissed", &[("user_id", "ada")], json!({"key": key}))]).await;
    assert!(get().await.json()["messages"].as_array().unwrap().is_empty(), "dismissed");
}
