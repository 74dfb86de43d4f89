//! What sidecars follow: the whole state, and what changed since a revision.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use portcullis_policy_store::store::Store;
use serde::Deserialize;

use super::{Params, St, allow};
use crate::auth::Actor;
use crate::authz::{AdminAction, Target};
use crate::error::{ApiError, Problem};

/// `GET /v1/updates` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdatesQuery {
    /// The revision the caller's snapshot is at.
    since: i64,
}

#[utoipa::path(get, path = "/v1/snapshot", tag = "distribution",
    responses(
        (status = 200, description = "The whole state at one revision: what a sidecar bootstraps from", body = Object),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "Internal error", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn snapshot<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
) -> Result<Response, ApiError> {
    allow(
        &st,
        &actor,
        AdminAction::DistributionRead,
        &Target::global(),
    )?;
    let state = st.store.load_state().await?;
    Ok(Json(state).into_response())
}

#[utoipa::path(get, path = "/v1/updates", tag = "distribution", params(UpdatesQuery),
    responses(
        (status = 200, description = "What brings a snapshot at `since` to the current revision: a patch, or the whole state to rebuild from", body = Object),
        (status = 204, description = "Nothing changed since `since`"),
        (status = 400, description = "Bad query", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "Internal error", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn updates<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Params(query): Params<UpdatesQuery>,
) -> Result<Response, ApiError> {
    allow(
        &st,
        &actor,
        AdminAction::DistributionRead,
        &Target::global(),
    )?;
    let current = st.store.revision().await?;
    if query.since == current {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let update = if query.since > current || query.since < 0 {
        // The caller is ahead of this store (it was replaced): start over.
        portcullis_policy_store::snapshot::SnapshotUpdate::Rebuild(st.store.load_state().await?)
    } else {
        st.store.load_update(query.since).await?
    };
    Ok(Json(update).into_response())
}
