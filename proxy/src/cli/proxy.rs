//! `portcullis proxy`: the data plane alone, for a sidecar or a gateway beside a separate
//! control plane. It bootstraps its state from the control plane (`GET /v1/snapshot`),
//! follows it (`GET /v1/watch`), keeps a last-known-good file and starts from it when the
//! control plane is away, and fails closed past `control_plane.max_staleness_seconds`.
//! The route map is local: `routes.yaml` of `policies.dir` (or the built-in one).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use portcullis_engine::snapshot::SnapshotHandle;

use super::Exit;
use super::{ConfigArgs, key_source, load_config, parse_sets};
use crate::data_plane::authn::Authenticator;
use crate::data_plane::{DataPlane, Health};
use crate::follow::{self, Contact, ControlPlane, Keeper, LastKnownGood};
use crate::process::{Background, Mode, join_audit_keeper};
use crate::reload::Reloader;

/// Arguments of `proxy`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The control plane's admin API, e.g. `http://portcullis-control:8482` (overrides
    /// `control_plane.url`).
    #[arg(long, env = "PORTCULLIS_CONTROL_PLANE")]
    pub control_plane: Option<String>,
    /// File holding the token for the control plane (overrides `control_plane.token_file`).
    #[arg(long, env = "PORTCULLIS_CONTROL_PLANE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

/// Runs until SIGTERM or SIGINT.
pub fn run(args: &Args) -> Exit {
    let Some(mut sets) = parse_sets(&args.config.sets) else {
        return Exit::Usage;
    };
    // The flags are overrides like --set, so a reload sees them too; and the data plane
    // alone serves no admin API.
    let mut flags = vec![String::from("admin.enabled=false")];
    if let Some(url) = &args.control_plane {
        flags.push(format!("control_plane.url={url}"));
    }
    if let Some(file) = &args.token_file {
        flags.push(format!("control_plane.token_file={}", file.display()));
    }
    let Some(flags) = parse_sets(&flags) else {
        return Exit::Usage;
    };
    sets.extend(flags);
    let Some(config) = load_config(args.config.config.as_deref(), &sets) else {
        return Exit::InvalidInput;
    };
    crate::logging::init(&config.log);
    pingora::tls::install_default_crypto_provider();
    let cp = config.control_plane.clone();
    let (Some(url), Some(token_file)) = (cp.url.clone(), cp.token_file.clone()) else {
        eprintln!(
            "portcullis proxy: give the control plane (--control-plane URL, or control_plane.url) and its token (--token-file, or control_plane.token_file)"
        );
        return Exit::Usage;
    };
    let token = match std::fs::read_to_string(&token_file) {
        Ok(t) => t.trim().to_owned(),
        Err(e) => {
            eprintln!("portcullis proxy: `{}`: {e}", token_file.display());
            return Exit::InvalidInput;
        }
    };
    let state_file = cp
        .state_file
        .clone()
        .unwrap_or_else(|| config.data_dir.join("last-known-good.json"));
    let state_file = match LastKnownGood::new(state_file, token.trim()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("portcullis proxy: {e}");
            return Exit::Failure;
        }
    };
    let control = match ControlPlane::new(&url, token) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("portcullis proxy: {e}");
            return Exit::Failure;
        }
    };
    let background = match Background::new() {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "not started");
            return Exit::Failure;
        }
    };
    if let Err(e) = portcullis_ledger::private_file::create_dir(&config.data_dir) {
        tracing::error!(error = %e, "not started");
        return Exit::Failure;
    }
    let (state, confirmed_ms) = background.block_on(follow::bootstrap(&control, &state_file));
    let snapshot = match follow::build(state.clone()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "not started");
            return Exit::Failure;
        }
    };
    let gate = match crate::reload::local_route_map(&config, snapshot.policies())
        .and_then(|routes| crate::prepare::gate(&config, routes).map_err(|e| vec![e]))
    {
        Ok(g) => g,
        Err(problems) => {
            for p in &problems {
                eprintln!("{p}");
            }
            return Exit::InvalidInput;
        }
    };
    let (keys, issuer, _dev_key) = match key_source(&config) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("{e}");
            return Exit::InvalidInput;
        }
    };
    let authn = match crate::prepare::auth_settings(&config.auth, issuer) {
        Ok(s) => Arc::new(Authenticator::new(s, config.auth.token_cache_entries)),
        Err(e) => {
            eprintln!("{e}");
            return Exit::InvalidInput;
        }
    };
    match keys.load_local() {
        Ok(Some(set)) => authn.set_keys(set),
        Ok(None) => {}
        Err(e) => {
            eprintln!("{keys}: {e}");
            return Exit::InvalidInput;
        }
    }
    let (audit, audit_keeper) = match crate::audit::Audit::open(&config) {
        Ok(Some((audit, keeper))) => (Some(audit), Some(keeper)),
        Ok(None) => (None, None),
        Err(e) => {
            tracing::error!(error = %e, "not started: audit");
            return Exit::Failure;
        }
    };
    if let Err(e) = crate::server::check_binds(&config, Mode::Proxy) {
        tracing::error!(error = %e, "not started");
        return Exit::Failure;
    }
    let contact = Arc::new(Contact::new(
        Duration::from_secs(cp.max_staleness_seconds),
        confirmed_ms,
    ));
    let plane = Arc::new(DataPlane {
        gate: arc_swap::ArcSwap::from_pointee(gate),
        snapshot: Arc::new(SnapshotHandle::new(snapshot)),
        authn,
        health: Arc::new(Health::default()),
        audit,
        contact: Some(Arc::clone(&contact)),
    });
    tracing::info!(
        data_plane = %config.listen.address,
        ops = %config.ops.address,
        control_plane = url,
        revision = plane.snapshot.load().revision(),
        state_file = %state_file.path().display(),
        "portcullis proxy starting"
    );
    let keeper = match Keeper::start(state_file, state) {
        Ok(k) => k,
        Err(e) => {
            tracing::error!(error = %e, "not started");
            return Exit::Failure;
        }
    };
    background.spawn(follow::follow(
        control,
        Arc::clone(&plane.snapshot),
        keeper,
        contact,
        Duration::from_millis(cp.heartbeat_ms),
    ));
    background.spawn(keys.run(Arc::clone(&plane.authn)));
    background.spawn(crate::reload::watch_route_map(Arc::clone(&plane)));
    for forward in plane
        .audit
        .as_ref()
        .map(|a| a.forwarders())
        .unwrap_or_default()
    {
        background.spawn(forward);
    }
    background.spawn(
        Reloader {
            config_file: args.config.config.clone(),
            sets,
            #[cfg(feature = "control-plane")]
            store: None,
            #[cfg(feature = "control-plane")]
            admin_policies: None,
            plane: Arc::clone(&plane),
            current: config.clone(),
        }
        .run(),
    );
    crate::server::run(&config, plane, None, Mode::Proxy);
    background.stop(Duration::from_secs(config.shutdown.grace_period_seconds));
    join_audit_keeper(audit_keeper);
    tracing::info!("stopped");
    Exit::Ok
}
