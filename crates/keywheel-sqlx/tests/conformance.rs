//! The whole keywheel conformance suite on the sqlx driver: key store, audit
//! sink, record source (twice: a plain table with a bigint key, and a table
//! whose schema, table and column names are hostile SQL with a text key), and
//! the blind-index checks (an index column in `bytea` and in `text`) — the
//! suite keywheel-postgres runs on tokio-postgres, with its test harness.

#[path = "../../keywheel-postgres/tests/common/mod.rs"]
mod common;
mod sqlx_pool;

/// The driver under test.
type Pool = keywheel_sqlx::SqlxPool;

include!("../../keywheel-postgres/tests/suites/conformance.rs");
