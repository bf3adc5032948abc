//! The model-based test of keywheel's safety invariants (manual, "Lifecycle
//! invariants") on the sqlx driver: the test keywheel-postgres runs on
//! tokio-postgres, with its test harness.
//!
//! `KEYWHEEL_MODEL_CASES` raises the number of cases (default 32).

#[path = "../../keywheel-postgres/tests/common/mod.rs"]
mod common;
mod sqlx_pool;

/// The driver under test.
type Pool = keywheel_sqlx::SqlxPool;

include!("../../keywheel-postgres/tests/suites/model.rs");
