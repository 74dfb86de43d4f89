//! Declarative policy test cases, run through the real decision core.
//!
//! Two formats live in `tests/` of a policies directory:
//!
//! - `*.yaml`: Portcullis cases. Each case states the facts (principals, assignments,
//!   entities), the request and its context, and the expected decision and determining
//!   policy ids. The runner builds a snapshot from those facts and the directory's policies
//!   and roles, and calls `decide` exactly as the proxy does.
//!
//!   ```yaml
//!   cases:
//!     - name: member reads a document of their space
//!       principals:
//!         - {kind: user, id: alice, tenant: t1}
//!       assignments:
//!         - {principal: 'User::"alice"', role: member, scope: 'Space::"s1"'}
//!       entities:
//!         - {uid: 'Document::"d1"', parents: ['Space::"s1"'], attributes: {tenant: t1}}
//!       request: {principal: 'User::"alice"', action: document.read, resource: 'Document::"d1"'}
//!       context: {time: "2026-01-06T10:00:00Z", mfa: false}
//!       expect: {decision: allow, policies: ["role:member"]}
//!   ```
//!
//! - `*.json`: the Cedar CLI's `run-tests` format (an array of `{name, request: {principal,
//!   action, resource, context}, entities, decision, reason, num_errors}`), evaluated by plain
//!   Cedar against the full compiled policy set, so existing suites keep working.

use std::path::{Path, PathBuf};

use cedar_policy::{Authorizer, Context, Entities, EntityUid, Request};
use portcullis_engine::decision::{DecisionRequest, LocalTime, RequestFacts, decide};
use portcullis_engine::policy::{CompiledPolicies, PolicyDiagnostic};
use portcullis_engine::snapshot::{HeldEntityTypes, Snapshot, StoreState};
use portcullis_model::{
    Assignment, AssignmentConditions, EntityRecord, EntityRef, PolicySetVersion, Principal, Scope,
};
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::policy_dir::{PolicyDir, file_problem, yaml_problem};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    cases: Vec<Spanned<Case>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    principals: Vec<Principal>,
    #[serde(default)]
    assignments: Vec<CaseAssignment>,
    #[serde(default)]
    entities: Vec<EntityRecord>,
    request: CaseRequest,
    #[serde(default)]
    context: CaseContext,
    expect: Expectation,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseAssignment {
    principal: EntityRef,
    role: String,
    /// `global` or an entity reference.
    #[serde(default = "global")]
    scope: String,
    #[serde(default)]
    conditions: AssignmentConditions,
}

fn global() -> String {
    String::from("global")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseRequest {
    principal: EntityRef,
    action: String,
    resource: EntityRef,
    /// Parents the route would claim (path parameters).
    #[serde(default)]
    parents: Vec<EntityRef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseContext {
    /// RFC 3339 instant; default Tuesday 2026-01-06 10:00 UTC.
    #[serde(default = "default_time")]
    time: String,
    /// IANA time zone for hour and weekday; default UTC.
    #[serde(default = "default_zone")]
    time_zone: String,
    #[serde(default)]
    risk_score: i64,
    #[serde(default)]
    mfa: bool,
    #[serde(default)]
    device_id: Option<String>,
    #[serde(default)]
    ip: Option<String>,
    #[serde(default = "default_band")]
    band: String,
}

impl Default for CaseContext {
    fn default() -> Self {
        Self {
            time: default_time(),
            time_zone: default_zone(),
            risk_score: 0,
            mfa: false,
            device_id: None,
            ip: None,
            band: default_band(),
        }
    }
}

fn default_time() -> String {
    String::from("2026-01-06T10:00:00Z")
}
fn default_zone() -> String {
    String::from("UTC")
}
fn default_band() -> String {
    String::from("GREEN")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expectation {
    decision: ExpectedDecision,
    /// Determining policy ids, compared as a set. Omit to not check.
    #[serde(default)]
    policies: Option<Vec<String>>,
    /// Decision reason code (`forbidden_by_policy`, `no_permit`, ...). Omit to not check.
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum ExpectedDecision {
    Allow,
    Deny,
}

/// One Cedar CLI `run-tests` case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CedarCase {
    name: String,
    request: CedarRequest,
    entities: serde_json::Value,
    decision: ExpectedDecision,
    #[serde(default)]
    reason: Vec<String>,
    #[serde(default)]
    num_errors: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CedarRequest {
    principal: String,
    action: String,
    resource: String,
    #[serde(default)]
    context: serde_json::Value,
}

/// The result of one case.
#[derive(Debug)]
pub struct CaseOutcome {
    /// `file:line` and name.
    pub label: String,
    /// `None` when it passed, else what differed.
    pub failure: Option<String>,
}

/// Test files under `<dir>/tests/`, sorted.
pub fn test_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("tests"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.extension()
                        .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Runs every case of one file. A file that cannot be read or parsed is a problem, not a
/// failed case.
pub fn run_file(
    policy_dir: &PolicyDir,
    policies: &CompiledPolicies,
    path: &Path,
) -> Result<Vec<CaseOutcome>, PolicyDiagnostic> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| file_problem(path, format!("cannot read: {e}")))?;
    if path.extension().is_some_and(|x| x == "json") {
        let cases: Vec<CedarCase> = serde_json::from_str(&text).map_err(|e| PolicyDiagnostic {
            file: path.display().to_string(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
        return Ok(cases
            .into_iter()
            .map(|c| CaseOutcome {
                label: format!("{}: {}", path.display(), c.name),
                failure: run_cedar_case(policies, &c).err(),
            })
            .collect());
    }
    let file: CaseFile = serde_saphyr::from_str(&text).map_err(|e| yaml_problem(path, &e))?;
    Ok(file
        .cases
        .into_iter()
        .map(|c| CaseOutcome {
            label: format!(
                "{}:{}: {}",
                path.display(),
                c.referenced.line(),
                c.value.name
            ),
            failure: run_case(policy_dir, &c.value).err(),
        })
        .collect())
}

fn run_case(dir: &PolicyDir, case: &Case) -> Result<(), String> {
    let assignments = case
        .assignments
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let scope = if a.scope == "global" {
                Scope::Global
            } else {
                Scope::Entity(
                    a.scope
                        .parse()
                        .map_err(|e| format!("assignment {i}: {e}"))?,
                )
            };
            Ok(Assignment {
                id: format!("case-{i}"),
                principal: a.principal.clone(),
                role: a.role.clone(),
                scope,
                conditions: a.conditions.clone(),
                assigned_by: None,
                reason: None,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let state = StoreState {
        revision: 1,
        principals: case.principals.clone(),
        roles: dir.sources.roles.clone(),
        assignments,
        entities: case.entities.clone(),
        revoked_sessions: Vec::new(),
        template_links: dir.sources.links.clone(),
        policy_set: Some(PolicySetVersion {
            version: 1,
            files: dir.sources.files.clone(),
            schema: dir.sources.schema.text.clone(),
            created_by: None,
            created_at: 0,
        }),
        held_entity_types: HeldEntityTypes::ALL,
    };
    let snapshot = Snapshot::build(state, 0).map_err(|e| e.to_string())?;
    // Custom attributes are checked against the schema as a write to the store would be.
    let custom = case
        .principals
        .iter()
        .map(|p| (p.entity_ref(), p.kind.cedar_type(), &p.attributes.custom))
        .chain(
            case.entities
                .iter()
                .map(|e| (e.uid.clone(), e.uid.type_name(), &e.attributes.custom)),
        );
    let mut problems = Vec::new();
    for (key, type_name, attrs) in custom {
        for (name, message) in snapshot
            .policies()
            .custom_attribute_problems(type_name, attrs)
        {
            problems.push(format!("{key}: attribute `{name}` {message}"));
        }
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    let ctx = &case.context;
    let now: jiff::Timestamp = ctx
        .time
        .parse()
        .map_err(|e| format!("context.time `{}`: {e}", ctx.time))?;
    let tz = jiff::tz::TimeZone::get(&ctx.time_zone)
        .map_err(|e| format!("context.time_zone `{}`: {e}", ctx.time_zone))?;
    // The decision core reads the IP only for policies that use `context.ip`: a case must
    // not pass or fail by how many policies happen to read it.
    if let Some(ip) = &ctx.ip
        && let Err(e) = ip.parse::<std::net::IpAddr>()
    {
        return Err(format!("context.ip `{ip}`: {e}"));
    }
    let facts = RequestFacts {
        now: now.as_millisecond(),
        local_time: LocalTime::at(now.as_millisecond(), &tz),
        risk_score: ctx.risk_score,
        mfa: ctx.mfa,
        device_id: ctx.device_id.clone(),
        ip: ctx.ip.clone(),
        band: ctx.band.clone(),
        extra: Vec::new(),
    };
    let decision = decide(
        &snapshot,
        &DecisionRequest {
            principal: &case.request.principal,
            action: &case.request.action,
            resource: &case.request.resource,
            route_parents: &case.request.parents,
            facts: &facts,
            claimed: None,
        },
    );
    let got = if decision.allowed {
        ExpectedDecision::Allow
    } else {
        ExpectedDecision::Deny
    };
    let mut differences = Vec::new();
    if got != case.expect.decision {
        differences.push(format!(
            "expected {:?}, got {:?} ({})",
            case.expect.decision,
            got,
            decision.reason.as_str()
        ));
    }
    if let Some(expected) = &case.expect.policies {
        let mut expected = expected.clone();
        expected.sort_unstable();
        if expected != decision.determining_policies {
            differences.push(format!(
                "expected determining policies {expected:?}, got {:?}",
                decision.determining_policies
            ));
        }
    }
    if let Some(reason) = &case.expect.reason
        && reason != decision.reason.as_str()
    {
        differences.push(format!(
            "expected reason `{reason}`, got `{}`",
            decision.reason.as_str()
        ));
    }
    if !decision.errors.is_empty() && differences.is_empty() && got == ExpectedDecision::Allow {
        differences.push(format!("unexpected errors: {:?}", decision.errors));
    }
    if differences.is_empty() {
        Ok(())
    } else {
        if !decision.errors.is_empty() {
            differences.push(format!("errors: {:?}", decision.errors));
        }
        differences.push(format!("effective roles: {:?}", decision.effective_roles));
        Err(differences.join("; "))
    }
}

fn run_cedar_case(policies: &CompiledPolicies, case: &CedarCase) -> Result<(), String> {
    let parse_uid =
        |s: &str| -> Result<EntityUid, String> { s.parse().map_err(|e| format!("`{s}`: {e}")) };
    let action = parse_uid(&case.request.action)?;
    let context = if case.request.context.is_null() {
        Context::empty()
    } else {
        Context::from_json_value(
            case.request.context.clone(),
            Some((policies.schema(), &action)),
        )
        .map_err(|e| format!("context: {e}"))?
    };
    let request = Request::new(
        parse_uid(&case.request.principal)?,
        action,
        parse_uid(&case.request.resource)?,
        context,
        Some(policies.schema()),
    )
    .map_err(|e| format!("request: {e}"))?;
    let entities = Entities::from_json_value(case.entities.clone(), Some(policies.schema()))
        .map_err(|e| format!("entities: {e}"))?;
    let response = Authorizer::new().is_authorized(&request, policies.policy_set(), &entities);
    let got = match response.decision() {
        cedar_policy::Decision::Allow => ExpectedDecision::Allow,
        cedar_policy::Decision::Deny => ExpectedDecision::Deny,
    };
    let mut reason: Vec<String> = response
        .diagnostics()
        .reason()
        .map(ToString::to_string)
        .collect();
    reason.sort_unstable();
    let mut expected_reason = case.reason.clone();
    expected_reason.sort_unstable();
    let errors = response.diagnostics().errors().count();
    let mut differences = Vec::new();
    if got != case.decision {
        differences.push(format!("expected {:?}, got {got:?}", case.decision));
    }
    if reason != expected_reason {
        differences.push(format!(
            "expected reason {expected_reason:?}, got {reason:?}"
        ));
    }
    if errors != case.num_errors {
        differences.push(format!(
            "expected {} error(s), got {errors}",
            case.num_errors
        ));
    }
    if differences.is_empty() {
        Ok(())
    } else {
        Err(differences.join("; "))
    }
}
