//! # keywheel
//!
//! Versioned field-level encryption with key rotation. This facade re-exports
//! [`keywheel_core`] and, behind features, the backends: `memory` (default),
//! `file` and `postgres`.
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
