//! What-if decisions with the decision core and snapshot the data plane uses.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use portcullis_policy_store::decision::{DecisionRequest, LocalTime, RequestFacts, decide};
use portcullis_policy_store::model::EntityRef;
use portcullis_policy_store::store::Store;
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

#[utoipa::path(post, path = "/v1/authorize", tag = "decisions", request_body = AuthorizeRequest,
    responses((status = 200, description = "The decision, explained", body = AuthorizeResponse), (status = 400, description = "Invalid: every failing field is listed", body = Problem, content_type = "application/problem+json"), (status = 401, description = "No or bad admin token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"), (status = 500, description = "Internal error (detail in the server log)", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn authorize<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Body(body): Body<AuthorizeRequest>,
) -> Result<Response, ApiError> {
    let target = Target::tenants([
        principal_tenant(&st.store, &body.principal)
            .await?
            .as_deref(),
        entity_tenant_of(&st.store, &body.resource)
            .await?
            .as_deref(),
    ]);
    allow(&st, &actor, AdminAction::Authorize, &target)?;
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
