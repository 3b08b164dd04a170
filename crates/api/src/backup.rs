//! Continuous backup and point-in-time restore: `GET /v1/backup` and
//! `GET|POST /v1/projects/{project}/backup[/snapshot|/verify]` for status, snapshots and trial
//! restores; `POST /v1/projects/{project}/restore` starts a restore into a new project and
//! answers 202 with an operation to poll at `GET /v1/operations/{id}`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use holdfast_types::api::{BackupStatus, ErrorBody, Operation, RestoreRequest, VerifyReport};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{ApiJson, Authed};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(all_status))
        .routes(routes!(project_status))
        .routes(routes!(snapshot))
        .routes(routes!(verify))
        .routes(routes!(restore))
        .routes(routes!(operation))
}

/// Backup status of every project: archived LSN, lag, restorable window.
#[utoipa::path(get, path = "/v1/backup", tag = "backup",
    responses((status = 200, body = Vec<BackupStatus>), (status = 400, description = "no archive configured", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn all_status(State(state): State<AppState>, Authed(caller): Authed) -> ApiResult<Json<Vec<BackupStatus>>> {
    Ok(Json(state.node.recovery.backup_status(&caller, None).await?))
}

/// Backup status of one project.
#[utoipa::path(get, path = "/v1/projects/{project}/backup", tag = "backup",
    params(("project" = String, Path, description = "project name or id")),
    responses((status = 200, body = BackupStatus), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn project_status(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(project): Path<String>,
) -> ApiResult<Json<BackupStatus>> {
    let mut all = state.node.recovery.backup_status(&caller, Some(&project)).await?;
    Ok(Json(all.pop().ok_or_else(|| holdfast_types::Error::not_found(format!("project {project:?} not found")))?))
}

/// Ships the journal and takes a snapshot now.
#[utoipa::path(post, path = "/v1/projects/{project}/backup/snapshot", tag = "backup",
    params(("project" = String, Path, description = "project name or id")),
    responses((status = 200, body = BackupStatus), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, description = "archive unreachable", body = ErrorBody)))]
async fn snapshot(State(state): State<AppState>, Authed(caller): Authed, Path(project): Path<String>) -> ApiResult<Json<BackupStatus>> {
    Ok(Json(state.node.recovery.backup_now(&caller, &project).await?))
}

/// Trial restore of the archive into a scratch database, checked against recorded state hashes.
#[utoipa::path(post, path = "/v1/projects/{project}/backup/verify", tag = "backup",
    params(("project" = String, Path, description = "project name or id")),
    responses((status = 200, description = "the report (ok may be false)", body = VerifyReport), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn verify(State(state): State<AppState>, Authed(caller): Authed, Path(project): Path<String>) -> ApiResult<Json<VerifyReport>> {
    Ok(Json(state.node.recovery.backup_verify(&caller, &project).await?))
}

/// Restores a project (live, or deleted and in the archive) to a point in time, into a new
/// project that appears only once complete.
#[utoipa::path(post, path = "/v1/projects/{project}/restore", tag = "backup",
    params(("project" = String, Path, description = "source project name or id")),
    request_body = RestoreRequest,
    responses((status = 202, description = "restore started", body = Operation),
        (status = 400, description = "bad target, or outside the window", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn restore(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(project): Path<String>,
    ApiJson(req): ApiJson<RestoreRequest>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    Ok((StatusCode::ACCEPTED, Json(state.node.recovery.start_restore(&caller, &project, req).await?)))
}

/// A long-running operation's progress and outcome.
#[utoipa::path(get, path = "/v1/operations/{id}", tag = "backup",
    params(("id" = String, Path, description = "operation id (op_…)")),
    responses((status = 200, body = Operation), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn operation(State(state): State<AppState>, Authed(caller): Authed, Path(id): Path<String>) -> ApiResult<Json<Operation>> {
    Ok(Json(state.node.recovery.operation(&caller, &id)?))
}
