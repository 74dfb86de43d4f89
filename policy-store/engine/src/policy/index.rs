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
//!
//! Each policy is kept as a [`PreparedPolicy`]: its condition is built once here, where
//! Cedar's authorizer would rebuild it on every evaluation, and without the parts of its
//! scope that the index has already decided (see [`PreparedPolicy`]). What an action's
//! conditions can read ([`Reads`]) tells the decision core which parts of the request's
//! entity slice and context it may leave out.

use std::collections::{HashMap, HashSet};

use cedar_policy::{
    ActionConstraint, Entities, EntityUid, Policy, PolicySet, PrincipalConstraint, Schema,
};
use cedar_policy_core::ast::{
    self, Effect, Entity, EntityUID, Expr, ExprKind, PrincipalOrResource,
    PrincipalOrResourceConstraint, SlotEnv, Var,
};

use crate::slice::ContextAttrs;

/// One policy, ready for Cedar's evaluator: its condition (what `ast::Policy::condition`
/// builds) with the template slots it is linked with.
///
/// The condition leaves out what holds wherever the decision core evaluates the policy:
/// - the action scope, always: the policy sits only in the lists of the actions it matches
///   (decided exactly, from the schema's action hierarchy, which is also the hierarchy the
///   request's entity slice carries);
/// - `principal in X` for a policy listed under `X`: that list is evaluated only when `X` is
///   the principal or one of the ancestors its slice entity carries, which is exactly when
///   Cedar's `in` holds (`principal is T in X` keeps its `is T`);
/// - a scope part that is `true` (unconstrained).
///
/// Neither left-out part can raise an error in Cedar, so errors are unchanged too.
#[derive(Debug)]
pub struct PreparedPolicy {
    id: String,
    effect: Effect,
    condition: Expr,
    slots: SlotEnv,
}

impl PreparedPolicy {
    /// `listed_under_principal_scope`: the policy sits in the list of the entity its
    /// principal scope names.
    fn new(policy: &ast::Policy, listed_under_principal_scope: bool) -> Self {
        let mut parts: Vec<Expr> = Vec::with_capacity(3);
        let principal = policy.principal_constraint();
        match principal.as_inner() {
            PrincipalOrResourceConstraint::Any => {}
            PrincipalOrResourceConstraint::In(_) if listed_under_principal_scope => {}
            PrincipalOrResourceConstraint::IsIn(entity_type, _) if listed_under_principal_scope => {
                parts.push(Expr::is_entity_type(
                    Expr::var(Var::Principal),
                    entity_type.as_ref().clone(),
                ));
            }
            _ => parts.push(principal.as_expr()),
        }
        let resource = policy.resource_constraint();
        if !matches!(resource.as_inner(), PrincipalOrResourceConstraint::Any) {
            parts.push(resource.as_inner().as_expr(PrincipalOrResource::Resource));
        }
        if let Some(body) = policy.non_scope_constraints() {
            parts.push(body.clone());
        }
        let condition = parts
            .into_iter()
            .rev()
            .reduce(|rest, part| Expr::and(part, rest))
            .unwrap_or_else(|| Expr::val(true));
        Self {
            id: policy.id().to_string(),
            effect: policy.effect(),
            condition,
            slots: policy.env().clone(),
        }
    }

    /// The policy id (`role:member`, an `@id`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Permit or forbid.
    pub fn effect(&self) -> Effect {
        self.effect
    }

    /// What must evaluate to `true` for the policy to be satisfied, where the decision core
    /// evaluates it.
    pub fn condition(&self) -> &Expr {
        &self.condition
    }

    /// Values of the template slots (empty for a static policy).
    pub fn slots(&self) -> &SlotEnv {
        &self.slots
    }
}

/// What the conditions of some policies can read of a request, beyond the principal, the
/// resource and their entities.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Reads {
    /// The `action` variable appears: `action in ...` needs the action hierarchy.
    pub(crate) action: bool,
    /// Attributes of the request context.
    pub(crate) context: ContextAttrs,
}

impl Reads {
    /// What `condition` reads. `context` used other than as `context.x` / `context has x`
    /// (compared, passed whole) reads every attribute.
    fn of(condition: &Expr) -> Self {
        let mut reads = Self::default();
        let mut context_uses = 0_usize;
        let mut context_attr_uses = 0_usize;
        for expr in condition.subexpressions() {
            match expr.expr_kind() {
                ExprKind::Var(Var::Action) => reads.action = true,
                ExprKind::Var(Var::Context) => context_uses += 1,
                ExprKind::GetAttr { expr, attr } | ExprKind::HasAttr { expr, attr }
                    if is_context(expr) =>
                {
                    context_attr_uses += 1;
                    reads.context = reads.context.with(attr);
                }
                ExprKind::ExtHasAttr { expr, attrs } if is_context(expr) => {
                    context_attr_uses += 1;
                    reads.context = reads.context.with(attrs.first());
                }
                _ => {}
            }
        }
        if context_uses > context_attr_uses {
            reads.context = ContextAttrs::ALL;
        }
        reads
    }

    fn union(self, other: Self) -> Self {
        Self {
            action: self.action || other.action,
            context: self.context.union(other.context),
        }
    }
}

fn is_context(expr: &Expr) -> bool {
    matches!(expr.expr_kind(), ExprKind::Var(Var::Context))
}

/// Policies that may apply to one action.
#[derive(Debug)]
pub struct ActionPolicies {
    uid: EntityUID,
    hierarchy: Vec<Entity>,
    shared: Vec<PreparedPolicy>,
    by_principal: HashMap<EntityUID, Vec<PreparedPolicy>>,
    reads: Reads,
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
    pub fn shared(&self) -> &[PreparedPolicy] {
        &self.shared
    }

    /// What the conditions of all of this action's policies can read.
    pub(crate) fn reads(&self) -> Reads {
        self.reads
    }

    /// Policies whose principal scope names `entity` (`==` or `in`).
    pub fn for_principal_scope(&self, entity: &EntityUID) -> Option<&[PreparedPolicy]> {
        self.by_principal.get(entity).map(Vec::as_slice)
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

    pub(super) fn build(schema: &Schema, action_entities: &Entities, all: &PolicySet) -> Self {
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
                shared: Vec::new(),
                by_principal: HashMap::new(),
                reads: Reads::default(),
            };
            for policy in all.policies() {
                if !applies_to_action(policy, uid, &ancestors) {
                    continue;
                }
                let ast = AsRef::<ast::Policy>::as_ref(policy);
                match principal_scope_entity(policy) {
                    None => entry.shared.push(PreparedPolicy::new(ast, false)),
                    Some(scope) => entry
                        .by_principal
                        .entry(scope.into())
                        .or_default()
                        .push(PreparedPolicy::new(ast, true)),
                }
            }
            entry.reads = entry
                .shared
                .iter()
                .chain(entry.by_principal.values().flatten())
                .fold(Reads::default(), |reads, policy| {
                    reads.union(Reads::of(policy.condition()))
                });
            actions.insert(uid.id().unescaped().to_owned(), entry);
        }
        Self { actions }
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
