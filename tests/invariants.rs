//! Regression tests for the safety invariants, one per reproduced hole: each
//! failed on the code before the invariants were enforced in core.
//!
//! * I1 — no material destroyed while a value uses it or while no source covers the keyring;
//! * I2 — a compromised version never becomes Active again;
//! * I3 — an emergency waits out stale snapshots and ignores undecryptable values;
//! * I4 — leases are unique per acquisition, live leases are never taken over,
//!   refusals change nothing, stalled jobs are reported;
//! * I6 — keyring ids compare by canonical form.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use keywheel::memory::{MemoryAuditSink, MemoryKeyStore, MemoryRecordSource};
use keywheel::{
    Algorithm, AuditKind, Census, Clock, Context, Error, JobKind, JobPhase, KeyState, KeyStore, KeyVersion,
    KeyringChange, KeyringId, Keywheel, LocalKek, ManualClock, Outcome, Policy, Purpose, RecordSource, ReplaceOutcome,
    Replacement, RotateOptions, RotationJob, Rotator, ScanRequest, Scheduler, SchedulerConfig, StoredValue, Timestamp,
    Warning, async_trait,
};

const T0: i64 = 1_800_000_000_000;
const DAY: Duration = Duration::from_secs(24 * 3600);

struct World {
    kw: Keywheel,
    store: Arc<dyn KeyStore>,
    audit: Arc<MemoryAuditSink>,
    table: Arc<MemoryRecordSource>,
    clock: ManualClock,
    id: KeyringId,
}

fn instance(
    store: &Arc<dyn KeyStore>,
    audit: &Arc<MemoryAuditSink>,
    clock: &ManualClock,
    refresh: Duration,
) -> Keywheel {
    Keywheel::builder()
        .store(Arc::clone(store))
        .kek(Arc::new(LocalKek::from_bytes(&[3; 32])))
        .audit(Arc::clone(audit) as Arc<dyn keywheel::AuditSink>)
        .clock(Arc::new(clock.clone()))
        .actor("cli:root")
        .refresh_interval(refresh)
        .build()
        .expect("builder")
}

fn ctx(row: u64) -> Context {
    Context::field("users", "oauth_token", &row.to_string())
}

/// `acme/token` with `n` values (rows 0..n) in a table.
async fn world(n: u64) -> World {
    let store: Arc<dyn KeyStore> = Arc::new(MemoryKeyStore::new());
    let audit = Arc::new(MemoryAuditSink::new());
    let clock = ManualClock::new(Timestamp::from_millis(T0));
    let kw = instance(&store, &audit, &clock, Duration::ZERO);
    let id = KeyringId::new("acme", Purpose::Token).expect("id");
    kw.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("create");
    let table = Arc::new(MemoryRecordSource::new("users.oauth_token"));
    for row in 0..n {
        let value = kw.encrypt(&id, format!("token-{row}").as_bytes(), &ctx(row)).await.expect("encrypt");
        table.insert_row(row, id.clone(), ctx(row), value);
    }
    World { kw, store, audit, table, clock, id }
}

fn opts() -> RotateOptions {
    RotateOptions { batch_size: 7, emergency_settle: Some(Duration::ZERO), ..RotateOptions::default() }
}

impl World {
    fn rotator(&self) -> Rotator {
        Rotator::new(self.kw.clone()).expect("rotator").source(self.table.clone())
    }

    async fn state(&self, version: u32) -> (KeyState, bool) {
        let record = self.kw.record(&self.id).await.expect("record");
        let v = record.version(KeyVersion::new(version).expect("nonzero")).expect("version").clone();
        (v.state, v.compromised)
    }

    /// Every row decrypts to what was written.
    async fn all_decrypt(&self, n: u64) {
        for row in 0..n {
            let value = self.table.get(&MemoryRecordSource::row_cursor(row)).expect("row");
            let plain = self.kw.decrypt(&self.id, &value, &ctx(row)).await.unwrap_or_else(|e| panic!("row {row}: {e}"));
            assert_eq!(&plain[..], format!("token-{row}").as_bytes(), "row {row}");
        }
    }

    fn refusals(&self, version: u32) -> usize {
        self.audit
            .events()
            .iter()
            .filter(|e| {
                matches!(e.kind, AuditKind::RetirementRefused { version: v, .. } if v.get() == version)
                    && e.outcome == Outcome::Refused
            })
            .count()
    }
}

// ------------------------------------------------------------------ I1

/// Reproduction: `keywheel scheduler run` without `[[sources]]` rotated, found
/// a census of 0 and retired v1 while every row still used it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_never_retires_a_version_no_source_can_vouch_for() {
    let w = world(10).await;
    let rotator = Rotator::new(w.kw.clone()).expect("rotator"); // no sources
    let config = SchedulerConfig { rotate: opts(), ..SchedulerConfig::default() };
    let sched = Scheduler::new(rotator.clone(), config);
    let policy = Policy::for_purpose(w.id.purpose());
    w.clock.advance(policy.interval + Duration::from_secs(1));
    let tick = sched.tick().await.expect("tick");
    assert_eq!(tick.rotations.len(), 1, "the scheduler still rotates");
    w.clock.advance(policy.grace_period + DAY);
    for _ in 0..3 {
        let tick = sched.tick().await.expect("tick");
        assert!(tick.retired.is_empty(), "nothing retired: {tick:?}");
    }
    assert_eq!(w.state(1).await.0, KeyState::Deprecated, "v1 keeps its material");
    w.all_decrypt(10).await;
    assert_eq!(w.refusals(1), 1, "the refusal is audited once, not every tick");
    let status = sched.status(false).await.expect("status");
    assert!(status.keyrings[0].warnings.contains(&Warning::NoSourceCovers), "{:?}", status.keyrings[0].warnings);

    // The engine refuses too, whoever calls it; only a forced retirement with a reason goes through.
    let err = rotator.retire(&w.id, KeyVersion::FIRST, &policy, None).await.expect_err("unproven");
    assert!(matches!(err, Error::RetirementUnproven { .. }), "{err}");
    assert_eq!(w.state(1).await.0, KeyState::Deprecated);
    rotator.retire(&w.id, KeyVersion::FIRST, &policy, Some("values exported and deleted")).await.expect("forced");
    let last = w.audit.events().pop().expect("event");
    let destroy_after = w.kw.now().plus(policy.quarantine);
    assert_eq!(last.kind, AuditKind::KeyDisabled { version: KeyVersion::FIRST, forced: true, destroy_after });
    assert_eq!(last.reason.as_deref(), Some("values exported and deleted"));
    assert_eq!(w.state(1).await, (KeyState::Disabled, false), "disabled first: the material waits out the quarantine");
}

/// A source that covers other keyrings only does not vouch for this one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_does_not_cover_the_keyring_does_not_vouch_for_it() {
    let w = world(4).await;
    let elsewhere = KeyringId::new("other", Purpose::Token).expect("id");
    let unrelated = Arc::new(MemoryRecordSource::new("audit.tokens").covering([elsewhere]));
    let rotator = Rotator::new(w.kw.clone()).expect("rotator").source(unrelated);
    let policy = Policy { grace_period: Duration::ZERO, ..Policy::for_purpose(w.id.purpose()) };
    rotator.rotate(&w.id, &policy, &opts()).await.expect("rotate");
    let err = rotator.retire(&w.id, KeyVersion::FIRST, &policy, None).await.expect_err("unproven");
    assert!(matches!(err, Error::RetirementUnproven { .. }), "{err}");
    w.all_decrypt(4).await;
}

// ------------------------------------------------------------------ I2

/// Reproduction: `compromised` was written by the emergency path and read
/// nowhere; a rollback or `activate` made the leaked version Active again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compromised_version_never_becomes_active_again() {
    let w = world(6).await;
    // Only a source that covers nothing is registered: nothing proves v1
    // unused, so it is kept (Deprecated, flagged), and there is something
    // left to try to re-activate.
    let blind = Arc::new(MemoryRecordSource::new("elsewhere").covering([]));
    let rotator = Rotator::new(w.kw.clone()).expect("rotator").source(blind);
    let report = rotator.emergency(&w.id, "v1 leaked", &opts()).await.expect("emergency");
    assert_eq!(report.phase, JobPhase::Completed);
    assert_eq!(w.state(1).await, (KeyState::Deprecated, true));
    assert!(sched_warnings(&w, rotator.clone()).await.contains(&Warning::CompromisedNotRetired { version: 1 }));

    let policy = Policy::for_purpose(w.id.purpose());
    let err = rotator.rollback(&w.id, &policy, Some("undo"), false, &opts()).await.expect_err("rollback");
    assert!(matches!(err, Error::CompromisedVersion { version, .. } if version == KeyVersion::FIRST), "{err}");
    let err = w.kw.activate(&w.id, KeyVersion::FIRST).await.expect_err("activate");
    assert!(matches!(err, Error::RollbackRefused { .. }), "{err}");
    // Straight to the store (sealed writes included): refused by the record's own rules.
    let record = w.kw.record(&w.id).await.expect("record");
    let now = w.clock.now();
    let back = [
        KeyringChange::SetState { version: KeyVersion::new(2).expect("2"), state: KeyState::Deprecated, at: now },
        KeyringChange::SetState { version: KeyVersion::FIRST, state: KeyState::Active, at: now },
    ];
    let err = w.kw.store().update_keyring(&w.id, record.generation, &back).await.expect_err("store");
    assert!(matches!(err, Error::CompromisedVersion { .. }), "{err}");
    assert_eq!(w.kw.record(&w.id).await.expect("record"), record, "nothing written");
}

async fn sched_warnings(w: &World, rotator: Rotator) -> Vec<Warning> {
    let sched = Scheduler::new(rotator, SchedulerConfig::default());
    let status = sched.status(false).await.expect("status");
    status.keyrings.into_iter().find(|k| k.keyring == w.id).expect("keyring").warnings
}

// ------------------------------------------------------------------ I3

/// Reproduction: one undecryptable value (a planted bad tag) on the
/// compromised version ended the emergency `CompletedWithFailures` and the
/// version was never retired, so forgeries under the leaked key kept decrypting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecryptable_value_does_not_keep_a_compromised_version_alive() {
    let w = world(20).await;
    let mut forged = w.table.get(&MemoryRecordSource::row_cursor(3)).expect("row 3");
    *forged.last_mut().expect("tag") ^= 1;
    w.table.insert_row(100, w.id.clone(), ctx(100), forged);
    let report = w.rotator().emergency(&w.id, "v1 leaked", &opts()).await.expect("emergency");
    assert_eq!(report.phase, JobPhase::CompletedWithFailures);
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    assert_eq!(report.failures[0].version, Some(KeyVersion::FIRST));
    assert_eq!(w.state(1).await, (KeyState::Retired, true), "retired despite the undecryptable value");
    w.all_decrypt(20).await;
}

/// A manual clock whose first `sleep` first runs an action: lets a test act
/// "during" the engine's wait, which a manual clock otherwise skips.
struct ActingClock {
    inner: ManualClock,
    action: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl std::fmt::Debug for ActingClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActingClock").field("now", &self.inner.now()).finish_non_exhaustive()
    }
}

impl Clock for ActingClock {
    fn now(&self) -> Timestamp {
        self.inner.now()
    }
    fn sleep(&self, duration: Duration) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        if let Some(action) = self.action.lock().expect("lock").take() {
            action();
        }
        self.inner.sleep(duration)
    }
}

/// Reproduction: another instance with a cached snapshot kept encrypting
/// under the compromised version for up to its refresh interval; the job
/// finished sooner, retired the version, and those values were lost. Now the
/// engine waits out the bound (on its clock), sweeps again, and only then retires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emergency_waits_for_stale_instances_before_retiring() {
    let w = world(10).await;
    let clock = Arc::new(ActingClock { inner: w.clock.clone(), action: std::sync::Mutex::new(None) });
    let engine = Keywheel::builder()
        .store(Arc::clone(&w.store))
        .kek(Arc::new(LocalKek::from_bytes(&[3; 32])))
        .audit(Arc::clone(&w.audit) as Arc<dyn keywheel::AuditSink>)
        .clock(clock.clone())
        .refresh_interval(Duration::from_secs(3600))
        .build()
        .expect("builder");
    // The application instance: its snapshots live an hour, like the engine's.
    let app = instance(&w.store, &w.audit, &w.clock, Duration::from_secs(3600));
    let stale = app.keyring(&w.id).await.expect("the application's cached snapshot");
    let (table, id) = (w.table.clone(), w.id.clone());
    *clock.action.lock().expect("lock") = Some(Box::new(move || {
        // During the wait: the application, on its cached snapshot, stores a value under v1.
        let late = stale.encrypt(b"token-10", &ctx(10)).expect("stale snapshot encrypts");
        assert_eq!(keywheel::version_of(&late).expect("parse"), KeyVersion::FIRST);
        table.insert_row(10, id, ctx(10), late);
    }));
    let started = w.clock.now();
    let rotator = Rotator::new(engine.clone()).expect("rotator").source(w.table.clone());
    let options = RotateOptions { batch_size: 7, ..RotateOptions::default() };
    let report = rotator.emergency(&w.id, "v1 leaked", &options).await.expect("emergency");
    assert_eq!(report.phase, JobPhase::Completed);
    assert!(w.clock.now().since(started) >= engine.stale_snapshot_bound(), "waited the documented bound");
    assert_eq!(w.state(1).await, (KeyState::Retired, true));
    let moved = w.table.get(&MemoryRecordSource::row_cursor(10)).expect("row 10");
    assert_eq!(keywheel::version_of(&moved).expect("parse"), KeyVersion::new(2).expect("2"), "swept after the wait");
    w.all_decrypt(11).await;
    // Past the bound the application's snapshot has expired: it encrypts under v2.
    let fresh = app.encrypt(&w.id, b"later", &ctx(11)).await.expect("encrypt");
    assert_eq!(keywheel::version_of(&fresh).expect("parse"), KeyVersion::new(2).expect("2"));
}

// ------------------------------------------------------------------ I4

/// A gate that holds a source's scans until opened: keeps a rotation running.
#[derive(Debug)]
struct Gated {
    inner: Arc<MemoryRecordSource>,
    gate: tokio::sync::Semaphore,
}

#[async_trait]
impl RecordSource for Gated {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn scan(&self, request: &ScanRequest) -> keywheel::Result<Vec<StoredValue>> {
        let _permit = self.gate.acquire().await.map_err(|_| Error::backend("gate", "closed", false))?;
        self.inner.scan(request).await
    }
    async fn replace(&self, batch: &[Replacement]) -> keywheel::Result<Vec<ReplaceOutcome>> {
        self.inner.replace(batch).await
    }
    async fn census(&self, keyring: Option<&KeyringId>) -> keywheel::Result<Census> {
        self.inner.census(keyring).await
    }
    fn covers(&self, keyring: &KeyringId) -> bool {
        self.inner.covers(keyring)
    }
}

/// Reproduction: leases were keyed by the actor name, so a second `rotate`
/// by the same operator (or a replica with the same name) took over the live
/// lease, and the running rotation died with "lease … was lost"; `resume`
/// during a live rotation took it over too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_lease_is_never_taken_over_by_the_same_name() {
    let w = world(30).await;
    let gated = Arc::new(Gated { inner: w.table.clone(), gate: tokio::sync::Semaphore::new(0) });
    let first = Rotator::new(w.kw.clone()).expect("rotator").holder("cli:root").source(gated.clone());
    let second = Rotator::new(w.kw.clone()).expect("rotator").holder("cli:root").source(w.table.clone());
    let (id, policy) = (w.id.clone(), Policy::for_purpose(w.id.purpose()));
    let running = tokio::spawn({
        let (id, policy) = (id.clone(), policy.clone());
        async move { first.rotate(&id, &policy, &opts()).await }
    });
    // Wait until the first rotation holds the lease and has stored its job.
    let lease = loop {
        if let Some(l) = w.store.load_lease(&id).await.expect("lease")
            && !w.store.list_jobs(&id).await.expect("jobs").is_empty()
        {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    assert!(lease.holder.starts_with("cli:root#"), "unique holder under the actor name: {}", lease.holder);

    let err = second.rotate(&id, &policy, &opts()).await.expect_err("refused");
    assert!(matches!(err, Error::RotationInProgress { running: true, .. }), "{err}");
    let err = second.resume(&id, &opts()).await.expect_err("refused");
    assert!(matches!(err, Error::RotationInProgress { running: true, .. }), "{err}");
    assert_eq!(w.store.load_lease(&id).await.expect("lease"), Some(lease), "refusals change nothing");

    gated.gate.add_permits(1_000);
    let report = running.await.expect("join").expect("the first rotation was not disturbed");
    assert_eq!(report.phase, JobPhase::Completed);
    assert_eq!(w.store.load_lease(&id).await.expect("lease"), None, "released");
    w.all_decrypt(30).await;
}

/// Reproduction: two simultaneous rotates both failed and left the job stuck in
/// Prepare, and `status` said nothing; a refused `rotate` kept a lease it took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_job_is_reported_and_a_refused_rotate_takes_no_lease() {
    let w = world(8).await;
    let id = w.id.clone();
    // A rotator that died after storing its job: an unfinished job, its lease expired.
    let dead = w.kw.store().acquire_lease(&id, "worker-1#dead", Duration::from_secs(60), w.clock.now()).await;
    let dead = dead.expect("lease");
    let record = w.kw.record(&id).await.expect("record");
    let job = RotationJob::new(
        "job-of-the-dead".into(),
        id.clone(),
        JobKind::Rotation,
        record.active_version(),
        record.next_version().ok(),
        Vec::new(),
        w.clock.now(),
    );
    w.kw.store().save_job(&job, &dead).await.expect("job");
    w.clock.advance(Duration::from_secs(61));

    let rotator = w.rotator();
    let sched = Scheduler::new(rotator.clone(), SchedulerConfig::default());
    let warnings = &sched.status(false).await.expect("status").keyrings[0].warnings;
    assert!(
        warnings.iter().any(
            |x| matches!(x, Warning::StalledJob { job_id, lease_expired_at: Some(_) } if job_id == "job-of-the-dead")
        ),
        "{warnings:?}"
    );
    let before = w.store.load_lease(&id).await.expect("lease");
    let err = rotator.rotate(&id, &Policy::for_purpose(id.purpose()), &opts()).await.expect_err("unfinished job");
    assert!(matches!(err, Error::RotationInProgress { running: false, .. }), "{err}");
    assert_eq!(w.store.load_lease(&id).await.expect("lease"), before, "a refused rotate takes no lease");

    let report = rotator.resume(&id, &opts()).await.expect("resume").expect("a job to resume");
    assert_eq!(report.phase, JobPhase::Completed);
    w.all_decrypt(8).await;
    let warnings = &sched.status(false).await.expect("status").keyrings[0].warnings;
    assert!(!warnings.iter().any(|x| matches!(x, Warning::StalledJob { .. })), "{warnings:?}");
}

/// The lease time-to-live is an option: a rotation holds its lease for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_ttl_is_an_option() {
    let w = world(5).await;
    let gated = Arc::new(Gated { inner: w.table.clone(), gate: tokio::sync::Semaphore::new(0) });
    let rotator = Rotator::new(w.kw.clone()).expect("rotator").source(gated.clone());
    let ttl = Duration::from_secs(900);
    let options = RotateOptions { lease_ttl: ttl, ..opts() };
    let id = w.id.clone();
    let running = tokio::spawn(async move { rotator.rotate(&id, &Policy::for_purpose(id.purpose()), &options).await });
    let lease = loop {
        if let Some(l) = w.store.load_lease(&w.id).await.expect("lease") {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    assert_eq!(lease.expires_at, w.clock.now().plus(ttl));
    gated.gate.add_permits(1_000);
    running.await.expect("join").expect("rotate");
}

// ------------------------------------------------------------------ I6

/// Reproduction: `Purpose::Custom("token")` was unequal to `Purpose::Token`
/// (Eq/Hash) but the same canonical id in every store: the census filter
/// dropped its values, retirement succeeded, the data was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_purpose_spelled_like_a_preset_is_that_keyring() {
    let custom = KeyringId::new("acme", Purpose::Custom("token".into())).expect("id");
    let preset = KeyringId::new("acme", Purpose::Token).expect("id");
    assert_eq!(custom, preset);
    assert_eq!(BTreeSet::from([custom.clone(), preset.clone()]).len(), 1);
    let state = std::hash::RandomState::new();
    assert_eq!(std::hash::BuildHasher::hash_one(&state, &custom), std::hash::BuildHasher::hash_one(&state, &preset));
    assert_eq!(Purpose::Custom("token".into()), Purpose::Token);
    assert!(Purpose::Custom("session".into()).expires_instead_of_reencrypting());

    let w = world(0).await;
    // Values written under the custom spelling are the token keyring's values.
    for row in 0..5 {
        let value = w.kw.encrypt(&custom, format!("token-{row}").as_bytes(), &ctx(row)).await.expect("encrypt");
        w.table.insert_row(row, custom.clone(), ctx(row), value);
    }
    let rotator = w.rotator();
    assert_eq!(rotator.census(Some(&preset)).await.expect("census").count(&preset, KeyVersion::FIRST), 5);
    let policy = Policy { grace_period: Duration::ZERO, ..Policy::for_purpose(preset.purpose()) };
    let report = rotator.rotate(&preset, &policy, &opts()).await.expect("rotate");
    assert_eq!(report.counts.rewritten, 5, "the custom-spelled values are rotated");
    rotator.retire(&preset, KeyVersion::FIRST, &policy, None).await.expect("nothing left on v1");
    w.all_decrypt(5).await;
}
