//! Principals from token claims (`unknown_principals: from_claims`, per issuer): a verified
//! token whose subject the store does not hold becomes a principal for its requests, its
//! tenant, groups, roles and attributes read from the claims by JSON pointers
//! (`claim_mapping`).
//!
//! - Built once per verified token (it is cached with the token) and prepared against a
//!   snapshot once per revision, so a request pays for neither.
//! - The store wins: a stored principal (whatever its status) is decided as stored, and the
//!   claims are read only when the store has none. A deleted principal's tokens issued
//!   before the deletion are revoked by the store, so they cannot bring it back.
//! - Claim-mapped roles are assignments with ids `claim:<role>`, global or scoped to the
//!   claimed tenant; the decision names the roles held only through claims.
//! - A claim that is missing or of the wrong type maps to nothing (no tenant, no role, no
//!   group, clearance 0): less access, never more. Values that cannot name a Cedar entity
//!   are left out the same way.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use portcullis_engine::snapshot::{PrincipalView, Snapshot};
use portcullis_model::{
    Assignment, AssignmentConditions, EntityRef, Principal, PrincipalAttributes, PrincipalKind,
    PrincipalStatus, Revision, Scope,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// What a verified token whose subject is not in the store gets (`unknown_principals`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownPrincipals {
    /// 403 `unknown_principal`.
    #[default]
    Deny,
    /// A principal built from the token's claims (`claim_mapping`).
    FromClaims,
}

/// Where a principal's parts are found in its token (`claim_mapping`): each a JSON pointer
/// into the claims (`/org/id`, `/realm_access/roles`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimMapping {
    /// The tenant (a string, or a number taken as text).
    pub tenant: Option<String>,
    /// Group ids (a string or an array of strings each); only groups the store holds count.
    pub groups: Vec<String>,
    /// Role names, each pointer with the scope its roles get.
    pub roles: Vec<RoleClaim>,
    /// Attributes policies read.
    pub attributes: AttributeClaims,
}

/// Roles found at `pointer` (a string or an array of strings), in force at `scope`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleClaim {
    /// A JSON pointer into the claims.
    pub pointer: String,
    /// Where the roles apply.
    pub scope: RoleClaimScope,
}

/// Where claim-mapped roles apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoleClaimScope {
    /// Everywhere.
    Global,
    /// In the principal's claimed tenant and below (nowhere without one).
    Tenant,
}

/// Pointers to the principal attributes policies read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AttributeClaims {
    /// `department` (text).
    pub department: Option<String>,
    /// `job_title` (text).
    pub job_title: Option<String>,
    /// `clearance` (an integer, or an integer as text).
    pub clearance: Option<String>,
    /// `manager`: a user id (text).
    pub manager: Option<String>,
    /// Attributes the schema declares beyond those: the claim's value as it is, typed by
    /// the schema when decided (one not of the declared type is left out).
    #[serde(flatten)]
    pub custom: std::collections::BTreeMap<String, String>,
}

impl ClaimMapping {
    /// Whether nothing is mapped.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Problems of the mapping configured at `at`, as `(key, message)`.
    pub fn problems(&self, at: &str) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let a = &self.attributes;
        let pointers = self
            .tenant
            .iter()
            .map(|p| (String::from("tenant"), p))
            .chain(
                self.groups
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (format!("groups[{i}]"), p)),
            )
            .chain(
                self.roles
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (format!("roles[{i}].pointer"), &r.pointer)),
            )
            .chain(
                [
                    ("department", &a.department),
                    ("job_title", &a.job_title),
                    ("clearance", &a.clearance),
                    ("manager", &a.manager),
                ]
                .into_iter()
                .filter_map(|(name, p)| p.as_ref().map(|p| (format!("attributes.{name}"), p))),
            )
            .chain(
                a.custom
                    .iter()
                    .map(|(name, p)| (format!("attributes.{name}"), p)),
            );
        for (key, pointer) in pointers {
            if !pointer.starts_with('/') {
                problems.push((
                    format!("{at}.{key}"),
                    format!("`{pointer}` is not a JSON pointer (one starts with `/`: `/org/id`)"),
                ));
            }
        }
        if self.tenant.is_none()
            && let Some(i) = self
                .roles
                .iter()
                .position(|r| r.scope == RoleClaimScope::Tenant)
        {
            problems.push((
                format!("{at}.roles[{i}].scope"),
                String::from("`tenant` needs `tenant` mapped: the roles would apply nowhere"),
            ));
        }
        problems
    }

    /// The principal `principal` of kind `kind` as `claims` describe it.
    pub fn principal(
        &self,
        principal: &EntityRef,
        kind: PrincipalKind,
        claims: &Map<String, Value>,
    ) -> FromClaims {
        let text = |pointer: &Option<String>| {
            pointer
                .as_deref()
                .and_then(|p| at(claims, p))
                .and_then(|v| match v {
                    Value::String(s) if !s.is_empty() => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
        };
        let tenant = text(&self.tenant).filter(|t| EntityRef::new("Tenant", t.as_str()).is_ok());
        let mut groups: Vec<String> = self
            .groups
            .iter()
            .flat_map(|p| strings(at(claims, p)))
            .collect();
        groups.sort_unstable();
        groups.dedup();
        let a = &self.attributes;
        let record = Principal {
            kind,
            id: principal.id().to_owned(),
            status: PrincipalStatus::Active,
            tenant: tenant.clone(),
            groups,
            attributes: PrincipalAttributes {
                department: text(&a.department),
                job_title: text(&a.job_title),
                clearance: a
                    .clearance
                    .as_deref()
                    .and_then(|p| at(claims, p))
                    .and_then(|v| match v {
                        Value::Number(n) => n.as_i64(),
                        Value::String(s) => s.trim().parse().ok(),
                        _ => None,
                    })
                    .unwrap_or(0),
                manager: text(&a.manager),
                gdpr_consent_at: None,
                custom: a
                    .custom
                    .iter()
                    .filter_map(|(name, pointer)| {
                        Some((name.clone(), at(claims, pointer)?.clone()))
                    })
                    .collect(),
            },
            trusted_devices: Vec::new(),
        };
        let mut assignments: Vec<Assignment> = Vec::new();
        for claim in &self.roles {
            let scope = match (claim.scope, &tenant) {
                (RoleClaimScope::Global, _) => Scope::Global,
                (RoleClaimScope::Tenant, Some(t)) => match EntityRef::new("Tenant", t.as_str()) {
                    Ok(tenant) => Scope::Entity(tenant),
                    Err(_) => continue,
                },
                (RoleClaimScope::Tenant, None) => continue,
            };
            for role in strings(at(claims, &claim.pointer)) {
                if EntityRef::new("Role", role.as_str()).is_err()
                    || assignments
                        .iter()
                        .any(|a| a.role == role && a.scope == scope)
                {
                    continue;
                }
                assignments.push(Assignment {
                    id: format!("claim:{role}"),
                    principal: principal.clone(),
                    role,
                    scope: scope.clone(),
                    conditions: AssignmentConditions::default(),
                    assigned_by: None,
                    reason: Some(String::from("token claim")),
                });
            }
        }
        assignments.sort_by(|x, y| (&x.role, x.scope.entity()).cmp(&(&y.role, y.scope.entity())));
        let mut digest = Sha256::new();
        // Serialising model structs cannot fail; an empty digest part would only split
        // cache entries, never join two.
        digest.update(serde_json::to_vec(&record).unwrap_or_default());
        digest.update(serde_json::to_vec(&assignments).unwrap_or_default());
        FromClaims {
            record,
            assignments,
            digest: digest.finalize().into(),
            prepared: ArcSwapOption::empty(),
        }
    }
}

/// The value at JSON pointer `pointer` (`/org/id`) in `claims`.
pub fn at<'c>(claims: &'c Map<String, Value>, pointer: &str) -> Option<&'c Value> {
    let rest = pointer.strip_prefix('/')?;
    let (first, rest) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let first = first.replace("~1", "/").replace("~0", "~");
    claims.get(&first)?.pointer(rest)
}

/// A string as one, an array's strings (others skipped), anything else as none.
fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// A principal as its token's claims describe it.
pub struct FromClaims {
    record: Principal,
    assignments: Vec<Assignment>,
    digest: [u8; 32],
    /// The view prepared against the last snapshot it was asked for.
    prepared: ArcSwapOption<Prepared>,
}

struct Prepared {
    revision: Revision,
    policy_version: i64,
    view: Arc<PrincipalView>,
}

impl FromClaims {
    /// The principal record.
    pub fn record(&self) -> &Principal {
        &self.record
    }

    /// Its claim-mapped roles, as assignments.
    pub fn assignments(&self) -> &[Assignment] {
        &self.assignments
    }

    /// A digest of the record and the assignments.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// The view prepared against `snapshot` (once per revision and policy set).
    pub fn view(&self, snapshot: &Snapshot) -> Arc<PrincipalView> {
        if let Some(prepared) = self.prepared.load().as_ref()
            && prepared.revision == snapshot.revision()
            && prepared.policy_version == snapshot.policy_version()
        {
            return Arc::clone(&prepared.view);
        }
        let view = Arc::new(snapshot.principal_view(self.record.clone(), self.assignments.clone()));
        self.prepared.store(Some(Arc::new(Prepared {
            revision: snapshot.revision(),
            policy_version: snapshot.policy_version(),
            view: Arc::clone(&view),
        })));
        view
    }
}

impl std::fmt::Debug for FromClaims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FromClaims")
            .field("record", &self.record)
            .field("assignments", &self.assignments)
            .finish_non_exhaustive()
    }
}

impl PartialEq for FromClaims {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}

impl Eq for FromClaims {}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn mapping() -> ClaimMapping {
        serde_saphyr::from_str(
            "tenant: /org/id\n\
             groups: [/groups]\n\
             roles:\n\
             \x20 - {pointer: /realm_access/roles, scope: global}\n\
             \x20 - {pointer: /org/roles, scope: tenant}\n\
             attributes: {department: /dept, clearance: /clearance, manager: /boss, cost_center: /cc}\n",
        )
        .unwrap()
    }

    fn claims(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("claims are an object"),
        }
    }

    #[test]
    fn claims_map_to_a_tenant_groups_scoped_roles_and_attributes() {
        let zoe = EntityRef::new("User", "zoe").unwrap();
        let claimed = mapping().principal(
            &zoe,
            PrincipalKind::User,
            &claims(json!({
                "org": {"id": 42, "roles": ["editor", "editor"]},
                "groups": ["eng", "", 7],
                "realm_access": {"roles": ["viewer", "offline_access"]},
                "dept": "R&D",
                "clearance": "3",
                "boss": "bob",
                "cc": "4711",
            })),
        );
        let record = claimed.record();
        assert_eq!(record.tenant.as_deref(), Some("42"));
        assert_eq!(record.groups, ["eng"]);
        assert_eq!(record.status, PrincipalStatus::Active);
        assert_eq!(record.attributes.department.as_deref(), Some("R&D"));
        assert_eq!(record.attributes.clearance, 3);
        assert_eq!(record.attributes.manager.as_deref(), Some("bob"));
        assert_eq!(
            record.attributes.custom.get("cost_center"),
            Some(&json!("4711"))
        );
        let roles: Vec<(String, Option<String>)> = claimed
            .assignments()
            .iter()
            .map(|a| (a.id.clone(), a.scope.entity().map(ToString::to_string)))
            .collect();
        assert_eq!(
            roles,
            [
                (
                    String::from("claim:editor"),
                    Some(String::from("Tenant::\"42\""))
                ),
                (String::from("claim:offline_access"), None),
                (String::from("claim:viewer"), None),
            ]
        );
    }

    #[test]
    fn missing_or_mistyped_claims_map_to_nothing() {
        let zoe = EntityRef::new("User", "zoe").unwrap();
        let claimed = mapping().principal(
            &zoe,
            PrincipalKind::User,
            &claims(json!({
                "org": {"roles": ["editor"]},
                "groups": {"not": "a list"},
                "realm_access": {"roles": "admin"},
                "clearance": {"high": true},
            })),
        );
        // No tenant: the tenant-scoped role applies nowhere and is left out.
        assert_eq!(claimed.record().tenant, None);
        assert!(claimed.record().groups.is_empty());
        assert_eq!(claimed.record().attributes.clearance, 0);
        let roles: Vec<&str> = claimed
            .assignments()
            .iter()
            .map(|a| a.role.as_str())
            .collect();
        assert_eq!(roles, ["admin"]);
    }

    #[test]
    fn different_claims_have_different_digests_and_the_same_ones_the_same() {
        let zoe = EntityRef::new("User", "zoe").unwrap();
        let of = |value| {
            *mapping()
                .principal(&zoe, PrincipalKind::User, &claims(value))
                .digest()
        };
        let base = of(json!({"org": {"id": "t1"}, "clearance": 1}));
        assert_eq!(base, of(json!({"clearance": 1, "org": {"id": "t1"}})));
        assert_ne!(base, of(json!({"org": {"id": "t1"}, "clearance": 2})));
        assert_ne!(base, of(json!({"org": {"id": "t2"}, "clearance": 1})));
    }

    #[test]
    fn a_mapping_names_each_bad_pointer_and_a_tenant_scope_without_a_tenant() {
        let bad: ClaimMapping = serde_saphyr::from_str(
            "groups: [groups]\nroles: [{pointer: /roles, scope: tenant}]\nattributes: {clearance: level}\n",
        )
        .unwrap();
        let keys: Vec<String> = bad
            .problems("auth.claim_mapping")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            keys,
            [
                "auth.claim_mapping.groups[0]",
                "auth.claim_mapping.attributes.clearance",
                "auth.claim_mapping.roles[0].scope",
            ]
        );
        assert!(mapping().problems("auth.claim_mapping").is_empty());
    }
}
