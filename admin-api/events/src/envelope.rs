//! The envelopes of the seed systems, read into one [`Envelope`]:
//!
//! - seed 000 (MemoryOS): `{topic: "USER_CREATED@1.0", payload, trace_context, id?, ts?,
//!   signature?}`; the event id is `id`, else the SHA-256 of the payload's bytes; its time
//!   is `ts`, else the payload's `*_ts`. An optional Ed25519 `signature`
//!   (`{key_id, value}`, base64) covers the SHA-256 of the payload's bytes as sent: with
//!   keys configured, a seed-000 event must carry one that verifies;
//! - seed 001 (user management): `{id, type, timestamp, version, source, tenantId, userId,
//!   data}`;
//! - seed 004 (entity & permissions core): `{event_id, event_type, source, occurred_at,
//!   payload, context, correlation_id}`;
//!
//! each also inside an SNS notification (`{"Type": "Notification", "Message": "<json>"}`),
//! as SNS delivers to SQS. Anything else is refused with every problem named.

use std::collections::HashMap;

use base64::Engine;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use portcullis_model::UnixMillis;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Which seed's envelope an event came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Seed 000: `topic` + `payload`.
    Topic,
    /// Seed 001: `type` + `data`.
    Typed,
    /// Seed 004: `event_type` + `payload`.
    Platform,
}

/// An event, whatever envelope it came in.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The envelope it came in.
    pub format: Format,
    /// The producer's id for it.
    pub id: String,
    /// Its type: a topic without its version (`USER_CREATED`) or a dotted name
    /// (`user.deactivated`).
    pub event_type: String,
    /// The producer, when the envelope names it.
    pub producer: Option<String>,
    /// When it happened (milliseconds since the epoch).
    pub occurred_at: UnixMillis,
    /// The tenant the envelope names (seed 001 `tenantId`).
    pub tenant: Option<String>,
    /// The user the envelope names (seed 001 `userId`: the actor for some types).
    pub user: Option<String>,
    /// What the event says (seed 000 `payload`, 001 `data`, 004 `payload`).
    pub data: Map<String, Value>,
}

/// Why a message is not an event this reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct Refused(pub Vec<String>);

impl Refused {
    fn one(problem: impl Into<String>) -> Self {
        Self(vec![problem.into()])
    }
}

/// The Ed25519 keys seed-000 signatures are checked with, by key id. Empty: signatures are
/// not checked (and not required).
#[derive(Debug, Clone, Default)]
pub struct SignatureKeys(HashMap<String, VerifyingKey>);

impl SignatureKeys {
    /// Keys by id.
    pub fn new(keys: HashMap<String, VerifyingKey>) -> Self {
        Self(keys)
    }

    /// Whether signatures are required.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Reads one message.
pub fn read(body: &[u8], keys: &SignatureKeys) -> Result<Envelope, Refused> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| Refused::one(format!("not JSON: {e}")))?;
    if let Some(message) = sns_message(&value)? {
        let message = message.as_bytes();
        let value: Value =
            serde_json::from_slice(message).map_err(|e| Refused::one(format!("not JSON: {e}")))?;
        return envelope_of(message, &value, keys);
    }
    envelope_of(body, &value, keys)
}

/// The message an SNS notification carries (`{"Type": "Notification", "Message":
/// "<json>"}`: SNS → SQS deliveries wrap it as a string); `None` when `value` is no
/// notification.
pub fn sns_message(value: &Value) -> Result<Option<&str>, Refused> {
    if value.get("Type").and_then(Value::as_str) != Some("Notification") {
        return Ok(None);
    }
    match value.get("Message").and_then(Value::as_str) {
        Some(message) => Ok(Some(message)),
        None => Err(Refused::one(
            "an SNS notification without a `Message` string",
        )),
    }
}

/// The envelope of a message already parsed into `value` (`body` is its bytes, for the
/// seed-000 payload as sent).
fn envelope_of(body: &[u8], value: &Value, keys: &SignatureKeys) -> Result<Envelope, Refused> {
    let Some(object) = value.as_object() else {
        return Err(Refused::one("not a JSON object"));
    };
    if object.contains_key("topic") {
        topic_envelope(body, object, keys)
    } else if object.contains_key("event_type") {
        platform_envelope(object)
    } else if object.contains_key("type") {
        typed_envelope(object)
    } else {
        Err(Refused::one(
            "no envelope this reads: expected `topic` (seed 000), `type` (seed 001) or `event_type` (seed 004)",
        ))
    }
}

/// Collects the problems of one envelope, so all are named at once.
#[derive(Default)]
pub(crate) struct Problems(Vec<String>);

impl Problems {
    pub(crate) fn string(&mut self, object: &Map<String, Value>, key: &str) -> Option<String> {
        match object.get(key) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
            Some(Value::String(_)) => {
                self.0.push(format!("`{key}` is empty"));
                None
            }
            Some(_) => {
                self.0.push(format!("`{key}` is not a string"));
                None
            }
            None => {
                self.0.push(format!("`{key}` is missing"));
                None
            }
        }
    }

    /// An event type: a name of letters, digits, `_`, `.`, `-` and `:` (at most 128), so it
    /// can name an SSE event and a log field as it is.
    fn event_type(&mut self, key: &str, name: Option<&str>) -> Option<String> {
        let name = name?;
        let fits = name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':'));
        if fits {
            Some(name.to_owned())
        } else {
            self.0.push(format!(
                "`{key}`: `{}` is not an event type (letters, digits, `_ . - :`, at most 128)",
                name.escape_debug()
            ));
            None
        }
    }

    pub(crate) fn optional_string(
        &mut self,
        object: &Map<String, Value>,
        key: &str,
    ) -> Option<String> {
        match object.get(key) {
            None | Some(Value::Null) => None,
            Some(_) => self.string(object, key),
        }
    }

    pub(crate) fn time(&mut self, object: &Map<String, Value>, key: &str) -> Option<UnixMillis> {
        let text = self.string(object, key)?;
        match parse_time(&text) {
            Some(t) => Some(t),
            None => {
                self.0
                    .push(format!("`{key}`: `{text}` is not an RFC 3339 time"));
                None
            }
        }
    }

    pub(crate) fn object(
        &mut self,
        object: &Map<String, Value>,
        key: &str,
    ) -> Option<Map<String, Value>> {
        match object.get(key) {
            Some(Value::Object(o)) => Some(o.clone()),
            Some(_) => {
                self.0.push(format!("`{key}` is not an object"));
                None
            }
            None => {
                self.0.push(format!("`{key}` is missing"));
                None
            }
        }
    }

    pub(crate) fn done<T>(self, value: impl FnOnce() -> Option<T>) -> Result<T, Refused> {
        if self.0.is_empty() {
            value().ok_or_else(|| Refused::one("incomplete envelope"))
        } else {
            Err(Refused(self.0))
        }
    }
}

/// An RFC 3339 time (offsets normalised), as milliseconds since the epoch.
pub fn parse_time(text: &str) -> Option<UnixMillis> {
    text.parse::<jiff::Timestamp>()
        .ok()
        .map(jiff::Timestamp::as_millisecond)
}

/// The payload's bytes as sent, for the signature and the derived id.
#[derive(Deserialize)]
struct RawPayload<'a> {
    #[serde(borrow)]
    payload: &'a RawValue,
}

fn topic_envelope(
    body: &[u8],
    object: &Map<String, Value>,
    keys: &SignatureKeys,
) -> Result<Envelope, Refused> {
    let mut p = Problems::default();
    let topic = p.string(object, "topic");
    let event_type = p.event_type(
        "topic",
        topic
            .as_deref()
            .map(|t| t.split_once('@').map_or(t, |(name, _)| name)),
    );
    let data = p.object(object, "payload");
    let id = p.optional_string(object, "id");
    let ts = match object.get("ts") {
        None | Some(Value::Null) => None,
        Some(_) => p.time(object, "ts"),
    };
    let raw = serde_json::from_slice::<RawPayload<'_>>(body).ok();
    let digest = raw.map(|r| Sha256::digest(r.payload.get().as_bytes()));
    if !keys.is_empty() {
        match (object.get("signature"), digest) {
            (None, _) => p.0.push(String::from(
                "`signature` is missing: signature keys are configured",
            )),
            (Some(signature), Some(digest)) => {
                if let Err(e) = verify(signature, &digest, keys) {
                    p.0.push(format!("`signature`: {e}"));
                }
            }
            (Some(_), None) => {}
        }
    }
    let time = ts.or_else(|| {
        data.as_ref().and_then(|d| {
            ["created_ts", "assigned_ts", "changed_ts", "granted_ts"]
                .iter()
                .find_map(|k| d.get(*k).and_then(Value::as_str).and_then(parse_time))
        })
    });
    if time.is_none() && data.is_some() {
        p.0.push(String::from(
            "no time: give `ts`, or the payload's `created_ts` / `assigned_ts` / `changed_ts`",
        ));
    }
    p.done(|| {
        let id =
            id.or_else(|| digest.map(|d| format!("sha256:{}", portcullis_ledger::hex::hex(&d))))?;
        Some(Envelope {
            format: Format::Topic,
            id,
            event_type: event_type?,
            producer: None,
            occurred_at: time?,
            tenant: None,
            user: None,
            data: data?,
        })
    })
}

/// Checks a seed-000 signature `{key_id, value}` over `digest`.
fn verify(signature: &Value, digest: &[u8], keys: &SignatureKeys) -> Result<(), String> {
    let key_id = signature
        .get("key_id")
        .and_then(Value::as_str)
        .ok_or("no `key_id`")?;
    let key = keys
        .0
        .get(key_id)
        .ok_or_else(|| format!("unknown key `{key_id}`"))?;
    let value = signature
        .get("value")
        .and_then(Value::as_str)
        .ok_or("no `value`")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|e| format!("`value` is not base64: {e}"))?;
    let signature =
        Signature::from_slice(&bytes).map_err(|e| format!("`value` is not a signature: {e}"))?;
    key.verify(digest, &signature)
        .map_err(|_| String::from("does not verify"))
}

fn typed_envelope(object: &Map<String, Value>) -> Result<Envelope, Refused> {
    let mut p = Problems::default();
    let id = p.string(object, "id");
    let event_type = p.string(object, "type");
    let event_type = p.event_type("type", event_type.as_deref());
    let time = p.time(object, "timestamp");
    let producer = p.optional_string(object, "source");
    let tenant = p.optional_string(object, "tenantId");
    let user = p.optional_string(object, "userId");
    let data = match object.get("data") {
        None | Some(Value::Null) => Some(Map::new()),
        Some(_) => p.object(object, "data"),
    };
    p.done(|| {
        Some(Envelope {
            format: Format::Typed,
            id: id?,
            event_type: event_type?,
            producer,
            occurred_at: time?,
            tenant,
            user,
            data: data?,
        })
    })
}

fn platform_envelope(object: &Map<String, Value>) -> Result<Envelope, Refused> {
    let mut p = Problems::default();
    let id = p.string(object, "event_id");
    let event_type = p.string(object, "event_type");
    let event_type = p.event_type("event_type", event_type.as_deref());
    let time = p.time(object, "occurred_at");
    let producer = p.optional_string(object, "source");
    let data = match object.get("payload") {
        None | Some(Value::Null) => Some(Map::new()),
        Some(_) => p.object(object, "payload"),
    };
    p.done(|| {
        Some(Envelope {
            format: Format::Platform,
            id: id?,
            event_type: event_type?,
            producer,
            occurred_at: time?,
            tenant: None,
            user: None,
            data: data?,
        })
    })
}
