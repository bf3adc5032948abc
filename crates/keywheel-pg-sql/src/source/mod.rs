//! [`SqlRecordSource`]: the encrypted columns of an application table.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use keywheel_core::{
    BlindIndex, Census, Cursor, Error, Form, KeyringId, RecordSource, ReplaceOutcome, Replacement, Result, ScanRequest,
    StoredValue, ValueLocation, async_trait,
};

use crate::driver::{DbError, Driver, Param, Row, SOURCE, first_bool, invalid, on};
use crate::header::{any_version, text_column_version};
use crate::ident::{qualified, quote_ident};

mod census;
mod replace;
mod scan;
mod spec;

use scan::{ReadAhead, ScanShape};
pub use spec::{EncryptedColumn, IndexColumn, KeyType, KeyringFrom, TableSpec};

/// Quoted identifiers and SQL fragments, built once.
#[derive(Debug, Clone)]
struct Built {
    table: String,
    key: String,
    key_select: String,
    key_array: &'static str,
    key_from_text: &'static str,
    tenant: Option<String>,
    columns: Vec<BuiltColumn>,
}

#[derive(Debug, Clone)]
struct BuiltColumn {
    stored: Stored,
    context_column: String,
    index: Option<BuiltIndex>,
}

/// The index column of an encrypted column.
#[derive(Debug, Clone)]
struct BuiltIndex {
    stored: Stored,
    spec: Arc<BlindIndex>,
    /// Its position in a scanned row.
    at: usize,
}

/// A column of stored values or tags: its SQL fragments.
#[derive(Debug, Clone)]
struct Stored {
    quoted: String,
    form: Form,
    /// `version of t.col` (bigint or NULL).
    version: String,
    /// Census grouping: `first 8 bytes (NULL for a NULL value), length in
    /// bytes (capped at 64), header of a text form (NULL for other values)`.
    census: String,
}

impl Stored {
    fn new(name: &str, form: Form) -> Result<Self> {
        let quoted = quote_ident(name)?;
        let expr = format!("t.{quoted}");
        let version = match form {
            Form::Binary => any_version(&expr),
            Form::Text => text_column_version(&format!("{expr}::text")),
        };
        let census = census::census_keys(&expr, form);
        Ok(Stored { quoted, form, version, census })
    }
}

impl Built {
    /// The stored columns in scanned-row order: the value columns, then the index columns.
    fn stored(&self) -> impl Iterator<Item = &Stored> {
        let indexes = self.columns.iter().filter_map(|c| Some(&c.index.as_ref()?.stored));
        self.columns.iter().map(|c| &c.stored).chain(indexes)
    }
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
/// described by a [`TableSpec`], over a [`Driver`]'s pool (keywheel-postgres'
/// `PgRecordSource`, keywheel-sqlx's `SqlxRecordSource`).
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
/// * **Blind indexes** ([`TableSpec::index`]): a scan yields each value's
///   stored tag ([`StoredValue::index`](keywheel_core::StoredValue::index)),
///   and with `skip_version` also a value already on that version whose tag
///   is not (or is NULL); a replacement writes value and tag in the same
///   compare-and-set (`t.tag IS NOT DISTINCT FROM` the tag read); the census
///   counts tags ([`Census::add_index_tags`](keywheel_core::Census::add_index_tags)),
///   telling them from values by their algorithm byte, as
///   [`Census::count_stored`](keywheel_core::Census::count_stored) does.
/// * Identifiers are always quoted ([`quote_ident`]); values are always
///   parameters. [`open`](Self::open) checks the table and every column (type,
///   uniqueness of the key) and names what is wrong.
#[derive(Clone)]
pub struct SqlRecordSource<D> {
    pool: D,
    spec: TableSpec,
    name: String,
    context_table: String,
    built: Arc<Built>,
    /// The next batch being read while the caller works on the last one.
    read_ahead: Arc<Mutex<Option<ReadAhead>>>,
    /// Scan statements by shape, built on first use.
    scan_sql: Arc<Mutex<HashMap<ScanShape, Arc<str>>>>,
}

impl<D> fmt::Debug for SqlRecordSource<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlRecordSource").field("name", &self.name).field("spec", &self.spec).finish_non_exhaustive()
    }
}

/// Begins the transaction of a scan, census or careful replacement: no JIT
/// (compiling the header expressions costs ~0.1 s per statement, more than a
/// batch takes to run) and no parallel workers (starting them costs more than
/// one keyset batch takes to read).
const BEGIN_BATCH: &str = "BEGIN; SET LOCAL jit = off; SET LOCAL max_parallel_workers_per_gather = 0";

impl<D: Driver> SqlRecordSource<D> {
    /// Check `spec` against the database (the table exists; the key column is
    /// of the declared type, non-null and unique; the tenant column is text;
    /// every encrypted column is `bytea` for [`Form::Binary`] or `text`/`varchar`
    /// for [`Form::Text`]) and build the source. Errors name the object:
    /// [`Error::InvalidArgument`] for an unusable description,
    /// [`Error::Backend`] for what the database holds.
    pub async fn open(pool: impl Into<D>, spec: TableSpec) -> Result<Self> {
        let built = build(&spec)?;
        let source = SqlRecordSource {
            name: spec.source_name(),
            context_table: spec.context_table.clone().unwrap_or_else(|| spec.table.clone()),
            pool: pool.into(),
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
            let tenant = row.text(0)?;
            out.push(KeyringId::new(tenant, purpose.clone()).map_err(|e| {
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

    /// The pool it uses.
    pub fn pool(&self) -> &D {
        &self.pool
    }

    async fn check_catalog(&self) -> Result<()> {
        let tables = self
            .pool
            .query(
                "SELECT c.oid::bigint, c.relkind::text FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
                &[(&self.spec.schema).into(), (&self.spec.table).into()],
            )
            .await
            .map_err(on(SOURCE, "look up table"))?;
        let table = tables.first().ok_or_else(|| invalid(SOURCE, format!("{} does not exist", self.object())))?;
        let oid = table.int(0)?;
        let kind = table.text(1)?;
        if kind != "r" && kind != "p" {
            return Err(invalid(SOURCE, format!("{} is not a table (relkind {kind})", self.object())));
        }
        let rows = self
            .pool
            .query(
                "SELECT attname::text, format_type(atttypid, NULL), attnotnull, attnum::bigint \
                 FROM pg_catalog.pg_attribute WHERE attrelid = $1::oid AND attnum > 0 AND NOT attisdropped",
                &[oid.into()],
            )
            .await
            .map_err(on(SOURCE, "look up columns"))?;
        let mut columns: HashMap<String, (String, bool, i64)> = HashMap::new();
        for r in rows {
            columns.insert(r.text(0)?.to_owned(), (r.text(1)?.to_owned(), r.bool(2)?, r.int(3)?));
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
        let unique = first_bool(
            &self
                .pool
                .query(
                    "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = $1::oid AND i.indisunique \
                 AND i.indnkeyatts = 1 AND i.indkey[0]::bigint = $2 AND i.indpred IS NULL AND i.indexprs IS NULL)",
                    &[oid.into(), (*attnum).into()],
                )
                .await
                .map_err(on(SOURCE, "look up key index"))?,
        )?;
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
        let indexes = self.spec.columns.iter().filter_map(|c| c.index.as_ref()).map(|i| ("index", &i.name, i.form));
        for (role, name, form) in self.spec.columns.iter().map(|c| ("encrypted", &c.name, c.form)).chain(indexes) {
            let (t, _, _) = column(name)?;
            let ok = match form {
                Form::Binary => t == "bytea",
                Form::Text => matches!(t.as_str(), "text" | "character varying"),
            };
            if !ok {
                let expected = match form {
                    Form::Binary => "bytea (binary form)",
                    Form::Text => "text or varchar (text form)",
                };
                return Err(wrong_type(role, name, t, expected));
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
            KeyType::BigInt => Ok(Pk::Int(row.int(0)?)),
            KeyType::Uuid | KeyType::Text => Ok(Pk::Text(row.text(0)?.to_owned())),
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

    /// Run one statement in its own short transaction with planner settings
    /// suited to batch work ([`BEGIN_BATCH`]).
    async fn query(&self, what: &str, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>> {
        self.pool.query_in(BEGIN_BATCH, sql, params).await.map_err(|e| self.sql_error(what, e))
    }
}

impl<D> SqlRecordSource<D> {
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

    /// A database error, naming the table for missing objects and type errors.
    fn sql_error(&self, what: &str, e: DbError) -> Error {
        let hint = e.code().is_some_and(|c| c.starts_with("42"));
        let mut err = e.into_error(SOURCE, &format!("{what} on {}", self.object()));
        if let (Error::Backend { message, .. }, true) = (&mut err, hint) {
            message.push_str(" — check the TableSpec against the table's definition");
        }
        err
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
    if let Some((column, index)) = spec.stray_indexes.first() {
        let why = if spec.columns.iter().any(|c| &c.name == column) {
            "which has an index column already (one index per encrypted column)"
        } else {
            "which is not an encrypted column of the spec (add it with column() first)"
        };
        return Err(Error::InvalidArgument(format!(
            "TableSpec {}: index column {:?} is given for column {column:?}, {why}",
            spec.source_name(),
            index.name
        )));
    }
    let stored =
        spec.columns.iter().map(|c| &c.name).chain(spec.columns.iter().filter_map(|c| Some(&c.index.as_ref()?.name)));
    for name in stored {
        if seen.contains(&name.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "TableSpec {}: column {name:?} is used twice (key, tenant, encrypted and index columns must differ)",
                spec.source_name(),
            )));
        }
        seen.push(name);
    }
    let key = quote_ident(&spec.key)?;
    let (key_select, key_array, key_from_text) = match spec.key_type {
        KeyType::BigInt => (format!("t.{key}"), "int8[]", ""),
        KeyType::Uuid => (format!("t.{key}::text"), "text[]", "::uuid"),
        KeyType::Text => (format!("t.{key}::text"), "text[]", ""),
    };
    let tenant = match &spec.keyring {
        Some(KeyringFrom::TenantColumn { column, .. }) => Some(quote_ident(column)?),
        _ => None,
    };
    // Scanned rows hold the key, the tenant, the value columns, then the index columns.
    let mut index_at = 2 + spec.columns.len();
    let columns = spec
        .columns
        .iter()
        .map(|c| {
            let index = match &c.index {
                Some(i) => {
                    let at = index_at;
                    index_at += 1;
                    Some(BuiltIndex { stored: Stored::new(&i.name, i.form)?, spec: Arc::clone(&i.spec), at })
                }
                None => None,
            };
            Ok(BuiltColumn { stored: Stored::new(&c.name, c.form)?, context_column: c.context_column.clone(), index })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Built {
        table: qualified(&spec.schema, &spec.table)?,
        key,
        key_select,
        key_array,
        key_from_text,
        tenant,
        columns,
    })
}

#[async_trait]
impl<D: Driver> RecordSource for SqlRecordSource<D> {
    fn name(&self) -> &str {
        &self.name
    }

    fn locate(&self, cursor: &Cursor) -> Option<ValueLocation> {
        self.spec.locate(cursor)
    }

    async fn scan(&self, request: &ScanRequest) -> Result<Vec<StoredValue>> {
        self.scan_with_read_ahead(request).await
    }

    async fn replace(&self, batch: &[Replacement]) -> Result<Vec<ReplaceOutcome>> {
        self.replace_batch(batch).await
    }

    fn covers(&self, keyring: &KeyringId) -> bool {
        self.spec.covers(keyring)
    }

    async fn census(&self, keyring: Option<&KeyringId>) -> Result<Census> {
        self.census_sql(keyring).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keywheel_core::Purpose;

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
