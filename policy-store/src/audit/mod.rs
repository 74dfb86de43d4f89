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

pub mod canonical;
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

pub use canonical::{seal, seal_into, sha256_hex, unseal};

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
    let digest = Sha256::new()
        .chain_update(salt)
        .chain_update(b"\n")
        .chain_update(value)
        .finalize();
    let mut out = String::with_capacity(23);
    out.push_str("sha256:");
    out.push_str(&canonical::hex(digest.get(..8).unwrap_or_default()));
    out
}

/// Redacts an entry for a security band: nothing on GREEN; on AMBER and RED, the masks'
/// fields (context keys and the principal) are hashed or dropped.
pub fn redact(entry: &mut Entry, band: &str, salt: &str, masks: &RedactionMasks) {
    if band == "GREEN" {
        return;
    }
    for key in &masks.drop {
        if key == "principal" {
            entry.principal = None;
        } else {
            entry.context.remove(key);
        }
    }
    for key in &masks.hash {
        let value = if key == "principal" {
            entry.principal.as_mut()
        } else {
            entry.context.get_mut(key)
        };
        if let Some(value) = value {
            *value = redacted(value, salt);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hashes_are_the_salted_sha256_prefix() {
        // Records stay linkable across versions: the same value, salt and text.
        let full = sha256_hex(b"s\n10.0.0.1");
        assert_eq!(redacted("10.0.0.1", "s"), format!("sha256:{}", &full[..16]));
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

    fn with_context(context: BTreeMap<String, String>) -> Entry {
        Entry {
            context,
            ..Entry::default()
        }
    }

    #[test]
    fn redaction_hashes_pii_outside_green() {
        let mut entry = with_context(BTreeMap::from([
            (String::from("ip"), String::from("10.0.0.1")),
            (String::from("hour"), String::from("10")),
        ]));
        let masks = RedactionMasks::default();
        redact(&mut entry, "GREEN", "s", &masks);
        let ctx = &entry.context;
        assert_eq!(ctx["ip"], "10.0.0.1");
        redact(&mut entry, "AMBER", "s", &masks);
        let ctx = &entry.context;
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
        let mut entry = with_context(context.clone());
        redact(&mut entry, "RED", "s", &masks);
        let red = entry.context;
        assert_eq!(red.len(), 1, "{red:?}");
        assert_eq!(red["hour"], redacted("10", "s"));
        let mut entry = with_context(context.clone());
        redact(&mut entry, "GREEN", "s", &masks);
        let green = entry.context;
        assert_eq!(green, context);
    }
}
