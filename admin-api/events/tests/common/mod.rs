//! What the event suites share: the seed fixtures, and a store seeded with the shipped
//! policies and the seed-000 roles.

#![allow(dead_code, reason = "each suite uses part of it")]

use std::path::PathBuf;

use portcullis_model::*;
use portcullis_store::{Import, SqlStore, Store};

pub fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn role(name: &str, actions: &[&str]) -> Role {
    Role {
        name: name.to_owned(),
        description: String::new(),
        actions: actions.iter().map(|s| s.to_string()).collect(),
        scope_types: vec![],
    }
}

/// The shipped policies and the seed-000 roles.
pub async fn seed(store: &SqlStore) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    let text = std::fs::read_to_string(dir.join("default.cedar")).unwrap();
    let schema = std::fs::read_to_string(dir.join("schema.cedarschema")).unwrap();
    store
        .import(&Import {
            roles: vec![
                role("guardian", &["READ", "WRITE", "SHARE", "ADMIN"]),
                role("member", &["READ", "WRITE", "SHARE"]),
                role("guest", &["READ"]),
                role("admin", &["READ", "WRITE", "SHARE", "ADMIN", "PEOPLE"]),
            ],
            policy_set: Some((
                vec![PolicyFile {
                    name: String::from("default.cedar"),
                    text,
                }],
                schema,
            )),
            entities: vec![EntityRecord {
                uid: "Entity::\"0f0f7e13-7cb5-449b-9349-0ed8cc5d9b32\""
                    .parse()
                    .unwrap(),
                parents: vec![],
                attributes: EntityAttributes {
                    kind: Some(String::from("issuer")),
                    ..EntityAttributes::default()
                },
            }],
            ..Import::default()
        })
        .await
        .unwrap();
}

/// Whether the seed-004 fixture's issuer is archived.
pub async fn issuer_archived(store: &SqlStore) -> bool {
    let issuer: EntityRef = "Entity::\"0f0f7e13-7cb5-449b-9349-0ed8cc5d9b32\""
        .parse()
        .unwrap();
    store
        .get_entity(&issuer)
        .await
        .unwrap()
        .unwrap()
        .attributes
        .archived
}

/// `message` as an SNS subscription delivers it to SQS.
pub fn sns_notification(message: String) -> String {
    serde_json::json!({
        "Type": "Notification",
        "MessageId": "5f1c7c7e-1d3b-4a55-9c0c-2f8e1d6b7a90",
        "TopicArn": "arn:aws:sns:us-east-1:000000000000:epr-document-events",
        "Message": message,
    })
    .to_string()
}

/// The sum of `counter`'s series whose labels include every one of `labels`.
pub fn total(counter: &prometheus::IntCounterVec, labels: &[(&str, &str)]) -> u64 {
    use prometheus::core::Collector;
    counter
        .collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .filter(|m| {
            labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}
