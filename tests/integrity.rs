//! Invariant I9 on the memory backend: keyring records are sealed under a
//! KEK-derived key; a record changed behind keywheel's back (a direct store
//! write, a seal from another master key, a stripped seal) is refused with
//! `Error::RecordTampered` naming the keyring, and nothing is written.

use std::sync::Arc;
use std::time::Duration;

use keywheel::memory::{MemoryAuditSink, MemoryKeyStore};
use keywheel::{
    Algorithm, AuditKind, Clock, Context, Error, KekRing, KeyEncryptionKey, KeyState, KeyStore, KeyVersion,
    KeyringChange, KeyringId, KeyringRecord, Keywheel, LocalKek, ManualClock, Purpose, RotateOptions, Rotator,
    Timestamp,
};
use keywheel_conformance::integrity::{assert_tampered, tampered_keyring_is_refused_everywhere};

struct Setup {
    kw: Keywheel,
    store: Arc<dyn KeyStore>,
    audit: Arc<MemoryAuditSink>,
    clock: ManualClock,
    id: KeyringId,
}

const MASTER: [u8; 32] = [7; 32];

fn kw_over(setup: &Setup, kek: Arc<dyn KeyEncryptionKey>) -> Keywheel {
    Keywheel::builder()
        .store(Arc::clone(&setup.store))
        .kek(kek)
        .audit(Arc::clone(&setup.audit) as Arc<dyn keywheel::AuditSink>)
        .clock(Arc::new(setup.clock.clone()))
        .refresh_interval(Duration::ZERO)
        .build()
        .expect("builder")
}

fn v(n: u32) -> KeyVersion {
    KeyVersion::new(n).expect("nonzero")
}

fn ctx() -> Context {
    Context::field("users", "email", "1")
}

/// A keyring whose v2 is Active and v1 Deprecated, with one value on each.
async fn setup() -> (Setup, Vec<u8>, Vec<u8>) {
    let store: Arc<dyn KeyStore> = Arc::new(MemoryKeyStore::new());
    let audit = Arc::new(MemoryAuditSink::new());
    let clock = ManualClock::new(Timestamp::from_millis(1_800_000_000_000));
    let id = KeyringId::new("acme", Purpose::Token).expect("id");
    let kw = Keywheel::builder()
        .store(Arc::clone(&store))
        .kek(Arc::new(LocalKek::from_bytes(&MASTER)))
        .audit(Arc::clone(&audit) as Arc<dyn keywheel::AuditSink>)
        .clock(Arc::new(clock.clone()))
        .refresh_interval(Duration::ZERO)
        .build()
        .expect("builder");
    kw.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("create");
    let on_v1 = kw.encrypt(&id, b"old", &ctx()).await.expect("encrypt");
    kw.add_version(&id).await.expect("add");
    kw.activate(&id, v(2)).await.expect("activate");
    let on_v2 = kw.encrypt(&id, b"new", &ctx()).await.expect("encrypt");
    (Setup { kw, store, audit, clock, id }, on_v1, on_v2)
}

/// Every entry point that reads the record refuses it, and nothing is written.
async fn assert_refused_everywhere(s: &Setup, kw: &Keywheel, on_v1: &[u8]) {
    let before = s.store.load_keyring(&s.id).await.expect("load").expect("present");
    let audited = s.audit.events().len();
    let id = &s.id;
    tampered_keyring_is_refused_everywhere(kw, id, on_v1, &ctx()).await;
    assert_tampered(kw.apply_audited(&before, &[], &[]).await, id, "apply_audited of the tampered record");
    let after = s.store.load_keyring(&s.id).await.expect("load").expect("present");
    assert_eq!(after, before, "nothing written");
    assert_eq!(s.audit.events().len(), audited, "nothing audited");
}

#[tokio::test]
async fn every_write_is_sealed_and_usage_flushes_keep_the_seal() {
    let (s, on_v1, _) = setup().await;
    let key = LocalKek::from_bytes(&MASTER).integrity_key().await.expect("key");
    let record = s.store.load_keyring(&s.id).await.expect("load").expect("present");
    let seal = record.seal.clone().expect("sealed");
    assert_eq!(seal.key_id, key.id());
    record.verify_seal(std::slice::from_ref(&key)).expect("valid seal");
    // Usage counts are outside the seal: a flush is a plain additive update.
    s.kw.flush_usage(&s.id).await.expect("flush");
    let flushed = s.store.load_keyring(&s.id).await.expect("load").expect("present");
    assert!(flushed.versions.iter().any(|v| v.encryptions > 0));
    assert_eq!(flushed.generation, record.generation, "a usage-only update keeps the generation");
    let other = kw_over(&s, Arc::new(LocalKek::from_bytes(&MASTER)));
    assert_eq!(&other.decrypt(&s.id, &on_v1, &ctx()).await.expect("decrypts")[..], b"old");
}

#[tokio::test]
async fn a_version_reactivated_by_a_direct_store_write_is_refused() {
    let (s, on_v1, _) = setup().await;
    // A writer with store access but no master key rolls v1 back in.
    let record = s.store.load_keyring(&s.id).await.expect("load").expect("present");
    let now = s.clock.now();
    s.store
        .update_keyring(
            &s.id,
            record.generation,
            &[
                KeyringChange::SetState { version: v(2), state: KeyState::Deprecated, at: now },
                KeyringChange::SetState { version: v(1), state: KeyState::Active, at: now },
            ],
        )
        .await
        .expect("raw write");
    // Another process, and the one that holds a (now stale) snapshot.
    let fresh = kw_over(&s, Arc::new(LocalKek::from_bytes(&MASTER)));
    assert_refused_everywhere(&s, &fresh, &on_v1).await;
    assert_tampered(s.kw.refresh(&s.id).await, &s.id, "refresh of the running instance");
}

#[tokio::test]
async fn a_seal_made_under_another_master_key_is_refused() {
    let (s, on_v1, _) = setup().await;
    let record = s.store.load_keyring(&s.id).await.expect("load").expect("present");
    let foreign = LocalKek::from_bytes(&[9; 32]).integrity_key().await.expect("key");
    let mut forged = record.clone();
    forged.versions[0].compromised = true;
    s.store
        .update_keyring(&s.id, record.generation, &[KeyringChange::Seal(forged.seal_with(&foreign))])
        .await
        .expect("raw write");
    let fresh = kw_over(&s, Arc::new(LocalKek::from_bytes(&MASTER)));
    assert_refused_everywhere(&s, &fresh, &on_v1).await;
}

#[tokio::test]
async fn a_wrong_master_key_is_reported_as_such_not_as_tampering() {
    let (s, _, _) = setup().await;
    let wrong = kw_over(&s, Arc::new(LocalKek::from_bytes(&[8; 32])));
    assert!(matches!(wrong.keyring(&s.id).await, Err(Error::WrongMasterKey { .. })));
}

/// A copy of the keyring's record as written before record authentication.
async fn legacy_store(s: &Setup) -> (Setup, KeyringRecord) {
    let mut record = s.store.load_keyring(&s.id).await.expect("load").expect("present");
    record.seal = None;
    let store: Arc<dyn KeyStore> = Arc::new(MemoryKeyStore::new());
    store.create_keyring(&record).await.expect("raw create");
    let legacy = Setup {
        kw: s.kw.clone(),
        store,
        audit: Arc::new(MemoryAuditSink::new()),
        clock: s.clock.clone(),
        id: s.id.clone(),
    };
    let kw = kw_over(&legacy, Arc::new(LocalKek::from_bytes(&MASTER)));
    (Setup { kw, ..legacy }, record)
}

#[tokio::test]
async fn an_unsealed_record_is_refused_until_sealed_explicitly() {
    let (s, on_v1, on_v2) = setup().await;
    let (legacy, record) = legacy_store(&s).await;
    assert_refused_everywhere(&legacy, &legacy.kw, &on_v1).await;
    assert!(matches!(legacy.kw.seal_unsealed(&legacy.id, "  ").await, Err(Error::ReasonRequired(_))));
    let wrong = kw_over(&legacy, Arc::new(LocalKek::from_bytes(&[8; 32])));
    assert!(matches!(wrong.seal_unsealed(&legacy.id, "reviewed").await, Err(Error::WrongMasterKey { .. })));
    assert!(legacy.audit.events().is_empty(), "refusals write nothing");

    assert!(legacy.kw.seal_unsealed(&legacy.id, "reviewed by ops, ticket 42").await.expect("seal"));
    let events = legacy.audit.events();
    assert_eq!(events.len(), 1);
    assert!(matches!(&events[0].kind, AuditKind::KeyringSealed { .. }));
    assert_eq!(events[0].reason.as_deref(), Some("reviewed by ops, ticket 42"));
    let sealed = legacy.store.load_keyring(&legacy.id).await.expect("load").expect("present");
    assert_eq!(KeyringRecord { seal: None, generation: record.generation, ..sealed.clone() }, record);
    assert_eq!(&legacy.kw.decrypt(&legacy.id, &on_v1, &ctx()).await.expect("decrypt")[..], b"old");
    assert_eq!(&legacy.kw.decrypt(&legacy.id, &on_v2, &ctx()).await.expect("decrypt")[..], b"new");
    // Idempotent: a valid seal is left alone, nothing audited.
    assert!(!legacy.kw.seal_unsealed(&legacy.id, "again").await.expect("seal"));
    assert_eq!(legacy.audit.events().len(), 1);
}

/// Retire v1 straight in the store, as someone with write access to it
/// would: the record no longer matches its seal.
async fn retire_v1_behind_keywheels_back(s: &Setup) {
    let record = s.store.load_keyring(&s.id).await.expect("load").expect("present");
    let now = s.clock.now();
    let changes = [
        KeyringChange::Disable { version: v(1), at: now, destroy_after: now },
        KeyringChange::SetState { version: v(1), state: KeyState::Retired, at: now },
    ];
    s.store.update_keyring(&s.id, record.generation, &changes).await.expect("raw write");
}

#[tokio::test]
async fn a_record_with_a_bad_seal_is_never_resealed() {
    let (s, _, _) = setup().await;
    retire_v1_behind_keywheels_back(&s).await;
    let audited = s.audit.events().len();
    assert_tampered(s.kw.seal_unsealed(&s.id, "please").await, &s.id, "seal_unsealed");
    assert_eq!(s.audit.events().len(), audited);
}

#[tokio::test]
async fn emergency_rotation_seals_the_compromised_flag() {
    let (s, _, _) = setup().await;
    let rotator = Rotator::new(s.kw.clone()).expect("rng");
    rotator.emergency(&s.id, "leaked", &RotateOptions::default()).await.expect("emergency");
    let record = s.kw.record(&s.id).await.expect("verified");
    assert!(record.version(v(2)).expect("v2").compromised);
    // Clearing the flag behind keywheel's back is refused.
    let raw = s.store.load_keyring(&s.id).await.expect("load").expect("present");
    let memory = MemoryKeyStore::new();
    let mut cleared = raw.clone();
    cleared.versions[1].compromised = false;
    memory.create_keyring(&cleared).await.expect("raw create");
    let other = Keywheel::builder()
        .store(Arc::new(memory))
        .kek(Arc::new(LocalKek::from_bytes(&MASTER)))
        .audit(Arc::new(MemoryAuditSink::new()))
        .build()
        .expect("builder");
    assert_tampered(other.keyring(&s.id).await, &s.id, "cleared compromised flag");
}

#[tokio::test]
async fn a_kek_rotation_reseals_every_record_under_the_new_key() {
    let (s, on_v1, on_v2) = setup().await;
    let second = KeyringId::new("acme", Purpose::Database).expect("id");
    s.kw.create_keyring(&second, Algorithm::ChaCha20Poly1305).await.expect("create");
    let old: Arc<dyn KeyEncryptionKey> = Arc::new(LocalKek::from_bytes(&MASTER));
    let new: Arc<dyn KeyEncryptionKey> = Arc::new(LocalKek::from_bytes(&[5; 32]).with_id("local-2"));
    let ring = kw_over(&s, Arc::new(KekRing::new(Arc::clone(&new), vec![Arc::clone(&old)])));
    // During the rotation, records sealed under either key verify through the ring.
    ring.record(&s.id).await.expect("old seal verifies through the ring");
    Rotator::new(ring).expect("rng").rotate_kek(Arc::clone(&new)).await.expect("kek rotation");
    let new_key = new.integrity_key().await.expect("key");
    for id in [&s.id, &second] {
        let record = s.store.load_keyring(id).await.expect("load").expect("present");
        assert_eq!(record.seal.as_ref().expect("sealed").key_id, new_key.id(), "{id} resealed");
    }
    // The old KEK is gone: the new one alone verifies and opens everything.
    let only_new = kw_over(&s, new);
    only_new.record(&second).await.expect("verifies");
    assert_eq!(&only_new.decrypt(&s.id, &on_v1, &ctx()).await.expect("decrypt")[..], b"old");
    assert_eq!(&only_new.decrypt(&s.id, &on_v2, &ctx()).await.expect("decrypt")[..], b"new");
}

/// The zero-downtime procedure: applications hold the staged ring (old key
/// current, new key next) and keep writing under the old key while the
/// rotation runs from an engine built the same way; afterwards the new key
/// alone opens and verifies everything, and a record an application sealed
/// under the old key after the rotation is resealed by running it again.
#[tokio::test]
async fn a_kek_rotation_from_the_staged_ring_leaves_nothing_under_the_old_key() {
    let (s, on_v1, on_v2) = setup().await;
    let old = LocalKek::from_bytes(&MASTER);
    let new = LocalKek::from_bytes(&[5; 32]);
    let b64 = |k: [u8; 32]| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, k);
    let staged = || Arc::new(KekRing::from_base64(&b64(MASTER), Some(&b64([5; 32]))).expect("ring"));
    let app = kw_over(&s, staged());
    let report = Rotator::new(kw_over(&s, staged())).expect("rng").rotate_kek(Arc::new(new)).await.expect("rotate");
    assert_eq!((report.keyrings, report.keys), (1, 2));
    let new_seal = LocalKek::from_bytes(&[5; 32]).integrity_key().await.expect("key");
    let record = s.store.load_keyring(&s.id).await.expect("load").expect("present");
    assert_eq!(record.seal.as_ref().expect("sealed").key_id, new_seal.id(), "sealed under the new key");
    let kek_events: Vec<_> =
        s.audit.snapshot().into_iter().filter(|e| matches!(e.event.kind, AuditKind::KekRotated { .. })).collect();
    assert_eq!(kek_events.len(), 1);
    assert_eq!(kek_events[0].key_id, new_seal.id(), "audited under the new key");

    // The application, still on the old key, reads the rewrapped keys and writes on.
    assert_eq!(&app.decrypt(&s.id, &on_v1, &ctx()).await.expect("decrypt")[..], b"old");
    let v3 = app.add_version(&s.id).await.expect("a lifecycle write under the old key");
    let only_new = || kw_over(&s, Arc::new(LocalKek::from_bytes(&[5; 32])));
    let err = only_new().keyring(&s.id).await.expect_err("v3 is wrapped under the old key");
    assert!(
        matches!(&err, Error::WrongMasterKey { expected_key_check, .. } if expected_key_check == old.key_check()),
        "{err}"
    );
    // Running the rotation again picks it up.
    let rotator = Rotator::new(kw_over(&s, staged())).expect("rng");
    let again = rotator.rotate_kek(Arc::new(LocalKek::from_bytes(&[5; 32]))).await.expect("rotate again");
    assert_eq!((again.keyrings, again.keys, again.already_rewrapped), (1, 1, 2));
    let promoted = only_new();
    assert_eq!(&promoted.decrypt(&s.id, &on_v2, &ctx()).await.expect("decrypt")[..], b"new");
    assert!(promoted.record(&s.id).await.expect("verifies").versions.iter().any(|v| v.version == v3));
}

#[tokio::test]
async fn the_scheduler_and_status_refuse_a_tampered_keyring() {
    let (s, _, _) = setup().await;
    retire_v1_behind_keywheels_back(&s).await;
    let before = s.store.load_keyring(&s.id).await.expect("load");
    let audited = s.audit.events().len();
    let scheduler = keywheel::Scheduler::new(Rotator::new(s.kw.clone()).expect("rng"), Default::default());
    assert_tampered(scheduler.status(false).await, &s.id, "status");
    assert_tampered(scheduler.tick().await, &s.id, "tick");
    assert_eq!(s.store.load_keyring(&s.id).await.expect("load"), before, "nothing written");
    assert_eq!(s.audit.events().len(), audited, "nothing audited");
}

#[tokio::test]
async fn a_rewrap_behind_keywheels_back_is_tampering_not_a_kek_mismatch() {
    let (s, on_v1, _) = setup().await;
    let record = s.store.load_keyring(&s.id).await.expect("load").expect("present");
    let mut wrapped = record.version(v(2)).expect("v2").wrapped.clone().expect("live");
    wrapped.kek_id = "attacker".into();
    let change = KeyringChange::Rewrap { version: v(2), wrapped };
    s.store.update_keyring(&s.id, record.generation, &[change]).await.expect("raw write");
    let fresh = kw_over(&s, Arc::new(LocalKek::from_bytes(&MASTER)));
    assert_refused_everywhere(&s, &fresh, &on_v1).await;
}
