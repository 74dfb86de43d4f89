//! Loading a policies directory (`policies/` in a checkout):
//!
//! ```text
//! schema.cedarschema   Cedar schema (human syntax)
//! *.cedar              hand-written policies, each with @id
//! admin.cedar          who may do what through the admin API (its own built-in schema)
//! roles.yaml           roles as data (become `role:<name>` policies)
//! routes.yaml          the route map (see `routes`)
//! tests/               policy test cases (see `policy_tests`)
//! ```
//!
//! Every problem is collected as a [`PolicyDiagnostic`] naming file, line and column.

use std::path::{Path, PathBuf};

#[cfg(feature = "control-plane")]
use portcullis_admin_api::authz::AdminPolicies;
use portcullis_engine::policy::{PolicyDiagnostic, PolicySources};
use portcullis_model::{PolicyFile, Role};
use serde::Deserialize;

/// The schema file name.
pub const SCHEMA_FILE: &str = "schema.cedarschema";
/// The roles file name.
pub const ROLES_FILE: &str = "roles.yaml";
/// The route map file name.
pub const ROUTES_FILE: &str = "routes.yaml";
/// The admin policies' file name: not a data-plane policy file.
#[cfg(feature = "control-plane")]
pub use portcullis_admin_api::authz::ADMIN_POLICIES_FILE;

/// A loaded policies directory.
#[derive(Debug, Clone)]
pub struct PolicyDir {
    /// The directory.
    pub root: PathBuf,
    /// Sources to compile.
    pub sources: PolicySources,
    /// Route map text, if the directory has one.
    pub routes: Option<PolicyFile>,
    /// `admin.cedar`, if the directory has one.
    pub admin: Option<PolicyFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RolesFile {
    roles: Vec<Role>,
}

/// A diagnostic for a whole file (no position).
pub fn file_problem(file: &Path, message: impl Into<String>) -> PolicyDiagnostic {
    PolicyDiagnostic {
        file: file.display().to_string(),
        line: 0,
        column: 0,
        message: message.into(),
    }
}

/// A YAML error placed at its location.
pub fn yaml_problem(file: &Path, err: &serde_saphyr::Error) -> PolicyDiagnostic {
    let (line, column) = err
        .location()
        .map_or((0, 0), |l| (to_usize(l.line()), to_usize(l.column())));
    PolicyDiagnostic {
        file: file.display().to_string(),
        line,
        column,
        message: first_line(&err.to_string()),
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// The first line of a YAML error, without the position prefix we print ourselves.
pub fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default();
    let line = line.strip_prefix("error: ").unwrap_or(line);
    match line
        .strip_prefix("line ")
        .and_then(|rest| rest.split_once(": "))
    {
        Some((_, message)) => message.to_owned(),
        None => line.to_owned(),
    }
}

#[cfg(feature = "control-plane")]
fn read(path: &Path, problems: &mut Vec<PolicyDiagnostic>) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) => {
            problems.push(file_problem(path, format!("cannot read: {e}")));
            None
        }
    }
}

/// Loads a policies directory. Files are named relative to the current directory as the
/// user gave `dir`, so messages point where the user looks.
#[cfg(feature = "control-plane")]
pub fn load(dir: &Path) -> Result<PolicyDir, Vec<PolicyDiagnostic>> {
    let mut problems = Vec::new();
    if !dir.is_dir() {
        return Err(vec![file_problem(dir, "is not a directory")]);
    }
    let schema_path = dir.join(SCHEMA_FILE);
    let schema = read(&schema_path, &mut problems).map(|text| PolicyFile {
        name: schema_path.display().to_string(),
        text,
    });

    let mut cedar_paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "cedar"))
            .filter(|p| p.file_name().is_some_and(|n| n != ADMIN_POLICIES_FILE))
            .collect(),
        Err(e) => {
            problems.push(file_problem(dir, format!("cannot list: {e}")));
            Vec::new()
        }
    };
    cedar_paths.sort();
    if cedar_paths.is_empty() {
        problems.push(file_problem(dir, "holds no `*.cedar` policy file"));
    }
    let files: Vec<PolicyFile> = cedar_paths
        .iter()
        .filter_map(|p| {
            read(p, &mut problems).map(|text| PolicyFile {
                name: p.display().to_string(),
                text,
            })
        })
        .collect();

    let roles_path = dir.join(ROLES_FILE);
    let roles = if roles_path.exists() {
        read(&roles_path, &mut problems)
            .and_then(|text| match serde_saphyr::from_str::<RolesFile>(&text) {
                Ok(parsed) => Some(parsed.roles),
                Err(e) => {
                    problems.push(yaml_problem(&roles_path, &e));
                    None
                }
            })
            .unwrap_or_default()
    } else {
        Vec::new()
    };

    let routes_path = dir.join(ROUTES_FILE);
    let routes = if routes_path.exists() {
        read(&routes_path, &mut problems).map(|text| PolicyFile {
            name: routes_path.display().to_string(),
            text,
        })
    } else {
        None
    };

    let admin_path = dir.join(ADMIN_POLICIES_FILE);
    let admin = if admin_path.exists() {
        read(&admin_path, &mut problems).map(|text| PolicyFile {
            name: admin_path.display().to_string(),
            text,
        })
    } else {
        None
    };

    match schema {
        Some(schema) if problems.is_empty() => Ok(PolicyDir {
            root: dir.to_path_buf(),
            sources: PolicySources {
                schema,
                files,
                roles_source: roles_path.display().to_string(),
                roles,
                links: Vec::new(),
            },
            routes,
            admin,
        }),
        _ => Err(problems),
    }
}

/// Places role diagnostics (which the compiler reports without a position) on the line of
/// `- name: <role>` in the roles file.
#[cfg(feature = "control-plane")]
pub fn place_role_problems(dir: &PolicyDir, problems: &mut [PolicyDiagnostic]) {
    let Ok(text) = std::fs::read_to_string(dir.root.join(ROLES_FILE)) else {
        return;
    };
    for p in problems
        .iter_mut()
        .filter(|p| p.file == dir.sources.roles_source && p.line == 0)
    {
        let Some(name) = p
            .message
            .strip_prefix("role `")
            .and_then(|rest| rest.split('`').next())
        else {
            continue;
        };
        for (i, line) in text.lines().enumerate() {
            let trimmed = line.trim_start().trim_start_matches("- ").trim_start();
            if trimmed
                .strip_prefix("name:")
                .is_some_and(|v| v.trim().trim_matches(['"', '\'']) == name)
            {
                p.line = i + 1;
                p.column = line.len() - line.trim_start().len() + 1;
                break;
            }
        }
    }
}

/// A policies directory compiled: policies, roles and the route map all checked.
#[cfg(feature = "control-plane")]
#[derive(Debug)]
pub struct CompiledDir {
    /// What was loaded.
    pub dir: PolicyDir,
    /// The compiled policy set.
    pub policies: portcullis_engine::policy::CompiledPolicies,
    /// The compiled route map, if the directory has one.
    pub routes: Option<crate::routes::RouteMap>,
    /// The admin policies: the directory's `admin.cedar`, or the built-in copy.
    pub admin: std::sync::Arc<AdminPolicies>,
}

/// Loads and compiles a policies directory, reporting every problem at once.
#[cfg(feature = "control-plane")]
pub fn compile_dir(dir: &Path) -> Result<CompiledDir, Vec<PolicyDiagnostic>> {
    compile_loaded(load(dir)?)
}

/// The policies built into the binary (this repository's `policies/`), for `serve` started
/// away from a checkout.
pub fn builtin() -> Result<PolicyDir, Vec<PolicyDiagnostic>> {
    let root = PathBuf::from("<built-in>");
    let roles_path = root.join(ROLES_FILE);
    let roles = serde_saphyr::from_str::<RolesFile>(BUILTIN_ROLES)
        .map_err(|e| vec![yaml_problem(&roles_path, &e)])?
        .roles;
    Ok(PolicyDir {
        sources: PolicySources {
            schema: PolicyFile {
                name: root.join(SCHEMA_FILE).display().to_string(),
                text: String::from(BUILTIN_SCHEMA),
            },
            files: vec![PolicyFile {
                name: root.join("default.cedar").display().to_string(),
                text: String::from(BUILTIN_POLICIES),
            }],
            roles_source: roles_path.display().to_string(),
            roles,
            links: Vec::new(),
        },
        routes: Some(PolicyFile {
            name: root.join(ROUTES_FILE).display().to_string(),
            text: String::from(BUILTIN_ROUTES),
        }),
        // The admin API's own built-in copy.
        admin: None,
        root,
    })
}

const BUILTIN_SCHEMA: &str = include_str!("../../policies/schema.cedarschema");
const BUILTIN_POLICIES: &str = include_str!("../../policies/default.cedar");
const BUILTIN_ROLES: &str = include_str!("../../policies/roles.yaml");
const BUILTIN_ROUTES: &str = include_str!("../../policies/routes.yaml");

/// Compiles a loaded policies directory, reporting every problem at once.
#[cfg(feature = "control-plane")]
pub fn compile_loaded(loaded: PolicyDir) -> Result<CompiledDir, Vec<PolicyDiagnostic>> {
    let admin = match &loaded.admin {
        Some(file) => AdminPolicies::compile(file),
        None => AdminPolicies::builtin(),
    };
    let policies = portcullis_engine::policy::compile(&loaded.sources);
    let (policies, admin) = match (policies, admin) {
        (Ok(policies), Ok(admin)) => (policies, admin),
        (policies, admin) => {
            let mut problems = policies.err().map(|e| e.0).unwrap_or_default();
            place_role_problems(&loaded, &mut problems);
            problems.extend(admin.err().map(|e| e.0).unwrap_or_default());
            return Err(problems);
        }
    };
    let routes = match &loaded.routes {
        Some(file) => Some(crate::routes::compile(
            Path::new(&file.name),
            &file.text,
            &policies,
        )?),
        None => None,
    };
    Ok(CompiledDir {
        dir: loaded,
        policies,
        routes,
        admin: std::sync::Arc::new(admin),
    })
}
