//! Operations endpoints: the scheduler's status (open, read-only: keyring
//! ids, versions, counts and warnings, nothing secret), and — behind a
//! bearer token — a keyring rotation, a master-key (KEK) rotation and
//! pausing the scheduler. In production, serve `/admin` on an internal
//! address as well.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use keywheel::{KekRotationReport, RotateOptions, RotationReport, StatusReport};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::Checked;
use crate::users::keyring_id;

/// The query of `GET /admin/scheduler`.
#[derive(Debug, Deserialize)]
pub struct StatusQuery {
    /// Take a fresh census of the `users` table first (values per version);
    /// otherwise the scheduler's last one is shown.
    #[serde(default)]
    pub census: bool,
}

/// `GET /admin/scheduler`: the scheduler's status report (per keyring: Active
/// version and age, next due time, versions by state, last job, values per
/// version, warnings; the scheduler's totals and whether it is paused).
pub async fn scheduler_status(
    State(state): State<AppState>,
    Checked(Query(query)): Checked<Query<StatusQuery>>,
) -> Result<Json<StatusReport>, ApiError> {
    Ok(Json(state.scheduler().status(query.census).await?))
}

/// Check the `Authorization: Bearer …` header against the configured token
/// (in constant time).
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let expected = state.admin_token().ok_or(ApiError::AdminDisabled)?;
    let given = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized)?;
    if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) { Ok(()) } else { Err(ApiError::Unauthorized) }
}

/// `POST /admin/tenants/{tenant}/rotate`: rotate the tenant's keyring now,
/// under its stored policy (activation delay included), re-encrypting its
/// rows of `users`; answers the rotation's report when it is done. An
/// interrupted rotation (crash, deploy) is resumed by the scheduler.
pub async fn rotate(
    State(state): State<AppState>,
    headers: HeaderMap,
    Checked(Path(tenant)): Checked<Path<String>>,
) -> Result<Json<RotationReport>, ApiError> {
    authorize(&state, &headers)?;
    let kid = keyring_id(&tenant)?;
    let policy = state.keywheel().policy(&kid).await?;
    // In its own task: a client that hangs up does not stop the rotation halfway.
    let (rotator, id) = (state.rotator().clone(), kid.clone());
    let report = tokio::spawn(async move { rotator.rotate(&id, &policy, &RotateOptions::default()).await })
        .await
        .map_err(|_| ApiError::TaskFailed)??;
    tracing::info!(keyring = %kid, rewritten = report.counts.rewritten, failed = report.counts.failed, "rotation done");
    Ok(Json(report))
}

/// `POST /admin/kek/rotate`: rewrap every stored key version under the
/// staged next master key (`KEYWHEEL_MASTER_KEY_NEXT`); no value is touched.
/// Then promote the next key to `KEYWHEEL_MASTER_KEY` in every instance
/// (the manual's "Master-key (KEK) rotation").
pub async fn rotate_kek(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<KekRotationReport>, ApiError> {
    authorize(&state, &headers)?;
    let next = state.next_master_key().ok_or(ApiError::NoNextMasterKey)?;
    let rotator = state.rotator().clone();
    let report =
        tokio::spawn(async move { rotator.rotate_kek(next).await }).await.map_err(|_| ApiError::TaskFailed)??;
    tracing::info!(keyrings = report.keyrings, keys = report.keys, "master key rotation done");
    Ok(Json(report))
}

/// `POST /admin/scheduler/pause`: stop starting rotations and retirements.
pub async fn pause(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<StatusReport>, ApiError> {
    authorize(&state, &headers)?;
    state.scheduler().pause();
    Ok(Json(state.scheduler().status(false).await?))
}

/// `POST /admin/scheduler/resume`: undo a pause.
pub async fn resume(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<StatusReport>, ApiError> {
    authorize(&state, &headers)?;
    state.scheduler().resume();
    Ok(Json(state.scheduler().status(false).await?))
}
