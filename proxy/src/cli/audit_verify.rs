//! `portcullis audit verify PATH...`: recomputes the hash chain of a ledger (across rotated
//! files) and checks its signed checkpoints; prints the first break with file, line and
//! sequence number.

use std::io::IsTerminal;
use std::path::PathBuf;

use portcullis_policy_store::audit::checkpoint::load_public_key;
use portcullis_policy_store::audit::verify::{VerifyOptions, verify};

use super::Exit;

/// Arguments of `audit verify`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Ledger directories or files (`audit-*.jsonl`, `checkpoints.jsonl`).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Start at this sequence number.
    #[arg(long)]
    pub from_seq: Option<u64>,
    /// Stop after this sequence number.
    #[arg(long)]
    pub to_seq: Option<u64>,
    /// Checkpoint public key (SPKI PEM, e.g. `portcullis-data/audit-checkpoint-key.pem.pub`):
    /// checks signatures, and fails a ledger without checkpoints.
    #[arg(long, env = "PORTCULLIS_AUDIT_PUBLIC_KEY")]
    pub public_key: Option<PathBuf>,
}

/// Exit 0 when the ledger verifies, 1 at the first break, 3 when the input is unusable.
pub fn run(args: &Args) -> Exit {
    let public_key = match args.public_key.as_deref().map(load_public_key).transpose() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("portcullis audit verify: {e}");
            return Exit::InvalidInput;
        }
    };
    let options = VerifyOptions {
        from_seq: args.from_seq,
        to_seq: args.to_seq,
        public_key,
    };
    let terminal = std::io::stderr().is_terminal();
    let mut progress = |n: u64| {
        if terminal {
            eprint!("\rverified {n} records");
        }
    };
    let result = verify(&args.paths, &options, &mut progress);
    if terminal {
        eprint!("\r");
    }
    match result {
        Ok(s) => {
            let range = s.range.map_or_else(
                || String::from("no records"),
                |(a, b)| format!("seq {a}..={b}"),
            );
            println!(
                "ok: {} records ({range}) in {} file(s); {} checkpoint(s) matched, last at {}{}",
                s.records,
                s.files,
                s.checkpoints,
                s.last_checkpoint
                    .map_or_else(|| String::from("none"), |c| format!("seq {c}")),
                if s.signatures_checked {
                    ", signatures verified"
                } else {
                    "; signatures NOT checked (no --public-key)"
                }
            );
            Exit::Ok
        }
        Err(b) if b.line == 0 && b.seq.is_none() && b.what.starts_with("cannot") => {
            eprintln!("portcullis audit verify: {b}");
            Exit::InvalidInput
        }
        Err(b) => {
            eprintln!("BROKEN {b}");
            Exit::Failure
        }
    }
}
