//! The versioned envelope every stored or replicated value is wrapped in:
//! `{format_version, body}` encoded with postcard. Enum variants are append-only.

use serde::{Serialize, de::DeserializeOwned};

/// Current format version written by this build.
pub const FORMAT_VERSION: u16 = 1;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unsupported format version {found} (this build reads up to {FORMAT_VERSION})")]
    UnsupportedVersion { found: u16 },
    #[error("corrupt value: {0}")]
    Corrupt(#[from] postcard::Error),
}

/// Encode `value` in the versioned envelope.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    postcard::to_extend(value, out).expect("postcard encoding into a Vec cannot fail")
}

/// Decode a value written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() < 2 {
        return Err(DecodeError::Corrupt(postcard::Error::DeserializeUnexpectedEnd));
    }
    let version = u16::from_le_bytes([bytes[0], bytes[1]]);
    if version == 0 || version > FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion { found: version });
    }
    Ok(postcard::from_bytes(&bytes[2..])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn envelope_round_trips_and_rejects_future_versions() {
        let v = (1u32, "x".to_string());
        let bytes = encode(&v);
        assert_eq!(decode::<(u32, String)>(&bytes).unwrap(), v);
        let mut future = bytes.clone();
        future[0] = 99;
        assert!(matches!(decode::<(u32, String)>(&future), Err(DecodeError::UnsupportedVersion { found: 99 })));
    }
}
