//! Stable, printable identifiers: shards, nodes and customers.
//! Must not depend on anything but std and serde.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A shard of the key space: `shard = hash(key) mod S`.
pub type ShardId = u32;
/// A node of the cluster; never reused.
pub type NodeId = u64;

/// One customer. Opaque and stable: the shard it was created in (16 bits) and a
/// per-shard sequence number (48 bits). Printed as `cu_` followed by 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CustomerId(pub u64);

/// Most shards a cluster can have (the shard number is 16 bits of a [`CustomerId`]).
pub const SHARD_COUNT_MAX: u32 = 1 << 16;
const SEQ_BITS: u32 = 48;

impl CustomerId {
    pub fn new(shard: ShardId, seq: u64) -> Self {
        assert!(shard < SHARD_COUNT_MAX, "shard {shard} out of range");
        assert!(seq < (1u64 << SEQ_BITS), "customer sequence exhausted");
        CustomerId(((shard as u64) << SEQ_BITS) | seq)
    }
    /// The shard that created this customer (and holds its state unless moved by a merge).
    pub fn home_shard(self) -> ShardId {
        (self.0 >> SEQ_BITS) as ShardId
    }
    pub fn seq(self) -> u64 {
        self.0 & ((1u64 << SEQ_BITS) - 1)
    }
}

impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cu_{:016x}", self.0)
    }
}
impl fmt::Debug for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid customer id {value:?}: expected `cu_` followed by 16 hex digits")]
pub struct CustomerIdParseError {
    pub value: String,
}

impl FromStr for CustomerId {
    type Err = CustomerIdParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CustomerIdParseError { value: s.to_string() };
        let hex = s.strip_prefix("cu_").ok_or_else(err)?;
        if hex.len() != 16 {
            return Err(err());
        }
        u64::from_str_radix(hex, 16).map(CustomerId).map_err(|_| err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customer_id_round_trips_and_keeps_its_home_shard() {
        let id = CustomerId::new(63, 12345);
        assert_eq!(id.home_shard(), 63);
        assert_eq!(id.seq(), 12345);
        let printed = id.to_string();
        assert_eq!(printed, "cu_003f000000003039");
        assert_eq!(printed.parse::<CustomerId>().unwrap(), id);
        assert!("cu_12".parse::<CustomerId>().is_err());
        assert!("xx_003f000000003039".parse::<CustomerId>().is_err());
    }
}
