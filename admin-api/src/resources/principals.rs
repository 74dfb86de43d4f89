//! Principals (users, services, groups) and the revocation of their sessions.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use portcullis_model::{EntityRef, Principal, PrincipalKind, RevokedSession};
use portcullis_store::Store;
use serde::Deserialize;

use super::{
    Body, Change, Revision, St, allow, as_json, check, name_problems, principal_tenant,
    record_change,
};
use crate::auth::Actor;
use crate::authz::{AdminAction, Target};
use crate::error::{ApiError, FieldError, Problem};

pub(super) fn principal_key(kind: &str, id: &str) -> Result<(PrincipalKind, EntityRef), ApiError> {
    let kind = match kind {
        "users" | "user" => PrincipalKind::User,
        "services" | "service" => PrincipalKind::Service,
        "groups" | "group" => PrincipalKind::Group,
        other => {
            return Err(ApiError::field(
                "kind",
                format!("`{other}` is not one of `users`, `services`, `groups`"),
            ));
        }
    };
    Ok((kind, portcullis_model::principal_ref(kind, id)))
}

#[utoipa::path(get, path = "/v1/principals/{kind}/{id}", tag = "principals", params(("kind" = String, Path, description = "`users`, `services` or `groups`"), ("id" = String, Path, description = "Principal id")),
    responses((status = 200, description = "The principal", body = Principal), (status = 400, description = "Invalid: every failing field is listed", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"), (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn get_principal<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Path((kind, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (_, key) = principal_key(&kind, &id)?;
    let stored = st.store.get_principal(&key).await?;
    let target = Target::tenants([stored.as_ref().and_then(|p| p.tenant.as_deref())]);
    allow(&st, &actor, AdminAction::PrincipalsRead, &target)?;
    let principal =
        stored.ok_or_else(|| ApiError::NotFound(format!("principal `{key}` not found")))?;
    Ok(Json(principal).into_response())
}

/// What writing `principal` over `stored` touches: its tenant before and after, and its
/// groups'.
async fn principal_target<S: Store>(
    store: &S,
    stored: Option<&Principal>,
    principal: &Principal,
) -> Result<Target, ApiError> {
    let mut target = Target::tenants([principal.tenant.as_deref()]);
    if let Some(stored) = stored {
        target.add(stored.tenant.as_deref());
    }
    for group in &principal.groups {
        let group = portcullis_model::principal_ref(PrincipalKind::Group, group);
        target.add(principal_tenant(store, &group).await?.as_deref());
    }
    Ok(target)
}

#[utoipa::path(put, path = "/v1/principals/{kind}/{id}", tag = "principals", params(("kind" = String, Path, description = "`users`, `services` or `groups`"), ("id" = String, Path, description = "Principal id")), request_body = Principal,
    responses((status = 200, description = "Created or replaced", body = Principal), (status = 400, description = "Invalid: every failing field is listed", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn put_principal<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Path((kind, id)): Path<(String, String)>,
    Body(principal): Body<Principal>,
) -> Result<Response, ApiError> {
    let (kind, key) = principal_key(&kind, &id)?;
    let before = st.store.get_principal(&key).await?;
    let target = principal_target(&st.store, before.as_ref(), &principal).await?;
    allow(&st, &actor, AdminAction::PrincipalsWrite, &target)?;
    let mut errors = Vec::new();
    if principal.kind != kind {
        errors.push(FieldError {
            field: String::from("kind"),
            message: String::from("differs from the path"),
        });
    }
    if principal.id != id {
        errors.push(FieldError {
            field: String::from("id"),
            message: format!("`{}` differs from the path's `{id}`", principal.id),
        });
    }
    if principal.id.is_empty() {
        errors.push(FieldError {
            field: String::from("id"),
            message: String::from("must not be empty"),
        });
    }
    for (i, g) in principal.groups.iter().enumerate() {
        name_problems(&format!("groups[{i}]"), g, &mut errors);
    }
    if !(0..=10).contains(&principal.attributes.clearance) {
        errors.push(FieldError {
            field: String::from("attributes.clearance"),
            message: String::from("must be between 0 and 10"),
        });
    }
    super::custom_attribute_problems(
        &st,
        kind.cedar_type(),
        &principal.attributes.custom,
        &mut errors,
    );
    check(errors)?;
    let recorded = record_change(
        &st,
        &actor,
        Change {
            action: "principal.put",
            resource: key.to_string(),
            before: before.as_ref().and_then(as_json),
            after: as_json(&principal),
        },
    )
    .await?;
    recorded
        .outcome(&st, st.store.put_principal(&principal).await)
        .await?;
    Ok(Json(principal).into_response())
}

#[utoipa::path(delete, path = "/v1/principals/{kind}/{id}", tag = "principals", params(("kind" = String, Path, description = "`users`, `services` or `groups`"), ("id" = String, Path, description = "Principal id")),
    responses((status = 204, description = "Deleted with its assignments; every token issued to it until now is revoked (a tombstone, so a token still valid cannot bring it back through its claims)"), (status = 400, description = "Invalid: every failing field is listed", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"), (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn delete_principal<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Path((kind, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (_, key) = principal_key(&kind, &id)?;
    let before = st.store.get_principal(&key).await?;
    let target = Target::tenants([before.as_ref().and_then(|p| p.tenant.as_deref())]);
    allow(&st, &actor, AdminAction::PrincipalsWrite, &target)?;
    let recorded = record_change(
        &st,
        &actor,
        Change {
            action: "principal.delete",
            resource: key.to_string(),
            before: before.as_ref().and_then(as_json),
            after: None,
        },
    )
    .await?;
    recorded
        .outcome(&st, st.store.delete_principal(&key).await)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Body of `sessions:revoke`: one session, or all of them.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevokeRequest {
    /// The `sid` or `jti` to refuse in this principal's tokens (another principal's token
    /// with the same id is not affected).
    #[serde(default)]
    session_id: Option<String>,
    /// `true`: refuse every token of this principal issued before now (and every token of
    /// it without `iat`), wherever it came from. The principal must exist.
    #[serde(default)]
    all: bool,
    /// Until when to refuse (ms since the epoch). Default: 24 hours from now for one
    /// session; for `all`, never forgotten.
    #[serde(default)]
    expires_at: Option<i64>,
}

#[utoipa::path(post, path = "/v1/principals/{kind}/{id}/sessions:revoke", tag = "principals", params(("kind" = String, Path, description = "`users`, `services` or `groups`"), ("id" = String, Path, description = "Principal id")), request_body = RevokeRequest,
    responses((status = 200, description = "Revoked; tokens with this sid/jti (or, with `all`, every token of the principal issued until now) are refused", body = Revision), (status = 400, description = "Invalid: every failing field is listed", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"), (status = 404, description = "`all` for a principal that does not exist", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn revoke_session<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Path((kind, id)): Path<(String, String)>,
    Body(body): Body<RevokeRequest>,
) -> Result<Response, ApiError> {
    let (_, key) = principal_key(&kind, &id)?;
    let stored = st.store.get_principal(&key).await?;
    let target = Target::tenants([stored.as_ref().and_then(|p| p.tenant.as_deref())]);
    allow(&st, &actor, AdminAction::SessionsRevoke, &target)?;
    let now = jiff::Timestamp::now().as_millisecond();
    let mut errors = Vec::new();
    if body.expires_at.is_some_and(|at| at <= now) {
        errors.push(FieldError {
            field: String::from("expires_at"),
            message: String::from("must be in the future"),
        });
    }
    match (&body.session_id, body.all) {
        (Some(session_id), false) if session_id.is_empty() => errors.push(FieldError {
            field: String::from("session_id"),
            message: String::from("must not be empty"),
        }),
        (Some(_), false) | (None, true) => {}
        _ => errors.push(FieldError {
            field: String::from("session_id"),
            message: String::from("give exactly one of `session_id` and `all: true`"),
        }),
    }
    check(errors)?;
    // Checked above: a non-empty session id, or `all`.
    let session = match body.session_id {
        Some(session_id) => RevokedSession {
            session_id,
            principal: Some(key.clone()),
            expires_at: body.expires_at.unwrap_or(now + 86_400_000),
            issued_before: None,
        },
        None => RevokedSession {
            session_id: RevokedSession::all_sessions_key(&key),
            principal: Some(key.clone()),
            expires_at: body.expires_at.unwrap_or(i64::MAX),
            issued_before: Some(now),
        },
    };
    if session.issued_before.is_some() && stored.is_none() {
        return Err(ApiError::NotFound(format!("principal `{key}` not found")));
    }
    let action = if session.issued_before.is_some() {
        "sessions.revoke_all"
    } else {
        "session.revoke"
    };
    let recorded = record_change(
        &st,
        &actor,
        Change {
            action,
            resource: key.to_string(),
            before: None,
            after: as_json(&session),
        },
    )
    .await?;
    let revision = recorded
        .outcome(&st, st.store.revoke_session(&session).await)
        .await?;
    Ok(Json(Revision { revision }).into_response())
}
