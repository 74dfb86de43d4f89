//! The route map: method + path template → Cedar action, resource, parents, band, public.
//!
//! ```yaml
//! routes:
//!   - name: get_document                      # unique; the metric label
//!     method: GET                             # or a list: [GET, HEAD]
//!     path: /v1/spaces/{space}/documents/{doc}
//!     action: document.read                   # a concrete action of the schema
//!     resource: Document::{doc}               # Type::{param}, Type::"literal" or Type::{$tenant}
//!     parents: [Space::{space}]               # optional
//!     band: AMBER                             # GREEN (default) | AMBER | RED
//!     shadow: true                            # optional: decide and count, but forward
//!     context:                                # optional: context attributes from the request
//!       tier: { header: x-customer-tier }     # trusted from context.trusted_hops only,
//!                                             # unless `from_any_peer: true`
//!       verbose: { query: verbose }
//!       kind: { path: doc }                   # a path parameter
//!       plan: { claim: /subscription/plan }   # a JSON pointer into the token's claims
//!     rate_limit:                             # optional: checked after authentication,
//!       requests: 100                         #   before the decision; 429 past it
//!       per: 1m                               # a window: 10s, 1m, 1h (at most 1d)
//!       by: principal                         # principal | tenant | client | route
//!       burst: 20                             # optional: at once (default: `requests`)
//!       shared: true                          # optional: counted across proxies in Redis
//!     request_limits:                         # optional
//!       max_header_bytes: 16384               # more: 431
//!       max_body_bytes: 1048576               # more: 413
//!       upstream_timeout_ms: 5000             # the upstream's silence; past it 504
//!       client_timeout_ms: 10000              # the client's silence mid-body; past it 408
//!     cors:                                   # optional: browsers on other origins
//!       origins: [https://app.example.com]    # or ["*"] (not with credentials)
//!       methods: [GET]                        # optional: default the route's methods
//!       headers: [authorization]              # request headers beyond the safelisted
//!       credentials: true                     # optional: cookies / Authorization
//!       max_age_seconds: 600                  # optional: how long a preflight holds
//!   - name: get_document_rpc
//!     grpc: acme.docs.v1.Documents/Get        # a gRPC method: POST /acme.docs.v1.Documents/Get
//!     action: document.read                   # (refusals answered with grpc-status)
//!     resource: Tenant::{$tenant}
//!   - name: health
//!     method: GET
//!     path: /healthz
//!     public: true                            # no authentication, no decision
//! ```
//!
//! Compiled once into one radix tree per method (`matchit`); a request that matches no route
//! is refused. `{$tenant}` is the authenticated principal's tenant.
//!
//! A route's `context` attributes must be declared in the schema's context of its action,
//! as `String`, `Long` or `Bool`: their type is the schema's, and a request whose value is
//! not of that type is refused (400 `bad_context`) rather than evaluated. One the request
//! does not carry is left out of the context (policies test it with `has`).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use cedar_policy::Schema;
use portcullis_engine::decision::ContextKind;
use portcullis_engine::policy::{CompiledPolicies, PolicyDiagnostic};
use portcullis_model::EntityRef;
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::data_plane::cors::{CorsPolicy, CorsSpec};
use crate::data_plane::limits::{LimitBy, RateLimit, RequestLimits};
use crate::policy_dir::yaml_problem;

/// HTTP methods a route may name.
const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Security bands (seed 000).
pub const BANDS: &[&str] = &["GREEN", "AMBER", "RED"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFile {
    routes: Vec<Spanned<RouteSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Methods {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteSpec {
    name: String,
    #[serde(default)]
    method: Option<Methods>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    grpc: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    resource: Option<String>,
    #[serde(default)]
    parents: Vec<String>,
    #[serde(default)]
    band: Option<String>,
    #[serde(default)]
    public: bool,
    #[serde(default)]
    shadow: bool,
    #[serde(default)]
    context: std::collections::BTreeMap<String, ContextSourceSpec>,
    #[serde(default)]
    rate_limit: Option<RateLimitSpec>,
    #[serde(default)]
    cors: Option<CorsSpec>,
    #[serde(default)]
    request_limits: Option<RequestLimitsSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestLimitsSpec {
    #[serde(default)]
    max_header_bytes: Option<usize>,
    #[serde(default)]
    max_body_bytes: Option<u64>,
    #[serde(default)]
    upstream_timeout_ms: Option<u64>,
    #[serde(default)]
    client_timeout_ms: Option<u64>,
}

fn request_limits(spec: &RequestLimitsSpec) -> Result<RequestLimits, String> {
    let mut problems = Vec::new();
    if spec
        .max_header_bytes
        .is_some_and(|b| !(1024..=1024 * 1024).contains(&b))
    {
        problems.push("`max_header_bytes` must be between 1024 and 1048576");
    }
    if spec
        .upstream_timeout_ms
        .is_some_and(|t| !(1..=3_600_000).contains(&t))
    {
        problems.push("`upstream_timeout_ms` must be between 1 and 3600000");
    }
    if spec
        .client_timeout_ms
        .is_some_and(|t| !(1..=3_600_000).contains(&t))
    {
        problems.push("`client_timeout_ms` must be between 1 and 3600000");
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    Ok(RequestLimits {
        max_header_bytes: spec.max_header_bytes,
        max_body_bytes: spec.max_body_bytes,
        upstream_timeout: spec
            .upstream_timeout_ms
            .map(std::time::Duration::from_millis),
        client_timeout: spec.client_timeout_ms.map(std::time::Duration::from_millis),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitSpec {
    requests: u32,
    per: String,
    by: LimitBy,
    #[serde(default)]
    burst: Option<u32>,
    #[serde(default)]
    shared: bool,
}

/// Whether `name` is a gRPC method: `package.Service/Method` (the package optional).
fn is_grpc_method(name: &str) -> bool {
    let ident = |part: &str| {
        !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    match name.split_once('/') {
        Some((service, method)) => service.split('.').all(ident) && ident(method),
        None => false,
    }
}

/// The longest rate-limit window a route may name.
const MAX_WINDOW_SECONDS: u64 = 24 * 60 * 60;

/// A window: a number and a unit (`s`, `m`, `h`, `d`).
fn window_seconds(text: &str) -> Option<u64> {
    let unit_at = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(unit_at);
    let number: u64 = number.parse().ok()?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 60 * 60,
        "d" => 24 * 60 * 60,
        _ => return None,
    };
    number.checked_mul(scale).filter(|&s| s > 0)
}

fn rate_limit(spec: &RateLimitSpec, name: &str, public: bool) -> Result<RateLimit, String> {
    let mut problems = Vec::new();
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        problems.push(String::from(
            "names its limit in the RateLimit headers, so the route name may hold only letters, digits, `_`, `-` and `.`",
        ));
    }
    if spec.requests == 0 {
        problems.push(String::from("`requests` must be at least 1"));
    }
    if spec.burst == Some(0) {
        problems.push(String::from("`burst` must be at least 1"));
    }
    let window = window_seconds(&spec.per);
    match window {
        None => problems.push(format!(
            "`per: {}` is not a window like 10s, 1m, 1h or 1d",
            spec.per
        )),
        Some(w) if w > MAX_WINDOW_SECONDS => {
            problems.push(format!("`per: {}` is longer than a day", spec.per))
        }
        Some(_) => {}
    }
    if public && matches!(spec.by, LimitBy::Principal | LimitBy::Tenant) {
        problems.push(format!(
            "a public route has no principal: count it `by: client` or `by: route`, not `by: {}`",
            spec.by.as_str()
        ));
    }
    match (window, problems.is_empty()) {
        (Some(window), true) => Ok(RateLimit::new(
            name,
            spec.requests,
            window,
            spec.burst.unwrap_or(spec.requests),
            spec.by,
            spec.shared,
        )),
        _ => Err(problems.join("; ")),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContextSourceSpec {
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    claim: Option<String>,
    #[serde(default)]
    from_any_peer: bool,
}

/// A context attribute a route takes from the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextSource {
    /// The attribute's name in the context.
    pub name: String,
    /// Where its value is read.
    pub from: ContextFrom,
    /// Its type, from the schema.
    pub kind: ContextKind,
}

/// Where a context attribute's value is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextFrom {
    /// A request header; from a peer outside `context.trusted_hops` only when `any_peer`.
    Header {
        /// The header.
        name: http::HeaderName,
        /// Taken from any peer.
        any_peer: bool,
    },
    /// A query parameter (percent-decoded).
    Query(String),
    /// A path parameter of the route (percent-decoded).
    Path(String),
    /// A JSON pointer into the verified token's claims.
    Claim(String),
}

/// How to build one entity reference of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityTemplate {
    /// Cedar entity type.
    pub type_name: String,
    /// Where the id comes from.
    pub id: IdSource,
}

/// Where an entity id comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdSource {
    /// A path parameter.
    Param(String),
    /// A fixed id.
    Literal(String),
    /// The authenticated principal's tenant.
    PrincipalTenant,
}

/// A compiled route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Unique name (metric label).
    pub name: String,
    /// Cedar action; `None` for public routes.
    pub action: Option<String>,
    /// Resource; `None` for public routes.
    pub resource: Option<EntityTemplate>,
    /// Parents of the resource.
    pub parents: Vec<EntityTemplate>,
    /// Security band.
    pub band: String,
    /// Public: forwarded without authentication or decision.
    pub public: bool,
    /// Shadow: decided and counted, but forwarded whatever the decision.
    pub shadow: bool,
    /// Context attributes taken from the request, by name.
    pub context: Vec<ContextSource>,
    /// Its rate limit, if it has one.
    pub rate_limit: Option<RateLimit>,
    /// Its CORS policy, if browsers on other origins may call it.
    pub cors: Option<CorsPolicy>,
    /// The size of its requests and how long its upstream may keep it waiting.
    pub request_limits: RequestLimits,
}

impl Route {
    /// Whether some context attribute is read from the token's claims.
    pub fn reads_claims(&self) -> bool {
        self.context
            .iter()
            .any(|c| matches!(c.from, ContextFrom::Claim(_)))
    }
}

impl EntityTemplate {
    /// The entity of one request: the id from a path parameter (percent-decoded), a literal,
    /// or the principal's tenant. `None` when the parameter or the tenant is missing.
    pub fn resolve(
        &self,
        params: &matchit::Params<'_, '_>,
        principal_tenant: Option<&str>,
    ) -> Option<EntityRef> {
        let id = match &self.id {
            IdSource::Param(name) => crate::data_plane::path::decode_param(params.get(name)?)?,
            IdSource::Literal(id) => id.clone(),
            IdSource::PrincipalTenant => principal_tenant?.to_owned(),
        };
        EntityRef::new(self.type_name.as_str(), id).ok()
    }
}

/// The compiled route map.
#[derive(Debug, Default)]
pub struct RouteMap {
    by_method: HashMap<String, matchit::Router<usize>>,
    routes: Vec<Route>,
}

/// A matched route with its path parameters.
#[derive(Debug)]
pub struct RouteMatch<'m, 'p> {
    /// Index of the route in [`RouteMap::routes`].
    pub index: usize,
    /// The route.
    pub route: &'m Route,
    /// Path parameters.
    pub params: matchit::Params<'m, 'p>,
}

impl RouteMap {
    /// The route for `method` and (normalised) `path`, if any.
    pub fn find<'m, 'p>(&'m self, method: &str, path: &'p str) -> Option<RouteMatch<'m, 'p>> {
        let matched = self.by_method.get(method)?.at(path).ok()?;
        let index = *matched.value;
        let route = self.routes.get(index)?;
        Some(RouteMatch {
            index,
            route,
            params: matched.params,
        })
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Whether some route takes a context attribute from the token's claims.
    pub fn reads_claims(&self) -> bool {
        self.routes.iter().any(Route::reads_claims)
    }

    /// Whether some route's rate limit is counted in Redis.
    pub fn has_shared_limits(&self) -> bool {
        self.routes
            .iter()
            .any(|r| r.rate_limit.as_ref().is_some_and(|l| l.shared))
    }

    /// The routes, in file order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// What this map needs that `policies` lacks: routes whose action the policy set does
    /// not declare, or does not apply to the route's resource type. Such a route denies
    /// every request; the map was checked against other policies when it was loaded, and
    /// the control plane may since have sent a set without them.
    pub fn problems_with(&self, policies: &CompiledPolicies) -> Vec<String> {
        let schema = policies.schema();
        self.routes
            .iter()
            .filter_map(|route| {
                let action = route.action.as_deref()?;
                if policies.index().action(action).is_none() {
                    return Some(format!(
                        "route `{}`: action `{action}` is not in the policy set in force",
                        route.name
                    ));
                }
                let resource = route.resource.as_ref()?;
                let applies = resource_types_of(schema, action)?;
                (!applies.contains(&resource.type_name)).then(|| {
                    format!(
                        "route `{}`: action `{action}` no longer applies to `{}`",
                        route.name, resource.type_name
                    )
                })
            })
            .collect()
    }
}

fn parse_entity_template(
    text: &str,
    path_params: &HashSet<String>,
) -> Result<EntityTemplate, String> {
    let (type_name, id) = text.rsplit_once("::").ok_or_else(|| {
        format!("`{text}` is not of the form `Type::{{param}}` or `Type::\"id\"`")
    })?;
    let id = if let Some(param) = id.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
        if param == "$tenant" {
            IdSource::PrincipalTenant
        } else if path_params.contains(param) {
            IdSource::Param(param.to_owned())
        } else {
            return Err(format!(
                "`{text}` names `{{{param}}}`, which is not a parameter of the path"
            ));
        }
    } else if let Some(lit) = id.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        IdSource::Literal(lit.to_owned())
    } else {
        return Err(format!(
            "`{text}` is not of the form `Type::{{param}}` or `Type::\"id\"`"
        ));
    };
    Ok(EntityTemplate {
        type_name: type_name.to_owned(),
        id,
    })
}

fn path_params(path: &str) -> Vec<String> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|p| p.trim_start_matches('*').to_owned())
        .collect()
}

/// Parses and checks a route map against the compiled policies. Every problem is reported.
pub fn compile(
    file: &Path,
    text: &str,
    policies: &CompiledPolicies,
) -> Result<RouteMap, Vec<PolicyDiagnostic>> {
    let parsed: RouteFile = match serde_saphyr::from_str(text) {
        Ok(p) => p,
        Err(e) => return Err(vec![yaml_problem(file, &e)]),
    };
    let schema = policies.schema();
    let mut problems = Vec::new();
    let mut map = RouteMap::default();
    let mut names = HashSet::new();
    for spanned in parsed.routes {
        let at = |message: String| PolicyDiagnostic {
            file: file.display().to_string(),
            line: usize::try_from(spanned.referenced.line()).unwrap_or(0),
            column: usize::try_from(spanned.referenced.column()).unwrap_or(0),
            message,
        };
        let spec = &spanned.value;
        let before = problems.len();
        let label = format!("route `{}`", spec.name);
        if !names.insert(spec.name.clone()) {
            problems.push(at(format!("{label}: the name is already used")));
        }
        let (methods, path) = match (&spec.grpc, &spec.method, &spec.path) {
            (Some(grpc), None, None) => {
                if !is_grpc_method(grpc) {
                    problems.push(at(format!(
                        "{label}: grpc `{grpc}` is not a method like `package.Service/Method`"
                    )));
                }
                (vec![String::from("POST")], format!("/{grpc}"))
            }
            (Some(_), _, _) => {
                problems.push(at(format!(
                    "{label}: a gRPC route takes no `method` or `path` (it is POST /{{service}}/{{method}})"
                )));
                continue;
            }
            (None, Some(method), Some(path)) => {
                let methods = match method {
                    Methods::One(m) => vec![m.clone()],
                    Methods::Many(ms) => ms.clone(),
                };
                (methods, path.clone())
            }
            (None, _, _) => {
                problems.push(at(format!(
                    "{label}: a route needs a `method` and a `path`, or `grpc`"
                )));
                continue;
            }
        };
        if !path.starts_with('/') {
            problems.push(at(format!("{label}: path `{path}` must start with `/`")));
        }
        for m in &methods {
            if !METHODS.contains(&m.as_str()) {
                problems.push(at(format!("{label}: `{m}` is not an HTTP method")));
            }
        }
        let band = spec.band.clone().unwrap_or_else(|| String::from("GREEN"));
        if !BANDS.contains(&band.as_str()) {
            problems.push(at(format!(
                "{label}: band `{band}` is not one of GREEN, AMBER, RED"
            )));
        }
        let params: HashSet<String> = path_params(&path).into_iter().collect();
        let mut route = Route {
            name: spec.name.clone(),
            action: None,
            resource: None,
            parents: Vec::new(),
            band,
            public: spec.public,
            shadow: spec.shadow,
            context: Vec::new(),
            rate_limit: None,
            cors: None,
            request_limits: RequestLimits::default(),
        };
        if let Some(limits) = &spec.request_limits {
            match request_limits(limits) {
                Ok(limits) => route.request_limits = limits,
                Err(m) => problems.push(at(format!("{label}: request_limits: {m}"))),
            }
        }
        if let Some(cors) = &spec.cors {
            match CorsPolicy::compile(cors, &methods) {
                Ok(policy) => route.cors = Some(policy),
                Err(m) => problems.push(at(format!("{label}: cors: {m}"))),
            }
        }
        if let Some(limit) = &spec.rate_limit {
            match rate_limit(limit, &spec.name, spec.public) {
                Ok(limit) => route.rate_limit = Some(limit),
                Err(m) => problems.push(at(format!("{label}: rate_limit: {m}"))),
            }
        }
        if spec.public {
            if spec.action.is_some()
                || spec.resource.is_some()
                || !spec.parents.is_empty()
                || spec.shadow
                || !spec.context.is_empty()
            {
                problems.push(at(format!(
                    "{label}: a public route takes no action, resource, parents, shadow or context"
                )));
            }
        } else {
            check_protected(
                spec,
                &params,
                schema,
                policies,
                &label,
                &mut route,
                &mut |m| problems.push(at(m)),
            );
        }
        if problems.len() > before {
            continue;
        }
        let index = map.routes.len();
        map.routes.push(route);
        for m in methods {
            let router = map.by_method.entry(m.clone()).or_default();
            if let Err(e) = router.insert(path.clone(), index) {
                problems.push(at(format!("{label}: {m} {path}: {e}")));
            }
        }
    }
    if problems.is_empty() {
        Ok(map)
    } else {
        Err(problems)
    }
}

fn check_protected(
    spec: &RouteSpec,
    params: &HashSet<String>,
    schema: &Schema,
    policies: &CompiledPolicies,
    label: &str,
    route: &mut Route,
    problem: &mut dyn FnMut(String),
) {
    let Some(action) = &spec.action else {
        problem(format!("{label}: a protected route needs an `action`"));
        return;
    };
    if policies.index().action(action).is_none() {
        problem(format!(
            "{label}: action `{action}` is not a concrete action of the schema"
        ));
    }
    route.action = Some(action.clone());
    let Some(resource) = &spec.resource else {
        problem(format!("{label}: a protected route needs a `resource`"));
        return;
    };
    let known_types: HashSet<String> = schema.entity_types().map(ToString::to_string).collect();
    match parse_entity_template(resource, params) {
        Ok(t) => {
            if !known_types.contains(&t.type_name) {
                problem(format!(
                    "{label}: resource type `{}` is not an entity type of the schema",
                    t.type_name
                ));
            } else if let Some(allowed) = resource_types_of(schema, action)
                && !allowed.contains(&t.type_name)
            {
                problem(format!(
                    "{label}: action `{action}` does not apply to `{}` (it applies to {})",
                    t.type_name,
                    allowed.join(", ")
                ));
            }
            route.resource = Some(t);
        }
        Err(m) => problem(format!("{label}: resource {m}")),
    }
    for parent in &spec.parents {
        match parse_entity_template(parent, params) {
            Ok(t) if known_types.contains(&t.type_name) => route.parents.push(t),
            Ok(t) => problem(format!(
                "{label}: parent type `{}` is not an entity type of the schema",
                t.type_name
            )),
            Err(m) => problem(format!("{label}: parent {m}")),
        }
    }
    for (name, source) in &spec.context {
        match context_source(name, source, params, policies, action) {
            Ok(source) => route.context.push(source),
            Err(m) => problem(format!("{label}: context `{name}`: {m}")),
        }
    }
}

fn context_source(
    name: &str,
    spec: &ContextSourceSpec,
    params: &HashSet<String>,
    policies: &CompiledPolicies,
    action: &str,
) -> Result<ContextSource, String> {
    let from = match (&spec.header, &spec.query, &spec.path, &spec.claim) {
        (Some(header), None, None, None) => ContextFrom::Header {
            name: http::HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| format!("`{header}` is not a header name"))?,
            any_peer: spec.from_any_peer,
        },
        (None, Some(query), None, None) => ContextFrom::Query(query.clone()),
        (None, None, Some(param), None) if params.contains(param) => {
            ContextFrom::Path(param.clone())
        }
        (None, None, Some(param), None) => {
            return Err(format!("`{param}` is not a parameter of the path"));
        }
        (None, None, None, Some(pointer)) if pointer.starts_with('/') => {
            ContextFrom::Claim(pointer.clone())
        }
        (None, None, None, Some(pointer)) => {
            return Err(format!(
                "`{pointer}` is not a JSON pointer (one starts with `/`)"
            ));
        }
        _ => {
            return Err(String::from(
                "give exactly one of `header`, `query`, `path` and `claim`",
            ));
        }
    };
    if spec.from_any_peer && !matches!(from, ContextFrom::Header { .. }) {
        return Err(String::from("`from_any_peer` applies to `header` only"));
    }
    Ok(ContextSource {
        name: name.to_owned(),
        from,
        kind: policies.context_attribute(action, name)?,
    })
}

/// The resource types an action applies to, per the schema.
fn resource_types_of(schema: &Schema, action: &str) -> Option<Vec<String>> {
    let uid = schema
        .actions()
        .find(|a| a.id().unescaped() == action)?
        .clone();
    let types: Vec<String> = schema
        .resources_for_action(&uid)?
        .map(ToString::to_string)
        .collect();
    Some(types)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_engine::policy::{PolicySources, compile as compile_policies};
    use portcullis_model::PolicyFile;

    fn policies(actions: &str) -> CompiledPolicies {
        compile_policies(&PolicySources {
            schema: PolicyFile {
                name: String::from("schema.cedarschema"),
                text: format!(
                    "entity User; entity Folder; entity Document in [Folder];\n{actions}"
                ),
            },
            files: Vec::new(),
            roles_source: String::from("roles.yaml"),
            roles: Vec::new(),
            links: Vec::new(),
        })
        .unwrap()
    }

    #[test]
    fn context_sources_are_typed_by_the_schema_and_every_bad_one_is_named() {
        let loaded = policies(
            "type Ctx = { hour: Long, tier?: String, limit?: Long, beta?: Bool, tags?: Set<String> };
             action \"doc.read\" appliesTo { principal: User, resource: Document, context: Ctx };",
        );
        let route = |context: &str| {
            format!(
                "routes:\n  - name: read\n    method: GET\n    path: /docs/{{id}}\n    action: doc.read\n    resource: Document::{{id}}\n    context:\n{context}"
            )
        };
        let map = compile(
            Path::new("routes.yaml"),
            &route("      tier: { header: x-tier }\n      limit: { query: limit }\n      beta: { claim: /beta }\n"),
            &loaded,
        )
        .unwrap();
        let read = &map.routes()[0];
        let kinds: Vec<(&str, ContextKind)> = read
            .context
            .iter()
            .map(|c| (c.name.as_str(), c.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("beta", ContextKind::Bool),
                ("limit", ContextKind::Long),
                ("tier", ContextKind::String)
            ]
        );
        assert!(read.reads_claims() && map.reads_claims());

        let problems = compile(
            Path::new("routes.yaml"),
            &route(
                "      hour: { query: h }\n      tags: { query: t }\n      nope: { query: n }\n      tier: { header: x-tier, query: t }\n      limit: { path: other }\n      beta: { claim: beta, from_any_peer: true }\n",
            ),
            &loaded,
        )
        .unwrap_err();
        let messages: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
        let named = |attr: &str| {
            messages
                .iter()
                .any(|m| m.starts_with(&format!("route `read`: context `{attr}`")))
        };
        for attr in ["hour", "tags", "nope", "tier", "limit", "beta"] {
            assert!(named(attr), "{attr}: {messages:?}");
        }
        assert_eq!(messages.len(), 6, "{messages:?}");
    }

    #[test]
    fn rate_limits_are_compiled_and_every_bad_one_is_named_with_its_line() {
        let loaded =
            policies("action \"doc.read\" appliesTo { principal: User, resource: Document };");
        let routes = |limit: &str, public_limit: &str| {
            format!(
                "routes:\n  - name: read\n    method: GET\n    path: /docs/{{id}}\n    action: doc.read\n    resource: Document::{{id}}\n    rate_limit: {limit}\n  - name: ping\n    method: GET\n    path: /ping\n    public: true\n    rate_limit: {public_limit}\n"
            )
        };
        let map = compile(
            Path::new("routes.yaml"),
            &routes(
                "{ requests: 100, per: 1m, by: tenant, burst: 10, shared: true }",
                "{ requests: 5, per: 10s, by: client }",
            ),
            &loaded,
        )
        .unwrap();
        let read = map.routes()[0].rate_limit.as_ref().unwrap();
        assert_eq!((read.by, read.shared), (LimitBy::Tenant, true));
        assert_eq!(read.policy, "\"read\";q=100;w=60");
        assert_eq!(read.gcra.interval(), std::time::Duration::from_millis(600));
        assert_eq!(read.gcra.capacity(), std::time::Duration::from_secs(6));
        let ping = map.routes()[1].rate_limit.as_ref().unwrap();
        assert_eq!(ping.gcra.capacity(), std::time::Duration::from_secs(10));
        assert!(map.has_shared_limits());

        let problems = compile(
            Path::new("routes.yaml"),
            &routes(
                "{ requests: 0, per: 1 week, by: principal, burst: 0 }",
                "{ requests: 5, per: 2d, by: principal }",
            ),
            &loaded,
        )
        .unwrap_err();
        let messages: Vec<(usize, &str)> = problems
            .iter()
            .map(|p| (p.line, p.message.as_str()))
            .collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        let (line, read) = messages[0];
        assert_eq!(line, 2);
        for part in [
            "`requests` must be at least 1",
            "`burst` must be at least 1",
            "`per: 1 week`",
        ] {
            assert!(read.contains(part), "{part}: {read}");
        }
        let (line, ping) = messages[1];
        assert_eq!(line, 8);
        assert!(
            ping.contains("longer than a day") && ping.contains("`by: principal`"),
            "{ping}"
        );
    }

    #[test]
    fn a_grpc_route_is_a_post_to_its_method_and_a_bad_one_is_named() {
        let loaded =
            policies("action \"doc.read\" appliesTo { principal: User, resource: Document };");
        let route = |grpc: &str, extra: &str| {
            format!(
                "routes:\n  - name: rpc\n    grpc: {grpc}\n{extra}    action: doc.read\n    resource: Document::\"d1\"\n"
            )
        };
        let map = compile(
            Path::new("routes.yaml"),
            &route("acme.docs.v1.Docs/Get", ""),
            &loaded,
        )
        .unwrap();
        assert_eq!(
            map.find("POST", "/acme.docs.v1.Docs/Get")
                .unwrap()
                .route
                .name,
            "rpc"
        );
        assert!(map.find("GET", "/acme.docs.v1.Docs/Get").is_none());
        for (grpc, extra, problem) in [
            ("acme.Docs", "", "is not a method like"),
            ("acme..Docs/Get", "", "is not a method like"),
            (
                "acme.Docs/Get",
                "    method: GET\n",
                "takes no `method` or `path`",
            ),
        ] {
            let problems =
                compile(Path::new("routes.yaml"), &route(grpc, extra), &loaded).unwrap_err();
            assert!(
                problems[0].message.contains(problem),
                "{grpc}: {problems:?}"
            );
        }
        let neither = compile(
            Path::new("routes.yaml"),
            "routes:\n  - name: r\n    action: doc.read\n    resource: Document::{id}\n",
            &loaded,
        )
        .unwrap_err();
        assert!(
            neither[0]
                .message
                .contains("needs a `method` and a `path`, or `grpc`")
        );
    }

    #[test]
    fn a_policy_set_without_a_routes_action_is_reported_route_by_route() {
        let loaded = policies(
            "action \"doc.read\", \"doc.write\" appliesTo { principal: User, resource: Document };",
        );
        let map = compile(
            Path::new("routes.yaml"),
            "routes:\n  - name: read\n    method: GET\n    path: /docs/{id}\n    action: doc.read\n    resource: Document::{id}\n  - name: write\n    method: PUT\n    path: /docs/{id}\n    action: doc.write\n    resource: Document::{id}\n  - name: health\n    method: GET\n    path: /healthz\n    public: true\n",
            &loaded,
        )
        .unwrap();
        assert!(map.problems_with(&loaded).is_empty());
        let without_read =
            policies("action \"doc.write\" appliesTo { principal: User, resource: Document };");
        assert_eq!(
            map.problems_with(&without_read),
            ["route `read`: action `doc.read` is not in the policy set in force"]
        );
        let moved = policies(
            "action \"doc.read\" appliesTo { principal: User, resource: Document };\naction \"doc.write\" appliesTo { principal: User, resource: Folder };",
        );
        assert_eq!(
            map.problems_with(&moved),
            ["route `write`: action `doc.write` no longer applies to `Document`"]
        );
    }
}
