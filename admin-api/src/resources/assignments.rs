//! Assignments: grant, list a principal's, revoke.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use portcullis_model::{Assignment, EntityRef, Scope};
use portcullis_store::{AssignmentFilter, Store};
use serde::Deserialize;

use super::{
    Body, Change, Page, Params, St, allow, as_json, check, created, entity_tenant_of,
    name_problems, page_after, page_of, page_size, principal_tenant, record_change,
};
use crate::auth::Actor;
use crate::authz::{AdminAction, Target};
use crate::error::{ApiError, FieldError, Problem};

/// What granting or revoking `assignment` touches: its principal's tenant and its scope's
/// (a global scope is global).
async fn assignment_target<S: Store>(
    store: &S,
    assignment: &Assignment,
) -> Result<Target, ApiError> {
    let mut target = Target::tenants([principal_tenant(store, &assignment.principal)
        .await?
        .as_deref()]);
    match assignment.scope.entity() {
        Some(scope) => target.add(entity_tenant_of(store, scope).await?.as_deref()),
        None => target.add(None),
    }
    Ok(target)
}

#[utoipa::path(post, path = "/v1/assignments", tag = "assignments", request_body = Assignment,
    responses((status = 201, description = "Granted", body = Assignment), (status = 400, description = "Invalid: every failing field is listed", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"), (status = 409, description = "Conflicts with the stored state", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn create_assignment<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Body(assignment): Body<Assignment>,
) -> Result<Response, ApiError> {
    let target = assignment_target(&st.store, &assignment).await?;
    allow(&st, &actor, AdminAction::AssignmentsWrite, &target)?;
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
        assigned_by: assignment.assigned_by.or_else(|| Some(actor.recorded())),
        ..assignment
    };
    let recorded = record_change(
        &st,
        &actor,
        Change {
            action: "assignment.create",
            resource: format!("Assignment::{:?}", assignment.id),
            before: None,
            after: as_json(&assignment),
        },
    )
    .await?;
    recorded
        .outcome(&st, st.store.create_assignment(&assignment).await)
        .await?;
    Ok(created(assignment))
}

/// `GET /v1/assignments` query: exactly one of `principal`, `role`, `scope`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct AssignmentQuery {
    /// A principal's assignments: `User::"alice"`.
    #[serde(default)]
    principal: Option<String>,
    /// Those granting a role.
    #[serde(default)]
    role: Option<String>,
    /// Those scoped exactly to an entity (`Space::"s1"`), or `global`.
    #[serde(default)]
    scope: Option<String>,
    /// Items per page, 1 to 1000 (default 100).
    #[serde(default)]
    page_size: Option<usize>,
    /// `next_page_token` of the previous page.
    #[serde(default)]
    page_token: Option<String>,
}

fn entity_ref_field(field: &str, value: &str) -> Result<EntityRef, ApiError> {
    value
        .parse()
        .map_err(|e: portcullis_model::ModelError| ApiError::field(field, e.to_string()))
}

#[utoipa::path(get, path = "/v1/assignments", tag = "assignments", params(AssignmentQuery),
    responses((status = 200, description = "The matching assignments by id, a page at a time", body = Page<Assignment>), (status = 400, description = "Invalid: every failing field is listed", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list_assignments<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Params(query): Params<AssignmentQuery>,
) -> Result<Response, ApiError> {
    let (filter, target) = match (&query.principal, &query.role, &query.scope) {
        (Some(p), None, None) => {
            let principal = entity_ref_field("principal", p)?;
            let tenant = principal_tenant(&st.store, &principal).await?;
            (
                AssignmentFilter::Principal(principal),
                Target::tenants([tenant.as_deref()]),
            )
        }
        // A role's grants span tenants.
        (None, Some(r), None) => (AssignmentFilter::Role(r.clone()), Target::global()),
        (None, None, Some(s)) if s == "global" => {
            (AssignmentFilter::Scope(Scope::Global), Target::global())
        }
        (None, None, Some(s)) => {
            let entity = entity_ref_field("scope", s)?;
            let tenant = entity_tenant_of(&st.store, &entity).await?;
            (
                AssignmentFilter::Scope(Scope::Entity(entity)),
                Target::tenants([tenant.as_deref()]),
            )
        }
        _ => {
            return Err(ApiError::field(
                "query",
                "give exactly one of `principal`, `role`, `scope`",
            ));
        }
    };
    allow(&st, &actor, AdminAction::AssignmentsRead, &target)?;
    let size = page_size(query.page_size)?;
    let after = page_after(query.page_token.as_deref())?;
    let limit = i64::try_from(size).unwrap_or(1000) + 1;
    let items = st
        .store
        .list_assignments(&filter, after.as_deref(), limit)
        .await?;
    Ok(Json(page_of(items, size, |a| a.id.clone())).into_response())
}

#[utoipa::path(delete, path = "/v1/assignments/{id}", tag = "assignments",
    params(("id" = String, Path, description = "Assignment id")),
    responses((status = 204, description = "Revoked"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"), (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn delete_assignment<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let before = st.store.get_assignment(&id).await?;
    let target = match &before {
        Some(assignment) => assignment_target(&st.store, assignment).await?,
        None => Target::global(),
    };
    allow(&st, &actor, AdminAction::AssignmentsWrite, &target)?;
    let recorded = record_change(
        &st,
        &actor,
        Change {
            action: "assignment.delete",
            resource: format!("Assignment::{id:?}"),
            before: before.as_ref().and_then(as_json),
            after: None,
        },
    )
    .await?;
    recorded
        .outcome(&st, st.store.delete_assignment(&id).await)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
