//! The SMTP email connector against a real SMTP server: aiosmtpd, started by the test
//! (tests/python/smtp_sink.py), which parses each received message with Python's email
//! package. Checks the MIME that arrives (headers, both parts, the html body), the
//! outcomes of 550 (permanent, "bounced") and 451 (transient) replies, AUTH, STARTTLS
//! and implicit TLS (a private CA made by trustme), the Message-ID's idempotency and a
//! refused connection. Fails — never skips — when python3, aiosmtpd or trustme is
//! missing: CI installs them (`pip install -r tests/python/requirements.txt`).

use chorus_connectors::smtp::{SmtpConfig, SmtpConnector, SmtpTls};
use chorus_connectors::{Connector, ConnectorLimits, DeliveryError, deliver_with_retries};
use chorus_templates::{Content, Email, Rendered};
use chorus_types::{Category, CustomerId, DispatchStatus, Intent, JsonMap};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const HINT: &str = "pip install -r tests/python/requirements.txt";
/// How long to wait for the sink to start or a message to arrive.
const WAIT_MAX: Duration = Duration::from_secs(30);
const GONE: &str = "gone@shop.test";
const BUSY: &str = "busy@shop.test";

fn phase(what: &str) {
    eprintln!("--- {what}");
}

/// A running smtp_sink.py; killed when dropped (and it exits when its stdin closes).
struct Sink {
    port: u16,
    /// With TLS: the private CA that signed the server's certificate (in `_dir`).
    ca_file: Option<String>,
    _dir: tempfile::TempDir,
    lines: Lines<BufReader<ChildStdout>>,
    _child: Child,
}

impl Sink {
    async fn start(auth: Option<&str>) -> Sink {
        Sink::start_with(auth, None).await
    }

    async fn start_with(auth: Option<&str>, tls: Option<&str>) -> Sink {
        let check = Command::new("python3").args(["-c", "import aiosmtpd, trustme"]).output().await;
        match check {
            Err(e) => {
                panic!("python3 is needed for the SMTP tests ({e}): install Python 3, then {HINT}")
            }
            Ok(out) if !out.status.success() => {
                panic!("aiosmtpd or trustme is not installed: {HINT}\n{}", String::from_utf8_lossy(&out.stderr))
            }
            Ok(_) => {}
        }
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/smtp_sink.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script).args(["--reject-550", GONE, "--reject-451", BUSY]);
        if let Some(a) = auth {
            cmd.args(["--auth", a]);
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_file = tls.map(|mode| {
            let ca = dir.path().join("ca.pem").to_string_lossy().into_owned();
            cmd.args(["--tls", mode, "--ca-out", &ca]);
            ca
        });
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true).spawn().expect("start smtp_sink.py");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = next_json(&mut lines).await;
        let port = first["port"].as_u64().expect("the sink prints its port first") as u16;
        Sink { port, ca_file, _dir: dir, lines, _child: child }
    }

    /// The next message the server received.
    async fn received(&mut self) -> Value {
        next_json(&mut self.lines).await
    }
}

async fn next_json(lines: &mut Lines<BufReader<ChildStdout>>) -> Value {
    let line = tokio::time::timeout(WAIT_MAX, lines.next_line())
        .await
        .expect("smtp_sink.py answers within the deadline")
        .expect("read smtp_sink.py output")
        .expect("smtp_sink.py exited early (see its stderr above)");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("smtp_sink.py printed {line:?}: {e}"))
}

fn header(msg: &Value, name: &str) -> Vec<String> {
    msg["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .filter(|h| h[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
        .map(|h| h[1].as_str().unwrap().to_string())
        .collect()
}

fn config(port: u16) -> SmtpConfig {
    let mut cfg = SmtpConfig::new("127.0.0.1", port, SmtpTls::None, "news@shop.test");
    cfg.from_name = Some("Shop News".into());
    cfg.timeout = "10s".into();
    cfg
}

fn no_env(_: &str) -> Option<String> {
    None
}

const UNSUBSCRIBE: &str = "https://t.shop.test/u/eyJtIjoiazEifQ";

fn marketing_email() -> Email {
    let mut headers = BTreeMap::new();
    headers.insert("List-Unsubscribe".to_string(), format!("<{UNSUBSCRIBE}>"));
    headers.insert("List-Unsubscribe-Post".to_string(), "List-Unsubscribe=One-Click".to_string());
    Email {
        subject: "Ça vous manque ? Your cart, Ada".into(),
        preheader: Some("Free shipping until Sunday".into()),
        html: Some(format!(
            "<html><body><h1>Still thinking, Ada?</h1><p>Your cart is waiting.</p><p><a href=\"{UNSUBSCRIBE}\">Unsubscribe</a></p></body></html>"
        )),
        text: Some(format!("Still thinking, Ada?\nYour cart is waiting.\nUnsubscribe: {UNSUBSCRIBE}\n")),
        headers,
    }
}

fn intent(key: &str, to: &str, email: Email) -> Intent {
    let rendered = Rendered { template: "cart-reminder".into(), locale: None, content: Content::Email(email) };
    Intent {
        key: key.into(),
        customer: CustomerId::new(3, 7),
        channel: "email".into(),
        template: "cart-reminder".into(),
        category: Category::Marketing,
        to: to.into(),
        vars: JsonMap::new(),
        journey: "cart".into(),
        created_ms: 1,
        content: serde_json::to_string(&rendered).unwrap(),
    }
}

#[tokio::test]
async fn marketing_email_arrives_with_its_headers_and_both_parts() {
    phase("start aiosmtpd");
    let mut sink = Sink::start(None).await;
    let smtp = SmtpConnector::new(config(sink.port), &no_env).expect("connector");

    phase("deliver a marketing email with text, html, a preheader and RFC 8058 headers");
    let detail = smtp.deliver(&intent("shard-1/out-9", "Ada Lovelace <ada@example.com>", marketing_email())).await.expect("delivered");
    assert!(detail.starts_with("250 2.0.0 Ok: queued"), "{detail}");
    let msg = sink.received().await;

    phase("the envelope and the headers");
    assert_eq!(msg["mail_from"], "news@shop.test");
    assert_eq!(msg["rcpt_tos"], serde_json::json!(["ada@example.com"]));
    assert_eq!(header(&msg, "From"), vec!["Shop News <news@shop.test>"]);
    assert_eq!(header(&msg, "To"), vec!["Ada Lovelace <ada@example.com>"]);
    assert_eq!(header(&msg, "Subject"), vec!["Ça vous manque ? Your cart, Ada"]);
    // printf 'shard-1/out-9' | sha256sum | cut -c1-32
    let id = header(&msg, "Message-ID");
    assert_eq!(id, vec![chorus_connectors::smtp::message_id("shard-1/out-9", "shop.test")]);
    assert!(detail.contains(&id[0]), "the outcome names the Message-ID: {detail}");
    assert_eq!(header(&msg, "X-Chorus-Key"), vec!["shard-1/out-9"]);
    assert_eq!(header(&msg, "List-Unsubscribe"), vec![format!("<{UNSUBSCRIBE}>")]);
    assert_eq!(header(&msg, "List-Unsubscribe-Post"), vec!["List-Unsubscribe=One-Click"]);
    assert_eq!(header(&msg, "MIME-Version"), vec!["1.0"]);
    assert_eq!(header(&msg, "Date").len(), 1);
    assert!(header(&msg, "Reply-To").is_empty());

    phase("multipart/alternative: the text part, then the html part with the hidden preheader first in <body>");
    assert_eq!(msg["content_type"], "multipart/alternative");
    let parts = msg["parts"].as_array().unwrap();
    assert_eq!(parts.iter().map(|p| p["content_type"].as_str().unwrap()).collect::<Vec<_>>(), vec!["text/plain", "text/html"]);
    let body = |i: usize| parts[i]["body"].as_str().unwrap().replace("\r\n", "\n");
    assert_eq!(body(0), format!("Still thinking, Ada?\nYour cart is waiting.\nUnsubscribe: {UNSUBSCRIBE}\n"));
    assert_eq!(
        body(1),
        format!(
            "<html><body><div style=\"{}\" aria-hidden=\"true\">Free shipping until Sunday</div><h1>Still thinking, Ada?</h1><p>Your cart is waiting.</p><p><a href=\"{UNSUBSCRIBE}\">Unsubscribe</a></p></body></html>",
            chorus_connectors::smtp::PREHEADER_STYLE
        )
    );

    phase("the same intent again: the same Message-ID (receivers fold the copies)");
    smtp.deliver(&intent("shard-1/out-9", "ada@example.com", marketing_email())).await.expect("delivered");
    let again = sink.received().await;
    assert_eq!(header(&again, "Message-ID"), id);
    smtp.deliver(&intent("shard-1/out-10", "ada@example.com", marketing_email())).await.expect("delivered");
    assert_ne!(header(&sink.received().await, "Message-ID"), id);

    phase("a text-only transactional email is a single text/plain part");
    let receipt = Email { subject: "Receipt".into(), preheader: None, html: None, text: Some("Thanks!".into()), headers: BTreeMap::new() };
    smtp.deliver(&intent("shard-1/out-11", "ada@example.com", receipt)).await.expect("delivered");
    let msg = sink.received().await;
    assert_eq!(msg["content_type"], "text/plain");
    assert!(header(&msg, "List-Unsubscribe").is_empty());
    assert_eq!(msg["parts"][0]["body"].as_str().unwrap().trim_end(), "Thanks!");
}

#[tokio::test]
async fn refused_recipients_are_bounces_or_retries() {
    phase("start aiosmtpd refusing gone@ with 550 and busy@ with 451");
    let mut sink = Sink::start(None).await;
    let smtp = SmtpConnector::new(config(sink.port), &no_env).expect("connector");

    phase("550: permanent, with the code, the text and \"bounced\"");
    let err = smtp.deliver(&intent("k-gone", GONE, marketing_email())).await.unwrap_err();
    let DeliveryError::Permanent(detail) = &err else { panic!("550 must be permanent: {err:?}") };
    assert!(detail.starts_with(&format!("550 5.1.1 <{GONE}>: mailbox unavailable")), "{detail}");
    assert!(detail.contains("bounced"), "{detail}");

    phase("451: transient, with the code and the text");
    let err = smtp.deliver(&intent("k-busy", BUSY, marketing_email())).await.unwrap_err();
    let DeliveryError::Transient(detail) = &err else { panic!("451 must be transient: {err:?}") };
    assert!(detail.starts_with(&format!("451 4.3.0 <{BUSY}>: try again later")), "{detail}");
    assert!(!detail.contains("bounced"), "{detail}");

    phase("through the retry loop: 451 is retried up to attempts_max, 550 is not retried");
    let limits = ConnectorLimits { attempts_max: 3, backoff_initial: Duration::from_millis(1), ..Default::default() };
    let d = deliver_with_retries(&smtp, &intent("k-busy", BUSY, marketing_email()), &limits).await;
    assert_eq!((d.status, d.attempts), (DispatchStatus::FailedTransient, 3), "{d:?}");
    let d = deliver_with_retries(&smtp, &intent("k-gone", GONE, marketing_email()), &limits).await;
    assert_eq!((d.status, d.attempts), (DispatchStatus::FailedPermanent, 1), "{d:?}");

    phase("the pooled connections still deliver after the refusals");
    smtp.deliver(&intent("k-ok", "ada@example.com", marketing_email())).await.expect("delivered");
    assert_eq!(sink.received().await["rcpt_tos"], serde_json::json!(["ada@example.com"]));
}

#[tokio::test]
async fn auth_with_the_password_from_password_env() {
    phase("start aiosmtpd requiring AUTH (allowed without TLS for the test)");
    let mut sink = Sink::start(Some("chorus:s3cret pass")).await;
    let env = |name: &str| (name == "TEST_SMTP_PASSWORD").then(|| "s3cret pass".to_string());

    phase("without credentials the server refuses the mail (530: permanent)");
    let anonymous = SmtpConnector::new(config(sink.port), &no_env).expect("connector");
    let err = anonymous.deliver(&intent("k-anon", "ada@example.com", marketing_email())).await.unwrap_err();
    assert!(matches!(&err, DeliveryError::Permanent(d) if d.starts_with("530")), "{err:?}");

    phase("with username and password_env: delivered, and the server saw the login");
    let mut cfg = config(sink.port);
    cfg.username = Some("chorus".into());
    cfg.password_env = Some("TEST_SMTP_PASSWORD".into());
    let smtp = SmtpConnector::new(cfg.clone(), &env).expect("connector");
    smtp.deliver(&intent("k-auth", "ada@example.com", marketing_email())).await.expect("delivered");
    let msg = sink.received().await;
    assert_eq!(msg["login"], "chorus");
    assert_eq!(header(&msg, "X-Chorus-Key"), vec!["k-auth"]);

    phase("a wrong password: 535, permanent");
    let wrong = SmtpConnector::new(SmtpConfig { password_env: None, password: Some("nope".into()), ..cfg.clone() }, &no_env).expect("connector");
    let err = wrong.deliver(&intent("k-wrong", "ada@example.com", marketing_email())).await.unwrap_err();
    assert!(matches!(&err, DeliveryError::Permanent(d) if d.starts_with("535")), "{err:?}");

    phase("password_env naming an unset variable: refused when building the connector");
    let err = SmtpConnector::new(cfg, &no_env).err().expect("refused");
    assert!(err.contains("TEST_SMTP_PASSWORD is not set"), "{err}");
}

#[tokio::test]
async fn starttls_and_implicit_tls_with_a_private_ca() {
    for (mode, tls) in [("starttls", SmtpTls::Starttls), ("tls", SmtpTls::Tls)] {
        phase(&format!("aiosmtpd with {mode} and a certificate for 127.0.0.1 from a private CA"));
        let mut sink = Sink::start_with(None, Some(mode)).await;

        phase("the platform's roots alone do not trust it: the handshake fails (transient)");
        let untrusted = SmtpConnector::new(SmtpConfig { tls, ..config(sink.port) }, &no_env).expect("connector");
        let err = untrusted.deliver(&intent("k-untrusted", "ada@example.com", marketing_email())).await.unwrap_err();
        assert!(matches!(&err, DeliveryError::Transient(d) if d.contains("tls") || d.contains("certificate")), "{mode}: {err:?}");

        phase("with ca_file: delivered over TLS");
        let cfg = SmtpConfig { tls, ca_file: sink.ca_file.clone(), ..config(sink.port) };
        let smtp = SmtpConnector::new(cfg, &no_env).expect("connector");
        smtp.deliver(&intent("k-tls", "ada@example.com", marketing_email())).await.expect("delivered");
        let msg = sink.received().await;
        assert!(msg["tls"].as_str().is_some_and(|v| v.starts_with("TLSv1.")), "{mode}: {}", msg["tls"]);
        assert_eq!(header(&msg, "X-Chorus-Key"), vec!["k-tls"]);
    }
}

#[tokio::test]
async fn unreachable_server_and_unrendered_intents() {
    phase("nothing listens on the port: transient");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let smtp = SmtpConnector::new(config(port), &no_env).expect("connector");
    let err = smtp.deliver(&intent("k", "ada@example.com", marketing_email())).await.unwrap_err();
    assert!(matches!(&err, DeliveryError::Transient(d) if d.starts_with("smtp:")), "{err:?}");

    phase("an intent without rendered content: permanent, before any connection");
    let bare = Intent { content: String::new(), ..intent("k-bare", "ada@example.com", marketing_email()) };
    let err = smtp.deliver(&bare).await.unwrap_err();
    assert!(matches!(&err, DeliveryError::Permanent(d) if d.contains("no rendered content")), "{err:?}");
}
