//! HTTP facades over the domain crates: one module per facade (`control` and the control
//! plane's resource modules beside it, `foundry`).
//!
//! Architecture Invariant: `holdfast-api` is the only crate that knows HTTP and JSON wire
//! shapes. Handlers extract a [`Caller`](holdfast_core::Caller), call a domain's handle on the
//! [`Holdfast`](holdfast_node::Holdfast) node, and map its coarse errors to statuses in one
//! place ([`error::status_of`]).

mod audit;
pub mod authz;
mod backup;
mod check;
pub mod consistency;
mod control;
pub mod error;
mod export;
mod extract;
mod foundry;
mod history;
mod identities;
mod locks;
mod middleware;
mod replication;
mod roles;
pub mod telemetry;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use holdfast_node::Holdfast;
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

/// Everything a handler needs.
#[derive(Clone)]
pub struct AppState {
    pub node: Holdfast,
    pub metrics: Option<PrometheusHandle>,
}

/// Limits the HTTP layer enforces.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Holdfast", description = "Self-hosted state for AI projects: control-plane API."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags((name = "projects"), (name = "keys"), (name = "locks"), (name = "audit"), (name = "operations"), (name = "connections"),
        (name = "foundry", description = "Foundry Agent Service wire protocol"),
        (name = "openai", description = "OpenAI-compatible routes"))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every route and its OpenAPI description, from one list, so the two cannot drift apart.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi()).merge(control::routes()).merge(foundry::routes()).merge(export::routes()).merge(history::routes()).merge(backup::routes()).merge(check::routes()).merge(locks::routes()).merge(roles::routes()).merge(identities::routes()).merge(audit::routes()).merge(replication::routes())
}

/// The OpenAPI document of every route, built once.
pub fn openapi() -> &'static utoipa::openapi::OpenApi {
    static API: std::sync::OnceLock<utoipa::openapi::OpenApi> = std::sync::OnceLock::new();
    API.get_or_init(|| routes().split_for_parts().1)
}

/// The whole HTTP application.
pub fn app(state: AppState, limits: HttpLimits) -> Router {
    let (router, _) = routes().split_for_parts();
    router
        .fallback(error::unknown_route)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        // Inside the gate: a hot replica's writes go to the primary; LSN headers, min-LSN waits.
        .layer(axum::middleware::from_fn_with_state(consistency::Consistency::new(state.clone(), limits), consistency::serve))
        .layer(axum::middleware::from_fn_with_state(state.clone(), authz::authorize))
        .layer(axum::middleware::from_fn(middleware::observe))
        .layer(CatchPanicLayer::custom(error::panic_response))
        .with_state(state)
}
