//! `portcullis audit verify PATH...`: recomputes the hash chain of a ledger (across rotated
//! files) from the genesis hash (or a signed checkpoint given as the anchor) and checks its
//! linked, signed checkpoints; prints the first break with file, line and sequence number.
//! Records no verified signature covers fail it unless `--allow-unsigned-tail`. What a
//! clean result guarantees, and what it cannot, is in `audit/verify.rs`.

use std::io::IsTerminal;
use std::path::PathBuf;

use portcullis_ledger::checkpoint::load_public_key;
use portcullis_ledger::verify::{VerifyOptions, verify};

use super::Exit;

/// Arguments of `audit verify`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Ledger directories or files (`audit-*.jsonl`, `checkpoints.jsonl`); a witness's copy
    /// of the checkpoints (from the Redis or SQS sink) can be given as another
    /// `checkpoints.jsonl`.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Start at this sequence number, trusting the signed checkpoint just before it as the
    /// anchor (for a ledger whose older files were pruned); default: the genesis record.
    #[arg(long)]
    pub from_seq: Option<u64>,
    /// Stop after this sequence number.
    #[arg(long)]
    pub to_seq: Option<u64>,
    /// Checkpoint public key (SPKI PEM, e.g. `portcullis-data/audit-checkpoint-key.pem.pub`,
    /// best from a copy kept away from the ledger): checks signatures, and fails a ledger
    /// without checkpoints. Without it, no record counts as signed.
    #[arg(long, env = "PORTCULLIS_AUDIT_PUBLIC_KEY")]
    pub public_key: Option<PathBuf>,
    /// Accept records after the last signed checkpoint (a running ledger has up to a
    /// checkpoint interval of them) instead of failing.
    #[arg(long, env = "PORTCULLIS_AUDIT_ALLOW_UNSIGNED_TAIL")]
    pub allow_unsigned_tail: bool,
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
        allow_unsigned_tail: args.allow_unsigned_tail,
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
                "ok: {} records ({range}) in {} file(s); {} checkpoint(s) matched, last at {}{}{}",
                s.records,
                s.files,
                s.checkpoints,
                s.last_checkpoint
                    .map_or_else(|| String::from("none"), |c| format!("seq {c}")),
                if s.signatures_checked {
                    ", signatures verified"
                } else {
                    "; signatures NOT checked (no --public-key)"
                },
                if s.unsigned_tail > 0 {
                    format!(
                        "; {} record(s) UNSIGNED (accepted by --allow-unsigned-tail)",
                        s.unsigned_tail
                    )
                } else {
                    String::new()
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
