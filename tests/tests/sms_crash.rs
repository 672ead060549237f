//! Exactly-once SMS through a provider without idempotency keys (SPEC §3.6, §12): the
//! node sends through the Twilio-compatible fake (tests/python/twilio_fake.py), which —
//! like Twilio's Messages API — creates a new message for every POST whatever headers it
//! carries, and answers each POST a little late (a window between the provider's answer
//! and the node's record of it). The node is killed -9 again and again while its outbox
//! drains; after each restart it must reconcile the attempts it started (the fake's
//! Messages list) instead of sending them again. At the end every message went out, and
//! none twice (SPEC §12: at most 1 per 10,000).

use chorus_tests::v1::messages_client::MessagesClient;
use chorus_tests::v1::{MessageRequest, SendMessagesRequest};
use chorus_tests::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TOKEN: &str = "test-auth-token";
const CUSTOMERS: usize = 50;
const SENDS: usize = 1_500;
const KILLS: usize = 6;

/// The fake provider and every line it printed.
struct FakeTwilio {
    port: u16,
    seen: Arc<Mutex<Vec<Value>>>,
}

impl FakeTwilio {
    async fn start(delay_ms: u32) -> FakeTwilio {
        let delay = delay_ms.to_string();
        let mut fake = PythonFake::start("twilio_fake.py", &["--account-sid", "ACtest", "--auth-token", TOKEN, "--delay-ms", &delay]).await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, port) = (seen.clone(), fake.port);
        // Read every line it prints (the fake stops when this task ends with the test).
        tokio::spawn(async move {
            loop {
                let v = fake.next_forever().await;
                match v {
                    Some(v) => s.lock().unwrap().push(v),
                    None => return,
                }
            }
        });
        FakeTwilio { port, seen }
    }

    /// Messages created per idempotency token (the intent key the node sent).
    fn posts(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for v in self.seen.lock().unwrap().iter().filter(|v| v.get("form").is_some()) {
            *out.entry(v["idempotency"].as_str().unwrap_or_default().to_string()).or_default() += 1;
        }
        out
    }

    fn lists(&self) -> usize {
        self.seen.lock().unwrap().iter().filter(|v| v.get("list").is_some()).count()
    }
}

fn phone(c: usize) -> String {
    format!("+1415555{:04}", 1000 + c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loops_never_send_an_sms_twice_through_a_provider_without_idempotency_keys() {
    let twilio = FakeTwilio::start(40).await;
    let config = format!(
        "[connectors]\nchannels = {{ sms = \"twilio\" }}\n\n[connectors.twilio]\nbase_url = \"http://127.0.0.1:{}\"\naccount_sid = \"ACtest\"\nauth_token = \"{TOKEN}\"\nfrom = \"+15005550006\"\n\n[connectors.limits.sms]\nconcurrency_max = 32\n",
        twilio.port
    );
    let mut node = Node::start(NodeOpts::new("sms-crash").shards(4).config(&config)).await;
    // Each message says something of its own (an order number), as real ones do: the body
    // is what the provider's Messages list is matched on.
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("sms-receipt.yaml");
    std::fs::write(&template, "id: sms-receipt\ncategory: transactional\nsms:\n  body: 'Your order {{ vars.n }} is confirmed'\n").unwrap();
    node.ctl(&["template", "apply", template.to_str().unwrap()]).await.ok();
    phase("customers with phones, then 1,500 transactional SMS");
    let events: Vec<_> = (0..CUSTOMERS).map(|c| identify(&format!("p-{c}"), &[("phone", &phone(c))], json!({"consent": {"sms": "opted_in"}}))).collect();
    node.send(events).await;
    let requests: Vec<MessageRequest> = (0..SENDS)
        .map(|i| MessageRequest {
            request_id: format!("r-{i}"),
            profile: Some(by_identity("phone", &phone(i % CUSTOMERS))),
            channel: "sms".into(),
            template: "sms-receipt".into(),
            category: "transactional".into(),
            vars_json: json!({"n": i}).to_string(),
            ..Default::default()
        })
        .collect();
    let mut client = MessagesClient::new(node.channel().await);
    for chunk in requests.chunks(500) {
        client.send(SendMessagesRequest { messages: chunk.to_vec() }).await.expect("sends accepted");
    }

    phase(&format!("kill -9 the node {KILLS} times while the outbox drains, restarting it each time"));
    for k in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(300 + 100 * k as u64)).await;
        let sent = twilio.posts().len();
        eprintln!("kill -9 #{} with {sent} of {SENDS} messages at the provider", k + 1);
        node.kill9().await;
        node.restart().await;
    }

    phase("every message reaches the provider, none twice");
    wait_until(Duration::from_secs(120), "every message at the provider", || async {
        let posts = twilio.posts();
        if posts.len() >= SENDS {
            return Ok(());
        }
        let metrics = http_request(node.http_addr(), "GET", "/metrics", &[], b"").await.text();
        let interesting: Vec<&str> =
            metrics.lines().filter(|l| l.starts_with("chorus_dispatch_uncertain_total") || l.starts_with("chorus_shard_pending_intents")).collect();
        Err(format!("{} of {SENDS}; {} list reads; {interesting:?}", posts.len(), twilio.lists()))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let posts = twilio.posts();
    let duplicates: Vec<(&String, &usize)> = posts.iter().filter(|(_, n)| **n > 1).collect();
    let total: usize = posts.values().sum();
    eprintln!("{} messages, {total} provider calls, {} sent twice; {} Messages list reads (reconciliation)", posts.len(), duplicates.len(), twilio.lists());
    assert_eq!(posts.len(), SENDS, "every message sent");
    // SPEC §12 allows 1 in 10,000; with reconciliation there is none.
    assert!(duplicates.is_empty(), "sent twice: {duplicates:?}");
    let metrics = http_request(node.http_addr(), "GET", "/metrics", &[], b"").await.text();
    assert!(metrics.contains("chorus_dispatch_uncertain_total{shard=\"0\",result=\"found\"}"), "{metrics}");
}
