//! The configuration file: one YAML document, read strictly and checked as a whole before
//! any listener binds.
//!
//! Sources, later ones winning: the file (with `${VAR}` / `${VAR:default}` interpolation),
//! `PORTCULLIS_SECTION__KEY=value` environment variables, repeated `--set a.b=value` flags.
//! Secrets may be given as `*_file` keys, read at load time. Every problem is reported at
//! once: file errors as `file:line:col: message`, the rest naming the key
//! (`auth.jwks_url: ...`). `portcullis config dump` prints the effective result with
//! secrets redacted.
//!
//! Every field is documented in `deploy/examples/portcullis.yaml`.

mod interpolate;
mod overrides;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::data_plane::authn::certificate::CertificateMapping;
use crate::data_plane::authn::claims::{ClaimMapping, UnknownPrincipals};
use crate::data_plane::authn::{ClaimNames, SubjectRules};
use crate::data_plane::gateway::GatewayKind;
use crate::data_plane::record::OnFull;
use crate::data_plane::screen::MethodOverride;
use crate::data_plane::{EnforcementMode, ForwardCredential};
use portcullis_ledger::RedactionMasks;
use portcullis_ledger::tail::SinkFormat;
use serde::{Deserialize, Serialize};

pub use overrides::Override;

/// Default data-plane address (CONVENTIONS.md).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8480";
/// Default ops address (health and metrics).
pub const DEFAULT_OPS: &str = "0.0.0.0:8481";
/// Default admin API address (loopback only).
pub const DEFAULT_ADMIN: &str = "127.0.0.1:8482";
/// Default upstream for a sidecar.
pub const DEFAULT_UPSTREAM: &str = "127.0.0.1:8080";

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The data-plane listeners.
    pub listen: ListenConfig,
    /// The ops listener: `/livez`, `/readyz`, `/healthz`, `/metrics`, and the identity
    /// assertion's `/.well-known/jwks.json`.
    pub ops: OpsConfig,
    /// The admin API listener (`serve`).
    pub admin: AdminConfig,
    /// Where allowed requests go; the first match by host and path prefix wins.
    pub upstreams: Vec<UpstreamConfig>,
    /// The policies directory (schema, policies, roles, route map).
    pub policies: PoliciesConfig,
    /// Where `serve` keeps its state: the SQLite store and the dev signing key.
    pub data_dir: PathBuf,
    /// The store `serve` runs on; default: `<data_dir>/store.db`.
    pub store: StoreConfig,
    /// Authentication of callers.
    pub auth: AuthConfig,
    /// A JWT signed by Portcullis telling the upstream whom a request was allowed for.
    pub identity_assertion: IdentityAssertionConfig,
    /// How the request context is built.
    pub context: ContextConfig,
    /// What happens with a decision.
    pub enforcement: EnforcementConfig,
    /// The decision-only endpoint for other gateways.
    pub decision_endpoint: DecisionEndpointConfig,
    /// The decision audit ledger.
    pub audit: AuditConfig,
    /// Where `portcullis proxy` gets its state.
    pub control_plane: ControlPlaneConfig,
    /// How much of the state `portcullis proxy` holds, and the shared cache (Redis) of
    /// principals that the control plane writes and cached proxies read.
    pub state: StateConfig,
    /// Lifecycle events into the control plane (`serve`, `control`).
    pub events: EventsConfig,
    /// Rate limits of routes (each route's `rate_limit` in the route map): the bound of the
    /// local counters and the Redis that `shared` limits are counted in.
    pub rate_limits: RateLimitsConfig,
    /// The brute-force lockout of failed authentications on the data plane.
    pub lockout: LockoutConfig,
    /// Shutdown timing.
    pub shutdown: ShutdownConfig,
    /// Worker threads of the data plane.
    pub threads: usize,
    /// Logging.
    pub log: LogConfig,
    /// The sidecar injected into Kubernetes pods (the webhook of `control`, `portcullis
    /// inject`).
    pub inject: InjectConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: ListenConfig::default(),
            ops: OpsConfig::default(),
            admin: AdminConfig::default(),
            upstreams: vec![UpstreamConfig::default()],
            policies: PoliciesConfig::default(),
            data_dir: PathBuf::from("portcullis-data"),
            store: StoreConfig::default(),
            auth: AuthConfig::default(),
            identity_assertion: IdentityAssertionConfig::default(),
            context: ContextConfig::default(),
            enforcement: EnforcementConfig::default(),
            decision_endpoint: DecisionEndpointConfig::default(),
            audit: AuditConfig::default(),
            control_plane: ControlPlaneConfig::default(),
            state: StateConfig::default(),
            events: EventsConfig::default(),
            rate_limits: RateLimitsConfig::default(),
            lockout: LockoutConfig::default(),
            shutdown: ShutdownConfig::default(),
            threads: 2,
            log: LogConfig::default(),
            inject: InjectConfig::default(),
        }
    }
}

/// Data-plane listeners.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Plain-HTTP address, `host:port`.
    pub address: String,
    /// An HTTPS listener beside it.
    pub tls: Option<TlsListenConfig>,
    /// The longest a whole request head may take to arrive, from its first byte (slowloris);
    /// then the connection is closed and counted.
    pub request_head_timeout_ms: u64,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            address: String::from(DEFAULT_LISTEN),
            tls: None,
            request_head_timeout_ms: 10_000,
        }
    }
}

/// An HTTPS listener. Certificate and key are re-read when the files change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListenConfig {
    /// `host:port`.
    pub address: String,
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// PEM CA certificates client certificates must chain to. With it, a client that
    /// presents a certificate is verified in the handshake, and a request of it without a
    /// token is the workload the certificate names (`auth.certificates`).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// `optional` (default: users with tokens and workloads with certificates side by side)
    /// or `required` (a client without a certificate is refused in the handshake).
    #[serde(default = "optional_client_auth")]
    pub client_auth: ClientAuth,
}

fn optional_client_auth() -> ClientAuth {
    ClientAuth::Optional
}

/// The ops listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// `host:port`.
    pub address: String,
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            address: String::from(DEFAULT_OPS),
        }
    }
}

/// The admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve it.
    pub enabled: bool,
    /// `host:port`; loopback by default.
    pub address: String,
    /// Admin tokens, one `<subject> sha256:<hex>` per line. Default: `<data_dir>/admin-tokens`,
    /// created on the first start with one token for `admin`, whose plain text is written
    /// once to `<data_dir>/admin-token` (mode 0600).
    pub tokens_file: Option<PathBuf>,
    /// The same lines given inline, typically from the environment
    /// (`PORTCULLIS_ADMIN__TOKENS`, lines separated by newlines or `;`). Not with
    /// `tokens_file`.
    pub tokens: Option<String>,
    /// Also accept JWTs from `auth.issuer` (same keys) as admin credentials. Off by default.
    pub jwt: Option<AdminJwtConfig>,
    /// Failed authentications tolerated per client address before its failures get 429.
    pub failed_auth: FailedAuthConfig,
    /// Serve the admin API over TLS (what sidecars follow in a cluster). Off: plain HTTP,
    /// for loopback.
    pub tls: Option<AdminTlsConfig>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            address: String::from(DEFAULT_ADMIN),
            tokens_file: None,
            tokens: None,
            jwt: None,
            failed_auth: FailedAuthConfig::default(),
            tls: None,
        }
    }
}

/// The sidecar that `portcullis inject` and the injection webhook add to a pod. Per pod,
/// `portcullis.dev/*` annotations tune it (see `crate::inject`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InjectConfig {
    /// Serve the mutating webhook, `POST /inject`, on the admin listener (the API server
    /// calls it over HTTPS: needs `admin.tls`).
    pub webhook: bool,
    /// The sidecar's image.
    pub image: String,
    /// `IfNotPresent`, `Always` or `Never`.
    pub image_pull_policy: String,
    /// The control plane the sidecar follows.
    pub control_plane_url: String,
    /// The Secret (key `token`) with the sidecar's control-plane token, in the pod's
    /// namespace.
    pub token_secret: String,
    /// The ConfigMap (key `ca.crt`) with the control plane's CA, in the pod's namespace;
    /// empty: the public roots.
    pub ca_config_map: String,
    /// The ConfigMap with the sidecar's `portcullis.yaml` (auth, ...) and `routes.yaml`,
    /// in the pod's namespace.
    pub config_map: String,
    /// A native sidecar (an init container with `restartPolicy: Always`, Kubernetes ≥
    /// 1.29): `auto` (by `kubernetes_version`; native when it is unknown), `true`, `false`.
    pub native_mode: NativeMode,
    /// The cluster's version (`"1.30"`, quoted: as a number 1.30 would read 1.3), for
    /// `native_mode: auto`; the Helm chart sets it.
    #[serde(deserialize_with = "version_string")]
    pub kubernetes_version: Option<String>,
    /// The sidecar's ops port (`/livez`, `/readyz`, `/metrics`), unless a pod says
    /// otherwise.
    pub ops_port: u16,
    /// The sidecar's resources, unless a pod says otherwise.
    pub resources: SidecarResources,
    /// Namespaces never injected (the control plane's own belongs here).
    pub excluded_namespaces: Vec<String>,
}

impl Default for InjectConfig {
    fn default() -> Self {
        Self {
            webhook: false,
            image: format!(
                "ghcr.io/portcullis-dev/portcullis:{}",
                env!("CARGO_PKG_VERSION")
            ),
            image_pull_policy: String::from("IfNotPresent"),
            control_plane_url: String::from("https://portcullis-control.portcullis.svc:8482"),
            token_secret: String::from("portcullis-sidecar-token"),
            ca_config_map: String::from("portcullis-ca"),
            config_map: String::from("portcullis-sidecar"),
            native_mode: NativeMode::Auto,
            kubernetes_version: None,
            ops_port: 8481,
            resources: SidecarResources::default(),
            excluded_namespaces: vec![String::from("kube-system"), String::from("kube-node-lease")],
        }
    }
}

/// A version written as a string; a number is refused, since YAML reads `1.30` as 1.3.
fn version_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Text(String),
        Number(f64),
    }
    match Option::<Written>::deserialize(d)? {
        None => Ok(None),
        Some(Written::Text(v)) => Ok(Some(v)),
        Some(Written::Number(n)) => Err(serde::de::Error::custom(format!(
            "{n} is a number: quote the version (\"1.30\"), as YAML reads 1.30 as 1.3"
        ))),
    }
}

/// Whether the sidecar is a native one (`auto`, `true`, `false`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NativeMode {
    /// By the cluster's version.
    #[default]
    Auto,
    /// Always an init container with `restartPolicy: Always`.
    Always,
    /// Always a plain container.
    Never,
}

impl Serialize for NativeMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            Self::Auto => "auto",
            Self::Always => "true",
            Self::Never => "false",
        })
    }
}

impl<'de> Deserialize<'de> for NativeMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Flag(bool),
            Word(String),
        }
        match Written::deserialize(d)? {
            Written::Flag(true) => Ok(Self::Always),
            Written::Flag(false) => Ok(Self::Never),
            Written::Word(w) => match w.as_str() {
                "auto" => Ok(Self::Auto),
                "true" => Ok(Self::Always),
                "false" => Ok(Self::Never),
                other => Err(serde::de::Error::custom(format!(
                    "`{other}`: expected auto, true or false"
                ))),
            },
        }
    }
}

/// The sidecar's resource requests and limits (Kubernetes quantities).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SidecarResources {
    /// `requests.cpu`.
    pub cpu_request: Option<String>,
    /// `requests.memory`.
    pub memory_request: Option<String>,
    /// `limits.cpu`.
    pub cpu_limit: Option<String>,
    /// `limits.memory`.
    pub memory_limit: Option<String>,
}

impl Default for SidecarResources {
    fn default() -> Self {
        Self {
            cpu_request: Some(String::from("50m")),
            memory_request: Some(String::from("64Mi")),
            cpu_limit: None,
            memory_limit: Some(String::from("256Mi")),
        }
    }
}

/// TLS on the admin listener. Certificate and key are re-read when the files change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTlsConfig {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// PEM CA certificates client certificates must chain to; with it, `client_auth`
    /// says whether a client must present one.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// `required`: a client without a certificate of `client_ca_file` cannot connect;
    /// `optional`: one it presents must verify. Bearer tokens are asked for either way.
    #[serde(default)]
    pub client_auth: ClientAuth,
}

/// Whether clients of a TLS listener must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// A client that connects without one is refused in the handshake.
    #[default]
    Required,
    /// A client may connect without one; one it presents must verify.
    Optional,
}

/// Admin JWTs: tokens of the data plane's issuer, for an audience of their own, whose claims
/// name the admin roles the admin policies know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminJwtConfig {
    /// The `aud` admin JWTs carry. Must differ from every `auth.audiences` entry, so that a
    /// token for the protected APIs is never an admin credential.
    pub audience: String,
    /// Claim with the admin roles: an array of strings, or one space-separated string. A
    /// token without it has no role, and the admin policies permit it nothing.
    pub roles_claim: String,
    /// Claim with the tenant a `tenant-admin` manages; default `auth.claims.tenant`.
    pub tenant_claim: Option<String>,
}

impl Default for AdminJwtConfig {
    fn default() -> Self {
        Self {
            audience: String::from("portcullis-admin"),
            roles_claim: String::from("portcullis_admin_roles"),
            tenant_claim: None,
        }
    }
}

/// The throttle of failed admin authentications.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailedAuthConfig {
    /// Failures allowed per client address and window; further calls get 429.
    pub max_failures: u32,
    /// The window, from a client's first failure.
    pub window_seconds: u64,
}

impl Default for FailedAuthConfig {
    fn default() -> Self {
        Self {
            max_failures: 10,
            window_seconds: 60,
        }
    }
}

/// One upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Name, for logs.
    pub name: String,
    /// `host:port` (a sidecar's app: `127.0.0.1:<port>`).
    pub address: String,
    /// Connect with TLS.
    pub tls: bool,
    /// TLS server name; default: the host of `address`.
    pub sni: Option<String>,
    /// Only requests for this `Host` (edge gateway); absent: any host.
    pub host: Option<String>,
    /// Only requests whose normalised path starts with this prefix.
    pub path_prefix: String,
    /// Connect timeout.
    pub connect_timeout_ms: u64,
    /// Timeout for each read from the upstream.
    pub read_timeout_ms: u64,
    /// How long an idle pooled connection is kept (keepalive).
    pub idle_timeout_ms: u64,
    /// Speak HTTP/2 to it: over TLS offered by ALPN (HTTP/1.1 if it declines); in the clear
    /// with prior knowledge (h2c), which the upstream must speak (a gRPC server does).
    pub http2: bool,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            name: String::from("app"),
            address: String::from(DEFAULT_UPSTREAM),
            tls: false,
            sni: None,
            host: None,
            path_prefix: String::from("/"),
            connect_timeout_ms: 2_000,
            read_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            http2: false,
        }
    }
}

/// The policies directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoliciesConfig {
    /// Directory with `schema.cedarschema`, `*.cedar`, `roles.yaml`, `routes.yaml`. When it
    /// does not exist, the policies built into the binary are used.
    pub dir: PathBuf,
}

impl Default for PoliciesConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("policies"),
        }
    }
}

/// The store of `serve`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// SQLite file; default `<data_dir>/store.db`.
    pub sqlite_path: Option<PathBuf>,
    /// PostgreSQL URL instead of SQLite (a secret: redacted in dumps).
    pub postgres_url: Option<String>,
    /// File holding the PostgreSQL URL.
    pub postgres_url_file: Option<PathBuf>,
}

/// JWT authentication: the first trusted issuer, the defaults of the others, and the
/// others (`issuers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Required `iss`. `serve` without `jwks_url`/`jwks_file` uses its dev issuer. Admin
    /// JWTs (`admin.jwt`) come from this issuer only.
    pub issuer: Option<String>,
    /// Accepted `aud` values (one must match).
    pub audiences: Vec<String>,
    /// Accepted `alg` values. Symmetric (`HS*`) algorithms are refused.
    pub algorithms: Vec<String>,
    /// JWKS URL, fetched at start, refreshed periodically and on an unknown `kid`.
    pub jwks_url: Option<String>,
    /// JWKS file, re-read when it changes.
    pub jwks_file: Option<PathBuf>,
    /// Periodic JWKS refresh.
    pub jwks_refresh_seconds: u64,
    /// Follow redirects of the JWKS URL, to the same host only (at most 3). Off: a
    /// redirect is a failed fetch.
    pub jwks_follow_redirects: bool,
    /// PEM CAs trusted for `jwks_url` instead of the system's (e.g. a cluster's CA).
    pub jwks_ca_file: Option<PathBuf>,
    /// A file with a bearer token sent with every JWKS fetch, read anew each time (e.g. a
    /// projected service-account token, for a Kubernetes API server's `/openid/v1/jwks`).
    pub jwks_token_file: Option<PathBuf>,
    /// At most one refetch per this many seconds when a token names an unknown `kid`.
    pub unknown_kid_cooldown_seconds: u64,
    /// Clock skew allowed for `exp` and `nbf`.
    pub leeway_seconds: u64,
    /// Larger `Authorization` headers are refused.
    pub max_token_bytes: usize,
    /// Verified tokens kept (each until its `exp`).
    pub token_cache_entries: u64,
    /// Which claims mean what.
    pub claims: ClaimNames,
    /// Whether the upstream receives the caller's `Authorization`: `verified` (on a
    /// protected route only the credential that was verified, never an unverified one) or
    /// `none`.
    pub forward_credential: ForwardCredential,
    /// Every subject of this issuer is a `user` or a `service`; unset: the claims say
    /// (`claims.service_claim`).
    pub principal_type: Option<PrincipalType>,
    /// Longest token lifetime (`exp - iat`) accepted, in seconds; with it, tokens without
    /// `iat` are refused. Unset: no bound.
    pub max_token_lifetime_seconds: Option<u64>,
    /// Subjects accepted and refused (`allow`, `deny`: patterns where `*` is any run).
    pub subjects: SubjectRules,
    /// How long JWKS keys from `jwks_url` stay trusted after the last successful fetch;
    /// past it, this issuer's tokens get 503 until a fetch succeeds. Unset: no bound.
    pub jwks_max_age_seconds: Option<u64>,
    /// Further trusted issuers, each chosen by a token's `iss` (never by trying keys).
    pub issuers: Vec<IssuerConfig>,
    /// How a client certificate verified by the HTTPS listener (`listen.tls.client_ca_file`)
    /// names the workload a request without a token comes from.
    pub certificates: CertificateMapping,
    /// What a verified token whose subject the store does not hold gets: `deny` (403
    /// `unknown_principal`) or `from_claims` (a principal built from `claim_mapping`).
    /// This issuer's only: `auth.issuers` entries set their own.
    pub unknown_principals: UnknownPrincipals,
    /// Where `from_claims` finds the principal's tenant, groups, roles and attributes.
    pub claim_mapping: ClaimMapping,
}

/// A further trusted issuer (`auth.issuers[]`). What it leaves unset is taken from `auth`,
/// except the keys, the token policy's `subjects` and what it does with unknown principals,
/// which are its own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The `iss` its tokens carry.
    pub issuer: String,
    /// JWKS URL (fetched and refreshed as `auth.jwks_url` is).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// JWKS file, re-read when it changes.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// PEM CAs trusted for `jwks_url` instead of the system's.
    #[serde(default)]
    pub jwks_ca_file: Option<PathBuf>,
    /// A file with a bearer token sent with every JWKS fetch, read anew each time.
    #[serde(default)]
    pub jwks_token_file: Option<PathBuf>,
    /// Accepted `aud` values; default `auth.audiences`.
    #[serde(default)]
    pub audiences: Option<Vec<String>>,
    /// Accepted `alg` values; default `auth.algorithms`.
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// Which claims mean what; default `auth.claims`.
    #[serde(default)]
    pub claims: Option<ClaimNames>,
    /// Every subject is a `user` or a `service`; default `auth.principal_type`.
    #[serde(default)]
    pub principal_type: Option<PrincipalType>,
    /// Longest token lifetime in seconds; default `auth.max_token_lifetime_seconds`.
    #[serde(default)]
    pub max_token_lifetime_seconds: Option<u64>,
    /// Subjects accepted and refused (none by default).
    #[serde(default)]
    pub subjects: SubjectRules,
    /// How long keys stay trusted after the last successful fetch; default
    /// `auth.jwks_max_age_seconds`.
    #[serde(default)]
    pub jwks_max_age_seconds: Option<u64>,
    /// As `auth.unknown_principals`, for this issuer's tokens; not taken from `auth`
    /// (default `deny`).
    #[serde(default)]
    pub unknown_principals: UnknownPrincipals,
    /// As `auth.claim_mapping`, for this issuer's tokens; not taken from `auth`.
    #[serde(default)]
    pub claim_mapping: ClaimMapping,
}

/// The kind of principal an issuer's subjects are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalType {
    /// `User::"<sub>"`.
    User,
    /// `Service::"<sub>"` (workloads: Kubernetes service accounts, client credentials).
    Service,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: None,
            audiences: vec![String::from("portcullis")],
            algorithms: vec![
                String::from("RS256"),
                String::from("ES256"),
                String::from("EdDSA"),
            ],
            jwks_url: None,
            jwks_file: None,
            jwks_refresh_seconds: 300,
            jwks_follow_redirects: false,
            jwks_ca_file: None,
            jwks_token_file: None,
            unknown_kid_cooldown_seconds: 30,
            leeway_seconds: 30,
            max_token_bytes: 8_192,
            token_cache_entries: 100_000,
            claims: ClaimNames::default(),
            forward_credential: ForwardCredential::Verified,
            principal_type: None,
            max_token_lifetime_seconds: None,
            subjects: SubjectRules::default(),
            jwks_max_age_seconds: None,
            issuers: Vec::new(),
            certificates: CertificateMapping::default(),
            unknown_principals: UnknownPrincipals::Deny,
            claim_mapping: ClaimMapping::default(),
        }
    }
}

/// The identity assertion (`identity_assertion`): with it on, every allowed request reaches
/// the upstream with `x-portcullis-assertion`, a JWT (EdDSA) signed with Portcullis's own
/// key, whose JWKS the ops listener serves at `/.well-known/jwks.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityAssertionConfig {
    /// Sign and send the assertion.
    pub enabled: bool,
    /// The Ed25519 key (PKCS#8 PEM), created (mode 0600) when missing; default
    /// `<data_dir>/identity-assertion-key.pem`. Read at start: a new key needs a restart.
    pub key_file: Option<PathBuf>,
    /// The assertion's `iss`.
    pub issuer: String,
    /// The assertion's `aud`.
    pub audience: String,
    /// How long an assertion is valid (it is reused for the first half of that).
    pub lifetime_seconds: u64,
}

impl Default for IdentityAssertionConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            key_file: None,
            issuer: String::from("portcullis"),
            audience: String::from("upstream"),
            lifetime_seconds: 60,
        }
    }
}

impl IdentityAssertionConfig {
    /// The key file, defaulted into `data_dir`.
    pub fn key_path(&self, data_dir: &Path) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| data_dir.join("identity-assertion-key.pem"))
    }
}

/// The request context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContextConfig {
    /// IANA time zone for working hours.
    pub time_zone: String,
    /// Pins the clock (RFC 3339) — for tests and demos only; logged loudly at start.
    pub fixed_time: Option<String>,
    /// Peers (CIDRs) whose `X-Forwarded-For`, risk and device headers are believed.
    pub trusted_hops: Vec<String>,
    /// Header carrying a risk score from a trusted hop.
    pub risk_header: String,
    /// Header carrying a device id from a trusted hop.
    pub device_header: String,
}

impl Default for ContextConfig {
    fn default() -> Self {
        Self {
            time_zone: String::from("UTC"),
            fixed_time: None,
            trusted_hops: Vec::new(),
            risk_header: String::from("x-risk-score"),
            device_header: String::from("x-device-id"),
        }
    }
}

/// What a decision does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnforcementConfig {
    /// `enforce`, or `shadow` (decide, count and log, but forward everything).
    pub mode: EnforcementMode,
    /// Status for requests no route matches: 403 or 404.
    pub unmatched_status: u16,
    /// A method-override header or parameter naming another method: `refuse` (400) or
    /// `strip` (removed before forwarding; the decision endpoint always refuses).
    pub method_override: MethodOverride,
    /// Query parameters that act as method overrides for the app (e.g. `_method`).
    pub method_override_query: Vec<String>,
}

impl Default for EnforcementConfig {
    fn default() -> Self {
        Self {
            mode: EnforcementMode::Enforce,
            unmatched_status: 403,
            method_override: MethodOverride::Refuse,
            method_override_query: Vec::new(),
        }
    }
}

/// The decision endpoint (nginx `auth_request`, Envoy ext_authz HTTP, Traefik forwardAuth).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionEndpointConfig {
    /// Serve it on the data-plane listener.
    pub enabled: bool,
    /// Its path; requests below it carry the original path (Envoy's `path_prefix`).
    pub path: String,
    /// Gateways (CIDRs) allowed to call it.
    pub trusted_gateways: Vec<String>,
    /// The gateway in front, which says how it names the request it asks about: `nginx`
    /// (`X-Original-Method`, `X-Original-URI`), `traefik` (`X-Forwarded-Method`,
    /// `X-Forwarded-Uri`) or `envoy` (the request's method, the path after `path`).
    /// Required when enabled.
    pub gateway: Option<GatewayKind>,
}

impl Default for DecisionEndpointConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            path: String::from("/.portcullis/authz"),
            trusted_gateways: vec![String::from("127.0.0.1/32"), String::from("::1/128")],
            gateway: None,
        }
    }
}

/// The decision audit ledger: hash-chained JSON lines with signed checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Record decisions.
    pub enabled: bool,
    /// Ledger directory; default `<data_dir>/audit`.
    pub dir: Option<PathBuf>,
    /// Start a new file past this size.
    pub max_file_bytes: u64,
    /// When the queue is full: `wait` (up to `max_wait_ms`, then answer 503) or `drop`
    /// (forward without a record, counted in `portcullis_audit_dropped_total`).
    pub on_full: OnFull,
    /// How long a request waits for room in the queue.
    pub max_wait_ms: u64,
    /// Entries between the request path and the writer.
    pub queue_capacity: usize,
    /// `fsync` every batch (survives power loss, not only a crashed process).
    pub fsync: bool,
    /// Also print every record on stdout.
    pub stdout: bool,
    /// Ed25519 key (PKCS#8 PEM) signing checkpoints; created with its `.pub` when missing.
    /// Default `<data_dir>/audit-checkpoint-key.pem`.
    pub checkpoint_key_file: Option<PathBuf>,
    /// Sign a checkpoint every this many records.
    pub checkpoint_every: u64,
    /// ... and at least this often while records arrive.
    pub checkpoint_interval_seconds: u64,
    /// Record requests to public routes.
    pub record_public: bool,
    /// Share of allowed decisions recorded (0..1); denials and refusals are always kept.
    pub allow_sample_rate: f64,
    /// This process's name in the records; default `<hostname>-<pid>`.
    pub instance: Option<String>,
    /// What is hashed or left out of records of AMBER and RED routes (fields: `principal`,
    /// `ip`, `device_id`, `email`, `name`, `mfa`, `risk_score`, `hour`, `weekday`).
    pub redact: RedactionMasks,
    /// Also forward the ledger, in order, to a Redis Stream.
    pub redis: Option<AuditRedisConfig>,
    /// Also forward the ledger, in order, to an SQS queue.
    pub sqs: Option<AuditSqsConfig>,
}

/// The SQS sink of the audit ledger. Credentials come from the default AWS chain
/// (environment, profile, web identity, instance metadata).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSqsConfig {
    /// The queue URL; a FIFO queue (`.fifo`) also gets deduplication by record hash.
    pub queue_url: String,
    /// The region; default: the environment's.
    #[serde(default)]
    pub region: Option<String>,
    /// Another endpoint (LocalStack, moto, a VPC endpoint).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// `ledger` (the sealed line) or `ocsf` (an OCSF API Activity event).
    #[serde(default)]
    pub format: SinkFormat,
}

/// The Redis Stream sink of the audit ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRedisConfig {
    /// `redis://host:port/db` (a secret when it holds a password: redacted in dumps).
    pub url: String,
    /// The stream key.
    #[serde(default = "default_audit_stream")]
    pub stream: String,
    /// Approximate maximum length of the stream (`XADD MAXLEN ~`).
    #[serde(default = "default_audit_maxlen")]
    pub maxlen: usize,
    /// `ledger` (the sealed line) or `ocsf` (an OCSF API Activity event).
    #[serde(default)]
    pub format: SinkFormat,
}

fn default_audit_stream() -> String {
    String::from("portcullis:audit")
}

fn default_audit_maxlen() -> usize {
    1_000_000
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
            max_file_bytes: 100 * 1024 * 1024,
            on_full: OnFull::Wait,
            max_wait_ms: 1_000,
            queue_capacity: 65_536,
            fsync: false,
            stdout: false,
            checkpoint_key_file: None,
            checkpoint_every: 10_000,
            checkpoint_interval_seconds: 60,
            record_public: false,
            allow_sample_rate: 1.0,
            instance: None,
            redact: RedactionMasks::default(),
            redis: None,
            sqs: None,
        }
    }
}

/// The control plane `portcullis proxy` follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlPlaneConfig {
    /// Base URL of its admin API, e.g. `https://portcullis-control:8482`. Plain `http://`
    /// only to a loopback address, unless `allow_plain_http`.
    pub url: Option<String>,
    /// File holding the bearer token (one of the control plane's admin tokens); re-read
    /// when it changes.
    pub token_file: Option<PathBuf>,
    /// PEM CA certificates the control plane's certificate must chain to, instead of the
    /// public roots (a cluster's own CA, cert-manager's issuer).
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM) presented to a control plane that asks for one, with
    /// `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub client_key_file: Option<PathBuf>,
    /// Follow a control plane over plain HTTP on another host (its token and every policy
    /// travel in clear text). Off: `http://` is accepted for loopback only.
    pub allow_plain_http: bool,
    /// How often the control plane confirms the change stream is alive while nothing
    /// changes; three silent heartbeats and the proxy reconnects.
    pub heartbeat_ms: u64,
    /// Past this long without reaching the control plane, answer 503 (fail closed).
    pub max_staleness_seconds: u64,
    /// The last-known-good state; default `<data_dir>/last-known-good.json`.
    pub state_file: Option<PathBuf>,
}

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        Self {
            url: None,
            token_file: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            allow_plain_http: false,
            heartbeat_ms: 5000,
            max_staleness_seconds: 300,
            state_file: None,
        }
    }
}

/// How much of the state `portcullis proxy` holds (`mode`), and the shared state cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// `full`: the whole state (the default; right while it is small: a sidecar's memory
    /// grows with the number of users and assignments). `cached`: the shared part
    /// (policies, roles, groups, resources, revoked sessions) in full, users and services
    /// fetched on first use and kept in a bounded cache, evicted when the control plane
    /// says they changed (for fleets of sidecars over many principals). `portcullis
    /// proxy` only.
    pub mode: StateMode,
    /// Cached mode: the bound of the state cache (users, services, entities of types not
    /// held), in estimated bytes.
    pub cache_max_bytes: u64,
    /// Cached mode: how long a request may wait for what the cache lacks (shared cache,
    /// then control plane); past it the request gets 503 `state_unavailable`.
    pub miss_timeout_ms: u64,
    /// The shared state cache: `control` (and `serve`) write each changed user, service
    /// and entity of a type not held to it; `proxy` in cached mode reads it before asking
    /// the control plane.
    pub redis: Option<SharedCacheConfig>,
    /// `control` and `serve`: the resource entity types cached proxies hold in full — the
    /// hierarchy most decisions read (`[Tenant, Space]`). Stored entities of other types
    /// (documents: many, each read by few decisions) are left out of what cached proxies
    /// follow and fetched on first use, like users. Unset: every entity is held. One rule
    /// for all the proxies of a control plane: the shared view is encoded once.
    pub held_entity_types: Option<Vec<String>>,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            mode: StateMode::Full,
            // With a sidecar's own 40 MiB (measured by bench/fleet), a full cache stays
            // within the 64 MiB a sidecar is meant to cost.
            cache_max_bytes: 16 * 1024 * 1024,
            miss_timeout_ms: 1000,
            redis: None,
            held_entity_types: None,
        }
    }
}

/// `rate_limits`: where route rate limits are counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    /// Keys (principals, tenants, addresses) the local counters hold at most; past it the
    /// least used are forgotten (their buckets start full again).
    pub max_keys: u64,
    /// Where routes with `shared: true` are counted, by every proxy together. Needed when a
    /// route has one. When Redis does not answer within its `timeout_ms`, each proxy counts
    /// those routes on its own against the same limit until it answers again.
    pub redis: Option<SharedLimitsConfig>,
    /// Which answers carry `RateLimit` and `RateLimit-Policy`: `refusals` (429 only) or
    /// `all` (forwarded answers too, so clients can pace themselves; two more response
    /// headers on every request of a limited route cost about 3% more instructions).
    pub headers: RateLimitHeaders,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        Self {
            max_keys: 100_000,
            redis: None,
            headers: RateLimitHeaders::Refusals,
        }
    }
}

/// `rate_limits.headers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitHeaders {
    /// On 429 answers only.
    Refusals,
    /// On forwarded answers of limited routes too.
    All,
}

/// `rate_limits.redis`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedLimitsConfig {
    /// `redis://host:port/db` (a secret when it holds a password: redacted in dumps).
    pub url: String,
    /// Keys start with it.
    #[serde(default = "default_shared_limits_prefix")]
    pub key_prefix: String,
    /// Deadline of each check (one round trip); past it the proxy counts locally.
    #[serde(default = "default_shared_limits_timeout")]
    pub timeout_ms: u64,
}

fn default_shared_limits_prefix() -> String {
    String::from("portcullis:rate")
}

fn default_shared_limits_timeout() -> u64 {
    50
}

/// `lockout`: failed authentications on the data plane, counted per client address and per
/// claimed subject (the `sub` a refused token names). Past `max_failures` within
/// `window_seconds`, that address's or subject's failures are answered 429 for
/// `cool_down_seconds`. A credential that verifies is never refused by it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LockoutConfig {
    /// On unless turned off.
    pub enabled: bool,
    /// Failures allowed within the window.
    pub max_failures: u32,
    /// The window, in seconds.
    pub window_seconds: u64,
    /// How long a locked-out key's failures are answered 429.
    pub cool_down_seconds: u64,
    /// Addresses and subjects counted at most (the least used are forgotten past it).
    pub max_keys: u64,
}

impl Default for LockoutConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_failures: 20,
            window_seconds: 60,
            cool_down_seconds: 300,
            max_keys: 100_000,
        }
    }
}

/// `state.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateMode {
    /// The whole state.
    Full,
    /// The shared part, and users and services in a bounded cache.
    Cached,
}

/// `state.redis`: the shared state cache (L2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedCacheConfig {
    /// `redis://host:port/db` (a secret when it holds a password: redacted in dumps).
    pub url: String,
    /// Keys start with it.
    #[serde(default = "default_shared_cache_prefix")]
    pub key_prefix: String,
    /// How long a slice stays when nobody rewrites it.
    #[serde(default = "default_shared_cache_ttl")]
    pub ttl_seconds: u64,
    /// Deadline of each call to Redis; past it, a proxy asks the control plane.
    #[serde(default = "default_shared_cache_timeout")]
    pub timeout_ms: u64,
}

fn default_shared_cache_prefix() -> String {
    String::from("portcullis:state")
}

fn default_shared_cache_ttl() -> u64 {
    24 * 60 * 60
}

fn default_shared_cache_timeout() -> u64 {
    200
}

/// Lifecycle events: over the admin API (`POST /v1/events`) and from the queues below,
/// consumed by `serve` and `control`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Ed25519 public keys (SPKI PEM files) seed-000 event signatures are checked with, by
    /// key id. With any configured, a seed-000 event must carry a signature that verifies.
    pub signature_keys: std::collections::BTreeMap<String, PathBuf>,
    /// SQS queues to consume (SNS notifications are unwrapped). Credentials come from the
    /// default AWS chain.
    pub sqs: Vec<EventsSqsConfig>,
    /// A Redis Stream to consume as a member of a consumer group.
    pub redis: Option<EventsRedisConfig>,
    /// SQS queues of other services' audit events (seed 004's audit producers), appended
    /// to the audit ledger as `external` records; needs `audit.enabled`.
    pub audit_sqs: Vec<EventsSqsConfig>,
}

/// One SQS queue of lifecycle events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsSqsConfig {
    /// The queue URL.
    pub queue_url: String,
    /// The region; default: the environment's.
    #[serde(default)]
    pub region: Option<String>,
    /// Another endpoint (LocalStack, moto, a VPC endpoint).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Messages per receive, 1 to 10.
    #[serde(default = "default_sqs_batch")]
    pub batch: i32,
    /// Long-poll wait per receive, 0 to 20 seconds.
    #[serde(default = "default_sqs_wait")]
    pub wait_seconds: i32,
    /// How long a received message stays hidden from other consumers (renewed while its
    /// batch is still being taken); a message left by a failure comes back after it.
    #[serde(default = "default_sqs_visibility")]
    pub visibility_timeout_seconds: i32,
}

fn default_sqs_batch() -> i32 {
    10
}

fn default_sqs_wait() -> i32 {
    20
}

fn default_sqs_visibility() -> i32 {
    30
}

/// The Redis Stream of lifecycle events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsRedisConfig {
    /// `redis://host:port/db` (a secret when it holds a password: redacted in dumps).
    pub url: String,
    /// The stream key.
    #[serde(default = "default_events_stream")]
    pub stream: String,
    /// The consumer group every control-plane replica joins; made from the stream's start
    /// when missing.
    #[serde(default = "default_events_group")]
    pub group: String,
    /// This replica's name in the group; default: the process's instance name
    /// (`audit.instance`, `<hostname>-<pid>`).
    #[serde(default)]
    pub consumer: Option<String>,
    /// The field of a stream entry that holds the event.
    #[serde(default = "default_events_field")]
    pub field: String,
    /// Entries per read, 1 to 1000.
    #[serde(default = "default_events_batch")]
    pub batch: usize,
    /// How long one read waits for new entries, 1 to 60000 ms.
    #[serde(default = "default_events_block_ms")]
    pub block_ms: usize,
    /// Entries another consumer left pending this long (it died) are claimed; at least
    /// 1000 ms.
    #[serde(default = "default_events_claim_idle_ms")]
    pub claim_idle_ms: u64,
}

fn default_events_stream() -> String {
    String::from("portcullis:events")
}

fn default_events_group() -> String {
    String::from("portcullis")
}

fn default_events_field() -> String {
    String::from("event")
}

fn default_events_batch() -> usize {
    100
}

fn default_events_block_ms() -> usize {
    5000
}

fn default_events_claim_idle_ms() -> u64 {
    30_000
}

/// Shutdown timing. The defaults fit Kubernetes' 30 s termination grace period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// After SIGTERM, `/readyz` answers 503 this long while traffic still flows.
    pub drain_delay_seconds: u64,
    /// Then at most this long for the requests in flight to finish (the wait ends as soon
    /// as none are left); then the listeners close.
    pub grace_period_seconds: u64,
    /// Then the runtimes are stopped within this long.
    pub runtime_timeout_seconds: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_delay_seconds: 5,
            grace_period_seconds: 15,
            runtime_timeout_seconds: 5,
        }
    }
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `auto` (JSON unless stderr is a terminal), `json` or `text`.
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `portcullis=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Auto,
            level: String::from("info"),
        }
    }
}

/// Log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// JSON lines unless stderr is a terminal.
    Auto,
    /// JSON lines.
    Json,
    /// Human-readable.
    Text,
}

/// One problem with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// `file:line:col`, `PORTCULLIS_X__Y`, `--set a.b` or the key path.
    pub at: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// What can be checked of one trusted issuer, as configured (`auth` or an
/// `auth.issuers` entry; `None`: the setting is taken from `auth`).
struct TrustedIssuer<'a> {
    jwks_url: Option<&'a str>,
    jwks_file: Option<&'a PathBuf>,
    jwks_ca_file: Option<&'a PathBuf>,
    jwks_token_file: Option<&'a PathBuf>,
    audiences: Option<&'a [String]>,
    algorithms: Option<&'a [String]>,
    max_token_lifetime_seconds: Option<u64>,
    subjects: &'a SubjectRules,
    jwks_max_age_seconds: Option<u64>,
    unknown_principals: UnknownPrincipals,
    claim_mapping: &'a ClaimMapping,
}

/// Problems of one trusted issuer's keys, audiences, algorithms and token policy, under
/// `at`.
fn trusted_issuer_problems(
    at: &str,
    policy: &TrustedIssuer<'_>,
    refresh_seconds: u64,
    problems: &mut Vec<ConfigProblem>,
) {
    if policy.jwks_url.is_some() && policy.jwks_file.is_some() {
        problems.push(problem(
            format!("{at}.jwks_url"),
            "give `jwks_url` or `jwks_file`, not both",
        ));
    }
    if let Some(url) = policy.jwks_url
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        problems.push(problem(
            format!("{at}.jwks_url"),
            format!("`{url}` is not an http(s) URL"),
        ));
    }
    if policy.audiences.is_some_and(<[String]>::is_empty) {
        problems.push(problem(
            format!("{at}.audiences"),
            "at least one audience is needed",
        ));
    }
    if let Some(algorithms) = policy.algorithms {
        if algorithms.is_empty() {
            problems.push(problem(
                format!("{at}.algorithms"),
                "at least one algorithm is needed",
            ));
        }
        for alg in algorithms {
            if let Err(message) = crate::data_plane::authn::parse_algorithm(alg) {
                problems.push(problem(format!("{at}.algorithms"), message));
            }
        }
    }
    if policy.max_token_lifetime_seconds == Some(0) {
        problems.push(problem(
            format!("{at}.max_token_lifetime_seconds"),
            "must be above 0",
        ));
    }
    for (list, patterns) in [
        ("allow", &policy.subjects.allow),
        ("deny", &policy.subjects.deny),
    ] {
        if patterns.iter().any(String::is_empty) {
            problems.push(problem(
                format!("{at}.subjects.{list}"),
                "a pattern cannot be empty",
            ));
        }
    }
    for (field, file) in [
        ("jwks_ca_file", policy.jwks_ca_file),
        ("jwks_token_file", policy.jwks_token_file),
    ] {
        let Some(file) = file else { continue };
        if policy.jwks_url.is_none() {
            problems.push(problem(
                format!("{at}.{field}"),
                "applies to `jwks_url` only",
            ));
        } else if !file.is_file() {
            problems.push(problem(
                format!("{at}.{field}"),
                format!("`{}` is not a file", file.display()),
            ));
        }
    }
    for (key, message) in policy
        .claim_mapping
        .problems(&format!("{at}.claim_mapping"))
    {
        problems.push(problem(key, message));
    }
    if policy.unknown_principals == UnknownPrincipals::Deny && !policy.claim_mapping.is_empty() {
        problems.push(problem(
            format!("{at}.claim_mapping"),
            "is read only with `unknown_principals: from_claims`",
        ));
    }
    if let Some(max_age) = policy.jwks_max_age_seconds {
        if policy.jwks_url.is_none() {
            problems.push(problem(
                format!("{at}.jwks_max_age_seconds"),
                "applies to keys fetched from `jwks_url` (a file is re-read when it changes)",
            ));
        } else if max_age <= refresh_seconds.max(10) {
            problems.push(problem(
                format!("{at}.jwks_max_age_seconds"),
                format!(
                    "must be longer than auth.jwks_refresh_seconds ({refresh_seconds}), or keys go stale between two fetches"
                ),
            ));
        }
    }
}

/// Problems of `auth.issuers[i]`.
fn issuer_problems(
    auth: &AuthConfig,
    i: usize,
    further: &IssuerConfig,
    problems: &mut Vec<ConfigProblem>,
) {
    let at = |field: &str| format!("auth.issuers[{i}].{field}");
    if further.issuer.trim().is_empty() {
        problems.push(problem(at("issuer"), "required"));
    } else if auth.issuer.as_deref() == Some(further.issuer.as_str())
        || auth
            .issuers
            .iter()
            .take(i)
            .any(|o| o.issuer == further.issuer)
    {
        problems.push(problem(
            at("issuer"),
            format!(
                "`{}` is trusted twice: a token's `iss` must name one issuer",
                further.issuer
            ),
        ));
    }
    if further.jwks_url.is_none() && further.jwks_file.is_none() {
        problems.push(problem(
            at("jwks_url"),
            "each issuer needs its keys: `jwks_url` or `jwks_file`",
        ));
    }
    trusted_issuer_problems(
        &format!("auth.issuers[{i}]"),
        &TrustedIssuer {
            jwks_url: further.jwks_url.as_deref(),
            jwks_file: further.jwks_file.as_ref(),
            jwks_ca_file: further.jwks_ca_file.as_ref(),
            jwks_token_file: further.jwks_token_file.as_ref(),
            audiences: further.audiences.as_deref(),
            algorithms: further.algorithms.as_deref(),
            max_token_lifetime_seconds: further.max_token_lifetime_seconds,
            subjects: &further.subjects,
            jwks_max_age_seconds: further.jwks_max_age_seconds,
            unknown_principals: further.unknown_principals,
            claim_mapping: &further.claim_mapping,
        },
        auth.jwks_refresh_seconds,
        problems,
    );
}

fn problem(at: impl Into<String>, message: impl Into<String>) -> ConfigProblem {
    ConfigProblem {
        at: at.into(),
        message: message.into(),
    }
}

/// Loads the configuration: the file (if any), then environment overrides, then `--set`
/// flags, then secrets from `*_file` keys; checks it as a whole.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    sets: &[Override],
) -> Result<Config, Vec<ConfigProblem>> {
    let mut config = match file {
        None => Config::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                vec![problem(
                    path.display().to_string(),
                    format!("cannot read: {e}"),
                )]
            })?;
            let text = interpolate::interpolate(&text, |name| std::env::var(name).ok()).map_err(
                |(line, message)| vec![problem(format!("{}:{line}", path.display()), message)],
            )?;
            serde_saphyr::from_str::<Config>(&text).map_err(|e| {
                let at = match e.location() {
                    Some(l) => format!("{}:{}:{}", path.display(), l.line(), l.column()),
                    None => path.display().to_string(),
                };
                vec![problem(at, crate::policy_dir::first_line(&e.to_string()))]
            })?
        }
    };
    let mut all: Vec<Override> = env
        .into_iter()
        .filter_map(|(k, v)| Override::from_env(&k, &v))
        .collect();
    all.extend(sets.iter().cloned());
    let mut problems = Vec::new();
    if !all.is_empty() {
        // Bad overrides are reported, and the rest is still checked.
        let (applied, bad) = overrides::apply(config, &all);
        config = applied;
        problems.extend(bad);
    }
    if let Err(bad) = read_secret_files(&mut config) {
        problems.extend(bad);
    }
    problems.extend(validate(&config));
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems)
    }
}

fn read_secret_files(config: &mut Config) -> Result<(), Vec<ConfigProblem>> {
    if let Some(path) = &config.store.postgres_url_file {
        if config.store.postgres_url.is_some() {
            return Err(vec![problem(
                "store.postgres_url_file",
                "give `postgres_url` or `postgres_url_file`, not both",
            )]);
        }
        let url = std::fs::read_to_string(path).map_err(|e| {
            vec![problem(
                "store.postgres_url_file",
                format!("cannot read `{}`: {e}", path.display()),
            )]
        })?;
        config.store.postgres_url = Some(url.trim().to_owned());
    }
    Ok(())
}

/// Parses `host:port` into a socket address.
pub fn socket_addr(s: &str) -> Option<SocketAddr> {
    s.parse().ok()
}

/// Whether an `http(s)://host[:port]/...` URL names a loopback host (`localhost`,
/// `127.0.0.0/8`, `[::1]`).
fn url_is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether `v` is a Kubernetes quantity as resources take them: a decimal number with an
/// optional suffix (`50m`, `64Mi`, `0.5`, `1G`).
pub fn is_quantity(v: &str) -> bool {
    let digits = v.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = v.get(digits.len()..).unwrap_or_default();
    let number_ok = !digits.is_empty()
        && digits.chars().filter(|&c| c == '.').count() <= 1
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits.chars().any(|c| c.is_ascii_digit());
    number_ok
        && [
            "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
        ]
        .contains(&suffix)
}

/// The minor version of a Kubernetes version (`1.30`, `v1.29.4`, `1.31+`): `30`, when the
/// major version is 1.
pub fn kubernetes_minor(v: &str) -> Option<u32> {
    let v = v.trim().trim_start_matches('v');
    let mut parts = v.split('.');
    if parts.next()? != "1" {
        return None;
    }
    let minor: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    minor.parse().ok()
}

/// Every problem of a parsed configuration.
pub fn validate(config: &Config) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    let mut check_addr = |at: &str, value: &str| {
        if socket_addr(value).is_none() {
            problems.push(problem(
                at,
                format!("`{value}` is not an address of the form `ip:port`"),
            ));
        }
    };
    check_addr("listen.address", &config.listen.address);
    check_addr("ops.address", &config.ops.address);
    check_addr("admin.address", &config.admin.address);
    if let Some(tls) = &config.listen.tls {
        check_addr("listen.tls.address", &tls.address);
    }
    if let Some(tls) = &config.listen.tls {
        for (at, path) in [
            ("listen.tls.cert_file", &tls.cert_file),
            ("listen.tls.key_file", &tls.key_file),
        ] {
            if !path.is_file() {
                problems.push(problem(at, format!("`{}` is not a file", path.display())));
            }
        }
        if let Some(ca_file) = &tls.client_ca_file
            && let Err(e) = crate::tls::client_verifier(ca_file, tls.client_auth)
        {
            problems.push(problem("listen.tls.client_ca_file", e));
        }
    }
    if config
        .auth
        .certificates
        .trust_domains
        .iter()
        .any(|d| d.is_empty() || d.contains('/') || d.starts_with("spiffe:"))
    {
        problems.push(problem(
            "auth.certificates.trust_domains",
            "a trust domain is a name such as `prod.example.org`, without `spiffe://` or a path",
        ));
    }
    if let Some(tls) = &config.admin.tls {
        for (at, path) in [
            ("admin.tls.cert_file", Some(&tls.cert_file)),
            ("admin.tls.key_file", Some(&tls.key_file)),
            ("admin.tls.client_ca_file", tls.client_ca_file.as_ref()),
        ] {
            if let Some(path) = path.filter(|p| !p.is_file()) {
                problems.push(problem(at, format!("`{}` is not a file", path.display())));
            }
        }
    }
    let inject = &config.inject;
    if inject.webhook && config.admin.tls.is_none() {
        problems.push(problem(
            "inject.webhook",
            "the Kubernetes API server calls webhooks over HTTPS only: configure admin.tls",
        ));
    }
    if !["IfNotPresent", "Always", "Never"].contains(&inject.image_pull_policy.as_str()) {
        problems.push(problem(
            "inject.image_pull_policy",
            "must be IfNotPresent, Always or Never",
        ));
    }
    let r = &inject.resources;
    for (at, value) in [
        ("inject.resources.cpu_request", &r.cpu_request),
        ("inject.resources.memory_request", &r.memory_request),
        ("inject.resources.cpu_limit", &r.cpu_limit),
        ("inject.resources.memory_limit", &r.memory_limit),
    ] {
        if let Some(v) = value.as_deref().filter(|v| !is_quantity(v)) {
            problems.push(problem(at, format!("`{v}` is not a Kubernetes quantity")));
        }
    }
    if inject
        .kubernetes_version
        .as_deref()
        .is_some_and(|v| kubernetes_minor(v).is_none())
    {
        problems.push(problem(
            "inject.kubernetes_version",
            "expected a version such as 1.30 or v1.30.2",
        ));
    }
    if config.admin.tokens.is_some() && config.admin.tokens_file.is_some() {
        problems.push(problem(
            "admin.tokens",
            "give `tokens` or `tokens_file`, not both",
        ));
    }
    if let Some(jwt) = &config.admin.jwt {
        if jwt.audience.trim().is_empty() {
            problems.push(problem("admin.jwt.audience", "must not be empty"));
        } else if config.auth.audiences.contains(&jwt.audience) {
            problems.push(problem(
                "admin.jwt.audience",
                format!(
                    "`{}` is also in auth.audiences: a token for the protected APIs would be an admin credential",
                    jwt.audience
                ),
            ));
        }
        if jwt.roles_claim.trim().is_empty() {
            problems.push(problem("admin.jwt.roles_claim", "must not be empty"));
        }
    }
    if config.admin.failed_auth.max_failures == 0 {
        problems.push(problem(
            "admin.failed_auth.max_failures",
            "must be at least 1 (0 would refuse every client)",
        ));
    }
    if config.admin.failed_auth.window_seconds == 0 {
        problems.push(problem(
            "admin.failed_auth.window_seconds",
            "must be at least 1",
        ));
    }
    if config.upstreams.is_empty() {
        problems.push(problem("upstreams", "at least one upstream is needed"));
    }
    for (i, u) in config.upstreams.iter().enumerate() {
        let at = |key: &str| format!("upstreams.{i}.{key}");
        if split_host_port(&u.address).is_none() {
            problems.push(problem(
                at("address"),
                format!("`{}` is not of the form `host:port`", u.address),
            ));
        }
        if !u.path_prefix.starts_with('/') {
            problems.push(problem(at("path_prefix"), "must start with `/`"));
        }
        if u.connect_timeout_ms == 0 || u.read_timeout_ms == 0 {
            problems.push(problem(
                at("connect_timeout_ms"),
                "timeouts must be above 0",
            ));
        }
    }
    let auth = &config.auth;
    if (auth.jwks_url.is_some() || auth.jwks_file.is_some()) && auth.issuer.is_none() {
        problems.push(problem(
            "auth.issuer",
            "required with `jwks_url` or `jwks_file`",
        ));
    }
    trusted_issuer_problems(
        "auth",
        &TrustedIssuer {
            jwks_url: auth.jwks_url.as_deref(),
            jwks_file: auth.jwks_file.as_ref(),
            jwks_ca_file: auth.jwks_ca_file.as_ref(),
            jwks_token_file: auth.jwks_token_file.as_ref(),
            audiences: Some(&auth.audiences),
            algorithms: Some(&auth.algorithms),
            max_token_lifetime_seconds: auth.max_token_lifetime_seconds,
            subjects: &auth.subjects,
            jwks_max_age_seconds: auth.jwks_max_age_seconds,
            unknown_principals: auth.unknown_principals,
            claim_mapping: &auth.claim_mapping,
        },
        auth.jwks_refresh_seconds,
        &mut problems,
    );
    if auth.max_token_bytes < 64 {
        problems.push(problem("auth.max_token_bytes", "must be at least 64"));
    }
    let assertion = &config.identity_assertion;
    if assertion.enabled {
        if !(10..=3600).contains(&assertion.lifetime_seconds) {
            problems.push(problem(
                "identity_assertion.lifetime_seconds",
                "between 10 and 3600 seconds",
            ));
        }
        for (at, value) in [
            ("identity_assertion.issuer", &assertion.issuer),
            ("identity_assertion.audience", &assertion.audience),
        ] {
            if value.trim().is_empty() {
                problems.push(problem(at, "required"));
            }
        }
    }
    for (i, further) in auth.issuers.iter().enumerate() {
        issuer_problems(auth, i, further, &mut problems);
    }
    if jiff::tz::TimeZone::get(&config.context.time_zone).is_err() {
        problems.push(problem(
            "context.time_zone",
            format!("`{}` is not an IANA time zone", config.context.time_zone),
        ));
    }
    if let Some(t) = &config.context.fixed_time
        && t.parse::<jiff::Timestamp>().is_err()
    {
        problems.push(problem(
            "context.fixed_time",
            format!("`{t}` is not an RFC 3339 instant"),
        ));
    }
    for (at, list) in [
        ("context.trusted_hops", &config.context.trusted_hops),
        (
            "decision_endpoint.trusted_gateways",
            &config.decision_endpoint.trusted_gateways,
        ),
    ] {
        for cidr in list {
            if parse_cidr(cidr).is_none() {
                problems.push(problem(
                    at,
                    format!("`{cidr}` is not an IP network or address"),
                ));
            }
        }
    }
    for (at, name) in [
        ("context.risk_header", &config.context.risk_header),
        ("context.device_header", &config.context.device_header),
    ] {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            problems.push(problem(at, format!("`{name}` is not a header name")));
        }
    }
    if !matches!(config.enforcement.unmatched_status, 403 | 404) {
        problems.push(problem(
            "enforcement.unmatched_status",
            "must be 403 or 404",
        ));
    }
    if config.decision_endpoint.enabled && config.decision_endpoint.gateway.is_none() {
        problems.push(problem(
            "decision_endpoint.gateway",
            "name the gateway in front: `nginx`, `traefik` or `envoy`",
        ));
    }
    for name in &config.enforcement.method_override_query {
        if name.is_empty() || name.contains(['&', '=']) {
            problems.push(problem(
                "enforcement.method_override_query",
                format!("`{name}` is not a query parameter name"),
            ));
        }
    }
    let endpoint = &config.decision_endpoint.path;
    if !endpoint.starts_with('/') || endpoint.len() < 2 {
        problems.push(problem(
            "decision_endpoint.path",
            "must start with `/` and name a path",
        ));
    }
    if config.threads == 0 {
        problems.push(problem("threads", "must be at least 1"));
    }
    if config.listen.request_head_timeout_ms == 0 {
        problems.push(problem(
            "listen.request_head_timeout_ms",
            "must be at least 1",
        ));
    }
    if config.store.postgres_url.is_some() && config.store.sqlite_path.is_some() {
        problems.push(problem(
            "store.postgres_url",
            "give `sqlite_path` or `postgres_url`, not both",
        ));
    }
    if let Some(url) = &config.control_plane.url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        problems.push(problem(
            "control_plane.url",
            format!("`{url}` is not an http(s) URL"),
        ));
    }
    let cp = &config.control_plane;
    if let Some(url) = &cp.url
        && url.starts_with("http://")
        && !cp.allow_plain_http
        && !url_is_loopback(url)
    {
        problems.push(problem(
            "control_plane.url",
            format!(
                "`{url}` is plain HTTP to another host: the token and the policies would travel in clear text; use https:// (see admin.tls), or set control_plane.allow_plain_http"
            ),
        ));
    }
    for (at, path) in [
        ("control_plane.ca_file", cp.ca_file.as_ref()),
        (
            "control_plane.client_cert_file",
            cp.client_cert_file.as_ref(),
        ),
        ("control_plane.client_key_file", cp.client_key_file.as_ref()),
    ] {
        if let Some(path) = path.filter(|p| !p.is_file()) {
            problems.push(problem(at, format!("`{}` is not a file", path.display())));
        }
    }
    if cp.client_cert_file.is_some() != cp.client_key_file.is_some() {
        problems.push(problem(
            "control_plane.client_cert_file",
            "give `client_cert_file` and `client_key_file` together",
        ));
    }
    if !(100..=60_000).contains(&cp.heartbeat_ms) {
        problems.push(problem(
            "control_plane.heartbeat_ms",
            "must be between 100 and 60000",
        ));
    }
    if cp.max_staleness_seconds.saturating_mul(1000) < cp.heartbeat_ms.saturating_mul(3) {
        problems.push(problem(
            "control_plane.max_staleness_seconds",
            "must be at least three heartbeats (heartbeat_ms), or a healthy stream would count as stale",
        ));
    }
    let st = &config.state;
    if st.cache_max_bytes < 1024 * 1024 {
        problems.push(problem(
            "state.cache_max_bytes",
            "must be at least 1048576 (1 MiB)",
        ));
    }
    if !(10..=60_000).contains(&st.miss_timeout_ms) {
        problems.push(problem(
            "state.miss_timeout_ms",
            "must be between 10 and 60000",
        ));
    }
    for (i, type_name) in st.held_entity_types.iter().flatten().enumerate() {
        if portcullis_model::EntityRef::new(type_name.as_str(), "").is_err() {
            problems.push(problem(
                format!("state.held_entity_types.{i}"),
                format!("`{type_name}` is not an entity type name"),
            ));
        } else if portcullis_model::PrincipalKind::from_cedar_type(type_name).is_some() {
            problems.push(problem(
                format!("state.held_entity_types.{i}"),
                format!("`{type_name}` is a principal type: users and services are always fetched, groups always held"),
            ));
        }
    }
    if let Some(r) = &st.redis {
        if !(r.url.starts_with("redis://") || r.url.starts_with("rediss://")) {
            problems.push(problem(
                "state.redis.url",
                format!("`{}` is not a redis:// URL", r.url),
            ));
        }
        if r.key_prefix.is_empty() || r.ttl_seconds == 0 || !(10..=10_000).contains(&r.timeout_ms) {
            problems.push(problem(
                "state.redis",
                "key_prefix must not be empty, ttl_seconds must be above 0, timeout_ms between 10 and 10000",
            ));
        }
    }
    let rl = &config.rate_limits;
    if !(1_000..=10_000_000).contains(&rl.max_keys) {
        problems.push(problem(
            "rate_limits.max_keys",
            "must be between 1000 and 10000000",
        ));
    }
    if let Some(r) = &rl.redis {
        if !(r.url.starts_with("redis://") || r.url.starts_with("rediss://")) {
            problems.push(problem(
                "rate_limits.redis.url",
                format!("`{}` is not a redis:// URL", r.url),
            ));
        }
        if r.key_prefix.is_empty() || !(1..=10_000).contains(&r.timeout_ms) {
            problems.push(problem(
                "rate_limits.redis",
                "key_prefix must not be empty, timeout_ms between 1 and 10000",
            ));
        }
    }
    let lo = &config.lockout;
    if lo.enabled {
        for (key, value, range) in [
            (
                "lockout.max_failures",
                u64::from(lo.max_failures),
                1..=1_000_000,
            ),
            ("lockout.window_seconds", lo.window_seconds, 1..=86_400),
            (
                "lockout.cool_down_seconds",
                lo.cool_down_seconds,
                1..=86_400,
            ),
            ("lockout.max_keys", lo.max_keys, 1_000..=10_000_000),
        ] {
            if !range.contains(&value) {
                problems.push(problem(
                    key,
                    format!("must be between {} and {}", range.start(), range.end()),
                ));
            }
        }
    }
    let a = &config.audit;
    for (list, fields) in [("hash", &a.redact.hash), ("drop", &a.redact.drop)] {
        for (i, field) in fields.iter().enumerate() {
            if !portcullis_ledger::MASKABLE.contains(&field.as_str()) {
                problems.push(problem(
                    format!("audit.redact.{list}.{i}"),
                    format!(
                        "`{field}` is not a field redaction can touch: {}",
                        portcullis_ledger::MASKABLE.join(", ")
                    ),
                ));
            }
        }
    }
    if !(0.0..=1.0).contains(&a.allow_sample_rate) {
        problems.push(problem(
            "audit.allow_sample_rate",
            "must be between 0 and 1",
        ));
    }
    if a.queue_capacity == 0 || a.checkpoint_every == 0 || a.max_file_bytes < 4096 {
        problems.push(problem(
            "audit",
            "queue_capacity and checkpoint_every must be above 0, max_file_bytes at least 4096",
        ));
    }
    if let Some(q) = &a.sqs
        && !(q.queue_url.starts_with("https://") || q.queue_url.starts_with("http://"))
    {
        problems.push(problem(
            "audit.sqs.queue_url",
            format!(
                "`{}` is not a queue URL (https://sqs.<region>.amazonaws.com/<account>/<queue>)",
                q.queue_url
            ),
        ));
    }
    if a.redis.is_some() && !cfg!(feature = "redis-sink") {
        problems.push(problem(
            "audit.redis",
            "this binary is built without the Redis sink (cargo feature `redis-sink`); use `portcullis` or a build with it",
        ));
    }
    if a.sqs.is_some() && !cfg!(feature = "sqs-sink") {
        problems.push(problem(
            "audit.sqs",
            "this binary is built without the SQS sink (cargo feature `sqs-sink`); use `portcullis` or a build with it",
        ));
    }
    if let Some(r) = &a.redis
        && !(r.url.starts_with("redis://") || r.url.starts_with("rediss://"))
    {
        problems.push(problem(
            "audit.redis.url",
            format!("`{}` is not a redis:// URL", r.url),
        ));
    }
    let queues =
        (config.events.sqs.iter().enumerate()).map(|(i, q)| (format!("events.sqs.{i}"), q));
    let audit_queues = (config.events.audit_sqs.iter().enumerate())
        .map(|(i, q)| (format!("events.audit_sqs.{i}"), q));
    if !config.events.audit_sqs.is_empty() && !a.enabled {
        problems.push(problem(
            "events.audit_sqs",
            "external audit events are appended to the audit ledger: set `audit.enabled: true`",
        ));
    }
    for (key, q) in queues.chain(audit_queues) {
        if !(q.queue_url.starts_with("https://") || q.queue_url.starts_with("http://")) {
            problems.push(problem(
                format!("{key}.queue_url"),
                format!(
                    "`{}` is not a queue URL (https://sqs.<region>.amazonaws.com/<account>/<queue>)",
                    q.queue_url
                ),
            ));
        }
        for (field, value, range) in [
            ("batch", q.batch, 1..=10),
            ("wait_seconds", q.wait_seconds, 0..=20),
            (
                "visibility_timeout_seconds",
                q.visibility_timeout_seconds,
                2..=43_200,
            ),
        ] {
            if !range.contains(&value) {
                problems.push(problem(
                    format!("{key}.{field}"),
                    format!("must be between {} and {}", range.start(), range.end()),
                ));
            }
        }
    }
    if let Some(r) = &config.events.redis {
        if !(r.url.starts_with("redis://") || r.url.starts_with("rediss://")) {
            problems.push(problem(
                "events.redis.url",
                format!("`{}` is not a redis:// URL", r.url),
            ));
        }
        if !(1..=1000).contains(&r.batch) {
            problems.push(problem("events.redis.batch", "must be between 1 and 1000"));
        }
        if !(1..=60_000).contains(&r.block_ms) {
            problems.push(problem(
                "events.redis.block_ms",
                "must be between 1 and 60000",
            ));
        }
        if r.claim_idle_ms < 1000 {
            problems.push(problem(
                "events.redis.claim_idle_ms",
                "must be at least 1000",
            ));
        }
        for (field, value) in [
            ("stream", &r.stream),
            ("group", &r.group),
            ("field", &r.field),
        ] {
            if value.is_empty() {
                problems.push(problem(
                    format!("events.redis.{field}"),
                    "must not be empty",
                ));
            }
        }
    }
    let s = &config.shutdown;
    if s.drain_delay_seconds + s.grace_period_seconds + s.runtime_timeout_seconds > 300 {
        problems.push(problem(
            "shutdown",
            "the three periods add up to more than 300 s",
        ));
    }
    if tracing_subscriber::EnvFilter::try_new(&config.log.level).is_err() {
        problems.push(problem(
            "log.level",
            format!("`{}` is not a log filter", config.log.level),
        ));
    }
    problems
}

/// `host:port` → (host, port).
pub fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host, port.parse().ok()?))
}

/// An IP network, or a single address as a /32 or /128 network.
pub fn parse_cidr(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

/// The configuration as YAML with secrets replaced by `<redacted>`.
pub fn dump(config: &Config) -> String {
    let mut shown = config.clone();
    if shown.store.postgres_url.is_some() {
        shown.store.postgres_url = Some(String::from("<redacted>"));
    }
    for url in [
        shown.audit.redis.as_mut().map(|r| &mut r.url),
        shown.events.redis.as_mut().map(|r| &mut r.url),
        shown.state.redis.as_mut().map(|r| &mut r.url),
        shown.rate_limits.redis.as_mut().map(|r| &mut r.url),
    ]
    .into_iter()
    .flatten()
    {
        if url.contains('@') {
            *url = String::from("<redacted>");
        }
    }
    serde_saphyr::to_string(&shown).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        assert_eq!(validate(&Config::default()), vec![]);
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let mut c = Config::default();
        c.listen.address = String::from("nope");
        c.context.time_zone = String::from("Mars/Olympus");
        c.auth.algorithms = vec![String::from("HS256")];
        c.enforcement.unmatched_status = 500;
        let problems = validate(&c);
        let keys: Vec<&str> = problems.iter().map(|p| p.at.as_str()).collect();
        assert_eq!(
            keys,
            [
                "listen.address",
                "auth.algorithms",
                "context.time_zone",
                "enforcement.unmatched_status"
            ]
        );
    }

    #[test]
    fn rate_limit_and_lockout_settings_are_checked_key_by_key() {
        let yaml = r#"
rate_limits:
  max_keys: 10
  headers: all
  redis: { url: "http://redis:6379", timeout_ms: 0 }
lockout:
  max_failures: 0
  window_seconds: 0
  cool_down_seconds: 100000
  max_keys: 1
"#;
        let c: Config = serde_saphyr::from_str(yaml).unwrap();
        let keys: Vec<String> = validate(&c).into_iter().map(|p| p.at).collect();
        assert_eq!(
            keys,
            [
                "rate_limits.max_keys",
                "rate_limits.redis.url",
                "rate_limits.redis",
                "lockout.max_failures",
                "lockout.window_seconds",
                "lockout.cool_down_seconds",
                "lockout.max_keys"
            ]
        );
        // Turned off, the lockout's numbers are not read.
        let off: Config =
            serde_saphyr::from_str("lockout:\n  enabled: false\n  max_failures: 0\n").unwrap();
        assert_eq!(validate(&off), vec![]);
        // A URL with a password is a secret in dumps.
        let mut secret = Config::default();
        secret.rate_limits.redis = Some(SharedLimitsConfig {
            url: String::from("redis://:hunter2@redis:6379"),
            key_prefix: String::from("p"),
            timeout_ms: 50,
        });
        assert!(!dump(&secret).contains("hunter2"));
    }

    #[test]
    fn further_issuers_and_token_policies_are_checked() {
        let yaml = r#"
auth:
  issuer: https://idp
  jwks_file: /etc/jwks.json
  jwks_max_age_seconds: 600
  max_token_lifetime_seconds: 0
  issuers:
    - issuer: https://idp
      jwks_file: /etc/other.json
      jwks_token_file: /var/run/token
    - issuer: https://cluster
    - issuer: https://workloads
      jwks_url: https://cluster/keys
      jwks_max_age_seconds: 60
      algorithms: [HS256]
      audiences: []
      subjects: { deny: [""] }
"#;
        let c: Config = serde_saphyr::from_str(yaml).unwrap();
        let keys: Vec<String> = validate(&c).into_iter().map(|p| p.at).collect();
        assert_eq!(
            keys,
            [
                "auth.max_token_lifetime_seconds",
                "auth.jwks_max_age_seconds",
                "auth.issuers[0].issuer",
                "auth.issuers[0].jwks_token_file",
                "auth.issuers[1].jwks_url",
                "auth.issuers[2].audiences",
                "auth.issuers[2].algorithms",
                "auth.issuers[2].subjects.deny",
                "auth.issuers[2].jwks_max_age_seconds",
            ]
        );
        let good = r#"
auth:
  issuer: https://idp
  jwks_url: https://idp/keys
  jwks_max_age_seconds: 600
  issuers:
    - issuer: https://cluster
      jwks_file: /etc/cluster.json
      principal_type: service
      subjects: { allow: ["system:serviceaccount:*"] }
"#;
        let c: Config = serde_saphyr::from_str(good).unwrap();
        assert_eq!(validate(&c), vec![]);
        let settings = crate::prepare::auth_settings(&c.auth, String::from("https://idp")).unwrap();
        let [idp, cluster] = &settings.issuers[..] else {
            panic!("two issuers: {settings:?}");
        };
        assert_eq!(idp.keys_max_age, Some(std::time::Duration::from_secs(600)));
        assert_eq!(
            cluster.keys_max_age, None,
            "a file's keys have no age bound"
        );
        assert_eq!(cluster.audiences, idp.audiences, "taken from auth");
        assert_eq!(
            cluster.principal_kind,
            Some(portcullis_model::PrincipalKind::Service)
        );
        assert!(!cluster.subjects.admits("alice"));
        assert!(idp.from_claims.is_none() && cluster.from_claims.is_none());
    }

    #[test]
    fn claim_mappings_are_checked_per_issuer_and_never_inherited() {
        let yaml = r#"
auth:
  issuer: https://idp
  jwks_file: /etc/jwks.json
  claim_mapping:
    tenant: /org/id
  issuers:
    - issuer: https://other
      jwks_file: /etc/other.json
      unknown_principals: from_claims
      claim_mapping:
        groups: [groups]
        roles: [{pointer: /roles, scope: tenant}]
"#;
        let c: Config = serde_saphyr::from_str(yaml).unwrap();
        let keys: Vec<String> = validate(&c).into_iter().map(|p| p.at).collect();
        assert_eq!(
            keys,
            [
                "auth.claim_mapping",
                "auth.issuers[0].claim_mapping.groups[0]",
                "auth.issuers[0].claim_mapping.roles[0].scope",
            ]
        );
        let good = r#"
auth:
  issuer: https://idp
  jwks_file: /etc/jwks.json
  unknown_principals: from_claims
  claim_mapping:
    tenant: /org/id
    roles: [{pointer: /roles, scope: tenant}]
  issuers:
    - issuer: https://cluster
      jwks_file: /etc/cluster.json
"#;
        let c: Config = serde_saphyr::from_str(good).unwrap();
        assert_eq!(validate(&c), vec![]);
        let settings = crate::prepare::auth_settings(&c.auth, String::from("https://idp")).unwrap();
        let [idp, cluster] = &settings.issuers[..] else {
            panic!("two issuers: {settings:?}");
        };
        assert_eq!(
            idp.from_claims.as_ref().and_then(|m| m.tenant.as_deref()),
            Some("/org/id")
        );
        assert!(cluster.from_claims.is_none(), "not taken from auth");
    }

    #[test]
    fn admin_and_redaction_settings_are_checked() {
        let mut c = Config::default();
        c.admin.tokens = Some(String::from("ops sha256:00"));
        c.admin.tokens_file = Some(PathBuf::from("/etc/portcullis/admin-tokens"));
        c.admin.jwt = Some(AdminJwtConfig {
            audience: c.auth.audiences.first().cloned().unwrap_or_default(),
            ..AdminJwtConfig::default()
        });
        c.admin.failed_auth.max_failures = 0;
        c.audit.redact.drop = vec![String::from("principal"), String::from("password")];
        let problems = validate(&c);
        let keys: Vec<&str> = problems.iter().map(|p| p.at.as_str()).collect();
        assert_eq!(
            keys,
            [
                "admin.tokens",
                "admin.jwt.audience",
                "admin.failed_auth.max_failures",
                "audit.redact.drop.1"
            ],
            "{problems:?}"
        );
    }

    #[test]
    fn a_control_plane_on_another_host_is_followed_over_tls_only() {
        for (url, loopback) in [
            ("http://127.0.0.1:8482", true),
            ("http://localhost:8482/", true),
            ("http://[::1]:8482", true),
            ("http://127.9.9.9", true),
            ("http://portcullis-control:8482", false),
            ("http://10.0.0.1:8482", false),
            ("http://127.0.0.1@evil.example:8482", false),
            ("http://evil.example#@127.0.0.1", false),
        ] {
            assert_eq!(url_is_loopback(url), loopback, "{url}");
        }
        let mut c = Config::default();
        c.control_plane.url = Some(String::from("http://portcullis-control:8482"));
        c.control_plane.client_cert_file = Some(PathBuf::from("Cargo.toml"));
        let fields: Vec<String> = validate(&c).into_iter().map(|p| p.at).collect();
        assert_eq!(
            fields,
            ["control_plane.url", "control_plane.client_cert_file"]
        );
        c.control_plane.allow_plain_http = true;
        c.control_plane.client_key_file = Some(PathBuf::from("no-such-key.pem"));
        let fields: Vec<String> = validate(&c).into_iter().map(|p| p.at).collect();
        assert_eq!(fields, ["control_plane.client_key_file"]);
        c.control_plane.client_key_file = Some(PathBuf::from("Cargo.toml"));
        c.control_plane.url = Some(String::from("https://portcullis-control:8482"));
        c.control_plane.allow_plain_http = false;
        assert!(validate(&c).is_empty());
    }

    #[test]
    fn event_queue_settings_are_checked_and_their_secrets_redacted() {
        let mut c = Config::default();
        c.events.sqs = vec![EventsSqsConfig {
            queue_url: String::from("sqs://user-events"),
            region: None,
            endpoint_url: None,
            batch: 11,
            wait_seconds: 21,
            visibility_timeout_seconds: 1,
        }];
        c.events.audit_sqs = vec![EventsSqsConfig {
            queue_url: String::from("https://sqs.us-east-1.amazonaws.com/1/audit"),
            region: None,
            endpoint_url: None,
            batch: 0,
            wait_seconds: 20,
            visibility_timeout_seconds: 30,
        }];
        c.audit.enabled = false;
        c.events.redis = Some(EventsRedisConfig {
            url: String::from("redis://:hunter2@cache:6379/0"),
            stream: String::new(),
            group: default_events_group(),
            consumer: None,
            field: default_events_field(),
            batch: 0,
            block_ms: 0,
            claim_idle_ms: 10,
        });
        let problems = validate(&c);
        let keys: Vec<&str> = problems.iter().map(|p| p.at.as_str()).collect();
        assert_eq!(
            keys,
            [
                "events.audit_sqs",
                "events.sqs.0.queue_url",
                "events.sqs.0.batch",
                "events.sqs.0.wait_seconds",
                "events.sqs.0.visibility_timeout_seconds",
                "events.audit_sqs.0.batch",
                "events.redis.batch",
                "events.redis.block_ms",
                "events.redis.claim_idle_ms",
                "events.redis.stream",
            ],
            "{problems:?}"
        );
        let shown = dump(&c);
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn state_settings_are_checked_and_the_redis_password_redacted() {
        let mut c = Config::default();
        c.state.cache_max_bytes = 1000;
        c.state.miss_timeout_ms = 0;
        c.state.redis = Some(SharedCacheConfig {
            url: String::from("cache:6379"),
            key_prefix: String::new(),
            ttl_seconds: 60,
            timeout_ms: 200,
        });
        c.state.held_entity_types =
            Some(["Space", "not a type", "User"].map(String::from).to_vec());
        let keys: Vec<String> = validate(&c).into_iter().map(|p| p.at).collect();
        assert_eq!(
            keys,
            [
                "state.cache_max_bytes",
                "state.miss_timeout_ms",
                "state.held_entity_types.1",
                "state.held_entity_types.2",
                "state.redis.url",
                "state.redis"
            ]
        );
        let dir = std::env::temp_dir().join(format!("portcullis-state-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.yaml");
        std::fs::write(
            &path,
            "state:\n  mode: cached\n  redis:\n    url: redis://:hunter2@cache:6379/0\n",
        )
        .unwrap();
        let c = load(Some(&path), [], &[]).unwrap();
        assert_eq!(c.state.mode, StateMode::Cached);
        let redis = c.state.redis.as_ref().unwrap();
        assert_eq!(redis.key_prefix, "portcullis:state");
        assert_eq!((redis.ttl_seconds, redis.timeout_ms), (86_400, 200));
        assert!(!dump(&c).contains("hunter2"));
        std::fs::write(&path, "state:\n  mode: partial\n").unwrap();
        let problems = load(Some(&path), [], &[]).unwrap_err();
        assert!(problems[0].to_string().contains("partial"), "{problems:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn injection_settings_are_checked() {
        let dir = std::env::temp_dir().join(format!("portcullis-inject-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("inject.yaml");
        // YAML reads an unquoted 1.30 as the number 1.3: refused, not taken as 1.3.
        std::fs::write(&path, "inject:\n  kubernetes_version: 1.30\n").unwrap();
        let problems = load(Some(&path), [], &[]).unwrap_err();
        assert!(
            problems[0].to_string().contains("quote the version"),
            "{problems:?}"
        );
        std::fs::write(
            &path,
            "inject:\n  webhook: true\n  native_mode: false\n  kubernetes_version: \"v1.30.2\"\n  image_pull_policy: Sometimes\n  resources:\n    cpu_request: lots\n    memory_limit: 128Mi\n",
        )
        .unwrap();
        let problems: Vec<String> = load(Some(&path), [], &[])
            .unwrap_err()
            .into_iter()
            .map(|p| p.at)
            .collect();
        assert_eq!(
            problems,
            [
                "inject.webhook",
                "inject.image_pull_policy",
                "inject.resources.cpu_request"
            ]
        );
        std::fs::write(&path, "inject:\n  native_mode: sometimes\n").unwrap();
        assert!(load(Some(&path), [], &[]).is_err());
        for (quantity, ok) in [
            ("50m", true),
            ("0.5", true),
            ("64Mi", true),
            ("1e3", false),
            ("Mi", false),
            ("1.2.3", false),
        ] {
            assert_eq!(is_quantity(quantity), ok, "{quantity}");
        }
        for (version, minor) in [
            ("1.30", Some(30)),
            ("v1.29.4", Some(29)),
            ("1.31+", Some(31)),
            ("2.1", None),
            ("x", None),
        ] {
            assert_eq!(kubernetes_minor(version), minor, "{version}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unknown_keys_name_the_file_line_and_key() {
        let dir = std::env::temp_dir().join(format!("portcullis-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.yaml");
        std::fs::write(&path, "listen:\n  address: 0.0.0.0:1\n  adress: x\n").unwrap();
        let problems = load(Some(&path), [], &[]).unwrap_err();
        assert_eq!(problems.len(), 1);
        let text = problems[0].to_string();
        assert!(
            text.starts_with(&format!("{}:3:", path.display())),
            "{text}"
        );
        assert!(text.contains("adress"), "{text}");
    }

    #[test]
    fn environment_and_set_override_the_file_in_that_order() {
        let dir = std::env::temp_dir().join(format!("portcullis-config-o-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.yaml");
        std::fs::write(&path, "threads: 3\nops:\n  address: 127.0.0.1:1\n").unwrap();
        let env = [
            (
                String::from("PORTCULLIS_OPS__ADDRESS"),
                String::from("127.0.0.1:2"),
            ),
            (String::from("PORTCULLIS_THREADS"), String::from("9")),
            (String::from("PORTCULLIS_POLICY_DIR"), String::from("x")),
        ];
        let sets = [Override::parse("threads=4").unwrap()];
        let c = load(Some(&path), env, &sets).unwrap();
        assert_eq!(c.ops.address, "127.0.0.1:2");
        assert_eq!(c.threads, 4);
    }
}
