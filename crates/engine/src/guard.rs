//! Guardrails (SPEC §5): the cluster settings that bound messaging (frequency caps,
//! quiet hours, the default time zone, the arbitration window, the defer bound), the
//! customer's time zone, DST-correct local-time arithmetic and the cap checks over the
//! customer's contact ledger.
//!
//! Time zones come from jiff's **bundled** tz database, never the host's, so every
//! replica and every replay computes the same instants whatever the machine has
//! installed. Everything here is pure: `now_ms` comes in.

use crate::CustomerState;
use chorus_types::{Category, IdentityKind};
use jiff::civil::{Date, Time, Weekday};
use jiff::tz::{TimeZone, TimeZoneDatabase};
use jiff::{Timestamp, ZonedDateTime as Zoned};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::LazyLock;

static TZDB: LazyLock<TimeZoneDatabase> = LazyLock::new(TimeZoneDatabase::bundled);

/// Most contacts kept on a customer's ledger (older ones are dropped first).
pub const CONTACTS_MAX: usize = 1000;
/// Longest cap window: contacts older than this are dropped from the ledger.
pub const CAP_WINDOW_MAX_MS: i64 = 90 * 86_400_000;

/// Cluster settings that the decision core applies to every send (SPEC §5). They are
/// replicated to every shard as a catalog entry, so all replicas decide alike.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// IANA zone used when a customer has neither a `timezone` attribute nor a phone.
    pub timezone: String,
    pub caps: Vec<CapRule>,
    /// Channel → quiet hours in the customer's zone.
    pub quiet_hours: BTreeMap<String, QuietHours>,
    /// Sends that fall due for one customer within this window are ordered by journey
    /// priority when they compete for the last slot of a cap (0 turns arbitration off).
    pub arbitration_window_ms: i64,
    /// How long a send may be deferred in total before it is skipped.
    pub defer_max_ms: i64,
    /// Local hour used by `best_hour` waits for customers with no engagement yet.
    pub best_hour_default: u8,
    /// An SMS opt-in from anywhere but the customer's phone stays pending until they
    /// reply YES (SPEC §4.3 double opt-in).
    pub sms_double_opt_in: bool,
    /// Channel → whether marketing may go to a customer whose consent on it is unknown
    /// (SPEC §4.3 defaults: email and push yes — push still needs a token —, sms, mms
    /// and media no). Channels not listed: yes.
    pub unknown_consent: BTreeMap<String, bool>,
}

impl Settings {
    pub fn unknown_consent_allows_marketing(&self, channel: &str) -> bool {
        self.unknown_consent.get(channel).copied().unwrap_or(true)
    }
}

/// The SPEC §4.3 defaults for unknown consent.
pub fn default_unknown_consent() -> BTreeMap<String, bool> {
    [("email", true), ("push", true), ("sms", false), ("mms", false), ("media", false)].into_iter().map(|(c, b)| (c.to_string(), b)).collect()
}

impl Default for Settings {
    fn default() -> Self {
        let night = QuietHours { start_minute: 21 * 60, end_minute: 8 * 60 };
        Settings {
            timezone: "UTC".into(),
            caps: Vec::new(),
            quiet_hours: [("sms".to_string(), night), ("push".to_string(), night)].into_iter().collect(),
            arbitration_window_ms: 1_000,
            defer_max_ms: 3 * 86_400_000,
            best_hour_default: 10,
            sms_double_opt_in: false,
            unknown_consent: default_unknown_consent(),
        }
    }
}

/// `{category, channels, max, window}` (SPEC §5.2): at most `max` sends of `category`
/// on `channels` within `window_ms` (rolling), or within the last `window_ms / 1 day`
/// calendar days in the customer's zone when `calendar` is set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CapRule {
    pub name: String,
    /// `None`: every category. Transactional sends ignore marketing caps.
    pub category: Option<Category>,
    /// Empty: any channel.
    pub channels: Vec<String>,
    pub max: u32,
    pub window_ms: i64,
    pub calendar: bool,
}

impl CapRule {
    fn applies(&self, channel: &str, category: Category) -> bool {
        self.category.is_none_or(|c| c == category) && (self.channels.is_empty() || self.channels.iter().any(|c| c == channel))
    }

    /// Start of the window at `now_ms` for a customer in `tz`.
    fn window_start(&self, now_ms: i64, tz: &TimeZone) -> i64 {
        if !self.calendar {
            return now_ms - self.window_ms;
        }
        let days = (self.window_ms / 86_400_000).max(1);
        let today = local(now_ms, tz).date();
        let first = today.checked_sub(jiff::Span::new().days(days - 1)).unwrap_or(today);
        day_start(first, tz)
    }

    pub fn describe(&self) -> String {
        let what = self.category.map(|c| c.as_str()).unwrap_or("any");
        let on = if self.channels.is_empty() { "any channel".to_string() } else { self.channels.join("/") };
        let window = if self.calendar {
            format!("{} calendar day(s)", (self.window_ms / 86_400_000).max(1))
        } else {
            chorus_types::time::format_duration_ms(self.window_ms)
        };
        format!("{}: at most {} {what} on {on} per {window}", self.name, self.max)
    }
}

/// Quiet hours as minutes after local midnight; `start > end` spans midnight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuietHours {
    pub start_minute: u16,
    pub end_minute: u16,
}

impl QuietHours {
    fn contains(&self, minute: u16) -> bool {
        if self.start_minute <= self.end_minute {
            (self.start_minute..self.end_minute).contains(&minute)
        } else {
            minute >= self.start_minute || minute < self.end_minute
        }
    }
    pub fn describe(&self) -> String {
        format!("{:02}:{:02}–{:02}:{:02}", self.start_minute / 60, self.start_minute % 60, self.end_minute / 60, self.end_minute % 60)
    }
}

/// One message sent to the customer (SPEC §4.1 "contact ledger"), for caps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    pub at_ms: i64,
    pub channel: String,
    pub category: Category,
    /// The journey that sent it (empty for API sends).
    pub journey: String,
}

/// Record a send on the ledger, dropping contacts no cap can see any more.
pub fn record_contact(state: &mut CustomerState, contact: Contact) {
    let horizon = contact.at_ms - CAP_WINDOW_MAX_MS;
    state.contacts.push_back(contact);
    while state.contacts.front().is_some_and(|c| c.at_ms < horizon) || state.contacts.len() > CONTACTS_MAX {
        state.contacts.pop_front();
    }
}

/// A named zone from the bundled database.
pub fn zone(name: &str) -> Option<TimeZone> {
    TZDB.get(name).ok()
}

/// The customer's time zone and where it came from (SPEC §5.3): the `timezone`
/// attribute (IANA), else the phone's country, else the cluster default.
pub fn customer_zone(state: &CustomerState, settings: &Settings) -> (TimeZone, String) {
    if let Some(name) = state.attributes.get("timezone").and_then(|v| v.as_str()) {
        if let Some(tz) = zone(name) {
            return (tz, format!("{name} (profile)"));
        }
    }
    if let Some(phone) = state.identities.iter().rev().find(|i| i.kind == IdentityKind::Phone) {
        if let Some(name) = phone_zone(&phone.value) {
            if let Some(tz) = zone(name) {
                return (tz, format!("{name} (phone country)"));
            }
        }
    }
    let tz = zone(&settings.timezone).unwrap_or(TimeZone::UTC);
    (tz, format!("{} (cluster default)", settings.timezone))
}

/// The zone where most of the phone's country lives, from the E.164 number.
pub fn phone_zone(e164: &str) -> Option<&'static str> {
    let parsed = phonenumber::parse(None, e164).ok()?;
    let id = parsed.country().id()?;
    let code: &str = id.as_ref();
    COUNTRY_ZONES.iter().find(|(c, _)| *c == code).map(|(_, z)| *z)
}

/// Country (ISO 3166 alpha-2) → the zone of most of its population. Countries spanning
/// several zones get their most populous one; a `timezone` attribute is always better.
const COUNTRY_ZONES: &[(&str, &str)] = &[
    ("US", "America/New_York"),
    ("CA", "America/Toronto"),
    ("MX", "America/Mexico_City"),
    ("BR", "America/Sao_Paulo"),
    ("AR", "America/Argentina/Buenos_Aires"),
    ("CL", "America/Santiago"),
    ("CO", "America/Bogota"),
    ("PE", "America/Lima"),
    ("GB", "Europe/London"),
    ("IE", "Europe/Dublin"),
    ("FR", "Europe/Paris"),
    ("DE", "Europe/Berlin"),
    ("ES", "Europe/Madrid"),
    ("PT", "Europe/Lisbon"),
    ("IT", "Europe/Rome"),
    ("NL", "Europe/Amsterdam"),
    ("BE", "Europe/Brussels"),
    ("LU", "Europe/Luxembourg"),
    ("CH", "Europe/Zurich"),
    ("AT", "Europe/Vienna"),
    ("DK", "Europe/Copenhagen"),
    ("SE", "Europe/Stockholm"),
    ("NO", "Europe/Oslo"),
    ("FI", "Europe/Helsinki"),
    ("PL", "Europe/Warsaw"),
    ("CZ", "Europe/Prague"),
    ("HU", "Europe/Budapest"),
    ("RO", "Europe/Bucharest"),
    ("GR", "Europe/Athens"),
    ("TR", "Europe/Istanbul"),
    ("UA", "Europe/Kyiv"),
    ("RU", "Europe/Moscow"),
    ("IL", "Asia/Jerusalem"),
    ("AE", "Asia/Dubai"),
    ("SA", "Asia/Riyadh"),
    ("EG", "Africa/Cairo"),
    ("ZA", "Africa/Johannesburg"),
    ("NG", "Africa/Lagos"),
    ("KE", "Africa/Nairobi"),
    ("IN", "Asia/Kolkata"),
    ("PK", "Asia/Karachi"),
    ("BD", "Asia/Dhaka"),
    ("TH", "Asia/Bangkok"),
    ("VN", "Asia/Ho_Chi_Minh"),
    ("MY", "Asia/Kuala_Lumpur"),
    ("SG", "Asia/Singapore"),
    ("ID", "Asia/Jakarta"),
    ("PH", "Asia/Manila"),
    ("CN", "Asia/Shanghai"),
    ("HK", "Asia/Hong_Kong"),
    ("TW", "Asia/Taipei"),
    ("KR", "Asia/Seoul"),
    ("JP", "Asia/Tokyo"),
    ("AU", "Australia/Sydney"),
    ("NZ", "Pacific/Auckland"),
];

fn local(now_ms: i64, tz: &TimeZone) -> Zoned {
    Timestamp::from_millisecond(now_ms).unwrap_or(Timestamp::UNIX_EPOCH).to_zoned_datetime(tz.clone())
}

fn to_ms(z: &Zoned) -> i64 {
    z.timestamp().as_millisecond()
}

/// The first instant of `date` in `tz` (DST-safe: a day may start at 01:00).
fn day_start(date: Date, tz: &TimeZone) -> i64 {
    date.to_zoned_datetime(tz.clone()).map(|z| to_ms(&z)).unwrap_or(0)
}

/// The instant `date` at `hour:minute` in `tz`. A time that does not exist (skipped by
/// a DST jump) resolves to the same wall time after the jump; an ambiguous one to its
/// first occurrence.
fn at_local(date: Date, hour: u8, minute: u8, tz: &TimeZone) -> Option<i64> {
    let t = Time::new(hour as i8, minute as i8, 0, 0).ok()?;
    date.to_datetime(t).to_zoned_datetime(tz.clone()).ok().map(|z| to_ms(&z))
}

/// The next instant strictly after `now_ms` when the local clock in `tz` reads
/// `hour:minute` (on `weekday`, 0 = Monday, if given): `next 10:00`, `next monday 09:00`.
pub fn next_local_time(now_ms: i64, tz: &TimeZone, weekday: Option<u8>, hour: u8, minute: u8) -> i64 {
    let today = local(now_ms, tz).date();
    for d in 0..=8 {
        let Ok(date) = today.checked_add(jiff::Span::new().days(d)) else {
            break;
        };
        if let Some(w) = weekday {
            if date.weekday().to_monday_zero_offset() as u8 != w {
                continue;
            }
        }
        if let Some(at) = at_local(date, hour, minute, tz) {
            if at > now_ms {
                return at;
            }
        }
    }
    now_ms + 86_400_000 // unreachable for valid inputs
}

/// Weekday names accepted by local waits, Monday first.
pub fn weekday_name(w: u8) -> &'static str {
    [Weekday::Monday, Weekday::Tuesday, Weekday::Wednesday, Weekday::Thursday, Weekday::Friday, Weekday::Saturday, Weekday::Sunday]
        .get(w as usize)
        .map(|d| match d {
            Weekday::Monday => "monday",
            Weekday::Tuesday => "tuesday",
            Weekday::Wednesday => "wednesday",
            Weekday::Thursday => "thursday",
            Weekday::Friday => "friday",
            Weekday::Saturday => "saturday",
            Weekday::Sunday => "sunday",
        })
        .unwrap_or("?")
}

/// If `now_ms` falls in the channel's quiet hours for a customer in `tz`, when they end.
pub fn quiet_until(now_ms: i64, tz: &TimeZone, quiet: &QuietHours) -> Option<i64> {
    let z = local(now_ms, tz);
    let minute = z.hour() as u16 * 60 + z.minute() as u16;
    quiet.contains(minute).then(|| next_local_time(now_ms, tz, None, (quiet.end_minute / 60) as u8, (quiet.end_minute % 60) as u8))
}

/// The customer's best hour to be messaged (SPEC §5.3 `best_hour`): the local hour at
/// which they opened most (ties: the earliest), else the cluster default.
pub fn best_hour(state: &CustomerState, settings: &Settings) -> u8 {
    let (i, n) = state.open_hours.iter().enumerate().fold((0usize, 0u32), |best, (i, n)| if *n > best.1 { (i, *n) } else { best });
    if n == 0 { settings.best_hour_default.min(23) } else { i as u8 }
}

/// Count an open in the customer's local hour-of-day histogram.
pub fn record_open(state: &mut CustomerState, at_ms: i64, settings: &Settings) {
    let (tz, _) = customer_zone(state, settings);
    let hour = local(at_ms, &tz).hour() as usize;
    if state.open_hours.len() != 24 {
        state.open_hours = vec![0; 24];
    }
    state.open_hours[hour] = state.open_hours[hour].saturating_add(1);
}

/// The local date and time at `now_ms` in `tz`, for decisions (`2026-03-08 21:30 EDT`).
pub fn describe_local(now_ms: i64, tz: &TimeZone) -> String {
    local(now_ms, tz).strftime("%Y-%m-%d %H:%M %Z").to_string()
}

/// The result of checking caps for one send.
#[derive(Clone, Debug, PartialEq)]
pub enum CapCheck {
    /// Room left; `last_slot` when this send would fill a cap (arbitration applies).
    Open { last_slot: bool },
    /// Capped by `rule`; a slot frees at `free_at_ms` (`None`: never, for this entry).
    Capped { rule: String, free_at_ms: Option<i64> },
}

/// Journey-level caps (SPEC §5.2 "a journey may add its own caps").
pub struct JourneyCaps<'a> {
    pub journey: &'a str,
    pub sends_this_entry: u32,
    pub per_entry_max: Option<u32>,
    pub per_day_max: Option<u32>,
}

/// Check the cluster's cap rules and the journey's caps for a send on `channel`.
pub fn check_caps(
    state: &CustomerState,
    settings: &Settings,
    tz: &TimeZone,
    channel: &str,
    category: Category,
    journey: Option<&JourneyCaps<'_>>,
    now_ms: i64,
) -> CapCheck {
    let mut last_slot = false;
    let mut capped: Option<(String, Option<i64>)> = None;
    let mut note = |rule: String, free: Option<i64>| {
        // Report the cap that frees last: deferring to it clears every cap.
        let later = match (&capped, free) {
            (None, _) => true,
            (Some((_, None)), _) => false,
            (Some(_), None) => true,
            (Some((_, Some(a))), Some(b)) => b > *a,
        };
        if later {
            capped = Some((rule, free));
        }
    };
    for rule in settings.caps.iter().filter(|r| r.applies(channel, category)) {
        let start = rule.window_start(now_ms, tz);
        let mut times: Vec<i64> = state.contacts.iter().filter(|c| c.at_ms > start && rule.applies(&c.channel, c.category)).map(|c| c.at_ms).collect();
        let count = times.len() as u32;
        if count >= rule.max {
            let free = if rule.max == 0 {
                None
            } else if rule.calendar {
                Some(next_local_time(now_ms, tz, None, 0, 0))
            } else {
                times.sort_unstable();
                Some(times[(count - rule.max) as usize] + rule.window_ms + 1)
            };
            note(rule.describe(), free);
        } else if count + 1 == rule.max {
            last_slot = true;
        }
    }
    if let Some(j) = journey {
        if let Some(max) = j.per_entry_max {
            if j.sends_this_entry >= max {
                note(format!("journey {}: at most {max} send(s) per entry", j.journey), None);
            } else if j.sends_this_entry + 1 == max {
                last_slot = true;
            }
        }
        if let Some(max) = j.per_day_max {
            let mut times: Vec<i64> = state.contacts.iter().filter(|c| c.journey == j.journey && c.at_ms > now_ms - 86_400_000).map(|c| c.at_ms).collect();
            let count = times.len() as u32;
            if count >= max {
                times.sort_unstable();
                let free = (max > 0).then(|| times[(count - max) as usize] + 86_400_000 + 1);
                note(format!("journey {}: at most {max} send(s) per day", j.journey), free);
            } else if count + 1 == max {
                last_slot = true;
            }
        }
    }
    match capped {
        Some((rule, free_at_ms)) => CapCheck::Capped { rule, free_at_ms },
        None => CapCheck::Open { last_slot },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_types::{CustomerId, Identity};

    fn ms(rfc: &str) -> i64 {
        chorus_types::time::parse_rfc3339_ms(rfc).unwrap()
    }

    fn customer() -> CustomerState {
        CustomerState::new(CustomerId::new(0, 1), 0)
    }

    fn contact(c: &mut CustomerState, at: i64, channel: &str, journey: &str) {
        record_contact(c, Contact { at_ms: at, channel: channel.into(), category: Category::Marketing, journey: journey.into() });
    }

    fn cap(name: &str, channels: &[&str], max: u32, window_ms: i64, calendar: bool) -> CapRule {
        CapRule { name: name.into(), category: Some(Category::Marketing), channels: channels.iter().map(|s| s.to_string()).collect(), max, window_ms, calendar }
    }

    #[test]
    fn rule_time_zone_comes_from_the_profile_then_the_phone_then_the_default() {
        let settings = Settings { timezone: "Europe/Paris".into(), ..Settings::default() };
        let mut c = customer();
        assert_eq!(customer_zone(&c, &settings).1, "Europe/Paris (cluster default)");
        c.identities.push(Identity { kind: IdentityKind::Phone, value: "+81312345678".into() });
        assert_eq!(customer_zone(&c, &settings).1, "Asia/Tokyo (phone country)");
        c.attributes.0.insert("timezone".into(), "America/Chicago".into());
        assert_eq!(customer_zone(&c, &settings).1, "America/Chicago (profile)");
        // A zone that does not exist is ignored, not trusted.
        c.attributes.0.insert("timezone".into(), "Mars/Olympus".into());
        assert_eq!(customer_zone(&c, &settings).1, "Asia/Tokyo (phone country)");
    }

    #[test]
    fn rule_quiet_hours_defer_to_the_local_end_of_the_window() {
        let tz = zone("America/New_York").unwrap();
        let night = Settings::default().quiet_hours["sms"];
        // 22:30 New York (EST, UTC-5) → 08:00 the next morning.
        assert_eq!(quiet_until(ms("2026-01-15T03:30:00Z"), &tz, &night), Some(ms("2026-01-15T13:00:00Z")));
        // 07:59 → 08:00 the same morning.
        assert_eq!(quiet_until(ms("2026-01-15T12:59:00Z"), &tz, &night), Some(ms("2026-01-15T13:00:00Z")));
        // 08:00 and 20:59 are outside.
        assert_eq!(quiet_until(ms("2026-01-15T13:00:00Z"), &tz, &night), None);
        assert_eq!(quiet_until(ms("2026-01-16T01:59:00Z"), &tz, &night), None);
        assert!(quiet_until(ms("2026-01-16T02:00:00Z"), &tz, &night).is_some());
    }

    #[test]
    fn rule_quiet_hours_are_dst_correct() {
        let tz = zone("America/New_York").unwrap();
        let night = Settings::default().quiet_hours["sms"];
        // The night clocks spring forward (2026-03-08 02:00 EST → 03:00 EDT): the window
        // ends at 08:00 EDT = 12:00 UTC, not 13:00.
        assert_eq!(quiet_until(ms("2026-03-08T03:00:00Z"), &tz, &night), Some(ms("2026-03-08T12:00:00Z")));
        // And when they fall back (2026-11-01 02:00 EDT → 01:00 EST): 08:00 EST = 13:00 UTC.
        assert_eq!(quiet_until(ms("2026-11-01T03:00:00Z"), &tz, &night), Some(ms("2026-11-01T13:00:00Z")));
    }

    #[test]
    fn rule_local_time_waits_target_the_next_local_clock_reading() {
        let tz = zone("Europe/Paris").unwrap();
        // Thursday 2026-01-15 09:00 Paris (08:00 UTC): next 10:00 is today 09:00 UTC.
        assert_eq!(next_local_time(ms("2026-01-15T08:00:00Z"), &tz, None, 10, 0), ms("2026-01-15T09:00:00Z"));
        // At 10:00 exactly the next one is tomorrow.
        assert_eq!(next_local_time(ms("2026-01-15T09:00:00Z"), &tz, None, 10, 0), ms("2026-01-16T09:00:00Z"));
        // next monday 09:00 from Thursday → Monday 2026-01-19 08:00 UTC.
        assert_eq!(next_local_time(ms("2026-01-15T08:00:00Z"), &tz, Some(0), 9, 0), ms("2026-01-19T08:00:00Z"));
        // Across the spring-forward weekend (2026-03-29): Monday 09:00 is CEST (UTC+2).
        assert_eq!(next_local_time(ms("2026-03-26T08:00:00Z"), &tz, Some(0), 9, 0), ms("2026-03-30T07:00:00Z"));
        // A wall time skipped by the jump (02:30 on 2026-03-29) lands just after it.
        assert_eq!(next_local_time(ms("2026-03-28T12:00:00Z"), &tz, None, 2, 30), ms("2026-03-29T01:30:00Z"));
    }

    #[test]
    fn rule_rolling_caps_count_contacts_in_the_window() {
        let settings = Settings { caps: vec![cap("marketing-daily", &[], 2, 86_400_000, false)], ..Settings::default() };
        let tz = TimeZone::UTC;
        let mut c = customer();
        let now = ms("2026-01-15T12:00:00Z");
        assert_eq!(check_caps(&c, &settings, &tz, "email", Category::Marketing, None, now), CapCheck::Open { last_slot: false });
        contact(&mut c, ms("2026-01-14T13:00:00Z"), "email", "a");
        assert_eq!(check_caps(&c, &settings, &tz, "email", Category::Marketing, None, now), CapCheck::Open { last_slot: true });
        contact(&mut c, ms("2026-01-15T09:00:00Z"), "push", "b");
        let CapCheck::Capped { rule, free_at_ms } = check_caps(&c, &settings, &tz, "sms", Category::Marketing, None, now) else { panic!() };
        assert!(rule.starts_with("marketing-daily: at most 2 marketing on any channel per"), "{rule}");
        // The oldest contact leaves the window 24 h after it was made.
        assert_eq!(free_at_ms, Some(ms("2026-01-15T13:00:00Z") + 1));
        // A contact older than the window does not count.
        assert!(matches!(check_caps(&c, &settings, &tz, "sms", Category::Marketing, None, ms("2026-01-15T13:00:01Z")), CapCheck::Open { .. }));
    }

    #[test]
    fn rule_transactional_sends_ignore_marketing_caps() {
        let settings = Settings { caps: vec![cap("one", &[], 1, 86_400_000, false)], ..Settings::default() };
        let mut c = customer();
        contact(&mut c, 10, "email", "a");
        assert!(matches!(check_caps(&c, &settings, &TimeZone::UTC, "email", Category::Marketing, None, 20), CapCheck::Capped { .. }));
        assert_eq!(check_caps(&c, &settings, &TimeZone::UTC, "email", Category::Transactional, None, 20), CapCheck::Open { last_slot: false });
    }

    #[test]
    fn rule_channel_caps_only_count_their_channels() {
        let settings = Settings { caps: vec![cap("sms-daily", &["sms"], 1, 86_400_000, false)], ..Settings::default() };
        let mut c = customer();
        contact(&mut c, 10, "email", "a");
        assert!(matches!(check_caps(&c, &settings, &TimeZone::UTC, "sms", Category::Marketing, None, 20), CapCheck::Open { last_slot: true }));
        contact(&mut c, 15, "sms", "a");
        assert!(matches!(check_caps(&c, &settings, &TimeZone::UTC, "sms", Category::Marketing, None, 20), CapCheck::Capped { .. }));
        assert!(matches!(check_caps(&c, &settings, &TimeZone::UTC, "email", Category::Marketing, None, 20), CapCheck::Open { last_slot: false }));
    }

    #[test]
    fn rule_calendar_day_caps_reset_at_local_midnight() {
        let settings = Settings { caps: vec![cap("sms-per-day", &["sms"], 1, 86_400_000, true)], ..Settings::default() };
        let tz = zone("America/Los_Angeles").unwrap();
        let mut c = customer();
        // 23:00 local on Jan 14 (07:00 UTC Jan 15).
        contact(&mut c, ms("2026-01-15T07:00:00Z"), "sms", "a");
        // 23:30 local the same day: capped until local midnight (08:00 UTC).
        let got = check_caps(&c, &settings, &tz, "sms", Category::Marketing, None, ms("2026-01-15T07:30:00Z"));
        assert_eq!(
            got,
            CapCheck::Capped { rule: "sms-per-day: at most 1 marketing on sms per 1 calendar day(s)".into(), free_at_ms: Some(ms("2026-01-15T08:00:00Z")) }
        );
        // 00:30 local the next day: a new calendar day, though only 90 minutes passed.
        assert!(matches!(check_caps(&c, &settings, &tz, "sms", Category::Marketing, None, ms("2026-01-15T08:30:00Z")), CapCheck::Open { .. }));
    }

    #[test]
    fn rule_journey_caps_limit_sends_per_entry_and_per_day() {
        let settings = Settings::default();
        let mut c = customer();
        let caps = JourneyCaps { journey: "j", sends_this_entry: 2, per_entry_max: Some(2), per_day_max: None };
        assert_eq!(
            check_caps(&c, &settings, &TimeZone::UTC, "email", Category::Marketing, Some(&caps), 0),
            CapCheck::Capped { rule: "journey j: at most 2 send(s) per entry".into(), free_at_ms: None }
        );
        contact(&mut c, 1_000, "email", "j");
        contact(&mut c, 2_000, "email", "other");
        let caps = JourneyCaps { journey: "j", sends_this_entry: 0, per_entry_max: None, per_day_max: Some(1) };
        assert_eq!(
            check_caps(&c, &settings, &TimeZone::UTC, "email", Category::Marketing, Some(&caps), 5_000),
            CapCheck::Capped { rule: "journey j: at most 1 send(s) per day".into(), free_at_ms: Some(1_000 + 86_400_000 + 1) }
        );
    }

    #[test]
    fn rule_best_hour_is_the_most_frequent_local_open_hour() {
        let settings = Settings::default();
        let mut c = customer();
        assert_eq!(best_hour(&c, &settings), 10);
        c.attributes.0.insert("timezone".into(), "Asia/Tokyo".into());
        record_open(&mut c, ms("2026-01-15T11:10:00Z"), &settings); // 20:10 Tokyo
        record_open(&mut c, ms("2026-01-16T11:50:00Z"), &settings);
        record_open(&mut c, ms("2026-01-16T00:00:00Z"), &settings); // 09:00 Tokyo
        assert_eq!(best_hour(&c, &settings), 20);
    }

    #[test]
    fn rule_the_contact_ledger_is_bounded() {
        let mut c = customer();
        for i in 0..(CONTACTS_MAX as i64 + 10) {
            contact(&mut c, i, "email", "j");
        }
        assert_eq!(c.contacts.len(), CONTACTS_MAX);
        contact(&mut c, CAP_WINDOW_MAX_MS + 2_000, "email", "j");
        assert_eq!(c.contacts.len(), 1);
    }
}
