//! Segment call JSON → `EventInput`: the mapping rules of this crate (see lib.rs docs).
//! Must not do I/O or read a clock, and must not let one bad call of a batch affect
//! another.

use crate::consent::merge_category_preferences;
use crate::depth::CALL_DEPTH_MAX;
use crate::message_id::derive_message_id;
use crate::{Endpoint, ParsedRequest, SegmentError, SegmentItemError};
use chorus_types::{EVENT_NAME_LEN_MAX, EventInput, EventType, Identity, IdentityKind, MESSAGE_ID_LEN_MAX, parse_rfc3339_ms};
use serde_json::{Map, Value};

/// Most calls accepted in one `/v1/batch` request (Segment's own limit).
pub const BATCH_ITEMS_MAX: usize = 2500;

/// Parse a decoded JSON body sent to `endpoint`. Whole-request problems (not JSON,
/// not an object, `batch` missing) are `Err`; problems of one call are an `Err` item.
pub fn parse_request(endpoint: Endpoint, json: &[u8]) -> Result<ParsedRequest, SegmentError> {
    // Nesting is checked before the parser recurses: a batch call nested too deep is
    // cut out (parsed as null) and answered with its own item error.
    let depths = crate::depth::scan(json);
    let mut deep_calls: Vec<(usize, usize)> = Vec::new();
    let mut rewritten: Vec<u8>;
    let mut json = json;
    if endpoint.event_type().is_some() {
        if depths.max > CALL_DEPTH_MAX {
            return Err(SegmentError::TooDeep { depth: depths.max, limit: CALL_DEPTH_MAX });
        }
    } else if !depths.deep_calls.is_empty() || depths.max > CALL_DEPTH_MAX + 2 {
        rewritten = Vec::with_capacity(json.len());
        let mut at = 0;
        for (index, range, depth) in &depths.deep_calls {
            rewritten.extend_from_slice(&json[at..range.start]);
            rewritten.extend_from_slice(b"null");
            at = range.end;
            deep_calls.push((*index, *depth));
        }
        rewritten.extend_from_slice(&json[at..]);
        let rest = crate::depth::scan(&rewritten).max;
        if rest > CALL_DEPTH_MAX + 2 {
            return Err(SegmentError::TooDeep { depth: rest, limit: CALL_DEPTH_MAX + 2 });
        }
        json = &rewritten;
    }
    let value: Value = serde_json::from_slice(json).map_err(|e| SegmentError::BadJson { reason: e.to_string() })?;
    let Value::Object(mut body) = value else {
        return Err(SegmentError::BadRequest {
            field: "body".into(),
            message: format!("must be a JSON object, got {}", chorus_types::json::json_kind(&value)),
        });
    };
    let write_key = match body.get("writeKey") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(s.trim().to_string()),
        Some(other) => {
            return Err(SegmentError::BadRequest {
                field: "writeKey".into(),
                message: format!("must be a string, got {}", chorus_types::json::json_kind(other)),
            });
        }
    };
    let items = match endpoint.event_type() {
        Some(event_type) => vec![map_call(endpoint, 0, Some(event_type), body, None)],
        None => {
            let batch = match body.remove("batch") {
                Some(Value::Array(batch)) => batch,
                None | Some(Value::Null) => {
                    return Err(SegmentError::BadRequest {
                        field: "batch".into(),
                        message: "is required: send {\"batch\": [call, ...]} with each call carrying its \"type\"".into(),
                    });
                }
                Some(other) => {
                    return Err(SegmentError::BadRequest {
                        field: "batch".into(),
                        message: format!("must be an array of calls, got {}", chorus_types::json::json_kind(&other)),
                    });
                }
            };
            if batch.len() > BATCH_ITEMS_MAX {
                return Err(SegmentError::TooManyItems { count: batch.len(), limit: BATCH_ITEMS_MAX });
            }
            // Segment applies a batch-level `context` to every call; the call's own keys win.
            let shared_context = match body.remove("context") {
                None | Some(Value::Null) => None,
                Some(Value::Object(c)) if c.is_empty() => None,
                Some(Value::Object(c)) => Some(c),
                Some(other) => {
                    return Err(SegmentError::BadRequest {
                        field: "context".into(),
                        message: format!("must be a JSON object, got {}", chorus_types::json::json_kind(&other)),
                    });
                }
            };
            batch
                .into_iter()
                .enumerate()
                .map(|(i, call)| match call {
                    _ if deep_calls.iter().any(|(d, _)| *d == i) => {
                        let depth = deep_calls.iter().find(|(d, _)| *d == i).map_or(0, |(_, depth)| *depth);
                        Err(SegmentItemError::new(
                            endpoint,
                            i,
                            "",
                            format!(
                                "nests {depth} levels deep; a call may nest at most {CALL_DEPTH_MAX} (properties, traits and context {} below the call): flatten it",
                                chorus_types::EVENT_JSON_DEPTH_MAX
                            ),
                        ))
                    }
                    Value::Object(call) => {
                        map_call(endpoint, i, None, call, shared_context.as_ref())
                    }
                    other => Err(SegmentItemError::new(
                        endpoint,
                        i,
                        "",
                        format!("must be a JSON object (one call), got {}", chorus_types::json::json_kind(&other)),
                    )),
                })
                .collect()
        }
    };
    Ok(ParsedRequest { endpoint, write_key, items })
}

/// Where a call sits in its request, for error paths.
#[derive(Clone, Copy)]
struct At {
    endpoint: Endpoint,
    index: usize,
}

impl At {
    fn err(self, field: &str, message: impl Into<String>) -> SegmentItemError {
        SegmentItemError::new(self.endpoint, self.index, field, message)
    }
}

fn map_call(
    endpoint: Endpoint,
    index: usize,
    endpoint_type: Option<EventType>,
    mut call: Map<String, Value>,
    shared_context: Option<&Map<String, Value>>,
) -> Result<EventInput, SegmentItemError> {
    let at = At { endpoint, index };
    let event_type = match endpoint_type {
        Some(t) => t,
        None => match call.get("type") {
            Some(Value::String(t)) => EventType::parse(t.trim())
                .ok_or_else(|| at.err("type", format!("{t:?} is not a call type: use track, identify, page, screen, group or alias")))?,
            None | Some(Value::Null) => {
                return Err(at.err("type", "is required for calls in a batch: one of track, identify, page, screen, group, alias"));
            }
            Some(other) => return Err(at.err("type", format!("must be a string, got {}", chorus_types::json::json_kind(other)))),
        },
    };

    let message_id = match take_id(at, &mut call, "messageId")? {
        Some(id) if id.len() > MESSAGE_ID_LEN_MAX => {
            return Err(at.err("messageId", format!("is {} bytes; the limit is {MESSAGE_ID_LEN_MAX}", id.len())));
        }
        Some(id) => id,
        None => derive_message_id(event_type.as_str(), &call),
    };
    let user_id = take_id(at, &mut call, "userId")?;
    let anonymous_id = take_id(at, &mut call, "anonymousId")?;
    let mut properties = take_object(at, &mut call, "properties")?;
    let mut traits = take_object(at, &mut call, "traits")?;
    let mut context = take_object(at, &mut call, "context")?;
    if let Some(shared) = shared_context {
        for (k, v) in shared {
            if !context.contains_key(k) {
                context.insert(k.clone(), v.clone());
            }
        }
    }

    // Name, and the fields particular to each call type.
    let mut previous_id = None;
    // Whether `traits` holds the call's own traits (not a copy of context.traits, nor group traits).
    let mut traits_are_users = event_type != EventType::Group;
    let name = match event_type {
        EventType::Track => match call.get("event") {
            Some(Value::String(e)) if !e.trim().is_empty() => e.trim().to_string(),
            None | Some(Value::Null) | Some(Value::String(_)) => {
                return Err(at.err("event", "is required for track calls: name the action, e.g. \"Product Viewed\""));
            }
            Some(other) => {
                return Err(at.err("event", format!("must be a string, got {}", chorus_types::json::json_kind(other))));
            }
        },
        EventType::Page | EventType::Screen => {
            let category = take_string(at, &call, "category")?;
            let name = take_string(at, &call, "name")?;
            match (category, name) {
                (Some(c), Some(n)) => format!("{c} {n}"),
                (Some(s), None) | (None, Some(s)) => s,
                (None, None) => String::new(),
            }
        }
        EventType::Identify => {
            if traits.is_empty()
                && let Some(Value::Object(ct)) = context.get("traits")
            {
                traits = ct.clone();
                traits_are_users = false; // identities come from context.traits below
            }
            String::new()
        }
        EventType::Group => {
            let group_id =
                take_id(at, &mut call, "groupId")?.ok_or_else(|| at.err("groupId", "is required for group calls: the id of the account or company"))?;
            properties.insert("group_id".into(), Value::String(group_id));
            String::new()
        }
        EventType::Alias => {
            let prev = take_id(at, &mut call, "previousId")?
                .ok_or_else(|| at.err("previousId", "is required for alias calls: the id the user had before (usually the anonymousId)"))?;
            properties.insert("previous_id".into(), Value::String(prev.clone()));
            previous_id = Some(prev);
            String::new()
        }
    };
    if name.len() > EVENT_NAME_LEN_MAX {
        let field = if event_type == EventType::Track { "event" } else { "name" };
        return Err(at.err(field, format!("is {} bytes; the limit is {EVENT_NAME_LEN_MAX}", name.len())));
    }

    // Identities (SPEC §4.2): ids first, then contact points from traits and device.
    if event_type == EventType::Alias && user_id.is_none() {
        return Err(at.err("userId", "is required for alias calls: the id the user is known by from now on"));
    }
    if user_id.is_none() && anonymous_id.is_none() {
        return Err(at.err("userId", "userId or anonymousId is required: every call must say which user it is about"));
    }
    let mut ids = Identities { at, pairs: Vec::with_capacity(4) };
    ids.push(IdentityKind::UserId, "userId", user_id)?;
    ids.push(IdentityKind::AnonymousId, "anonymousId", anonymous_id)?;
    ids.push(IdentityKind::AnonymousId, "previousId", previous_id)?;
    // Group traits describe the group (its email is the company's), not the user.
    if traits_are_users {
        ids.push(IdentityKind::Email, "traits.email", contact_trait(at, &traits, "traits", "email")?)?;
    }
    let context_traits = match context.get("traits") {
        None | Some(Value::Null) => None,
        Some(Value::Object(ct)) => Some(ct),
        Some(other) => {
            return Err(at.err("context.traits", format!("must be a JSON object, got {}", chorus_types::json::json_kind(other))));
        }
    };
    if let Some(ct) = context_traits {
        ids.push(IdentityKind::Email, "context.traits.email", contact_trait(at, ct, "context.traits", "email")?)?;
    }
    if traits_are_users {
        ids.push(IdentityKind::Phone, "traits.phone", contact_trait(at, &traits, "traits", "phone")?)?;
    }
    if let Some(ct) = context_traits {
        ids.push(IdentityKind::Phone, "context.traits.phone", contact_trait(at, ct, "context.traits", "phone")?)?;
    }
    match context.get("device") {
        None | Some(Value::Null) => {}
        Some(Value::Object(device)) => {
            ids.push(IdentityKind::DeviceId, "context.device.id", contact_trait(at, device, "context.device", "id")?)?;
            ids.push(IdentityKind::PushToken, "context.device.token", contact_trait(at, device, "context.device", "token")?)?;
        }
        Some(other) => {
            return Err(at.err("context.device", format!("must be a JSON object, got {}", chorus_types::json::json_kind(other))));
        }
    }
    let identities = ids.pairs;

    merge_category_preferences(&context, &mut traits).map_err(|(field, message)| at.err(&field, message))?;

    let (timestamp, timestamp_ms) = match timestamp_field(at, &call)? {
        Some((field, ts)) => match parse_rfc3339_ms(&ts) {
            Some(ms) => (ts, ms),
            None => {
                return Err(at.err(field, format!("{ts:?} is not an RFC 3339 timestamp (e.g. 2026-11-27T10:00:00.000Z)")));
            }
        },
        None => (String::new(), 0),
    };

    Ok(EventInput { message_id, event_type: event_type.as_str().to_string(), name, identities, properties, traits, context, timestamp, timestamp_ms })
}

/// Collects (kind, value) pairs, checking each value as `EventInput::validate` will,
/// so that a bad one is reported under the Segment field it came from.
struct Identities {
    at: At,
    pairs: Vec<(String, String)>,
}

impl Identities {
    fn push(&mut self, kind: IdentityKind, field: &str, value: Option<String>) -> Result<(), SegmentItemError> {
        let Some(value) = value else { return Ok(()) };
        Identity::normalize(kind.clone(), &value).map_err(|e| self.at.err(field, e.to_string()))?;
        let pair = (kind.as_str().to_string(), value);
        if !self.pairs.contains(&pair) {
            self.pairs.push(pair);
        }
        Ok(())
    }
}

/// `userId`-like ids: a non-empty string (trimmed) or a number (stringified).
/// Absent, null and empty strings are `None`.
fn take_id(at: At, call: &mut Map<String, Value>, field: &str) -> Result<Option<String>, SegmentItemError> {
    match call.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let t = s.trim();
            Ok(if t.is_empty() {
                None
            } else if t.len() == s.len() {
                Some(s)
            } else {
                Some(t.to_string())
            })
        }
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(at.err(field, format!("must be a string or a number, got {}", chorus_types::json::json_kind(&other)))),
    }
}

/// An optional string field; empty → `None`.
fn take_string(at: At, call: &Map<String, Value>, field: &str) -> Result<Option<String>, SegmentItemError> {
    match call.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
        Some(other) => Err(at.err(field, format!("must be a string, got {}", chorus_types::json::json_kind(other)))),
    }
}

/// An optional object field; absent or null → empty.
fn take_object(at: At, call: &mut Map<String, Value>, field: &str) -> Result<Map<String, Value>, SegmentItemError> {
    match call.remove(field) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m),
        Some(other) => Err(at.err(field, format!("must be a JSON object, got {}", chorus_types::json::json_kind(&other)))),
    }
}

/// A contact point inside an object (`traits.email`, `context.device.id`, ...):
/// string or number; absent, null or empty → `None`.
fn contact_trait(at: At, m: &Map<String, Value>, prefix: &str, key: &str) -> Result<Option<String>, SegmentItemError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(at.err(&format!("{prefix}.{key}"), format!("must be a string, got {}", chorus_types::json::json_kind(other)))),
    }
}

/// `timestamp`, else `originalTimestamp` (what the client recorded before any
/// clock-skew correction), with the field it came from.
fn timestamp_field(at: At, call: &Map<String, Value>) -> Result<Option<(&'static str, String)>, SegmentItemError> {
    for field in ["timestamp", "originalTimestamp"] {
        if let Some(ts) = take_string(at, call, field)? {
            return Ok(Some((field, ts)));
        }
    }
    Ok(None)
}
