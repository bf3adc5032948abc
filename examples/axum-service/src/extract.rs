//! An extractor wrapper whose rejection is an [`ApiError`] (JSON with a
//! kind), not axum's plain-text one; like the JSON body's, it never quotes
//! what was sent.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::error::ApiError;

/// `E` (a `Path` or `Query`), rejected as `invalid_input`:
/// `Checked(Path(tenant)): Checked<Path<String>>`.
#[derive(Debug)]
pub struct Checked<E>(pub E);

impl<S: Send + Sync, E: FromRequestParts<S>> FromRequestParts<S> for Checked<E> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match E::from_request_parts(parts, state).await {
            Ok(inner) => Ok(Checked(inner)),
            Err(_) => Err(ApiError::InvalidInput("a path or query parameter is malformed")),
        }
    }
}
