//! Export and import of a project (`docs/formats/export.md`): the export file streams out of
//! `GET /v1/projects/{project}/export`, and streams into `POST /v1/projects/{project}/import`.
//! The import body is not collected, so no body-limit layer applies to it: its limit is the
//! import limit (`limits.max_import_bytes`), which the service enforces on the bytes as they
//! arrive (413), and on an announced `Content-Length` before reading any (413, or 507 when the
//! disk cannot hold it).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use holdfast_recovery::export::{ImportSummary, OnConflict, Selection, parse_kinds};
use holdfast_types::api::ErrorBody;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{ApiQuery, Authed};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(export))
        .routes(routes!(import))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct ExportQuery {
    /// Comma-separated kinds to export (default: all).
    include: Option<String>,
    /// Comma-separated kinds to leave out.
    exclude: Option<String>,
}

/// Exports a project as one portable file (JSON Lines; see docs/formats/export.md). Connection
/// secrets are never exported.
#[utoipa::path(get, path = "/v1/projects/{project}/export", tag = "projects", params(
        ("project" = String, Path, description = "project name or id"), ExportQuery),
    responses((status = 200, description = "the export file", content_type = "application/x-ndjson", body = String),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn export(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(project): Path<String>,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> ApiResult<Response> {
    let selection = Selection {
        include: q.include.as_deref().map(parse_kinds).transpose()?,
        exclude: q.exclude.as_deref().map(parse_kinds).transpose()?.unwrap_or_default(),
    };
    let (header, stream) = state.node.recovery.export_project(&caller, &project, selection).await?;
    let filename = format!("attachment; filename=\"{}.holdfast.jsonl\"", header.project.name);
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    if let Ok(value) = HeaderValue::from_str(&filename) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct ImportQuery {
    /// `skip` (default) keeps existing resources with the same id, `overwrite` replaces them,
    /// `fail` refuses the whole import (409) before writing anything.
    on_conflict: Option<String>,
}

/// Imports an export file into a project (created when missing), keeping ids and times.
/// Idempotent: importing the same file again writes nothing. The file may be as large as the
/// server's import limit (`limits.max_import_bytes`, 1 GiB by default); connections in it must
/// carry no secret (exports never do).
#[utoipa::path(post, path = "/v1/projects/{project}/import", tag = "projects", params(
        ("project" = String, Path, description = "project name or id"), ImportQuery),
    request_body(content = String, content_type = "application/x-ndjson", description = "an export file"),
    responses((status = 200, description = "import summary", body = Object),
        (status = 400, description = "corrupt file (a line too long among others), a newer format version, \
            or a connection with a secret", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, description = "on_conflict=fail and a resource exists", body = ErrorBody),
        (status = 413, description = "larger than the import limit", body = ErrorBody),
        (status = 507, description = "the data directory's disk cannot hold it and keep its reserve", body = ErrorBody)))]
async fn import(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(project): Path<String>,
    ApiQuery(q): ApiQuery<ImportQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<ImportSummary>> {
    let on_conflict = match q.on_conflict.as_deref() {
        None | Some("skip") => OnConflict::Skip,
        Some("overwrite") => OnConflict::Overwrite,
        Some("fail") => OnConflict::Fail,
        Some(other) => {
            return Err(holdfast_types::Error::invalid(format!(
                "on_conflict must be 'skip', 'overwrite' or 'fail', got {other:?}"
            ))
            .into());
        }
    };
    let length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let summary = state.node.recovery.import_upload(&caller, &project, on_conflict, length, body.into_data_stream()).await?;
    Ok(Json(summary))
}
