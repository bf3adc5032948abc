//! Algorithm registry: wire ids, nonce and tag sizes (the [wire format](crate::manual#2-wire-format-v1)).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, FormatError};

/// A value's algorithm, as named by byte 3 of the wire header.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// AES-256-GCM, 96-bit random nonce (id `0x01`). The default.
    #[default]
    Aes256Gcm,
    /// ChaCha20-Poly1305, 96-bit random nonce (id `0x02`).
    ChaCha20Poly1305,
    /// XChaCha20-Poly1305, 192-bit random nonce (id `0x03`).
    XChaCha20Poly1305,
    /// AES-256-GCM-SIV, nonce-misuse resistant (id `0x04`).
    Aes256GcmSiv,
    /// HMAC-SHA256 signatures, no nonce, 32-byte tag (id `0x10`).
    HmacSha256,
    /// Blind index tags (id `0x11`): HMAC-SHA256 truncated to 8–32 bytes, no
    /// nonce, under an index key derived from an AEAD version's material.
    /// Not a key algorithm: tags are made by a keyring whose versions encrypt
    /// (see [`BlindIndex`](crate::BlindIndex)).
    BlindIndex,
}

impl Algorithm {
    /// Every algorithm id of the wire format, in id order: the key algorithms
    /// and the blind index tags.
    pub const ALL: [Algorithm; 6] = [
        Algorithm::Aes256Gcm,
        Algorithm::ChaCha20Poly1305,
        Algorithm::XChaCha20Poly1305,
        Algorithm::Aes256GcmSiv,
        Algorithm::HmacSha256,
        Algorithm::BlindIndex,
    ];

    /// The algorithms a key version can have (everything but
    /// [`BlindIndex`](Algorithm::BlindIndex)), in id order.
    pub const KEYS: [Algorithm; 5] = [
        Algorithm::Aes256Gcm,
        Algorithm::ChaCha20Poly1305,
        Algorithm::XChaCha20Poly1305,
        Algorithm::Aes256GcmSiv,
        Algorithm::HmacSha256,
    ];

    /// The AEAD algorithms (everything but HMAC).
    pub const AEAD: [Algorithm; 4] =
        [Algorithm::Aes256Gcm, Algorithm::ChaCha20Poly1305, Algorithm::XChaCha20Poly1305, Algorithm::Aes256GcmSiv];

    /// The wire id byte.
    pub const fn id(self) -> u8 {
        match self {
            Algorithm::Aes256Gcm => 0x01,
            Algorithm::ChaCha20Poly1305 => 0x02,
            Algorithm::XChaCha20Poly1305 => 0x03,
            Algorithm::Aes256GcmSiv => 0x04,
            Algorithm::HmacSha256 => 0x10,
            Algorithm::BlindIndex => 0x11,
        }
    }

    /// The algorithm with this wire id.
    pub const fn from_id(id: u8) -> Result<Algorithm, FormatError> {
        Ok(match id {
            0x01 => Algorithm::Aes256Gcm,
            0x02 => Algorithm::ChaCha20Poly1305,
            0x03 => Algorithm::XChaCha20Poly1305,
            0x04 => Algorithm::Aes256GcmSiv,
            0x10 => Algorithm::HmacSha256,
            0x11 => Algorithm::BlindIndex,
            other => return Err(FormatError::UnknownAlgorithm(other)),
        })
    }

    /// Nonce length in bytes (0 for HMAC and blind index tags).
    pub const fn nonce_len(self) -> usize {
        match self {
            Algorithm::XChaCha20Poly1305 => 24,
            Algorithm::HmacSha256 | Algorithm::BlindIndex => 0,
            _ => 12,
        }
    }

    /// Tag length in bytes; for blind index tags, the shortest allowed
    /// ([`BlindIndex::MIN_LEN`](crate::BlindIndex::MIN_LEN)).
    pub const fn tag_len(self) -> usize {
        match self {
            Algorithm::HmacSha256 => 32,
            Algorithm::BlindIndex => crate::index::MIN_TAG_LEN,
            _ => 16,
        }
    }

    /// The shortest and (if bounded) longest binary form of a value of this
    /// algorithm: AEAD values have a payload of any length, signatures are
    /// exactly 40 bytes, blind index tags 16 to 40.
    pub const fn binary_len_range(self) -> (usize, Option<usize>) {
        let min = crate::wire::HEADER_LEN + self.nonce_len() + self.tag_len();
        match self {
            Algorithm::HmacSha256 => (min, Some(min)),
            Algorithm::BlindIndex => (min, Some(crate::wire::HEADER_LEN + crate::index::MAX_TAG_LEN)),
            _ => (min, None),
        }
    }

    /// Whether this is an AEAD (encrypting) algorithm.
    pub const fn is_aead(self) -> bool {
        !matches!(self, Algorithm::HmacSha256 | Algorithm::BlindIndex)
    }

    /// Whether a key version can have this algorithm (all but blind index tags).
    pub const fn is_key_algorithm(self) -> bool {
        !matches!(self, Algorithm::BlindIndex)
    }

    /// HKDF label of the [key derivation](crate::manual#2-wire-format-v1):
    /// `"aead"`, `"mac"` or (for the index key of an AEAD version) `"index"`.
    pub const fn kdf_label(self) -> &'static [u8] {
        match self {
            Algorithm::HmacSha256 => b"mac",
            Algorithm::BlindIndex => b"index",
            _ => b"aead",
        }
    }

    /// Safe number of encryptions per key version with random nonces, if the
    /// algorithm has such a limit: 2^32 for 96-bit random nonces (NIST SP 800-38D
    /// §8.3); none for XChaCha (192-bit nonces), AES-GCM-SIV (misuse resistant,
    /// but we keep the same conservative bound) and HMAC.
    pub const fn encryption_limit(self) -> Option<u64> {
        match self {
            Algorithm::Aes256Gcm | Algorithm::ChaCha20Poly1305 | Algorithm::Aes256GcmSiv => Some(1 << 32),
            Algorithm::XChaCha20Poly1305 | Algorithm::HmacSha256 | Algorithm::BlindIndex => None,
        }
    }

    /// Stable name, e.g. `aes-256-gcm`.
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::Aes256Gcm => "aes-256-gcm",
            Algorithm::ChaCha20Poly1305 => "chacha20-poly1305",
            Algorithm::XChaCha20Poly1305 => "xchacha20-poly1305",
            Algorithm::Aes256GcmSiv => "aes-256-gcm-siv",
            Algorithm::HmacSha256 => "hmac-sha256",
            Algorithm::BlindIndex => "blind-index",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Parses the name of a key algorithm ([`Algorithm::KEYS`]); `blind-index`
/// names tags, not keys, and is refused.
impl FromStr for Algorithm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        if s == Algorithm::BlindIndex.name() {
            return Err(Error::InvalidArgument(
                "blind-index is the algorithm of index tags, not of keys: index tags are made by a keyring \
                 whose versions encrypt"
                    .into(),
            ));
        }
        Algorithm::KEYS
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| Error::InvalidArgument(format!("unknown algorithm name {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_unknown_ids_are_typed() {
        for a in Algorithm::ALL {
            assert_eq!(Algorithm::from_id(a.id()), Ok(a));
            assert_eq!(a.name().parse::<Algorithm>().is_ok(), a.is_key_algorithm(), "{a}");
        }
        assert!(Algorithm::KEYS.iter().all(|a| a.is_key_algorithm()));
        for id in 0..=255u8 {
            if !Algorithm::ALL.iter().any(|a| a.id() == id) {
                assert_eq!(Algorithm::from_id(id), Err(FormatError::UnknownAlgorithm(id)));
            }
        }
    }
}
