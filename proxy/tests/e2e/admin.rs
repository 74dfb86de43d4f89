//! The admin API of a running `serve` against its own OpenAPI document, with schemathesis
//! (PyPI; .ci/run installs it): generated requests for every operation must never get a
//! 5xx, and every response must match the document (status codes, content types, bodies,
//! headers).

use std::process::Command;

use crate::harness::{Keys, Portcullis, Upstream};

#[test]
fn the_admin_api_matches_its_openapi_document() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let p = Portcullis::start(&upstream, &keys, "");
    let token = std::fs::read_to_string(p.dir.join("data/admin-token")).expect("admin token");
    // `python3 -m schemathesis.cli` works wherever pip put the package, shims or not.
    let out = Command::new("python3")
        .args(["-m", "schemathesis.cli", "run"])
        .arg(format!("http://{}/v1/openapi.json", p.admin))
        .args(["-H", &format!("Authorization: Bearer {}", token.trim())])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance,response_headers_conformance",
            "--max-examples",
            "40",
            "--seed",
            "20261124",
        ])
        .env("NO_COLOR", "1")
        .output()
        .expect("schemathesis is installed (PyPI `schemathesis`; .ci/run installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("17/17"),
        "every operation was selected:\n{stdout}"
    );
}
