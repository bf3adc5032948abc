//! Integrity keys: keys derived from a KEK that authenticate keywheel's own
//! records (keyring seals and the audit chain), so that whoever can write the
//! store or the log cannot forge them without the master key.

use std::fmt;

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Salt of the HKDF that turns a KEK secret into an [`IntegrityKey`].
const INTEGRITY_SALT: &[u8] = b"keywheel/integrity/v1";

/// A 32-byte MAC key derived from a key-encryption key, used to authenticate
/// keyring records ("seals") and audit entries.
///
/// It never leaves the process and is never written anywhere; its
/// [`id`](Self::id), a short check value, names it in stored seals and audit
/// entries so a verifier holding several keys (a [`KekRing`](crate::KekRing)
/// during a KEK rotation) knows which one to use. `Debug` shows the id only.
///
/// ```
/// use keywheel_core::IntegrityKey;
/// let key = IntegrityKey::derive(&[7u8; 32], b"example");
/// let tag = key.mac("keyring-seal", b"record bytes");
/// assert!(key.verify("keyring-seal", b"record bytes", &tag));
/// assert!(!key.verify("keyring-seal", b"other bytes", &tag));
/// assert!(!key.verify("audit-entry", b"record bytes", &tag));
/// ```
#[derive(Clone)]
pub struct IntegrityKey {
    id: String,
    key: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for IntegrityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntegrityKey").field("id", &self.id).finish_non_exhaustive()
    }
}

impl IntegrityKey {
    /// Derive the integrity key of a KEK secret:
    /// `HKDF-SHA256(salt = "keywheel/integrity/v1", ikm = secret, info = context)`.
    /// `context` distinguishes KEK kinds (e.g. `b"local"`); a KEK whose secret
    /// never leaves a KMS or HSM derives `secret` there (e.g. an HMAC of a fixed
    /// label computed inside the device) and passes it here.
    pub fn derive(secret: &[u8], context: &[u8]) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(INTEGRITY_SALT), secret);
        let mut key = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's output limit.
        #[allow(clippy::expect_used)]
        hk.expand(context, key.as_mut_slice()).expect("valid HKDF length");
        Self::from_bytes(key)
    }

    /// An integrity key from 32 bytes of secret material, used as is.
    pub fn from_bytes(key: Zeroizing<[u8; 32]>) -> Self {
        let mut id_tag = Self::tag_with(&key, "key id", b"");
        let id = id_tag[..8].iter().map(|b| format!("{b:02x}")).collect();
        zeroize::Zeroize::zeroize(&mut id_tag);
        IntegrityKey { id, key }
    }

    /// The key's check value (16 hex digits): names it, reveals nothing of it.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn tag_with(key: &[u8; 32], label: &str, data: &[u8]) -> [u8; 32] {
        // HMAC-SHA256 takes keys of any length.
        #[allow(clippy::expect_used)]
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(&(label.len() as u16).to_be_bytes());
        mac.update(label.as_bytes());
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// `HMAC-SHA256(key, u16-BE len(label) ‖ label ‖ data)`: the label keeps
    /// tags made for one kind of record from being valid for another.
    pub fn mac(&self, label: &str, data: &[u8]) -> [u8; 32] {
        Self::tag_with(&self.key, label, data)
    }

    /// [`mac`](Self::mac) as lower-case hex.
    pub fn mac_hex(&self, label: &str, data: &[u8]) -> String {
        self.mac(label, data).iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether `tag` is the MAC of `data` under `label`, compared in constant time.
    pub fn verify(&self, label: &str, data: &[u8], tag: &[u8]) -> bool {
        bool::from(self.mac(label, data).as_slice().ct_eq(tag))
    }

    /// Whether `tag_hex` is [`mac_hex`](Self::mac_hex) of `data`, compared in constant time.
    pub fn verify_hex(&self, label: &str, data: &[u8], tag_hex: &str) -> bool {
        bool::from(self.mac_hex(label, data).as_bytes().ct_eq(tag_hex.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_different_secrets_or_contexts_differ() {
        let a = IntegrityKey::derive(&[1; 32], b"local");
        let b = IntegrityKey::derive(&[2; 32], b"local");
        let c = IntegrityKey::derive(&[1; 32], b"other");
        assert_ne!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
        assert_eq!(a.id(), IntegrityKey::derive(&[1; 32], b"local").id());
        let tag = a.mac("x", b"data");
        assert!(!b.verify("x", b"data", &tag));
        assert!(a.verify_hex("x", b"data", &a.mac_hex("x", b"data")));
        assert!(!format!("{a:?}").contains("key:"));
    }
}
