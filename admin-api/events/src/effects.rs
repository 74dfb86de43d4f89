//! What each event type changes: the same changes the admin API would make, as store
//! [`Op`]s, with the principals and entities they touch (for ordering). Types that are
//! known but change nothing here (`invitation.*`, `user.profile_updated`) are
//! acknowledged; anything else is refused, with the reason, for the dead letters.

use portcullis_model::{
    Assignment, AssignmentConditions, EntityRef, Principal, PrincipalAttributes, PrincipalKind,
    PrincipalStatus, RevokedSession, Role, Scope, UnixMillis, principal_ref,
};
use portcullis_store::Op;
use serde_json::{Map, Value};

use crate::envelope::{Envelope, parse_time};

/// How long a session revoked by an event stays refused when the event does not say
/// (`data.expiresAt`): longer than any access token lives.
pub const SESSION_REVOCATION_TTL_MS: UnixMillis = 30 * 24 * 3600 * 1000;

/// The event types [`effect`] reads by name; with `invitation.*` (any invitation type)
/// they are every type it does not refuse. Metrics label events by these (the rest as
/// `other`), so the label set stays bounded whatever producers send.
pub const KNOWN_TYPES: [&str; 14] = [
    "USER_CREATED",
    "USER_ROLE_ASSIGNED",
    "USER_SPACE_ACCESS_GRANTED",
    "USER_STATUS_CHANGED",
    "user.deactivated",
    "user.reactivated",
    "user.deleted",
    "user.session_revoked",
    "user.profile_updated",
    "tenant.member_joined",
    "tenant.member_role_changed",
    "tenant.member_removed",
    "team.members_added",
    "entity.archived",
];

/// The label of `event_type` in metrics: itself when known, `invitation.*` for any
/// invitation, `other` for the rest and for messages whose type could not be read.
pub fn type_label(event_type: Option<&str>) -> &'static str {
    match event_type {
        Some(t) if t.starts_with("invitation.") => "invitation.*",
        Some(t) => KNOWN_TYPES
            .iter()
            .find(|known| **known == t)
            .copied()
            .unwrap_or("other"),
        None => "other",
    }
}

/// What an event asks of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effect {
    /// The changes, made together or not at all; none: acknowledged only.
    pub ops: Vec<Op>,
    /// The principals and entities whose state they overwrite (`User::"u1"`): an older
    /// event about one of them that arrives later is stale. Empty for effects that only add
    /// (a revoked session, a group joined, an archive): those apply whenever they arrive,
    /// and make no other event stale.
    pub subjects: Vec<String>,
}

impl Effect {
    fn none() -> Self {
        Self {
            ops: Vec::new(),
            subjects: Vec::new(),
        }
    }
}

/// The effect of `event`, given the roles the store holds (space grants name permissions,
/// which must be exactly what one role grants); `Err` is the reason it cannot be applied.
pub fn effect(event: &Envelope, roles: &[Role]) -> Result<Effect, String> {
    let d = Data {
        event,
        map: &event.data,
    };
    match event.event_type.as_str() {
        "USER_CREATED" => user_created(&d, roles),
        "USER_ROLE_ASSIGNED" => role_assigned(&d),
        "USER_SPACE_ACCESS_GRANTED" => space_access_granted(&d, roles),
        "USER_STATUS_CHANGED" => {
            let user = d.user("user_id")?;
            let status = d.status("new_status")?;
            Ok(set_status(user, status))
        }
        "user.deactivated" => Ok(set_status(d.subject_user()?, PrincipalStatus::Inactive)),
        "user.reactivated" => Ok(set_status(d.subject_user()?, PrincipalStatus::Active)),
        "user.deleted" => {
            let user = d.subject_user()?;
            Ok(Effect {
                subjects: vec![user.to_string()],
                ops: vec![Op::DeletePrincipal(user)],
            })
        }
        "user.session_revoked" => session_revoked(&d),
        "tenant.member_joined" => tenant_member(&d, "roleName", true),
        "tenant.member_role_changed" => tenant_member(&d, "newRoleName", false),
        "tenant.member_removed" => {
            let (user, tenant) = (d.subject_user()?, d.tenant()?);
            Ok(Effect {
                subjects: vec![user.to_string()],
                ops: vec![Op::DeleteAssignments {
                    principal: user,
                    scope: Some(Scope::Entity(entity("Tenant", &tenant)?)),
                }],
            })
        }
        "team.members_added" => team_members_added(&d),
        "entity.archived" => {
            let id = d.string("entity_id")?;
            Ok(Effect {
                subjects: Vec::new(),
                ops: vec![Op::Archive(entity("Entity", &id)?)],
            })
        }
        t if t.starts_with("invitation.") || t == "user.profile_updated" => Ok(Effect::none()),
        other => Err(format!("unknown event type `{other}`")),
    }
}

/// The event's data, read with errors that name the field.
struct Data<'a> {
    event: &'a Envelope,
    map: &'a Map<String, Value>,
}

impl Data<'_> {
    fn field(&self, key: &str) -> String {
        format!("{}: `{key}`", self.event.event_type)
    }

    fn string(&self, key: &str) -> Result<String, String> {
        match self.map.get(key) {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
            Some(_) => Err(format!("{} is not a non-empty string", self.field(key))),
            None => Err(format!("{} is missing", self.field(key))),
        }
    }

    fn optional_string(&self, key: &str) -> Result<Option<String>, String> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.string(key).map(Some),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, String> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| format!("{} holds a non-string", self.field(key)))
                })
                .collect(),
            Some(_) => Err(format!("{} is not an array", self.field(key))),
        }
    }

    fn bool(&self, key: &str) -> Result<bool, String> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(format!("{} is not a boolean", self.field(key))),
        }
    }

    fn time(&self, key: &str) -> Result<Option<UnixMillis>, String> {
        match self.optional_string(key)? {
            None => Ok(None),
            Some(t) => parse_time(&t)
                .map(Some)
                .ok_or_else(|| format!("{}: `{t}` is not an RFC 3339 time", self.field(key))),
        }
    }

    fn object(&self, key: &str) -> Result<Data<'_>, String> {
        static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(Data {
                event: self.event,
                map: &EMPTY,
            }),
            Some(Value::Object(map)) => Ok(Data {
                event: self.event,
                map,
            }),
            Some(_) => Err(format!("{} is not an object", self.field(key))),
        }
    }

    fn user(&self, key: &str) -> Result<EntityRef, String> {
        Ok(principal_ref(PrincipalKind::User, &self.string(key)?))
    }

    /// The user an event of seed 001 is about: `data.userId`, else the envelope's.
    fn subject_user(&self) -> Result<EntityRef, String> {
        match self.optional_string("userId")? {
            Some(id) => Ok(principal_ref(PrincipalKind::User, &id)),
            None => self
                .event
                .user
                .as_deref()
                .map(|id| principal_ref(PrincipalKind::User, id))
                .ok_or_else(|| format!("{} is missing", self.field("userId"))),
        }
    }

    /// The tenant of a seed 001 event: `data.tenantId`, else the envelope's.
    fn tenant(&self) -> Result<String, String> {
        match self.optional_string("tenantId")? {
            Some(t) => Ok(t),
            None => self
                .event
                .tenant
                .clone()
                .ok_or_else(|| format!("{} is missing", self.field("tenantId"))),
        }
    }

    fn status(&self, key: &str) -> Result<PrincipalStatus, String> {
        let text = self.string(key)?;
        let status: PrincipalStatus = text
            .parse()
            .map_err(|_| format!("{}: unknown status `{text}`", self.field(key)))?;
        if status == PrincipalStatus::Deleted {
            return Err(format!(
                "{}: `deleted` is not a status an event sets (send `user.deleted`)",
                self.field(key)
            ));
        }
        Ok(status)
    }
}

fn entity(type_name: &str, id: &str) -> Result<EntityRef, String> {
    EntityRef::new(type_name, id).map_err(|e| e.to_string())
}

fn set_status(user: EntityRef, status: PrincipalStatus) -> Effect {
    Effect {
        subjects: vec![user.to_string()],
        ops: vec![Op::SetStatus {
            principal: user,
            status,
        }],
    }
}

/// The bands a trust level may act on: `green` only GREEN routes, `amber` GREEN and AMBER,
/// `red` all three.
fn bands_up_to(level: &str) -> Result<Vec<String>, String> {
    let all = ["GREEN", "AMBER", "RED"];
    let n = match level.to_ascii_lowercase().as_str() {
        "green" => 1,
        "amber" => 2,
        "red" => 3,
        other => return Err(format!("unknown trust level `{other}`")),
    };
    Ok(all.iter().take(n).map(|b| (*b).to_owned()).collect())
}

/// `USER_CREATED`: the user, its initial global role and its space grants; `mfa_required`
/// and `trust_level` become conditions of those grants.
fn user_created(d: &Data<'_>, roles: &[Role]) -> Result<Effect, String> {
    let user = d.user("user_id")?;
    let status = match d.optional_string("status")? {
        Some(_) => d.status("status")?,
        None => PrincipalStatus::Active,
    };
    let security = d.object("security_settings")?;
    let mut conditions = AssignmentConditions {
        require_mfa: security.bool("mfa_required")?,
        ..AssignmentConditions::default()
    };
    if let Some(level) = security.optional_string("trust_level")? {
        conditions.allowed_bands =
            bands_up_to(&level).map_err(|e| format!("{}: {e}", security.field("trust_level")))?;
    }
    let principal = Principal {
        kind: PrincipalKind::User,
        id: user.id().to_owned(),
        status,
        tenant: d.optional_string("tenant_id")?,
        groups: Vec::new(),
        attributes: PrincipalAttributes::default(),
        trusted_devices: Vec::new(),
    };
    let mut ops = vec![Op::PutPrincipal(principal)];
    if let Some(role) = d.optional_string("initial_role")? {
        ops.push(Op::PutAssignment(Assignment {
            id: format!("{}:initial", d.event.id),
            principal: user.clone(),
            role,
            scope: Scope::Global,
            conditions: conditions.clone(),
            assigned_by: d.optional_string("created_by")?,
            reason: Some(String::from("USER_CREATED initial_role")),
        }));
    }
    match d.map.get("space_assignments") {
        None | Some(Value::Null) => {}
        Some(Value::Array(grants)) => {
            for (i, grant) in grants.iter().enumerate() {
                let Some(map) = grant.as_object() else {
                    return Err(format!(
                        "{} [{i}] is not an object",
                        d.field("space_assignments")
                    ));
                };
                let g = Data {
                    event: d.event,
                    map,
                };
                let space = entity("Space", &g.string("space_id")?)?;
                let role = role_for(&g, roles)?;
                ops.push(Op::PutAssignment(Assignment {
                    id: format!("{}:space:{i}", d.event.id),
                    principal: user.clone(),
                    role,
                    scope: Scope::Entity(space),
                    conditions: conditions.clone(),
                    assigned_by: d.optional_string("created_by")?,
                    reason: Some(String::from("USER_CREATED space_assignments")),
                }));
            }
        }
        Some(_) => return Err(format!("{} is not an array", d.field("space_assignments"))),
    }
    Ok(Effect {
        subjects: vec![user.to_string()],
        ops,
    })
}

/// The role a space grant names: `role_context` when given, which must grant exactly the
/// `permissions`; otherwise the one role that grants exactly them. Fails closed: a grant
/// that would give more (or other) than it says is refused.
fn role_for(g: &Data<'_>, roles: &[Role]) -> Result<String, String> {
    let mut wanted = g.strings("permissions")?;
    wanted.sort();
    wanted.dedup();
    if wanted.is_empty() {
        return Err(format!("{} is empty", g.field("permissions")));
    }
    let grants = |r: &Role| {
        let mut actions = r.actions.clone();
        actions.sort();
        actions.dedup();
        actions == wanted
    };
    match g.optional_string("role_context")? {
        Some(name) => {
            let role = roles
                .iter()
                .find(|r| r.name == name)
                .ok_or_else(|| format!("role `{name}` does not exist"))?;
            if grants(role) {
                Ok(name)
            } else {
                Err(format!(
                    "permissions {wanted:?} are not what role `{name}` grants ({:?})",
                    role.actions
                ))
            }
        }
        None => {
            let matching: Vec<&Role> = roles.iter().filter(|r| grants(r)).collect();
            match matching.as_slice() {
                [one] => Ok(one.name.clone()),
                [] => Err(format!("no role grants exactly the permissions {wanted:?}")),
                _ => Err(format!(
                    "several roles grant the permissions {wanted:?}: name one in `role_context`"
                )),
            }
        }
    }
}

fn validity(d: &Data<'_>) -> Result<AssignmentConditions, String> {
    Ok(AssignmentConditions {
        valid_from: d.time("valid_from")?,
        valid_until: d.time("valid_until")?,
        require_mfa: d.bool("require_mfa")?,
        ..AssignmentConditions::default()
    })
}

/// `USER_ROLE_ASSIGNED`: one assignment, global or on a space or a resource.
fn role_assigned(d: &Data<'_>) -> Result<Effect, String> {
    let user = d.user("user_id")?;
    let scope_data = d.object("scope")?;
    let scope = match scope_data
        .optional_string("type")?
        .as_deref()
        .unwrap_or("global")
    {
        "global" => Scope::Global,
        "space" => Scope::Entity(entity("Space", &scope_data.string("space_id")?)?),
        "resource" => {
            let id = scope_data.string("resource_id")?;
            // `Type::"id"` names any entity; a bare id is a document.
            Scope::Entity(match id.parse::<EntityRef>() {
                Ok(r) => r,
                Err(_) => entity("Document", &id)?,
            })
        }
        other => {
            return Err(format!(
                "{}: unknown scope `{other}`",
                scope_data.field("type")
            ));
        }
    };
    Ok(Effect {
        subjects: vec![user.to_string()],
        ops: vec![Op::PutAssignment(Assignment {
            id: d.string("assignment_id")?,
            principal: user,
            role: d.string("role_name")?,
            scope,
            conditions: validity(&d.object("conditions")?)?,
            assigned_by: d.optional_string("assigned_by")?,
            reason: d.optional_string("assignment_reason")?,
        })],
    })
}

/// `USER_SPACE_ACCESS_GRANTED`: the role that grants exactly the permissions, on the space,
/// under the restrictions (a validity window, allowed bands; device restrictions require a
/// trusted device, which is what Portcullis can check).
fn space_access_granted(d: &Data<'_>, roles: &[Role]) -> Result<Effect, String> {
    let user = d.user("user_id")?;
    let restrictions = d.object("restrictions")?;
    let mut conditions = validity(&restrictions)?;
    conditions.allowed_bands = restrictions
        .strings("allowed_bands")?
        .into_iter()
        .map(|b| b.to_ascii_uppercase())
        .collect();
    if let Some(bad) = conditions
        .allowed_bands
        .iter()
        .find(|b| !["GREEN", "AMBER", "RED"].contains(&b.as_str()))
    {
        return Err(format!(
            "{}: unknown band `{bad}`",
            restrictions.field("allowed_bands")
        ));
    }
    conditions.require_trusted_device = !restrictions.strings("device_restrictions")?.is_empty();
    Ok(Effect {
        subjects: vec![user.to_string()],
        ops: vec![Op::PutAssignment(Assignment {
            id: d.string("assignment_id")?,
            principal: user,
            role: role_for(d, roles)?,
            scope: Scope::Entity(entity("Space", &d.string("space_id")?)?),
            conditions,
            assigned_by: d.optional_string("assigned_by")?,
            reason: d.optional_string("assignment_reason")?,
        })],
    })
}

/// `user.session_revoked`: that session (`sessionId`, or each of `sessionIds`) refused for
/// the user, or with `allSessions` every token it was issued before the event.
fn session_revoked(d: &Data<'_>) -> Result<Effect, String> {
    let user = d.subject_user()?;
    let at = d.event.occurred_at;
    let expires_at = d
        .time("expiresAt")?
        .unwrap_or(at + SESSION_REVOCATION_TTL_MS);
    let mut ops = Vec::new();
    if d.bool("allSessions")? {
        ops.push(Op::RevokeSession(RevokedSession {
            session_id: RevokedSession::all_sessions_key(&user),
            principal: Some(user.clone()),
            expires_at,
            issued_before: Some(at),
        }));
    }
    let mut ids = d.strings("sessionIds")?;
    ids.extend(d.optional_string("sessionId")?);
    for id in ids {
        ops.push(Op::RevokeSession(RevokedSession {
            session_id: id,
            principal: Some(user.clone()),
            expires_at,
            issued_before: None,
        }));
    }
    if ops.is_empty() {
        return Err(format!(
            "{} names no session: give `sessionId`, `sessionIds` or `allSessions: true`",
            d.event.event_type
        ));
    }
    Ok(Effect {
        subjects: Vec::new(),
        ops,
    })
}

/// `tenant.member_joined` / `tenant.member_role_changed`: the member's role in the tenant
/// is `role_key`'s, replacing any it had there. A member who joins and is not known yet is
/// created in the tenant.
fn tenant_member(d: &Data<'_>, role_key: &str, joined: bool) -> Result<Effect, String> {
    let (user, tenant) = (d.subject_user()?, d.tenant()?);
    let scope = Scope::Entity(entity("Tenant", &tenant)?);
    let mut ops = Vec::new();
    if joined {
        // A principal the store holds already is kept as it is.
        ops.push(Op::EnsurePrincipal(Principal {
            kind: PrincipalKind::User,
            id: user.id().to_owned(),
            status: PrincipalStatus::Active,
            tenant: Some(tenant.clone()),
            groups: Vec::new(),
            attributes: PrincipalAttributes::default(),
            trusted_devices: Vec::new(),
        }));
    }
    ops.push(Op::DeleteAssignments {
        principal: user.clone(),
        scope: Some(scope.clone()),
    });
    ops.push(Op::PutAssignment(Assignment {
        id: format!("tenant-member:{tenant}:{}", user.id()),
        principal: user.clone(),
        role: d.string(role_key)?,
        scope,
        conditions: AssignmentConditions::default(),
        assigned_by: d.optional_string("changedBy")?,
        reason: Some(d.event.event_type.clone()),
    }));
    Ok(Effect {
        subjects: vec![user.to_string()],
        ops,
    })
}

/// `team.members_added`: each user (`userIds`, or `members[].userId`) joins group `teamId`.
fn team_members_added(d: &Data<'_>) -> Result<Effect, String> {
    let team = d.string("teamId")?;
    let mut users = d.strings("userIds")?;
    match d.map.get("members") {
        None | Some(Value::Null) => {}
        Some(Value::Array(members)) => {
            for m in members {
                let id = m.get("userId").and_then(Value::as_str).ok_or_else(|| {
                    format!("{} holds a member without `userId`", d.field("members"))
                })?;
                users.push(id.to_owned());
            }
        }
        Some(_) => return Err(format!("{} is not an array", d.field("members"))),
    }
    if users.is_empty() {
        return Err(format!("{} names no member", d.event.event_type));
    }
    let refs: Vec<EntityRef> = users
        .iter()
        .map(|u| principal_ref(PrincipalKind::User, u))
        .collect();
    Ok(Effect {
        subjects: Vec::new(),
        ops: refs
            .into_iter()
            .map(|principal| Op::JoinGroups {
                principal,
                groups: vec![team.clone()],
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Format;

    /// Every labelled type is one [`effect`] reads (it may still refuse its data), and
    /// only those and invitations are labelled as themselves.
    #[test]
    fn the_labelled_types_are_the_types_read() {
        for event_type in KNOWN_TYPES
            .iter()
            .copied()
            .chain(["invitation.created", "user.teleported"])
        {
            let event = Envelope {
                format: Format::Typed,
                id: String::from("e1"),
                event_type: event_type.to_owned(),
                producer: None,
                occurred_at: 0,
                tenant: None,
                user: None,
                data: Map::new(),
            };
            let unknown =
                effect(&event, &[]).is_err_and(|reason| reason.starts_with("unknown event type"));
            let label = type_label(Some(event_type));
            assert_eq!(unknown, label == "other", "{event_type}: labelled {label}");
        }
        assert_eq!(type_label(Some("invitation.expired")), "invitation.*");
        assert_eq!(type_label(None), "other");
    }
}
