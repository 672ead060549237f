//! JSON value (from a YAML or JSON journey file) → [`JourneyDef`], collecting every
//! problem with the path of the field it concerns (mapped to a line by the caller).

use super::model::*;
use super::source::{child, index};
use chorus_types::Category;
use chorus_types::time::parse_duration_ms;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// One problem in a journey file: the field path and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

pub(crate) struct Parser {
    pub problems: Vec<Problem>,
    /// Ids of steps that failed to parse.
    pub broken: std::collections::HashSet<String>,
}

const STEP_KINDS: &[&str] = &["send", "wait", "wait_for", "branch", "split", "update", "webhook", "trigger", "exit", "audience"];

impl Parser {
    fn err(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(Problem { path: path.to_string(), message: message.into() });
    }

    fn obj<'v>(&mut self, v: &'v Value, path: &str, what: &str) -> Option<&'v Map<String, Value>> {
        match v {
            Value::Object(m) => Some(m),
            other => {
                self.err(path, format!("{what} must be a mapping, got {}", chorus_types::json::json_kind(other)));
                None
            }
        }
    }

    fn unknown_keys(&mut self, m: &Map<String, Value>, path: &str, allowed: &[&str]) {
        for k in m.keys() {
            if !allowed.contains(&k.as_str()) {
                let hint = closest(k, allowed).map(|c| format!(" (did you mean {c:?}?)")).unwrap_or_default();
                self.err(&child(path, k), format!("unknown field {k:?}{hint}; allowed here: {}", allowed.join(", ")));
            }
        }
    }

    fn string(&mut self, m: &Map<String, Value>, path: &str, key: &str, required: bool) -> Option<String> {
        match m.get(key) {
            None | Some(Value::Null) => {
                if required {
                    self.err(&child(path, key), format!("{key} is required"));
                }
                None
            }
            Some(Value::String(s)) if s.trim().is_empty() => {
                self.err(&child(path, key), format!("{key} must not be empty"));
                None
            }
            Some(Value::String(s)) => Some(s.trim().to_string()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(other) => {
                self.err(&child(path, key), format!("{key} must be a string, got {}", chorus_types::json::json_kind(other)));
                None
            }
        }
    }

    fn duration(&mut self, m: &Map<String, Value>, path: &str, key: &str, required: bool) -> Option<i64> {
        let s = self.string(m, path, key, required)?;
        match parse_duration_ms(&s) {
            Ok(ms) if ms > 0 => Some(ms),
            Ok(_) => {
                self.err(&child(path, key), "must be longer than zero");
                None
            }
            Err(e) => {
                self.err(&child(path, key), e);
                None
            }
        }
    }

    fn uint(&mut self, m: &Map<String, Value>, path: &str, key: &str, max: u64) -> Option<u64> {
        match m.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) if n.as_u64().is_some_and(|v| v <= max) => n.as_u64(),
            Some(other) => {
                self.err(&child(path, key), format!("{key} must be a whole number from 0 to {max}, got {other}"));
                None
            }
        }
    }

    fn boolean(&mut self, m: &Map<String, Value>, path: &str, key: &str) -> bool {
        match m.get(key) {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                self.err(&child(path, key), format!("{key} must be true or false, got {other}"));
                false
            }
        }
    }

    pub fn journey(&mut self, v: &Value) -> Option<JourneyDef> {
        let m = self.obj(v, "", "a journey")?;
        self.unknown_keys(m, "", &["id", "name", "category", "priority", "entry", "exit", "goal", "steps", "on_goal", "migrate", "caps", "description"]);
        let id = self.string(m, "", "id", true);
        if let Some(id) = &id {
            if id.len() > 64 || !id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
                self.err("id", format!("{id:?} is not a valid journey id: use at most 64 lower-case letters, digits, - and _"));
            }
        }
        let name = self.string(m, "", "name", false).or_else(|| id.clone()).unwrap_or_default();
        let category = match self.string(m, "", "category", true).as_deref() {
            Some("marketing") => Some(Category::Marketing),
            Some("transactional") => Some(Category::Transactional),
            Some(other) => {
                self.err("category", format!("{other:?} is not a category: use marketing or transactional"));
                None
            }
            None => None,
        };
        let priority = self.uint(m, "", "priority", 100).unwrap_or(50) as u8;
        let entry = match m.get("entry") {
            Some(e) => self.entry(e, "entry"),
            None => {
                self.err("entry", "entry is required: say how customers enter (event, audience, api or schedule)");
                None
            }
        };
        let exit = match m.get("exit") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items.iter().enumerate().filter_map(|(i, e)| self.exit_rule(e, &index("exit", i))).collect(),
            Some(other) => {
                self.err("exit", format!("exit must be a list of {{event, filter}}, got {}", chorus_types::json::json_kind(other)));
                Vec::new()
            }
        };
        let goal = m.get("goal").and_then(|g| self.goal(g, "goal"));
        let on_goal_trigger = m.get("on_goal").and_then(|g| {
            let gm = self.obj(g, "on_goal", "on_goal")?;
            self.unknown_keys(gm, "on_goal", &["trigger"]);
            self.string(gm, "on_goal", "trigger", true)
        });
        let steps = match m.get("steps") {
            Some(Value::Array(items)) if !items.is_empty() => items
                .iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    let step = self.step(s, &index("steps", i));
                    if step.is_none() {
                        if let Some(id) = s.get("id").and_then(Value::as_str) {
                            self.broken.insert(id.to_string());
                        }
                    }
                    step
                })
                .collect(),
            Some(Value::Array(_)) => {
                self.err("steps", "steps is empty: a journey needs at least one step");
                Vec::new()
            }
            Some(other) => {
                self.err("steps", format!("steps must be a list, got {}", chorus_types::json::json_kind(other)));
                Vec::new()
            }
            None => {
                self.err("steps", "steps is required");
                Vec::new()
            }
        };
        let mut migrate = BTreeMap::new();
        if let Some(mv) = m.get("migrate") {
            if let Some(mm) = self.obj(mv, "migrate", "migrate (old step → new step)") {
                for (k, v) in mm {
                    match v {
                        Value::String(s) => {
                            migrate.insert(k.clone(), s.clone());
                        }
                        _ => self.err(&child("migrate", k), "must name the new step"),
                    }
                }
            }
        }
        let (mut per_entry, mut per_day) = (None, None);
        if let Some(c) = m.get("caps") {
            if let Some(cm) = self.obj(c, "caps", "caps") {
                self.unknown_keys(cm, "caps", &["per_entry", "per_day"]);
                per_entry = self.uint(cm, "caps", "per_entry", 1000).map(|v| v as u32);
                per_day = self.uint(cm, "caps", "per_day", 1000).map(|v| v as u32);
            }
        }
        Some(JourneyDef {
            id: id?,
            name,
            category: category?,
            priority,
            entry: entry?,
            exit,
            goal,
            steps,
            on_goal_trigger,
            migrate,
            sends_per_entry_max: per_entry,
            sends_per_day_max: per_day,
        })
    }

    fn entry(&mut self, v: &Value, path: &str) -> Option<Entry> {
        let m = self.obj(v, path, "entry")?;
        self.unknown_keys(m, path, &["event", "audience", "api", "schedule", "filter", "reentry", "max_concurrent", "entry_key", "holdout"]);
        let mut triggers = Vec::new();
        if let Some(e) = self.string(m, path, "event", false) {
            triggers.push(Trigger::Event(e));
        }
        if m.contains_key("schedule") {
            if let Some(sm) = self.obj(&m["schedule"], &child(path, "schedule"), "schedule") {
                let sp = child(path, "schedule");
                self.unknown_keys(sm, &sp, &["audience", "every", "at"]);
                let audience = self.string(sm, &sp, "audience", true);
                let every_ms = self.duration(sm, &sp, "every", false);
                let at = self.string(sm, &sp, "at", false);
                if every_ms.is_none() && at.is_none() {
                    self.err(&sp, "a schedule needs `every` (e.g. 24h) or `at` (a time)");
                }
                if let Some(audience) = audience {
                    triggers.push(Trigger::Schedule { audience, every_ms, at });
                }
            }
        } else if let Some(a) = self.string(m, path, "audience", false) {
            triggers.push(Trigger::Audience(a));
        }
        if self.boolean(m, path, "api") {
            triggers.push(Trigger::Api);
        }
        let trigger = match triggers.len() {
            1 => triggers.pop(),
            0 => {
                self.err(path, "entry needs exactly one of: event, audience, api: true, schedule");
                None
            }
            _ => {
                self.err(path, "entry has more than one trigger: use one of event, audience, api, schedule (write another journey for another trigger)");
                None
            }
        };
        let filter = self.string(m, path, "filter", false);
        let reentry = match m.get("reentry") {
            None | Some(Value::Null) => Reentry::Never,
            Some(Value::String(s)) if s == "never" => Reentry::Never,
            Some(Value::String(s)) if s == "always" => Reentry::Always,
            Some(Value::Object(rm)) => {
                let rp = child(path, "reentry");
                self.unknown_keys(rm, &rp, &["cooldown"]);
                match self.duration(rm, &rp, "cooldown", true) {
                    Some(ms) => Reentry::Cooldown { ms },
                    None => Reentry::Never,
                }
            }
            Some(other) => {
                self.err(&child(path, "reentry"), format!("reentry must be never, always or {{cooldown: 7d}}, got {other}"));
                Reentry::Never
            }
        };
        let max_concurrent = self.uint(m, path, "max_concurrent", 100).unwrap_or(1) as u32;
        if max_concurrent == 0 {
            self.err(&child(path, "max_concurrent"), "must be at least 1");
        }
        let entry_key = self.string(m, path, "entry_key", false);
        if max_concurrent > 1 && entry_key.is_none() {
            self.err(
                &child(path, "entry_key"),
                "max_concurrent above 1 needs an entry_key expression that tells instances apart (e.g. event.properties.order_id)",
            );
        }
        let holdout_percent = match m.get("holdout") {
            None | Some(Value::Null) => 0.0,
            Some(Value::Number(n)) => n.as_f64().unwrap_or(-1.0),
            Some(Value::String(s)) => s.trim().trim_end_matches('%').trim().parse::<f64>().unwrap_or(-1.0),
            Some(_) => -1.0,
        };
        if !(0.0..=100.0).contains(&holdout_percent) {
            self.err(&child(path, "holdout"), "holdout must be a percentage from 0% to 100% (e.g. 10%)");
        }
        Some(Entry { trigger: trigger?, filter, reentry, max_concurrent, entry_key, holdout_percent: holdout_percent.clamp(0.0, 100.0) })
    }

    fn exit_rule(&mut self, v: &Value, path: &str) -> Option<ExitRule> {
        let m = self.obj(v, path, "an exit rule")?;
        self.unknown_keys(m, path, &["event", "filter"]);
        Some(ExitRule { event: self.string(m, path, "event", true)?, filter: self.string(m, path, "filter", false) })
    }

    fn goal(&mut self, v: &Value, path: &str) -> Option<Goal> {
        let m = self.obj(v, path, "goal")?;
        self.unknown_keys(m, path, &["event", "filter", "within", "value"]);
        let event = self.string(m, path, "event", true);
        let within_ms = self.duration(m, path, "within", true);
        Some(Goal { event: event?, filter: self.string(m, path, "filter", false), within_ms: within_ms?, value: self.string(m, path, "value", false) })
    }

    fn branches(&mut self, v: Option<&Value>, path: &str) -> Vec<Branch> {
        match v {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, b)| {
                    let p = index(path, i);
                    let bm = self.obj(b, &p, "a branch")?;
                    self.unknown_keys(bm, &p, &["when", "next"]);
                    let when = self.string(bm, &p, "when", true);
                    let next = self.string(bm, &p, "next", true);
                    Some(Branch { when: when?, next: next? })
                })
                .collect(),
            Some(other) => {
                self.err(path, format!("must be a list of {{when, next}}, got {}", chorus_types::json::json_kind(other)));
                Vec::new()
            }
        }
    }

    fn step(&mut self, v: &Value, path: &str) -> Option<Step> {
        let m = self.obj(v, path, "a step")?;
        let id = self.string(m, path, "id", true);
        let next = self.string(m, path, "next", false);
        let kinds: Vec<&str> = m.keys().map(String::as_str).filter(|k| STEP_KINDS.contains(k)).collect();
        let mut allowed = vec!["id", "next", "description"];
        allowed.extend(STEP_KINDS);
        self.unknown_keys(m, path, &allowed);
        let kind_name = match kinds.as_slice() {
            [k] => *k,
            [] => {
                self.err(path, format!("the step needs one kind: {}", STEP_KINDS[..9].join(", ")));
                return None;
            }
            more => {
                self.err(path, format!("one kind per step, found {}: split it into steps", more.join(" and ")));
                return None;
            }
        };
        let kp = child(path, kind_name);
        let body = &m[kind_name];
        let kind = match kind_name {
            "send" => {
                let sm = self.obj(body, &kp, "send")?;
                self.unknown_keys(sm, &kp, &["channel", "template", "fallback", "when_capped", "recheck", "topic", "quiet_hours"]);
                let channel = self.string(sm, &kp, "channel", true);
                let template = self.string(sm, &kp, "template", true);
                let fallback = match sm.get("fallback") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Array(items)) => items.iter().filter_map(|c| c.as_str().map(str::to_string)).collect(),
                    Some(Value::String(s)) => vec![s.clone()],
                    Some(_) => {
                        self.err(&child(&kp, "fallback"), "fallback must be a list of channels, e.g. [email]");
                        Vec::new()
                    }
                };
                let when_capped = match self.string(sm, &kp, "when_capped", false).as_deref() {
                    None | Some("skip") => WhenCapped::Skip,
                    Some("defer") => WhenCapped::Defer,
                    Some("fallback") => WhenCapped::Fallback,
                    Some(other) => {
                        self.err(&child(&kp, "when_capped"), format!("{other:?}: use skip, defer or fallback"));
                        WhenCapped::Skip
                    }
                };
                if when_capped == WhenCapped::Fallback && fallback.is_empty() {
                    self.err(&child(&kp, "when_capped"), "when_capped: fallback needs a fallback channel list");
                }
                let recheck = self.boolean(sm, &kp, "recheck");
                let topic = self.string(sm, &kp, "topic", false);
                let when_quiet = match self.string(sm, &kp, "quiet_hours", false).as_deref() {
                    None | Some("defer") => WhenQuiet::Defer,
                    Some("skip") => WhenQuiet::Skip,
                    Some(other) => {
                        self.err(&child(&kp, "quiet_hours"), format!("{other:?}: use defer (wait for the end of quiet hours) or skip"));
                        WhenQuiet::Defer
                    }
                };
                StepKind::Send { channel: channel?, template: template?, fallback, when_capped, recheck, topic, when_quiet }
            }
            "wait" => StepKind::Wait(self.wait_spec(body, &kp)?),
            "wait_for" => {
                let wm = self.obj(body, &kp, "wait_for")?;
                self.unknown_keys(wm, &kp, &["events", "branches", "timeout", "on_timeout"]);
                let events = match wm.get("events") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Array(items)) => items
                        .iter()
                        .enumerate()
                        .filter_map(|(i, e)| {
                            let p = index(&child(&kp, "events"), i);
                            let em = self.obj(e, &p, "an event condition")?;
                            self.unknown_keys(em, &p, &["event", "filter", "next"]);
                            let event = self.string(em, &p, "event", true);
                            let next = self.string(em, &p, "next", true);
                            Some(EventMatch { event: event?, filter: self.string(em, &p, "filter", false), next: next? })
                        })
                        .collect(),
                    Some(_) => {
                        self.err(&child(&kp, "events"), "events must be a list of {event, filter, next}");
                        Vec::new()
                    }
                };
                let branches = self.branches(wm.get("branches"), &child(&kp, "branches"));
                if events.is_empty() && branches.is_empty() {
                    self.err(&kp, "wait_for needs events or branches to wait for");
                }
                let timeout_ms = match wm.get("timeout") {
                    None => {
                        self.err(&child(&kp, "timeout"), "wait_for needs a timeout (e.g. timeout: 24h): a wait without one could hold a customer forever");
                        None
                    }
                    Some(_) => self.duration(wm, &kp, "timeout", true),
                };
                let on_timeout = self.string(wm, &kp, "on_timeout", true);
                StepKind::WaitFor { events, branches, timeout_ms: timeout_ms?, on_timeout: on_timeout? }
            }
            "branch" => {
                let bm = self.obj(body, &kp, "branch")?;
                self.unknown_keys(bm, &kp, &["conditions", "else"]);
                let branches = self.branches(bm.get("conditions"), &child(&kp, "conditions"));
                if branches.is_empty() {
                    self.err(&child(&kp, "conditions"), "a branch needs at least one condition {when, next}");
                }
                let otherwise = self.string(bm, &kp, "else", true);
                StepKind::Branch { branches, otherwise: otherwise? }
            }
            "split" => {
                let items = match body {
                    Value::Array(items) => items.clone(),
                    Value::Object(o) if o.get("paths").is_some_and(Value::is_array) => o["paths"].as_array().cloned().unwrap_or_default(),
                    _ => {
                        self.err(&kp, "split must be a list of {weight, next}");
                        return None;
                    }
                };
                let mut paths = Vec::new();
                for (i, p) in items.iter().enumerate() {
                    let pp = index(&kp, i);
                    if let Some(pm) = self.obj(p, &pp, "a split path") {
                        self.unknown_keys(pm, &pp, &["weight", "next"]);
                        let weight = self.uint(pm, &pp, "weight", 1_000_000);
                        if weight.is_none() {
                            self.err(&child(&pp, "weight"), "weight is required (a whole number; paths are chosen in proportion)");
                        }
                        if let (Some(w), Some(n)) = (weight, self.string(pm, &pp, "next", true)) {
                            paths.push((w as u32, n));
                        }
                    }
                }
                if paths.len() < 2 {
                    self.err(&kp, "a split needs at least two paths");
                }
                if paths.iter().all(|(w, _)| *w == 0) {
                    self.err(&kp, "at least one split path needs a weight above 0");
                }
                StepKind::Split { paths }
            }
            "update" => {
                let um = self.obj(body, &kp, "update")?;
                self.unknown_keys(um, &kp, &["set", "unset"]);
                let mut set = BTreeMap::new();
                if let Some(sv) = um.get("set") {
                    if let Some(sm) = self.obj(sv, &child(&kp, "set"), "set") {
                        for (k, v) in sm {
                            set.insert(k.clone(), chorus_types::json::JsonValue(v.clone()));
                        }
                    }
                }
                let unset = match um.get("unset") {
                    None => Vec::new(),
                    Some(Value::Array(items)) => items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
                    Some(_) => {
                        self.err(&child(&kp, "unset"), "unset must be a list of attribute names");
                        Vec::new()
                    }
                };
                if set.is_empty() && unset.is_empty() {
                    self.err(&kp, "update needs set or unset");
                }
                StepKind::Update { set, unset }
            }
            "webhook" => {
                let wm = self.obj(body, &kp, "webhook")?;
                self.unknown_keys(wm, &kp, &["template"]);
                StepKind::Webhook { template: self.string(wm, &kp, "template", true)? }
            }
            "trigger" => match body {
                Value::String(j) => StepKind::Trigger { journey: j.clone() },
                other => {
                    let tm = self.obj(other, &kp, "trigger")?;
                    self.unknown_keys(tm, &kp, &["journey"]);
                    StepKind::Trigger { journey: self.string(tm, &kp, "journey", true)? }
                }
            },
            "exit" => StepKind::Exit,
            "audience" => {
                self.err(&kp, "audience steps (paid-media audiences) are not yet supported: they arrive with the media connector; remove the step or replace it with a webhook");
                return None;
            }
            _ => unreachable!("kinds are filtered"),
        };
        Some(Step { id: id?, kind, next })
    }

    fn wait_spec(&mut self, v: &Value, path: &str) -> Option<WaitSpec> {
        let text = match v {
            Value::String(s) => s.trim().to_string(),
            Value::Object(m) => {
                self.unknown_keys(m, path, &["duration", "until", "at"]);
                if let Some(d) = m.get("duration").and_then(Value::as_str) {
                    d.to_string()
                } else if let Some(u) = m.get("until").and_then(Value::as_str) {
                    u.to_string()
                } else if let Some(a) = m.get("at").and_then(Value::as_str) {
                    a.to_string()
                } else {
                    self.err(path, "wait needs a duration (24h), a local time (next 10:00) or at: best_hour");
                    return None;
                }
            }
            other => {
                self.err(path, format!("wait must be a duration such as 24h, got {}", chorus_types::json::json_kind(other)));
                return None;
            }
        };
        match parse_wait(&text) {
            Ok(w) => Some(w),
            Err(e) => {
                self.err(path, e);
                None
            }
        }
    }
}

/// `24h` | `next 10:00` | `next monday 09:00` | `best_hour`.
pub fn parse_wait(text: &str) -> Result<WaitSpec, String> {
    let t = text.trim().to_ascii_lowercase();
    if t == "best_hour" {
        return Ok(WaitSpec::BestHour);
    }
    if let Some(rest) = t.strip_prefix("next ") {
        let parts: Vec<&str> = rest.split_whitespace().collect();
        let (weekday, clock) = match parts.as_slice() {
            [clock] => (None, *clock),
            [day, clock] => {
                let days = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"];
                let d = days.iter().position(|d| d == day).ok_or_else(|| format!("{day:?} is not a weekday (monday … sunday)"))?;
                (Some(d as u8), *clock)
            }
            _ => {
                return Err(format!("{text:?}: write `next HH:MM` or `next monday HH:MM`"));
            }
        };
        let (h, m) = clock.split_once(':').ok_or_else(|| format!("{clock:?} is not a time of day (HH:MM)"))?;
        let (hour, minute) = (h.parse::<u8>().map_err(|_| format!("{clock:?}: bad hour"))?, m.parse::<u8>().map_err(|_| format!("{clock:?}: bad minute"))?);
        if hour > 23 || minute > 59 {
            return Err(format!("{clock:?} is not a time of day (00:00–23:59)"));
        }
        return Ok(WaitSpec::LocalTime { weekday, hour, minute });
    }
    match parse_duration_ms(&t) {
        Ok(ms) if ms > 0 => Ok(WaitSpec::Duration { ms }),
        Ok(_) => Err("a wait must be longer than zero".into()),
        Err(e) => Err(format!("{e}; or use `next 10:00`, `next monday 09:00` or best_hour")),
    }
}

/// The candidate closest to `word` by edit distance, if reasonably close.
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let dist = |a: &str, b: &str| -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1; b.len() + 1];
            for (j, cb) in b.iter().enumerate() {
                cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
            }
            prev = cur;
        }
        prev[b.len()]
    };
    candidates.iter().map(|c| (dist(word, c), *c)).filter(|(d, c)| *d <= 2.max(c.len() / 3)).min_by_key(|(d, _)| *d).map(|(_, c)| c)
}
