//! Segment HTTP Tracking API requests (write-key auth, gzip bodies, track/identify/alias/
//! page/screen/group/batch JSON) → Chorus `EventInput`s. Pure: no I/O, no tokio, no axum,
//! no clock, no key checking; the HTTP server calls it and owns everything else.
//!
//! # For the server
//!
//! ```
//! use chorus_segment::{Endpoint, decode_body, parse_request, write_key_from_header};
//! # fn handler(path: &str, authorization: Option<&str>, content_encoding: Option<&str>, body: &[u8])
//! #     -> Result<(), chorus_segment::SegmentError> {
//! let endpoint = Endpoint::from_path(path).expect("routed here");
//! let header_key = write_key_from_header(authorization)?;                   // 401
//! let json = decode_body(body, content_encoding, endpoint.body_bytes_max())?; // 413 / 415 / 400
//! let request = parse_request(endpoint, &json)?;                             // 400
//! let write_key = request.resolve_write_key(header_key)?;                    // 401 when none
//! // ... check `write_key` against the configured source keys (constant-time) ...
//! for (index, item) in request.items.into_iter().enumerate() {
//!     match item {
//!         Ok(input) => { /* input.validate(), then ingest; a validation FieldError becomes
//!                          SegmentItemError::from_validation(endpoint, index, e) */ }
//!         Err(item_error) => { /* report item_error.field / .message for this index */ }
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Every whole-request `SegmentError` knows its `http_status()` and `code()`; answer
//! with `{"code": e.code(), "message": e.to_string()}` (the official SDKs display both).
//! A `SegmentItemError` affects only its own call (SPEC §9).
//!
//! # Mapping rules (Segment spec → Chorus)
//!
//! - **Endpoints**: `/v1/{track,identify,alias,page,screen,group}` take one call whose
//!   type is the endpoint (a `type` in the body is ignored); `/v1/batch` (also `/v1/import`)
//!   takes `{"batch": [call, ...], "context"?: {...}}`, each call with its `type`; a
//!   batch-level `context` is merged into each call's context (the call's keys win).
//!   analytics.js's short paths (`/v1/t`, `/v1/i`, `/v1/a`, `/v1/p`, `/v1/s`, `/v1/g`,
//!   `/v1/b`) are accepted too. At most [`BATCH_ITEMS_MAX`] calls per batch.
//! - **Write key**: the basic-auth user name (password ignored), else `writeKey` in the
//!   body; the header wins when both are given.
//! - **Identities** (`(kind, raw value)`, in this order, duplicates dropped):
//!   `userId` → `user_id`; `anonymousId` → `anonymous_id`; `traits.email`,
//!   `context.traits.email` → `email`; `traits.phone`, `context.traits.phone` → `phone`;
//!   `context.device.id` → `device_id`; `context.device.token` → `push_token`. Ids may
//!   be strings or numbers (numbers are stringified); empty strings count as absent.
//!   Every call except alias needs `userId` or `anonymousId` (error on `userId`). Each
//!   value is checked as `EventInput::validate` will check it, and a bad one (e.g. a
//!   phone not in E.164 form) rejects the call with the Segment field it came from.
//!   For group calls `traits` describe the group, so `traits.email`/`traits.phone` are
//!   not taken as the user's (only `context.traits.*` are).
//! - **alias**: links `previousId` to `userId`, both required. `userId` → `user_id`,
//!   `previousId` → `anonymous_id` (Segment's common use: the pre-login anonymous id);
//!   `previousId` is also kept in `properties.previous_id`. Type `alias`.
//! - **Names**: track → `event` (required); page/screen → `name`, or `category` +
//!   " " + `name` when both are given, or whichever is given, or empty.
//! - **Properties / traits**: `properties` as given. `traits` as given; identify falls
//!   back to `context.traits` when `traits` is absent or empty. group: `traits` are the
//!   group's traits and `groupId` (required) is stored in `properties.group_id`.
//!   `context` is kept whole (including `context.traits`, `library`, `consent`).
//! - **Consent**: `context.consent.categoryPreferences` (`{"Advertising": true, ...}`)
//!   becomes the reserved trait `consent` (SPEC §4.3) as
//!   `{"topics": {"advertising": "opted_in", ...}}` — category lower-cased, whitespace
//!   and `-` → `_`, `true` → `opted_in`, `false` → `opted_out` — merged into any
//!   `traits.consent` the caller sent, whose explicit topics win. This applies to every
//!   call type, so `traits.consent` may appear on track/page/... events too.
//! - **message_id**: `messageId` (string or number). When absent or empty (Segment is
//!   lenient; all official SDKs send one) it is derived: `seg-` + FNV-1a-128 of the call
//!   type and the call's canonical JSON (sorted keys, without `sentAt`, `receivedAt`,
//!   `writeKey`, `_metadata`), so a retried payload gets the same id and dedups — and
//!   two identical calls without `messageId` and `timestamp` count as one.
//! - **Timestamp**: `timestamp`, else `originalTimestamp` (RFC 3339, checked here);
//!   kept as the string and as `timestamp_ms`. Neither → empty / 0: the server may stamp
//!   its receive time. `sentAt`, `receivedAt`, `integrations`, `writeKey`, `_metadata`,
//!   `channel`, `version` and unknown top-level fields are dropped.
//! - **Limits**: the decoded body is bounded by the caller's `body_bytes_max`
//!   (Segment: [`CALL_BYTES_MAX`] per single call, [`BATCH_BYTES_MAX`] per batch; see
//!   [`Endpoint::body_bytes_max`]); gzip is decoded through a reader limited to
//!   `body_bytes_max + 1` bytes. Per-event size (properties + traits + context) is left
//!   to `EventInput::validate` (`EVENT_PAYLOAD_BYTES_MAX`, the same 32 KiB). Nesting is
//!   measured on the raw bytes before parsing: a call may nest [`CALL_DEPTH_MAX`] levels
//!   (the call and `EVENT_JSON_DEPTH_MAX` levels below it); a deeper call of a batch is
//!   rejected alone (its item error names it), a deeper single call or envelope is a
//!   whole-request `too_deep`.

mod auth;
mod body;
mod consent;
mod depth;
mod error;
mod message_id;
mod parse;

pub use auth::{AUTHORIZATION_LEN_MAX, write_key_from_header};
pub use body::decode_body;
pub use consent::{CONSENT_TRAIT, topic_for_category};
pub use depth::CALL_DEPTH_MAX;
pub use error::{SegmentError, SegmentItemError};
pub use message_id::{DERIVED_MESSAGE_ID_PREFIX, derive_message_id};
pub use parse::{BATCH_ITEMS_MAX, parse_request};

use chorus_types::{EventInput, EventType};

/// Segment's limit for the body of a single call (`/v1/track`, ...): 32 KiB.
pub const CALL_BYTES_MAX: usize = 32 * 1024;
/// Segment's limit for the body of a `/v1/batch` request: 500 KiB.
pub const BATCH_BYTES_MAX: usize = 500 * 1024;
const _: () = assert!(CALL_BYTES_MAX <= BATCH_BYTES_MAX && CALL_BYTES_MAX >= chorus_types::EVENT_PAYLOAD_BYTES_MAX);

/// Which Segment endpoint a request was sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Track,
    Identify,
    Alias,
    Page,
    Screen,
    Group,
    Batch,
}

impl Endpoint {
    /// The endpoint for a request path: `/v1/track`, `v1/track/`, `track`, analytics.js's
    /// short forms (`/v1/t`, `/v1/b`, ...) and `/v1/import` (an old name of batch).
    pub fn from_path(path: &str) -> Option<Endpoint> {
        let path = path.trim_matches('/');
        let last = path.strip_prefix("v1/").unwrap_or(path);
        Some(match last {
            "track" | "t" => Endpoint::Track,
            "identify" | "i" => Endpoint::Identify,
            "alias" | "a" => Endpoint::Alias,
            "page" | "p" => Endpoint::Page,
            "screen" | "s" => Endpoint::Screen,
            "group" | "g" => Endpoint::Group,
            "batch" | "b" | "import" => Endpoint::Batch,
            _ => return None,
        })
    }

    /// Segment's decoded-body limit for this endpoint, a sensible `body_bytes_max`.
    pub fn body_bytes_max(self) -> usize {
        match self {
            Endpoint::Batch => BATCH_BYTES_MAX,
            _ => CALL_BYTES_MAX,
        }
    }

    /// The call type of a single-call endpoint; `None` for batch.
    pub fn event_type(self) -> Option<EventType> {
        Some(match self {
            Endpoint::Track => EventType::Track,
            Endpoint::Identify => EventType::Identify,
            Endpoint::Alias => EventType::Alias,
            Endpoint::Page => EventType::Page,
            Endpoint::Screen => EventType::Screen,
            Endpoint::Group => EventType::Group,
            Endpoint::Batch => return None,
        })
    }
}

/// A parsed request: one item for single calls, one per call for batch, in order.
#[derive(Debug)]
pub struct ParsedRequest {
    pub endpoint: Endpoint,
    /// `writeKey` from the body, if any (analytics.js sends it there).
    pub write_key: Option<String>,
    pub items: Vec<Result<EventInput, SegmentItemError>>,
}

impl ParsedRequest {
    /// The write key to authenticate with: the Authorization header's (from
    /// [`write_key_from_header`]) if given, else the body's `writeKey`.
    pub fn resolve_write_key(&self, header_key: Option<String>) -> Result<String, SegmentError> {
        header_key.or_else(|| self.write_key.clone()).ok_or(SegmentError::MissingWriteKey)
    }
}

#[cfg(test)]
mod tests;
