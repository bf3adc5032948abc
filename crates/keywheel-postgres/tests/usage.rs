//! Invariant I5 on Postgres: any role can `NOTIFY` on the keyring channel, and a
//! flood of notifications neither hammers the store with reloads nor loses a
//! usage count. Time is a `ManualClock`; the test waits only for the listener
//! to have received the notifications, never for a duration to pass.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestDb;
use keywheel_core::{Algorithm, Context, KeyVersion, KeyringId, Keywheel, LocalKek, ManualClock, Purpose, Timestamp};
use keywheel_postgres::{ListenerHandle, PgAuditSink, PgKeyStore, PgPool, PgSchema, spawn_listener};

const COOLDOWN: Duration = Duration::from_secs(1);
const V1: KeyVersion = KeyVersion::FIRST;

async fn instance(pool: &PgPool, clock: &ManualClock) -> Keywheel {
    let schema = PgSchema::default();
    keywheel_postgres::migrate(pool, &schema).await.expect("migrate");
    Keywheel::builder()
        .store(Arc::new(PgKeyStore::new(pool.clone(), schema.clone())))
        .audit(Arc::new(PgAuditSink::new(pool.clone(), schema)))
        .kek(Arc::new(LocalKek::from_bytes(&[7; 32])))
        .clock(Arc::new(clock.clone()))
        .refresh_interval(Duration::from_secs(3600))
        .reload_cooldown(COOLDOWN)
        .build()
        .expect("keywheel")
}

async fn encrypt_n(kw: &Keywheel, id: &KeyringId, n: u64) {
    for i in 0..n {
        kw.encrypt(id, b"secret", &Context::field("users", "token", &i.to_string())).await.expect("encrypt");
    }
}

/// `n` notifications naming `id`, each its own statement (Postgres folds
/// identical notifications of one transaction into one), pipelined.
async fn notify(client: &keywheel_postgres::tokio_postgres::Client, id: &KeyringId, n: usize) {
    let (channel, canonical) = (PgSchema::default().channel(), id.canonical());
    let params: [&(dyn keywheel_postgres::tokio_postgres::types::ToSql + Sync); 2] = [&channel, &canonical];
    let sends = (0..n).map(|_| client.execute("SELECT pg_notify($1, $2)", &params));
    for sent in futures::future::join_all(sends).await {
        sent.expect("notify");
    }
}

/// Wait until the listener has received `n` notifications in all.
async fn received(listener: &ListenerHandle, n: u64) {
    let started = Instant::now();
    while listener.notifications() < n {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the listener received {} of {n} notifications",
            listener.notifications()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_flood_reloads_once_per_cooldown_and_loses_no_count() {
    let Some(db) = TestDb::create().await else { return };
    let pool = db.pool(4);
    let clock = ManualClock::new(Timestamp::from_millis(1_798_761_600_000));
    let kw = instance(&pool, &clock).await;
    let id = KeyringId::new("acme", Purpose::Token).expect("id");
    kw.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("create");
    let listener = spawn_listener(&pool, &PgSchema::default(), kw.clone()).await.expect("listener");
    encrypt_n(&kw, &id, 90).await;
    let before = kw.reloads();

    // Another role's connection: 1,000 notifications for the keyring, with
    // encryptions in between.
    let attacker = db.client().await;
    for _ in 0..10 {
        notify(&attacker, &id, 100).await;
        encrypt_n(&kw, &id, 9).await;
    }
    received(&listener, 1_000).await;
    encrypt_n(&kw, &id, 1).await;
    assert_eq!(kw.reloads(), before, "within the cooldown since the last load: no reload at all");

    // One cooldown later: the whole flood is one reload.
    clock.advance(COOLDOWN);
    encrypt_n(&kw, &id, 10).await;
    assert_eq!(kw.reloads(), before + 1, "1,000 notifications coalesced into one reload");

    // Another flood, with the clock moving a cooldown per 250 notifications:
    // at most one reload per cooldown.
    for _ in 0..4 {
        notify(&attacker, &id, 250).await;
        encrypt_n(&kw, &id, 5).await;
        clock.advance(COOLDOWN);
    }
    received(&listener, 2_000).await;
    encrypt_n(&kw, &id, 9).await;
    let reloads = kw.reloads() - before;
    // One per clock reading at least a cooldown after the last load: T1 (the
    // coalesced reload above), T2, T3, T4 and T5.
    assert!((2..=5).contains(&reloads), "{reloads} reloads for 2,000 notifications over 5 cooldowns");

    // No count was reset or lost: 90 + 90 + 1 + 10 + 20 + 9 = 220.
    assert_eq!(kw.keyring(&id).await.expect("ring").encryptions(V1), 220);
    kw.flush_all_usage().await.expect("flush");
    let stored = kw.record(&id).await.expect("record").version(V1).expect("v1").encryptions;
    assert_eq!(stored, 220);
    // A new instance (a restarted process) starts from the stored count.
    let restarted = instance(&db.pool(2), &clock).await;
    assert_eq!(restarted.keyring(&id).await.expect("ring").encryptions(V1), 220);
    listener.abort();
}
