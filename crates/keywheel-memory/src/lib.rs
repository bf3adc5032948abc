//! # keywheel-memory
//!
//! In-memory implementations of the three keywheel backend traits, for tests,
//! demos, single-process tools and the rotation engine's own test suite:
//!
//! * [`MemoryKeyStore`] — a [`KeyStore`](keywheel_core::KeyStore): keyrings,
//!   leases, rotation jobs and policies in a mutex, each keyring update one
//!   atomic compare-and-set.
//! * [`MemoryRecordSource`] — a [`RecordSource`](keywheel_core::RecordSource):
//!   a table of encrypted values keyed by cursor, with an application-side API
//!   (insert, set, remove) to simulate concurrent application writes.
//! * [`MemoryAuditSink`] — an [`AuditSink`](keywheel_core::AuditSink) that
//!   hash-chains its entries, with test hooks to fail or tamper.
//!
//! Nothing here survives the process; use the file or Postgres backends for
//! real deployments. All three pass the `keywheel-conformance` suite.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> keywheel_core::Result<()> {
//! use std::sync::Arc;
//! use keywheel_core::{Context, Keywheel, KeyringId, LocalKek, Purpose, RecordSource, Algorithm};
//! use keywheel_memory::{MemoryAuditSink, MemoryKeyStore, MemoryRecordSource};
//!
//! let audit = Arc::new(MemoryAuditSink::new());
//! let kw = Keywheel::builder()
//!     .store(Arc::new(MemoryKeyStore::new()))
//!     .kek(Arc::new(LocalKek::from_bytes(&[7; 32])))
//!     .audit(audit.clone())
//!     .build()?;
//! let id = KeyringId::new("acme", Purpose::Token)?;
//! kw.create_keyring(&id, Algorithm::Aes256Gcm).await?;
//!
//! // The "application table": one encrypted column.
//! let users = MemoryRecordSource::new("users.oauth_token");
//! let ctx = Context::field("users", "oauth_token", "42");
//! let value = kw.encrypt(&id, b"ya29.secret", &ctx).await?;
//! let cursor = users.insert_row(42, id.clone(), ctx.clone(), value);
//!
//! let stored = users.get(&cursor).expect("row 42");
//! assert_eq!(&kw.decrypt(&id, &stored, &ctx).await?[..], b"ya29.secret");
//! assert_eq!(users.census(None).await?.total(&id), 1);
//! // Every lifecycle step was audited, in one intact hash chain.
//! assert!(!audit.is_empty());
//! assert_eq!(audit.verify(), Ok(audit.len() as u64));
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

mod audit;
mod source;
mod store;

pub use audit::MemoryAuditSink;
pub use source::MemoryRecordSource;
pub use store::MemoryKeyStore;
