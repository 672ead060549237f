//! Write keys of the HTTP APIs kept in the catalog: generation (random, shown once),
//! names, and the SHA-256 that is all the catalog stores.

use sha2::{Digest, Sha256};

/// Longest write key name.
pub const NAME_LEN_MAX: usize = 64;

/// Check a write key's name: 1–64 of letters, digits, `-`, `_` and `.`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > NAME_LEN_MAX {
        return Err(format!("must be 1 to {NAME_LEN_MAX} characters long"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Err(format!("{c:?} is not allowed: use letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

/// A new key: `ck_` and 32 random bytes in hex.
pub fn generate() -> Result<String, String> {
    use aws_lc_rs::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| "the system random source failed".to_string())?;
    Ok(format!("ck_{}", hex(&bytes)))
}

pub fn sha256(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// The first 12 hex digits of a key's SHA-256 (to tell keys apart in listings).
pub fn fingerprint(sha256: &[u8]) -> String {
    hex(&sha256[..sha256.len().min(6)])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Constant-time equality (for keys and their hashes: no early exit on the first
/// differing byte).
pub fn equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `key` hashes to one of `hashes` (every hash is compared, in constant time each).
pub fn matches_any(key: &str, hashes: &[Vec<u8>]) -> bool {
    let h = sha256(key);
    hashes.iter().fold(false, |found, k| found | equal(k, &h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keys_and_matching() {
        assert!(check_name("segment-prod_1.2").is_ok());
        assert!(check_name("").unwrap_err().contains("1 to 64"));
        assert!(check_name(&"a".repeat(65)).is_err());
        assert!(check_name("has space").unwrap_err().contains("' '"));
        let (a, b) = (generate().unwrap(), generate().unwrap());
        assert!(a.starts_with("ck_") && a.len() == 67 && a != b);
        let hashes = vec![sha256(&a)];
        assert!(matches_any(&a, &hashes));
        assert!(!matches_any(&b, &hashes));
        assert!(!matches_any(&a, &[]));
        assert_eq!(fingerprint(&hashes[0]).len(), 12);
    }
}
