//! The whole keywheel conformance suite against Postgres: key store, audit
//! sink, record source (twice: a plain table with a bigint key, and a table
//! whose schema, table and column names are hostile SQL with a text key), and
//! the blind-index checks (an index column in `bytea` and in `text`).
//!
//! The suite itself is `suites/conformance.rs`, shared with keywheel-sqlx,
//! which runs it on its driver.

mod common;

/// The driver under test.
type Pool = keywheel_postgres::PgPool;

include!("suites/conformance.rs");
