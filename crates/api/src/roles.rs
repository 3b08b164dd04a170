//! Roles (`/v1/roles`: the built-in ones and custom definitions) and role assignments
//! (`/v1/role-assignments`): a principal holds a role at `/` or at one project, inherited
//! downward. Owners only.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use holdfast_types::api::{ErrorBody, RoleAssignment, RoleAssignmentList, RoleDefinition, RoleDefinitionList};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{ApiJson, Authed};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_assignments, assign))
        .routes(routes!(unassign))
        .routes(routes!(list_roles, create_role))
        .routes(routes!(delete_role))
}

/// Every role: the built-in ones, then the custom ones.
#[utoipa::path(get, path = "/v1/roles", tag = "keys",
    responses((status = 200, body = RoleDefinitionList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_roles(State(state): State<AppState>, Authed(caller): Authed) -> ApiResult<Json<RoleDefinitionList>> {
    Ok(Json(state.node.governance.list_roles(&caller).await?))
}

/// Defines a custom role: action patterns (`*` is a wildcard) it allows and denies.
#[utoipa::path(post, path = "/v1/roles", tag = "keys", request_body = RoleDefinition,
    responses((status = 201, body = RoleDefinition), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, description = "the name is taken", body = ErrorBody)))]
async fn create_role(
    State(state): State<AppState>,
    Authed(caller): Authed,
    ApiJson(req): ApiJson<RoleDefinition>,
) -> ApiResult<(StatusCode, Json<RoleDefinition>)> {
    Ok((StatusCode::CREATED, Json(state.node.governance.create_role(&caller, req).await?)))
}

/// Removes a custom role no assignment holds.
#[utoipa::path(delete, path = "/v1/roles/{name}", tag = "keys",
    params(("name" = String, Path, description = "the custom role's name")),
    responses((status = 204, description = "removed"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, description = "still assigned", body = ErrorBody)))]
async fn delete_role(State(state): State<AppState>, Authed(caller): Authed, Path(name): Path<String>) -> ApiResult<StatusCode> {
    state.node.governance.delete_role(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every role assignment.
#[utoipa::path(get, path = "/v1/role-assignments", tag = "keys",
    responses((status = 200, body = RoleAssignmentList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_assignments(State(state): State<AppState>, Authed(caller): Authed) -> ApiResult<Json<RoleAssignmentList>> {
    Ok(Json(state.node.governance.list_role_assignments(&caller).await?))
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
    Ok((StatusCode::CREATED, Json(state.node.governance.assign_role(&caller, req).await?)))
}

/// Takes a role at a scope away from a principal (the body names the assignment).
#[utoipa::path(post, path = "/v1/role-assignments/remove", tag = "keys", request_body = RoleAssignment,
    responses((status = 204, description = "removed"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "the last admin at / with a live key keeps that role", body = ErrorBody)))]
async fn unassign(State(state): State<AppState>, Authed(caller): Authed, ApiJson(req): ApiJson<RoleAssignment>) -> ApiResult<StatusCode> {
    state.node.governance.unassign_role(&caller, req).await?;
    Ok(StatusCode::NO_CONTENT)
}
