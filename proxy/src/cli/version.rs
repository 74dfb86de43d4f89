//! `portcullis version`: version and build facts.

use super::Exit;

/// Arguments of `version` (none).
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Prints `portcullis <version>` and the Cedar language version it decides with.
pub fn run(_args: &Args) -> Exit {
    println!("portcullis {}", env!("CARGO_PKG_VERSION"));
    println!("cedar-policy {}", cedar_policy::get_sdk_version());
    Exit::Ok
}
