//! `portcullis-store` owns the storage of the authorization model behind one trait,
//! [`Store`].
//!
//! Every mutation runs in one transaction that writes the object, bumps the store-wide
//! revision and records a [`Change`] entry, so followers can catch up from any revision with
//! [`Store::changes_since`] / [`Store::load_update`]. Writes that would leave the policy set
//! uncompilable (a role naming an unknown action, a policy that does not validate) are
//! refused before anything is written.
//!
//! [`SqlStore`] implements it for an embedded SQLite file (the default) and PostgreSQL.

mod error;
#[cfg(feature = "test-support")]
pub mod scratch;
mod sql;

use std::future::Future;
use std::path::PathBuf;

pub use error::StoreError;
pub use sql::SqlStore;

/// How many entries of the live event stream the store keeps: a console that was away for
/// more is told to reload (`resync`) rather than replayed everything.
pub const EVENT_STREAM_KEPT: i64 = 100_000;

use portcullis_engine::snapshot::{HeldEntityTypes, SnapshotUpdate, StoreState};
use portcullis_model::events::{DeadLetter, EventOutcome, EventRecord, StreamEntry};
use portcullis_model::{
    Assignment, Change, EntityRecord, EntityRef, PolicyFile, PolicySetCheck, PolicySetSummary,
    PolicySetVersion, Principal, PrincipalStatus, Revision, RevokedSession, Role, Scope,
    TemplateLink,
};

/// Which database holds the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// An embedded SQLite file, created if missing.
    Sqlite {
        /// Path of the database file.
        path: PathBuf,
    },
    /// A PostgreSQL database shared by control-plane replicas.
    Postgres {
        /// `postgres://user@host:port/database`.
        url: String,
    },
}

/// Everything to import at once (seeding a new store, migrations from other systems,
/// benchmarks). Applied in one transaction as one revision.
#[derive(Debug, Clone, Default)]
pub struct Import {
    /// Principals to create or replace.
    pub principals: Vec<Principal>,
    /// Roles to create or replace.
    pub roles: Vec<Role>,
    /// Assignments to create or replace.
    pub assignments: Vec<Assignment>,
    /// Entities to create or replace.
    pub entities: Vec<EntityRecord>,
    /// Template links to create or replace.
    pub template_links: Vec<TemplateLink>,
    /// A new policy-set version (files + schema), if any.
    pub policy_set: Option<(Vec<PolicyFile>, String)>,
    /// The digest of the policies directory this import stores, recorded with it (see
    /// [`Store::policies_dir_digest`]).
    pub policies_dir_digest: Option<String>,
    /// Who imports: the `created_by` of the policy-set version (`import` when `None`).
    pub author: Option<String>,
}

/// One change a lifecycle event makes (see [`Store::take_event`]); the changes of one
/// event make one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Creates or replaces a principal.
    PutPrincipal(Principal),
    /// Creates a principal unless one with its kind and id exists (which is kept as it is).
    EnsurePrincipal(Principal),
    /// Deletes a principal and its assignments (nothing when it is gone already).
    DeletePrincipal(EntityRef),
    /// Sets the status of a principal that exists.
    SetStatus {
        /// The principal.
        principal: EntityRef,
        /// Its new status.
        status: PrincipalStatus,
    },
    /// Adds a principal that exists to groups (those it is in already stay once).
    JoinGroups {
        /// The principal.
        principal: EntityRef,
        /// Group ids.
        groups: Vec<String>,
    },
    /// Creates or replaces an assignment; its principal and role must exist.
    PutAssignment(Assignment),
    /// Deletes a principal's assignments: those of exactly one scope, or all of them.
    DeleteAssignments {
        /// The principal.
        principal: EntityRef,
        /// Only this scope; every scope when `None`.
        scope: Option<Scope>,
    },
    /// Marks an entity that exists archived (its subtree is denied with it).
    Archive(EntityRef),
    /// Records a revoked session.
    RevokeSession(RevokedSession),
}

/// Which assignments to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssignmentFilter {
    /// A principal's.
    Principal(EntityRef),
    /// Those granting a role.
    Role(String),
    /// Those scoped exactly to one entity, or global.
    Scope(portcullis_model::Scope),
}

/// The store of the authorization model.
pub trait Store: Send + Sync {
    /// The commit feed: wakes on every revision committed through this store. Followers
    /// still look now and then: a missed wake-up only delays them.
    fn commits(&self) -> tokio::sync::watch::Receiver<Revision>;

    /// The current revision.
    fn revision(&self) -> impl Future<Output = Result<Revision, StoreError>> + Send;

    /// Everything, read in one consistent transaction.
    fn load_state(&self) -> impl Future<Output = Result<StoreState, StoreError>> + Send;

    /// The shared part of the state ([`StoreState::shared`]: everything but users,
    /// services, their assignments and the entities `held` leaves out), read in one
    /// consistent transaction: what a sidecar in cached state mode bootstraps from.
    fn load_shared_state(
        &self,
        held: &HeldEntityTypes,
    ) -> impl Future<Output = Result<StoreState, StoreError>> + Send;

    /// Change entries after `since`, oldest first, at most `limit`.
    fn changes_since(
        &self,
        since: Revision,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<Change>, StoreError>> + Send;

    /// What a snapshot at `since` needs to reach the current revision: the current values
    /// of everything changed after `since`, or the full state after a bulk import.
    fn load_update(
        &self,
        since: Revision,
    ) -> impl Future<Output = Result<SnapshotUpdate, StoreError>> + Send;

    /// Creates or replaces a principal.
    fn put_principal(
        &self,
        principal: &Principal,
    ) -> impl Future<Output = Result<Revision, StoreError>> + Send;

    /// Deletes a principal and its assignments.
    fn delete_principal(
        &self,
        key: &EntityRef,
    ) -> impl Future<Output = Result<Revision, StoreError>> + Send;

    /// A principal.
    fn get_principal(
        &self,
        key: &EntityRef,
    ) -> impl Future<Output = Result<Option<Principal>, StoreError>> + Send;

    /// An assignment.
    fn get_assignment(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<Assignment>, StoreError>> + Send;

    /// A resource entity.
    fn get_entity(
        &self,
        uid: &EntityRef,
    ) -> impl Future<Output = Result<Option<EntityRecord>, StoreError>> + Send;

    /// Creates a role; [`StoreError::Conflict`] if the name is taken.
    fn create_role(&self, role: &Role)
    -> impl Future<Output = Result<Revision, StoreError>> + Send;

    /// Replaces an existing role.
    fn update_role(&self, role: &Role)
    -> impl Future<Output = Result<Revision, StoreError>> + Send;

    /// Deletes a role; [`StoreError::Conflict`] while assignments use it.
    fn delete_role(&self, name: &str) -> impl Future<Output = Result<Revision, StoreError>> + Send;

    /// All roles, by name.
    fn list_roles(&self) -> impl Future<Output = Result<Vec<Role>, StoreError>> + Send;

    /// Creates an assignment. The principal and the role must exist.
    fn create_assignment(
        &self,
        assignment: &Assignment,
    ) -> impl Future<Output = Result<Revision, StoreError>> + Send;

    /// Deletes an assignment.
    fn delete_assignment(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Revision, StoreError>> + Send;

    /// Assignments of a principal.
    fn assignments_of(
        &self,
        principal: &EntityRef,
    ) -> impl Future<Output = Result<Vec<Assignment>, StoreError>> + Send;

    /// A page of the assignments matching `filter`, by id: at most `limit` with ids after
    /// `after`.
    fn list_assignments(
        &self,
        filter: &AssignmentFilter,
        after: Option<&str>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<Assignment>, StoreError>> + Send;

    /// Creates or replaces a resource entity.
    fn put_entity(
        &self,
        entity: &EntityRecord,
    ) -> impl Future<Output = Result<Revision, StoreError>> + Send;

    /// Deletes a resource entity.
    fn delete_entity(
        &self,
        uid: &EntityRef,
    ) -> impl Future<Output = Result<Revision, StoreError>> + Send;

    /// Records a revoked session.
    fn revoke_session(
        &self,
        session: &RevokedSession,
    ) -> impl Future<Output = Result<Revision, StoreError>> + Send;

    /// Takes a lifecycle event, once: in one transaction, unless its id was taken before
    /// ([`EventOutcome::Duplicate`]) or a newer event was applied to one of its subjects
    /// ([`EventOutcome::Stale`]), makes its `ops` (none: [`EventOutcome::Acknowledged`])
    /// and records it. A change the store refuses refuses the whole event, recording
    /// nothing.
    fn take_event(
        &self,
        event: &EventRecord,
        ops: &[Op],
    ) -> impl Future<Output = Result<EventOutcome, StoreError>> + Send;

    /// Whether an event with this id was taken (applied, acknowledged or found stale).
    fn event_taken(&self, id: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Keeps an event that could not be applied.
    fn add_dead_letter(
        &self,
        letter: &DeadLetter,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Dead letters after id `after`, oldest first, at most `limit`.
    fn dead_letters(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, StoreError>> + Send;

    /// One dead letter.
    fn dead_letter(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<DeadLetter>, StoreError>> + Send;

    /// Notes that a dead letter was replayed and applied.
    fn mark_replayed(&self, id: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Entries of the live event stream after `after`, in order, at most `limit`. Entries
    /// are numbered without gaps; the oldest are dropped past a bound
    /// ([`EVENT_STREAM_KEPT`]), so a first entry numbered above `after + 1` means some
    /// were dropped.
    fn event_stream(
        &self,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<StreamEntry>, StoreError>> + Send;

    /// Whether an external audit event with this id was appended to the ledger.
    fn external_audit_recorded(
        &self,
        event_id: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Notes that an external audit event was appended to the ledger as record
    /// `ledger_seq` (a second note of the same id changes nothing).
    fn mark_external_audit(
        &self,
        event_id: &str,
        source: &str,
        ledger_seq: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The number of the newest entry of the live event stream (0: none yet).
    fn event_stream_head(&self) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Stores a new policy-set version after checking it compiles with the current roles
    /// and links. With `if_version`, only while that is the current version
    /// ([`StoreError::VersionMismatch`] otherwise). Returns the revision and the new version
    /// number.
    fn put_policy_set(
        &self,
        files: &[PolicyFile],
        schema: &str,
        created_by: Option<&str>,
        if_version: Option<i64>,
    ) -> impl Future<Output = Result<(Revision, i64), StoreError>> + Send;

    /// Checks what [`Store::put_policy_set`] would: that the set compiles with the current
    /// roles and links. Writes nothing.
    fn check_policy_set(
        &self,
        files: &[PolicyFile],
        schema: &str,
    ) -> impl Future<Output = Result<PolicySetCheck, StoreError>> + Send;

    /// The current policy-set version.
    fn current_policy_set(
        &self,
    ) -> impl Future<Output = Result<Option<PolicySetVersion>, StoreError>> + Send;

    /// One policy-set version.
    fn policy_set_version(
        &self,
        version: i64,
    ) -> impl Future<Output = Result<Option<PolicySetVersion>, StoreError>> + Send;

    /// The history, newest first: at most `limit` versions older than `before` (all when
    /// `None`).
    fn policy_set_history(
        &self,
        before: Option<i64>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<PolicySetSummary>, StoreError>> + Send;

    /// The digest recorded by the last import that stored a policies directory.
    fn policies_dir_digest(
        &self,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Imports many objects in one transaction (one revision, one change per object kind).
    /// The result must compile, or nothing is written.
    fn import(&self, import: &Import) -> impl Future<Output = Result<Revision, StoreError>> + Send;
}
