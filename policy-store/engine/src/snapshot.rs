//! The snapshot: an immutable, indexed, in-memory view of the store for the hot path.
//!
//! Built once from a full [`StoreState`], then patched from [`StoreDelta`]s (the current
//! values of whatever the change entries since the last revision touched). Maps are
//! persistent (`imbl`), so a patch copies only the paths it changes. A new snapshot is
//! published through [`SnapshotHandle`] with an atomic pointer swap; readers never lock.
//!
//! A sidecar in cached state mode holds only the shared part of the state: groups (not
//! users and services: [`is_shared`]) and the stored entities of the types the control
//! plane holds in full ([`HeldEntityTypes`]: the resource hierarchy). The control plane
//! hands it that part ([`StoreState::shared`], [`SnapshotUpdate::shared`]: changed users,
//! services and entities of other types become [`StoreDelta::invalidated`] keys) and the
//! rest one key at a time ([`StateSlice`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;

use crate::decision::DecisionCache;
use crate::error::CompileError;
use crate::policy::{CompiledPolicies, PolicySources, compile};
use crate::slice::{CedarEntity, CedarPrincipal, EntityTypes};
use portcullis_model::{
    Assignment, EntityRecord, EntityRef, PolicyFile, PolicySetVersion, Principal, PrincipalKind,
    Revision, RevokedSession, Role, TemplateLink, UnixMillis,
};

/// Everything the store holds, loaded at once (bootstrap). Also the document a control plane
/// hands a sidecar (`GET /v1/snapshot`) and the sidecar keeps as its last-known-good state.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreState {
    /// Revision the state was read at.
    pub revision: Revision,
    /// Principals.
    pub principals: Vec<Principal>,
    /// Roles.
    pub roles: Vec<Role>,
    /// Assignments.
    pub assignments: Vec<Assignment>,
    /// Resource entities.
    pub entities: Vec<EntityRecord>,
    /// Revoked sessions that have not expired.
    pub revoked_sessions: Vec<RevokedSession>,
    /// Template links.
    pub template_links: Vec<TemplateLink>,
    /// The current policy set, if one was ever stored.
    pub policy_set: Option<PolicySetVersion>,
    /// Which stored entities it holds: all of them, or (the shared view of a control plane
    /// that names the types it holds in full) those of the named types only.
    #[serde(default, skip_serializing_if = "HeldEntityTypes::is_all")]
    pub held_entity_types: HeldEntityTypes,
}

impl StoreState {
    /// Applies an update to this copy of the state, so a follower can keep a whole state
    /// (its last-known-good file) in step with its snapshot.
    pub fn apply(&mut self, update: SnapshotUpdate) {
        let delta = match update {
            SnapshotUpdate::Rebuild(state) => {
                *self = state;
                return;
            }
            SnapshotUpdate::Patch(delta) => delta,
        };
        for (key, value) in delta.principals {
            self.principals.retain(|p| p.entity_ref() != key);
            self.assignments.retain(|a| a.principal != key);
            if let Some((principal, assignments)) = value {
                self.principals.push(principal);
                self.assignments.extend(assignments);
            }
        }
        for (key, value) in delta.entities {
            self.entities.retain(|e| e.uid != key);
            if let Some(record) = value {
                self.entities.push(record);
            }
        }
        for session in delta.revoked_sessions {
            let key = session.record_key();
            self.revoked_sessions.retain(|s| s.record_key() != key);
            self.revoked_sessions.push(session);
        }
        if let Some(roles) = delta.roles {
            self.roles = roles;
        }
        if let Some(links) = delta.template_links {
            self.template_links = links;
        }
        if delta.policy_set.is_some() {
            self.policy_set = delta.policy_set;
        }
        self.held_entity_types = delta.held_entity_types;
        self.revision = delta.revision;
    }
}

impl StoreState {
    /// The shared part: everything but users and services (see [`is_shared`]), their
    /// assignments, and the entities `held` leaves out. What a sidecar in cached state mode
    /// holds in full. Copies only that part.
    #[must_use]
    pub fn shared(&self, held: &HeldEntityTypes) -> Self {
        let held = self.held_entity_types.narrowed(held);
        Self {
            revision: self.revision,
            principals: (self.principals.iter())
                .filter(|p| is_shared(&p.entity_ref()))
                .cloned()
                .collect(),
            roles: self.roles.clone(),
            assignments: (self.assignments.iter())
                .filter(|a| is_shared(&a.principal))
                .cloned()
                .collect(),
            entities: (self.entities.iter())
                .filter(|e| held.holds(&e.uid))
                .cloned()
                .collect(),
            revoked_sessions: self.revoked_sessions.clone(),
            template_links: self.template_links.clone(),
            policy_set: self.policy_set.clone(),
            held_entity_types: held,
        }
    }
}

/// Which stored resource entities a state or snapshot holds: all (`None`, the default), or
/// only those of the named types. A control plane whose sidecars run in cached state mode
/// names the resource hierarchy every decision reads (`Tenant`, `Space`): its shared view
/// carries those in full and leaves the others (documents, many and each read by few
/// decisions) to be fetched on first use.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct HeldEntityTypes(Option<Vec<String>>);

impl HeldEntityTypes {
    /// Every stored entity.
    pub const ALL: Self = Self(None);

    /// Only entities of `types`.
    pub fn only(types: impl IntoIterator<Item = String>) -> Self {
        let mut types: Vec<String> = types.into_iter().collect();
        types.sort_unstable();
        types.dedup();
        Self(Some(types))
    }

    /// Whether every stored entity is held.
    pub fn is_all(&self) -> bool {
        self.0.is_none()
    }

    /// The types held, `None` for all.
    pub fn types(&self) -> Option<&[String]> {
        self.0.as_deref()
    }

    /// Whether a stored entity `uid` is held (else it is fetched on use). An entity under a
    /// principal's type (`User`, `Group`, `Service`) is always held: that key is fetched as
    /// the principal.
    pub fn holds(&self, uid: &EntityRef) -> bool {
        self.0.as_ref().is_none_or(|types| {
            types.iter().any(|t| t == uid.type_name())
                || PrincipalKind::from_cedar_type(uid.type_name()).is_some()
        })
    }

    /// What both hold: a state holding these, filtered by `other`.
    fn narrowed(&self, other: &Self) -> Self {
        match (&self.0, &other.0) {
            (None, _) => other.clone(),
            (Some(_), None) => self.clone(),
            (Some(mine), Some(theirs)) => {
                Self::only(mine.iter().filter(|t| theirs.contains(t)).cloned())
            }
        }
    }
}

/// Whether a principal belongs to the shared part of the state, held in full by every
/// sidecar: groups (few, and read by the decisions of all their members). Users and
/// services are many and each read by its own decisions: a sidecar in cached state mode
/// fetches them one at a time.
pub fn is_shared(principal: &EntityRef) -> bool {
    PrincipalKind::from_cedar_type(principal.type_name()) == Some(PrincipalKind::Group)
}

/// A principal record with all its assignments.
pub type PrincipalWithAssignments = (Principal, Vec<Assignment>);

/// One key's part of the state at a revision: a user or service with all its
/// assignments, or an entity the shared part leaves out; `None` when the store does not
/// hold it. What a sidecar in cached state mode fetches on a miss, from the shared cache
/// or the control plane.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSlice {
    /// The store revision the slice is current at: it holds every change up to it.
    pub revision: Revision,
    /// What the store holds under the key; `None` when nothing.
    pub value: Option<SliceValue>,
}

/// What a [`StateSlice`] holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SliceValue {
    /// A principal and its assignments.
    Principal(PrincipalWithAssignments),
    /// A resource entity.
    Entity(EntityRecord),
}

impl StateSlice {
    /// Whether the slice is one of `key`: its value (if any) is stored under that key and
    /// of the kind the key names. What the shared cache returns is not trusted to be.
    pub fn is_of(&self, key: &EntityRef) -> bool {
        let principal_key = PrincipalKind::from_cedar_type(key.type_name()).is_some();
        match &self.value {
            None => true,
            Some(SliceValue::Principal((principal, _))) => {
                principal_key && principal.entity_ref() == *key
            }
            Some(SliceValue::Entity(record)) => !principal_key && record.uid == *key,
        }
    }
}

/// The current values of what changed between two revisions.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreDelta {
    /// Revision the delta brings the snapshot to.
    pub revision: Revision,
    /// Touched principals: their record and all their assignments, or `None` if deleted.
    pub principals: Vec<(EntityRef, Option<PrincipalWithAssignments>)>,
    /// Touched entities, `None` if deleted.
    pub entities: Vec<(EntityRef, Option<EntityRecord>)>,
    /// Newly revoked sessions.
    pub revoked_sessions: Vec<RevokedSession>,
    /// The whole role list, if any role changed.
    pub roles: Option<Vec<Role>>,
    /// The whole link list, if any link changed.
    pub template_links: Option<Vec<TemplateLink>>,
    /// The new current policy set, if it changed.
    pub policy_set: Option<PolicySetVersion>,
    /// Principals and entities outside the shared part that changed, in the shared view
    /// of a delta ([`StoreDelta::shared`]): a sidecar in cached state mode evicts them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invalidated: Vec<EntityRef>,
    /// The shared view's entity types (see [`StoreState::held_entity_types`]): a snapshot
    /// holding others refuses the delta ([`SnapshotError::HeldTypesChanged`]) and is
    /// rebuilt.
    #[serde(default, skip_serializing_if = "HeldEntityTypes::is_all")]
    pub held_entity_types: HeldEntityTypes,
}

impl StoreDelta {
    /// The shared view: changed users and services, and changed entities `held` leaves
    /// out, are named in [`Self::invalidated`] instead of carried. Copies only what it
    /// keeps.
    #[must_use]
    pub fn shared(&self, held: &HeldEntityTypes) -> Self {
        let held = self.held_entity_types.narrowed(held);
        let (shared, others): (Vec<_>, Vec<_>) =
            self.principals.iter().partition(|(key, _)| is_shared(key));
        let (kept, left_out): (Vec<_>, Vec<_>) =
            self.entities.iter().partition(|(key, _)| held.holds(key));
        Self {
            revision: self.revision,
            principals: shared.into_iter().cloned().collect(),
            entities: kept.into_iter().cloned().collect(),
            revoked_sessions: self.revoked_sessions.clone(),
            roles: self.roles.clone(),
            template_links: self.template_links.clone(),
            policy_set: self.policy_set.clone(),
            invalidated: (self.invalidated.iter())
                .chain(others.into_iter().map(|(key, _)| key))
                .chain(left_out.into_iter().map(|(key, _)| key))
                .cloned()
                .collect(),
            held_entity_types: held,
        }
    }

    /// Whether applying it leaves every decision as it was for what a snapshot holds: it
    /// only names principals and entities the snapshot does not hold (their fetched
    /// revisions are part of a decision's key), or revokes sessions
    /// (checked before a decision, never cached). A snapshot patched by such a delta keeps
    /// its decision cache.
    fn keeps_decisions(&self) -> bool {
        self.principals.is_empty()
            && self.entities.is_empty()
            && self.roles.is_none()
            && self.template_links.is_none()
            && self.policy_set.is_none()
    }
}

/// What a follower needs to bring its snapshot to the store's current revision.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotUpdate {
    /// Patch the current snapshot.
    Patch(StoreDelta),
    /// Build anew (after a bulk import, or when the changes since are no longer kept).
    Rebuild(StoreState),
}

impl SnapshotUpdate {
    /// The shared view (see [`StoreState::shared`], [`StoreDelta::shared`]).
    #[must_use]
    pub fn shared(&self, held: &HeldEntityTypes) -> Self {
        match self {
            Self::Patch(delta) => Self::Patch(delta.shared(held)),
            Self::Rebuild(state) => Self::Rebuild(state.shared(held)),
        }
    }

    /// The revision it brings a snapshot to.
    pub fn revision(&self) -> Revision {
        match self {
            Self::Patch(delta) => delta.revision,
            Self::Rebuild(state) => state.revision,
        }
    }
}

/// A principal with its assignments indexed by scope, and its Cedar form.
#[derive(Debug, Clone)]
pub struct PrincipalView {
    /// The principal record.
    pub principal: Principal,
    global: Vec<Arc<Assignment>>,
    scoped: HashMap<EntityRef, Vec<Arc<Assignment>>>,
    pub(crate) cedar: CedarPrincipal,
}

impl PrincipalView {
    fn new(
        principal: Principal,
        assignments: impl IntoIterator<Item = Assignment>,
        types: &EntityTypes,
    ) -> Self {
        let mut view = Self {
            cedar: CedarPrincipal::new(&principal, types),
            principal,
            global: Vec::new(),
            scoped: HashMap::new(),
        };
        for a in assignments {
            view.insert(Arc::new(a));
        }
        view
    }

    fn insert(&mut self, a: Arc<Assignment>) {
        match a.scope.entity() {
            None => self.global.push(a),
            Some(e) => self.scoped.entry(e.clone()).or_default().push(a),
        }
    }

    /// Global assignments.
    pub fn global_assignments(&self) -> &[Arc<Assignment>] {
        &self.global
    }

    /// Assignments scoped exactly to `entity`.
    pub fn assignments_on(&self, entity: &EntityRef) -> &[Arc<Assignment>] {
        self.scoped.get(entity).map_or(&[], Vec::as_slice)
    }

    /// Every assignment: global ones first, then scoped ones.
    pub fn assignments(&self) -> impl Iterator<Item = &Assignment> {
        self.global
            .iter()
            .chain(self.scoped.values().flatten())
            .map(AsRef::as_ref)
    }

    /// Number of assignments.
    pub fn assignment_count(&self) -> usize {
        self.global.len() + self.scoped.values().map(Vec::len).sum::<usize>()
    }
}

/// A resource entity and its Cedar form.
#[derive(Debug, Clone)]
pub struct EntityView {
    /// The stored record.
    pub record: EntityRecord,
    pub(crate) cedar: CedarEntity,
}

impl EntityView {
    fn new(record: EntityRecord, types: &EntityTypes) -> Self {
        Self {
            cedar: CedarEntity::new(&record, types),
            record,
        }
    }
}

/// What the policy set was compiled from, kept to recompile when roles or links change.
#[derive(Debug, Clone)]
struct PolicyInputs {
    version: PolicySetVersion,
    roles: Arc<Vec<Role>>,
    links: Arc<Vec<TemplateLink>>,
}

/// An immutable view of the store at one revision.
#[derive(Debug, Clone)]
pub struct Snapshot {
    revision: Revision,
    built_at: UnixMillis,
    policies: Arc<CompiledPolicies>,
    inputs: PolicyInputs,
    principals: imbl::HashMap<EntityRef, Arc<PrincipalView>>,
    entities: imbl::HashMap<EntityRef, Arc<EntityView>>,
    /// Which stored entities `entities` holds; the others are fetched (cached state mode).
    held_entity_types: HeldEntityTypes,
    /// Revoked session ids: for each, whose (`None`: anyone's) and until when.
    revoked: imbl::HashMap<String, Revocations>,
    /// Principals whose tokens issued before an instant are refused: (cutoff, forget after).
    revoked_before: imbl::HashMap<EntityRef, (UnixMillis, UnixMillis)>,
    /// Decisions made against this snapshot; a patched snapshot starts with an empty one.
    decisions: Arc<DecisionCache>,
}

/// Why a snapshot could not be built or patched.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The store holds no policy set yet.
    #[error("the store holds no policy set")]
    NoPolicySet,
    /// The stored policy set, roles or links do not compile.
    #[error(transparent)]
    Policy(#[from] CompileError),
    /// A delta of a shared view holding other entity types than the snapshot (the control
    /// plane was restarted with another `held_entity_types`): only a rebuild brings the
    /// entities the snapshot lacks.
    #[error(
        "the update holds the entity types {theirs:?}, the snapshot {ours:?}: it must be rebuilt"
    )]
    HeldTypesChanged {
        /// The snapshot's (`None`: all).
        ours: Option<Vec<String>>,
        /// The update's.
        theirs: Option<Vec<String>>,
    },
}

/// The sources to compile from a stored version plus roles and links.
pub fn policy_sources(
    version: &PolicySetVersion,
    roles: &[Role],
    links: &[TemplateLink],
) -> PolicySources {
    PolicySources {
        schema: PolicyFile {
            name: String::from("schema.cedarschema"),
            text: version.schema.clone(),
        },
        files: version.files.clone(),
        roles_source: String::from("roles"),
        roles: roles.to_vec(),
        links: links.to_vec(),
    }
}

impl Snapshot {
    /// Builds a snapshot from a full state. `now` is recorded as the build time.
    pub fn build(state: StoreState, now: UnixMillis) -> Result<Self, SnapshotError> {
        let version = state.policy_set.ok_or(SnapshotError::NoPolicySet)?;
        let inputs = PolicyInputs {
            version,
            roles: Arc::new(state.roles),
            links: Arc::new(state.template_links),
        };
        let policies = Arc::new(compile(&policy_sources(
            &inputs.version,
            &inputs.roles,
            &inputs.links,
        ))?);

        let mut by_principal: HashMap<EntityRef, Vec<Assignment>> = HashMap::new();
        for a in state.assignments {
            by_principal.entry(a.principal.clone()).or_default().push(a);
        }
        let types = policies.types();
        let principals = state
            .principals
            .into_iter()
            .map(|p| {
                let key = p.entity_ref();
                let assignments = by_principal.remove(&key).unwrap_or_default();
                (key, Arc::new(PrincipalView::new(p, assignments, types)))
            })
            .collect();
        let entities = state
            .entities
            .into_iter()
            .map(|e| (e.uid.clone(), Arc::new(EntityView::new(e, types))))
            .collect();
        let mut revoked = imbl::HashMap::new();
        let mut revoked_before = imbl::HashMap::new();
        for session in state.revoked_sessions {
            add_revocation(&mut revoked, &mut revoked_before, session);
        }
        Ok(Self {
            revision: state.revision,
            built_at: now,
            policies,
            inputs,
            principals,
            entities,
            held_entity_types: state.held_entity_types,
            revoked,
            revoked_before,
            decisions: Arc::new(DecisionCache::new()),
        })
    }

    /// A new snapshot with `delta` applied. On a compile error nothing changes and the
    /// caller keeps serving `self`.
    pub fn patched(&self, delta: StoreDelta, now: UnixMillis) -> Result<Self, SnapshotError> {
        if delta.held_entity_types != self.held_entity_types {
            return Err(SnapshotError::HeldTypesChanged {
                ours: self.held_entity_types.types().map(<[String]>::to_vec),
                theirs: delta.held_entity_types.types().map(<[String]>::to_vec),
            });
        }
        let mut next = self.clone();
        if !delta.keeps_decisions() {
            next.decisions = Arc::new(DecisionCache::new());
        }
        let recompile =
            delta.roles.is_some() || delta.template_links.is_some() || delta.policy_set.is_some();
        if let Some(version) = delta.policy_set {
            next.inputs.version = version;
        }
        if let Some(roles) = delta.roles {
            next.inputs.roles = Arc::new(roles);
        }
        if let Some(links) = delta.template_links {
            next.inputs.links = Arc::new(links);
        }
        if recompile {
            next.policies = Arc::new(compile(&policy_sources(
                &next.inputs.version,
                &next.inputs.roles,
                &next.inputs.links,
            ))?);
        }
        let policies = Arc::clone(&next.policies);
        let types = policies.types();
        for (key, value) in delta.principals {
            match value {
                Some((principal, assignments)) => {
                    next.principals.insert(
                        key,
                        Arc::new(PrincipalView::new(principal, assignments, types)),
                    );
                }
                None => {
                    next.principals.remove(&key);
                }
            }
        }
        for (key, value) in delta.entities {
            match value {
                Some(record) => {
                    next.entities
                        .insert(key, Arc::new(EntityView::new(record, types)));
                }
                None => {
                    next.entities.remove(&key);
                }
            }
        }
        for session in delta.revoked_sessions {
            add_revocation(&mut next.revoked, &mut next.revoked_before, session);
        }
        next.revoked = next
            .revoked
            .into_iter()
            .filter_map(|(id, mut holders)| {
                holders.retain(|(_, expires_at)| *expires_at > now);
                (!holders.is_empty()).then_some((id, holders))
            })
            .collect();
        next.revoked_before
            .retain(|_, (_, expires_at)| *expires_at > now);
        next.revision = delta.revision;
        next.built_at = now;
        Ok(next)
    }

    /// The decisions made against this snapshot.
    pub(crate) fn decisions(&self) -> &DecisionCache {
        &self.decisions
    }

    /// The store revision this snapshot reflects.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// When this snapshot was built or last patched.
    pub fn built_at(&self) -> UnixMillis {
        self.built_at
    }

    /// The compiled policy set.
    pub fn policies(&self) -> &CompiledPolicies {
        &self.policies
    }

    /// What a candidate policy set (`files` over `schema`) would be compiled from with this
    /// snapshot's roles and template links.
    pub fn candidate_sources(&self, files: &[PolicyFile], schema: &str) -> PolicySources {
        PolicySources {
            schema: PolicyFile {
                name: String::from("schema.cedarschema"),
                text: schema.to_owned(),
            },
            files: files.to_vec(),
            roles_source: String::from("roles"),
            roles: self.inputs.roles.to_vec(),
            links: self.inputs.links.to_vec(),
        }
    }

    /// The version number of the hand-written policy set in force.
    pub fn policy_version(&self) -> i64 {
        self.inputs.version.version
    }

    /// A principal with its assignments.
    pub fn principal(&self, key: &EntityRef) -> Option<&Arc<PrincipalView>> {
        self.principals.get(key)
    }

    /// The view of a principal this snapshot does not hold (cached state mode), prepared
    /// against its policies' schema.
    pub fn principal_view(
        &self,
        principal: Principal,
        assignments: impl IntoIterator<Item = Assignment>,
    ) -> PrincipalView {
        PrincipalView::new(principal, assignments, self.policies.types())
    }

    /// The view of an entity this snapshot does not hold (cached state mode), prepared
    /// against its policies' schema.
    pub fn entity_view(&self, record: EntityRecord) -> EntityView {
        EntityView::new(record, self.policies.types())
    }

    /// A resource entity.
    pub fn entity(&self, key: &EntityRef) -> Option<&Arc<EntityView>> {
        self.entities.get(key)
    }

    /// Whether `key`, if stored, is among the entities this snapshot holds (else it is
    /// fetched: cached state mode).
    pub fn holds_entity(&self, key: &EntityRef) -> bool {
        self.held_entity_types.holds(key)
    }

    /// Whether `principal`'s session id (`sid` or `jti`) is revoked at `now`: revoked for
    /// that principal, or for everyone.
    pub fn is_session_revoked(
        &self,
        principal: &EntityRef,
        session_id: &str,
        now: UnixMillis,
    ) -> bool {
        self.revoked.get(session_id).is_some_and(|holders| {
            holders.iter().any(|(whose, expires_at)| {
                *expires_at > now && whose.as_ref().is_none_or(|p| p == principal)
            })
        })
    }

    /// Whether a token of `principal` issued at `issued_at` (ms; `None` when it has no
    /// `iat`) falls under a revocation of all that principal's sessions at `now`.
    pub fn is_token_revoked_for(
        &self,
        principal: &EntityRef,
        issued_at: Option<UnixMillis>,
        now: UnixMillis,
    ) -> bool {
        self.revoked_before
            .get(principal)
            .is_some_and(|(cutoff, expires_at)| {
                *expires_at > now && issued_at.is_none_or(|iat| iat < *cutoff)
            })
    }

    /// Number of principals, entities and assignments (for metrics and logs).
    pub fn counts(&self) -> SnapshotCounts {
        SnapshotCounts {
            principals: self.principals.len(),
            entities: self.entities.len(),
            assignments: self.principals.values().map(|p| p.assignment_count()).sum(),
            policies: self.policies.policy_count(),
        }
    }
}

/// Sizes of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotCounts {
    /// Principals.
    pub principals: usize,
    /// Resource entities.
    pub entities: usize,
    /// Assignments.
    pub assignments: usize,
    /// Compiled policies (static and linked).
    pub policies: usize,
}

/// The published snapshot: one atomic pointer that readers load without locking and
/// writers replace whole. Watchers ([`SnapshotHandle::subscribe`]) learn each published
/// revision without polling.
#[derive(Debug)]
pub struct SnapshotHandle {
    current: ArcSwap<Snapshot>,
    rejected_updates: AtomicU64,
    published: tokio::sync::watch::Sender<Revision>,
}

impl SnapshotHandle {
    /// Publishes `initial`.
    pub fn new(initial: Snapshot) -> Self {
        let (published, _) = tokio::sync::watch::channel(initial.revision());
        Self {
            current: ArcSwap::from_pointee(initial),
            rejected_updates: AtomicU64::new(0),
            published,
        }
    }

    /// The revision of each snapshot published from now on.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Revision> {
        self.published.subscribe()
    }

    /// The snapshot in force. Cheap; hold it for the length of one decision.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replaces the snapshot in force.
    pub fn publish(&self, next: Snapshot) {
        let revision = next.revision();
        self.current.store(Arc::new(next));
        self.published.send_replace(revision);
    }

    /// Applies an update; on failure keeps the current snapshot, counts the rejection and
    /// returns the error.
    ///
    /// INVARIANT: one task applies updates (the follower); readers are unlimited. Two
    /// concurrent writers could otherwise publish over each other.
    pub fn apply(
        &self,
        update: SnapshotUpdate,
        now: UnixMillis,
    ) -> Result<Revision, SnapshotError> {
        let result = match update {
            SnapshotUpdate::Patch(delta) => self.load().patched(delta, now),
            SnapshotUpdate::Rebuild(state) => Snapshot::build(state, now),
        };
        match result {
            Ok(next) => {
                let revision = next.revision();
                self.publish(next);
                Ok(revision)
            }
            Err(e) => {
                self.rejected_updates.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// How many updates were refused because they did not compile.
    pub fn rejected_updates(&self) -> u64 {
        self.rejected_updates.load(Ordering::Relaxed)
    }
}

/// Who a revoked session id is revoked for (`None`: everyone), and until when.
type Revocations = Vec<(Option<EntityRef>, UnixMillis)>;

/// Files a revoked-session record under its session id and principal (replacing that
/// principal's earlier one), or under its principal when it revokes every session of that
/// principal.
fn add_revocation(
    revoked: &mut imbl::HashMap<String, Revocations>,
    revoked_before: &mut imbl::HashMap<EntityRef, (UnixMillis, UnixMillis)>,
    session: RevokedSession,
) {
    match (session.issued_before, session.principal) {
        (Some(cutoff), Some(principal)) => {
            revoked_before.insert(principal, (cutoff, session.expires_at));
        }
        (_, principal) => {
            let holders = revoked.entry(session.session_id).or_default();
            holders.retain(|(whose, _)| *whose != principal);
            holders.push((principal, session.expires_at));
        }
    }
}
