//! The canonical encoding of a record (what its hash covers, see the [module
//! docs](super)) and the sealed line written to the ledger.
//!
//! The writer encodes every record on the request path's runtime, so the encoding is written
//! by hand rather than derived: the same text serde gives [`Record`] (its members in field
//! order, absent ones left out, serde_json's string escaping), without copying the record's
//! parts or escaping strings that need none. A test holds the two to the same bytes.

use sha2::{Digest, Sha256};

use super::{Entry, Record, RecordKind};

/// Hex of SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digit = |nibble: u8| {
        DIGITS
            .get(usize::from(nibble & 0x0f))
            .copied()
            .unwrap_or(b'0')
    };
    let out: Vec<u8> = bytes
        .iter()
        .flat_map(|&b| [digit(b >> 4), digit(b)])
        .collect();
    // Only ASCII digits.
    String::from_utf8(out).unwrap_or_default()
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
    entry: &Entry,
    prev_hash: &str,
) -> Result<String, serde_json::Error> {
    let start = out.len();
    if let Err(e) = encode(out, seq, instance, entry, prev_hash) {
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

/// The canonical text of a record, in [`Record`]'s member order with the entry's members
/// in [`Entry`]'s.
fn encode(
    out: &mut Vec<u8>,
    seq: u64,
    instance: &str,
    entry: &Entry,
    prev_hash: &str,
) -> Result<(), serde_json::Error> {
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
        route,
        context,
        latency_us,
        trace_id,
        actor,
        before,
        after,
    } = entry;
    out.extend_from_slice(b"{\"seq\":");
    serde_json::to_writer(&mut *out, &seq)?;
    key(out, "instance");
    string(out, instance)?;
    key(out, "ts");
    string(out, ts)?;
    key(out, "kind");
    string(
        out,
        match kind {
            RecordKind::Decision => "decision",
            RecordKind::AdminChange => "admin_change",
        },
    )?;
    optional(out, "decision_id", decision_id.as_deref())?;
    optional(out, "principal", principal.as_deref())?;
    optional(out, "action", action.as_deref())?;
    optional(out, "resource", resource.as_deref())?;
    optional(out, "decision", decision.as_deref())?;
    optional(out, "reason", reason.as_deref())?;
    for (name, list) in [("policies", policies), ("errors", errors)] {
        if !list.is_empty() {
            key(out, name);
            let mut separator = b'[';
            for item in list {
                out.push(separator);
                string(out, item)?;
                separator = b',';
            }
            out.push(b']');
        }
    }
    optional(out, "route", route.as_deref())?;
    if !context.is_empty() {
        key(out, "context");
        let mut separator = b'{';
        for (k, v) in context {
            out.push(separator);
            string(out, k)?;
            out.push(b':');
            string(out, v)?;
            separator = b',';
        }
        out.push(b'}');
    }
    if let Some(latency) = latency_us {
        key(out, "latency_us");
        serde_json::to_writer(&mut *out, latency)?;
    }
    optional(out, "trace_id", trace_id.as_deref())?;
    optional(out, "actor", actor.as_deref())?;
    for (name, value) in [("before", before), ("after", after)] {
        if let Some(value) = value {
            key(out, name);
            serde_json::to_writer(&mut *out, value)?;
        }
    }
    key(out, "prev_hash");
    string(out, prev_hash)?;
    out.push(b'}');
    Ok(())
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
    let special = |b: u8| (b < 0x20) | (b == b'"') | (b == b'\\');
    // Whole 16-byte chunks without an early exit, so the compiler checks each in a few
    // vector instructions.
    let mut chunks = bytes.chunks_exact(16);
    for chunk in &mut chunks {
        if chunk.iter().fold(false, |found, &b| found | special(b)) {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| special(b))
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
        let hash = seal_into(&mut out, 1, "i", &Entry::default(), "h").unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("before\n{\"seq\":1,"), "{text}");
        assert!(
            text.ends_with(&format!(",\"hash\":\"{hash}\"}}\n")),
            "{text}"
        );
    }
}
