//! The MLflow facade: MLflow's REST API for the unmodified `mlflow` client, per project.
//!
//! Tracking URI `http://HOST/api/projects/{project}/mlflow`: the client appends
//! `/api/2.0/mlflow/…` (tracking and registry), `/api/2.0/mlflow-artifacts/…` (the artifact
//! proxy), `/version`, `/health` and `/api/3.0/mlflow/server-info`. Also the MLflow ≥ 3.10
//! workspace form, tracking URI `http://HOST/mlflow` with the header `X-MLFLOW-WORKSPACE:
//! {project}`. Both forms, and every `/api/3.0/mlflow/…` path, are rewritten onto the
//! project's `/api/2.0/…` routes before routing ([`rewrite`]), so each operation is declared,
//! authorized and documented once.
//!
//! Arguments arrive as MLflow's client sends them — GET as a query string, the rest as a JSON
//! body (DELETE too) — and reach the domain as one JSON object ([`MlArgs`]). Errors are
//! MLflow's `{"error_code", "message"}`.

mod routes;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use holdfast_core::Caller;
use holdfast_types::{Error, ErrorKind};
use serde_json::{Map, Value, json};


use crate::AppState;
use crate::extract::caller;

pub use routes::routes;

/// The header naming an MLflow workspace (a Holdfast project).
pub const WORKSPACE_HEADER: &str = "x-mlflow-workspace";

/// An error in MLflow's shape, with the status MLflow's server gives it.
#[derive(Debug)]
pub struct MlError(pub Error);

impl From<Error> for MlError {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

/// MLflow's error code and status for an error.
pub fn mlflow_code(kind: ErrorKind) -> (StatusCode, &'static str) {
    match kind {
        ErrorKind::InvalidInput | ErrorKind::Unprocessable => (StatusCode::BAD_REQUEST, "INVALID_PARAMETER_VALUE"),
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, "RESOURCE_DOES_NOT_EXIST"),
        ErrorKind::Conflict => (StatusCode::BAD_REQUEST, "RESOURCE_ALREADY_EXISTS"),
        ErrorKind::Unauthenticated => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
        ErrorKind::Forbidden | ErrorKind::QuotaExceeded => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
        ErrorKind::Locked => (StatusCode::CONFLICT, "RESOURCE_CONFLICT"),
        ErrorKind::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "RESOURCE_LIMIT_EXCEEDED"),
        ErrorKind::InsufficientStorage => (StatusCode::INSUFFICIENT_STORAGE, "RESOURCE_EXHAUSTED"),
        ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "TEMPORARILY_UNAVAILABLE"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR"),
    }
}

impl IntoResponse for MlError {
    fn into_response(self) -> Response {
        let (status, code) = mlflow_code(self.0.kind);
        if status.is_server_error() {
            tracing::error!(error = %self.0.message, "request failed");
        }
        let mut response = (status, Json(json!({ "error_code": code, "message": self.0.message }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        }
        crate::error::mark_committed(&mut response, self.0.committed_lsn);
        response
    }
}

pub type MlResult<T> = Result<T, MlError>;

/// MLflow's answer to a path under its prefix that no route serves: the client probes newer
/// endpoints and falls back on `ENDPOINT_NOT_FOUND`.
pub fn endpoint_not_found(uri: &Uri) -> Response {
    let body = json!({ "error_code": "ENDPOINT_NOT_FOUND", "message": format!("No API endpoint at {}", uri.path()) });
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

/// Whether a path is under an MLflow prefix (its errors then take MLflow's shape).
pub fn is_mlflow_path(path: &str) -> bool {
    path.starts_with("/mlflow/") || is_api_tail(path)
        || path.split('/').nth(4) == Some("mlflow") && path.starts_with("/api/projects/")
}

/// The authenticated caller: `Authorization: Bearer <key>` (`MLFLOW_TRACKING_TOKEN`), or basic
/// auth with the key as its password (`MLFLOW_TRACKING_USERNAME`/`PASSWORD`), which
/// [`rewrite`] has turned into a bearer token.
pub struct MlAuthed(pub Caller);

impl FromRequestParts<AppState> for MlAuthed {
    type Rejection = MlError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(MlAuthed(caller(parts, state)?))
    }
}

/// A request's arguments as one JSON object: its query string (a repeated name becomes a list),
/// then the fields of its JSON body, if it has one (which must be an object).
pub struct MlArgs(pub Value);

impl<S: Send + Sync> FromRequest<S> for MlArgs {
    type Rejection = MlError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let mut args = query_object(request.uri().query().unwrap_or(""));
        let bytes = Bytes::from_request(request, state).await.map_err(|e| {
            let kind = if e.status() == StatusCode::PAYLOAD_TOO_LARGE { ErrorKind::PayloadTooLarge } else { ErrorKind::InvalidInput };
            MlError(Error::new(kind, e.body_text()))
        })?;
        if !bytes.iter().all(u8::is_ascii_whitespace) {
            match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Object(body)) => args.extend(body),
                Ok(other) => {
                    return Err(MlError(Error::invalid(format!("the request body must be a JSON object, not {}", kind_of(&other)))));
                }
                Err(e) => return Err(MlError(Error::invalid(format!("the request body is not valid JSON: {e}")))),
            }
        }
        Ok(MlArgs(Value::Object(args)))
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "an array",
        Value::String(_) => "a string",
        Value::Number(_) => "a number",
        Value::Bool(_) => "a boolean",
        Value::Null => "null",
        Value::Object(_) => "an object",
    }
}

/// A query string as a JSON object of strings; a name given more than once holds a list.
pub fn query_object(query: &str) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        let (k, v) = (k.into_owned(), Value::String(v.into_owned()));
        match out.get_mut(&k) {
            None => {
                out.insert(k, v);
            }
            Some(Value::Array(list)) => list.push(v),
            Some(first) => {
                let first = first.take();
                out.insert(k, Value::Array(vec![first, v]));
            }
        }
    }
    out
}

/// Maps MLflow's URL forms onto the project routes, before routing:
/// - `/mlflow/…` or `/api/{2.0,3.0}/mlflow…` with `X-MLFLOW-WORKSPACE: P` → `/api/projects/P/mlflow/…`
///   (the workspace routes themselves stay where they are);
/// - `…/mlflow/api/3.0/mlflow/…` and the UI's `…/mlflow/ajax-api/{2.0,3.0}/mlflow/…` →
///   `…/mlflow/api/2.0/mlflow/…` (one route serves them all);
/// - basic auth whose password is a key → `Authorization: Bearer <key>`.
pub fn rewrite(mut request: Request) -> Request {
    let workspace = request.headers().get(WORKSPACE_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let uri = request.uri().clone();
    let path = uri.path();
    let mut current = path.to_owned();
    if let Some(ws) = workspace.filter(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')) {
        let tail = path.strip_prefix("/mlflow").filter(|t| is_mlflow_tail(t)).or_else(|| is_api_tail(path).then_some(path));
        if let Some(tail) = tail.filter(|t| !t.starts_with("/api/2.0/mlflow/workspaces") && !t.starts_with("/api/3.0/mlflow/workspaces")) {
            current = format!("/api/projects/{ws}/mlflow{tail}");
        }
    }
    // `/api/3.0/mlflow/…` right after an MLflow root (`/mlflow`, `/api/projects/P/mlflow`, or
    // none) is the route of its `/api/2.0` twin; the text anywhere else (an artifact's path) is
    // left alone.
    let root_len = if current.starts_with("/api/projects/") {
        current.match_indices('/').nth(4).map(|(i, _)| i).filter(|&i| current[..i].ends_with("/mlflow"))
    } else if current.starts_with("/mlflow/") {
        Some("/mlflow".len())
    } else {
        Some(0)
    };
    if let Some(at) = root_len {
        // The UI's `/ajax-api/…` and `/api/3.0/…` are the routes of `/api/2.0/…`.
        for twin in ["/api/3.0/mlflow", "/ajax-api/2.0/mlflow", "/ajax-api/3.0/mlflow"] {
            if current[at..].starts_with(twin) {
                current = format!("{}/api/2.0/mlflow{}", &current[..at], &current[at + twin.len()..]);
                break;
            }
        }
    }
    if current != path {
        let pq = match uri.query() {
            Some(q) => format!("{current}?{q}"),
            None => current,
        };
        if let Ok(rewritten) = pq.parse::<Uri>() {
            *request.uri_mut() = rewritten;
        }
    }
    if is_mlflow_path(request.uri().path()) {
        basic_to_bearer(&mut request);
    }
    request
}

/// An MLflow API path: `/api/2.0/mlflow…`, `/api/3.0/mlflow…` or the UI's `/ajax-api/…` twins.
fn is_api_tail(t: &str) -> bool {
    ["/api/2.0/mlflow", "/api/3.0/mlflow", "/ajax-api/2.0/mlflow", "/ajax-api/3.0/mlflow"].iter().any(|p| t.starts_with(p))
}

/// What follows an MLflow root: an API path, the OTLP traces route, `/version`, `/health`.
fn is_mlflow_tail(t: &str) -> bool {
    is_api_tail(t) || t == "/v1/traces" || t == "/version" || t == "/health"
}

/// `Authorization: Basic base64(user:key)` → `Bearer key`: MLflow's username/password auth, with
/// a Holdfast key as the password (the username is not checked).
fn basic_to_bearer(request: &mut Request) {
    use base64::Engine as _;
    let header = axum::http::header::AUTHORIZATION;
    let Some(basic) = request.headers().get(&header).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Basic ")) else {
        return;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(basic.trim()) else { return };
    let Some((_, password)) = std::str::from_utf8(&decoded).ok().and_then(|s| s.split_once(':')) else { return };
    if let Ok(value) = axum::http::HeaderValue::from_str(&format!("Bearer {password}")) {
        request.headers_mut().insert(header, value);
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(path: &str, workspace: Option<&str>) -> String {
        let mut builder = Request::builder().uri(path);
        if let Some(ws) = workspace {
            builder = builder.header(WORKSPACE_HEADER, ws);
        }
        let request = builder.body(axum::body::Body::empty()).unwrap();
        rewrite(request).uri().to_string()
    }

    #[test]
    fn mlflow_url_forms_land_on_the_project_routes() {
        assert_eq!(
            rewritten("/api/projects/p/mlflow/api/3.0/mlflow/traces/search", None),
            "/api/projects/p/mlflow/api/2.0/mlflow/traces/search"
        );
        assert_eq!(
            rewritten("/mlflow/api/2.0/mlflow/runs/get?run_id=x", Some("p")),
            "/api/projects/p/mlflow/api/2.0/mlflow/runs/get?run_id=x"
        );
        assert_eq!(rewritten("/mlflow/api/3.0/mlflow/server-info", Some("p")), "/api/projects/p/mlflow/api/2.0/mlflow/server-info");
        assert_eq!(rewritten("/mlflow/api/3.0/mlflow/workspaces", Some("p")), "/mlflow/api/2.0/mlflow/workspaces");
        assert_eq!(rewritten("/mlflow/api/2.0/mlflow/runs/get", None), "/mlflow/api/2.0/mlflow/runs/get");
        assert_eq!(rewritten("/v1/projects/p", Some("p")), "/v1/projects/p");
        assert_eq!(rewritten("/mlflow/api/2.0/mlflow/runs/get", Some("../x")), "/mlflow/api/2.0/mlflow/runs/get");
        // The version text inside an artifact's path is a path, not a version.
        let artifact = "/api/projects/p/mlflow/api/2.0/mlflow-artifacts/artifacts/1/r/artifacts/api/3.0/mlflow/x";
        assert_eq!(rewritten(artifact, None), artifact);
        assert_eq!(rewritten("/mlflow/v1/other", Some("p")), "/mlflow/v1/other");
        assert_eq!(rewritten("/mlflow/v1/traces", Some("p")), "/api/projects/p/mlflow/v1/traces");
        assert_eq!(rewritten("/api/3.0/mlflow/runs/get", Some("p")), "/api/projects/p/mlflow/api/2.0/mlflow/runs/get");
        assert_eq!(rewritten("/api/projects/p/mlflow/ajax-api/2.0/mlflow/runs/get", None), "/api/projects/p/mlflow/api/2.0/mlflow/runs/get");
    }

    #[test]
    fn repeated_query_names_are_lists() {
        let q = query_object("run_ids=a&run_ids=b&metric_key=loss");
        assert_eq!(q["run_ids"], json!(["a", "b"]));
        assert_eq!(q["metric_key"], json!("loss"));
    }
}
