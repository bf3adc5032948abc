//! Reversible retirement and erasure on Postgres: a database at schema
//! version 3 (before the Disabled state existed) upgrades to version 4 with
//! its keyrings and values, and then disables, re-enables, erases and
//! destroys, as another process sees it.

mod common;

use std::time::Duration;

use common::TestDb;
use keywheel_core::{Algorithm, Context, Error, KeyState, KeyVersion, KeyringId, Purpose};
use keywheel_postgres::{PgSchema, migrate};

fn v(n: u32) -> KeyVersion {
    KeyVersion::new(n).expect("nonzero")
}

fn ctx() -> Context {
    Context::field("accounts", "secret", "1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_3_database_upgrades_and_keeps_working_through_disable_enable_and_erasure() {
    let Some(db) = TestDb::create().await else { return };
    let pool = db.pool(4);
    let kw = common::keywheel_on(&pool, Duration::ZERO).await;
    let id = KeyringId::new("acme", Purpose::Token).expect("id");
    kw.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("create");
    let on_v1 = kw.encrypt(&id, b"written at schema 3", &ctx()).await.expect("encrypt");
    kw.add_version(&id).await.expect("add");
    kw.activate(&id, v(2)).await.expect("activate");
    // Turn the database back into what schema version 3 wrote.
    db.execute(
        "ALTER TABLE keywheel.keyrings DROP COLUMN erased_at_ms;
         ALTER TABLE keywheel.key_versions DROP CONSTRAINT key_versions_state_check;
         ALTER TABLE keywheel.key_versions ADD CONSTRAINT key_versions_state_check
             CHECK (state IN ('pending', 'active', 'deprecated', 'retired'));
         DELETE FROM keywheel.schema_migrations WHERE version = 4",
    )
    .await;
    let client = db.client().await;
    let old_check = client
        .execute(
            "UPDATE keywheel.key_versions SET state = 'disabled' WHERE keyring_id = $1 AND version = 1",
            &[&id.canonical()],
        )
        .await;
    assert!(old_check.is_err(), "schema 3 knows no disabled state");

    let report = migrate(&pool, &PgSchema::default()).await.expect("migrate");
    assert_eq!((report.applied, report.version), (vec![4], keywheel_postgres::SCHEMA_VERSION));
    let kw = common::keywheel_on(&pool, Duration::ZERO).await;
    assert_eq!(&kw.decrypt(&id, &on_v1, &ctx()).await.expect("decrypt")[..], b"written at schema 3");

    // Disable: the row says so in SQL and keeps the material.
    kw.retire_forced(&id, v(1), "values exported").await.expect("disable");
    let row = client
        .query_one(
            "SELECT state, wrapped IS NOT NULL FROM keywheel.key_versions WHERE keyring_id = $1 AND version = 1",
            &[&id.canonical()],
        )
        .await
        .expect("row");
    assert_eq!((row.get::<_, String>(0), row.get::<_, bool>(1)), ("disabled".to_owned(), true));
    let other = common::keywheel_on(&pool, Duration::ZERO).await;
    let err = other.decrypt(&id, &on_v1, &ctx()).await.expect_err("disabled");
    assert!(matches!(err, Error::KeyDisabled { version } if version == v(1)), "{err}");
    let record = other.record(&id).await.expect("the seal covers the quarantine fields and verifies");
    assert!(record.version(v(1)).expect("v1").destroy_after.is_some());

    // Enable, then erase the keyring: the erasure time is a column, the seal verifies elsewhere.
    kw.enable(&id, v(1), Some("still read by the export")).await.expect("enable");
    assert_eq!(&other.decrypt(&id, &on_v1, &ctx()).await.expect("decrypt again")[..], b"written at schema 3");
    kw.destroy_keyring(&id, "erasure request", false).await.expect("erase");
    let erased: Option<i64> = client
        .query_one("SELECT erased_at_ms FROM keywheel.keyrings WHERE id = $1", &[&id.canonical()])
        .await
        .expect("row")
        .get(0);
    assert!(erased.is_some());
    let record = other.record(&id).await.expect("verifies");
    assert!(record.erased_at.is_some());
    assert!(record.versions.iter().all(|v| v.state == KeyState::Disabled));
    assert!(matches!(other.encrypt(&id, b"x", &ctx()).await, Err(Error::KeyringErased { .. })));
    let record = kw.destroy_keyring(&id, "erasure confirmed", true).await.expect("destroy now");
    assert!(record.versions.iter().all(|v| v.state == KeyState::Retired));
    let live: i64 = client
        .query_one(
            "SELECT count(*) FROM keywheel.key_versions WHERE keyring_id = $1 AND wrapped IS NOT NULL",
            &[&id.canonical()],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(live, 0, "no wrapped material left in the database");
    assert_eq!(other.record(&id).await.expect("verifies"), record);
}
