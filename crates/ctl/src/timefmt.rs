//! Time text for the command line: RFC 3339 (UTC) formatting and parsing, Unix
//! milliseconds and `1h30m`-style durations. Pure functions: never reads a clock.

const MS_PER_SECOND: i64 = 1_000;
const MS_PER_MINUTE: i64 = 60 * MS_PER_SECOND;
const MS_PER_HOUR: i64 = 60 * MS_PER_MINUTE;
const MS_PER_DAY: i64 = 24 * MS_PER_HOUR;
const MS_PER_WEEK: i64 = 7 * MS_PER_DAY;

/// Below this, a bare number given as a time is almost surely Unix *seconds*
/// (1e11 ms is March 1973; 1e11 s is the year 5138).
const UNIX_MS_PLAUSIBLE_MIN: i64 = 100_000_000_000;

const DURATION_FORMS: &str = "units: ms, s, m, h, d, w; e.g. 24h, 90m, 7d, 1h30m, 500ms";
const TIME_FORMS: &str =
    "give RFC 3339 (2026-11-27T10:00:00Z, or with an offset such as +01:00), a date (2026-11-27 = midnight UTC) or Unix milliseconds (1795773600000)";

/// Parse a duration such as `24h`, `90m`, `7d`, `1h30m` or `500ms` into milliseconds.
/// Parts add up; whitespace between parts is allowed; a unit is required.
pub fn parse_duration_ms(text: &str) -> Result<i64, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("empty duration ({DURATION_FORMS})"));
    }
    if t.starts_with('-') {
        return Err(format!("{text:?}: durations cannot be negative ({DURATION_FORMS})"));
    }
    let b = t.as_bytes();
    let mut i = 0;
    let mut total: i64 = 0;
    while i < b.len() {
        if b[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(format!("{text:?} is not a duration: expected a number at {:?} ({DURATION_FORMS})", &t[start..]));
        }
        let number: i64 = t[start..i].parse().map_err(|_| format!("{text:?} is not a duration: {} is too large", &t[start..i]))?;
        if b.get(i) == Some(&b'.') {
            return Err(format!("{text:?}: use whole numbers, e.g. 1h30m rather than 1.5h ({DURATION_FORMS})"));
        }
        let unit_start = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = &t[unit_start..i];
        let scale = match unit {
            "ms" => 1,
            "s" => MS_PER_SECOND,
            "m" => MS_PER_MINUTE,
            "h" => MS_PER_HOUR,
            "d" => MS_PER_DAY,
            "w" => MS_PER_WEEK,
            "" => {
                return Err(format!("{text:?}: the number {number} needs a unit ({DURATION_FORMS})"));
            }
            other => {
                return Err(format!("{text:?}: unknown unit {other:?} ({DURATION_FORMS})"));
            }
        };
        total = number.checked_mul(scale).and_then(|part| total.checked_add(part)).ok_or_else(|| format!("{text:?} is too long a duration"))?;
    }
    Ok(total)
}

/// Print milliseconds the way [`parse_duration_ms`] reads them: `1d2h30m`, `500ms`, `0s`.
pub fn format_duration_ms(ms: i64) -> String {
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    if ms < 0 {
        out.push('-');
    }
    let mut rest = ms.unsigned_abs();
    for (scale, unit) in [(MS_PER_DAY, "d"), (MS_PER_HOUR, "h"), (MS_PER_MINUTE, "m"), (MS_PER_SECOND, "s"), (1, "ms")] {
        let scale = scale as u64;
        if rest >= scale {
            out.push_str(&format!("{}{unit}", rest / scale));
            rest %= scale;
        }
    }
    out
}

/// Parse a point in time given on the command line: RFC 3339 (any offset; fraction
/// truncated to milliseconds), a bare date `YYYY-MM-DD` (midnight UTC) or Unix
/// milliseconds. Returns Unix milliseconds.
pub fn parse_time_ms(text: &str) -> Result<i64, String> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit()) {
        let ms: i64 = t.parse().map_err(|_| format!("{text:?} is too large for Unix milliseconds"))?;
        if (1_000_000_000..UNIX_MS_PLAUSIBLE_MIN).contains(&ms) {
            return Err(format!(
                "{text:?} looks like Unix seconds; give milliseconds ({t}000) or RFC 3339 (e.g. {})",
                format_rfc3339_ms(ms.saturating_mul(1000))
            ));
        }
        return Ok(ms);
    }
    parse_date_or_rfc3339_ms(t).ok_or_else(|| format!("{text:?} is not a time: {TIME_FORMS}"))
}

pub use chorus_types::time::{format_rfc3339_ms, parse_date_or_rfc3339_ms};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_every_unit_and_combinations() {
        assert_eq!(parse_duration_ms("24h"), Ok(24 * MS_PER_HOUR));
        assert_eq!(parse_duration_ms("90m"), Ok(90 * MS_PER_MINUTE));
        assert_eq!(parse_duration_ms("7d"), Ok(7 * MS_PER_DAY));
        assert_eq!(parse_duration_ms("1h30m"), Ok(90 * MS_PER_MINUTE));
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("2w"), Ok(14 * MS_PER_DAY));
        assert_eq!(parse_duration_ms(" 1h 30m 15s "), Ok(MS_PER_HOUR + 30 * MS_PER_MINUTE + 15_000));
        assert_eq!(parse_duration_ms("1m500ms"), Ok(60_500));
        assert_eq!(parse_duration_ms("0s"), Ok(0));
    }

    #[test]
    fn bad_durations_say_what_is_wrong() {
        assert!(parse_duration_ms("").unwrap_err().contains("empty"));
        assert!(parse_duration_ms("24").unwrap_err().contains("needs a unit"));
        assert!(parse_duration_ms("3y").unwrap_err().contains("unknown unit \"y\""));
        assert!(parse_duration_ms("h").unwrap_err().contains("expected a number"));
        assert!(parse_duration_ms("1.5h").unwrap_err().contains("whole numbers"));
        assert!(parse_duration_ms("-1h").unwrap_err().contains("negative"));
        assert!(parse_duration_ms("99999999999999999999d").unwrap_err().contains("too large"));
        assert!(parse_duration_ms("9999999999999d").unwrap_err().contains("too long"));
    }

    #[test]
    fn durations_format_back_to_parseable_text() {
        for ms in [0, 1, 500, 1000, 60_500, 90 * MS_PER_MINUTE, 26 * MS_PER_HOUR + 1, 7 * MS_PER_DAY] {
            let text = format_duration_ms(ms);
            assert_eq!(parse_duration_ms(&text), Ok(ms), "{text}");
        }
        assert_eq!(format_duration_ms(90 * MS_PER_MINUTE), "1h30m");
        assert_eq!(format_duration_ms(-1500), "-1s500ms");
    }

    #[test]
    fn rfc3339_formats_utc_with_millis_only_when_present() {
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339_ms(1_795_773_600_000), "2026-11-27T10:00:00Z");
        assert_eq!(format_rfc3339_ms(1_795_773_600_250), "2026-11-27T10:00:00.250Z");
        assert_eq!(format_rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(format_rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn rfc3339_parses_offsets_fractions_and_dates() {
        assert_eq!(parse_date_or_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_date_or_rfc3339_ms("2026-11-27T10:00:00.250Z"), Some(1_795_773_600_250));
        assert_eq!(parse_date_or_rfc3339_ms("2026-11-27T10:00:00.2501234Z"), Some(1_795_773_600_250));
        assert_eq!(parse_date_or_rfc3339_ms("2026-11-27T11:00:00+01:00"), Some(1_795_773_600_000));
        assert_eq!(parse_date_or_rfc3339_ms("2026-11-27t05:30:00-04:30"), Some(1_795_773_600_000));
        assert_eq!(parse_date_or_rfc3339_ms("2026-11-27 10:00:00Z"), Some(1_795_773_600_000));
        assert_eq!(parse_date_or_rfc3339_ms("2026-11-27"), Some(1_795_737_600_000));
        assert_eq!(parse_date_or_rfc3339_ms("2016-12-31T23:59:60Z"), Some(1_483_228_799_999));
    }

    #[test]
    fn rfc3339_rejects_impossible_dates_and_missing_offsets() {
        for bad in [
            "2026-11-27T10:00:00",
            "2026-02-29T00:00:00Z",
            "2026-04-31",
            "2026-13-01",
            "2026-11-27T24:00:00Z",
            "2026-11-27T10:00Z",
            "2026-11-27T10:00:00.Z",
            "2026-11-27T10:00:00+0100",
            "27/11/2026",
            "yesterday",
        ] {
            assert_eq!(parse_date_or_rfc3339_ms(bad), None, "{bad}");
        }
        assert!(parse_date_or_rfc3339_ms("2024-02-29").is_some());
    }

    #[test]
    fn rfc3339_round_trips_across_centuries() {
        for ms in [0, 1, -86_400_000, 946_684_799_999, 4_102_444_800_000, 253_402_300_799_999] {
            assert_eq!(parse_date_or_rfc3339_ms(&format_rfc3339_ms(ms)), Some(ms), "{ms}");
        }
    }

    #[test]
    fn times_accept_unix_millis_and_refuse_seconds() {
        assert_eq!(parse_time_ms("1795773600000"), Ok(1_795_773_600_000));
        assert_eq!(parse_time_ms("2026-11-27T10:00:00Z"), Ok(1_795_773_600_000));
        let err = parse_time_ms("1795773600").unwrap_err();
        assert!(err.contains("looks like Unix seconds") && err.contains("1795773600000"), "{err}");
        assert!(parse_time_ms("next tuesday").unwrap_err().contains("RFC 3339"));
        assert!(parse_time_ms("").is_err());
    }
}
