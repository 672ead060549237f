//! The cluster settings file (SPEC §5): YAML or JSON with every error located by line,
//! and the canonical text it prints back, so `chorusctl settings show` output can be
//! edited and applied again.
//!
//! ```yaml
//! timezone: America/New_York      # for customers with no zone of their own
//! arbitration_window: 1s
//! defer_max: 3d
//! best_hour_default: 10
//! sms_double_opt_in: false
//! unknown_consent: { email: allow, push: allow, sms: deny, mms: deny, media: deny }
//! caps:
//!   - { name: marketing-daily, max: 3, window: 24h }           # any channel
//!   - { name: sms-per-day, channels: [sms], max: 1, window: 1d, calendar: true }
//! quiet_hours:
//!   sms: 21:00-08:00
//!   push: 21:00-08:00
//! ```

use crate::guard::{CapRule, QuietHours, Settings, zone};
use crate::journey::Diagnostic;
use crate::journey::source::{self, child, index};
use chorus_types::Category;
use chorus_types::time::{format_duration_ms, parse_duration_ms};
use serde_json::{Map, Value};

/// Parse and validate a settings file. Keys left out keep their defaults; a
/// `quiet_hours` map replaces the default quiet hours as a whole.
pub fn parse_settings(text: &str) -> Result<Settings, Vec<Diagnostic>> {
    let (value, lines) = source::load(text).map_err(|e| vec![Diagnostic { line: Some(e.line), path: String::new(), message: e.message }])?;
    let mut problems: Vec<(String, String)> = Vec::new();
    let settings = parse(&value, &mut problems);
    if problems.is_empty() {
        return Ok(settings);
    }
    let mut diags: Vec<Diagnostic> = problems.into_iter().map(|(path, message)| Diagnostic { line: lines.line_of(&path), path, message }).collect();
    diags.sort_by_key(|d| d.line.unwrap_or(0));
    Err(diags)
}

const KEYS: &[&str] = &["timezone", "arbitration_window", "defer_max", "best_hour_default", "sms_double_opt_in", "unknown_consent", "caps", "quiet_hours"];
const CAP_KEYS: &[&str] = &["name", "category", "channels", "max", "window", "calendar"];

fn parse(value: &Value, problems: &mut Vec<(String, String)>) -> Settings {
    let mut s = Settings::default();
    let mut err = |path: String, msg: String| problems.push((path, msg));
    let Some(m) = value.as_object() else {
        err(String::new(), "settings must be a mapping of keys such as timezone, caps and quiet_hours".into());
        return s;
    };
    for k in m.keys() {
        if !KEYS.contains(&k.as_str()) {
            let hint = crate::journey::closest(k, KEYS).map(|c| format!(" (did you mean {c}?)")).unwrap_or_default();
            err(k.clone(), format!("unknown setting {k:?}{hint}; known: {}", KEYS.join(", ")));
        }
    }
    if let Some(v) = m.get("timezone") {
        match v.as_str() {
            Some(name) if zone(name).is_some() => s.timezone = name.to_string(),
            Some(name) => err("timezone".into(), format!("{name:?} is not an IANA time zone (e.g. America/New_York, Europe/Paris, UTC)")),
            None => err("timezone".into(), "timezone must be a string such as America/New_York".into()),
        }
    }
    let duration = |key: &str, err: &mut dyn FnMut(String, String)| -> Option<i64> {
        let v = m.get(key)?;
        match v.as_str().map(parse_duration_ms) {
            Some(Ok(ms)) if ms >= 0 => Some(ms),
            Some(Ok(_)) => None,
            Some(Err(e)) => {
                err(key.into(), e);
                None
            }
            None => {
                err(key.into(), format!("{key} must be a duration such as 1s, 24h or 3d"));
                None
            }
        }
    };
    if let Some(ms) = duration("arbitration_window", &mut err) {
        if ms > 60_000 {
            err("arbitration_window".into(), "at most 1m: sends wait up to this long when they compete for a cap's last slot".into());
        } else {
            s.arbitration_window_ms = ms;
        }
    }
    if let Some(ms) = duration("defer_max", &mut err) {
        s.defer_max_ms = ms;
    }
    if let Some(v) = m.get("best_hour_default") {
        match v.as_u64() {
            Some(h) if h < 24 => s.best_hour_default = h as u8,
            _ => err("best_hour_default".into(), "best_hour_default must be an hour from 0 to 23".into()),
        }
    }
    if let Some(v) = m.get("sms_double_opt_in") {
        match v.as_bool() {
            Some(b) => s.sms_double_opt_in = b,
            None => err("sms_double_opt_in".into(), "sms_double_opt_in is true or false".into()),
        }
    }
    if let Some(v) = m.get("unknown_consent") {
        match v.as_object() {
            Some(policies) => {
                for (channel, p) in policies {
                    let path = child("unknown_consent", channel);
                    if !chorus_types::CHANNELS.contains(&channel.as_str()) {
                        err(path, format!("unknown channel {channel:?}; channels: {}", chorus_types::CHANNELS.join(", ")));
                        continue;
                    }
                    match p.as_str() {
                        Some("allow") => {
                            s.unknown_consent.insert(channel.clone(), true);
                        }
                        Some("deny") => {
                            s.unknown_consent.insert(channel.clone(), false);
                        }
                        _ => err(path, "allow (marketing may go without an explicit opt-in) or deny (it needs one)".into()),
                    }
                }
            }
            None => err("unknown_consent".into(), "unknown_consent maps channels to allow or deny, e.g. { sms: deny }".into()),
        }
    }
    if let Some(v) = m.get("caps") {
        match v.as_array() {
            Some(items) => {
                s.caps.clear();
                for (i, item) in items.iter().enumerate() {
                    if let Some(rule) = cap(item, &index("caps", i), &mut err) {
                        if s.caps.iter().any(|c| c.name == rule.name) {
                            err(child(&index("caps", i), "name"), format!("two caps are named {:?}: names must be unique", rule.name));
                        }
                        s.caps.push(rule);
                    }
                }
            }
            None => err("caps".into(), "caps must be a list of {name, channels, max, window}".into()),
        }
    }
    if let Some(v) = m.get("quiet_hours") {
        match v.as_object() {
            Some(q) => {
                s.quiet_hours.clear();
                for (channel, hours) in q {
                    let path = child("quiet_hours", channel);
                    if !chorus_types::CHANNELS.contains(&channel.as_str()) {
                        err(path.clone(), format!("unknown channel {channel:?}; channels: {}", chorus_types::CHANNELS.join(", ")));
                        continue;
                    }
                    match hours {
                        Value::Bool(false) | Value::Null => {}
                        Value::String(t) if t == "off" || t == "none" => {}
                        Value::String(t) => match parse_window(t) {
                            Ok(w) => {
                                s.quiet_hours.insert(channel.clone(), w);
                            }
                            Err(e) => err(path, e),
                        },
                        _ => err(path, "quiet hours are written 21:00-08:00 (local time), or off".into()),
                    }
                }
            }
            None => err("quiet_hours".into(), "quiet_hours must map channels to windows, e.g. sms: 21:00-08:00".into()),
        }
    }
    s
}

fn cap(v: &Value, path: &str, err: &mut dyn FnMut(String, String)) -> Option<CapRule> {
    let Some(m) = v.as_object() else {
        err(path.into(), "a cap is a mapping: {name, channels, max, window}".into());
        return None;
    };
    for k in m.keys() {
        if !CAP_KEYS.contains(&k.as_str()) {
            err(child(path, k), format!("unknown cap key {k:?}; known: {}", CAP_KEYS.join(", ")));
        }
    }
    let name = match m.get("name").and_then(Value::as_str) {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => {
            err(child(path, "name"), "every cap needs a name (it is shown in skip and defer reasons)".into());
            return None;
        }
    };
    let category = match m.get("category").map(|c| c.as_str()) {
        None | Some(Some("marketing")) => Some(Category::Marketing),
        Some(Some("transactional")) => Some(Category::Transactional),
        Some(Some("any")) => None,
        _ => {
            err(child(path, "category"), "category is marketing (default), transactional or any".into());
            None
        }
    };
    let channels = match m.get("channels") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for (i, c) in items.iter().enumerate() {
                match c.as_str() {
                    Some("any") => {}
                    Some(ch) if chorus_types::CHANNELS.contains(&ch) => out.push(ch.to_string()),
                    _ => err(index(&child(path, "channels"), i), format!("unknown channel {c}; channels: {}", chorus_types::CHANNELS.join(", "))),
                }
            }
            out
        }
        Some(_) => {
            err(child(path, "channels"), "channels is a list, e.g. [sms, push]".into());
            Vec::new()
        }
    };
    let max = match m.get("max").and_then(Value::as_u64) {
        Some(n) if (1..=10_000).contains(&n) => n as u32,
        _ => {
            err(child(path, "max"), "max must be a whole number from 1 to 10000".into());
            return None;
        }
    };
    let window_ms = match m.get("window").and_then(Value::as_str).map(parse_duration_ms) {
        Some(Ok(ms)) if ms > 0 && ms <= crate::guard::CAP_WINDOW_MAX_MS => ms,
        Some(Ok(_)) => {
            err(child(path, "window"), "window must be longer than 0 and at most 90d".into());
            return None;
        }
        Some(Err(e)) => {
            err(child(path, "window"), e);
            return None;
        }
        None => {
            err(child(path, "window"), "window is required, e.g. 24h or 7d".into());
            return None;
        }
    };
    let calendar = match m.get("calendar") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            err(child(path, "calendar"), "calendar is true or false".into());
            false
        }
    };
    if calendar && window_ms % 86_400_000 != 0 {
        err(child(path, "window"), "a calendar cap counts whole days: use a window such as 1d or 7d".into());
        return None;
    }
    Some(CapRule { name, category, channels, max, window_ms, calendar })
}

/// `21:00-08:00` (either dash) → quiet hours.
fn parse_window(text: &str) -> Result<QuietHours, String> {
    let bad = || format!("{text:?}: quiet hours are written start-end in local 24h time, e.g. 21:00-08:00");
    let (a, b) = text.split_once(['-', '–']).ok_or_else(bad)?;
    let hm = |t: &str| -> Option<u16> {
        let (h, m) = t.trim().split_once(':')?;
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60).then_some(h * 60 + m)
    };
    let (start, end) = (hm(a).ok_or_else(bad)?, hm(b).ok_or_else(bad)?);
    if start == end {
        return Err(format!("{text:?}: start and end are equal; write off to have no quiet hours"));
    }
    Ok(QuietHours { start_minute: start, end_minute: end })
}

/// The settings as a settings file (parses back to the same settings).
pub fn format_settings(s: &Settings) -> String {
    let mut out = String::new();
    out.push_str(&format!("timezone: {}\n", s.timezone));
    out.push_str(&format!("arbitration_window: {}\n", format_duration_ms(s.arbitration_window_ms)));
    out.push_str(&format!("defer_max: {}\n", format_duration_ms(s.defer_max_ms)));
    out.push_str(&format!("best_hour_default: {}\n", s.best_hour_default));
    out.push_str(&format!("sms_double_opt_in: {}\n", s.sms_double_opt_in));
    let policies: Vec<String> = s.unknown_consent.iter().map(|(c, allow)| format!("{c}: {}", if *allow { "allow" } else { "deny" })).collect();
    out.push_str(&format!("unknown_consent: {{ {} }}\n", policies.join(", ")));
    if s.caps.is_empty() {
        out.push_str("caps: []\n");
    } else {
        out.push_str("caps:\n");
        for c in &s.caps {
            let category = c.category.map(|c| c.as_str()).unwrap_or("any");
            let channels = if c.channels.is_empty() { "[any]".to_string() } else { format!("[{}]", c.channels.join(", ")) };
            out.push_str(&format!(
                "  - {{ name: {}, category: {category}, channels: {channels}, max: {}, window: {}, calendar: {} }}\n",
                Value::String(c.name.clone()),
                c.max,
                format_duration_ms(c.window_ms),
                c.calendar
            ));
        }
    }
    if s.quiet_hours.is_empty() {
        out.push_str("quiet_hours: {}\n");
    } else {
        out.push_str("quiet_hours:\n");
        for (ch, q) in &s.quiet_hours {
            out.push_str(&format!("  {ch}: \"{:02}:{:02}-{:02}:{:02}\"\n", q.start_minute / 60, q.start_minute % 60, q.end_minute / 60, q.end_minute % 60));
        }
    }
    out
}

/// Settings as JSON for `-o json`.
pub fn settings_json(s: &Settings) -> Value {
    let caps: Vec<Value> = s
        .caps
        .iter()
        .map(|c| {
            let mut m = Map::new();
            m.insert("name".into(), c.name.clone().into());
            m.insert("category".into(), c.category.map(|c| c.as_str()).unwrap_or("any").into());
            m.insert("channels".into(), c.channels.clone().into());
            m.insert("max".into(), c.max.into());
            m.insert("window".into(), format_duration_ms(c.window_ms).into());
            m.insert("calendar".into(), c.calendar.into());
            Value::Object(m)
        })
        .collect();
    let quiet: Map<String, Value> = s.quiet_hours.iter().map(|(ch, q)| (ch.clone(), q.describe().replace('–', "-").into())).collect();
    serde_json::json!({
        "timezone": s.timezone,
        "arbitration_window": format_duration_ms(s.arbitration_window_ms),
        "defer_max": format_duration_ms(s.defer_max_ms),
        "best_hour_default": s.best_hour_default,
        "sms_double_opt_in": s.sms_double_opt_in,
        "unknown_consent": s.unknown_consent.iter().map(|(c, a)| (c.clone(), Value::from(if *a { "allow" } else { "deny" }))).collect::<Map<String, Value>>(),
        "caps": caps,
        "quiet_hours": quiet,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_settings_parse_caps_quiet_hours_and_zone() {
        let s = parse_settings(
            "timezone: Europe/Paris\narbitration_window: 2s\ncaps:\n  - { name: marketing-daily, max: 3, window: 24h }\n  - { name: sms-per-day, channels: [sms], max: 1, window: 1d, calendar: true }\nquiet_hours:\n  sms: 22:00-07:30\n  push: off\n",
        )
        .unwrap();
        assert_eq!(s.timezone, "Europe/Paris");
        assert_eq!(s.arbitration_window_ms, 2_000);
        assert_eq!(s.caps.len(), 2);
        assert_eq!(
            s.caps[0],
            CapRule { name: "marketing-daily".into(), category: Some(Category::Marketing), channels: vec![], max: 3, window_ms: 86_400_000, calendar: false }
        );
        assert!(s.caps[1].calendar);
        assert_eq!(s.quiet_hours.len(), 1);
        assert_eq!(s.quiet_hours["sms"], QuietHours { start_minute: 22 * 60, end_minute: 7 * 60 + 30 });
    }

    #[test]
    fn rule_settings_round_trip_through_their_text() {
        let s = parse_settings("sms_double_opt_in: true\nunknown_consent: { email: deny, in_app: allow }\ncaps:\n  - { name: \"weekly all\", category: any, max: 10, window: 7d }\n").unwrap();
        assert!(s.sms_double_opt_in);
        assert_eq!(parse_settings(&format_settings(&s)).unwrap(), s);
        assert_eq!(parse_settings(&format_settings(&Settings::default())).unwrap(), Settings::default());
    }

    #[test]
    fn rule_bad_settings_are_rejected_with_line_and_fix() {
        let e = parse_settings("timezone: Mars/Base\ncaps:\n  - { name: a, max: 0, window: 24h }\n  - { name: b, max: 2, window: 36h, calendar: true }\nquiet_hours:\n  fax: 21:00-08:00\n  sms: 9pm-8am\ndefer_mx: 1d\n").unwrap_err();
        let text: Vec<String> = e.iter().map(|d| d.to_string()).collect();
        assert_eq!(text.len(), 6, "{text:#?}");
        assert!(text[0].starts_with("line 1: timezone: \"Mars/Base\" is not an IANA time zone"), "{text:#?}");
        assert!(text[1].starts_with("line 3: caps[0].max: max must be a whole number"), "{text:#?}");
        assert!(text[2].starts_with("line 4: caps[1].window: a calendar cap counts whole days"), "{text:#?}");
        assert!(text[3].starts_with("line 6: quiet_hours.fax: unknown channel"), "{text:#?}");
        assert!(text[4].starts_with("line 7: quiet_hours.sms: \"9pm-8am\": quiet hours are written start-end"), "{text:#?}");
        assert!(text[5].starts_with("line 8: defer_mx: unknown setting \"defer_mx\" (did you mean defer_max?)"), "{text:#?}");
    }
}
