//! `portcullis-admin-api` owns the control plane's HTTP API (axum): CRUD over the
//! authorization model and what-if decisions, under `/v1`, on its own listener.
//!
//! It talks to the store only through `portcullis_store::Store`, and answers
//! what-if questions with the same decision core and snapshot the data plane uses.
//! [`publish`] is the control plane's core loop: each committed revision read once, applied
//! to that snapshot and kept, encoded once, in the feed every watching sidecar reads.
//! Build the router with [`app`]; tests call it with `tower::ServiceExt::oneshot`, without
//! a socket.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /v1/policies` (`ETag`), `PUT` (`If-Match`) | the policy set; 412 / 428 |
//! | `POST /v1/policies:validate`, `POST /v1/policies:rollback` | check only; back to a version |
//! | `GET /v1/policies/versions[/{version}]`, `GET /v1/schema` | history, one version, schema |
//! | `GET /v1/roles`, `POST /v1/roles` | list, create (409 on a taken name) |
//! | `GET/PUT/DELETE /v1/roles/{name}` | read, replace, delete (409 while assigned) |
//! | `GET/PUT/DELETE /v1/principals/{kind}/{id}` | users, services, groups |
//! | `POST /v1/principals/{kind}/{id}/sessions:revoke` | revoke a `sid`/`jti` |
//! | `POST /v1/assignments`, `GET /v1/assignments?principal=\|role=\|scope=` | grant, list |
//! | `DELETE /v1/assignments/{id}` | revoke a grant |
//! | `GET/PUT/DELETE /v1/entities/{type}/{id}` | resources and their parents; archive |
//! | `POST /v1/authorize`, `POST /v1/authorize:batch` | what-if decisions with policies, roles and errors |
//! | `GET /v1/audit` | this process's audit ledger, filtered, oldest first, paged |
//! | `GET /v1/snapshot[?view=shared]` | the whole state (or its shared part), for a sidecar to bootstrap from |
//! | `GET /v1/snapshot/principals/{kind}/{id}` | one principal's slice, for a sidecar in cached state mode |
//! | `GET /v1/updates?since=R[&view=shared]` | a patch (or the whole state) from revision R; 204 if none |
//! | `GET /v1/watch?since=R[&view=shared]` | server-sent events: each update as it is published, heartbeats |
//! | `POST /v1/events` | lifecycle events (one, or a batch): applied once, or dead-lettered |
//! | `GET /v1/events/dead-letters`, `POST …/{id}/replay` | events not applied, with why; re-apply one |
//! | `GET /v1/events/stream` | server-sent events: each event taken or dead-lettered, `Last-Event-ID` resume |
//! | `GET /v1/openapi.json` | the OpenAPI 3.1 document (no token needed) |
//!
//! Every call needs `Authorization: Bearer <admin token or JWT>` ([`auth`]; failures are
//! throttled per client address) and a permit from the
//! admin policies, `policies/admin.cedar` ([`authz`]: a tenant admin manages only its own
//! tenant); every error is
//! problem+json ([`error`]); `X-Request-Id` is echoed (or made) and `Idempotency-Key` on a
//! POST makes a retry safe ([`conventions`]).

pub mod auth;
pub mod authz;
pub mod conventions;
pub mod error;
pub mod openapi;
pub mod publish;
mod resources;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use portcullis_engine::snapshot::SnapshotHandle;
use portcullis_store::Store;

pub use auth::throttle::FailureLimit;
pub use auth::{Actor, AdminAuth, AdminTokens, JwtVerifier};
pub use error::{ApiError, FieldError, Problem};

/// What the handlers share.
#[derive(Debug)]
pub struct AppState<S> {
    /// The store.
    pub store: S,
    /// The snapshot the data plane decides with (what-if decisions use it too).
    pub snapshot: Arc<SnapshotHandle>,
    /// The published changes `GET /v1/watch` streams, fed by the [`publish::Publisher`].
    pub feed: Arc<publish::ChangeFeed>,
    /// The one ingestion path of lifecycle events (`POST /v1/events`, and the queue
    /// consumers beside the API).
    pub events: portcullis_events::Ingest<S>,
    /// The audit ledger admin changes are recorded in, with their actor.
    pub ledger: Option<Arc<portcullis_ledger::writer::Ledger>>,
    /// The admin policies every call is checked against; swapped on reload.
    pub admin_policies: Arc<arc_swap::ArcSwap<authz::AdminPolicies>>,
    /// What this process enforces beside the API (`serve`'s route map): a policy set that
    /// would leave a route undecidable is refused. `None` in `control`, which has no routes.
    pub route_guard: Option<Arc<dyn RouteGuard>>,
    /// Given when the process stops: long-lived responses (`/v1/watch`) end, so the server
    /// can finish the calls in flight and close.
    pub stopping: tokio_util::sync::CancellationToken,
    /// The shared cache slices served to sidecars are written through to, if any.
    pub shared_cache: Option<publish::SharedCacheTarget>,
}

/// Checks a candidate policy set against the routes this process enforces.
pub trait RouteGuard: Send + Sync + std::fmt::Debug {
    /// Why `files` over `schema` would leave routes undecidable; empty when it would not,
    /// or when the set does not compile (the store then refuses it with every message).
    fn problems(&self, files: &[portcullis_model::PolicyFile], schema: &str) -> Vec<String>;
}

/// The admin API router.
pub fn app<S: Store + Clone + std::fmt::Debug + 'static>(
    state: AppState<S>,
    auth: AdminAuth,
) -> Router {
    let state = Arc::new(state);
    Router::new()
        .route(
            "/v1/roles",
            get(resources::list_roles::<S>).post(resources::create_role::<S>),
        )
        .route(
            "/v1/roles/{name}",
            get(resources::get_role::<S>)
                .put(resources::update_role::<S>)
                .delete(resources::delete_role::<S>),
        )
        .route(
            "/v1/principals/{kind}/{id}",
            get(resources::get_principal::<S>)
                .put(resources::put_principal::<S>)
                .delete(resources::delete_principal::<S>),
        )
        .route(
            "/v1/principals/{kind}/{id}/sessions:revoke",
            post(resources::revoke_session::<S>),
        )
        .route(
            "/v1/assignments",
            post(resources::create_assignment::<S>).get(resources::list_assignments::<S>),
        )
        .route(
            "/v1/assignments/{id}",
            axum::routing::delete(resources::delete_assignment::<S>),
        )
        .route(
            "/v1/entities/{type}/{id}",
            get(resources::get_entity::<S>)
                .put(resources::put_entity::<S>)
                .delete(resources::delete_entity::<S>),
        )
        .route(
            "/v1/policies",
            get(resources::get_policies::<S>).put(resources::put_policies::<S>),
        )
        .route(
            "/v1/policies:validate",
            post(resources::validate_policies::<S>),
        )
        .route(
            "/v1/policies:rollback",
            post(resources::rollback_policies::<S>),
        )
        .route(
            "/v1/policies/versions",
            get(resources::list_policy_versions::<S>),
        )
        .route(
            "/v1/policies/versions/{version}",
            get(resources::get_policy_version::<S>),
        )
        .route("/v1/schema", get(resources::get_schema::<S>))
        .route("/v1/authorize", post(resources::authorize::<S>))
        .route("/v1/authorize:batch", post(resources::authorize_batch::<S>))
        .route("/v1/audit", get(resources::list_audit::<S>))
        .route("/v1/snapshot", get(resources::snapshot::<S>))
        .route(
            "/v1/snapshot/principals/{kind}/{id}",
            get(resources::principal_slice::<S>),
        )
        .route(
            "/v1/snapshot/entities/{type}/{id}",
            get(resources::entity_slice::<S>),
        )
        .route("/v1/updates", get(resources::updates::<S>))
        .route("/v1/watch", get(resources::watch::<S>))
        .route("/v1/events", post(resources::post_events::<S>))
        .route("/v1/events/stream", get(resources::stream_events::<S>))
        .route(
            "/v1/events/dead-letters",
            get(resources::list_dead_letters::<S>),
        )
        .route(
            "/v1/events/dead-letters/{id}/replay",
            post(resources::replay_dead_letter::<S>),
        )
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            conventions::Idempotency::default(),
            conventions::idempotency,
        ))
        .layer(axum::middleware::from_fn_with_state(
            auth,
            auth::require_admin,
        ))
        .route("/v1/openapi.json", get(openapi_json))
        .layer(axum::middleware::from_fn(conventions::request_id))
}

async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    use utoipa::OpenApi;
    axum::Json(openapi::ApiDoc::openapi())
}
