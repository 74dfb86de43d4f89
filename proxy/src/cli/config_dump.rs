//! `portcullis config dump`: the effective configuration — file, environment overrides and
//! `--set` flags applied, secrets redacted — or every problem with it.

use std::path::PathBuf;

use super::Exit;
use super::serve::{load_config, parse_sets};

/// Arguments of `config dump`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// YAML configuration file.
    #[arg(long, short, env = "PORTCULLIS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Override one key (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

/// Prints the configuration as YAML; exit 3 when it has problems.
pub fn run(args: &Args) -> Exit {
    let Some(sets) = parse_sets(&args.sets) else {
        return Exit::Usage;
    };
    match load_config(args.config.as_deref(), &sets) {
        Some(config) => {
            print!("{}", crate::config::dump(&config));
            Exit::Ok
        }
        None => Exit::InvalidInput,
    }
}
