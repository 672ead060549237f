//! The final report of a run: built from the tally, printed as a human table or as
//! JSON (`--json`; one object on stdout, stable field names for scripts and
//! BENCHMARKS.md).

use std::fmt::Write as _;

use serde::Serialize;

use crate::client::Tally;
use crate::procstat::Usage;
use crate::scenario::{Loop, Scenario};
use crate::workload::Distribution;

#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    /// Events whose latency was recorded (those of batches sent in the window).
    pub samples: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub mode: String,
    pub endpoint: String,
    pub seed: u64,
    pub run_id: String,
    pub scenario: Scenario,
    /// Length of the measured window actually used for rates, seconds.
    pub measured_s: f64,
    /// Accepted + duplicate results that arrived inside the window, per second.
    pub acked_events_per_s: f64,
    pub acked_in_window: u64,
    pub ack_latency: Latency,
    pub batches_sent: u64,
    pub events_sent: u64,
    pub accepted: u64,
    pub duplicate: u64,
    pub rejected: u64,
    pub retry: u64,
    /// Events of answered batches without a result.
    pub missing: u64,
    /// Events in flight on a stream that broke.
    pub failed: u64,
    /// Events never answered (drain bound passed).
    pub lost: u64,
    pub stream_errors: u64,
    pub unknown_batches: u64,
    pub error_samples: Vec<String>,
    /// The node's RSS and CPU over the window (when its pid is known).
    pub node: Option<Usage>,
    /// This load generator's own CPU over the window (it shares the machine).
    pub client: Option<Usage>,
    /// Customers homed on the node and resident actors, from its /metrics, at the end.
    pub node_customers: Option<u64>,
    pub node_live_actors: Option<u64>,
    /// Messages the node decided (journey and API sends) during the whole run.
    pub node_messages: Option<u64>,
    /// Seconds after the last ack until the node had no queued events and no pending
    /// cross-shard messages (identity claims, merges); `None` if not read or not settled.
    pub settle_s: Option<f64>,
    /// How the bench node ended (bench mode only).
    pub node_exit: Option<String>,
    /// Raft elections during the run, summed over shards (the rise of each shard's
    /// newest term across the cluster's nodes); cluster bench only.
    pub raft_elections: Option<u64>,
    /// How batches travelled: `stream`, `unary` or `http` (`--transport`).
    pub transport: String,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        mode: &str,
        endpoint: &str,
        run_id: u64,
        scenario: &Scenario,
        measured_s: f64,
        t: &Tally,
        node: Option<Usage>,
        client: Option<Usage>,
    ) -> Report {
        let h = &t.latency;
        let ms = |us: u64| us as f64 / 1000.0;
        let q = |p: f64| {
            if h.is_empty() { 0.0 } else { ms(h.value_at_quantile(p)) }
        };
        Report {
            mode: mode.into(),
            endpoint: endpoint.into(),
            seed: scenario.workload.seed,
            run_id: format!("{run_id:x}"),
            scenario: scenario.clone(),
            measured_s,
            acked_events_per_s: t.acked_in_window as f64 / measured_s.max(1e-9),
            acked_in_window: t.acked_in_window,
            ack_latency: Latency {
                samples: h.len(),
                mean_ms: if h.is_empty() { 0.0 } else { h.mean() / 1000.0 },
                p50_ms: q(0.50),
                p90_ms: q(0.90),
                p99_ms: q(0.99),
                p999_ms: q(0.999),
                max_ms: if h.is_empty() { 0.0 } else { ms(h.max()) },
            },
            batches_sent: t.batches_sent,
            events_sent: t.events_sent,
            accepted: t.accepted,
            duplicate: t.duplicate,
            rejected: t.rejected,
            retry: t.retry,
            missing: t.missing,
            failed: t.failed,
            lost: t.lost,
            stream_errors: t.stream_errors,
            unknown_batches: t.unknown_batches,
            error_samples: t.error_samples.clone(),
            node,
            client,
            node_customers: None,
            node_messages: None,
            node_live_actors: None,
            settle_s: None,
            node_exit: None,
            raft_elections: None,
            transport: "stream".into(),
        }
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serializes")
    }

    pub fn human(&self) -> String {
        let s = &self.scenario;
        let w = &s.workload;
        let mut o = String::new();
        let dist = match w.distribution {
            Distribution::Zipf => format!("zipf(s={})", w.zipf_s),
            Distribution::Uniform => "uniform".into(),
        };
        let pacing = match s.pacing {
            Loop::Closed => format!("closed loop, {} batches in flight per stream", s.in_flight),
            Loop::Open { events_per_s } => format!("open loop at {events_per_s:.0} ev/s (≤ {} in flight per stream)", s.in_flight),
        };
        let _ = writeln!(o, "chorus-loadtest {} — scenario {} ({}) seed={} run={}", self.mode, s.name, self.endpoint, self.seed, self.run_id);
        let _ = writeln!(o, "  {} customers {dist}, {:.0}% second identity, properties ~{} B", w.customers, w.second_identity_ratio * 100.0, w.payload_bytes);
        if self.transport == "stream" {
            let _ = writeln!(o, "  {} streams × batch {}, {pacing}", s.streams, s.batch);
        } else {
            let pacing = match s.pacing {
                Loop::Closed => "closed loop".to_string(),
                Loop::Open { events_per_s } => format!("open loop at {events_per_s:.0} ev/s"),
            };
            let _ = writeln!(o, "  {} {} clients × batch {}, one request at a time each, {pacing}", s.streams, self.transport, s.batch);
        }
        let _ = writeln!(
            o,
            "  warm-up {} s, measured {:.1} s{}",
            s.warmup_s,
            self.measured_s,
            if self.mode == "bench" { format!(", {} shards", s.shards) } else { String::new() }
        );
        let row = |o: &mut String, k: &str, v: String| {
            let _ = writeln!(o, "  {k:<28} {v:>14}");
        };
        let _ = writeln!(o, "  {}", "-".repeat(43));
        row(&mut o, "acked events/s", format!("{:.0}", self.acked_events_per_s));
        let l = &self.ack_latency;
        row(&mut o, "ack latency p50", format!("{:.2} ms", l.p50_ms));
        row(&mut o, "ack latency p90", format!("{:.2} ms", l.p90_ms));
        row(&mut o, "ack latency p99", format!("{:.2} ms", l.p99_ms));
        row(&mut o, "ack latency p99.9", format!("{:.2} ms", l.p999_ms));
        row(&mut o, "ack latency max", format!("{:.2} ms", l.max_ms));
        row(&mut o, "ack latency mean", format!("{:.2} ms", l.mean_ms));
        row(&mut o, "events sent (whole run)", self.events_sent.to_string());
        row(&mut o, "accepted / duplicate", format!("{} / {}", self.accepted, self.duplicate));
        row(&mut o, "rejected / retry", format!("{} / {}", self.rejected, self.retry));
        row(&mut o, "missing / failed / lost", format!("{} / {} / {}", self.missing, self.failed, self.lost));
        row(&mut o, "stream errors", self.stream_errors.to_string());
        if let Some(n) = &self.node {
            row(&mut o, "node CPU", format!("{:.0} %", n.cpu_percent));
            row(&mut o, "node RSS start / end", format!("{:.0} / {:.0} MiB", n.rss_mib_start, n.rss_mib_end));
            row(&mut o, "node RSS peak", format!("{:.0} MiB", n.rss_mib_peak));
        }
        if let Some(c) = &self.client {
            row(&mut o, "loadtest CPU", format!("{:.0} %", c.cpu_percent));
        }
        if let (Some(c), Some(a)) = (self.node_customers, self.node_live_actors) {
            row(&mut o, "node customers / live actors", format!("{c} / {a}"));
        }
        if let Some(m) = self.node_messages {
            row(&mut o, "messages decided (node, whole run)", format!("{m}"));
        }
        if let Some(t) = self.settle_s {
            row(&mut o, "cross-shard settle after run", format!("{t:.1} s"));
        }
        if let Some(n) = self.raft_elections {
            row(&mut o, "raft elections during the run (all shards)", format!("{n}"));
        }
        if let Some(e) = &self.node_exit {
            let _ = writeln!(o, "  node: {e}");
        }
        for e in &self.error_samples {
            let _ = writeln!(o, "  error: {e}");
        }
        o
    }
}
