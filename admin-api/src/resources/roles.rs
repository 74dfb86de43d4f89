//! Roles: list, read, create (409 on a taken name), replace, delete (409 while assigned).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use portcullis_model::Role;
use portcullis_store::Store;

use super::{
    Body, Change, Page, PageQuery, Params, St, allow, as_json, check, created, name_problems,
    paginate, record_change,
};
use crate::auth::Actor;
use crate::authz::{AdminAction, Target};
use crate::error::{ApiError, FieldError, Problem};

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
    responses((status = 200, description = "Roles by name, a page at a time", body = Page<Role>), (status = 400, description = "Bad query", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list_roles<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Params(query): Params<PageQuery>,
) -> Result<Response, ApiError> {
    allow(&st, &actor, AdminAction::RolesRead, &Target::global())?;
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
    responses((status = 200, description = "The role", body = Role), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"), (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn get_role<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    allow(&st, &actor, AdminAction::RolesRead, &Target::global())?;
    let role = stored_role(&st.store, &name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("role `{name}` not found")))?;
    Ok(Json(role).into_response())
}

#[utoipa::path(post, path = "/v1/roles", tag = "roles", request_body = Role,
    responses((status = 201, description = "Created", body = Role), (status = 400, description = "Invalid: every failing field is listed", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"), (status = 409, description = "Conflicts with the stored state", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn create_role<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Body(role): Body<Role>,
) -> Result<Response, ApiError> {
    allow(&st, &actor, AdminAction::RolesWrite, &Target::global())?;
    check(role_problems(&role))?;
    let recorded = record_change(
        &st,
        &actor,
        Change {
            action: "role.create",
            resource: format!("Role::{:?}", role.name),
            before: None,
            after: as_json(&role),
        },
    )
    .await?;
    recorded
        .outcome(&st, st.store.create_role(&role).await)
        .await?;
    Ok(created(role))
}

#[utoipa::path(put, path = "/v1/roles/{name}", tag = "roles", request_body = Role,
    params(("name" = String, Path, description = "Role name")),
    responses((status = 200, description = "Replaced", body = Role), (status = 400, description = "Invalid: every failing field is listed", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"), (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn update_role<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    Body(role): Body<Role>,
) -> Result<Response, ApiError> {
    allow(&st, &actor, AdminAction::RolesWrite, &Target::global())?;
    let mut errors = role_problems(&role);
    if role.name != name {
        errors.push(FieldError {
            field: String::from("name"),
            message: format!("`{}` differs from the path's `{name}`", role.name),
        });
    }
    check(errors)?;
    let before = stored_role(&st.store, &name).await?;
    let recorded = record_change(
        &st,
        &actor,
        Change {
            action: "role.update",
            resource: format!("Role::{:?}", role.name),
            before: before.as_ref().and_then(as_json),
            after: as_json(&role),
        },
    )
    .await?;
    recorded
        .outcome(&st, st.store.update_role(&role).await)
        .await?;
    Ok(Json(role).into_response())
}

#[utoipa::path(delete, path = "/v1/roles/{name}", tag = "roles",
    params(("name" = String, Path, description = "Role name")),
    responses((status = 204, description = "Deleted"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"), (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"), (status = 409, description = "Conflicts with the stored state", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn delete_role<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    allow(&st, &actor, AdminAction::RolesWrite, &Target::global())?;
    let before = stored_role(&st.store, &name).await?;
    let recorded = record_change(
        &st,
        &actor,
        Change {
            action: "role.delete",
            resource: format!("Role::{name:?}"),
            before: before.as_ref().and_then(as_json),
            after: None,
        },
    )
    .await?;
    recorded
        .outcome(&st, st.store.delete_role(&name).await)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The stored role called `name`.
async fn stored_role<S: Store>(store: &S, name: &str) -> Result<Option<Role>, ApiError> {
    Ok(store
        .list_roles()
        .await?
        .into_iter()
        .find(|r| r.name == name))
}
