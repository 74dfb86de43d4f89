//! The policy set and its schema: read with an `ETag` (the quoted version number), replace
//! with `If-Match` (412 when the set moved on, 428 without it), check without writing,
//! page through the history, read one version, roll back to one (stored as a new version,
//! so history only grows). A set that does not compile with the stored roles is refused with
//! the validator's messages and never reaches a sidecar.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use portcullis_model::{PolicyFile, PolicySetCheck, PolicySetSummary, PolicySetVersion};
use portcullis_store::Store;
use serde::{Deserialize, Serialize};

use super::{
    Body, Change, Page, PageQuery, Params, St, allow, check, name_problems, page_after, page_of,
    page_size, record_change,
};
use crate::auth::Actor;
use crate::authz::{AdminAction, Target};
use crate::error::{ApiError, FieldError, Problem};

/// Body of `PUT /v1/policies` and `POST /v1/policies:validate`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicySetInput {
    /// The Cedar policy files; every policy carries an `@id`.
    files: Vec<PolicyFile>,
    /// The Cedar schema (human syntax); the current one when absent.
    #[serde(default)]
    schema: Option<String>,
}

/// Body of `POST /v1/policies:rollback`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RollbackRequest {
    /// The version whose files and schema become the new current version.
    version: i64,
}

/// `GET /v1/schema`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SchemaDocument {
    /// The policy-set version the schema belongs to.
    version: i64,
    /// The Cedar schema (human syntax).
    schema: String,
}

fn etag(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// A version answered with its `ETag`.
fn versioned<T: Serialize>(version: i64, body: T) -> Response {
    let mut response = Json(body).into_response();
    response.headers_mut().insert(header::ETAG, etag(version));
    response
}

/// The version a write may replace, from `If-Match` and the current version: the current
/// one when `If-Match` is `*` or lists it (strong comparison: a weak tag never matches).
/// The store checks it again inside the write, so a concurrent writer still gets 412.
fn expected_version(headers: &HeaderMap, current: Option<i64>) -> Result<i64, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Err(ApiError::PreconditionRequired(String::from(
            "send `If-Match` with the `ETag` of `GET /v1/policies`, so a change made since is not overwritten",
        )));
    };
    let value = value.to_str().unwrap_or_default().trim();
    let current_text = current.map_or_else(|| String::from("none"), |v| format!("\"{v}\""));
    let matches = current.is_some_and(|current| {
        value == "*"
            || value
                .split(',')
                .map(str::trim)
                .filter_map(|tag| {
                    tag.strip_prefix('"')?
                        .strip_suffix('"')?
                        .parse::<i64>()
                        .ok()
                })
                .any(|v| v == current)
    });
    match current {
        Some(current) if matches => Ok(current),
        _ => Err(ApiError::PreconditionFailed(format!(
            "`If-Match: {value}` does not match the current version ({current_text})"
        ))),
    }
}

/// Every problem of the files, listed at once.
fn input_problems(input: &PolicySetInput) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if input.files.is_empty() {
        errors.push(FieldError {
            field: String::from("files"),
            message: String::from("at least one policy file"),
        });
    }
    for (i, file) in input.files.iter().enumerate() {
        name_problems(&format!("files[{i}].name"), &file.name, &mut errors);
        if input.files.iter().take(i).any(|f| f.name == file.name) {
            errors.push(FieldError {
                field: format!("files[{i}].name"),
                message: format!("`{}` appears more than once", file.name),
            });
        }
    }
    if input.schema.as_deref().is_some_and(|s| s.trim().is_empty()) {
        errors.push(FieldError {
            field: String::from("schema"),
            message: String::from("must not be empty; leave it out to keep the current schema"),
        });
    }
    errors
}

/// The schema to store with `input`: its own, or the current version's.
fn schema_of(
    input: PolicySetInput,
    current: Option<&PolicySetVersion>,
) -> Result<(Vec<PolicyFile>, String), ApiError> {
    match (input.schema, current) {
        (Some(schema), _) => Ok((input.files, schema)),
        (None, Some(current)) => Ok((input.files, current.schema.clone())),
        (None, None) => Err(ApiError::field(
            "schema",
            "required: the store holds no schema yet",
        )),
    }
}

#[utoipa::path(get, path = "/v1/policies", tag = "policies",
    responses((status = 200, description = "The current policy set; `ETag` is its version", body = PolicySetVersion, headers(("ETag" = String, description = "The quoted version number"))), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"), (status = 404, description = "The store holds no policy set yet", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn get_policies<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
) -> Result<Response, ApiError> {
    allow(&st, &actor, AdminAction::PoliciesRead, &Target::global())?;
    let current = st
        .store
        .current_policy_set()
        .await?
        .ok_or_else(|| ApiError::NotFound(String::from("no policy set is stored yet")))?;
    Ok(versioned(current.version, current))
}

#[utoipa::path(put, path = "/v1/policies", tag = "policies", request_body = PolicySetInput,
    params(("If-Match" = String, Header, description = "The `ETag` of the version this replaces, or `*`")),
    responses((status = 200, description = "Stored as the new current version", body = PolicySetVersion, headers(("ETag" = String, description = "The quoted version number"))), (status = 400, description = "Invalid: every failing field and every validator message is listed", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"), (status = 412, description = "`If-Match` does not name the current version", body = Problem, content_type = "application/problem+json"), (status = 428, description = "`If-Match` is missing", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn put_policies<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    Body(input): Body<PolicySetInput>,
) -> Result<Response, ApiError> {
    allow(&st, &actor, AdminAction::PoliciesWrite, &Target::global())?;
    check(input_problems(&input))?;
    let current = st.store.current_policy_set().await?;
    let expected = expected_version(&headers, current.as_ref().map(|v| v.version))?;
    let (files, schema) = schema_of(input, current.as_ref())?;
    keeps_routes(&st, &files, &schema)?;
    store_version(&st, &actor, "policies.replace", &files, &schema, expected).await
}

/// Refuses a set that would leave a route of this process undecidable (400, one `schema`
/// error per route).
fn keeps_routes<S>(
    st: &crate::AppState<S>,
    files: &[PolicyFile],
    schema: &str,
) -> Result<(), ApiError> {
    let Some(guard) = &st.route_guard else {
        return Ok(());
    };
    let problems = guard.problems(files, schema);
    if problems.is_empty() {
        return Ok(());
    }
    Err(ApiError::Invalid {
        detail: format!(
            "{} route(s) of this Portcullis would deny every request under this policy set; \
             change the routes first or keep their actions",
            problems.len()
        ),
        errors: problems
            .into_iter()
            .map(|message| FieldError {
                field: String::from("schema"),
                message,
            })
            .collect(),
    })
}

/// Stores a new version replacing `expected`, records the change, answers the version.
async fn store_version<S: Store>(
    st: &crate::AppState<S>,
    actor: &Actor,
    action: &'static str,
    files: &[PolicyFile],
    schema: &str,
    expected: i64,
) -> Result<Response, ApiError> {
    let recorded = record_change(
        st,
        actor,
        Change {
            action,
            // The new version's number is the store's to give: the record names the one
            // it replaces.
            resource: String::from("PolicySet"),
            before: Some(serde_json::json!({ "version": expected })),
            after: Some(serde_json::json!({
                "files": files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
            })),
        },
    )
    .await?;
    let (_, version) = recorded
        .outcome(
            st,
            st.store
                .put_policy_set(files, schema, Some(&actor.recorded()), Some(expected))
                .await,
        )
        .await?;
    let stored =
        st.store.policy_set_version(version).await?.ok_or_else(|| {
            ApiError::Internal(format!("version {version} vanished after storing"))
        })?;
    Ok(versioned(version, stored))
}

#[utoipa::path(post, path = "/v1/policies:validate", tag = "policies", request_body = PolicySetInput,
    responses((status = 200, description = "It compiles with the stored roles: what `PUT /v1/policies` would accept. Nothing is written", body = PolicySetCheck), (status = 400, description = "What `PUT /v1/policies` would refuse, with every validator message", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn validate_policies<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Body(input): Body<PolicySetInput>,
) -> Result<Response, ApiError> {
    allow(&st, &actor, AdminAction::PoliciesRead, &Target::global())?;
    check(input_problems(&input))?;
    let current = st.store.current_policy_set().await?;
    let (files, schema) = schema_of(input, current.as_ref())?;
    let checked = st.store.check_policy_set(&files, &schema).await?;
    keeps_routes(&st, &files, &schema)?;
    Ok(Json(checked).into_response())
}

#[utoipa::path(get, path = "/v1/policies/versions", tag = "policies", params(PageQuery),
    responses((status = 200, description = "The history, newest first, a page at a time", body = Page<PolicySetSummary>), (status = 400, description = "Bad query", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list_policy_versions<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Params(query): Params<PageQuery>,
) -> Result<Response, ApiError> {
    allow(&st, &actor, AdminAction::PoliciesRead, &Target::global())?;
    let size = page_size(query.page_size)?;
    let before = page_after(query.page_token.as_deref())?
        .map(|t| {
            t.parse::<i64>()
                .map_err(|_| ApiError::field("page_token", "not a token this API gave out"))
        })
        .transpose()?;
    let limit = i64::try_from(size).unwrap_or(1000) + 1;
    let items = st.store.policy_set_history(before, limit).await?;
    Ok(Json(page_of(items, size, |v| v.version.to_string())).into_response())
}

#[utoipa::path(get, path = "/v1/policies/versions/{version}", tag = "policies",
    params(("version" = i64, Path, description = "Version number")),
    responses((status = 200, description = "That version", body = PolicySetVersion), (status = 400, description = "Not a version number", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"), (status = 404, description = "No such version", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn get_policy_version<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Path(version): Path<String>,
) -> Result<Response, ApiError> {
    allow(&st, &actor, AdminAction::PoliciesRead, &Target::global())?;
    let version: i64 = version
        .parse()
        .map_err(|_| ApiError::field("version", format!("`{version}` is not a version number")))?;
    let found = st
        .store
        .policy_set_version(version)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("policy-set version {version} not found")))?;
    Ok(versioned(version, found))
}

#[utoipa::path(post, path = "/v1/policies:rollback", tag = "policies", request_body = RollbackRequest,
    params(("If-Match" = String, Header, description = "The `ETag` of the current version, or `*`")),
    responses((status = 200, description = "That version's files and schema, stored as the new current version", body = PolicySetVersion, headers(("ETag" = String, description = "The quoted version number"))), (status = 400, description = "No such version, or it no longer compiles with the stored roles", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"), (status = 412, description = "`If-Match` does not name the current version", body = Problem, content_type = "application/problem+json"), (status = 428, description = "`If-Match` is missing", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn rollback_policies<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    Body(request): Body<RollbackRequest>,
) -> Result<Response, ApiError> {
    allow(&st, &actor, AdminAction::PoliciesWrite, &Target::global())?;
    let target = st
        .store
        .policy_set_version(request.version)
        .await?
        .ok_or_else(|| {
            ApiError::field(
                "version",
                format!("there is no version {}", request.version),
            )
        })?;
    let current = st.store.current_policy_set().await?.map(|v| v.version);
    let expected = expected_version(&headers, current)?;
    keeps_routes(&st, &target.files, &target.schema)?;
    store_version(
        &st,
        &actor,
        "policies.rollback",
        &target.files,
        &target.schema,
        expected,
    )
    .await
}

#[utoipa::path(get, path = "/v1/schema", tag = "policies",
    responses((status = 200, description = "The Cedar schema of the current policy set", body = SchemaDocument, headers(("ETag" = String, description = "The quoted policy-set version"))), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"), (status = 404, description = "The store holds no policy set yet", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn get_schema<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
) -> Result<Response, ApiError> {
    allow(&st, &actor, AdminAction::PoliciesRead, &Target::global())?;
    let current = st
        .store
        .current_policy_set()
        .await?
        .ok_or_else(|| ApiError::NotFound(String::from("no policy set is stored yet")))?;
    Ok(versioned(
        current.version,
        SchemaDocument {
            version: current.version,
            schema: current.schema,
        },
    ))
}
