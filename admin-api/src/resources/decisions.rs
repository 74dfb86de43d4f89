//! What-if decisions, one or a batch, with the decision core and snapshot the data plane
//! uses.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use portcullis_engine::decision::{DecisionRequest, LocalTime, RequestFacts, decide};
use portcullis_engine::snapshot::Snapshot;
use portcullis_model::EntityRef;
use portcullis_store::Store;
use serde::{Deserialize, Serialize};

use super::{Body, St, allow, check, entity_tenant_of, principal_tenant};
use crate::auth::Actor;
use crate::authz::{AdminAction, Target};
use crate::error::{ApiError, FieldError, Problem};

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

/// The facts of `context`, or every problem with them (fields under `prefix`).
fn facts_of(context: &WhatIfContext, prefix: &str, errors: &mut Vec<FieldError>) -> RequestFacts {
    let mut problem = |field: &str, message: String| {
        errors.push(FieldError {
            field: format!("{prefix}context.{field}"),
            message,
        });
    };
    let now = match &context.time {
        None => jiff::Timestamp::now(),
        Some(t) => t.parse().unwrap_or_else(|_| {
            problem("time", format!("`{t}` is not an RFC 3339 instant"));
            jiff::Timestamp::now()
        }),
    };
    let zone = match context.time_zone.as_deref().map(jiff::tz::TimeZone::get) {
        None => jiff::tz::TimeZone::UTC,
        Some(Ok(z)) => z,
        Some(Err(_)) => {
            problem("time_zone", String::from("not an IANA time zone"));
            jiff::tz::TimeZone::UTC
        }
    };
    if !(0..=100).contains(&context.risk_score) {
        problem("risk_score", String::from("must be between 0 and 100"));
    }
    let band = context
        .band
        .clone()
        .unwrap_or_else(|| String::from("GREEN"));
    if !matches!(band.as_str(), "GREEN" | "AMBER" | "RED") {
        problem("band", format!("`{band}` is not GREEN, AMBER or RED"));
    }
    if let Some(ip) = &context.ip
        && ip.parse::<std::net::IpAddr>().is_err()
    {
        problem("ip", format!("`{ip}` is not an IP address"));
    }
    RequestFacts {
        now: now.as_millisecond(),
        local_time: LocalTime::at(now.as_millisecond(), &zone),
        risk_score: context.risk_score,
        mfa: context.mfa,
        device_id: context.device_id.clone(),
        ip: context.ip.clone(),
        band,
        extra: Vec::new(),
    }
}

/// One what-if decision on `snapshot`.
fn what_if(
    snapshot: &Snapshot,
    request: &AuthorizeRequest,
    facts: &RequestFacts,
) -> AuthorizeResponse {
    let decision = decide(
        snapshot,
        &DecisionRequest {
            principal: &request.principal,
            action: &request.action,
            resource: &request.resource,
            route_parents: &request.parents,
            facts,
            claimed: None,
        },
    );
    AuthorizeResponse {
        decision: if decision.allowed { "allow" } else { "deny" },
        reason: decision.reason.as_str(),
        policies: decision.determining_policies,
        effective_roles: decision.effective_roles,
        errors: decision.errors,
        revision: snapshot.revision(),
    }
}

/// What asking about `requests` touches: every principal's, resource's and given parent's
/// tenant.
async fn decisions_target<S: Store>(
    store: &S,
    requests: &[AuthorizeRequest],
) -> Result<Target, ApiError> {
    let mut tenants = Vec::with_capacity(requests.len() * 2);
    for r in requests {
        tenants.push(principal_tenant(store, &r.principal).await?);
        tenants.push(entity_tenant_of(store, &r.resource).await?);
        for parent in &r.parents {
            tenants.push(entity_tenant_of(store, parent).await?);
        }
    }
    Ok(Target::tenants(tenants.iter().map(Option::as_deref)))
}

#[utoipa::path(post, path = "/v1/authorize", tag = "decisions", request_body = AuthorizeRequest,
    responses((status = 200, description = "The decision, explained", body = AuthorizeResponse), (status = 400, description = "Invalid: every failing field is listed", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn authorize<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Body(body): Body<AuthorizeRequest>,
) -> Result<Response, ApiError> {
    let target = decisions_target(&st.store, std::slice::from_ref(&body)).await?;
    allow(&st, &actor, AdminAction::Authorize, &target)?;
    let mut errors = Vec::new();
    let facts = facts_of(&body.context, "", &mut errors);
    check(errors)?;
    Ok(Json(what_if(&st.snapshot.load(), &body, &facts)).into_response())
}

/// Most requests in one `POST /v1/authorize:batch`.
const MAX_BATCH: usize = 100;

/// Body of `POST /v1/authorize:batch`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthorizeBatch {
    /// 1 to 100 questions, answered in order on one snapshot.
    requests: Vec<AuthorizeRequest>,
}

/// The answers of a batch, in the order asked.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct AuthorizeBatchResponse {
    results: Vec<AuthorizeResponse>,
}

#[utoipa::path(post, path = "/v1/authorize:batch", tag = "decisions", request_body = AuthorizeBatch,
    responses((status = 200, description = "Every decision, explained, in the order asked, all on one snapshot", body = AuthorizeBatchResponse), (status = 400, description = "Invalid: every failing field of every request is listed (`requests[i].context.time`)", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller one of the questions", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn authorize_batch<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Body(body): Body<AuthorizeBatch>,
) -> Result<Response, ApiError> {
    if !(1..=MAX_BATCH).contains(&body.requests.len()) {
        return Err(ApiError::field(
            "requests",
            format!("1 to {MAX_BATCH} requests"),
        ));
    }
    let target = decisions_target(&st.store, &body.requests).await?;
    allow(&st, &actor, AdminAction::Authorize, &target)?;
    let mut errors = Vec::new();
    let facts: Vec<RequestFacts> = body
        .requests
        .iter()
        .enumerate()
        .map(|(i, r)| facts_of(&r.context, &format!("requests[{i}]."), &mut errors))
        .collect();
    check(errors)?;
    let snapshot = st.snapshot.load();
    let results = body
        .requests
        .iter()
        .zip(&facts)
        .map(|(r, f)| what_if(&snapshot, r, f))
        .collect();
    Ok(Json(AuthorizeBatchResponse { results }).into_response())
}
