//! Checks for [`KeyStore`] implementations.
//!
//! Every check takes a fresh store (`Arc<dyn KeyStore>`) and panics with a
//! message naming the broken rule of the [`KeyStore`] contract. Run them all
//! with [`key_store_tests!`](crate::key_store_tests). Each check creates
//! keyrings with ids of its own and only requires those to be present, so a
//! store that already holds other keyrings does not make a check fail.

use std::sync::Arc;
use std::time::Duration;

use crate::{expect_err, race, version};
use keywheel_core::{
    AfterRotation, Algorithm, Cursor, Error, JobCounts, JobFailure, JobKind, JobPhase, KeyOrigin, KeyState, KeyStore,
    KeyVersion, KeyringChange, KeyringId, KeyringRecord, Lease, MaintenanceWindow, Policy, Purpose, RecordSeal,
    RotationJob, SourceCheckpoint, Timestamp, VersionRecord, WrappedKey,
};

/// The time every check starts at (2025-06-15, arbitrary but fixed).
const T0: Timestamp = Timestamp::from_millis(1_750_000_000_000);
/// Lease time-to-live used by the lease checks.
const TTL: Duration = Duration::from_secs(30);

fn at(seconds: u64) -> Timestamp {
    T0.plus(Duration::from_secs(seconds))
}

fn keyring_id(tenant: &str) -> KeyringId {
    KeyringId::new(tenant, Purpose::Token).expect("conformance keyring ids are valid")
}

/// A wrapped key literal, distinct per (version, salt). The store must not care
/// what is inside, only keep it byte for byte.
fn wrapped(version: u32, salt: u8) -> WrappedKey {
    WrappedKey {
        kek_id: "conformance".into(),
        key_check: "00112233445566778899aabbccddeeff".into(),
        ciphertext: (0u8..60).map(|i| i.wrapping_mul(31) ^ (version as u8) ^ salt.rotate_left(3)).collect(),
    }
}

/// A version record in `state`, with the timestamps that state implies.
fn version_record(number: u32, state: KeyState) -> VersionRecord {
    let secs = u64::from(number) * 100;
    let reached = |s: KeyState| -> bool {
        let order = |s: KeyState| match s {
            KeyState::Pending => 0,
            KeyState::Active => 1,
            KeyState::Deprecated => 2,
            KeyState::Disabled => 3,
            KeyState::Retired => 4,
        };
        order(state) >= order(s)
    };
    VersionRecord {
        version: version(number),
        algorithm: Algorithm::Aes256Gcm,
        state,
        origin: KeyOrigin::Generated,
        wrapped: (state != KeyState::Retired).then(|| wrapped(number, 0)),
        created_at: at(secs),
        activated_at: reached(KeyState::Active).then(|| at(secs + 1)),
        deprecated_at: reached(KeyState::Deprecated).then(|| at(secs + 2)),
        retired_at: reached(KeyState::Retired).then(|| at(secs + 4)),
        disabled_at: reached(KeyState::Disabled).then(|| at(secs + 3)),
        destroy_after: reached(KeyState::Disabled).then(|| at(secs + 50)),
        compromised: false,
        // Non-zero so that stores are seen to persist the usage count.
        encryptions: u64::from(number) * 1000,
        replaced: None,
    }
}

/// A valid keyring record whose version `i + 1` is in `states[i]`.
fn record(id: &KeyringId, states: &[KeyState]) -> KeyringRecord {
    let mut record = KeyringRecord::new(id.clone(), Algorithm::Aes256Gcm, T0);
    record.generation = 5;
    for (i, state) in states.iter().enumerate() {
        let number = u32::try_from(i + 1).expect("few versions");
        record.versions.push(version_record(number, *state));
    }
    record.validate().expect("conformance records are valid");
    record
}

/// A record exercising every field: all five states, an imported and a
/// compromised version, a non-default algorithm.
fn rich_record(id: &KeyringId) -> KeyringRecord {
    let mut record =
        record(id, &[KeyState::Retired, KeyState::Deprecated, KeyState::Disabled, KeyState::Active, KeyState::Pending]);
    record.algorithm = Algorithm::XChaCha20Poly1305;
    for v in &mut record.versions {
        v.algorithm = Algorithm::XChaCha20Poly1305;
    }
    record.versions[0].compromised = true;
    record.versions[0].algorithm = Algorithm::Aes256Gcm;
    record.versions[2].origin = KeyOrigin::Imported;
    record.versions[4].wrapped = Some(WrappedKey { kek_id: "other-kek".into(), ..wrapped(5, 9) });
    record.validate().expect("conformance records are valid");
    record
}

async fn create(store: &Arc<dyn KeyStore>, record: &KeyringRecord) {
    store.create_keyring(record).await.unwrap_or_else(|e| panic!("create_keyring({}) failed: {e}", record.id));
}

async fn load(store: &Arc<dyn KeyStore>, id: &KeyringId) -> KeyringRecord {
    store
        .load_keyring(id)
        .await
        .unwrap_or_else(|e| panic!("load_keyring({id}) failed: {e}"))
        .unwrap_or_else(|| panic!("load_keyring({id}) returned None for a created keyring"))
}

async fn assert_unchanged(store: &Arc<dyn KeyStore>, before: &KeyringRecord, rule: &str) {
    let after = load(store, &before.id).await;
    assert_eq!(&after, before, "{rule}: the stored record must be unchanged (nothing written)");
}

/// A created keyring loads back equal, field for field (all states, origins,
/// algorithms, wrapped keys, timestamps, the compromised flag, the
/// generation); loads are snapshots that local edits do not affect.
pub async fn create_load_round_trip(store: Arc<dyn KeyStore>) {
    let id = keyring_id("round-trip");
    let rich = rich_record(&id);
    create(&store, &rich).await;
    let mut loaded = load(&store, &id).await;
    assert_eq!(loaded, rich, "load_keyring must return exactly the record given to create_keyring");
    loaded.versions.clear();
    loaded.generation += 10;
    assert_eq!(load(&store, &id).await, rich, "a loaded record is a snapshot: editing it must not change the store");

    let empty_id = keyring_id("round-trip-empty");
    let empty = KeyringRecord::new(empty_id.clone(), Algorithm::Aes256Gcm, T0);
    create(&store, &empty).await;
    assert_eq!(load(&store, &empty_id).await, empty, "a keyring without versions must round-trip too");
}

/// Creating a keyring whose id exists fails with [`Error::KeyringExists`]
/// and leaves the existing record alone.
pub async fn create_twice_fails(store: Arc<dyn KeyStore>) {
    let id = keyring_id("create-twice");
    let first = record(&id, &[KeyState::Active]);
    create(&store, &first).await;
    let second = record(&id, &[KeyState::Deprecated, KeyState::Active]);
    let err = expect_err(store.create_keyring(&second).await, "create_keyring with an existing id");
    assert!(
        matches!(&err, Error::KeyringExists(existing) if *existing == id),
        "create_keyring with an existing id must fail with KeyringExists({id}), got: {err:?}"
    );
    assert_unchanged(&store, &first, "a refused create_keyring").await;
}

/// [`KeyStore::list_keyrings`] returns every created id once, sorted
/// (by [`KeyringId`]'s `Ord`).
pub async fn list_keyrings_sorted(store: Arc<dyn KeyStore>) {
    let ids = [
        KeyringId::new("zeta", Purpose::Token),
        KeyringId::new("alpha", Purpose::Session),
        KeyringId::new("alpha", Purpose::Database),
        KeyringId::new("mid", Purpose::Custom("billing".into())),
        KeyringId::new("alpha", Purpose::Token),
        KeyringId::new("Beta", Purpose::File),
        KeyringId::new("alpha", Purpose::Custom("audit-export".into())),
    ]
    .map(|id| id.expect("valid id"));
    for id in &ids {
        create(&store, &record(id, &[KeyState::Active])).await;
    }
    let listed = store.list_keyrings().await.expect("list_keyrings failed");
    let mut sorted = listed.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(listed, sorted, "list_keyrings must return ids sorted (KeyringId's Ord) without duplicates");
    for id in &ids {
        assert!(listed.contains(id), "list_keyrings must include created keyring {id}, got {listed:?}");
    }
}

/// Loading an id that was never created returns `Ok(None)`.
pub async fn load_unknown_is_none(store: Arc<dyn KeyStore>) {
    let unknown = keyring_id("never-created");
    let loaded = store.load_keyring(&unknown).await.expect("load_keyring of an unknown id must not fail");
    assert_eq!(loaded, None, "load_keyring of an unknown id must return None");
    create(&store, &record(&keyring_id("created-neighbour"), &[KeyState::Active])).await;
    let loaded = store.load_keyring(&unknown).await.expect("load_keyring of an unknown id must not fail");
    assert_eq!(loaded, None, "load_keyring of an unknown id must return None, also when other keyrings exist");
}

/// Updating a keyring that does not exist fails with [`Error::KeyringNotFound`].
pub async fn update_unknown_keyring_fails(store: Arc<dyn KeyStore>) {
    let id = keyring_id("update-unknown");
    let change = KeyringChange::MarkCompromised { version: KeyVersion::FIRST };
    let err = expect_err(store.update_keyring(&id, 1, &[change]).await, "update_keyring of an unknown keyring");
    assert!(
        matches!(&err, Error::KeyringNotFound(missing) if *missing == id),
        "update_keyring of an unknown keyring must fail with KeyringNotFound, got: {err:?}"
    );
    assert_eq!(store.load_keyring(&id).await.expect("load"), None, "a failed update must not create the keyring");
}

/// An update against another generation than the stored one fails with
/// [`Error::GenerationConflict`] (naming both generations) and writes nothing.
pub async fn update_with_wrong_generation_conflicts(store: Arc<dyn KeyStore>) {
    let id = keyring_id("wrong-generation");
    let rec = record(&id, &[KeyState::Active, KeyState::Pending]);
    create(&store, &rec).await;
    let g = rec.generation;
    let changes = [
        KeyringChange::SetState { version: version(1), state: KeyState::Deprecated, at: at(1000) },
        KeyringChange::SetState { version: version(2), state: KeyState::Active, at: at(1000) },
    ];
    for wrong in [g + 1, g - 1, 0, u64::MAX] {
        let err =
            expect_err(store.update_keyring(&id, wrong, &changes).await, "update_keyring with a stale generation");
        assert!(
            matches!(&err, Error::GenerationConflict { keyring, expected, actual }
                if *keyring == id && *expected == wrong && *actual == g),
            "update_keyring expecting generation {wrong} while the store has {g} must fail with \
             GenerationConflict {{ expected: {wrong}, actual: {g} }}, got: {err:?}"
        );
        assert_unchanged(&store, &rec, "a generation conflict").await;
    }
}

/// Adding a version number that exists fails with [`Error::DuplicateVersion`]
/// and writes nothing (versions are never reused).
pub async fn duplicate_version_refused(store: Arc<dyn KeyStore>) {
    let id = keyring_id("duplicate-version");
    let rec = record(&id, &[KeyState::Active]);
    create(&store, &rec).await;
    let again = KeyringChange::AddVersion(version_record(1, KeyState::Pending));
    let err = expect_err(store.update_keyring(&id, rec.generation, &[again]).await, "adding an existing version");
    assert!(
        matches!(&err, Error::DuplicateVersion { keyring, version: v } if *keyring == id && *v == version(1)),
        "adding version 1 again must fail with DuplicateVersion, got: {err:?}"
    );
    assert_unchanged(&store, &rec, "a refused duplicate version").await;

    let v2 = KeyringChange::AddVersion(version_record(2, KeyState::Pending));
    let updated = store
        .update_keyring(&id, rec.generation, std::slice::from_ref(&v2))
        .await
        .expect("adding version 2 must succeed");
    let err = expect_err(store.update_keyring(&id, updated.generation, &[v2]).await, "adding version 2 twice");
    assert!(
        matches!(&err, Error::DuplicateVersion { version: v, .. } if *v == version(2)),
        "adding version 2 twice must fail with DuplicateVersion, got: {err:?}"
    );
    assert_unchanged(&store, &updated, "a refused duplicate version").await;
}

/// A transition the lifecycle does not allow (Pending → Retired, Active →
/// Pending, Deprecated → Retired without the Disabled step) fails with
/// [`Error::IllegalTransition`] and writes nothing.
pub async fn illegal_transition_refused(store: Arc<dyn KeyStore>) {
    let id = keyring_id("illegal-transition");
    let rec = record(&id, &[KeyState::Deprecated, KeyState::Active, KeyState::Pending]);
    create(&store, &rec).await;
    let cases = [
        (3, KeyState::Pending, KeyState::Retired),
        (2, KeyState::Active, KeyState::Pending),
        (1, KeyState::Deprecated, KeyState::Retired),
        (3, KeyState::Pending, KeyState::Disabled),
    ];
    for (number, from, to) in cases {
        let change = KeyringChange::SetState { version: version(number), state: to, at: at(1000) };
        let err = expect_err(store.update_keyring(&id, rec.generation, &[change]).await, "an illegal transition");
        assert!(
            matches!(&err, Error::IllegalTransition { version: v, from: f, to: t }
                if *v == version(number) && *f == from && *t == to),
            "moving v{number} from {from} to {to} must fail with IllegalTransition, got: {err:?}"
        );
        assert_unchanged(&store, &rec, "a refused illegal transition").await;
    }
}

/// An update is all or nothing: when any change of the list is refused, or
/// the result breaks an invariant (no Active version), none is written.
pub async fn update_is_all_or_nothing(store: Arc<dyn KeyStore>) {
    let id = keyring_id("all-or-nothing");
    let rec = record(&id, &[KeyState::Active, KeyState::Pending]);
    create(&store, &rec).await;
    let legal_then_illegal = [
        KeyringChange::AddVersion(version_record(3, KeyState::Pending)),
        KeyringChange::MarkCompromised { version: version(1) },
        KeyringChange::SetState { version: version(2), state: KeyState::Retired, at: at(1000) },
    ];
    expect_err(store.update_keyring(&id, rec.generation, &legal_then_illegal).await, "a batch with an illegal change");
    assert_unchanged(&store, &rec, "a batch whose last change is illegal (the legal ones before it too)").await;

    let leaves_no_active = [KeyringChange::SetState { version: version(1), state: KeyState::Deprecated, at: at(1000) }];
    expect_err(
        store.update_keyring(&id, rec.generation, &leaves_no_active).await,
        "deprecating the only Active version without activating another",
    );
    assert_unchanged(&store, &rec, "a batch leaving no Active version").await;
}

/// A successful update returns the new record at generation + 1, exactly as
/// [`KeyringRecord::apply`] defines it, persists it, and makes the old
/// generation stale.
pub async fn update_increments_generation_and_persists(store: Arc<dyn KeyStore>) {
    let id = keyring_id("update-persists");
    let rec = record(&id, &[KeyState::Active, KeyState::Pending]);
    create(&store, &rec).await;
    let changes = [
        KeyringChange::SetState { version: version(1), state: KeyState::Deprecated, at: at(1000) },
        KeyringChange::SetState { version: version(2), state: KeyState::Active, at: at(1000) },
        KeyringChange::AddVersion(version_record(3, KeyState::Pending)),
    ];
    let mut expected = rec.clone();
    expected.apply(&changes).expect("the conformance changes are legal");
    let returned = store.update_keyring(&id, rec.generation, &changes).await.expect("a legal update must succeed");
    assert_eq!(returned.generation, rec.generation + 1, "a successful update must increment the generation by one");
    assert_eq!(returned, expected, "update_keyring must return the record as KeyringRecord::apply defines it");
    assert_eq!(load(&store, &id).await, expected, "a successful update must be persisted");

    let stale = [KeyringChange::MarkCompromised { version: version(1) }];
    let err = expect_err(store.update_keyring(&id, rec.generation, &stale).await, "an update on the old generation");
    assert!(
        matches!(err, Error::GenerationConflict { .. }),
        "after an update the old generation is stale and must conflict, got: {err:?}"
    );
    let again = store.update_keyring(&id, returned.generation, &stale).await.expect("update on the new generation");
    assert_eq!(again.generation, rec.generation + 2, "generations increase by exactly one per update");
}

/// The lifecycle rules of [`KeyringRecord::apply`] hold in the store's
/// compare-and-set: a version flagged compromised never becomes Active (nor
/// is the Active version flagged), a rollback re-activates only the version
/// the Active one replaced, and only once; a refused update writes nothing.
pub async fn lifecycle_rules_hold_in_the_store(store: Arc<dyn KeyStore>) {
    let id = keyring_id("lifecycle-rules");
    // v1 and v2 deprecated (v2 most recently), v3 active.
    let rec = record(&id, &[KeyState::Deprecated, KeyState::Deprecated, KeyState::Active]);
    create(&store, &rec).await;
    let now = at(10_000);
    let set = |n: u32, state: KeyState| KeyringChange::SetState { version: version(n), state, at: now };
    let refused = |what: &str, result: keywheel_core::Result<KeyringRecord>| match result {
        Err(e) => e,
        Ok(r) => panic!("{what} must be refused, the store wrote generation {}", r.generation),
    };
    let err = refused(
        "flagging the Active version compromised",
        store.update_keyring(&id, rec.generation, &[KeyringChange::MarkCompromised { version: version(3) }]).await,
    );
    assert!(matches!(err, Error::CompromisedVersion { .. }), "{err:?}");
    let err = refused(
        "re-activating v1, which v3 did not replace",
        store.update_keyring(&id, rec.generation, &[set(3, KeyState::Deprecated), set(1, KeyState::Active)]).await,
    );
    assert!(matches!(err, Error::RollbackRefused { .. }), "{err:?}");
    assert_eq!(load(&store, &id).await, rec, "refused updates write nothing");

    // Roll back once (v3 -> v2): allowed. A second rollback (v2 -> v3) is refused.
    let rolled = store
        .update_keyring(&id, rec.generation, &[set(3, KeyState::Deprecated), set(2, KeyState::Active)])
        .await
        .expect("a rollback of the latest rotation is legal");
    let err = refused(
        "a second rollback",
        store.update_keyring(&id, rolled.generation, &[set(2, KeyState::Deprecated), set(3, KeyState::Active)]).await,
    );
    assert!(matches!(err, Error::RollbackRefused { .. }), "{err:?}");

    // An emergency flags the old version in the activation's update; it can
    // never come back, by rollback or otherwise.
    let next = KeyringChange::AddVersion(VersionRecord {
        activated_at: None,
        deprecated_at: None,
        retired_at: None,
        ..version_record(4, KeyState::Pending)
    });
    let added = store.update_keyring(&id, rolled.generation, &[next]).await.expect("add v4");
    let emergency = [
        set(2, KeyState::Deprecated),
        set(4, KeyState::Active),
        KeyringChange::MarkCompromised { version: version(2) },
    ];
    let flagged = store.update_keyring(&id, added.generation, &emergency).await.expect("emergency activation");
    let err = refused(
        "re-activating the compromised version",
        store.update_keyring(&id, flagged.generation, &[set(4, KeyState::Deprecated), set(2, KeyState::Active)]).await,
    );
    assert!(matches!(err, Error::CompromisedVersion { .. }), "{err:?}");
    assert_eq!(load(&store, &id).await, flagged, "refused updates write nothing");
}

/// An update made only of `RecordUsage` changes adds to the counts and keeps
/// the generation, so a lifecycle update read at that generation still
/// succeeds afterwards — and keeps the counts (the store applies changes to
/// the record it holds, never writes one computed from an earlier read).
pub async fn usage_updates_keep_the_generation(store: Arc<dyn KeyStore>) {
    let id = keyring_id("usage-generation");
    let rec = record(&id, &[KeyState::Active, KeyState::Pending]);
    create(&store, &rec).await;
    let usage = [KeyringChange::RecordUsage { version: version(1), add: 7 }];
    let after = store.update_keyring(&id, rec.generation, &usage).await.expect("a usage update must succeed");
    assert_eq!(after.generation, rec.generation, "a usage-only update must keep the generation");
    let after = store.update_keyring(&id, rec.generation, &usage).await.expect("a second usage update");
    assert_eq!(after.generation, rec.generation);
    let lifecycle = [
        KeyringChange::SetState { version: version(1), state: KeyState::Deprecated, at: at(2000) },
        KeyringChange::SetState { version: version(2), state: KeyState::Active, at: at(2000) },
    ];
    let updated = store
        .update_keyring(&id, rec.generation, &lifecycle)
        .await
        .expect("a lifecycle update read before the usage updates must still succeed");
    assert_eq!(updated.generation, rec.generation + 1);
    let loaded = load(&store, &id).await;
    let base = rec.version(version(1)).expect("v1").encryptions;
    assert_eq!(
        loaded.version(version(1)).expect("v1").encryptions,
        base + 14,
        "the lifecycle update must keep the counts added before it"
    );
    assert_eq!(loaded.version(version(2)).expect("v2").state, KeyState::Active);
}

/// `Rewrap` replaces the wrapped material of live versions, `MarkCompromised`
/// sets the flag and `RecordUsage` adds to the usage count, all persisted; rewrapping a retired
/// version fails with [`Error::KeyRetired`].
pub async fn rewrap_and_compromise_persist(store: Arc<dyn KeyStore>) {
    let id = keyring_id("rewrap");
    let rec = record(&id, &[KeyState::Retired, KeyState::Deprecated, KeyState::Active]);
    create(&store, &rec).await;
    let new_wrap = |n: u32| WrappedKey { kek_id: "next-kek".into(), ..wrapped(n, 77) };
    let changes = [
        KeyringChange::Rewrap { version: version(2), wrapped: new_wrap(2) },
        KeyringChange::Rewrap { version: version(3), wrapped: new_wrap(3) },
        KeyringChange::MarkCompromised { version: version(2) },
        KeyringChange::RecordUsage { version: version(3), add: 5 },
    ];
    let updated = store.update_keyring(&id, rec.generation, &changes).await.expect("rewrap must succeed");
    let loaded = load(&store, &id).await;
    assert_eq!(loaded, updated, "the rewrapped record must be persisted as returned");
    let v = |n: u32| loaded.version(version(n)).expect("version exists").clone();
    assert_eq!(v(2).wrapped, Some(new_wrap(2)), "Rewrap must replace v2's wrapped key");
    assert_eq!(v(3).wrapped, Some(new_wrap(3)), "Rewrap must replace v3's wrapped key");
    assert!(v(2).compromised, "MarkCompromised must set the flag");
    assert!(!v(3).compromised, "MarkCompromised must only flag the version named");
    assert_eq!(v(3).encryptions, 3005, "RecordUsage must add to the stored count");

    let retired = [KeyringChange::Rewrap { version: version(1), wrapped: new_wrap(1) }];
    let err = expect_err(store.update_keyring(&id, loaded.generation, &retired).await, "rewrapping a retired version");
    assert!(
        matches!(err, Error::KeyRetired { .. }),
        "rewrapping a retired version must fail with KeyRetired, got: {err:?}"
    );
    assert_unchanged(&store, &loaded, "a refused rewrap").await;
}

/// A seal literal; the store must keep it byte for byte, never check it.
fn seal(salt: char) -> RecordSeal {
    RecordSeal { key_id: format!("{salt}").repeat(16), mac: format!("{salt}0").repeat(32) }
}

/// The record's seal ([`KeyringRecord::seal`]) round-trips exactly through
/// `create_keyring` and every load; a [`KeyringChange::Seal`] is applied in
/// the same compare-and-set as the changes before it (both written, or — when
/// another change of the list is refused — neither); updates without a `Seal`
/// keep the stored one; and an unsealed record stays unsealed.
pub async fn seal_round_trips_and_applies_atomically(store: Arc<dyn KeyStore>) {
    let id = keyring_id("seal");
    let mut rec = record(&id, &[KeyState::Active, KeyState::Pending]);
    rec.seal = Some(seal('a'));
    create(&store, &rec).await;
    assert_eq!(load(&store, &id).await, rec, "create_keyring must store the seal exactly");

    let changes = [
        KeyringChange::SetState { version: version(1), state: KeyState::Deprecated, at: at(1000) },
        KeyringChange::SetState { version: version(2), state: KeyState::Active, at: at(1000) },
        KeyringChange::Seal(seal('b')),
    ];
    let mut expected = rec.clone();
    expected.apply(&changes).expect("the conformance changes are legal");
    assert_eq!(expected.seal, Some(seal('b')));
    let updated = store.update_keyring(&id, rec.generation, &changes).await.expect("a sealed update must succeed");
    assert_eq!(updated, expected, "update_keyring must return the new seal with the new states");
    assert_eq!(load(&store, &id).await, expected, "the new seal must be persisted with the states it covers");

    let refused = [
        KeyringChange::MarkCompromised { version: version(2) },
        KeyringChange::Seal(seal('c')),
        KeyringChange::SetState { version: version(1), state: KeyState::Pending, at: at(2000) },
    ];
    expect_err(store.update_keyring(&id, updated.generation, &refused).await, "a sealed batch with an illegal change");
    assert_unchanged(&store, &updated, "a refused batch must not write its seal either").await;

    let usage = [KeyringChange::RecordUsage { version: version(2), add: 3 }];
    let counted = store.update_keyring(&id, updated.generation, &usage).await.expect("a usage update must succeed");
    assert_eq!(counted.seal, Some(seal('b')), "an update without a Seal change must keep the stored seal");
    assert_eq!(load(&store, &id).await, counted, "the kept seal must be persisted");

    let unsealed_id = keyring_id("seal-none");
    let unsealed = record(&unsealed_id, &[KeyState::Active]);
    create(&store, &unsealed).await;
    assert_eq!(load(&store, &unsealed_id).await.seal, None, "a record created without a seal must load without one");
    let sealed = store
        .update_keyring(&unsealed_id, unsealed.generation, &[KeyringChange::Seal(seal('d'))])
        .await
        .expect("a Seal-only update must succeed");
    assert_eq!(load(&store, &unsealed_id).await, sealed, "a Seal-only update must be persisted");
    assert_eq!(sealed.seal, Some(seal('d')));
}

/// Retiring a version (Disabled, then Retired, here in one update) destroys
/// its wrapped material in the store but keeps its metadata (number,
/// algorithm, origin, timestamps, flag) for the audit trail.
pub async fn retire_destroys_material_keeps_metadata(store: Arc<dyn KeyStore>) {
    let id = keyring_id("retire");
    let mut rec = record(&id, &[KeyState::Deprecated, KeyState::Active]);
    rec.versions[0].compromised = true;
    rec.versions[0].origin = KeyOrigin::Imported;
    create(&store, &rec).await;
    let retire = [
        KeyringChange::Disable { version: version(1), at: at(4000), destroy_after: at(4000) },
        KeyringChange::SetState { version: version(1), state: KeyState::Retired, at: at(5000) },
    ];
    let updated = store.update_keyring(&id, rec.generation, &retire).await.expect("retiring a Deprecated version");
    let loaded = load(&store, &id).await;
    assert_eq!(loaded, updated, "the retirement must be persisted as returned");
    let before = &rec.versions[0];
    let after = loaded.version(version(1)).expect("a retired version keeps its metadata");
    assert_eq!(after.state, KeyState::Retired, "the version must be Retired");
    assert_eq!(after.wrapped, None, "retiring must destroy the wrapped material");
    assert_eq!(after.retired_at, Some(at(5000)), "retired_at must be recorded");
    let expected = VersionRecord {
        state: KeyState::Retired,
        wrapped: None,
        retired_at: Some(at(5000)),
        disabled_at: Some(at(4000)),
        destroy_after: Some(at(4000)),
        ..before.clone()
    };
    assert_eq!(after, &expected, "retiring must keep every other field of the version");
    assert_eq!(loaded.versions[1], rec.versions[1], "retiring v1 must not touch v2");
}

/// Reversible retirement and erasure as the store keeps them: a Disabled
/// version keeps its wrapped material and its quarantine's end; re-enabling
/// is refused after the quarantine and for a compromised version (nothing
/// written) and allowed inside it; an erasure disables every version, the
/// Active one included, persists the erasure time and refuses new versions.
pub async fn disable_enable_and_erase_persist(store: Arc<dyn KeyStore>) {
    let id = keyring_id("disable-enable");
    let rec = record(&id, &[KeyState::Deprecated, KeyState::Deprecated, KeyState::Active]);
    create(&store, &rec).await;
    let disable = |n: u32| KeyringChange::Disable { version: version(n), at: at(1000), destroy_after: at(2000) };
    let disabled = store
        .update_keyring(
            &id,
            rec.generation,
            &[disable(1), disable(2), KeyringChange::MarkCompromised { version: version(2) }],
        )
        .await
        .expect("disabling Deprecated versions");
    let loaded = load(&store, &id).await;
    assert_eq!(loaded, disabled, "the disabling must be persisted as returned");
    let v1 = loaded.version(version(1)).expect("v1");
    assert_eq!(v1.state, KeyState::Disabled);
    assert_eq!(v1.wrapped, rec.versions[0].wrapped, "a Disabled version keeps its wrapped material");
    assert_eq!((v1.disabled_at, v1.destroy_after), (Some(at(1000)), Some(at(2000))));

    let enable =
        |n: u32, t: u64| KeyringChange::SetState { version: version(n), state: KeyState::Deprecated, at: at(t) };
    let err = expect_err(
        store.update_keyring(&id, disabled.generation, &[enable(1, 2000)]).await,
        "re-enabling after the quarantine",
    );
    assert!(matches!(err, Error::QuarantineOver { ended_at, .. } if ended_at == at(2000)), "{err:?}");
    let err = expect_err(
        store.update_keyring(&id, disabled.generation, &[enable(2, 1500)]).await,
        "re-enabling a compromised version",
    );
    assert!(matches!(err, Error::CompromisedVersion { .. }), "{err:?}");
    assert_unchanged(&store, &disabled, "refused re-enablings").await;
    let enabled = store
        .update_keyring(&id, disabled.generation, &[enable(1, 1500)])
        .await
        .expect("re-enabling inside the quarantine");
    let v1 = load(&store, &id).await.version(version(1)).cloned().expect("v1");
    assert_eq!(v1.state, KeyState::Deprecated);
    assert_eq!((v1.disabled_at, v1.destroy_after), (None, None), "a re-enabled version has no destruction pending");
    assert_eq!(v1.deprecated_at, rec.versions[0].deprecated_at, "re-enabling keeps when it stopped encrypting");

    let erased = store
        .update_keyring(&id, enabled.generation, &[KeyringChange::Erase { at: at(3000), destroy_after: at(9000) }])
        .await
        .expect("erasing the keyring");
    let loaded = load(&store, &id).await;
    assert_eq!(loaded, erased, "the erasure must be persisted as returned");
    assert_eq!(loaded.erased_at, Some(at(3000)));
    assert_eq!(loaded.active_version(), None, "an erased keyring has no Active version");
    for v in &loaded.versions {
        assert_eq!(v.state, KeyState::Disabled, "{} must be Disabled after the erasure", v.version);
        assert!(v.wrapped.is_some(), "the erasure keeps the material until the quarantine ends");
    }
    assert_eq!(loaded.versions[2].destroy_after, Some(at(9000)));
    assert_eq!(loaded.versions[1].destroy_after, Some(at(2000)), "an earlier quarantine is kept");
    let err = expect_err(
        store
            .update_keyring(&id, erased.generation, &[KeyringChange::AddVersion(version_record(4, KeyState::Pending))])
            .await,
        "a new version in an erased keyring",
    );
    assert!(matches!(err, Error::KeyringErased { .. }), "{err:?}");
    let destroy: Vec<KeyringChange> = (1..=3)
        .map(|n| KeyringChange::SetState { version: version(n), state: KeyState::Retired, at: at(9000) })
        .collect();
    store.update_keyring(&id, erased.generation, &destroy).await.expect("destroying the erased versions");
    let loaded = load(&store, &id).await;
    assert!(loaded.versions.iter().all(|v| v.state == KeyState::Retired && v.wrapped.is_none()));
    assert_eq!(loaded.erased_at, Some(at(3000)), "the erasure time stays");
}

/// Two updates racing on the same generation (activating two different Pending
/// versions): exactly one wins, the other gets [`Error::GenerationConflict`],
/// and exactly one version is Active afterwards — the winner's. Repeated over
/// several rounds with the two calls released together.
pub async fn racing_activations_have_one_winner(store: Arc<dyn KeyStore>) {
    for round in 0..16 {
        let id = keyring_id(&format!("race-{round}"));
        let rec = record(&id, &[KeyState::Active, KeyState::Pending, KeyState::Pending]);
        create(&store, &rec).await;
        let generation = rec.generation;
        let (store2, id2) = (Arc::clone(&store), id.clone());
        let results = race(2, move |i| {
            let (store, id) = (Arc::clone(&store2), id2.clone());
            let target = u32::try_from(i).expect("two contenders") + 2;
            let changes = vec![
                KeyringChange::SetState { version: version(1), state: KeyState::Deprecated, at: at(1000) },
                KeyringChange::SetState { version: version(target), state: KeyState::Active, at: at(1000) },
            ];
            async move { (target, store.update_keyring(&id, generation, &changes).await) }
        })
        .await;
        let winners: Vec<u32> = results.iter().filter(|(_, r)| r.is_ok()).map(|(t, _)| *t).collect();
        assert_eq!(winners.len(), 1, "round {round}: exactly one of two racing updates must succeed, got {results:?}");
        for (target, result) in &results {
            if let Err(err) = result {
                assert!(
                    matches!(err, Error::GenerationConflict { expected, actual, .. }
                        if *expected == rec.generation && *actual == rec.generation + 1),
                    "round {round}: the losing update (activate v{target}) must get GenerationConflict, got: {err:?}"
                );
            }
        }
        let loaded = load(&store, &id).await;
        let active: Vec<_> =
            loaded.versions.iter().filter(|v| v.state == KeyState::Active).map(|v| v.version).collect();
        assert_eq!(active, vec![version(winners[0])], "round {round}: exactly the winner's version must be Active");
        assert_eq!(loaded.generation, rec.generation + 1, "round {round}: exactly one update must have been applied");
    }
}

/// Many concurrent writers that reload and retry on
/// [`Error::GenerationConflict`] each add one version: no update is lost and
/// the generation advances by exactly one per success.
pub async fn concurrent_updates_lose_nothing(store: Arc<dyn KeyStore>) {
    const WRITERS: u32 = 6;
    let id = keyring_id("concurrent-updates");
    let rec = record(&id, &[KeyState::Active]);
    create(&store, &rec).await;
    let (store2, id2) = (Arc::clone(&store), id.clone());
    let mut added = race(WRITERS as usize, move |_| {
        let (store, id) = (Arc::clone(&store2), id2.clone());
        async move {
            for _attempt in 0..1000 {
                let current = load(&store, &id).await;
                let next = current.next_version().expect("few versions").get();
                let add = KeyringChange::AddVersion(version_record(next, KeyState::Pending));
                match store.update_keyring(&id, current.generation, &[add]).await {
                    Ok(_) => return next,
                    Err(Error::GenerationConflict { .. }) => tokio::task::yield_now().await,
                    Err(other) => {
                        panic!("a retried AddVersion must only fail with GenerationConflict, got: {other:?}")
                    }
                }
            }
            panic!("a writer did not get its update through in 1000 attempts");
        }
    })
    .await;
    added.sort_unstable();
    assert_eq!(added, (2..=WRITERS + 1).collect::<Vec<_>>(), "each writer must have added a distinct next version");
    let loaded = load(&store, &id).await;
    assert_eq!(loaded.versions.len(), WRITERS as usize + 1, "no successful update may be lost");
    assert_eq!(loaded.generation, rec.generation + u64::from(WRITERS), "one generation per successful update");
    loaded.validate().expect("the stored record must stay valid");
}

async fn acquire(store: &Arc<dyn KeyStore>, id: &KeyringId, holder: &str, now: Timestamp) -> Lease {
    store
        .acquire_lease(id, holder, TTL, now)
        .await
        .unwrap_or_else(|e| panic!("acquire_lease({id}, {holder}) at {now} must succeed, got: {e:?}"))
}

async fn lease_keyring(store: &Arc<dyn KeyStore>, tenant: &str) -> KeyringId {
    let id = keyring_id(tenant);
    create(store, &record(&id, &[KeyState::Active])).await;
    id
}

fn assert_held(result: keywheel_core::Result<Lease>, by: &Lease, rule: &str) {
    let err = expect_err(result, rule);
    assert!(
        matches!(&err, Error::LeaseHeld { keyring, holder, expires_at }
            if *keyring == by.keyring && *holder == by.holder && *expires_at == by.expires_at),
        "{rule}: must fail with LeaseHeld naming holder {} until {}, got: {err:?}",
        by.holder,
        by.expires_at
    );
}

fn assert_lost(result: keywheel_core::Result<Lease>, rule: &str) {
    let err = expect_err(result, rule);
    assert!(matches!(err, Error::LeaseLost { .. }), "{rule}: must fail with LeaseLost, got: {err:?}");
}

/// A lease is exclusive: while it is unexpired another holder gets
/// [`Error::LeaseHeld`] naming the holder and expiry.
pub async fn lease_is_exclusive(store: Arc<dyn KeyStore>) {
    let id = lease_keyring(&store, "lease-exclusive").await;
    let a = acquire(&store, &id, "worker-a", T0).await;
    assert_eq!(
        (&a.keyring, a.holder.as_str(), a.expires_at),
        (&id, "worker-a", T0.plus(TTL)),
        "a granted lease names its keyring and holder and expires at now + ttl"
    );
    assert_held(store.acquire_lease(&id, "worker-b", TTL, at(10)).await, &a, "a second holder during the lease");
    let just_before = T0.plus(TTL).minus(Duration::from_millis(1));
    assert_held(store.acquire_lease(&id, "worker-b", TTL, just_before).await, &a, "a second holder 1 ms before expiry");
    store.renew_lease(&a, TTL, at(11)).await.expect("the holder keeps its lease after refused attempts");
}

/// `load_lease` reads the current lease without changing it: none before the
/// first grant; the grant itself (expired or not) while it is unreleased,
/// unchanged by a refused acquisition; none after release.
pub async fn load_lease_only_reads(store: Arc<dyn KeyStore>) {
    let id = lease_keyring(&store, "lease-load").await;
    assert_eq!(store.load_lease(&id).await.expect("load_lease"), None, "no lease before the first grant");
    let a = acquire(&store, &id, "worker-a", T0).await;
    assert_eq!(store.load_lease(&id).await.expect("load_lease").as_ref(), Some(&a), "the granted lease, as granted");
    assert!(store.acquire_lease(&id, "worker-b", TTL, at(10)).await.is_err(), "a second holder is refused");
    assert_eq!(
        store.load_lease(&id).await.expect("load_lease").as_ref(),
        Some(&a),
        "a refused acquisition changes nothing (holder, token, expiry)"
    );
    let after_expiry = T0.plus(TTL).plus(Duration::from_secs(1));
    assert_eq!(
        store.load_lease(&id).await.expect("load_lease").map(|l| l.expires_at < after_expiry),
        Some(true),
        "an expired lease is still reported (callers compare its expiry with their clock)"
    );
    store.release_lease(&a).await.expect("release");
    assert_eq!(store.load_lease(&id).await.expect("load_lease"), None, "no lease after release");
}

/// The same holder may acquire again (re-entry); the new grant has a greater
/// token and a new expiry, and supersedes the earlier grant.
pub async fn lease_is_reentrant(store: Arc<dyn KeyStore>) {
    let id = lease_keyring(&store, "lease-reentrant").await;
    let first = acquire(&store, &id, "worker-a", T0).await;
    let again = acquire(&store, &id, "worker-a", at(5)).await;
    assert!(
        again.token > first.token,
        "every grant, re-entry included, must carry a greater token ({again:?} after {first:?})"
    );
    assert_eq!(again.expires_at, at(5).plus(TTL), "re-entry must extend the lease to now + ttl");
    assert_held(store.acquire_lease(&id, "worker-b", TTL, at(31)).await, &again, "another holder after re-entry");
    store.renew_lease(&again, TTL, at(6)).await.expect("the latest grant renews");
    assert_lost(store.renew_lease(&first, TTL, at(7)).await, "renewing a grant superseded by re-entry");
}

/// After `expires_at` (inclusive: `expires_at <= now`) another holder takes the
/// lease over with a strictly greater token.
pub async fn lease_expires_and_token_increases(store: Arc<dyn KeyStore>) {
    let id = lease_keyring(&store, "lease-expiry").await;
    let a = acquire(&store, &id, "worker-a", T0).await;
    let b = acquire(&store, &id, "worker-b", a.expires_at).await;
    assert!(b.token > a.token, "a takeover must carry a greater token ({b:?} after {a:?})");
    assert_eq!(b.holder, "worker-b");
    assert_held(store.acquire_lease(&id, "worker-a", TTL, a.expires_at).await, &b, "the old holder after takeover");
    let c = acquire(&store, &id, "worker-c", b.expires_at.plus(Duration::from_secs(3600))).await;
    assert!(c.token > b.token, "tokens must keep increasing ({c:?} after {b:?})");
}

/// Renewing keeps the token and extends the lease to `now + ttl`; a renewal
/// by the old holder after another holder took over fails with
/// [`Error::LeaseLost`]. An expired lease nobody took over can still be renewed.
pub async fn renew_after_takeover_is_lost(store: Arc<dyn KeyStore>) {
    let id = lease_keyring(&store, "lease-renew").await;
    let a = acquire(&store, &id, "worker-a", T0).await;
    let renewed = store.renew_lease(&a, TTL, at(20)).await.expect("the holder renews its lease");
    assert_eq!(renewed.token, a.token, "renewal must keep the token");
    assert_eq!(renewed.expires_at, at(20).plus(TTL), "renewal must extend the lease to now + ttl");
    assert_held(store.acquire_lease(&id, "worker-b", TTL, at(40)).await, &renewed, "another holder after renewal");

    let late =
        store.renew_lease(&renewed, TTL, at(60)).await.expect("an expired lease nobody took over can be renewed");
    assert_eq!(late.token, a.token, "late renewal keeps the token");

    let b = acquire(&store, &id, "worker-b", late.expires_at).await;
    assert_lost(store.renew_lease(&late, TTL, late.expires_at).await, "renewal by the old holder after takeover");
    store.renew_lease(&b, TTL, late.expires_at).await.expect("the new holder renews");
}

/// Releasing frees the lease for another holder; releasing again, or
/// releasing a stale lease after someone else took over, does nothing (and
/// in particular does not free the new holder's lease).
pub async fn release_is_idempotent(store: Arc<dyn KeyStore>) {
    let id = lease_keyring(&store, "lease-release").await;
    let a = acquire(&store, &id, "worker-a", T0).await;
    store.release_lease(&a).await.expect("release");
    store.release_lease(&a).await.expect("releasing twice must succeed (idempotent)");
    assert_lost(store.renew_lease(&a, TTL, at(1)).await, "renewing a released lease");
    let b = acquire(&store, &id, "worker-b", at(1)).await;
    assert!(b.token > a.token, "a grant after release must carry a greater token ({b:?} after {a:?})");
    store.release_lease(&a).await.expect("releasing a stale lease must succeed");
    assert_held(store.acquire_lease(&id, "worker-c", TTL, at(2)).await, &b, "a third holder after a stale release");
}

/// Leases are per keyring: holding one keyring's lease does not block another's.
pub async fn leases_are_per_keyring(store: Arc<dyn KeyStore>) {
    let one = lease_keyring(&store, "lease-one").await;
    let two = lease_keyring(&store, "lease-two").await;
    let a = acquire(&store, &one, "worker-a", T0).await;
    let b = acquire(&store, &two, "worker-b", T0).await;
    assert_eq!((a.keyring, b.keyring), (one.clone(), two), "each lease names its own keyring");
    assert_lost(
        store.renew_lease(&Lease { keyring: one, ..b }, TTL, at(1)).await,
        "a lease presented for another keyring",
    );
}

/// Many holders racing for a free lease: exactly one gets it, the others get
/// [`Error::LeaseHeld`].
pub async fn racing_lease_acquisitions_have_one_winner(store: Arc<dyn KeyStore>) {
    const HOLDERS: usize = 8;
    let id = lease_keyring(&store, "lease-race").await;
    let (store2, id2) = (Arc::clone(&store), id.clone());
    let results = race(HOLDERS, move |n| {
        let (store, id) = (Arc::clone(&store2), id2.clone());
        async move { store.acquire_lease(&id, &format!("worker-{n}"), TTL, T0).await }
    })
    .await;
    let mut granted = Vec::new();
    for result in results {
        match result {
            Ok(lease) => granted.push(lease),
            Err(Error::LeaseHeld { .. }) => {}
            Err(other) => panic!("a losing acquire_lease must fail with LeaseHeld, got: {other:?}"),
        }
    }
    assert_eq!(granted.len(), 1, "exactly one of {HOLDERS} racing holders must get the lease, got {granted:?}");
}

/// A rotation job exercising every field.
fn job(id: &str, keyring: &KeyringId, started_at: Timestamp) -> RotationJob {
    RotationJob {
        id: id.to_owned(),
        keyring: keyring.clone(),
        kind: JobKind::Emergency { compromised: version(2), reason: "key leaked in \"ci\" log\nticket #42".into() },
        phase: JobPhase::WaitActivation { until: started_at.plus(TTL) },
        from: Some(version(2)),
        to: Some(version(3)),
        sources: vec![
            SourceCheckpoint {
                source: "users.email".into(),
                cursor: Some(Cursor("00000000000000000042".into())),
                done: false,
            },
            SourceCheckpoint { source: "users.token".into(), cursor: None, done: true },
        ],
        counts: JobCounts { processed: 100, rewritten: 90, skipped: 7, failed: 3 },
        failures: vec![JobFailure {
            source: "users.email".into(),
            cursor: Cursor("00000000000000000007".into()),
            version: Some(version(1)),
            reason: "decryption failed".into(),
            location: Some(keywheel_core::ValueLocation::new("public.users", "email", "7")),
        }],
        failures_truncated: 2,
        total_estimate: Some(1000),
        remaining_after_verify: None,
        started_at,
        updated_at: started_at.plus(Duration::from_secs(5)),
        finished_at: None,
        active_ms: 4321,
        completion_pending: true,
        legacy: std::collections::BTreeMap::from([("fernet".to_owned(), 40), ("plaintext".to_owned(), 5)]),
    }
}

async fn save_job(store: &Arc<dyn KeyStore>, job: &RotationJob, lease: &Lease) {
    store
        .save_job(job, lease)
        .await
        .unwrap_or_else(|e| panic!("save_job({}) under the current lease failed: {e}", job.id));
}

async fn load_job(store: &Arc<dyn KeyStore>, id: &str) -> Option<RotationJob> {
    store.load_job(id).await.unwrap_or_else(|e| panic!("load_job({id}) failed: {e}"))
}

/// Rotation jobs round-trip field for field, are replaced by id, and are
/// listed per keyring oldest first (by `started_at`, then id); an unknown id
/// loads as `None`.
pub async fn jobs_round_trip(store: Arc<dyn KeyStore>) {
    let id = lease_keyring(&store, "jobs").await;
    let other = lease_keyring(&store, "jobs-other").await;
    let lease = acquire(&store, &id, "rotator", T0).await;
    let other_lease = acquire(&store, &other, "rotator", T0).await;
    assert_eq!(load_job(&store, "job-unknown").await, None, "load_job of an unknown id must return None");
    assert_eq!(store.list_jobs(&id).await.expect("list_jobs"), Vec::new(), "a keyring without jobs lists none");

    let first = job("job-b", &id, at(100));
    save_job(&store, &first, &lease).await;
    assert_eq!(load_job(&store, "job-b").await, Some(first.clone()), "load_job must return the saved job exactly");

    let mut advanced = first.clone();
    advanced.phase = JobPhase::Reencrypt;
    advanced.sources[0].cursor = Some(Cursor("00000000000000000099".into()));
    advanced.counts.processed = 200;
    advanced.updated_at = at(200);
    save_job(&store, &advanced, &lease).await;
    assert_eq!(load_job(&store, "job-b").await, Some(advanced.clone()), "saving a job again must replace it (by id)");

    let older = RotationJob { kind: JobKind::Rotation, phase: JobPhase::Completed, ..job("job-z", &id, at(50)) };
    let same_time = RotationJob { kind: JobKind::RollbackReencrypt, ..job("job-a", &id, at(100)) };
    let elsewhere = job("job-other", &other, at(10));
    save_job(&store, &older, &lease).await;
    save_job(&store, &same_time, &lease).await;
    save_job(&store, &elsewhere, &other_lease).await;
    let listed = store.list_jobs(&id).await.expect("list_jobs");
    assert_eq!(
        listed,
        vec![older, same_time, advanced],
        "list_jobs must return only this keyring's jobs, by started_at then id, each once"
    );
    assert_eq!(store.list_jobs(&other).await.expect("list_jobs"), vec![elsewhere], "jobs are listed per keyring");
}

/// `save_job` is fenced by the lease: with a lease that is no longer the
/// keyring's current one (taken over, released, of another keyring, or never
/// granted) it fails with [`Error::LeaseLost`] and writes nothing.
pub async fn save_job_is_fenced(store: Arc<dyn KeyStore>) {
    let id = lease_keyring(&store, "jobs-fenced").await;
    let other = lease_keyring(&store, "jobs-fenced-other").await;
    let never = Lease { keyring: id.clone(), holder: "nobody".into(), token: 1, expires_at: at(3600) };
    let err = expect_err(store.save_job(&job("fenced-0", &id, T0), &never).await, "save_job without any lease granted");
    assert!(
        matches!(err, Error::LeaseLost { .. }),
        "save_job without a granted lease must fail with LeaseLost, got: {err:?}"
    );
    assert_eq!(load_job(&store, "fenced-0").await, None, "a fenced-off save_job must write nothing");

    let a = acquire(&store, &id, "worker-a", T0).await;
    let saved = job("fenced-1", &id, T0);
    save_job(&store, &saved, &a).await;
    let b = acquire(&store, &id, "worker-b", a.expires_at).await;
    let stale = RotationJob { phase: JobPhase::Verify, ..saved.clone() };
    let err = expect_err(store.save_job(&stale, &a).await, "save_job by the old holder after takeover");
    assert!(
        matches!(err, Error::LeaseLost { .. }),
        "save_job under a taken-over lease must fail with LeaseLost, got: {err:?}"
    );
    assert_eq!(load_job(&store, "fenced-1").await, Some(saved), "a fenced-off save_job must not overwrite the job");

    let other_lease = acquire(&store, &other, "worker-b", a.expires_at).await;
    let err = expect_err(store.save_job(&stale, &other_lease).await, "save_job under another keyring's lease");
    assert!(matches!(err, Error::LeaseLost { .. }), "another keyring's lease must not fence this job, got: {err:?}");

    save_job(&store, &stale, &b).await;
    store.release_lease(&b).await.expect("release");
    let err = expect_err(store.save_job(&job("fenced-2", &id, T0), &b).await, "save_job under a released lease");
    assert!(
        matches!(err, Error::LeaseLost { .. }),
        "save_job under a released lease must fail with LeaseLost, got: {err:?}"
    );
    assert_eq!(load_job(&store, "fenced-2").await, None, "a fenced-off save_job must write nothing");
}

/// Policies round-trip per keyring (whole seconds, every field); saving again
/// replaces; a keyring without a stored policy loads `None`.
pub async fn policies_round_trip(store: Arc<dyn KeyStore>) {
    let id = lease_keyring(&store, "policy").await;
    let other = lease_keyring(&store, "policy-other").await;
    let load = |id: KeyringId| {
        let store = Arc::clone(&store);
        async move { store.load_policy(&id).await.unwrap_or_else(|e| panic!("load_policy({id}) failed: {e}")) }
    };
    assert_eq!(load(id.clone()).await, None, "a keyring without a stored policy must load None");
    let mut policy = Policy::for_purpose(&Purpose::Token);
    policy.activation_delay = Duration::from_secs(600);
    policy.maintenance_window =
        Some(MaintenanceWindow { start: Duration::from_secs(2 * 3600), duration: Duration::from_secs(4 * 3600) });
    policy.priority = -3;
    policy.usage_limit = None;
    store.save_policy(&id, &policy).await.expect("save_policy");
    assert_eq!(load(id.clone()).await, Some(policy.clone()), "load_policy must return the saved policy exactly");
    assert_eq!(load(other.clone()).await, None, "policies are per keyring");

    let replaced = Policy { after_rotation: AfterRotation::Expire, priority: 9, ..policy };
    store.save_policy(&id, &replaced).await.expect("save_policy again");
    assert_eq!(load(id).await, Some(replaced), "saving a policy again must replace it");
}
