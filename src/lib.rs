//! # keywheel
//!
//! Versioned field-level encryption with key rotation. Encrypt single
//! database fields under a versioned key; rotate the key while old values stay
//! readable; re-encrypt stored values in resumable batches; destroy an old
//! version only when nothing uses it; audit every step.
//!
//! ```
//! use std::sync::Arc;
//!
//! use keywheel::memory::{MemoryAuditSink, MemoryKeyStore};
//! use keywheel::{Algorithm, Context, KeyringId, Keywheel, LocalKek, Purpose};
//! use secrecy::ExposeSecret;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), keywheel::Error> {
//! // In production the master key comes from your secret manager:
//! // `LocalKek::from_env("KEYWHEEL_MASTER_KEY")?`. Here, a throwaway one.
//! let master = LocalKek::generate_master_key()?;
//! let kw = Keywheel::builder()
//!     .store(Arc::new(MemoryKeyStore::new())) // or keywheel::file / keywheel::postgres
//!     .kek(Arc::new(LocalKek::from_base64(master.expose_secret())?))
//!     .audit(Arc::new(MemoryAuditSink::new()))
//!     .build()?;
//!
//! // One keyring per tenant and purpose; version 1 is Active.
//! let tokens = KeyringId::new("acme", Purpose::Token)?;
//! kw.create_keyring(&tokens, Algorithm::Aes256Gcm).await?;
//!
//! // A field is bound to its table, column and row.
//! let ctx = Context::field("users", "oauth_token", "42");
//! let stored = kw.encrypt(&tokens, b"ya29.secret", &ctx).await?;
//!
//! // Rotate: version 2 encrypts from now on, version 1 still decrypts.
//! let v2 = kw.add_version(&tokens).await?;
//! kw.activate(&tokens, v2).await?;
//! assert_eq!(&kw.decrypt(&tokens, &stored, &ctx).await?[..], b"ya29.secret");
//!
//! // Move the old value to version 2 (a `Rotator` does this for whole tables).
//! let ring = kw.keyring(&tokens).await?;
//! assert!(ring.needs_rotation(&stored)?);
//! let moved = ring.reencrypt(&stored, &ctx)?;
//! assert_eq!(keywheel::version_of(&moved)?, v2);
//! # Ok(())
//! # }
//! ```
//!
//! This facade re-exports [`keywheel_core`] and, behind features, the
//! backends: `memory` (default), `file`, `postgres` (tokio-postgres) and
//! `sqlx` (the same Postgres backends over an application's sqlx pool), and the master keys
//! held in a KMS or HSM: `aws-kms` and `pkcs11`. The [`manual`] is the
//! reference: concepts, wire format, security model, backends, audit trail,
//! lifecycle invariants and the operator runbook.
#![forbid(unsafe_code)]

pub use keywheel_core::*;

/// In-memory backends (feature `memory`, on by default).
#[cfg(feature = "memory")]
pub use keywheel_memory as memory;

/// File backend: key store and hash-chained audit log on local disk (feature `file`).
#[cfg(feature = "file")]
pub use keywheel_file as file;

/// Postgres backend: key store, audit log and record source (feature `postgres`).
#[cfg(feature = "postgres")]
pub use keywheel_postgres as postgres;

/// Postgres backend over an application's sqlx `PgPool`: the same key store,
/// audit log and record source as the `postgres` feature's, with sqlx
/// column types for keywheel values (feature `sqlx`).
#[cfg(feature = "sqlx")]
pub use keywheel_sqlx as sqlx;

/// AWS KMS key-encryption key: the master key stays in KMS (feature `aws-kms`).
#[cfg(feature = "aws-kms")]
pub use keywheel_kms_aws as aws_kms;

/// PKCS#11 key-encryption key: the master key stays in an HSM (feature `pkcs11`).
#[cfg(feature = "pkcs11")]
pub use keywheel_pkcs11 as pkcs11;
