//! Rotation of a real table while the application writes over its own
//! connections, live refresh between two `Keywheel` instances on separate
//! pools, and the key store and audit log features beyond the conformance
//! suite (migrations, NOTIFY, append-only audit, lease takeover).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TestDb, XorShift, plaintext};
use keywheel_core::{
    Algorithm, AuditEvent, AuditKind, AuditSink, ChainVerifier, ChainViolationKind, Context, Error, Form, IntegrityKey,
    JobPhase, KeyStore, KeyVersion, KeyringId, Outcome, Purpose, RecordSource, RotateOptions, Rotator, Timestamp,
    version_of,
};
use keywheel_postgres::{PgAuditSink, PgKeyStore, PgRecordSource, PgSchema, TableSpec, migrate, spawn_listener};

fn v(n: u32) -> KeyVersion {
    KeyVersion::new(n).expect("nonzero")
}

fn ctx(id: i64) -> Context {
    Context::field("accounts", "secret", &id.to_string())
}

/// Seed `rows` rows of `accounts` (ids 1..=rows) encrypted under the current version.
async fn seed(db: &TestDb, kw: &keywheel_core::Keywheel, id: &KeyringId, rows: i64) {
    db.execute("CREATE TABLE public.accounts (id bigint PRIMARY KEY, tenant text NOT NULL, secret bytea, note text)")
        .await;
    let client = db.client().await;
    let ring = kw.keyring(id).await.expect("keyring");
    for chunk in (1..=rows).collect::<Vec<_>>().chunks(2000) {
        let ids: Vec<i64> = chunk.to_vec();
        let values: Vec<Vec<u8>> =
            ids.iter().map(|n| ring.encrypt(&plaintext(*n, 0), &ctx(*n)).expect("encrypt")).collect();
        client
            .execute(
                "INSERT INTO public.accounts (id, tenant, secret) SELECT i, $3, s FROM UNNEST($1::int8[], $2::bytea[]) AS u(i, s)",
                &[&ids, &values, &id.tenant()],
            )
            .await
            .expect("seed");
    }
}

fn accounts(pool: keywheel_postgres::PgPool) -> impl std::future::Future<Output = PgRecordSource> {
    PgRecordSource::open(
        pool,
        TableSpec::new("public", "accounts")
            .keyring_from_column("tenant", Purpose::Database)
            .column("secret", Form::Binary),
    )
    .map(|r| r.expect("open accounts"))
}

use futures::FutureExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_under_concurrent_application_writes_loses_nothing() {
    const ROWS: i64 = 20_000;
    let Some(db) = TestDb::create().await else { return };
    let pool = db.pool(8);
    let kw = common::keywheel_on(&pool, Duration::from_secs(3600)).await;
    let id = KeyringId::new("acme", Purpose::Database).expect("id");
    kw.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("keyring");
    seed(&db, &kw, &id, ROWS).await;

    // The application: its own Keywheel on its own pool, kept fresh by a listener,
    // writing over plain connections of its own.
    let app_pool = db.pool(4);
    let app_kw = common::keywheel_on(&app_pool, Duration::from_secs(3600)).await;
    let listener = spawn_listener(&app_pool, &PgSchema::default(), app_kw.clone()).await.expect("listener");
    let expected: Arc<Mutex<HashMap<i64, u32>>> = Arc::new(Mutex::new((1..=ROWS).map(|n| (n, 0)).collect()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3i64 {
        let (client, kw, id, expected, stop) =
            (db.client().await, app_kw.clone(), id.clone(), Arc::clone(&expected), Arc::clone(&stop));
        writers.push(tokio::spawn(async move {
            let mut rng = XorShift::seeded();
            let (mut inserts, mut updates) = (0u64, 0u64);
            let mut next_id = 1_000_000 * (w + 1);
            while !stop.load(Ordering::SeqCst) {
                if rng.below(4) == 0 {
                    next_id += 1;
                    let value = kw.encrypt(&id, &plaintext(next_id, 0), &ctx(next_id)).await.expect("encrypt");
                    client
                        .execute(
                            "INSERT INTO public.accounts (id, tenant, secret) VALUES ($1, $2, $3)",
                            &[&next_id, &id.tenant(), &value],
                        )
                        .await
                        .expect("application insert");
                    expected.lock().expect("lock").insert(next_id, 0);
                    inserts += 1;
                } else {
                    // Each writer owns the ids ≡ w (mod 3), so its expectations are exact.
                    let row = 1 + (rng.below(ROWS as u64 / 3) as i64) * 3 + w;
                    if row > ROWS {
                        continue;
                    }
                    let generation = expected.lock().expect("lock")[&row] + 1;
                    let value = kw.encrypt(&id, &plaintext(row, generation), &ctx(row)).await.expect("encrypt");
                    let n = client
                        .execute("UPDATE public.accounts SET secret = $2, note = 'app' WHERE id = $1", &[&row, &value])
                        .await
                        .expect("application update");
                    assert_eq!(n, 1);
                    expected.lock().expect("lock").insert(row, generation);
                    updates += 1;
                }
            }
            (inserts, updates)
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let source = Arc::new(accounts(pool.clone()).await);
    let rotator = Rotator::new(kw.clone()).expect("rotator").source(source.clone());
    let opts = RotateOptions { batch_size: 500, parallel_batches: 3, ..RotateOptions::default() };
    let report =
        rotator.rotate(&id, &rotator.keywheel().policy(&id).await.expect("policy"), &opts).await.expect("rotate");
    stop.store(true, Ordering::SeqCst);
    let mut app_writes = (0, 0);
    for w in writers {
        let (i, u) = w.await.expect("writer");
        app_writes = (app_writes.0 + i, app_writes.1 + u);
    }
    listener.abort();
    eprintln!("rotation {report:?}; application inserts/updates during it: {app_writes:?}");
    assert!(app_writes.0 + app_writes.1 > 50, "the application really wrote during the rotation: {app_writes:?}");
    assert_eq!(report.phase, JobPhase::Completed, "{report:?}");
    assert_eq!(report.counts.failed, 0);

    // Every row is there, decrypts, and holds the application's last write.
    let expected = expected.lock().expect("lock").clone();
    let rows = db.client().await.query("SELECT id, secret FROM public.accounts", &[]).await.expect("rows");
    assert_eq!(rows.len(), expected.len(), "no row lost or invented");
    for row in &rows {
        let (n, secret): (i64, Vec<u8>) = (row.get(0), row.get(1));
        let plain = kw.decrypt(&id, &secret, &ctx(n)).await.unwrap_or_else(|e| panic!("row {n} does not decrypt: {e}"));
        assert_eq!(&plain[..], &plaintext(n, expected[&n])[..], "row {n}: an application write was lost");
    }
    let census = source.census(Some(&id)).await.expect("census");
    assert_eq!(census.counts.get(&id).map(|m| m.keys().copied().collect::<Vec<_>>()), Some(vec![v(2)]), "{census:?}");
    assert_eq!(census.count(&id, v(2)), expected.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_instance_picks_up_a_rotation_at_once() {
    let Some(db) = TestDb::create().await else { return };
    let (pool_a, pool_b, pool_c) = (db.pool(6), db.pool(4), db.pool(2));
    let kw_a = common::keywheel_on(&pool_a, Duration::from_secs(3600)).await;
    let kw_b = common::keywheel_on(&pool_b, Duration::from_secs(3600)).await;
    // A third instance without a listener shows what the listener changes.
    let kw_c = common::keywheel_on(&pool_c, Duration::from_secs(3600)).await;
    let id = KeyringId::new("acme", Purpose::Database).expect("id");
    kw_a.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("keyring");
    seed(&db, &kw_a, &id, 500).await;
    // B and C cache version 1.
    for kw in [&kw_b, &kw_c] {
        assert_eq!(version_of(&kw.encrypt(&id, b"x", &ctx(0)).await.expect("encrypt")), Ok(v(1)));
    }
    let listener = spawn_listener(&pool_b, &PgSchema::default(), kw_b.clone()).await.expect("listener");

    let rotator = Rotator::new(kw_a.clone()).expect("rotator").source(Arc::new(accounts(pool_a.clone()).await));
    let report =
        rotator.rotate(&id, &rotator.keywheel().policy(&id).await.expect("policy"), &RotateOptions::default()).await;
    assert_eq!(report.expect("rotate").phase, JobPhase::Completed);

    // B decrypts the rotated values at once.
    let client = db.client().await;
    for row in client.query("SELECT id, secret FROM public.accounts ORDER BY id LIMIT 50", &[]).await.expect("rows") {
        let (n, secret): (i64, Vec<u8>) = (row.get(0), row.get(1));
        assert_eq!(version_of(&secret), Ok(v(2)));
        assert_eq!(&kw_b.decrypt(&id, &secret, &ctx(n)).await.expect("B decrypts")[..], &plaintext(n, 0)[..]);
    }
    // B encrypts under v2 as soon as the notification arrived (well under a second).
    let started = Instant::now();
    loop {
        let value = kw_b.encrypt(&id, b"after", &ctx(1)).await.expect("encrypt");
        if version_of(&value) == Ok(v(2)) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "B still encrypts under v1 after 5 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("B encrypted under v2 {:?} after the rotation returned", started.elapsed());
    // C, without a listener, still uses its cached v1 snapshot (until its refresh interval).
    assert_eq!(version_of(&kw_c.encrypt(&id, b"stale", &ctx(1)).await.expect("encrypt")), Ok(v(1)));
    // A second rotation reaches B too.
    let report =
        rotator.rotate(&id, &rotator.keywheel().policy(&id).await.expect("policy"), &RotateOptions::default()).await;
    assert_eq!(report.expect("rotate").to, Some(v(3)));
    let started = Instant::now();
    while version_of(&kw_b.encrypt(&id, b"x", &ctx(1)).await.expect("encrypt")) != Ok(v(3)) {
        assert!(started.elapsed() < Duration::from_secs(5), "B missed the second rotation");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    listener.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_idempotent_and_concurrent() {
    let Some(db) = TestDb::create().await else { return };
    let schema = PgSchema::new("Some \"Schema\"").expect("schema");
    let pools: Vec<_> = (0..4).map(|_| db.pool(2)).collect();
    let runs = futures::future::join_all(pools.iter().map(|p| migrate(p, &schema))).await;
    let applied: Vec<Vec<i32>> = runs.into_iter().map(|r| r.expect("migrate").applied).collect();
    assert_eq!(applied.iter().filter(|a| !a.is_empty()).count(), 1, "exactly one run applies: {applied:?}");
    let again = migrate(&pools[0], &schema).await.expect("migrate again");
    assert!(again.applied.is_empty());
    assert_eq!(again.version, keywheel_postgres::SCHEMA_VERSION);
    assert!(schema.channel().len() <= keywheel_postgres::MAX_IDENTIFIER_LEN);
    let long = PgSchema::new("s".repeat(63)).expect("schema");
    assert!(long.channel().len() <= keywheel_postgres::MAX_IDENTIFIER_LEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_changes_are_notified_and_leases_are_taken_over_after_a_crash() {
    let Some(db) = TestDb::create().await else { return };
    let pool = db.pool(4);
    let kw = common::keywheel_on(&pool, Duration::from_secs(3600)).await;
    let schema = PgSchema::default();
    let listener = db.client().await;
    drop(listener);
    // Watch the channel on a raw connection.
    let (client, mut connection) = db.config.connect(keywheel_postgres::tokio_postgres::NoTls).await.expect("connect");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(m)) = futures::StreamExt::next(&mut stream).await {
            if let keywheel_postgres::tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {}", keywheel_postgres::quote_ident(&schema.channel()).expect("q")))
        .await
        .expect("listen");
    let id = KeyringId::new("t1", Purpose::Token).expect("id");
    kw.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("create");
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("notified").expect("open");
    assert_eq!(got, (schema.channel(), "t1/token".to_owned()));
    let v2 = kw.add_version(&id).await.expect("add");
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("notified").expect("open");
    assert_eq!(got.1, "t1/token");
    kw.activate(&id, v2).await.expect("activate");
    assert!(tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.is_ok());

    // A lease of a "crashed" process (never released) is taken over by another
    // instance once expired, with a greater token; the old one can no longer renew.
    let store_a = PgKeyStore::new(db.pool(2), schema.clone());
    let store_b = PgKeyStore::new(db.pool(2), schema.clone());
    let t0 = Timestamp::from_millis(1_000_000);
    let ttl = Duration::from_secs(30);
    let a = store_a.acquire_lease(&id, "host-a", ttl, t0).await.expect("a");
    let held = store_b.acquire_lease(&id, "host-b", ttl, t0.plus(Duration::from_secs(29))).await;
    assert!(matches!(held, Err(Error::LeaseHeld { .. })), "{held:?}");
    let b = store_b.acquire_lease(&id, "host-b", ttl, t0.plus(ttl)).await.expect("takeover");
    assert!(b.token > a.token);
    assert!(matches!(store_a.renew_lease(&a, ttl, t0.plus(ttl)).await, Err(Error::LeaseLost { .. })));
}

fn audit_key() -> IntegrityKey {
    IntegrityKey::derive(&[9; 32], b"postgres-tests")
}

fn event(n: u64) -> AuditEvent {
    AuditEvent {
        at: Timestamp::from_millis(n as i64),
        actor: format!("writer-{}", n % 7),
        keyring: None,
        kind: AuditKind::PolicyChanged { summary: format!("change {n} \u{0}\u{1f} ✓") },
        reason: Some("NUL and control characters are stored exactly".into()),
        correlation_id: format!("c{n}"),
        outcome: Outcome::Success,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_log_is_one_chain_across_connections_and_append_only() {
    let Some(db) = TestDb::create().await else { return };
    let schema = PgSchema::default();
    migrate(&db.pool(1), &schema).await.expect("migrate");
    // Four sinks on four pools: four processes' worth of writers.
    let sinks: Vec<Arc<PgAuditSink>> = (0..4).map(|_| Arc::new(PgAuditSink::new(db.pool(3), schema.clone()))).collect();
    let mut tasks = Vec::new();
    for (s, sink) in sinks.iter().enumerate() {
        for t in 0..3u64 {
            let sink = Arc::clone(sink);
            tasks.push(tokio::spawn(async move {
                for i in 0..15u64 {
                    sink.record(&event((s as u64 * 3 + t) * 100 + i), &audit_key()).await.expect("record");
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let sink = &sinks[0];
    let keys = [audit_key()];
    let keyed = ChainVerifier::new().keys(&keys);
    assert_eq!(sink.verify(&keyed).await.expect("verify"), Ok(180));
    let entries = sink.entries().await.expect("entries").expect("some");
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), (0..180).collect::<Vec<_>>());
    assert_eq!(entries[5].event.kind, event(entries[5].event.at.as_millis() as u64).kind, "stored exactly");

    // The table refuses edits and deletes.
    let client = db.client().await;
    for sql in [
        "UPDATE keywheel.audit_log SET hash = 'x' WHERE seq = 3",
        "DELETE FROM keywheel.audit_log WHERE seq = 179",
        "TRUNCATE keywheel.audit_log",
    ] {
        let err = client.batch_execute(sql).await.expect_err("append-only");
        assert!(format!("{err:?}").contains("append-only"), "{sql}: {err:?}");
    }
    // With the trigger disabled (owner rights), deleting the tail is still caught by the head.
    db.execute(
        "ALTER TABLE keywheel.audit_log DISABLE TRIGGER audit_log_append_only;
         DELETE FROM keywheel.audit_log WHERE seq >= 178;",
    )
    .await;
    let violation = sink.verify(&keyed).await.expect("verify").expect_err("tail deleted");
    assert_eq!((violation.index, violation.kind), (178, ChainViolationKind::Truncated { expected_seq: 179 }));
    assert_eq!(sink.head().await.expect("head").next_seq, 180);
    // Appending to the shortened table is refused, not continued.
    let err = sink.record(&event(1000), &audit_key()).await.expect_err("shortened");
    assert!(matches!(&err, Error::Audit(m) if m.contains("is not the stored head")), "{err}");
    // With the head row set back to match, the sink that appended seq 179 still refuses.
    db.execute(
        "UPDATE keywheel.audit_head SET next_seq = 178, \
         last_hash = (SELECT hash FROM keywheel.audit_log WHERE seq = 177)",
    )
    .await;
    let last_writer = sinks.iter().find(|s| s.seen_head().map(|h| h.seq) == Some(179)).expect("a sink appended 179");
    let err = last_writer.record(&event(1001), &audit_key()).await.expect_err("behind the seen head");
    assert!(matches!(&err, Error::Audit(m) if m.contains("this process has seen entry seq")), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_are_identifiers_not_sql() {
    let Some(db) = TestDb::create().await else { return };
    let pool = db.pool(4);
    let kw = common::keywheel_on(&pool, Duration::from_secs(3600)).await;
    let id = KeyringId::new("acme", Purpose::Database).expect("id");
    kw.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("keyring");
    let table = "we\"ird; DROP TABLE x; --";
    let column = "col\"umn'); DROP TABLE x; --";
    db.execute(&format!(
        "CREATE TABLE x (id int); CREATE TABLE public.{} (id bigint PRIMARY KEY, {} bytea)",
        keywheel_postgres::quote_ident(table).expect("q"),
        keywheel_postgres::quote_ident(column).expect("q")
    ))
    .await;
    let client = db.client().await;
    let insert = format!("INSERT INTO public.{} VALUES ($1, $2)", keywheel_postgres::quote_ident(table).expect("q"));
    for n in 1..=50i64 {
        let value = kw.encrypt(&id, &plaintext(n, 0), &Context::field(table, column, &n.to_string())).await.expect("e");
        client.execute(&insert, &[&n, &value]).await.expect("insert");
    }
    let source = PgRecordSource::open(
        pool.clone(),
        TableSpec::new("public", table).keyring(id.clone()).column(column, Form::Binary),
    )
    .await
    .expect("open");
    let rotator = Rotator::new(kw.clone()).expect("rotator").source(Arc::new(source.clone()));
    let report =
        rotator.rotate(&id, &rotator.keywheel().policy(&id).await.expect("policy"), &RotateOptions::default()).await;
    assert_eq!(report.expect("rotate").counts.rewritten, 50);
    assert_eq!(source.census(None).await.expect("census").count(&id, v(2)), 50);
    let exists = client.query_one("SELECT to_regclass('public.x') IS NOT NULL", &[]).await.expect("q");
    assert!(exists.get::<_, bool>(0), "table x survived");
}
