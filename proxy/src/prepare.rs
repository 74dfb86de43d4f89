//! From the configuration to what the data plane runs on: the gate (upstreams, context,
//! screening, the decision endpoint) over a compiled route map, and the authentication
//! settings. The data plane takes these prepared values and reads no configuration; every
//! error here names the configuration key at fault.

use std::time::Duration;

use http::HeaderName;

use portcullis_model::PrincipalKind;

use crate::config::{
    AuthConfig, Config, ContextConfig, PrincipalType, parse_cidr, split_host_port,
};
use crate::data_plane::authn::claims::{ClaimMapping, UnknownPrincipals};
use crate::data_plane::authn::{AuthSettings, IssuerSettings, parse_algorithm};
use crate::data_plane::context::ContextSettings;
use crate::data_plane::screen::Screen;
use crate::data_plane::{DecisionEndpoint, Gate, GateSettings, Upstream};
use crate::metrics::Metrics;
use crate::routes::RouteMap;

/// The gate of a validated configuration over a compiled route map, counting in `metrics`.
pub fn gate(config: &Config, routes: RouteMap, metrics: &Metrics) -> Result<Gate, String> {
    let upstreams = config
        .upstreams
        .iter()
        .map(|u| {
            let (host, _) = split_host_port(&u.address)
                .ok_or_else(|| format!("upstream `{}`: bad address", u.name))?;
            Ok(Upstream {
                name: u.name.clone(),
                address: u.address.clone(),
                tls: u.tls,
                sni: u.sni.clone().unwrap_or_else(|| host.to_owned()),
                host: u
                    .host
                    .as_deref()
                    .map(|h| h.trim_end_matches('.').to_owned()),
                path_prefix: u.path_prefix.clone(),
                connect_timeout: Duration::from_millis(u.connect_timeout_ms),
                read_timeout: Duration::from_millis(u.read_timeout_ms),
                idle_timeout: Duration::from_millis(u.idle_timeout_ms),
                http2: u.http2,
            })
        })
        .collect::<Result<_, String>>()?;
    let endpoint = &config.decision_endpoint;
    let decision_endpoint = endpoint
        .enabled
        .then(|| {
            Ok::<_, String>(DecisionEndpoint {
                gateway: endpoint.gateway.ok_or_else(|| {
                    String::from("decision_endpoint.gateway: name the gateway in front")
                })?,
                path: endpoint.path.trim_end_matches('/').to_owned(),
                trusted_gateways: endpoint
                    .trusted_gateways
                    .iter()
                    .map(|c| {
                        parse_cidr(c)
                            .ok_or_else(|| format!("decision_endpoint.trusted_gateways: `{c}`"))
                    })
                    .collect::<Result<_, _>>()?,
            })
        })
        .transpose()?;
    if routes.has_shared_limits() && config.rate_limits.redis.is_none() {
        return Err(String::from(
            "routes: a rate limit is `shared: true`, but `rate_limits.redis` names no Redis to count it in",
        ));
    }
    Ok(Gate::new(
        routes,
        GateSettings {
            mode: config.enforcement.mode,
            unmatched_status: config.enforcement.unmatched_status,
            context: context(&config.context)?,
            upstreams,
            decision_endpoint,
            screen: Screen {
                method_override: config.enforcement.method_override,
                override_query: config.enforcement.method_override_query.clone(),
            },
            forward_credential: config.auth.forward_credential,
        },
        metrics,
    ))
}

/// The authentication settings of `auth`, with the first issuer's `iss` given (the
/// configured one or the dev key's); further issuers take what they leave unset from
/// `auth`.
pub fn auth_settings(config: &AuthConfig, issuer: String) -> Result<AuthSettings, String> {
    let algorithms = |names: &[String]| {
        names
            .iter()
            .map(|a| parse_algorithm(a))
            .collect::<Result<Vec<_>, _>>()
    };
    let kind = |t: Option<PrincipalType>| {
        t.map(|t| match t {
            PrincipalType::User => PrincipalKind::User,
            PrincipalType::Service => PrincipalKind::Service,
        })
    };
    let max_age = |url: &Option<String>, seconds: Option<u64>| {
        url.as_ref().and(seconds).map(Duration::from_secs)
    };
    let mut issuers = vec![IssuerSettings {
        issuer,
        audiences: config.audiences.clone(),
        algorithms: algorithms(&config.algorithms)?,
        claims: config.claims.clone(),
        principal_kind: kind(config.principal_type),
        max_token_lifetime_seconds: config.max_token_lifetime_seconds,
        subjects: config.subjects.clone(),
        keys_max_age: max_age(&config.jwks_url, config.jwks_max_age_seconds),
        from_claims: from_claims(config.unknown_principals, &config.claim_mapping),
    }];
    for further in &config.issuers {
        issuers.push(IssuerSettings {
            issuer: further.issuer.clone(),
            audiences: further
                .audiences
                .clone()
                .unwrap_or_else(|| config.audiences.clone()),
            algorithms: algorithms(further.algorithms.as_ref().unwrap_or(&config.algorithms))?,
            claims: further
                .claims
                .clone()
                .unwrap_or_else(|| config.claims.clone()),
            principal_kind: kind(further.principal_type.or(config.principal_type)),
            max_token_lifetime_seconds: further
                .max_token_lifetime_seconds
                .or(config.max_token_lifetime_seconds),
            subjects: further.subjects.clone(),
            keys_max_age: max_age(
                &further.jwks_url,
                further.jwks_max_age_seconds.or(config.jwks_max_age_seconds),
            ),
            from_claims: from_claims(further.unknown_principals, &further.claim_mapping),
        });
    }
    Ok(AuthSettings {
        issuers,
        leeway_seconds: config.leeway_seconds,
        max_token_bytes: config.max_token_bytes,
        unknown_kid_cooldown: Duration::from_secs(config.unknown_kid_cooldown_seconds),
    })
}

/// The claim mapping, when unknown principals are taken from their claims.
fn from_claims(unknown: UnknownPrincipals, mapping: &ClaimMapping) -> Option<ClaimMapping> {
    (unknown == UnknownPrincipals::FromClaims).then(|| mapping.clone())
}

/// The context settings of `context`.
pub fn context(config: &ContextConfig) -> Result<ContextSettings, String> {
    let time_zone = jiff::tz::TimeZone::get(&config.time_zone)
        .map_err(|e| format!("context.time_zone: {e}"))?;
    let fixed_now_ms = config
        .fixed_time
        .as_deref()
        .map(|t| {
            t.parse::<jiff::Timestamp>()
                .map(|ts| ts.as_millisecond())
                .map_err(|e| format!("context.fixed_time: {e}"))
        })
        .transpose()?;
    let trusted_hops = config
        .trusted_hops
        .iter()
        .map(|c| parse_cidr(c).ok_or_else(|| format!("context.trusted_hops: `{c}`")))
        .collect::<Result<_, _>>()?;
    let header = |name: &str, key: &str| {
        HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("{key}: `{name}` is not a header name"))
    };
    Ok(ContextSettings::new(
        time_zone,
        fixed_now_ms,
        trusted_hops,
        header(&config.risk_header, "context.risk_header")?,
        header(&config.device_header, "context.device_header")?,
    ))
}
