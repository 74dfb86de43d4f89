//! `portcullis-proxy`: the data plane alone, for a sidecar or an edge gateway beside a
//! separate control plane. The same as `portcullis proxy`, in a binary that links no SQL
//! driver and no admin API (and the AWS SDK only when built with `sqs-sink`).

use clap::Parser;
use portcullis_proxy::cli::{Exit, proxy};

/// See `portcullis`'s main: many short-lived buffers per request.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Portcullis data plane: enforces every request with the policies and assignments it
/// follows from a control plane (`portcullis control` or `serve`); bootstraps from it, keeps
/// a last-known-good state, and fails closed when too stale.
///
/// Exit codes: 0 ok, 1 failure (cannot start), 2 usage, 3 invalid input (configuration,
/// routes or files that must be fixed).
#[derive(Debug, Parser)]
#[command(name = "portcullis-proxy", version, about, long_about)]
struct Cli {
    #[command(flatten)]
    args: proxy::Args,
}

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            };
            // Printing help or a usage error to the terminal; nothing to do if that fails.
            if e.print().is_err() {
                return Exit::Usage.into();
            }
            return code.into();
        }
    };
    proxy::run(&cli.args).into()
}
