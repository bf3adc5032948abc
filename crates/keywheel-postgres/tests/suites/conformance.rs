use std::cmp::Ordering;
use std::sync::Arc;

use common::TestDb;
use keywheel_conformance::{AuditFixture, IndexedSourceFixture, RecordSourceFixture, Tamper};
use keywheel_core::{
    AuditSink, BlindIndex, Context, Cursor, Form, KeyStore, KeyringId, Normalization, Purpose, RecordSource,
    async_trait,
};
use common::TestPool;
use keywheel_pg_sql::{KeyType, PgSchema, SqlAuditSink, SqlKeyStore, SqlRecordSource, TableSpec, quote_ident};
use keywheel_postgres::tokio_postgres::types::ToSql;

/// A Postgres key store on its own test database (dropped with the store).
async fn scratch_store(db: TestDb) -> Arc<dyn KeyStore> {
    let pool = Pool::on(&db, 12);
    // A non-default schema, to check that nothing assumes `keywheel`.
    let schema = PgSchema::new("kw conformance").expect("schema");
    keywheel_pg_sql::migrate(&pool, &schema).await.expect("migrate");
    keywheel_conformance::with_guard(SqlKeyStore::<Pool>::new(pool, schema), db)
}

keywheel_conformance::key_store_tests!({
    let Some(db) = TestDb::create().await else { return };
    async move { scratch_store(db).await }
});

struct Sink {
    sink: Arc<SqlAuditSink<Pool>>,
    schema: PgSchema,
    db: TestDb,
}

#[async_trait]
impl AuditFixture for Sink {
    fn sink(&self) -> Arc<dyn AuditSink> {
        Arc::clone(&self.sink) as Arc<dyn AuditSink>
    }

    async fn tamper(&self, tamper: Tamper) {
        let log = format!("{}.\"audit_log\"", quote_ident(self.schema.name()).expect("schema"));
        let at = |i: usize| format!("(SELECT pos FROM {log} ORDER BY pos OFFSET {i} LIMIT 1)");
        let change = match tamper {
            Tamper::Edit(i) => format!(
                "UPDATE {log} SET event = (event::jsonb || '{{\"actor\": \"mallory\"}}'::jsonb)::json WHERE pos = {}",
                at(i)
            ),
            Tamper::Delete(i) => format!("DELETE FROM {log} WHERE pos = {}", at(i)),
            Tamper::Swap(i, j) => format!(
                "UPDATE {log} AS a SET seq = b.seq, prev_hash = b.prev_hash, hash = b.hash, key_id = b.key_id, \
                 mac = b.mac, event = b.event \
                 FROM {log} AS b, (SELECT {pi} AS x, {pj} AS y) AS p \
                 WHERE (a.pos = p.x AND b.pos = p.y) OR (a.pos = p.y AND b.pos = p.x)",
                pi = at(i),
                pj = at(j)
            ),
        };
        // An attacker with owner rights switches the append-only trigger off first.
        self.db
            .execute(&format!(
                "BEGIN; ALTER TABLE {log} DISABLE TRIGGER \"audit_log_append_only\"; {change}; \
                 ALTER TABLE {log} ENABLE TRIGGER \"audit_log_append_only\"; COMMIT;"
            ))
            .await;
    }
}

keywheel_conformance::audit_sink_tests!({
    let Some(db) = TestDb::create().await else { return };
    async move {
        let pool = Pool::on(&db, 8);
        let schema = PgSchema::default();
        keywheel_pg_sql::migrate(&pool, &schema).await.expect("migrate");
        Sink { sink: Arc::new(SqlAuditSink::new(pool, schema.clone())), schema, db }
    }
});

/// The row id in a conformance value's context (its `row` pair).
fn row_of(context: &Context) -> String {
    let pairs = context.pairs().expect("context");
    let row = pairs.iter().find(|(n, _)| n == "row").expect("a row in the context").1.clone();
    String::from_utf8(row).expect("row id text")
}

/// How a fixture's table is named and keyed.
struct Layout {
    schema: &'static str,
    table: &'static str,
    key: &'static str,
    tenant: &'static str,
    column: &'static str,
    text_key: bool,
}

const PLAIN: Layout =
    Layout { schema: "public", table: "users", key: "id", tenant: "tenant", column: "email", text_key: false };

const HOSTILE: Layout = Layout {
    schema: "Sch\"ema; DROP SCHEMA public CASCADE; --",
    table: "we\"ird; DROP TABLE x; --",
    key: "select",
    tenant: "ten'ant\" OR 1=1 --",
    column: "e-mail\"); DELETE FROM users; --",
    text_key: true,
};

struct SourceFixture {
    source: Arc<SqlRecordSource<Pool>>,
    client: keywheel_postgres::tokio_postgres::Client,
    table: String,
    key: String,
    column: String,
    tenant: String,
    text_key: bool,
    _db: TestDb,
}

impl SourceFixture {
    async fn new(db: TestDb, layout: &Layout) -> Self {
        let q = |s: &str| quote_ident(s).expect("identifier");
        let table = format!("{}.{}", q(layout.schema), q(layout.table));
        let key_type = if layout.text_key { "text COLLATE \"C\"" } else { "bigint" };
        db.execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; CREATE TABLE {table} ({key} {key_type} PRIMARY KEY, \
             {tenant} text, {column} bytea, other text DEFAULT 'untouched')",
            schema = q(layout.schema),
            key = q(layout.key),
            tenant = q(layout.tenant),
            column = q(layout.column),
        ))
        .await;
        let spec = TableSpec::new(layout.schema, layout.table)
            .primary_key(layout.key, if layout.text_key { KeyType::Text } else { KeyType::BigInt })
            .keyring_from_column(layout.tenant, Purpose::Database)
            .column_with_context(layout.column, Form::Binary, "email")
            .context_table("users")
            .name("users.email");
        let source = SqlRecordSource::<Pool>::open(Pool::on(&db, 6), spec).await.expect("open the source");
        SourceFixture {
            source: Arc::new(source),
            client: db.client().await,
            table,
            key: q(layout.key),
            column: q(layout.column),
            tenant: q(layout.tenant),
            text_key: layout.text_key,
            _db: db,
        }
    }

    fn key_of(cursor: &Cursor) -> &str {
        cursor.0.split_once(':').expect("column:key").1
    }

    fn key_cast(&self) -> &'static str {
        if self.text_key { "$1::text" } else { "$1::text::bigint" }
    }
}

#[async_trait]
impl RecordSourceFixture for SourceFixture {
    fn source(&self) -> Arc<dyn RecordSource> {
        Arc::clone(&self.source) as Arc<dyn RecordSource>
    }

    async fn insert(&self, keyring: &KeyringId, context: &Context, value: Vec<u8>) -> Cursor {
        let row = row_of(context);
        let sql = format!(
            "INSERT INTO {} ({}, {}, {}) VALUES ({}, $2, $3)",
            self.table,
            self.key,
            self.tenant,
            self.column,
            self.key_cast()
        );
        self.client.execute(&sql, &[&row, &keyring.tenant(), &value]).await.expect("insert");
        SqlRecordSource::<Pool>::cursor(0, &row)
    }

    async fn app_write(&self, cursor: &Cursor, value: Vec<u8>) {
        let sql = format!("UPDATE {} SET {} = $2 WHERE {} = {}", self.table, self.column, self.key, self.key_cast());
        let n = self.client.execute(&sql, &[&Self::key_of(cursor), &value]).await.expect("update");
        assert_eq!(n, 1, "the application writes an existing row");
    }

    async fn app_delete(&self, cursor: &Cursor) {
        let sql = format!("DELETE FROM {} WHERE {} = {}", self.table, self.key, self.key_cast());
        let n = self.client.execute(&sql, &[&Self::key_of(cursor)]).await.expect("delete");
        assert_eq!(n, 1, "the application deletes an existing row");
    }

    async fn get(&self, cursor: &Cursor) -> Option<Vec<u8>> {
        let sql = format!("SELECT {} FROM {} WHERE {} = {}", self.column, self.table, self.key, self.key_cast());
        let row = self.client.query_opt(&sql, &[&Self::key_of(cursor)]).await.expect("select")?;
        row.get(0)
    }

    fn compare_cursors(&self, a: &Cursor, b: &Cursor) -> Ordering {
        let split = |c: &Cursor| {
            let (col, key) = c.0.split_once(':').expect("column:key");
            (col.parse::<usize>().expect("column index"), key.to_owned())
        };
        let ((ca, ka), (cb, kb)) = (split(a), split(b));
        let keys = if self.text_key {
            ka.as_bytes().cmp(kb.as_bytes())
        } else {
            ka.parse::<i64>().expect("bigint").cmp(&kb.parse::<i64>().expect("bigint"))
        };
        keys.then(ca.cmp(&cb))
    }
}

keywheel_conformance::record_source_tests!({
    let Some(db) = TestDb::create().await else { return };
    async move { SourceFixture::new(db, &PLAIN).await }
});

keywheel_conformance::record_source_tests!(mod hostile_names_record_source_conformance, {
    let Some(db) = TestDb::create().await else { return };
    async move { SourceFixture::new(db, &HOSTILE).await }
});

/// A table with an encrypted `email` and its blind index `email_bidx`, in
/// `bytea` (binary form) or `text` (text form).
struct IndexedFixture {
    source: Arc<SqlRecordSource<Pool>>,
    client: keywheel_postgres::tokio_postgres::Client,
    index: BlindIndex,
    form: Form,
    _db: TestDb,
}

impl IndexedFixture {
    async fn new(db: TestDb, form: Form) -> Self {
        let tag_type = match form {
            Form::Binary => "bytea",
            Form::Text => "text",
        };
        db.execute(&format!(
            "CREATE TABLE public.users (id bigint PRIMARY KEY, tenant text, email bytea, email_bidx {tag_type}, \
             other text DEFAULT 'untouched'); CREATE INDEX ON public.users (email_bidx)"
        ))
        .await;
        let index = BlindIndex::new("users", "email").normalization(Normalization::TrimLowercase);
        let spec = TableSpec::new("public", "users")
            .keyring_from_column("tenant", Purpose::Database)
            .column("email", Form::Binary)
            .index("email", "email_bidx", form, index.clone());
        let source = SqlRecordSource::<Pool>::open(Pool::on(&db, 6), spec).await.expect("open the source");
        IndexedFixture { source: Arc::new(source), client: db.client().await, index, form, _db: db }
    }

    /// The tag as the column's SQL type takes it.
    fn tag_param(&self, tag: Option<Vec<u8>>) -> Box<dyn ToSql + Sync + Send> {
        match self.form {
            Form::Binary => Box::new(tag),
            Form::Text => Box::new(tag.map(|t| String::from_utf8(t).expect("a text-form tag is UTF-8"))),
        }
    }
}

#[async_trait]
impl IndexedSourceFixture for IndexedFixture {
    fn source(&self) -> Arc<dyn RecordSource> {
        Arc::clone(&self.source) as Arc<dyn RecordSource>
    }

    fn index(&self) -> (BlindIndex, Form) {
        (self.index.clone(), self.form)
    }

    async fn insert(&self, keyring: &KeyringId, context: &Context, value: Vec<u8>, tag: Option<Vec<u8>>) -> Cursor {
        let row: i64 = row_of(context).parse().expect("a numeric row id");
        let tag = self.tag_param(tag);
        self.client
            .execute(
                "INSERT INTO public.users (id, tenant, email, email_bidx) VALUES ($1, $2, $3, $4)",
                &[&row, &keyring.tenant(), &value, &*tag],
            )
            .await
            .expect("insert");
        SqlRecordSource::<Pool>::cursor(0, &row.to_string())
    }

    async fn app_write(&self, cursor: &Cursor, value: Vec<u8>, tag: Option<Vec<u8>>) {
        let key: i64 = cursor.0.split_once(':').expect("column:key").1.parse().expect("bigint");
        let tag = self.tag_param(tag);
        let n = self
            .client
            .execute("UPDATE public.users SET email = $2, email_bidx = $3 WHERE id = $1", &[&key, &value, &*tag])
            .await
            .expect("update");
        assert_eq!(n, 1, "the application writes an existing row");
    }

    async fn get(&self, cursor: &Cursor) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
        let key: i64 = cursor.0.split_once(':').expect("column:key").1.parse().expect("bigint");
        let row = self
            .client
            .query_opt("SELECT email, email_bidx, other FROM public.users WHERE id = $1", &[&key])
            .await
            .expect("select")?;
        assert_eq!(row.get::<_, String>(2), "untouched", "other columns are not written");
        let tag = match self.form {
            Form::Binary => row.get::<_, Option<Vec<u8>>>(1),
            Form::Text => row.get::<_, Option<String>>(1).map(String::into_bytes),
        };
        Some((row.get(0), tag))
    }
}

keywheel_conformance::indexed_source_tests!(mod binary_index_conformance, {
    let Some(db) = TestDb::create().await else { return };
    async move { IndexedFixture::new(db, Form::Binary).await }
});

keywheel_conformance::indexed_source_tests!(mod text_index_conformance, {
    let Some(db) = TestDb::create().await else { return };
    async move { IndexedFixture::new(db, Form::Text).await }
});
