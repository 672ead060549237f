//! Node configuration in layers: defaults < TOML file < `CHORUS_*` environment <
//! command-line flags, then `validate()`. Only this binary reads the environment.

use anyhow::{Context, bail};
use serde::Deserialize;
use std::path::PathBuf;

/// The complete node configuration (TOML shape).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node's id; never reused in a cluster.
    pub node_id: u64,
    /// Where the embedded store lives.
    pub data_dir: PathBuf,
    pub grpc: GrpcConfig,
    pub http: HttpConfig,
    pub shards: ShardsConfig,
    pub clock: ClockConfig,
    pub log: LogConfig,
    pub tracking: TrackingConfig,
    pub connectors: ConnectorsConfig,
    /// Present on a node of a multi-node cluster; absent, the node runs alone.
    pub cluster: Option<ClusterConfig>,
}

/// Membership of a multi-node cluster.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Where the node-to-node gRPC listens (raft and forwarding), e.g. `0.0.0.0:7900`.
    pub listen: String,
    /// The address other nodes dial to reach this one (default: `listen`).
    pub advertise: String,
    /// Node-to-node addresses of the first nodes; `cluster init` forms the cluster from them.
    pub seeds: Vec<String>,
    /// Raft heartbeat interval (default 100ms): a dead leader is replaced 9–12 heartbeats
    /// after it last spoke (the leader lease of 6, then an election timeout of 3–6).
    pub heartbeat: String,
    /// Mutual TLS between nodes.
    pub tls: Option<ClusterTls>,
}

/// PEM files for mutual TLS between nodes.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterTls {
    /// The cluster CA that signs every node certificate.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The name node certificates carry (default: the host part of each address).
    pub server_name: Option<String>,
}

/// Which provider serves each channel, the providers' settings and per-channel limits.
/// Channels not listed use the capture connector (messages kept for `chorusctl messages
/// tail`), so a new user needs no provider account.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectorsConfig {
    /// channel → `capture` | `smtp` | `twilio` | `fcm` | `apns` | `webhook`.
    pub channels: std::collections::BTreeMap<String, String>,
    pub smtp: Option<chorus_connectors::smtp::SmtpConfig>,
    pub twilio: Option<chorus_connectors::twilio::TwilioConfig>,
    pub fcm: Option<chorus_connectors::fcm::FcmConfig>,
    pub apns: Option<chorus_connectors::apns::ApnsConfig>,
    pub webhook: Option<chorus_connectors::webhook::WebhookConfig>,
    /// channel → limits.
    pub limits: std::collections::BTreeMap<String, ChannelLimits>,
}

/// Delivery limits of one channel's connector.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelLimits {
    /// Messages per second (token bucket); 0 = unlimited.
    pub rate_per_sec: u32,
    /// Deliveries in flight at once.
    pub concurrency_max: usize,
    /// Attempts per message before it goes to the dead-letter list.
    pub attempts_max: u32,
    /// Messages failing in a row (retries exhausted) that open the circuit; 0 = never.
    pub breaker_failures_max: u32,
    /// How long an open circuit pauses deliveries (messages wait in the outbox).
    pub breaker_cooldown: String,
    /// After a crash between a provider call and its recorded outcome, when the provider
    /// cannot tell whether it has the message (SMTP; Twilio when its list fails):
    /// `resend` (a duplicate is possible) or `skip` (the message goes to the dead-letter
    /// list). Default `skip` for sms and mms, `resend` for the others.
    pub uncertain: Option<String>,
}

impl Default for ChannelLimits {
    fn default() -> Self {
        let d = chorus_connectors::ConnectorLimits::default();
        ChannelLimits {
            rate_per_sec: 0,
            concurrency_max: d.concurrency_max,
            attempts_max: d.attempts_max,
            breaker_failures_max: d.breaker_failures_max,
            breaker_cooldown: "30s".into(),
            uncertain: None,
        }
    }
}

/// Engagement tracking (open pixel, click redirects, unsubscribe page) on the HTTP port.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackingConfig {
    /// The URL customers reach this node's HTTP port at (default: http://<http.addr>).
    /// Every node of a cluster needs the same value (or a load balancer in front).
    pub public_url: String,
    /// Environment variable holding the token signing key. Unset: a random key is
    /// generated once and kept in the data directory (`tracking.key`). Every node of a
    /// cluster needs the same key.
    pub secret_env: String,
    /// Rewrite email links for click tracking and add an open pixel.
    pub email_tracking: bool,
}

impl Default for TrackingConfig {
    fn default() -> Self {
        TrackingConfig { public_url: String::new(), secret_env: "CHORUS_TRACKING_SECRET".into(), email_tracking: true }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    pub addr: String,
    /// Most events in one request.
    pub batch_events_max: usize,
    /// Most batches of one ingest stream processed at once.
    pub stream_batches_in_flight_max: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub addr: String,
    /// Accepted Segment write keys; empty accepts any non-empty key (development).
    pub write_keys: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShardsConfig {
    /// Number of shards S; fixed when the data directory is created.
    pub count: u32,
    /// How long message ids are remembered for de-duplication (max 7d).
    pub dedup_window: String,
    /// Idle time after which a customer actor is passivated.
    pub actor_idle: String,
    pub live_actors_max: usize,
    pub quarantine_after: u32,
    pub ingest_queue_max: usize,
    pub proposal_events_max: usize,
    pub proposals_in_flight_max: usize,
    /// Testing only: customer actors panic on events with this name.
    pub fault_panic_event: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClockConfig {
    /// `system` or `manual` (time travel for tests; refused unless `allow_manual`).
    pub mode: String,
    /// Must be true for `mode = "manual"` in a config file (a safety catch).
    pub allow_manual: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter such as `info` or `chorus_shard=debug,info`.
    pub level: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: 1,
            data_dir: PathBuf::from("./chorus-data"),
            grpc: GrpcConfig::default(),
            http: HttpConfig::default(),
            shards: ShardsConfig::default(),
            clock: ClockConfig::default(),
            log: LogConfig::default(),
            tracking: TrackingConfig::default(),
            connectors: ConnectorsConfig::default(),
            cluster: None,
        }
    }
}
impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig { addr: "127.0.0.1:7700".into(), batch_events_max: 10_000, stream_batches_in_flight_max: 16 }
    }
}
impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { addr: "127.0.0.1:7780".into(), write_keys: Vec::new() }
    }
}
/// The default number of shards (SPEC §2).
pub const DEFAULT_SHARDS: u32 = 64;
impl Default for ShardsConfig {
    fn default() -> Self {
        let d = chorus_shard::ShardConfig::default();
        ShardsConfig {
            count: DEFAULT_SHARDS,
            dedup_window: "24h".into(),
            actor_idle: "60s".into(),
            live_actors_max: d.live_actors_max,
            quarantine_after: d.quarantine_after,
            ingest_queue_max: d.ingest_queue_max,
            proposal_events_max: d.proposal_events_max,
            proposals_in_flight_max: d.proposals_in_flight_max,
            fault_panic_event: None,
        }
    }
}
impl Default for ClockConfig {
    fn default() -> Self {
        ClockConfig { mode: "system".into(), allow_manual: false }
    }
}
impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info,openraft=warn".into() }
    }
}

/// Parse `500ms`, `30s`, `15m`, `24h`, `7d` (and combinations like `1h30m`).
pub fn parse_duration_ms(s: &str) -> anyhow::Result<i64> {
    chorus_types::time::parse_duration_ms(s).map_err(anyhow::Error::msg)
}

impl Config {
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parse config file {}", path.display()))
    }

    /// Apply `CHORUS_*` environment variables.
    pub fn apply_env(&mut self) -> anyhow::Result<()> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let Some(v) = var("CHORUS_NODE_ID") {
            self.node_id = v.parse().with_context(|| format!("CHORUS_NODE_ID={v:?} is not a number"))?;
        }
        if let Some(v) = var("CHORUS_DATA_DIR") {
            self.data_dir = v.into();
        }
        if let Some(v) = var("CHORUS_GRPC_ADDR") {
            self.grpc.addr = v;
        }
        if let Some(v) = var("CHORUS_HTTP_ADDR") {
            self.http.addr = v;
        }
        if let Some(v) = var("CHORUS_SHARDS") {
            self.shards.count = v.parse().with_context(|| format!("CHORUS_SHARDS={v:?} is not a number"))?;
        }
        if let Some(v) = var("CHORUS_WRITE_KEYS") {
            self.http.write_keys = v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        }
        if let Some(v) = var("CHORUS_LOG") {
            self.log.level = v;
        }
        for (k, set) in [
            ("CHORUS_CLUSTER_LISTEN", (|c: &mut ClusterConfig, v: String| c.listen = v) as fn(&mut ClusterConfig, String)),
            ("CHORUS_CLUSTER_ADVERTISE", |c, v| c.advertise = v),
            ("CHORUS_CLUSTER_SEEDS", |c, v| c.seeds = v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()),
        ] {
            if let Some(v) = var(k) {
                set(self.cluster.get_or_insert_with(ClusterConfig::default), v);
            }
        }
        Ok(())
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.node_id == 0 {
            bail!("node_id must be at least 1");
        }
        self.grpc.addr.parse::<std::net::SocketAddr>().with_context(|| format!("grpc.addr {:?} is not host:port", self.grpc.addr))?;
        self.http.addr.parse::<std::net::SocketAddr>().with_context(|| format!("http.addr {:?} is not host:port", self.http.addr))?;
        match self.clock.mode.as_str() {
            "system" => {}
            "manual" if self.clock.allow_manual => {}
            "manual" => bail!(
                "clock.mode = \"manual\" is refused unless clock.allow_manual = true (or --clock manual on the command line): a manual clock stops real time"
            ),
            other => bail!("clock.mode {other:?} is not valid: use system or manual"),
        }
        self.shard_config()?.validate().map_err(|e| anyhow::anyhow!("shards: {e}"))?;
        if self.grpc.batch_events_max == 0 || self.grpc.stream_batches_in_flight_max == 0 {
            bail!("grpc.batch_events_max and grpc.stream_batches_in_flight_max must be at least 1");
        }
        if let Some(c) = &self.cluster {
            c.listen.parse::<std::net::SocketAddr>().with_context(|| format!("cluster.listen {:?} is not host:port", c.listen))?;
            for a in std::iter::once(&c.advertise).filter(|a| !a.is_empty()).chain(&c.seeds) {
                match a.rsplit_once(':') {
                    Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
                    _ => bail!("cluster address {a:?} is not host:port"),
                }
            }
            self.cluster_heartbeat_ms()?;
            if let Some(t) = &c.tls {
                for (what, p) in [("ca", &t.ca), ("cert", &t.cert), ("key", &t.key)] {
                    if p.as_os_str().is_empty() {
                        bail!("cluster.tls.{what} must name a PEM file");
                    }
                }
            }
        }
        Ok(())
    }

    /// The tracking configuration the decision core renders links with.
    pub fn tracking(&self, http_addr: &std::net::SocketAddr) -> anyhow::Result<chorus_engine::render::TrackingConfig> {
        let base_url =
            if self.tracking.public_url.is_empty() { format!("http://{http_addr}") } else { self.tracking.public_url.trim_end_matches('/').to_string() };
        let secret = match std::env::var(&self.tracking.secret_env) {
            Ok(s) if !s.is_empty() => s.into_bytes(),
            _ => {
                let path = self.data_dir.join("tracking.key");
                match std::fs::read(&path) {
                    Ok(k) if !k.is_empty() => k,
                    _ => {
                        let mut key = vec![0u8; 32];
                        use std::io::Read;
                        std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut key)).context("read /dev/urandom for the tracking key")?;
                        std::fs::create_dir_all(&self.data_dir).ok();
                        std::fs::write(&path, &key).with_context(|| format!("write {}", path.display()))?;
                        key
                    }
                }
            }
        };
        Ok(chorus_engine::render::TrackingConfig { base_url, secret, email_tracking: self.tracking.email_tracking })
    }

    /// The raft heartbeat of a cluster node in ms (default 100).
    pub fn cluster_heartbeat_ms(&self) -> anyhow::Result<u64> {
        match self.cluster.as_ref().map(|c| c.heartbeat.as_str()).filter(|h| !h.is_empty()) {
            None => Ok(100),
            Some(h) => {
                let ms = parse_duration_ms(h).context("cluster.heartbeat")?;
                if !(20..=5_000).contains(&ms) {
                    bail!("cluster.heartbeat must be between 20ms and 5s, got {h}");
                }
                Ok(ms as u64)
            }
        }
    }

    pub fn shard_config(&self) -> anyhow::Result<chorus_shard::ShardConfig> {
        let s = &self.shards;
        let actor_idle = parse_duration_ms(&s.actor_idle).context("shards.actor_idle")?;
        Ok(chorus_shard::ShardConfig {
            shard_count: s.count,
            dedup_window_ms: parse_duration_ms(&s.dedup_window).context("shards.dedup_window")?,
            actor_idle_ms: actor_idle.max(1) as u64,
            live_actors_max: s.live_actors_max,
            quarantine_after: s.quarantine_after,
            ingest_queue_max: s.ingest_queue_max,
            proposal_events_max: s.proposal_events_max,
            proposals_in_flight_max: s.proposals_in_flight_max,
            fault_panic_event: s.fault_panic_event.clone(),
            ..chorus_shard::ShardConfig::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration_ms("500ms").unwrap(), 500);
        assert_eq!(parse_duration_ms("24h").unwrap(), 86_400_000);
        assert_eq!(parse_duration_ms("1h30m").unwrap(), 5_400_000);
        assert!(parse_duration_ms("10").is_err());
        assert!(parse_duration_ms("5y").is_err());
    }

    #[test]
    fn toml_layers_over_defaults_and_unknown_keys_are_errors() {
        let c: Config = toml::from_str("node_id = 3\n[shards]\ncount = 8\n").unwrap();
        assert_eq!(c.node_id, 3);
        assert_eq!(c.shards.count, 8);
        assert_eq!(c.grpc.addr, "127.0.0.1:7700");
        assert!(toml::from_str::<Config>("[shards]\ncont = 8\n").is_err());
    }

    #[test]
    fn cluster_section_is_checked() {
        let c: Config = toml::from_str("[cluster]\nlisten = \"127.0.0.1:7900\"\nseeds = [\"n1:7900\", \"n2:7900\"]\n").unwrap();
        c.validate().unwrap();
        assert_eq!(c.cluster_heartbeat_ms().unwrap(), 100);
        let bad: Config = toml::from_str("[cluster]\nlisten = \"127.0.0.1:7900\"\nseeds = [\"n1\"]\n").unwrap();
        assert!(bad.validate().unwrap_err().to_string().contains("\"n1\" is not host:port"));
        let fast: Config = toml::from_str("[cluster]\nlisten = \"127.0.0.1:7900\"\nheartbeat = \"5ms\"\n").unwrap();
        assert!(fast.validate().unwrap_err().to_string().contains("between 20ms and 5s"));
        assert!(toml::from_str::<Config>("[cluster]\nlisen = \"x\"\n").is_err());
    }

    #[test]
    fn manual_clock_needs_explicit_permission() {
        let mut c = Config::default();
        c.clock.mode = "manual".into();
        assert!(c.validate().unwrap_err().to_string().contains("allow_manual"));
        c.clock.allow_manual = true;
        c.validate().unwrap();
    }
}
