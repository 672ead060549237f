//! Email end to end over real SMTP (issue "Channels"): a node configured with the SMTP
//! connector delivers rendered messages to a real SMTP server (Python's aiosmtpd, see
//! tests/python/smtp_sink.py); a recipient the server refuses with 550 lands in the
//! dead-letter list, the address is marked bounced and not used again, and a redrive
//! after the fix delivers with the same Message-ID.

use chorus_tests::*;
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const HINT: &str = "run `pip install -r tests/python/requirements.txt` (CI does)";

struct Sink {
    port: u16,
    lines: Lines<BufReader<ChildStdout>>,
    _child: Child,
}

impl Sink {
    async fn start(reject_550: &str) -> Sink {
        let ok = Command::new("python3").args(["-c", "import aiosmtpd"]).output().await.unwrap_or_else(|e| panic!("python3 is needed ({e}): {HINT}"));
        assert!(ok.status.success(), "aiosmtpd is not installed: {HINT}");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/smtp_sink.py");
        let mut child = Command::new("python3")
            .args([script, "--reject-550", reject_550])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start smtp_sink.py");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = next_json(&mut lines).await;
        Sink { port: first["port"].as_u64().unwrap() as u16, lines, _child: child }
    }

    async fn received(&mut self) -> Value {
        next_json(&mut self.lines).await
    }
}

async fn next_json(lines: &mut Lines<BufReader<ChildStdout>>) -> Value {
    let line =
        tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.expect("the SMTP sink answers in time").unwrap().expect("smtp_sink.py exited");
    serde_json::from_str(&line).unwrap()
}

fn header(msg: &Value, name: &str) -> String {
    msg["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0].as_str().unwrap().eq_ignore_ascii_case(name))
        .map(|h| h[1].as_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_email_over_smtp_bounces_and_the_dead_letter_list() {
    let mut sink = Sink::start("gone@example.com").await;
    let config = format!(
        "[connectors]\nchannels = {{ email = \"smtp\" }}\nlimits = {{ email = {{ attempts_max = 2, rate_per_sec = 50 }} }}\n\n[connectors.smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"shop@shop.test\"\nfrom_name = \"The Shop\"\ntimeout = \"10s\"\n",
        sink.port
    );
    let node = Node::start(NodeOpts::new("email").shards(2).config(&config)).await;
    node.apply_example_templates().await;

    phase("a transactional email is rendered and delivered over SMTP");
    let resp = node
        .send(vec![
            identify("ada-1", &[("user_id", "ada"), ("email", "ada@example.com")], json!({"first_name": "Ada"})),
            identify("gus-1", &[("user_id", "gus"), ("email", "gone@example.com")], json!({"first_name": "Gus"})),
        ])
        .await;
    let gus = resp.results[1].customer_id.clone();
    node.ctl(&[
        "messages",
        "send",
        "--to",
        "user_id:ada",
        "--channel",
        "email",
        "--template",
        "review-request",
        "--category",
        "transactional",
        "--request-id",
        "rr-1",
    ])
    .await
    .ok();
    let msg = sink.received().await;
    assert_eq!(msg["rcpt_tos"], json!(["ada@example.com"]));
    assert_eq!(header(&msg, "Subject"), "How is your order, Ada?");
    assert_eq!(header(&msg, "From"), "The Shop <shop@shop.test>");
    assert!(header(&msg, "X-Chorus-Key").starts_with("api/rr-1/"), "{msg}");
    let parts: Vec<&str> = msg["parts"].as_array().unwrap().iter().map(|p| p["content_type"].as_str().unwrap()).collect();
    assert_eq!(parts, vec!["text/plain", "text/html"]);

    phase("a refused recipient: dead letter, address marked bounced, not used again");
    node.ctl(&[
        "messages",
        "send",
        "--to",
        "user_id:gus",
        "--channel",
        "email",
        "--template",
        "review-request",
        "--category",
        "transactional",
        "--request-id",
        "rr-2",
    ])
    .await
    .ok();
    let letters = wait_until(Duration::from_secs(30), "a dead letter", || async {
        let out = node.ctl(&["-o", "json", "dlq", "list"]).await;
        let l = out.json()["letters"].as_array().unwrap().clone();
        if l.len() == 1 { Ok(l) } else { Err(out.stdout) }
    })
    .await;
    assert_eq!(letters[0]["status"], "failed permanently");
    assert!(letters[0]["detail"].as_str().unwrap().contains("550") && letters[0]["detail"].as_str().unwrap().contains("bounced"), "{letters:?}");
    assert_eq!(letters[0]["content"]["subject"], "How is your order, Gus?");
    let explain = node.ctl(&["-o", "json", "profile", "explain", &gus]).await;
    assert!(explain.json()["decisions"].as_array().unwrap().iter().any(|d| d["reason"] == "contact point bounced"), "{}", explain.stdout);
    node.ctl(&[
        "messages",
        "send",
        "--to",
        "user_id:gus",
        "--channel",
        "email",
        "--template",
        "review-request",
        "--category",
        "transactional",
        "--request-id",
        "rr-3",
    ])
    .await
    .ok();
    let explain = node.ctl(&["-o", "json", "profile", "explain", &gus]).await;
    assert!(explain.json()["decisions"].as_array().unwrap().iter().any(|d| d["kind"] == "skipped" && d["reason"] == "no email address"), "{}", explain.stdout);

    phase("redrive: the letter goes back to the outbox with the same key (the server still refuses)");
    let key = letters[0]["idempotency_key"].as_str().unwrap().to_string();
    let out = node.ctl(&["-o", "json", "dlq", "redrive", &key]).await;
    out.ok();
    assert_eq!(out.json()["redriven"], 1);
    wait_until(Duration::from_secs(30), "the letter back in the list", || async {
        let out = node.ctl(&["-o", "json", "dlq", "show", &key]).await;
        if out.code() == Some(0) { Ok(()) } else { Err(out.stderr) }
    })
    .await;
    let missing = node.ctl(&["dlq", "redrive", "no-such-key"]).await;
    assert_eq!(missing.code(), Some(1));
    assert!(missing.stderr.contains("no dead letter with key"), "{}", missing.stderr);

    phase("bounces and complaints reported later by the provider's webhook");
    node.send(vec![identify("cy-1", &[("user_id", "cy"), ("email", "cy@example.com")], json!({}))]).await;
    let body = json!({"bounces": [
        {"id": "evt-1", "email": "Ada@Example.com", "type": "bounce", "reason": "mailbox full"},
        {"id": "evt-2", "email": "cy@example.com", "type": "complaint"},
        {"id": "evt-3", "email": "nobody@example.com", "type": "bounce"},
        {"id": "evt-4", "email": "cy@example.com", "type": "spam"},
    ]});
    let auth = basic_auth("wk_test");
    let r = http_request(
        node.http_addr(),
        "POST",
        "/v1/email/bounces",
        &[("Authorization", auth.as_str()), ("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let statuses: Vec<String> = r.json()["results"].as_array().unwrap().iter().map(|x| x["status"].as_str().unwrap().to_string()).collect();
    assert_eq!(statuses, vec!["accepted", "accepted", "unknown", "rejected"]);
    // Reports are routed by the email address, possibly through another shard.
    let ada = node.profile("user_id", "ada", 0).await.unwrap().customer_id;
    wait_until(Duration::from_secs(30), "ada's address marked bounced", || async {
        let explain = node.ctl(&["-o", "json", "profile", "explain", &ada]).await;
        if explain.json()["decisions"].as_array().unwrap().iter().any(|d| d["reason"] == "contact point bounced") { Ok(()) } else { Err(explain.stdout) }
    })
    .await;
    let last = wait_until(Duration::from_secs(30), "cy's complaint in the ledger", || async {
        let consent = node.ctl(&["-o", "json", "profile", "consent", "user_id:cy"]).await;
        match consent.json()["ledger"].as_array().unwrap().last().cloned() {
            Some(l) if l["source"] == "email complaint" => Ok(l),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!((last["scope"].as_str(), last["status"].as_str(), last["source"].as_str()), (Some("channel:email"), Some("opted_out"), Some("email complaint")));
    assert!(node.profile("email", "nobody@example.com", 0).await.is_err(), "an unknown address does not create a profile");
}
