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
//!   census by `GROUP BY`.
//! * [`spawn_listener`] — live refresh: every [`Keywheel`](keywheel_core::Keywheel)
//!   instance reloads a keyring as soon as another one changes it.
//!
//! Connections come from a [`PgPool`] (TLS through any tokio-postgres
//! [`MakeTlsConnect`](tokio_postgres::tls::MakeTlsConnect); a deadpool-postgres
//! pool with the `deadpool` feature). keywheel's tables live in one schema
//! ([`PgSchema`], default `keywheel`), created and upgraded by [`migrate`].
//!
//! ```no_run
//! # #[tokio::main]
//! # async fn main() -> keywheel_core::Result<()> {
//! use std::sync::Arc;
//! use keywheel_core::{Algorithm, Form, Keywheel, KeyringId, LocalKek, Purpose, RotateOptions, Rotator};
//! use keywheel_postgres::{
//!     KeyType, PgAuditSink, PgKeyStore, PgPool, PgRecordSource, PgSchema, TableSpec, migrate, spawn_listener,
//! };
//!
//! let pool = PgPool::without_tls("postgresql://app@localhost/app")?;
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
#![forbid(unsafe_code)]

mod audit;
mod error;
mod header;
mod ident;
mod listener;
mod pool;
mod schema;
mod source;
mod store;

pub use audit::{AuditHead, PgAuditSink};
pub use ident::{MAX_IDENTIFIER_LEN, quote_ident};
pub use listener::{ListenerHandle, spawn_listener};
pub use pool::{DEFAULT_POOL_SIZE, PgClient, PgPool};
pub use schema::{MigrationReport, PgSchema, SCHEMA_VERSION, migrate};
pub use source::{EncryptedColumn, KeyType, KeyringFrom, PgRecordSource, TableSpec};
pub use store::PgKeyStore;

/// The tokio-postgres this crate is built on (for `Config`, TLS and `Client`).
pub use tokio_postgres;
