//! The `portcullis` command line: one file per subcommand, each with an `Args` struct and
//! one `run` function returning an [`Exit`] code.

pub mod audit_verify;
pub mod config_dump;
pub mod control;
pub mod policy_test;
pub mod policy_validate;
pub mod proxy;
pub mod serve;
pub mod token;
pub mod version;

use clap::{Parser, Subcommand};

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
    Serve(serve::Args),
    /// Run the control plane alone: the admin API sidecars follow, the store (SQLite or a
    /// PostgreSQL shared by replicas), the ops listener; no data plane.
    Control(serve::Args),
    /// Run the data plane alone, following a control plane (e.g. a `serve` elsewhere):
    /// bootstraps from it, keeps a last-known-good state, fails closed when too stale.
    Proxy(proxy::Args),
    /// Mint a token signed by the dev key of `serve`'s data directory.
    Token(token::Args),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Audit ledger tools.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Policy-as-code tools: validate and test a policies directory.
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
        Command::Serve(args) => serve::run(&args),
        Command::Token(args) => token::run(&args),
        Command::Proxy(args) => proxy::run(&args),
        Command::Control(args) => control::run(&args),
        Command::Config(ConfigCommand::Dump(args)) => config_dump::run(&args),
        Command::Audit(AuditCommand::Verify(args)) => audit_verify::run(&args),
        Command::Policy(PolicyCommand::Validate(args)) => policy_validate::run(&args),
        Command::Policy(PolicyCommand::Test(args)) => policy_test::run(&args),
        Command::Version(args) => version::run(&args),
    }
}
