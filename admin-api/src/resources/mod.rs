//! The handlers, a module per resource: each validates the whole request (reporting every
//! failing field), calls the store, and answers JSON. What they share lives here: the body
//! and query extractors, pagination, field checks, and [`changed`], which logs and audits
//! every change with its actor.

mod assignments;
mod audit;
mod decisions;
mod distribution;
mod entities;
mod events;
mod policies;
mod principals;
mod roles;

pub(crate) use assignments::*;
pub(crate) use audit::*;
pub(crate) use decisions::*;
pub(crate) use distribution::*;
pub(crate) use entities::*;
pub(crate) use events::*;
pub(crate) use policies::*;
pub(crate) use principals::*;
pub(crate) use roles::*;

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use portcullis_model::EntityRef;
use portcullis_store::Store;

use crate::AppState;
use crate::auth::Actor;
use crate::authz::{AdminAction, Target};
use crate::error::{ApiError, FieldError};
use portcullis_ledger::writer::ChangeRecord;

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

/// Asks the admin policies whether `actor` may do `action` to `target`; every handler calls
/// it before reading or changing anything the target names.
fn allow<S>(
    st: &AppState<S>,
    actor: &Actor,
    action: AdminAction,
    target: &Target,
) -> Result<(), ApiError> {
    st.admin_policies.load().check(actor, action, target)
}

/// The tenant of a stored principal; `None` when it is not stored or has none.
async fn principal_tenant<S: Store>(
    store: &S,
    key: &EntityRef,
) -> Result<Option<String>, ApiError> {
    Ok(store.get_principal(key).await?.and_then(|p| p.tenant))
}

/// The tenant of an entity: a `Tenant` is its own; others say so when stored. `None` when
/// it is not stored or has none.
async fn entity_tenant_of<S: Store>(
    store: &S,
    uid: &EntityRef,
) -> Result<Option<String>, ApiError> {
    if uid.type_name() == "Tenant" {
        return Ok(Some(uid.id().to_owned()));
    }
    Ok(store
        .get_entity(uid)
        .await?
        .and_then(|e| crate::authz::entity_tenant(&e).map(str::to_owned)))
}

/// An admin change about to be made, as [`record_change`] records it.
struct Change {
    /// The admin operation (`principal.put`).
    action: &'static str,
    /// The object changed (`User::"alice"`).
    resource: String,
    /// The object as read just before the write; `None` when it did not exist.
    before: Option<serde_json::Value>,
    /// The object as it will be written; `None` when deleted.
    after: Option<serde_json::Value>,
}

/// `value` as JSON, for the before and after of a [`Change`].
fn as_json<T: Serialize>(value: &T) -> Option<serde_json::Value> {
    serde_json::to_value(value).ok()
}

/// A change the ledger has recorded, waiting for the store's answer.
struct Recorded {
    action: &'static str,
    resource: String,
    actor: String,
}

/// Records `change` in the audit ledger, with its actor, before it is made: a change the
/// ledger cannot take is not made (503), as the data plane refuses what it cannot record.
/// Without a ledger (audit off), only logged.
async fn record_change<S>(
    st: &AppState<S>,
    actor: &Actor,
    change: Change,
) -> Result<Recorded, ApiError> {
    let Change {
        action,
        resource,
        before,
        after,
    } = change;
    let recorded = Recorded {
        action,
        resource,
        actor: actor.recorded(),
    };
    if let Some(ledger) = &st.ledger {
        ledger
            .record_change(ChangeRecord {
                actor: recorded.actor.clone(),
                action: action.to_owned(),
                resource: Some(recorded.resource.clone()),
                before,
                after,
                ..ChangeRecord::default()
            })
            .await
            .map_err(|e| ApiError::LedgerUnavailable(format!("{action}: {e}")))?;
    }
    Ok(recorded)
}

/// What a store write answers, with the revision it made.
trait Committed {
    fn revision(&self) -> i64;
}

impl Committed for i64 {
    fn revision(&self) -> i64 {
        *self
    }
}

/// `(revision, policy-set version)`.
impl Committed for (i64, i64) {
    fn revision(&self) -> i64 {
        self.0
    }
}

impl Recorded {
    /// The store's answer to the recorded change: logged with its revision when made; when
    /// it was not made, a second record says so (as far as the ledger can take it) and the
    /// error is returned.
    async fn outcome<S, T: Committed>(
        self,
        st: &AppState<S>,
        result: Result<T, portcullis_store::StoreError>,
    ) -> Result<T, ApiError> {
        let Self {
            action,
            resource,
            actor,
        } = self;
        let error = match result {
            Ok(value) => {
                let revision = value.revision();
                tracing::info!(actor, action, resource, revision, "admin change");
                return Ok(value);
            }
            Err(e) => e,
        };
        if let Some(ledger) = &st.ledger {
            let recorded = ledger
                .record_change(ChangeRecord {
                    actor,
                    action: action.to_owned(),
                    resource: Some(resource),
                    reason: Some(format!("not made: {error}")),
                    ..ChangeRecord::default()
                })
                .await;
            if let Err(e) = recorded {
                tracing::error!(error = %e, action, "a failed admin change not recorded as failed");
            }
        }
        Err(error.into())
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
    portcullis_ledger::hex::hex(s.as_bytes())
}

fn hex_decode(s: &str) -> Option<String> {
    String::from_utf8(portcullis_ledger::hex::decode(s)?).ok()
}

/// A checked `page_size` (1 to 1000, default 100).
fn page_size(requested: Option<usize>) -> Result<usize, ApiError> {
    let size = requested.unwrap_or(100);
    if !(1..=1000).contains(&size) {
        return Err(ApiError::field("page_size", "must be between 1 and 1000"));
    }
    Ok(size)
}

/// The key a `page_token` continues after.
fn page_after(token: Option<&str>) -> Result<Option<String>, ApiError> {
    token
        .map(|t| {
            hex_decode(t)
                .ok_or_else(|| ApiError::field("page_token", "not a token this API gave out"))
        })
        .transpose()
}

/// A page of at most `size` from `items` (fetched with one extra to know whether more
/// follow); the token continues after the last item's key.
fn page_of<T>(mut items: Vec<T>, size: usize, key: impl Fn(&T) -> String) -> Page<T> {
    let next_page_token = (items.len() > size)
        .then(|| {
            items.truncate(size);
            items.last().map(|last| hex_encode(&key(last)))
        })
        .flatten();
    Page {
        items,
        next_page_token,
    }
}

/// The page after `token` of `items` (sorted by `key`), for lists held in memory.
fn paginate<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> &str,
    page_size_requested: Option<usize>,
    token: Option<&str>,
) -> Result<Page<T>, ApiError> {
    let size = page_size(page_size_requested)?;
    let after = page_after(token)?;
    let rest: Vec<T> = items
        .into_iter()
        .filter(|item| after.as_deref().is_none_or(|a| key(item) > a))
        .take(size + 1)
        .collect();
    Ok(page_of(rest, size, |item| key(item).to_owned()))
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

/// Adds a field error for each custom attribute (beyond the model's own) that the schema
/// in force does not declare for `type_name`, or whose value is not of its type.
fn custom_attribute_problems<S>(
    st: &AppState<S>,
    type_name: &str,
    custom: &std::collections::BTreeMap<String, serde_json::Value>,
    errors: &mut Vec<FieldError>,
) {
    if custom.is_empty() {
        return;
    }
    let snapshot = st.snapshot.load();
    for (name, message) in snapshot
        .policies()
        .custom_attribute_problems(type_name, custom)
    {
        errors.push(FieldError {
            field: format!("attributes.{name}"),
            message,
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
