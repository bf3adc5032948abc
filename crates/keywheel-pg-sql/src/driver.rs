//! What a Postgres driver provides to the backends: statements with typed
//! parameters, rows of plain values, transactions and notifications.
//!
//! Every statement the backends run is written once, in this crate, against
//! the [`Driver`] trait; keywheel-postgres implements it over tokio-postgres,
//! keywheel-sqlx over sqlx.

use std::fmt;

use futures::stream::BoxStream;
use keywheel_core::{Error, Result, async_trait};

/// Backend name of the key store in errors.
pub const STORE: &str = "postgres key store";
/// Backend name of the audit sink in errors.
pub const AUDIT: &str = "postgres audit sink";
/// Backend name of the record source in errors.
pub const SOURCE: &str = "postgres record source";
/// Backend name of the pool, migrations and listener in errors.
pub const POOL: &str = "postgres";

/// A statement parameter, with its Postgres type. Every driver maps every
/// variant (the enum is exhaustive on purpose: a new one is a change of the
/// driver contract).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param<'a> {
    /// `boolean`.
    Bool(bool),
    /// `integer`.
    Int4(i32),
    /// `bigint`, or NULL.
    Int8(Option<i64>),
    /// `text`, or NULL.
    Text(Option<&'a str>),
    /// `bytea`, or NULL.
    Bytea(Option<&'a [u8]>),
    /// `bigint[]`.
    Int8Array(Vec<i64>),
    /// `text[]` (NULL elements allowed).
    TextArray(Vec<Option<&'a str>>),
    /// `bytea[]` (NULL elements allowed).
    ByteaArray(Vec<Option<&'a [u8]>>),
}

impl<'a> From<&'a str> for Param<'a> {
    fn from(s: &'a str) -> Self {
        Param::Text(Some(s))
    }
}

impl<'a> From<&'a String> for Param<'a> {
    fn from(s: &'a String) -> Self {
        Param::Text(Some(s))
    }
}

impl<'a> From<Option<&'a str>> for Param<'a> {
    fn from(s: Option<&'a str>) -> Self {
        Param::Text(s)
    }
}

impl From<i64> for Param<'_> {
    fn from(n: i64) -> Self {
        Param::Int8(Some(n))
    }
}

impl From<Option<i64>> for Param<'_> {
    fn from(n: Option<i64>) -> Self {
        Param::Int8(n)
    }
}

impl From<i32> for Param<'_> {
    fn from(n: i32) -> Self {
        Param::Int4(n)
    }
}

impl From<bool> for Param<'_> {
    fn from(b: bool) -> Self {
        Param::Bool(b)
    }
}

/// A column value of a result row. Every integer type arrives as
/// [`Value::Int`], every text type (and `json` cast to text) as
/// [`Value::Text`]. Exhaustive on purpose, as [`Param`].
#[derive(Clone, PartialEq, Eq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// `boolean`.
    Bool(bool),
    /// `smallint`, `integer`, `bigint` or `oid`.
    Int(i64),
    /// `text`, `varchar`, `name`, `"char"`.
    Text(String),
    /// `bytea`.
    Bytes(Vec<u8>),
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values may be ciphertexts or tags: their length only.
        match self {
            Value::Null => f.write_str("Null"),
            Value::Bool(b) => write!(f, "Bool({b})"),
            Value::Int(n) => write!(f, "Int({n})"),
            Value::Text(s) => write!(f, "Text({} bytes)", s.len()),
            Value::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
        }
    }
}

/// A result row: its values in column order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Row(pub Vec<Value>);

impl Row {
    fn at(&self, i: usize) -> Result<&Value> {
        self.0.get(i).ok_or_else(|| Error::backend(POOL, format!("result row has no column {i}"), false))
    }

    fn wrong(&self, i: usize, expected: &str) -> Error {
        let found = match self.0.get(i) {
            Some(Value::Null) => "NULL",
            Some(Value::Bool(_)) => "a boolean",
            Some(Value::Int(_)) => "an integer",
            Some(Value::Text(_)) => "text",
            Some(Value::Bytes(_)) => "bytes",
            None => "nothing",
        };
        Error::backend(POOL, format!("result column {i}: expected {expected}, found {found}"), false)
    }

    /// An integer column, NULL as `None`.
    pub fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Int(n) => Ok(Some(*n)),
            _ => Err(self.wrong(i, "an integer")),
        }
    }

    /// A non-NULL integer column.
    pub fn int(&self, i: usize) -> Result<i64> {
        self.opt_int(i)?.ok_or_else(|| self.wrong(i, "an integer"))
    }

    /// A boolean column (not NULL).
    pub fn bool(&self, i: usize) -> Result<bool> {
        match self.at(i)? {
            Value::Bool(b) => Ok(*b),
            _ => Err(self.wrong(i, "a boolean")),
        }
    }

    /// A text column, NULL as `None`.
    pub fn opt_text(&self, i: usize) -> Result<Option<&str>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Text(s) => Ok(Some(s)),
            _ => Err(self.wrong(i, "text")),
        }
    }

    /// A non-NULL text column.
    pub fn text(&self, i: usize) -> Result<&str> {
        self.opt_text(i)?.ok_or_else(|| self.wrong(i, "text"))
    }

    /// A text or bytea column as bytes (text as its UTF-8 bytes), NULL as `None`.
    pub fn opt_bytes(&self, i: usize) -> Result<Option<&[u8]>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Bytes(b) => Ok(Some(b)),
            Value::Text(s) => Ok(Some(s.as_bytes())),
            _ => Err(self.wrong(i, "bytes")),
        }
    }

    /// Move a text or bytea column out as bytes (leaving NULL), NULL as `None`.
    pub fn take_bytes(&mut self, i: usize) -> Result<Option<Vec<u8>>> {
        match self.0.get_mut(i).map(|v| std::mem::replace(v, Value::Null)) {
            Some(Value::Null) => Ok(None),
            Some(Value::Bytes(b)) => Ok(Some(b)),
            Some(Value::Text(s)) => Ok(Some(s.into_bytes())),
            _ => Err(self.wrong(i, "bytes")),
        }
    }
}

/// The boolean in the first column of the first row (`SELECT EXISTS …`,
/// `SELECT … IS NOT NULL`); false when there is no row.
pub(crate) fn first_bool(rows: &[Row]) -> Result<bool> {
    Ok(rows.first().map(|r| r.bool(0)).transpose()?.unwrap_or(false))
}

/// A failed database call, as a driver reports it.
#[derive(Debug)]
#[non_exhaustive]
pub enum DbError {
    /// No connection could be had: the pool's error, passed on unchanged.
    Connect(Error),
    /// The server refused the statement, or the connection failed during it.
    Sql {
        /// The SQLSTATE, if the server sent one.
        code: Option<String>,
        /// The server's primary message (never DETAIL, which may echo row
        /// values), or the driver's description of an I/O failure.
        message: String,
    },
}

impl DbError {
    /// A server or I/O error.
    pub fn sql(code: Option<&str>, message: impl Into<String>) -> Self {
        DbError::Sql { code: code.map(str::to_owned), message: message.into() }
    }

    /// The SQLSTATE, if any.
    pub fn code(&self) -> Option<&str> {
        match self {
            DbError::Sql { code, .. } => code.as_deref(),
            DbError::Connect(_) => None,
        }
    }

    /// Whether repeating the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            DbError::Connect(e) => e.is_retryable(),
            DbError::Sql { code: Some(c), .. } => is_retryable_code(c),
            // No SQLSTATE: I/O error, closed connection, timeout.
            DbError::Sql { code: None, .. } => true,
        }
    }

    /// `backend: <what>: <server message> (SQLSTATE)`, as an [`Error::Backend`].
    pub fn into_error(self, backend: &'static str, what: &str) -> Error {
        match self {
            DbError::Connect(e) => e,
            DbError::Sql { ref code, ref message } => {
                let retryable = self.is_retryable();
                let message = match code {
                    Some(code) => format!("{what}: {message} (SQLSTATE {code})"),
                    None => format!("{what}: {message}"),
                };
                Error::backend(backend, message, retryable)
            }
        }
    }
}

impl From<Error> for DbError {
    fn from(e: Error) -> Self {
        DbError::Connect(e)
    }
}

/// Whether a SQLSTATE names a transient condition: serialization failure,
/// deadlock, too many connections, shutdown, lock not available, cancel,
/// connection exceptions (class 08) and insufficient resources (class 53).
pub fn is_retryable_code(code: &str) -> bool {
    matches!(code, "40001" | "40P01" | "53300" | "57P01" | "57P02" | "57P03" | "55P03" | "57014")
        || code.starts_with("08")
        || code.starts_with("53")
}

/// Shorthand: `.map_err(on(STORE, "load keyring"))`.
pub fn on(backend: &'static str, what: &'static str) -> impl Fn(DbError) -> Error {
    move |e| e.into_error(backend, what)
}

/// A non-retryable backend error with a message.
pub fn invalid(backend: &'static str, message: impl Into<String>) -> Error {
    Error::backend(backend, message, false)
}

/// A database transaction on one connection. Dropped without
/// [`commit`](Self::commit), it rolls back (also when the caller is dropped midway).
#[async_trait]
pub trait Transaction: Send {
    /// Run one statement; the number of rows it affected.
    async fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> std::result::Result<u64, DbError>;
    /// Run one statement; its rows.
    async fn query(&mut self, sql: &str, params: &[Param<'_>]) -> std::result::Result<Vec<Row>, DbError>;
    /// Run statements without parameters, separated by `;` (DDL).
    async fn batch(&mut self, sql: &str) -> std::result::Result<(), DbError>;
    /// Commit.
    async fn commit(self: Box<Self>) -> std::result::Result<(), DbError>;
}

/// A Postgres connection pool as the backends use it.
///
/// Implemented by keywheel-postgres (tokio-postgres) and keywheel-sqlx
/// (sqlx); the statements and the logic around them live in this crate.
#[async_trait]
pub trait Driver: Clone + Send + Sync + 'static {
    /// Begin a transaction on a pooled connection.
    async fn begin(&self) -> std::result::Result<Box<dyn Transaction>, DbError>;

    /// Run one statement on its own (autocommit); the number of rows it affected.
    async fn execute(&self, sql: &str, params: &[Param<'_>]) -> std::result::Result<u64, DbError>;

    /// Run one statement on its own (autocommit); its rows.
    async fn query(&self, sql: &str, params: &[Param<'_>]) -> std::result::Result<Vec<Row>, DbError>;

    /// Run one statement in its own short transaction begun by `begin`
    /// (`BEGIN` and `SET LOCAL` planner settings), committed after it; its rows.
    async fn query_in(&self, begin: &str, sql: &str, params: &[Param<'_>]) -> std::result::Result<Vec<Row>, DbError>;

    /// Run one statement in a transaction begun by `begin`; commit when it
    /// affected exactly `rows` rows, roll back otherwise. Whether it committed.
    async fn execute_if(
        &self,
        begin: &str,
        sql: &str,
        params: &[Param<'_>],
        rows: u64,
    ) -> std::result::Result<bool, DbError>;

    /// On a dedicated connection, `LISTEN` on `channel` (its name, unquoted;
    /// a valid identifier, checked by the caller); the payloads of its
    /// notifications, ending when the connection does (notifications sent
    /// meanwhile are lost, so a reconnection must assume anything changed).
    async fn listen(&self, channel: &str) -> std::result::Result<BoxStream<'static, String>, DbError>;
}
