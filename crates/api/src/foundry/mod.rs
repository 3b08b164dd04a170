//! The Foundry Agent Service facade: `/api/projects/{project}/…` for the `azure-ai-projects`
//! SDK (agents, connections, deployments) and `/api/projects/{project}/openai/v1/…` for the
//! OpenAI client it hands out (conversations, responses, files, vector stores).
//!
//! Errors here use the OpenAI shape `{"error": {"message", "type", "param", "code"}}`, which
//! the Azure SDK also reads. Any `api-version` query value is accepted.

mod agents;
mod connections;
mod conversations;
mod files;
mod responses;
mod vector_stores;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use holdfast_core::Caller;
use holdfast_types::{Error, ErrorKind};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;

use crate::AppState;
use crate::error::status_of;
use crate::extract::{caller, json_rejection};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().merge(agents::routes()).merge(connections::routes()).merge(conversations::routes()).merge(files::routes()).merge(vector_stores::routes()).merge(responses::routes())
}

/// An error in the OpenAI shape.
#[derive(Debug)]
pub struct OaError(pub Error);

impl From<Error> for OaError {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

impl IntoResponse for OaError {
    fn into_response(self) -> Response {
        let status = status_of(self.0.kind);
        if status.is_server_error() {
            tracing::error!(error = %self.0.message, "request failed");
        }
        let kind = match self.0.kind {
            ErrorKind::Unauthenticated => "authentication_error",
            ErrorKind::Forbidden => "permission_error",
            ErrorKind::Unavailable | ErrorKind::Internal => "server_error",
            _ => "invalid_request_error",
        };
        let body = json!({
            "error": {
                "message": self.0.message,
                "type": kind,
                "param": null,
                "code": self.0.kind.code(),
            }
        });
        let mut response = (status, Json(body)).into_response();
        crate::error::mark_committed(&mut response, self.0.committed_lsn);
        response
    }
}

pub type OaResult<T> = Result<T, OaError>;

/// A JSON body; rejections in the OpenAI error shape.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(OaError))]
pub struct OaJson<T>(pub T);

impl From<JsonRejection> for OaError {
    fn from(rejection: JsonRejection) -> Self {
        OaError(json_rejection(&rejection))
    }
}

/// Query parameters; unknown ones (such as `api-version`) are ignored.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(OaError))]
pub struct OaQuery<T>(pub T);

impl From<QueryRejection> for OaError {
    fn from(rejection: QueryRejection) -> Self {
        OaError(Error::invalid(rejection.body_text()))
    }
}

/// The authenticated caller, with rejections in the OpenAI error shape.
pub struct OaAuthed(pub Caller);

impl FromRequestParts<AppState> for OaAuthed {
    type Rejection = OaError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(OaAuthed(caller(parts, state)?))
    }
}
