//! `portcullis-ledger` owns the decision audit ledger: every decision and every admin change
//! as one hash-chained record, appended by one writer per process ([`writer`]), read back
//! by [`query`] and [`tail`], checked by [`verify`]. Also the two helpers its files need and
//! the rest of the workspace shares: [`hex`] and [`private_file`].
//!
//! # Format
//!
//! `SPEC.md` beside this crate specifies it for a verifier written without this code; in
//! short:
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
pub mod error;
pub mod hex;
pub mod ocsf;
pub mod private_file;
pub mod query;
pub mod tail;
pub mod verify;
pub mod writer;

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::error::LedgerError;
pub use crate::hex::sha256_hex;
pub use canonical::{EncodeError, EncodedEntry, EntryRef, seal, seal_into, unseal};

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
    /// An audit event another service published (seed 004's audit producers), appended
    /// as it was received: `actor`, `action`, `resource`, and the event itself in `after`.
    External,
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
    /// Roles the decision found in force only through the token's claims (a principal
    /// taken from its claims).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claimed_roles: Vec<String>,
    /// The route name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Request context, redacted by band (see [`RedactionMasks`]).
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

/// The secret redaction hashes are keyed with, absorbed once: a per-installation salt of
/// 64 characters fills SHA-256's first block, so each redacted value costs one block.
#[derive(Clone)]
pub struct RedactionSalt(Sha256);

impl std::fmt::Debug for RedactionSalt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A secret: never in a log.
        f.write_str("RedactionSalt(..)")
    }
}

impl RedactionSalt {
    /// Keys redaction with `salt`.
    pub fn new(salt: &str) -> Self {
        Self(Sha256::new().chain_update(salt).chain_update(b"\n"))
    }
}

/// The keyed hash redaction puts in place of `value`: `sha256:` and the first 16 hex digits
/// of SHA-256 over the salt, a newline and the value.
pub fn redacted(value: &str, salt: &RedactionSalt) -> String {
    let digest = salt.0.clone().chain_update(value).finalize();
    let mut out = String::with_capacity(23);
    out.push_str("sha256:");
    crate::hex::push_hex(&mut out, digest.get(..8).unwrap_or_default());
    out
}

/// What redaction does with one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redaction {
    /// Recorded as it is.
    Keep,
    /// Replaced by its keyed hash ([`redacted`]).
    Hash,
    /// Left out.
    Drop,
}

/// Whether records of a route in `band` are redacted: AMBER and RED are, GREEN is not
/// (seed 000's `REDACT_PII` obligation).
pub fn band_redacts(band: &str) -> bool {
    band != "GREEN"
}

impl Redaction {
    /// This treatment on a route whose band redacts ([`band_redacts`]), `Keep` on others.
    pub fn when(self, redacting: bool) -> Self {
        if redacting { self } else { Redaction::Keep }
    }

    /// `value` as recorded: itself, its keyed hash, or nothing.
    pub fn apply<'a>(self, value: Cow<'a, str>, salt: &RedactionSalt) -> Option<Cow<'a, str>> {
        match self {
            Redaction::Keep => Some(value),
            Redaction::Hash => Some(Cow::Owned(redacted(&value, salt))),
            Redaction::Drop => None,
        }
    }
}

impl RedactionMasks {
    /// What happens to `field` (a context key or `principal`) on AMBER and RED routes: what
    /// the masks say, dropping before hashing. (GREEN routes keep everything.)
    pub fn outside_green(&self, field: &str) -> Redaction {
        if self.drop.iter().any(|f| f == field) {
            Redaction::Drop
        } else if self.hash.iter().any(|f| f == field) {
            Redaction::Hash
        } else {
            Redaction::Keep
        }
    }
}

/// The current time as records carry it: RFC 3339, UTC, milliseconds (truncated),
/// e.g. `2026-01-06T10:00:00.123Z`. Written by hand: every decision takes one.
pub fn timestamp_now() -> String {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    timestamp(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX))
}

/// [`timestamp_now`] of a time in milliseconds since the Unix epoch (years 0 to 9999).
fn timestamp(unix_ms: i64) -> String {
    let days = unix_ms.div_euclid(86_400_000);
    let ms_of_day = unix_ms.rem_euclid(86_400_000);
    // Days since 1970-01-01 to a civil date (H. Hinnant's `civil_from_days`), on an era of
    // 400 years starting on March 1st.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = (year_of_era + era * 400 + i64::from(month <= 2)).clamp(0, 9999);
    let mut text = [0u8; 24];
    let fields = [
        (0, 4, year),
        (5, 2, month),
        (8, 2, day),
        (11, 2, ms_of_day / 3_600_000),
        (14, 2, ms_of_day / 60_000 % 60),
        (17, 2, ms_of_day / 1000 % 60),
        (20, 3, ms_of_day % 1000),
    ];
    for (at, width, mut value) in fields {
        for digit in text.iter_mut().skip(at).take(width).rev() {
            *digit = b'0' + u8::try_from(value % 10).unwrap_or(0);
            value /= 10;
        }
    }
    for (at, separator) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (23, b'Z'),
    ] {
        if let Some(byte) = text.get_mut(at) {
            *byte = separator;
        }
    }
    // ASCII digits and separators only.
    String::from_utf8(text.to_vec()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_milliseconds_like_jiffs() {
        // Every day from 1900 to 2500 at a different time of day, then years far apart.
        let days = (-25_567..194_000).map(|day: i64| day * 86_400_000 + day * 7919 % 86_400_000);
        let years = (1..10_000).map(|year: i64| (year - 1970) * 31_556_952_000);
        let mut compared = 0;
        for ms in days.chain(years).filter(|&ms| ms >= -62_135_596_800_000) {
            // jiff's range ends a day before 10000-01-01.
            if let Ok(jiff) = jiff::Timestamp::from_millisecond(ms) {
                assert_eq!(timestamp(ms), format!("{jiff:.3}"), "{ms}");
                compared += 1;
            }
        }
        assert!(compared > 229_000, "{compared}");
        for (ms, text) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (1_767_693_600_123, "2026-01-06T10:00:00.123Z"),
            (4_107_542_399_999, "2100-02-28T23:59:59.999Z"),
        ] {
            assert_eq!(timestamp(ms), text);
        }
        let now = timestamp_now();
        assert!(now.parse::<jiff::Timestamp>().is_ok(), "{now}");
    }

    #[test]
    fn redaction_hashes_are_the_salted_sha256_prefix() {
        // Records stay linkable across versions: the same value, salt and text.
        let full = sha256_hex(b"s\n10.0.0.1");
        let s = RedactionSalt::new("s");
        assert_eq!(redacted("10.0.0.1", &s), format!("sha256:{}", &full[..16]));
        let long = "9f".repeat(32);
        let full = sha256_hex(format!("{long}\n10.0.0.1").as_bytes());
        let expected = format!("sha256:{}", &full[..16]);
        assert_eq!(redacted("10.0.0.1", &RedactionSalt::new(&long)), expected);
        assert_eq!(
            redacted("10.0.0.1", &s),
            redacted("10.0.0.1", &s),
            "reusable"
        );
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

    /// A context as the masks leave it on a route of `band`.
    fn redact(
        context: &BTreeMap<&str, &str>,
        band: &str,
        masks: &RedactionMasks,
    ) -> BTreeMap<String, String> {
        context
            .iter()
            .filter_map(|(k, v)| {
                let v = masks
                    .outside_green(k)
                    .when(band_redacts(band))
                    .apply(Cow::Borrowed(*v), &RedactionSalt::new("s"))?;
                Some((k.to_string(), v.into_owned()))
            })
            .collect()
    }

    #[test]
    fn redaction_hashes_pii_outside_green() {
        let context = BTreeMap::from([("ip", "10.0.0.1"), ("hour", "10")]);
        let masks = RedactionMasks::default();
        let green = redact(&context, "GREEN", &masks);
        assert_eq!(green["ip"], "10.0.0.1");
        let amber = redact(&context, "AMBER", &masks);
        assert!(amber["ip"].starts_with("sha256:") && amber["ip"].len() == 23);
        assert_eq!(
            amber["ip"],
            redacted("10.0.0.1", &RedactionSalt::new("s")),
            "linkable"
        );
        assert_ne!(
            amber["ip"],
            redacted("10.0.0.1", &RedactionSalt::new("another salt"))
        );
        assert_eq!(amber["hour"], "10");
        assert_eq!(redact(&context, "RED", &masks), amber);
    }

    #[test]
    fn configured_masks_hash_and_drop_on_amber_and_red() {
        let context = BTreeMap::from([
            ("ip", "10.0.0.1"),
            ("device_id", "laptop-1"),
            ("hour", "10"),
        ]);
        let masks = RedactionMasks {
            hash: vec![String::from("hour"), String::from("ip")],
            drop: vec![String::from("ip"), String::from("device_id")],
        };
        let red = redact(&context, "RED", &masks);
        assert_eq!(red.len(), 1, "dropping wins over hashing: {red:?}");
        assert_eq!(red["hour"], redacted("10", &RedactionSalt::new("s")));
        let green = redact(&context, "GREEN", &masks);
        assert_eq!(green.len(), 3);
        assert_eq!(green["ip"], "10.0.0.1");
        assert_eq!(
            masks.outside_green("principal").when(band_redacts("AMBER")),
            Redaction::Keep
        );
    }
}
