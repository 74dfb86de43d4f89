//! The mutating admission webhook, `POST /inject` on the admin listener (over TLS): takes an
//! `admission.k8s.io/v1` AdmissionReview for a Pod and answers with a JSON Patch that adds
//! the sidecar, or refuses the pod with every reason. The API server authenticates itself
//! to nobody here: the webhook reveals nothing a pod spec does not already hold, and only
//! transforms what it is sent.
//!
//! The patch replaces whole members (`add` of `/metadata/annotations`, `/spec/containers`,
//! ...), so it applies whatever the pod had before, and carries only what changed.

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use base64::Engine;
use serde_json::{Value, json};

use super::{Injector, Outcome};

/// The outcomes counted in `portcullis_sidecar_injections_total`.
pub const OUTCOMES: [&str; 4] = ["injected", "skipped", "refused", "invalid"];

/// What the webhook's handler holds.
struct Webhook {
    injector: Injector,
    /// `portcullis_sidecar_injections_total{outcome}`.
    outcomes: prometheus::IntCounterVec,
}

/// The webhook's route; each answer counted in `outcomes` (labelled by [`OUTCOMES`]).
pub fn router(injector: Injector, outcomes: prometheus::IntCounterVec) -> axum::Router {
    axum::Router::new()
        .route("/inject", post(review))
        .with_state(std::sync::Arc::new(Webhook { injector, outcomes }))
}

async fn review(
    State(webhook): State<std::sync::Arc<Webhook>>,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, Json<Value>) {
    match serde_json::from_slice::<Value>(&body) {
        Ok(review) => {
            let (answer, outcome) = answer(&webhook.injector, &review);
            webhook.outcomes.with_label_values(&[outcome]).inc();
            (axum::http::StatusCode::OK, Json(answer))
        }
        Err(e) => {
            webhook.outcomes.with_label_values(&["invalid"]).inc();
            (
                axum::http::StatusCode::BAD_REQUEST,
                Json(json!({"error": format!("not an AdmissionReview: {e}")})),
            )
        }
    }
}

/// The AdmissionReview answering `review`, and its outcome (one of [`OUTCOMES`]).
pub fn answer(injector: &Injector, review: &Value) -> (Value, &'static str) {
    let request = review.get("request").cloned().unwrap_or(Value::Null);
    let uid = request.get("uid").cloned().unwrap_or(json!(""));
    let response = |body: Value| {
        let mut response = json!({"uid": uid});
        if let (Some(r), Some(b)) = (response.as_object_mut(), body.as_object()) {
            r.extend(b.clone());
        }
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": response,
        })
    };
    let kind = request.pointer("/kind/kind").and_then(Value::as_str);
    let operation = request.get("operation").and_then(Value::as_str);
    if kind != Some("Pod") || operation != Some("CREATE") {
        return (response(json!({"allowed": true})), "skipped");
    }
    let Some(pod) = request.get("object") else {
        return (
            response(refused(&[String::from("the review carries no pod")])),
            "refused",
        );
    };
    let namespace = request
        .get("namespace")
        .and_then(Value::as_str)
        .or_else(|| pod.pointer("/metadata/namespace").and_then(Value::as_str));
    let pod_name = pod
        .pointer("/metadata/name")
        .or_else(|| pod.pointer("/metadata/generateName"))
        .and_then(Value::as_str)
        .unwrap_or("?");
    match injector.inject(pod, namespace) {
        Ok(Outcome::Skipped(why)) => {
            tracing::debug!(pod = pod_name, namespace, why, "not injected");
            (response(json!({"allowed": true})), "skipped")
        }
        Ok(Outcome::Injected(injected)) => {
            let patch = patch(pod, &injected);
            tracing::info!(pod = pod_name, namespace, "sidecar injected");
            let encoded = base64::engine::general_purpose::STANDARD.encode(patch.to_string());
            (
                response(json!({"allowed": true, "patchType": "JSONPatch", "patch": encoded})),
                "injected",
            )
        }
        Err(problems) => {
            tracing::info!(
                pod = pod_name,
                namespace,
                problems = problems.join("; "),
                "pod refused"
            );
            (response(refused(&problems)), "refused")
        }
    }
}

/// A refusal naming every problem.
fn refused(problems: &[String]) -> Value {
    json!({
        "allowed": false,
        "status": {
            "code": 400,
            "reason": "BadRequest",
            "message": format!("portcullis: the sidecar cannot be injected: {}", problems.join("; ")),
        },
    })
}

/// The JSON Patch from `before` to `after`: each changed member of the pod that injection
/// touches, set whole.
pub fn patch(before: &Value, after: &Value) -> Value {
    let mut ops = Vec::new();
    for path in [
        "/metadata/labels",
        "/metadata/annotations",
        "/spec/initContainers",
        "/spec/containers",
        "/spec/volumes",
    ] {
        let new = after.pointer(path);
        if let Some(new) = new.filter(|new| before.pointer(path) != Some(*new)) {
            ops.push(json!({"op": "add", "path": path, "value": new}));
        }
    }
    Value::Array(ops)
}
