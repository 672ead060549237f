//! SMS end to end through a node configured with the Twilio connector (issue
//! "Channels"): the rendered message is posted to a Twilio-compatible Messages API
//! (tests/python/twilio_fake.py) with basic auth, the idempotency token and a status
//! callback URL; inbound replies and status callbacks come back to the node's HTTP port
//! signed with `X-Twilio-Signature`, a STOP reply opts the customer out, and a forged
//! signature is refused.

use chorus_tests::*;
use serde_json::json;
use std::time::Duration;
use tokio::process::Command;

const PUBLIC_URL: &str = "https://chorus.test";
const TOKEN: &str = "test-auth-token";

async fn start_fake_twilio() -> PythonFake {
    PythonFake::start("twilio_fake.py", &["--account-sid", "ACtest", "--auth-token", TOKEN]).await
}

/// Twilio's signature of a form POST to `url` (computed independently, with Python).
async fn signature(url: &str, form: &[(&str, &str)]) -> String {
    let params = serde_json::to_string(&form.iter().map(|(k, v)| vec![k.to_string(), v.to_string()]).collect::<Vec<_>>()).unwrap();
    let code = "import base64,hashlib,hmac,json,sys\nurl,token,params=sys.argv[1],sys.argv[2],json.loads(sys.argv[3])\ns=url+''.join(k+v for k,v in sorted(params))\nprint(base64.b64encode(hmac.new(token.encode(),s.encode(),hashlib.sha1).digest()).decode())";
    let out = Command::new("python3").args(["-c", code, url, TOKEN, &params]).output().await.unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn form_body(form: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect::<String>()
    };
    form.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect::<Vec<_>>().join("&")
}

async fn post_signed(node: &Node, path: &str, form: &[(&str, &str)], sig: &str) -> HttpResponse {
    let body = form_body(form);
    http_request(node.http_addr(), "POST", path, &[("Content-Type", "application/x-www-form-urlencoded"), ("X-Twilio-Signature", sig)], body.as_bytes()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_through_a_twilio_compatible_api_with_signed_webhooks() {
    let mut twilio = start_fake_twilio().await;
    let config = format!(
        "[connectors]\nchannels = {{ sms = \"twilio\" }}\n\n[connectors.twilio]\nbase_url = \"http://127.0.0.1:{}\"\naccount_sid = \"ACtest\"\nauth_token = \"{TOKEN}\"\nfrom = \"+15005550006\"\nstatus_callback_base = \"{PUBLIC_URL}\"\n",
        twilio.port
    );
    let node = Node::start(NodeOpts::new("sms").shards(2).config(&config)).await;
    node.apply_simple_templates(&[("sms-hi", "sms")]).await;
    let resp = node.send(vec![identify("ada-1", &[("user_id", "ada"), ("phone", "+14155550123")], json!({"consent": {"sms": "opted_in"}}))]).await;
    let ada = resp.results[0].customer_id.clone();

    phase("the message goes to the Messages resource with auth, idempotency token and status callback");
    node.ctl(&["messages", "send", "--to", "user_id:ada", "--channel", "sms", "--template", "sms-hi", "--category", "transactional", "--request-id", "s1"])
        .await
        .ok();
    let posted = twilio.next().await;
    assert_eq!(posted["path"], "/2010-04-01/Accounts/ACtest/Messages.json");
    assert_eq!(posted["form"]["To"], "+14155550123");
    assert_eq!(posted["form"]["From"], "+15005550006");
    assert_eq!(posted["form"]["Body"], "sms-hi. Reply STOP to opt out");
    let key = format!("api/s1/{ada}");
    assert_eq!(posted["idempotency"], key.as_str());
    let callback = posted["form"]["StatusCallback"].as_str().unwrap().to_string();
    assert!(callback.starts_with(&format!("{PUBLIC_URL}/v1/twilio/status?key=")), "{callback}");

    phase("a signed delivery receipt becomes sms.delivered");
    let path = &callback[PUBLIC_URL.len()..];
    let status = [("MessageSid", "SM1"), ("MessageStatus", "delivered")];
    let r = post_signed(&node, path, &status, &signature(&callback, &status).await).await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_until(Duration::from_secs(30), "sms.delivered on the profile", || async {
        let recent = node.ctl(&["-o", "json", "profile", "get", &ada, "--events", "5"]).await;
        if recent.json()["recent_events"].as_array().unwrap().iter().any(|e| e["name"] == "sms.delivered" && e["properties"]["key"] == key.as_str()) {
            Ok(())
        } else {
            Err(recent.stdout)
        }
    })
    .await;

    phase("a forged inbound message is refused; a signed STOP opts the customer out");
    let inbound_url = format!("{PUBLIC_URL}/v1/twilio/inbound");
    let stop = [("From", "+14155550123"), ("To", "+15005550006"), ("Body", "Stop"), ("MessageSid", "SM2")];
    let forged = post_signed(&node, "/v1/twilio/inbound", &stop, "bm90IGEgc2lnbmF0dXJl").await;
    assert_eq!(forged.status, 403);
    let r = post_signed(&node, "/v1/twilio/inbound", &stop, &signature(&inbound_url, &stop).await).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("<Response"), "{}", r.text());
    // The reply is routed by the phone number, possibly through another shard: the
    // opt-out lands shortly after the webhook is answered.
    let last = wait_until(Duration::from_secs(30), "the STOP in the consent ledger", || async {
        let consent = node.ctl(&["-o", "json", "profile", "consent", &ada]).await;
        match consent.json()["ledger"].as_array().unwrap().last().cloned() {
            Some(l) if l["source"] == "sms keyword" => Ok(l),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!((last["scope"].as_str(), last["status"].as_str(), last["source"].as_str()), (Some("channel:sms"), Some("opted_out"), Some("sms keyword")));
    node.ctl(&["messages", "send", "--to", "user_id:ada", "--channel", "sms", "--template", "sms-hi", "--category", "transactional", "--request-id", "s2"])
        .await
        .ok();
    let explain = node.ctl(&["-o", "json", "profile", "explain", &ada]).await;
    assert!(explain.json()["decisions"].as_array().unwrap().iter().any(|d| d["kind"] == "skipped" && d["reason"] == "sms opted out"), "{}", explain.stdout);
}
