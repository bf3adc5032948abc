//! # keywheel-sqlx
//!
//! keywheel's Postgres backends over an application's [`sqlx::PgPool`]:
//!
//! * [`SqlxKeyStore`] — a [`KeyStore`](keywheel_core::KeyStore): keyrings,
//!   versions (wrapped material only), policies, rotation jobs and leases;
//!   every keyring change one compare-and-set transaction, announced with `NOTIFY`.
//! * [`SqlxAuditSink`] — an [`AuditSink`](keywheel_core::AuditSink): an
//!   append-only, keyed hash chain with one total order under concurrent writers.
//! * [`SqlxRecordSource`] — a [`RecordSource`](keywheel_core::RecordSource)
//!   over the encrypted columns of an application table described by a
//!   [`TableSpec`]: keyset scans with the rotation target filtered out in SQL
//!   from the header bytes, batched compare-and-set with `UNNEST`, census by
//!   `GROUP BY`, blind index columns rewritten with their values.
//! * [`spawn_listener`] — live refresh through a [`PgListener`](sqlx::postgres::PgListener):
//!   every [`Keywheel`] instance reloads a keyring as
//!   soon as another one changes it.
//! * Column types: [`Encrypted`] (`bytea`, binary form) and [`EncryptedText`]
//!   (`text`, `kw:v{N}:…`) implement sqlx's `Type`, `Encode` and `Decode`,
//!   checking the header when a row is read ([`ValueError`]), so a query
//!   selects a column straight into a keywheel value; [`RowFields`] encrypts
//!   and decrypts a row's fields with their [`Context::field`](keywheel_core::Context::field)
//!   in one call each.
//!
//! These are the same backends as keywheel-postgres' (tokio-postgres): one
//! schema, one list of migrations and one set of SQL statements
//! ([keywheel-pg-sql](keywheel_pg_sql)) serve both, so a store written
//! through one driver is read through the other, and an sqlx application
//! builds no tokio-postgres. The layout and guarantees are in the
//! [manual](keywheel_core::manual#16-postgres-through-sqlx).
//!
//! ```no_run
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use keywheel_core::{Form, Keywheel, KeyringId, LocalKek, Purpose, RotateOptions, Rotator};
//! use keywheel_sqlx::{
//!     Encrypted, KeyType, PgSchema, RowFields, SqlxAuditSink, SqlxKeyStore, SqlxRecordSource, TableSpec, migrate,
//!     spawn_listener,
//! };
//!
//! let pool = sqlx::postgres::PgPoolOptions::new().max_connections(10).connect("postgresql://app@db/app").await?;
//! let schema = PgSchema::default();
//! migrate(&pool, &schema).await?;
//! let kw = Keywheel::builder()
//!     .store(Arc::new(SqlxKeyStore::new(pool.clone(), schema.clone())))
//!     .audit(Arc::new(SqlxAuditSink::new(pool.clone(), schema.clone())))
//!     .kek(Arc::new(LocalKek::from_env("KEYWHEEL_MASTER_KEY")?))
//!     .build()?;
//! let _listener = spawn_listener(&pool, &schema, kw.clone()).await?;
//!
//! // users(id bigint primary key, tenant text, email bytea)
//! let acme = KeyringId::new("acme", Purpose::Database)?;
//! let ring = kw.keyring(&acme).await?;
//! let row = RowFields::new(&ring, "users", 42);
//! let email: Encrypted = row.encrypt("email", b"ann@example.org")?;
//! sqlx::query("INSERT INTO users (id, tenant, email) VALUES ($1, $2, $3)")
//!     .bind(42_i64)
//!     .bind("acme")
//!     .bind(&email)
//!     .execute(&pool)
//!     .await?;
//! let (stored,): (Encrypted,) =
//!     sqlx::query_as("SELECT email FROM users WHERE id = $1").bind(42_i64).fetch_one(&pool).await?;
//! assert_eq!(&*row.decrypt("email", &stored)?, b"ann@example.org");
//!
//! // Rotate the keyring's values in `users`.
//! let users = SqlxRecordSource::open(
//!     pool.clone(),
//!     TableSpec::new("public", "users")
//!         .primary_key("id", KeyType::BigInt)
//!         .keyring_from_column("tenant", Purpose::Database)
//!         .column("email", Form::Binary),
//! )
//! .await?;
//! let rotator = Rotator::new(kw.clone())?.source(Arc::new(users));
//! let report = rotator.rotate(&acme, &rotator.keywheel().policy(&acme).await?, &RotateOptions::default()).await?;
//! println!("{} values re-encrypted", report.counts.rewritten);
//! # Ok(())
//! # }
//! ```
//!
//! ## Connections
//!
//! The backends take connections from the application's pool: a rotation
//! holds one for the scan, one for the read-ahead, one per batch written in
//! parallel ([`RotateOptions::parallel_batches`](keywheel_core::RotateOptions))
//! and one for checkpoints; [`spawn_listener`] keeps one for itself. Size the
//! pool for that beside the application's own use. TLS is the pool's own
//! business: this crate's default feature `tls-rustls-ring` turns on sqlx's
//! rustls with the ring provider (no aws-lc build); without it, sqlx's TLS
//! features are yours to choose.
#![forbid(unsafe_code)]

mod driver;
mod fields;
mod value;

pub use driver::SqlxPool;
pub use fields::RowFields;
pub use keywheel_pg_sql::{
    AuditHead, EncryptedColumn, IndexColumn, KeyType, KeyringFrom, ListenerHandle, MAX_IDENTIFIER_LEN, MigrateOptions,
    MigrationReport, PgSchema, SCHEMA_VERSION, TableSpec, quote_ident,
};
pub use value::{Encrypted, EncryptedText, ValueError};

use keywheel_core::{Keywheel, Result};

/// A [`KeyStore`](keywheel_core::KeyStore) in Postgres over an sqlx pool:
/// [`SqlKeyStore`](keywheel_pg_sql::SqlKeyStore), the same store as
/// keywheel-postgres' `PgKeyStore`. `SqlxKeyStore::new(pool, schema)` with
/// the application's `sqlx::PgPool`.
pub type SqlxKeyStore = keywheel_pg_sql::SqlKeyStore<SqlxPool>;

/// An [`AuditSink`](keywheel_core::AuditSink) in Postgres over an sqlx pool:
/// [`SqlAuditSink`](keywheel_pg_sql::SqlAuditSink), the same sink as
/// keywheel-postgres' `PgAuditSink`. `SqlxAuditSink::new(pool, schema)`.
pub type SqlxAuditSink = keywheel_pg_sql::SqlAuditSink<SqlxPool>;

/// A [`RecordSource`](keywheel_core::RecordSource) over an application
/// table described by a [`TableSpec`], over an sqlx pool:
/// [`SqlRecordSource`](keywheel_pg_sql::SqlRecordSource), the same source as
/// keywheel-postgres' `PgRecordSource`. `SqlxRecordSource::open(pool, spec).await`.
pub type SqlxRecordSource = keywheel_pg_sql::SqlRecordSource<SqlxPool>;

/// Create or upgrade keywheel's tables in `schema` through `pool`
/// ([`keywheel_pg_sql::migrate`]: versioned, idempotent, one transaction,
/// serialized between processes; the same migrations as keywheel-postgres').
pub async fn migrate(pool: &sqlx::PgPool, schema: &PgSchema) -> Result<MigrationReport> {
    keywheel_pg_sql::migrate(&SqlxPool::from(pool), schema).await
}

/// [`migrate`], then grant an application role what it needs
/// ([`keywheel_pg_sql::migrate_with`]); run it as the schema's owner role.
pub async fn migrate_with(pool: &sqlx::PgPool, schema: &PgSchema, options: &MigrateOptions) -> Result<MigrationReport> {
    keywheel_pg_sql::migrate_with(&SqlxPool::from(pool), schema, options).await
}

/// Grant `role` what a keywheel application needs in a migrated `schema`
/// ([`keywheel_pg_sql::grant_application_role`]).
pub async fn grant_application_role(pool: &sqlx::PgPool, schema: &PgSchema, role: &str) -> Result<()> {
    keywheel_pg_sql::grant_application_role(&SqlxPool::from(pool), schema, role).await
}

/// Keep `kw`'s cached keyrings fresh: a [`PgListener`](sqlx::postgres::PgListener)
/// on a connection of `pool` listens on the schema's channel
/// ([`PgSchema::channel`]), where the key store announces every keyring
/// change, and marks the keyring named by each notification stale
/// ([`keywheel_pg_sql::spawn_listener`]: notifications are hints, reloads are
/// rate-limited; after a lost connection it reconnects with back-off and
/// marks every keyring stale).
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool, kw: keywheel_core::Keywheel) -> keywheel_core::Result<()> {
/// use keywheel_sqlx::{PgSchema, spawn_listener};
/// let listener = spawn_listener(&pool, &PgSchema::default(), kw.clone()).await?;
/// // … serve requests with `kw` …
/// listener.abort();
/// # Ok(()) }
/// ```
pub async fn spawn_listener(pool: &sqlx::PgPool, schema: &PgSchema, kw: Keywheel) -> Result<ListenerHandle> {
    keywheel_pg_sql::spawn_listener(&SqlxPool::from(pool), schema, kw).await
}

/// The sqlx this crate is built on.
pub use sqlx;
