//! The email connector (SPEC §8): sends an intent's rendered email over SMTP with lettre
//! (pooled `AsyncSmtpTransport<Tokio1Executor>`, TLS by rustls: none, STARTTLS or
//! implicit TLS; optional AUTH). It builds the MIME message from the rendered `Email`
//! and maps the server's replies to outcomes; it never decides whether to send and never
//! reads the environment (the password named by `password_env` comes through [`Env`]).
//!
//! The message:
//! - `From` (with the display name), `To` = `intent.to`, `Reply-To` when configured,
//!   `Subject`, `Date`, `MIME-Version`;
//! - `Message-ID: <{32 hex}.chorus@{domain of from}>`, the hex being the first 16 bytes
//!   of SHA-256 of the intent key, so every attempt of one intent carries the same id
//!   (SMTP has no idempotency key: a retry after a lost reply may deliver twice, and the
//!   receiver can fold the copies by Message-ID);
//! - `X-Chorus-Key: {intent key}`;
//! - every header of `Email.headers` (marketing mail: `List-Unsubscribe` and
//!   `List-Unsubscribe-Post: List-Unsubscribe=One-Click`, RFC 8058); a header the
//!   connector sets itself, or a malformed one, is refused (permanent);
//! - the body: `multipart/alternative` (text, then html) when both exist, else the one
//!   part there is.
//!
//! The preheader (the line inboxes show after the subject) is inserted by this connector
//! as a hidden element at the start of the html `<body>` — the template renderer does
//! not do it — unless the html already contains the preheader text, in which case the
//! template placed it itself and the html is left as is. It is not added to the text part.
//!
//! TLS is rustls with the platform's roots (plus `ca_file`, for a relay with a private
//! CA); `Date` is the system time of the attempt.
//!
//! Outcomes: 2xx → `Ok` with the server's reply; 4xx, timeouts and connection or TLS
//! failures → `Transient`; 5xx → `Permanent` with the code and text, and for 550/551/553
//! (the recipient refused) the detail says "bounced". The SMTP reply does not say which
//! command was refused, so a 550 to `MAIL FROM` also reads "bounced".

use crate::{Connector, DeliveryError, Env, rendered_content};
use chorus_templates::{Content, Email};
use chorus_types::Intent;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

/// Largest accepted `pool_size_max`.
pub const POOL_SIZE_MAX_LIMIT: u32 = 256;

/// How the connection to the SMTP server is secured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain text (local relays and tests only: credentials travel in clear).
    None,
    /// Plain connection upgraded with STARTTLS, which the server must offer (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte ("implicit TLS", port 465).
    Tls,
}

impl SmtpTls {
    /// The usual port of this mode: 25, 587 or 465.
    pub fn default_port(self) -> u16 {
        match self {
            SmtpTls::None => 25,
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
        }
    }
}

/// Settings of the SMTP connector (the `[email.smtp]` table of a node's config).
///
/// ```toml
/// host = "smtp.example.com"
/// port = 587                     # default by tls: 25 / 587 / 465
/// tls = "starttls"               # "none" | "starttls" | "tls"
/// username = "chorus"
/// password_env = "CHORUS_SMTP_PASSWORD"
/// from = "news@example.com"
/// from_name = "Example News"
/// reply_to = "help@example.com"
/// pool_size_max = 8
/// timeout = "30s"
/// # ca_file = "/etc/chorus/relay-ca.pem"   # a private CA, besides the platform's
/// ```
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// The server's host name or IP address; with TLS, the name its certificate must carry.
    pub host: String,
    /// The server's port; when absent, the usual port of `tls`.
    #[serde(default)]
    pub port: Option<u16>,
    /// "none", "starttls" (default) or "tls".
    #[serde(default)]
    pub tls: SmtpTls,
    /// User name for SMTP AUTH (PLAIN or LOGIN); no AUTH when absent.
    #[serde(default)]
    pub username: Option<String>,
    /// The AUTH password, written in the config. Prefer `password_env`.
    #[serde(default)]
    pub password: Option<String>,
    /// The name of the environment variable holding the AUTH password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// The sender address (`From` and the envelope's `MAIL FROM`).
    pub from: String,
    /// The sender's display name (`From: "Example News" <news@example.com>`).
    #[serde(default)]
    pub from_name: Option<String>,
    /// `Reply-To` address, if replies should go elsewhere than `from`.
    #[serde(default)]
    pub reply_to: Option<String>,
    /// Connections kept open to the server at most (and so messages in flight at once).
    #[serde(default = "default_pool_size_max")]
    pub pool_size_max: u32,
    /// Timeout of each SMTP step (connect, each command, the data), e.g. "30s".
    #[serde(default = "default_timeout")]
    pub timeout: String,
    /// The name sent in `EHLO`; when absent, "localhost".
    #[serde(default)]
    pub helo_name: Option<String>,
    /// A PEM file of CA certificates to trust besides the platform's (a relay with a
    /// private CA); only with `tls` "starttls" or "tls".
    #[serde(default)]
    pub ca_file: Option<String>,
}

fn default_pool_size_max() -> u32 {
    8
}

fn default_timeout() -> String {
    "30s".into()
}

impl std::fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_env", &self.password_env)
            .field("from", &self.from)
            .field("from_name", &self.from_name)
            .field("reply_to", &self.reply_to)
            .field("pool_size_max", &self.pool_size_max)
            .field("timeout", &self.timeout)
            .field("helo_name", &self.helo_name)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl SmtpConfig {
    /// A config for `host:port` sending from `from`, with the defaults for the rest.
    pub fn new(host: impl Into<String>, port: u16, tls: SmtpTls, from: impl Into<String>) -> SmtpConfig {
        SmtpConfig {
            host: host.into(),
            port: Some(port),
            tls,
            username: None,
            password: None,
            password_env: None,
            from: from.into(),
            from_name: None,
            reply_to: None,
            pool_size_max: default_pool_size_max(),
            timeout: default_timeout(),
            helo_name: None,
            ca_file: None,
        }
    }

    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or_else(|| self.tls.default_port())
    }

    /// The per-step timeout.
    pub fn timeout(&self) -> Result<Duration, String> {
        let ms = chorus_types::time::parse_duration_ms(&self.timeout).map_err(|e| format!("smtp timeout: {e}"))?;
        if ms <= 0 {
            return Err("smtp timeout must be positive".into());
        }
        Ok(Duration::from_millis(ms as u64))
    }

    /// The AUTH password: `password`, or the variable `password_env` names (looked up
    /// with `env`). Both set is an error, and so is a named variable that is unset.
    pub fn resolve_password(&self, env: Env<'_>) -> Result<Option<String>, String> {
        match (&self.password, &self.password_env) {
            (Some(_), Some(_)) => Err("smtp: set password or password_env, not both".into()),
            (Some(p), None) => Ok(Some(p.clone())),
            (None, Some(name)) => env(name).map(Some).ok_or_else(|| format!("smtp password_env: the variable {name} is not set")),
            (None, None) => Ok(None),
        }
    }

    /// Check every field (without connecting).
    pub fn validate(&self, env: Env<'_>) -> Result<(), String> {
        if self.host.trim().is_empty() {
            return Err("smtp host is empty".into());
        }
        if self.port == Some(0) {
            return Err("smtp port 0 is not a port".into());
        }
        if self.pool_size_max == 0 || self.pool_size_max > POOL_SIZE_MAX_LIMIT {
            return Err(format!("smtp pool_size_max must be within 1..={POOL_SIZE_MAX_LIMIT}, not {}", self.pool_size_max));
        }
        self.timeout()?;
        self.sender_mailbox()?;
        self.reply_to_mailbox()?;
        let password = self.resolve_password(env)?;
        match (&self.username, &password) {
            (Some(_), None) => {
                return Err("smtp username is set without password or password_env".into());
            }
            (None, Some(_)) => return Err("smtp password is set without username".into()),
            _ => {}
        }
        if self.ca_file.is_some() && self.tls == SmtpTls::None {
            return Err("smtp ca_file needs tls = \"starttls\" or \"tls\"".into());
        }
        if let Some(h) = &self.helo_name
            && (h.is_empty() || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
        {
            return Err(format!("smtp helo_name {h:?} is not a host name"));
        }
        Ok(())
    }

    fn sender_mailbox(&self) -> Result<Mailbox, String> {
        let address: Address = self.from.trim().parse().map_err(|e| format!("smtp from {:?}: {e}", self.from))?;
        Ok(Mailbox::new(self.from_name.clone().filter(|n| !n.trim().is_empty()), address))
    }

    fn reply_to_mailbox(&self) -> Result<Option<Mailbox>, String> {
        self.reply_to.as_ref().map(|r| r.trim().parse::<Mailbox>().map_err(|e| format!("smtp reply_to {r:?}: {e}"))).transpose()
    }
}

/// Sends email over SMTP. Cheap to share: connections are pooled inside.
pub struct SmtpConnector {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    composer: Composer,
}

impl SmtpConnector {
    /// A connector for `cfg` (validated; `env` resolves `password_env`). Connects lazily,
    /// on the first delivery. Needs a tokio runtime (the pool runs a task).
    pub fn new(cfg: SmtpConfig, env: Env<'_>) -> Result<SmtpConnector, String> {
        cfg.validate(env)?;
        let password = cfg.resolve_password(env)?;
        let tls_parameters = || -> Result<TlsParameters, String> {
            let mut b = TlsParameters::builder(cfg.host.clone());
            if let Some(path) = &cfg.ca_file {
                let pem = std::fs::read(path).map_err(|e| format!("smtp ca_file {path}: {e}"))?;
                b = b.add_root_certificate(Certificate::from_pem(&pem).map_err(|e| format!("smtp ca_file {path}: {e}"))?);
            }
            b.build().map_err(|e| format!("smtp tls: {e}"))
        };
        let tls = match cfg.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::Starttls => Tls::Required(tls_parameters()?),
            SmtpTls::Tls => Tls::Wrapper(tls_parameters()?),
        };
        let pool = PoolConfig::new().max_size(cfg.pool_size_max).min_idle(0).idle_timeout(Duration::from_secs(60));
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(cfg.host.clone()).port(cfg.port()).tls(tls).timeout(Some(cfg.timeout()?)).pool_config(pool);
        if let Some(name) = &cfg.helo_name {
            builder = builder.hello_name(ClientId::Domain(name.clone()));
        }
        if let (Some(user), Some(password)) = (&cfg.username, password) {
            builder = builder.credentials(Credentials::new(user.clone(), password)).authentication(vec![Mechanism::Plain, Mechanism::Login]);
        }
        Ok(SmtpConnector { transport: builder.build(), composer: Composer::new(&cfg)? })
    }

    /// The MIME message this connector sends for `intent`, dated `now`.
    pub fn compose(&self, intent: &Intent, now: SystemTime) -> Result<Message, DeliveryError> {
        self.composer.compose(intent, now)
    }
}

impl Connector for SmtpConnector {
    fn name(&self) -> &str {
        "smtp"
    }

    /// An SMTP server accepts the same message twice; nothing can be looked up after.
    fn honours_idempotency_key(&self) -> bool {
        false
    }

    fn deliver<'a>(&'a self, intent: &'a Intent) -> Pin<Box<dyn Future<Output = Result<String, DeliveryError>> + Send + 'a>> {
        Box::pin(async move {
            let message = self.compose(intent, SystemTime::now())?;
            let id = message.headers().get_raw("Message-ID").unwrap_or_default().to_string();
            match self.transport.send(message).await {
                Ok(reply) => {
                    let text: Vec<&str> = reply.message().collect();
                    Ok(format!("{} {} (Message-ID {id})", reply.code(), text.join(" ")))
                }
                Err(e) => Err(outcome_of(&e)),
            }
        })
    }
}

/// Maps a lettre SMTP error to a delivery outcome (see the module doc).
fn outcome_of(e: &lettre::transport::smtp::Error) -> DeliveryError {
    use std::error::Error as _;
    if let Some(code) = e.status() {
        let text = e.source().map(|s| s.to_string()).unwrap_or_default();
        let reply = format!("{code} {text}").trim_end().to_string();
        return match code.to_string().as_str() {
            c if c.starts_with('4') => DeliveryError::Transient(reply),
            "550" | "551" | "553" => DeliveryError::Permanent(format!("{reply} (bounced: the server refused the recipient)")),
            _ => DeliveryError::Permanent(reply),
        };
    }
    if e.is_client() {
        // Our side cannot send this message (e.g. a non-ASCII address to a server
        // without SMTPUTF8): retrying changes nothing.
        return DeliveryError::Permanent(format!("smtp: {e}"));
    }
    DeliveryError::Transient(format!("smtp: {e}"))
}

/// Builds MIME messages (pure: no I/O, time passed in).
struct Composer {
    from: Mailbox,
    reply_to: Option<Mailbox>,
    message_id_domain: String,
}

/// Headers the connector writes itself; a rendered email may not set them.
const RESERVED_HEADERS: &[&str] = &[
    "from",
    "sender",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "return-path",
    "x-chorus-key",
];

impl Composer {
    fn new(cfg: &SmtpConfig) -> Result<Composer, String> {
        let from = cfg.sender_mailbox()?;
        let message_id_domain = from.email.domain().to_string();
        Ok(Composer { from, reply_to: cfg.reply_to_mailbox()?, message_id_domain })
    }

    fn compose(&self, intent: &Intent, now: SystemTime) -> Result<Message, DeliveryError> {
        let Content::Email(email) = rendered_content(intent, "email")? else { unreachable!("rendered_content checks the channel") };
        let permanent = |m: String| DeliveryError::Permanent(format!("intent {}: {m}", intent.key));
        let to: Mailbox = intent.to.trim().parse().map_err(|e| permanent(format!("bad address {:?}: {e}", intent.to)))?;
        let mut b = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(email.subject.clone())
            .date(now)
            .message_id(Some(message_id(&intent.key, &self.message_id_domain)))
            .raw_header(HeaderValue::new(HeaderName::new_from_ascii_str("X-Chorus-Key"), intent.key.clone()));
        if let Some(r) = &self.reply_to {
            b = b.reply_to(r.clone());
        }
        for (name, value) in &email.headers {
            b = b.raw_header(extra_header(name, value).map_err(permanent)?);
        }
        let built = match body(&email) {
            Body::Single(part) => b.singlepart(part),
            Body::Alternative(part) => b.multipart(part),
        };
        built.map_err(|e| permanent(format!("cannot build the message: {e}")))
    }
}

/// `<{hex of SHA-256(key)[..16]}.chorus@{domain}>`: the same key gives the same id.
pub fn message_id(key: &str, domain: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("<{hex}.chorus@{domain}>")
}

fn extra_header(name: &str, value: &str) -> Result<HeaderValue, String> {
    let valid_name = !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
    if !valid_name {
        return Err(format!("header name {name:?} is not a valid header name"));
    }
    if RESERVED_HEADERS.iter().any(|r| r.eq_ignore_ascii_case(name)) {
        return Err(format!("header {name} is set by the connector, not by the template"));
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!("header {name} has a control character (line breaks are not allowed)"));
    }
    let name = HeaderName::new_from_ascii(name.to_string()).map_err(|e| format!("header name {name:?}: {e}"))?;
    Ok(HeaderValue::new(name, value.to_string()))
}

enum Body {
    Single(SinglePart),
    Alternative(MultiPart),
}

fn body(email: &Email) -> Body {
    let html = email.html.as_ref().map(|h| match &email.preheader {
        Some(p) if !p.trim().is_empty() => with_preheader(h, p.trim()),
        _ => h.clone(),
    });
    match (&email.text, html) {
        (Some(t), Some(h)) => Body::Alternative(MultiPart::alternative_plain_html(t.clone(), h)),
        (Some(t), None) => Body::Single(SinglePart::plain(t.clone())),
        (None, Some(h)) => Body::Single(SinglePart::html(h)),
        // The renderer refuses an email with neither; send an empty text part rather
        // than failing on a message someone wrote by hand.
        (None, None) => Body::Single(SinglePart::plain(String::new())),
    }
}

/// The style that hides the preheader in every major client while inbox previews read it.
pub const PREHEADER_STYLE: &str = "display:none;font-size:1px;line-height:1px;max-height:0;max-width:0;opacity:0;overflow:hidden;mso-hide:all";

/// `html` with `preheader` as a hidden first element of its `<body>` (or at the very
/// start when there is no `<body>` tag); unchanged when the html already contains the
/// preheader text (escaped or not), i.e. the template placed it itself.
pub fn with_preheader(html: &str, preheader: &str) -> String {
    let escaped = escape_html(preheader);
    if html.contains(&escaped) || html.contains(preheader) {
        return html.to_string();
    }
    let element = format!("<div style=\"{PREHEADER_STYLE}\" aria-hidden=\"true\">{escaped}</div>");
    let at = body_content_start(html).unwrap_or(0);
    let mut out = String::with_capacity(html.len() + element.len());
    out.push_str(&html[..at]);
    out.push_str(&element);
    out.push_str(&html[at..]);
    out
}

/// The index just after the `>` of the first `<body …>` tag.
fn body_content_start(html: &str) -> Option<usize> {
    let lower = html.to_ascii_lowercase();
    let mut from = 0;
    while let Some(rel) = lower[from..].find("<body") {
        let start = from + rel;
        let after = start + "<body".len();
        match lower.as_bytes().get(after) {
            Some(b'>') | Some(b' ') | Some(b'\t') | Some(b'\r') | Some(b'\n') | Some(b'/') => {
                return lower[after..].find('>').map(|e| after + e + 1);
            }
            _ => from = after,
        }
    }
    None
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_templates::Rendered;
    use chorus_types::{Category, CustomerId, JsonMap};
    use std::collections::BTreeMap;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn email(html: Option<&str>, text: Option<&str>, preheader: Option<&str>, marketing: bool) -> Email {
        let mut headers = BTreeMap::new();
        if marketing {
            headers.insert("List-Unsubscribe".to_string(), "<https://t.example/u/tok123>".to_string());
            headers.insert("List-Unsubscribe-Post".to_string(), "List-Unsubscribe=One-Click".to_string());
        }
        Email { subject: "Your cart misses you".into(), preheader: preheader.map(Into::into), html: html.map(Into::into), text: text.map(Into::into), headers }
    }

    fn intent(key: &str, content: Option<Content>) -> Intent {
        let content = content.map(|c| serde_json::to_string(&Rendered { template: "cart".into(), locale: None, content: c }).unwrap()).unwrap_or_default();
        Intent {
            key: key.into(),
            customer: CustomerId::new(1, 2),
            channel: "email".into(),
            template: "cart".into(),
            category: Category::Marketing,
            to: "ada@example.com".into(),
            vars: JsonMap::new(),
            journey: String::new(),
            created_ms: 1,
            content,
        }
    }

    fn connector() -> SmtpConnector {
        let mut cfg = SmtpConfig::new("127.0.0.1", 2525, SmtpTls::None, "news@shop.example");
        cfg.from_name = Some("Shop News".into());
        cfg.reply_to = Some("help@shop.example".into());
        SmtpConnector::new(cfg, &no_env).unwrap()
    }

    fn formatted(m: &Message) -> String {
        String::from_utf8(m.formatted()).unwrap()
    }

    fn header<'a>(mime: &'a str, name: &str) -> Vec<&'a str> {
        let head = mime.split("\r\n\r\n").next().unwrap();
        head.split("\r\n").filter_map(|l| l.split_once(": ").filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)).collect()
    }

    /// Quoted-printable decoding (RFC 2045 §6.7): soft line breaks and `=XX` octets.
    fn qp_decode(s: &str) -> String {
        let s = s.replace("=\r\n", "");
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match (b[i], s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())) {
                (b'=', Some(octet)) => {
                    out.push(octet);
                    i += 3;
                }
                (c, _) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        String::from_utf8(out).unwrap()
    }

    const NOW: u64 = 1_790_000_000;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOW)
    }

    #[tokio::test]
    async fn rule_marketing_email_carries_one_click_unsubscribe_headers() {
        let c = connector();
        let html = "<html><body><p>Hi <a href=\"https://t.example/u/tok123\">unsubscribe</a></p></body></html>";
        let m = c.compose(&intent("k1", Some(Content::Email(email(Some(html), Some("Hi\nhttps://t.example/u/tok123"), None, true)))), now()).unwrap();
        let mime = formatted(&m);
        assert_eq!(header(&mime, "List-Unsubscribe"), vec!["<https://t.example/u/tok123>"], "{mime}");
        assert_eq!(header(&mime, "List-Unsubscribe-Post"), vec!["List-Unsubscribe=One-Click"], "{mime}");
        assert_eq!(header(&mime, "From"), vec!["\"Shop News\" <news@shop.example>"]);
        assert_eq!(header(&mime, "To"), vec!["ada@example.com"]);
        assert_eq!(header(&mime, "Reply-To"), vec!["help@shop.example"]);
        assert_eq!(header(&mime, "Subject"), vec!["Your cart misses you"]);
        assert_eq!(header(&mime, "X-Chorus-Key"), vec!["k1"]);
        assert_eq!(header(&mime, "Date"), vec!["Mon, 21 Sep 2026 14:13:20 +0000"]);
    }

    #[tokio::test]
    async fn rule_message_id_is_derived_from_the_intent_key() {
        let c = connector();
        let e = || Some(Content::Email(email(None, Some("hello"), None, false)));
        let id = |m: &Message| header(&formatted(m), "Message-ID")[0].to_string();
        let a = c.compose(&intent("shard-3/out-42", e()), now()).unwrap();
        let again = c.compose(&intent("shard-3/out-42", e()), now() + Duration::from_secs(60)).unwrap();
        let other = c.compose(&intent("shard-3/out-43", e()), now()).unwrap();
        assert_eq!(id(&a), id(&again));
        assert_ne!(id(&a), id(&other));
        // printf 'shard-3/out-42' | sha256sum | cut -c1-32
        assert_eq!(id(&a), "<07bc8276cbc5eaa7142985982d726132.chorus@shop.example>");
        assert_eq!(message_id("shard-3/out-42", "shop.example"), id(&a));
    }

    #[tokio::test]
    async fn rule_email_with_text_and_html_is_multipart_alternative_text_first() {
        let c = connector();
        let m = c.compose(&intent("k", Some(Content::Email(email(Some("<p>Hello html</p>"), Some("Hello text"), None, false)))), now()).unwrap();
        let mime = formatted(&m);
        let ct = header(&mime, "Content-Type");
        assert!(ct[0].starts_with("multipart/alternative;"), "{mime}");
        let text_at = mime.find("Content-Type: text/plain; charset=utf-8").expect("text part");
        let html_at = mime.find("Content-Type: text/html; charset=utf-8").expect("html part");
        assert!(text_at < html_at, "text comes first, html (the preferred part) last:\n{mime}");
        assert!(mime.contains("Hello text") && mime.contains("<p>Hello html</p>"), "{mime}");
        let only_text = formatted(&c.compose(&intent("k", Some(Content::Email(email(None, Some("Just text"), None, false)))), now()).unwrap());
        assert_eq!(header(&only_text, "Content-Type"), vec!["text/plain; charset=utf-8"], "{only_text}");
        let only_html = formatted(&c.compose(&intent("k", Some(Content::Email(email(Some("<b>x</b>"), None, None, false)))), now()).unwrap());
        assert_eq!(header(&only_html, "Content-Type"), vec!["text/html; charset=utf-8"], "{only_html}");
    }

    #[test]
    fn rule_preheader_is_the_hidden_first_element_of_the_body() {
        let html = "<html><head><title>t</title></head><BODY class=\"x\"><p>Hello</p></BODY></html>";
        let out = with_preheader(html, "20% off & free shipping");
        assert_eq!(
            out,
            format!(
                "<html><head><title>t</title></head><BODY class=\"x\"><div style=\"{PREHEADER_STYLE}\" aria-hidden=\"true\">20% off &amp; free shipping</div><p>Hello</p></BODY></html>"
            )
        );
        // No <body>: first thing in the html. A `<bodyx>` tag is not a body.
        assert!(with_preheader("<bodyx><p>Hi</p>", "Pre").starts_with("<div style="));
        // The template placed it itself: left as is.
        let own = "<body><span class=\"preheader\">20% off &amp; free shipping</span></body>";
        assert_eq!(with_preheader(own, "20% off & free shipping"), own);
    }

    #[tokio::test]
    async fn rule_preheader_goes_into_the_html_part_only() {
        let c = connector();
        let m = c.compose(&intent("k", Some(Content::Email(email(Some("<body><p>Hello</p></body>"), Some("Hello"), Some("Peek"), false)))), now()).unwrap();
        let mime = formatted(&m);
        let (text, html) = mime.split_once("Content-Type: text/html").expect("an html part");
        assert!(!text.contains("Peek"), "{mime}");
        assert!(qp_decode(html).contains("aria-hidden=\"true\">Peek</div><p>Hello</p>"), "{mime}");
    }

    #[tokio::test]
    async fn rule_unrendered_or_non_email_intent_is_permanent() {
        let c = connector();
        let err = c.compose(&intent("k9", None), now()).unwrap_err();
        assert!(matches!(&err, DeliveryError::Permanent(d) if d.contains("no rendered content") && d.contains("k9")), "{err}");
        let sms = Content::Sms(chorus_templates::Sms { body: "x".into(), encoding: chorus_templates::SmsEncoding::Gsm7, units: 1, segments: 1 });
        let err = c.compose(&intent("k9", Some(sms)), now()).unwrap_err();
        assert!(matches!(&err, DeliveryError::Permanent(d) if d.contains("is a sms message, not email")), "{err}");
        let err = c.compose(&Intent { content: "{not json".into(), ..intent("k9", None) }, now()).unwrap_err();
        assert!(matches!(&err, DeliveryError::Permanent(_)), "{err}");
        let bad_to = Intent { to: "not an address".into(), ..intent("k9", Some(Content::Email(email(None, Some("t"), None, false)))) };
        assert!(matches!(c.compose(&bad_to, now()), Err(DeliveryError::Permanent(d)) if d.contains("bad address")));
    }

    #[tokio::test]
    async fn rule_template_headers_cannot_override_or_inject() {
        let c = connector();
        for (name, value, why) in [
            ("Subject", "other", "set by the connector"),
            ("message-id", "<x@y>", "set by the connector"),
            ("X-Campaign", "a\r\nBcc: victim@example.com", "control character"),
            ("Bad Name", "v", "not a valid header name"),
        ] {
            let mut e = email(None, Some("t"), None, false);
            e.headers.insert(name.into(), value.into());
            let err = c.compose(&intent("k", Some(Content::Email(e))), now()).unwrap_err();
            assert!(matches!(&err, DeliveryError::Permanent(d) if d.contains(why)), "{name}: {err}");
        }
        let mut e = email(None, Some("t"), None, false);
        e.headers.insert("X-Campaign".into(), "spring-sale".into());
        let mime = formatted(&c.compose(&intent("k", Some(Content::Email(e))), now()).unwrap());
        assert_eq!(header(&mime, "X-Campaign"), vec!["spring-sale"]);
    }

    #[test]
    fn config_parses_from_toml_and_validates() {
        let cfg: SmtpConfig = serde_json::from_value(serde_json::json!({
            "host": "smtp.example.com", "tls": "tls", "username": "u", "password_env": "SMTP_PW",
            "from": "news@example.com", "from_name": "News", "timeout": "5s"
        }))
        .unwrap();
        assert_eq!(cfg.port(), 465);
        assert_eq!(cfg.timeout().unwrap(), Duration::from_secs(5));
        let env = |k: &str| (k == "SMTP_PW").then(|| "s3cret".to_string());
        assert_eq!(cfg.resolve_password(&env).unwrap().as_deref(), Some("s3cret"));
        cfg.validate(&env).unwrap();
        assert!(cfg.validate(&no_env).unwrap_err().contains("SMTP_PW is not set"));
        assert!(!format!("{:?}", SmtpConfig { password: Some("s3cret".into()), ..cfg.clone() }).contains("s3cret"));
        let bad = SmtpConfig { from: "nope".into(), ..cfg.clone() };
        assert!(bad.validate(&env).unwrap_err().contains("smtp from"));
        let bad = SmtpConfig { pool_size_max: 0, ..cfg.clone() };
        assert!(bad.validate(&env).unwrap_err().contains("pool_size_max"));
        let bad = SmtpConfig { username: None, ..cfg.clone() };
        assert!(bad.validate(&env).unwrap_err().contains("without username"));
        let bad = SmtpConfig { tls: SmtpTls::None, ca_file: Some("ca.pem".into()), ..cfg.clone() };
        assert!(bad.validate(&env).unwrap_err().contains("ca_file needs tls"));
        assert!(serde_json::from_value::<SmtpConfig>(serde_json::json!({"host": "h", "from": "a@b.c", "tls": "ssl"})).is_err());
        let default: SmtpConfig = serde_json::from_value(serde_json::json!({"host": "h", "from": "a@b.c"})).unwrap();
        assert_eq!((default.tls, default.port(), default.pool_size_max), (SmtpTls::Starttls, 587, 8));
    }
}
