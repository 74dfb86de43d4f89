//! Verification of a ledger: every line sealed, every hash right, sequence numbers without
//! gaps, each `prev_hash` the hash before it, across rotated files; and the signed
//! checkpoints matching the chain, linked to one another, with none beyond its end. The
//! first break is reported with its file, line and sequence number.
//!
//! What a clean result guarantees (with the public key given from a copy kept apart from
//! the ledger):
//!
//! - the chain runs unbroken from the genesis hash (seq 1), or from a signed checkpoint
//!   named as the trust anchor (`from_seq`: the checkpoint at `from_seq - 1`), so a deleted
//!   head file or a cut head is a break;
//! - every record up to the last signed checkpoint is as the writer wrote it, and no
//!   checkpoint was removed from the middle or the start of the checkpoint file (each names
//!   its predecessor's digest);
//! - records after the last signed checkpoint are reported as unsigned, a failure unless
//!   `allow_unsigned_tail` (a live ledger has up to a checkpoint interval of them).
//!
//! Its limits: whoever can write the directory can cut the tail back to a checkpoint and
//! delete the checkpoints after it, and that ledger verifies, only shorter. Only a copy of
//! the checkpoints kept elsewhere (a witness: the Redis or SQS sink's stream, given here as
//! another `checkpoints.jsonl`) shows it. A rewrite with another key fails against the
//! real public key.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use ed25519_dalek::VerifyingKey;

use super::checkpoint::{self, Checkpoint};
use super::{GENESIS, Record, sha256_hex, unseal};

/// What to check.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Start at this sequence number, trusting the signed checkpoint at `from_seq - 1` as
    /// the anchor (the records before it may have been pruned).
    pub from_seq: Option<u64>,
    /// Stop after this sequence number.
    pub to_seq: Option<u64>,
    /// Check checkpoint signatures with this key; with a key, a ledger without checkpoints
    /// fails (its tail cannot be shown complete). Without one, no record counts as signed.
    pub public_key: Option<VerifyingKey>,
    /// Accept records after the last signed checkpoint instead of failing on them.
    pub allow_unsigned_tail: bool,
}

/// A clean result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Records checked.
    pub records: u64,
    /// First and last sequence numbers checked.
    pub range: Option<(u64, u64)>,
    /// Files read.
    pub files: usize,
    /// Checkpoints matched against the chain.
    pub checkpoints: usize,
    /// The last checkpoint's sequence number.
    pub last_checkpoint: Option<u64>,
    /// Whether checkpoint signatures were checked.
    pub signatures_checked: bool,
    /// Records after the last signed checkpoint (all of them without a public key).
    pub unsigned_tail: u64,
}

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    /// The file.
    pub file: PathBuf,
    /// 1-based line (0: the file as a whole).
    pub line: usize,
    /// The sequence number concerned, when known.
    pub seq: Option<u64>,
    /// What is wrong.
    pub what: String,
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: ", self.file.display(), self.line)?;
        if let Some(seq) = self.seq {
            write!(f, "seq {seq}: ")?;
        }
        f.write_str(&self.what)
    }
}

/// The ledger files and checkpoint file named by `paths` (files, or directories holding
/// them), in chain order.
pub fn ledger_files(paths: &[PathBuf]) -> Result<(Vec<PathBuf>, Vec<PathBuf>), crate::LedgerError> {
    let mut records = Vec::new();
    let mut checkpoints = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(crate::LedgerError::io(path, "list"))?;
            for entry in entries.filter_map(Result::ok) {
                let p = entry.path();
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                if name == checkpoint::FILE {
                    checkpoints.push(p);
                } else if name.ends_with(".jsonl") {
                    records.push(p);
                }
            }
        } else if path.file_name().and_then(|n| n.to_str()) == Some(checkpoint::FILE) {
            checkpoints.push(path.clone());
        } else if path.is_file() {
            records.push(path.clone());
        } else {
            return Err(crate::LedgerError::Missing { path: path.clone() });
        }
    }
    records.sort();
    records.dedup();
    Ok((records, checkpoints))
}

/// A checkpoint and where it was read.
struct Read {
    checkpoint: Checkpoint,
    file: PathBuf,
    line: usize,
}

impl Read {
    fn at(&self, what: String) -> Break {
        Break {
            file: self.file.clone(),
            line: self.line,
            seq: Some(self.checkpoint.seq),
            what,
        }
    }
}

/// Every checkpoint of `files`, file by file in file order.
fn read_checkpoints(files: &[PathBuf]) -> Result<Vec<Vec<Read>>, Break> {
    let mut all = Vec::new();
    for file in files {
        let reader = BufReader::new(File::open(file).map_err(|e| Break {
            file: file.clone(),
            line: 0,
            seq: None,
            what: format!("cannot open: {e}"),
        })?);
        let mut read = Vec::new();
        for (i, line) in reader.lines().enumerate() {
            let at = |what: String| Break {
                file: file.clone(),
                line: i + 1,
                seq: None,
                what,
            };
            let line = line.map_err(|e| at(format!("cannot read: {e}")))?;
            if line.trim().is_empty() {
                continue;
            }
            let checkpoint: Checkpoint =
                serde_json::from_str(&line).map_err(|e| at(format!("not a checkpoint: {e}")))?;
            read.push(Read {
                checkpoint,
                file: file.clone(),
                line: i + 1,
            });
        }
        all.push(read);
    }
    Ok(all)
}

/// Checks that each file's checkpoints name their predecessor: the first in a file the
/// genesis value or a checkpoint another file holds (a witness may start later), every
/// other the one before it. Checkpoints written before linking (no `prev`) are passed.
fn check_links(files: &[Vec<Read>]) -> Result<(), Break> {
    let known: std::collections::HashSet<String> = files
        .iter()
        .flatten()
        .map(|r| r.checkpoint.digest())
        .collect();
    for file in files {
        let mut before: Option<&Read> = None;
        for read in file {
            if let Some(prev) = &read.checkpoint.prev {
                let linked = match before {
                    Some(b) => *prev == b.checkpoint.digest(),
                    None => prev == GENESIS || known.contains(prev),
                };
                if !linked {
                    return Err(read.at(String::from(
                        "checkpoint does not link to the checkpoint before it: a checkpoint was removed or the file rewritten",
                    )));
                }
            }
            before = Some(read);
        }
    }
    Ok(())
}

/// Verifies the ledger in `paths`. `progress` is called with the number of records checked
/// so far, every 100,000 records.
pub fn verify(
    paths: &[PathBuf],
    options: &VerifyOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<Summary, Break> {
    // A problem of the ledger as a whole: named by the first path given.
    let everything = || Break {
        file: paths.first().cloned().unwrap_or_default(),
        line: 0,
        seq: None,
        what: String::new(),
    };
    let (files, checkpoint_files) = ledger_files(paths).map_err(|e| Break {
        what: e.to_string(),
        ..everything()
    })?;
    let checkpoint_files = read_checkpoints(&checkpoint_files)?;
    let mut summary = Summary {
        records: 0,
        range: None,
        files: files.len(),
        checkpoints: 0,
        last_checkpoint: None,
        signatures_checked: options.public_key.is_some(),
        unsigned_tail: 0,
    };
    if let Some(key) = &options.public_key {
        for read in checkpoint_files.iter().flatten() {
            if !read.checkpoint.is_signed_by(key) {
                return Err(read.at(String::from(
                    "checkpoint signature does not verify with the public key",
                )));
            }
        }
        if checkpoint_files.iter().all(Vec::is_empty) {
            return Err(Break {
                what: String::from(
                    "no checkpoint found: with a public key given, the tail must be covered by a signed checkpoint",
                ),
                ..everything()
            });
        }
    }
    check_links(&checkpoint_files)?;
    let mut checkpoints: BTreeMap<u64, Vec<&Read>> = BTreeMap::new();
    for read in checkpoint_files.iter().flatten() {
        checkpoints
            .entry(read.checkpoint.seq)
            .or_default()
            .push(read);
    }
    // Where the chain must start: the genesis hash, or the anchor's hash.
    let start = match options.from_seq {
        None | Some(0 | 1) => (1, String::from(GENESIS)),
        Some(from) => {
            let anchor = checkpoints
                .get(&(from - 1))
                .and_then(|reads| reads.first())
                .filter(|_| options.public_key.is_some())
                .ok_or_else(|| Break {
                    seq: Some(from - 1),
                    what: format!(
                        "no signed checkpoint at seq {} to start from: give --public-key and a seq just after a checkpoint",
                        from - 1
                    ),
                    ..everything()
                })?;
            (from, anchor.checkpoint.hash.clone())
        }
    };
    // The last record a verified signature covers: none without the key.
    let signed_up_to = options
        .public_key
        .as_ref()
        .and_then(|_| checkpoints.keys().next_back().copied());
    let mut first_unsigned: Option<Break> = None;

    let mut previous: Option<(u64, String)> = None;
    let mut last_file: Option<PathBuf> = None;
    'files: for file in &files {
        let reader = BufReader::new(File::open(file).map_err(|e| Break {
            file: file.clone(),
            line: 0,
            seq: None,
            what: format!("cannot open: {e}"),
        })?);
        last_file = Some(file.clone());
        for (i, line) in reader.lines().enumerate() {
            let at = |seq: Option<u64>, what: String| Break {
                file: file.clone(),
                line: i + 1,
                seq,
                what,
            };
            let line = line.map_err(|e| at(None, format!("cannot read: {e}")))?;
            let (canonical, claimed) = unseal(&line).ok_or_else(|| {
                at(
                    None,
                    String::from("not a sealed record (no trailing `hash`)"),
                )
            })?;
            let record: Record = serde_json::from_str(&canonical)
                .map_err(|e| at(None, format!("not a record: {e}")))?;
            let seq = record.seq;
            if options.from_seq.is_some_and(|from| seq < from) {
                continue;
            }
            if options.to_seq.is_some_and(|to| seq > to) {
                break 'files;
            }
            if sha256_hex(canonical.as_bytes()) != claimed {
                return Err(at(
                    Some(seq),
                    String::from("the hash does not match the record: a member was changed"),
                ));
            }
            match &previous {
                None => {
                    let (first, ref start_hash) = start;
                    if seq != first {
                        return Err(at(
                            Some(seq),
                            format!(
                                "the chain starts at seq {seq}, not {first}: its head was removed (or start from a signed checkpoint with --from-seq)"
                            ),
                        ));
                    }
                    if &record.prev_hash != start_hash {
                        return Err(at(
                            Some(seq),
                            if first == 1 {
                                String::from(
                                    "the first record does not start from the genesis hash",
                                )
                            } else {
                                format!(
                                    "prev_hash does not link to the anchor checkpoint at seq {}",
                                    first - 1
                                )
                            },
                        ));
                    }
                }
                Some((prev_seq, prev_hash)) => {
                    if seq != prev_seq + 1 {
                        return Err(at(
                            Some(seq),
                            format!(
                                "expected seq {} after {prev_seq}: a record was removed, inserted or moved",
                                prev_seq + 1
                            ),
                        ));
                    }
                    if &record.prev_hash != prev_hash {
                        return Err(at(
                            Some(seq),
                            format!("prev_hash does not link to the hash of seq {prev_seq}"),
                        ));
                    }
                }
            }
            for read in checkpoints.get(&seq).into_iter().flatten() {
                if read.checkpoint.hash != claimed {
                    return Err(read.at(format!(
                        "checkpoint hash differs from the ledger's record at {}:{}: the chain was rewritten",
                        file.display(),
                        i + 1
                    )));
                }
                summary.checkpoints += 1;
                summary.last_checkpoint = Some(seq);
            }
            if signed_up_to.is_none_or(|signed| seq > signed) {
                summary.unsigned_tail += 1;
                if first_unsigned.is_none() {
                    first_unsigned = Some(at(Some(seq), String::new()));
                }
            }
            summary.records += 1;
            summary.range = Some(match summary.range {
                None => (seq, seq),
                Some((first, _)) => (first, seq),
            });
            if summary.records.is_multiple_of(100_000) {
                progress(summary.records);
            }
            previous = Some((seq, claimed.to_owned()));
        }
    }
    let end = previous.as_ref().map_or(0, |(s, _)| *s);
    if options.to_seq.is_none()
        && let Some(read) = checkpoints
            .range(end + 1..)
            .next()
            .and_then(|(_, r)| r.first())
    {
        let beyond = read.checkpoint.seq;
        return Err(read.at(format!(
            "a signed checkpoint covers seq {beyond} but the ledger ends at seq {end}{}: records were removed from the tail",
            last_file
                .map(|f| format!(" ({})", f.display()))
                .unwrap_or_default()
        )));
    }
    if let Some(first) = first_unsigned
        && !options.allow_unsigned_tail
    {
        let covered = match signed_up_to {
            Some(signed) => format!("after the last signed checkpoint (seq {signed})"),
            None => String::from("and no signature was checked (no public key)"),
        };
        return Err(Break {
            what: format!(
                "{} record(s) from here on are not covered by a verified signature, {covered}: anyone who can write the ledger could have appended them (--allow-unsigned-tail accepts them)",
                summary.unsigned_tail
            ),
            ..first
        });
    }
    Ok(summary)
}
