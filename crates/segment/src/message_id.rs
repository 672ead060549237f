//! Derived message ids for calls that come without `messageId`: a stable hash of the
//! call's canonical JSON, so a retry of the same payload gets the same id and dedups.
//! Must not depend on key order, whitespace or per-attempt fields (`sentAt`, ...).

use serde_json::{Map, Value};
use std::io::Write;

/// Prefix of derived ids, so they are recognizable in logs and exports.
pub const DERIVED_MESSAGE_ID_PREFIX: &str = "seg-";

/// Top-level fields that change between retries of the same call (or carry the
/// credential) and so are left out of the hash.
const VOLATILE_FIELDS: [&str; 5] = ["messageId", "sentAt", "receivedAt", "writeKey", "_metadata"];

/// `seg-` + 32 hex digits of FNV-1a-128 over `type` and the call's canonical JSON
/// (object keys sorted, no whitespace, volatile top-level fields left out).
pub fn derive_message_id(event_type: &str, call: &Map<String, Value>) -> String {
    let mut h = Fnv1a128::new();
    h.write_bytes(event_type.as_bytes());
    h.write_bytes(b"\n");
    let mut keys: Vec<&String> = call.keys().filter(|k| !VOLATILE_FIELDS.contains(&k.as_str())).collect();
    keys.sort_unstable();
    h.write_bytes(b"{");
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 {
            h.write_bytes(b",");
        }
        let _ = serde_json::to_writer(&mut h, k);
        h.write_bytes(b":");
        write_canonical(&mut h, &call[k]);
    }
    h.write_bytes(b"}");
    format!("{DERIVED_MESSAGE_ID_PREFIX}{:032x}", h.0)
}

fn write_canonical(h: &mut Fnv1a128, v: &Value) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_unstable();
            h.write_bytes(b"{");
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    h.write_bytes(b",");
                }
                // Strings and scalars: serde_json's compact form is already canonical.
                let _ = serde_json::to_writer(&mut *h, k);
                h.write_bytes(b":");
                write_canonical(h, &m[k]);
            }
            h.write_bytes(b"}");
        }
        Value::Array(a) => {
            h.write_bytes(b"[");
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    h.write_bytes(b",");
                }
                write_canonical(h, x);
            }
            h.write_bytes(b"]");
        }
        scalar => {
            let _ = serde_json::to_writer(&mut *h, scalar);
        }
    }
}

/// FNV-1a, 128-bit (offset basis and prime from the FNV specification).
struct Fnv1a128(u128);

impl Fnv1a128 {
    const OFFSET_BASIS: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013b;

    fn new() -> Self {
        Fnv1a128(Self::OFFSET_BASIS)
    }

    fn write_bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u128::from(b);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }
}

impl Write for Fnv1a128 {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_bytes(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(s: &str) -> Map<String, Value> {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn fnv1a128_matches_the_published_test_vectors() {
        assert_eq!(Fnv1a128::new().0, 0x6c62272e07bb014262b821756295c58d);
        let mut h = Fnv1a128::new();
        h.write_bytes(b"a");
        assert_eq!(h.0, 0xd228cb696f1a8caf78912b704e4a8964);
    }

    #[test]
    fn message_id_derivation_is_stable_across_key_order_and_whitespace() {
        let a = obj(r#"{"userId":"u1","event":"Signed Up","properties":{"plan":"pro","seats":3}}"#);
        let b = obj(r#"{ "properties": { "seats": 3, "plan": "pro" }, "event": "Signed Up", "userId": "u1" }"#);
        assert_eq!(derive_message_id("track", &a), derive_message_id("track", &b));
        // Pinned so a change of the derivation (which would break dedup across an upgrade) is noticed.
        assert_eq!(
            derive_message_id("track", &a),
            "seg-".to_string()
                + &format!("{:032x}", {
                    let mut h = Fnv1a128::new();
                    h.write_bytes(
                        br#"track
{"event":"Signed Up","properties":{"plan":"pro","seats":3},"userId":"u1"}"#,
                    );
                    h.0
                })
        );
    }

    #[test]
    fn message_id_derivation_ignores_per_attempt_fields() {
        let a = obj(r#"{"userId":"u1","event":"E","sentAt":"2026-11-27T10:00:00Z","writeKey":"k"}"#);
        let b = obj(r#"{"userId":"u1","event":"E","sentAt":"2026-11-27T10:00:09Z"}"#);
        assert_eq!(derive_message_id("track", &a), derive_message_id("track", &b));
    }

    #[test]
    fn message_id_derivation_differs_for_different_calls() {
        let a = obj(r#"{"userId":"u1","event":"E"}"#);
        let b = obj(r#"{"userId":"u2","event":"E"}"#);
        assert_ne!(derive_message_id("track", &a), derive_message_id("track", &b));
        assert_ne!(derive_message_id("track", &a), derive_message_id("page", &a));
        assert!(derive_message_id("track", &a).starts_with(DERIVED_MESSAGE_ID_PREFIX));
        assert_eq!(derive_message_id("track", &a).len(), 4 + 32);
    }
}
