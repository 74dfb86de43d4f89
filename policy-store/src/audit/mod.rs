//! The decision audit ledger: every decision and every admin change as one hash-chained
//! record, appended by one writer per process, read back by [`query`].
//!
//! # Format
//!
//! JSON lines in files `<prefix>-<first seq, 12 digits>.jsonl`, rotated by size; the chain
//! runs across files. Each line is one [`Record`] whose last member is `hash`:
//!
//! ```text
//! {"seq":1,"ts":"2026-01-06T10:00:00.123Z",...,"prev_hash":"000…000","hash":"9f2c…"}
//! ```
//!
//! **Canonical encoding** (stable; what the hash covers): the record serialised as compact
//! JSON *without* its `hash` member — members in the order of [`Record`]'s fields, absent
//! optional members left out, no whitespace, UTF-8. The line is that text with
//! `,"hash":"<64 lower-case hex>"` inserted before the closing `}`. So
//! `hash = hex(SHA-256(canonical))`, and because `prev_hash` is inside the canonical text,
//! each hash covers the whole chain before it. The first record's `prev_hash` is 64 zeros.
//!
//! A plain chain cannot show a truncated tail or a chain rebuilt from scratch, so the writer
//! also signs **checkpoints** (`seq`, head `hash`, time) with an Ed25519 key into a separate
//! file; see [`checkpoint`]. [`verify`] checks both.

pub mod checkpoint;
pub mod ocsf;
pub mod query;
pub mod redis_sink;
pub mod sqs_sink;
pub mod tail;
pub mod verify;
pub mod writer;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A request decided on the data plane (or by the decision endpoint).
    #[default]
    Decision,
    /// A change made through the admin API.
    AdminChange,
}

/// What a record says happened, before the writer gives it a place in the chain. (Unknown
/// members are not refused when reading: the hash covers the exact text, so an added member
/// fails verification anyway.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Entry {
    /// When it happened (RFC 3339, UTC, milliseconds).
    pub ts: String,
    /// Decision or admin change.
    pub kind: RecordKind,
    /// The decision id (also in the response and the upstream's headers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_id: Option<String>,
    /// `User::"alice"`, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The Cedar action, or the admin operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// `Document::"d1"`, or the changed object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// `allow`, `deny`, `shadow_deny` (denied, forwarded in shadow mode) or `refused`
    /// (no decision was reached: bad credentials, bad target, no route).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    /// Short reason code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Determining policy ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    /// Evaluation errors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// The route name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Request context, redacted by band (see [`redact`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub context: BTreeMap<String, String>,
    /// Time to decide, microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
    /// W3C trace id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Who made an admin change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// An admin change's object as it was (absent when it was created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<serde_json::Value>,
    /// An admin change's object as written (absent when it was deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<serde_json::Value>,
}

/// One record of the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// The process that wrote it.
    pub instance: String,
    /// The entry.
    #[serde(flatten)]
    pub entry: Entry,
    /// The previous record's hash.
    pub prev_hash: String,
}

/// Hex of SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(hex_digit(b >> 4));
        out.push(hex_digit(b & 0x0f));
    }
    out
}

fn hex_digit(n: u8) -> char {
    char::from_digit(u32::from(n), 16).unwrap_or('0')
}

/// The canonical text of a record and the line to write: `(hash, line)`.
pub fn seal(record: &Record) -> Result<(String, String), serde_json::Error> {
    let mut line = Vec::with_capacity(512);
    let hash = seal_into(
        &mut line,
        record.seq,
        &record.instance,
        &record.entry,
        &record.prev_hash,
    )?;
    line.pop(); // the newline
    // Serialised JSON with ASCII additions: always UTF-8.
    let line = String::from_utf8(line).unwrap_or_default();
    Ok((hash, line))
}

/// A [`Record`] borrowed, for sealing without copying its parts: the same members in the
/// same order, so the same canonical text.
#[derive(Serialize)]
struct RecordRef<'a> {
    seq: u64,
    instance: &'a str,
    #[serde(flatten)]
    entry: &'a Entry,
    prev_hash: &'a str,
}

/// Appends the line of the record `seq` (its canonical text with the hash member, then a
/// newline) to `out` and returns its hash; on an error `out` is left as it was.
pub fn seal_into(
    out: &mut Vec<u8>,
    seq: u64,
    instance: &str,
    entry: &Entry,
    prev_hash: &str,
) -> Result<String, serde_json::Error> {
    let start = out.len();
    let record = RecordRef {
        seq,
        instance,
        entry,
        prev_hash,
    };
    if let Err(e) = serde_json::to_writer(&mut *out, &record) {
        out.truncate(start);
        return Err(e);
    }
    let hash = sha256_hex(out.get(start..).unwrap_or_default());
    out.pop(); // the closing brace, put back after the hash
    out.extend_from_slice(b",\"hash\":\"");
    out.extend_from_slice(hash.as_bytes());
    out.extend_from_slice(b"\"}\n");
    Ok(hash)
}

/// Splits a line into its canonical text and the hash it claims: `None` if the line does
/// not end with a `hash` member.
pub fn unseal(line: &str) -> Option<(String, &str)> {
    let body = line.strip_suffix("\"}")?;
    let (canonical_head, hash) = body.rsplit_once(",\"hash\":\"")?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((format!("{canonical_head}}}"), hash))
}

/// Which record fields redaction touches on AMBER and RED routes (seed 000's `REDACT_PII`
/// obligation): `hash` fields are replaced by a salted hash prefix, so records stay linkable
/// without holding the value; `drop` fields are left out. Field names are context keys
/// (`ip`, `device_id`, `email`, `name`, `mfa`, `risk_score`, `hour`, `weekday`) or
/// `principal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactionMasks {
    /// Replaced by `sha256:<16 hex>`.
    pub hash: Vec<String>,
    /// Left out of the record.
    pub drop: Vec<String>,
}

impl Default for RedactionMasks {
    fn default() -> Self {
        Self {
            hash: ["ip", "device_id", "email", "name"]
                .map(String::from)
                .to_vec(),
            drop: Vec::new(),
        }
    }
}

/// The fields [`RedactionMasks`] may name.
pub const MASKABLE: [&str; 9] = [
    "principal",
    "ip",
    "device_id",
    "email",
    "name",
    "mfa",
    "risk_score",
    "hour",
    "weekday",
];

/// The keyed hash redaction puts in place of `value`.
pub fn redacted(value: &str, salt: &str) -> String {
    let digest = sha256_hex(format!("{salt}\n{value}").as_bytes());
    format!("sha256:{}", digest.get(..16).unwrap_or_default())
}

/// Redacts request context for a security band: nothing on GREEN; on AMBER and RED, the
/// masks' fields are hashed or dropped (the principal is the caller's to mask, with
/// [`redacted`]).
pub fn redact(
    context: &mut BTreeMap<String, String>,
    band: &str,
    salt: &str,
    masks: &RedactionMasks,
) {
    if band == "GREEN" {
        return;
    }
    for key in &masks.drop {
        context.remove(key);
    }
    for key in &masks.hash {
        if let Some(value) = context.get_mut(key) {
            *value = redacted(value, salt);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_borrowed_encoding_is_the_records_own() {
        let mut r = record();
        r.entry
            .context
            .insert(String::from("band"), String::from("AMBER"));
        r.entry.latency_us = Some(12);
        let canonical = serde_json::to_string(&r).unwrap();
        let (hash, line) = seal(&r).unwrap();
        assert_eq!(hash, sha256_hex(canonical.as_bytes()));
        assert_eq!(unseal(&line).unwrap(), (canonical, hash.as_str()));
    }

    fn record() -> Record {
        Record {
            seq: 1,
            instance: String::from("i1"),
            entry: Entry {
                ts: String::from("2026-01-06T10:00:00.000Z"),
                kind: RecordKind::Decision,
                decision: Some(String::from("allow")),
                policies: vec![String::from("role:member")],
                ..Entry::default()
            },
            prev_hash: String::from(GENESIS),
        }
    }

    #[test]
    fn seal_and_unseal_agree_and_the_hash_covers_every_member() {
        let (hash, line) = seal(&record()).unwrap();
        assert!(line.ends_with(&format!(",\"hash\":\"{hash}\"}}")));
        let (canonical, claimed) = unseal(&line).unwrap();
        assert_eq!(claimed, hash);
        assert_eq!(sha256_hex(canonical.as_bytes()), hash);
        let parsed: Record = serde_json::from_str(&canonical).unwrap();
        assert_eq!(parsed, record());
        let mut other = record();
        other.entry.decision = Some(String::from("deny"));
        assert_ne!(seal(&other).unwrap().0, hash);
    }

    #[test]
    fn redaction_hashes_pii_outside_green() {
        let mut ctx = BTreeMap::from([
            (String::from("ip"), String::from("10.0.0.1")),
            (String::from("hour"), String::from("10")),
        ]);
        let masks = RedactionMasks::default();
        redact(&mut ctx, "GREEN", "s", &masks);
        assert_eq!(ctx["ip"], "10.0.0.1");
        redact(&mut ctx, "AMBER", "s", &masks);
        assert!(ctx["ip"].starts_with("sha256:") && ctx["ip"].len() == 23);
        assert_eq!(ctx["ip"], redacted("10.0.0.1", "s"), "linkable");
        assert_ne!(ctx["ip"], redacted("10.0.0.1", "another salt"));
        assert_eq!(ctx["hour"], "10");
    }

    #[test]
    fn configured_masks_hash_and_drop_on_amber_and_red() {
        let context = BTreeMap::from([
            (String::from("ip"), String::from("10.0.0.1")),
            (String::from("device_id"), String::from("laptop-1")),
            (String::from("hour"), String::from("10")),
        ]);
        let masks = RedactionMasks {
            hash: vec![String::from("hour")],
            drop: vec![String::from("ip"), String::from("device_id")],
        };
        let mut red = context.clone();
        redact(&mut red, "RED", "s", &masks);
        assert_eq!(red.len(), 1, "{red:?}");
        assert_eq!(red["hour"], redacted("10", "s"));
        let mut green = context.clone();
        redact(&mut green, "GREEN", "s", &masks);
        assert_eq!(green, context);
    }
}
