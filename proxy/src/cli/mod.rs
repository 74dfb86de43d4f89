//! The `portcullis` command line: one file per subcommand, each with an `Args` struct and
//! one `run` function returning an [`Exit`] code.

pub mod audit_verify;
pub mod config_dump;
#[cfg(feature = "control-plane")]
pub mod control;
#[cfg(feature = "control-plane")]
pub mod inject;
#[cfg(feature = "control-plane")]
pub mod policy_test;
#[cfg(feature = "control-plane")]
pub mod policy_validate;
pub mod proxy;
#[cfg(feature = "control-plane")]
pub mod serve;
pub mod token;
pub mod version;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{self, Config, Override};
use crate::data_plane::authn::source::{JwksAccess, KeySource};
use crate::devkey::{DEV_ISSUER, DevKey};

/// Documented exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: success.
    Ok = 0,
    /// 1: failure (validation errors, failed tests, denied).
    Failure = 1,
    /// 2: usage error (bad flags; clap's own code).
    Usage = 2,
    /// 3: invalid input (unreadable or malformed files).
    InvalidInput = 3,
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        Self::from(e as u8)
    }
}

/// Portcullis: a policy enforcement point for HTTP APIs, deciding every request with Cedar.
///
/// Start with `portcullis serve` (everything in one process, embedded store), then
/// `portcullis token --sub alice` for a dev token.
///
/// Exit codes: 0 ok, 1 failure (invalid policies, failed tests, cannot start), 2 usage,
/// 3 invalid input (configuration, policies or files that must be fixed).
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about, long_about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run everything in one process: the enforcing proxy and the ops listener on the
    /// embedded store (SQLite in the data directory).
    #[cfg(feature = "control-plane")]
    Serve(serve::Args),
    /// Run the control plane alone: the admin API sidecars follow, the store (SQLite or a
    /// PostgreSQL shared by replicas), the ops listener; no data plane.
    #[cfg(feature = "control-plane")]
    Control(serve::Args),
    /// Run the data plane alone, following a control plane (e.g. a `serve` elsewhere):
    /// bootstraps from it, keeps a last-known-good state, fails closed when too stale.
    Proxy(proxy::Args),
    /// Mint a token signed by the dev key of `serve`'s data directory.
    Token(token::Args),
    /// Add the Portcullis sidecar to the workloads of Kubernetes manifests (a file or
    /// standard input), as the injection webhook would; prints the manifests.
    #[cfg(feature = "control-plane")]
    Inject(inject::Args),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Audit ledger tools.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Policy-as-code tools: validate and test a policies directory.
    #[cfg(feature = "control-plane")]
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Print the version and build facts.
    Version(version::Args),
}

/// `portcullis audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the hash chain and check the signed checkpoints; exit 1 at the first break.
    Verify(audit_verify::Args),
}

/// `portcullis config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration (file, environment, `--set`) with secrets redacted.
    Dump(config_dump::Args),
}

/// `portcullis policy ...`
#[cfg(feature = "control-plane")]
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate schema, policies, roles and route map strictly; print every problem as
    /// `file:line:col: message`.
    Validate(policy_validate::Args),
    /// Run the test cases under `DIR/tests/` (Portcullis YAML cases and Cedar CLI
    /// `run-tests` JSON) and print a pass/fail summary.
    Test(policy_test::Args),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Exit {
    match cli.command {
        #[cfg(feature = "control-plane")]
        Command::Serve(args) => serve::run(&args),
        Command::Token(args) => token::run(&args),
        #[cfg(feature = "control-plane")]
        Command::Inject(args) => inject::run(&args),
        Command::Proxy(args) => proxy::run(&args),
        #[cfg(feature = "control-plane")]
        Command::Control(args) => control::run(&args),
        Command::Config(ConfigCommand::Dump(args)) => config_dump::run(&args),
        Command::Audit(AuditCommand::Verify(args)) => audit_verify::run(&args),
        #[cfg(feature = "control-plane")]
        Command::Policy(PolicyCommand::Validate(args)) => policy_validate::run(&args),
        #[cfg(feature = "control-plane")]
        Command::Policy(PolicyCommand::Test(args)) => policy_test::run(&args),
        Command::Version(args) => version::run(&args),
    }
}

/// Where the configuration comes from: shared by every command that reads it.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// YAML configuration file (see deploy/examples/portcullis.yaml).
    #[arg(long, short, env = "PORTCULLIS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Override one key, e.g. `--set upstreams.0.address=127.0.0.1:3000` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

/// Parses `--set` flags; prints the bad ones.
pub fn parse_sets(sets: &[String]) -> Option<Vec<Override>> {
    let mut parsed = Vec::new();
    let mut ok = true;
    for s in sets {
        match Override::parse(s) {
            Ok(o) => parsed.push(o),
            Err(e) => {
                eprintln!("--set: {e}");
                ok = false;
            }
        }
    }
    ok.then_some(parsed)
}

/// Loads the configuration or prints every problem.
pub fn load_config(file: Option<&std::path::Path>, sets: &[Override]) -> Option<Config> {
    match config::load(file, std::env::vars(), sets) {
        Ok(c) => Some(c),
        Err(problems) => {
            for p in &problems {
                eprintln!("{p}");
            }
            eprintln!(
                "portcullis: the configuration has {} problem(s)",
                problems.len()
            );
            None
        }
    }
}

/// Why `portcullis proxy` does not start without token keys.
const NO_KEYS_FOR_PROXY: &str = "auth: `portcullis proxy` verifies tokens with the keys of your issuer: set auth.jwks_url (or auth.jwks_file) and auth.issuer; the dev signing key is trusted by `portcullis serve` only";

/// The key sources of every trusted issuer, in the order of the authentication settings
/// (`auth`'s own first, then `auth.issuers`), with the first issuer's `iss` and the dev key
/// when that is what `auth` trusts.
pub(crate) fn key_sources(
    config: &Config,
    mode: crate::process::Mode,
) -> Result<(Vec<KeySource>, String, Option<DevKey>), String> {
    let (first, issuer, dev_key) = key_source(config, mode)?;
    let mut sources = vec![first];
    for further in &config.auth.issuers {
        sources.push(
            configured_source(
                &config.auth,
                further.jwks_url.as_ref(),
                further.jwks_file.as_ref(),
                JwksAccess {
                    ca_file: further.jwks_ca_file.clone(),
                    token_file: further.jwks_token_file.clone(),
                },
            )
            .ok_or_else(|| format!("auth.issuers: `{}` has no keys", further.issuer))?,
        );
    }
    Ok((sources, issuer, dev_key))
}

/// The source a `jwks_url` (reached with `access`) or `jwks_file` names, refreshed as
/// `auth` says.
fn configured_source(
    auth: &crate::config::AuthConfig,
    url: Option<&String>,
    file: Option<&std::path::PathBuf>,
    access: JwksAccess,
) -> Option<KeySource> {
    if let Some(path) = file {
        return Some(KeySource::File(path.clone()));
    }
    url.map(|url| KeySource::Url {
        url: url.clone(),
        refresh: std::time::Duration::from_secs(auth.jwks_refresh_seconds.max(10)),
        follow_redirects: auth.jwks_follow_redirects,
        access,
    })
}

/// The configured JWKS of `auth`, or the dev key (created in the data directory if needed).
/// The dev key is trusted by `serve` only: `proxy` enforces for real traffic and refuses to
/// start without keys, and `control` without keys cannot verify admin JWTs.
fn key_source(
    config: &Config,
    mode: crate::process::Mode,
) -> Result<(KeySource, String, Option<DevKey>), String> {
    let auth = &config.auth;
    let access = JwksAccess {
        ca_file: auth.jwks_ca_file.clone(),
        token_file: auth.jwks_token_file.clone(),
    };
    if let Some(source) = configured_source(
        auth,
        auth.jwks_url.as_ref(),
        auth.jwks_file.as_ref(),
        access,
    ) {
        return Ok((source, auth.issuer.clone().unwrap_or_default(), None));
    }
    match mode {
        crate::process::Mode::Proxy => return Err(String::from(NO_KEYS_FOR_PROXY)),
        crate::process::Mode::Control if config.admin.jwt.is_some() => {
            return Err(String::from(
                "admin.jwt: admin JWTs need the issuer's keys: set auth.jwks_url or auth.jwks_file",
            ));
        }
        _ => {}
    }
    portcullis_ledger::private_file::create_dir(&config.data_dir).map_err(|e| e.to_string())?;
    let (key, created) = DevKey::load_or_create(&config.data_dir)?;
    if created {
        tracing::info!(key = %key.path().display(), "dev signing key created");
    }
    let issuer = auth
        .issuer
        .clone()
        .unwrap_or_else(|| String::from(DEV_ISSUER));
    Ok((KeySource::Fixed(key.jwks()), issuer, Some(key)))
}
