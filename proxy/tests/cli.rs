//! The real `portcullis` binary against the repository's `policies/` and broken copies of it.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers fail the test loudly"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn portcullis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .output()
        .expect("the portcullis binary runs")
}

fn policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

/// A copy of `policies/` in a fresh temporary directory.
fn copy_of_policies(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("tests")).unwrap();
    for entry in std::fs::read_dir(policies()).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
        }
    }
    for entry in std::fs::read_dir(policies().join("tests")).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.join("tests").join(p.file_name().unwrap())).unwrap();
    }
    dir
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn shipped_policies_validate() {
    let out = portcullis(&["policy", "validate", policies().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ok ("), "{stdout}");
}

#[test]
fn shipped_policy_tests_pass_and_number_at_least_forty() {
    let out = portcullis(&["policy", "test", policies().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", stderr(&out));
    let summary = stdout.lines().last().unwrap();
    let passed: usize = summary.split(' ').next().unwrap().parse().unwrap();
    assert!(passed >= 40, "{summary}");
    assert!(summary.ends_with(" passed, 0 failed"), "{summary}");
}

#[test]
fn a_policy_error_names_file_line_and_column() {
    let dir = copy_of_policies("bad-policy");
    std::fs::write(
        dir.join("zz-bad.cedar"),
        "// a comment line\n@id(\"shoes\")\npermit(principal, action, resource)\nwhen { principal.shoe_size > 3 };\n",
    )
    .unwrap();
    let out = portcullis(&["policy", "validate", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let expected = format!("{}:4:8: ", dir.join("zz-bad.cedar").display());
    assert!(err.contains(&expected), "{err}");
    assert!(err.contains("`shoe_size`"), "{err}");
}

#[test]
fn admin_policies_are_validated_against_the_admin_schema_beside_the_rest() {
    let dir = copy_of_policies("admin");
    let out = portcullis(&["policy", "validate", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let admin = dir.join("admin.cedar");
    assert!(
        stdout.contains(&format!("admin policies from {}", admin.display())),
        "{stdout}"
    );
    // An admin policy naming a data-plane attribute, and a data-plane problem: both, placed.
    std::fs::write(
        &admin,
        "@id(\"a\")\npermit(principal, action, resource)\nwhen { principal.clearance > 3 };\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("zz.cedar"),
        "permit(principal, action, resource);\n",
    )
    .unwrap();
    let out = portcullis(&["policy", "validate", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{}:3:8: ", admin.display())) && err.contains("`clearance`"),
        "{err}"
    );
    assert!(err.contains("zz.cedar:1:1: policy has no `@id"), "{err}");
}

#[test]
fn a_syntax_error_and_a_missing_id_are_both_reported() {
    let dir = copy_of_policies("syntax");
    std::fs::write(
        dir.join("a.cedar"),
        "permit(principal, action, resource);\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("b.cedar"),
        "@id(\"b\")\npermit(principal, action resource);\n",
    )
    .unwrap();
    let out = portcullis(&["policy", "validate", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("a.cedar:1:1: policy has no `@id"), "{err}");
    assert!(err.contains("b.cedar:2:"), "{err}");
}

#[test]
fn a_bad_role_is_placed_on_its_line() {
    let dir = copy_of_policies("role");
    let roles = std::fs::read_to_string(dir.join("roles.yaml")).unwrap();
    std::fs::write(
        dir.join("roles.yaml"),
        roles.replace(
            "actions: [READ]\n    scope_types: [Space, Document]",
            "actions: [READ, space.fly]\n    scope_types: [Space, Document]",
        ),
    )
    .unwrap();
    let out = portcullis(&["policy", "validate", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("roles.yaml:"), "{err}");
    assert!(
        err.contains("role `guest`: action `space.fly` is not declared"),
        "{err}"
    );
}

#[test]
fn a_bad_route_is_reported_with_its_line() {
    let dir = copy_of_policies("route");
    let routes = std::fs::read_to_string(dir.join("routes.yaml")).unwrap();
    std::fs::write(
        dir.join("routes.yaml"),
        routes.replace("action: document.read", "action: document.peek"),
    )
    .unwrap();
    let out = portcullis(&["policy", "validate", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("routes.yaml:"), "{err}");
    assert!(
        err.contains("route `get_document`: action `document.peek`"),
        "{err}"
    );
}

#[test]
fn a_failing_case_fails_the_run() {
    let dir = copy_of_policies("failing");
    std::fs::write(
        dir.join("tests/zz.yaml"),
        "cases:\n  - name: wrong on purpose\n    principals: [{kind: user, id: alice, tenant: t1}]\n    request: {principal: 'User::\"alice\"', action: space.read, resource: 'Space::\"s1\"'}\n    expect: {decision: allow}\n  - name: a client IP that is not one\n    principals: [{kind: user, id: alice, tenant: t1}]\n    assignments: [{principal: 'User::\"alice\"', role: member, scope: 'Space::\"s1\"'}]\n    request: {principal: 'User::\"alice\"', action: space.read, resource: 'Space::\"s1\"'}\n    context: {ip: not-an-ip}\n    expect: {decision: allow}\n  - name: an attribute the schema does not declare\n    principals: [{kind: user, id: alice, tenant: t1, attributes: {shoe_size: 44}}]\n    assignments: [{principal: 'User::\"alice\"', role: member, scope: 'Space::\"s1\"'}]\n    request: {principal: 'User::\"alice\"', action: space.read, resource: 'Space::\"s1\"'}\n    expect: {decision: allow}\n",
    )
    .unwrap();
    let out = portcullis(&["policy", "test", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("FAIL "), "{stdout}");
    assert!(stdout.contains("zz.yaml:2: wrong on purpose"), "{stdout}");
    // Refused as input, although no shipped policy reads the IP.
    assert!(
        stdout.contains("zz.yaml:6: a client IP that is not one")
            && stdout.contains("context.ip `not-an-ip`"),
        "{stdout}"
    );
    // Stated attributes are checked against the schema as a write to the store is.
    assert!(
        stdout.contains("zz.yaml:12: an attribute the schema does not declare")
            && stdout.contains("attribute `shoe_size` is not an attribute of `User`"),
        "{stdout}"
    );
    assert!(stdout.contains(" passed, 3 failed"), "{stdout}");
}

#[test]
fn usage_errors_exit_two() {
    let out = portcullis(&["policy", "frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn config_dump_prints_the_example_and_reports_every_problem() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/portcullis.yaml");
    let out = portcullis(&["config", "dump", "--config", example.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("address: 0.0.0.0:8480"), "{stdout}");

    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args([
            "config",
            "dump",
            "--set",
            "threads=0",
            "--set",
            "ops.adress=x",
        ])
        .env("PORTCULLIS_LISTEN__ADDRESS", "nowhere")
        .env("PORTCULLIS_DECISION_ENDPOINT__ENABLED", "true")
        .env("PORTCULLIS_STORE__POSTGRES_URL", "postgres://u:secret@db/p")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    for expected in [
        "--set ops.adress: `ops.adress` is not a configuration key",
        "threads: must be at least 1",
        "listen.address: `nowhere` is not an address",
        "decision_endpoint.gateway: name the gateway in front: `nginx`, `traefik` or `envoy`",
        "4 problem(s)",
    ] {
        assert!(err.contains(expected), "{expected} in {err}");
    }

    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["config", "dump"])
        .env(
            "PORTCULLIS_STORE__POSTGRES_URL",
            "postgres://u:pw-d0nt-sh0w@db/p",
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("<redacted>") && !stdout.contains("pw-d0nt-sh0w"),
        "{stdout}"
    );
}

#[test]
fn control_refuses_to_run_without_its_admin_api() {
    let out = portcullis(&["control", "--set", "admin.enabled=false"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("admin.enabled: `portcullis control` serves the admin API"),
        "{}",
        stderr(&out)
    );
}
