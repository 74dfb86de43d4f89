//! `portcullis control`: the control plane alone — the admin API (which sidecars running
//! `portcullis proxy` follow), the store (SQLite, or PostgreSQL shared by several replicas,
//! each following the database), policies synced from `policies.dir`, the audit ledger of
//! admin changes, and the ops listener. No data plane. Takes the same arguments as `serve`.

use super::Exit;
use super::serve::{Args, run_mode};
use crate::process::Mode;

/// Runs until SIGTERM or SIGINT.
pub fn run(args: &Args) -> Exit {
    run_mode(&args.config, args.no_demo_data, Mode::Control)
}
