//! Invariant I5: usage counts are never under-counted — across reloads,
//! invalidation, instances and the scheduler — on the memory backend with an
//! injected clock (no test waits).

use std::sync::Arc;
use std::time::Duration;

use keywheel::memory::{MemoryAuditSink, MemoryKeyStore, MemoryRecordSource};
use keywheel::{
    Algorithm, CancelToken, Census, Context, DueReason, Error, KeyStore, KeyVersion, KeyringChange, KeyringId,
    Keywheel, LocalKek, ManualClock, Policy, Purpose, RecordSource, ReplaceOutcome, Replacement, RotateOptions,
    Rotator, ScanRequest, Scheduler, SchedulerConfig, StoredValue, Timestamp, async_trait,
};

const REFRESH: Duration = Duration::from_secs(60);
const COOLDOWN: Duration = Duration::from_secs(1);
const V1: KeyVersion = KeyVersion::FIRST;

struct Env {
    store: Arc<MemoryKeyStore>,
    audit: Arc<MemoryAuditSink>,
    clock: ManualClock,
    id: KeyringId,
}

impl Env {
    async fn new() -> (Env, Keywheel) {
        let env = Env {
            store: Arc::new(MemoryKeyStore::new()),
            audit: Arc::new(MemoryAuditSink::new()),
            clock: ManualClock::new(Timestamp::from_millis(1_798_761_600_000)),
            id: KeyringId::new("acme", Purpose::Token).expect("id"),
        };
        let kw = env.instance();
        kw.create_keyring(&env.id, Algorithm::Aes256Gcm).await.expect("create");
        (env, kw)
    }

    /// Another `Keywheel` (another process) over the same store.
    fn instance(&self) -> Keywheel {
        Keywheel::builder()
            .store(self.store.clone())
            .kek(Arc::new(LocalKek::from_bytes(&[9; 32])))
            .audit(self.audit.clone())
            .clock(Arc::new(self.clock.clone()))
            .refresh_interval(REFRESH)
            .reload_cooldown(COOLDOWN)
            .build()
            .expect("keywheel")
    }

    async fn stored(&self) -> u64 {
        let record = self.store.load_keyring(&self.id).await.expect("load").expect("keyring");
        record.version(V1).expect("v1").encryptions
    }
}

/// `kw` counts `n` encryptions under version 1, and after its flush so does the store.
async fn assert_total_then_flushed(e: &Env, kw: &Keywheel, n: u64) {
    assert_eq!(kw.keyring(&e.id).await.expect("ring").encryptions(V1), n, "the instance's count");
    kw.flush_all_usage().await.expect("flush");
    assert_eq!(e.stored().await, n, "the stored count after a flush");
}

async fn encrypt_n(kw: &Keywheel, id: &KeyringId, n: u64) {
    for i in 0..n {
        kw.encrypt(id, b"secret", &Context::field("users", "token", &i.to_string())).await.expect("encrypt");
    }
}

#[tokio::test]
async fn encryptions_across_a_reload_are_all_stored() {
    let (e, kw) = Env::new().await;
    encrypt_n(&kw, &e.id, 100).await;
    kw.flush_usage(&e.id).await.expect("flush");
    assert_eq!(e.stored().await, 100);
    // What a change notification used to do: drop the snapshot and its counter.
    kw.invalidate(&e.id);
    encrypt_n(&kw, &e.id, 50).await;
    kw.refresh(&e.id).await.expect("refresh");
    encrypt_n(&kw, &e.id, 30).await;
    kw.flush_usage(&e.id).await.expect("flush");
    assert_eq!(e.stored().await, 180, "every encryption is stored, none subtracted");
    assert_eq!(kw.unflushed_usage(&e.id, V1), 0);
    // Flushing again adds nothing.
    assert_total_then_flushed(&e, &kw, 180).await;
}

#[tokio::test]
async fn counts_survive_invalidate() {
    let (e, kw) = Env::new().await;
    encrypt_n(&kw, &e.id, 7).await;
    kw.invalidate(&e.id);
    assert_eq!(kw.unflushed_usage(&e.id, V1), 7, "kept by the instance, not the snapshot");
    assert_eq!(kw.keyring(&e.id).await.expect("ring").encryptions(V1), 7);
    kw.flush_usage(&e.id).await.expect("flush");
    assert_eq!(e.stored().await, 7);
}

#[tokio::test]
async fn a_new_instance_starts_from_the_stored_count() {
    let (e, kw) = Env::new().await;
    encrypt_n(&kw, &e.id, 50).await;
    kw.flush_all_usage().await.expect("flush");
    let other = e.instance();
    let ring = other.keyring(&e.id).await.expect("ring");
    assert_eq!(ring.encryptions(V1), 50, "seeded from the store");
    ring.encrypt(b"x", &Context::empty()).expect("encrypt");
    assert_eq!((ring.encryptions(V1), other.unflushed_usage(&e.id, V1)), (51, 1));
    other.flush_all_usage().await.expect("flush");
    assert_eq!(e.stored().await, 51);
}

#[tokio::test]
async fn the_hard_limit_counts_what_other_processes_stored() {
    let (e, _) = Env::new().await;
    let limit = Algorithm::Aes256Gcm.encryption_limit().expect("GCM has a limit");
    // Other processes used all but two encryptions of version 1.
    let record = e.store.load_keyring(&e.id).await.expect("load").expect("keyring");
    let change = KeyringChange::RecordUsage { version: V1, add: limit - 2 };
    e.store.update_keyring(&e.id, record.generation, &[change]).await.expect("record usage");
    let ring = e.instance().keyring(&e.id).await.expect("ring");
    ring.encrypt(b"x", &Context::empty()).expect("one");
    ring.encrypt(b"x", &Context::empty()).expect("two");
    assert!(matches!(ring.encrypt(b"x", &Context::empty()), Err(Error::UsageLimitReached { .. })));
}

#[tokio::test]
async fn every_instance_flushes_on_its_scheduled_reloads() {
    let (e, a) = Env::new().await;
    let b = e.instance();
    encrypt_n(&a, &e.id, 30).await;
    encrypt_n(&b, &e.id, 12).await;
    assert_eq!(e.stored().await, 0, "nothing flushed yet");
    // No scheduler anywhere: the next access after the refresh interval flushes.
    e.clock.advance(REFRESH);
    encrypt_n(&a, &e.id, 1).await;
    encrypt_n(&b, &e.id, 1).await;
    assert_eq!(e.stored().await, 42, "both instances flushed; the store holds the sum");
    // Each reload saw the other's flush.
    assert_eq!(b.keyring(&e.id).await.expect("ring").encryptions(V1), 43);
    a.flush_all_usage().await.expect("flush");
    b.flush_all_usage().await.expect("flush");
    assert_eq!(e.stored().await, 44);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_encryptions_and_flushes_lose_nothing() {
    let (e, kw) = Env::new().await;
    let ring = kw.keyring(&e.id).await.expect("ring");
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let ring = Arc::clone(&ring);
            tokio::task::spawn_blocking(move || {
                for _ in 0..2_000 {
                    ring.encrypt(b"x", &Context::empty()).expect("encrypt");
                }
                // A batch whose failures give their reservations back.
                let good = ring.encrypt(b"y", &Context::empty()).expect("encrypt");
                let ctx = Context::empty();
                let bad = Context::field("t", "c", "1");
                let results = ring.reencrypt_many(&[(&good, &ctx), (&good, &bad), (b"junk", &ctx)]);
                assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
            })
        })
        .collect();
    let flusher = {
        let (kw, id) = (kw.clone(), e.id.clone());
        tokio::spawn(async move {
            for i in 0..200 {
                kw.flush_usage(&id).await.expect("flush");
                if i % 10 == 0 {
                    kw.invalidate(&id);
                    kw.refresh(&id).await.expect("refresh");
                }
                tokio::task::yield_now().await;
            }
        })
    };
    for w in workers {
        w.await.expect("worker");
    }
    flusher.await.expect("flusher");
    assert_total_then_flushed(&e, &kw, 4 * 2_002).await;
}

#[tokio::test]
async fn the_usage_limit_decision_sees_unflushed_counts() {
    let (e, kw) = Env::new().await;
    kw.set_policy(&e.id, &Policy { usage_limit: Some(150), ..Policy::for_purpose(&Purpose::Token) })
        .await
        .expect("policy");
    let rotator = Rotator::new(kw.clone()).expect("rotator").source(Arc::new(MemoryRecordSource::new("t.c")));
    let scheduler = Scheduler::new(rotator, SchedulerConfig::default());
    scheduler.pause();
    encrypt_n(&kw, &e.id, 100).await;
    assert!(scheduler.tick().await.expect("tick").due.is_empty(), "100 of 150");
    kw.invalidate(&e.id);
    encrypt_n(&kw, &e.id, 80).await;
    let tick = scheduler.tick().await.expect("tick");
    assert_eq!(tick.due.first().map(|d| d.reason), Some(DueReason::UsageLimit), "180 of 150");
    let status = scheduler.status(false).await.expect("status");
    assert_eq!(status.keyrings[0].active_encryptions, 180);
    assert_eq!(e.stored().await, 180);
}

#[tokio::test]
async fn a_graceful_shutdown_flushes() {
    let (e, kw) = Env::new().await;
    encrypt_n(&kw, &e.id, 25).await;
    let rotator = Rotator::new(kw.clone()).expect("rotator").source(Arc::new(MemoryRecordSource::new("t.c")));
    let scheduler = Scheduler::new(rotator, SchedulerConfig::default());
    let shutdown = CancelToken::new();
    shutdown.cancel();
    scheduler.run(shutdown, |_| {}).await;
    assert_eq!(e.stored().await, 25);
    assert_eq!(kw.unflushed_usage(&e.id, V1), 0);
}

#[tokio::test]
async fn announced_changes_reload_at_most_once_per_cooldown_and_keep_counts() {
    let (e, kw) = Env::new().await;
    encrypt_n(&kw, &e.id, 10).await;
    let before = kw.reloads();
    // A flood of announcements, each followed by an access.
    for _ in 0..1_000 {
        kw.mark_stale(&e.id);
        encrypt_n(&kw, &e.id, 1).await;
    }
    assert_eq!(kw.reloads(), before, "within the cooldown since the last load: no reload");
    e.clock.advance(COOLDOWN);
    for _ in 0..1_000 {
        kw.mark_stale(&e.id);
        encrypt_n(&kw, &e.id, 1).await;
    }
    assert_eq!(kw.reloads(), before + 1, "coalesced into one reload");
    // An announcement still pending is honoured once the cooldown has passed.
    e.clock.advance(COOLDOWN);
    encrypt_n(&kw, &e.id, 1).await;
    assert_eq!(kw.reloads(), before + 2);
    encrypt_n(&kw, &e.id, 1).await;
    assert_eq!(kw.reloads(), before + 2, "not stale any more");
    // No count reset.
    assert_total_then_flushed(&e, &kw, 2_012).await;
}

#[tokio::test]
async fn announcements_do_not_postpone_the_scheduled_refresh() {
    let (e, kw) = Env::new().await;
    encrypt_n(&kw, &e.id, 5).await;
    let before = kw.reloads();
    // One announcement per cooldown, each honoured by a reload (which flushes).
    let mut waited = Duration::ZERO;
    while waited + COOLDOWN < REFRESH {
        kw.mark_stale(&e.id);
        e.clock.advance(COOLDOWN);
        waited += COOLDOWN;
        encrypt_n(&kw, &e.id, 1).await;
    }
    assert_eq!(kw.reloads() - before, 59);
    assert_eq!(e.stored().await, 5 + 58, "each reload flushed what came before it");
    // The last load was a cooldown ago, but the refresh interval counts from
    // the last scheduled reload: this access reloads (and flushes) on schedule.
    e.clock.advance(COOLDOWN);
    encrypt_n(&kw, &e.id, 1).await;
    assert_eq!(kw.reloads() - before, 60);
    assert_eq!(e.stored().await, 5 + 59);
    assert_eq!(kw.keyring(&e.id).await.expect("ring").encryptions(V1), 5 + 60);
}

#[tokio::test]
async fn own_changes_reload_at_once_and_flush() {
    let (e, kw) = Env::new().await;
    encrypt_n(&kw, &e.id, 3).await;
    let before = kw.reloads();
    // This process's own lifecycle change: the next access reloads at once.
    let v2 = kw.add_version(&e.id).await.expect("add");
    kw.activate(&e.id, v2).await.expect("activate");
    let ring = kw.keyring(&e.id).await.expect("ring");
    assert_eq!((ring.active_version(), kw.reloads() - before), (Some(v2), 1));
    assert_eq!(e.stored().await, 3);
    encrypt_n(&kw, &e.id, 4).await;
    // The refresh interval still counts from the first load.
    e.clock.advance(REFRESH);
    encrypt_n(&kw, &e.id, 1).await;
    let record = e.store.load_keyring(&e.id).await.expect("load").expect("keyring");
    assert_eq!(record.version(v2).expect("v2").encryptions, 4);
    assert_eq!(kw.unflushed_usage(&e.id, v2), 1);
}

#[tokio::test]
async fn an_announced_activation_is_picked_up_after_the_cooldown() {
    let (e, kw) = Env::new().await;
    let other = e.instance();
    let v2 = other.add_version(&e.id).await.expect("add");
    other.activate(&e.id, v2).await.expect("activate");
    kw.mark_stale(&e.id);
    let ring = kw.keyring(&e.id).await.expect("ring");
    assert_eq!(ring.active_version(), Some(V1), "inside the cooldown: the cached snapshot");
    e.clock.advance(COOLDOWN);
    assert_eq!(kw.keyring(&e.id).await.expect("ring").active_version(), Some(v2));
}

/// A memory source whose first scan after a cursor waits for `gate`: a
/// rotation stuck in the middle of its re-encryption.
#[derive(Debug)]
struct GatedSource {
    inner: MemoryRecordSource,
    gated: std::sync::atomic::AtomicBool,
    gate: tokio::sync::Notify,
}

#[async_trait]
impl RecordSource for GatedSource {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn scan(&self, request: &ScanRequest) -> keywheel::Result<Vec<StoredValue>> {
        if request.after.is_some() && !self.gated.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.gate.notified().await;
        }
        self.inner.scan(request).await
    }
    async fn replace(&self, batch: &[Replacement]) -> keywheel::Result<Vec<ReplaceOutcome>> {
        self.inner.replace(batch).await
    }
    async fn census(&self, keyring: Option<&KeyringId>) -> keywheel::Result<Census> {
        self.inner.census(keyring).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_flushes_while_a_long_rotation_runs() {
    let (e, kw) = Env::new().await;
    let source = Arc::new(GatedSource {
        inner: MemoryRecordSource::new("t.c"),
        gated: Default::default(),
        gate: tokio::sync::Notify::new(),
    });
    let ring = kw.keyring(&e.id).await.expect("ring");
    for row in 0..30 {
        let ctx = Context::field("t", "c", &row.to_string());
        source.inner.insert_row(row, e.id.clone(), ctx.clone(), ring.encrypt(b"v", &ctx).expect("encrypt"));
    }
    let rotator = Rotator::new(kw.clone()).expect("rotator").source(source.clone());
    let config = SchedulerConfig {
        tick: Duration::from_millis(5),
        rotate: RotateOptions { batch_size: 10, parallel_batches: 1, estimate_total: false, ..Default::default() },
        ..Default::default()
    };
    let scheduler = Arc::new(Scheduler::new(rotator, config));
    scheduler.request_emergency(&e.id, "drill").expect("emergency");
    let shutdown = CancelToken::new();
    let run = tokio::spawn({
        let (scheduler, shutdown) = (Arc::clone(&scheduler), shutdown.clone());
        async move { scheduler.run(shutdown, |_| {}).await }
    });
    let v2 = KeyVersion::new(2).expect("2");
    let stored_v2 = || async {
        let record = e.store.load_keyring(&e.id).await.expect("load").expect("keyring");
        record.version(v2).map_or(0, |v| v.encryptions)
    };
    // The first batch is re-encrypted and the rotation waits at the gate: its
    // 10 encryptions reach the store while the tick is still running.
    let started = std::time::Instant::now();
    while stored_v2().await < 10 {
        assert!(started.elapsed() < Duration::from_secs(30), "no flush during the rotation");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!run.is_finished());
    source.gate.notify_one();
    while stored_v2().await < 30 {
        assert!(started.elapsed() < Duration::from_secs(30), "the rest was not flushed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.cancel();
    run.await.expect("scheduler");
    assert_eq!(stored_v2().await, 30);
}

/// One step of the model-based test below, on instance `0` or `1`.
#[derive(Debug, Clone)]
enum Op {
    Encrypt(usize, u64),
    Batch(usize, usize),
    Invalidate(usize),
    Refresh(usize),
    MarkStale(usize),
    Flush(usize),
    FlushAll(usize),
    Advance(u64),
    Restart(usize),
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    let who = 0..2usize;
    prop_oneof![
        4 => (who.clone(), 1..20u64).prop_map(|(i, n)| Op::Encrypt(i, n)),
        2 => (who.clone(), 1..6usize).prop_map(|(i, n)| Op::Batch(i, n)),
        1 => who.clone().prop_map(Op::Invalidate),
        1 => who.clone().prop_map(Op::Refresh),
        2 => who.clone().prop_map(Op::MarkStale),
        1 => who.clone().prop_map(Op::Flush),
        1 => who.clone().prop_map(Op::FlushAll),
        2 => (0..90u64).prop_map(Op::Advance),
        1 => who.prop_map(Op::Restart),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// I5 as a model: whatever the interleaving of encryptions, reloads,
    /// invalidations, announcements, flushes and graceful restarts over two
    /// instances, the stored count plus every instance's unflushed count is
    /// exactly the number of encryptions made; right after a refresh an
    /// instance's view is the stored count plus its own unflushed count.
    #[test]
    fn usage_counts_add_up_under_any_interleaving(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let (e, first) = Env::new().await;
            let mut kws = [first, e.instance()];
            let mut made = 0u64;
            for op in ops {
                match op {
                    Op::Encrypt(i, n) => {
                        encrypt_n(&kws[i], &e.id, n).await;
                        made += n;
                    }
                    Op::Batch(i, n) => {
                        let ring = kws[i].keyring(&e.id).await.expect("ring");
                        let ctx = Context::empty();
                        let value = ring.encrypt(b"v", &ctx).expect("encrypt");
                        let mut batch: Vec<(&[u8], &Context)> = vec![(&value, &ctx); n];
                        batch.push((b"junk", &ctx));
                        let ok = ring.reencrypt_many(&batch).iter().filter(|r| r.is_ok()).count();
                        made += 1 + ok as u64;
                    }
                    Op::Invalidate(i) => kws[i].invalidate(&e.id),
                    Op::Refresh(i) => {
                        // A refresh flushes and loads: the view is the stored count.
                        let ring = kws[i].refresh(&e.id).await.expect("refresh");
                        let own = kws[i].unflushed_usage(&e.id, V1);
                        proptest::prop_assert_eq!(ring.encryptions(V1), e.stored().await + own);
                    }
                    Op::MarkStale(i) => kws[i].mark_stale(&e.id),
                    Op::Flush(i) => kws[i].flush_usage(&e.id).await.expect("flush"),
                    Op::FlushAll(i) => kws[i].flush_all_usage().await.expect("flush"),
                    Op::Advance(s) => e.clock.advance(Duration::from_secs(s)),
                    Op::Restart(i) => {
                        kws[i].flush_all_usage().await.expect("graceful shutdown");
                        kws[i] = e.instance();
                    }
                }
                let stored = e.stored().await;
                let unflushed: u64 = kws.iter().map(|kw| kw.unflushed_usage(&e.id, V1)).sum();
                proptest::prop_assert_eq!(stored + unflushed, made);
                for kw in &kws {
                    let seen = kw.keyring(&e.id).await.expect("ring").encryptions(V1);
                    proptest::prop_assert!(seen >= kw.unflushed_usage(&e.id, V1));
                }
            }
            for kw in &kws {
                kw.flush_all_usage().await.expect("flush");
            }
            proptest::prop_assert_eq!(e.stored().await, made);
            Ok(())
        })?;
    }
}
