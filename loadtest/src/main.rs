//! `chorus-loadtest`: generate the standard workload W1 (or a TOML scenario), stream it
//! into a Chorus node over `Ingest.Stream`, and report acknowledged events/s, ack
//! latency percentiles and the node's RSS/CPU. `run` targets an existing node; `bench`
//! starts its own `chorus dev` on a fresh data directory and tears it down afterwards.
//!
//! It measures; it asserts nothing about speed, and it never links product code.

mod bulk;
mod client;
mod memory;
mod node;
mod procstat;
mod report;
mod scenario;
mod timers;
mod unary;
mod w1;
mod workload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use client::{Shared, Tally, Timeline};
use procstat::Tracker;
use report::Report;
use scenario::{Scenario, ScenarioFile};
use workload::Distribution;

/// How long to wait after a run for the node's cross-shard work to drain.
const SETTLE_MAX: Duration = Duration::from_secs(60);

/// Load generator and benchmark runner for Chorus.
#[derive(Parser, Debug)]
#[command(name = "chorus-loadtest", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the workload against a node that is already running.
    Run {
        /// The node's gRPC endpoint.
        #[arg(long, default_value = "http://127.0.0.1:7700")]
        endpoint: String,
        /// The node's process id, to report its RSS and CPU.
        #[arg(long)]
        pid: Option<u32>,
        /// The node's HTTP address (host:port), to read customer counts from /metrics.
        #[arg(long)]
        http: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Start a fresh `chorus dev` node, run the workload against it, stop it and remove
    /// its data directory.
    Bench {
        #[command(flatten)]
        node: NodeArgs,
        /// Start a local cluster of this many nodes (replication min(3, nodes)) instead of
        /// one `chorus dev`; streams are spread over the nodes. The node CPU and RSS columns
        /// are node 1's.
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        #[command(flatten)]
        common: Common,
    },
    /// Memory per customer: create N customers on a fresh node, read its RSS once all
    /// are dormant (passivated), then with H of them hot (actor-resident).
    Memory {
        #[command(flatten)]
        node: NodeArgs,
        /// Customers created (one event each).
        #[arg(long, default_value_t = 1_000_000)]
        customers: u64,
        /// Customers touched again and measured while actor-resident.
        #[arg(long, default_value_t = 100_000)]
        hot: u64,
        /// Size of each event's properties JSON in bytes.
        #[arg(long, default_value_t = 160)]
        payload_bytes: usize,
        #[command(flatten)]
        load: PopulationArgs,
    },
    /// Pending timers: J journeys that each wait W seconds, entered by N customers (J × N
    /// durable timers); reports bytes per timer and how late they fire.
    Timers {
        #[command(flatten)]
        node: NodeArgs,
        /// Customers seeded (one event each; each enters every journey).
        #[arg(long, default_value_t = 1_000_000)]
        customers: u64,
        /// Journeys, each holding one wait per customer.
        #[arg(long, default_value_t = 10)]
        journeys: u32,
        /// Seconds each wait lasts (must outlast seeding plus passivation to read RSS).
        #[arg(long, default_value_t = 600)]
        wait: u64,
        #[command(flatten)]
        load: PopulationArgs,
    },
}

/// How the memory and timer scenarios load their node.
#[derive(Args, Debug, Clone)]
struct PopulationArgs {
    #[arg(long, default_value_t = 64)]
    shards: u32,
    #[arg(long, default_value_t = 4)]
    streams: usize,
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Batches outstanding per stream.
    #[arg(long, default_value_t = 2)]
    in_flight: usize,
    /// Seconds an untouched customer actor stays resident (the node's actor_idle).
    #[arg(long, default_value_t = 30)]
    actor_idle: u64,
    /// Print the report as JSON on stdout (the human table goes to stderr).
    #[arg(long)]
    json: bool,
}

/// How bench-style modes start their node.
#[derive(Args, Debug, Clone)]
struct NodeArgs {
    /// Use `<target>/release/chorus` instead of the `chorus` next to this executable.
    #[arg(long)]
    release: bool,
    /// The node binary (default: next to this executable).
    #[arg(long)]
    chorus_bin: Option<PathBuf>,
    /// Directory under which the temporary data directory is made (default: the
    /// system temp dir). It must be on a real disk: fsync is what is measured.
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// The node's log filter.
    #[arg(long, default_value = "warn")]
    node_log: String,
    /// Keep the node's data directory and log.
    #[arg(long)]
    keep_data: bool,
}

impl NodeArgs {
    fn opts(&self, chorus: PathBuf, shards: u32) -> node::NodeOpts {
        node::NodeOpts {
            chorus,
            shards,
            data_root: self.data_root.clone(),
            log: self.node_log.clone(),
            keep: self.keep_data,
            cluster: None,
            config: String::new(),
        }
    }
}

#[derive(Args, Debug)]
struct Common {
    /// Scenario TOML file; flags given here override it.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Number of customers.
    #[arg(long)]
    customers: Option<u64>,
    /// Customer choice: zipf or uniform.
    #[arg(long, value_parser = parse_distribution)]
    distribution: Option<Distribution>,
    /// Zipf exponent.
    #[arg(long)]
    zipf_s: Option<f64>,
    /// RNG seed (printed; same seed, same events).
    #[arg(long)]
    seed: Option<u64>,
    /// Fraction of events that also carry the email identity.
    #[arg(long)]
    second_identity_ratio: Option<f64>,
    /// Target size of each event's properties JSON in bytes.
    #[arg(long)]
    payload_bytes: Option<usize>,
    /// Concurrent Ingest.Stream calls (one connection each).
    #[arg(long, short = 'c')]
    streams: Option<usize>,
    /// Events per batch.
    #[arg(long, short = 'b')]
    batch: Option<usize>,
    /// Batches outstanding per stream (closed loop: the window, default 2; open loop:
    /// the cap, default 64).
    #[arg(long)]
    in_flight: Option<usize>,
    /// Open loop at this many events/s in total (default: closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Warm-up seconds (sent but not measured).
    #[arg(long)]
    warmup: Option<f64>,
    /// Measured seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Shards of the node bench mode starts.
    #[arg(long)]
    shards: Option<u32>,
    /// Seconds to wait for outstanding acks after the window before counting them lost.
    #[arg(long, default_value_t = 30.0)]
    drain: f64,
    /// Worker threads of this client's runtime (it shares the machine with the node).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Print the report as JSON on stdout (the human table goes to stderr).
    #[arg(long)]
    json: bool,
    /// How batches travel: `stream` (Ingest.Stream, several batches in flight per
    /// stream), `unary` (one Ingest.Send at a time per client) or `http` (one Segment
    /// POST at a time per client: /v1/track for batches of 1, else /v1/batch). With
    /// `unary` and `http`, `--streams` is the number of concurrent clients.
    #[arg(long, default_value = "stream", value_parser = ["stream", "unary", "http"])]
    transport: String,
}

fn parse_distribution(s: &str) -> Result<Distribution, String> {
    match s {
        "zipf" => Ok(Distribution::Zipf),
        "uniform" => Ok(Distribution::Uniform),
        _ => Err(format!("expected zipf or uniform, got {s:?}")),
    }
}

impl Common {
    fn scenario(&self) -> anyhow::Result<Scenario> {
        let base = match &self.scenario {
            Some(p) => ScenarioFile::load(p)?,
            None => ScenarioFile::default(),
        };
        let flags = ScenarioFile {
            customers: self.customers,
            distribution: self.distribution,
            zipf_s: self.zipf_s,
            seed: self.seed,
            second_identity_ratio: self.second_identity_ratio,
            payload_bytes: self.payload_bytes,
            streams: self.streams,
            batch: self.batch,
            in_flight: self.in_flight,
            rate: self.rate,
            warmup_s: self.warmup,
            duration_s: self.duration,
            shards: self.shards,
            ..Default::default()
        };
        Scenario::resolve(base.overlay(flags))
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let common = match &cli.command {
        Command::Run { common, .. } | Command::Bench { common, .. } => common,
        Command::Memory { .. } | Command::Timers { .. } => return population_main(cli.command),
    };
    if common.client_threads == 0 || common.client_threads > 64 {
        bail!("--client-threads must be within 1..=64");
    }
    if !(common.drain >= 0.0 && common.drain.is_finite()) {
        bail!("--drain must be a non-negative number of seconds");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(common.client_threads)
        .enable_all()
        .thread_name("loadtest")
        .build()
        .context("start the tokio runtime")?;
    let json = common.json;
    let report = runtime.block_on(run(cli))?;
    if json {
        eprint!("{}", report.human());
        println!("{}", report.json());
    } else {
        print!("{}", report.human());
    }
    let problems = report.rejected + report.retry + report.missing + report.failed + report.lost + report.stream_errors + report.unknown_batches;
    if report.acked_in_window == 0 {
        bail!("no event was acknowledged inside the measured window");
    }
    if problems > 0 {
        eprintln!("chorus-loadtest: {problems} events or streams ended in error (see the report)");
        std::process::exit(2);
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<Report> {
    match cli.command {
        Command::Run { endpoint, pid, http, common } => {
            let sc = common.scenario()?;
            let https: Vec<String> = http.iter().cloned().collect();
            let mut report = workload_run("run", std::slice::from_ref(&endpoint), &https, pid, &sc, &common).await?;
            if let Some(h) = http {
                fill_customers(&mut report, &h).await;
            }
            Ok(report)
        }
        Command::Bench { node: node_args, nodes, common } => {
            let sc = common.scenario()?;
            let chorus = node::find_chorus(node_args.chorus_bin.as_deref(), node_args.release)?;
            eprintln!("chorus-loadtest: starting {} dev with {} shards", chorus.display(), sc.shards);
            if nodes == 0 {
                bail!("--nodes must be at least 1");
            }
            let ports: Vec<u16> = (0..nodes).map(|_| free_port()).collect::<anyhow::Result<_>>()?;
            let mut cluster = Vec::with_capacity(nodes);
            for i in 0..nodes {
                let opts =
                    node::NodeOpts { cluster: (nodes > 1).then(|| (i as u64 + 1, ports[i], ports.clone())), ..node_args.opts(chorus.clone(), sc.shards) };
                let n = node::Node::start(&opts).await?;
                eprintln!("chorus-loadtest: node {} ready pid={} grpc={} data_dir={} log={}", i + 1, n.pid, n.grpc, n.data_dir.display(), n.log_path.display());
                cluster.push(n);
            }
            let channel = client::connect(&cluster[0].endpoint(), Duration::from_secs(30)).await?;
            if nodes > 1 {
                let replication = nodes.min(3) as u32;
                let mut admin = chorus_proto::v1::admin_client::AdminClient::new(channel.clone());
                admin
                    .cluster_init(chorus_proto::v1::ClusterInitRequest { shards: sc.shards, replication })
                    .await
                    .map_err(|s| anyhow::anyhow!("cluster init: {}", s.message()))?;
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let s = admin
                        .cluster_status(chorus_proto::v1::ClusterStatusRequest {})
                        .await
                        .map_err(|s| anyhow::anyhow!("cluster status: {}", s.message()))?
                        .into_inner();
                    // Wait for the preferred leaders too (within one shard of even), so
                    // the balancer's leadership transfers do not land in the window.
                    let led: Vec<u32> = s.nodes.iter().map(|n| n.shards_led).collect();
                    let even = led.iter().max().zip(led.iter().min()).is_some_and(|(a, b)| a - b <= 1);
                    if s.shard_count == sc.shards && s.leaderless.is_empty() && s.nodes.iter().all(|n| n.healthy) && even {
                        break;
                    }
                    if Instant::now() > deadline {
                        bail!("the cluster did not become healthy within 60 s: {s:?}");
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                eprintln!("chorus-loadtest: {nodes}-node cluster formed: {} shards, replication {replication}", sc.shards);
            }
            let version = w1::publish(channel).await?;
            eprintln!("chorus-loadtest: W1 journey browse-abandon v{version} is live");
            let endpoints: Vec<String> = cluster.iter().map(|n| n.endpoint()).collect();
            let https: Vec<String> = cluster.iter().map(|n| n.http.clone()).collect();
            let terms_before = newest_terms(&https).await;
            let result = workload_run("bench", &endpoints, &https, Some(cluster[0].pid), &sc, &common).await;
            let terms_after = newest_terms(&https).await;
            let rest = cluster.split_off(1);
            let mut node = cluster.pop().expect("node 1");
            let alive = node.is_running();
            let tail = node.log_tail(30);
            let mut report = match result {
                Ok(mut r) => {
                    if alive {
                        fill_customers(&mut r, &node.http.clone()).await;
                    }
                    if nodes > 1 {
                        r.raft_elections = Some(terms_after.iter().map(|(s, t)| t.saturating_sub(terms_before.get(s).copied().unwrap_or(*t))).sum());
                    }
                    r
                }
                Err(e) => {
                    for other in rest {
                        let _ = other.stop().await;
                    }
                    let _ = node.stop().await;
                    return Err(e.context(format!("the run failed; node log tail:\n{tail}")));
                }
            };
            for other in rest {
                if let Err(e) = other.stop().await {
                    eprintln!("chorus-loadtest: stopping a node: {e:#}");
                }
            }
            let exit = node.stop().await?;
            if !alive {
                report.node_exit = Some(format!("the node died during the run ({exit}); log tail:\n{tail}"));
                bail!("{}", report.node_exit.clone().unwrap_or_default());
            }
            report.node_exit = Some(exit);
            Ok(report)
        }
        Command::Memory { .. } | Command::Timers { .. } => {
            bail!("population scenarios run from population_main")
        }
    }
}

/// The memory and timer scenarios: start a node configured for the scenario, run it,
/// print the report, stop the node.
fn population_main(command: Command) -> anyhow::Result<()> {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().thread_name("loadtest").build().context("start the tokio runtime")?;
    runtime.block_on(async move {
        let (node_args, shards, streams, config, json) = match &command {
            Command::Memory { node, load, .. } | Command::Timers { node, load, .. } => {
                let config = match population_opts(&command)? {
                    Population::Memory(o) => o.node_config(),
                    Population::Timers(o) => o.node_config(),
                };
                (node.clone(), load.shards, load.streams, config, load.json)
            }
            _ => unreachable!("only population scenarios come here"),
        };
        let chorus = node::find_chorus(node_args.chorus_bin.as_deref(), node_args.release)?;
        let opts = node::NodeOpts { config, ..node_args.opts(chorus, shards) };
        let mut n = node::Node::start(&opts).await?;
        eprintln!("chorus-loadtest: node ready pid={} grpc={} data_dir={} log={}", n.pid, n.grpc, n.data_dir.display(), n.log_path.display());
        let mut channels = Vec::with_capacity(streams);
        for _ in 0..streams.max(1) {
            channels.push(client::connect(&n.endpoint(), Duration::from_secs(30)).await?);
        }
        let result = match population_opts(&command)? {
            Population::Memory(o) => memory::run(&o, &channels, &mut n).await.map(|r| (r.human(), serde_json::to_string_pretty(&r))),
            Population::Timers(o) => timers::run(&o, &channels, &mut n).await.map(|r| (r.human(), serde_json::to_string_pretty(&r))),
        };
        let tail = n.log_tail(30);
        let exit = n.stop().await?;
        let (human, js) = result.map_err(|e| e.context(format!("node log tail:\n{tail}")))?;
        let human = format!("{human}  node: {exit}\n");
        if json {
            eprint!("{human}");
            println!("{}", js.context("encode the report")?);
        } else {
            print!("{human}");
        }
        Ok(())
    })
}

enum Population {
    Memory(memory::MemoryOpts),
    Timers(timers::TimerOpts),
}

fn population_opts(command: &Command) -> anyhow::Result<Population> {
    Ok(match command {
        Command::Memory { customers, hot, payload_bytes, load, .. } => {
            let o = memory::MemoryOpts {
                customers: *customers,
                hot: *hot,
                shards: load.shards,
                streams: load.streams,
                batch: load.batch,
                in_flight: load.in_flight,
                payload_bytes: *payload_bytes,
                actor_idle_s: load.actor_idle,
            };
            o.validate()?;
            Population::Memory(o)
        }
        Command::Timers { customers, journeys, wait, load, .. } => {
            let o = timers::TimerOpts {
                customers: *customers,
                journeys: *journeys,
                wait_s: *wait,
                shards: load.shards,
                streams: load.streams,
                batch: load.batch,
                in_flight: load.in_flight,
                actor_idle_s: load.actor_idle,
            };
            o.validate()?;
            Population::Timers(o)
        }
        _ => bail!("not a population scenario"),
    })
}

/// After the run, wait (bounded by `SETTLE_MAX`) until the node has no queued events and
/// no undelivered cross-shard messages (identity claims and merges), then record the
/// customer counts and how long settling took.
async fn fill_customers(report: &mut Report, http: &str) {
    let started = Instant::now();
    loop {
        match node::scrape(http).await {
            Ok(g) => {
                let settled = g.pending_cross_shard == 0 && g.queued_events == 0;
                if settled || started.elapsed() >= SETTLE_MAX {
                    report.node_customers = Some(g.customers);
                    report.node_messages = Some(g.messages_decided);
                    report.node_live_actors = Some(g.live_actors);
                    report.settle_s = settled.then(|| started.elapsed().as_secs_f64());
                    if !settled {
                        eprintln!(
                            "chorus-loadtest: the node still had {} cross-shard messages and {} queued events {SETTLE_MAX:?} after the run",
                            g.pending_cross_shard, g.queued_events
                        );
                    }
                    return;
                }
            }
            Err(e) => {
                eprintln!("chorus-loadtest: could not read /metrics from {http}: {e:#}");
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Connect, run the streams through warm-up, window and drain, and build the report.
async fn workload_run(mode: &str, endpoints: &[String], https: &[String], pid: Option<u32>, sc: &Scenario, common: &Common) -> anyhow::Result<Report> {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let run_id = (nanos ^ sc.workload.seed.rotate_left(17)) & 0xFFFF_FFFF_FFFF;
    eprintln!(
        "chorus-loadtest: scenario {} seed={} run={run_id:x} customers={} {:?} streams={} batch={} in_flight={} loop={:?} warmup={}s duration={}s",
        sc.name, sc.workload.seed, sc.workload.customers, sc.workload.distribution, sc.streams, sc.batch, sc.in_flight, sc.pacing, sc.warmup_s, sc.duration_s
    );
    if common.transport == "http" && https.is_empty() {
        bail!("--transport http needs the node's HTTP address (--http host:port)");
    }
    let mut channels = Vec::with_capacity(sc.streams);
    if common.transport != "http" {
        for i in 0..sc.streams {
            channels.push(client::connect(&endpoints[i % endpoints.len()], Duration::from_secs(10)).await?);
        }
    }
    let endpoint = endpoints.join(",");
    let start = Instant::now() + Duration::from_millis(50);
    let tl =
        Timeline { start, measure_start: start + sc.warmup(), measure_end: start + sc.warmup() + sc.duration(), drain: Duration::from_secs_f64(common.drain) };
    let shared = Arc::new(Shared { tally: std::sync::Mutex::new(Tally::new()), acked_total: Default::default(), in_flight_batches: Default::default() });
    let sc_arc = Arc::new(sc.clone());
    let mut tasks = Vec::with_capacity(sc.streams);
    match common.transport.as_str() {
        "http" => {
            for i in 0..sc.streams {
                tasks.push(tokio::spawn(unary::drive_http(i, https[i % https.len()].clone(), sc_arc.clone(), run_id, tl, shared.clone())));
            }
        }
        "unary" => {
            for (i, ch) in channels.into_iter().enumerate() {
                tasks.push(tokio::spawn(unary::drive_grpc(i, ch, sc_arc.clone(), run_id, tl, shared.clone())));
            }
        }
        _ => {
            for (i, ch) in channels.into_iter().enumerate() {
                tasks.push(tokio::spawn(client::drive_stream(i, ch, sc_arc.clone(), run_id, tl, shared.clone())));
            }
        }
    }
    let progress = tokio::spawn(client::progress(shared.clone(), tl, tl.measure_end + tl.drain, pid.map(|p| p.to_string())));
    let mut node_tracker = pid.map(|p| Tracker::new(p.to_string()));
    let mut client_tracker = Tracker::new("self");
    client::sample_window(tl, &mut node_tracker, &mut client_tracker).await;
    for t in tasks {
        t.await.context("a stream task panicked")?;
    }
    progress.abort();
    let measured_s = tl.measure_end.duration_since(tl.measure_start).as_secs_f64();
    let tally = shared.tally.lock().expect("tally lock");
    let mut report = Report::build(mode, &endpoint, run_id, sc, measured_s, &tally, node_tracker.as_ref().and_then(|t| t.usage()), client_tracker.usage());
    report.transport = common.transport.clone();
    Ok(report)
}

/// Each shard's newest raft term among the nodes that answer.
async fn newest_terms(https: &[String]) -> std::collections::BTreeMap<u32, u64> {
    let mut out = std::collections::BTreeMap::new();
    for h in https {
        if let Ok(g) = node::scrape(h).await {
            for (s, t) in g.raft_terms {
                let e = out.entry(s).or_insert(t);
                *e = (*e).max(t);
            }
        }
    }
    out
}

/// A free loopback port (bound, then released for a node to take).
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind a free port")?;
    Ok(l.local_addr().context("local address")?.port())
}
