//! Authorisation of admin calls, decided by Cedar like everything else Portcullis guards:
//! `policies/admin.cedar` (or the built-in copy) over the fixed schema of this API
//! (`admin.cedarschema`). Each handler names its [`AdminAction`] and the [`Target`] it
//! touches (the tenants of every object read or changed) and asks [`AdminPolicies::check`]
//! before doing anything. Nothing is permitted unless a policy permits it; a policy that
//! fails to evaluate denies.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid,
    PolicySet, Request, RestrictedExpression, Schema,
};
use portcullis_engine::error::CompileError;
use portcullis_engine::policy::compile_plain;
use portcullis_model::{EntityRecord, PolicyFile};

use crate::auth::Actor;
use crate::error::ApiError;

/// The admin API's Cedar schema (principals `Admin`, resources `Target`, one action per
/// kind of call).
pub const SCHEMA: &str = include_str!("admin.cedarschema");

/// The file of a policies directory holding the admin policies.
pub const ADMIN_POLICIES_FILE: &str = "admin.cedar";

const BUILTIN: &str = include_str!("../../../policies/admin.cedar");

/// What a call does, as the admin policies name it (`Action::"roles.write"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAction {
    /// Read principals.
    PrincipalsRead,
    /// Create, replace or delete principals.
    PrincipalsWrite,
    /// Revoke sessions.
    SessionsRevoke,
    /// List assignments.
    AssignmentsRead,
    /// Grant or revoke assignments.
    AssignmentsWrite,
    /// Read resource entities.
    EntitiesRead,
    /// Create, replace or delete resource entities.
    EntitiesWrite,
    /// What-if decisions.
    Authorize,
    /// Read roles.
    RolesRead,
    /// Create, replace or delete roles.
    RolesWrite,
    /// Read and check policies, their history and the schema.
    PoliciesRead,
    /// Replace or roll back the policy set.
    PoliciesWrite,
    /// Read the whole state and its changes (what sidecars follow).
    DistributionRead,
    /// Read the audit ledger.
    AuditRead,
    /// Send lifecycle events (`POST /v1/events`).
    EventsPublish,
    /// Read the dead letters of events.
    EventsRead,
    /// Replay a dead letter.
    EventsReplay,
}

impl AdminAction {
    /// The action id in the admin schema.
    pub fn name(self) -> &'static str {
        match self {
            Self::PrincipalsRead => "principals.read",
            Self::PrincipalsWrite => "principals.write",
            Self::SessionsRevoke => "sessions.revoke",
            Self::AssignmentsRead => "assignments.read",
            Self::AssignmentsWrite => "assignments.write",
            Self::EntitiesRead => "entities.read",
            Self::EntitiesWrite => "entities.write",
            Self::Authorize => "authorize",
            Self::RolesRead => "roles.read",
            Self::RolesWrite => "roles.write",
            Self::PoliciesRead => "policies.read",
            Self::PoliciesWrite => "policies.write",
            Self::DistributionRead => "distribution.read",
            Self::AuditRead => "audit.read",
            Self::EventsPublish => "events.publish",
            Self::EventsRead => "events.read",
            Self::EventsReplay => "events.replay",
        }
    }
}

/// What a call touches: the tenants of the objects it reads or changes, and whether any of
/// them belongs to no single tenant (then it is `global`). Built only through
/// [`Target::global`] and [`Target::tenants`], so an empty target cannot pass for a
/// tenant's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    tenants: BTreeSet<String>,
    global: bool,
}

impl Target {
    /// Something that belongs to no tenant: roles, policies, the whole state.
    pub fn global() -> Self {
        Self {
            tenants: BTreeSet::new(),
            global: true,
        }
    }

    /// Objects with these tenants; one unknown (`None`) makes the target global.
    pub fn tenants<'a>(tenants: impl IntoIterator<Item = Option<&'a str>>) -> Self {
        let mut target = Self {
            tenants: BTreeSet::new(),
            global: false,
        };
        for tenant in tenants {
            target.add(tenant);
        }
        if target.tenants.is_empty() {
            target.global = true;
        }
        target
    }

    /// Adds one more object's tenant.
    pub fn add(&mut self, tenant: Option<&str>) {
        match tenant {
            Some(t) => {
                self.tenants.insert(t.to_owned());
            }
            None => self.global = true,
        }
    }

    fn describe(&self) -> String {
        let tenants: Vec<&str> = self.tenants.iter().map(String::as_str).collect();
        match (self.global, tenants.is_empty()) {
            (true, true) => String::from("global objects"),
            (true, false) => format!("global objects and tenant(s) {}", tenants.join(", ")),
            (false, _) => format!("tenant(s) {}", tenants.join(", ")),
        }
    }
}

/// The tenant a resource entity belongs to: a `Tenant` is its own; others say so in their
/// `tenant` attribute.
pub fn entity_tenant(entity: &EntityRecord) -> Option<&str> {
    if entity.uid.type_name() == "Tenant" {
        return Some(entity.uid.id());
    }
    entity.attributes.tenant.as_deref()
}

/// The compiled admin policies.
#[derive(Debug)]
pub struct AdminPolicies {
    schema: Schema,
    policies: PolicySet,
    authorizer: Authorizer,
    /// Where they came from, for logs.
    pub source: String,
}

impl AdminPolicies {
    /// Compiles and validates an admin policy file against the admin schema; every problem
    /// is placed in `file`.
    pub fn compile(file: &PolicyFile) -> Result<Self, CompileError> {
        let schema = PolicyFile {
            name: String::from("<built-in>/admin.cedarschema"),
            text: String::from(SCHEMA),
        };
        let plain = compile_plain(&schema, std::slice::from_ref(file))?;
        Ok(Self {
            schema: plain.schema,
            policies: plain.policies,
            authorizer: Authorizer::new(),
            source: file.name.clone(),
        })
    }

    /// The policies shipped in this repository's `policies/admin.cedar`.
    pub fn builtin() -> Result<Self, CompileError> {
        Self::compile(&PolicyFile {
            name: format!("<built-in>/{ADMIN_POLICIES_FILE}"),
            text: String::from(BUILTIN),
        })
    }

    /// Whether `actor` may do `action` to `target`: `Ok`, or 403 naming what was refused.
    pub fn check(
        &self,
        actor: &Actor,
        action: AdminAction,
        target: &Target,
    ) -> Result<(), ApiError> {
        let allowed = self.decide(actor, action, target).unwrap_or_else(|e| {
            tracing::error!(error = %e, action = action.name(), "admin authorisation could not be evaluated; denied");
            false
        });
        if allowed {
            return Ok(());
        }
        tracing::info!(
            actor = actor.identity.subject,
            action = action.name(),
            target = target.describe(),
            "admin call refused by the admin policies"
        );
        Err(ApiError::Forbidden(format!(
            "`{}` may not `{}` on {} (see {})",
            actor.identity.subject,
            action.name(),
            target.describe(),
            ADMIN_POLICIES_FILE
        )))
    }

    fn decide(&self, actor: &Actor, action: AdminAction, target: &Target) -> Result<bool, String> {
        let uid = |type_name: &str, id: &str| -> Result<EntityUid, String> {
            let type_name = EntityTypeName::from_str(type_name).map_err(|e| e.to_string())?;
            Ok(EntityUid::from_type_name_and_id(
                type_name,
                EntityId::new(id),
            ))
        };
        let strings = |values: Vec<String>| {
            RestrictedExpression::new_set(values.into_iter().map(RestrictedExpression::new_string))
        };
        let principal = uid("Admin", &actor.identity.subject)?;
        let resource = uid("Target", "call")?;
        let mut principal_attrs =
            HashMap::from([(String::from("roles"), strings(actor.identity.roles.clone()))]);
        if let Some(tenant) = &actor.identity.tenant {
            principal_attrs.insert(
                String::from("tenant"),
                RestrictedExpression::new_string(tenant.clone()),
            );
        }
        let resource_attrs = HashMap::from([
            (
                String::from("tenants"),
                strings(target.tenants.iter().cloned().collect()),
            ),
            (
                String::from("global"),
                RestrictedExpression::new_bool(target.global),
            ),
        ]);
        let entities = Entities::from_entities(
            [
                Entity::new(principal.clone(), principal_attrs, HashSet::new())
                    .map_err(|e| e.to_string())?,
                Entity::new(resource.clone(), resource_attrs, HashSet::new())
                    .map_err(|e| e.to_string())?,
            ],
            Some(&self.schema),
        )
        .map_err(|e| e.to_string())?;
        let request = Request::new(
            principal,
            uid("Action", action.name())?,
            resource,
            Context::empty(),
            Some(&self.schema),
        )
        .map_err(|e| e.to_string())?;
        let response = self
            .authorizer
            .is_authorized(&request, &self.policies, &entities);
        let errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(ToString::to_string)
            .collect();
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        Ok(response.decision() == Decision::Allow)
    }
}
