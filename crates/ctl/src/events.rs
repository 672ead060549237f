//! Events to send: built from `event send` flags, or read from a JSON object, JSON
//! array or NDJSON file in the Segment-like shape, with errors that name the line.
//! Also generates message ids. Checks only what the wire format needs; the node
//! validates the rest and answers per event.

use crate::args::{IdentityArg, SendArgs, json_kind};
use chorus_proto::v1::{Event, Identity};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};

/// Largest events file read (stdin included). Bigger inputs should be split.
pub const EVENTS_FILE_BYTES_MAX: usize = 256 * 1024 * 1024;

/// One event and the line of the file where it starts (None for flags).
#[derive(Clone, Debug, PartialEq)]
pub struct SourcedEvent {
    pub event: Event,
    pub line: Option<usize>,
}

/// Everything read from a file.
#[derive(Debug, Default)]
pub struct ParsedFile {
    pub events: Vec<SourcedEvent>,
    /// Fields that were ignored because they are unknown, one note per field name.
    pub warnings: Vec<String>,
}

/// What is wrong with a file, and where.
#[derive(Debug, PartialEq, Eq)]
pub struct FileError {
    pub line: usize,
    pub column: Option<usize>,
    /// 0-based position of the event in the file, when the problem is inside one.
    pub event: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}", self.line)?;
        if let Some(c) = self.column {
            write!(f, ", column {c}")?;
        }
        if let Some(e) = self.event {
            write!(f, " (event {e})")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Top-level fields of Segment calls that Chorus does not use; ignored silently.
const SEGMENT_ENVELOPE_FIELDS: [&str; 9] =
    ["sentAt", "receivedAt", "originalTimestamp", "integrations", "writeKey", "version", "channel", "_metadata", "projectId"];

const KNOWN_FIELDS: &str = "messageId, type, event (or name), userId, anonymousId, deviceId, email, phone, identities, \
properties, traits, context, timestamp";

/// Parse a whole events file: a JSON array of objects, NDJSON (one object per line),
/// or one or more JSON objects one after another (pretty-printed is fine).
/// Events without a message id get one from `next_id`.
pub fn parse_file(text: &str, next_id: &mut dyn FnMut() -> String) -> Result<ParsedFile, FileError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let values = if text.trim_start().starts_with('[') {
        parse_array(text)?
    } else if looks_like_ndjson(text) {
        parse_lines(text)?
    } else {
        parse_stream(text)?
    };
    if values.is_empty() {
        return Err(FileError { line: 1, column: None, event: None, message: "no events found".into() });
    }
    let mut parsed = ParsedFile::default();
    let mut unknown: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (index, (line, value)) in values.into_iter().enumerate() {
        let at = |message: String| FileError { line, column: None, event: Some(index), message };
        let obj = match value {
            Value::Object(obj) => obj,
            other => {
                return Err(at(format!("expected a JSON object (one event), found {}", json_kind(&other))));
            }
        };
        let event = event_from_json(&obj, next_id, &mut |field| {
            unknown.entry(field.to_string()).or_insert((index, line));
        })
        .map_err(at)?;
        parsed.events.push(SourcedEvent { event, line: Some(line) });
    }
    for (field, (index, line)) in unknown {
        parsed.warnings.push(format!("ignoring unknown field {field:?} (first in event {index}, line {line}); known fields: {KNOWN_FIELDS}"));
    }
    Ok(parsed)
}

/// NDJSON when there are several non-empty lines and the first one is a complete
/// JSON value on its own (a pretty-printed object's first line is just `{`).
fn looks_like_ndjson(text: &str) -> bool {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let (Some(first), Some(_)) = (lines.next(), lines.next()) else {
        return false;
    };
    serde_json::from_str::<Value>(first).is_ok()
}

/// One value per non-empty line; an error names its own line.
fn parse_lines(text: &str) -> Result<Vec<(usize, Value)>, FileError> {
    let mut values = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let value = serde_json::from_str::<Value>(raw).map_err(|e| FileError {
            line,
            column: Some(e.column()),
            event: Some(values.len()),
            message: format!("invalid JSON: {}", serde_message(&e)),
        })?;
        values.push((line, value));
    }
    Ok(values)
}

/// Values one after another, separated by whitespace.
fn parse_stream(text: &str) -> Result<Vec<(usize, Value)>, FileError> {
    let mut values = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    loop {
        let start = skip_whitespace(text, stream.byte_offset());
        match stream.next() {
            None => break,
            Some(Ok(v)) => values.push((line_of(text, start), v)),
            Some(Err(e)) => return Err(json_error(&e, 1, values.len())),
        }
    }
    Ok(values)
}

/// `[ {...}, {...} ]`: parse element by element so each knows its line.
fn parse_array(text: &str) -> Result<Vec<(usize, Value)>, FileError> {
    let b = text.as_bytes();
    let mut pos = skip_whitespace(text, 0) + 1; // past '['
    let mut values = Vec::new();
    loop {
        pos = skip_whitespace(text, pos);
        match b.get(pos) {
            Some(b']') if values.is_empty() => {
                pos += 1;
                break;
            }
            None => {
                return Err(at_offset(text, pos, "unexpected end of file inside the array: missing `]`"));
            }
            _ => {}
        }
        let line = line_of(text, pos);
        let mut stream = serde_json::Deserializer::from_str(&text[pos..]).into_iter::<Value>();
        match stream.next() {
            Some(Ok(v)) => values.push((line, v)),
            Some(Err(e)) => return Err(json_error(&e, line, values.len())),
            None => {
                return Err(at_offset(text, pos, "unexpected end of file inside the array: missing `]`"));
            }
        }
        pos = skip_whitespace(text, pos + stream.byte_offset());
        match b.get(pos) {
            Some(b',') => pos += 1,
            Some(b']') => {
                pos += 1;
                break;
            }
            Some(_) => {
                return Err(at_offset(text, pos, "expected `,` or `]` after an array element"));
            }
            None => {
                return Err(at_offset(text, pos, "unexpected end of file inside the array: missing `]`"));
            }
        }
    }
    let rest = skip_whitespace(text, pos);
    if rest < text.len() {
        return Err(at_offset(text, rest, "unexpected text after the array"));
    }
    Ok(values)
}

fn skip_whitespace(text: &str, mut pos: usize) -> usize {
    let b = text.as_bytes();
    while pos < b.len() && b[pos].is_ascii_whitespace() {
        pos += 1;
    }
    pos
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&c| c == b'\n').count() + 1
}

fn at_offset(text: &str, offset: usize, message: &str) -> FileError {
    let line_start = text[..offset.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..offset.min(text.len())].chars().count() + 1;
    FileError { line: line_of(text, offset), column: Some(column), event: None, message: message.to_string() }
}

/// A serde_json error inside a piece of text that starts on `first_line`.
fn json_error(e: &serde_json::Error, first_line: usize, event: usize) -> FileError {
    FileError {
        line: first_line + e.line().saturating_sub(1),
        column: Some(e.column()),
        event: Some(event),
        message: format!("invalid JSON: {}", serde_message(e)),
    }
}

/// serde_json's message without its " at line L column C" suffix (we print our own).
fn serde_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Turn one Segment-like object into a wire event. `unknown` hears about every field
/// this does not understand. Errors name the field.
pub fn event_from_json(obj: &Map<String, Value>, next_id: &mut dyn FnMut() -> String, unknown: &mut dyn FnMut(&str)) -> Result<Event, String> {
    for key in obj.keys() {
        let known = matches!(
            key.as_str(),
            "messageId"
                | "message_id"
                | "type"
                | "event"
                | "name"
                | "userId"
                | "user_id"
                | "anonymousId"
                | "anonymous_id"
                | "deviceId"
                | "device_id"
                | "email"
                | "phone"
                | "identities"
                | "properties"
                | "traits"
                | "context"
                | "timestamp"
        ) || SEGMENT_ENVELOPE_FIELDS.contains(&key.as_str());
        if !known {
            unknown(key);
        }
    }
    let mut event = Event {
        message_id: text_field(obj, &["messageId", "message_id"], false)?.unwrap_or_default(),
        r#type: text_field(obj, &["type"], false)?.unwrap_or_default(),
        ..Event::default()
    };
    if event.message_id.is_empty() {
        event.message_id = next_id();
    }
    let event_name = text_field(obj, &["event"], false)?;
    let name = text_field(obj, &["name"], false)?;
    event.name = match (event_name, name) {
        (Some(a), Some(b)) if a != b => {
            return Err(format!("\"event\" ({a:?}) and \"name\" ({b:?}) differ: give one of them"));
        }
        (a, b) => a.or(b).unwrap_or_default(),
    };
    for (kind, names) in [
        ("user_id", &["userId", "user_id"][..]),
        ("email", &["email"][..]),
        ("phone", &["phone"][..]),
        ("device_id", &["deviceId", "device_id"][..]),
        ("anonymous_id", &["anonymousId", "anonymous_id"][..]),
    ] {
        if let Some(value) = text_field(obj, names, true)? {
            event.identities.push(Identity { kind: kind.to_string(), value });
        }
    }
    match obj.get("identities") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let field = format!("identities[{i}]");
                let Value::Object(pair) = item else {
                    return Err(format!("{field:?} must be an object like {{\"kind\": \"email\", \"value\": \"ada@example.com\"}}"));
                };
                let kind = text_field(pair, &["kind"], false).map_err(|e| format!("{field}.{e}"))?;
                let value = text_field(pair, &["value"], true).map_err(|e| format!("{field}.{e}"))?;
                match (kind, value) {
                    (Some(kind), Some(value)) => event.identities.push(Identity { kind, value }),
                    _ => return Err(format!("{field:?} needs both \"kind\" and \"value\"")),
                }
            }
        }
        Some(other) => {
            return Err(format!("\"identities\" must be an array of {{\"kind\", \"value\"}} objects, not {}", json_kind(other)));
        }
    }
    event.properties_json = json_field(obj, "properties");
    event.traits_json = json_field(obj, "traits");
    event.context_json = json_field(obj, "context");
    match obj.get("timestamp") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => event.timestamp = s.clone(),
        Some(Value::Number(n)) => {
            event.timestamp_ms = n.as_i64().ok_or_else(|| format!("\"timestamp\" {n} is not whole Unix milliseconds"))?;
        }
        Some(other) => {
            return Err(format!("\"timestamp\" must be RFC 3339 text or Unix milliseconds, not {}", json_kind(other)));
        }
    }
    Ok(event)
}

/// A text field under one of several names. Numbers are accepted as text where
/// `numbers_ok` (ids such as `"userId": 42`). Giving two of the names is an error.
fn text_field(obj: &Map<String, Value>, names: &[&str], numbers_ok: bool) -> Result<Option<String>, String> {
    let present: Vec<&&str> = names.iter().filter(|n| obj.get(**n).is_some_and(|v| !v.is_null())).collect();
    if present.len() > 1 {
        return Err(format!("{:?} and {:?} are the same field: give one of them", present[0], present[1]));
    }
    let Some(name) = present.first() else {
        return Ok(None);
    };
    match &obj[**name] {
        Value::String(s) => Ok(Some(s.clone())),
        Value::Number(n) if numbers_ok => Ok(Some(n.to_string())),
        other => Err(format!("{name:?} must be a string, not {}", json_kind(other))),
    }
}

/// An object-valued field as JSON text (`""` when absent). Anything but an object
/// is passed on as is: the node rejects just that event, naming the field.
fn json_field(obj: &Map<String, Value>, name: &str) -> String {
    match obj.get(name) {
        None | Some(Value::Null) => String::new(),
        Some(v) => v.to_string(),
    }
}

/// The one event described by `event send` flags.
pub fn event_from_flags(args: &SendArgs, next_id: &mut dyn FnMut() -> String) -> Result<Event, String> {
    let event_type = args.event_type.clone().unwrap_or_else(|| "track".to_string());
    let name = args.name.clone().unwrap_or_default();
    if event_type == "track" && name.trim().is_empty() {
        return Err("a track event needs a name: add --name \"Product Viewed\" (or choose another --type)".into());
    }
    let mut identities: Vec<Identity> = [("user_id", &args.user_id), ("email", &args.email), ("phone", &args.phone), ("anonymous_id", &args.anonymous_id)]
        .into_iter()
        .filter_map(|(kind, v)| v.as_ref().map(|value| Identity { kind: kind.into(), value: value.clone() }))
        .collect();
    identities.extend(args.identity.iter().map(|IdentityArg { kind, value }| Identity { kind: kind.clone(), value: value.clone() }));
    if identities.is_empty() {
        return Err("an event needs at least one identity: add --user-id, --anonymous-id, --email, --phone or --identity kind=value \
             (or send a file with --file)"
            .into());
    }
    let as_text = |m: &Option<Map<String, Value>>| m.as_ref().map(|m| Value::Object(m.clone()).to_string()).unwrap_or_default();
    Ok(Event {
        message_id: args.message_id.clone().unwrap_or_else(next_id),
        r#type: event_type,
        name,
        identities,
        properties_json: as_text(&args.properties),
        traits_json: as_text(&args.traits),
        context_json: as_text(&args.context),
        timestamp: String::new(),
        timestamp_ms: args.timestamp.unwrap_or(0),
    })
}

/// An event back in the file shape (for `--dry-run`): what would be sent, and a
/// valid input for `event send --file`.
pub fn event_to_json(e: &Event) -> Value {
    let mut obj = Map::new();
    obj.insert("messageId".into(), Value::String(e.message_id.clone()));
    obj.insert("type".into(), Value::String(if e.r#type.is_empty() { "track".into() } else { e.r#type.clone() }));
    if !e.name.is_empty() {
        obj.insert("event".into(), Value::String(e.name.clone()));
    }
    obj.insert("identities".into(), Value::Array(e.identities.iter().map(|i| serde_json::json!({"kind": i.kind, "value": i.value})).collect()));
    for (key, text) in [("properties", &e.properties_json), ("traits", &e.traits_json), ("context", &e.context_json)] {
        if !text.is_empty() {
            obj.insert(key.into(), serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone())));
        }
    }
    if !e.timestamp.is_empty() {
        obj.insert("timestamp".into(), Value::String(e.timestamp.clone()));
    } else if e.timestamp_ms != 0 {
        obj.insert("timestamp".into(), Value::from(e.timestamp_ms));
    }
    Value::Object(obj)
}

static MESSAGE_ID_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh message id shaped like a UUID (8-4-4-4-12 hex), unique per (time in
/// nanoseconds, process id, counter): those 128 bits are mixed by a bijection, so
/// distinct inputs never collide.
pub fn new_message_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let pid_counter = (u64::from(std::process::id()) << 32) | u64::from(MESSAGE_ID_COUNTER.fetch_add(1, Ordering::Relaxed));
    message_id_from(nanos, pid_counter)
}

fn message_id_from(a: u64, b: u64) -> String {
    let hi = mix64(a);
    let lo = mix64(b ^ hi);
    format!("{:08x}-{:04x}-{:04x}-{:04x}-{:012x}", hi >> 32, (hi >> 16) & 0xffff, hi & 0xffff, lo >> 48, lo & 0xffff_ffff_ffff)
}

/// The splitmix64 finalizer: a bijection on u64 that scatters bits.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("gen-{n}")
        }
    }

    fn parse(text: &str) -> Result<ParsedFile, FileError> {
        parse_file(text, &mut ids())
    }

    fn ident(kind: &str, value: &str) -> Identity {
        Identity { kind: kind.into(), value: value.into() }
    }

    #[test]
    fn a_single_object_is_one_event_with_segment_fields_mapped() {
        let text = r#"{
  "messageId": "m-1",
  "type": "track",
  "event": "Product Viewed",
  "userId": 42,
  "anonymousId": "a-1",
  "email": "ada@example.com",
  "phone": "+14155550100",
  "identities": [{"kind": "device_id", "value": "d-9"}],
  "properties": {"sku": "A1", "price": 19.5},
  "traits": {"first_name": "Ada"},
  "context": {"locale": "en-GB"},
  "timestamp": "2026-11-27T10:00:00Z",
  "sentAt": "2026-11-27T10:00:01Z"
}"#;
        let parsed = parse(text).unwrap();
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
        assert_eq!(parsed.events.len(), 1);
        let SourcedEvent { event: e, line } = &parsed.events[0];
        assert_eq!(*line, Some(1));
        assert_eq!(e.message_id, "m-1");
        assert_eq!(e.r#type, "track");
        assert_eq!(e.name, "Product Viewed");
        assert_eq!(
            e.identities,
            vec![
                ident("user_id", "42"),
                ident("email", "ada@example.com"),
                ident("phone", "+14155550100"),
                ident("anonymous_id", "a-1"),
                ident("device_id", "d-9"),
            ]
        );
        assert_eq!(e.properties_json, r#"{"sku":"A1","price":19.5}"#);
        assert_eq!(e.traits_json, r#"{"first_name":"Ada"}"#);
        assert_eq!(e.context_json, r#"{"locale":"en-GB"}"#);
        assert_eq!(e.timestamp, "2026-11-27T10:00:00Z");
    }

    #[test]
    fn an_array_is_many_events_each_knowing_its_line() {
        let text = "[\n  {\"message_id\": \"m-1\", \"name\": \"Home\", \"type\": \"page\", \"user_id\": \"u\"},\n\n  {\"event\": \"A\", \"anonymous_id\": \"x\", \"timestamp\": 1795773600000}\n]\n";
        let parsed = parse(text).unwrap();
        assert_eq!(parsed.events.len(), 2);
        assert_eq!(parsed.events[0].line, Some(2));
        assert_eq!(parsed.events[0].event.name, "Home");
        assert_eq!(parsed.events[0].event.identities, vec![ident("user_id", "u")]);
        assert_eq!(parsed.events[1].line, Some(4));
        assert_eq!(parsed.events[1].event.message_id, "gen-1");
        assert_eq!(parsed.events[1].event.timestamp_ms, 1_795_773_600_000);
        assert_eq!(parse("[]").unwrap_err().message, "no events found");
    }

    #[test]
    fn bad_json_in_an_array_names_its_line() {
        let text = "[\n  {\"event\": \"A\", \"userId\": \"1\"},\n  {\"event\": \"B\" \"userId\": \"2\"}\n]";
        let err = parse(text).unwrap_err();
        assert_eq!((err.line, err.event), (3, Some(1)), "{err}");
        assert!(err.message.contains("invalid JSON"), "{err}");
        let err = parse("[{\"event\": \"A\", \"userId\": \"1\"}\n{\"event\": \"B\"}]").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("expected `,` or `]`"), "{err}");
        let err = parse("[{\"event\": \"A\", \"userId\": \"1\"},\n").unwrap_err();
        assert!(err.message.contains("missing `]`"), "{err}");
        let err = parse("[{\"event\": \"A\", \"userId\": \"1\"}] x").unwrap_err();
        assert!(err.message.contains("after the array"), "{err}");
    }

    #[test]
    fn ndjson_is_one_event_per_line_and_blank_lines_are_skipped() {
        let text = "{\"event\":\"A\",\"userId\":\"1\"}\n\n{\"event\":\"B\",\"userId\":\"2\"}\r\n{\"event\":\"C\",\"userId\":\"3\"}";
        let parsed = parse(text).unwrap();
        let names: Vec<_> = parsed.events.iter().map(|e| (e.line.unwrap(), e.event.name.as_str())).collect();
        assert_eq!(names, vec![(1, "A"), (3, "B"), (4, "C")]);
    }

    #[test]
    fn a_bad_ndjson_line_is_reported_by_its_line_number() {
        let text = "{\"event\":\"A\",\"userId\":\"1\"}\n{\"event\":\"B\",\"userId\":\"2\"}\n{\"event\":\"C\",\"userId\":\n{\"event\":\"D\",\"userId\":\"4\"}\n";
        let err = parse(text).unwrap_err();
        assert_eq!(err.line, 3, "{err}");
        assert_eq!(err.event, Some(2));
        assert!(err.to_string().starts_with("line 3, column "), "{err}");
        assert!(err.message.contains("invalid JSON: EOF while parsing"), "{err}");
    }

    #[test]
    fn pretty_printed_objects_one_after_another_are_read() {
        let text = "{\n  \"event\": \"A\",\n  \"userId\": \"1\"\n}\n{\n  \"event\": \"B\",\n  \"userId\": \"2\"\n}\n";
        let parsed = parse(text).unwrap();
        assert_eq!(parsed.events.iter().map(|e| e.line).collect::<Vec<_>>(), vec![Some(1), Some(5)]);
        let err = parse("{\n  \"event\": \"A\",\n  \"userId\": \n}").unwrap_err();
        assert_eq!(err.line, 4, "{err}");
    }

    #[test]
    fn shape_errors_name_the_event_and_field() {
        let err = parse("{\"event\":\"A\",\"userId\":\"1\"}\n[1,2]\n").unwrap_err();
        assert_eq!((err.line, err.event), (2, Some(1)));
        assert!(err.message.contains("expected a JSON object (one event), found an array"), "{err}");
        let err = parse("{\"event\": \"A\", \"identities\": [{\"kind\": \"email\"}]}").unwrap_err();
        assert!(err.message.contains("needs both \"kind\" and \"value\""), "{err}");
        let err = parse("{\"event\": \"A\", \"identities\": [{\"kind\": 1, \"value\": \"x\"}]}").unwrap_err();
        assert!(err.message.contains("identities[0].\"kind\" must be a string, not a number"), "{err}");
        let err = parse("{\"event\": \"A\", \"identities\": {\"email\": \"x\"}}").unwrap_err();
        assert!(err.message.contains("must be an array"), "{err}");
        let err = parse("{\"event\": \"A\", \"name\": \"B\"}").unwrap_err();
        assert!(err.message.contains("differ"), "{err}");
        let err = parse("{\"userId\": \"1\", \"user_id\": \"2\"}").unwrap_err();
        assert!(err.message.contains("same field"), "{err}");
        let err = parse("{\"event\": \"A\", \"timestamp\": true}").unwrap_err();
        assert!(err.message.contains("\"timestamp\" must be"), "{err}");
        assert_eq!(parse("  \n").unwrap_err().message, "no events found");
    }

    #[test]
    fn non_object_properties_pass_through_for_the_node_to_reject() {
        let parsed = parse("{\"event\": \"A\", \"userId\": \"1\", \"properties\": [1]}").unwrap();
        assert_eq!(parsed.events[0].event.properties_json, "[1]");
    }

    #[test]
    fn unknown_fields_are_warned_about_once() {
        let parsed = parse("{\"event\":\"A\",\"userid\":\"1\"}\n{\"event\":\"B\",\"userid\":\"2\",\"integrations\":{}}\n").unwrap();
        assert_eq!(parsed.warnings.len(), 1);
        assert!(parsed.warnings[0].contains("\"userid\" (first in event 0, line 1)"), "{:?}", parsed.warnings);
    }

    #[test]
    fn events_from_flags_need_an_identity_and_a_track_name() {
        use crate::args::{Cli, Command, EventCommand};
        use clap::Parser;
        let args = |extra: &[&str]| {
            let cli = Cli::try_parse_from(["chorusctl", "event", "send"].iter().chain(extra)).unwrap();
            let Command::Event { command: EventCommand::Send(a) } = cli.command else { unreachable!() };
            a
        };
        let e = event_from_flags(
            &args(&["--name", "Viewed", "--email", "a@b.c", "--identity", "device_id=d", "--traits", "{\"x\":1}", "--timestamp", "1000"]),
            &mut ids(),
        )
        .unwrap();
        assert_eq!(e.r#type, "track");
        assert_eq!(e.message_id, "gen-1");
        assert_eq!(e.identities, vec![ident("email", "a@b.c"), ident("device_id", "d")]);
        assert_eq!(e.traits_json, "{\"x\":1}");
        assert_eq!(e.properties_json, "");
        assert_eq!(e.timestamp_ms, 1000);
        assert!(event_from_flags(&args(&["--email", "a@b.c"]), &mut ids()).unwrap_err().contains("--name"));
        assert!(event_from_flags(&args(&["--name", "X"]), &mut ids()).unwrap_err().contains("identity"));
        let e = event_from_flags(&args(&["--type", "identify", "--user-id", "1", "--message-id", "m"]), &mut ids()).unwrap();
        assert_eq!((e.r#type.as_str(), e.message_id.as_str()), ("identify", "m"));
    }

    #[test]
    fn dry_run_output_reads_back_as_the_same_event() {
        let parsed = parse("{\"messageId\":\"m\",\"event\":\"A\",\"userId\":\"1\",\"properties\":{\"a\":1},\"timestamp\":5}").unwrap();
        let e = &parsed.events[0].event;
        let again = parse(&event_to_json(e).to_string()).unwrap();
        let mut expected = e.clone();
        expected.r#type = "track".into();
        assert_eq!(again.events[0].event, expected);
    }

    #[test]
    fn message_ids_are_uuid_shaped_and_unique() {
        let a = new_message_id();
        let b = new_message_id();
        assert_ne!(a, b);
        let groups: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(groups, vec![8, 4, 4, 4, 12]);
        assert!(a.bytes().all(|c| c == b'-' || c.is_ascii_hexdigit()));
        // Distinct inputs give distinct ids, even when they differ in one bit.
        let mut seen = std::collections::HashSet::new();
        for t in 0..64u64 {
            for c in 0..64u64 {
                assert!(seen.insert(message_id_from(1 << t, c)));
            }
        }
    }
}
