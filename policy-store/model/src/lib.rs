//! `portcullis-model` owns the authorization model: principals, roles, assignments,
//! entities, policy-set versions and change entries, with their validation.
//!
//! These are plain data, shared by the store (which persists them), the engine's snapshot
//! (which indexes them for the hot path) and the control plane (which edits them). Nothing
//! here does I/O or knows about SQL, HTTP or Cedar evaluation.

pub mod events;

use std::fmt;
use std::str::FromStr;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Bad model data (an unparsable reference, an unknown status, ...), in Cedar's message
/// style: lowercase, no final period, user input in backticks.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ModelError {
    /// Not of the form `Type::"id"`.
    #[error("{0}")]
    InvalidEntityRef(String),
    /// Any other invalid value.
    #[error("{0}")]
    Invalid(String),
}

/// Milliseconds since the Unix epoch, UTC. The one time unit of the store.
pub type UnixMillis = i64;

/// A reference to a Cedar entity, written `Type::"id"` (for example `Space::"household"`).
///
/// The type is a Cedar entity type name (possibly namespaced, `A::B`); the id is any string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityRef {
    type_name: String,
    id: String,
}

impl EntityRef {
    /// Builds a reference, checking that the type name is a valid Cedar type name.
    pub fn new(type_name: impl Into<String>, id: impl Into<String>) -> Result<Self, ModelError> {
        let type_name = type_name.into();
        if !is_type_name(&type_name) {
            return Err(ModelError::InvalidEntityRef(format!(
                "`{type_name}` is not a valid entity type name"
            )));
        }
        Ok(Self {
            type_name,
            id: id.into(),
        })
    }

    /// The entity type, e.g. `Space`.
    pub fn type_name(&self) -> &str {
        &self.type_name
    }

    /// The entity id, e.g. `household`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Converts to Cedar's entity uid.
    pub fn to_cedar(&self) -> Result<cedar_policy::EntityUid, ModelError> {
        let type_name = cedar_policy::EntityTypeName::from_str(&self.type_name)
            .map_err(|e| ModelError::InvalidEntityRef(e.to_string()))?;
        Ok(cedar_policy::EntityUid::from_type_name_and_id(
            type_name,
            cedar_policy::EntityId::new(&self.id),
        ))
    }
}

/// `Name` or `A::B::Name`, each part an identifier. Split at single colons (a search for
/// `::` costs more, and every request checks its resource's type): the parts in odd places
/// must be the empty ones between the two colons of a `::`.
fn is_type_name(s: &str) -> bool {
    let identifier = |part: &[u8]| {
        matches!(part.first(), Some(c) if c.is_ascii_alphabetic() || *c == b'_')
            && part.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
    };
    let mut parts = 0_usize;
    for (i, part) in s.as_bytes().split(|&b| b == b':').enumerate() {
        let fits = if i % 2 == 0 {
            identifier(part)
        } else {
            part.is_empty()
        };
        if !fits {
            return false;
        }
        parts += 1;
    }
    parts % 2 == 1
}

impl fmt::Display for EntityRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Most ids are printable ASCII that `escape_default` leaves alone: written whole,
        // since every decision writes its principal and resource.
        let plain = |b: u8| (0x20..0x7f).contains(&b) && !matches!(b, b'"' | b'\'' | b'\\');
        if self.id.bytes().all(plain) {
            f.write_str(&self.type_name)?;
            f.write_str("::\"")?;
            f.write_str(&self.id)?;
            f.write_str("\"")
        } else {
            write!(f, "{}::\"{}\"", self.type_name, self.id.escape_default())
        }
    }
}

impl FromStr for EntityRef {
    type Err = ModelError;

    /// Accepts `Type::"id"` (Cedar syntax, with escapes).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let uid = cedar_policy::EntityUid::from_str(s).map_err(|_| {
            ModelError::InvalidEntityRef(format!(
                "`{s}` is not an entity reference of the form `Type::\"id\"`"
            ))
        })?;
        Ok(Self {
            type_name: uid.type_name().to_string(),
            id: uid.id().unescaped().to_owned(),
        })
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for EntityRef {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "A Cedar entity reference, `Type::\"id\"`, e.g. `Space::\"household\"`.",
            ))
            .pattern(Some(
                r#"^[A-Za-z_][A-Za-z0-9_]*(::[A-Za-z_][A-Za-z0-9_]*)*::".*"$"#,
            ))
            .examples([serde_json::json!("User::\"alice\"")])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for EntityRef {}

impl Serialize for EntityRef {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EntityRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What kind of principal an identity is. Users and services make requests; groups hold
/// members and receive assignments that their members inherit.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A person.
    User,
    /// A machine identity (client-credentials tokens).
    Service,
    /// A set of principals; its assignments apply to its members.
    Group,
}

impl PrincipalKind {
    /// The Cedar entity type of this kind.
    pub fn cedar_type(self) -> &'static str {
        match self {
            Self::User => "User",
            Self::Service => "Service",
            Self::Group => "Group",
        }
    }

    /// The kind whose Cedar entity type is `type_name`.
    pub fn from_cedar_type(type_name: &str) -> Option<Self> {
        match type_name {
            "User" => Some(Self::User),
            "Service" => Some(Self::Service),
            "Group" => Some(Self::Group),
            _ => None,
        }
    }
}

/// Account status. Anything but `Active` is refused by the default policies.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalStatus {
    /// May act.
    #[default]
    Active,
    /// Created, e-mail not verified yet.
    PendingVerification,
    /// Deactivated (seed 001 `user.deactivated`).
    Inactive,
    /// Locked by an administrator or by security automation.
    Suspended,
    /// Soft-deleted.
    Deleted,
}

impl PrincipalStatus {
    /// The string used in Cedar (`principal.status`) and in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::PendingVerification => "pending_verification",
            Self::Inactive => "inactive",
            Self::Suspended => "suspended",
            Self::Deleted => "deleted",
        }
    }
}

impl FromStr for PrincipalStatus {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(Self::Active),
            "pending_verification" => Ok(Self::PendingVerification),
            "inactive" => Ok(Self::Inactive),
            "suspended" => Ok(Self::Suspended),
            "deleted" => Ok(Self::Deleted),
            other => Err(ModelError::Invalid(format!("unknown status `{other}`"))),
        }
    }
}

/// Attributes of a principal that policies may read (seed 002's user model), and the
/// attributes the Cedar schema declares beyond them (`custom`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PrincipalAttributes {
    /// Department name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub department: Option<String>,
    /// Job title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_title: Option<String>,
    /// Clearance level, compared with a resource's `classification` (0 = public).
    #[serde(default)]
    pub clearance: i64,
    /// The principal's direct manager (a user id), for reports-to and org-tree rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
    /// When the principal gave GDPR consent, if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gdpr_consent_at: Option<UnixMillis>,
    /// Every other attribute, by name: each must be declared for the principal's entity
    /// type in the Cedar schema (checked on write), and reaches policies typed by it.
    #[serde(flatten)]
    pub custom: BTreeMap<String, serde_json::Value>,
}

/// A user, service or group.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Principal {
    /// User, service or group.
    pub kind: PrincipalKind,
    /// The id (the token subject for users and services).
    pub id: String,
    /// Account status.
    #[serde(default)]
    pub status: PrincipalStatus,
    /// The tenant the principal belongs to; `None` for platform-level principals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Groups the principal is a member of (group ids).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Attributes for ABAC rules.
    #[serde(default)]
    pub attributes: PrincipalAttributes,
    /// Device ids the principal trusts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_devices: Vec<String>,
}

impl Principal {
    /// The principal as a Cedar entity reference (`User::"alice"`).
    pub fn entity_ref(&self) -> EntityRef {
        principal_ref(self.kind, &self.id)
    }
}

/// `User::"id"`, `Service::"id"` or `Group::"id"`.
pub fn principal_ref(kind: PrincipalKind, id: &str) -> EntityRef {
    EntityRef {
        type_name: kind.cedar_type().to_owned(),
        id: id.to_owned(),
    }
}

/// A revoked session (`sid`) or token id (`jti`); refused until it would have expired anyway.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokedSession {
    /// The `sid` or `jti` claim value.
    pub session_id: String,
    /// The principal the session belongs to: only its tokens are refused. `None` refuses
    /// the session id in every principal's tokens (for sources that know only the id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<EntityRef>,
    /// After this instant the record can be forgotten (the token has expired by then).
    pub expires_at: UnixMillis,
    /// Set when every session of `principal` was revoked at once: each of its tokens issued
    /// (`iat`) before this instant is refused, and so is each of its tokens without `iat`.
    /// `session_id` is then [`RevokedSession::all_sessions_key`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_before: Option<UnixMillis>,
}

impl RevokedSession {
    /// The record key of "every session of `principal`": one per principal, so revoking
    /// again moves the cutoff instead of adding a record.
    pub fn all_sessions_key(principal: &EntityRef) -> String {
        format!("all-sessions-of:{principal}")
    }

    /// The key the record is stored under. A session revoked for a principal is that
    /// principal's alone: another principal's revocation of the same `sid` is another
    /// record, and neither touches the other's tokens.
    pub fn record_key(&self) -> String {
        match (&self.principal, self.issued_before) {
            (Some(principal), None) => format!("{principal}#{}", self.session_id),
            _ => self.session_id.clone(),
        }
    }
}

/// A role: a name, the actions it grants, and the resource types it governs.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    /// Unique name; the generated policy is `role:<name>` and the Cedar entity `Role::"<name>"`.
    pub name: String,
    /// Human description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Cedar action ids (or action groups) the role grants, e.g. `document.read` or `READ`.
    pub actions: Vec<String>,
    /// Entity types the role governs; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scope_types: Vec<String>,
}

/// Where an assignment applies: everywhere, or on one entity and everything below it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Every resource.
    Global,
    /// This entity and its descendants (`Tenant::"t1"`, `Space::"household"`, ...).
    Entity(EntityRef),
}

impl Scope {
    /// `None` for global, the scope entity otherwise.
    pub fn entity(&self) -> Option<&EntityRef> {
        match self {
            Self::Global => None,
            Self::Entity(e) => Some(e),
        }
    }
}

/// Conditions under which an assignment is in force (seed 000's `conditions`/`restrictions`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignmentConditions {
    /// Not in force before this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_from: Option<UnixMillis>,
    /// Not in force from this instant on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<UnixMillis>,
    /// Only in force when the request was authenticated with MFA.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_mfa: bool,
    /// Only in force on routes of these security bands (`GREEN`, `AMBER`, `RED`); empty = any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_bands: Vec<String>,
    /// Only in force from a device the principal trusts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_trusted_device: bool,
}

/// A role granted to a principal within a scope.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    /// Unique id (seed 000 uses ULIDs).
    pub id: String,
    /// Who receives the role: `User::"alice"`, `Group::"ops"`, `Service::"billing"`.
    pub principal: EntityRef,
    /// The role name.
    pub role: String,
    /// Where it applies.
    pub scope: Scope,
    /// When it is in force.
    #[serde(default)]
    pub conditions: AssignmentConditions,
    /// Who granted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_by: Option<String>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Resource attributes that the default policies read, and the attributes the Cedar schema
/// declares beyond them (`custom`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EntityAttributes {
    /// Data classification (0 = public .. 4 = top secret), compared with clearance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classification: Option<i64>,
    /// The tenant that owns the resource, for tenant isolation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The owning user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Archived (seed 004 `entity.archived`): the entity and its descendants are denied.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub archived: bool,
    /// Free-form kind label (seed 004: issuer, spv, offering, investor, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Every other attribute, by name: each must be declared for the entity's type in the
    /// Cedar schema (checked on write), and reaches policies typed by it.
    #[serde(flatten)]
    pub custom: BTreeMap<String, serde_json::Value>,
}

/// A resource entity in the tree (tenant → space → document, or seed 004's entities).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntityRecord {
    /// `Type::"id"`.
    pub uid: EntityRef,
    /// Direct parents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<EntityRef>,
    /// Attributes.
    #[serde(default)]
    pub attributes: EntityAttributes,
}

/// One version of the hand-written policies and schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PolicySetVersion {
    /// Monotonic version number, starting at 1.
    pub version: i64,
    /// Policy files: name → Cedar text.
    pub files: Vec<PolicyFile>,
    /// Cedar schema (human syntax).
    pub schema: String,
    /// Who stored it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// When.
    pub created_at: UnixMillis,
}

/// One entry of the policy-set history: a version without its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolicySetSummary {
    /// The version number.
    pub version: i64,
    /// Who stored it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// When.
    pub created_at: UnixMillis,
}

/// What checking a policy set found, when it compiles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolicySetCheck {
    /// Policies in force with it, generated role policies and template links included.
    pub policies: usize,
    /// Validator warnings (not fatal), as `file:line:col: message`.
    pub warnings: Vec<String>,
}

/// A named Cedar source file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// File name, used in error messages (`default.cedar`).
    pub name: String,
    /// Cedar policy text.
    pub text: String,
}

/// The store-wide revision: bumped by every mutation.
pub type Revision = i64;

/// What a change touched, so followers can patch instead of reloading everything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChangeKind {
    /// A principal was created, updated or deleted.
    Principal {
        /// The principal.
        principal: EntityRef,
    },
    /// A role was created, updated or deleted.
    Role {
        /// The role name.
        role: String,
    },
    /// An assignment was created or deleted.
    Assignment {
        /// The assignment id.
        id: String,
        /// Its principal.
        principal: EntityRef,
    },
    /// An entity was created, updated or deleted.
    Entity {
        /// The entity.
        uid: EntityRef,
    },
    /// A session was revoked.
    Session {
        /// The session id.
        session_id: String,
    },
    /// A new policy-set version became current.
    PolicySet {
        /// Its version.
        version: i64,
    },
    /// A template link was created or deleted.
    TemplateLink {
        /// The link id.
        id: String,
    },
    /// Many objects changed at once (an import): followers rebuild from the full state.
    Bulk,
}

impl ChangeKind {
    /// The kind's name as stored (`principal`, `role`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Principal { .. } => "principal",
            Self::Role { .. } => "role",
            Self::Assignment { .. } => "assignment",
            Self::Entity { .. } => "entity",
            Self::Session { .. } => "session",
            Self::PolicySet { .. } => "policy_set",
            Self::TemplateLink { .. } => "template_link",
            Self::Bulk => "bulk",
        }
    }
}

/// A change entry: what one committed mutation touched, at which revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The revision this mutation produced.
    pub revision: Revision,
    /// What it touched.
    #[serde(flatten)]
    pub kind: ChangeKind,
    /// When it was committed.
    pub at: UnixMillis,
}

/// A link of a Cedar policy template (`permit(principal == ?principal, ...)`) to concrete
/// entities: how per-principal or per-resource grants are expressed without one hand-written
/// policy each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateLink {
    /// The id of the linked policy.
    pub id: String,
    /// The template's `@id`.
    pub template: String,
    /// Value for `?principal`, if the template has that slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<EntityRef>,
    /// Value for `?resource`, if the template has that slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<EntityRef>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_are_identifiers_joined_by_double_colons() {
        // The definition, written plainly.
        let reference = |s: &str| {
            !s.is_empty()
                && s.split("::").all(|part| {
                    let mut chars = part.chars();
                    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
                        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
                })
        };
        let mut names = vec![String::new()];
        // Every string of up to five characters over an alphabet that covers each case.
        let alphabet = ['A', 'z', '_', '1', ':', ' ', 'é', '-'];
        let mut frontier = vec![String::new()];
        for _ in 0..5 {
            let mut next = Vec::new();
            for name in &frontier {
                for c in alphabet {
                    next.push(format!("{name}{c}"));
                }
            }
            names.extend(next.iter().cloned());
            frontier = next;
        }
        names.extend(
            [
                "Space",
                "A::B::Name",
                "_x::y1",
                "A:::B",
                "::A",
                "A::",
                "Ab::C d",
            ]
            .map(String::from),
        );
        for name in &names {
            assert_eq!(is_type_name(name), reference(name), "{name:?}");
        }
    }

    #[test]
    fn entity_refs_print_their_id_as_escape_default_does() {
        let every_ascii: String = (0u8..0x80).map(char::from).collect();
        for id in [
            "alice",
            "a b",
            "it's",
            "say \"hi\"",
            "a\\b",
            "é",
            "✓ ok",
            "",
            &every_ascii,
        ] {
            let entity = EntityRef::new("User", id).unwrap();
            assert_eq!(
                entity.to_string(),
                format!("User::\"{}\"", id.escape_default()),
                "{id:?}"
            );
        }
        for byte in 0u8..0x80 {
            let id = format!("x{}y", char::from(byte));
            let entity = EntityRef::new("Doc", id.as_str()).unwrap();
            assert_eq!(
                entity.to_string(),
                format!("Doc::\"{}\"", id.escape_default())
            );
        }
    }
}
