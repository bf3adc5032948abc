//! Keyring record authentication (invariant I9): the seal of a
//! [`KeyringRecord`], its canonical byte encoding, and the store decorator
//! through which [`Keywheel`](crate::Keywheel) seals every write and verifies
//! every read. See the [manual](crate::manual), "Record authentication".

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{
    Error, IntegrityKey, KeyEncryptionKey, KeyOrigin, KeyState, KeyStore, KeyringChange, KeyringId, KeyringRecord,
    Lease, Policy, Result, RotationJob, Timestamp,
};

/// The label under which [`IntegrityKey::mac`] computes keyring seals, so a
/// seal is never valid as another kind of tag (an audit entry's, say).
pub const SEAL_LABEL: &str = "keyring-seal";

/// Version byte that starts [`KeyringRecord::seal_message`]; a new encoding
/// gets a new number.
pub const SEAL_ENCODING_V1: u8 = 0x01;

/// Version byte of the encoding of records that use reversible retirement or
/// erasure (a version's `disabled_at`/`destroy_after`, the keyring's
/// `erased_at`): encoding v1 followed by those fields. Records without them
/// keep encoding v1, so seals made before these fields existed still verify.
pub const SEAL_ENCODING_V2: u8 = 0x02;

/// The authentication tag of a keyring record's lifecycle fields: an
/// HMAC-SHA256 under an [`IntegrityKey`] derived from the KEK, over
/// [`KeyringRecord::seal_message`]. Stores keep it with the record and never
/// compute or check it; [`Keywheel`](crate::Keywheel) does both.
///
/// Neither field is secret: `key_id` is the integrity key's check value and
/// `mac` a tag that cannot be forged without the master key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RecordSeal {
    /// [`IntegrityKey::id`] of the key that made the seal (16 hex digits).
    pub key_id: String,
    /// The HMAC-SHA256 tag, 64 lower-case hex digits.
    pub mac: String,
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Lengths of ids, names and wrapped keys are far below 4 GiB; saturating
    // keeps the encoding total (an absurd length only makes verification fail).
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn put_time(out: &mut Vec<u8>, t: Option<Timestamp>) {
    match t {
        None => out.push(0),
        Some(t) => {
            out.push(1);
            out.extend_from_slice(&t.as_millis().to_be_bytes());
        }
    }
}

fn origin_name(origin: KeyOrigin) -> &'static str {
    match origin {
        KeyOrigin::Generated => "generated",
        KeyOrigin::Imported => "imported",
    }
}

impl KeyringRecord {
    /// The bytes a seal authenticates (encoding v1), as documented in the
    /// [manual](crate::manual): the keyring id, algorithm and creation time,
    /// and per version its number, algorithm, state, origin, wrapped key (or
    /// its absence), every timestamp, the compromised flag and the version it
    /// replaced (what a rollback returns to). The generation
    /// and the usage counts (`encryptions`) are deliberately left out: usage
    /// is flushed by every process with a plain additive update.
    ///
    /// A record with an erasure time or any version with a disable or
    /// quarantine-end time is encoded v2 ([`SEAL_ENCODING_V2`]): the v1 fields,
    /// then the erasure time and per version both times. The first byte
    /// tells the encodings apart, so removing those fields breaks the seal too.
    pub fn seal_message(&self) -> Vec<u8> {
        let v2 = self.erased_at.is_some()
            || self.versions.iter().any(|v| v.disabled_at.is_some() || v.destroy_after.is_some());
        let mut out = Vec::with_capacity(64 + self.versions.len() * 180);
        out.push(if v2 { SEAL_ENCODING_V2 } else { SEAL_ENCODING_V1 });
        put_bytes(&mut out, self.id.canonical().as_bytes());
        out.push(self.algorithm.id());
        out.extend_from_slice(&self.created_at.as_millis().to_be_bytes());
        out.extend_from_slice(&u32::try_from(self.versions.len()).unwrap_or(u32::MAX).to_be_bytes());
        for v in &self.versions {
            out.extend_from_slice(&v.version.get().to_be_bytes());
            out.push(v.algorithm.id());
            put_bytes(&mut out, v.state.as_str().as_bytes());
            put_bytes(&mut out, origin_name(v.origin).as_bytes());
            match &v.wrapped {
                None => out.push(0),
                Some(w) => {
                    out.push(1);
                    put_bytes(&mut out, w.kek_id.as_bytes());
                    put_bytes(&mut out, w.key_check.as_bytes());
                    put_bytes(&mut out, &w.ciphertext);
                }
            }
            put_time(&mut out, Some(v.created_at));
            put_time(&mut out, v.activated_at);
            put_time(&mut out, v.deprecated_at);
            put_time(&mut out, v.retired_at);
            out.push(u8::from(v.compromised));
            match v.replaced {
                None => out.push(0),
                Some(r) => {
                    out.push(1);
                    out.extend_from_slice(&r.get().to_be_bytes());
                }
            }
        }
        if v2 {
            put_time(&mut out, self.erased_at);
            for v in &self.versions {
                put_time(&mut out, v.disabled_at);
                put_time(&mut out, v.destroy_after);
            }
        }
        out
    }

    /// The seal of this record's current lifecycle fields under `key`.
    pub fn seal_with(&self, key: &IntegrityKey) -> RecordSeal {
        RecordSeal { key_id: key.id().to_owned(), mac: key.mac_hex(SEAL_LABEL, &self.seal_message()) }
    }

    /// Check the record's seal with whichever of `keys` made it (compared in
    /// constant time). [`Error::RecordTampered`] naming the keyring if the
    /// record has no seal, was sealed by none of `keys`, or does not match it.
    pub fn verify_seal(&self, keys: &[IntegrityKey]) -> Result<()> {
        let tampered = |detail: String| Error::RecordTampered { keyring: self.id.clone(), detail };
        let Some(seal) = &self.seal else {
            return Err(tampered("the record carries no seal".into()));
        };
        let Some(key) = keys.iter().find(|k| k.id() == seal.key_id) else {
            let held: Vec<&str> = keys.iter().map(IntegrityKey::id).collect();
            return Err(tampered(format!(
                "it is sealed under integrity key {}, which the configured KEK does not hold ({})",
                seal.key_id,
                held.join(", ")
            )));
        };
        if key.verify_hex(SEAL_LABEL, &self.seal_message(), &seal.mac) {
            Ok(())
        } else {
            Err(tampered("its lifecycle fields do not match its seal".into()))
        }
    }
}

/// A [`KeyStore`] decorator that seals every keyring write and verifies every
/// keyring read, installed by [`KeywheelBuilder::build`](crate::KeywheelBuilder::build)
/// around the store it is given; [`Keywheel::store`](crate::Keywheel::store)
/// returns it, so core code that writes through it cannot forget the seal.
pub(crate) struct SealingStore {
    inner: Arc<dyn KeyStore>,
    kek: Arc<dyn KeyEncryptionKey>,
    keys: OnceLock<(IntegrityKey, Vec<IntegrityKey>)>,
}

impl fmt::Debug for SealingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Shows as the store it wraps: the seal is an implementation detail.
        self.inner.fmt(f)
    }
}

impl SealingStore {
    pub(crate) fn new(inner: Arc<dyn KeyStore>, kek: Arc<dyn KeyEncryptionKey>) -> Self {
        SealingStore { inner, kek, keys: OnceLock::new() }
    }

    /// The store as given to the builder (no sealing, no verification).
    pub(crate) fn inner(&self) -> &Arc<dyn KeyStore> {
        &self.inner
    }

    /// The KEK's sealing key and every key it verifies with (cached: both are
    /// deterministic per KEK, and a KMS-backed KEK may pay a call for them).
    async fn keys(&self) -> Result<&(IntegrityKey, Vec<IntegrityKey>)> {
        if let Some(keys) = self.keys.get() {
            return Ok(keys);
        }
        let primary = self.kek.integrity_key().await?;
        let mut all = self.kek.integrity_keys().await?;
        if !all.iter().any(|k| k.id() == primary.id()) {
            all.insert(0, primary.clone());
        }
        Ok(self.keys.get_or_init(|| (primary, all)))
    }

    /// The seal of `record` under the KEK's integrity key.
    pub(crate) async fn seal(&self, record: &KeyringRecord) -> Result<RecordSeal> {
        Ok(record.seal_with(&self.keys().await?.0))
    }

    /// Verify `record` as loaded for `id`. A record that is unsealed or
    /// sealed by none of this KEK's keys is first checked against the KEK
    /// itself: if its wrapped keys name another master key, that is the error
    /// reported ([`Error::WrongMasterKey`], [`Error::KekMismatch`]) rather
    /// than tampering, since a wrong master key also derives another
    /// integrity key. Either way nothing is used or written.
    pub(crate) async fn verify(&self, id: &KeyringId, record: &KeyringRecord) -> Result<()> {
        if record.id != *id {
            return Err(Error::RecordTampered {
                keyring: id.clone(),
                detail: format!("the store returned the record of keyring {}", record.id),
            });
        }
        let keys = self.keys().await?;
        let result = record.verify_seal(&keys.1);
        // Only when no key of ours made the seal: a mismatch under one of our
        // keys is tampering, whatever the wrapped keys say.
        let foreign = record.seal.as_ref().is_none_or(|s| keys.1.iter().all(|k| k.id() != s.key_id));
        if result.is_err()
            && foreign
            && let Some(v) = record.versions.iter().rev().find(|v| v.state != KeyState::Retired && v.wrapped.is_some())
            && let Some(w) = &v.wrapped
            && let Err(e @ (Error::WrongMasterKey { .. } | Error::KekMismatch { .. })) =
                self.kek.unwrap(id, v.version, w).await
        {
            // (An `Ok` is dropped at once: `KeyMaterial` zeroizes itself.)
            return Err(e);
        }
        result
    }

    /// Apply `changes` to the keyring whose verified record (at its generation)
    /// is `record`, sealing the result: the seal of `record.apply(changes)` is
    /// appended as a last [`KeyringChange::Seal`], so the store writes record
    /// and seal in one compare-and-set without knowing the key.
    pub(crate) async fn update_from(&self, record: &KeyringRecord, changes: &[KeyringChange]) -> Result<KeyringRecord> {
        let mut next = record.clone();
        next.apply(changes)?;
        let mut sealed = changes.to_vec();
        sealed.push(KeyringChange::Seal(self.seal(&next).await?));
        self.inner.update_keyring(&record.id, record.generation, &sealed).await
    }
}

/// Whether `changes` only touch fields the seal leaves out (usage counts).
fn outside_seal(changes: &[KeyringChange]) -> bool {
    !changes.is_empty() && changes.iter().all(|c| matches!(c, KeyringChange::RecordUsage { .. }))
}

#[async_trait]
impl KeyStore for SealingStore {
    async fn create_keyring(&self, record: &KeyringRecord) -> Result<()> {
        let mut sealed = record.clone();
        sealed.seal = Some(self.seal(record).await?);
        self.inner.create_keyring(&sealed).await
    }

    async fn load_keyring(&self, id: &KeyringId) -> Result<Option<KeyringRecord>> {
        let Some(record) = self.inner.load_keyring(id).await? else { return Ok(None) };
        self.verify(id, &record).await?;
        Ok(Some(record))
    }

    async fn list_keyrings(&self) -> Result<Vec<KeyringId>> {
        self.inner.list_keyrings().await
    }

    async fn update_keyring(
        &self,
        id: &KeyringId,
        expected_generation: u64,
        changes: &[KeyringChange],
    ) -> Result<KeyringRecord> {
        if outside_seal(changes) {
            return self.inner.update_keyring(id, expected_generation, changes).await;
        }
        // Seal the result of applying `changes` to the verified record of the
        // expected generation; the store's compare-and-set still decides races.
        let record = self.load_keyring(id).await?.ok_or_else(|| Error::KeyringNotFound(id.clone()))?;
        record.check_generation(expected_generation)?;
        self.update_from(&record, changes).await
    }

    async fn acquire_lease(&self, id: &KeyringId, holder: &str, ttl: Duration, now: Timestamp) -> Result<Lease> {
        self.inner.acquire_lease(id, holder, ttl, now).await
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration, now: Timestamp) -> Result<Lease> {
        self.inner.renew_lease(lease, ttl, now).await
    }

    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        self.inner.release_lease(lease).await
    }
    async fn load_lease(&self, id: &KeyringId) -> Result<Option<Lease>> {
        self.inner.load_lease(id).await
    }

    async fn save_job(&self, job: &RotationJob, lease: &Lease) -> Result<()> {
        self.inner.save_job(job, lease).await
    }

    async fn load_job(&self, id: &str) -> Result<Option<RotationJob>> {
        self.inner.load_job(id).await
    }

    async fn list_jobs(&self, keyring: &KeyringId) -> Result<Vec<RotationJob>> {
        self.inner.list_jobs(keyring).await
    }

    async fn save_policy(&self, keyring: &KeyringId, policy: &Policy) -> Result<()> {
        self.inner.save_policy(keyring, policy).await
    }

    async fn load_policy(&self, keyring: &KeyringId) -> Result<Option<Policy>> {
        self.inner.load_policy(keyring).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Algorithm, KeyVersion, Purpose, VersionRecord, WrappedKey};

    fn record() -> KeyringRecord {
        let id = KeyringId::new("acme", Purpose::Token).expect("id");
        let mut r = KeyringRecord::new(id, Algorithm::Aes256Gcm, Timestamp::from_millis(1_000));
        r.versions.push(VersionRecord {
            version: KeyVersion::FIRST,
            algorithm: Algorithm::Aes256Gcm,
            state: KeyState::Active,
            origin: KeyOrigin::Generated,
            wrapped: Some(WrappedKey { kek_id: "local".into(), key_check: "00".into(), ciphertext: vec![1, 2, 3] }),
            created_at: Timestamp::from_millis(1_000),
            activated_at: Some(Timestamp::from_millis(1_000)),
            deprecated_at: None,
            retired_at: None,
            disabled_at: None,
            destroy_after: None,
            compromised: false,
            replaced: None,
            encryptions: 0,
        });
        r
    }

    #[test]
    fn seal_covers_lifecycle_fields_not_generation_or_usage() {
        let key = IntegrityKey::derive(&[3; 32], b"local");
        let mut r = record();
        r.seal = Some(r.seal_with(&key));
        assert!(r.verify_seal(std::slice::from_ref(&key)).is_ok());

        let mut usage = r.clone();
        usage.generation += 7;
        usage.versions[0].encryptions = 99;
        assert!(usage.verify_seal(std::slice::from_ref(&key)).is_ok(), "generation and usage are outside the seal");

        let edits: Vec<fn(&mut KeyringRecord)> = vec![
            |r| r.versions[0].state = KeyState::Deprecated,
            |r| r.versions[0].compromised = true,
            |r| r.versions[0].algorithm = Algorithm::ChaCha20Poly1305,
            |r| r.versions[0].origin = KeyOrigin::Imported,
            |r| r.versions[0].activated_at = None,
            |r| r.versions[0].deprecated_at = Some(Timestamp::from_millis(5)),
            |r| r.versions[0].wrapped = None,
            |r| r.versions[0].replaced = KeyVersion::new(7).ok(),
            |r| r.versions[0].disabled_at = Some(Timestamp::from_millis(5)),
            |r| r.versions[0].destroy_after = Some(Timestamp::from_millis(5)),
            |r| r.erased_at = Some(Timestamp::from_millis(5)),
            |r| r.algorithm = Algorithm::XChaCha20Poly1305,
            |r| r.created_at = Timestamp::from_millis(2),
            |r| r.id = KeyringId::new("other", Purpose::Token).expect("id"),
            |r| r.versions.clear(),
            |r| r.seal = None,
        ];
        for (i, edit) in edits.into_iter().enumerate() {
            let mut t = r.clone();
            edit(&mut t);
            assert!(
                matches!(t.verify_seal(std::slice::from_ref(&key)), Err(Error::RecordTampered { .. })),
                "edit {i} must break the seal"
            );
        }
        let other = IntegrityKey::derive(&[4; 32], b"local");
        let err = r.verify_seal(&[other]).expect_err("another key");
        assert!(err.to_string().contains("acme/token"), "{err}");
    }

    #[test]
    fn encoding_v1_is_stable() {
        let m = record().seal_message();
        assert_eq!(m[0], SEAL_ENCODING_V1);
        assert_eq!(&m[1..5], &10u32.to_be_bytes());
        assert_eq!(&m[5..15], b"acme/token");
        assert_eq!(m[15], Algorithm::Aes256Gcm.id());
        // A seal made before reversible retirement existed (same bytes) verifies.
        assert_eq!(
            sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&m))[..4],
            [0xb6, 0x98, 0x72, 0x84][..],
            "encoding v1 of an unchanged record must not change"
        );
    }

    #[test]
    fn disabled_and_erased_records_use_encoding_v2_and_cover_the_new_fields() {
        let key = IntegrityKey::derive(&[3; 32], b"local");
        let mut r = record();
        r.versions[0].state = KeyState::Disabled;
        r.versions[0].disabled_at = Some(Timestamp::from_millis(2_000));
        r.versions[0].destroy_after = Some(Timestamp::from_millis(9_000));
        let m = r.seal_message();
        assert_eq!(m[0], SEAL_ENCODING_V2);
        assert_eq!(&m[1..m.len() - 19], &record_v1_body_with_state(KeyState::Disabled)[1..]);
        r.seal = Some(r.seal_with(&key));
        assert!(r.verify_seal(std::slice::from_ref(&key)).is_ok());
        let mut later = r.clone();
        later.versions[0].destroy_after = Some(Timestamp::from_millis(99_000));
        assert!(later.verify_seal(std::slice::from_ref(&key)).is_err(), "moving the quarantine breaks the seal");
        let mut stripped = r.clone();
        stripped.versions[0].disabled_at = None;
        stripped.versions[0].destroy_after = None;
        assert!(stripped.verify_seal(std::slice::from_ref(&key)).is_err(), "dropping the fields breaks the seal");
    }

    fn record_v1_body_with_state(state: KeyState) -> Vec<u8> {
        let mut r = record();
        r.versions[0].state = state;
        r.seal_message()
    }
}
