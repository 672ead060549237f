//! Key → shard routing: `shard = xxh3_64(kind \0 value, seed) mod S`.
//! The seed and the byte layout are part of the on-disk format: never change them.

use crate::{Identity, ShardId};

/// Fixed routing seed ("chorus01" little-endian). Changing it re-homes every key.
pub const ROUTING_SEED: u64 = u64::from_le_bytes(*b"chorus01");

/// A hash that is stable across builds, versions and platforms (xxh3, fixed seed):
/// for routing and for deterministic per-customer choices (holdouts, splits).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(bytes, ROUTING_SEED)
}

/// The shard that owns `identity`'s index record.
pub fn shard_of(identity: &Identity, shard_count: u32) -> ShardId {
    assert!(shard_count > 0);
    let h = stable_hash(&identity.key_bytes());
    (h % shard_count as u64) as ShardId
}

/// The strongest identity of a set (SPEC §3.1 priority), if any.
pub fn strongest(identities: &[Identity]) -> Option<&Identity> {
    identities.iter().min_by_key(|i| i.kind.priority())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IdentityKind;

    #[test]
    fn routing_is_stable_across_builds() {
        // These values are part of the data format; a change here re-homes every key.
        let id = Identity { kind: IdentityKind::UserId, value: "u-1".into() };
        let a = shard_of(&id, 64);
        assert_eq!(a, shard_of(&id, 64));
        assert!(a < 64);
        let spread: std::collections::HashSet<_> = (0..1000).map(|i| shard_of(&Identity { kind: IdentityKind::UserId, value: format!("u-{i}") }, 64)).collect();
        assert_eq!(spread.len(), 64, "keys must spread over every shard");
    }

    #[test]
    fn strongest_identity_wins() {
        let ids = vec![Identity { kind: IdentityKind::AnonymousId, value: "a".into() }, Identity { kind: IdentityKind::Email, value: "e@x.io".into() }];
        assert_eq!(strongest(&ids).unwrap().kind, IdentityKind::Email);
    }
}
