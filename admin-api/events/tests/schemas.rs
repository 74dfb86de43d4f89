//! The envelopes' JSON Schemas (`schemas/`, what producers can validate against before
//! sending) agree with what the reader takes: every fixture is valid under the schema of
//! its envelope and read; each malformed envelope below is refused by both.

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers fail the test loudly"
)]

mod common;

use std::path::PathBuf;

use common::fixture;
use portcullis_events::envelope::{Format, SignatureKeys, read};
use serde_json::{Value, json};

fn validator(format: Format) -> jsonschema::Validator {
    let name = match format {
        Format::Topic => "000_topic.schema.json",
        Format::Typed => "001_typed.schema.json",
        Format::Platform => "004_platform.schema.json",
    };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("schemas")
        .join(name);
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        jsonschema::meta::is_valid(&schema),
        "{} is a valid JSON Schema",
        path.display()
    );
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn errors(format: Format, event: &Value) -> Vec<String> {
    validator(format)
        .iter_errors(event)
        .map(|e| format!("{}: {e}", e.instance_path))
        .collect()
}

#[test]
fn every_fixture_is_valid_under_its_envelopes_schema() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let body = fixture(&name);
        let envelope = read(body.as_bytes(), &SignatureKeys::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let event: Value = serde_json::from_str(&body).unwrap();
        let problems = errors(envelope.format, &event);
        assert!(problems.is_empty(), "{name}: {problems:?}");
        checked += 1;
    }
    assert!(checked >= 11, "{checked} fixtures");
}

#[test]
fn a_malformed_envelope_is_refused_by_the_schema_and_the_reader() {
    let cases = [
        // Seed 000.
        (
            Format::Topic,
            json!({"payload": {"created_ts": "2026-01-06T09:00:00Z"}}),
        ),
        (
            Format::Topic,
            json!({"topic": "USER_CREATED@1.0", "payload": "x"}),
        ),
        (
            Format::Topic,
            json!({"topic": "USER CREATED@1.0", "payload": {"created_ts": "2026-01-06T09:00:00Z"}}),
        ),
        (
            Format::Topic,
            json!({"topic": "USER_CREATED@1.0", "payload": {"user_id": "u1"}}),
        ),
        (
            Format::Topic,
            json!({"topic": "USER_CREATED@1.0", "ts": "yesterday", "payload": {}}),
        ),
        (
            Format::Topic,
            json!({"topic": "USER_CREATED@1.0", "id": "", "payload": {"created_ts": "2026-01-06T09:00:00Z"}}),
        ),
        // Seed 001.
        (
            Format::Typed,
            json!({"id": "e1", "type": "user.deactivated"}),
        ),
        (
            Format::Typed,
            json!({"id": "e1", "type": "user.deactivated", "timestamp": "soon"}),
        ),
        (
            Format::Typed,
            json!({"id": " ", "type": "user.deactivated", "timestamp": "2026-01-06T09:00:00Z"}),
        ),
        (
            Format::Typed,
            json!({"id": "e1", "type": "user\ndeactivated", "timestamp": "2026-01-06T09:00:00Z"}),
        ),
        (
            Format::Typed,
            json!({"id": "e1", "type": "user.deactivated", "timestamp": "2026-01-06T09:00:00Z", "data": [1]}),
        ),
        (
            Format::Typed,
            json!({"id": "e1", "type": "user.deactivated", "timestamp": "2026-01-06T09:00:00Z", "userId": 7}),
        ),
        // Seed 004.
        (
            Format::Platform,
            json!({"event_type": "entity.archived", "occurred_at": "2026-01-06T09:00:00Z"}),
        ),
        (
            Format::Platform,
            json!({"event_id": "e1", "event_type": 3, "occurred_at": "2026-01-06T09:00:00Z"}),
        ),
        (
            Format::Platform,
            json!({"event_id": "e1", "event_type": "entity.archived", "occurred_at": "2026-01-06T09:00:00Z", "payload": true}),
        ),
        (
            Format::Platform,
            json!({"event_id": "e1", "event_type": "entity.archived", "occurred_at": 1767690000}),
        ),
    ];
    for (format, event) in cases {
        assert!(
            !errors(format, &event).is_empty(),
            "the schema takes {event}"
        );
        assert!(
            read(event.to_string().as_bytes(), &SignatureKeys::default()).is_err(),
            "the reader takes {event}"
        );
    }
}
