//! Mapping tokio-postgres errors to [`keywheel_core::Error::Backend`].

use keywheel_core::Error;
use tokio_postgres::error::SqlState;

/// Backend name of the key store in errors.
pub(crate) const STORE: &str = "postgres key store";
/// Backend name of the audit sink in errors.
pub(crate) const AUDIT: &str = "postgres audit sink";
/// Backend name of the record source in errors.
pub(crate) const SOURCE: &str = "postgres record source";
/// Backend name of the pool and migrations in errors.
pub(crate) const POOL: &str = "postgres";

/// Whether a Postgres error is transient: repeating the same call may succeed.
pub(crate) fn is_retryable(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => {
            let c = code.code();
            *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::TOO_MANY_CONNECTIONS
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::LOCK_NOT_AVAILABLE
                || *code == SqlState::QUERY_CANCELED
                || c.starts_with("08")
                || c.starts_with("53")
        }
        // No SQLSTATE: I/O error, closed connection, timeout.
        None => true,
    }
}

/// `backend: <what>: <server message> (SQLSTATE)`. Only the server's primary
/// message is used (never DETAIL, which may echo row values).
pub(crate) fn pg(backend: &'static str, what: &str, e: &tokio_postgres::Error) -> Error {
    let message = match e.as_db_error() {
        Some(db) => format!("{what}: {} (SQLSTATE {})", db.message(), db.code().code()),
        None => format!("{what}: {e}"),
    };
    Error::backend(backend, message, is_retryable(e))
}

/// A non-retryable backend error with a message.
pub(crate) fn invalid(backend: &'static str, message: impl Into<String>) -> Error {
    Error::backend(backend, message, false)
}

/// Shorthand: `.map_err(on(STORE, "load keyring"))`.
pub(crate) fn on(backend: &'static str, what: &'static str) -> impl Fn(tokio_postgres::Error) -> Error {
    move |e| pg(backend, what, &e)
}
