//! Running the application as a role that does not own keywheel's schema:
//! `migrate_with` as the owner grants the application role only what it
//! needs, so it can append and read audit entries but neither change,
//! delete nor truncate them, nor disable the append-only triggers.

mod common;

use std::sync::Arc;

use common::{TestDb, random_u64};
use keywheel_core::{
    Algorithm, AuditEvent, AuditKind, AuditSink, ChainVerifier, ChainViolationKind, Context, Form, IntegrityKey,
    KeyEncryptionKey, KeyringId, Keywheel, LocalKek, Outcome, Purpose, RotateOptions, Rotator, Timestamp,
};
use keywheel_postgres::tokio_postgres::error::SqlState;
use keywheel_postgres::{
    MigrateOptions, PgAuditSink, PgKeyStore, PgRecordSource, PgSchema, TableSpec, grant_application_role, migrate,
    migrate_with,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_application_role_can_only_insert_and_select_audit_rows() {
    let Some(db) = TestDb::create().await else { return };
    let suffix = format!("{:012x}", random_u64() & 0xffff_ffff_ffff);
    let (owner, app) = (format!("kw_owner_{suffix}"), format!("kw_app_{suffix}"));
    let roles = db.with_roles(&[&owner, &app]).await;
    let db = roles.db();
    db.execute(&format!("GRANT CREATE ON DATABASE \"{}\" TO \"{owner}\"", db.name)).await;
    // The application's own table, owned by neither keywheel role.
    db.execute(&format!(
        "CREATE TABLE public.accounts (id bigint PRIMARY KEY, tenant text NOT NULL, secret bytea);
         GRANT SELECT, INSERT, UPDATE ON public.accounts TO \"{app}\";"
    ))
    .await;

    let schema = PgSchema::default();
    let owner_pool = db.pool_as(&owner, 2);
    let report = migrate_with(&owner_pool, &schema, &MigrateOptions::new().app_role(app.clone()))
        .await
        .expect("migrate as the owner");
    assert_eq!(report.applied, vec![1, 2, 3, 4]);
    // Roles that could rewrite the log are refused as application roles.
    for (role, why) in [(owner.as_str(), "owns the audit log"), ("postgres", "superuser")] {
        let err = grant_application_role(&owner_pool, &schema, role).await.expect_err("refused");
        assert!(err.to_string().contains(why), "{role}: {err}");
    }
    grant_application_role(&owner_pool, &schema, &app).await.expect("idempotent");

    // The application connects as `app`; calling migrate at start-up is a no-op.
    let app_pool = db.pool_as(&app, 4);
    assert!(migrate(&app_pool, &schema).await.expect("nothing to do").applied.is_empty());
    let sink = Arc::new(PgAuditSink::new(app_pool.clone(), schema.clone()));
    let kek = Arc::new(LocalKek::from_bytes(&[7; 32]));
    let kw = Keywheel::builder()
        .store(Arc::new(PgKeyStore::new(app_pool.clone(), schema.clone())))
        .audit(sink.clone())
        .kek(kek.clone())
        .build()
        .expect("keywheel");
    let id = KeyringId::new("acme", Purpose::Database).expect("id");
    kw.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("create a keyring as app");
    let client = db.client_as(&app).await;
    for row in 1..=20i64 {
        let value = kw.encrypt(&id, format!("secret {row}").as_bytes(), &ctx(row)).await.expect("encrypt");
        client
            .execute("INSERT INTO public.accounts (id, tenant, secret) VALUES ($1, 'acme', $2)", &[&row, &value])
            .await
            .expect("insert");
    }
    let source = PgRecordSource::open(
        app_pool.clone(),
        TableSpec::new("public", "accounts")
            .keyring_from_column("tenant", Purpose::Database)
            .column("secret", Form::Binary),
    )
    .await
    .expect("source");
    let rotator = Rotator::new(kw.clone()).expect("rotator").source(Arc::new(source));
    let policy = kw.policy(&id).await.expect("policy");
    let rotated = rotator.rotate(&id, &policy, &RotateOptions::default()).await.expect("rotate as app");
    assert_eq!(rotated.counts.rewritten, 20);
    let plain = kw.decrypt(&id, &value_of(&client, 7).await, &ctx(7)).await.expect("decrypt");
    assert_eq!(&plain[..], b"secret 7");

    let keys = kek.integrity_keys().await.expect("keys");
    let verifier = ChainVerifier::new().keys(&keys);
    let before = sink.verify(&verifier).await.expect("verify").expect("intact");
    assert!(before >= 5, "create and rotate were audited: {before} entries");

    // What the application role may not do to the audit log.
    for sql in [
        "UPDATE keywheel.audit_log SET hash = 'x' WHERE seq = 1",
        "DELETE FROM keywheel.audit_log WHERE seq >= 1",
        "TRUNCATE keywheel.audit_log",
        "ALTER TABLE keywheel.audit_log DISABLE TRIGGER audit_log_append_only",
        "ALTER TABLE keywheel.audit_log DISABLE TRIGGER ALL",
        "DROP TRIGGER audit_log_append_only ON keywheel.audit_log",
        "DROP TABLE keywheel.audit_log",
        "ALTER TABLE keywheel.audit_log OWNER TO CURRENT_USER",
        "DROP FUNCTION keywheel.audit_log_append_only() CASCADE",
        "DELETE FROM keywheel.audit_head",
        "CREATE TABLE keywheel.audit_log_copy (x int)",
        "DELETE FROM keywheel.schema_migrations",
    ] {
        let err = client.batch_execute(sql).await.expect_err(sql);
        assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{sql}: {err:?}");
    }
    assert_eq!(sink.verify(&verifier).await.expect("verify"), Ok(before), "nothing changed");
    // And the application keeps working.
    kw.add_version(&id).await.expect("add a version as app");
    assert_eq!(sink.verify(&verifier).await.expect("verify"), Ok(before + 1));
    drop(client);
}

fn ctx(row: i64) -> Context {
    Context::field("accounts", "secret", &row.to_string())
}

async fn value_of(client: &keywheel_postgres::tokio_postgres::Client, row: i64) -> Vec<u8> {
    client.query_one("SELECT secret FROM public.accounts WHERE id = $1", &[&row]).await.expect("select").get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_field_in_a_stored_event_fails_verification() {
    let Some(db) = TestDb::create().await else { return };
    let pool = db.pool(2);
    let schema = PgSchema::default();
    migrate(&pool, &schema).await.expect("migrate");
    let sink = PgAuditSink::new(pool, schema);
    let key = IntegrityKey::derive(&[4; 32], b"postgres-tests");
    for n in 0..4 {
        let event = AuditEvent {
            at: Timestamp::from_millis(n),
            actor: "ops".into(),
            keyring: None,
            kind: AuditKind::PolicyChanged { summary: format!("change {n}") },
            reason: None,
            correlation_id: format!("c{n}"),
            outcome: Outcome::Success,
        };
        sink.record(&event, &key).await.expect("record");
    }
    let keys = [key];
    let verifier = ChainVerifier::new().keys(&keys);
    assert_eq!(sink.verify(&verifier).await.expect("verify"), Ok(4));
    for (what, patch) in [
        ("event", r#"{"injected": true}"#),
        ("kind", r#"{"kind": {"type": "policy_changed", "summary": "change 2", "x": 1}}"#),
    ] {
        db.execute(&format!(
            "BEGIN; ALTER TABLE keywheel.audit_log DISABLE TRIGGER audit_log_append_only; \
             UPDATE keywheel.audit_log SET event = (event::jsonb || '{patch}'::jsonb)::json WHERE seq = 2; \
             ALTER TABLE keywheel.audit_log ENABLE TRIGGER audit_log_append_only; COMMIT;"
        ))
        .await;
        let v = sink.verify(&verifier).await.expect("verify").expect_err(what);
        assert_eq!((v.index, v.seq, v.kind), (2, 2, ChainViolationKind::Altered), "{what}");
        let err = sink.entries().await.expect_err("entries refuses it");
        assert!(
            err.to_string().contains("audit entry 2 does not decode") && err.to_string().contains("unknown field"),
            "{err}"
        );
    }
}
