//! The service's errors and their HTTP form: a status and a JSON body
//! `{"error": kind, "message": sentence}`.
//!
//! Neither the body nor the log line ever holds a plaintext, a key byte, a
//! ciphertext or a backend's own message (which may quote SQL parameters):
//! keywheel errors are reported by their stable kind
//! ([`keywheel::Error::kind`]), database errors by their SQLSTATE.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answered to a request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed; the sentence says what is wrong (it never
    /// quotes the submitted values).
    #[error("invalid input: {0}")]
    InvalidInput(&'static str),
    /// No such tenant (its keyring does not exist).
    #[error("no such tenant")]
    TenantNotFound,
    /// No such user in this tenant.
    #[error("no such user")]
    UserNotFound,
    /// No such route.
    #[error("no such endpoint")]
    RouteNotFound,
    /// The route exists, not with this method.
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    /// A background task of the request panicked.
    #[error("the operation's task failed")]
    TaskFailed,
    /// An admin endpoint was called without the right bearer token.
    #[error("missing or wrong admin token")]
    Unauthorized,
    /// Admin endpoints are off: the service has no admin token.
    #[error("admin endpoints are disabled (no ADMIN_TOKEN configured)")]
    AdminDisabled,
    /// A master-key rotation was asked for, but no next master key is staged.
    #[error("no next master key is staged (KEYWHEEL_MASTER_KEY_NEXT)")]
    NoNextMasterKey,
    /// keywheel refused or failed.
    #[error("keywheel: {}", .0.kind())]
    Keywheel(#[from] keywheel::Error),
    /// The application's own database access failed.
    #[error("database: {}", sqlstate(.0))]
    Database(#[from] sqlx::Error),
}

/// The JSON body of an error response.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// A stable snake_case kind, e.g. `tenant_not_found`, `decrypt`, `database`.
    pub error: &'static str,
    /// A sentence for humans.
    pub message: String,
}

fn sqlstate(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => format!("SQLSTATE {}", db.code().as_deref().unwrap_or("?")),
        sqlx::Error::PoolTimedOut => "pool timed out".into(),
        sqlx::Error::PoolClosed => "pool closed".into(),
        sqlx::Error::Io(_) => "I/O error".into(),
        sqlx::Error::Tls(_) => "TLS error".into(),
        sqlx::Error::RowNotFound => "row not found".into(),
        _ => "error".into(),
    }
}

impl ApiError {
    /// The status and stable kind of this error.
    pub fn status_and_kind(&self) -> (StatusCode, &'static str) {
        use keywheel::Error as K;
        match self {
            ApiError::InvalidInput(_) => (StatusCode::BAD_REQUEST, "invalid_input"),
            ApiError::TenantNotFound => (StatusCode::NOT_FOUND, "tenant_not_found"),
            ApiError::UserNotFound => (StatusCode::NOT_FOUND, "user_not_found"),
            ApiError::RouteNotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::TaskFailed => (StatusCode::INTERNAL_SERVER_ERROR, "task_failed"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::AdminDisabled => (StatusCode::FORBIDDEN, "admin_disabled"),
            ApiError::NoNextMasterKey => (StatusCode::CONFLICT, "no_next_master_key"),
            ApiError::Keywheel(e) => match e {
                K::KeyringNotFound(_) => (StatusCode::NOT_FOUND, "tenant_not_found"),
                K::InvalidKeyringId(_) => (StatusCode::BAD_REQUEST, "invalid_tenant"),
                K::NotIndexable { .. } => (StatusCode::BAD_REQUEST, e.kind()),
                K::LeaseHeld { .. } | K::RotationInProgress { .. } | K::AlreadyRotated { .. } => {
                    (StatusCode::CONFLICT, e.kind())
                }
                K::KeyringErased { .. } => (StatusCode::GONE, e.kind()),
                _ if e.is_retryable() => (StatusCode::SERVICE_UNAVAILABLE, e.kind()),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, e.kind()),
            },
            ApiError::Database(e) => match e {
                sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable")
                }
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "database"),
            },
        }
    }

    fn message(&self, status: StatusCode) -> String {
        match self {
            // Ours: fixed sentences, safe to show.
            ApiError::Keywheel(_) | ApiError::Database(_) => match status {
                StatusCode::NOT_FOUND => "no such tenant".into(),
                StatusCode::BAD_REQUEST => "the request cannot be processed as given".into(),
                StatusCode::CONFLICT => "a rotation of this keyring is already running or done".into(),
                StatusCode::GONE => "this tenant's keys were erased".into(),
                StatusCode::SERVICE_UNAVAILABLE => "temporarily unavailable, retry".into(),
                _ => "internal error (see the service log for its kind)".into(),
            },
            other => other.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = self.status_and_kind();
        if status.is_server_error() {
            // `self`'s Display is the kind or SQLSTATE only, never a message.
            tracing::error!(error_kind = kind, error = %self, "request failed");
        } else {
            tracing::debug!(error_kind = kind, "request refused");
        }
        let message = self.message(status);
        (status, Json(ErrorBody { error: kind, message })).into_response()
    }
}
