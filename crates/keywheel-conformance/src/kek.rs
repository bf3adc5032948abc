//! Checks every [`KeyEncryptionKey`] runs: the local KEK in core's tests,
//! the AWS KMS KEK against a KMS server, the PKCS#11 KEK against a token
//! (the [manual](keywheel_core::manual#kms-and-hsm-master-keys)).
//!
//! Each check takes the KEK under test (and, where needed, a second KEK of
//! the same kind holding *another* key) and panics with a message naming the
//! broken rule. [`CountingKek`] wraps a real KEK to count the calls a load
//! makes ([`unwraps_once_per_version_per_load`]).
//!
//! ```
//! use std::sync::Arc;
//! use keywheel_core::{KeyEncryptionKey, LocalKek};
//!
//! # fn main() {
//! let kek: Arc<dyn KeyEncryptionKey> = Arc::new(LocalKek::from_bytes(&[1; 32]));
//! let other: Arc<dyn KeyEncryptionKey> = Arc::new(LocalKek::from_bytes(&[2; 32]));
//! keywheel_conformance::block_on(keywheel_conformance::kek::run_all(kek, other));
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use keywheel_core::{
    Algorithm, AuditSink, Error, IntegrityKey, KeyEncryptionKey, KeyMaterial, KeyStore, KeyVersion, KeyringId,
    Keywheel, Purpose, Result, WrappedKey, async_trait,
};

fn keyring(name: &str) -> KeyringId {
    KeyringId::new(name, Purpose::Token).expect("a valid keyring id")
}

fn material(byte: u8) -> KeyMaterial {
    KeyMaterial::from_slice(&[byte; KeyMaterial::LEN]).expect("32 bytes of material")
}

/// Wrap then unwrap gives the material back; the wrapped form names the KEK,
/// carries its key check value and does not contain the material; two wraps
/// of the same material agree on id and key check value; the integrity key is
/// deterministic (two calls, same id).
pub async fn round_trip(kek: Arc<dyn KeyEncryptionKey>) {
    let (id, v1) = (keyring("conformance"), KeyVersion::FIRST);
    let m = material(0x5a);
    let wrapped = kek.wrap(&id, v1, &m).await.unwrap_or_else(|e| panic!("wrap failed: {e}"));
    assert_eq!(wrapped.kek_id, kek.id(), "a wrapped key names the KEK that wrapped it");
    assert!(!wrapped.key_check.is_empty(), "a wrapped key carries the KEK's key check value");
    assert!(
        !wrapped.ciphertext.windows(KeyMaterial::LEN).any(|w| w == m.expose_secret().as_slice()),
        "the wrapped form must not contain the material"
    );
    let back = kek.unwrap(&id, v1, &wrapped).await.unwrap_or_else(|e| panic!("unwrap failed: {e}"));
    assert_eq!(back.expose_secret(), m.expose_secret(), "unwrap(wrap(m)) == m");
    let again = kek.wrap(&id, v1, &m).await.unwrap_or_else(|e| panic!("second wrap failed: {e}"));
    assert_eq!(again.key_check, wrapped.key_check, "the key check value is a property of the KEK");
    let first = kek.integrity_key().await.unwrap_or_else(|e| panic!("integrity_key failed: {e}"));
    let second = kek.integrity_key().await.unwrap_or_else(|e| panic!("integrity_key failed: {e}"));
    assert_eq!(first.id(), second.id(), "the integrity key is deterministic");
    let debug = format!("{kek:?}{wrapped:?}{first:?}");
    assert!(!debug.contains(&format!("{:?}", m.expose_secret())), "no key bytes in Debug");
}

/// A wrapped key moved to another keyring, or to another version of the same
/// keyring, does not unwrap: an error, not retryable, and never material.
pub async fn aad_binds_keyring_and_version(kek: Arc<dyn KeyEncryptionKey>) {
    let (id, v1) = (keyring("conformance"), KeyVersion::FIRST);
    let wrapped = kek.wrap(&id, v1, &material(0x33)).await.unwrap_or_else(|e| panic!("wrap failed: {e}"));
    let v2 = v1.next().expect("version 2");
    for (what, target, version) in [("another keyring", keyring("elsewhere"), v1), ("another version", id.clone(), v2)]
    {
        match kek.unwrap(&target, version, &wrapped).await {
            Ok(_) => panic!("a wrapped key moved to {what} must not unwrap"),
            Err(e) => assert!(!e.is_retryable(), "moved to {what}: the failure is not retryable: {e:?}"),
        }
    }
}

/// A key wrapped by `kek` given to `other` (same kind, same id, another key)
/// is [`Error::WrongMasterKey`] naming both key check values; and a wrapped
/// key naming another KEK id is [`Error::KekMismatch`].
pub async fn wrong_key_is_a_typed_error(kek: Arc<dyn KeyEncryptionKey>, other: Arc<dyn KeyEncryptionKey>) {
    let (id, v1) = (keyring("conformance"), KeyVersion::FIRST);
    let wrapped = kek.wrap(&id, v1, &material(0x77)).await.unwrap_or_else(|e| panic!("wrap failed: {e}"));
    let probe = other.wrap(&id, v1, &material(0x78)).await.unwrap_or_else(|e| panic!("wrap failed: {e}"));
    assert_eq!(kek.id(), other.id(), "the two KEKs must share an id for this check");
    assert_ne!(probe.key_check, wrapped.key_check, "two different keys have different key check values");
    match other.unwrap(&id, v1, &wrapped).await {
        Err(Error::WrongMasterKey { kek_id, expected_key_check, given_key_checks, .. }) => {
            assert_eq!(kek_id, kek.id(), "the error names the KEK");
            assert_eq!(expected_key_check, wrapped.key_check, "the error names the key that opens the key");
            assert!(given_key_checks.contains(&probe.key_check), "the error names the key tried: {given_key_checks:?}");
        }
        other => panic!("unwrap with another key must be WrongMasterKey, got {other:?}"),
    }
    let renamed = WrappedKey { kek_id: format!("{}-other", kek.id()), ..wrapped };
    assert!(
        matches!(kek.unwrap(&id, v1, &renamed).await, Err(Error::KekMismatch { .. })),
        "a key wrapped under another KEK id is KekMismatch"
    );
}

/// Counts the calls made to a real KEK, to check how many a load costs.
pub struct CountingKek {
    inner: Arc<dyn KeyEncryptionKey>,
    wraps: AtomicU64,
    unwraps: AtomicU64,
    integrity: AtomicU64,
}

impl fmt::Debug for CountingKek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountingKek").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl CountingKek {
    /// Count the calls made to `inner`.
    pub fn new(inner: Arc<dyn KeyEncryptionKey>) -> Self {
        CountingKek { inner, wraps: AtomicU64::new(0), unwraps: AtomicU64::new(0), integrity: AtomicU64::new(0) }
    }
    /// `wrap` calls so far.
    pub fn wraps(&self) -> u64 {
        self.wraps.load(Ordering::SeqCst)
    }
    /// `unwrap` calls so far.
    pub fn unwraps(&self) -> u64 {
        self.unwraps.load(Ordering::SeqCst)
    }
    /// `integrity_key` and `integrity_keys` calls so far.
    pub fn integrity_calls(&self) -> u64 {
        self.integrity.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl KeyEncryptionKey for CountingKek {
    fn id(&self) -> &str {
        self.inner.id()
    }
    async fn wrap(&self, keyring: &KeyringId, version: KeyVersion, material: &KeyMaterial) -> Result<WrappedKey> {
        self.wraps.fetch_add(1, Ordering::SeqCst);
        self.inner.wrap(keyring, version, material).await
    }
    async fn unwrap(&self, keyring: &KeyringId, version: KeyVersion, wrapped: &WrappedKey) -> Result<KeyMaterial> {
        self.unwraps.fetch_add(1, Ordering::SeqCst);
        self.inner.unwrap(keyring, version, wrapped).await
    }
    async fn integrity_key(&self) -> Result<IntegrityKey> {
        self.integrity.fetch_add(1, Ordering::SeqCst);
        self.inner.integrity_key().await
    }
    async fn integrity_keys(&self) -> Result<Vec<IntegrityKey>> {
        self.integrity.fetch_add(1, Ordering::SeqCst);
        self.inner.integrity_keys().await
    }
}

/// A keyring of `versions` versions (the last Active, the others
/// Deprecated) made through `kw`; returns its id.
pub async fn keyring_with_versions(kw: &Keywheel, name: &str, versions: u32) -> KeyringId {
    let id = keyring(name);
    kw.create_keyring(&id, Algorithm::Aes256Gcm).await.unwrap_or_else(|e| panic!("create_keyring failed: {e}"));
    for _ in 1..versions {
        let v = kw.add_version(&id).await.unwrap_or_else(|e| panic!("add_version failed: {e}"));
        kw.activate(&id, v).await.unwrap_or_else(|e| panic!("activate failed: {e}"));
    }
    id
}

/// Loading a keyring of 1, 3 and 10 versions through a [`Keywheel`] on
/// `store` costs exactly one `unwrap` per version; a cached access costs
/// none; a refresh costs one per version again (the material lives in the
/// snapshot only, never written anywhere).
pub async fn unwraps_once_per_version_per_load(
    kek: Arc<dyn KeyEncryptionKey>,
    store: Arc<dyn KeyStore>,
    audit: Arc<dyn AuditSink>,
) {
    let counting = Arc::new(CountingKek::new(kek));
    let kw = Keywheel::builder()
        .store(store)
        .audit(audit)
        .kek(Arc::clone(&counting) as Arc<dyn KeyEncryptionKey>)
        .build()
        .expect("a keywheel");
    for versions in [1u32, 3, 10] {
        let id = keyring_with_versions(&kw, &format!("load-{versions}"), versions).await;
        let before = counting.unwraps();
        let ring = kw.refresh(&id).await.unwrap_or_else(|e| panic!("load failed: {e}"));
        assert_eq!(counting.unwraps() - before, u64::from(versions), "one unwrap per version per load");
        let value = ring.encrypt(b"x", &keywheel_core::Context::empty()).expect("encrypt");
        let before = counting.unwraps();
        for _ in 0..5 {
            kw.decrypt(&id, &value, &keywheel_core::Context::empty()).await.expect("decrypt");
        }
        assert_eq!(counting.unwraps(), before, "a cached snapshot unwraps nothing");
        kw.refresh(&id).await.unwrap_or_else(|e| panic!("reload failed: {e}"));
        assert_eq!(counting.unwraps() - before, u64::from(versions), "a reload unwraps each version once again");
    }
}

/// [`round_trip`], [`aad_binds_keyring_and_version`] and
/// [`wrong_key_is_a_typed_error`] in turn.
pub async fn run_all(kek: Arc<dyn KeyEncryptionKey>, other: Arc<dyn KeyEncryptionKey>) {
    round_trip(Arc::clone(&kek)).await;
    aad_binds_keyring_and_version(Arc::clone(&kek)).await;
    wrong_key_is_a_typed_error(kek, other).await;
}
