//! The hot-path policy index: for each concrete action, the policies that can apply to it,
//! split into those that name no principal (`shared`) and those whose principal scope names
//! one entity (`principal == X`, `principal in X`), keyed by that entity.
//!
//! A decision evaluates `shared` plus the sets keyed by the principal and by each of its
//! ancestors (roles, groups) — never the whole policy set — so its cost does not grow with
//! the number of policies that belong to other actions or other principals.
//!
//! INVARIANT: for every request, the union of the sets the decision core evaluates contains
//! every policy of the full set whose scope can match that request. Filtering here is only
//! ever a superset of Cedar's own scope check, so splitting cannot change a decision.

use std::collections::{HashMap, HashSet};

use cedar_policy::{
    ActionConstraint, Entities, EntityUid, Policy, PolicySet, PrincipalConstraint, Schema,
};
use cedar_policy_core::ast::{Entity, EntityUID};

/// Policies that may apply to one action.
#[derive(Debug)]
pub struct ActionPolicies {
    uid: EntityUID,
    hierarchy: Vec<Entity>,
    shared: PolicySet,
    by_principal: HashMap<EntityUID, PolicySet>,
}

impl ActionPolicies {
    /// The action's uid (`Action::"document.read"`).
    pub fn uid(&self) -> &EntityUID {
        &self.uid
    }

    /// The action entity and the action groups above it (transitively closed, as the schema
    /// computes them), for the request's entity slice.
    pub fn hierarchy(&self) -> &[Entity] {
        &self.hierarchy
    }

    /// Policies whose principal scope names no entity.
    pub fn shared(&self) -> &PolicySet {
        &self.shared
    }

    /// Policies whose principal scope names `entity` (`==` or `in`).
    pub fn for_principal_scope(&self, entity: &EntityUID) -> Option<&PolicySet> {
        self.by_principal.get(entity)
    }
}

/// Index of the compiled policy set by concrete action.
#[derive(Debug, Default)]
pub struct PolicyIndex {
    actions: HashMap<String, ActionPolicies>,
}

impl PolicyIndex {
    /// The policies for a concrete action id, `None` when the schema has no such action.
    pub fn action(&self, action: &str) -> Option<&ActionPolicies> {
        self.actions.get(action)
    }

    /// Concrete action ids (action groups excluded).
    pub fn action_ids(&self) -> impl Iterator<Item = &str> {
        self.actions.keys().map(String::as_str)
    }

    pub(super) fn build(
        schema: &Schema,
        action_entities: &Entities,
        all: &PolicySet,
    ) -> Result<Self, String> {
        let groups: HashSet<&EntityUid> = schema.action_groups().collect();
        let mut actions = HashMap::new();
        for uid in schema.actions().filter(|a| !groups.contains(a)) {
            let ancestors: HashSet<EntityUid> = action_entities
                .ancestors(uid)
                .map(|it| it.cloned().collect())
                .unwrap_or_default();
            let mut hierarchy = Vec::with_capacity(ancestors.len() + 1);
            for member in std::iter::once(uid).chain(ancestors.iter()) {
                if let Some(entity) = action_entities.get(member) {
                    hierarchy.push(AsRef::<Entity>::as_ref(entity).clone());
                }
            }
            let mut entry = ActionPolicies {
                uid: uid.clone().into(),
                hierarchy,
                shared: PolicySet::new(),
                by_principal: HashMap::new(),
            };
            for policy in all.policies() {
                if !applies_to_action(policy, uid, &ancestors) {
                    continue;
                }
                let target = match principal_scope_entity(policy) {
                    None => &mut entry.shared,
                    Some(scope) => entry.by_principal.entry(scope.into()).or_default(),
                };
                add_to(target, policy, all)?;
            }
            actions.insert(uid.id().unescaped().to_owned(), entry);
        }
        Ok(Self { actions })
    }
}

/// Whether the policy's action scope can match `action` (whose ancestors are given).
fn applies_to_action(policy: &Policy, action: &EntityUid, ancestors: &HashSet<EntityUid>) -> bool {
    match policy.action_constraint() {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(a) => &a == action,
        ActionConstraint::In(list) => list.iter().any(|a| a == action || ancestors.contains(a)),
    }
}

/// The entity a principal scope names, if any.
fn principal_scope_entity(policy: &Policy) -> Option<EntityUid> {
    match policy.principal_constraint() {
        PrincipalConstraint::Any | PrincipalConstraint::Is(_) => None,
        PrincipalConstraint::Eq(uid)
        | PrincipalConstraint::In(uid)
        | PrincipalConstraint::IsIn(_, uid) => Some(uid),
    }
}

fn add_to(target: &mut PolicySet, policy: &Policy, all: &PolicySet) -> Result<(), String> {
    if policy.is_static() {
        return target.add(policy.clone()).map_err(|e| e.to_string());
    }
    let (Some(template_id), Some(values)) = (policy.template_id(), policy.template_links()) else {
        return Err(format!(
            "policy `{}` is neither static nor linked",
            policy.id()
        ));
    };
    if target.template(template_id).is_none() {
        let template = all
            .template(template_id)
            .ok_or_else(|| format!("template `{template_id}` is missing"))?;
        target
            .add_template(template.clone())
            .map_err(|e| e.to_string())?;
    }
    target
        .link(template_id.clone(), policy.id().clone(), values)
        .map_err(|e| e.to_string())
}
