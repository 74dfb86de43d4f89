//! Policy compilation: Cedar schema + hand-written policy files + roles (as data) + template
//! links → one validated [`CompiledPolicies`], indexed for the hot path.
//!
//! Every problem is reported at once as a [`PolicyDiagnostic`] (`file:line:col: message`).
//! Roles become generated policies with the stable id `role:<name>`; hand-written policies
//! must carry an `@id` annotation, which becomes their policy id.

mod index;
mod roles;
mod source;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use cedar_policy::{Policy, PolicyId, PolicySet, Schema, SlotId, ValidationMode, Validator};

pub(crate) use index::Reads;
pub use index::{ActionPolicies, PolicyIndex, PreparedPolicy};
pub use roles::role_policy_text;

use cedar_policy_core::ast::EntityUID;

use crate::error::CompileError;
use crate::slice::EntityTypes;
use portcullis_model::{EntityRef, PolicyFile, Role, TemplateLink};

/// Prefix of generated role policy ids.
pub const ROLE_POLICY_PREFIX: &str = "role:";

/// One problem in a policy source, with where it is. Line and column are 1-based; 0 means
/// the position is not known (for example, a role given as data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDiagnostic {
    /// The source name (file name, or `roles` for role data).
    pub file: String,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub column: usize,
    /// What is wrong, in Cedar's style.
    pub message: String,
}

impl fmt::Display for PolicyDiagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}

/// Everything a policy set is compiled from.
#[derive(Debug, Clone, Default)]
pub struct PolicySources {
    /// The schema file (name, Cedar schema text).
    pub schema: PolicyFile,
    /// Hand-written policy files.
    pub files: Vec<PolicyFile>,
    /// Name to use for role diagnostics (e.g. `roles.yaml`).
    pub roles_source: String,
    /// Roles as data.
    pub roles: Vec<Role>,
    /// Template links.
    pub links: Vec<TemplateLink>,
}

/// A validated policy set with its schema and the hot-path index.
#[derive(Debug)]
pub struct CompiledPolicies {
    schema: Schema,
    all: PolicySet,
    index: PolicyIndex,
    types: EntityTypes,
    role_uids: HashMap<String, EntityUID>,
    warnings: Vec<PolicyDiagnostic>,
}

impl CompiledPolicies {
    /// The schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Why `attrs` cannot be the custom attributes (those beyond the model's own) of a
    /// principal or entity of type `type_name`: one `(attribute, message)` for each that the
    /// schema does not declare for the type, that Portcullis sets itself, or whose value is
    /// not of the declared type (`String`, `Long`, `Bool`, `Set<String>`, `Set<Long>`).
    pub fn custom_attribute_problems(
        &self,
        type_name: &str,
        attrs: &std::collections::BTreeMap<String, serde_json::Value>,
    ) -> Vec<(String, String)> {
        self.types.custom_problems(type_name, attrs)
    }

    /// The kind of value the schema gives context attribute `name` of `action` (for a
    /// route that takes it from the request). `Err` says why a route cannot: the attribute is
    /// one Portcullis sets for every request, the action or the attribute is not in the
    /// schema, or its type is not a `String`, `Long` or `Bool`.
    pub fn context_attribute(
        &self,
        action: &str,
        name: &str,
    ) -> Result<crate::decision::ContextKind, String> {
        use cedar_policy_core::validator::types::Type;
        if crate::slice::is_fixed_context_attribute(name) {
            return Err(String::from(
                "is set by Portcullis for every request; a route cannot take it from the request",
            ));
        }
        let schema: &cedar_policy_core::validator::ValidatorSchema = self.schema.as_ref();
        let uid = self
            .index
            .action(action)
            .map(|a| a.uid().clone())
            .ok_or_else(|| format!("action `{action}` is not in the schema"))?;
        let Some(Type::Record { attrs, .. }) = schema.context_type(&uid) else {
            return Err(format!(
                "action `{action}` has no context record in the schema"
            ));
        };
        let declared = attrs.get_attr(name).ok_or_else(|| {
            format!("`{name}` is not an attribute of the context of `{action}` in the schema")
        })?;
        match declared.attr_type.as_ref() {
            Type::String => Ok(crate::decision::ContextKind::String),
            Type::Long => Ok(crate::decision::ContextKind::Long),
            Type::Bool(_) => Ok(crate::decision::ContextKind::Bool),
            other => Err(format!(
                "context attribute `{name}` is a {other} in the schema; a request gives only String, Long or Bool"
            )),
        }
    }

    /// Every policy, template and link, by id.
    pub fn policy_set(&self) -> &PolicySet {
        &self.all
    }

    /// The per-action index used by the decision core.
    pub fn index(&self) -> &PolicyIndex {
        &self.index
    }

    /// The schema's entity types, parsed once.
    pub(crate) fn types(&self) -> &EntityTypes {
        &self.types
    }

    /// `Role::"<name>"` of every role.
    pub(crate) fn role_uid(&self, role: &str) -> Option<&EntityUID> {
        self.role_uids.get(role)
    }

    /// Validator warnings (not fatal), e.g. a policy that can never apply.
    pub fn warnings(&self) -> &[PolicyDiagnostic] {
        &self.warnings
    }

    /// Number of policies (static and linked), templates excluded.
    pub fn policy_count(&self) -> usize {
        self.all.policies().count()
    }
}

/// Where each policy id came from, to place validator messages.
struct Origins {
    /// policy id → (source name, source text)
    by_id: HashMap<String, (String, std::sync::Arc<str>)>,
}

impl Origins {
    fn place(&self, id: &PolicyId, diag: &dyn miette::Diagnostic) -> PolicyDiagnostic {
        let message = source::message_of(diag);
        match self.by_id.get(AsRef::<str>::as_ref(id)) {
            Some((file, text)) => {
                let (line, column) = source::first_label(diag)
                    .map(|offset| source::line_col(text, offset))
                    .unwrap_or((0, 0));
                PolicyDiagnostic {
                    file: file.clone(),
                    line,
                    column,
                    message,
                }
            }
            None => PolicyDiagnostic {
                file: String::from("<policies>"),
                line: 0,
                column: 0,
                message: format!("in policy `{id}`: {message}"),
            },
        }
    }
}

/// Parses a schema (human syntax) and its action entities; a problem is placed in its file.
fn parse_schema(file: &PolicyFile) -> Result<(Schema, cedar_policy::Entities), CompileError> {
    let placed = |e: &dyn miette::Diagnostic| {
        CompileError(vec![source::diagnostic_at(&file.name, &file.text, e)])
    };
    let (schema, _warnings) = Schema::from_cedarschema_str(&file.text).map_err(|e| placed(&e))?;
    let action_entities = schema.action_entities().map_err(|e| placed(&e))?;
    Ok((schema, action_entities))
}

/// Validates `all` against `schema` in strict mode: errors go to `problems`, warnings are
/// returned; both placed where their policy was written.
fn validate(
    schema: &Schema,
    all: &PolicySet,
    origins: &Origins,
    problems: &mut Vec<PolicyDiagnostic>,
) -> Vec<PolicyDiagnostic> {
    let result = Validator::new(schema.clone()).validate(all, ValidationMode::Strict);
    for err in result.validation_errors() {
        problems.push(origins.place(err.policy_id(), err));
    }
    result
        .validation_warnings()
        .map(|w| origins.place(w.policy_id(), w))
        .collect()
}

/// A validated policy set with its schema and nothing generated (no roles, no links, no
/// index): the admin API's own authorisation policies.
#[derive(Debug)]
pub struct PlainPolicies {
    /// The schema.
    pub schema: Schema,
    /// The policies, each identified by its `@id`.
    pub policies: PolicySet,
}

/// Compiles and validates (strict mode) `files` against `schema`, every policy identified by
/// its `@id`. Returns every problem at once.
pub fn compile_plain(
    schema: &PolicyFile,
    files: &[PolicyFile],
) -> Result<PlainPolicies, CompileError> {
    let (schema, _actions) = parse_schema(schema)?;
    let mut problems = Vec::new();
    let mut all = PolicySet::new();
    let mut origins = Origins {
        by_id: HashMap::new(),
    };
    for file in files {
        add_file(file, &mut all, &mut origins, &mut problems);
    }
    validate(&schema, &all, &origins, &mut problems);
    if !problems.is_empty() {
        return Err(CompileError(problems));
    }
    Ok(PlainPolicies {
        schema,
        policies: all,
    })
}

/// Compiles and validates (strict mode) the whole policy set. Returns every problem at once.
pub fn compile(sources: &PolicySources) -> Result<CompiledPolicies, CompileError> {
    let mut problems = Vec::new();
    let (schema, action_entities) = parse_schema(&sources.schema)?;

    let mut all = PolicySet::new();
    let mut origins = Origins {
        by_id: HashMap::new(),
    };
    for file in &sources.files {
        add_file(file, &mut all, &mut origins, &mut problems);
    }
    let known_actions: HashSet<String> = schema
        .actions()
        .map(|a| a.id().unescaped().to_owned())
        .collect();
    let known_types: HashSet<String> = schema.entity_types().map(ToString::to_string).collect();
    roles::add_roles(
        sources,
        &known_actions,
        &known_types,
        &mut all,
        &mut origins,
        &mut problems,
    );
    add_links(sources, &mut all, &mut problems);

    let warnings = validate(&schema, &all, &origins, &mut problems);

    if !problems.is_empty() {
        return Err(CompileError(problems));
    }
    let index = PolicyIndex::build(&schema, &action_entities, &all);
    let types = EntityTypes::from_schema(&schema);
    let role_uids = sources
        .roles
        .iter()
        .filter_map(|role| {
            let uid = types.uid(&EntityRef::new("Role", role.name.as_str()).ok()?)?;
            Some((role.name.clone(), uid))
        })
        .collect();
    Ok(CompiledPolicies {
        schema,
        all,
        index,
        types,
        role_uids,
        warnings,
    })
}

/// Parses one file, re-identifies each policy by its `@id` and adds it to `all`.
fn add_file(
    file: &PolicyFile,
    all: &mut PolicySet,
    origins: &mut Origins,
    problems: &mut Vec<PolicyDiagnostic>,
) {
    let parsed = match PolicySet::from_str(&file.text) {
        Ok(set) => set,
        Err(errs) => {
            for err in errs.iter() {
                problems.push(source::diagnostic_at(&file.name, &file.text, err));
            }
            return;
        }
    };
    let text: std::sync::Arc<str> = std::sync::Arc::from(file.text.as_str());
    let starts = source::statement_starts(&file.text);
    // `PolicySet::from_str` names policies `policy0`, `policy1`, ... in source order; templates
    // share the counter.
    let ordinal = |id: &PolicyId| -> usize {
        AsRef::<str>::as_ref(id)
            .strip_prefix("policy")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let mut place = |id: &PolicyId,
                     annotation: Option<&str>,
                     problems: &mut Vec<PolicyDiagnostic>|
     -> Option<PolicyId> {
        let at = starts.get(ordinal(id)).copied().unwrap_or(0);
        let (line, column) = source::line_col(&file.text, at);
        let diag = |message: String| PolicyDiagnostic {
            file: file.name.clone(),
            line,
            column,
            message,
        };
        let Some(new_id) = annotation else {
            problems.push(diag(String::from(
                "policy has no `@id(\"...\")` annotation; every policy needs a stable id",
            )));
            return None;
        };
        if new_id.starts_with(ROLE_POLICY_PREFIX) {
            problems.push(diag(format!(
                "policy id `{new_id}` uses the `{ROLE_POLICY_PREFIX}` prefix, which is reserved for generated role policies"
            )));
            return None;
        }
        if let Some((other, _)) = origins.by_id.get(new_id) {
            problems.push(diag(format!(
                "policy id `{new_id}` is already used in `{other}`"
            )));
            return None;
        }
        origins
            .by_id
            .insert(new_id.to_owned(), (file.name.clone(), text.clone()));
        Some(PolicyId::new(new_id))
    };
    for template in parsed.templates() {
        if let Some(new_id) = place(template.id(), template.annotation("id"), problems)
            && let Err(e) = all.add_template(template.new_id(new_id))
        {
            problems.push(PolicyDiagnostic {
                file: file.name.clone(),
                line: 0,
                column: 0,
                message: e.to_string(),
            });
        }
    }
    for policy in parsed.policies() {
        if let Some(new_id) = place(policy.id(), policy.annotation("id"), problems)
            && let Err(e) = all.add(policy.new_id(new_id))
        {
            problems.push(PolicyDiagnostic {
                file: file.name.clone(),
                line: 0,
                column: 0,
                message: e.to_string(),
            });
        }
    }
}

fn add_links(sources: &PolicySources, all: &mut PolicySet, problems: &mut Vec<PolicyDiagnostic>) {
    for link in &sources.links {
        let mut values = HashMap::new();
        let mut bad = false;
        for (slot, value) in [
            (SlotId::principal(), &link.principal),
            (SlotId::resource(), &link.resource),
        ] {
            if let Some(entity) = value {
                match entity.to_cedar() {
                    Ok(uid) => {
                        values.insert(slot, uid);
                    }
                    Err(e) => {
                        bad = true;
                        problems.push(link_problem(link, &e.to_string()));
                    }
                }
            }
        }
        if bad {
            continue;
        }
        if let Err(e) = all.link(
            PolicyId::new(&link.template),
            PolicyId::new(&link.id),
            values,
        ) {
            problems.push(link_problem(link, &e.to_string()));
        }
    }
}

fn link_problem(link: &TemplateLink, message: &str) -> PolicyDiagnostic {
    PolicyDiagnostic {
        file: String::from("<template links>"),
        line: 0,
        column: 0,
        message: format!(
            "link `{}` of template `{}`: {message}",
            link.id, link.template
        ),
    }
}

/// Parses a single policy (used for role policies and tests).
pub(crate) fn parse_policy(id: &str, text: &str) -> Result<Policy, String> {
    Policy::parse(Some(PolicyId::new(id)), text).map_err(|e| source::message_of(&e))
}
