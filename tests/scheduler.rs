//! Policies, the scheduler and the status report, on the memory backend with an
//! injected clock: every rule is tested without waiting.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use keywheel::memory::{MemoryAuditSink, MemoryKeyStore, MemoryRecordSource};
use keywheel::{
    Algorithm, AuditKind, Context, DueReason, KeyState, KeyVersion, KeyringId, KeyringRecord, Keywheel, LocalKek,
    MaintenanceWindow, ManualClock, Policy, Purpose, RotateOptions, Rotator, Scheduler, SchedulerConfig, Timestamp,
    Warning, evaluate,
};

const HOUR: Duration = Duration::from_secs(60 * 60);
const DAY: Duration = Duration::from_secs(24 * 60 * 60);
/// A midnight (UTC), so times of day are easy to read.
const MIDNIGHT: i64 = 1_798_761_600_000;

struct Env {
    kw: Keywheel,
    clock: ManualClock,
    table: Arc<MemoryRecordSource>,
    audit: Arc<MemoryAuditSink>,
    store: Arc<MemoryKeyStore>,
}

fn env() -> Env {
    let clock = ManualClock::new(Timestamp::from_millis(MIDNIGHT));
    let store = Arc::new(MemoryKeyStore::new());
    let audit = Arc::new(MemoryAuditSink::new());
    Env { kw: instance(&store, &audit, &clock), clock, table: Arc::new(MemoryRecordSource::new("t.c")), audit, store }
}

fn instance(store: &Arc<MemoryKeyStore>, audit: &Arc<MemoryAuditSink>, clock: &ManualClock) -> Keywheel {
    Keywheel::builder()
        .store(store.clone())
        .kek(Arc::new(LocalKek::from_bytes(&[3; 32])))
        .audit(audit.clone())
        .clock(Arc::new(clock.clone()))
        .refresh_interval(Duration::ZERO)
        .build()
        .expect("builder")
}

impl Env {
    async fn keyring(&self, tenant: &str, purpose: Purpose, values: u64) -> KeyringId {
        let id = KeyringId::new(tenant, purpose).expect("id");
        let ring = self.kw.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("create");
        for row in 0..values {
            let ctx = Context::field(tenant, "c", &row.to_string());
            let cursor = keywheel::Cursor(format!("{}/{row:08}", id));
            self.table.insert(cursor, id.clone(), ctx.clone(), ring.encrypt(b"v", &ctx).expect("encrypt"));
        }
        id
    }

    fn scheduler(&self, max_concurrent: usize) -> Scheduler {
        scheduler_on(&self.kw, &self.table, "sched-a", max_concurrent)
    }

    async fn records(&self) -> Vec<KeyringRecord> {
        let mut out = Vec::new();
        for id in self.kw.list_keyrings().await.expect("list") {
            out.push(self.kw.record(&id).await.expect("record"));
        }
        out
    }

    async fn active(&self, id: &KeyringId) -> u32 {
        self.kw.record(id).await.expect("record").active_version().expect("active").get()
    }
}

fn scheduler_on(kw: &Keywheel, table: &Arc<MemoryRecordSource>, holder: &str, max_concurrent: usize) -> Scheduler {
    let rotator = Rotator::new(kw.clone()).expect("rng").holder(holder).source(table.clone());
    let rotate = RotateOptions { batch_size: 50, emergency_settle: Some(Duration::ZERO), ..RotateOptions::default() };
    Scheduler::new(rotator, SchedulerConfig { max_concurrent, rotate, ..SchedulerConfig::default() })
}

fn none() -> (BTreeMap<KeyringId, keywheel::RotationJob>, BTreeSet<KeyringId>) {
    (BTreeMap::new(), BTreeSet::new())
}

fn policies(list: &[(&KeyringId, Policy)]) -> BTreeMap<KeyringId, Policy> {
    list.iter().map(|(id, p)| ((*id).clone(), p.clone())).collect()
}

#[tokio::test]
async fn due_exactly_at_the_interval_not_before() {
    let e = env();
    let id = e.keyring("a", Purpose::Token, 0).await;
    let interval = Policy::for_purpose(&Purpose::Token).interval;
    let (jobs, em) = none();
    let created = Timestamp::from_millis(MIDNIGHT);
    let records = e.records().await;
    let at = |t: Timestamp| evaluate(t, &records, &BTreeMap::new(), &jobs, &em);
    assert!(at(created.plus(interval).minus(Duration::from_millis(1))).is_empty());
    let due = at(created.plus(interval));
    assert_eq!((due.len(), due[0].reason, &due[0].keyring), (1, DueReason::Scheduled, &id));
    assert!((due[0].overdue_ratio - 1.0).abs() < 1e-9);
}

#[tokio::test]
async fn a_finished_job_with_its_completion_event_pending_is_resumed() {
    let e = env();
    let id = e.keyring("a", Purpose::Token, 0).await;
    let records = e.records().await;
    let mut job = keywheel::RotationJob::new(
        "crashed-while-completing".into(),
        id.clone(),
        keywheel::JobKind::Rotation,
        None,
        None,
        Vec::new(),
        Timestamp::from_millis(MIDNIGHT),
    );
    job.phase = keywheel::JobPhase::Completed;
    job.completion_pending = true;
    let jobs = BTreeMap::from([(id.clone(), job)]);
    let due = evaluate(Timestamp::from_millis(MIDNIGHT), &records, &BTreeMap::new(), &jobs, &BTreeSet::new());
    assert_eq!((due.len(), due[0].reason), (1, DueReason::Resume));
}

#[tokio::test]
async fn maintenance_windows_gate_scheduled_rotations_and_may_cross_midnight() {
    let e = env();
    let id = e.keyring("a", Purpose::Token, 0).await;
    let window = MaintenanceWindow { start: 23 * HOUR, duration: 2 * HOUR };
    let policy = Policy { maintenance_window: Some(window), ..Policy::for_purpose(&Purpose::Token) };
    let p = policies(&[(&id, policy.clone())]);
    let (jobs, em) = none();
    let records = e.records().await;
    let due_day = Timestamp::from_millis(MIDNIGHT).plus(policy.interval);
    let at = |t: Timestamp| evaluate(t, &records, &p, &jobs, &em);
    assert!(at(due_day.plus(12 * HOUR)).is_empty(), "noon: outside the window");
    assert!(at(due_day.plus(22 * HOUR + Duration::from_secs(3599))).is_empty(), "22:59:59");
    assert_eq!(at(due_day.plus(23 * HOUR))[0].reason, DueReason::Scheduled, "23:00 inside");
    assert_eq!(
        at(due_day.plus(24 * HOUR + Duration::from_secs(30 * 60)))[0].reason,
        DueReason::Scheduled,
        "00:30 inside"
    );
    assert!(at(due_day.plus(25 * HOUR)).is_empty(), "01:00: the window closed");
    // Past 150 % of the interval: overdue runs outside the window.
    let overdue = Timestamp::from_millis(MIDNIGHT).plus(policy.interval.mul_f64(1.5)).plus(12 * HOUR);
    assert_eq!(at(overdue)[0].reason, DueReason::Overdue);
}

#[tokio::test]
async fn due_keyrings_are_ordered_by_priority() {
    let e = env();
    let low = e.keyring("low", Purpose::Token, 0).await;
    let high = e.keyring("high", Purpose::Token, 0).await;
    let overdue_low = e.keyring("zz", Purpose::Session, 0).await;
    let p = policies(&[
        (&low, Policy { priority: 1, ..Policy::for_purpose(&Purpose::Token) }),
        (&high, Policy { priority: 5, ..Policy::for_purpose(&Purpose::Token) }),
        (&overdue_low, Policy { priority: 0, ..Policy::for_purpose(&Purpose::Session) }),
    ]);
    let (jobs, mut em) = none();
    let records = e.records().await;
    let t = Timestamp::from_millis(MIDNIGHT).plus(91 * DAY);
    let order: Vec<KeyringId> = evaluate(t, &records, &p, &jobs, &em).into_iter().map(|d| d.keyring).collect();
    assert_eq!(order, [high.clone(), low.clone(), overdue_low.clone()]);
    // An emergency comes first whatever the priority.
    em.insert(overdue_low.clone());
    let first = evaluate(t, &records, &p, &jobs, &em).remove(0);
    assert_eq!((first.keyring, first.reason), (overdue_low, DueReason::Emergency));
}

#[tokio::test]
async fn no_active_key_and_usage_limit_make_a_rotation_due() {
    let e = env();
    let id = e.keyring("a", Purpose::Token, 0).await;
    // A keyring whose only version is Pending.
    let mut pending = e.kw.record(&id).await.expect("record");
    pending.id = KeyringId::new("b", Purpose::Token).expect("id");
    pending.versions[0].state = KeyState::Pending;
    pending.versions[0].activated_at = None;
    let (jobs, em) = none();
    let now = Timestamp::from_millis(MIDNIGHT);
    let due = evaluate(now, std::slice::from_ref(&pending), &BTreeMap::new(), &jobs, &em);
    assert_eq!(due[0].reason, DueReason::NoActiveKey);

    // Usage: 10 encryptions against a limit of 10, counted by the snapshot and flushed.
    e.kw.set_policy(&id, &Policy { usage_limit: Some(10), ..Policy::for_purpose(&Purpose::Token) })
        .await
        .expect("policy");
    let ring = e.kw.keyring(&id).await.expect("ring");
    for _ in 0..9 {
        ring.encrypt(b"x", &Context::empty()).expect("encrypt");
    }
    let sched = e.scheduler(1);
    sched.pause();
    assert!(sched.tick().await.expect("tick").due.is_empty(), "9 of 10");
    ring.encrypt(b"x", &Context::empty()).expect("encrypt");
    let tick = sched.tick().await.expect("tick");
    assert_eq!(tick.due[0].reason, DueReason::UsageLimit);
    assert_eq!(e.kw.record(&id).await.expect("record").versions[0].encryptions, 10, "usage flushed to the store");
    assert!(tick.paused && tick.rotations.is_empty(), "paused: nothing runs");
    sched.resume();
    let tick = sched.tick().await.expect("tick");
    assert_eq!(tick.rotations.len(), 1);
    assert_eq!(e.active(&id).await, 2);
    assert!(e.audit.events().iter().any(|ev| matches!(ev.kind, AuditKind::PolicyChanged { .. })));
}

#[tokio::test]
async fn max_concurrent_is_respected_and_the_rest_follow_next_tick() {
    let e = env();
    let ids = [
        e.keyring("a", Purpose::Token, 30).await,
        e.keyring("b", Purpose::Token, 30).await,
        e.keyring("c", Purpose::Token, 30).await,
    ];
    e.clock.advance(90 * DAY);
    let sched = e.scheduler(2);
    let first = sched.tick().await.expect("tick");
    assert_eq!((first.due.len(), first.rotations.len()), (3, 2));
    let second = sched.tick().await.expect("tick");
    assert_eq!((second.due.len(), second.rotations.len()), (1, 1));
    for id in &ids {
        assert_eq!(e.active(id).await, 2);
    }
    assert!(sched.tick().await.expect("tick").due.is_empty());
    let totals = sched.totals();
    assert_eq!((totals.rotations_scheduled, totals.rotations_completed, totals.rotations_failed), (3, 3, 0));
    assert!(totals.mean_duration_secs.is_some());
}

#[tokio::test]
async fn automatic_retirement_waits_for_grace_and_a_zero_census() {
    let e = env();
    let id = e.keyring("a", Purpose::Token, 20).await;
    let policy = Policy::for_purpose(&Purpose::Token);
    // Activate v2 by hand, without re-encrypting: 20 values stay on v1.
    let v2 = e.kw.add_version(&id).await.expect("add");
    e.kw.activate(&id, v2).await.expect("activate");
    let sched = e.scheduler(1);
    e.clock.advance(policy.grace_period - Duration::from_millis(1));
    assert!(sched.tick().await.expect("tick").retired.is_empty(), "inside grace");
    e.clock.advance(Duration::from_millis(1));
    assert!(sched.tick().await.expect("tick").retired.is_empty(), "grace over but 20 values on v1");
    let status = sched.status(false).await.expect("status");
    assert!(status.keyrings[0].warnings.contains(&Warning::GraceExpired { version: 1, values: Some(20) }));
    // Re-encrypt (an operator rotation to v3), then the next tick retires v1 … and
    // not v2, whose grace period only just started.
    Rotator::new(e.kw.clone())
        .expect("rng")
        .source(e.table.clone())
        .rotate(&id, &policy, &RotateOptions::default())
        .await
        .expect("rotate");
    let tick = sched.tick().await.expect("tick");
    assert_eq!(tick.retired, [(id.clone(), KeyVersion::FIRST)]);
    assert!(tick.destroyed.is_empty(), "retired means disabled first: the quarantine runs");
    let states = |r: &keywheel::KeyringRecord| r.versions.iter().map(|v| v.state).collect::<Vec<_>>();
    let record = e.kw.record(&id).await.expect("record");
    assert_eq!(states(&record), [KeyState::Disabled, KeyState::Deprecated, KeyState::Active]);
    let destroy_after = record.versions[0].destroy_after.expect("quarantine end");
    assert_eq!(destroy_after, e.kw.now().plus(policy.quarantine));
    // Status and evaluation report the disabled version and when it goes.
    let status = sched.status(false).await.expect("status");
    assert_eq!(status.keyrings[0].versions.disabled, [1]);
    assert_eq!(status.keyrings[0].disabled[0].destroy_after, Some(destroy_after));
    assert!(!status.keyrings[0].disabled[0].due);
    // One millisecond before the quarantine ends nothing is destroyed; at its end the tick destroys it.
    e.clock.set(destroy_after.minus(Duration::from_millis(1)));
    assert!(sched.tick().await.expect("tick").destroyed.is_empty(), "inside the quarantine");
    let record = e.kw.record(&id).await.expect("record");
    assert!(keywheel::destruction_candidates(destroy_after, &[record])[0].due, "due at the end of the quarantine");
    e.clock.set(destroy_after);
    let tick = sched.tick().await.expect("tick");
    assert_eq!(tick.destroyed, [(id.clone(), KeyVersion::FIRST)]);
    let record = e.kw.record(&id).await.expect("record");
    assert_eq!(states(&record), [KeyState::Retired, KeyState::Deprecated, KeyState::Active]);
    assert!(record.versions[0].wrapped.is_none(), "material destroyed");
    let last = e.audit.events().pop().expect("event");
    assert_eq!(last.kind, AuditKind::KeyRetired { version: KeyVersion::FIRST, forced: false });
    assert_eq!(sched.totals().destructions, 1);
}

#[tokio::test]
async fn session_keys_expire_without_a_census() {
    let e = env();
    let id = e.keyring("s", Purpose::Session, 25).await;
    let policy = Policy::for_purpose(&Purpose::Session);
    let sched = e.scheduler(1);
    e.clock.advance(policy.interval);
    let tick = sched.tick().await.expect("tick");
    assert_eq!(tick.rotations.len(), 1);
    assert_eq!(tick.rotations[0].counts.processed, 0, "sessions are not re-encrypted");
    e.clock.advance(policy.grace_period);
    let tick = sched.tick().await.expect("tick");
    assert_eq!(tick.retired, [(id.clone(), KeyVersion::FIRST)], "retired with 25 values still on it");
}

#[tokio::test]
async fn emergencies_run_at_once_outside_any_window() {
    let e = env();
    let id = e.keyring("a", Purpose::Token, 10).await;
    let window = MaintenanceWindow { start: 2 * HOUR, duration: HOUR };
    e.kw.set_policy(&id, &Policy { maintenance_window: Some(window), ..Policy::for_purpose(&Purpose::Token) })
        .await
        .expect("policy");
    e.clock.advance(12 * HOUR);
    let sched = e.scheduler(1);
    assert!(sched.request_emergency(&id, " ").is_err());
    sched.request_emergency(&id, "token dump on a paste site").expect("request");
    let tick = sched.tick().await.expect("tick");
    assert_eq!(tick.due[0].reason, DueReason::Emergency);
    let record = e.kw.record(&id).await.expect("record");
    assert!(record.versions[0].compromised && record.versions[0].state == KeyState::Retired);
    assert!(sched.tick().await.expect("tick").due.is_empty(), "the request was consumed");
}

#[tokio::test]
async fn an_interrupted_job_is_resumed_by_the_next_tick() {
    let e = env();
    let id = e.keyring("a", Purpose::Token, 200).await;
    let cancel = keywheel::CancelToken::new();
    let trigger = cancel.clone();
    let opts = RotateOptions {
        batch_size: 20,
        parallel_batches: 1,
        cancel,
        progress: Some(Arc::new(move |_: &keywheel::Progress| trigger.cancel())),
        ..RotateOptions::default()
    };
    let rotator = Rotator::new(e.kw.clone()).expect("rng").holder("sched-a").source(e.table.clone());
    let first = rotator.rotate(&id, &Policy::for_purpose(&Purpose::Token), &opts).await.expect("cancelled");
    assert_eq!(first.phase, keywheel::JobPhase::Cancelled);
    let tick = e.scheduler(1).tick().await.expect("tick");
    assert_eq!(tick.due[0].reason, DueReason::Resume);
    assert_eq!((tick.rotations[0].phase, tick.rotations[0].counts.rewritten), (keywheel::JobPhase::Completed, 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_scheduler_instances_run_each_due_rotation_once() {
    let e = env();
    let mut ids = Vec::new();
    for tenant in ["a", "b", "c", "d"] {
        ids.push(e.keyring(tenant, Purpose::Token, 100).await);
    }
    // A second application instance: its own Keywheel over the same store.
    let other = instance(&e.store, &e.audit, &e.clock);
    let one = Arc::new(scheduler_on(&e.kw, &e.table, "instance-1", 2));
    let two = Arc::new(scheduler_on(&other, &e.table, "instance-2", 2));
    e.clock.advance(91 * DAY);
    for _ in 0..3 {
        let (a, b) = (Arc::clone(&one), Arc::clone(&two));
        let (r1, r2) =
            tokio::join!(tokio::spawn(async move { a.tick().await }), tokio::spawn(async move { b.tick().await }));
        r1.expect("task").expect("tick 1");
        r2.expect("task").expect("tick 2");
    }
    for id in &ids {
        let record = e.kw.record(id).await.expect("record");
        assert_eq!(record.versions.len(), 2, "{id}: rotated exactly once");
    }
    let completed = e.audit.events().iter().filter(|ev| matches!(ev.kind, AuditKind::RotationCompleted { .. })).count();
    assert_eq!(completed, 4);
    assert_eq!(one.totals().rotations_completed + two.totals().rotations_completed, 4);
}

#[tokio::test]
async fn the_loop_ticks_until_shutdown() {
    let e = env();
    let id = e.keyring("a", Purpose::Token, 5).await;
    e.clock.advance(90 * DAY);
    let rotator = Rotator::new(e.kw.clone()).expect("rng").source(e.table.clone());
    let sched =
        Scheduler::new(rotator, SchedulerConfig { tick: Duration::from_millis(10), ..SchedulerConfig::default() });
    let shutdown = keywheel::CancelToken::new();
    let stop = shutdown.clone();
    let mut ticks = 0;
    sched
        .run(shutdown, |result| {
            assert!(result.is_ok(), "{result:?}");
            ticks += 1;
            if ticks == 3 {
                stop.cancel();
            }
        })
        .await;
    assert_eq!(ticks, 3);
    assert_eq!(e.active(&id).await, 2);
}

#[tokio::test]
async fn the_status_report_has_stable_fields_and_warnings() {
    let e = env();
    let id = e.keyring("a", Purpose::Token, 3).await;
    let sched = e.scheduler(1);
    e.clock.advance(82 * DAY);
    let status = sched.status(true).await.expect("status");
    let k = &status.keyrings[0];
    assert_eq!((k.current_version, k.current_age_secs), (Some(1), Some(82 * 86_400)));
    assert_eq!(k.next_due, Some(Timestamp::from_millis(MIDNIGHT).plus(90 * DAY)));
    assert_eq!(k.census, Some(BTreeMap::from([(1, 3)])));
    assert!(matches!(k.warnings[..], [Warning::Approaching { .. }]), "{:?}", k.warnings);
    sched.pause();
    e.clock.advance(10 * DAY);
    let json = serde_json::to_value(sched.status(false).await.expect("status")).expect("json");
    let k = &json["keyrings"][0];
    assert_eq!(k["keyring"], "a/token");
    assert_eq!(k["current_version"], 1);
    assert_eq!(k["versions"]["active"], 1);
    assert_eq!(json["scheduler_paused"], true);
    let kinds: Vec<&str> = k["warnings"].as_array().expect("array").iter().filter_map(|w| w["kind"].as_str()).collect();
    assert_eq!(kinds, ["overdue", "scheduler_paused"]);
    for field in ["overdue_ratio", "last_job", "census", "policy", "active_encryptions"] {
        assert!(k.get(field).is_some(), "{field}");
    }
    for field in ["rotations_scheduled", "rotations_completed", "rotations_failed", "mean_duration_secs"] {
        assert!(json["totals"].get(field).is_some(), "{field}");
    }
    let _ = id;
}
