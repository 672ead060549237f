//! The journey definition (SPEC §6) as the core sees it once a file is parsed and
//! validated. Serializable so versions can be stored and replicated.

use chorus_types::Category;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JourneyDef {
    pub id: String,
    pub name: String,
    pub category: Category,
    /// 0–100; higher wins arbitration (SPEC §5.2).
    pub priority: u8,
    pub entry: Entry,
    pub exit: Vec<ExitRule>,
    pub goal: Option<Goal>,
    pub steps: Vec<Step>,
    /// Journey to enroll a converting customer in.
    pub on_goal_trigger: Option<String>,
    /// Old step id → new step id for customers in flight on an earlier version.
    pub migrate: BTreeMap<String, String>,
    /// Per-journey caps: most sends per entry, most sends per day.
    pub sends_per_entry_max: Option<u32>,
    pub sends_per_day_max: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Trigger {
    /// An event with this name (and the entry filter) enters the customer.
    Event(String),
    /// Becoming a member of this audience enters the customer.
    Audience(String),
    /// Only the API enrolls customers.
    Api,
    /// Every `every_ms` (or once at `at_ms`), the audience's members enter.
    Schedule { audience: String, every_ms: Option<i64>, at: Option<String> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reentry {
    Never,
    Always,
    Cooldown { ms: i64 },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub trigger: Trigger,
    /// CEL condition on the triggering event and profile.
    pub filter: Option<String>,
    pub reentry: Reentry,
    /// Concurrent instances per customer (default 1).
    pub max_concurrent: u32,
    /// CEL expression naming an instance (e.g. the order id); default: the journey id.
    pub entry_key: Option<String>,
    /// Percent (0–100) of customers kept in the control group.
    pub holdout_percent: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExitRule {
    pub event: String,
    pub filter: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Goal {
    pub event: String,
    pub filter: Option<String>,
    pub within_ms: i64,
    /// CEL expression for the conversion value (e.g. `event.properties.revenue`).
    pub value: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub id: String,
    pub kind: StepKind,
    /// The step that follows (none: the journey ends after this step).
    pub next: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WhenCapped {
    Skip,
    Defer,
    Fallback,
}

/// What a send does when it falls in the channel's quiet hours (SPEC §5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WhenQuiet {
    /// Wait for the end of the quiet hours (default).
    Defer,
    Skip,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WaitSpec {
    Duration {
        ms: i64,
    },
    /// `next 10:00`, `next monday 09:00` in the customer's time zone.
    LocalTime {
        weekday: Option<u8>,
        hour: u8,
        minute: u8,
    },
    /// Send-time optimization: the customer's most likely hour to open.
    BestHour,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Branch {
    pub when: String,
    pub next: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventMatch {
    pub event: String,
    pub filter: Option<String>,
    pub next: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StepKind {
    Send { channel: String, template: String, fallback: Vec<String>, when_capped: WhenCapped, recheck: bool, topic: Option<String>, when_quiet: WhenQuiet },
    Wait(WaitSpec),
    WaitFor { events: Vec<EventMatch>, branches: Vec<Branch>, timeout_ms: i64, on_timeout: String },
    Branch { branches: Vec<Branch>, otherwise: String },
    Split { paths: Vec<(u32, String)> },
    Update { set: BTreeMap<String, chorus_types::json::JsonValue>, unset: Vec<String> },
    Webhook { template: String },
    Trigger { journey: String },
    Exit,
}

impl StepKind {
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Send { .. } => "send",
            StepKind::Wait(_) => "wait",
            StepKind::WaitFor { .. } => "wait_for",
            StepKind::Branch { .. } => "branch",
            StepKind::Split { .. } => "split",
            StepKind::Update { .. } => "update",
            StepKind::Webhook { .. } => "webhook",
            StepKind::Trigger { .. } => "trigger",
            StepKind::Exit => "exit",
        }
    }

    /// Whether the customer stops here until time passes or an event arrives.
    pub fn pauses(&self) -> bool {
        matches!(self, StepKind::Wait(_) | StepKind::WaitFor { .. })
    }
}

impl Step {
    /// Every step this one can lead to, with the path of the field naming it.
    pub fn successors(&self) -> Vec<(&str, String)> {
        let mut out: Vec<(&str, String)> = Vec::new();
        if let Some(n) = &self.next {
            out.push((n.as_str(), "next".into()));
        }
        match &self.kind {
            StepKind::WaitFor { events, branches, on_timeout, .. } => {
                for (i, e) in events.iter().enumerate() {
                    out.push((e.next.as_str(), format!("wait_for.events[{i}].next")));
                }
                for (i, b) in branches.iter().enumerate() {
                    out.push((b.next.as_str(), format!("wait_for.branches[{i}].next")));
                }
                out.push((on_timeout.as_str(), "wait_for.on_timeout".into()));
            }
            StepKind::Branch { branches, otherwise } => {
                for (i, b) in branches.iter().enumerate() {
                    out.push((b.next.as_str(), format!("branch.conditions[{i}].next")));
                }
                out.push((otherwise.as_str(), "branch.else".into()));
            }
            StepKind::Split { paths } => {
                for (i, (_, n)) in paths.iter().enumerate() {
                    out.push((n.as_str(), format!("split[{i}].next")));
                }
            }
            _ => {}
        }
        out
    }
}
