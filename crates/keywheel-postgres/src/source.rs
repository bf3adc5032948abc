//! [`PgRecordSource`]: the encrypted columns of an application table.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::JoinHandle;

use keywheel_core::{
    Census, Context, Cursor, Error, Form, KeyVersion, KeyringId, Purpose, RecordSource, ReplaceOutcome, Replacement,
    Result, ScanRequest, StoredValue, async_trait, version_of,
};
use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};

use crate::PgPool;
use crate::error::{SOURCE, invalid, on, pg};
use crate::header::{any_version, text_column_version, text_version};
use crate::ident::{qualified, quote_ident};

/// The SQL type of an application table's primary key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// `bigint` (`int8`).
    BigInt,
    /// `uuid`.
    Uuid,
    /// `text` or `varchar`. Scan order is the column's collation order; a
    /// `COLLATE "C"` column (or database) makes it bytewise.
    Text,
}

impl KeyType {
    fn accepts(self, sql_type: &str) -> bool {
        match self {
            KeyType::BigInt => sql_type == "bigint",
            KeyType::Uuid => sql_type == "uuid",
            KeyType::Text => matches!(sql_type, "text" | "character varying"),
        }
    }
    fn expected(self) -> &'static str {
        match self {
            KeyType::BigInt => "bigint",
            KeyType::Uuid => "uuid",
            KeyType::Text => "text or varchar",
        }
    }
}

/// How a row's keyring is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyringFrom {
    /// Every value of the table belongs to this keyring.
    Fixed(KeyringId),
    /// The keyring of a row is `(tenant, purpose)` where the tenant is the
    /// row's value in this `text`/`varchar` column.
    TenantColumn {
        /// The tenant column.
        column: String,
        /// The purpose shared by all rows.
        purpose: Purpose,
    },
}

/// One encrypted column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedColumn {
    /// The column's name.
    pub name: String,
    /// [`Form::Binary`] for a `bytea` column, [`Form::Text`] for a `text` or
    /// `varchar` column holding the `kw:v{N}:…` text form.
    pub form: Form,
    /// The `column` of the values' [`Context`] (default: the column's name).
    pub context_column: String,
}

/// The description of an application table whose encrypted columns a
/// [`PgRecordSource`] scans and rewrites.
///
/// Every value's context is `Context::field(context_table, context_column,
/// row_id)`: by default the table's and column's names and the primary key
/// as text (decimal for `bigint`, lower-case hyphenated for `uuid`, the text
/// itself for `text`). Encrypt your application's values with the same
/// context, or they will not decrypt during a rotation.
///
/// ```
/// use keywheel_core::{Form, Purpose};
/// use keywheel_postgres::{KeyType, TableSpec};
///
/// let spec = TableSpec::new("public", "users")
///     .primary_key("id", KeyType::BigInt)
///     .keyring_from_column("tenant", Purpose::Database)
///     .column("email", Form::Binary)
///     .column("api_token", Form::Text);
/// assert_eq!(spec.source_name(), "public.users");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    schema: String,
    table: String,
    key: String,
    key_type: KeyType,
    keyring: Option<KeyringFrom>,
    columns: Vec<EncryptedColumn>,
    context_table: Option<String>,
    name: Option<String>,
    read_ahead: bool,
}

impl TableSpec {
    /// The table `schema.table`; primary key `id bigint` until set otherwise.
    pub fn new(schema: impl Into<String>, table: impl Into<String>) -> Self {
        TableSpec {
            schema: schema.into(),
            table: table.into(),
            key: "id".into(),
            key_type: KeyType::BigInt,
            keyring: None,
            columns: Vec::new(),
            context_table: None,
            name: None,
            read_ahead: true,
        }
    }

    /// The primary key (or any unique, non-null column) and its type.
    pub fn primary_key(mut self, column: impl Into<String>, key_type: KeyType) -> Self {
        self.key = column.into();
        self.key_type = key_type;
        self
    }

    /// Every value belongs to `keyring`.
    pub fn keyring(mut self, keyring: KeyringId) -> Self {
        self.keyring = Some(KeyringFrom::Fixed(keyring));
        self
    }

    /// A row's keyring is `(row's tenant column value, purpose)`.
    pub fn keyring_from_column(mut self, column: impl Into<String>, purpose: Purpose) -> Self {
        self.keyring = Some(KeyringFrom::TenantColumn { column: column.into(), purpose });
        self
    }

    /// Add an encrypted column (context column = its name).
    pub fn column(self, name: impl Into<String>, form: Form) -> Self {
        let name = name.into();
        let context_column = name.clone();
        self.column_with_context(name, form, context_column)
    }

    /// Add an encrypted column whose values' context names `context_column`.
    pub fn column_with_context(
        mut self,
        name: impl Into<String>,
        form: Form,
        context_column: impl Into<String>,
    ) -> Self {
        self.columns.push(EncryptedColumn { name: name.into(), form, context_column: context_column.into() });
        self
    }

    /// The `table` of the values' context (default: the table's name, without schema).
    pub fn context_table(mut self, table: impl Into<String>) -> Self {
        self.context_table = Some(table.into());
        self
    }

    /// The source's name in reports and job checkpoints (default `schema.table`).
    /// Must be unique among the sources of one rotator.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Read ahead (default on): after returning a batch, the source already
    /// reads the next one (the same request, after the batch's last cursor) on
    /// another connection, so a caller that re-encrypts a batch while the next
    /// is being read — the rotation engine — never waits for a scan. Such a
    /// batch may be older than the call by the time the caller spent on the
    /// previous one; compare-and-set replacement makes that harmless, but turn
    /// it off if you need every scan to read at call time.
    pub fn read_ahead(mut self, on: bool) -> Self {
        self.read_ahead = on;
        self
    }

    /// The name the source will report.
    pub fn source_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| format!("{}.{}", self.schema, self.table))
    }
}

/// Quoted identifiers and SQL fragments, built once.
#[derive(Debug, Clone)]
struct Built {
    table: String,
    key: String,
    key_select: String,
    key_param: Type,
    key_array: &'static str,
    key_from_text: &'static str,
    tenant: Option<String>,
    columns: Vec<BuiltColumn>,
}

#[derive(Debug, Clone)]
struct BuiltColumn {
    quoted: String,
    form: Form,
    context_column: String,
    /// `version of t.col` (bigint or NULL).
    version: String,
    /// Census grouping: `is text form, first 8 bytes, length (capped at 64),
    /// version of a text form`.
    census: String,
}

/// A primary key value: `bigint`, or the text of a `uuid` / `text` key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Pk {
    Int(i64),
    Text(String),
}

impl Pk {
    fn as_text(&self) -> String {
        match self {
            Pk::Int(n) => n.to_string(),
            Pk::Text(s) => s.clone(),
        }
    }
}

/// A [`RecordSource`] over the encrypted columns of one application table,
/// described by a [`TableSpec`].
///
/// * **Cursor**: `"{column index}:{primary key as text}"`, e.g. `"1:42"` for
///   the second encrypted column of row 42 (uuid keys in lower-case hyphenated
///   form). Scan order is primary-key order (`ORDER BY key`, as SQL compares
///   the key: numerically for `bigint`, bytewise for `uuid`, by the column's
///   collation for `text`), then column index: both columns of a row come
///   together, so a rotation rewrites each row once.
/// * **Scan** is keyset pagination on the primary key, one query per batch;
///   `skip_version` is applied in SQL from the header bytes (values already on
///   the target are never read) and `keyring` through the tenant column.
/// * **Replace** is one `UPDATE … FROM UNNEST(…)` per batch, compare-and-set per
///   value (`SET col = CASE WHEN t.col = v.old THEN v.new ELSE t.col END`,
///   `WHERE` at least one still matches), so a concurrent application write
///   always wins; transient failures (deadlock, serialization) are retried.
/// * **Census** is one `GROUP BY` over the header expression in SQL.
/// * Identifiers are always quoted ([`quote_ident`]); values are always
///   parameters. [`open`](Self::open) checks the table and every column (type,
///   uniqueness of the key) and names what is wrong.
#[derive(Clone)]
pub struct PgRecordSource {
    pool: PgPool,
    spec: TableSpec,
    name: String,
    context_table: String,
    built: Arc<Built>,
    /// The next batch being read while the caller works on the last one.
    read_ahead: Arc<Mutex<Option<ReadAhead>>>,
}

/// A scan already running for the request the caller is expected to make next.
struct ReadAhead {
    request: ScanRequest,
    task: JoinHandle<Result<Vec<StoredValue>>>,
}

impl fmt::Debug for PgRecordSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgRecordSource").field("name", &self.name).field("spec", &self.spec).finish_non_exhaustive()
    }
}

/// Binary values of this length or longer parse alike (see the census).
const CENSUS_LEN_CAP: i32 = 64;

/// The version the core parser reads from a binary value with this header
/// (its first bytes) and length, or `None` if it rejects it.
fn binary_census_version(header: &[u8], len: i32) -> Option<KeyVersion> {
    let len = usize::try_from(len).ok()?.max(header.len());
    let mut value = header.to_vec();
    value.resize(len, 0);
    version_of(&value).ok()
}

/// Attempts of one replace batch on transient errors.
const REPLACE_ATTEMPTS: u32 = 5;

impl PgRecordSource {
    /// Check `spec` against the database (the table exists; the key column is
    /// of the declared type, non-null and unique; the tenant column is text;
    /// every encrypted column is `bytea` for [`Form::Binary`] or `text`/`varchar`
    /// for [`Form::Text`]) and build the source. Errors name the object:
    /// [`Error::InvalidArgument`] for an unusable description,
    /// [`Error::Backend`] for what the database holds.
    pub async fn open(pool: PgPool, spec: TableSpec) -> Result<Self> {
        let built = build(&spec)?;
        let source = PgRecordSource {
            name: spec.source_name(),
            context_table: spec.context_table.clone().unwrap_or_else(|| spec.table.clone()),
            pool,
            spec,
            built: Arc::new(built),
            read_ahead: Arc::new(Mutex::new(None)),
        };
        source.check_catalog().await?;
        Ok(source)
    }

    /// The description it was built from.
    pub fn spec(&self) -> &TableSpec {
        &self.spec
    }

    /// The cursor of a value: column `column` (index into the spec's columns)
    /// of the row whose key, as text, is `key`.
    pub fn cursor(column: usize, key: &str) -> Cursor {
        Cursor(format!("{column}:{key}"))
    }

    fn object(&self) -> String {
        format!("table {}.{}", quote_or_raw(&self.spec.schema), quote_or_raw(&self.spec.table))
    }

    async fn check_catalog(&self) -> Result<()> {
        let client = self.pool.get().await?;
        let table = client
            .query_opt(
                "SELECT c.oid, c.relkind::text FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
                &[&self.spec.schema, &self.spec.table],
            )
            .await
            .map_err(on(SOURCE, "look up table"))?
            .ok_or_else(|| invalid(SOURCE, format!("{} does not exist", self.object())))?;
        let oid: u32 = table.try_get(0).map_err(on(SOURCE, "look up table"))?;
        let kind: String = table.try_get(1).map_err(on(SOURCE, "look up table"))?;
        if kind != "r" && kind != "p" {
            return Err(invalid(SOURCE, format!("{} is not a table (relkind {kind})", self.object())));
        }
        let rows = client
            .query(
                "SELECT attname::text, format_type(atttypid, NULL), attnotnull, attnum FROM pg_catalog.pg_attribute \
                 WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
                &[&oid],
            )
            .await
            .map_err(on(SOURCE, "look up columns"))?;
        let mut columns: HashMap<String, (String, bool, i16)> = HashMap::new();
        for r in rows {
            columns.insert(
                r.try_get(0).map_err(on(SOURCE, "look up columns"))?,
                (
                    r.try_get(1).map_err(on(SOURCE, "look up columns"))?,
                    r.try_get(2).map_err(on(SOURCE, "look up columns"))?,
                    r.try_get(3).map_err(on(SOURCE, "look up columns"))?,
                ),
            );
        }
        let column = |name: &str| {
            columns.get(name).ok_or_else(|| {
                invalid(SOURCE, format!("column {} of {} does not exist", quote_or_raw(name), self.object()))
            })
        };
        let wrong_type = |role: &str, name: &str, found: &str, expected: &str| {
            invalid(
                SOURCE,
                format!(
                    "{role} column {} of {} has type {found}; expected {expected}",
                    quote_or_raw(name),
                    self.object()
                ),
            )
        };
        let (key_type, not_null, attnum) = column(&self.spec.key)?;
        if !self.spec.key_type.accepts(key_type) {
            return Err(wrong_type("key", &self.spec.key, key_type, self.spec.key_type.expected()));
        }
        let unique: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = $1 AND i.indisunique \
                 AND i.indnkeyatts = 1 AND i.indkey[0] = $2 AND i.indpred IS NULL AND i.indexprs IS NULL)",
                &[&oid, attnum],
            )
            .await
            .map_err(on(SOURCE, "look up key index"))?
            .try_get(0)
            .map_err(on(SOURCE, "look up key index"))?;
        if !unique || !not_null {
            return Err(invalid(
                SOURCE,
                format!(
                    "key column {} of {} must be NOT NULL and have a unique index of its own (e.g. be the primary key)",
                    quote_or_raw(&self.spec.key),
                    self.object()
                ),
            ));
        }
        if let Some(KeyringFrom::TenantColumn { column: tenant, .. }) = &self.spec.keyring {
            let (t, _, _) = column(tenant)?;
            if !matches!(t.as_str(), "text" | "character varying") {
                return Err(wrong_type("tenant", tenant, t, "text or varchar"));
            }
        }
        for c in &self.spec.columns {
            let (t, _, _) = column(&c.name)?;
            let ok = match c.form {
                Form::Binary => t == "bytea",
                Form::Text => matches!(t.as_str(), "text" | "character varying"),
            };
            if !ok {
                let expected = match c.form {
                    Form::Binary => "bytea (binary form)",
                    Form::Text => "text or varchar (text form)",
                };
                return Err(wrong_type("encrypted", &c.name, t, expected));
            }
        }
        Ok(())
    }

    fn parse_cursor(&self, cursor: &Cursor) -> Result<(usize, Pk)> {
        let bad =
            |why: &str| Error::InvalidArgument(format!("cursor {cursor} is not a cursor of {}: {why}", self.name));
        let (col, key) = cursor.0.split_once(':').ok_or_else(|| bad("expected column:key"))?;
        let col: usize = col.parse().map_err(|_| bad("the column index is not a number"))?;
        if col >= self.built.columns.len() {
            return Err(bad("no such column index"));
        }
        let pk = match self.spec.key_type {
            KeyType::BigInt => Pk::Int(key.parse().map_err(|_| bad("the key is not a bigint"))?),
            KeyType::Uuid => Pk::Text(canonical_uuid(key).ok_or_else(|| bad("the key is not a uuid"))?),
            KeyType::Text => {
                if key.contains('\0') {
                    return Err(bad("the key contains NUL"));
                }
                Pk::Text(key.to_owned())
            }
        };
        Ok((col, pk))
    }

    fn read_pk(&self, row: &Row) -> Result<Pk> {
        match self.spec.key_type {
            KeyType::BigInt => Ok(Pk::Int(row.try_get(0).map_err(on(SOURCE, "read key"))?)),
            KeyType::Uuid | KeyType::Text => Ok(Pk::Text(row.try_get(0).map_err(on(SOURCE, "read key"))?)),
        }
    }

    fn keyring_of(&self, tenant: Option<String>, pk: &Pk) -> Result<KeyringId> {
        match &self.spec.keyring {
            Some(KeyringFrom::Fixed(k)) => Ok(k.clone()),
            Some(KeyringFrom::TenantColumn { column, purpose }) => {
                let tenant = tenant.ok_or_else(|| {
                    invalid(
                        SOURCE,
                        format!(
                            "row {} of {}: tenant column {} is NULL",
                            pk.as_text(),
                            self.object(),
                            quote_or_raw(column)
                        ),
                    )
                })?;
                KeyringId::new(tenant.clone(), purpose.clone()).map_err(|e| {
                    invalid(
                        SOURCE,
                        format!(
                            "row {} of {}: tenant {tenant:?} in column {} is not a valid keyring tenant: {e}",
                            pk.as_text(),
                            self.object(),
                            quote_or_raw(column)
                        ),
                    )
                })
            }
            None => Err(Error::InvalidArgument("TableSpec has no keyring".into())),
        }
    }

    /// `None`: the requested keyring cannot be in this table. `Some(tenant)`:
    /// filter on that tenant (if any).
    fn tenant_filter<'a>(&self, keyring: Option<&'a KeyringId>) -> Option<Option<&'a str>> {
        match (keyring, &self.spec.keyring) {
            (None, _) => Some(None),
            (Some(k), Some(KeyringFrom::Fixed(fixed))) => (k == fixed).then_some(None),
            (Some(k), Some(KeyringFrom::TenantColumn { purpose, .. })) => {
                (k.purpose() == purpose).then_some(Some(k.tenant()))
            }
            (Some(_), None) => None,
        }
    }

    async fn replace_round(&self, round: &Round, batch: &[Replacement], outcomes: &mut [ReplaceOutcome]) -> Result<()> {
        let b = &self.built;
        let present: Vec<usize> =
            (0..b.columns.len()).filter(|c| round.rows.iter().any(|r| r.cells[*c].is_some())).collect();
        let mut sets = Vec::new();
        let mut matches = Vec::new();
        let mut returns = Vec::new();
        let mut oks = Vec::new();
        let mut unnest = vec![format!("$1::{}", b.key_array)];
        let mut names = vec!["k".to_owned()];
        for (p, &c) in present.iter().enumerate() {
            let col = &b.columns[c];
            let array = match col.form {
                Form::Binary => "bytea[]",
                Form::Text => "text[]",
            };
            unnest.push(format!("${}::{array}", 2 * p + 2));
            unnest.push(format!("${}::{array}", 2 * p + 3));
            names.push(format!("o{c}"));
            names.push(format!("n{c}"));
            let q = &col.quoted;
            let matched = format!("(v.n{c} IS NOT NULL AND t.{q} = v.o{c})");
            sets.push(format!("{q} = CASE WHEN {matched} THEN v.n{c} ELSE t.{q} END"));
            matches.push(matched);
            returns.push(format!("(v.n{c} IS NOT NULL AND t.{q} = v.n{c}) AS r{c}"));
            oks.push(format!("(v.n{c} IS NULL OR t.{q} = v.n{c})"));
        }
        // Only the exceptions come back: rows updated with some value changed
        // concurrently, and rows not updated at all (every value changed or deleted).
        // Everything else was replaced; in the usual case the answer is empty.
        let flags: Vec<String> = present.iter().map(|c| format!("u.r{c}")).collect();
        let falses: Vec<&str> = present.iter().map(|_| "false").collect();
        let sql = format!(
            "WITH u AS (UPDATE {table} AS t SET {sets} FROM UNNEST({unnest}) AS v({names}) \
             WHERE t.{key} = v.k{cast} AND ({matches}) RETURNING v.k AS k, {returns}, ({oks}) AS ok) \
             SELECT u.k::text, {flags} FROM u WHERE NOT u.ok \
             UNION ALL SELECT m.k::text, {falses} FROM UNNEST($1::{key_array}) AS m(k) \
             WHERE NOT EXISTS (SELECT 1 FROM u WHERE u.k = m.k)",
            table = b.table,
            sets = sets.join(", "),
            unnest = unnest.join(", "),
            names = names.join(", "),
            key = b.key,
            cast = b.key_from_text,
            matches = matches.join(" OR "),
            returns = returns.join(", "),
            oks = oks.join(" AND "),
            flags = flags.join(", "),
            falses = falses.join(", "),
            key_array = b.key_array,
        );
        // Arrays, rows in key order (so concurrent batches lock rows in the same order).
        let keys_int: Vec<i64>;
        let keys_text: Vec<String>;
        let key_param: &(dyn ToSql + Sync) = match self.spec.key_type {
            KeyType::BigInt => {
                keys_int = round.rows.iter().map(|r| if let Pk::Int(n) = r.pk { n } else { 0 }).collect();
                &keys_int
            }
            KeyType::Uuid | KeyType::Text => {
                keys_text = round.rows.iter().map(|r| r.pk.as_text()).collect();
                &keys_text
            }
        };
        let mut bytes: Vec<Vec<Option<&[u8]>>> = Vec::new();
        let mut texts: Vec<Vec<Option<&str>>> = Vec::new();
        let mut order: Vec<(Form, usize)> = Vec::new();
        for &c in &present {
            let form = b.columns[c].form;
            for old in [true, false] {
                let cells = round
                    .rows
                    .iter()
                    .map(|r| r.cells[c].map(|i| if old { batch[i].old.as_slice() } else { batch[i].new.as_slice() }));
                match form {
                    Form::Binary => {
                        order.push((form, bytes.len()));
                        bytes.push(cells.collect());
                    }
                    Form::Text => {
                        order.push((form, texts.len()));
                        // Replacements of text columns were checked to be UTF-8 already.
                        texts.push(cells.map(|v| v.and_then(|v| std::str::from_utf8(v).ok())).collect());
                    }
                }
            }
        }
        let mut params: Vec<(&(dyn ToSql + Sync), Type)> = vec![(key_param, b.key_param.clone())];
        for (form, i) in &order {
            match form {
                Form::Binary => params.push((&bytes[*i], Type::BYTEA_ARRAY)),
                Form::Text => params.push((&texts[*i], Type::TEXT_ARRAY)),
            }
        }
        let mut attempt = 0;
        let rows = loop {
            attempt += 1;
            let result = self.query("replace batch", &sql, &params).await;
            match result {
                Ok(rows) => break rows,
                Err(e) if e.is_retryable() && attempt < REPLACE_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(5 << attempt)).await;
                }
                Err(e) => return Err(e),
            }
        };
        for i in round.rows.iter().flat_map(|r| r.cells.iter().flatten()) {
            outcomes[*i] = ReplaceOutcome::Replaced;
        }
        for row in rows {
            let key: String = row.try_get(0).map_err(on(SOURCE, "read replace result"))?;
            let Some(&slot) = round.by_text.get(&key) else { continue };
            for (p, &c) in present.iter().enumerate() {
                let replaced: bool = row.try_get(p + 1).map_err(on(SOURCE, "read replace result"))?;
                if !replaced && let Some(i) = round.rows[slot].cells[c] {
                    outcomes[i] = ReplaceOutcome::Changed;
                }
            }
        }
        Ok(())
    }

    /// Run one statement in its own short transaction with planner settings
    /// suited to batch work: no JIT (compiling the header expressions costs
    /// ~0.1 s per statement, more than a batch takes to run) and no parallel
    /// workers (starting them costs more than one keyset batch takes to read).
    async fn query(&self, what: &str, sql: &str, params: &[(&(dyn ToSql + Sync), Type)]) -> Result<Vec<Row>> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await.map_err(|e| self.sql_error(what, &e))?;
        tx.batch_execute("SET LOCAL jit = off; SET LOCAL max_parallel_workers_per_gather = 0")
            .await
            .map_err(|e| self.sql_error(what, &e))?;
        let rows = tx.query_typed(sql, params).await.map_err(|e| self.sql_error(what, &e))?;
        tx.commit().await.map_err(|e| self.sql_error(what, &e))?;
        Ok(rows)
    }

    /// A database error, naming the table for missing objects and type errors.
    fn sql_error(&self, what: &str, e: &tokio_postgres::Error) -> Error {
        let mut err = pg(SOURCE, &format!("{what} on {}", self.object()), e);
        if let (Error::Backend { message, .. }, Some(code)) = (&mut err, e.code()) {
            let c = code.code();
            if c == "42P01" || c == "42703" || c == "42804" || c == "42883" || c.starts_with("42") {
                message.push_str(" — check the TableSpec against the table's definition");
            }
        }
        err
    }
}

/// One statement's worth of replacements: each (row, column) at most once.
struct Round {
    rows: Vec<RoundRow>,
    /// Key text → index in `rows`.
    by_text: HashMap<String, usize>,
}

struct RoundRow {
    pk: Pk,
    /// Per column, the index of the replacement in the batch.
    cells: Vec<Option<usize>>,
}

fn quote_or_raw(name: &str) -> String {
    quote_ident(name).unwrap_or_else(|_| format!("{name:?}"))
}

/// The lower-case hyphenated form of a uuid, or `None`.
fn canonical_uuid(text: &str) -> Option<String> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let n = u128::from_str_radix(&hex, 16).ok()?;
    let h = format!("{n:032x}");
    Some(format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]))
}

fn build(spec: &TableSpec) -> Result<Built> {
    if spec.columns.is_empty() {
        return Err(Error::InvalidArgument(format!("TableSpec {}: no encrypted column", spec.source_name())));
    }
    if spec.keyring.is_none() {
        return Err(Error::InvalidArgument(format!(
            "TableSpec {}: say which keyring the values belong to (keyring or keyring_from_column)",
            spec.source_name()
        )));
    }
    let mut seen = vec![spec.key.as_str()];
    if let Some(KeyringFrom::TenantColumn { column, .. }) = &spec.keyring {
        seen.push(column);
    }
    for c in &spec.columns {
        if seen.contains(&c.name.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "TableSpec {}: column {:?} is used twice (key, tenant and encrypted columns must differ)",
                spec.source_name(),
                c.name
            )));
        }
        seen.push(&c.name);
    }
    let key = quote_ident(&spec.key)?;
    let (key_select, key_param, key_array, key_from_text) = match spec.key_type {
        KeyType::BigInt => (format!("t.{key}"), Type::INT8_ARRAY, "int8[]", ""),
        KeyType::Uuid => (format!("t.{key}::text"), Type::TEXT_ARRAY, "text[]", "::uuid"),
        KeyType::Text => (format!("t.{key}::text"), Type::TEXT_ARRAY, "text[]", ""),
    };
    let tenant = match &spec.keyring {
        Some(KeyringFrom::TenantColumn { column, .. }) => Some(quote_ident(column)?),
        _ => None,
    };
    let columns = spec
        .columns
        .iter()
        .map(|c| {
            let quoted = quote_ident(&c.name)?;
            let expr = format!("t.{quoted}");
            let version = match c.form {
                Form::Binary => any_version(&expr),
                Form::Text => text_column_version(&format!("{expr}::text")),
            };
            // Whether a binary form parses depends only on its first 8 bytes and its
            // length (any length from 64 on behaves alike), so the census groups
            // binary values by those and lets the core parser decide per group;
            // only text forms need the full check per row.
            let (is_text, bytes, text) = match c.form {
                Form::Binary => (
                    format!("substring({expr} FROM 1 FOR 3) = '\\x6b773a'::bytea"),
                    expr.clone(),
                    text_version(&format!("encode({expr}, 'escape')")),
                ),
                Form::Text => (
                    format!("left({expr}::text, 3) = 'kw:'"),
                    format!("convert_to({expr}::text, 'UTF8')"),
                    text_version(&format!("{expr}::text")),
                ),
            };
            let census = format!(
                "{is_text}, CASE WHEN {is_text} THEN NULL ELSE substring({bytes} FROM 1 FOR 8) END, \
                 CASE WHEN {is_text} THEN NULL ELSE least(octet_length({bytes}), {CENSUS_LEN_CAP}) END, \
                 CASE WHEN {is_text} THEN {text} END"
            );
            Ok(BuiltColumn { quoted, form: c.form, context_column: c.context_column.clone(), version, census })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Built {
        table: qualified(&spec.schema, &spec.table)?,
        key,
        key_select,
        key_param,
        key_array,
        key_from_text,
        tenant,
        columns,
    })
}

#[async_trait]
impl RecordSource for PgRecordSource {
    fn name(&self) -> &str {
        &self.name
    }

    async fn scan(&self, request: &ScanRequest) -> Result<Vec<StoredValue>> {
        if request.limit == 0 {
            return Err(Error::InvalidArgument("scan limit must be at least 1".into()));
        }
        let prefetched = {
            let mut slot = self.read_ahead.lock().unwrap_or_else(PoisonError::into_inner);
            match slot.take() {
                Some(p) if p.request == *request => Some(p.task),
                Some(p) => {
                    p.task.abort();
                    None
                }
                None => None,
            }
        };
        let values = match prefetched {
            Some(task) => match task.await {
                Ok(result) => result?,
                // The read-ahead task was cancelled or panicked: read again.
                Err(_) => self.scan_now(request).await?,
            },
            None => self.scan_now(request).await?,
        };
        if self.spec.read_ahead
            && let Some(last) = values.last()
        {
            let next = ScanRequest { after: Some(last.cursor.clone()), ..request.clone() };
            let this = self.clone();
            let ahead = next.clone();
            let task = tokio::spawn(async move { this.scan_now(&ahead).await });
            *self.read_ahead.lock().unwrap_or_else(PoisonError::into_inner) = Some(ReadAhead { request: next, task });
        }
        Ok(values)
    }

    async fn replace(&self, batch: &[Replacement]) -> Result<Vec<ReplaceOutcome>> {
        let mut outcomes = vec![ReplaceOutcome::Changed; batch.len()];
        let mut rounds: Vec<Round> = Vec::new();
        let ncols = self.built.columns.len();
        for (i, r) in batch.iter().enumerate() {
            let (col, pk) = self.parse_cursor(&r.cursor)?;
            if self.built.columns[col].form == Form::Text {
                if std::str::from_utf8(&r.new).is_err() {
                    return Err(Error::InvalidArgument(format!(
                        "replacement at {} of {}: the new value is not text, but the column holds the text form",
                        r.cursor, self.name
                    )));
                }
                if std::str::from_utf8(&r.old).is_err() {
                    // Cannot be what a text column holds: it changed (or never was).
                    continue;
                }
            }
            let key = pk.as_text();
            let round = rounds
                .iter()
                .position(|round| round.by_text.get(&key).is_none_or(|&slot| round.rows[slot].cells[col].is_none()));
            let round = match round {
                Some(n) => &mut rounds[n],
                None => {
                    rounds.push(Round { rows: Vec::new(), by_text: HashMap::new() });
                    let last = rounds.len() - 1;
                    &mut rounds[last]
                }
            };
            let slot = *round.by_text.entry(key).or_insert_with(|| {
                round.rows.push(RoundRow { pk, cells: vec![None; ncols] });
                round.rows.len() - 1
            });
            round.rows[slot].cells[col] = Some(i);
        }
        for mut round in rounds {
            // Key order, so concurrent batches lock rows in the same order.
            round.rows.sort_by(|a, b| a.pk.cmp(&b.pk));
            round.by_text = round.rows.iter().enumerate().map(|(i, r)| (r.pk.as_text(), i)).collect();
            self.replace_round(&round, batch, &mut outcomes).await?;
        }
        Ok(outcomes)
    }

    async fn census(&self, keyring: Option<&KeyringId>) -> Result<Census> {
        let mut census = Census::default();
        let Some(tenant) = self.tenant_filter(keyring) else {
            return Ok(census);
        };
        let b = &self.built;
        let tenant_owned = tenant.map(str::to_owned);
        let mut params: Vec<(&(dyn ToSql + Sync), Type)> = Vec::new();
        let mut filter = String::new();
        if let (Some(t), Some(col)) = (&tenant_owned, &b.tenant) {
            params.push((t, Type::TEXT));
            filter = format!(" AND t.{col} = $1");
        }
        let tenant_select = b.tenant.as_ref().map_or_else(|| "NULL::text".to_owned(), |t| format!("t.{t}::text"));
        // One pass over the table, grouped by every column's header key at once
        // (few groups: versions × algorithms × short lengths). Per-column
        // aggregates glued with UNION ALL would read the table once per column;
        // a LATERAL VALUES over the columns makes the planner memoize on every
        // column reference, ten times slower.
        let keys: Vec<String> = b.columns.iter().map(|c| format!("t.{} IS NOT NULL, {}", c.quoted, c.census)).collect();
        let any_present: Vec<String> = b.columns.iter().map(|c| format!("t.{} IS NOT NULL", c.quoted)).collect();
        let group: Vec<String> = (1..=1 + 5 * b.columns.len()).map(|i| i.to_string()).collect();
        let sql = format!(
            "SELECT {tenant_select}, {keys}, count(*)::bigint FROM {table} AS t WHERE ({any}){filter} GROUP BY {group}",
            keys = keys.join(", "),
            table = b.table,
            any = any_present.join(" OR "),
            group = group.join(", "),
        );
        let rows = self.query("census", &sql, &params).await?;
        let count_at = 1 + 5 * b.columns.len();
        for row in rows {
            let read = on(SOURCE, "read census");
            let tenant: Option<String> = row.try_get(0).map_err(&read)?;
            let count: i64 = row.try_get(count_at).map_err(&read)?;
            let count = u64::try_from(count).unwrap_or(0);
            for i in 0..b.columns.len() {
                let at = 1 + 5 * i;
                let present: bool = row.try_get(at).map_err(&read)?;
                if !present {
                    continue;
                }
                let is_text: bool = row.try_get(at + 1).map_err(&read)?;
                let version = if is_text {
                    let v: Option<i64> = row.try_get(at + 4).map_err(&read)?;
                    v.and_then(|v| u32::try_from(v).ok()).and_then(|v| KeyVersion::new(v).ok())
                } else {
                    let header: Vec<u8> = row.try_get(at + 2).map_err(&read)?;
                    let len: i32 = row.try_get(at + 3).map_err(&read)?;
                    binary_census_version(&header, len)
                };
                match version {
                    Some(v) => {
                        let keyring = self.keyring_of(tenant.clone(), &Pk::Text("(census)".into()))?;
                        census.add(&keyring, v, count);
                    }
                    None => census.unparseable += count,
                }
            }
        }
        Ok(census)
    }
}

impl PgRecordSource {
    async fn scan_now(&self, request: &ScanRequest) -> Result<Vec<StoredValue>> {
        if request.limit == 0 {
            return Err(Error::InvalidArgument("scan limit must be at least 1".into()));
        }
        let Some(tenant) = self.tenant_filter(request.keyring.as_ref()) else {
            return Ok(Vec::new());
        };
        let b = &self.built;
        let after = request.after.as_ref().map(|c| self.parse_cursor(c)).transpose()?;
        let mut conds = Vec::new();
        let after_int: i64;
        let after_text: String;
        let tenant_owned: Option<String> = tenant.map(str::to_owned);
        let skip: Option<i64> = request.skip_version.map(|v| i64::from(v.get()));
        let limit = i64::try_from(request.limit).unwrap_or(i64::MAX - 1).saturating_add(1);
        let skip_bytes: Vec<u8> = request.skip_version.map_or_else(Vec::new, |v| v.get().to_be_bytes().to_vec());
        let skip_prefix: String = request.skip_version.map_or_else(String::new, |v| format!("kw:v{}:", v.get()));
        let mut params: Vec<(&(dyn ToSql + Sync), Type)> = Vec::new();
        if let Some((col, pk)) = &after {
            let op = if *col + 1 >= b.columns.len() { ">" } else { ">=" };
            match pk {
                Pk::Int(n) => {
                    after_int = *n;
                    params.push((&after_int, Type::INT8));
                }
                Pk::Text(s) => {
                    after_text = s.clone();
                    params.push((&after_text, Type::TEXT));
                }
            }
            conds.push(format!("t.{} {op} ${}{}", b.key, params.len(), self.key_cast()));
        }
        if let (Some(t), Some(col)) = (&tenant_owned, &b.tenant) {
            params.push((t, Type::TEXT));
            conds.push(format!("t.{col} = ${}", params.len()));
        }
        let per_column: Vec<String> = match &skip {
            Some(v) => {
                params.push((v, Type::INT8));
                let n = params.len();
                params.push((&skip_bytes, Type::BYTEA));
                let nb = params.len();
                params.push((&skip_prefix, Type::TEXT));
                let np = params.len();
                b.columns
                    .iter()
                    .map(|c| {
                        // Cheap tests first: a header that does not name the target
                        // version is yielded without the full validity check.
                        let fast = match c.form {
                            Form::Binary => format!(
                                "substring(t.{q} FROM 5 FOR 4) <> ${nb} OR substring(t.{q} FROM 1 FOR 3) = '\\x6b773a'::bytea",
                                q = c.quoted
                            ),
                            Form::Text => format!("NOT starts_with(t.{q}::text, ${np})", q = c.quoted),
                        };
                        format!(
                            "(t.{q} IS NOT NULL AND ({fast} OR ({ver}) IS DISTINCT FROM ${n}))",
                            q = c.quoted,
                            ver = c.version
                        )
                    })
                    .collect()
            }
            None => b.columns.iter().map(|c| format!("t.{} IS NOT NULL", c.quoted)).collect(),
        };
        conds.push(format!("({})", per_column.join(" OR ")));
        params.push((&limit, Type::INT8));
        let sql = format!(
            "SELECT {key_select}, {tenant}, {cols} FROM {table} AS t WHERE {conds} ORDER BY t.{key} LIMIT ${n}",
            key_select = b.key_select,
            tenant = b.tenant.as_ref().map_or_else(|| "NULL::text".to_owned(), |t| format!("t.{t}::text")),
            cols = b.columns.iter().map(|c| format!("t.{}", c.quoted)).collect::<Vec<_>>().join(", "),
            table = b.table,
            conds = conds.join(" AND "),
            key = b.key,
            n = params.len(),
        );
        let rows = {
            let mut client = self.pool.get().await?;
            // A parallel plan costs more to start than one keyset batch takes to read.
            let tx = client.transaction().await.map_err(on(SOURCE, "begin scan"))?;
            tx.batch_execute("SET LOCAL max_parallel_workers_per_gather = 0")
                .await
                .map_err(on(SOURCE, "scan settings"))?;
            let rows = tx.query_typed(&sql, &params).await.map_err(|e| self.sql_error("scan", &e))?;
            tx.commit().await.map_err(on(SOURCE, "end scan"))?;
            rows
        };
        let mut out = Vec::with_capacity(request.limit);
        'rows: for row in rows {
            let pk = self.read_pk(&row)?;
            let tenant: Option<String> = row.try_get(1).map_err(on(SOURCE, "read tenant"))?;
            let mut keyring = None;
            let pk_text = pk.as_text();
            for (i, c) in b.columns.iter().enumerate() {
                if let Some((after_col, after_pk)) = &after
                    && *after_pk == pk
                    && i <= *after_col
                {
                    continue;
                }
                let value: Option<Vec<u8>> = match c.form {
                    Form::Binary => row.try_get(i + 2).map_err(on(SOURCE, "read value"))?,
                    Form::Text => row
                        .try_get::<_, Option<String>>(i + 2)
                        .map_err(on(SOURCE, "read value"))?
                        .map(String::into_bytes),
                };
                let Some(value) = value else { continue };
                if let Some(skip) = request.skip_version
                    && version_of(&value) == Ok(skip)
                {
                    continue;
                }
                if keyring.is_none() {
                    keyring = Some(self.keyring_of(tenant.clone(), &pk)?);
                }
                let Some(keyring) = keyring.clone() else { continue };
                out.push(StoredValue {
                    cursor: Self::cursor(i, &pk_text),
                    keyring,
                    context: Context::field(&self.context_table, &c.context_column, &pk_text),
                    value,
                });
                if out.len() == request.limit {
                    break 'rows;
                }
            }
        }
        Ok(out)
    }

    fn key_cast(&self) -> &'static str {
        match self.spec.key_type {
            KeyType::BigInt => "",
            KeyType::Uuid => "::uuid",
            KeyType::Text => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_canonicalised() {
        assert_eq!(
            canonical_uuid("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11").as_deref(),
            Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        );
        assert_eq!(
            canonical_uuid("a0eebc999c0b4ef8bb6d6bb9bd380a11").as_deref(),
            Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        );
        assert_eq!(canonical_uuid("nope"), None);
        assert_eq!(canonical_uuid("g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), None);
    }

    #[test]
    fn binary_census_groups_parse_like_values() {
        let header = [b'k', b'w', 1, 1, 0, 0, 0, 7];
        assert_eq!(binary_census_version(&header, 36), KeyVersion::new(7).ok());
        assert_eq!(binary_census_version(&header, 64), KeyVersion::new(7).ok());
        assert_eq!(binary_census_version(&header, 35), None, "truncated");
        assert_eq!(binary_census_version(&header[..5], 5), None, "shorter than a header");
        let hmac = [b'k', b'w', 1, 0x10, 0, 0, 0, 2];
        assert_eq!(binary_census_version(&hmac, 40), KeyVersion::new(2).ok());
        assert_eq!(binary_census_version(&hmac, CENSUS_LEN_CAP), None, "signatures have an exact length");
        assert_eq!(binary_census_version(&[b'k', b'w', 1, 1, 0, 0, 0, 0], 40), None, "version 0");
    }

    #[test]
    fn spec_checks() {
        let id = KeyringId::new("t", Purpose::Database).expect("id");
        assert!(build(&TableSpec::new("s", "t").keyring(id.clone())).is_err(), "no column");
        assert!(build(&TableSpec::new("s", "t").column("c", Form::Binary)).is_err(), "no keyring");
        assert!(build(&TableSpec::new("s", "t").keyring(id.clone()).column("id", Form::Binary)).is_err(), "key twice");
        assert!(
            build(&TableSpec::new("s", "t").keyring(id).column("c", Form::Binary).column("c", Form::Text)).is_err()
        );
    }
}
