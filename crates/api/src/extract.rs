//! Extractors that turn every client mistake into Holdfast's JSON error, never axum's plain text.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;
use holdfast_core::Caller;
use holdfast_types::{Error, ErrorKind, RequestId};

use crate::AppState;
use crate::error::ApiError;

/// A JSON body; syntax errors, wrong types and unknown fields are 400, too large 413.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        ApiError(json_rejection(&rejection))
    }
}

/// Query parameters; malformed ones are 400.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError(Error::invalid(rejection.body_text()))
    }
}

/// The authenticated caller of a request: `Authorization: Bearer <key>`.
pub struct Authed(pub Caller);

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(Authed(caller(parts, state)?))
    }
}

/// Authenticates a request from its `Authorization: Bearer <key>` header. Shared by every
/// facade's extractor; only the error shape differs between them.
pub fn caller(parts: &Parts, state: &AppState) -> Result<Caller, Error> {
    let token = match parts.headers.get(axum::http::header::AUTHORIZATION) {
        None => None,
        Some(value) => {
            let value = value.to_str().map_err(|_| Error::unauthenticated("malformed Authorization header"))?;
            let token = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
                .ok_or_else(|| Error::unauthenticated("the Authorization header must be 'Bearer <key>'"))?;
            Some(token.trim())
        }
    };
    let principal = state.node.core.authenticate(token)?;
    let request_id = parts.extensions.get::<RequestId>().cloned().unwrap_or_else(RequestId::generate);
    Ok(Caller { principal, request_id })
}

/// The kind and message of a JSON body rejection, whatever facade reports it.
pub fn json_rejection(rejection: &JsonRejection) -> Error {
    let kind = match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ErrorKind::PayloadTooLarge,
        _ => ErrorKind::InvalidInput,
    };
    let message = match rejection {
        JsonRejection::MissingJsonContentType(_) => "expected a JSON body with 'Content-Type: application/json'".to_owned(),
        _ if kind == ErrorKind::PayloadTooLarge => "request body is larger than the server's limit".to_owned(),
        other => other.body_text(),
    };
    Error::new(kind, message)
}
