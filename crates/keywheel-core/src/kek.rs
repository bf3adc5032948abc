//! Key-encryption keys: how key material is wrapped at rest, and the ring of
//! master keys that serves a KEK rotation (see the [manual](crate::manual),
//! "Master-key (KEK) rotation").

use std::fmt;
use std::path::Path;
use std::sync::Arc;

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
    /// (conventionally `KEYWHEEL_MASTER_KEY`). An application that should
    /// survive a master-key rotation without downtime uses
    /// [`KekRing::from_env`] instead, which also reads a staged next key.
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
        wrap_aad(WRAP_AAD_LABEL, keyring, version)
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
            return Err(Error::wrong_master_key(&self.id, &wrapped.key_check, &self.key_check));
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

/// The associated data that binds a wrapped key to `(keyring, version)`:
/// `label ‖ u16 length ‖ canonical keyring id ‖ u32 version`, big-endian.
/// `label` names the KEK kind and format (e.g. `b"keywheel/wrap/v1"`), so two
/// kinds never accept each other's associated data. For KEKs that wrap with
/// an AEAD (core's [`LocalKek`], a PKCS#11 token's AES-GCM).
///
/// ```
/// use keywheel_core::{KeyVersion, KeyringId, Purpose, wrap_aad};
/// let id = KeyringId::new("acme", Purpose::Token)?;
/// let a = wrap_aad(b"label", &id, KeyVersion::FIRST);
/// assert_ne!(a, wrap_aad(b"label", &id, KeyVersion::FIRST.next().unwrap()));
/// # Ok::<(), keywheel_core::Error>(())
/// ```
pub fn wrap_aad(label: &[u8], keyring: &KeyringId, version: KeyVersion) -> Vec<u8> {
    let id = keyring.canonical();
    [label, &(id.len() as u16).to_be_bytes(), id.as_bytes(), &version.get().to_be_bytes()].concat()
}

/// The environment variable conventionally holding the master key (base64).
pub const MASTER_KEY_ENV: &str = "KEYWHEEL_MASTER_KEY";
/// The environment variable conventionally holding the *next* master key
/// (base64), staged ahead of a KEK rotation: see [`KekRing::from_env`].
pub const NEXT_MASTER_KEY_ENV: &str = "KEYWHEEL_MASTER_KEY_NEXT";

/// A KEK that wraps with a primary KEK and unwraps with whichever KEK's id a
/// wrapped key names (and, among KEKs of the same id, whose key check value
/// matches): lets applications keep reading and writing a store before,
/// during and after a KEK rotation.
///
/// Records and audit entries are sealed with the primary's integrity key and
/// verified with every KEK's ([`integrity_keys`](KeyEncryptionKey::integrity_keys)),
/// so everything written under either master key keeps verifying.
///
/// For a zero-downtime master-key rotation, give every process the next
/// master key ahead of time ([`KekRing::from_env`] with
/// `KEYWHEEL_MASTER_KEY_NEXT`), rewrap ([`Rotator::rotate_kek`](crate::Rotator::rotate_kek),
/// or `keywheel kek rotate`), then promote the next key to current and drop
/// the old one: the runbook is in the [manual](crate::manual), "Master-key (KEK) rotation".
///
/// ```
/// use keywheel_core::{KekRing, KeyEncryptionKey, LocalKek};
/// let current = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// let next = "HxwdHhscGxoZGBcWFRQTEhEQDw4NDAsKCQgHBgUEAwI=";
/// let ring = KekRing::from_base64(current, Some(next))?;
/// // The current key wraps; both unwrap.
/// assert_eq!(ring.id(), "local");
/// assert_eq!(ring.len(), 2);
/// # Ok::<(), keywheel_core::Error>(())
/// ```
#[derive(Debug)]
pub struct KekRing {
    primary: Arc<dyn KeyEncryptionKey>,
    others: Vec<Arc<dyn KeyEncryptionKey>>,
}

impl KekRing {
    /// Wrap with `primary`; unwrap with `primary` or any of `others` by id
    /// (then by key check value).
    pub fn new(primary: Arc<dyn KeyEncryptionKey>, others: Vec<Arc<dyn KeyEncryptionKey>>) -> Self {
        KekRing { primary, others }
    }

    /// A ring of local master keys: `current` (base64) wraps, `next` (base64),
    /// if given, also unwraps and verifies. A `next` equal to `current` is
    /// held once.
    pub fn from_base64(current: &str, next: Option<&str>) -> Result<Self> {
        Self::from_lookup(MASTER_KEY_ENV, NEXT_MASTER_KEY_ENV, |var| {
            let value = if var == MASTER_KEY_ENV { Some(current) } else { next };
            value.map(|v| Zeroizing::new(v.to_owned()))
        })
    }

    /// A ring from the environment: the current master key from `current_var`
    /// (required; conventionally [`MASTER_KEY_ENV`], `KEYWHEEL_MASTER_KEY`),
    /// which wraps, and the next one from `next_var` (optional;
    /// conventionally [`NEXT_MASTER_KEY_ENV`], `KEYWHEEL_MASTER_KEY_NEXT`),
    /// which also unwraps and verifies. Both base64. `next_var` unset or empty
    /// means no next key. Errors name the variable, never its value.
    ///
    /// ```no_run
    /// use keywheel_core::{KekRing, MASTER_KEY_ENV, NEXT_MASTER_KEY_ENV};
    /// let kek = KekRing::from_env(MASTER_KEY_ENV, NEXT_MASTER_KEY_ENV)?;
    /// # Ok::<(), keywheel_core::Error>(())
    /// ```
    pub fn from_env(current_var: &str, next_var: &str) -> Result<Self> {
        Self::from_lookup(current_var, next_var, |var| std::env::var(var).ok().map(Zeroizing::new))
    }

    /// [`from_env`](Self::from_env) over any lookup of variables (tests pass a map).
    fn from_lookup(
        current_var: &str,
        next_var: &str,
        lookup: impl Fn(&str) -> Option<Zeroizing<String>>,
    ) -> Result<Self> {
        let named = |var: &str, e: Error| Error::Kek {
            kek_id: LocalKek::DEFAULT_ID.into(),
            message: format!("{var} does not hold a master key: {e}"),
            retryable: false,
        };
        let current = lookup(current_var).ok_or_else(|| Error::Kek {
            kek_id: LocalKek::DEFAULT_ID.into(),
            message: format!("environment variable {current_var} is not set or not UTF-8"),
            retryable: false,
        })?;
        let current = LocalKek::from_base64(&current).map_err(|e| named(current_var, e))?;
        let next = match lookup(next_var).filter(|v| !v.trim().is_empty()) {
            Some(value) => Some(LocalKek::from_base64(&value).map_err(|e| named(next_var, e))?),
            None => None,
        };
        let others: Vec<Arc<dyn KeyEncryptionKey>> = match next {
            Some(next) if next.key_check() != current.key_check() => vec![Arc::new(next)],
            _ => Vec::new(),
        };
        Ok(KekRing::new(Arc::new(current), others))
    }

    /// Number of KEKs in the ring (the primary included).
    pub fn len(&self) -> usize {
        1 + self.others.len()
    }

    /// Always `false`: a ring holds at least its primary.
    pub fn is_empty(&self) -> bool {
        false
    }
}

#[async_trait]
impl KeyEncryptionKey for KekRing {
    fn id(&self) -> &str {
        self.primary.id()
    }
    async fn wrap(&self, keyring: &KeyringId, version: KeyVersion, material: &KeyMaterial) -> Result<WrappedKey> {
        self.primary.wrap(keyring, version, material).await
    }
    async fn integrity_key(&self) -> Result<IntegrityKey> {
        self.primary.integrity_key().await
    }
    async fn integrity_keys(&self) -> Result<Vec<IntegrityKey>> {
        let mut keys = Vec::new();
        for kek in std::iter::once(&self.primary).chain(&self.others) {
            for key in kek.integrity_keys().await? {
                if !keys.iter().any(|k: &IntegrityKey| k.id() == key.id()) {
                    keys.push(key);
                }
            }
        }
        Ok(keys)
    }
    async fn unwrap(&self, keyring: &KeyringId, version: KeyVersion, wrapped: &WrappedKey) -> Result<KeyMaterial> {
        // Several KEKs may share an id (a master key replaced by another under
        // the same name, as the CLI's `kek rotate` does): the key check value
        // tells them apart, so a wrong-master-key answer moves on to the next,
        // and if none fits the error names every key check value tried.
        let mut wrong: Option<Error> = None;
        for kek in std::iter::once(&self.primary).chain(&self.others).filter(|k| k.id() == wrapped.kek_id) {
            match kek.unwrap(keyring, version, wrapped).await {
                Err(Error::WrongMasterKey { kek_id, expected_key_check, given_key_checks }) => {
                    wrong = Some(match wrong {
                        Some(Error::WrongMasterKey { kek_id, expected_key_check, given_key_checks: mut all }) => {
                            for given in given_key_checks {
                                if !all.contains(&given) {
                                    all.push(given);
                                }
                            }
                            Error::WrongMasterKey { kek_id, expected_key_check, given_key_checks: all }
                        }
                        _ => Error::WrongMasterKey { kek_id, expected_key_check, given_key_checks },
                    });
                }
                other => return other,
            }
        }
        Err(wrong.unwrap_or_else(|| Error::KekMismatch {
            expected: self.primary.id().to_owned(),
            found: wrapped.kek_id.clone(),
        }))
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
        let err = wrong.unwrap(&id, v1, &w).await.expect_err("wrong master key");
        assert!(
            matches!(&err, Error::WrongMasterKey { kek_id, expected_key_check, given_key_checks, .. }
                if kek_id == "local" && expected_key_check == kek.key_check() && given_key_checks == &[wrong.key_check()]),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains(kek.key_check()) && message.contains(wrong.key_check()), "{message}");
        let other = KeyringId::new("u", Purpose::Token).expect("id");
        assert!(matches!(kek.unwrap(&other, v1, &w).await, Err(Error::Kek { .. })));
        let renamed = LocalKek::from_bytes(&[1; 32]).with_id("next");
        assert!(matches!(renamed.unwrap(&id, v1, &w).await, Err(Error::KekMismatch { .. })));
        assert!(LocalKek::from_slice(&[0; 31]).is_err());
        assert!(LocalKek::from_base64("not base64!").is_err());
    }

    fn b64(bytes: [u8; 32]) -> String {
        STANDARD.encode(bytes)
    }

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<Zeroizing<String>> + use<> {
        let map: std::collections::HashMap<String, String> =
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |var| map.get(var).map(|v| Zeroizing::new(v.clone()))
    }

    #[tokio::test]
    async fn a_ring_from_current_and_next_wraps_with_current_and_unwraps_with_both() {
        let id = KeyringId::new("t", Purpose::Token).expect("id");
        let v1 = KeyVersion::FIRST;
        let m = KeyMaterial::from_slice(&[9; 32]).expect("32");
        let (old, new) = (LocalKek::from_bytes(&[1; 32]), LocalKek::from_bytes(&[2; 32]));
        let under_old = old.wrap(&id, v1, &m).await.expect("wrap");
        let under_new = new.wrap(&id, v1, &m).await.expect("wrap");

        let lookup = vars(&[("CUR", &b64([1; 32])), ("NEXT", &b64([2; 32]))]);
        let staged = KekRing::from_lookup("CUR", "NEXT", lookup).expect("ring");
        assert_eq!(staged.len(), 2);
        // The current key wraps, both unwrap, both verify.
        assert_eq!(staged.wrap(&id, v1, &m).await.expect("wrap").key_check, old.key_check());
        for w in [&under_old, &under_new] {
            assert_eq!(staged.unwrap(&id, v1, w).await.expect("unwrap").expose_secret(), &[9; 32]);
        }
        let ids: Vec<String> = staged.integrity_keys().await.expect("keys").iter().map(|k| k.id().to_owned()).collect();
        let want: Vec<String> = [&old, &new].iter().map(|k| k.integrity.id().to_owned()).collect();
        assert_eq!(ids, want);
        assert_eq!(staged.integrity_key().await.expect("key").id(), old.integrity.id());

        // Promoted: the next key alone; keys still under the old one name both check values.
        let promoted = KekRing::from_base64(&b64([2; 32]), None).expect("ring");
        assert_eq!(promoted.len(), 1);
        assert_eq!(promoted.unwrap(&id, v1, &under_new).await.expect("unwrap").expose_secret(), &[9; 32]);
        let err = promoted.unwrap(&id, v1, &under_old).await.expect_err("old key dropped");
        assert!(
            matches!(&err, Error::WrongMasterKey { expected_key_check, given_key_checks, .. }
                if expected_key_check == old.key_check() && given_key_checks == &[new.key_check()]),
            "{err:?}"
        );
        // A ring of two wrong keys names both.
        let wrong = KekRing::from_base64(&b64([3; 32]), Some(&b64([4; 32]))).expect("ring");
        let err = wrong.unwrap(&id, v1, &under_old).await.expect_err("wrong keys");
        let given = [LocalKek::from_bytes(&[3; 32]), LocalKek::from_bytes(&[4; 32])].map(|k| k.key_check().to_owned());
        assert!(
            matches!(&err, Error::WrongMasterKey { given_key_checks, .. } if given_key_checks == &given),
            "{err:?}"
        );
        assert!(!format!("{err}{err:?}").contains(&b64([3; 32])), "no key bytes in errors");
    }

    #[test]
    fn ring_constructors_refuse_missing_or_bad_keys_naming_the_variable() {
        let message = |r: Result<KekRing>| r.expect_err("refused").to_string();
        // No current key.
        let m = message(KekRing::from_lookup("CUR", "NEXT", vars(&[("NEXT", &b64([2; 32]))])));
        assert!(m.contains("CUR is not set"), "{m}");
        // A bad current or next key names its variable, not its value.
        let m = message(KekRing::from_lookup("CUR", "NEXT", vars(&[("CUR", "c2VjcmV0")])));
        assert!(
            m.contains("CUR does not hold a master key") && m.contains("32 bytes") && !m.contains("c2VjcmV0"),
            "{m}"
        );
        let lookup = vars(&[("CUR", &b64([1; 32])), ("NEXT", "not base64!")]);
        let m = message(KekRing::from_lookup("CUR", "NEXT", lookup));
        assert!(m.contains("NEXT does not hold a master key") && m.contains("base64"), "{m}");
        // An unset or empty next key is no next key; one equal to the current is held once.
        for next in [None, Some(""), Some("  "), Some(b64([1; 32]).as_str())] {
            let mut pairs = vec![("CUR", b64([1; 32]))];
            if let Some(n) = next {
                pairs.push(("NEXT", n.to_owned()));
            }
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            assert_eq!(KekRing::from_lookup("CUR", "NEXT", vars(&pairs)).expect("ring").len(), 1, "{next:?}");
        }
    }
}
