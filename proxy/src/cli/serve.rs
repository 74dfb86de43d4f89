//! `portcullis serve`: everything in one process on the embedded store — the enforcing
//! proxy, the ops listener, and the store (an SQLite file in the data directory) kept in
//! step with the policies directory. With no flags it runs on defaults: data plane on
//! `0.0.0.0:8480`, ops on `0.0.0.0:8481`, upstream `127.0.0.1:8080`, data in
//! `./portcullis-data`, policies from `./policies` (or the built-in set), the demo data in a
//! new store, and a generated dev signing key when no JWKS is configured.

use super::{ConfigArgs, Exit, load_config, parse_sets};
use crate::app::{Launch, Source};
use crate::process::Mode;

/// Arguments of `serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Do not load the demo data into a new store.
    #[arg(long, env = "PORTCULLIS_NO_DEMO_DATA")]
    pub no_demo_data: bool,
}

/// Runs until SIGTERM or SIGINT.
pub fn run(args: &Args) -> Exit {
    run_mode(&args.config, args.no_demo_data, Mode::Serve)
}

/// `serve`, or `control` (the same without the data-plane listener).
pub(crate) fn run_mode(config_args: &ConfigArgs, no_demo_data: bool, mode: Mode) -> Exit {
    let Some(sets) = parse_sets(&config_args.sets) else {
        return Exit::Usage;
    };
    let Some(config) = load_config(config_args.config.as_deref(), &sets) else {
        return Exit::InvalidInput;
    };
    crate::logging::init(&config.log);
    if !mode.serves_data_plane() && !config.admin.enabled {
        eprintln!(
            "admin.enabled: `portcullis control` serves the admin API; it cannot be disabled here"
        );
        return Exit::InvalidInput;
    }
    crate::app::run(Launch {
        config,
        config_file: config_args.config.clone(),
        sets,
        mode,
        source: Source::Store {
            demo_data: !no_demo_data,
        },
    })
}
