//! `Idempotency-Key` on the project routes' writes (OpenAI's convention): the first request
//! with a key is served and its write journals the key (`holdfast_core::idempotency`); a retry
//! with the same key and the same request gets the first answer with `Idempotent-Replayed:
//! true` and writes nothing; the same key with another request is 422. The record is in the
//! project's journal, so this holds in any region, across failovers and restores.
//!
//! The request's fingerprint is sha256 of its method, path with query, and body. Uploads and
//! imports (streamed bodies) are not keyed; a streamed answer (server-sent events) is not kept,
//! so its retry is refused as already committed rather than written twice.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use holdfast_core::idempotency::{Answer, Outcome, keyed};
use holdfast_types::Error;
use sha2::{Digest, Sha256};

use crate::AppState;

pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// The project routes whose writes are not keyed: their bodies are streamed through (an MLflow
/// artifact PUT needs no key: the same bytes at the same path again write nothing).
pub const UNKEYED_ROUTES: [&str; 3] = [
    "/api/projects/{project}/openai/v1/files",
    "/v1/projects/{project}/import",
    "/api/projects/{project}/mlflow/api/2.0/mlflow-artifacts/artifacts/{*path}",
];
/// Largest answer kept for retries.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// An error answered in the shape of the route's facade.
pub type Refuse = fn(&str, Error) -> Response;

/// Serves a write sent with an `Idempotency-Key`; `refuse` answers errors in the route's shape.
pub async fn serve(
    state: &AppState,
    template: &str,
    project: &str,
    request: Request,
    next: Next,
    max_body: usize,
    refuse: Refuse,
) -> Response {
    let key = match request.headers().get(IDEMPOTENCY_HEADER).map(|v| v.to_str().map(str::to_owned)) {
        Some(Ok(key)) if (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()) => key,
        _ => return refuse(template, Error::invalid("Idempotency-Key must be 1 to 255 visible ASCII characters")),
    };
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, max_body).await {
        Ok(bytes) => bytes,
        Err(_) => return refuse(template, Error::new(holdfast_types::ErrorKind::PayloadTooLarge, format!("the body is larger than {max_body} bytes"))),
    };
    let mut hasher = Sha256::new();
    hasher.update(parts.method.as_str());
    hasher.update(b"\n");
    hasher.update(parts.uri.path_and_query().map_or("", |p| p.as_str()));
    hasher.update(b"\n");
    hasher.update(&bytes);
    let fingerprint = hex::encode(hasher.finalize());
    let core = &state.node.core;
    match core.idempotent_answer(project, &key, &fingerprint).await {
        // A route that acts on a project not open here (a restore of a deleted project from
        // the archive) is served unkeyed: the handler says what it can do.
        Err(e) if e.kind == holdfast_types::ErrorKind::NotFound => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Err(e) => refuse(template, e),
        Ok(Outcome::Replay(answer)) => replayed(answer),
        Ok(Outcome::CommittedWithoutAnswer) => {
            let mut response = refuse(
                template,
                Error::conflict(format!(
                    "the request with Idempotency-Key {key:?} is being served, or was committed without its answer being kept \
                     (a stream, an answer too large to keep, a stop in between): it is not written again; read the result instead"
                )),
            );
            response.headers_mut().insert("x-holdfast-committed", HeaderValue::from_static("true"));
            response
        }
        Ok(Outcome::New) => {
            // Served in a task of its own, so the answer is kept even when the client has gone
            // (a timed-out client is the retry this is for).
            let request = Request::from_parts(parts, Body::from(bytes));
            let (state, project) = (state.clone(), project.to_owned());
            let served = tokio::spawn(crate::middleware::with_request_id(async move {
                let (response, journaled) = keyed(key.clone(), fingerprint, next.run(request)).await;
                if journaled.is_none() {
                    return response;
                }
                keep_answer(&state, &project, &key, response).await
            }));
            match served.await {
                Ok(response) => response,
                Err(e) => refuse(template, Error::internal(format!("the request's task failed: {e}"))),
            }
        }
    }
}

/// Journals the answer of a keyed write for its retries and hands it on; a stream, or an answer
/// too large to keep, is handed on as it is (its retries are refused as committed).
async fn keep_answer(state: &AppState, project: &str, key: &str, response: Response) -> Response {
    use axum::body::HttpBody;
    let content_type = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let too_large = response.body().size_hint().upper().is_none_or(|n| n > MAX_ANSWER_BYTES as u64);
    if content_type.starts_with("text/event-stream") || too_large {
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_ANSWER_BYTES).await {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read a keyed write's answer to keep it");
            return Response::from_parts(parts, Body::empty());
        }
    };
    if let Ok(text) = String::from_utf8(bytes.to_vec()) {
        let answer = Answer { status: parts.status.as_u16(), content_type, body: text };
        if let Err(e) = state.node.core.record_answer(project, key, answer).await {
            tracing::warn!(error = %e.message, "cannot keep an idempotent write's answer; a retry will be refused as committed");
        }
    }
    Response::from_parts(parts, Body::from(bytes))
}

fn replayed(answer: Answer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let mut response = (status, answer.body).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&answer.content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    response
}
