//! Resource locks (`/v1/locks`): create and remove (Owners only), list (readers too).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use holdfast_types::api::{ErrorBody, Lock, LockCreate, LockList};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{ApiJson, ApiQuery, Authed};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_locks, create_lock)).routes(routes!(delete_lock))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct LockQuery {
    /// Only the locks that apply at this scope (set there or above it).
    scope: Option<String>,
}

/// Lists locks: every one, or those that apply at `scope`.
#[utoipa::path(get, path = "/v1/locks", tag = "locks", params(LockQuery),
    responses((status = 200, body = LockList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
async fn list_locks(
    State(state): State<AppState>,
    Authed(caller): Authed,
    ApiQuery(query): ApiQuery<LockQuery>,
) -> ApiResult<Json<LockList>> {
    Ok(Json(state.node.governance.list_locks(&caller, query.scope.as_deref())?))
}

/// Sets a lock (Owners only). `CanNotDelete` refuses deletes at or under the scope, `ReadOnly`
/// every change; with `data_plane` (always for one resource) the project's contents too.
#[utoipa::path(post, path = "/v1/locks", tag = "locks", request_body = LockCreate,
    responses((status = 201, body = Lock), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
async fn create_lock(
    State(state): State<AppState>,
    Authed(caller): Authed,
    ApiJson(req): ApiJson<LockCreate>,
) -> ApiResult<(StatusCode, Json<Lock>)> {
    Ok((StatusCode::CREATED, Json(state.node.governance.create_lock(&caller, req).await?)))
}

/// Removes a lock (Owners only).
#[utoipa::path(delete, path = "/v1/locks/{id}", tag = "locks", params(("id" = String, Path, description = "lock id")),
    responses((status = 204, description = "removed"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn delete_lock(State(state): State<AppState>, Authed(caller): Authed, Path(id): Path<String>) -> ApiResult<StatusCode> {
    state.node.governance.delete_lock(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
