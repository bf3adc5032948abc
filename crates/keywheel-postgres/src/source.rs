//! [`PgRecordSource`]: the encrypted columns of an application table.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::{FutureExt, TryStreamExt};
use tokio::task::JoinHandle;

use keywheel_core::{
    Census, Context, Cursor, Error, Form, KeyVersion, KeyringId, Purpose, RecordSource, ReplaceOutcome, Replacement,
    Result, ScanRequest, StoredValue, ValueLocation, async_trait, version_of,
};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row};

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

    /// Check the description without a database: a keyring and at least one
    /// encrypted column, valid identifiers, no column used twice. The same
    /// check [`PgRecordSource::open`] makes before it reads the catalog.
    ///
    /// ```
    /// use keywheel_core::{Form, Purpose};
    /// use keywheel_postgres::TableSpec;
    ///
    /// let spec = TableSpec::new("public", "users").keyring_from_column("tenant", Purpose::Token);
    /// assert!(spec.clone().column("token", Form::Binary).check().is_ok());
    /// assert!(spec.clone().check().is_err(), "no encrypted column");
    /// assert!(spec.column("tenant", Form::Binary).check().is_err(), "the tenant column twice");
    /// ```
    pub fn check(&self) -> Result<()> {
        build(self).map(|_| ())
    }

    /// Whether a source built from this spec holds the values of `keyring`
    /// in its table ([`RecordSource::covers`]): its fixed keyring, or any
    /// keyring of its purpose when keyrings come from a tenant column.
    pub fn covers(&self, keyring: &KeyringId) -> bool {
        match &self.keyring {
            Some(KeyringFrom::Fixed(fixed)) => fixed == keyring,
            Some(KeyringFrom::TenantColumn { purpose, .. }) => keyring.purpose() == purpose,
            None => false,
        }
    }

    /// Where the value at `cursor` (a cursor of a source built from this
    /// spec, [`PgRecordSource::cursor`]) lives: `schema.table`, the column's
    /// name and the primary key. `None` if the cursor is not of this form or
    /// names a column index the spec does not have. Needs no database, so a
    /// job's failures can be located from the configuration alone.
    ///
    /// ```
    /// use keywheel_core::Form;
    /// use keywheel_postgres::{PgRecordSource, TableSpec};
    /// let spec = TableSpec::new("public", "users").column("email", Form::Binary).column("token", Form::Binary);
    /// let at = spec.locate(&PgRecordSource::cursor(1, "42")).expect("a cursor of this spec");
    /// assert_eq!((at.table.as_str(), at.column.as_str(), at.key.as_str()), ("public.users", "token", "42"));
    /// assert!(spec.locate(&PgRecordSource::cursor(2, "42")).is_none());
    /// ```
    pub fn locate(&self, cursor: &Cursor) -> Option<ValueLocation> {
        let (index, key) = cursor.0.split_once(':')?;
        let column = self.columns.get(index.parse::<usize>().ok()?)?;
        Some(ValueLocation::new(format!("{}.{}", self.schema, self.table), column.name.clone(), key))
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
    /// Census grouping: `first 8 bytes (NULL for a NULL value), length in
    /// bytes (capped at 64), version of a text form (NULL for other values)`.
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
/// * **Replace** is one `UPDATE … FROM UNNEST(…)` per batch that finds the rows
///   through the key's index and writes the rows whose values all still hold
///   what was read (`WHERE t.col = v.old AND …`), committed only if that is
///   every row of the batch (the usual case: one statement, no answer but a
///   row count). Otherwise it is rolled back and a careful statement
///   compares and sets value by value (`SET col = CASE WHEN t.col = v.old
///   THEN v.new ELSE t.col END`) and names the values that changed. Either
///   way a concurrent application write always wins; transient failures
///   (deadlock, serialization) are retried.
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
    /// Scan statements by shape, built on first use.
    scan_sql: Arc<Mutex<HashMap<ScanShape, Arc<str>>>>,
}

/// What a scan statement filters on (its text and parameters depend on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ScanShape {
    /// Reads after a key: `Some(true)` after the row's last column (the next
    /// row on), `Some(false)` within a row (that row on).
    after: Option<bool>,
    /// Filters on the tenant column.
    tenant: bool,
    /// Leaves out values on a version.
    skip: bool,
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

/// Census grouping keys per column ([`BuiltColumn::census`]).
const CENSUS_KEYS: usize = 3;

/// The version the core parser reads from a binary value with this header
/// (its first bytes) and length, or `None` if it rejects it.
fn binary_census_version(header: &[u8], len: i32) -> Option<KeyVersion> {
    let len = usize::try_from(len).ok()?.max(header.len());
    let mut value = header.to_vec();
    value.resize(len, 0);
    version_of(&value).ok()
}

/// Begins the transaction of a scan, census or careful replacement: no JIT
/// (compiling the header expressions costs ~0.1 s per statement, more than a
/// batch takes to run) and no parallel workers (starting them costs more than
/// one keyset batch takes to read).
const BEGIN_BATCH: &str = "BEGIN; SET LOCAL jit = off; SET LOCAL max_parallel_workers_per_gather = 0";

/// Begins the transaction of a fast replacement: no JIT, and the rows are
/// found by key through the key's unique index (a nested loop over the
/// batch). On a table of up to a few hundred thousand rows the planner would
/// otherwise hash or merge the whole table (or index) against every batch,
/// five to ten times slower, and more as the table grows between statistics.
const BEGIN_REPLACE: &str =
    "BEGIN; SET LOCAL jit = off; SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off";

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
            scan_sql: Arc::new(Mutex::new(HashMap::new())),
        };
        source.check_catalog().await?;
        Ok(source)
    }

    /// The description it was built from.
    pub fn spec(&self) -> &TableSpec {
        &self.spec
    }

    /// The keyrings this table's values belong to: the fixed keyring, or one
    /// per distinct value of the tenant column (`SELECT DISTINCT`; NULL
    /// tenants are skipped), sorted. A tenant that is not a valid keyring
    /// tenant is a (permanent) [`Error::Backend`] naming it, as when a scan meets it.
    pub async fn keyrings(&self) -> Result<Vec<KeyringId>> {
        let purpose = match &self.spec.keyring {
            Some(KeyringFrom::Fixed(k)) => return Ok(vec![k.clone()]),
            Some(KeyringFrom::TenantColumn { purpose, .. }) => purpose,
            None => return Err(Error::InvalidArgument("TableSpec has no keyring".into())),
        };
        let Some(column) = &self.built.tenant else {
            return Err(Error::InvalidArgument("TableSpec has no tenant column".into()));
        };
        let sql = format!(
            "SELECT DISTINCT t.{column}::text FROM {table} AS t WHERE t.{column} IS NOT NULL ORDER BY 1",
            table = self.built.table
        );
        let rows = self.query("list tenants", &sql, &[]).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let tenant: String = row.try_get(0).map_err(on(SOURCE, "read tenant"))?;
            out.push(KeyringId::new(tenant.clone(), purpose.clone()).map_err(|e| {
                invalid(
                    SOURCE,
                    format!(
                        "{}: tenant {tenant:?} in column {column} is not a valid keyring tenant: {e}",
                        self.object()
                    ),
                )
            })?);
        }
        out.sort();
        Ok(out)
    }

    /// The cursor of a value: column `column` (index into the spec's columns)
    /// of the row whose key, as text, is `key`.
    pub fn cursor(column: usize, key: &str) -> Cursor {
        let mut text = String::with_capacity(key.len() + 4);
        if let Some(digit) = u32::try_from(column).ok().and_then(|c| char::from_digit(c, 10)) {
            text.push(digit);
        } else {
            text.push_str(&column.to_string());
        }
        text.push(':');
        text.push_str(key);
        Cursor(text)
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

    /// Compare-and-set one round. First the fast statement, in a transaction:
    /// every row whose values all still hold what was read gets all its new
    /// values, and only the number of updated rows comes back. When that is
    /// every row (the usual case) it commits: all values were replaced.
    /// Otherwise some value changed concurrently: it rolls back, and the
    /// careful statement replaces, value by value, whatever still holds what
    /// was read and names the values that did not.
    async fn replace_round(&self, round: &Round, batch: &[Replacement], outcomes: &mut [ReplaceOutcome]) -> Result<()> {
        let b = &self.built;
        let present: Vec<usize> =
            (0..b.columns.len()).filter(|c| round.rows().any(|(_, cells)| cells[*c].is_some())).collect();
        // Whether every row has a value in every present column.
        let full = round.rows().all(|(_, cells)| present.iter().all(|c| cells[*c].is_some()));
        // Arrays, rows in key order (so concurrent batches lock rows in the same order).
        let keys_int: Vec<i64>;
        let keys_text: Vec<String>;
        let key_param: &(dyn ToSql + Sync) = match self.spec.key_type {
            KeyType::BigInt => {
                keys_int = round.keys.iter().map(|pk| if let Pk::Int(n) = pk { *n } else { 0 }).collect();
                &keys_int
            }
            KeyType::Uuid | KeyType::Text => {
                keys_text = round.keys.iter().map(Pk::as_text).collect();
                &keys_text
            }
        };
        let mut bytes: Vec<Vec<Option<&[u8]>>> = Vec::new();
        let mut texts: Vec<Vec<Option<&str>>> = Vec::new();
        let mut order: Vec<(Form, usize)> = Vec::new();
        for &c in &present {
            let form = b.columns[c].form;
            for old in [true, false] {
                let cells = round.rows().map(|(_, cells)| {
                    cells[c].map(|i| if old { batch[i].old.as_slice() } else { batch[i].new.as_slice() })
                });
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
        let fast = self.fast_replace_sql(&present, full);
        let rows = round.len();
        let all_replaced = self
            .retrying(|| async {
                let what = "replace batch";
                let client = self.pool.get().await?;
                // One round trip for BEGIN and the statement, one for COMMIT (or
                // ROLLBACK); dropped in between, the guard rolls back.
                let guard = RollbackOnDrop(Some(&client));
                let (begun, updated) =
                    futures::join!(client.batch_execute(BEGIN_REPLACE), client.execute_typed(&fast, &params));
                // Without BEGIN the statement ran on its own: its outcome is unknown.
                begun.map_err(|e| self.sql_error(what, &e))?;
                let updated = updated.map_err(|e| self.sql_error(what, &e))?;
                let all = usize::try_from(updated).is_ok_and(|n| n == rows);
                client
                    .batch_execute(if all { "COMMIT" } else { "ROLLBACK" })
                    .await
                    .map_err(|e| self.sql_error(what, &e))?;
                guard.disarm();
                Ok(all)
            })
            .await?;
        for i in round.cells.iter().flatten() {
            outcomes[*i] = ReplaceOutcome::Replaced;
        }
        if all_replaced {
            return Ok(());
        }
        let careful = self.careful_replace_sql(&present);
        let rows = self.retrying(|| self.query("replace batch", &careful, &params)).await?;
        if rows.is_empty() {
            return Ok(());
        }
        let slots: HashMap<&Pk, usize> = round.keys.iter().enumerate().map(|(i, k)| (k, i)).collect();
        for row in rows {
            let key: String = row.try_get(0).map_err(on(SOURCE, "read replace result"))?;
            let pk = match self.spec.key_type {
                KeyType::BigInt => match key.parse() {
                    Ok(n) => Pk::Int(n),
                    Err(_) => continue,
                },
                KeyType::Uuid | KeyType::Text => Pk::Text(key),
            };
            let Some(&slot) = slots.get(&pk) else { continue };
            let cells = round.cells(slot);
            for (p, &c) in present.iter().enumerate() {
                let replaced: bool = row.try_get(p + 1).map_err(on(SOURCE, "read replace result"))?;
                if !replaced && let Some(i) = cells[c] {
                    outcomes[i] = ReplaceOutcome::Changed;
                }
            }
        }
        Ok(())
    }

    /// Repeat `attempt` on transient failures (deadlock, serialization, lost
    /// connection), [`REPLACE_ATTEMPTS`] times at most.
    async fn retrying<T, F, Fut>(&self, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut n = 0;
        loop {
            n += 1;
            match attempt().await {
                Err(e) if e.is_retryable() && n < REPLACE_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(5 << n)).await;
                }
                result => return result,
            }
        }
    }

    /// The fast compare-and-set of a round (parameters: keys, then per present
    /// column its old and new values): rows whose every value still holds what
    /// was read get all their new values. `full`: every row has a value in
    /// every present column.
    fn fast_replace_sql(&self, present: &[usize], full: bool) -> String {
        let b = &self.built;
        let (unnest, names) = self.round_arrays(present);
        let mut sets = Vec::new();
        let mut conds = vec![format!("t.{} = v.k{}", b.key, b.key_from_text)];
        for &c in present {
            let q = &b.columns[c].quoted;
            if full {
                sets.push(format!("{q} = v.n{c}"));
                conds.push(format!("t.{q} = v.o{c}"));
            } else {
                sets.push(format!("{q} = COALESCE(v.n{c}, t.{q})"));
                conds.push(format!("(v.n{c} IS NULL OR t.{q} = v.o{c})"));
            }
        }
        format!(
            "UPDATE {table} AS t SET {sets} FROM UNNEST({unnest}) AS v({names}) WHERE {conds}",
            table = b.table,
            sets = sets.join(", "),
            conds = conds.join(" AND "),
        )
    }

    /// The careful compare-and-set of a round (same parameters as the fast
    /// one): each value that still holds what was read gets its new value.
    /// Only the exceptions come back, one row per key: rows updated with some
    /// value changed concurrently, and rows not updated at all (every value
    /// changed or deleted); the key as text, then per present column whether
    /// its value was replaced.
    fn careful_replace_sql(&self, present: &[usize]) -> String {
        let b = &self.built;
        let (unnest, names) = self.round_arrays(present);
        let mut sets = Vec::new();
        let mut matches = Vec::new();
        let mut returns = Vec::new();
        let mut oks = Vec::new();
        for &c in present {
            let q = &b.columns[c].quoted;
            let matched = format!("(v.n{c} IS NOT NULL AND t.{q} = v.o{c})");
            sets.push(format!("{q} = CASE WHEN {matched} THEN v.n{c} ELSE t.{q} END"));
            matches.push(matched);
            returns.push(format!("(v.n{c} IS NOT NULL AND t.{q} = v.n{c}) AS r{c}"));
            oks.push(format!("(v.n{c} IS NULL OR t.{q} = v.n{c})"));
        }
        let flags: Vec<String> = present.iter().map(|c| format!("u.r{c}")).collect();
        let falses: Vec<&str> = present.iter().map(|_| "false").collect();
        format!(
            "WITH u AS (UPDATE {table} AS t SET {sets} FROM UNNEST({unnest}) AS v({names}) \
             WHERE t.{key} = v.k{cast} AND ({matches}) RETURNING v.k AS k, {returns}, ({oks}) AS ok) \
             SELECT u.k::text, {flags} FROM u WHERE NOT u.ok \
             UNION ALL SELECT m.k::text, {falses} FROM UNNEST($1::{key_array}) AS m(k) \
             WHERE NOT EXISTS (SELECT 1 FROM u WHERE u.k = m.k)",
            table = b.table,
            sets = sets.join(", "),
            key = b.key,
            cast = b.key_from_text,
            matches = matches.join(" OR "),
            returns = returns.join(", "),
            oks = oks.join(" AND "),
            flags = flags.join(", "),
            falses = falses.join(", "),
            key_array = b.key_array,
        )
    }

    /// `UNNEST` arguments and column names of a round's parameters.
    fn round_arrays(&self, present: &[usize]) -> (String, String) {
        let b = &self.built;
        let mut unnest = vec![format!("$1::{}", b.key_array)];
        let mut names = vec!["k".to_owned()];
        for (p, &c) in present.iter().enumerate() {
            let array = match b.columns[c].form {
                Form::Binary => "bytea[]",
                Form::Text => "text[]",
            };
            unnest.push(format!("${}::{array}", 2 * p + 2));
            unnest.push(format!("${}::{array}", 2 * p + 3));
            names.push(format!("o{c}"));
            names.push(format!("n{c}"));
        }
        (unnest.join(", "), names.join(", "))
    }

    /// Run one statement in its own short transaction with planner settings
    /// suited to batch work ([`BEGIN_BATCH`]).
    async fn query(&self, what: &str, sql: &str, params: &[(&(dyn ToSql + Sync), Type)]) -> Result<Vec<Row>> {
        let client = self.pool.get().await?;
        let statement = async { client.query_typed(sql, params).await.map_err(|e| self.sql_error(what, &e)) };
        self.in_batch_transaction(what, &client, BEGIN_BATCH, statement).await
    }

    /// Run `statement` (a future of requests on `client`) in its own short
    /// transaction, begun by `begin` (`BEGIN` and planner settings, e.g.
    /// [`BEGIN_BATCH`]).
    ///
    /// `BEGIN` with the settings, the statement and `COMMIT` are sent at once
    /// (pipelined, one round trip) and run in that order; if the statement
    /// fails, the `COMMIT` ends the aborted transaction (as a rollback). Since
    /// every message is sent before the first answer is awaited, a caller
    /// dropped midway still leaves the connection outside any transaction.
    ///
    /// tokio-postgres sends a request when its future is first polled; the
    /// statement must send its one request before awaiting anything (a typed
    /// query, `query_typed*`/`execute_typed`: a statement given as text to
    /// `query`/`execute` is prepared first, in a round trip of its own).
    async fn in_batch_transaction<T, F>(&self, what: &str, client: &Client, begin: &str, statement: F) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        let begin = client.batch_execute(begin);
        let commit = client.batch_execute("COMMIT");
        // `join!` polls in argument order, so the requests go out in this order.
        let (begun, result, committed) = futures::join!(begin, statement, commit);
        begun.map_err(|e| self.sql_error(what, &e))?;
        let value = result?;
        committed.map_err(|e| self.sql_error(what, &e))?;
        Ok(value)
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
    /// The rows' keys.
    keys: Vec<Pk>,
    /// Per row and column (`keys.len()` × columns), the index of the
    /// replacement in the batch.
    cells: Vec<Option<usize>>,
    /// Key → row, once keys came out of order (in scan order they come
    /// ascending, and no map is needed to find a row).
    slots: Option<HashMap<Pk, usize>>,
}

impl Round {
    fn len(&self) -> usize {
        self.keys.len()
    }

    /// The row of `pk`, if the round has it.
    fn slot_of(&mut self, pk: &Pk) -> Option<usize> {
        let last = self.keys.last()?;
        if last == pk {
            return Some(self.keys.len() - 1);
        }
        if self.slots.is_none() {
            if pk > last {
                // Keys so far ascend: a greater key is not among them.
                return None;
            }
            self.slots = Some(self.keys.iter().enumerate().map(|(i, k)| (k.clone(), i)).collect());
        }
        self.slots.as_ref().and_then(|s| s.get(pk).copied())
    }

    /// Add a row (not yet in the round) without values; returns its slot.
    fn push(&mut self, pk: Pk, ncols: usize) -> usize {
        let slot = self.keys.len();
        if let Some(slots) = &mut self.slots {
            slots.insert(pk.clone(), slot);
        }
        self.keys.push(pk);
        self.cells.resize(self.cells.len() + ncols, None);
        slot
    }

    fn cells(&self, slot: usize) -> &[Option<usize>] {
        let ncols = self.cells.len() / self.keys.len().max(1);
        &self.cells[slot * ncols..(slot + 1) * ncols]
    }

    fn cells_mut(&mut self, slot: usize, ncols: usize) -> &mut [Option<usize>] {
        &mut self.cells[slot * ncols..(slot + 1) * ncols]
    }

    /// Put the rows in key order (forgets the key map).
    fn sort(&mut self, ncols: usize) {
        if self.slots.take().is_none() {
            return; // already ascending
        }
        let mut order: Vec<usize> = (0..self.keys.len()).collect();
        order.sort_by(|a, b| self.keys[*a].cmp(&self.keys[*b]));
        let keys = order.iter().map(|&i| self.keys[i].clone()).collect();
        let cells = order.iter().flat_map(|&i| self.cells[i * ncols..(i + 1) * ncols].iter().copied()).collect();
        self.keys = keys;
        self.cells = cells;
    }

    /// The rows: key and per column the index of the replacement, in order.
    fn rows(&self) -> impl Iterator<Item = (&Pk, &[Option<usize>])> {
        let ncols = self.cells.len() / self.keys.len().max(1);
        self.keys.iter().zip(self.cells.chunks(ncols.max(1)))
    }
}

/// Rolls back the transaction of a connection when dropped before
/// [`disarm`](Self::disarm), so that a caller dropped midway (a cancelled
/// rotation) never returns a connection inside a transaction to the pool.
struct RollbackOnDrop<'a>(Option<&'a Client>);

impl RollbackOnDrop<'_> {
    /// The transaction ended normally.
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RollbackOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            // A simple query is sent when its future is first polled; the answer
            // is not awaited (the connection discards it). Statements sent after
            // it on the same connection run after it.
            let _ = client.batch_execute("ROLLBACK").now_or_never();
        }
    }
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
            // values by those and lets the core parser decide per group; only text
            // forms (recognised by their first bytes, `kw:`; as a range of bytea
            // values, which needs no substring) need the full check per row.
            let census = match c.form {
                Form::Binary => format!(
                    "substring({expr} FROM 1 FOR 8), least(octet_length({expr}), {CENSUS_LEN_CAP}), \
                     CASE WHEN {expr} >= '\\x6b773a'::bytea AND {expr} < '\\x6b773b'::bytea THEN {text} END",
                    text = text_version(&format!("encode({expr}, 'escape')")),
                ),
                // The first 8 (or 64) characters have at least 8 (or 64) bytes.
                Form::Text => format!(
                    "substring(convert_to(left({expr}::text, 8), 'UTF8') FROM 1 FOR 8), \
                     least(octet_length(convert_to(left({expr}::text, {CENSUS_LEN_CAP}), 'UTF8')), {CENSUS_LEN_CAP}), \
                     CASE WHEN starts_with({expr}::text, 'kw:') THEN {text} END",
                    text = text_version(&format!("{expr}::text")),
                ),
            };
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

    fn locate(&self, cursor: &Cursor) -> Option<ValueLocation> {
        self.spec.locate(cursor)
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
            // The first round that does not have this (row, column) yet.
            let mut n = 0;
            loop {
                if n == rounds.len() {
                    // Usually one round holds the whole batch: room for its rows (in
                    // scan order a row's values come together).
                    let rows = if n == 0 { batch.len().div_ceil(ncols) } else { 0 };
                    rounds.push(Round {
                        keys: Vec::with_capacity(rows),
                        cells: Vec::with_capacity(rows * ncols),
                        slots: None,
                    });
                }
                let round = &mut rounds[n];
                match round.slot_of(&pk) {
                    Some(slot) if round.cells(slot)[col].is_some() => n += 1,
                    Some(slot) => {
                        round.cells_mut(slot, ncols)[col] = Some(i);
                        break;
                    }
                    None => {
                        let slot = round.push(pk, ncols);
                        round.cells_mut(slot, ncols)[col] = Some(i);
                        break;
                    }
                }
            }
        }
        for mut round in rounds {
            // Key order, so concurrent batches lock rows in the same order.
            round.sort(ncols);
            self.replace_round(&round, batch, &mut outcomes).await?;
        }
        Ok(outcomes)
    }

    fn covers(&self, keyring: &KeyringId) -> bool {
        self.spec.covers(keyring)
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
        // A NULL value has a NULL header (every value's header is not NULL, if
        // empty), and the constant tenant of a fixed keyring is no grouping key.
        let keys: Vec<&str> = b.columns.iter().map(|c| c.census.as_str()).collect();
        let any_present: Vec<String> = b.columns.iter().map(|c| format!("t.{} IS NOT NULL", c.quoted)).collect();
        let first_key = if b.tenant.is_some() { 1 } else { 2 };
        let group: Vec<String> = (first_key..=1 + CENSUS_KEYS * b.columns.len()).map(|i| i.to_string()).collect();
        let sql = format!(
            "SELECT {tenant_select}, {keys}, count(*)::bigint FROM {table} AS t WHERE ({any}){filter} GROUP BY {group}",
            keys = keys.join(", "),
            table = b.table,
            any = any_present.join(" OR "),
            group = group.join(", "),
        );
        // Serial: the planner cannot estimate the few groups, and its parallel
        // plan sorts every row (twice as slow as one hash aggregate).
        let rows = self.query("census", &sql, &params).await?;
        let count_at = 1 + CENSUS_KEYS * b.columns.len();
        for row in rows {
            let read = on(SOURCE, "read census");
            let tenant: Option<String> = row.try_get(0).map_err(&read)?;
            let count: i64 = row.try_get(count_at).map_err(&read)?;
            let count = u64::try_from(count).unwrap_or(0);
            for i in 0..b.columns.len() {
                let at = 1 + CENSUS_KEYS * i;
                let Some(header) = row.try_get::<_, Option<&[u8]>>(at).map_err(&read)? else {
                    continue; // NULL
                };
                let version = if header.starts_with(b"kw:") {
                    let v: Option<i64> = row.try_get(at + 2).map_err(&read)?;
                    v.and_then(|v| u32::try_from(v).ok()).and_then(|v| KeyVersion::new(v).ok())
                } else {
                    let len: i32 = row.try_get(at + 1).map_err(&read)?;
                    binary_census_version(header, len)
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
        let after = request.after.as_ref().map(|c| self.parse_cursor(c)).transpose()?;
        let after_int: i64;
        let after_text: String;
        let tenant_owned: Option<String> = tenant.map(str::to_owned);
        let skip: Option<i64> = request.skip_version.map(|v| i64::from(v.get()));
        let limit = i64::try_from(request.limit).unwrap_or(i64::MAX - 1).saturating_add(1);
        let skip_bytes: Vec<u8> = request.skip_version.map_or_else(Vec::new, |v| v.get().to_be_bytes().to_vec());
        let skip_prefix: String = request.skip_version.map_or_else(String::new, |v| format!("kw:v{}:", v.get()));
        // Parameters in the order `scan_sql` numbers them.
        let mut params: Vec<(&(dyn ToSql + Sync), Type)> = Vec::new();
        let mut shape = ScanShape { after: None, tenant: false, skip: false };
        if let Some((col, pk)) = &after {
            shape.after = Some(*col + 1 >= self.built.columns.len());
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
        }
        if let (Some(t), Some(_)) = (&tenant_owned, &self.built.tenant) {
            shape.tenant = true;
            params.push((t, Type::TEXT));
        }
        if let Some(v) = &skip {
            shape.skip = true;
            params.push((v, Type::INT8));
            params.push((&skip_bytes, Type::BYTEA));
            params.push((&skip_prefix, Type::TEXT));
        }
        params.push((&limit, Type::INT8));
        let sql = self.scan_sql(shape);
        let client = self.pool.get().await?;
        let read = async {
            let rows = client
                .query_typed_raw(&sql, params.iter().map(|(v, t)| (*v, t.clone())))
                .await
                .map_err(|e| self.sql_error("scan", &e))?;
            futures::pin_mut!(rows);
            let mut out = Vec::with_capacity(request.limit);
            // Rows are turned into values as they arrive; the stream is read to
            // its end (at most one row more than needed) before the COMMIT.
            while let Some(row) = rows.try_next().await.map_err(|e| self.sql_error("scan", &e))? {
                if out.len() < request.limit {
                    self.push_values(&row, request, after.as_ref(), &mut out)?;
                }
            }
            Ok(out)
        };
        self.in_batch_transaction("scan", &client, BEGIN_BATCH, read).await
    }

    /// The values of one scanned row, in column order, that come after
    /// `after`, are not NULL and are not on the skipped version; at most up to
    /// `request.limit` values in `out`.
    fn push_values(
        &self,
        row: &Row,
        request: &ScanRequest,
        after: Option<&(usize, Pk)>,
        out: &mut Vec<StoredValue>,
    ) -> Result<()> {
        let b = &self.built;
        let pk = self.read_pk(row)?;
        let tenant: Option<String> = row.try_get(1).map_err(on(SOURCE, "read tenant"))?;
        // The row's keyring, read from the tenant column when first needed.
        let mut from_tenant: Option<KeyringId> = None;
        let pk_text = pk.as_text();
        for (i, c) in b.columns.iter().enumerate() {
            if let Some((after_col, after_pk)) = after
                && *after_pk == pk
                && i <= *after_col
            {
                continue;
            }
            let value: Option<&[u8]> = match c.form {
                Form::Binary => row.try_get(i + 2).map_err(on(SOURCE, "read value"))?,
                Form::Text => {
                    row.try_get::<_, Option<&str>>(i + 2).map_err(on(SOURCE, "read value"))?.map(str::as_bytes)
                }
            };
            let Some(value) = value else { continue };
            if let Some(skip) = request.skip_version
                && version_of(value) == Ok(skip)
            {
                continue;
            }
            let keyring = match &self.spec.keyring {
                Some(KeyringFrom::Fixed(k)) => k,
                _ => match from_tenant {
                    Some(ref k) => k,
                    None => from_tenant.insert(self.keyring_of(tenant.clone(), &pk)?),
                },
            };
            out.push(StoredValue {
                cursor: Self::cursor(i, &pk_text),
                keyring: keyring.clone(),
                context: Context::field(&self.context_table, &c.context_column, &pk_text),
                value: value.to_vec(),
                index: None,
            });
            if out.len() == request.limit {
                break;
            }
        }
        Ok(())
    }

    /// The scan statement of a shape, built once. Parameters, in order: the
    /// key after which to read (with `after`), the tenant (with `tenant`), the
    /// skipped version as bigint, as 4 big-endian bytes and as a text prefix
    /// `kw:v{N}:` (with `skip`), the row limit.
    fn scan_sql(&self, shape: ScanShape) -> Arc<str> {
        let mut cache = self.scan_sql.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sql) = cache.get(&shape) {
            return Arc::clone(sql);
        }
        let b = &self.built;
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        let mut conds = Vec::new();
        if let Some(last_column) = shape.after {
            // After the last column of a row, the next row; otherwise the rest of this one.
            let op = if last_column { ">" } else { ">=" };
            conds.push(format!("t.{} {op} ${}{}", b.key, next(), self.key_cast()));
        }
        if let (true, Some(col)) = (shape.tenant, &b.tenant) {
            conds.push(format!("t.{col} = ${}", next()));
        }
        let per_column: Vec<String> = if shape.skip {
            let (n, nb, np) = (next(), next(), next());
            b.columns
                .iter()
                .map(|c| {
                    // Cheap tests first: a header that does not name the target
                    // version is yielded without the full validity check.
                    let fast = match c.form {
                        Form::Binary => format!(
                            "substring(t.{q} FROM 5 FOR 4) <> ${nb} OR (t.{q} >= '\\x6b773a'::bytea AND t.{q} < '\\x6b773b'::bytea)",
                            q = c.quoted
                        ),
                        Form::Text => format!("NOT starts_with(t.{q}::text, ${np})", q = c.quoted),
                    };
                    format!("(t.{q} IS NOT NULL AND ({fast} OR ({ver}) IS DISTINCT FROM ${n}))", q = c.quoted, ver = c.version)
                })
                .collect()
        } else {
            b.columns.iter().map(|c| format!("t.{} IS NOT NULL", c.quoted)).collect()
        };
        conds.push(format!("({})", per_column.join(" OR ")));
        let sql: Arc<str> = format!(
            "SELECT {key_select}, {tenant}, {cols} FROM {table} AS t WHERE {conds} ORDER BY t.{key} LIMIT ${n}",
            key_select = b.key_select,
            tenant = b.tenant.as_ref().map_or_else(|| "NULL::text".to_owned(), |t| format!("t.{t}::text")),
            cols = b.columns.iter().map(|c| format!("t.{}", c.quoted)).collect::<Vec<_>>().join(", "),
            table = b.table,
            conds = conds.join(" AND "),
            key = b.key,
            n = next(),
        )
        .into();
        cache.insert(shape, Arc::clone(&sql));
        sql
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
