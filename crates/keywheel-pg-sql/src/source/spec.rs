//! [`TableSpec`]: the description of an application table a record source works on.

use std::sync::Arc;

use keywheel_core::{BlindIndex, Cursor, Form, KeyringId, Purpose, Result, ValueLocation};

use super::build;

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
    pub(super) fn accepts(self, sql_type: &str) -> bool {
        match self {
            KeyType::BigInt => sql_type == "bigint",
            KeyType::Uuid => sql_type == "uuid",
            KeyType::Text => matches!(sql_type, "text" | "character varying"),
        }
    }
    pub(super) fn expected(self) -> &'static str {
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
    /// The `column` of the values' [`Context`](keywheel_core::Context) (default: the column's name).
    pub context_column: String,
    /// The blind index column paired with this column, if any
    /// ([`TableSpec::index`]).
    pub index: Option<IndexColumn>,
}

/// A blind index column paired with an encrypted column ([`TableSpec::index`]):
/// each row's tag of the encrypted column's plaintext, which a rotation
/// rewrites under the new version together with the value (the
/// [manual](keywheel_core::manual#13-searchable-fields-blind-indexes)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexColumn {
    /// The index column's name (e.g. `email_bidx`).
    pub name: String,
    /// [`Form::Binary`] for a `bytea` column, [`Form::Text`] for a `text` or
    /// `varchar` column holding tags in the `kw:v{N}:…` text form.
    pub form: Form,
    /// How the tags are made: the same [`BlindIndex`] the application passes
    /// to [`Keyring::blind_index`](keywheel_core::Keyring::blind_index).
    pub spec: Arc<BlindIndex>,
}

/// The description of an application table whose encrypted columns a
/// [`SqlRecordSource`](crate::SqlRecordSource) scans and rewrites.
///
/// Every value's context is `Context::field(context_table, context_column,
/// row_id)`: by default the table's and column's names and the primary key
/// as text (decimal for `bigint`, lower-case hyphenated for `uuid`, the text
/// itself for `text`). Encrypt your application's values with the same
/// context, or they will not decrypt during a rotation.
///
/// ```
/// use keywheel_core::{Form, Purpose};
/// use keywheel_pg_sql::{KeyType, TableSpec};
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
    pub(super) schema: String,
    pub(super) table: String,
    pub(super) key: String,
    pub(super) key_type: KeyType,
    pub(super) keyring: Option<KeyringFrom>,
    pub(super) columns: Vec<EncryptedColumn>,
    /// Indexes given for a column that is not (yet) an encrypted column of
    /// the spec, or that has one already: [`check`](Self::check) names them.
    pub(super) stray_indexes: Vec<(String, IndexColumn)>,
    pub(super) context_table: Option<String>,
    pub(super) name: Option<String>,
    pub(super) read_ahead: bool,
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
            stray_indexes: Vec::new(),
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
        self.columns.push(EncryptedColumn {
            name: name.into(),
            form,
            context_column: context_column.into(),
            index: None,
        });
        self
    }

    /// Pair a blind index column with the encrypted column `column` (added
    /// before with [`column`](Self::column)): `index_column` holds, in `form`,
    /// each row's tag of the plaintext under `spec`. Scans yield the tag with
    /// the value ([`StoredIndex`](keywheel_core::StoredIndex)), a rotation
    /// rewrites value and tag in one compare-and-set (and fills empty
    /// tags), and the census counts the tags. Lookups are `WHERE index_column
    /// = ANY($1)` with the tags of [`IndexTerms`](keywheel_core::IndexTerms) as an array parameter.
    ///
    /// An unknown `column`, a second index on one column, or an index column
    /// that is also the key, the tenant or a value column make
    /// [`check`](Self::check) (and [`SqlRecordSource::open`](crate::SqlRecordSource::open)) fail with
    /// [`Error::InvalidArgument`](keywheel_core::Error::InvalidArgument).
    ///
    /// ```
    /// use keywheel_core::{BlindIndex, Form, Normalization, Purpose};
    /// use keywheel_pg_sql::TableSpec;
    ///
    /// let email = BlindIndex::new("users", "email").normalization(Normalization::TrimLowercase);
    /// let spec = TableSpec::new("public", "users")
    ///     .keyring_from_column("tenant", Purpose::Database)
    ///     .column("email", Form::Binary)
    ///     .index("email", "email_bidx", Form::Binary, email.clone());
    /// assert!(spec.check().is_ok());
    /// assert_eq!(spec.columns()[0].index.as_ref().map(|i| i.name.as_str()), Some("email_bidx"));
    /// assert!(spec.clone().index("phone", "phone_bidx", Form::Binary, email.clone()).check().is_err());
    /// assert!(spec.clone().index("email", "other_bidx", Form::Binary, email.clone()).check().is_err());
    /// assert!(spec.column("email_bidx", Form::Binary).check().is_err());
    /// ```
    pub fn index(mut self, column: &str, index_column: impl Into<String>, form: Form, spec: BlindIndex) -> Self {
        let index = IndexColumn { name: index_column.into(), form, spec: Arc::new(spec) };
        match self.columns.iter_mut().find(|c| c.name == column) {
            Some(c) if c.index.is_none() => c.index = Some(index),
            _ => self.stray_indexes.push((column.to_owned(), index)),
        }
        self
    }

    /// The encrypted columns, in cursor order (with their index columns).
    pub fn columns(&self) -> &[EncryptedColumn] {
        &self.columns
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
    /// check [`SqlRecordSource::open`](crate::SqlRecordSource::open) makes before it reads the catalog.
    ///
    /// ```
    /// use keywheel_core::{Form, Purpose};
    /// use keywheel_pg_sql::TableSpec;
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
    /// in its table ([`RecordSource::covers`](keywheel_core::RecordSource::covers)): its fixed keyring, or any
    /// keyring of its purpose when keyrings come from a tenant column.
    pub fn covers(&self, keyring: &KeyringId) -> bool {
        match &self.keyring {
            Some(KeyringFrom::Fixed(fixed)) => fixed == keyring,
            Some(KeyringFrom::TenantColumn { purpose, .. }) => keyring.purpose() == purpose,
            None => false,
        }
    }

    /// Where the value at `cursor` (a cursor of a source built from this
    /// spec, [`SqlRecordSource::cursor`](crate::SqlRecordSource::cursor)) lives: `schema.table`, the column's
    /// name and the primary key. `None` if the cursor is not of this form or
    /// names a column index the spec does not have. Needs no database, so a
    /// job's failures can be located from the configuration alone.
    ///
    /// ```
    /// use keywheel_core::Form;
    /// use keywheel_pg_sql::{SqlRecordSource, TableSpec};
    /// let spec = TableSpec::new("public", "users").column("email", Form::Binary).column("token", Form::Binary);
    /// let at = spec.locate(&SqlRecordSource::<()>::cursor(1, "42")).expect("a cursor of this spec");
    /// assert_eq!((at.table.as_str(), at.column.as_str(), at.key.as_str()), ("public.users", "token", "42"));
    /// assert!(spec.locate(&SqlRecordSource::<()>::cursor(2, "42")).is_none());
    /// ```
    pub fn locate(&self, cursor: &Cursor) -> Option<ValueLocation> {
        let (index, key) = cursor.0.split_once(':')?;
        let column = self.columns.get(index.parse::<usize>().ok()?)?;
        Some(ValueLocation::new(format!("{}.{}", self.schema, self.table), column.name.clone(), key))
    }
}
