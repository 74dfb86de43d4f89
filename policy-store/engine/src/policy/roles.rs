//! Roles as data → generated Cedar policies with the stable id `role:<name>`.

use std::collections::HashSet;

use cedar_policy::PolicySet;

use super::{Origins, PolicyDiagnostic, PolicySources, ROLE_POLICY_PREFIX, parse_policy};
use portcullis_model::Role;

/// The Cedar text generated for a role:
/// `permit(principal in Role::"<name>", action in [...], resource) when { resource is T || ... };`
pub fn role_policy_text(role: &Role) -> String {
    let actions = role
        .actions
        .iter()
        .map(|a| format!("Action::{}", quote(a)))
        .collect::<Vec<_>>()
        .join(", ");
    let mut text = format!(
        "@id({id})\npermit (\n  principal in Role::{name},\n  action in [{actions}],\n  resource\n)",
        id = quote(&format!("{ROLE_POLICY_PREFIX}{}", role.name)),
        name = quote(&role.name),
    );
    if !role.scope_types.is_empty() {
        let types = role
            .scope_types
            .iter()
            .map(|t| format!("resource is {t}"))
            .collect::<Vec<_>>()
            .join(" || ");
        text.push_str(&format!("\nwhen {{ {types} }}"));
    }
    text.push(';');
    text
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.escape_default())
}

fn valid_role_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

pub(super) fn add_roles(
    sources: &PolicySources,
    known_actions: &HashSet<String>,
    known_types: &HashSet<String>,
    all: &mut PolicySet,
    origins: &mut Origins,
    problems: &mut Vec<PolicyDiagnostic>,
) {
    let mut seen = HashSet::new();
    for role in &sources.roles {
        let problem = |message: String| PolicyDiagnostic {
            file: sources.roles_source.clone(),
            line: 0,
            column: 0,
            message: format!("role `{}`: {message}", role.name),
        };
        let before = problems.len();
        if !valid_role_name(&role.name) {
            problems.push(problem(String::from(
                "a role name is 1 to 128 characters of letters, digits, `_`, `-` and `.`",
            )));
        }
        if !seen.insert(role.name.as_str()) {
            problems.push(problem(String::from(
                "a role with this name already exists",
            )));
        }
        if role.actions.is_empty() {
            problems.push(problem(String::from("grants no actions")));
        }
        for action in &role.actions {
            if !known_actions.contains(action) {
                problems.push(problem(format!(
                    "action `{action}` is not declared in the schema"
                )));
            }
        }
        for ty in &role.scope_types {
            if !known_types.contains(ty) {
                problems.push(problem(format!(
                    "scope type `{ty}` is not an entity type of the schema"
                )));
            }
        }
        if problems.len() > before {
            continue;
        }
        let id = format!("{ROLE_POLICY_PREFIX}{}", role.name);
        let text = role_policy_text(role);
        match parse_policy(&id, &text) {
            Ok(policy) => {
                origins.by_id.insert(
                    id,
                    (sources.roles_source.clone(), std::sync::Arc::from(text)),
                );
                if let Err(e) = all.add(policy) {
                    problems.push(problem(e.to_string()));
                }
            }
            Err(message) => problems.push(problem(message)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_text_names_actions_and_scope_types() {
        let role = Role {
            name: String::from("editor"),
            description: String::new(),
            actions: vec![String::from("READ"), String::from("document.update")],
            scope_types: vec![String::from("Space"), String::from("Document")],
        };
        let text = role_policy_text(&role);
        assert!(text.starts_with("@id(\"role:editor\")"));
        assert!(text.contains("principal in Role::\"editor\""));
        assert!(text.contains("action in [Action::\"READ\", Action::\"document.update\"]"));
        assert!(text.contains("when { resource is Space || resource is Document }"));
        assert!(parse_policy("role:editor", &text).is_ok());
    }

    #[test]
    fn names_that_could_inject_cedar_are_refused() {
        assert!(!valid_role_name(
            "x\"), action, resource); permit(principal"
        ));
        assert!(valid_role_name("space.admin-2"));
    }
}
