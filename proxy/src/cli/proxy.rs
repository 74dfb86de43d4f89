//! `portcullis proxy`: the data plane alone, for a sidecar or a gateway beside a separate
//! control plane. It bootstraps its state from the control plane (`GET /v1/snapshot`),
//! follows it (`GET /v1/watch`), keeps a last-known-good file and starts from it when the
//! control plane is away, and fails closed past `control_plane.max_staleness_seconds`.
//! The route map is local: `routes.yaml` of `policies.dir` (or the built-in one).

use std::path::PathBuf;

use super::Exit;
use super::{ConfigArgs, load_config, parse_sets};
use crate::app::{Following, Launch, Source};
use crate::follow::{ControlPlane, LastKnownGood};
use crate::process::Mode;

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
    let cp = config.control_plane.clone();
    let (Some(url), Some(token_file)) = (cp.url.clone(), cp.token_file.clone()) else {
        eprintln!(
            "portcullis proxy: give the control plane (--control-plane URL, or control_plane.url) and its token (--token-file, or control_plane.token_file)"
        );
        return Exit::Usage;
    };
    let token = match crate::follow::read_token(&token_file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("portcullis proxy: control_plane.token_file: {e}");
            return Exit::InvalidInput;
        }
    };
    let cached = config.state.mode == crate::config::StateMode::Cached;
    // Each mode its own file: a full proxy never starts from a state without its users.
    let default_file = if cached {
        "last-known-good.shared.json"
    } else {
        "last-known-good.json"
    };
    let state_file = cp
        .state_file
        .clone()
        .unwrap_or_else(|| config.data_dir.join(default_file));
    let state_file = match LastKnownGood::new(state_file, &token) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("portcullis proxy: {e}");
            return Exit::Failure;
        }
    };
    let control = match crate::follow::client(&cp) {
        Ok(client) if cached => ControlPlane::new(&url, token, client).shared_part_only(),
        Ok(client) => ControlPlane::new(&url, token, client),
        Err(e) => {
            eprintln!("portcullis proxy: {e}");
            return Exit::InvalidInput;
        }
    };
    crate::app::run(Launch {
        config,
        config_file: args.config.config.clone(),
        sets,
        mode: Mode::Proxy,
        source: Source::ControlPlane(Box::new(Following {
            control,
            url,
            token_file,
            state_file,
        })),
    })
}
