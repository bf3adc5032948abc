//! Invariant I9 on Postgres: a database writer who edits a version's state,
//! compromised flag, algorithm or timestamps in SQL gets every keywheel call
//! on that keyring refused with `Error::RecordTampered`, and nothing is
//! written; a version-1 database upgrades with `migrate` and its keyrings are
//! brought in by an explicit, audited `seal_unsealed`.

mod common;

use std::time::Duration;

use common::TestDb;
use keywheel_conformance::integrity::tampered_keyring_is_refused_everywhere;
use keywheel_core::{Algorithm, Context, KeyVersion, KeyringId, Keywheel, Purpose, RotateOptions, Rotator};
use keywheel_postgres::{PgPool, PgSchema, migrate};

fn v(n: u32) -> KeyVersion {
    KeyVersion::new(n).expect("nonzero")
}

fn ctx() -> Context {
    Context::field("accounts", "secret", "1")
}

async fn generation_and_audit(db: &TestDb, id: &KeyringId) -> (i64, i64) {
    let client = db.client().await;
    let generation: i64 = client
        .query_one("SELECT generation FROM keywheel.keyrings WHERE id = $1", &[&id.canonical()])
        .await
        .expect("generation")
        .get(0);
    let audited: i64 = client.query_one("SELECT count(*) FROM keywheel.audit_log", &[]).await.expect("count").get(0);
    (generation, audited)
}

/// keyring(), encrypt, decrypt, add/activate, rotate, retire (facade and
/// engine) are all refused for `id`, and neither the keyring nor the audit log
/// changes.
async fn assert_refused(db: &TestDb, pool: &PgPool, id: &KeyringId, value: &[u8]) {
    let before = generation_and_audit(db, id).await;
    // A fresh process: nothing cached.
    let kw = common::keywheel_on(pool, Duration::ZERO).await;
    tampered_keyring_is_refused_everywhere(&kw, id, value, &ctx()).await;
    assert_eq!(generation_and_audit(db, id).await, before, "{id}: nothing written, nothing audited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_edits_in_sql_are_refused() {
    let Some(db) = TestDb::create().await else { return };
    let pool = db.pool(4);
    let kw = common::keywheel_on(&pool, Duration::ZERO).await;
    // (what, SQL run on keyring $1 whose v2 is Active and v1 Deprecated)
    let cases: [(&str, &[&str]); 4] = [
        (
            "re-activate the deprecated version",
            &[
                "UPDATE keywheel.key_versions SET state = 'deprecated' WHERE keyring_id = $1 AND version = 2",
                "UPDATE keywheel.key_versions SET state = 'active' WHERE keyring_id = $1 AND version = 1",
            ],
        ),
        (
            "clear the compromised flag",
            &["UPDATE keywheel.key_versions SET compromised = false WHERE keyring_id = $1 AND version = 1"],
        ),
        (
            "change a version's algorithm",
            &["UPDATE keywheel.key_versions SET algorithm = 'chacha20-poly1305' WHERE keyring_id = $1 AND version = 1"],
        ),
        (
            "move a timestamp in the version's JSON",
            &["UPDATE keywheel.key_versions SET meta = jsonb_set(meta::jsonb, '{deprecated_at}', '0')::json \
               WHERE keyring_id = $1 AND version = 1"],
        ),
    ];
    let client = db.client().await;
    for (i, (what, statements)) in cases.iter().enumerate() {
        let id = KeyringId::new(format!("tenant{i}"), Purpose::Token).expect("id");
        kw.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("create");
        let value = kw.encrypt(&id, b"secret", &ctx()).await.expect("encrypt");
        // v1 is flagged compromised by an emergency rotation (no sources: v2 takes over at once).
        if what.contains("compromised") {
            Rotator::new(kw.clone()).expect("rng").emergency(&id, "leak", &RotateOptions::default()).await.ok();
            let record = kw.record(&id).await.expect("sealed after the emergency");
            assert!(record.version(v(1)).expect("v1").compromised);
        } else {
            kw.add_version(&id).await.expect("add");
            kw.activate(&id, v(2)).await.expect("activate");
        }
        kw.record(&id).await.expect("untampered records verify");
        for sql in statements.iter() {
            let n = client.execute(*sql, &[&id.canonical()]).await.unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(n, 1, "{what}: one row changed by {sql}");
        }
        assert_refused(&db, &pool, &id, &value).await;
    }
    // Other keyrings are unaffected.
    let fine = KeyringId::new("untouched", Purpose::Token).expect("id");
    kw.create_keyring(&fine, Algorithm::Aes256Gcm).await.expect("create");
    let fresh = common::keywheel_on(&pool, Duration::ZERO).await;
    let value = fresh.encrypt(&fine, b"ok", &ctx()).await.expect("encrypt");
    assert_eq!(&fresh.decrypt(&fine, &value, &ctx()).await.expect("decrypt")[..], b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_database_upgrades_and_its_keyrings_are_sealed_explicitly() {
    let Some(db) = TestDb::create().await else { return };
    let pool = db.pool(4);
    let kw = common::keywheel_on(&pool, Duration::ZERO).await;
    let id = KeyringId::new("legacy", Purpose::Database).expect("id");
    kw.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("create");
    let value = kw.encrypt(&id, b"written before the upgrade", &ctx()).await.expect("encrypt");
    // Turn the database back into what schema version 2 wrote: no seal columns.
    db.execute(
        "ALTER TABLE keywheel.keyrings DROP COLUMN seal_key_id, DROP COLUMN seal_mac;
         DELETE FROM keywheel.schema_migrations WHERE version = 3",
    )
    .await;
    let report = migrate(&pool, &PgSchema::default()).await.expect("migrate");
    assert_eq!((report.applied, report.version), (vec![3], keywheel_postgres::SCHEMA_VERSION));

    let fresh = common::keywheel_on(&pool, Duration::ZERO).await;
    assert_refused(&db, &pool, &id, &value).await;
    let (generation, audited) = generation_and_audit(&db, &id).await;
    assert!(fresh.seal_unsealed(&id, "reviewed after the upgrade to schema 3").await.expect("seal"));
    assert_eq!(generation_and_audit(&db, &id).await, (generation + 1, audited + 1), "one audited write");
    assert_eq!(&fresh.decrypt(&id, &value, &ctx()).await.expect("decrypt")[..], b"written before the upgrade");
    assert!(!fresh.seal_unsealed(&id, "again").await.expect("already sealed"));
    // The seal round-trips: another process verifies it.
    let other: Keywheel = common::keywheel_on(&pool, Duration::ZERO).await;
    other.record(&id).await.expect("verifies");
}
