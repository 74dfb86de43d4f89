//! Resource entities and their parents: read, create or replace, delete. An entity with
//! `archived: true` is denied with everything below it (the `archived-resource` policy).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use portcullis_model::{EntityRecord, EntityRef};
use portcullis_store::Store;

use super::{Body, Change, St, allow, as_json, check, entity_tenant_of, record_change};
use crate::auth::Actor;
use crate::authz::{AdminAction, Target};
use crate::error::{ApiError, FieldError, Problem};

pub(crate) fn entity_key(type_name: &str, id: &str) -> Result<EntityRef, ApiError> {
    EntityRef::new(type_name, id).map_err(|e| ApiError::field("type", e.to_string()))
}

#[utoipa::path(get, path = "/v1/entities/{type}/{id}", tag = "entities", params(("type" = String, Path, description = "Entity type, e.g. `Space`"), ("id" = String, Path, description = "Entity id")),
    responses((status = 200, description = "The entity", body = EntityRecord), (status = 400, description = "Invalid: every failing field is listed", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"), (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn get_entity<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Path((type_name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let key = entity_key(&type_name, &id)?;
    let stored = st.store.get_entity(&key).await?;
    let target = Target::tenants([stored.as_ref().and_then(crate::authz::entity_tenant)]);
    allow(&st, &actor, AdminAction::EntitiesRead, &target)?;
    let entity = stored.ok_or_else(|| ApiError::NotFound(format!("entity `{key}` not found")))?;
    Ok(Json(entity).into_response())
}

#[utoipa::path(put, path = "/v1/entities/{type}/{id}", tag = "entities", params(("type" = String, Path, description = "Entity type, e.g. `Space`"), ("id" = String, Path, description = "Entity id")), request_body = EntityRecord,
    responses((status = 200, description = "Created or replaced", body = EntityRecord), (status = 400, description = "Invalid: every failing field is listed", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn put_entity<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Path((type_name, id)): Path<(String, String)>,
    Body(entity): Body<EntityRecord>,
) -> Result<Response, ApiError> {
    let key = entity_key(&type_name, &id)?;
    // The entity's tenant before and after, and its parents': a tenant admin attaches its
    // objects only below its own.
    let mut target = Target::tenants([crate::authz::entity_tenant(&entity)]);
    let before = st.store.get_entity(&key).await?;
    if let Some(stored) = &before {
        target.add(crate::authz::entity_tenant(stored));
    }
    for parent in &entity.parents {
        target.add(entity_tenant_of(&st.store, parent).await?.as_deref());
    }
    allow(&st, &actor, AdminAction::EntitiesWrite, &target)?;
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
    super::custom_attribute_problems(
        &st,
        entity.uid.type_name(),
        &entity.attributes.custom,
        &mut errors,
    );
    check(errors)?;
    let recorded = record_change(
        &st,
        &actor,
        Change {
            action: "entity.put",
            resource: key.to_string(),
            before: before.as_ref().and_then(as_json),
            after: as_json(&entity),
        },
    )
    .await?;
    recorded
        .outcome(&st, st.store.put_entity(&entity).await)
        .await?;
    Ok(Json(entity).into_response())
}

#[utoipa::path(delete, path = "/v1/entities/{type}/{id}", tag = "entities", params(("type" = String, Path, description = "Entity type, e.g. `Space`"), ("id" = String, Path, description = "Entity id")),
    responses((status = 204, description = "Deleted"), (status = 400, description = "Invalid: every failing field is listed", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"), (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn delete_entity<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Path((type_name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let key = entity_key(&type_name, &id)?;
    let before = st.store.get_entity(&key).await?;
    let target = Target::tenants([before.as_ref().and_then(crate::authz::entity_tenant)]);
    allow(&st, &actor, AdminAction::EntitiesWrite, &target)?;
    let recorded = record_change(
        &st,
        &actor,
        Change {
            action: "entity.delete",
            resource: key.to_string(),
            before: before.as_ref().and_then(as_json),
            after: None,
        },
    )
    .await?;
    recorded
        .outcome(&st, st.store.delete_entity(&key).await)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
