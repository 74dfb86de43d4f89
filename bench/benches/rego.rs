//! Portcullis's decision core against regorus (a Rust interpreter of Rego, OPA's language)
//! on the same RBAC decision, in the same run: `alice` holds `member` on Space `s1` (and
//! four other grants); may she `document.read` Document `d1`, two levels below? Both answer
//! allow, evaluated from scratch every time (no decision cache on either side).
//!
//! - `rbac/portcullis`: the shipped policies — role grants inherited down the entity tree
//!   and the ABAC rules (status, tenant isolation, classification, ...) — through the
//!   decision core: slice build and Cedar evaluation.
//! - `rbac/regorus`: the same grants as Rego data (roles with their actions, the principal's
//!   attributes and assignments, the resource's attributes and ancestors) and the shipped
//!   rules that bear on this request, in Rego.
//!
//! `cargo bench -p portcullis-bench --features regorus --bench rego`

#[path = "../../policy-store/engine/benches/fixtures/mod.rs"]
#[expect(dead_code, reason = "only the default state is used")]
mod fixtures;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use fixtures::{AliceReadsD1, default_state, fail};
use portcullis_engine::decision::decide_uncached;
use portcullis_engine::snapshot::Snapshot;

/// The shipped rules that bear on a document read (policies/default.cedar), in Rego: role
/// grants down the entity tree and owner access permit; status, tenant isolation, risk,
/// device trust for classified resources, clearance and archiving forbid.
const POLICY: &str = r#"
package portcullis

default allow := false

allow if {
    permitted
    not forbidden
}

principal := data.principals[input.principal]

resource := data.resources[input.resource]

scopes contains input.resource

scopes contains ancestor if {
    some ancestor in data.ancestors[input.resource]
}

permitted if {
    some grant in principal.assignments
    input.action in data.roles[grant.role]
    grant.scope in scopes
}

permitted if {
    input.action in data.groups.read_write
    resource.owner == input.principal
}

forbidden if principal.status != "active"

forbidden if {
    principal.tenant != resource.tenant
}

forbidden if input.context.risk_score >= 70

forbidden if {
    resource.classification >= 2
    not input.context.device_id in principal.trusted_devices
}

forbidden if principal.clearance < resource.classification

forbidden if resource.archived
"#;

/// The fixtures' state: alice's grants, each role's action groups spelled out, the document
/// and its ancestors.
const DATA: &str = r#"{
  "roles": {
    "member": ["document.read", "document.list", "document.create", "document.update",
               "document.share", "space.read", "space.list", "space.update", "space.share"],
    "guest": ["document.read", "document.list", "space.read", "space.list"],
    "guardian": ["document.read", "document.list", "document.create", "document.update",
                 "document.share", "document.delete", "space.read", "space.list",
                 "space.update", "space.share", "space.delete", "space.manage_members"]
  },
  "groups": {
    "read_write": ["document.read", "document.list", "document.create", "document.update",
                   "space.read", "space.list", "space.update"]
  },
  "principals": {
    "User::\"alice\"": {
      "status": "active",
      "tenant": "t1",
      "clearance": 2,
      "trusted_devices": ["laptop-1"],
      "assignments": [
        {"role": "member", "scope": "Space::\"s1\""},
        {"role": "guest", "scope": "Space::\"s2\""},
        {"role": "guest", "scope": "Document::\"d7\""},
        {"role": "guardian", "scope": "Space::\"s3\""},
        {"role": "member", "scope": "Space::\"s4\""}
      ]
    }
  },
  "resources": {
    "Document::\"d1\"": {"tenant": "t1", "classification": 1, "archived": false, "owner": "User::\"zed\""}
  },
  "ancestors": {
    "Document::\"d1\"": ["Space::\"s1\"", "Tenant::\"t1\""]
  }
}"#;

const INPUT: &str = r#"{"principal": "User::\"alice\"", "action": "document.read", "resource": "Document::\"d1\""}"#;

fn bench_rbac(c: &mut Criterion) {
    let question = AliceReadsD1::new();
    let request = question.request();
    let snapshot = Snapshot::build(default_state(), 0).unwrap_or_else(|e| fail(&e.to_string()));
    if !decide_uncached(&snapshot, &request).allowed {
        fail("Portcullis does not allow the benchmark decision");
    }

    let json =
        |text: &str| regorus::Value::from_json_str(text).unwrap_or_else(|e| fail(&e.to_string()));
    let mut engine = regorus::Engine::new();
    let input = json(INPUT);
    engine
        .add_policy(String::from("rbac.rego"), String::from(POLICY))
        .unwrap_or_else(|e| fail(&e.to_string()));
    engine
        .add_data(json(DATA))
        .unwrap_or_else(|e| fail(&e.to_string()));
    // Regorus's answer for an input (JSON), checked before anything is timed.
    let mut answer = |input: regorus::Value| {
        engine.set_input(input);
        engine
            .eval_rule(String::from("data.portcullis.allow"))
            .unwrap_or_else(|e| fail(&e.to_string()))
    };
    let allowed = answer(input.clone());
    if allowed != regorus::Value::from(true) {
        fail(&format!(
            "regorus does not allow the benchmark decision: {allowed}"
        ));
    }
    if answer(json(
        r#"{"principal": "User::\"alice\"", "action": "document.delete", "resource": "Document::\"d1\"", "context": {"risk_score": 10, "device_id": "laptop-1"}}"#,
    )) != regorus::Value::from(false)
    {
        fail("regorus allows what a member may not do");
    }
    if answer(json(
        r#"{"principal": "User::\"alice\"", "action": "document.read", "resource": "Document::\"d1\"", "context": {"risk_score": 80, "device_id": "laptop-1"}}"#,
    )) != regorus::Value::from(false)
    {
        fail("regorus ignores the risk rule");
    }

    let mut group = c.benchmark_group("rbac");
    group.bench_function("portcullis", |b| {
        b.iter(|| decide_uncached(black_box(&snapshot), black_box(&request)))
    });
    group.bench_function("regorus", |b| {
        b.iter(|| {
            engine.set_input(black_box(input.clone()));
            engine.eval_rule(String::from("data.portcullis.allow"))
        })
    });
    group.finish();
}

criterion_group!(benches, bench_rbac);
criterion_main!(benches);
