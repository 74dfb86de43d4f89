//! `portcullis config dump`: the effective configuration — file, environment overrides and
//! `--set` flags applied, secrets redacted — or every problem with it.

use super::Exit;
use super::{ConfigArgs, load_config, parse_sets};

/// Arguments of `config dump`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Prints the configuration as YAML; exit 3 when it has problems.
pub fn run(args: &Args) -> Exit {
    let Some(sets) = parse_sets(&args.config.sets) else {
        return Exit::Usage;
    };
    match load_config(args.config.config.as_deref(), &sets) {
        Some(config) => {
            print!("{}", crate::config::dump(&config));
            Exit::Ok
        }
        None => Exit::InvalidInput,
    }
}
