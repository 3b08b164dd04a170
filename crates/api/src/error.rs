//! Errors on the wire. Holdfast's envelope on `/v1`:
//! `{"error": {"code": "not_found", "message": "…", "request_id": "req_…"}}`.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use holdfast_types::api::{ErrorBody, ErrorDetail};
use holdfast_types::{Error, ErrorKind};

use crate::middleware::current_request_id;

/// The one place a service error becomes an HTTP status.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden | ErrorKind::QuotaExceeded => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict | ErrorKind::Locked => StatusCode::CONFLICT,
        ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::Internal | _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error leaving a `/v1` handler.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(self.0.kind);
        if status.is_server_error() {
            tracing::error!(error = %self.0.message, code = self.0.kind.code(), "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.0.kind.code().to_owned(),
                message: self.0.message,
                request_id: current_request_id(),
            },
        };
        let committed = self.0.committed_lsn;
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        mark_committed(&mut response, committed);
        response
    }
}

/// `x-holdfast-committed: true` and `x-holdfast-committed-lsn` on an error answering a write
/// that was committed all the same, so a client can tell it must not simply retry.
pub fn mark_committed(response: &mut Response, lsn: Option<holdfast_types::Lsn>) {
    if let Some(lsn) = lsn {
        let headers = response.headers_mut();
        headers.insert("x-holdfast-committed", header::HeaderValue::from_static("true"));
        headers.insert("x-holdfast-committed-lsn", header::HeaderValue::from(lsn.0));
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

pub async fn unknown_route(uri: axum::http::Uri) -> ApiError {
    ApiError(Error::not_found(format!("no route for {}", uri.path())))
}

pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError(Error::internal("internal error; see the server log")).into_response()
}
