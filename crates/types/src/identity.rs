//! Identity keys (SPEC §2, §4.2): kinds, priority, per-profile limits and normalization.
//! Normalization is pure and total: every raw value is either normalized or rejected
//! with an error that says what was wrong.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The kind of an identity key. Declaration order is the routing priority
/// (`user_id` strongest). Append-only: never reorder.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Debug)]
pub enum IdentityKind {
    UserId,
    Email,
    Phone,
    DeviceId,
    AnonymousId,
    PushToken,
    Custom(String),
}

impl IdentityKind {
    /// Routing priority: lower is stronger (SPEC §3.1:
    /// `user_id` > `email` > `phone` > `device_id` > `anonymous_id` > custom).
    pub fn priority(&self) -> u8 {
        match self {
            IdentityKind::UserId => 0,
            IdentityKind::Email => 1,
            IdentityKind::Phone => 2,
            IdentityKind::DeviceId => 3,
            IdentityKind::AnonymousId => 4,
            IdentityKind::PushToken => 5,
            IdentityKind::Custom(_) => 6,
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            IdentityKind::UserId => "user_id",
            IdentityKind::Email => "email",
            IdentityKind::Phone => "phone",
            IdentityKind::DeviceId => "device_id",
            IdentityKind::AnonymousId => "anonymous_id",
            IdentityKind::PushToken => "push_token",
            IdentityKind::Custom(name) => name,
        }
    }

    /// Parse a kind name; anything not built in is a custom kind (lower-case
    /// letters, digits and `_`, at most 64 bytes).
    pub fn parse(name: &str) -> Result<IdentityKind, IdentityError> {
        Ok(match name {
            "user_id" | "userId" => IdentityKind::UserId,
            "email" => IdentityKind::Email,
            "phone" => IdentityKind::Phone,
            "device_id" | "deviceId" => IdentityKind::DeviceId,
            "anonymous_id" | "anonymousId" => IdentityKind::AnonymousId,
            "push_token" => IdentityKind::PushToken,
            other => {
                let ok = !other.is_empty() && other.len() <= 64 && other.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                if !ok {
                    return Err(IdentityError::BadKind { kind: other.to_string() });
                }
                IdentityKind::Custom(other.to_string())
            }
        })
    }
}

impl fmt::Display for IdentityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A normalized identity key.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Debug)]
pub struct Identity {
    pub kind: IdentityKind,
    pub value: String,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// Longest identity value accepted, in bytes.
pub const IDENTITY_VALUE_LEN_MAX: usize = 512;

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum IdentityError {
    #[error(
        "identity kind {kind:?} is not valid: use user_id, email, phone, device_id, anonymous_id, push_token or a custom name of lower-case letters, digits and _"
    )]
    BadKind { kind: String },
    #[error("{kind} is empty")]
    Empty { kind: String },
    #[error("{kind} is {len} bytes long; the limit is {IDENTITY_VALUE_LEN_MAX}")]
    TooLong { kind: String, len: usize },
    #[error("email {value:?} is not a valid address (expected local@domain.tld)")]
    BadEmail { value: String },
    #[error("phone {value:?} is not a valid number: give it in E.164 form, e.g. +14155550123")]
    BadPhone { value: String },
    #[error("{kind} {value:?} contains control characters")]
    ControlChars { kind: String, value: String },
}

impl Identity {
    /// Normalize a raw value of `kind`: emails are trimmed and lower-cased, phones
    /// become E.164, other kinds are trimmed. Invalid values are rejected.
    pub fn normalize(kind: IdentityKind, raw: &str) -> Result<Identity, IdentityError> {
        let trimmed = raw.trim();
        let kind_name = kind.as_str().to_string();
        if trimmed.is_empty() {
            return Err(IdentityError::Empty { kind: kind_name });
        }
        if trimmed.len() > IDENTITY_VALUE_LEN_MAX {
            return Err(IdentityError::TooLong { kind: kind_name, len: trimmed.len() });
        }
        if trimmed.chars().any(char::is_control) {
            return Err(IdentityError::ControlChars { kind: kind_name, value: trimmed.to_string() });
        }
        let value = match &kind {
            IdentityKind::Email => normalize_email(trimmed)?,
            IdentityKind::Phone => normalize_phone(trimmed)?,
            _ => trimmed.to_string(),
        };
        Ok(Identity { kind, value })
    }

    /// The key bytes used for routing and for the identity index.
    pub fn key_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.value.len() + 16);
        out.extend_from_slice(self.kind.as_str().as_bytes());
        out.push(0);
        out.extend_from_slice(self.value.as_bytes());
        out
    }
}

fn normalize_email(raw: &str) -> Result<String, IdentityError> {
    let lower = raw.to_lowercase();
    let bad = || IdentityError::BadEmail { value: raw.to_string() };
    let (local, domain) = lower.rsplit_once('@').ok_or_else(bad)?;
    if local.is_empty()
        || domain.len() < 3
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
        || domain.contains("..")
        || lower.chars().any(|c| c.is_whitespace())
        || domain.contains('@')
    {
        return Err(bad());
    }
    Ok(lower)
}

fn normalize_phone(raw: &str) -> Result<String, IdentityError> {
    let bad = || IdentityError::BadPhone { value: raw.to_string() };
    // Accept "00" international prefix as "+".
    let candidate = match raw.strip_prefix("00") {
        Some(rest) => format!("+{rest}"),
        None => raw.to_string(),
    };
    if !candidate.starts_with('+') {
        return Err(bad());
    }
    let parsed = phonenumber::parse(None, &candidate).map_err(|_| bad())?;
    if !phonenumber::is_valid(&parsed) {
        return Err(bad());
    }
    Ok(parsed.format().mode(phonenumber::Mode::E164).to_string())
}

/// How many identities of each kind one profile may hold (SPEC §4.2).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdentityLimits {
    pub user_id: u32,
    pub email: u32,
    pub phone: u32,
    pub device_id: u32,
    pub push_token: u32,
    pub anonymous_id: u32,
    pub custom: u32,
}

impl Default for IdentityLimits {
    fn default() -> Self {
        IdentityLimits { user_id: 1, email: 5, phone: 5, device_id: 20, push_token: 20, anonymous_id: 100, custom: 10 }
    }
}

impl IdentityLimits {
    pub fn limit(&self, kind: &IdentityKind) -> u32 {
        match kind {
            IdentityKind::UserId => self.user_id,
            IdentityKind::Email => self.email,
            IdentityKind::Phone => self.phone,
            IdentityKind::DeviceId => self.device_id,
            IdentityKind::PushToken => self.push_token,
            IdentityKind::AnonymousId => self.anonymous_id,
            IdentityKind::Custom(_) => self.custom,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_trimmed_and_lower_cased() {
        let id = Identity::normalize(IdentityKind::Email, "  Ada.Lovelace@Example.COM ").unwrap();
        assert_eq!(id.value, "ada.lovelace@example.com");
    }

    #[test]
    fn invalid_emails_are_rejected_with_the_value() {
        for bad in ["ada", "ada@", "@example.com", "ada@example", "a b@example.com", "ada@.com"] {
            let err = Identity::normalize(IdentityKind::Email, bad).unwrap_err();
            assert!(matches!(err, IdentityError::BadEmail { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn phone_is_normalized_to_e164() {
        let id = Identity::normalize(IdentityKind::Phone, "+1 (415) 555-0123").unwrap();
        assert_eq!(id.value, "+14155550123");
        let id = Identity::normalize(IdentityKind::Phone, "0044 20 7946 0958").unwrap();
        assert_eq!(id.value, "+442079460958");
        let err = Identity::normalize(IdentityKind::Phone, "555-0123").unwrap_err();
        assert!(err.to_string().contains("E.164"), "{err}");
    }

    #[test]
    fn priority_follows_the_spec_order() {
        let mut kinds = vec![
            IdentityKind::Custom("crm".into()),
            IdentityKind::AnonymousId,
            IdentityKind::DeviceId,
            IdentityKind::Phone,
            IdentityKind::Email,
            IdentityKind::UserId,
        ];
        kinds.sort_by_key(|k| k.priority());
        assert_eq!(kinds[0], IdentityKind::UserId);
        assert_eq!(kinds[1], IdentityKind::Email);
        assert_eq!(kinds[2], IdentityKind::Phone);
        assert_eq!(kinds[3], IdentityKind::DeviceId);
        assert_eq!(kinds[4], IdentityKind::AnonymousId);
    }

    #[test]
    fn bad_kind_names_are_rejected() {
        assert!(IdentityKind::parse("Bad Kind").is_err());
        assert_eq!(IdentityKind::parse("crm_id").unwrap(), IdentityKind::Custom("crm_id".into()));
    }
}
