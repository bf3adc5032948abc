//! Error helpers of the connection code (pool, TLS).

pub(crate) use keywheel_pg_sql::POOL;

/// Whether a Postgres error is transient: repeating the same call may succeed
/// (the SQLSTATE classes of [`keywheel_pg_sql::is_retryable_code`]; no
/// SQLSTATE: an I/O error, closed connection or timeout).
pub(crate) fn is_retryable(e: &tokio_postgres::Error) -> bool {
    crate::driver::db_error(e).is_retryable()
}
