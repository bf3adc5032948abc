//! # keywheel
//!
//! Versioned field-level encryption with key rotation. This facade re-exports
//! [`keywheel_core`] and, behind features, the backends: `memory` (default).
#![forbid(unsafe_code)]

pub use keywheel_core::*;

/// In-memory backends (feature `memory`, on by default).
#[cfg(feature = "memory")]
pub use keywheel_memory as memory;
