//! Reading a ledger back, for `GET /v1/audit`: records in chain order (oldest first),
//! filtered, a page at a time. The page token is the last `seq` a page covered, so a reader
//! resumes exactly where it stopped while the writer keeps appending.
//!
//! A query starts in the file holding `after_seq + 1` (file names carry their first seq)
//! and reads at most `scan_limit` records, so a filter matching little cannot make one call
//! read the whole ledger: such a page is short and still says where to go on. A torn last
//! line (the writer is mid-append) is left for the next call.

use std::io::{BufRead, BufReader};
use std::path::Path;

use jiff::Timestamp;
use serde_json::Value;

use super::{LedgerError, Record, RecordKind, unseal};

/// What to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only decisions or only admin changes.
    pub kind: Option<RecordKind>,
    /// `User::"alice"`.
    pub principal: Option<String>,
    /// The Cedar action, or the admin operation (`principal.put`).
    pub action: Option<String>,
    /// `allow`, `deny`, `shadow_deny`, `refused`.
    pub decision: Option<String>,
    /// Who made an admin change.
    pub actor: Option<String>,
    /// Records at or after this instant.
    pub since: Option<Timestamp>,
    /// Records before this instant.
    pub until: Option<Timestamp>,
    /// Records after this seq (the page token).
    pub after_seq: u64,
    /// Records to return at most.
    pub limit: usize,
    /// Records to read at most.
    pub scan_limit: usize,
}

/// One page.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditPage {
    /// The matching records, as written (with `hash`), oldest first.
    pub records: Vec<Value>,
    /// Where the next page starts; `None` at the end of the ledger.
    pub next_after_seq: Option<u64>,
}

impl AuditQuery {
    fn matches(&self, record: &Record) -> bool {
        let entry = &record.entry;
        let same = |wanted: &Option<String>, have: &Option<String>| {
            wanted.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        let ts = || entry.ts.parse::<Timestamp>().ok();
        self.kind.is_none_or(|k| k == entry.kind)
            && same(&self.principal, &entry.principal)
            && same(&self.action, &entry.action)
            && same(&self.decision, &entry.decision)
            && same(&self.actor, &entry.actor)
            && self
                .since
                .is_none_or(|since| ts().is_some_and(|t| t >= since))
            && self
                .until
                .is_none_or(|until| ts().is_some_and(|t| t < until))
    }
}

/// The first seq of a ledger file, from its name (`audit-000000000042.jsonl` → 42).
fn first_seq(file: &Path) -> Option<u64> {
    let stem = file.file_stem()?.to_str()?;
    stem.rsplit_once('-')?.1.parse().ok()
}

/// Reads a page of the ledger `<dir>/<prefix>-*.jsonl`.
pub fn query(dir: &Path, prefix: &str, query: &AuditQuery) -> Result<AuditPage, LedgerError> {
    let files = super::tail::ledger_files(dir, prefix)?;
    let wanted = query.after_seq.saturating_add(1);
    // The last file starting at or before the wanted seq holds it (or nothing does).
    let start = files
        .iter()
        .rposition(|f| first_seq(f).is_some_and(|first| first <= wanted))
        .unwrap_or(0);
    let mut records = Vec::new();
    let mut scanned = 0_usize;
    for file in files.get(start..).unwrap_or_default() {
        let reader =
            BufReader::new(std::fs::File::open(file).map_err(LedgerError::io(file, "open"))?);
        for line in reader.lines() {
            let line = line.map_err(LedgerError::io(file, "read"))?;
            // A line that does not parse is torn (being written) or damaged; `audit verify`
            // is the tool for the latter.
            let Some((canonical, _)) = unseal(&line) else {
                continue;
            };
            let Ok(record) = serde_json::from_str::<Record>(&canonical) else {
                continue;
            };
            if record.seq <= query.after_seq {
                continue;
            }
            scanned += 1;
            if query.matches(&record) {
                let value = serde_json::from_str(&line).map_err(|e| LedgerError::Damaged {
                    path: file.clone(),
                    what: e.to_string(),
                })?;
                records.push(value);
            }
            if records.len() >= query.limit || scanned >= query.scan_limit {
                return Ok(AuditPage {
                    records,
                    next_after_seq: Some(record.seq),
                });
            }
        }
    }
    Ok(AuditPage {
        records,
        next_after_seq: None,
    })
}
