//! Verification of a ledger: every line sealed, every hash right, sequence numbers without
//! gaps, each `prev_hash` the hash before it, across rotated files; and the signed
//! checkpoints matching the chain, with none beyond its end. The first break is reported
//! with its file, line and sequence number.

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
    /// Start at this sequence number (its `prev_hash` is taken as given).
    pub from_seq: Option<u64>,
    /// Stop after this sequence number.
    pub to_seq: Option<u64>,
    /// Check checkpoint signatures with this key; with a key, a ledger without checkpoints
    /// fails (its tail cannot be shown complete).
    pub public_key: Option<VerifyingKey>,
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
pub fn ledger_files(paths: &[PathBuf]) -> Result<(Vec<PathBuf>, Vec<PathBuf>), String> {
    let mut records = Vec::new();
    let mut checkpoints = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries = std::fs::read_dir(path)
                .map_err(|e| format!("`{}`: cannot list: {e}", path.display()))?;
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
            return Err(format!("`{}`: no such file or directory", path.display()));
        }
    }
    records.sort();
    records.dedup();
    Ok((records, checkpoints))
}

fn read_checkpoints(
    files: &[PathBuf],
) -> Result<BTreeMap<u64, (Checkpoint, PathBuf, usize)>, Break> {
    let mut all = BTreeMap::new();
    for file in files {
        let reader = BufReader::new(File::open(file).map_err(|e| Break {
            file: file.clone(),
            line: 0,
            seq: None,
            what: format!("cannot open: {e}"),
        })?);
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
            let cp: Checkpoint =
                serde_json::from_str(&line).map_err(|e| at(format!("not a checkpoint: {e}")))?;
            all.insert(cp.seq, (cp, file.clone(), i + 1));
        }
    }
    Ok(all)
}

/// Verifies the ledger in `paths`. `progress` is called with the number of records checked
/// so far, every 100,000 records.
pub fn verify(
    paths: &[PathBuf],
    options: &VerifyOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<Summary, Break> {
    let (files, checkpoint_files) = ledger_files(paths).map_err(|what| Break {
        file: paths.first().cloned().unwrap_or_default(),
        line: 0,
        seq: None,
        what,
    })?;
    let checkpoints = read_checkpoints(&checkpoint_files)?;
    let mut summary = Summary {
        records: 0,
        range: None,
        files: files.len(),
        checkpoints: 0,
        last_checkpoint: None,
        signatures_checked: options.public_key.is_some(),
    };
    if let Some(key) = &options.public_key {
        for (cp, file, line) in checkpoints.values() {
            if !cp.is_signed_by(key) {
                return Err(Break {
                    file: file.clone(),
                    line: *line,
                    seq: Some(cp.seq),
                    what: String::from("checkpoint signature does not verify with the public key"),
                });
            }
        }
        if checkpoints.is_empty() {
            return Err(Break {
                file: paths.first().cloned().unwrap_or_default(),
                line: 0,
                seq: None,
                what: String::from(
                    "no checkpoint found: with a public key given, the tail must be covered by a signed checkpoint",
                ),
            });
        }
    }

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
                    if options.from_seq.is_none() && seq == 1 && record.prev_hash != GENESIS {
                        return Err(at(
                            Some(seq),
                            String::from("the first record does not start from the genesis hash"),
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
            if let Some((cp, cp_file, cp_line)) = checkpoints.get(&seq) {
                if cp.hash != claimed {
                    return Err(Break {
                        file: cp_file.clone(),
                        line: *cp_line,
                        seq: Some(seq),
                        what: format!(
                            "checkpoint hash differs from the ledger's record at {}:{}: the chain was rewritten",
                            file.display(),
                            i + 1
                        ),
                    });
                }
                summary.checkpoints += 1;
                summary.last_checkpoint = Some(seq);
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
        && let Some((&beyond, (_, cp_file, cp_line))) = checkpoints.range(end + 1..).next()
    {
        return Err(Break {
            file: cp_file.clone(),
            line: *cp_line,
            seq: Some(beyond),
            what: format!(
                "a signed checkpoint covers seq {beyond} but the ledger ends at seq {end}{}: records were removed from the tail",
                last_file
                    .map(|f| format!(" ({})", f.display()))
                    .unwrap_or_default()
            ),
        });
    }
    Ok(summary)
}
