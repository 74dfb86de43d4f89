//! The benchmarks' population (`heavy-seed`, `fleet`): `users` users `u0`… of tenant
//! `household`, and `assignments` assignments spread evenly over them, each `member` (two in
//! three) or `guest` on one of [`SPACES`] spaces: user `u{i}` holds `s{i * per_user % SPACES}`
//! first ([`own_space`]). With documents ([`entities`]), the spaces are stored too and
//! document `d{k}` lies in space `s{k % SPACES}`; each user reads one of its own space's
//! ([`own_document`]).

use portcullis_model::{
    Assignment, AssignmentConditions, EntityAttributes, EntityRecord, EntityRef, Principal,
    PrincipalAttributes, PrincipalKind, PrincipalStatus, Scope,
};
use portcullis_store::Import;

/// Spaces the assignments spread over.
pub const SPACES: usize = 50_000;

/// Assignments per user.
pub fn per_user(users: usize, assignments: usize) -> usize {
    (assignments / users.max(1)).max(1)
}

/// The space user `u{user}`'s first assignment is on.
pub fn own_space(user: usize, per_user: usize) -> usize {
    (user * per_user) % SPACES
}

/// The document user `u{user}` reads in its own space, with `documents` stored (`None`:
/// too few for one in every space).
pub fn own_document(user: usize, per_user: usize, documents: usize) -> Option<usize> {
    let per_space = documents / SPACES;
    (per_space > 0).then(|| own_space(user, per_user) + (user % per_space) * SPACES)
}

/// The stored spaces and `documents` documents (none: no entities at all).
pub fn entities(documents: usize) -> Result<Vec<EntityRecord>, String> {
    if documents == 0 {
        return Ok(Vec::new());
    }
    let entity = |t: &str, id: String| EntityRef::new(t, &id).map_err(|e| e.to_string());
    let in_household = EntityAttributes {
        tenant: Some(String::from("household")),
        ..EntityAttributes::default()
    };
    let spaces = (0..SPACES).map(|i| {
        Ok(EntityRecord {
            uid: entity("Space", format!("s{i}"))?,
            parents: Vec::new(),
            attributes: in_household.clone(),
        })
    });
    let documents = (0..documents).map(|k| {
        Ok(EntityRecord {
            uid: entity("Document", format!("d{k}"))?,
            parents: vec![entity("Space", format!("s{}", k % SPACES))?],
            attributes: EntityAttributes::default(),
        })
    });
    spaces.chain(documents).collect()
}

/// The import, its assignments named `{tag}-{n}` and assigned by `tag`.
pub fn import(users: usize, assignments: usize, tag: &str) -> Result<Import, String> {
    let entity = |t: &str, id: String| EntityRef::new(t, &id).map_err(|e| e.to_string());
    let per_user = per_user(users, assignments);
    let assignments = (0..assignments)
        .map(|i| {
            Ok(Assignment {
                id: format!("{tag}-{i}"),
                principal: entity("User", format!("u{}", (i / per_user) % users.max(1)))?,
                role: String::from(if i % 3 == 0 { "guest" } else { "member" }),
                scope: Scope::Entity(entity("Space", format!("s{}", i % SPACES))?),
                conditions: AssignmentConditions::default(),
                assigned_by: Some(tag.to_owned()),
                reason: None,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Import {
        principals: (0..users)
            .map(|i| Principal {
                kind: PrincipalKind::User,
                id: format!("u{i}"),
                status: PrincipalStatus::default(),
                tenant: Some(String::from("household")),
                groups: Vec::new(),
                attributes: PrincipalAttributes::default(),
                trusted_devices: Vec::new(),
            })
            .collect(),
        assignments,
        author: Some(tag.to_owned()),
        ..Import::default()
    })
}
