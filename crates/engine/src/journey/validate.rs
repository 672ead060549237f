//! Whole-journey checks (SPEC §6 "Validation"): step references, unreachable steps,
//! cycles without a wait, channels, CEL that does not compile, and — when a catalog is
//! given — unknown templates, audiences, journeys and channels without a connector.

use super::model::*;
use super::parse::{Problem, closest};
use super::source::{child, index};
use std::collections::{BTreeSet, HashMap, HashSet};

/// What the journey may refer to. `None` means "not known here" (offline validation
/// without a catalog): the check is skipped.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub templates: Option<BTreeSet<String>>,
    pub audiences: Option<BTreeSet<String>>,
    pub journeys: Option<BTreeSet<String>>,
    /// Channels with a connector configured on the node.
    pub connected_channels: Option<BTreeSet<String>>,
}

/// `broken` names steps that failed to parse (already reported): references to them
/// are not reported again.
pub(crate) fn validate(j: &JourneyDef, catalog: &Catalog, broken: &HashSet<String>, problems: &mut Vec<Problem>) {
    let mut reference_errors = 0;
    let mut err = |path: String, message: String| problems.push(Problem { path, message });
    let mut ids: HashMap<&str, usize> = HashMap::new();
    for (i, s) in j.steps.iter().enumerate() {
        if let Some(first) = ids.insert(s.id.as_str(), i) {
            err(child(&index("steps", i), "id"), format!("step id {:?} is already used by steps[{first}]: step ids must be unique", s.id));
        }
    }
    let names: Vec<&str> = j.steps.iter().map(|s| s.id.as_str()).collect();
    // References.
    for (i, s) in j.steps.iter().enumerate() {
        for (target, field) in s.successors() {
            if !ids.contains_key(target) && !broken.contains(target) {
                reference_errors += 1;
                let hint = closest(target, &names).map(|c| format!(" (did you mean {c:?}?)")).unwrap_or_default();
                err(child(&index("steps", i), &field), format!("unknown step {target:?}{hint}; steps are: {}", names.join(", ")));
            }
        }
        if matches!(s.kind, StepKind::Exit) && s.next.is_some() {
            err(child(&index("steps", i), "next"), "an exit step ends the journey: remove next".into());
        }
    }
    for (old, new) in &j.migrate {
        if !ids.contains_key(new.as_str()) {
            err(child("migrate", old), format!("migrates to unknown step {new:?}"));
        }
    }
    // Reachability from the first step (skipped while references are broken: fixing
    // them usually fixes this too).
    if !j.steps.is_empty() && reference_errors == 0 && broken.is_empty() {
        let mut seen = HashSet::new();
        let mut stack = vec![0usize];
        while let Some(i) = stack.pop() {
            if !seen.insert(i) {
                continue;
            }
            for (t, _) in j.steps[i].successors() {
                if let Some(&k) = ids.get(t) {
                    stack.push(k);
                }
            }
        }
        for (i, s) in j.steps.iter().enumerate() {
            if !seen.contains(&i) && ids.get(s.id.as_str()) == Some(&i) {
                err(index("steps", i), format!("step {:?} is unreachable from the first step {:?}: link it with next or remove it", s.id, j.steps[0].id));
            }
        }
    }
    // Cycles made only of steps that never pause would loop forever within one input.
    let mut state = vec![0u8; j.steps.len()]; // 0 new, 1 on stack, 2 done
    fn dfs(i: usize, j: &JourneyDef, ids: &HashMap<&str, usize>, state: &mut [u8], path: &mut Vec<usize>) -> Option<Vec<usize>> {
        state[i] = 1;
        path.push(i);
        if !j.steps[i].kind.pauses() {
            for (t, _) in j.steps[i].successors() {
                let Some(&k) = ids.get(t) else { continue };
                if j.steps[k].kind.pauses() {
                    continue;
                }
                if state[k] == 1 {
                    let start = path.iter().position(|p| *p == k).unwrap_or(0);
                    return Some(path[start..].to_vec());
                }
                if state[k] == 0 {
                    if let Some(c) = dfs(k, j, ids, state, path) {
                        return Some(c);
                    }
                }
            }
        }
        path.pop();
        state[i] = 2;
        None
    }
    for i in 0..j.steps.len() {
        if state[i] == 0 && !j.steps[i].kind.pauses() {
            if let Some(cycle) = dfs(i, j, &ids, &mut state, &mut Vec::new()) {
                let names: Vec<&str> = cycle.iter().map(|k| j.steps[*k].id.as_str()).collect();
                err(index("steps", cycle[0]), format!("steps {} form a cycle without a wait: add a wait or wait_for step to the loop", names.join(" → ")));
                break;
            }
        }
    }
    // Channels and catalog references.
    for (i, s) in j.steps.iter().enumerate() {
        let p = index("steps", i);
        match &s.kind {
            StepKind::Send { channel, template, fallback, .. } => {
                for (c, field) in std::iter::once((channel, child(&child(&p, "send"), "channel")))
                    .chain(fallback.iter().enumerate().map(|(k, c)| (c, index(&child(&child(&p, "send"), "fallback"), k))))
                {
                    if !chorus_types::CHANNELS.contains(&c.as_str()) {
                        let hint = closest(c, chorus_types::CHANNELS).map(|x| format!(" (did you mean {x:?}?)")).unwrap_or_default();
                        err(field, format!("unknown channel {c:?}{hint}; channels are {}", chorus_types::CHANNELS.join(", ")));
                    } else if catalog.connected_channels.as_ref().is_some_and(|cc| !cc.contains(c)) {
                        err(field, format!("no connector is configured for channel {c:?} on this node: configure one or choose another channel"));
                    }
                }
                if catalog.templates.as_ref().is_some_and(|t| !t.contains(template)) {
                    err(child(&child(&p, "send"), "template"), format!("unknown template {template:?}: apply it first (chorusctl template apply)"));
                }
            }
            StepKind::Webhook { template } if catalog.templates.as_ref().is_some_and(|t| !t.contains(template)) => {
                err(child(&child(&p, "webhook"), "template"), format!("unknown template {template:?}"));
            }
            StepKind::Trigger { journey } if catalog.journeys.as_ref().is_some_and(|js| !js.contains(journey) && *journey != j.id) => {
                err(child(&p, "trigger"), format!("unknown journey {journey:?}: apply it first"));
            }
            _ => {}
        }
    }
    if let (Some(t), Some(js)) = (&j.on_goal_trigger, &catalog.journeys) {
        if !js.contains(t) && *t != j.id {
            err("on_goal.trigger".into(), format!("unknown journey {t:?}: apply it first"));
        }
    }
    let audience = match &j.entry.trigger {
        Trigger::Audience(a) => Some(a),
        Trigger::Schedule { audience, .. } => Some(audience),
        _ => None,
    };
    if let (Some(a), Some(known)) = (audience, &catalog.audiences) {
        if !known.contains(a) {
            err("entry.audience".into(), format!("unknown audience {a:?}: apply it first (chorusctl audience apply)"));
        }
    }
    // CEL.
    for (path, expr) in expressions(j) {
        if let Err(e) = crate::expr::compile(&expr) {
            err(path, format!("the expression does not compile: {e}"));
        }
    }
}

/// Every CEL expression of a journey with its path.
pub fn expressions(j: &JourneyDef) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(f) = &j.entry.filter {
        out.push(("entry.filter".to_string(), f.clone()));
    }
    if let Some(k) = &j.entry.entry_key {
        out.push(("entry.entry_key".to_string(), k.clone()));
    }
    for (i, e) in j.exit.iter().enumerate() {
        if let Some(f) = &e.filter {
            out.push((child(&index("exit", i), "filter"), f.clone()));
        }
    }
    if let Some(g) = &j.goal {
        if let Some(f) = &g.filter {
            out.push(("goal.filter".to_string(), f.clone()));
        }
        if let Some(v) = &g.value {
            out.push(("goal.value".to_string(), v.clone()));
        }
    }
    for (i, s) in j.steps.iter().enumerate() {
        let p = index("steps", i);
        match &s.kind {
            StepKind::WaitFor { events, branches, .. } => {
                for (k, e) in events.iter().enumerate() {
                    if let Some(f) = &e.filter {
                        out.push((child(&index(&child(&p, "wait_for.events"), k), "filter"), f.clone()));
                    }
                }
                for (k, b) in branches.iter().enumerate() {
                    out.push((child(&index(&child(&p, "wait_for.branches"), k), "when"), b.when.clone()));
                }
            }
            StepKind::Branch { branches, .. } => {
                for (k, b) in branches.iter().enumerate() {
                    out.push((child(&index(&child(&p, "branch.conditions"), k), "when"), b.when.clone()));
                }
            }
            _ => {}
        }
    }
    out
}
