//! The memory scenario (issue 6, SPEC §12 "≤ 1 KB RSS per hot customer, ≤ 150 B per
//! dormant one"): create N customers (one event each) and wait until every customer
//! actor is passivated (RSS with the store's memtables and block cache warm); restart the
//! node on the same data and read its RSS (dormant customers: what the store keeps in
//! memory for them); touch H of them and read the RSS while their actors are resident,
//! then again once they are passivated (hot customers: the difference).
//!
//! Figures are RSS differences divided by customers, so everything the node holds
//! because of them counts (actors, decoded states, index blocks, allocator slack).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use chorus_proto::v1;
use serde::Serialize;
use tonic::transport::Channel;

use crate::bulk;
use crate::client;
use crate::node;
use crate::procstat;

/// How long the allocator takes to return freed pages to the OS (jemalloc's decay is
/// 10 s; its background threads do it).
const DECAY: Duration = Duration::from_secs(12);

/// Scenario parameters.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryOpts {
    pub customers: u64,
    pub hot: u64,
    pub shards: u32,
    pub streams: usize,
    pub batch: usize,
    pub in_flight: usize,
    pub payload_bytes: usize,
    /// The node's `actor_idle`: how long an untouched actor stays resident.
    pub actor_idle_s: u64,
}

impl MemoryOpts {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.customers == 0 || self.hot == 0 || self.hot > self.customers {
            bail!("--customers must be at least 1 and --hot within 1..=customers");
        }
        if self.streams == 0 || self.batch == 0 || self.in_flight == 0 {
            bail!("--streams, --batch and --in-flight must be at least 1");
        }
        if self.actor_idle_s == 0 {
            bail!("--actor-idle must be at least 1 s");
        }
        Ok(())
    }

    /// The node's `[shards]` table: every hot customer fits under the per-shard cap
    /// (customers hash evenly; 1.5× plus slack covers the spread), and idle actors go
    /// after `actor_idle_s`.
    pub fn node_config(&self) -> String {
        let per_shard = self.hot.div_ceil(u64::from(self.shards)) * 3 / 2 + 256;
        format!("[shards]\nactor_idle = \"{}s\"\nlive_actors_max = {per_shard}\n", self.actor_idle_s)
    }
}

/// What the scenario measured.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryReport {
    pub scenario: &'static str,
    pub opts: MemoryOpts,
    /// RSS of the fresh node before any customer existed.
    pub rss_empty_bytes: u64,
    pub create_events: u64,
    pub create_seconds: f64,
    pub create_events_per_s: f64,
    pub create_retried: u64,
    /// `chorus_shard_customers` summed once settled.
    pub customers_counted: u64,
    /// RSS with every customer dormant (no live actor), store memtables and block cache
    /// warm from creating them.
    pub rss_dormant_bytes: u64,
    pub warm_bytes_per_customer: f64,
    /// Bytes of the data directory with every customer created.
    pub disk_bytes: u64,
    pub disk_bytes_per_customer: f64,
    /// RSS after a restart on the same data: every customer dormant, caches cold.
    pub rss_restarted_bytes: u64,
    /// (restarted − empty) ÷ customers.
    pub dormant_bytes_per_customer: f64,
    pub hot_events: u64,
    pub hot_seconds: f64,
    /// Live actors when the hot RSS was read.
    pub live_actors: u64,
    pub rss_hot_bytes: u64,
    /// RSS once the touched customers were passivated again.
    pub rss_passivated_bytes: u64,
    /// (hot − passivated again) ÷ live actors.
    pub hot_bytes_per_customer: f64,
}

impl MemoryReport {
    pub fn human(&self) -> String {
        let mib = |b: u64| b as f64 / 1048576.0;
        let o = &self.opts;
        format!(
            "chorus-loadtest memory — {} customers ({} hot), {} shards, properties ~{} B, actor_idle {} s\n\
             \x20 -------------------------------------------\n\
             \x20 node RSS, no customers              {:>10.1} MiB\n\
             \x20 created                             {:>10} events in {:.1} s ({:.0} ev/s, {} retried)\n\
             \x20 customers counted by the node       {:>10}\n\
             \x20 node RSS, all dormant, store warm   {:>10.1} MiB ({:.0} B per customer)\n\
             \x20 data directory                      {:>10.1} MiB ({:.0} B per customer)\n\
             \x20 node RSS after a restart            {:>10.1} MiB\n\
             \x20 RSS per dormant customer            {:>10.0} B\n\
             \x20 touched again                       {:>10} events in {:.1} s\n\
             \x20 live actors                         {:>10}\n\
             \x20 node RSS, hot resident              {:>10.1} MiB\n\
             \x20 node RSS, passivated again          {:>10.1} MiB\n\
             \x20 RSS per hot customer                {:>10.0} B\n",
            o.customers,
            o.hot,
            o.shards,
            o.payload_bytes,
            o.actor_idle_s,
            mib(self.rss_empty_bytes),
            self.create_events,
            self.create_seconds,
            self.create_events_per_s,
            self.create_retried,
            self.customers_counted,
            mib(self.rss_dormant_bytes),
            self.warm_bytes_per_customer,
            mib(self.disk_bytes),
            self.disk_bytes_per_customer,
            mib(self.rss_restarted_bytes),
            self.dormant_bytes_per_customer,
            self.hot_events,
            self.hot_seconds,
            self.live_actors,
            mib(self.rss_hot_bytes),
            mib(self.rss_passivated_bytes),
            self.hot_bytes_per_customer,
        )
    }
}

/// One event for customer `i`: a track with a `user_id` and padded properties.
fn event(i: u64, name: &str, tag: &str, payload_bytes: usize) -> v1::Event {
    let mut props = format!(r#"{{"plan":"p-{}","seq":{i}"#, i % 5);
    let room = payload_bytes.saturating_sub(props.len() + 2);
    if room > 10 {
        props.push_str(r#","pad":""#);
        props.push_str(&"x".repeat(room - 9));
        props.push('"');
    }
    props.push('}');
    v1::Event {
        message_id: format!("mem-{tag}-{i}"),
        r#type: "track".into(),
        name: name.into(),
        identities: vec![v1::Identity { kind: "user_id".into(), value: format!("m-{i}") }],
        properties_json: props,
        ..Default::default()
    }
}

/// Batches of one event per customer in `0..customers`.
pub fn customer_batches(
    customers: u64,
    batch: usize,
    name: &'static str,
    tag: &'static str,
    payload_bytes: usize,
) -> (u64, impl Fn(u64) -> Vec<v1::Event> + Send + Sync + 'static) {
    let b = batch as u64;
    (customers.div_ceil(b), move |n: u64| (n * b..((n + 1) * b).min(customers)).map(|i| event(i, name, tag, payload_bytes)).collect())
}

/// Wait (bounded) until `done` holds for the node's gauges; returns the last reading.
pub async fn wait_gauges(http: &str, what: &str, limit: Duration, done: impl Fn(&node::NodeGauges) -> bool) -> anyhow::Result<node::NodeGauges> {
    let until = Instant::now() + limit;
    loop {
        let g = node::scrape(http).await?;
        if done(&g) {
            return Ok(g);
        }
        if Instant::now() > until {
            bail!("{what} did not happen within {limit:?}: {g:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The RSS of `pid` (the lowest of three readings 0.5 s apart, so a transient
/// allocation burst does not count).
pub async fn settled_rss(pid: u32) -> anyhow::Result<u64> {
    let mut best = u64::MAX;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = procstat::sample(&pid.to_string()).ok_or_else(|| anyhow::anyhow!("cannot read /proc/{pid}"))?;
        best = best.min(s.rss_bytes);
    }
    Ok(best)
}

/// Total size of the files under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// Run the scenario against a node started with [`MemoryOpts::node_config`].
pub async fn run(opts: &MemoryOpts, channels: &[Channel], node: &mut node::Node) -> anyhow::Result<MemoryReport> {
    let mib = |b: u64| b as f64 / 1048576.0;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_empty = settled_rss(node.pid).await?;
    eprintln!("chorus-loadtest memory: node RSS with no customers {:.1} MiB; creating {} customers", mib(rss_empty), opts.customers);

    let (batches, make) = customer_batches(opts.customers, opts.batch, "Signed Up", "c", opts.payload_bytes);
    let created = bulk::load("create", channels, batches, opts.in_flight, make).await?;
    eprintln!("chorus-loadtest memory: created in {:.1} s ({:.0} ev/s); waiting for every actor to be passivated", created.seconds, created.rate());
    let idle = Duration::from_secs(opts.actor_idle_s);
    let passivation_max = idle * 3 + Duration::from_secs(120);
    let g = wait_gauges(&node.http, "passivation of every customer actor", passivation_max, |g| {
        g.queued_events == 0 && g.pending_cross_shard == 0 && g.live_actors == 0
    })
    .await?;
    if g.customers != opts.customers {
        bail!("the node counts {} customers, {} were created", g.customers, opts.customers);
    }
    let rss_dormant = settled_rss(node.pid).await?;
    let disk = dir_bytes(&node.data_dir);

    // Dormant customers cost what the store keeps in memory for them: read it on a
    // restarted node, before memtables and the block cache fill again.
    eprintln!("chorus-loadtest memory: all dormant: RSS {:.1} MiB (memtables and block cache warm); restarting the node", mib(rss_dormant));
    let exit = node.restart().await?;
    wait_gauges(&node.http, "the restarted node to count every customer", Duration::from_secs(300), |g| g.customers == opts.customers).await?;
    let rss_restarted = settled_rss(node.pid).await?;
    eprintln!("chorus-loadtest memory: restarted ({exit}): RSS {:.1} MiB; touching {} customers", mib(rss_restarted), opts.hot);

    // Hot customers cost their resident actors: the RSS while they are resident minus
    // the RSS once they are passivated again (same store contents, no writes between).
    let mut fresh = Vec::with_capacity(channels.len());
    for _ in channels {
        fresh.push(client::connect(&node.endpoint(), Duration::from_secs(30)).await?);
    }
    let (batches, make) = customer_batches(opts.hot, opts.batch, "App Opened", "h", opts.payload_bytes);
    let touched = bulk::load("touch", &fresh, batches, opts.in_flight, make).await?;
    wait_gauges(&node.http, "the touched customers to be applied", Duration::from_secs(120), |g| g.queued_events == 0).await?;
    let rss_hot = settled_rss(node.pid).await?;
    let live = node::scrape(&node.http).await?.live_actors;
    if touched.seconds + 3.0 > opts.actor_idle_s as f64 {
        eprintln!("chorus-loadtest memory: warning: touching took {:.1} s, close to actor_idle; some actors may have gone before the reading", touched.seconds);
    }
    eprintln!("chorus-loadtest memory: {live} hot: RSS {:.1} MiB; waiting for them to be passivated", mib(rss_hot));
    wait_gauges(&node.http, "passivation of the touched customers", passivation_max, |g| g.live_actors == 0).await?;
    // The allocator returns freed pages after its decay time (about 10 s).
    tokio::time::sleep(DECAY).await;
    let rss_passivated = settled_rss(node.pid).await?;
    eprintln!("chorus-loadtest memory: passivated again: RSS {:.1} MiB", mib(rss_passivated));
    Ok(MemoryReport {
        scenario: "memory",
        opts: opts.clone(),
        rss_empty_bytes: rss_empty,
        create_events: created.events,
        create_seconds: created.seconds,
        create_events_per_s: created.rate(),
        create_retried: created.retried,
        customers_counted: g.customers,
        rss_dormant_bytes: rss_dormant,
        warm_bytes_per_customer: rss_dormant.saturating_sub(rss_empty) as f64 / opts.customers as f64,
        disk_bytes: disk,
        disk_bytes_per_customer: disk as f64 / opts.customers as f64,
        rss_restarted_bytes: rss_restarted,
        dormant_bytes_per_customer: rss_restarted.saturating_sub(rss_empty) as f64 / opts.customers as f64,
        hot_events: touched.events,
        hot_seconds: touched.seconds,
        live_actors: live,
        rss_hot_bytes: rss_hot,
        rss_passivated_bytes: rss_passivated,
        hot_bytes_per_customer: rss_hot.saturating_sub(rss_passivated) as f64 / live.max(1) as f64,
    })
}
