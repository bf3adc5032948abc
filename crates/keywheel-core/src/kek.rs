//! Key-encryption keys: how key material is wrapped at rest (the [manual](crate::manual#3-security-model)).

use std::fmt;
use std::path::Path;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInOut, KeyInit};
use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hkdf::Hkdf;
use secrecy::SecretBox;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::{Error, IntegrityKey, KeyMaterial, KeyVersion, KeyringId, Result};

/// Key material as stored: encrypted under a KEK, with the KEK's id and key
/// check value so that a wrong master key is recognised before any unwrap.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// Id of the KEK that wrapped this key.
    pub kek_id: String,
    /// Key check value of that KEK (hex): a one-way fingerprint of the master
    /// key, compared in constant time.
    pub key_check: String,
    /// The wrapped material (format defined by the KEK), base64 in serde form.
    #[serde(with = "base64_bytes")]
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedKey")
            .field("kek_id", &self.kek_id)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

pub(crate) mod base64_bytes {
    use super::*;
    pub(crate) fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }
    pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

/// A key-encryption key: wraps and unwraps version material, binding each
/// wrapped key to its keyring id and version (associated data), so a wrapped
/// key copied to another keyring or version does not unwrap.
///
/// Core ships [`LocalKek`]; a KMS (AWS KMS, Vault transit, GCP KMS) plugs in
/// by implementing this trait.
///
/// Contract:
/// * `unwrap` of a key wrapped by a KEK with another id returns
///   [`Error::KekMismatch`]; of a key whose key check value does not match this
///   KEK's master key returns [`Error::WrongMasterKey`] without attempting to decrypt.
/// * Errors never contain key bytes.
#[async_trait]
pub trait KeyEncryptionKey: Send + Sync + fmt::Debug {
    /// This KEK's id, recorded with every key it wraps.
    fn id(&self) -> &str;

    /// Wrap `material` for `(keyring, version)`.
    async fn wrap(&self, keyring: &KeyringId, version: KeyVersion, material: &KeyMaterial) -> Result<WrappedKey>;

    /// Unwrap a key wrapped by [`wrap`](Self::wrap) for the same `(keyring, version)`.
    async fn unwrap(&self, keyring: &KeyringId, version: KeyVersion, wrapped: &WrappedKey) -> Result<KeyMaterial>;

    /// The [`IntegrityKey`] of this KEK: authenticates keyring records and the
    /// audit chain, so changing them needs the master key. Deterministic (the
    /// same KEK always gives the same key); it is never stored. A KEK whose
    /// secret stays in a KMS or HSM derives it there (an HMAC of a fixed label
    /// made by the device, passed to [`IntegrityKey::derive`]).
    async fn integrity_key(&self) -> Result<IntegrityKey>;

    /// Every integrity key this KEK can verify with, its own first. A
    /// [`KekRing`](crate::KekRing) returns one per KEK it holds, so records and
    /// audit entries made before a KEK rotation still verify during it.
    async fn integrity_keys(&self) -> Result<Vec<IntegrityKey>> {
        Ok(vec![self.integrity_key().await?])
    }
}

/// A KEK from a local 32-byte master key. Wrapping is AES-256-GCM under a key
/// derived from the master key with HKDF-SHA256, with a random nonce and the
/// keyring id and version as associated data.
///
/// ```
/// use keywheel_core::LocalKek;
/// let kek = LocalKek::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")?;
/// assert_eq!(keywheel_core::KeyEncryptionKey::id(&kek), "local");
/// # Ok::<(), keywheel_core::Error>(())
/// ```
pub struct LocalKek {
    id: String,
    cipher: Box<Aes256Gcm>,
    key_check: String,
    integrity: IntegrityKey,
}

impl fmt::Debug for LocalKek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKek").field("id", &self.id).finish_non_exhaustive()
    }
}

const KEK_SALT: &[u8] = b"keywheel/kek/v1";
const WRAP_AAD_LABEL: &[u8] = b"keywheel/wrap/v1";

impl LocalKek {
    /// The default id of a local KEK.
    pub const DEFAULT_ID: &'static str = "local";

    /// A KEK from the 32-byte master key.
    pub fn from_bytes(master: &[u8; 32]) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(KEK_SALT), master);
        let mut wrap_key = Zeroizing::new([0u8; 32]);
        let mut check = [0u8; 16];
        // Both lengths are far below HKDF-SHA256's output limit.
        #[allow(clippy::expect_used)]
        {
            hk.expand(b"wrap", wrap_key.as_mut_slice()).expect("valid HKDF length");
            hk.expand(b"key check value", &mut check).expect("valid HKDF length");
        }
        #[allow(clippy::expect_used)]
        let cipher = Box::new(Aes256Gcm::new_from_slice(wrap_key.as_slice()).expect("32-byte key"));
        let key_check = check.iter().map(|b| format!("{b:02x}")).collect();
        // Its own HKDF branch: knowing the integrity key reveals nothing of the wrapping key.
        let integrity = IntegrityKey::derive(master, b"local");
        LocalKek { id: Self::DEFAULT_ID.to_owned(), cipher, key_check, integrity }
    }

    /// A KEK from a master key given as a slice; it must be 32 bytes.
    pub fn from_slice(master: &[u8]) -> Result<Self> {
        let master: &[u8; 32] =
            master.try_into().map_err(|_| Error::InvalidKeyMaterial("the master key must be exactly 32 bytes"))?;
        Ok(Self::from_bytes(master))
    }

    /// A KEK from a base64 (standard alphabet) master key.
    pub fn from_base64(encoded: &str) -> Result<Self> {
        let bytes = Zeroizing::new(
            STANDARD
                .decode(encoded.trim())
                .map_err(|_| Error::InvalidKeyMaterial("the master key is not valid base64"))?,
        );
        Self::from_slice(&bytes)
    }

    /// A KEK from a base64 master key in the environment variable `var`
    /// (conventionally `KEYWHEEL_MASTER_KEY`).
    pub fn from_env(var: &str) -> Result<Self> {
        let value = Zeroizing::new(std::env::var(var).map_err(|_| Error::Kek {
            kek_id: Self::DEFAULT_ID.into(),
            message: format!("environment variable {var} is not set or not UTF-8"),
            retryable: false,
        })?);
        Self::from_base64(&value)
    }

    /// A KEK from a file holding the master key, either as 32 raw bytes or as base64 text.
    /// This is the only file access in keywheel-core and happens once, at construction.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| Error::Kek {
            kek_id: Self::DEFAULT_ID.into(),
            message: format!("cannot read master key file {}: {e}", path.display()),
            retryable: false,
        })?);
        if bytes.len() == 32 {
            return Self::from_slice(&bytes);
        }
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| Error::InvalidKeyMaterial("the master key file is neither 32 raw bytes nor base64"))?;
        Self::from_base64(text)
    }

    /// A new random master key, base64-encoded, for `init`-style tooling.
    /// Store it in a secret manager; losing it loses every wrapped key.
    pub fn generate_master_key() -> Result<SecretBox<str>> {
        let material = KeyMaterial::generate()?;
        Ok(SecretBox::from(STANDARD.encode(material.expose_secret())))
    }

    /// Give this KEK another id (e.g. to tell two master keys apart during KEK rotation).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// This KEK's key check value (hex); safe to display.
    pub fn key_check(&self) -> &str {
        &self.key_check
    }

    fn aad(keyring: &KeyringId, version: KeyVersion) -> Vec<u8> {
        let id = keyring.canonical();
        [WRAP_AAD_LABEL, &(id.len() as u16).to_be_bytes(), id.as_bytes(), &version.get().to_be_bytes()].concat()
    }

    fn unwrap_error(&self, keyring: &KeyringId, version: KeyVersion) -> Error {
        Error::Kek {
            kek_id: self.id.clone(),
            message: format!("wrapped key of {keyring} {version} is corrupt or belongs to another keyring/version"),
            retryable: false,
        }
    }
}

#[async_trait]
impl KeyEncryptionKey for LocalKek {
    fn id(&self) -> &str {
        &self.id
    }

    async fn wrap(&self, keyring: &KeyringId, version: KeyVersion, material: &KeyMaterial) -> Result<WrappedKey> {
        let nonce: [u8; 12] = crate::nonce::random_nonce()?;
        let mut buf = material.expose_secret().to_vec();
        let tag = self
            .cipher
            .encrypt_inout_detached(&nonce.into(), &Self::aad(keyring, version), buf.as_mut_slice().into())
            .map_err(|_| self.unwrap_error(keyring, version))?;
        let ciphertext = [&nonce[..], &buf, tag.as_slice()].concat();
        Ok(WrappedKey { kek_id: self.id.clone(), key_check: self.key_check.clone(), ciphertext })
    }

    async fn integrity_key(&self) -> Result<IntegrityKey> {
        Ok(self.integrity.clone())
    }

    async fn unwrap(&self, keyring: &KeyringId, version: KeyVersion, wrapped: &WrappedKey) -> Result<KeyMaterial> {
        if wrapped.kek_id != self.id {
            return Err(Error::KekMismatch { expected: self.id.clone(), found: wrapped.kek_id.clone() });
        }
        if !bool::from(wrapped.key_check.as_bytes().ct_eq(self.key_check.as_bytes())) {
            return Err(Error::WrongMasterKey { kek_id: self.id.clone() });
        }
        if wrapped.ciphertext.len() != 12 + KeyMaterial::LEN + 16 {
            return Err(self.unwrap_error(keyring, version));
        }
        let (nonce, rest) = wrapped.ciphertext.split_at(12);
        let (ct, tag) = rest.split_at(KeyMaterial::LEN);
        let mut buf = Zeroizing::new(ct.to_vec());
        let nonce = aes_gcm::Nonce::try_from(nonce).map_err(|_| self.unwrap_error(keyring, version))?;
        let tag = aes_gcm::Tag::try_from(tag).map_err(|_| self.unwrap_error(keyring, version))?;
        self.cipher
            .decrypt_inout_detached(&nonce, &Self::aad(keyring, version), buf.as_mut_slice().into(), &tag)
            .map_err(|_| self.unwrap_error(keyring, version))?;
        KeyMaterial::from_slice(&buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Purpose;

    #[tokio::test]
    async fn wrap_round_trip_and_wrong_master_key() {
        let id = KeyringId::new("t", Purpose::Token).expect("id");
        let v1 = KeyVersion::FIRST;
        let kek = LocalKek::from_bytes(&[1; 32]);
        let m = KeyMaterial::from_slice(&[9; 32]).expect("32");
        let w = kek.wrap(&id, v1, &m).await.expect("wrap");
        assert!(!w.ciphertext.windows(32).any(|win| win == [9u8; 32]));
        assert_eq!(kek.unwrap(&id, v1, &w).await.expect("unwrap").expose_secret(), &[9; 32]);
        let wrong = LocalKek::from_bytes(&[2; 32]);
        assert!(matches!(wrong.unwrap(&id, v1, &w).await, Err(Error::WrongMasterKey { kek_id }) if kek_id == "local"));
        let other = KeyringId::new("u", Purpose::Token).expect("id");
        assert!(matches!(kek.unwrap(&other, v1, &w).await, Err(Error::Kek { .. })));
        let renamed = LocalKek::from_bytes(&[1; 32]).with_id("next");
        assert!(matches!(renamed.unwrap(&id, v1, &w).await, Err(Error::KekMismatch { .. })));
        assert!(LocalKek::from_slice(&[0; 31]).is_err());
        assert!(LocalKek::from_base64("not base64!").is_err());
    }
}
