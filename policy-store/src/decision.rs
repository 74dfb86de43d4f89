//! The decision core: snapshot + a route-resolved request → allow or deny, with the
//! determining policies, the errors and the effective roles.
//!
//! Only the small entity slice of the request is built (principal with its groups and the
//! roles in force here; resource with its ancestors; the action and its groups), and only
//! the policies the index says can apply are evaluated. Any evaluation error is a deny:
//! Cedar skips a policy that errors, so an erroring `forbid` would otherwise let the
//! request through.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityUid, PolicySet, Request, Response,
    RestrictedExpression,
};

use crate::model::{
    Assignment, EntityRecord, EntityRef, PrincipalKind, PrincipalStatus, UnixMillis,
};
use crate::snapshot::{PrincipalView, Snapshot};

/// How deep entity and group hierarchies are followed; deeper chains are cut (and a cycle
/// cannot loop).
const MAX_DEPTH: usize = 32;

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
    /// Client IP address, as text (`10.1.2.3`, `::1`).
    pub ip: Option<String>,
    /// Security band of the route: `GREEN`, `AMBER` or `RED`.
    pub band: String,
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
    /// Time spent deciding.
    pub elapsed: Duration,
}

impl Decision {
    fn deny(reason: DecisionReason, detail: Option<String>, started: Instant) -> Self {
        Self {
            allowed: false,
            reason,
            determining_policies: Vec::new(),
            errors: detail.into_iter().collect(),
            effective_roles: Vec::new(),
            elapsed: started.elapsed(),
        }
    }
}

/// Decides one request against a snapshot. Never touches I/O and never locks.
pub fn decide(snapshot: &Snapshot, request: &DecisionRequest<'_>) -> Decision {
    let started = Instant::now();
    let Some(action) = snapshot.policies().index().action(request.action) else {
        return Decision::deny(
            DecisionReason::UnknownAction,
            Some(format!("action `{}` is not in the schema", request.action)),
            started,
        );
    };
    let Some(principal) = snapshot.principal(request.principal) else {
        return Decision::deny(DecisionReason::UnknownPrincipal, None, started);
    };
    if principal.principal.kind == PrincipalKind::Group {
        // Groups hold members; they never act themselves.
        return Decision::deny(DecisionReason::UnknownPrincipal, None, started);
    }

    let resource = match ResourceChain::resolve(snapshot, request) {
        Ok(chain) => chain,
        Err(reason) => return Decision::deny(reason, None, started),
    };
    let device_trusted = request
        .facts
        .device_id
        .as_ref()
        .is_some_and(|d| principal.principal.trusted_devices.iter().any(|t| t == d));
    let groups = group_closure(snapshot, principal);
    let roles = effective_roles(principal, &groups, &resource, request.facts, device_trusted);

    match evaluate(
        snapshot,
        request,
        action,
        principal,
        &groups,
        &roles,
        &resource,
        device_trusted,
    ) {
        Ok(mut decision) => {
            decision.effective_roles = roles;
            decision.elapsed = started.elapsed();
            decision
        }
        Err(detail) => Decision::deny(DecisionReason::InvalidRequest, Some(detail), started),
    }
}

/// The resource and its ancestors, with the records the store has for them.
struct ResourceChain<'s> {
    resource: &'s EntityRef,
    record: Option<&'s EntityRecord>,
    /// Ancestors, nearest first, each with its record if stored.
    ancestors: Vec<(&'s EntityRef, Option<&'s EntityRecord>)>,
    /// Direct parents used for the resource entity.
    parents: Vec<&'s EntityRef>,
}

impl<'s> ResourceChain<'s> {
    fn resolve(
        snapshot: &'s Snapshot,
        request: &DecisionRequest<'s>,
    ) -> Result<Self, DecisionReason> {
        let record = snapshot.entity(request.resource).map(AsRef::as_ref);
        let parents: Vec<&EntityRef> = match record {
            Some(r) => r.parents.iter().collect(),
            None => request.route_parents.iter().collect(),
        };
        let mut ancestors: Vec<(&EntityRef, Option<&EntityRecord>)> = Vec::new();
        let mut seen: HashSet<&EntityRef> = HashSet::new();
        seen.insert(request.resource);
        let mut frontier: Vec<&EntityRef> = parents.clone();
        for _ in 0..MAX_DEPTH {
            if frontier.is_empty() {
                break;
            }
            let mut next = Vec::new();
            for uid in frontier {
                if !seen.insert(uid) {
                    continue;
                }
                let rec = snapshot.entity(uid).map(AsRef::as_ref);
                if let Some(r) = rec {
                    next.extend(r.parents.iter());
                }
                ancestors.push((uid, rec));
            }
            frontier = next;
        }
        if record.is_some()
            && request
                .route_parents
                .iter()
                .any(|p| !ancestors.iter().any(|(a, _)| *a == p))
        {
            return Err(DecisionReason::ParentMismatch);
        }
        Ok(Self {
            resource: request.resource,
            record,
            ancestors,
            parents,
        })
    }

    /// The tenant of the resource: its own attribute, else the nearest ancestor's, else the
    /// id of the nearest `Tenant` in the chain.
    fn effective_tenant(&self) -> Option<&'s str> {
        let own = self.record.and_then(|r| r.attributes.tenant.as_deref());
        let from_resource_type =
            (self.resource.type_name() == "Tenant").then(|| self.resource.id());
        own.or(from_resource_type)
            .or_else(|| {
                self.ancestors
                    .iter()
                    .find_map(|(_, r)| r.and_then(|r| r.attributes.tenant.as_deref()))
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
        self.record.is_some_and(|r| r.attributes.archived)
            || self
                .ancestors
                .iter()
                .any(|(_, r)| r.is_some_and(|r| r.attributes.archived))
    }
}

/// The principal's groups, transitively.
fn group_closure<'s>(
    snapshot: &'s Snapshot,
    principal: &'s PrincipalView,
) -> Vec<&'s PrincipalView> {
    let mut out: Vec<&PrincipalView> = Vec::new();
    let mut frontier: Vec<&String> = principal.principal.groups.iter().collect();
    for _ in 0..MAX_DEPTH {
        if frontier.is_empty() {
            break;
        }
        let mut next = Vec::new();
        for id in frontier {
            let key = crate::model::principal_ref(PrincipalKind::Group, id);
            if out.iter().any(|g| g.principal.id == *id) {
                continue;
            }
            if let Some(group) = snapshot.principal(&key) {
                next.extend(group.principal.groups.iter());
                out.push(group);
            }
        }
        frontier = next;
    }
    out
}

/// Roles of the principal (directly or through a group) whose assignment scope covers the
/// resource and whose conditions hold now. Sorted, without duplicates.
fn effective_roles(
    principal: &PrincipalView,
    groups: &[&PrincipalView],
    resource: &ResourceChain<'_>,
    facts: &RequestFacts,
    device_trusted: bool,
) -> Vec<String> {
    let mut roles: Vec<String> = Vec::new();
    for holder in std::iter::once(principal).chain(groups.iter().copied()) {
        let scoped = std::iter::once(resource.resource)
            .chain(resource.ancestors.iter().map(|(a, _)| *a))
            .flat_map(|scope| holder.assignments_on(scope));
        for a in holder.global_assignments().iter().chain(scoped) {
            // Scoped assignments were looked up by the resource and its ancestors, so every
            // one found here covers the resource.
            if in_force(a, facts, device_trusted) && !roles.contains(&a.role) {
                roles.push(a.role.clone());
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

#[expect(
    clippy::too_many_arguments,
    reason = "one private step of `decide`; the arguments are its locals"
)]
fn evaluate(
    snapshot: &Snapshot,
    request: &DecisionRequest<'_>,
    action: &crate::policy::ActionPolicies,
    principal: &PrincipalView,
    groups: &[&PrincipalView],
    roles: &[String],
    resource: &ResourceChain<'_>,
    device_trusted: bool,
) -> Result<Decision, String> {
    let principal_uid = request.principal.to_cedar().map_err(|e| e.to_string())?;
    let mut principal_parents: Vec<EntityUid> = Vec::with_capacity(groups.len() + roles.len());
    for g in groups {
        principal_parents.push(
            g.principal
                .entity_ref()
                .to_cedar()
                .map_err(|e| e.to_string())?,
        );
    }
    for role in roles {
        principal_parents.push(role_uid(role)?);
    }

    // The slice: principal, its groups, resource, its ancestors, the action hierarchy.
    let mut slice: Vec<Entity> = Vec::with_capacity(4 + groups.len() + resource.ancestors.len());
    slice.push(principal_entity(
        snapshot,
        principal,
        principal_uid.clone(),
        principal_parents.iter().cloned(),
    )?);
    for g in groups {
        let parents = g
            .principal
            .groups
            .iter()
            .map(|id| crate::model::principal_ref(PrincipalKind::Group, id).to_cedar())
            .collect::<Result<HashSet<_>, _>>()
            .map_err(|e| e.to_string())?;
        slice.push(Entity::new_no_attrs(
            g.principal
                .entity_ref()
                .to_cedar()
                .map_err(|e| e.to_string())?,
            parents,
        ));
    }
    let resource_uid = request.resource.to_cedar().map_err(|e| e.to_string())?;
    slice.push(resource_entity(snapshot, resource, resource_uid.clone())?);
    for (uid, record) in &resource.ancestors {
        slice.push(ancestor_entity(uid, *record)?);
    }
    slice.extend(action.hierarchy().iter().cloned());
    let entities = Entities::from_entities(slice, None).map_err(|e| e.to_string())?;

    let context = context_of(request.facts, device_trusted)?;
    let cedar_request = Request::new(
        principal_uid.clone(),
        action.uid().clone(),
        resource_uid,
        context,
        None,
    )
    .map_err(|e| e.to_string())?;

    // The policy sets that can apply: shared ones, and those naming the principal or any
    // of its ancestors (groups, roles).
    let mut sets: Vec<&PolicySet> = Vec::with_capacity(2 + principal_parents.len());
    sets.push(action.shared());
    for scope in std::iter::once(&principal_uid).chain(principal_parents.iter()) {
        if let Some(set) = action.for_principal_scope(scope) {
            sets.push(set);
        }
    }
    let authorizer = Authorizer::new();
    let mut outcome = Combined::default();
    for set in sets {
        outcome.add(&authorizer.is_authorized(&cedar_request, set, &entities));
    }
    Ok(outcome.finish())
}

/// Cedar's decision rule over several disjoint policy sets: any satisfied forbid denies;
/// otherwise any satisfied permit allows; otherwise deny. Any error denies.
#[derive(Default)]
struct Combined {
    permits: Vec<String>,
    forbids: Vec<String>,
    errors: Vec<String>,
    erroring: Vec<String>,
}

impl Combined {
    fn add(&mut self, response: &Response) {
        let reasons = response.diagnostics().reason().map(ToString::to_string);
        match response.decision() {
            cedar_policy::Decision::Allow => self.permits.extend(reasons),
            cedar_policy::Decision::Deny => self.forbids.extend(reasons),
        }
        for e in response.diagnostics().errors() {
            let cedar_policy::AuthorizationError::PolicyEvaluationError(e) = e;
            self.erroring.push(e.policy_id().to_string());
            self.errors
                .push(format!("{}: {}", e.policy_id(), e.inner()));
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
            determining_policies: determining,
            errors: self.errors,
            effective_roles: Vec::new(),
            elapsed: Duration::ZERO,
        }
    }
}

fn role_uid(role: &str) -> Result<EntityUid, String> {
    EntityRef::new("Role", role)
        .and_then(|r| r.to_cedar())
        .map_err(|e| e.to_string())
}

fn user_uid(id: &str) -> Result<EntityUid, String> {
    crate::model::principal_ref(PrincipalKind::User, id)
        .to_cedar()
        .map_err(|e| e.to_string())
}

/// The Cedar entity of a user or service, with its attributes and the given parents.
fn principal_entity(
    snapshot: &Snapshot,
    view: &PrincipalView,
    uid: EntityUid,
    parents: impl Iterator<Item = EntityUid>,
) -> Result<Entity, String> {
    let p = &view.principal;
    let mut attrs: HashMap<String, RestrictedExpression> = HashMap::with_capacity(8);
    attrs.insert(
        String::from("status"),
        RestrictedExpression::new_string(p.status.as_str().to_owned()),
    );
    if let Some(tenant) = &p.tenant {
        attrs.insert(
            String::from("tenant"),
            RestrictedExpression::new_string(tenant.clone()),
        );
    }
    attrs.insert(
        String::from("clearance"),
        RestrictedExpression::new_long(p.attributes.clearance),
    );
    if p.kind == PrincipalKind::User {
        if let Some(d) = &p.attributes.department {
            attrs.insert(
                String::from("department"),
                RestrictedExpression::new_string(d.clone()),
            );
        }
        if let Some(j) = &p.attributes.job_title {
            attrs.insert(
                String::from("job_title"),
                RestrictedExpression::new_string(j.clone()),
            );
        }
        if let Some(m) = &p.attributes.manager {
            attrs.insert(
                String::from("manager"),
                RestrictedExpression::new_entity_uid(user_uid(m)?),
            );
        }
        let managers = manager_chain(snapshot, p.attributes.manager.as_deref())
            .into_iter()
            .map(|m| user_uid(m).map(RestrictedExpression::new_entity_uid))
            .collect::<Result<Vec<_>, _>>()?;
        attrs.insert(
            String::from("managers"),
            RestrictedExpression::new_set(managers),
        );
        attrs.insert(
            String::from("gdpr_consent"),
            RestrictedExpression::new_bool(p.attributes.gdpr_consent_at.is_some()),
        );
    }
    Entity::new(uid, attrs, parents.collect()).map_err(|e| e.to_string())
}

/// Every manager above `first` in the org tree (seed 002 in_org_tree).
fn manager_chain<'s>(snapshot: &'s Snapshot, first: Option<&'s str>) -> Vec<&'s str> {
    let mut chain: Vec<&str> = Vec::new();
    let mut current = first;
    while let Some(id) = current {
        if chain.contains(&id) || chain.len() >= MAX_DEPTH {
            break;
        }
        chain.push(id);
        current = snapshot
            .principal(&crate::model::principal_ref(PrincipalKind::User, id))
            .and_then(|m| m.principal.attributes.manager.as_deref());
    }
    chain
}

/// The resource entity. A resource that is itself a principal (a `User` in `user.read`)
/// gets the principal's attributes; any other gets its stored (or empty) attributes with
/// effective tenant and archived flags.
fn resource_entity(
    snapshot: &Snapshot,
    chain: &ResourceChain<'_>,
    uid: EntityUid,
) -> Result<Entity, String> {
    let parents = chain
        .parents
        .iter()
        .map(|p| p.to_cedar())
        .collect::<Result<HashSet<_>, _>>()
        .map_err(|e| e.to_string())?;
    if PrincipalKind::from_cedar_type(chain.resource.type_name()).is_some() {
        return match snapshot.principal(chain.resource) {
            Some(view) => principal_entity(snapshot, view, uid, parents.into_iter()),
            None => Ok(unknown_principal_entity(uid)),
        };
    }
    let mut attrs = entity_attrs(chain.record);
    if let Some(tenant) = chain.effective_tenant() {
        attrs.insert(
            String::from("tenant"),
            RestrictedExpression::new_string(tenant.to_owned()),
        );
    }
    attrs.insert(
        String::from("archived"),
        RestrictedExpression::new_bool(chain.effective_archived()),
    );
    Entity::new(uid, attrs, parents).map_err(|e| e.to_string())
}

/// A principal-typed resource the store does not know: attributes that satisfy the schema
/// and grant nothing (inactive, no clearance, nobody manages it).
fn unknown_principal_entity(uid: EntityUid) -> Entity {
    let attrs = HashMap::from([
        (
            String::from("status"),
            RestrictedExpression::new_string(PrincipalStatus::Deleted.as_str().to_owned()),
        ),
        (String::from("clearance"), RestrictedExpression::new_long(0)),
        (String::from("managers"), RestrictedExpression::new_set([])),
        (
            String::from("gdpr_consent"),
            RestrictedExpression::new_bool(false),
        ),
    ]);
    Entity::new(uid.clone(), attrs, HashSet::new())
        .unwrap_or_else(|_| Entity::new_no_attrs(uid, HashSet::new()))
}

fn ancestor_entity(uid: &EntityRef, record: Option<&EntityRecord>) -> Result<Entity, String> {
    let parents = record
        .map(|r| r.parents.iter().map(EntityRef::to_cedar).collect())
        .transpose()
        .map_err(|e: crate::error::ModelError| e.to_string())?
        .unwrap_or_default();
    let mut attrs = entity_attrs(record);
    attrs.insert(
        String::from("archived"),
        RestrictedExpression::new_bool(record.is_some_and(|r| r.attributes.archived)),
    );
    Entity::new(uid.to_cedar().map_err(|e| e.to_string())?, attrs, parents)
        .map_err(|e| e.to_string())
}

fn entity_attrs(record: Option<&EntityRecord>) -> HashMap<String, RestrictedExpression> {
    let mut attrs = HashMap::with_capacity(6);
    let Some(r) = record else {
        return attrs;
    };
    let a = &r.attributes;
    if let Some(c) = a.classification {
        attrs.insert(
            String::from("classification"),
            RestrictedExpression::new_long(c),
        );
    }
    if let Some(t) = &a.tenant {
        attrs.insert(
            String::from("tenant"),
            RestrictedExpression::new_string(t.clone()),
        );
    }
    if let Some(k) = &a.kind {
        attrs.insert(
            String::from("kind"),
            RestrictedExpression::new_string(k.clone()),
        );
    }
    if let Some(o) = &a.owner
        && let Ok(uid) = user_uid(o)
    {
        attrs.insert(
            String::from("owner"),
            RestrictedExpression::new_entity_uid(uid),
        );
    }
    attrs
}

fn context_of(facts: &RequestFacts, device_trusted: bool) -> Result<Context, String> {
    let mut pairs: Vec<(String, RestrictedExpression)> = Vec::with_capacity(9);
    pairs.push((
        String::from("hour"),
        RestrictedExpression::new_long(facts.local_time.hour.into()),
    ));
    pairs.push((
        String::from("minute"),
        RestrictedExpression::new_long(facts.local_time.minute.into()),
    ));
    pairs.push((
        String::from("weekday"),
        RestrictedExpression::new_long(facts.local_time.weekday.into()),
    ));
    pairs.push((
        String::from("risk_score"),
        RestrictedExpression::new_long(facts.risk_score),
    ));
    pairs.push((
        String::from("mfa"),
        RestrictedExpression::new_bool(facts.mfa),
    ));
    pairs.push((
        String::from("device_trusted"),
        RestrictedExpression::new_bool(device_trusted),
    ));
    pairs.push((
        String::from("band"),
        RestrictedExpression::new_string(facts.band.clone()),
    ));
    if let Some(ip) = &facts.ip {
        pairs.push((String::from("ip"), RestrictedExpression::new_ip(ip)));
    }
    if let Some(d) = &facts.device_id {
        pairs.push((
            String::from("device_id"),
            RestrictedExpression::new_string(d.clone()),
        ));
    }
    Context::from_pairs(pairs).map_err(|e| e.to_string())
}
