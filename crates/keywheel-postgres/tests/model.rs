//! The model-based test of keywheel's safety invariants (manual, "Lifecycle invariants") on
//! Postgres: key store, audit log and two application tables as record
//! sources, in one test database, with fresh schemas for every case.
//!
//! `KEYWHEEL_MODEL_CASES` raises the number of cases (default 32).
//!
//! The test itself is `suites/model.rs`, shared with keywheel-sqlx, which
//! runs it on its driver.

mod common;

/// The driver under test.
type Pool = keywheel_postgres::PgPool;

include!("suites/model.rs");
