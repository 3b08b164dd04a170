//! Per-request plumbing: request ids, metrics and the access log.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use holdfast_types::RequestId;
use tracing::Instrument;

tokio::task_local! {
    static REQUEST_ID: RequestId;
}

/// The id of the request being handled, for error bodies.
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(|id| id.as_str().to_owned()).unwrap_or_default()
}

/// `f` with the current request's id, for work a request hands to a task of its own.
pub fn with_request_id<F: std::future::Future>(f: F) -> impl std::future::Future<Output = F::Output> {
    let id = REQUEST_ID.try_with(Clone::clone).ok();
    async move {
        match id {
            Some(id) => REQUEST_ID.scope(id, f).await,
            None => f.await,
        }
    }
}

/// Gives the request an id (the caller's `x-request-id` if sane), echoes it on the response,
/// and records request counts and latencies by route template.
pub async fn observe(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = RequestId::from_header(request.headers().get("x-request-id").and_then(|v| v.to_str().ok()));
    request.extensions_mut().insert(id.clone());
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let span = tracing::info_span!("request", request_id = %id, %method, %route);
    let mut response = REQUEST_ID.scope(id.clone(), next.run(request).instrument(span.clone())).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed().as_secs_f64();
    metrics::counter!("holdfast_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!("holdfast_http_request_duration_seconds", "method" => method, "route" => route)
        .record(elapsed);
    span.in_scope(|| tracing::debug!(status, elapsed_ms = elapsed * 1000.0, "handled"));
    if let Ok(value) = HeaderValue::from_str(id.as_str()) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}
