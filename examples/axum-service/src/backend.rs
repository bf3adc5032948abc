//! keywheel's durable state: the key store, the audit log, the record source
//! of the `users` table and the live-refresh listener.
//!
//! This is the only module that names a keywheel storage backend:
//! `keywheel-sqlx`, the key store, audit log and record source over the
//! application's own `sqlx::PgPool` (one pool, one driver; the SQL and the
//! schema are the ones `keywheel-postgres` runs through tokio-postgres, so
//! either driver reads what the other wrote).

use std::sync::Arc;

use keywheel::sqlx::{
    KeyType, ListenerHandle, PgSchema, SqlxAuditSink, SqlxKeyStore, SqlxRecordSource, TableSpec, migrate,
    spawn_listener,
};
use keywheel::{Form, KeyEncryptionKey, Keywheel, Purpose, RecordSource, Result};

use crate::users;

/// What the service needs from keywheel's storage.
#[derive(Debug)]
pub struct Backend {
    /// The engine: keyring snapshots, encryption, lifecycle operations.
    pub keywheel: Keywheel,
    /// The encrypted columns of the `users` table, for rotations, census and
    /// verification (the scheduler's and the admin endpoints').
    pub users: Arc<dyn RecordSource>,
    listener: ListenerHandle,
}

impl Backend {
    /// Stop the live-refresh listener (the engine keeps working, refreshed
    /// by its interval alone).
    pub fn stop(&self) {
        self.listener.abort();
    }
}

/// Open keywheel's storage through the application's `pool`: create or
/// upgrade its schema (`keywheel`), build the engine with `kek` as master
/// key, start the listener that reloads a keyring as soon as another
/// instance changes it (it holds one of the pool's connections), and open
/// the record source of `users` (which must exist: the application's
/// migration creates it first).
pub async fn keywheel_backend(pool: &sqlx::PgPool, kek: Arc<dyn KeyEncryptionKey>, actor: &str) -> Result<Backend> {
    let schema = PgSchema::default();
    migrate(pool, &schema).await?;
    let keywheel = Keywheel::builder()
        .store(Arc::new(SqlxKeyStore::new(pool.clone(), schema.clone())))
        .audit(Arc::new(SqlxAuditSink::new(pool.clone(), schema.clone())))
        .kek(kek)
        .actor(actor)
        .build()?;
    let listener = spawn_listener(pool, &schema, keywheel.clone()).await?;
    let users = SqlxRecordSource::open(pool.clone(), users_table()).await?;
    Ok(Backend { keywheel, users: Arc::new(users), listener })
}

/// The `users` table as keywheel sees it: one keyring per tenant (the
/// `tenant` column, purpose `database`), `email` in binary form with its
/// blind index `email_bidx`, `api_token` in text form. The contexts are
/// `Context::field("users", column, id)`, as [`users`] encrypts them.
fn users_table() -> TableSpec {
    TableSpec::new("public", users::TABLE)
        .primary_key("id", KeyType::BigInt)
        .keyring_from_column("tenant", Purpose::Database)
        .column(users::EMAIL, Form::Binary)
        .index(users::EMAIL, users::EMAIL_INDEX, Form::Binary, users::email_index())
        .column(users::API_TOKEN, Form::Text)
}
