//! The `portcullis` binary. See `portcullis --help`.

use clap::Parser;
use portcullis_proxy::cli;

/// glibc's allocator showed up as an eighth of the data plane's CPU time under load (many
/// short-lived buffers and header maps per request); mimalloc serves those from thread-local
/// pages. See BENCHMARKS.md for the measurement.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                cli::Exit::Usage
            } else {
                cli::Exit::Ok
            };
            // Printing help or a usage error to the terminal; nothing to do if that fails.
            if e.print().is_err() {
                return cli::Exit::Usage.into();
            }
            return code.into();
        }
    };
    cli::run(cli).into()
}
