//! The readiness review (`GET /v1/check`): each project against the practices of docs/DR.md,
//! with a severity and a fix per finding.

use axum::Json;
use axum::extract::State;
use holdfast_types::api::{ErrorBody, Readiness};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{ApiQuery, Authed};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(check))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct CheckQuery {
    /// Review only this project (name or id); every active project when absent.
    project: Option<String>,
}

/// Reviews projects: delete lock, continuous backup, replica, identity, standing delete rights,
/// trial restore, purge protection. A project is `ok` when no high-severity check fails.
#[utoipa::path(get, path = "/v1/check", tag = "check", params(CheckQuery),
    responses((status = 200, body = Vec<Readiness>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn check(
    State(state): State<AppState>,
    Authed(caller): Authed,
    ApiQuery(query): ApiQuery<CheckQuery>,
) -> ApiResult<Json<Vec<Readiness>>> {
    Ok(Json(state.node.governance.check(&caller, query.project.as_deref()).await?))
}
