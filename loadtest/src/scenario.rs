//! Scenarios: the workload (what events) plus the traffic shape (streams, batch size,
//! open or closed loop, warm-up, duration), from defaults (W1), a TOML file and flags,
//! in that order, then validated. No I/O besides reading the TOML file.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::workload::{Distribution, MixEntry, Workload, w1_mix};

/// Largest batch the loadtest will send (the node's default `batch_events_max` is 10,000).
pub const BATCH_EVENTS_MAX: usize = 10_000;
/// Most concurrent streams.
pub const STREAMS_MAX: usize = 256;
/// Most batches in flight on one stream (the node serves 16 concurrently per stream by
/// default and holds further ones back with HTTP/2 flow control).
pub const IN_FLIGHT_MAX: usize = 1024;

/// A whole scenario as read from TOML (every field optional; W1 defaults).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    pub name: Option<String>,
    pub customers: Option<u64>,
    pub distribution: Option<Distribution>,
    pub zipf_s: Option<f64>,
    pub seed: Option<u64>,
    pub second_identity_ratio: Option<f64>,
    pub payload_bytes: Option<usize>,
    pub streams: Option<usize>,
    pub batch: Option<usize>,
    pub in_flight: Option<usize>,
    pub rate: Option<f64>,
    pub warmup_s: Option<f64>,
    pub duration_s: Option<f64>,
    pub shards: Option<u32>,
    /// `[[event]] name = "…" weight = 60 revenue = false`
    #[serde(default, rename = "event")]
    pub events: Vec<MixEntry>,
}

impl ScenarioFile {
    pub fn load(path: &Path) -> anyhow::Result<ScenarioFile> {
        let text = std::fs::read_to_string(path).with_context(|| format!("read scenario {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parse scenario {}", path.display()))
    }

    /// Layer `over` on top of `self` (fields set in `over` win).
    pub fn overlay(mut self, over: ScenarioFile) -> ScenarioFile {
        macro_rules! take {
            ($($f:ident),*) => { $( if over.$f.is_some() { self.$f = over.$f; } )* };
        }
        take!(name, customers, distribution, zipf_s, seed, second_identity_ratio, payload_bytes, streams, batch, in_flight, rate, warmup_s, duration_s, shards);
        if !over.events.is_empty() {
            self.events = over.events;
        }
        self
    }
}

/// How batches are paced.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Loop {
    /// Keep `in_flight` batches outstanding per stream; send the next on each ack.
    Closed,
    /// Send at a fixed total rate regardless of acks (latency is measured from each
    /// batch's scheduled time, so a stalled node shows up as latency, not as a lower
    /// rate); at most `in_flight` batches outstanding per stream.
    Open { events_per_s: f64 },
}

/// A resolved, validated scenario.
#[derive(Clone, Debug, Serialize)]
pub struct Scenario {
    pub name: String,
    pub workload: Workload,
    pub streams: usize,
    pub batch: usize,
    pub in_flight: usize,
    #[serde(rename = "loop")]
    pub pacing: Loop,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Shards for a node that bench mode starts (ignored by `run`).
    pub shards: u32,
}

impl Scenario {
    /// W1 defaults < `file` (already layered with flags by the caller).
    pub fn resolve(f: ScenarioFile) -> anyhow::Result<Scenario> {
        let seed = f.seed.unwrap_or(0x5EED_C0DE);
        let s = Scenario {
            name: f.name.unwrap_or_else(|| "W1".into()),
            workload: Workload {
                customers: f.customers.unwrap_or(100_000),
                distribution: f.distribution.unwrap_or(Distribution::Zipf),
                zipf_s: f.zipf_s.unwrap_or(1.0),
                seed,
                second_identity_ratio: f.second_identity_ratio.unwrap_or(0.30),
                payload_bytes: f.payload_bytes.unwrap_or(160),
                mix: if f.events.is_empty() { w1_mix() } else { f.events },
            },
            streams: f.streams.unwrap_or(4),
            batch: f.batch.unwrap_or(500),
            // Closed loop: a small window keeps latency honest; open loop: a wide cap so
            // the schedule, not the cap, sets the pace.
            in_flight: f.in_flight.unwrap_or(if f.rate.is_some() { 64 } else { 2 }),
            pacing: match f.rate {
                Some(r) => Loop::Open { events_per_s: r },
                None => Loop::Closed,
            },
            warmup_s: f.warmup_s.unwrap_or(5.0),
            duration_s: f.duration_s.unwrap_or(30.0),
            shards: f.shards.unwrap_or(64),
        };
        s.validate()?;
        Ok(s)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let w = &self.workload;
        if w.customers == 0 {
            bail!("customers must be at least 1");
        }
        if !(w.zipf_s > 0.0 && w.zipf_s.is_finite()) {
            bail!("zipf_s must be a positive number, got {}", w.zipf_s);
        }
        if !(0.0..=1.0).contains(&w.second_identity_ratio) {
            bail!("second_identity_ratio must be within 0..=1, got {}", w.second_identity_ratio);
        }
        if w.payload_bytes > 1 << 20 {
            bail!("payload_bytes must be at most 1 MiB, got {}", w.payload_bytes);
        }
        if w.mix.iter().any(|m| !(m.weight >= 0.0 && m.weight.is_finite())) || w.mix.iter().map(|m| m.weight).sum::<f64>() <= 0.0 {
            bail!("event weights must be non-negative and not all zero");
        }
        if !(1..=STREAMS_MAX).contains(&self.streams) {
            bail!("streams must be within 1..={STREAMS_MAX}, got {}", self.streams);
        }
        if !(1..=BATCH_EVENTS_MAX).contains(&self.batch) {
            bail!("batch must be within 1..={BATCH_EVENTS_MAX}, got {}", self.batch);
        }
        if !(1..=IN_FLIGHT_MAX).contains(&self.in_flight) {
            bail!("in_flight must be within 1..={IN_FLIGHT_MAX}, got {}", self.in_flight);
        }
        if let Loop::Open { events_per_s } = self.pacing
            && !(events_per_s > 0.0 && events_per_s.is_finite())
        {
            bail!("rate must be a positive number of events per second, got {events_per_s}");
        }
        if !(self.warmup_s >= 0.0 && self.warmup_s.is_finite() && self.duration_s > 0.0 && self.duration_s.is_finite()) {
            bail!("warmup_s must be ≥ 0 and duration_s > 0");
        }
        if self.shards == 0 {
            bail!("shards must be at least 1");
        }
        Ok(())
    }

    pub fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup_s)
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_w1() {
        let s = Scenario::resolve(ScenarioFile::default()).unwrap();
        assert_eq!(s.workload.customers, 100_000);
        assert_eq!(s.workload.distribution, Distribution::Zipf);
        assert_eq!(s.workload.mix.len(), 5);
        assert_eq!((s.streams, s.batch), (4, 500));
        assert_eq!(s.pacing, Loop::Closed);
    }

    #[test]
    fn toml_then_flags() {
        let file: ScenarioFile = toml::from_str(
            r#"
            name = "uniform-small"
            customers = 10
            distribution = "uniform"
            rate = 1000.0
            streams = 2
            [[event]]
            name = "Signed Up"
            weight = 1
            "#,
        )
        .unwrap();
        let flags = ScenarioFile { streams: Some(3), ..Default::default() };
        let s = Scenario::resolve(file.overlay(flags)).unwrap();
        assert_eq!(s.name, "uniform-small");
        assert_eq!(s.workload.customers, 10);
        assert_eq!(s.workload.distribution, Distribution::Uniform);
        assert_eq!(s.streams, 3);
        assert_eq!(s.pacing, Loop::Open { events_per_s: 1000.0 });
        assert_eq!(s.workload.mix[0].name, "Signed Up");
    }

    #[test]
    fn bad_values_are_refused() {
        for f in [
            ScenarioFile { batch: Some(0), ..Default::default() },
            ScenarioFile { batch: Some(BATCH_EVENTS_MAX + 1), ..Default::default() },
            ScenarioFile { customers: Some(0), ..Default::default() },
            ScenarioFile { rate: Some(-1.0), ..Default::default() },
            ScenarioFile { second_identity_ratio: Some(1.5), ..Default::default() },
        ] {
            assert!(Scenario::resolve(f).is_err());
        }
        assert!(toml::from_str::<ScenarioFile>("unknown = 1").is_err());
    }
}
