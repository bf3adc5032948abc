//! Reversible retirement and tenant erasure through the engine (memory
//! backend): disable, refuse decryption, re-enable inside the quarantine,
//! destroy after it or at once, erase keyrings and tenants.

use std::sync::Arc;
use std::time::Duration;

use keywheel::memory::{MemoryAuditSink, MemoryKeyStore, MemoryRecordSource};
use keywheel::{
    Algorithm, AuditKind, Context, Error, KeyState, KeyVersion, KeyringId, Keywheel, LocalKek, ManualClock, Policy,
    Purpose, RecordSource, RetireOptions, RotateOptions, Rotator, Timestamp,
};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

struct World {
    kw: Keywheel,
    audit: Arc<MemoryAuditSink>,
    clock: ManualClock,
    table: Arc<MemoryRecordSource>,
}

fn world() -> World {
    let clock = ManualClock::new(Timestamp::from_millis(1_800_000_000_000));
    let audit = Arc::new(MemoryAuditSink::new());
    let kw = Keywheel::builder()
        .store(Arc::new(MemoryKeyStore::new()))
        .kek(Arc::new(LocalKek::from_bytes(&[9; 32])))
        .audit(audit.clone())
        .clock(Arc::new(clock.clone()))
        .actor("ops")
        .build()
        .expect("builder");
    World { kw, audit, clock, table: Arc::new(MemoryRecordSource::new("users.token")) }
}

fn ctx(row: u32) -> Context {
    Context::field("users", "token", &row.to_string())
}

fn v(n: u32) -> KeyVersion {
    KeyVersion::new(n).expect("nonzero")
}

impl World {
    fn rotator(&self) -> Rotator {
        Rotator::new(self.kw.clone()).expect("rng").source(self.table.clone() as Arc<dyn RecordSource>)
    }

    /// A keyring with `n` values written under v1, rotated to v2 (values re-encrypted).
    async fn rotated(&self, tenant: &str, n: u32, policy: &Policy) -> (KeyringId, Vec<Vec<u8>>) {
        let id = KeyringId::new(tenant, Purpose::Token).expect("id");
        self.kw.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("create");
        self.kw.set_policy(&id, policy).await.expect("policy");
        let mut old = Vec::new();
        for row in 0..n {
            let value = self.kw.encrypt(&id, b"secret", &ctx(row)).await.expect("encrypt");
            self.table.insert_row(tenant.len() as u64 * 1000 + u64::from(row), id.clone(), ctx(row), value.clone());
            old.push(value);
        }
        self.rotator().rotate(&id, policy, &RotateOptions::default()).await.expect("rotate");
        (id, old)
    }

    async fn state(&self, id: &KeyringId, n: u32) -> KeyState {
        self.kw.record(id).await.expect("record").version(v(n)).expect("version").state
    }
}

fn policy() -> Policy {
    Policy { grace_period: Duration::ZERO, quarantine: 7 * DAY, ..Policy::for_purpose(&Purpose::Token) }
}

#[tokio::test]
async fn retire_disables_then_enable_restores_then_the_quarantine_destroys() {
    let w = world();
    let (id, old) = w.rotated("acme", 3, &policy()).await;
    let rotator = w.rotator();
    let record = rotator.retire(&id, v(1), &policy(), None).await.expect("census zero, grace over");
    let v1 = record.version(v(1)).expect("v1");
    assert_eq!(v1.state, KeyState::Disabled);
    assert!(v1.wrapped.is_some(), "material kept wrapped in the store");
    let destroy_after = w.kw.now().plus(7 * DAY);
    assert_eq!((v1.disabled_at, v1.destroy_after), (Some(w.kw.now()), Some(destroy_after)));
    let last = w.audit.events().pop().expect("event");
    assert_eq!(last.kind, AuditKind::KeyDisabled { version: v(1), forced: false, destroy_after });

    // A value still on v1 (a cache, a backup) is refused with the typed error.
    let err = w.kw.decrypt(&id, &old[0], &ctx(0)).await.expect_err("disabled");
    assert!(matches!(err, Error::KeyDisabled { version } if version == v(1)), "{err}");
    assert!(err.to_string().contains("disabled"), "{err}");

    // Re-enabled inside the quarantine: it decrypts again, audited with the reason.
    w.clock.advance(6 * DAY);
    let record = w.kw.enable(&id, v(1), Some("the export job still reads v1")).await.expect("enable");
    let v1 = record.version(v(1)).expect("v1");
    assert_eq!((v1.state, v1.destroy_after), (KeyState::Deprecated, None));
    assert_eq!(&w.kw.decrypt(&id, &old[0], &ctx(0)).await.expect("decrypts again")[..], b"secret");
    let last = w.audit.events().pop().expect("event");
    assert_eq!(last.kind, AuditKind::KeyEnabled { version: v(1) });
    assert_eq!(last.reason.as_deref(), Some("the export job still reads v1"));
    // Enabling what is not Disabled is an illegal transition, nothing audited.
    let audited = w.audit.events().len();
    let err = w.kw.enable(&id, v(2), None).await.expect_err("v2 is active");
    assert!(matches!(err, Error::NotDisabled { state: KeyState::Active, .. }), "{err}");
    assert_eq!(w.audit.events().len(), audited);

    // Retired again: a new quarantine from now; after it, enable is refused and destruction is due.
    rotator.retire(&id, v(1), &policy(), None).await.expect("retire again");
    let end = w.kw.now().plus(7 * DAY);
    w.clock.set(end);
    let err = w.kw.enable(&id, v(1), None).await.expect_err("quarantine over");
    assert!(matches!(err, Error::QuarantineOver { ended_at, .. } if ended_at == end), "{err}");
    assert_eq!(w.state(&id, 1).await, KeyState::Disabled, "nothing written by the refusal");
    assert_eq!(w.kw.destroy_quarantined(&id).await.expect("destroy"), [v(1)]);
    let record = w.kw.record(&id).await.expect("record");
    assert!(record.version(v(1)).expect("v1").wrapped.is_none());
    let err = w.kw.decrypt(&id, &old[0], &ctx(0)).await.expect_err("destroyed");
    assert!(matches!(err, Error::KeyRetired { .. }), "{err}");
    assert!(w.kw.destroy_quarantined(&id).await.expect("nothing left").is_empty());
}

#[tokio::test]
async fn guard_rails_apply_at_the_disable_step_and_now_destroys_at_once() {
    let w = world();
    let (id, _) = w.rotated("acme", 2, &policy()).await;
    let rotator = w.rotator();
    // A value back on v1 (restored from a backup, say): the census refuses the disable.
    let restored = KeyringId::new("acme", Purpose::Token).expect("id");
    let v1_value = w.kw.keyring(&id).await.expect("ring");
    assert_eq!(v1_value.active_version(), Some(v(2)));
    let grace = Policy { grace_period: DAY, ..policy() };
    let err = rotator.retire(&id, v(1), &grace, None).await.expect_err("grace");
    assert!(matches!(err, Error::GracePeriodNotOver { .. }), "{err}");
    assert_eq!(w.state(&restored, 1).await, KeyState::Deprecated, "a refusal disables nothing");
    // `now` destroys at once (guarded: the census is zero).
    let record = rotator.retire_with(&id, v(1), &policy(), &RetireOptions::new().now()).await.expect("now");
    assert_eq!(record.version(v(1)).expect("v1").state, KeyState::Retired);
    let kinds: Vec<AuditKind> = w.audit.events().into_iter().rev().take(2).map(|e| e.kind).collect();
    assert!(matches!(kinds[0], AuditKind::KeyRetired { forced: false, .. }), "{kinds:?}");
    assert!(matches!(kinds[1], AuditKind::KeyDisabled { forced: false, .. }), "{kinds:?}");
    // A zero quarantine behaves as before: retire destroys at once.
    let (other, _) = w.rotated("globex", 1, &Policy { quarantine: Duration::ZERO, ..policy() }).await;
    let zero = Policy { quarantine: Duration::ZERO, ..policy() };
    rotator.retire(&other, v(1), &zero, None).await.expect("retire");
    assert_eq!(w.state(&other, 1).await, KeyState::Retired);
}

#[tokio::test]
async fn a_compromised_version_is_destroyed_without_quarantine_and_never_re_enabled() {
    let w = world();
    let (id, _) = w.rotated("acme", 2, &policy()).await;
    let rotator = w.rotator();
    let opts = RotateOptions { emergency_settle: Some(Duration::ZERO), ..RotateOptions::default() };
    rotator.emergency(&id, "v2 leaked", &opts).await.expect("emergency");
    let record = w.kw.record(&id).await.expect("record");
    let v2 = record.version(v(2)).expect("v2");
    assert!(v2.compromised);
    assert_eq!(v2.state, KeyState::Retired, "destroyed at once: the quarantine is skipped for a leaked key");
    // A compromised version nothing proves unused stays Deprecated; disabled
    // by hand (forced), it can never be re-enabled.
    let (other, _) = w.rotated("globex", 1, &policy()).await;
    let blind = Rotator::new(w.kw.clone()).expect("rng");
    blind.emergency(&other, "leak", &RotateOptions::default()).await.expect("emergency");
    assert_eq!(w.state(&other, 2).await, KeyState::Deprecated, "no source covers it: not destroyed");
    w.kw.retire_forced(&other, v(2), "values exported").await.expect("disable");
    assert_eq!(w.state(&other, 2).await, KeyState::Disabled);
    let err = w.kw.enable(&other, v(2), None).await.expect_err("compromised");
    assert!(matches!(err, Error::CompromisedVersion { .. }), "{err}");
}

#[tokio::test]
async fn erasing_a_keyring_disables_every_version_and_stops_encryption() {
    let w = world();
    let (id, old) = w.rotated("acme", 2, &policy()).await;
    let current = w.kw.encrypt(&id, b"fresh", &ctx(9)).await.expect("encrypt");
    let err = w.kw.destroy_keyring(&id, " ", false).await.expect_err("reason");
    assert!(matches!(err, Error::ReasonRequired(_)), "{err}");
    let record = w.kw.destroy_keyring(&id, "GDPR erasure request #4711", false).await.expect("erase");
    let at = w.kw.now();
    assert_eq!(record.erased_at, Some(at));
    assert!(record.versions.iter().all(|v| v.state == KeyState::Disabled && v.wrapped.is_some()));
    let last = w.audit.events().pop().expect("event");
    assert_eq!(last.kind, AuditKind::KeyringErased { versions: vec![v(1), v(2)], destroy_after: at.plus(7 * DAY) });
    assert_eq!(last.reason.as_deref(), Some("GDPR erasure request #4711"));
    // Nothing encrypts or rotates any more; nothing decrypts.
    let err = w.kw.encrypt(&id, b"x", &ctx(1)).await.expect_err("erased");
    assert!(matches!(err, Error::KeyringErased { .. }), "{err}");
    assert!(matches!(w.kw.decrypt(&id, &current, &ctx(9)).await, Err(Error::KeyDisabled { .. })));
    assert!(matches!(w.kw.decrypt(&id, &old[0], &ctx(0)).await, Err(Error::KeyDisabled { .. })));
    let err = w.rotator().rotate(&id, &policy(), &RotateOptions::default()).await.expect_err("no rotation");
    assert!(matches!(err, Error::KeyringErased { .. }), "{err}");
    assert!(matches!(w.kw.add_version(&id).await, Err(Error::KeyringErased { .. })));
    assert!(matches!(w.kw.destroy_keyring(&id, "again", false).await, Err(Error::KeyringErased { .. })));
    // Inside the quarantine a version can be read again (not written under).
    w.kw.enable(&id, v(2), Some("wrong tenant")).await.expect("enable");
    assert_eq!(&w.kw.decrypt(&id, &current, &ctx(9)).await.expect("readable")[..], b"fresh");
    assert!(matches!(w.kw.encrypt(&id, b"x", &ctx(1)).await, Err(Error::KeyringErased { .. })));
    // `now` destroys everything, the re-enabled version too.
    let record = w.kw.destroy_keyring(&id, "confirmed", true).await.expect("destroy now");
    assert!(record.versions.iter().all(|v| v.state == KeyState::Retired && v.wrapped.is_none()));
    let status = keywheel::status_report(
        w.kw.now(),
        &[record],
        &Default::default(),
        &Default::default(),
        &Default::default(),
        &std::collections::BTreeSet::from([id.clone()]),
        &Default::default(),
        false,
        Default::default(),
    );
    assert_eq!(status.keyrings[0].erased_at, Some(at));
    assert!(status.keyrings[0].warnings.is_empty(), "{:?}", status.keyrings[0].warnings);
}

#[tokio::test]
async fn erasing_a_tenant_covers_every_purpose_and_the_scheduler_never_rotates_it() {
    let w = world();
    let token = KeyringId::new("acme", Purpose::Token).expect("id");
    let db = KeyringId::new("acme", Purpose::Database).expect("id");
    let other = KeyringId::new("globex", Purpose::Token).expect("id");
    for id in [&token, &db, &other] {
        w.kw.create_keyring(id, Algorithm::Aes256Gcm).await.expect("create");
    }
    assert!(matches!(w.kw.destroy_tenant("nobody", "r", false).await, Err(Error::InvalidArgument(_))));
    let erased = w.kw.destroy_tenant("acme", "tenant left", true).await.expect("erase tenant");
    assert_eq!(erased.len(), 2);
    for record in &erased {
        assert!(record.erased_at.is_some());
        assert!(record.versions.iter().all(|v| v.state == KeyState::Retired));
    }
    w.kw.encrypt(&other, b"x", &ctx(1)).await.expect("other tenants are untouched");
    // Overdue by far: the scheduler still leaves the erased keyrings alone.
    w.clock.advance(400 * DAY);
    let scheduler = keywheel::Scheduler::new(w.rotator(), Default::default());
    let tick = scheduler.tick().await.expect("tick");
    assert!(tick.due.iter().all(|d| d.keyring == other), "{:?}", tick.due);
}
