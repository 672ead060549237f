//! Errors of the Segment ingest path: whole-request errors (their HTTP status and code
//! are decided here, in one place) and per-item errors, which never reject the rest of a
//! batch. Must not echo credentials (the Authorization header) into any message.

use crate::Endpoint;
use chorus_types::FieldError;

/// A problem with the request as a whole: nothing in it is ingested.
/// Every variant is permanent (retrying the same request fails the same way).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    #[error("no write key: send it as the basic-auth user name (Authorization: Basic base64(\"WRITE_KEY:\")) or as \"writeKey\" in the JSON body")]
    MissingWriteKey,
    #[error("authorization header is not valid: {reason}; send Authorization: Basic base64(\"WRITE_KEY:\")")]
    BadAuthorization { reason: String },
    #[error("request body is over the limit of {limit_bytes} bytes (counted after gzip decoding): send fewer events per request")]
    TooLarge { limit_bytes: usize },
    #[error("content-encoding {encoding:?} is not supported: send the body as plain JSON or gzip it with content-encoding: gzip")]
    UnsupportedEncoding { encoding: String },
    #[error("body is marked content-encoding: gzip but is not valid gzip ({reason}): compress the whole body or drop the header")]
    BadGzip { reason: String },
    #[error("body is not valid JSON ({reason}): send one JSON object encoded as UTF-8")]
    BadJson { reason: String },
    #[error("{field}: {message}")]
    BadRequest { field: String, message: String },
    #[error("batch has {count} calls; the limit is {limit}: split it into several requests")]
    TooManyItems { count: usize, limit: usize },
    #[error("body nests {depth} levels deep; the limit is {limit}: flatten the properties, traits or context")]
    TooDeep { depth: usize, limit: usize },
}

impl SegmentError {
    /// The HTTP status the server answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            SegmentError::MissingWriteKey | SegmentError::BadAuthorization { .. } => 401,
            SegmentError::TooLarge { .. } => 413,
            SegmentError::UnsupportedEncoding { .. } => 415,
            SegmentError::BadGzip { .. }
            | SegmentError::BadJson { .. }
            | SegmentError::BadRequest { .. }
            | SegmentError::TooManyItems { .. }
            | SegmentError::TooDeep { .. } => 400,
        }
    }

    /// A stable machine-readable code for the JSON error body. The official SDKs read
    /// `{"code": ..., "message": ...}` from error responses and show both.
    pub fn code(&self) -> &'static str {
        match self {
            SegmentError::MissingWriteKey => "missing_write_key",
            SegmentError::BadAuthorization { .. } => "bad_authorization",
            SegmentError::TooLarge { .. } => "too_large",
            SegmentError::UnsupportedEncoding { .. } => "unsupported_encoding",
            SegmentError::BadGzip { .. } => "bad_gzip",
            SegmentError::BadJson { .. } => "bad_json",
            SegmentError::BadRequest { .. } => "bad_request",
            SegmentError::TooManyItems { .. } => "too_many_calls",
            SegmentError::TooDeep { .. } => "too_deep",
        }
    }
}

/// One call of a request could not be turned into an event; the others are unaffected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[error("{field}: {message}")]
pub struct SegmentItemError {
    /// Position in `batch` (0 for single calls).
    pub index: usize,
    /// Path of the offending field in the request body, e.g. `batch[3].userId`
    /// (`userId` for single calls, `batch[3]` when the item itself is wrong).
    pub field: String,
    pub message: String,
}

impl SegmentItemError {
    pub(crate) fn new(endpoint: Endpoint, index: usize, field: &str, message: impl Into<String>) -> Self {
        SegmentItemError { index, field: item_path(endpoint, index, field), message: message.into() }
    }

    /// Re-address an error from `EventInput::validate` (which names Chorus fields) to
    /// the Segment request body, so the client sees e.g. `batch[2].messageId`.
    pub fn from_validation(endpoint: Endpoint, index: usize, e: FieldError) -> Self {
        let field = match e.field.as_str() {
            "message_id" => "messageId",
            // Identities come from several Segment fields; userId is the one to fix first.
            f if f.starts_with("identities") => "userId",
            f => f,
        };
        SegmentItemError::new(endpoint, index, field, e.message)
    }
}

/// `field` inside item `index` of a request to `endpoint`.
pub(crate) fn item_path(endpoint: Endpoint, index: usize, field: &str) -> String {
    match (endpoint, field.is_empty()) {
        (Endpoint::Batch, true) => format!("batch[{index}]"),
        (Endpoint::Batch, false) => format!("batch[{index}].{field}"),
        (_, true) => "body".to_string(),
        (_, false) => field.to_string(),
    }
}
