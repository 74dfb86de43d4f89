//! The handlers: each validates the whole request (reporting every failing field), calls
//! the store, and answers JSON. The actor of every change is logged with it.

use std::sync::Arc;

use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use portcullis_policy_store::decision::{DecisionRequest, LocalTime, RequestFacts, decide};
use portcullis_policy_store::model::{
    Assignment, EntityRecord, EntityRef, Principal, PrincipalKind, RevokedSession, Role,
};
use portcullis_policy_store::store::Store;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::auth::Actor;
use crate::error::{ApiError, FieldError, Problem};
use portcullis_policy_store::audit::{Entry, RecordKind};

type St<S> = State<Arc<AppState<S>>>;

/// A JSON body (whatever `Content-Type` says: `curl -d` sends form encoding); a body that is
/// not the expected document is a problem+json with serde's message (line, column, field).
pub struct Body<T>(pub T);

impl<T, S> FromRequest<S> for Body<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|e| ApiError::field("body", e.body_text()))?;
        serde_json::from_slice(&bytes)
            .map(Self)
            .map_err(|e| ApiError::Invalid {
                detail: String::from("the body is not the expected JSON document"),
                errors: vec![FieldError {
                    field: String::from("body"),
                    message: e.to_string(),
                }],
            })
    }
}

/// Logs a committed change and records it in the audit ledger, with its actor. The change
/// is already in the store (which keeps its own change log), so a ledger that cannot take
/// the record is logged as an error rather than undoing it.
async fn changed<S>(
    st: &AppState<S>,
    actor: &Actor,
    action: &str,
    resource: String,
    revision: i64,
) {
    tracing::info!(actor = actor.0, action, resource, revision, "admin change");
    let Some(ledger) = &st.ledger else {
        return;
    };
    let now = jiff::Timestamp::now();
    let entry = Entry {
        ts: format!("{:.3}", now.round(jiff::Unit::Millisecond).unwrap_or(now)),
        kind: RecordKind::AdminChange,
        actor: Some(actor.0.clone()),
        action: Some(action.to_owned()),
        resource: Some(resource),
        reason: Some(format!("store revision {revision}")),
        ..Entry::default()
    };
    if let Err(e) = ledger
        .append(entry, std::time::Duration::from_secs(1))
        .await
    {
        tracing::error!(error = %e, action, "admin change not recorded in the audit ledger");
    }
}

/// Query parameters whose rejection is a problem+json, like [`Body`]'s.
pub struct Params<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for Params<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| Self(value))
            .map_err(|e| ApiError::field("query", e.body_text()))
    }
}

/// `page_size` / `page_token` of a list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageQuery {
    /// Items per page, 1 to 1000 (default 100).
    #[serde(default)]
    page_size: Option<usize>,
    /// `next_page_token` of the previous page.
    #[serde(default)]
    page_token: Option<String>,
}

/// One page of a list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Page<T> {
    /// The items, in the list's order.
    items: Vec<T>,
    /// Pass as `page_token` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_page_token: Option<String>,
}

fn hex_encode(s: &str) -> String {
    s.bytes()
        .flat_map(|b| [b >> 4, b & 0x0f])
        .map(|n| char::from_digit(u32::from(n), 16).unwrap_or('0'))
        .collect()
}

fn hex_decode(s: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// The page after `token` of `items` (sorted by `key`).
fn paginate<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> &str,
    page_size: Option<usize>,
    token: Option<&str>,
) -> Result<Page<T>, ApiError> {
    let size = page_size.unwrap_or(100);
    if !(1..=1000).contains(&size) {
        return Err(ApiError::field("page_size", "must be between 1 and 1000"));
    }
    let after = match token {
        None => None,
        Some(t) => Some(
            hex_decode(t)
                .ok_or_else(|| ApiError::field("page_token", "not a token this API gave out"))?,
        ),
    };
    let mut rest: Vec<T> = items
        .into_iter()
        .filter(|item| after.as_deref().is_none_or(|a| key(item) > a))
        .collect();
    let next_page_token = (rest.len() > size)
        .then(|| {
            rest.truncate(size);
            rest.last().map(|last| hex_encode(key(last)))
        })
        .flatten();
    Ok(Page {
        items: rest,
        next_page_token,
    })
}

fn created<T: Serialize>(value: T) -> Response {
    (StatusCode::CREATED, Json(value)).into_response()
}

/// The store revision a change produced.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Revision {
    revision: i64,
}

fn name_problems(field: &str, name: &str, errors: &mut Vec<FieldError>) {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok {
        errors.push(FieldError {
            field: field.to_owned(),
            message: format!(
                "`{name}` must be 1 to 128 characters of letters, digits, `_`, `-` or `.`"
            ),
        });
    }
}

fn check(errors: Vec<FieldError>) -> Result<(), ApiError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid {
            detail: format!("{} field(s) are invalid", errors.len()),
            errors,
        })
    }
}

fn role_problems(role: &Role) -> Vec<FieldError> {
    let mut errors = Vec::new();
    name_problems("name", &role.name, &mut errors);
    if role.actions.is_empty() {
        errors.push(FieldError {
            field: String::from("actions"),
            message: String::from("a role grants at least one action"),
        });
    }
    for (i, a) in role.actions.iter().enumerate() {
        if a.is_empty() {
            errors.push(FieldError {
                field: format!("actions[{i}]"),
                message: String::from("an action id is not empty"),
            });
        }
    }
    errors
}

#[utoipa::path(get, path = "/v1/roles", tag = "roles", params(PageQuery),
    responses((status = 200, description = "Roles by name, a page at a time", body = Page<Role>), (status = 400, description = "Bad query", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list_roles<S: Store>(
    State(st): St<S>,
    Params(query): Params<PageQuery>,
) -> Result<Response, ApiError> {
    let mut roles = st.store.list_roles().await?;
    roles.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(paginate(
        roles,
        |r| r.name.as_str(),
        query.page_size,
        query.page_token.as_deref(),
    )?)
    .into_response())
}

#[utoipa::path(get, path = "/v1/roles/{name}", tag = "roles",
    params(("name" = String, Path, description = "Role name")),
    responses((status = 200, description = "The role", body = Role), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn get_role<S: Store>(
    State(st): St<S>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let roles = st.store.list_roles().await?;
    let role = roles
        .into_iter()
        .find(|r| r.name == name)
        .ok_or_else(|| ApiError::NotFound(format!("role `{name}` not found")))?;
    Ok(Json(role).into_response())
}

#[utoipa::path(post, path = "/v1/roles", tag = "roles", request_body = Role,
    responses((status = 201, description = "Created", body = Role), (status = 400, description = "Invalid: every failing field is listed", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 409, description = "Conflicts with the stored state", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn create_role<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Body(role): Body<Role>,
) -> Result<Response, ApiError> {
    check(role_problems(&role))?;
    let revision = st.store.create_role(&role).await?;
    changed(
        &st,
        &actor,
        "role.create",
        format!("Role::{:?}", role.name),
        revision,
    )
    .await;
    Ok(created(role))
}

#[utoipa::path(put, path = "/v1/roles/{name}", tag = "roles", request_body = Role,
    params(("name" = String, Path, description = "Role name")),
    responses((status = 200, description = "Replaced", body = Role), (status = 400, description = "Invalid: every failing field is listed", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn update_role<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    Body(role): Body<Role>,
) -> Result<Response, ApiError> {
    let mut errors = role_problems(&role);
    if role.name != name {
        errors.push(FieldError {
            field: String::from("name"),
            message: format!("`{}` differs from the path's `{name}`", role.name),
        });
    }
    check(errors)?;
    let revision = st.store.update_role(&role).await?;
    changed(
        &st,
        &actor,
        "role.update",
        format!("Role::{:?}", role.name),
        revision,
    )
    .await;
    Ok(Json(role).into_response())
}

#[utoipa::path(delete, path = "/v1/roles/{name}", tag = "roles",
    params(("name" = String, Path, description = "Role name")),
    responses((status = 204, description = "Deleted"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"), (status = 409, description = "Conflicts with the stored state", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn delete_role<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let revision = st.store.delete_role(&name).await?;
    changed(
        &st,
        &actor,
        "role.delete",
        format!("Role::{name:?}"),
        revision,
    )
    .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn principal_key(kind: &str, id: &str) -> Result<(PrincipalKind, EntityRef), ApiError> {
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
    Ok((
        kind,
        portcullis_policy_store::model::principal_ref(kind, id),
    ))
}

#[utoipa::path(get, path = "/v1/principals/{kind}/{id}", tag = "principals", params(("kind" = String, Path, description = "`users`, `services` or `groups`"), ("id" = String, Path, description = "Principal id")),
    responses((status = 200, description = "The principal", body = Principal), (status = 400, description = "Invalid: every failing field is listed", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn get_principal<S: Store>(
    State(st): St<S>,
    Path((kind, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (_, key) = principal_key(&kind, &id)?;
    let principal = st
        .store
        .get_principal(&key)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("principal `{key}` not found")))?;
    Ok(Json(principal).into_response())
}

#[utoipa::path(put, path = "/v1/principals/{kind}/{id}", tag = "principals", params(("kind" = String, Path, description = "`users`, `services` or `groups`"), ("id" = String, Path, description = "Principal id")), request_body = Principal,
    responses((status = 200, description = "Created or replaced", body = Principal), (status = 400, description = "Invalid: every failing field is listed", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn put_principal<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Path((kind, id)): Path<(String, String)>,
    Body(principal): Body<Principal>,
) -> Result<Response, ApiError> {
    let (kind, key) = principal_key(&kind, &id)?;
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
    check(errors)?;
    let revision = st.store.put_principal(&principal).await?;
    changed(&st, &actor, "principal.put", key.to_string(), revision).await;
    Ok(Json(principal).into_response())
}

#[utoipa::path(delete, path = "/v1/principals/{kind}/{id}", tag = "principals", params(("kind" = String, Path, description = "`users`, `services` or `groups`"), ("id" = String, Path, description = "Principal id")),
    responses((status = 204, description = "Deleted with its assignments"), (status = 400, description = "Invalid: every failing field is listed", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn delete_principal<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Path((kind, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (_, key) = principal_key(&kind, &id)?;
    let revision = st.store.delete_principal(&key).await?;
    changed(&st, &actor, "principal.delete", key.to_string(), revision).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Body of `sessions:revoke`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevokeRequest {
    session_id: String,
    /// Until when to refuse it (ms since the epoch); default: 24 hours from now.
    #[serde(default)]
    expires_at: Option<i64>,
}

#[utoipa::path(post, path = "/v1/principals/{kind}/{id}/sessions:revoke", tag = "principals", params(("kind" = String, Path, description = "`users`, `services` or `groups`"), ("id" = String, Path, description = "Principal id")), request_body = RevokeRequest,
    responses((status = 200, description = "Revoked; tokens with this sid/jti are refused", body = Revision), (status = 400, description = "Invalid: every failing field is listed", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn revoke_session<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Path((kind, id)): Path<(String, String)>,
    Body(body): Body<RevokeRequest>,
) -> Result<Response, ApiError> {
    let (_, key) = principal_key(&kind, &id)?;
    if body.session_id.is_empty() {
        return Err(ApiError::field("session_id", "must not be empty"));
    }
    let now = jiff::Timestamp::now().as_millisecond();
    let session = RevokedSession {
        session_id: body.session_id,
        principal: Some(key.clone()),
        expires_at: body.expires_at.unwrap_or(now + 86_400_000),
    };
    let revision = st.store.revoke_session(&session).await?;
    changed(&st, &actor, "session.revoke", key.to_string(), revision).await;
    Ok(Json(Revision { revision }).into_response())
}

#[utoipa::path(post, path = "/v1/assignments", tag = "assignments", request_body = Assignment,
    responses((status = 201, description = "Granted", body = Assignment), (status = 400, description = "Invalid: every failing field is listed", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 409, description = "Conflicts with the stored state", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn create_assignment<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Body(assignment): Body<Assignment>,
) -> Result<Response, ApiError> {
    let mut errors = Vec::new();
    name_problems("id", &assignment.id, &mut errors);
    name_problems("role", &assignment.role, &mut errors);
    let c = &assignment.conditions;
    if let (Some(from), Some(until)) = (c.valid_from, c.valid_until)
        && from >= until
    {
        errors.push(FieldError {
            field: String::from("conditions.valid_until"),
            message: String::from("must be after valid_from"),
        });
    }
    for (i, band) in c.allowed_bands.iter().enumerate() {
        if !matches!(band.as_str(), "GREEN" | "AMBER" | "RED") {
            errors.push(FieldError {
                field: format!("conditions.allowed_bands[{i}]"),
                message: format!("`{band}` is not GREEN, AMBER or RED"),
            });
        }
    }
    check(errors)?;
    let assignment = Assignment {
        assigned_by: assignment.assigned_by.or(Some(actor.0.clone())),
        ..assignment
    };
    let revision = st.store.create_assignment(&assignment).await?;
    changed(
        &st,
        &actor,
        "assignment.create",
        format!("Assignment::{:?}", assignment.id),
        revision,
    )
    .await;
    Ok(created(assignment))
}

/// `GET /v1/assignments` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct AssignmentQuery {
    /// `User::"alice"`.
    principal: String,
    /// Items per page, 1 to 1000 (default 100).
    #[serde(default)]
    page_size: Option<usize>,
    /// `next_page_token` of the previous page.
    #[serde(default)]
    page_token: Option<String>,
}

#[utoipa::path(get, path = "/v1/assignments", tag = "assignments", params(AssignmentQuery),
    responses((status = 200, description = "The principal's assignments by id, a page at a time", body = Page<Assignment>), (status = 400, description = "Invalid: every failing field is listed", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list_assignments<S: Store>(
    State(st): St<S>,
    Params(query): Params<AssignmentQuery>,
) -> Result<Response, ApiError> {
    let principal: EntityRef =
        query
            .principal
            .parse()
            .map_err(|e: portcullis_policy_store::error::ModelError| {
                ApiError::field("principal", e.to_string())
            })?;
    let mut assignments = st.store.assignments_of(&principal).await?;
    assignments.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Json(paginate(
        assignments,
        |a| a.id.as_str(),
        query.page_size,
        query.page_token.as_deref(),
    )?)
    .into_response())
}

#[utoipa::path(delete, path = "/v1/assignments/{id}", tag = "assignments",
    params(("id" = String, Path, description = "Assignment id")),
    responses((status = 204, description = "Revoked"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn delete_assignment<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let revision = st.store.delete_assignment(&id).await?;
    changed(
        &st,
        &actor,
        "assignment.delete",
        format!("Assignment::{id:?}"),
        revision,
    )
    .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn entity_key(type_name: &str, id: &str) -> Result<EntityRef, ApiError> {
    EntityRef::new(type_name, id).map_err(|e| ApiError::field("type", e.to_string()))
}

#[utoipa::path(put, path = "/v1/entities/{type}/{id}", tag = "entities", params(("type" = String, Path, description = "Entity type, e.g. `Space`"), ("id" = String, Path, description = "Entity id")), request_body = EntityRecord,
    responses((status = 200, description = "Created or replaced", body = EntityRecord), (status = 400, description = "Invalid: every failing field is listed", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn put_entity<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Path((type_name, id)): Path<(String, String)>,
    Body(entity): Body<EntityRecord>,
) -> Result<Response, ApiError> {
    let key = entity_key(&type_name, &id)?;
    let mut errors = Vec::new();
    if entity.uid != key {
        errors.push(FieldError {
            field: String::from("uid"),
            message: format!("`{}` differs from the path's `{key}`", entity.uid),
        });
    }
    for (i, p) in entity.parents.iter().enumerate() {
        if *p == key {
            errors.push(FieldError {
                field: format!("parents[{i}]"),
                message: String::from("an entity is not its own parent"),
            });
        }
    }
    if let Some(c) = entity.attributes.classification
        && !(0..=10).contains(&c)
    {
        errors.push(FieldError {
            field: String::from("attributes.classification"),
            message: String::from("must be between 0 and 10"),
        });
    }
    check(errors)?;
    let revision = st.store.put_entity(&entity).await?;
    changed(&st, &actor, "entity.put", key.to_string(), revision).await;
    Ok(Json(entity).into_response())
}

#[utoipa::path(delete, path = "/v1/entities/{type}/{id}", tag = "entities", params(("type" = String, Path, description = "Entity type, e.g. `Space`"), ("id" = String, Path, description = "Entity id")),
    responses((status = 204, description = "Deleted"), (status = 400, description = "Invalid: every failing field is listed", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn delete_entity<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Path((type_name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let key = entity_key(&type_name, &id)?;
    let revision = st.store.delete_entity(&key).await?;
    changed(&st, &actor, "entity.delete", key.to_string(), revision).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Body of `POST /v1/authorize`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthorizeRequest {
    principal: EntityRef,
    action: String,
    resource: EntityRef,
    #[serde(default)]
    parents: Vec<EntityRef>,
    #[serde(default)]
    context: WhatIfContext,
}

/// The request facts of a what-if decision; unset ones take harmless defaults (now, risk 0,
/// no MFA, GREEN).
#[derive(Debug, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WhatIfContext {
    #[serde(default)]
    time: Option<String>,
    #[serde(default)]
    time_zone: Option<String>,
    #[serde(default)]
    risk_score: i64,
    #[serde(default)]
    mfa: bool,
    #[serde(default)]
    device_id: Option<String>,
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    band: Option<String>,
}

/// A what-if decision, explained.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct AuthorizeResponse {
    decision: &'static str,
    reason: &'static str,
    policies: Vec<String>,
    effective_roles: Vec<String>,
    errors: Vec<String>,
    revision: i64,
}

#[utoipa::path(post, path = "/v1/authorize", tag = "decisions", request_body = AuthorizeRequest,
    responses((status = 200, description = "The decision, explained", body = AuthorizeResponse), (status = 400, description = "Invalid: every failing field is listed", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn authorize<S: Store>(
    State(st): St<S>,
    Body(body): Body<AuthorizeRequest>,
) -> Result<Response, ApiError> {
    let c = &body.context;
    let mut errors = Vec::new();
    let now = match &c.time {
        None => jiff::Timestamp::now(),
        Some(t) => t.parse().unwrap_or_else(|_| {
            errors.push(FieldError {
                field: String::from("context.time"),
                message: format!("`{t}` is not an RFC 3339 instant"),
            });
            jiff::Timestamp::now()
        }),
    };
    let zone = match c.time_zone.as_deref().map(jiff::tz::TimeZone::get) {
        None => jiff::tz::TimeZone::UTC,
        Some(Ok(z)) => z,
        Some(Err(_)) => {
            errors.push(FieldError {
                field: String::from("context.time_zone"),
                message: String::from("not an IANA time zone"),
            });
            jiff::tz::TimeZone::UTC
        }
    };
    if !(0..=100).contains(&c.risk_score) {
        errors.push(FieldError {
            field: String::from("context.risk_score"),
            message: String::from("must be between 0 and 100"),
        });
    }
    let band = c.band.clone().unwrap_or_else(|| String::from("GREEN"));
    if !matches!(band.as_str(), "GREEN" | "AMBER" | "RED") {
        errors.push(FieldError {
            field: String::from("context.band"),
            message: format!("`{band}` is not GREEN, AMBER or RED"),
        });
    }
    if let Some(ip) = &c.ip
        && ip.parse::<std::net::IpAddr>().is_err()
    {
        errors.push(FieldError {
            field: String::from("context.ip"),
            message: format!("`{ip}` is not an IP address"),
        });
    }
    check(errors)?;
    let facts = RequestFacts {
        now: now.as_millisecond(),
        local_time: LocalTime::at(now.as_millisecond(), &zone),
        risk_score: c.risk_score,
        mfa: c.mfa,
        device_id: c.device_id.clone(),
        ip: c.ip.clone(),
        band,
    };
    let snapshot = st.snapshot.load();
    let decision = decide(
        &snapshot,
        &DecisionRequest {
            principal: &body.principal,
            action: &body.action,
            resource: &body.resource,
            route_parents: &body.parents,
            facts: &facts,
        },
    );
    Ok(Json(AuthorizeResponse {
        decision: if decision.allowed { "allow" } else { "deny" },
        reason: decision.reason.as_str(),
        policies: decision.determining_policies,
        effective_roles: decision.effective_roles,
        errors: decision.errors,
        revision: snapshot.revision(),
    })
    .into_response())
}

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
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "Internal error", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn snapshot<S: Store>(State(st): St<S>) -> Result<Response, ApiError> {
    let state = st.store.load_state().await?;
    Ok(Json(state).into_response())
}

#[utoipa::path(get, path = "/v1/updates", tag = "distribution", params(UpdatesQuery),
    responses(
        (status = 200, description = "What brings a snapshot at `since` to the current revision: a patch, or the whole state to rebuild from", body = Object),
        (status = 204, description = "Nothing changed since `since`"),
        (status = 400, description = "Bad query", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "Internal error", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn updates<S: Store>(
    State(st): St<S>,
    Params(query): Params<UpdatesQuery>,
) -> Result<Response, ApiError> {
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
