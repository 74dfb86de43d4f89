//! What sidecars follow: the whole state, what changed since a revision, and a stream of
//! changes as they are published (`GET /v1/watch`, server-sent events) — each in one of
//! two views: `full`, or `shared` for sidecars in cached state mode (all but users,
//! services and the entities of types the feed does not hold, whose changes are named to
//! be evicted) — and the slice of one of those (`GET /v1/snapshot/principals/{kind}/{id}`,
//! `GET /v1/snapshot/entities/{type}/{id}`), what such a sidecar fetches on a miss.
//!
//! A step the [`ChangeFeed`](crate::publish::ChangeFeed) holds is sent as the publisher
//! encoded it, to every caller: only a caller behind what the feed keeps reads the store.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Path;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use portcullis_engine::snapshot::{SliceValue, SnapshotUpdate, StateSlice, StoreState};
use portcullis_model::EntityRef;
use portcullis_store::Store;
use serde::Deserialize;

use super::entities::entity_key;
use super::principals::principal_key;
use super::{Params, St, allow};
use crate::AppState;
use crate::auth::Actor;
use crate::authz::{AdminAction, Target};
use crate::error::{ApiError, Problem};

/// Which part of the state a sidecar follows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum View {
    /// Everything (state mode `full`).
    #[default]
    Full,
    /// All but users, services and the entities of types not held, whose changes are
    /// named in `invalidated` (state mode `cached`).
    Shared,
}

impl View {
    /// The state in this view, read from the store in one transaction.
    async fn load<S: Store>(self, st: &AppState<S>) -> Result<StoreState, ApiError> {
        Ok(match self {
            Self::Full => st.store.load_state().await?,
            Self::Shared => {
                (st.store)
                    .load_shared_state(st.feed.held_entity_types())
                    .await?
            }
        })
    }

    /// `update` in this view.
    fn of<S>(self, st: &AppState<S>, update: SnapshotUpdate) -> SnapshotUpdate {
        match self {
            Self::Full => update,
            Self::Shared => update.shared(st.feed.held_entity_types()),
        }
    }
}

/// `GET /v1/snapshot` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct SnapshotQuery {
    /// `full` (default) or `shared`.
    #[serde(default)]
    view: View,
}

/// `GET /v1/updates` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdatesQuery {
    /// The revision the caller's snapshot is at.
    since: i64,
    /// `full` (default) or `shared`.
    #[serde(default)]
    view: View,
}

#[utoipa::path(get, path = "/v1/snapshot", tag = "distribution", params(SnapshotQuery),
    responses(
        (status = 200, description = "The whole state at one revision: what a sidecar bootstraps from", body = Object),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "Internal error", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn snapshot<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Params(query): Params<SnapshotQuery>,
) -> Result<Response, ApiError> {
    allow(
        &st,
        &actor,
        AdminAction::DistributionRead,
        &Target::global(),
    )?;
    if query.view == View::Full {
        return Ok(Json(query.view.load(&st).await?).into_response());
    }
    let json = st
        .feed
        .shared_state(async {
            let state = View::Shared.load(&st).await?;
            let json = serde_json::to_string(&state)
                .map_err(|e| ApiError::Internal(format!("state not encoded: {e}")))?;
            Ok::<_, ApiError>((state.revision, Arc::from(json)))
        })
        .await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json.to_string(),
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/snapshot/principals/{kind}/{id}", tag = "distribution",
    params(("kind" = String, Path, description = "`users`, `services` or `groups`"), ("id" = String, Path, description = "Principal id")),
    responses(
        (status = 200, description = "One principal with all its assignments as this control plane's snapshot holds it, and the revision it is current at (`value` null: not in the store): what a sidecar in cached state mode fetches on a miss", body = Object),
        (status = 400, description = "Bad kind", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "Internal error", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn principal_slice<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Path((kind, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (_, key) = principal_key(&kind, &id)?;
    slice(st, &actor, key, |snapshot, key| {
        snapshot.principal(key).map(|view| {
            SliceValue::Principal((
                view.principal.clone(),
                view.assignments().cloned().collect(),
            ))
        })
    })
}

#[utoipa::path(get, path = "/v1/snapshot/entities/{type}/{id}", tag = "distribution",
    params(("type" = String, Path, description = "Entity type, e.g. `Document`"), ("id" = String, Path, description = "Entity id")),
    responses(
        (status = 200, description = "One entity as this control plane's snapshot holds it, and the revision it is current at (`value` null: not in the store): what a sidecar in cached state mode fetches on a miss for an entity of a type the shared view does not hold", body = Object),
        (status = 400, description = "Bad type or id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "Internal error", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn entity_slice<S: Store>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Path((type_name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let key = entity_key(&type_name, &id)?;
    slice(st, &actor, key, |snapshot, key| {
        (snapshot.entity(key)).map(|view| SliceValue::Entity(view.record.clone()))
    })
}

/// The slice of `key` as this control plane's snapshot holds it (`value` reads it), for a
/// caller allowed to read the distribution.
fn slice<S: Store>(
    st: Arc<AppState<S>>,
    actor: &Actor,
    key: EntityRef,
    value: impl FnOnce(&portcullis_engine::snapshot::Snapshot, &EntityRef) -> Option<SliceValue>,
) -> Result<Response, ApiError> {
    allow(&st, actor, AdminAction::DistributionRead, &Target::global())?;
    let snapshot = st.snapshot.load();
    let slice = StateSlice {
        revision: snapshot.revision(),
        value: value(&snapshot, &key),
    };
    // Read through: the next sidecar that misses finds it in the shared cache. Never
    // over a newer slice (the cache checks), and off this answer's path.
    if let Some(target) = &st.shared_cache {
        let target = target.clone();
        let written = [(key, slice.clone())];
        tokio::spawn(async move {
            if let Err(e) = target.cache.put(&written, target.ttl).await {
                tracing::debug!(error = %e, "shared cache: read-through slice not written");
            }
        });
    }
    Ok(Json(slice).into_response())
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
    match encoded_update_since(&st, query.since, query.view).await? {
        None => Ok(StatusCode::NO_CONTENT.into_response()),
        Some((_, json)) => Ok((
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            json.to_string(),
        )
            .into_response()),
    }
}

/// What brings a snapshot at `since` to the published revision, in `view`, as JSON, with
/// the revision it brings it to; `None` when it is there. From the feed when it holds that
/// step.
async fn encoded_update_since<S: Store>(
    st: &AppState<S>,
    since: i64,
    view: View,
) -> Result<Option<(i64, Arc<str>)>, ApiError> {
    if let Some(step) = st.feed.step_from(since) {
        let json = match view {
            View::Full => &step.json,
            View::Shared => &step.shared_json,
        };
        return Ok(Some((step.to, Arc::clone(json))));
    }
    let Some(update) = update_since(st, since, view).await? else {
        return Ok(None);
    };
    let to = update.revision();
    let json = serde_json::to_string(&update)
        .map_err(|e| ApiError::Internal(format!("update not encoded: {e}")))?;
    Ok(Some((to, Arc::from(json))))
}

/// What brings a snapshot at `since` to the store's revision, in `view`; `None` when it is
/// there.
async fn update_since<S: Store>(
    st: &AppState<S>,
    since: i64,
    view: View,
) -> Result<Option<SnapshotUpdate>, ApiError> {
    let current = st.store.revision().await?;
    if since == current {
        return Ok(None);
    }
    if since > current || since < 0 {
        // The caller is ahead of this store (it was replaced): start over.
        return Ok(Some(SnapshotUpdate::Rebuild(view.load(st).await?)));
    }
    Ok(Some(view.of(st, st.store.load_update(since).await?)))
}

/// `GET /v1/watch` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct WatchQuery {
    /// The revision the caller's snapshot is at.
    since: i64,
    /// How often to send a `heartbeat` event while nothing changes, 100 to 60000 ms (default
    /// 5000). A caller that hears nothing for a few heartbeats reconnects.
    #[serde(default)]
    heartbeat_ms: Option<u64>,
    /// `full` (default) or `shared`.
    #[serde(default)]
    view: View,
}

#[utoipa::path(get, path = "/v1/watch", tag = "distribution", params(WatchQuery),
    responses(
        (status = 200, description = "Server-sent events until the caller leaves: `update` (data: what `GET /v1/updates` would answer, a patch or the whole state to rebuild from — the resync when `since` is too old or ahead; id: the revision it brings the caller to) as soon as this control plane publishes a revision, and `heartbeat` (data: the current revision) first and whenever nothing changed for `heartbeat_ms`", content_type = "text/event-stream"),
        (status = 400, description = "Bad query", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or bad token", body = Problem, content_type = "application/problem+json"), (status = 403, description = "The admin policies do not allow this caller this call", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "Internal error", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn watch<S: Store + Send + Sync + 'static>(
    State(st): St<S>,
    Extension(actor): Extension<Actor>,
    Params(query): Params<WatchQuery>,
) -> Result<Response, ApiError> {
    allow(
        &st,
        &actor,
        AdminAction::DistributionRead,
        &Target::global(),
    )?;
    let heartbeat_ms = query.heartbeat_ms.unwrap_or(5000);
    if !(100..=60_000).contains(&heartbeat_ms) {
        return Err(ApiError::field(
            "heartbeat_ms",
            "must be between 100 and 60000",
        ));
    }
    let watcher = Watcher {
        published: st.feed.subscribe(),
        st,
        since: query.since,
        view: query.view,
        heartbeat: Duration::from_millis(heartbeat_ms),
        greeted: false,
    };
    let events = futures_util::stream::unfold(watcher, |mut w| async move {
        let event = w.next_event().await?;
        Some((Ok::<_, std::convert::Infallible>(event), w))
    });
    Ok(Sse::new(events).into_response())
}

/// One caller's watch: where it is, and the published revisions to wake on.
struct Watcher<S> {
    st: Arc<AppState<S>>,
    /// The feed's head: the revision published last.
    published: tokio::sync::watch::Receiver<i64>,
    since: i64,
    view: View,
    heartbeat: Duration,
    greeted: bool,
}

impl<S: Store> Watcher<S> {
    /// The next event; `None` ends the stream (the caller reconnects).
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            let published = *self.published.borrow_and_update();
            if published != self.since {
                match encoded_update_since(&self.st, self.since, self.view).await {
                    Ok(Some((to, json))) => {
                        self.since = to;
                        return Some(
                            Event::default()
                                .event("update")
                                .id(to.to_string())
                                .data(&*json),
                        );
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = ?e, "watch: cannot read the store; closing the stream");
                        return None;
                    }
                }
            }
            if !self.greeted {
                self.greeted = true;
                return Some(self.heartbeat_event());
            }
            tokio::select! {
                changed = tokio::time::timeout(self.heartbeat, self.published.changed()) => match changed {
                    Ok(Ok(())) => {}
                    // The feed is gone: the process is stopping.
                    Ok(Err(_)) => return None,
                    Err(_) => return Some(self.heartbeat_event()),
                },
                // The caller reconnects, to another replica or after the restart.
                () = self.st.stopping.cancelled() => return None,
            }
        }
    }

    fn heartbeat_event(&self) -> Event {
        Event::default()
            .event("heartbeat")
            .data(self.since.to_string())
    }
}
