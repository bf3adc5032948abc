//! # keywheel-pg-sql
//!
//! The one definition of keywheel's Postgres storage, shared by its two
//! Postgres drivers — `keywheel-postgres` (tokio-postgres) and
//! `keywheel-sqlx` (sqlx): the schema and its migrations ([`migrate`]), every
//! SQL statement and statement builder (key store, audit log, record source
//! scans, compare-and-set replacement, census, header filters, identifier
//! quoting), and the logic around them ([`SqlKeyStore`], [`SqlAuditSink`],
//! [`SqlRecordSource`], [`spawn_listener`]), written once against the small
//! [`Driver`] trait each driver implements. A store written through one
//! driver is read through the other: they are the same code on the same tables.
//!
//! Applications use the driver crates, which name these types for their
//! pool (`keywheel_postgres::PgKeyStore`, `keywheel_sqlx::SqlxKeyStore`, …);
//! the layout of the tables and what each backend guarantees are described
//! in the [manual](keywheel_core::manual).
#![forbid(unsafe_code)]

mod audit;
mod driver;
mod header;
mod ident;
mod listener;
mod schema;
mod source;
mod store;

pub use audit::{AuditHead, SqlAuditSink};
pub use driver::{
    AUDIT, DbError, Driver, POOL, Param, Row, SOURCE, STORE, Transaction, Value, invalid, is_retryable_code, on,
};
pub use ident::{MAX_IDENTIFIER_LEN, quote_ident};
pub use listener::{ListenerHandle, spawn_listener};
pub use schema::{
    MigrateOptions, MigrationReport, PgSchema, SCHEMA_VERSION, grant_application_role, migrate, migrate_with,
};
pub use source::{EncryptedColumn, IndexColumn, KeyType, KeyringFrom, SqlRecordSource, TableSpec};
pub use store::SqlKeyStore;
