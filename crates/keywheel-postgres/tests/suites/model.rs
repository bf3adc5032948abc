use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::TestDb;
use keywheel_conformance::RecordSourceFixture;
use keywheel_conformance::model::{ModelBackend, ModelConfig, ModelWorld, Op, replay, row_of, run_model};
use keywheel_core::{AuditSink, Context, Cursor, Form, KeyStore, KeyringId, Purpose, RecordSource, async_trait};
use common::TestPool;
use keywheel_pg_sql::{PgSchema, SqlAuditSink, SqlKeyStore, SqlRecordSource, TableSpec};

/// One application table `{schema}.{table} (id bigint, tenant text, secret bytea)`.
struct Table {
    source: Arc<SqlRecordSource<Pool>>,
    client: keywheel_postgres::tokio_postgres::Client,
    table: String,
}

#[async_trait]
impl RecordSourceFixture for Table {
    fn source(&self) -> Arc<dyn RecordSource> {
        Arc::clone(&self.source) as Arc<dyn RecordSource>
    }
    async fn insert(&self, keyring: &KeyringId, context: &Context, value: Vec<u8>) -> Cursor {
        let row = row_of(context);
        let sql = format!("INSERT INTO {} (id, tenant, secret) VALUES ($1::text::bigint, $2, $3)", self.table);
        self.client.execute(&sql, &[&row, &keyring.tenant(), &value]).await.expect("insert");
        SqlRecordSource::<Pool>::cursor(0, &row)
    }
    async fn app_write(&self, cursor: &Cursor, value: Vec<u8>) {
        let sql = format!("UPDATE {} SET secret = $2 WHERE id = $1::text::bigint", self.table);
        let n = self.client.execute(&sql, &[&key_of(cursor), &value]).await.expect("update");
        assert_eq!(n, 1, "the application writes an existing row");
    }
    async fn app_delete(&self, cursor: &Cursor) {
        let sql = format!("DELETE FROM {} WHERE id = $1::text::bigint", self.table);
        self.client.execute(&sql, &[&key_of(cursor)]).await.expect("delete");
    }
    async fn get(&self, cursor: &Cursor) -> Option<Vec<u8>> {
        let sql = format!("SELECT secret FROM {} WHERE id = $1::text::bigint", self.table);
        self.client.query_opt(&sql, &[&key_of(cursor)]).await.expect("select")?.get(0)
    }
}

fn key_of(cursor: &Cursor) -> &str {
    cursor.0.split_once(':').expect("column:key").1
}

/// One test database; every case gets schemas `kw_model_{n}` (key store and
/// audit log) and `app_model_{n}` (the tables).
struct Postgres {
    db: TestDb,
    cases: AtomicU64,
}

impl Postgres {
    fn new() -> Option<Postgres> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let db = rt.block_on(TestDb::create())?;
        Some(Postgres { db, cases: AtomicU64::new(0) })
    }

    async fn table(&self, pool: &Pool, app: &str, table: &str, purpose: Purpose) -> Table {
        let qualified = format!("{app}.{table}");
        let spec = TableSpec::new(app, table)
            .keyring_from_column("tenant", purpose)
            .column_with_context("secret", Form::Binary, "secret")
            .context_table(table)
            .name(format!("{table}.secret"));
        let source = SqlRecordSource::<Pool>::open(pool.clone(), spec).await.expect("open the table as a source");
        Table { source: Arc::new(source), client: self.db.client().await, table: qualified }
    }
}

#[async_trait]
impl ModelBackend for Postgres {
    async fn world(&self) -> ModelWorld {
        let n = self.cases.fetch_add(1, Ordering::SeqCst);
        let (kw, app) = (format!("kw_model_{n}"), format!("app_model_{n}"));
        let schema = PgSchema::new(kw).expect("schema name");
        // A pool per case, made on the case's runtime (an sqlx pool's
        // connections belong to the runtime they were opened on).
        let pool = Pool::on(&self.db, 8);
        keywheel_pg_sql::migrate(&pool, &schema).await.expect("migrate");
        self.db
            .execute(&format!(
                "CREATE SCHEMA {app}; \
                 CREATE TABLE {app}.tokens (id bigint PRIMARY KEY, tenant text NOT NULL, secret bytea); \
                 CREATE TABLE {app}.fields (id bigint PRIMARY KEY, tenant text NOT NULL, secret bytea);"
            ))
            .await;
        ModelWorld {
            store: Arc::new(SqlKeyStore::<Pool>::new(pool.clone(), schema.clone())) as Arc<dyn KeyStore>,
            audit: Arc::new(SqlAuditSink::<Pool>::new(pool.clone(), schema)) as Arc<dyn AuditSink>,
            tokens: Arc::new(self.table(&pool, &app, "tokens", Purpose::Token).await),
            fields: Arc::new(self.table(&pool, &app, "fields", Purpose::Database).await),
            guard: Box::new(()),
        }
    }
}

#[test]
fn model_postgres() {
    let Some(pg) = Postgres::new() else { return };
    run_model(&pg, &ModelConfig::from_env(64));
}

fn regression(ops: &[Op]) {
    let Some(pg) = Postgres::new() else { return };
    replay(&pg, ops);
}

// One regression case per bug the model found (see
// `keywheel_conformance::model::regressions` for what each one breaks).
keywheel_conformance::model_regression_tests!(regression);
