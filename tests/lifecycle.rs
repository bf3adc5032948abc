//! The `Keywheel` facade on the memory backend: lifecycle operations, audit,
//! snapshot cache and reloads, wrong master key.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Counter, HookedStore};

use keywheel::memory::MemoryAuditSink;
use keywheel::{
    Algorithm, AuditKind, Context, DEFAULT_QUARANTINE, Error, KeyMaterial, KeyOrigin, KeyState, KeyVersion,
    KeyringChange, KeyringId, Keywheel, LocalKek, ManualClock, Outcome, Purpose, Timestamp,
};

struct Setup {
    kw: Keywheel,
    store: Arc<HookedStore<Counter>>,
    audit: Arc<MemoryAuditSink>,
    clock: ManualClock,
    id: KeyringId,
}

const MASTER: [u8; 32] = [7; 32];

fn instance(
    store: Arc<HookedStore<Counter>>,
    audit: Arc<MemoryAuditSink>,
    clock: &ManualClock,
    master: &[u8; 32],
) -> Keywheel {
    Keywheel::builder()
        .store(store)
        .kek(Arc::new(LocalKek::from_bytes(master)))
        .audit(audit)
        .clock(Arc::new(clock.clone()))
        .actor("test")
        .refresh_interval(Duration::from_secs(60))
        .reload_cooldown(Duration::from_secs(1))
        .build()
        .expect("complete builder")
}

async fn setup() -> Setup {
    let store = Arc::new(HookedStore::new(Arc::new(Counter::default())));
    let audit = Arc::new(MemoryAuditSink::new());
    let clock = ManualClock::new(Timestamp::from_millis(1_800_000_000_000));
    let kw = instance(Arc::clone(&store), Arc::clone(&audit), &clock, &MASTER);
    let id = KeyringId::new("acme", Purpose::Token).expect("valid id");
    kw.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("create");
    Setup { kw, store, audit, clock, id }
}

fn ctx(row: &str) -> Context {
    Context::field("users", "email", row)
}

#[tokio::test]
async fn create_encrypt_rotate_and_read_old_values() {
    let s = setup().await;
    let record = s.kw.record(&s.id).await.expect("record");
    assert_eq!(record.active_version(), Some(KeyVersion::FIRST));
    let old = s.kw.encrypt(&s.id, b"alice@example.com", &ctx("1")).await.expect("encrypt");

    let v2 = s.kw.add_version(&s.id).await.expect("add");
    assert_eq!(v2.get(), 2);
    assert_eq!(s.kw.record(&s.id).await.expect("record").version(v2).expect("v2").state, KeyState::Pending);
    // Still encrypting under v1 while v2 is Pending.
    let still_v1 = s.kw.encrypt(&s.id, b"x", &ctx("2")).await.expect("encrypt");
    assert_eq!(keywheel::version_of(&still_v1).expect("parse").get(), 1);

    let record = s.kw.activate(&s.id, v2).await.expect("activate");
    let states: Vec<KeyState> = record.versions.iter().map(|v| v.state).collect();
    assert_eq!(states, [KeyState::Deprecated, KeyState::Active]);

    let new = s.kw.encrypt(&s.id, b"bob@example.com", &ctx("3")).await.expect("encrypt");
    assert_eq!(keywheel::version_of(&new).expect("parse"), v2);
    assert_eq!(&s.kw.decrypt(&s.id, &old, &ctx("1")).await.expect("old decrypts")[..], b"alice@example.com");
    let ring = s.kw.keyring(&s.id).await.expect("ring");
    assert!(ring.needs_rotation(&old).expect("parse"));
    assert!(!ring.needs_rotation(&new).expect("parse"));
    let again = ring.reencrypt(&old, &ctx("1")).expect("reencrypt");
    assert_eq!(keywheel::version_of(&again).expect("parse"), v2);
}

#[tokio::test]
async fn illegal_transitions_are_refused_and_nothing_is_written() {
    let s = setup().await;
    let before = s.kw.record(&s.id).await.expect("record");
    let audited = s.audit.events().len();
    // Retiring the Active version is illegal (Active → Disabled, the first step).
    let err = s.kw.retire_forced(&s.id, KeyVersion::FIRST, "test").await.expect_err("illegal");
    assert!(matches!(err, Error::IllegalTransition { from: KeyState::Active, to: KeyState::Disabled, .. }), "{err}");
    let v2 = s.kw.add_version(&s.id).await.expect("add");
    // Deprecating a Pending version is illegal.
    assert!(matches!(s.kw.deprecate(&s.id, v2).await, Err(Error::IllegalTransition { .. })));
    // Unknown version.
    let v9 = KeyVersion::new(9).expect("nonzero");
    assert!(matches!(s.kw.activate(&s.id, v9).await, Err(Error::VersionNotFound { .. })));
    let after = s.kw.record(&s.id).await.expect("record");
    assert_eq!(after.generation, before.generation + 1, "only add_version changed the keyring");
    assert_eq!(s.audit.events().len(), audited + 1, "refused operations are not audited as done");
    let err = s.kw.retire_forced(&s.id, KeyVersion::FIRST, "  ").await.expect_err("no reason");
    assert!(matches!(err, Error::ReasonRequired(_)), "{err}");
}

#[tokio::test]
async fn creating_an_existing_keyring_is_refused_before_anything_is_audited() {
    let s = setup().await;
    let audited = s.audit.events().len();
    let err = s.kw.create_keyring(&s.id, Algorithm::ChaCha20Poly1305).await.expect_err("exists");
    assert!(matches!(&err, Error::KeyringExists(id) if *id == s.id), "{err}");
    assert_eq!(s.audit.events().len(), audited, "no KeyringCreated event for a keyring that was not created");
    assert_eq!(s.kw.record(&s.id).await.expect("record").algorithm, Algorithm::Aes256Gcm, "untouched");
}

#[tokio::test]
async fn deprecate_hands_over_to_the_newest_pending_version() {
    let s = setup().await;
    let err = s.kw.deprecate(&s.id, KeyVersion::FIRST).await.expect_err("no pending");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    s.kw.add_version(&s.id).await.expect("add");
    let v3 = s.kw.add_version(&s.id).await.expect("add");
    let record = s.kw.deprecate(&s.id, KeyVersion::FIRST).await.expect("deprecate");
    assert_eq!(record.active_version(), Some(v3));
    assert_eq!(record.versions[0].state, KeyState::Deprecated);
    assert_eq!(record.versions[1].state, KeyState::Pending);
}

#[tokio::test]
async fn retire_destroys_material_and_old_values_report_key_retired() {
    let s = setup().await;
    let old = s.kw.encrypt(&s.id, b"secret", &ctx("1")).await.expect("encrypt");
    let v2 = s.kw.add_version(&s.id).await.expect("add");
    s.kw.activate(&s.id, v2).await.expect("activate");
    let record = s.kw.retire_forced_now(&s.id, KeyVersion::FIRST, "census was zero").await.expect("retire");
    let v1 = record.version(KeyVersion::FIRST).expect("metadata stays");
    assert_eq!(v1.state, KeyState::Retired);
    assert!(v1.wrapped.is_none(), "material destroyed in the store");
    assert!(v1.retired_at.is_some() && v1.created_at <= v1.retired_at.expect("set"));
    let err = s.kw.decrypt(&s.id, &old, &ctx("1")).await.expect_err("retired");
    assert!(matches!(err, Error::KeyRetired { version } if version == KeyVersion::FIRST), "{err}");
    // Retired is final: no rollback to it.
    assert!(matches!(s.kw.activate(&s.id, KeyVersion::FIRST).await, Err(Error::IllegalTransition { .. })));
    let mut events = s.audit.events();
    let last = events.pop().expect("events");
    assert_eq!(last.kind, AuditKind::KeyRetired { version: KeyVersion::FIRST, forced: true });
    assert_eq!(last.reason.as_deref(), Some("census was zero"));
    // Disabled and destroyed in one update: the quarantine was skipped.
    let disabled = events.pop().expect("events");
    let at = s.kw.now();
    assert_eq!(disabled.kind, AuditKind::KeyDisabled { version: KeyVersion::FIRST, forced: true, destroy_after: at });
}

#[tokio::test]
async fn activate_never_reactivates_a_deprecated_version() {
    // A return to a Deprecated version is a rollback (window, once only):
    // `Rotator::rollback`, never the manual `activate`.
    let s = setup().await;
    let v2 = s.kw.add_version(&s.id).await.expect("add");
    s.kw.activate(&s.id, v2).await.expect("activate");
    let before = s.kw.record(&s.id).await.expect("record");
    let err = s.kw.activate(&s.id, KeyVersion::FIRST).await.expect_err("a rollback");
    assert!(matches!(err, Error::RollbackRefused { .. }), "{err}");
    assert_eq!(s.kw.record(&s.id).await.expect("record"), before, "nothing written");
}

#[tokio::test]
async fn imported_material_is_used_and_audited() {
    let s = setup().await;
    let v2 = s.kw.import_version(&s.id, KeyMaterial::from_slice(&[0x42; 32]).expect("32 bytes")).await.expect("import");
    s.kw.activate(&s.id, v2).await.expect("activate");
    let value = s.kw.encrypt(&s.id, b"m", &ctx("1")).await.expect("encrypt");
    // An independently built snapshot from the same material decrypts it.
    let ring = keywheel::Keyring::builder(s.id.clone())
        .retired_version(Algorithm::Aes256Gcm)
        .version(KeyState::Active, Algorithm::Aes256Gcm, KeyMaterial::from_slice(&[0x42; 32]).expect("32"))
        .build()
        .expect("ring");
    assert_eq!(&ring.decrypt(&value, &ctx("1")).expect("same key")[..], b"m");
    assert!(s.audit.events().iter().any(|e| e.kind
        == AuditKind::KeyCreated { version: v2, algorithm: Algorithm::Aes256Gcm, origin: KeyOrigin::Imported }));
    assert_eq!(s.kw.record(&s.id).await.expect("record").version(v2).expect("v2").origin, KeyOrigin::Imported);
}

#[tokio::test]
async fn every_step_is_audited_in_a_verifying_chain() {
    let s = setup().await;
    let v2 = s.kw.add_version(&s.id).await.expect("add");
    s.kw.activate(&s.id, v2).await.expect("activate");
    s.kw.retire_forced(&s.id, KeyVersion::FIRST, "test").await.expect("retire");
    let kinds: Vec<AuditKind> = s.audit.events().into_iter().map(|e| e.kind).collect();
    let v1 = KeyVersion::FIRST;
    let aes = Algorithm::Aes256Gcm;
    assert_eq!(
        kinds,
        [
            AuditKind::KeyringCreated { algorithm: aes },
            AuditKind::KeyCreated { version: v1, algorithm: aes, origin: KeyOrigin::Generated },
            AuditKind::KeyActivated { version: v1, previous: None },
            AuditKind::KeyCreated { version: v2, algorithm: aes, origin: KeyOrigin::Generated },
            AuditKind::KeyDeprecated { version: v1 },
            AuditKind::KeyActivated { version: v2, previous: Some(v1) },
            AuditKind::KeyDisabled { version: v1, forced: true, destroy_after: s.kw.now().plus(DEFAULT_QUARANTINE) },
        ]
    );
    assert!(s.audit.events().iter().all(|e| e.keyring.as_ref() == Some(&s.id) && e.actor == "test"));
    assert_eq!(s.audit.verify().expect("chain verifies"), 7);
}

#[tokio::test]
async fn a_failing_audit_sink_fails_the_operation_and_changes_nothing() {
    let s = setup().await;
    let before = s.kw.record(&s.id).await.expect("record");
    s.audit.set_failing(true);
    let err = s.kw.add_version(&s.id).await.expect_err("audit down");
    assert!(matches!(err, Error::Audit(_)), "{err}");
    let other = KeyringId::new("acme", Purpose::Session).expect("id");
    assert!(matches!(s.kw.create_keyring(&other, Algorithm::Aes256Gcm).await, Err(Error::Audit(_))));
    s.audit.set_failing(false);
    assert_eq!(s.kw.record(&s.id).await.expect("record"), before);
    assert!(matches!(s.kw.record(&other).await, Err(Error::KeyringNotFound(_))));
}

#[tokio::test]
async fn a_lost_compare_and_set_is_retryable_and_audited_as_failed() {
    let s = setup().await;
    let stale = s.kw.record(&s.id).await.expect("record");
    s.kw.add_version(&s.id).await.expect("someone else changes the keyring");
    let v = stale.next_version().expect("next");
    let mut event = s.kw.event(Some(&s.id), AuditKind::KeyDeprecated { version: v }, "cid");
    event.reason = None;
    let err =
        s.kw.apply_audited(&stale, &[KeyringChange::RecordUsage { version: KeyVersion::FIRST, add: 1 }], &[event])
            .await
            .expect_err("stale generation");
    assert!(matches!(err, Error::GenerationConflict { .. }) && err.is_retryable(), "{err}");
    assert_eq!(s.audit.events().last().expect("event").outcome, Outcome::Failed);
}

#[tokio::test]
async fn another_instance_sees_new_versions_via_one_rate_limited_reload() {
    let s = setup().await;
    let reader = instance(Arc::clone(&s.store), Arc::clone(&s.audit), &s.clock, &MASTER);
    reader.keyring(&s.id).await.expect("warm cache");

    // The writer adds and activates v2, then encrypts; the reader's snapshot is stale.
    let v2 = s.kw.add_version(&s.id).await.expect("add");
    s.kw.activate(&s.id, v2).await.expect("activate");
    let value = s.kw.encrypt(&s.id, b"new", &ctx("1")).await.expect("encrypt");
    let loads = s.store.hook.loads.load(Ordering::SeqCst);
    assert_eq!(&reader.decrypt(&s.id, &value, &ctx("1")).await.expect("reload then decrypt")[..], b"new");
    assert_eq!(s.store.hook.loads.load(Ordering::SeqCst), loads + 1, "exactly one reload");

    // A value naming a version nobody has: one reload is allowed only after the cooldown.
    let mut bogus = value.clone();
    bogus[4..8].copy_from_slice(&99u32.to_be_bytes());
    let loads = s.store.hook.loads.load(Ordering::SeqCst);
    assert!(matches!(reader.decrypt(&s.id, &bogus, &ctx("1")).await, Err(Error::UnknownKeyVersion { .. })));
    assert!(matches!(reader.decrypt(&s.id, &bogus, &ctx("1")).await, Err(Error::UnknownKeyVersion { .. })));
    assert_eq!(s.store.hook.loads.load(Ordering::SeqCst), loads, "still inside the cooldown of the last reload");
    s.clock.advance(Duration::from_secs(2));
    assert!(matches!(reader.decrypt(&s.id, &bogus, &ctx("1")).await, Err(Error::UnknownKeyVersion { .. })));
    assert_eq!(s.store.hook.loads.load(Ordering::SeqCst), loads + 1, "one reload after the cooldown");
}

#[tokio::test]
async fn snapshots_refresh_after_the_interval_and_encrypt_under_the_new_version() {
    let s = setup().await;
    let reader = instance(Arc::clone(&s.store), Arc::clone(&s.audit), &s.clock, &MASTER);
    reader.keyring(&s.id).await.expect("warm cache");
    let v2 = s.kw.add_version(&s.id).await.expect("add");
    s.kw.activate(&s.id, v2).await.expect("activate");
    let stale = reader.encrypt(&s.id, b"x", &ctx("1")).await.expect("encrypt");
    assert_eq!(keywheel::version_of(&stale).expect("parse").get(), 1, "cached snapshot until refresh");
    s.clock.advance(Duration::from_secs(61));
    let fresh = reader.encrypt(&s.id, b"x", &ctx("1")).await.expect("encrypt");
    assert_eq!(keywheel::version_of(&fresh).expect("parse"), v2);
}

#[tokio::test]
async fn a_wrong_master_key_is_reported_once_by_kek_id() {
    let s = setup().await;
    for _ in 0..3 {
        let v = s.kw.add_version(&s.id).await.expect("add");
        s.kw.activate(&s.id, v).await.expect("activate");
    }
    let wrong = instance(Arc::clone(&s.store), Arc::clone(&s.audit), &s.clock, &[8; 32]);
    let err = wrong.keyring(&s.id).await.expect_err("wrong master key");
    assert!(matches!(&err, Error::WrongMasterKey { kek_id, .. } if kek_id == "local"), "{err}");
    assert!(err.to_string().contains("wrong master key for KEK local"), "{err}");
    let err = wrong.decrypt(&s.id, b"anything", &ctx("1")).await.expect_err("wrong master key");
    assert!(matches!(err, Error::WrongMasterKey { .. }), "{err}");
    // Nothing is written under the wrong key either.
    let before = s.kw.record(&s.id).await.expect("record");
    let audited = s.audit.events().len();
    let err = wrong.add_version(&s.id).await.expect_err("wrong master key");
    assert!(matches!(err, Error::WrongMasterKey { .. }), "{err}");
    assert_eq!(s.kw.record(&s.id).await.expect("record"), before);
    assert_eq!(s.audit.events().len(), audited);
}

#[tokio::test]
async fn builder_names_what_is_missing() {
    let err = Keywheel::builder().build().expect_err("incomplete");
    assert!(err.to_string().contains("store"), "{err}");
}
