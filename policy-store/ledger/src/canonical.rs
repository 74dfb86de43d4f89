//! The canonical encoding of a record (what its hash covers, see the [module
//! docs](super)) and the sealed line written to the ledger.
//!
//! An entry is encoded once, where it is made ([`EntryRef::encode`], [`Entry::encode`]),
//! into the part of the record's text between its `instance` and `prev_hash` members; the
//! writer only puts the chain's members around it and hashes. Written by hand rather than
//! derived, since every decision takes one: the same text serde gives [`Record`] (its
//! members in field order, absent ones left out, serde_json's string escaping), from
//! borrowed parts, without escaping strings that need none. A test holds the two to the
//! same bytes.

use std::borrow::Cow;

use super::{Entry, Record, RecordKind};
use crate::hex::sha256_hex;

/// An entry in its canonical encoding, ready for the writer to number and chain: the
/// members from `ts` to the last one present, each with its leading comma
/// (`,"ts":"…",…,"trace_id":"…"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEntry(Vec<u8>);

/// An [`Entry`] borrowed from wherever its parts live (the request path builds one without
/// copying them). `context` is in ascending key order without repeats, as a map encodes.
#[derive(Debug, Clone, Copy, Default)]
pub struct EntryRef<'a> {
    /// See [`Entry::ts`].
    pub ts: &'a str,
    /// See [`Entry::kind`].
    pub kind: RecordKind,
    /// See [`Entry::decision_id`].
    pub decision_id: Option<&'a str>,
    /// See [`Entry::principal`].
    pub principal: Option<&'a str>,
    /// See [`Entry::action`].
    pub action: Option<&'a str>,
    /// See [`Entry::resource`].
    pub resource: Option<&'a str>,
    /// See [`Entry::decision`].
    pub decision: Option<&'a str>,
    /// See [`Entry::reason`].
    pub reason: Option<&'a str>,
    /// See [`Entry::policies`].
    pub policies: &'a [String],
    /// See [`Entry::errors`].
    pub errors: &'a [String],
    /// See [`Entry::claimed_roles`].
    pub claimed_roles: &'a [String],
    /// See [`Entry::route`].
    pub route: Option<&'a str>,
    /// See [`Entry::context`]; keys ascending.
    pub context: &'a [(&'a str, Cow<'a, str>)],
    /// See [`Entry::latency_us`].
    pub latency_us: Option<u64>,
    /// See [`Entry::trace_id`].
    pub trace_id: Option<&'a str>,
    /// See [`Entry::actor`].
    pub actor: Option<&'a str>,
    /// See [`Entry::before`].
    pub before: Option<&'a serde_json::Value>,
    /// See [`Entry::after`].
    pub after: Option<&'a serde_json::Value>,
}

/// Why an entry has no canonical encoding.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// Context keys out of order or repeated: a map has no such encoding.
    #[error("audit context keys must be unique and ascending: `{0}` follows `{1}`")]
    ContextOrder(String, String),
    /// `before` or `after` did not serialise.
    #[error("audit entry does not serialise: {0}")]
    Json(#[from] serde_json::Error),
}

impl Entry {
    /// The canonical encoding of this entry.
    pub fn encode(&self) -> Result<EncodedEntry, EncodeError> {
        // Every member, named: a member added to `Entry` does not compile until it is encoded.
        let Entry {
            ts,
            kind,
            decision_id,
            principal,
            action,
            resource,
            decision,
            reason,
            policies,
            errors,
            claimed_roles,
            route,
            context,
            latency_us,
            trace_id,
            actor,
            before,
            after,
        } = self;
        let context: Vec<(&str, Cow<'_, str>)> = context
            .iter()
            .map(|(k, v)| (k.as_str(), Cow::Borrowed(v.as_str())))
            .collect();
        EntryRef {
            ts,
            kind: *kind,
            decision_id: decision_id.as_deref(),
            principal: principal.as_deref(),
            action: action.as_deref(),
            resource: resource.as_deref(),
            decision: decision.as_deref(),
            reason: reason.as_deref(),
            policies,
            errors,
            claimed_roles,
            route: route.as_deref(),
            context: &context,
            latency_us: *latency_us,
            trace_id: trace_id.as_deref(),
            actor: actor.as_deref(),
            before: before.as_ref(),
            after: after.as_ref(),
        }
        .encode()
    }
}

impl EntryRef<'_> {
    /// The canonical encoding of this entry, in [`Entry`]'s member order.
    pub fn encode(&self) -> Result<EncodedEntry, EncodeError> {
        for pair in self.context.windows(2) {
            if let [(before, _), (after, _)] = pair
                && before >= after
            {
                return Err(EncodeError::ContextOrder(
                    (*after).to_owned(),
                    (*before).to_owned(),
                ));
            }
        }
        let mut out = Vec::with_capacity(512);
        key(&mut out, "ts");
        string(&mut out, self.ts)?;
        key(&mut out, "kind");
        string(
            &mut out,
            match self.kind {
                RecordKind::Decision => "decision",
                RecordKind::AdminChange => "admin_change",
                RecordKind::External => "external",
            },
        )?;
        optional(&mut out, "decision_id", self.decision_id)?;
        optional(&mut out, "principal", self.principal)?;
        optional(&mut out, "action", self.action)?;
        optional(&mut out, "resource", self.resource)?;
        optional(&mut out, "decision", self.decision)?;
        optional(&mut out, "reason", self.reason)?;
        for (name, list) in [
            ("policies", self.policies),
            ("errors", self.errors),
            ("claimed_roles", self.claimed_roles),
        ] {
            if !list.is_empty() {
                key(&mut out, name);
                let mut separator = b'[';
                for item in list {
                    out.push(separator);
                    string(&mut out, item)?;
                    separator = b',';
                }
                out.push(b']');
            }
        }
        optional(&mut out, "route", self.route)?;
        if !self.context.is_empty() {
            key(&mut out, "context");
            let mut separator = b'{';
            for (k, v) in self.context {
                out.push(separator);
                string(&mut out, k)?;
                out.push(b':');
                string(&mut out, v)?;
                separator = b',';
            }
            out.push(b'}');
        }
        if let Some(latency) = self.latency_us {
            key(&mut out, "latency_us");
            out.extend_from_slice(itoa::Buffer::new().format(latency).as_bytes());
        }
        optional(&mut out, "trace_id", self.trace_id)?;
        optional(&mut out, "actor", self.actor)?;
        for (name, value) in [("before", self.before), ("after", self.after)] {
            if let Some(value) = value {
                key(&mut out, name);
                serde_json::to_writer(&mut out, value)?;
            }
        }
        Ok(EncodedEntry(out))
    }
}

/// The canonical text of a record and the line to write: `(hash, line)`.
pub fn seal(record: &Record) -> Result<(String, String), EncodeError> {
    let mut line = Vec::with_capacity(512);
    let hash = seal_into(
        &mut line,
        record.seq,
        &record.instance,
        &record.entry.encode()?,
        &record.prev_hash,
    )?;
    line.pop(); // the newline
    // JSON text with ASCII additions: always UTF-8.
    let line = String::from_utf8(line).unwrap_or_default();
    Ok((hash, line))
}

/// Appends the line of the record `seq` (its canonical text with the hash member, then a
/// newline) to `out` and returns its hash; on an error `out` is left as it was.
pub fn seal_into(
    out: &mut Vec<u8>,
    seq: u64,
    instance: &str,
    entry: &EncodedEntry,
    prev_hash: &str,
) -> Result<String, EncodeError> {
    let start = out.len();
    let mut encode = || -> Result<(), serde_json::Error> {
        out.extend_from_slice(b"{\"seq\":");
        out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
        key(out, "instance");
        string(out, instance)?;
        out.extend_from_slice(&entry.0);
        key(out, "prev_hash");
        string(out, prev_hash)
    };
    if let Err(e) = encode() {
        out.truncate(start);
        return Err(e.into());
    }
    out.push(b'}');
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

/// `,"name":` — member names are plain ASCII.
fn key(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

fn optional(out: &mut Vec<u8>, name: &str, value: Option<&str>) -> Result<(), serde_json::Error> {
    match value {
        Some(value) => {
            key(out, name);
            string(out, value)
        }
        None => Ok(()),
    }
}

/// A JSON string as serde_json writes it. Most need no escaping (ids, hashes, names): those
/// are copied whole; the rest go through serde_json.
fn string(out: &mut Vec<u8>, value: &str) -> Result<(), serde_json::Error> {
    if needs_escaping(value.as_bytes()) {
        return serde_json::to_writer(&mut *out, value);
    }
    out.push(b'"');
    out.extend_from_slice(value.as_bytes());
    out.push(b'"');
    Ok(())
}

/// Whether a string holds a byte JSON escapes: a control character, `"` or `\`.
fn needs_escaping(bytes: &[u8]) -> bool {
    // Checked 16 bytes at a time without an early exit, so the compiler checks each chunk
    // in a few vector instructions; the remainder (most strings here are short) is copied
    // into a chunk of harmless bytes rather than looked at one byte at a time.
    let special_in = |chunk: &[u8; 16]| {
        chunk.iter().fold(false, |found, &b| {
            found | (b < 0x20) | (b == b'"') | (b == b'\\')
        })
    };
    let mut chunks = bytes.chunks_exact(16);
    for chunk in &mut chunks {
        if <&[u8; 16]>::try_from(chunk).is_ok_and(special_in) {
            return true;
        }
    }
    let rest = chunks.remainder();
    let mut last = [b'a'; 16];
    if let Some(head) = last.get_mut(..rest.len()) {
        head.copy_from_slice(rest);
    }
    special_in(&last)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn serde_line(record: &Record) -> String {
        let canonical = serde_json::to_string(record).unwrap();
        let hash = sha256_hex(canonical.as_bytes());
        format!(
            "{},\"hash\":\"{hash}\"}}",
            canonical.strip_suffix('}').unwrap()
        )
    }

    #[test]
    fn the_hand_encoding_is_serdes() {
        let controls: String = (0u8..0x20).map(char::from).collect();
        let awkward = format!("al\"i\\ce\n\t\u{1}\u{7f} é ✓ </script>{controls}\"\"");
        let awkward = awkward.as_str();
        let full = Entry {
            ts: String::from("2026-01-06T10:00:00.000Z"),
            kind: RecordKind::AdminChange,
            decision_id: Some(String::from("d-1")),
            principal: Some(format!("User::\"{awkward}\"")),
            action: Some(String::from("document.read")),
            resource: Some(String::from("Document::\"d1\"")),
            decision: Some(String::from("deny")),
            reason: Some(String::from("denied")),
            policies: vec![String::from("role:member"), String::from(awkward)],
            errors: vec![String::from(awkward)],
            claimed_roles: vec![String::from("editor"), String::from(awkward)],
            route: Some(String::from("get_document")),
            context: BTreeMap::from([
                (String::from("band"), String::from("AMBER")),
                (String::from(awkward), String::from(awkward)),
            ]),
            latency_us: Some(u64::MAX),
            trace_id: Some(String::from("4bf92f3577b34da6a3ce929d0e0e4736")),
            actor: Some(String::from(awkward)),
            before: Some(serde_json::json!({"z": [1, {"a": null}], "a": "\u{0}"})),
            after: Some(serde_json::json!(2.5)),
        };
        let entries = [
            Entry::default(),
            Entry {
                policies: vec![String::new()],
                context: BTreeMap::from([(String::new(), String::new())]),
                ..Entry::default()
            },
            full,
        ];
        for entry in entries {
            let record = Record {
                seq: 42,
                instance: String::from("host-1"),
                entry,
                prev_hash: String::from(super::super::GENESIS),
            };
            let (hash, line) = seal(&record).unwrap();
            assert_eq!(line, serde_line(&record));
            let (canonical, claimed) = unseal(&line).unwrap();
            assert_eq!(
                (sha256_hex(canonical.as_bytes()), claimed),
                (hash.clone(), hash.as_str())
            );
            assert_eq!(serde_json::from_str::<Record>(&canonical).unwrap(), record);
        }
    }

    #[test]
    fn a_special_byte_is_found_wherever_it_is() {
        for len in [0, 1, 15, 16, 17, 40] {
            let plain = vec![b'a'; len];
            assert!(!needs_escaping(&plain));
            for at in 0..len {
                for special in [b'"', b'\\', b'\n', 0x1f] {
                    let mut bytes = plain.clone();
                    bytes[at] = special;
                    assert!(needs_escaping(&bytes), "{special} at {at} of {len}");
                }
            }
        }
        assert!(!needs_escaping("é ✓ \u{7f}".as_bytes()));
        // Every byte value, at every place of a 16-byte chunk and of the remainder.
        for b in 0..=255u8 {
            let special = (b < 0x20) | (b == b'"') | (b == b'\\');
            for at in 0..20 {
                let mut bytes = vec![b'a'; 20];
                bytes[at] = b;
                assert_eq!(needs_escaping(&bytes), special, "{b:#x} at {at}");
            }
        }
    }

    #[test]
    fn a_line_is_appended_after_what_is_there_and_ends_with_a_newline() {
        let mut out = b"before\n".to_vec();
        let hash = seal_into(&mut out, 1, "i", &Entry::default().encode().unwrap(), "h").unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("before\n{\"seq\":1,"), "{text}");
        assert!(
            text.ends_with(&format!(",\"hash\":\"{hash}\"}}\n")),
            "{text}"
        );
    }

    #[test]
    fn a_borrowed_context_must_be_in_map_order() {
        let encode = |context: &[(&str, Cow<'_, str>)]| {
            EntryRef {
                context,
                ..EntryRef::default()
            }
            .encode()
        };
        let ordered = [
            ("band", Cow::Borrowed("GREEN")),
            ("ip", Cow::Borrowed("10.0.0.1")),
        ];
        let map = BTreeMap::from([
            (String::from("ip"), String::from("10.0.0.1")),
            (String::from("band"), String::from("GREEN")),
        ]);
        let from_map = Entry {
            context: map,
            ..Entry::default()
        };
        assert_eq!(encode(&ordered).unwrap(), from_map.encode().unwrap());
        let [band, ip] = ordered;
        let e = encode(&[ip.clone(), band]).unwrap_err();
        assert!(matches!(e, EncodeError::ContextOrder(..)), "{e}");
        assert!(encode(&[ip.clone(), ip]).is_err(), "a repeated key");
    }
}
