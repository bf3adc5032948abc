//! Behaviour of loaded snapshots while the KEK's KMS or HSM is unreachable:
//! they keep serving, reloads back off, the error is typed and retryable, and
//! access denied falls back to nothing. (The same against a real KMS server
//! is `keywheel-kms-aws`'s `tests/faults.rs`.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use keywheel::memory::{MemoryAuditSink, MemoryKeyStore};
use keywheel::{
    Algorithm, Context, Error, IntegrityKey, KeyEncryptionKey, KeyMaterial, KeyVersion, KeyringId, Keywheel, LocalKek,
    ManualClock, Purpose, Result, Timestamp, WrappedKey, async_trait,
};

const UP: u8 = 0;
const DOWN: u8 = 1;
const DENIED: u8 = 2;

/// A local KEK whose unwraps fail as a KMS would when it is down or denies
/// access (fault injection around a real KEK), counting unwrap attempts.
#[derive(Debug)]
struct FaultyKek {
    inner: LocalKek,
    state: AtomicU8,
    unwraps: AtomicU64,
}

#[async_trait]
impl KeyEncryptionKey for FaultyKek {
    fn id(&self) -> &str {
        self.inner.id()
    }
    async fn wrap(&self, keyring: &KeyringId, version: KeyVersion, material: &KeyMaterial) -> Result<WrappedKey> {
        self.inner.wrap(keyring, version, material).await
    }
    async fn unwrap(&self, keyring: &KeyringId, version: KeyVersion, wrapped: &WrappedKey) -> Result<KeyMaterial> {
        self.unwraps.fetch_add(1, Ordering::SeqCst);
        match self.state.load(Ordering::SeqCst) {
            DOWN => Err(Error::KekUnavailable { kek_id: "local".into(), message: "connection refused".into() }),
            DENIED => Err(Error::KekAccessDenied {
                kek_id: "local".into(),
                message: "not allowed".into(),
                hint: "grant decrypt".into(),
            }),
            _ => self.inner.unwrap(keyring, version, wrapped).await,
        }
    }
    async fn integrity_key(&self) -> Result<IntegrityKey> {
        self.inner.integrity_key().await
    }
}

struct Fixture {
    kw: Keywheel,
    kek: Arc<FaultyKek>,
    clock: ManualClock,
    id: KeyringId,
}

async fn fixture() -> Fixture {
    let kek = Arc::new(FaultyKek {
        inner: LocalKek::from_bytes(&[7; 32]),
        state: AtomicU8::new(UP),
        unwraps: AtomicU64::new(0),
    });
    let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
    let kw = Keywheel::builder()
        .store(Arc::new(MemoryKeyStore::new()))
        .audit(Arc::new(MemoryAuditSink::new()))
        .kek(Arc::clone(&kek) as Arc<dyn KeyEncryptionKey>)
        .clock(Arc::new(clock.clone()))
        .refresh_interval(Duration::from_secs(60))
        .kek_outage_grace(Duration::from_secs(120))
        .build()
        .expect("keywheel");
    let id = KeyringId::new("acme", Purpose::Token).expect("id");
    kw.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("create");
    kw.keyring(&id).await.expect("first load");
    Fixture { kw, kek, clock, id }
}

#[tokio::test]
async fn a_loaded_snapshot_serves_through_an_outage_with_backoff_then_recovers() {
    let Fixture { kw, kek, clock, id } = fixture().await;
    let ctx = Context::field("users", "token", "1");
    let before = kw.encrypt(&id, b"before", &ctx).await.expect("encrypt");
    kek.state.store(DOWN, Ordering::SeqCst);

    // Past the refresh interval: the reload fails, the snapshot serves.
    clock.advance(Duration::from_secs(61));
    let attempts = kek.unwraps.load(Ordering::SeqCst);
    let during = kw.encrypt(&id, b"during", &ctx).await.expect("served by the loaded snapshot");
    assert_eq!(kek.unwraps.load(Ordering::SeqCst), attempts + 1, "one reload attempt");
    assert_eq!(kw.outage_serves(), 1);
    // Within the backoff, no new attempt, however many accesses.
    for _ in 0..50 {
        assert_eq!(&kw.decrypt(&id, &before, &ctx).await.expect("decrypt")[..], b"before");
    }
    assert_eq!(kek.unwraps.load(Ordering::SeqCst), attempts + 1, "no attempt within the backoff");
    // The backoff grows: 1 s, then 2 s, then 4 s.
    clock.advance(Duration::from_millis(1_001));
    kw.encrypt(&id, b"x", &ctx).await.expect("served");
    assert_eq!(kek.unwraps.load(Ordering::SeqCst), attempts + 2, "retry after 1 s");
    clock.advance(Duration::from_millis(1_001));
    kw.encrypt(&id, b"x", &ctx).await.expect("served");
    assert_eq!(kek.unwraps.load(Ordering::SeqCst), attempts + 2, "the second wait is 2 s");
    clock.advance(Duration::from_millis(1_000));
    kw.encrypt(&id, b"x", &ctx).await.expect("served");
    assert_eq!(kek.unwraps.load(Ordering::SeqCst), attempts + 3, "retry after 2 s");

    // An explicit refresh reports the typed, retryable error, and the
    // snapshot still serves afterwards.
    let err = kw.refresh(&id).await.expect_err("the KEK is down");
    assert!(matches!(err, Error::KekUnavailable { .. }) && err.is_retryable(), "{err:?}");
    kw.encrypt(&id, b"x", &ctx).await.expect("still served");

    // Back up: the next due retry reloads, and everything decrypts.
    kek.state.store(UP, Ordering::SeqCst);
    clock.advance(Duration::from_secs(31));
    let serves = kw.outage_serves();
    let after = kw.encrypt(&id, b"after", &ctx).await.expect("encrypt");
    assert_eq!(kw.outage_serves(), serves, "recovered: served by a fresh snapshot");
    for (value, plain) in [(&before, &b"before"[..]), (&during, b"during"), (&after, b"after")] {
        assert_eq!(&kw.decrypt(&id, value, &ctx).await.expect("decrypt")[..], plain);
    }
}

#[tokio::test]
async fn the_grace_ends_with_the_typed_retryable_error() {
    let Fixture { kw, kek, clock, id } = fixture().await;
    let ctx = Context::empty();
    kek.state.store(DOWN, Ordering::SeqCst);
    clock.advance(Duration::from_secs(61));
    kw.encrypt(&id, b"x", &ctx).await.expect("within the grace");
    // Refresh interval (60 s) + grace (120 s) after the load: no more serving.
    clock.advance(Duration::from_secs(120));
    let err = kw.encrypt(&id, b"x", &ctx).await.expect_err("grace spent");
    assert!(matches!(err, Error::KekUnavailable { .. }) && err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("unavailable"), "{err}");
    assert_eq!(kw.stale_snapshot_bound(), Duration::from_secs(60 + 120 + 5), "the bound counts the grace");
}

#[tokio::test]
async fn access_denied_does_not_fall_back() {
    let Fixture { kw, kek, clock, id } = fixture().await;
    kek.state.store(DENIED, Ordering::SeqCst);
    clock.advance(Duration::from_secs(61));
    let err = kw.encrypt(&id, b"x", &Context::empty()).await.expect_err("revoked: no fallback");
    assert!(matches!(&err, Error::KekAccessDenied { hint, .. } if !hint.is_empty()) && !err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("hint: grant decrypt"), "{err}");
    assert_eq!(kw.outage_serves(), 0);
}
