//! # keywheel-postgres
//!
//! Postgres backends for keywheel, on tokio-postgres 0.7:
//!
//! * [`PgKeyStore`] — a [`KeyStore`](keywheel_core::KeyStore): keyrings with
//!   their generation, versions (wrapped material only), policies, rotation
//!   jobs and leases; every keyring change one compare-and-set transaction,
//!   announced with `NOTIFY`.
//! * [`PgAuditSink`] — an [`AuditSink`](keywheel_core::AuditSink): an
//!   append-only, hash-chained log with one total order under concurrent
//!   writers, and a verifier.
//! * [`PgRecordSource`] — a [`RecordSource`](keywheel_core::RecordSource)
//!   over the encrypted columns of an application table described by a
//!   [`TableSpec`]: keyset pagination, the rotation target filtered out in SQL
//!   from the header bytes, batched compare-and-set writes with `UNNEST`,
//!   census by `GROUP BY`; blind index columns beside encrypted columns
//!   ([`TableSpec::index`]) rewritten with their values, and [`IndexParam`]
//!   for lookups (`WHERE email_bidx = ANY($1)`).
//! * [`spawn_listener`] — live refresh: every [`Keywheel`](keywheel_core::Keywheel)
//!   instance reloads a keyring as soon as another one changes it.
//!
//! Connections come from a [`PgPool`]: from a connection string with TLS on
//! rustls ([`PgPool::connect`], see [TLS](#tls)), through any tokio-postgres
//! [`MakeTlsConnect`](tokio_postgres::tls::MakeTlsConnect) ([`PgPool::new`]),
//! or a deadpool-postgres pool with the `deadpool` feature. keywheel's tables
//! live in one schema ([`PgSchema`], default `keywheel`), created and upgraded
//! by [`migrate`].
//!
//! ```no_run
//! # #[tokio::main]
//! # async fn main() -> keywheel_core::Result<()> {
//! use std::sync::Arc;
//! use keywheel_core::{Algorithm, Form, Keywheel, KeyringId, LocalKek, Purpose, RotateOptions, Rotator};
//! use keywheel_postgres::{
//!     KeyType, PgAuditSink, PgKeyStore, PgPool, PgRecordSource, PgSchema, TableSpec, TlsSettings, migrate,
//!     spawn_listener,
//! };
//!
//! let pool = PgPool::connect(
//!     "postgresql://app@db.example.com/app?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem",
//!     &TlsSettings::new(),
//! )
//! .await?;
//! let schema = PgSchema::default();
//! migrate(&pool, &schema).await?;
//! let kw = Keywheel::builder()
//!     .store(Arc::new(PgKeyStore::new(pool.clone(), schema.clone())))
//!     .audit(Arc::new(PgAuditSink::new(pool.clone(), schema.clone())))
//!     .kek(Arc::new(LocalKek::from_env("KEYWHEEL_MASTER_KEY")?))
//!     .build()?;
//! let _listener = spawn_listener(&pool, &schema, kw.clone()).await?;
//!
//! // users(id bigint primary key, tenant text, email bytea)
//! let users = PgRecordSource::open(
//!     pool.clone(),
//!     TableSpec::new("public", "users")
//!         .primary_key("id", KeyType::BigInt)
//!         .keyring_from_column("tenant", Purpose::Database)
//!         .column("email", Form::Binary),
//! )
//! .await?;
//! let acme = KeyringId::new("acme", Purpose::Database)?;
//! let rotator = Rotator::new(kw.clone())?.source(Arc::new(users));
//! let report = rotator.rotate(&acme, &rotator.keywheel().policy(&acme).await?, &RotateOptions::default()).await?;
//! println!("{} values re-encrypted", report.counts.rewritten);
//! # Ok(())
//! # }
//! ```
//!
//! ## TLS
//!
//! [`PgPool::connect`] and [`PgPool::from_url`] read libpq's `sslmode` and
//! `sslrootcert` from the connection string (URL or `key=value` form);
//! [`TlsSettings`] overrides them. TLS is rustls with the ring crypto
//! provider, passed explicitly: no process-wide provider needs installing.
//!
//! | sslmode       | encrypted                | certificate chain checked | host name checked |
//! |---------------|--------------------------|---------------------------|-------------------|
//! | `disable`     | no                       | –                         | –                 |
//! | `prefer`      | when the server offers it| only with a root cert     | no                |
//! | `require`     | yes                      | only with a root cert     | no                |
//! | `verify-ca`   | yes                      | yes (root cert needed)    | no                |
//! | `verify-full` | yes                      | yes (root cert needed)    | yes               |
//!
//! `prefer` is the default, as in libpq; connections over Unix-domain sockets
//! are never encrypted (as in libpq). As in libpq, a root certificate
//! given with `require` or `prefer` makes the chain checked. Unlike libpq,
//! `prefer` falls back to plain text only when the server offers no TLS,
//! never after a refused certificate, and there is neither a
//! `~/.postgresql/root.crt` default nor a system trust store: the verifying
//! modes need the CA's PEM file. A refusal is a typed [`ConnectError`]
//! ([`HostNameMismatch`](ConnectError::HostNameMismatch),
//! [`CertificateRejected`](ConnectError::CertificateRejected), …) from
//! [`PgPool::connect`], and a non-retryable
//! [`Error::Backend`](keywheel_core::Error::Backend) with the same sentence
//! from a pool's [`get`](PgPool::get). No error shows the connection string's
//! password; [`redact_url`] makes one fit to log.
//!
//! ```
//! use keywheel_postgres::{ConnectError, PgPool, SslMode, TlsSettings};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let e = PgPool::from_url("postgresql://app:s3cret@db/app?sslmode=verify-ca", &TlsSettings::new()).unwrap_err();
//! assert_eq!(e, ConnectError::RootCertRequired { mode: SslMode::VerifyCa });
//! let e = PgPool::from_url("postgresql://app:s3cret@db/app?sslmode=on", &TlsSettings::new()).unwrap_err();
//! assert_eq!(e.to_string(), "unknown sslmode \"on\": expected disable, prefer, require, verify-ca or verify-full");
//! # }
//! ```
//!
//! ## Roles: the application does not own the audit log
//!
//! The audit log's append-only triggers stop the application's SQL from
//! editing, deleting or truncating entries, but the owner of a table can
//! disable its triggers (or drop it). Run [`migrate_with`] at deployment as a
//! separate **owner** role, naming the **application** role in
//! [`MigrateOptions::app_role`]; the application then connects as that role
//! and may only `INSERT` and `SELECT` audit rows (what it needs on the other
//! tables is granted too, see [`grant_application_role`]):
//!
//! ```sql
//! CREATE ROLE keywheel_owner LOGIN;   -- runs migrations, owns the schema
//! CREATE ROLE app LOGIN;              -- the application
//! GRANT CREATE ON DATABASE appdb TO keywheel_owner;
//! ```
//!
//! ```no_run
//! # async fn demo() -> keywheel_core::Result<()> {
//! use keywheel_postgres::{MigrateOptions, PgPool, PgSchema, migrate_with};
//! let owner = PgPool::without_tls("postgresql://keywheel_owner@db/appdb")?;
//! migrate_with(&owner, &PgSchema::default(), &MigrateOptions::new().app_role("app")).await?;
//! # Ok(()) }
//! ```
//!
//! As `app`, `UPDATE`, `DELETE` and `TRUNCATE` of audit rows, `ALTER TABLE …
//! DISABLE TRIGGER`, `DROP TABLE` and `CREATE` in the schema all fail with
//! `insufficient_privilege`; keyring operations and rotations work. An
//! application calling [`migrate`] at start-up is fine: an up-to-date schema
//! needs no DDL. A superuser or the owner is refused as application role.
#![forbid(unsafe_code)]

mod conninfo;
mod driver;
mod error;
mod lookup;
mod pool;
mod tls;

pub use conninfo::redact_url;
pub use keywheel_pg_sql::{
    AuditHead, Driver, EncryptedColumn, IndexColumn, KeyType, KeyringFrom, ListenerHandle, MAX_IDENTIFIER_LEN,
    MigrateOptions, MigrationReport, PgSchema, SCHEMA_VERSION, TableSpec, grant_application_role, migrate,
    migrate_with, quote_ident, spawn_listener,
};
pub use lookup::IndexParam;
pub use pool::{DEFAULT_POOL_SIZE, PgClient, PgPool};
pub use tls::{ConnectError, SslMode, TlsSettings};

/// A [`KeyStore`](keywheel_core::KeyStore) in Postgres over a [`PgPool`]:
/// [`SqlKeyStore`](keywheel_pg_sql::SqlKeyStore) (keyrings, versions,
/// policies, jobs and leases; every keyring change one compare-and-set
/// transaction, announced with `NOTIFY`), run by tokio-postgres.
/// `PgKeyStore::new(pool, schema)`.
pub type PgKeyStore = keywheel_pg_sql::SqlKeyStore<PgPool>;

/// An [`AuditSink`](keywheel_core::AuditSink) in Postgres over a [`PgPool`]:
/// [`SqlAuditSink`](keywheel_pg_sql::SqlAuditSink) (an append-only, keyed
/// hash chain with one total order under concurrent writers), run by
/// tokio-postgres. `PgAuditSink::new(pool, schema)`.
pub type PgAuditSink = keywheel_pg_sql::SqlAuditSink<PgPool>;

/// A [`RecordSource`](keywheel_core::RecordSource) over an application table
/// described by a [`TableSpec`], over a [`PgPool`]:
/// [`SqlRecordSource`](keywheel_pg_sql::SqlRecordSource) (keyset scans,
/// header filtering and census in SQL, batched compare-and-set), run by
/// tokio-postgres. `PgRecordSource::open(pool, spec).await`.
pub type PgRecordSource = keywheel_pg_sql::SqlRecordSource<PgPool>;

/// The tokio-postgres this crate is built on (for `Config`, TLS and `Client`).
pub use tokio_postgres;
