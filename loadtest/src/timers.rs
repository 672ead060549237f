//! The timer scenario (issue 6, SPEC §12 "10 million pending timers per node"):
//! publish J journeys that each enter on `Timer Seed` and wait W seconds, send one
//! `Timer Seed` per customer for N customers (J × N pending waits), read the node's RSS
//! and data directory once every customer actor is passivated (bytes per timer), then
//! let the waits come due and read how late they fired from the node's
//! `chorus_timer_fire_lateness_ms` histogram.

use std::time::{Duration, Instant};

use anyhow::bail;
use chorus_proto::v1;
use serde::Serialize;
use tonic::transport::Channel;

use crate::bulk;
use crate::memory::{customer_batches, dir_bytes, settled_rss, wait_gauges};
use crate::node;

/// Scenario parameters.
#[derive(Clone, Debug, Serialize)]
pub struct TimerOpts {
    pub customers: u64,
    pub journeys: u32,
    pub wait_s: u64,
    pub shards: u32,
    pub streams: usize,
    pub batch: usize,
    pub in_flight: usize,
    pub actor_idle_s: u64,
}

impl TimerOpts {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.customers == 0 || self.journeys == 0 || self.journeys > 100 {
            bail!("--customers must be at least 1 and --journeys within 1..=100");
        }
        if self.wait_s == 0 || self.actor_idle_s == 0 {
            bail!("--wait and --actor-idle must be at least 1 s");
        }
        if self.streams == 0 || self.batch == 0 || self.in_flight == 0 {
            bail!("--streams, --batch and --in-flight must be at least 1");
        }
        Ok(())
    }

    pub fn timers(&self) -> u64 {
        self.customers * u64::from(self.journeys)
    }

    pub fn node_config(&self) -> String {
        format!("[shards]\nactor_idle = \"{}s\"\n", self.actor_idle_s)
    }
}

/// Journey `k` of the scenario: enter on `Timer Seed`, wait, set an attribute.
pub fn journey(k: u32, wait_s: u64) -> String {
    format!(
        "id: timers-{k}\nname: Timer scenario {k}\ncategory: transactional\npriority: 50\nentry:\n  event: Timer Seed\nsteps:\n  - id: hold\n    wait: {wait_s}s\n    next: done\n  - id: done\n    update: {{ set: {{ timer_{k}_done: true }} }}\n"
    )
}

/// What the scenario measured.
#[derive(Clone, Debug, Serialize)]
pub struct TimerReport {
    pub scenario: &'static str,
    pub opts: TimerOpts,
    pub rss_empty_bytes: u64,
    pub create_events: u64,
    pub create_seconds: f64,
    pub create_events_per_s: f64,
    pub create_retried: u64,
    /// `chorus_shard_pending_timers` summed once every seed was applied.
    pub pending_timers: u64,
    /// RSS with every timer pending and every customer dormant.
    pub rss_pending_bytes: u64,
    pub rss_bytes_per_timer: f64,
    pub disk_bytes: u64,
    pub disk_bytes_per_timer: f64,
    /// RSS after a restart on the same data with every timer pending (caches cold);
    /// 0 when not read (the waits were too short to restart before they came due).
    pub rss_restarted_bytes: u64,
    pub rss_restarted_bytes_per_timer: f64,
    /// Whether the first waits came due before every seed was sent (then lateness
    /// includes contention with the creation load).
    pub due_before_created: bool,
    /// Seconds from the first wait's due time until no timer was pending.
    pub fire_seconds: f64,
    pub fired_per_s: f64,
    pub fired: u64,
    /// Lateness percentiles as the upper bound of their histogram bucket (ms).
    pub lateness_p50_ms: f64,
    pub lateness_p99_ms: f64,
    pub lateness_mean_ms: f64,
    pub lateness_max_ms: u64,
    pub lateness_buckets: Vec<(f64, u64)>,
}

impl TimerReport {
    pub fn human(&self) -> String {
        let mib = |b: u64| b as f64 / 1048576.0;
        let o = &self.opts;
        let le = |v: f64| {
            if v.is_finite() { format!("≤ {v:.0} ms") } else { "> 60 s".into() }
        };
        format!(
            "chorus-loadtest timers — {} customers × {} journeys = {} waits of {} s, {} shards\n\
             \x20 -------------------------------------------\n\
             \x20 node RSS, no timers                 {:>10.1} MiB\n\
             \x20 seeds sent                          {:>10} events in {:.1} s ({:.0} ev/s, {:.0} timers/s, {} retried)\n\
             \x20 pending timers counted by the node  {:>10}\n\
             \x20 node RSS, all pending, all dormant  {:>10.1} MiB ({:.1} B per timer)\n\
             \x20 data directory                      {:>10.1} MiB ({:.1} B per timer)\n\
             \x20 node RSS after a restart            {}\n\
             \x20 fired                               {:>10} in {:.1} s after the first came due ({:.0}/s){}\n\
             \x20 lateness p50 / p99 / mean / max     {} / {} / {:.0} ms / {} ms\n",
            o.customers,
            o.journeys,
            o.timers(),
            o.wait_s,
            o.shards,
            mib(self.rss_empty_bytes),
            self.create_events,
            self.create_seconds,
            self.create_events_per_s,
            self.create_events_per_s * f64::from(o.journeys),
            self.create_retried,
            self.pending_timers,
            mib(self.rss_pending_bytes),
            self.rss_bytes_per_timer,
            mib(self.disk_bytes),
            self.disk_bytes_per_timer,
            if self.rss_restarted_bytes == 0 {
                "not read (the waits were too short to restart before they came due)".to_string()
            } else {
                format!("{:>10.1} MiB ({:.1} B per timer)", mib(self.rss_restarted_bytes), self.rss_restarted_bytes_per_timer)
            },
            self.fired,
            self.fire_seconds,
            self.fired_per_s,
            if self.due_before_created { " (the first came due before all seeds were sent)" } else { "" },
            le(self.lateness_p50_ms),
            le(self.lateness_p99_ms),
            self.lateness_mean_ms,
            self.lateness_max_ms,
        )
    }
}

/// The upper bound of the bucket holding quantile `q` of a cumulative histogram.
pub fn bucket_quantile(buckets: &[(f64, u64)], q: f64) -> f64 {
    let total = buckets.last().map(|b| b.1).unwrap_or(0);
    if total == 0 {
        return 0.0;
    }
    let want = (q * total as f64).ceil().max(1.0) as u64;
    buckets.iter().find(|b| b.1 >= want).map(|b| b.0).unwrap_or(f64::INFINITY)
}

/// Publish the journeys, run the scenario, report.
pub async fn run(opts: &TimerOpts, channels: &[Channel], node: &mut node::Node) -> anyhow::Result<TimerReport> {
    let (pid, http, data_dir) = (node.pid, node.http.clone(), node.data_dir.clone());
    let http = http.as_str();
    let data_dir = data_dir.as_path();
    let mut journeys = v1::journeys_client::JourneysClient::new(channels[0].clone());
    for k in 0..opts.journeys {
        let req = v1::ApplyJourneyRequest { source: journey(k, opts.wait_s), file_name: format!("timers-{k}.yaml") };
        journeys.apply(req).await.map_err(|s| anyhow::anyhow!("apply journey timers-{k}: {}", s.message()))?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_empty = settled_rss(pid).await?;
    eprintln!("chorus-loadtest timers: {} journeys live; seeding {} customers ({} waits of {} s)", opts.journeys, opts.customers, opts.timers(), opts.wait_s);

    let first_due = Instant::now() + Duration::from_secs(opts.wait_s);
    let (batches, make) = customer_batches(opts.customers, opts.batch, "Timer Seed", "t", 64);
    let created = bulk::load("seed", channels, batches, opts.in_flight, make).await?;
    let due_before_created = Instant::now() > first_due;
    let want = opts.timers();
    let g = wait_gauges(http, "every seed to be applied", Duration::from_secs(600), |g| {
        g.queued_events == 0 && (g.pending_timers >= want || g.timer_lateness_count > 0)
    })
    .await?;
    let pending = g.pending_timers;
    eprintln!("chorus-loadtest timers: {pending} timers pending after {:.1} s; waiting for every actor to be passivated", created.seconds);
    let idle = Duration::from_secs(opts.actor_idle_s);
    let (rss_pending, disk) = if due_before_created {
        eprintln!("chorus-loadtest timers: warning: waits came due during seeding; RSS per timer is not read (raise --wait)");
        (0, 0)
    } else {
        let passivated =
            wait_gauges(http, "passivation of every customer actor", idle * 3 + Duration::from_secs(120), |g| g.live_actors == 0 || g.timer_lateness_count > 0)
                .await?;
        if passivated.timer_lateness_count > 0 {
            eprintln!(
                "chorus-loadtest timers: warning: waits came due before every actor was passivated; RSS per timer is read with live actors (raise --wait)"
            );
        }
        (settled_rss(pid).await?, dir_bytes(data_dir))
    };
    // A restart on the same data: RSS with every timer pending and caches cold, and the
    // waits then fire from the restarted node (they are durable).
    let mut rss_restarted = 0;
    if !due_before_created && Instant::now() + Duration::from_secs(30) < first_due {
        eprintln!("chorus-loadtest timers: RSS {:.1} MiB with {pending} timers; restarting the node", rss_pending as f64 / 1048576.0);
        node.restart().await?;
        let g = wait_gauges(&node.http, "the restarted node to count every timer", Duration::from_secs(300), |g| {
            g.pending_timers == pending || g.timer_lateness_count > 0
        })
        .await?;
        if g.timer_lateness_count == 0 {
            rss_restarted = settled_rss(node.pid).await?;
        }
        eprintln!("chorus-loadtest timers: restarted: RSS {:.1} MiB, {} timers pending", rss_restarted as f64 / 1048576.0, g.pending_timers);
    }
    let http = node.http.clone();
    let http = http.as_str();
    eprintln!("chorus-loadtest timers: waiting for the timers to come due");

    let now = Instant::now();
    if first_due > now {
        tokio::time::sleep(first_due - now).await;
    }
    let fire_started = first_due;
    let mut last_print = Instant::now();
    let fired = loop {
        let g = node::scrape(http).await?;
        if g.pending_timers == 0 && g.timer_lateness_count >= want {
            break g;
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            eprintln!("[{:>6.0}s fire] {} timers fired, {} pending", fire_started.elapsed().as_secs_f64(), g.timer_lateness_count, g.pending_timers);
            last_print = Instant::now();
        }
        if fire_started.elapsed() > Duration::from_secs(opts.wait_s.max(60) * 4 + want / 1_000) {
            bail!("timers were still pending long after they came due: {g:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let fire_seconds = fire_started.elapsed().as_secs_f64();
    let count = fired.timer_lateness_count;
    Ok(TimerReport {
        scenario: "timers",
        opts: opts.clone(),
        rss_empty_bytes: rss_empty,
        create_events: created.events,
        create_seconds: created.seconds,
        create_events_per_s: created.rate(),
        create_retried: created.retried,
        pending_timers: pending,
        rss_pending_bytes: rss_pending,
        rss_bytes_per_timer: rss_pending.saturating_sub(rss_empty) as f64 / want as f64,
        disk_bytes: disk,
        disk_bytes_per_timer: disk as f64 / want as f64,
        rss_restarted_bytes: rss_restarted,
        rss_restarted_bytes_per_timer: rss_restarted.saturating_sub(rss_empty) as f64 / want as f64,
        due_before_created,
        fire_seconds,
        fired_per_s: count as f64 / fire_seconds.max(1e-9),
        fired: count,
        lateness_p50_ms: bucket_quantile(&fired.timer_lateness, 0.50),
        lateness_p99_ms: bucket_quantile(&fired.timer_lateness, 0.99),
        lateness_mean_ms: fired.timer_lateness_sum_ms as f64 / count.max(1) as f64,
        lateness_max_ms: fired.timer_lateness_max_ms,
        lateness_buckets: fired.timer_lateness,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_cumulative_buckets() {
        let b = vec![(5.0, 10), (10.0, 90), (25.0, 99), (f64::INFINITY, 100)];
        assert_eq!(bucket_quantile(&b, 0.05), 5.0);
        assert_eq!(bucket_quantile(&b, 0.50), 10.0);
        assert_eq!(bucket_quantile(&b, 0.99), 25.0);
        assert_eq!(bucket_quantile(&b, 1.0), f64::INFINITY);
        assert_eq!(bucket_quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn the_timer_journey_is_valid() {
        let j = chorus_engine::journey::load_journey(&journey(3, 90), &Default::default());
        assert!(j.is_ok(), "{j:?}");
    }
}
