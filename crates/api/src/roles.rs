//! Role assignments (`/v1/role-assignments`): a principal holds a role at `/` or at one project,
//! inherited downward. Owners only.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use holdfast_types::api::{ErrorBody, RoleAssignment, RoleAssignmentList};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{ApiJson, Authed};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_assignments, assign)).routes(routes!(unassign))
}

/// Every role assignment.
#[utoipa::path(get, path = "/v1/role-assignments", tag = "keys",
    responses((status = 200, body = RoleAssignmentList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_assignments(State(state): State<AppState>, Authed(caller): Authed) -> ApiResult<Json<RoleAssignmentList>> {
    Ok(Json(state.service.list_role_assignments(&caller).await?))
}

/// Gives a principal a role at a scope (`/` or `/projects/{name}`).
#[utoipa::path(post, path = "/v1/role-assignments", tag = "keys", request_body = RoleAssignment,
    responses((status = 201, body = RoleAssignment), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, description = "no such principal", body = ErrorBody)))]
async fn assign(
    State(state): State<AppState>,
    Authed(caller): Authed,
    ApiJson(req): ApiJson<RoleAssignment>,
) -> ApiResult<(StatusCode, Json<RoleAssignment>)> {
    Ok((StatusCode::CREATED, Json(state.service.assign_role(&caller, req).await?)))
}

/// Takes a role at a scope away from a principal (the body names the assignment).
#[utoipa::path(post, path = "/v1/role-assignments/remove", tag = "keys", request_body = RoleAssignment,
    responses((status = 204, description = "removed"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn unassign(State(state): State<AppState>, Authed(caller): Authed, ApiJson(req): ApiJson<RoleAssignment>) -> ApiResult<StatusCode> {
    state.service.unassign_role(&caller, req).await?;
    Ok(StatusCode::NO_CONTENT)
}
