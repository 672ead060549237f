//! Tunables of the decision core; every bound is named `*_max`.

use chorus_types::IdentityLimits;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EngineConfig {
    pub identity_limits: IdentityLimits,
    /// Recent events kept on a profile (SPEC §4.1 default 200).
    pub history_max: usize,
    /// Decisions kept on a profile for `explain` (SPEC §4.1 default 500).
    pub decisions_max: usize,
    /// Days of per-event-name daily counters (SPEC §4.1 default 90).
    pub counter_days_max: u32,
    /// Distinct event names counted per customer; further names are not counted.
    pub counter_names_max: usize,
    /// Attributes kept per profile; further new keys are rejected with a decision.
    pub attributes_max: usize,
    /// Where engagement-tracking links point and the key that signs them.
    pub tracking: crate::render::TrackingConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            identity_limits: IdentityLimits::default(),
            history_max: 200,
            decisions_max: 500,
            counter_days_max: 90,
            counter_names_max: 256,
            attributes_max: 512,
            tracking: Default::default(),
        }
    }
}
