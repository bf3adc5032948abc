//! The two drivers on one database: keys, leases and audit entries written
//! through one are read and verified through the other; a table rotated
//! through one driver's record source is scanned, counted and read through
//! the other's; the sqlx listener hears changes made through tokio-postgres;
//! and the sqlx column types check what they read.

#[path = "../../keywheel-postgres/tests/common/mod.rs"]
mod common;
mod sqlx_pool;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestDb;
use keywheel_core::{
    Algorithm, AuditSink, BlindIndex, ChainVerifier, Error, Form, FormatError, KeyEncryptionKey, KeyStore, KeyVersion,
    KeyringId, Keywheel, LocalKek, Purpose, RecordSource, RotateOptions, Rotator, ScanRequest, Timestamp,
};
use keywheel_postgres::{PgAuditSink, PgKeyStore, PgPool, PgRecordSource};
use keywheel_sqlx::{
    Encrypted, EncryptedText, PgSchema, RowFields, SCHEMA_VERSION, SqlxAuditSink, SqlxKeyStore, SqlxRecordSource,
    TableSpec,
};
use sqlx_pool::sqlx_pool;

fn v(n: u32) -> KeyVersion {
    KeyVersion::new(n).expect("nonzero")
}

/// One of the two drivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    TokioPostgres,
    Sqlx,
}

/// The test database through both drivers.
struct Both {
    db: TestDb,
    pg: PgPool,
    sqlx: sqlx::PgPool,
}

impl Both {
    async fn create() -> Option<Both> {
        let db = TestDb::create().await?;
        let (pg, sqlx) = (db.pool(6), sqlx_pool(&db, 6));
        Some(Both { db, pg, sqlx })
    }

    async fn migrate(&self, side: Side, schema: &PgSchema) -> keywheel_sqlx::MigrationReport {
        match side {
            Side::TokioPostgres => keywheel_postgres::migrate(&self.pg, schema).await,
            Side::Sqlx => keywheel_sqlx::migrate(&self.sqlx, schema).await,
        }
        .expect("migrate")
    }

    fn store(&self, side: Side, schema: &PgSchema) -> Arc<dyn KeyStore> {
        match side {
            Side::TokioPostgres => Arc::new(PgKeyStore::new(self.pg.clone(), schema.clone())),
            Side::Sqlx => Arc::new(SqlxKeyStore::new(self.sqlx.clone(), schema.clone())),
        }
    }

    /// The audit sink through `side`, and its verification with `keys`.
    async fn verify_audit(&self, side: Side, schema: &PgSchema, keys: &[keywheel_core::IntegrityKey]) -> u64 {
        let verifier = ChainVerifier::new().keys(keys);
        match side {
            Side::TokioPostgres => PgAuditSink::new(self.pg.clone(), schema.clone()).verify(&verifier).await,
            Side::Sqlx => SqlxAuditSink::new(self.sqlx.clone(), schema.clone()).verify(&verifier).await,
        }
        .expect("read the audit log")
        .expect("the chain verifies")
    }

    fn sink(&self, side: Side, schema: &PgSchema) -> Arc<dyn AuditSink> {
        match side {
            Side::TokioPostgres => Arc::new(PgAuditSink::new(self.pg.clone(), schema.clone())),
            Side::Sqlx => Arc::new(SqlxAuditSink::new(self.sqlx.clone(), schema.clone())),
        }
    }

    fn keywheel(&self, side: Side, schema: &PgSchema) -> Keywheel {
        Keywheel::builder()
            .store(self.store(side, schema))
            .audit(self.sink(side, schema))
            .kek(Arc::new(LocalKek::from_bytes(&[7; 32])))
            .refresh_interval(Duration::from_secs(3600))
            .build()
            .expect("keywheel")
    }
}

async fn keys_and_audit(first: Side, second: Side) {
    let Some(both) = Both::create().await else { return };
    let schema = PgSchema::new("kw cross").expect("schema");
    let report = both.migrate(first, &schema).await;
    assert_eq!(report.applied, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
    // The same migrations, through the other driver: nothing left to do.
    let again = both.migrate(second, &schema).await;
    assert_eq!((again.applied.len(), again.version), (0, SCHEMA_VERSION));

    let (writer, reader) = (both.keywheel(first, &schema), both.keywheel(second, &schema));
    let id = KeyringId::new("acme", Purpose::Database).expect("id");
    let ctx = keywheel_core::Context::field("users", "email", "1");
    writer.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("create");
    let a = writer.encrypt(&id, b"written first", &ctx).await.expect("encrypt");
    assert_eq!(&*reader.decrypt(&id, &a, &ctx).await.expect("read through the other driver"), b"written first");

    // A rotation step through the second driver, seen by the first.
    let next = reader.add_version(&id).await.expect("add version");
    reader.activate(&id, next).await.expect("activate");
    let b = reader.encrypt(&id, b"written second", &ctx).await.expect("encrypt");
    assert_eq!(keywheel_core::version_of(&b), Ok(v(2)));
    let ring = writer.refresh(&id).await.expect("refresh");
    assert_eq!(ring.active_version(), Some(v(2)));
    assert_eq!(&*writer.decrypt(&id, &b, &ctx).await.expect("decrypt"), b"written second");
    let (w, r) = (both.store(first, &schema), both.store(second, &schema));
    assert_eq!(w.load_keyring(&id).await.expect("load"), r.load_keyring(&id).await.expect("load"));

    // Leases: one holder whichever driver asks.
    let now = Timestamp::from_millis(1_000_000);
    let lease = w.acquire_lease(&id, "writer", Duration::from_secs(60), now).await.expect("acquire");
    assert_eq!(r.load_lease(&id).await.expect("load lease"), Some(lease.clone()));
    assert!(matches!(r.acquire_lease(&id, "reader", Duration::from_secs(60), now).await, Err(Error::LeaseHeld { .. })));
    r.release_lease(&lease).await.expect("release through the other driver");
    assert_eq!(w.load_lease(&id).await.expect("load lease"), None);

    // One audit chain, appended through both drivers, verified through either.
    let keys = LocalKek::from_bytes(&[7; 32]).integrity_keys().await.expect("integrity keys");
    let (n1, n2) = (both.verify_audit(first, &schema, &keys).await, both.verify_audit(second, &schema, &keys).await);
    assert_eq!(n1, n2);
    assert!(n1 >= 3, "created, version added and activated: {n1} entries");
    let entries = both.sink(first, &schema).entries().await.expect("entries");
    assert_eq!(entries, both.sink(second, &schema).entries().await.expect("entries"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_audit_written_through_tokio_postgres_are_read_through_sqlx() {
    keys_and_audit(Side::TokioPostgres, Side::Sqlx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_audit_written_through_sqlx_are_read_through_tokio_postgres() {
    keys_and_audit(Side::Sqlx, Side::TokioPostgres).await;
}

const ROWS: i64 = 300;

fn users_spec() -> TableSpec {
    TableSpec::new("public", "users")
        .keyring_from_column("tenant", Purpose::Database)
        .column("email", Form::Binary)
        .column("token", Form::Text)
}

fn email(id: i64) -> Vec<u8> {
    format!("user{id}@example.org").into_bytes()
}

fn token(id: i64) -> Vec<u8> {
    format!("token of {id}").into_bytes()
}

/// Every row read through sqlx as keywheel column types, decrypted.
async fn check_through_sqlx(pool: &sqlx::PgPool, kw: &Keywheel, id: &KeyringId, version: KeyVersion) {
    let ring = kw.refresh(id).await.expect("keyring");
    let rows: Vec<(i64, Encrypted, EncryptedText)> =
        sqlx::query_as("SELECT id, email, token FROM public.users ORDER BY id").fetch_all(pool).await.expect("select");
    assert_eq!(rows.len(), usize::try_from(ROWS).expect("rows"));
    for (n, e, t) in rows {
        assert_eq!((e.info().version, t.info().version), (version, version), "row {n}");
        let row = RowFields::new(&ring, "users", n);
        assert_eq!(&*row.decrypt("email", &e).expect("email"), email(n).as_slice());
        assert_eq!(&*row.decrypt("token", &t).expect("token"), token(n).as_slice());
    }
}

/// Every row read through tokio-postgres, decrypted.
async fn check_through_tokio_postgres(db: &TestDb, kw: &Keywheel, id: &KeyringId, version: KeyVersion) {
    let ring = kw.refresh(id).await.expect("keyring");
    let client = db.client().await;
    let rows = client.query("SELECT id, email, token FROM public.users ORDER BY id", &[]).await.expect("select");
    assert_eq!(rows.len(), usize::try_from(ROWS).expect("rows"));
    for r in rows {
        let (n, e, t): (i64, Vec<u8>, String) = (r.get(0), r.get(1), r.get(2));
        assert_eq!(keywheel_core::version_of(&e), Ok(version), "row {n}");
        let row = RowFields::new(&ring, "users", n);
        assert_eq!(&*row.decrypt("email", &e).expect("email"), email(n).as_slice());
        assert_eq!(&*row.decrypt("token", &t.as_bytes()).expect("token"), token(n).as_slice());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_rotated_through_one_driver_is_scanned_and_counted_through_the_other() {
    let Some(both) = Both::create().await else { return };
    let schema = PgSchema::default();
    both.migrate(Side::Sqlx, &schema).await;
    let kw = both.keywheel(Side::Sqlx, &schema);
    let id = KeyringId::new("acme", Purpose::Database).expect("id");
    kw.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("create");
    both.db
        .execute("CREATE TABLE public.users (id bigint PRIMARY KEY, tenant text NOT NULL, email bytea, token text)")
        .await;
    // The application writes through sqlx with the column types.
    let ring = kw.keyring(&id).await.expect("keyring");
    for n in 1..=ROWS {
        let row = RowFields::new(&ring, "users", n);
        sqlx::query("INSERT INTO public.users (id, tenant, email, token) VALUES ($1, $2, $3, $4)")
            .bind(n)
            .bind(id.tenant())
            .bind(row.encrypt("email", &email(n)).expect("encrypt"))
            .bind(row.encrypt_text("token", &token(n)).expect("encrypt"))
            .execute(&both.sqlx)
            .await
            .expect("insert");
    }
    let sqlx_source: Arc<dyn RecordSource> =
        Arc::new(SqlxRecordSource::open(both.sqlx.clone(), users_spec()).await.expect("open through sqlx"));
    let pg_source: Arc<dyn RecordSource> =
        Arc::new(PgRecordSource::open(both.pg.clone(), users_spec()).await.expect("open through tokio-postgres"));
    let values = u64::try_from(2 * ROWS).expect("values");

    for (rotating, reading, to) in [(&sqlx_source, &pg_source, v(2)), (&pg_source, &sqlx_source, v(3))] {
        let rotator = Rotator::new(kw.clone()).expect("rotator").source(Arc::clone(rotating));
        let opts = RotateOptions { batch_size: 64, ..RotateOptions::default() };
        let report = rotator.rotate(&id, &kw.policy(&id).await.expect("policy"), &opts).await.expect("rotate");
        assert_eq!(report.counts.rewritten, values, "every value rewritten to {to}");
        let census = reading.census(Some(&id)).await.expect("census through the other driver");
        assert_eq!((census.count(&id, to), census.total(&id), census.unparseable), (values, values, 0));
        let request = ScanRequest { keyring: Some(id.clone()), skip_version: Some(to), ..ScanRequest::all(100) };
        assert!(reading.scan(&request).await.expect("scan").is_empty(), "nothing left off {to}");
        let all = reading.scan(&ScanRequest::all(1000)).await.expect("scan");
        assert_eq!(all.len(), usize::try_from(values).expect("values"));
        assert!(all.iter().all(|s| keywheel_core::version_of(&s.value) == Ok(to)));
    }
    check_through_sqlx(&both.sqlx, &kw, &id, v(3)).await;
    check_through_tokio_postgres(&both.db, &kw, &id, v(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlx_listener_hears_changes_made_through_tokio_postgres() {
    let Some(both) = Both::create().await else { return };
    let schema = PgSchema::default();
    both.migrate(Side::TokioPostgres, &schema).await;
    let admin = both.keywheel(Side::TokioPostgres, &schema);
    let app = both.keywheel(Side::Sqlx, &schema);
    let id = KeyringId::new("acme", Purpose::Token).expect("id");
    admin.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("create");
    assert_eq!(app.keyring(&id).await.expect("keyring").active_version(), Some(v(1)));
    let listener = keywheel_sqlx::spawn_listener(&both.sqlx, &schema, app.clone()).await.expect("listener");
    let next = admin.add_version(&id).await.expect("add");
    admin.activate(&id, next).await.expect("activate");
    // The refresh interval is an hour: only the notification makes the app reload.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if app.keyring(&id).await.expect("keyring").active_version() == Some(v(2)) {
            break;
        }
        assert!(Instant::now() < deadline, "the app never saw v2 ({} notifications)", listener.notifications());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(listener.notifications() >= 1);
    listener.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_types_check_the_header_when_a_row_is_read() {
    let Some(both) = Both::create().await else { return };
    both.db
        .execute(
            "CREATE TABLE public.t (id bigint PRIMARY KEY, v bytea, s text, tag bytea); \
             INSERT INTO public.t (id, v, s) VALUES (1, 'not a keywheel value', 'kw:v1:AAAA'), (2, NULL, NULL)",
        )
        .await;
    let read = |id: i64| {
        sqlx::query_as::<_, (Option<Encrypted>,)>("SELECT v FROM public.t WHERE id = $1").bind(id).fetch_one(&both.sqlx)
    };
    let format_error = |e: sqlx::Error| match e {
        sqlx::Error::ColumnDecode { source, .. } => source.downcast_ref::<FormatError>().cloned(),
        other => panic!("expected a column decode error, got {other:?}"),
    };
    assert_eq!(format_error(read(1).await.expect_err("not a keywheel value")), Some(FormatError::BadMagic));
    assert_eq!(read(2).await.expect("NULL").0, None);
    let text = sqlx::query_as::<_, (EncryptedText,)>("SELECT s FROM public.t WHERE id = 1").fetch_one(&both.sqlx).await;
    assert!(matches!(format_error(text.expect_err("truncated")), Some(FormatError::Truncated { .. })));

    // Values and blind index terms as parameters, arrays included.
    let kw = {
        let schema = PgSchema::default();
        both.migrate(Side::Sqlx, &schema).await;
        both.keywheel(Side::Sqlx, &schema)
    };
    let id = KeyringId::new("acme", Purpose::Database).expect("id");
    let ring = kw.create_keyring(&id, Algorithm::Aes256Gcm).await.expect("create");
    let index = BlindIndex::new("t", "v");
    let row = RowFields::new(&ring, "t", 3);
    let value = row.encrypt("v", b"ann@example.org").expect("encrypt");
    let tag = ring.blind_index(b"ann@example.org", &index).expect("tag");
    sqlx::query("INSERT INTO public.t (id, v, tag) VALUES ($1, $2, $3)")
        .bind(3_i64)
        .bind(&value)
        .bind(&tag)
        .execute(&both.sqlx)
        .await
        .expect("insert");
    let terms = ring.index_terms(b"ann@example.org", &index).expect("terms");
    let found: Vec<(i64, Encrypted)> = sqlx::query_as("SELECT id, v FROM public.t WHERE tag = ANY($1)")
        .bind(terms.binary())
        .fetch_all(&both.sqlx)
        .await
        .expect("lookup");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].1, value);
    let by_value: (i64,) = sqlx::query_as("SELECT id FROM public.t WHERE v = ANY($1)")
        .bind(vec![value.clone()])
        .fetch_one(&both.sqlx)
        .await
        .expect("by value");
    assert_eq!(by_value.0, 3);
    assert_eq!(&*row.decrypt("v", &found[0].1).expect("decrypt"), b"ann@example.org");
}
