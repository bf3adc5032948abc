//! The rotation engine on the memory backend: full rotations, crash at every
//! step and resume, concurrent application writers, two rotators, dry run,
//! failures, retirement and rollback edges, emergency and KEK rotation.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Fault, HookedSource, HookedStore, Mode};
use keywheel::memory::{MemoryAuditSink, MemoryKeyStore, MemoryRecordSource};
use keywheel::{
    Algorithm, AuditKind, Context, Cursor, Error, JobPhase, KekRing, KeyOrigin, KeyState, KeyStore, KeyVersion,
    KeyringId, KeyringRecord, Keywheel, LocalKek, ManualClock, Outcome, Policy, Purpose, RetireOptions, RotateOptions,
    Rotator, Timestamp,
};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
const T0: i64 = 1_800_000_000_000;

struct World {
    kw: Keywheel,
    store: Arc<dyn KeyStore>,
    audit: Arc<MemoryAuditSink>,
    table: Arc<MemoryRecordSource>,
    clock: ManualClock,
    id: KeyringId,
    other: KeyringId,
    /// Row number → plaintext the application last wrote.
    expected: BTreeMap<u64, String>,
    /// Rows below this belong to `id`, the rest to `other`.
    rows_of_id: u64,
}

fn kw_over(
    store: Arc<dyn KeyStore>,
    audit: Arc<MemoryAuditSink>,
    clock: &ManualClock,
    kek: Arc<dyn keywheel::KeyEncryptionKey>,
) -> Keywheel {
    Keywheel::builder()
        .store(store)
        .kek(kek)
        .audit(audit)
        .clock(Arc::new(clock.clone()))
        .refresh_interval(Duration::from_millis(0))
        .build()
        .expect("builder")
}

fn ctx(row: u64) -> Context {
    Context::field("users", "email", &row.to_string())
}

fn cursor(row: u64) -> Cursor {
    Cursor(format!("{row:020}"))
}

/// A keyring `acme/database` with `n` values in one table, plus `acme/token`
/// with `n / 4` values in the same table (must be left alone by rotations of the first).
async fn world_with(store: Arc<dyn KeyStore>, n: u64) -> World {
    let audit = Arc::new(MemoryAuditSink::new());
    let clock = ManualClock::new(Timestamp::from_millis(T0));
    let kw = kw_over(Arc::clone(&store), Arc::clone(&audit), &clock, Arc::new(LocalKek::from_bytes(&[1; 32])));
    let id = KeyringId::new("acme", Purpose::Database).expect("id");
    let other = KeyringId::new("acme", Purpose::Token).expect("id");
    kw.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("create");
    kw.create_keyring(&other, Algorithm::ChaCha20Poly1305).await.expect("create");
    let table = Arc::new(MemoryRecordSource::new("users.email"));
    let mut expected = BTreeMap::new();
    for row in 0..n + n / 4 {
        let keyring = if row < n { &id } else { &other };
        let plaintext = format!("user{row}@example.com");
        let value = kw.encrypt(keyring, plaintext.as_bytes(), &ctx(row)).await.expect("encrypt");
        table.insert_row(row, keyring.clone(), ctx(row), value);
        expected.insert(row, plaintext);
    }
    World { kw, store, audit, table, clock, id, other, expected, rows_of_id: n }
}

async fn world(n: u64) -> World {
    world_with(Arc::new(MemoryKeyStore::new()), n).await
}

impl World {
    fn rotator(&self) -> Rotator {
        Rotator::new(self.kw.clone()).expect("rng").holder("rotator-a").source(self.table.clone())
    }

    fn policy(&self) -> Policy {
        Policy::for_purpose(self.id.purpose())
    }

    /// Every row decrypts to what the application last wrote; returns versions per keyring.
    async fn check_all_decrypt(&self) -> BTreeMap<KeyringId, BTreeMap<u32, u64>> {
        let mut versions: BTreeMap<KeyringId, BTreeMap<u32, u64>> = BTreeMap::new();
        assert_eq!(self.table.len(), self.expected.len(), "no value lost or added");
        for (row, plaintext) in &self.expected {
            let keyring = self.table_keyring(*row);
            let value = self.table.get(&cursor(*row)).expect("row present");
            let got = self.kw.decrypt(keyring, &value, &ctx(*row)).await.unwrap_or_else(|e| panic!("row {row}: {e}"));
            assert_eq!(&got[..], plaintext.as_bytes(), "row {row}");
            let v = keywheel::version_of(&value).expect("parse").get();
            *versions.entry(keyring.clone()).or_default().entry(v).or_default() += 1;
        }
        versions
    }

    fn table_keyring(&self, row: u64) -> &KeyringId {
        if row < self.rows_of_id { &self.id } else { &self.other }
    }

    async fn exactly_one_active(&self, id: &KeyringId) -> KeyringRecord {
        let record = self.kw.record(id).await.expect("record");
        assert_eq!(record.versions.iter().filter(|v| v.state == KeyState::Active).count(), 1, "{record:?}");
        record
    }
}

fn opts(batch: usize) -> RotateOptions {
    // No emergency settle time: these tests run one instance (tests/invariants.rs
    // covers the wait for other instances).
    RotateOptions { batch_size: batch, emergency_settle: Some(Duration::ZERO), ..RotateOptions::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_moves_every_value_and_leaves_other_keyrings_alone() {
    let w = world(400).await;
    let rotator = w.rotator();
    let before = rotator.census(None).await.expect("census");
    assert_eq!(before.count(&w.id, KeyVersion::FIRST), 400);
    assert_eq!(before.count(&w.other, KeyVersion::FIRST), 100);

    let progress = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&progress);
    let options = RotateOptions {
        batch_size: 64,
        progress: Some(Arc::new(move |p: &keywheel::Progress| seen.lock().expect("lock").push((p.processed, p.total)))),
        ..RotateOptions::default()
    };
    let report = rotator.rotate(&w.id, &w.policy(), &options).await.expect("rotate");
    assert_eq!(report.phase, JobPhase::Completed);
    assert_eq!((report.from, report.to), (Some(KeyVersion::FIRST), KeyVersion::new(2).ok()));
    assert_eq!(
        (report.counts.processed, report.counts.rewritten, report.counts.skipped, report.counts.failed),
        (400, 400, 0, 0)
    );
    assert_eq!(report.remaining, 0);

    let progress = progress.lock().expect("lock").clone();
    assert_eq!(progress.len(), 7, "one report per batch of 64");
    assert!(progress.windows(2).all(|p| p[0].0 < p[1].0));
    assert_eq!(progress.last(), Some(&(400, Some(400))));

    let versions = w.check_all_decrypt().await;
    assert_eq!(versions[&w.id], BTreeMap::from([(2, 400)]));
    assert_eq!(versions[&w.other], BTreeMap::from([(1, 100)]));
    let record = w.exactly_one_active(&w.id).await;
    assert_eq!(record.versions[0].state, KeyState::Deprecated);
    let verify = rotator.verify(&w.id).await.expect("verify");
    assert!(verify.ok && verify.not_on_active == 0, "{verify:?}");

    let kinds: Vec<&'static str> = w
        .audit
        .events()
        .iter()
        .filter(|e| e.keyring.as_ref() == Some(&w.id))
        .map(|e| match e.kind {
            AuditKind::RotationStarted { .. } => "started",
            AuditKind::KeyCreated { .. } => "created",
            AuditKind::KeyDeprecated { .. } => "deprecated",
            AuditKind::KeyActivated { .. } => "activated",
            AuditKind::RotationProgress { .. } => "progress",
            AuditKind::RotationCompleted { .. } => "completed",
            AuditKind::KeyringCreated { .. } => "keyring",
            _ => "other",
        })
        .filter(|k| *k != "progress")
        .collect();
    assert_eq!(
        kinds,
        ["keyring", "created", "activated", "started", "created", "deprecated", "activated", "completed"]
    );
    assert!(w.audit.events().iter().any(|e| matches!(e.kind, AuditKind::RotationProgress { .. })));
    w.audit.verify().expect("audit chain verifies");
}

/// Crash at the k-th store or source call, for every k across a whole rotation,
/// in both modes (before and after the call takes effect); then resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_every_step_then_resume_completes() {
    let mut total_crashes = 0;
    for mode in [Mode::Before, Mode::After] {
        for k in 1.. {
            let fault = Arc::new(Fault::default());
            let store: Arc<dyn KeyStore> = Arc::new(HookedStore::new(Arc::clone(&fault)));
            let w = world_with(Arc::clone(&store), 40).await;
            let source = Arc::new(HookedSource { inner: Arc::clone(&w.table), hook: Arc::clone(&fault) });
            let rotator = Rotator::new(w.kw.clone()).expect("rng").holder("crashy").source(source);
            let options = RotateOptions { batch_size: 7, ..RotateOptions::default() };
            fault.arm(k, mode);
            let first = rotator.rotate(&w.id, &w.policy(), &options).await;
            fault.disarm();
            if !fault.fired.load(Ordering::SeqCst) {
                assert!(first.is_ok(), "no fault, no error: {first:?}");
                assert!(k > 20, "the rotation makes many store and source calls");
                break;
            }
            total_crashes += 1;
            // A crashed holder's lease is never taken over while live: the
            // resume comes once it has expired.
            w.clock.advance(options.lease_ttl + Duration::from_secs(1));
            let phase = match first {
                Ok(report) => report.phase, // the fault hit a best-effort call (e.g. lease release)
                Err(_) => match rotator.resume(&w.id, &options).await.expect("resume") {
                    Some(report) => report.phase,
                    None => match rotator.last_job(&w.id).await.expect("jobs") {
                        // Crashed right after the job was stored as finished: nothing to redo.
                        Some(job) if job.phase.is_finished() => job.phase,
                        // Crashed before the job was stored: nothing happened yet; start again.
                        _ => rotator.rotate(&w.id, &w.policy(), &options).await.expect("rotate again").phase,
                    },
                },
            };
            assert_eq!(phase, JobPhase::Completed, "k={k} {mode:?}");
            let versions = w.check_all_decrypt().await;
            assert_eq!(versions[&w.id], BTreeMap::from([(2, 40)]), "k={k} {mode:?}");
            let record = w.exactly_one_active(&w.id).await;
            assert_eq!(record.versions.len(), 2, "k={k} {mode:?}: exactly one new version");
            assert_eq!(record.active_version(), KeyVersion::new(2).ok());
            let completions =
                w.audit.events().iter().filter(|e| matches!(e.kind, AuditKind::RotationCompleted { .. })).count();
            assert_eq!(completions, 1, "k={k} {mode:?}: the completion is recorded once, even across the crash");
            let v2 = KeyVersion::new(2).expect("2");
            for (what, kind) in [
                (
                    "created",
                    AuditKind::KeyCreated {
                        version: v2,
                        algorithm: Algorithm::Aes256Gcm,
                        origin: KeyOrigin::Generated,
                    },
                ),
                ("activated", AuditKind::KeyActivated { version: v2, previous: Some(KeyVersion::FIRST) }),
            ] {
                let n = w.audit.events().iter().filter(|e| e.kind == kind && e.outcome == Outcome::Success).count();
                assert_eq!(n, 1, "k={k} {mode:?}: v2 {what} is recorded once");
            }
            w.audit.verify().expect("audit chain verifies");
        }
    }
    assert!(total_crashes > 60, "crashes injected: {total_crashes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_application_writes_are_never_lost() {
    let mut w = world(600).await;
    let rotator = w.rotator();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for t in 0..2u64 {
        let (kw, table, id, stop) = (w.kw.clone(), Arc::clone(&w.table), w.id.clone(), Arc::clone(&stop));
        writers.push(tokio::spawn(async move {
            let mut written = BTreeMap::new();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) || i < 50 {
                // Rewrite an existing row (thread t owns rows ≡ t mod 2) …
                let row = (i * 37 + t) % 600 / 2 * 2 + t;
                let plaintext = format!("rewrite {t}/{i}");
                let value = kw.encrypt(&id, plaintext.as_bytes(), &ctx(row)).await.expect("encrypt");
                table.set(&cursor(row), value);
                written.insert(row, plaintext);
                i += 1;
                tokio::task::yield_now().await;
            }
            written
        }));
    }
    let report = rotator.rotate(&w.id, &w.policy(), &opts(16)).await.expect("rotate");
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        w.expected.extend(writer.await.expect("writer"));
    }
    assert!(report.phase == JobPhase::Completed, "{report:?}");
    let versions = w.check_all_decrypt().await;
    // Writers may still have used v1 snapshots after the rotation's final sweep;
    // a second rotation-free sweep via verify reports them, but none is lost.
    assert_eq!(versions[&w.id].values().sum::<u64>(), 600);
    assert!(report.counts.rewritten + report.counts.skipped <= report.counts.processed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_rotator_gets_rotation_in_progress() {
    let w = world(300).await;
    let slow = RotateOptions { batch_size: 10, max_records_per_second: Some(600), ..RotateOptions::default() };
    let first = w.rotator();
    let (id, policy) = (w.id.clone(), w.policy());
    let running = tokio::spawn(async move { first.rotate(&id, &policy, &slow).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let second = Rotator::new(w.kw.clone()).expect("rng").holder("rotator-b").source(w.table.clone());
    let err = second.rotate(&w.id, &w.policy(), &opts(10)).await.expect_err("in progress");
    assert!(matches!(&err, Error::RotationInProgress { keyring, .. } if keyring == &w.id), "{err}");
    assert!(matches!(
        second.rollback(&w.id, &w.policy(), None, false, &opts(10)).await,
        Err(Error::RotationInProgress { .. })
    ));
    let report = running.await.expect("task").expect("first rotation completes");
    assert_eq!(report.phase, JobPhase::Completed);
    // Once released, another rotator may rotate.
    let report = second.rotate(&w.id, &w.policy(), &opts(100)).await.expect("second rotation");
    assert_eq!(report.to, KeyVersion::new(3).ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_changes_nothing_and_reports_failures() {
    let w = world(200).await;
    // One value pasted into another row: it cannot decrypt there.
    let moved = w.table.get(&cursor(1)).expect("row 1");
    w.table.set(&cursor(2), moved);
    let rotator = w.rotator();
    let record = w.kw.record(&w.id).await.expect("record");
    let values = w.table.values();
    let audit = w.audit.snapshot();
    let report = rotator.dry_run(&w.id, &opts(32)).await.expect("dry run");
    assert!(report.dry_run && report.job_id.is_none());
    assert_eq!(report.phase, JobPhase::CompletedWithFailures);
    assert_eq!((report.counts.processed, report.counts.rewritten, report.counts.failed), (200, 199, 1));
    assert_eq!(report.failures[0].cursor, cursor(2));
    assert_eq!(report.failures[0].version, Some(KeyVersion::FIRST));
    assert_eq!(report.to, KeyVersion::new(2).ok());
    assert_eq!(w.kw.record(&w.id).await.expect("record"), record, "store unchanged");
    assert!(w.store.list_jobs(&w.id).await.expect("jobs").is_empty(), "no job stored");
    assert_eq!(w.table.values(), values, "source unchanged");
    assert_eq!(w.audit.snapshot(), audit, "audit unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecryptable_values_are_listed_and_never_written() {
    let w = world(100).await;
    let moved = w.table.get(&cursor(1)).expect("row 1");
    w.table.set(&cursor(2), moved.clone());
    let mut unknown = w.table.get(&cursor(3)).expect("row 3");
    unknown[4..8].copy_from_slice(&99u32.to_be_bytes());
    w.table.set(&cursor(3), unknown.clone());
    w.table.set(&cursor(4), b"not a keywheel value".to_vec());
    let mut corrupt = w.table.get(&cursor(5)).expect("row 5");
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    w.table.set(&cursor(5), corrupt.clone());

    let report = w.rotator().rotate(&w.id, &w.policy(), &opts(16)).await.expect("rotate");
    assert_eq!(report.phase, JobPhase::CompletedWithFailures);
    assert_eq!(report.counts.failed, 4);
    let failed: BTreeMap<Cursor, Option<KeyVersion>> =
        report.failures.iter().map(|f| (f.cursor.clone(), f.version)).collect();
    assert_eq!(
        failed,
        BTreeMap::from([
            (cursor(2), Some(KeyVersion::FIRST)),
            (cursor(3), KeyVersion::new(99).ok()),
            (cursor(4), None),
            (cursor(5), Some(KeyVersion::FIRST)),
        ])
    );
    assert!(report.failures.iter().all(|f| !f.reason.is_empty() && f.source == "users.email"));
    assert_eq!(w.table.get(&cursor(2)), Some(moved), "never overwritten");
    assert_eq!(w.table.get(&cursor(3)), Some(unknown));
    assert_eq!(w.table.get(&cursor(4)), Some(b"not a keywheel value".to_vec()));
    assert_eq!(w.table.get(&cursor(5)), Some(corrupt));
    // v1 cannot be retired while the job lists failures on it.
    w.clock.advance(200 * DAY);
    let err = w.rotator().retire(&w.id, KeyVersion::FIRST, &w.policy(), None).await.expect_err("refused");
    assert!(matches!(err, Error::RetirementRefused { remaining, .. } if remaining >= 2), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retirement_is_refused_with_values_left_or_inside_grace_unless_forced() {
    let w = world(50).await;
    let rotator = w.rotator();
    let policy = w.policy();
    let v1 = KeyVersion::FIRST;
    // Activate v2 without re-encrypting: 50 values stay on v1.
    let v2 = w.kw.add_version(&w.id).await.expect("add");
    w.kw.activate(&w.id, v2).await.expect("activate");
    w.clock.advance(policy.grace_period);
    let err = rotator.retire(&w.id, v1, &policy, None).await.expect_err("values left");
    assert!(matches!(err, Error::RetirementRefused { version, remaining: 50 } if version == v1), "{err}");
    let refused = w.audit.events().pop().expect("event");
    assert_eq!(
        (refused.kind, refused.outcome),
        (AuditKind::RetirementRefused { version: v1, remaining: 50 }, Outcome::Refused)
    );

    // Re-encrypt everything; then the grace period edges decide.
    let report = rotator.rotate(&w.id, &policy, &opts(20)).await.expect("rotate to v3");
    assert_eq!(report.counts.rewritten, 50);
    let v2_deprecated_at =
        w.kw.record(&w.id).await.expect("record").version(v2).expect("v2").deprecated_at.expect("set");
    w.clock.set(v2_deprecated_at.plus(policy.grace_period).minus(Duration::from_millis(1)));
    let err = rotator.retire(&w.id, v2, &policy, None).await.expect_err("inside grace");
    assert!(
        matches!(err, Error::GracePeriodNotOver { until, .. } if until == v2_deprecated_at.plus(policy.grace_period)),
        "{err}"
    );
    w.clock.advance(Duration::from_millis(1));
    rotator.retire(&w.id, v2, &policy, None).await.expect("grace over, census zero");
    rotator.retire(&w.id, v1, &policy, None).await.expect("v1 too");

    // Forced retirement needs a reason and is audited as forced.
    let v4 = w.kw.add_version(&w.id).await.expect("add");
    w.kw.activate(&w.id, v4).await.expect("activate");
    let v3 = KeyVersion::new(3).expect("v3");
    assert!(matches!(rotator.retire(&w.id, v3, &policy, Some("  ")).await, Err(Error::ReasonRequired(_))));
    let forced_now = RetireOptions::forced("key leaked in a log file").now();
    let record = rotator.retire_with(&w.id, v3, &policy, &forced_now).await.expect("forced");
    assert!(record.version(v3).expect("metadata").wrapped.is_none(), "destroyed at once: no quarantine");
    let event = w.audit.events().pop().expect("event");
    assert_eq!(event.kind, AuditKind::KeyRetired { version: v3, forced: true });
    assert_eq!(event.reason.as_deref(), Some("key leaked in a log file"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_keyrings_retire_without_a_census() {
    let w = world(10).await;
    let id = KeyringId::new("acme", Purpose::Session).expect("id");
    w.kw.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("create");
    let value = w.kw.encrypt(&id, b"session", &ctx(999)).await.expect("encrypt");
    let sessions = Arc::new(MemoryRecordSource::new("sessions"));
    sessions.insert_row(1, id.clone(), ctx(999), value);
    let rotator = Rotator::new(w.kw.clone()).expect("rng").source(sessions.clone());
    let policy = Policy::for_purpose(&Purpose::Session);
    let report = rotator.rotate(&id, &policy, &opts(10)).await.expect("rotate");
    assert_eq!((report.phase, report.counts.processed), (JobPhase::Completed, 0), "sessions are not re-encrypted");
    w.clock.advance(policy.grace_period);
    rotator.retire(&id, KeyVersion::FIRST, &policy, None).await.expect("expired without census");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_inside_the_window_keeps_everything_readable() {
    let w = world(80).await;
    let rotator = w.rotator();
    let policy = w.policy();
    rotator.rotate(&w.id, &policy, &opts(25)).await.expect("rotate");
    let v2_activated = w.activated_at(2).await;
    w.clock.set(v2_activated.plus(policy.rollback_window));
    let report = rotator
        .rollback(&w.id, &policy, Some("new key breaks the reporting job"), false, &opts(25))
        .await
        .expect("rollback at the edge");
    assert_eq!((report.from.get(), report.to.get()), (2, 1));
    let record = w.exactly_one_active(&w.id).await;
    assert_eq!(record.active_version(), Some(KeyVersion::FIRST));
    let versions = w.check_all_decrypt().await;
    assert_eq!(versions[&w.id], BTreeMap::from([(2, 80)]), "v2 values still readable (Deprecated)");

    // A second rollback would toggle back to v2: refused, nothing written.
    let before = w.kw.record(&w.id).await.expect("record");
    let err = rotator.rollback(&w.id, &policy, None, false, &opts(25)).await.expect_err("second rollback");
    assert!(matches!(err, Error::RollbackRefused { .. }), "{err}");
    assert_eq!(w.kw.record(&w.id).await.expect("record"), before);

    // Roll forward again by rotating (v3, replacing v1), then roll back with
    // re-encryption: back to v1, the version v3 replaced.
    rotator.rotate(&w.id, &policy, &opts(25)).await.expect("rotate to v3");
    let report = rotator.rollback(&w.id, &policy, None, true, &opts(25)).await.expect("rollback");
    assert_eq!((report.from.get(), report.to.get()), (3, 1));
    let back = report.reencrypt.expect("re-encrypted back");
    assert_eq!((back.phase, back.counts.rewritten), (JobPhase::Completed, 80));
    assert_eq!(w.check_all_decrypt().await[&w.id], BTreeMap::from([(1, 80)]));

    // Outside the window: typed error naming when it closed.
    rotator.rotate(&w.id, &policy, &opts(25)).await.expect("rotate to v4");
    let activated = w.activated_at(4).await;
    w.clock.set(activated.plus(policy.rollback_window).plus(Duration::from_millis(1)));
    let err = rotator.rollback(&w.id, &policy, None, false, &opts(25)).await.expect_err("closed");
    assert!(
        matches!(err, Error::RollbackWindowClosed { closed_at, .. } if closed_at == activated.plus(policy.rollback_window)),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_after_retirement_is_refused() {
    let w = world(10).await;
    let rotator = w.rotator();
    let policy = Policy { grace_period: Duration::ZERO, ..w.policy() };
    rotator.rotate(&w.id, &policy, &opts(25)).await.expect("rotate");
    rotator.retire(&w.id, KeyVersion::FIRST, &policy, None).await.expect("retire");
    let err = rotator.rollback(&w.id, &policy, None, false, &opts(25)).await.expect_err("nothing to roll back to");
    assert!(matches!(err, Error::NothingToRollBack { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emergency_rotation_retires_the_compromised_version_at_once() {
    let w = world(120).await;
    let rotator = w.rotator();
    assert!(matches!(rotator.emergency(&w.id, "", &opts(50)).await, Err(Error::ReasonRequired(_))));
    let report = rotator.emergency(&w.id, "v1 leaked in a backup", &opts(50)).await.expect("emergency");
    assert_eq!((report.phase, report.counts.rewritten), (JobPhase::Completed, 120));
    let record = w.exactly_one_active(&w.id).await;
    let v1 = record.version(KeyVersion::FIRST).expect("v1");
    assert!(v1.compromised);
    assert_eq!(v1.state, KeyState::Retired, "grace period waived");
    assert!(v1.wrapped.is_none());
    let events = w.audit.events();
    assert!(events.iter().any(|e| e.kind == AuditKind::EmergencyRotation { compromised: KeyVersion::FIRST }
        && e.reason.as_deref() == Some("v1 leaked in a backup")));
    let retired =
        events.iter().find(|e| matches!(e.kind, AuditKind::KeyRetired { forced: true, .. })).expect("retired");
    assert!(retired.reason.as_deref().is_some_and(|r| r.contains("v1 leaked in a backup")));
    assert_eq!(w.check_all_decrypt().await[&w.id], BTreeMap::from([(2, 120)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_resumes_cleanly() {
    let w = world(300).await;
    let cancel = keywheel::CancelToken::new();
    let trigger = cancel.clone();
    let options = RotateOptions {
        batch_size: 20,
        parallel_batches: 1,
        cancel: cancel.clone(),
        progress: Some(Arc::new(move |p: &keywheel::Progress| {
            if p.processed >= 60 {
                trigger.cancel();
            }
        })),
        ..RotateOptions::default()
    };
    let rotator = w.rotator();
    let report = rotator.rotate(&w.id, &w.policy(), &options).await.expect("cancelled cleanly");
    assert_eq!(report.phase, JobPhase::Cancelled);
    assert_eq!(report.counts.processed, 60);
    // A new rotation is refused while the cancelled job is unfinished.
    assert!(matches!(rotator.rotate(&w.id, &w.policy(), &opts(20)).await, Err(Error::RotationInProgress { .. })));
    let report = rotator.resume(&w.id, &opts(20)).await.expect("resume").expect("job to resume");
    assert_eq!((report.phase, report.counts.processed, report.counts.rewritten), (JobPhase::Completed, 300, 300));
    assert_eq!(w.check_all_decrypt().await[&w.id], BTreeMap::from([(2, 300)]));
    assert!(rotator.resume(&w.id, &opts(20)).await.expect("resume").is_none(), "nothing left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_audit_sink_fails_the_rotation_before_any_change() {
    let w = world(20).await;
    w.audit.set_failing(true);
    let err = w.rotator().rotate(&w.id, &w.policy(), &opts(10)).await.expect_err("audit down");
    assert!(matches!(err, Error::Audit(_)), "{err}");
    w.audit.set_failing(false);
    assert_eq!(w.kw.record(&w.id).await.expect("record").versions.len(), 1);
    assert!(w.store.list_jobs(&w.id).await.expect("jobs").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kek_rotation_rewraps_every_key_and_is_resumable() {
    let w = world(30).await;
    w.rotator().rotate(&w.id, &w.policy(), &opts(10)).await.expect("rotate");
    let old: Arc<dyn keywheel::KeyEncryptionKey> = Arc::new(LocalKek::from_bytes(&[1; 32]));
    let new: Arc<dyn keywheel::KeyEncryptionKey> = Arc::new(LocalKek::from_bytes(&[2; 32]).with_id("local-2027"));
    let both = Arc::new(KekRing::new(Arc::clone(&new), vec![Arc::clone(&old)]));
    let kw = kw_over(Arc::clone(&w.store), Arc::clone(&w.audit), &w.clock, both);
    let rotator = Rotator::new(kw).expect("rng");
    let report = rotator.rotate_kek(Arc::clone(&new)).await.expect("kek rotation");
    assert_eq!((report.keyrings, report.keys, report.already_rewrapped), (2, 3, 0));
    assert_eq!((report.from, report.to.as_str()), (vec!["local".to_owned()], "local-2027"));
    let again = rotator.rotate_kek(Arc::clone(&new)).await.expect("idempotent");
    assert_eq!((again.keyrings, again.keys, again.already_rewrapped), (0, 0, 3));
    for id in [&w.id, &w.other] {
        // Read from the store itself: `w.kw` holds only the old KEK, and
        // `Keywheel::record` authenticates a record with the KEK's integrity key.
        let record = w.store.load_keyring(id).await.expect("load").expect("record");
        assert!(record.versions.iter().filter_map(|v| v.wrapped.as_ref()).all(|k| k.kek_id == "local-2027"));
    }
    // Only the new KEK is needed now; the old one no longer opens the store.
    let fresh = kw_over(Arc::clone(&w.store), Arc::clone(&w.audit), &w.clock, new);
    w.check_with(&fresh).await;
    let stale = kw_over(Arc::clone(&w.store), Arc::clone(&w.audit), &w.clock, old);
    assert!(matches!(stale.keyring(&w.id).await, Err(Error::KekMismatch { .. })));
    assert_eq!(w.audit.events().iter().filter(|e| matches!(e.kind, AuditKind::KekRotated { .. })).count(), 2);
    w.audit.verify().expect("chain verifies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kek_rotation_to_a_new_master_key_under_the_same_id() {
    let w = world(30).await;
    let old: Arc<dyn keywheel::KeyEncryptionKey> = Arc::new(LocalKek::from_bytes(&[1; 32]));
    let new: Arc<dyn keywheel::KeyEncryptionKey> = Arc::new(LocalKek::from_bytes(&[3; 32]));
    assert_eq!(old.id(), new.id(), "both are \"local\": only the key check value tells them apart");
    let both = Arc::new(KekRing::new(Arc::clone(&new), vec![Arc::clone(&old)]));
    let kw = kw_over(Arc::clone(&w.store), Arc::clone(&w.audit), &w.clock, both);
    // The ring opens keys wrapped under either master key (the new one is tried first).
    kw.keyring(&w.id).await.expect("old keys open through the ring");
    let report = Rotator::new(kw).expect("rng").rotate_kek(Arc::clone(&new)).await.expect("kek rotation");
    assert_eq!((report.keyrings, report.keys), (2, 2));
    let fresh = kw_over(Arc::clone(&w.store), Arc::clone(&w.audit), &w.clock, new);
    w.check_with(&fresh).await;
    let stale = kw_over(Arc::clone(&w.store), Arc::clone(&w.audit), &w.clock, Arc::clone(&old));
    assert!(matches!(stale.keyring(&w.id).await, Err(Error::WrongMasterKey { .. })));
    // A ring of two wrong keys reports the wrong master key, not a mismatch of ids.
    let wrong = KekRing::new(Arc::new(LocalKek::from_bytes(&[4; 32])), vec![old]);
    let record = w.store.load_keyring(&w.id).await.expect("load").expect("record");
    let wrapped = record.versions[0].wrapped.clone().expect("live");
    let err = keywheel::KeyEncryptionKey::unwrap(&wrong, &w.id, KeyVersion::FIRST, &wrapped).await.expect_err("wrong");
    assert!(matches!(err, Error::WrongMasterKey { .. }), "{err}");
}

impl World {
    /// When version `v` of `id` was last activated.
    async fn activated_at(&self, v: u32) -> Timestamp {
        let record = self.kw.record(&self.id).await.expect("record");
        record.version(KeyVersion::new(v).expect("nonzero")).and_then(|r| r.activated_at).expect("activated")
    }

    /// Every row decrypts through `kw` (e.g. one built with another KEK).
    async fn check_with(&self, kw: &Keywheel) {
        for (row, plaintext) in &self.expected {
            let value = self.table.get(&cursor(*row)).expect("row");
            let got = kw.decrypt(self.table_keyring(*row), &value, &ctx(*row)).await.expect("decrypts");
            assert_eq!(&got[..], plaintext.as_bytes());
        }
    }
}
