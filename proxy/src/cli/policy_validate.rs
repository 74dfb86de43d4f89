//! `portcullis policy validate [DIR]`: strict validation of a policies directory.

use std::path::PathBuf;

use super::Exit;
use crate::policy_dir::compile_dir;

/// Arguments of `policy validate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The policies directory (schema.cedarschema, *.cedar, roles.yaml, routes.yaml,
    /// admin.cedar).
    #[arg(default_value = "policies", env = "PORTCULLIS_POLICY_DIR")]
    pub dir: PathBuf,
}

/// Prints every problem to stderr; exit 1 if there is any.
pub fn run(args: &Args) -> Exit {
    match compile_dir(&args.dir) {
        Ok(compiled) => {
            for warning in compiled.policies.warnings() {
                eprintln!("warning: {warning}");
            }
            println!(
                "{}: ok ({} policies, {} roles, {} routes; admin policies from {})",
                args.dir.display(),
                compiled.policies.policy_count(),
                compiled.dir.sources.roles.len(),
                compiled
                    .routes
                    .as_ref()
                    .map_or(0, crate::routes::RouteMap::len),
                compiled.admin.source,
            );
            Exit::Ok
        }
        Err(problems) => {
            for p in &problems {
                eprintln!("{p}");
            }
            eprintln!("{}: {} problem(s)", args.dir.display(), problems.len());
            Exit::Failure
        }
    }
}
