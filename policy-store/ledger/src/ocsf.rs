//! Ledger records as OCSF events, for SIEMs that ingest the Open Cybersecurity Schema
//! Framework: what the Redis and SQS sinks send when their `format` is `ocsf`. The ledger
//! files themselves stay in the canonical format the chain is computed over; each event
//! carries the record's `seq` and `hash` so it can be matched against the verified ledger.
//!
//! Mapping (OCSF 1.3, class API Activity, `class_uid` 6003, category Application Activity):
//!
//! | OCSF | from the record |
//! |---|---|
//! | `activity_id` | the verb of the action or admin operation: `create` 1, `read`/`list` 2, `update`/`put`/`write` 3, `delete` 4, else 99 (Other) |
//! | `type_uid` | `600300 + activity_id` |
//! | `time` | `ts`, milliseconds since the epoch |
//! | `status_id`, `status` | 1 `Success` for an allow or an admin change, 2 `Failure` otherwise; `status_detail` the reason |
//! | `severity_id` | 1 (Informational) for successes, 2 (Low) for refusals |
//! | `actor.user.uid` | the principal, or the admin who made a change |
//! | `api.operation`, `api.request.uid` | the action or admin operation; the decision id |
//! | `resources[0].uid`, `.type` | the resource (or changed object) and its entity type |
//! | `src_endpoint.ip` | the client address when the record holds it unredacted |
//! | `metadata` | `version`, `product`, `uid` (decision id), `sequence` (seq), `correlation_uid` (trace id), `log_name` |
//! | `unmapped` | `decision`, `route`, `policies`, `errors`, `context`, `latency_us`, `instance`, `hash`, `prev_hash`, `before`, `after` |

use serde_json::{Map, Value, json};

use super::{Record, RecordKind, unseal};

/// The OCSF schema version the events follow.
pub const OCSF_VERSION: &str = "1.3.0";

fn activity(operation: &str) -> u64 {
    let verb = operation.rsplit(['.', ':']).next().unwrap_or(operation);
    match verb {
        "create" => 1,
        "read" | "list" => 2,
        "update" | "put" | "write" | "replace" | "rollback" => 3,
        "delete" => 4,
        _ => 99,
    }
}

/// The OCSF event of a sealed ledger line; `None` if the line is not a sealed record.
pub fn from_line(line: &str) -> Option<Value> {
    let (canonical, hash) = unseal(line)?;
    let record: Record = serde_json::from_str(&canonical).ok()?;
    Some(event(&record, hash))
}

/// The OCSF event of a record whose hash is `hash`.
pub fn event(record: &Record, hash: &str) -> Value {
    let entry = &record.entry;
    let operation = entry.action.clone().unwrap_or_default();
    let activity_id = activity(&operation);
    let success = match entry.kind {
        RecordKind::AdminChange | RecordKind::External => true,
        RecordKind::Decision => entry.decision.as_deref() == Some("allow"),
    };
    let time = entry
        .ts
        .parse::<jiff::Timestamp>()
        .map_or(0, |t| t.as_millisecond());
    let who = match entry.kind {
        RecordKind::AdminChange | RecordKind::External => entry.actor.clone(),
        RecordKind::Decision => entry.principal.clone(),
    };
    let mut event = json!({
        "category_uid": 6,
        "class_uid": 6003,
        "activity_id": activity_id,
        "type_uid": 600_300 + activity_id,
        "time": time,
        "severity_id": if success { 1 } else { 2 },
        "status_id": if success { 1 } else { 2 },
        "status": if success { "Success" } else { "Failure" },
        "actor": { "user": { "uid": who.unwrap_or_default() } },
        "api": { "operation": operation },
        "metadata": {
            "version": OCSF_VERSION,
            "product": { "name": "Portcullis", "vendor_name": "Portcullis" },
            "log_name": match entry.kind {
                RecordKind::Decision => "decisions",
                RecordKind::AdminChange => "admin_changes",
                RecordKind::External => "external",
            },
            "sequence": record.seq,
        },
    });
    let mut unmapped = Map::new();
    unmapped.insert(String::from("instance"), json!(record.instance));
    unmapped.insert(String::from("hash"), json!(hash));
    unmapped.insert(String::from("prev_hash"), json!(record.prev_hash));
    if let Some(object) = event.as_object_mut() {
        if let Some(reason) = &entry.reason {
            object.insert(String::from("status_detail"), json!(reason));
        }
        if let Some(resource) = &entry.resource {
            let type_name = resource.split("::").next().unwrap_or_default();
            object.insert(
                String::from("resources"),
                json!([{ "uid": resource, "type": type_name }]),
            );
        }
        if let Some(ip) = entry
            .context
            .get("ip")
            .filter(|ip| !ip.starts_with("sha256:"))
        {
            object.insert(String::from("src_endpoint"), json!({ "ip": ip }));
        }
        if let Some(Value::Object(api)) = object.get_mut("api")
            && let Some(id) = &entry.decision_id
        {
            api.insert(String::from("request"), json!({ "uid": id }));
        }
        if let Some(Value::Object(metadata)) = object.get_mut("metadata") {
            if let Some(id) = &entry.decision_id {
                metadata.insert(String::from("uid"), json!(id));
            }
            if let Some(trace) = &entry.trace_id {
                metadata.insert(String::from("correlation_uid"), json!(trace));
            }
        }
    }
    let optional = [
        ("decision", entry.decision.as_ref().map(|d| json!(d))),
        ("route", entry.route.as_ref().map(|r| json!(r))),
        (
            "policies",
            (!entry.policies.is_empty()).then(|| json!(entry.policies)),
        ),
        (
            "errors",
            (!entry.errors.is_empty()).then(|| json!(entry.errors)),
        ),
        (
            "context",
            (!entry.context.is_empty()).then(|| json!(entry.context)),
        ),
        ("latency_us", entry.latency_us.map(|l| json!(l))),
        ("before", entry.before.clone()),
        ("after", entry.after.clone()),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            unmapped.insert(String::from(key), value);
        }
    }
    if let Some(object) = event.as_object_mut() {
        object.insert(String::from("unmapped"), Value::Object(unmapped));
    }
    event
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{Entry, GENESIS, seal};

    fn sealed(entry: Entry) -> (String, String) {
        let record = Record {
            seq: 7,
            instance: String::from("i1"),
            entry,
            prev_hash: String::from(GENESIS),
        };
        seal(&record).unwrap_or_default()
    }

    #[test]
    fn a_denied_decision_is_a_failed_api_activity_with_its_chain_position() {
        let (hash, line) = sealed(Entry {
            ts: String::from("2026-01-06T10:00:00.123Z"),
            kind: RecordKind::Decision,
            decision_id: Some(String::from("d-1")),
            principal: Some(String::from("User::\"gina\"")),
            action: Some(String::from("document.update")),
            resource: Some(String::from("Document::\"d1\"")),
            decision: Some(String::from("deny")),
            reason: Some(String::from("denied")),
            route: Some(String::from("put_document")),
            context: BTreeMap::from([(String::from("ip"), String::from("10.0.0.9"))]),
            trace_id: Some(String::from("4bf9")),
            ..Entry::default()
        });
        let event = from_line(&line).unwrap_or_default();
        assert_eq!(event["class_uid"], 6003);
        assert_eq!(event["activity_id"], 3);
        assert_eq!(event["type_uid"], 600_303);
        assert_eq!(event["time"], 1_767_693_600_123_i64);
        assert_eq!(event["status_id"], 2);
        assert_eq!(event["status_detail"], "denied");
        assert_eq!(event["actor"]["user"]["uid"], "User::\"gina\"");
        assert_eq!(event["api"]["operation"], "document.update");
        assert_eq!(event["api"]["request"]["uid"], "d-1");
        assert_eq!(event["resources"][0]["type"], "Document");
        assert_eq!(event["src_endpoint"]["ip"], "10.0.0.9");
        assert_eq!(event["metadata"]["sequence"], 7);
        assert_eq!(event["metadata"]["correlation_uid"], "4bf9");
        assert_eq!(event["unmapped"]["hash"], hash.as_str());
        assert_eq!(event["unmapped"]["route"], "put_document");
        assert!(from_line("not a record").is_none());
    }

    #[test]
    fn an_admin_change_names_its_actor_and_keeps_before_and_after() {
        let (_, line) = sealed(Entry {
            ts: String::from("2026-01-06T10:00:00.000Z"),
            kind: RecordKind::AdminChange,
            actor: Some(String::from("jane (via ops)")),
            action: Some(String::from("principal.delete")),
            resource: Some(String::from("User::\"ann\"")),
            context: BTreeMap::from([(String::from("ip"), String::from("sha256:0123"))]),
            before: Some(json!({"id": "ann"})),
            ..Entry::default()
        });
        let event = from_line(&line).unwrap_or_default();
        assert_eq!(event["activity_id"], 4);
        assert_eq!(event["status"], "Success");
        assert_eq!(event["actor"]["user"]["uid"], "jane (via ops)");
        assert_eq!(event["unmapped"]["before"]["id"], "ann");
        assert!(
            event.get("src_endpoint").is_none(),
            "a redacted address is not an IP"
        );
    }
}
