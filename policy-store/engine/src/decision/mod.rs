//! The decision core: snapshot + a route-resolved request → allow or deny, with the
//! determining policies, the errors and the effective roles.
//!
//! Only the small entity slice of the request is built (principal with its groups and the
//! roles in force here; resource with its ancestors; the action and its groups when a
//! policy body reads `action`; the context attributes policies read), and only the
//! policies the index says can apply are evaluated, each from its prepared condition, by
//! Cedar's evaluator. Any evaluation error is a deny: Cedar's authorizer skips a policy
//! that errors, so an erroring `forbid` would otherwise let the request through. The
//! tests check this against Cedar's authorizer over the whole policy set.
//!
//! Outcomes are remembered per snapshot in a [`cache`] keyed by every input of the
//! evaluation; [`decide_uncached`] skips it.
//!
//! In cached state mode the snapshot holds only the shared part of the state: the users
//! and services a decision reads (the principal, its managers, a principal that is the
//! resource) and the stored entities of types the snapshot does not hold (the resource,
//! its ancestors) are fetched first and passed in ([`Fetched`]): [`first_missing`] names
//! the next one to fetch, by the same walk the decision takes, and [`decide_fetched`]
//! decides over them.
//!
//! A principal the store does not hold may come with the request instead, described by
//! its verified token's claims ([`ClaimedPrincipal`]): it is decided on only when the store
//! has no principal of that key (a stored one, whatever its status, always wins), its
//! digest joins the cache key, and the roles it holds only through its claims are named
//! in the decision ([`Decision::claimed_roles`]).

mod cache;
#[cfg(test)]
mod tests;

pub use cache::DECISION_CACHE_ENTRIES;
pub(crate) use cache::DecisionCache;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cedar_policy_core::ast::{
    Effect, Entity, EntityUID, EntityUIDEntry, Literal, Request, ValueKind,
};
use cedar_policy_core::entities::{Entities, NoEntitiesSchema, TCComputation};
use cedar_policy_core::evaluator::Evaluator;
use cedar_policy_core::extensions::Extensions;

use crate::policy::{ActionPolicies, PreparedPolicy, Reads};
use crate::slice;
use crate::snapshot::{EntityView, PrincipalView, Snapshot, is_shared};
use portcullis_model::{Assignment, EntityRef, PrincipalKind, Revision, UnixMillis};

/// How deep entity and group hierarchies are followed; deeper chains are cut (and a cycle
/// cannot loop).
const MAX_DEPTH: usize = 32;

/// The most keys one decision fetches, so the most [`first_missing`] names for one request:
/// the principal with its managers up to [`MAX_DEPTH`], then the resource (a principal with
/// its managers, or an entity with its ancestors) — with room for ancestors in more than one
/// line. A request that would need more is refused `state_unavailable`.
pub const MAX_FETCHED: usize = 4 * (1 + MAX_DEPTH);

/// Wall-clock facts in the configured time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTime {
    /// 0..23.
    pub hour: u8,
    /// 0..59.
    pub minute: u8,
    /// 1 = Monday .. 7 = Sunday.
    pub weekday: u8,
}

impl LocalTime {
    /// The local time of `now` in `tz`.
    pub fn at(now: UnixMillis, tz: &jiff::tz::TimeZone) -> Self {
        let ts = jiff::Timestamp::from_millisecond(now).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let dt = ts.to_zoned_datetime(tz.clone()).datetime();
        Self {
            hour: u8::try_from(dt.hour()).unwrap_or(0),
            minute: u8::try_from(dt.minute()).unwrap_or(0),
            weekday: u8::try_from(dt.weekday().to_monday_one_offset()).unwrap_or(1),
        }
    }
}

/// Facts about the request that are not in the store: from the token, the route and the
/// connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFacts {
    /// The instant of the request (assignment validity is checked against it).
    pub now: UnixMillis,
    /// `now` in the configured time zone.
    pub local_time: LocalTime,
    /// Risk score 0..100 (token claim or trusted header); 0 when unknown.
    pub risk_score: i64,
    /// Authenticated with a second factor.
    pub mfa: bool,
    /// Device id presented with the request.
    pub device_id: Option<String>,
    /// Client IP address, as text (`10.1.2.3`, `::1`). Callers pass a valid address: it is
    /// parsed (and an invalid one denied) only when some policy of the action reads
    /// `context.ip`.
    pub ip: Option<String>,
    /// Security band of the route: `GREEN`, `AMBER` or `RED`.
    pub band: String,
    /// Context attributes the route takes from the request (headers, query and path
    /// parameters, claims), typed by the schema; by name, ascending, none of them a fixed
    /// attribute above.
    pub extra: Vec<(String, ContextValue)>,
}

/// The Cedar type of a context attribute taken from the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextKind {
    /// `String`.
    String,
    /// `Long`.
    Long,
    /// `Bool`.
    Bool,
}

impl ContextKind {
    /// `text` as a value of this kind; `None` when it is not one (`Long`: a decimal integer;
    /// `Bool`: `true` or `false`).
    pub fn parse(self, text: &str) -> Option<ContextValue> {
        match self {
            Self::String => Some(ContextValue::String(text.to_owned())),
            Self::Long => text.parse().ok().map(ContextValue::Long),
            Self::Bool => match text {
                "true" => Some(ContextValue::Bool(true)),
                "false" => Some(ContextValue::Bool(false)),
                _ => None,
            },
        }
    }
}

/// A value of a context attribute taken from the request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ContextValue {
    /// A Cedar `String`.
    String(String),
    /// A Cedar `Long`.
    Long(i64),
    /// A Cedar `Bool`.
    Bool(bool),
}

/// A request resolved by the route map.
#[derive(Debug, Clone, Copy)]
pub struct DecisionRequest<'a> {
    /// The authenticated principal (`User::"alice"`, `Service::"billing"`).
    pub principal: &'a EntityRef,
    /// Concrete action id (`document.read`).
    pub action: &'a str,
    /// The resource.
    pub resource: &'a EntityRef,
    /// Parents the route claims for the resource (e.g. the `Space` in the path). For a
    /// resource the store knows, they must be among its stored ancestors.
    pub route_parents: &'a [EntityRef],
    /// Request facts.
    pub facts: &'a RequestFacts,
    /// The principal as its token's claims describe it, for when the store does not hold
    /// it (`None`: unknown principals are refused).
    pub claimed: Option<ClaimedPrincipal<'a>>,
}

/// A principal described by its verified token's claims: its record (tenant, groups,
/// attributes) and its claim-mapped roles as assignments, prepared against the snapshot
/// with [`Snapshot::principal_view`].
#[derive(Debug, Clone, Copy)]
pub struct ClaimedPrincipal<'a> {
    /// The view; its principal's key is the request's principal.
    pub view: &'a PrincipalView,
    /// A digest of everything the view says (record and assignments): it stands for the
    /// view in the decision cache's key.
    pub digest: &'a [u8; 32],
}

/// Why a decision came out as it did. Short, stable codes: safe to show to clients and to
/// use as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecisionReason {
    /// A permit matched and no forbid did.
    Allowed,
    /// A forbid matched.
    Forbidden,
    /// No permit matched.
    NoPermit,
    /// A policy could not be evaluated (fail closed).
    EvaluationError,
    /// The principal is not in the store.
    UnknownPrincipal,
    /// The action is not in the schema.
    UnknownAction,
    /// The route claims a parent that the stored resource does not have.
    ParentMismatch,
    /// The request could not be turned into a Cedar request.
    InvalidRequest,
    /// A principal or entity the decision reads was not fetched (cached state mode):
    /// never decided on a guess.
    StateUnavailable,
}

impl DecisionReason {
    /// The stable code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Forbidden => "forbidden_by_policy",
            Self::NoPermit => "no_permit",
            Self::EvaluationError => "evaluation_error",
            Self::UnknownPrincipal => "unknown_principal",
            Self::UnknownAction => "unknown_action",
            Self::ParentMismatch => "resource_parent_mismatch",
            Self::InvalidRequest => "invalid_request",
            Self::StateUnavailable => "state_unavailable",
        }
    }
}

/// The outcome of one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allow or deny.
    pub allowed: bool,
    /// Why.
    pub reason: DecisionReason,
    /// Ids of the policies that decided (the satisfied permits for an allow; the satisfied
    /// forbids, or the erroring policies, for a deny).
    pub determining_policies: Vec<String>,
    /// Evaluation errors, `policy id: message`.
    pub errors: Vec<String>,
    /// Roles in force for this principal on this resource now.
    pub effective_roles: Vec<String>,
    /// Those of `effective_roles` held only through the token's claims (a claimed
    /// principal's own roles, not also given by a stored group).
    pub claimed_roles: Vec<String>,
    /// Time spent deciding.
    pub elapsed: Duration,
    /// Answered from the decision cache.
    pub cached: bool,
}

impl Decision {
    fn deny(reason: DecisionReason, detail: Option<String>, started: Instant) -> Self {
        Self {
            allowed: false,
            reason,
            determining_policies: Vec::new(),
            errors: detail.into_iter().collect(),
            effective_roles: Vec::new(),
            claimed_roles: Vec::new(),
            elapsed: started.elapsed(),
            cached: false,
        }
    }
}

/// A user, service or entity the snapshot does not hold (cached state mode), fetched for a
/// decision: its view at `revision`, or `None` when the store does not hold it.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Which key.
    pub key: EntityRef,
    /// The store revision the view is current at; with `key`, it names the version, so
    /// decisions cached over one version are never answered for another.
    pub revision: Revision,
    /// The view; `None`: not in the store.
    pub view: Option<FetchedView>,
}

/// The view of a fetched key.
#[derive(Debug, Clone)]
pub enum FetchedView {
    /// A user or service with its assignments.
    Principal(Arc<PrincipalView>),
    /// A resource entity.
    Entity(Arc<EntityView>),
}

/// Where a decision finds principals and entities: all in the snapshot (full state), or
/// those it holds in the snapshot and the others among those fetched for it (cached state);
/// the request's principal, when the store has none, in its claims.
#[derive(Debug, Clone, Copy)]
struct Held<'s> {
    snapshot: &'s Snapshot,
    fetched: Option<&'s [Arc<Fetched>]>,
    claimed: Option<ClaimedPrincipal<'s>>,
}

/// A principal or entity looked up for a decision.
enum Lookup<T> {
    Found(T),
    /// Not in the store.
    Absent,
    /// Not fetched (cached state): the decision cannot be made yet.
    Missing,
}

impl<T> Lookup<T> {
    fn of(view: Option<T>) -> Self {
        view.map_or(Self::Absent, Self::Found)
    }
}

impl<'s> Held<'s> {
    fn new(
        snapshot: &'s Snapshot,
        fetched: Option<&'s [Arc<Fetched>]>,
        request: &DecisionRequest<'s>,
    ) -> Self {
        Self {
            snapshot,
            fetched,
            claimed: request.claimed,
        }
    }

    /// The fetched key `key`, when the snapshot does not hold it (else `None`).
    fn fetched(&self, key: &EntityRef, held: bool) -> Option<Option<&'s Fetched>> {
        let fetched = self.fetched.filter(|_| !held)?;
        Some(fetched.iter().find(|f| f.key == *key).map(AsRef::as_ref))
    }

    fn principal(&self, key: &EntityRef) -> Lookup<&'s PrincipalView> {
        match self.stored_principal(key) {
            Lookup::Absent => match self.claimed {
                Some(claimed)
                    if claimed.view.principal.id == key.id()
                        && claimed.view.principal.kind.cedar_type() == key.type_name() =>
                {
                    Lookup::Found(claimed.view)
                }
                _ => Lookup::Absent,
            },
            stored => stored,
        }
    }

    /// Whether `view` is the claimed principal's (not a stored one).
    fn is_claimed(&self, view: &PrincipalView) -> bool {
        self.claimed
            .is_some_and(|claimed| std::ptr::eq(claimed.view, view))
    }

    fn stored_principal(&self, key: &EntityRef) -> Lookup<&'s PrincipalView> {
        match self.fetched(key, is_shared(key)) {
            None => Lookup::of(self.snapshot.principal(key).map(AsRef::as_ref)),
            Some(None) => Lookup::Missing,
            Some(Some(fetched)) => match &fetched.view {
                None => Lookup::Absent,
                Some(FetchedView::Principal(view)) => Lookup::Found(view),
                // Never fetched as such (the cache checks the kind); not decided on.
                Some(FetchedView::Entity(_)) => Lookup::Missing,
            },
        }
    }

    fn entity(&self, key: &EntityRef) -> Lookup<&'s EntityView> {
        match self.fetched(key, self.snapshot.holds_entity(key)) {
            None => Lookup::of(self.snapshot.entity(key).map(AsRef::as_ref)),
            Some(None) => Lookup::Missing,
            Some(Some(fetched)) => match &fetched.view {
                None => Lookup::Absent,
                Some(FetchedView::Entity(view)) => Lookup::Found(view),
                Some(FetchedView::Principal(_)) => Lookup::Missing,
            },
        }
    }
}

/// Decides one request against a snapshot, answering from the snapshot's decision cache when
/// it has seen exactly these inputs. Never touches I/O and never locks.
pub fn decide(snapshot: &Snapshot, request: &DecisionRequest<'_>) -> Decision {
    decide_with(Held::new(snapshot, None, request), request, true)
}

/// [`decide`] without the decision cache: always evaluates.
pub fn decide_uncached(snapshot: &Snapshot, request: &DecisionRequest<'_>) -> Decision {
    decide_with(Held::new(snapshot, None, request), request, false)
}

/// [`decide`] over a snapshot of the shared state and the users, services and entities
/// fetched for this request (cached state mode). One that was not fetched denies with
/// [`DecisionReason::StateUnavailable`]: fetch until [`first_missing`] names none first.
pub fn decide_fetched(
    snapshot: &Snapshot,
    fetched: &[Arc<Fetched>],
    request: &DecisionRequest<'_>,
) -> Decision {
    decide_with(Held::new(snapshot, Some(fetched), request), request, true)
}

/// The next key [`decide_fetched`] would read that is not among `fetched`: the principal,
/// then its managers, then the resource — a principal and its managers, or an entity and
/// its ancestors. `None` when the decision has all it reads.
pub fn first_missing(
    snapshot: &Snapshot,
    fetched: &[Arc<Fetched>],
    request: &DecisionRequest<'_>,
) -> Option<EntityRef> {
    let held = Held::new(snapshot, Some(fetched), request);
    let resource_is_principal =
        PrincipalKind::from_cedar_type(request.resource.type_name()).is_some();
    let mut principals = vec![request.principal];
    if resource_is_principal {
        principals.push(request.resource);
    }
    for key in principals {
        match held.principal(key) {
            Lookup::Missing => return Some(key.clone()),
            Lookup::Absent => {}
            Lookup::Found(view) => {
                if let Err(missing) =
                    manager_chain(held, view.principal.attributes.manager.as_deref())
                {
                    return Some(missing);
                }
            }
        }
    }
    match ResourceChain::resolve(held, request) {
        Err(Unresolved::Missing(key)) => Some(key),
        Ok(_) | Err(Unresolved::ParentMismatch) => None,
    }
}

fn decide_with(held: Held<'_>, request: &DecisionRequest<'_>, use_cache: bool) -> Decision {
    let started = Instant::now();
    let snapshot = held.snapshot;
    let resolved = match Resolved::of(held, request) {
        Ok(resolved) => resolved,
        Err((reason, detail)) => return Decision::deny(reason, detail, started),
    };
    // What the action's policies read of the context and the action hierarchy.
    let reads = resolved.action.reads();

    let key = cache::KeyRef {
        principal: request.principal,
        action: request.action,
        resource: request.resource,
        route_parents: request.route_parents,
        roles: &resolved.roles,
        facts: cache::ContextKey::of(request.facts, reads.context),
        versions: cache::Versions(held.fetched.unwrap_or_default()),
        claimed: held
            .claimed
            .filter(|_| resolved.claimed)
            .map(|claimed| claimed.digest),
    };
    if use_cache && let Some(mut hit) = snapshot.decisions().get(&key) {
        hit.elapsed = started.elapsed();
        hit.cached = true;
        return hit;
    }

    let mut decision = match resolved.cedar_input(reads) {
        Ok(input) => {
            let mut decision = input.evaluate(resolved.action);
            decision.effective_roles = resolved.roles.iter().map(|r| (*r).to_owned()).collect();
            decision.claimed_roles = resolved
                .claimed_roles
                .iter()
                .map(|r| (*r).to_owned())
                .collect();
            decision
        }
        Err(detail) => {
            let reason = if detail.starts_with(STATE_UNAVAILABLE) {
                DecisionReason::StateUnavailable
            } else {
                DecisionReason::InvalidRequest
            };
            Decision::deny(reason, Some(detail), started)
        }
    };
    if use_cache && decision.reason != DecisionReason::StateUnavailable {
        snapshot.decisions().insert(&key, &decision);
    }
    decision.elapsed = started.elapsed();
    decision
}

/// What a request resolves to in the snapshot: its action's policies, the principal with
/// its groups, the resource chain and the roles in force; its entity slice is built from
/// these.
struct Resolved<'s> {
    snapshot: &'s Snapshot,
    held: Held<'s>,
    request: &'s DecisionRequest<'s>,
    action: &'s ActionPolicies,
    principal: &'s PrincipalView,
    groups: Vec<&'s PrincipalView>,
    resource: ResourceChain<'s>,
    roles: Vec<&'s str>,
    /// The principal is the claimed one.
    claimed: bool,
    /// Roles in force only through the claims.
    claimed_roles: Vec<&'s str>,
    device_trusted: bool,
}

impl<'s> Resolved<'s> {
    /// `Err` is a deny with its reason and detail: an unknown action or principal, a route
    /// parent the resource does not have.
    fn of(
        held: Held<'s>,
        request: &'s DecisionRequest<'s>,
    ) -> Result<Self, (DecisionReason, Option<String>)> {
        let snapshot = held.snapshot;
        let Some(action) = snapshot.policies().index().action(request.action) else {
            return Err((
                DecisionReason::UnknownAction,
                Some(format!("action `{}` is not in the schema", request.action)),
            ));
        };
        let principal = match held.principal(request.principal) {
            Lookup::Found(view) => view,
            Lookup::Absent => return Err((DecisionReason::UnknownPrincipal, None)),
            Lookup::Missing => return Err((DecisionReason::StateUnavailable, None)),
        };
        if principal.principal.kind == PrincipalKind::Group {
            // Groups hold members; they never act themselves.
            return Err((DecisionReason::UnknownPrincipal, None));
        }
        let resource = ResourceChain::resolve(held, request).map_err(|e| match e {
            Unresolved::ParentMismatch => (DecisionReason::ParentMismatch, None),
            Unresolved::Missing(key) => (
                DecisionReason::StateUnavailable,
                Some(format!("{STATE_UNAVAILABLE}: `{key}` not fetched")),
            ),
        })?;
        let device_trusted = request
            .facts
            .device_id
            .as_ref()
            .is_some_and(|d| principal.principal.trusted_devices.iter().any(|t| t == d));
        let groups = group_closure(snapshot, &principal.principal.groups);
        let roles = effective_roles(
            std::iter::once(principal).chain(groups.iter().copied()),
            &resource,
            request.facts,
            device_trusted,
        );
        let claimed = held.is_claimed(principal);
        let claimed_roles = if claimed {
            let by_groups = effective_roles(
                groups.iter().copied(),
                &resource,
                request.facts,
                device_trusted,
            );
            roles
                .iter()
                .copied()
                .filter(|r| !by_groups.contains(r))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Self {
            snapshot,
            held,
            request,
            action,
            principal,
            groups,
            resource,
            roles,
            claimed,
            claimed_roles,
            device_trusted,
        })
    }
}

/// The resource and its ancestors, with the views the store has for them.
struct ResourceChain<'s> {
    resource: &'s EntityRef,
    view: Option<&'s EntityView>,
    /// Ancestors, nearest first, each with its view if stored.
    ancestors: Vec<(&'s EntityRef, Option<&'s EntityView>)>,
}

/// Why a resource chain could not be resolved.
enum Unresolved {
    /// The route claims a parent the stored resource does not have.
    ParentMismatch,
    /// An entity of the chain was not fetched (cached state).
    Missing(EntityRef),
}

impl<'s> ResourceChain<'s> {
    fn resolve(held: Held<'s>, request: &DecisionRequest<'s>) -> Result<Self, Unresolved> {
        let view = match held.entity(request.resource) {
            Lookup::Found(view) => Some(view),
            Lookup::Absent => None,
            Lookup::Missing => return Err(Unresolved::Missing(request.resource.clone())),
        };
        let parents: &[EntityRef] = match view {
            Some(v) => &v.record.parents,
            None => request.route_parents,
        };
        let ancestors =
            ancestors_of(held, request.resource, parents).map_err(Unresolved::Missing)?;
        if view.is_some()
            && request
                .route_parents
                .iter()
                .any(|p| !ancestors.iter().any(|(a, _)| *a == p))
        {
            return Err(Unresolved::ParentMismatch);
        }
        Ok(Self {
            resource: request.resource,
            view,
            ancestors,
        })
    }

    /// The tenant of the resource: its own attribute, else the id of the resource when it is
    /// a `Tenant`, else the nearest ancestor's attribute, else the id of the nearest `Tenant`
    /// in the chain.
    fn effective_tenant(&self) -> Option<&'s str> {
        let own = self
            .view
            .and_then(|v| v.record.attributes.tenant.as_deref());
        let from_resource_type =
            (self.resource.type_name() == "Tenant").then(|| self.resource.id());
        own.or(from_resource_type)
            .or_else(|| {
                self.ancestors
                    .iter()
                    .find_map(|(_, v)| v.and_then(|v| v.record.attributes.tenant.as_deref()))
            })
            .or_else(|| {
                self.ancestors
                    .iter()
                    .find(|(a, _)| a.type_name() == "Tenant")
                    .map(|(a, _)| a.id())
            })
    }

    /// Archived if the resource or any ancestor is.
    fn effective_archived(&self) -> bool {
        std::iter::once(self.view)
            .chain(self.ancestors.iter().map(|(_, v)| *v))
            .any(|v| v.is_some_and(|v| v.record.attributes.archived))
    }
}

/// Every ancestor reachable from `parents` through stored entities, nearest first, without
/// `start` itself. Bounded by [`MAX_DEPTH`] levels, so a cycle cannot loop. `Err` names
/// the first one that was not fetched (cached state).
fn ancestors_of<'s>(
    held: Held<'s>,
    start: &'s EntityRef,
    parents: &'s [EntityRef],
) -> Result<Vec<(&'s EntityRef, Option<&'s EntityView>)>, EntityRef> {
    let mut out: Vec<(&EntityRef, Option<&EntityView>)> = Vec::with_capacity(4);
    let mut frontier: Vec<&EntityRef> = parents.iter().collect();
    for _ in 0..MAX_DEPTH {
        if frontier.is_empty() {
            break;
        }
        let mut next = Vec::new();
        for uid in frontier {
            if uid == start || out.iter().any(|(a, _)| *a == uid) {
                continue;
            }
            let view = match held.entity(uid) {
                Lookup::Found(view) => Some(view),
                Lookup::Absent => None,
                Lookup::Missing => return Err(uid.clone()),
            };
            if let Some(v) = view {
                next.extend(v.record.parents.iter());
            }
            out.push((uid, view));
        }
        frontier = next;
    }
    Ok(out)
}

/// The groups reachable from `groups`, transitively, each once.
fn group_closure<'s>(snapshot: &'s Snapshot, groups: &'s [String]) -> Vec<&'s PrincipalView> {
    let mut out: Vec<&PrincipalView> = Vec::new();
    let mut frontier: Vec<&String> = groups.iter().collect();
    for _ in 0..MAX_DEPTH {
        if frontier.is_empty() {
            break;
        }
        let mut next = Vec::new();
        for id in frontier {
            if out.iter().any(|g| g.principal.id == *id) {
                continue;
            }
            let key = portcullis_model::principal_ref(PrincipalKind::Group, id);
            if let Some(group) = snapshot.principal(&key) {
                next.extend(group.principal.groups.iter());
                out.push(group);
            }
        }
        frontier = next;
    }
    out
}

/// Roles of the `holders` (the principal and its groups) whose assignment scope covers the
/// resource and whose conditions hold now. Sorted, without duplicates.
fn effective_roles<'s>(
    holders: impl Iterator<Item = &'s PrincipalView>,
    resource: &ResourceChain<'_>,
    facts: &RequestFacts,
    device_trusted: bool,
) -> Vec<&'s str> {
    let mut roles: Vec<&str> = Vec::new();
    for holder in holders {
        let scoped = std::iter::once(resource.resource)
            .chain(resource.ancestors.iter().map(|(a, _)| *a))
            .flat_map(|scope| holder.assignments_on(scope));
        for a in holder.global_assignments().iter().chain(scoped) {
            // Scoped assignments were looked up by the resource and its ancestors, so every
            // one found here covers the resource.
            if in_force(a, facts, device_trusted) && !roles.contains(&a.role.as_str()) {
                roles.push(&a.role);
            }
        }
    }
    roles.sort_unstable();
    roles
}

fn in_force(a: &Assignment, facts: &RequestFacts, device_trusted: bool) -> bool {
    let c = &a.conditions;
    c.valid_from.is_none_or(|from| facts.now >= from)
        && c.valid_until.is_none_or(|until| facts.now < until)
        && (!c.require_mfa || facts.mfa)
        && (c.allowed_bands.is_empty() || c.allowed_bands.contains(&facts.band))
        && (!c.require_trusted_device || device_trusted)
}

/// One evaluation's input to Cedar: the request and its entity slice, and the scopes whose
/// policy lists apply (the principal's ancestors and the principal).
struct CedarInput {
    request: Request,
    entities: Entities,
    principal_scopes: Vec<EntityUID>,
}

impl CedarInput {
    /// Evaluates the policies that can apply: shared ones, and those naming the principal or
    /// any of its ancestors (groups, roles), all under one evaluator.
    fn evaluate(self, action: &ActionPolicies) -> Decision {
        let evaluator = Evaluator::new(self.request, &self.entities, Extensions::all_available());
        let mut outcome = Combined::default();
        outcome.evaluate(&evaluator, action.shared());
        for scope in &self.principal_scopes {
            if let Some(policies) = action.for_principal_scope(scope) {
                outcome.evaluate(&evaluator, policies);
            }
        }
        outcome.finish()
    }
}

impl Resolved<'_> {
    /// Builds the entity slice and the request, with only what `reads` names of the action
    /// hierarchy and the context (the decision core passes what the action's policies can
    /// read). `Err` is a request that could not be turned into Cedar (a deny).
    fn cedar_input(&self, reads: Reads) -> Result<CedarInput, String> {
        let principal_uid = self.principal_uid(self.principal)?;
        // The principal's ancestors: its groups and the roles in force.
        let mut principal_scopes: Vec<EntityUID> =
            Vec::with_capacity(1 + self.groups.len() + self.roles.len());
        for g in &self.groups {
            principal_scopes.push(self.principal_uid(g)?);
        }
        for role in &self.roles {
            principal_scopes.push(self.role_uid(role)?);
        }
        let principal_ancestors: HashSet<EntityUID> = principal_scopes.iter().cloned().collect();
        principal_scopes.push(principal_uid.clone());
        let resource_uid = self.entity_uid(self.resource.resource, self.resource.view)?;

        // INVARIANT: every entity of the slice carries its transitively closed ancestors,
        // because the slice is built with `TCComputation::AssumeAlreadyComputed`.
        let mut slice: Vec<Entity> =
            Vec::with_capacity(2 + self.groups.len() + self.resource.ancestors.len());
        slice.push(slice::entity(
            principal_uid.clone(),
            self.principal_attrs(self.principal)?,
            principal_ancestors,
        ));
        for g in &self.groups {
            let closure = group_closure(self.snapshot, &g.principal.groups)
                .into_iter()
                .map(|parent| self.principal_uid(parent))
                .collect::<Result<HashSet<_>, _>>()?;
            slice.push(slice::entity(self.principal_uid(g)?, [], closure));
        }
        // The principal may itself be the resource (`user.read` of oneself): one entity.
        if resource_uid != principal_uid {
            slice.push(self.resource_entity(resource_uid.clone())?);
        }
        for (uid, view) in &self.resource.ancestors {
            slice.push(self.ancestor_entity(uid, *view)?);
        }
        if reads.action {
            slice.extend(self.action.hierarchy().iter().cloned());
        }
        let entities = Entities::from_entities(
            slice,
            None::<&NoEntitiesSchema>,
            TCComputation::AssumeAlreadyComputed,
            Extensions::all_available(),
        )
        .map_err(|e| e.to_string())?;

        let context = slice::context(self.request.facts, self.device_trusted, reads.context)?;
        let request = Request::new_unchecked(
            EntityUIDEntry::known(principal_uid, None),
            EntityUIDEntry::known(self.action.uid().clone(), None),
            EntityUIDEntry::known(resource_uid, None),
            Some(context),
        );
        Ok(CedarInput {
            request,
            entities,
            principal_scopes,
        })
    }

    fn uid(&self, entity: &EntityRef) -> Result<EntityUID, String> {
        self.snapshot
            .policies()
            .types()
            .uid(entity)
            .ok_or_else(|| format!("`{entity}` is not a valid Cedar entity"))
    }

    /// The uid of a resource or ancestor: prepared in its view when stored.
    fn entity_uid(
        &self,
        entity: &EntityRef,
        view: Option<&EntityView>,
    ) -> Result<EntityUID, String> {
        match view.and_then(|v| v.cedar.uid.as_ref()) {
            Some(uid) => Ok(uid.clone()),
            None => self.uid(entity),
        }
    }

    fn principal_uid(&self, view: &PrincipalView) -> Result<EntityUID, String> {
        match &view.cedar.uid {
            Some(uid) => Ok(uid.clone()),
            None => self.uid(&view.principal.entity_ref()),
        }
    }

    fn role_uid(&self, role: &str) -> Result<EntityUID, String> {
        match self.snapshot.policies().role_uid(role) {
            Some(uid) => Ok(uid.clone()),
            // A role the compiled set does not know grants nothing, but keep it visible.
            None => self.uid(&EntityRef::new("Role", role).map_err(|e| e.to_string())?),
        }
    }

    /// A user's or service's attributes, with the manager chain for users. `Err` when a
    /// manager was not fetched (cached state).
    fn principal_attrs(&self, view: &PrincipalView) -> Result<slice::Attrs, String> {
        let mut attrs = view.cedar.attrs.clone();
        if view.principal.kind == PrincipalKind::User {
            let types = self.snapshot.policies().types();
            let managers = manager_chain(self.held, view.principal.attributes.manager.as_deref())
                .map_err(|missing| format!("{STATE_UNAVAILABLE}: `{missing}` not fetched"))?
                .into_iter()
                .filter_map(|m| {
                    types.uid(&portcullis_model::principal_ref(PrincipalKind::User, m))
                });
            attrs.push(slice::managers_attr(managers));
        }
        Ok(attrs)
    }

    /// The resource entity. A resource that is itself a principal (a `User` in `user.read`)
    /// gets the principal's attributes; any other gets its stored (or no) attributes with the
    /// effective tenant and archived flags.
    fn resource_entity(&self, uid: EntityUID) -> Result<Entity, String> {
        let chain = &self.resource;
        let ancestors = chain
            .ancestors
            .iter()
            .map(|(a, v)| self.entity_uid(a, *v))
            .collect::<Result<HashSet<_>, _>>()?;
        if PrincipalKind::from_cedar_type(chain.resource.type_name()).is_some() {
            let attrs = match self.held.principal(chain.resource) {
                Lookup::Found(view) => self.principal_attrs(view)?,
                Lookup::Absent => slice::unknown_principal_attrs(),
                Lookup::Missing => {
                    return Err(format!(
                        "{STATE_UNAVAILABLE}: `{}` not fetched",
                        chain.resource
                    ));
                }
            };
            return Ok(slice::entity(uid, attrs, ancestors));
        }
        let mut attrs = chain
            .view
            .map(|v| v.cedar.attrs.clone())
            .unwrap_or_default();
        let own_tenant = chain
            .view
            .is_some_and(|v| v.record.attributes.tenant.is_some());
        if !own_tenant && let Some(tenant) = chain.effective_tenant() {
            attrs.push(slice::string_attr("tenant", tenant));
        }
        attrs.push(slice::bool_attr("archived", chain.effective_archived()));
        Ok(slice::entity(uid, attrs, ancestors))
    }

    /// An ancestor of the resource, with its own attributes and ancestors.
    fn ancestor_entity(
        &self,
        uid: &EntityRef,
        view: Option<&EntityView>,
    ) -> Result<Entity, String> {
        let ancestors = match view {
            Some(v) => ancestors_of(self.held, uid, &v.record.parents)
                .map_err(|missing| format!("{STATE_UNAVAILABLE}: `{missing}` not fetched"))?
                .into_iter()
                .map(|(a, v)| self.entity_uid(a, v))
                .collect::<Result<HashSet<_>, _>>()?,
            None => HashSet::new(),
        };
        let mut attrs = view.map(|v| v.cedar.attrs.clone()).unwrap_or_default();
        attrs.push(slice::bool_attr(
            "archived",
            view.is_some_and(|v| v.record.attributes.archived),
        ));
        Ok(slice::entity(self.entity_uid(uid, view)?, attrs, ancestors))
    }
}

/// The start of a slice-building error that is a missing fetch, not a bad request.
const STATE_UNAVAILABLE: &str = "state unavailable";

/// Every manager above `first` in the org tree (seed 002 in_org_tree). `Err` names the
/// first manager that was not fetched (cached state).
fn manager_chain<'s>(held: Held<'s>, first: Option<&'s str>) -> Result<Vec<&'s str>, EntityRef> {
    let mut chain: Vec<&str> = Vec::new();
    let mut current = first;
    while let Some(id) = current {
        if chain.contains(&id) || chain.len() >= MAX_DEPTH {
            break;
        }
        chain.push(id);
        let key = portcullis_model::principal_ref(PrincipalKind::User, id);
        current = match held.principal(&key) {
            Lookup::Found(m) => m.principal.attributes.manager.as_deref(),
            Lookup::Absent => None,
            Lookup::Missing => return Err(key),
        };
    }
    Ok(chain)
}

/// Cedar's decision rule over several disjoint lists of policies: any satisfied forbid
/// denies; otherwise any satisfied permit allows; otherwise deny. Any error denies (where
/// Cedar's authorizer would skip the erroring policy).
#[derive(Default)]
struct Combined<'p> {
    permits: Vec<&'p str>,
    forbids: Vec<&'p str>,
    errors: Vec<String>,
    erroring: Vec<&'p str>,
}

impl<'p> Combined<'p> {
    /// Evaluates every policy of `policies`, as Cedar's authorizer does: a policy is
    /// satisfied when its condition evaluates to `true`.
    fn evaluate(&mut self, evaluator: &Evaluator<'_>, policies: &'p [PreparedPolicy]) {
        for policy in policies {
            let satisfied = match evaluator.interpret(policy.condition(), policy.slots()) {
                Ok(value) => match value.value_kind() {
                    ValueKind::Lit(Literal::Bool(b)) => Ok(*b),
                    // A body that is not a boolean (validation refuses one) is an error,
                    // as in the conjunction Cedar's authorizer evaluates.
                    _ => Err(format!(
                        "the condition evaluated to `{value}`, not a boolean"
                    )),
                },
                Err(error) => Err(error.to_string()),
            };
            match (satisfied, policy.effect()) {
                (Ok(true), Effect::Permit) => self.permits.push(policy.id()),
                (Ok(true), Effect::Forbid) => self.forbids.push(policy.id()),
                (Ok(false), _) => {}
                (Err(error), _) => {
                    self.errors.push(format!("{}: {error}", policy.id()));
                    self.erroring.push(policy.id());
                }
            }
        }
    }

    fn finish(mut self) -> Decision {
        let (allowed, reason, mut determining) = if !self.errors.is_empty() {
            (false, DecisionReason::EvaluationError, self.erroring)
        } else if !self.forbids.is_empty() {
            (false, DecisionReason::Forbidden, self.forbids)
        } else if !self.permits.is_empty() {
            (
                true,
                DecisionReason::Allowed,
                std::mem::take(&mut self.permits),
            )
        } else {
            (false, DecisionReason::NoPermit, Vec::new())
        };
        determining.sort_unstable();
        determining.dedup();
        Decision {
            allowed,
            reason,
            determining_policies: determining.into_iter().map(str::to_owned).collect(),
            errors: self.errors,
            effective_roles: Vec::new(),
            claimed_roles: Vec::new(),
            elapsed: Duration::ZERO,
            cached: false,
        }
    }
}
