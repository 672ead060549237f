//! `chorus`: the Chorus node. `chorus dev` runs a single node with no configuration;
//! `chorus run --config FILE` runs from a TOML file. Wiring only: no decisions here.

mod config;

use anyhow::Context;
use chorus_api::grpc::Services;
use chorus_proto::v1;
use clap::{Args, Parser, Subcommand};
use config::Config;
use std::path::PathBuf;
use std::sync::Arc;

/// jemalloc instead of the system allocator: per-thread caches make the apply path's many
/// short-lived allocations cheaper than glibc's arenas, and its background threads return
/// freed pages (passivated actors) to the OS, so RSS follows the live set (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Chorus: omnichannel marketing orchestration. This binary is the node.
#[derive(Parser, Debug)]
#[command(
    name = "chorus",
    version,
    after_help = "Configuration layers: defaults < TOML file (--config) < CHORUS_* environment < flags.\nEnvironment: CHORUS_NODE_ID, CHORUS_DATA_DIR, CHORUS_GRPC_ADDR, CHORUS_HTTP_ADDR, CHORUS_SHARDS, CHORUS_WRITE_KEYS (comma-separated), CHORUS_LOG, CHORUS_CLUSTER_LISTEN, CHORUS_CLUSTER_ADVERTISE, CHORUS_CLUSTER_SEEDS (comma-separated).\nStop with Ctrl-C or SIGTERM: in-flight batches are committed or rejected, never half-applied."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a single development node with no configuration: embedded storage under
    /// ./chorus-data, gRPC on 127.0.0.1:7700, HTTP on 127.0.0.1:7780, 64 shards.
    Dev(Overrides),
    /// Run a node from a TOML configuration file.
    #[command(
        after_help = "TOML keys (all optional; unknown keys are errors):\n  node_id, data_dir\n  [grpc] addr, batch_events_max, stream_batches_in_flight_max\n  [http] addr, write_keys = [..]\n  [shards] count, dedup_window (max 7d), actor_idle, live_actors_max, quarantine_after,\n           ingest_queue_max, proposal_events_max, proposals_in_flight_max\n  [clock] mode = \"system\" | \"manual\", allow_manual (must be true for manual)\n  [log] level\n  [cluster] listen, advertise, seeds = [..], heartbeat  (a node of a multi-node cluster)\n  [cluster.tls] ca, cert, key, server_name  (mutual TLS between nodes)\nSee README.md for an example."
    )]
    Run {
        /// The TOML configuration file.
        #[arg(long, short = 'c')]
        config: PathBuf,
        #[command(flatten)]
        overrides: Overrides,
    },
}

#[derive(Args, Debug, Default)]
struct Overrides {
    /// Directory of the embedded store (default ./chorus-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Public gRPC listen address (default 127.0.0.1:7700; port 0 picks a free port).
    #[arg(long)]
    grpc_addr: Option<String>,
    /// HTTP listen address for the Segment API, health and metrics (default 127.0.0.1:7780).
    #[arg(long)]
    http_addr: Option<String>,
    /// Number of shards when creating a new data directory (default 64; fixed afterwards).
    #[arg(long)]
    shards: Option<u32>,
    /// `system` (default) or `manual`: a clock moved only by `chorusctl clock` (time travel for tests).
    #[arg(long)]
    clock: Option<String>,
    /// Log filter, e.g. `info` or `chorus_shard=debug,info`.
    #[arg(long)]
    log: Option<String>,
    /// This node's id (default 1).
    #[arg(long)]
    node_id: Option<u64>,
}

impl Overrides {
    fn apply(self, c: &mut Config) {
        if let Some(v) = self.data_dir {
            c.data_dir = v;
        }
        if let Some(v) = self.grpc_addr {
            c.grpc.addr = v;
        }
        if let Some(v) = self.http_addr {
            c.http.addr = v;
        }
        if let Some(v) = self.shards {
            c.shards.count = v;
        }
        if let Some(v) = self.clock {
            // Naming the manual clock on the command line is the explicit opt-in.
            c.clock.allow_manual |= v == "manual";
            c.clock.mode = v;
        }
        if let Some(v) = self.log {
            c.log.level = v;
        }
        if let Some(v) = self.node_id {
            c.node_id = v;
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (mut config, overrides) = match cli.command {
        Command::Dev(o) => (Config::default(), o),
        Command::Run { config, overrides } => (Config::from_file(&config)?, overrides),
    };
    config.apply_env()?;
    overrides.apply(&mut config);
    config.validate()?;
    // Purge freed memory in the background (jemalloc's decay), not only when the
    // thread that freed it allocates again: dormant customers must not pin RSS.
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        eprintln!("chorus: jemalloc background threads unavailable ({e}); freed memory returns to the OS more slowly");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level).with_context(|| format!("parse log filter {:?}", config.log.level))?;
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("chorus").build().context("start the tokio runtime")?;
    runtime.block_on(run(config))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// One (channel, connector, limits) per channel, from `[connectors]`; and the Twilio
/// webhook settings when Twilio serves a channel.
fn connector_routes(
    cfg: &config::ConnectorsConfig,
    capture: Arc<dyn chorus_connectors::Connector>,
) -> anyhow::Result<(Vec<(String, Arc<dyn chorus_connectors::Connector>, chorus_connectors::ConnectorLimits)>, Option<chorus_api::twilio::TwilioWebhookConfig>)>
{
    use chorus_connectors::Connector;
    let env = |k: &str| std::env::var(k).ok();
    for ch in cfg.channels.keys().chain(cfg.limits.keys()) {
        if !chorus_types::CHANNELS.contains(&ch.as_str()) {
            anyhow::bail!("connectors: unknown channel {ch:?}; channels are {}", chorus_types::CHANNELS.join(", "));
        }
    }
    let mut built: std::collections::HashMap<&str, Arc<dyn Connector>> = std::collections::HashMap::new();
    let mut twilio_webhooks = None;
    let mut routes = Vec::new();
    for ch in chorus_types::CHANNELS {
        let provider = cfg.channels.get(*ch).map(String::as_str).unwrap_or("capture");
        let connector: Arc<dyn Connector> = match built.get(provider) {
            Some(c) => c.clone(),
            None => {
                let missing = |section: &str| anyhow::anyhow!("connectors.channels.{ch} = {provider:?} needs a [connectors.{section}] section");
                let c: Arc<dyn Connector> = match provider {
                    "capture" => capture.clone(),
                    "smtp" => Arc::new(
                        chorus_connectors::smtp::SmtpConnector::new(cfg.smtp.clone().ok_or_else(|| missing("smtp"))?, &env)
                            .map_err(|e| anyhow::anyhow!("connectors.smtp: {e}"))?,
                    ),
                    "webhook" => {
                        let w = cfg.webhook.clone().ok_or_else(|| missing("webhook"))?;
                        let clock: chorus_connectors::webhook::Clock =
                            Box::new(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0));
                        Arc::new(chorus_connectors::webhook::WebhookConnector::new(w, &env, clock).map_err(|e| anyhow::anyhow!("connectors.webhook: {e}"))?)
                    }
                    "twilio" => {
                        let t = cfg.twilio.as_ref().ok_or_else(|| missing("twilio"))?;
                        if t.status_callback_base.as_deref().is_some_and(|b| !b.is_empty()) {
                            twilio_webhooks = Some(
                                chorus_api::twilio::TwilioWebhookConfig::from_connector(t, &env)
                                    .map_err(|e| anyhow::anyhow!("connectors.twilio.{}: {}", e.field, e.message))?,
                            );
                        }
                        Arc::new(
                            chorus_connectors::twilio::TwilioConnector::new(t, &env)
                                .map_err(|e| anyhow::anyhow!("connectors.twilio.{}: {}", e.field, e.message))?,
                        )
                    }
                    "fcm" => Arc::new(
                        chorus_connectors::fcm::FcmConnector::new(cfg.fcm.as_ref().ok_or_else(|| missing("fcm"))?, &env)
                            .map_err(|e| anyhow::anyhow!("connectors.fcm.{}: {}", e.field, e.message))?,
                    ),
                    "apns" => Arc::new(
                        chorus_connectors::apns::ApnsConnector::new(cfg.apns.as_ref().ok_or_else(|| missing("apns"))?, &env)
                            .map_err(|e| anyhow::anyhow!("connectors.apns.{}: {}", e.field, e.message))?,
                    ),
                    other => anyhow::bail!("connectors.channels.{ch} = {other:?}: use capture, smtp, twilio, fcm, apns or webhook"),
                };
                built.insert(provider, c.clone());
                c
            }
        };
        let l = cfg.limits.get(*ch).cloned().unwrap_or_default();
        let cooldown = config::parse_duration_ms(&l.breaker_cooldown).map_err(|e| anyhow::anyhow!("connectors.limits.{ch}.breaker_cooldown: {e}"))?;
        let uncertain = match l.uncertain.as_deref() {
            Some("resend") => chorus_connectors::Uncertain::Resend,
            Some("skip") => chorus_connectors::Uncertain::Skip,
            None if matches!(*ch, "sms" | "mms") => chorus_connectors::Uncertain::Skip,
            None => chorus_connectors::Uncertain::Resend,
            Some(other) => anyhow::bail!("connectors.limits.{ch}.uncertain = {other:?}: use resend or skip"),
        };
        let limits = chorus_connectors::ConnectorLimits {
            uncertain,
            concurrency_max: l.concurrency_max.max(1),
            attempts_max: l.attempts_max.max(1),
            rate_per_sec: l.rate_per_sec,
            breaker_failures_max: l.breaker_failures_max,
            breaker_cooldown: std::time::Duration::from_millis(cooldown.max(0) as u64),
            ..Default::default()
        };
        routes.push((ch.to_string(), connector, limits));
    }
    Ok((routes, twilio_webhooks))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let mut shard_config = config.shard_config()?;
    let store = chorus_store::Store::open(&config.data_dir, chorus_store::StoreOptions::default())
        .with_context(|| format!("open the data directory {}", config.data_dir.display()))?;
    let clock = Arc::new(match config.clock.mode.as_str() {
        "manual" => chorus_shard::Clock::manual(store.clone())?,
        _ => chorus_shard::Clock::system(),
    });
    // Bind first so a busy port fails fast, before any state is touched.
    let grpc_listener = tokio::net::TcpListener::bind(&config.grpc.addr).await.with_context(|| format!("bind gRPC address {}", config.grpc.addr))?;
    let http_listener = tokio::net::TcpListener::bind(&config.http.addr).await.with_context(|| format!("bind HTTP address {}", config.http.addr))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    shard_config.engine.tracking = config.tracking(&http_addr)?;
    let tracking = shard_config.engine.tracking.clone();

    // Channels not given a provider in [connectors] are served by the capture
    // connector, which stores messages for `chorusctl messages tail`.
    let clock_for_capture = clock.clone();
    let capture: Arc<dyn chorus_connectors::Connector> =
        Arc::new(chorus_connectors::capture::CaptureConnector::new(store.clone(), Box::new(move || clock_for_capture.now_ms())).map_err(anyhow::Error::msg)?);
    let (routes, twilio_webhooks) = connector_routes(&config.connectors, capture)?;
    let connectors = chorus_connectors::Connectors::start(routes).await.map_err(anyhow::Error::msg)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    // The node-to-node server stops last: while the shards stop, raft still needs it to
    // hand leadership over and to hear the new leaders.
    let (internal_stop_tx, internal_stop_rx) = tokio::sync::watch::channel(false);
    let shards = match &config.cluster {
        None => chorus_shard::Shards::open(
            config.node_id,
            &grpc_addr.to_string(),
            store.clone(),
            clock.clone(),
            shard_config,
            chorus_raft::GroupTuning::default(),
            connectors,
        )
        .await
        .context("open shards")?,
        Some(c) => {
            let tls = match &c.tls {
                None => None,
                Some(t) => {
                    let read = |what: &str, p: &std::path::Path| std::fs::read(p).with_context(|| format!("read cluster.tls.{what} {}", p.display()));
                    Some(chorus_raft::TlsMaterial {
                        ca_pem: read("ca", &t.ca)?,
                        cert_pem: read("cert", &t.cert)?,
                        key_pem: read("key", &t.key)?,
                        server_name: t.server_name.clone(),
                    })
                }
            };
            let listener = tokio::net::TcpListener::bind(&c.listen).await.with_context(|| format!("bind cluster address {}", c.listen))?;
            let listen_addr = listener.local_addr()?;
            let advertise = if c.advertise.is_empty() { listen_addr.to_string() } else { c.advertise.clone() };
            let transport = chorus_raft::Transport::new(config.node_id, tls);
            let t = transport.clone();
            let rx = internal_stop_rx.clone();
            tokio::spawn(async move {
                if let Err(e) = t.serve(listener, stopped(rx)).await {
                    tracing::error!(error = %e, "the node-to-node server stopped");
                }
            });
            let hb = config.cluster_heartbeat_ms()?;
            // openraft lets a follower vote only once the leader's lease (the election
            // maximum) has passed since its last word, then waits a random election
            // timeout: a dead leader is replaced 9–12 heartbeats after it last spoke.
            // Pre-vote keeps a replica that stalled (SIGSTOP, CPU starvation) or was cut
            // off from raising the term and deposing a healthy leader when it returns.
            let tuning = chorus_raft::GroupTuning {
                heartbeat_ms: hb,
                election_min_ms: hb * 3,
                election_max_ms: hb * 6,
                restore_leadership: false,
                pre_vote: true,
                heartbeat_suppress_ms: hb,
                ..Default::default()
            };
            let setup = chorus_shard::cluster::ClusterSetup {
                advertise: advertise.clone(),
                seeds: c.seeds.clone(),
                grpc_addr: grpc_addr.to_string(),
                http_addr: http_addr.to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            };
            println!("chorus cluster node={} cluster_addr={advertise}", config.node_id);
            chorus_shard::Shards::open_cluster(config.node_id, setup, transport, store.clone(), clock.clone(), shard_config, tuning, connectors)
                .await
                .context("open the cluster node")?
        }
    };

    let api_config = Arc::new(chorus_api::ApiConfig {
        write_keys: config.http.write_keys.clone(),
        batch_events_max: config.grpc.batch_events_max,
        stream_batches_in_flight_max: config.grpc.stream_batches_in_flight_max,
        version: env!("CARGO_PKG_VERSION").to_string(),
        tracking,
        twilio: twilio_webhooks.map(Arc::new),
        grpc_addr: grpc_addr.to_string(),
        http_addr: http_addr.to_string(),
    });
    let services = Services { shards: shards.clone(), config: api_config.clone() };

    let grpc = tonic::transport::Server::builder()
        .add_service(v1::ingest_server::IngestServer::new(services.clone()).max_decoding_message_size(64 * 1024 * 1024))
        .add_service(v1::profiles_server::ProfilesServer::new(services.clone()))
        .add_service(v1::admin_server::AdminServer::new(services.clone()))
        .add_service(v1::messages_server::MessagesServer::new(services.clone()))
        .add_service(v1::journeys_server::JourneysServer::new(services.clone()))
        .add_service(v1::settings_server::SettingsServer::new(services.clone()))
        .add_service(v1::audiences_server::AudiencesServer::new(services.clone()))
        .add_service(v1::templates_server::TemplatesServer::new(services.clone()))
        .add_service(v1::content_server::ContentServer::new(services.clone()))
        .serve_with_incoming_shutdown(
            // Small replies must not wait for Nagle's algorithm.
            tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
            stopped(stop_rx.clone()),
        );
    let http_listener = {
        use axum::serve::ListenerExt;
        http_listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "set TCP_NODELAY on an HTTP connection");
            }
        })
    };
    let app = chorus_api::http::router(shards.clone(), api_config).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let http = axum::serve(http_listener, app).with_graceful_shutdown(stopped(stop_rx.clone()));
    let grpc_task = tokio::spawn(grpc);
    let http_task = tokio::spawn(async move { http.await });

    println!(
        "chorus ready node={} grpc={} http={} shards={} clock={} data_dir={}",
        config.node_id,
        grpc_addr,
        http_addr,
        shards.shard_count(),
        clock.mode().as_str(),
        config.data_dir.display()
    );
    tracing::info!(node = config.node_id, %grpc_addr, %http_addr, "chorus is ready");

    shutdown_signal().await;
    tracing::info!("shutting down: finishing in-flight requests");
    let _ = stop_tx.send(true);
    let drain = async {
        let _ = grpc_task.await;
        let _ = http_task.await;
    };
    // Streams that never end must not hold the node forever.
    if tokio::time::timeout(std::time::Duration::from_secs(10), drain).await.is_err() {
        tracing::warn!("some connections did not close within 10s; closing them");
    }
    shards.shutdown().await;
    let _ = internal_stop_tx.send(true);
    tracing::info!("stopped");
    Ok(())
}
