//! `portcullis inject` on manifests: every document of a (multi-document) YAML stream, and
//! each item of a `List`; the pod template of Pods, Deployments, StatefulSets, DaemonSets,
//! ReplicaSets, Jobs and CronJobs is injected, anything else passes through unchanged.

use serde_json::Value;

use super::{Injector, Outcome};

/// Where a kind keeps its pod template.
fn template_path(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// What happened to one workload, for the report on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `Deployment/web`.
    pub workload: String,
    /// `injected`, or why not.
    pub outcome: String,
}

/// Injects every workload of `documents`; the error lists each workload's problems as
/// `document N (Kind/name): problem`, and nothing is returned half-done.
pub fn inject_documents(
    injector: &Injector,
    documents: &mut [Value],
) -> Result<Vec<Report>, Vec<String>> {
    let mut reports = Vec::new();
    let mut problems = Vec::new();
    for (i, document) in documents.iter_mut().enumerate() {
        inject_one(
            injector,
            document,
            &format!("document {}", i + 1),
            &mut reports,
            &mut problems,
        );
    }
    if problems.is_empty() {
        Ok(reports)
    } else {
        Err(problems)
    }
}

fn inject_one(
    injector: &Injector,
    document: &mut Value,
    at: &str,
    reports: &mut Vec<Report>,
    problems: &mut Vec<String>,
) {
    let kind = document
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if kind == "List" {
        if let Some(items) = document.get_mut("items").and_then(Value::as_array_mut) {
            for (j, item) in items.iter_mut().enumerate() {
                inject_one(
                    injector,
                    item,
                    &format!("{at}, item {}", j + 1),
                    reports,
                    problems,
                );
            }
        }
        return;
    }
    let Some(path) = template_path(&kind) else {
        return;
    };
    let name = document
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_owned();
    let namespace = document
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let workload = format!("{kind}/{name}");
    let Some(template) = document.pointer_mut(path) else {
        problems.push(format!("{at} ({workload}): no pod template at `{path}`"));
        return;
    };
    match injector.inject(template, namespace.as_deref()) {
        Ok(Outcome::Injected(injected)) => {
            *template = injected;
            reports.push(Report {
                workload,
                outcome: String::from("injected"),
            });
        }
        Ok(Outcome::Skipped(why)) => reports.push(Report {
            workload,
            outcome: format!("skipped: {why}"),
        }),
        Err(found) => {
            problems.extend(found.into_iter().map(|p| format!("{at} ({workload}): {p}")));
        }
    }
}
