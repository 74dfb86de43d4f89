//! Tailing the ledger files, for the sinks that forward them: the files are the spool, and a
//! sink keeps a [`Cursor`] that moves past a record only once its destination has it.

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

/// What a sink sends for each record (`format: ledger | ocsf` in configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkFormat {
    /// The sealed ledger line, as written (verifiable).
    #[default]
    Ledger,
    /// An OCSF API Activity event ([`super::ocsf`]) carrying the record's seq and hash.
    Ocsf,
}

impl SinkFormat {
    /// What to send for `line`; an OCSF event that cannot be made falls back to the line.
    pub fn body(self, line: &str) -> String {
        match self {
            Self::Ledger => line.to_owned(),
            Self::Ocsf => super::ocsf::from_line(line)
                .map_or_else(|| line.to_owned(), |event| event.to_string()),
        }
    }
}

/// Counters of a sink.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Records forwarded.
    pub forwarded: AtomicU64,
    /// Failed attempts (connection or command).
    pub errors: AtomicU64,
    /// The last `seq` the destination is known to hold.
    pub last_seq: AtomicU64,
}

/// The `seq` of a sealed line, read from its start (`{"seq":N,`).
pub fn seq_of(line: &str) -> Option<u64> {
    let rest = line.strip_prefix("{\"seq\":")?;
    let end = rest.find(',')?;
    rest.get(..end)?.parse().ok()
}

/// The ledger files of `prefix` in `dir` (`<prefix>-<first seq, 12 digits>.jsonl`), in
/// chain order.
pub fn ledger_files(dir: &Path, prefix: &str) -> Result<Vec<PathBuf>, crate::LedgerError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(crate::LedgerError::io(dir, "list"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{prefix}-")) && n.ends_with(".jsonl"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// A position in the ledger files.
#[derive(Debug, Clone)]
pub struct Cursor {
    file: usize,
    offset: u64,
}

/// Complete lines after `cursor` (at most `limit`), with the cursor after each.
pub fn read_after(files: &[PathBuf], cursor: &Cursor, limit: usize) -> Vec<(String, Cursor)> {
    let mut out = Vec::new();
    let mut at = cursor.clone();
    while out.len() < limit {
        let Some(path) = files.get(at.file) else {
            break;
        };
        let Ok(mut file) = std::fs::File::open(path) else {
            break;
        };
        if file.seek(SeekFrom::Start(at.offset)).is_err() {
            break;
        }
        let mut reader = BufReader::new(file);
        let mut line = String::new();
        let mut progressed = false;
        while out.len() < limit {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(n) if n > 0 && line.ends_with('\n') => {
                    at.offset += n as u64;
                    progressed = true;
                    out.push((line.trim_end().to_owned(), at.clone()));
                }
                _ => break,
            }
        }
        // At the end of a file that has a successor, go on with the successor.
        if !progressed || out.len() < limit {
            if at.file + 1 < files.len() {
                at = Cursor {
                    file: at.file + 1,
                    offset: 0,
                };
                continue;
            }
            break;
        }
    }
    out
}

/// The position just after the record `seq` (the start when `seq` is 0 or not found).
pub fn position_after(files: &[PathBuf], seq: u64) -> Cursor {
    let start = Cursor { file: 0, offset: 0 };
    if seq == 0 {
        return start;
    }
    let mut cursor = start.clone();
    loop {
        let batch = read_after(files, &cursor, 4096);
        let Some((_, last)) = batch.last().cloned() else {
            return start;
        };
        for (line, after) in batch {
            if seq_of(&line) == Some(seq) {
                return after;
            }
        }
        cursor = last;
    }
}

#[cfg(test)]
mod tests {
    use super::seq_of;

    #[test]
    fn seq_is_read_from_the_line_start() {
        assert_eq!(seq_of(r#"{"seq":42,"instance":"i"}"#), Some(42));
        assert_eq!(seq_of(r#"{"instance":"i","seq":42}"#), None);
    }
}
