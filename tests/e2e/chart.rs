//! The Helm chart (`deploy/helm/portcullis`), rendered and linted by a real `helm` (installed
//! by tests/setup) for every documented values combination (`ci/*.yaml`, and the defaults),
//! each rendered manifest validated against the Kubernetes schema by `kubernetes-validate`
//! (the cert-manager and Prometheus Operator kinds have no schema there: it names them and
//! they are checked here by hand), and each rendered `portcullis.yaml` read by the real
//! binary (`portcullis config dump`). The same for the Kubernetes examples
//! (`deploy/examples/kubernetes/`).

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use serde_json::Value;

use crate::inject::kubernetes_validate;

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/portcullis")
}

fn helm(args: &[&str]) -> std::process::Output {
    Command::new("helm")
        .args(args)
        .output()
        .expect("helm runs (tests/setup installs it)")
}

/// `helm template` of the chart with `values` (files) and `sets`, for `kube_version`.
fn render(values: &[&Path], sets: &[&str], kube_version: &str) -> Result<String, String> {
    let chart = chart();
    let mut args = vec![
        "template",
        "rel",
        chart.to_str().expect("path"),
        "--namespace",
        "portcullis",
        "--kube-version",
        kube_version,
    ];
    for v in values {
        args.extend(["--values", v.to_str().expect("path")]);
    }
    for s in sets {
        args.extend(["--set", s]);
    }
    let out = helm(&args);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn documents(rendered: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(rendered)
        .expect("helm writes YAML")
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str, namespace: &str) -> Option<&'a Value> {
    docs.iter().find(|d| {
        d["kind"] == kind
            && d["metadata"]["name"] == name
            && (namespace.is_empty() || d["metadata"]["namespace"] == namespace)
    })
}

/// Reads a rendered `portcullis.yaml` with the real binary: every key known and typed;
/// the only problems allowed are files that only the pod has.
fn binary_accepts(dir: &Path, name: &str, config: &str) {
    let file = dir.join(name);
    std::fs::write(&file, config).expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis-under-test"))
        .args(["config", "dump", "--config"])
        .arg(&file)
        .env_clear()
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stderr.lines() {
        let about_pod_files = line.contains("`/etc/portcullis/") && line.contains("is not a file")
            || line.contains("cannot read `/etc/portcullis/")
            || line.starts_with("portcullis: the configuration has");
        assert!(about_pod_files, "{name}: {line}\n{config}");
    }
}

#[test]
fn the_chart_renders_lints_and_validates_for_every_documented_combination() {
    let dir = crate::harness::temp_dir("chart");
    let chart = chart();
    let mut combinations: Vec<(String, Option<PathBuf>, &str)> =
        vec![(String::from("defaults"), None, "1.31.0")];
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart.join("ci"))
        .expect("ci values")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    for file in files {
        let name = file
            .file_stem()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let version = if name == "older-cluster" {
            "1.28.0"
        } else {
            "1.31.0"
        };
        combinations.push((name, Some(file), version));
    }

    for (name, values, version) in &combinations {
        let values: Vec<&Path> = values.iter().map(PathBuf::as_path).collect();
        let mut lint = vec!["lint", "--strict", chart.to_str().expect("path")];
        for v in &values {
            lint.extend(["--values", v.to_str().expect("path")]);
        }
        let out = helm(&lint);
        assert!(
            out.status.success(),
            "{name}: helm lint\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let rendered = render(&values, &[], version).unwrap_or_else(|e| panic!("{name}: {e}"));
        kubernetes_validate(&dir, &format!("{name}.yaml"), &rendered, version);
        let docs = documents(&rendered);

        // Every workload: hardened, labelled, rolled when its configuration changes.
        for d in docs.iter().filter(|d| d["kind"] == "Deployment") {
            let pod = &d["spec"]["template"];
            assert!(
                pod["metadata"]["annotations"]["checksum/config"].is_string(),
                "{name}: {d}"
            );
            assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
            assert_eq!(pod["metadata"]["labels"]["portcullis.dev/inject"], "false");
            for c in pod["spec"]["containers"].as_array().expect("containers") {
                assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
                assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
            }
        }
        for d in &docs {
            assert_eq!(
                d["metadata"]["labels"]["app.kubernetes.io/instance"], "rel",
                "{name}: {d}"
            );
        }

        // The configuration each part runs with is one the binary reads.
        for d in docs.iter().filter(|d| d["kind"] == "ConfigMap") {
            if let Some(config) = d["data"]["portcullis.yaml"].as_str() {
                let file = format!(
                    "{name}-{}-{}.yaml",
                    d["metadata"]["namespace"].as_str().unwrap_or_default(),
                    d["metadata"]["name"].as_str().unwrap_or_default()
                );
                binary_accepts(&dir, &file, config);
            }
        }

        let control_config: Value =
            find(&docs, "ConfigMap", "rel-portcullis-control", "portcullis")
                .and_then(|c| c["data"]["portcullis.yaml"].as_str())
                .map(|text| serde_saphyr::from_str(text).expect("yaml"))
                .unwrap_or_else(|| panic!("{name}: no control ConfigMap"));
        let inject = &control_config["inject"];
        assert_eq!(
            inject["kubernetes_version"],
            version.rsplit_once('.').expect("x.y.z").0,
            "{name}: the cluster's version from helm's capabilities"
        );

        // The webhook, as Kubernetes expects it.
        if let Some(webhook) = find(
            &docs,
            "MutatingWebhookConfiguration",
            "rel-portcullis-inject",
            "",
        ) {
            let w = &webhook["webhooks"][0];
            assert_eq!(w["sideEffects"], "None");
            assert_eq!(w["reinvocationPolicy"], "IfNeeded");
            assert_eq!(w["clientConfig"]["service"]["path"], "/inject");
            assert_eq!(w["rules"][0]["operations"], serde_json::json!(["CREATE"]));
            let excluded = w["namespaceSelector"]["matchExpressions"]
                .as_array()
                .expect("expressions")
                .iter()
                .find(|e| e["operator"] == "NotIn")
                .expect("excluded namespaces");
            assert_eq!(
                excluded["values"],
                serde_json::json!(["kube-system", "kube-node-lease", "portcullis"])
            );
            assert_eq!(inject["webhook"], true);
        }

        // What an injected sidecar mounts exists in each namespace it is injected in, and
        // matches the control plane: the CA it serves with, the token it accepts.
        let tls = find(&docs, "Secret", "rel-portcullis-tls", "portcullis");
        let tokens = find(&docs, "Secret", "rel-portcullis-tokens", "portcullis");
        let decode = |v: &Value| {
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().expect("base64"))
                    .expect("base64"),
            )
            .expect("utf-8")
        };
        for cm in docs
            .iter()
            .filter(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "portcullis-ca")
        {
            let ns = cm["metadata"]["namespace"].as_str().expect("namespace");
            assert!(
                find(
                    &docs,
                    "ConfigMap",
                    inject["config_map"].as_str().expect("name"),
                    ns
                )
                .is_some(),
                "{name}: no sidecar ConfigMap in {ns}"
            );
            let secret = find(
                &docs,
                "Secret",
                inject["token_secret"].as_str().expect("name"),
                ns,
            )
            .unwrap_or_else(|| panic!("{name}: no sidecar token in {ns}"));
            let token = decode(&secret["data"]["token"]);
            let tokens = tokens.expect("the chart's tokens");
            assert_eq!(token, decode(&tokens["data"]["sidecar-token"]));
            let line = portcullis_admin_api::auth::token_line("sidecar", &token);
            assert!(
                decode(&tokens["data"]["admin-tokens"]).contains(&format!("{line} roles=sidecar")),
                "{name}: the control plane accepts the sidecars' token"
            );
            if let Some(tls) = tls {
                let ca = decode(&tls["data"]["ca.crt"]);
                assert_eq!(
                    cm["data"]["ca.crt"].as_str().map(str::trim),
                    Some(ca.trim())
                );
                if let Some(webhook) = find(
                    &docs,
                    "MutatingWebhookConfiguration",
                    "rel-portcullis-inject",
                    "",
                ) {
                    assert_eq!(
                        decode(&webhook["webhooks"][0]["clientConfig"]["caBundle"]),
                        ca,
                        "{name}: the API server trusts the CA that signed the webhook's certificate"
                    );
                }
            }
        }

        match name.as_str() {
            "postgres-events-certmanager" => {
                let deployment = find(&docs, "Deployment", "rel-portcullis-control", "portcullis")
                    .expect("control");
                assert_eq!(deployment["spec"]["replicas"], 3);
                assert!(
                    find(
                        &docs,
                        "PodDisruptionBudget",
                        "rel-portcullis-control",
                        "portcullis"
                    )
                    .is_some()
                );
                let certificate = find(&docs, "Certificate", "rel-portcullis-tls", "portcullis")
                    .expect("cert-manager");
                assert_eq!(certificate["spec"]["issuerRef"]["kind"], "ClusterIssuer");
                assert!(
                    certificate["spec"]["dnsNames"]
                        .as_array()
                        .expect("names")
                        .contains(&Value::from("rel-portcullis-control.portcullis.svc"))
                );
                let webhook = find(
                    &docs,
                    "MutatingWebhookConfiguration",
                    "rel-portcullis-inject",
                    "",
                )
                .expect("webhook");
                assert_eq!(
                    webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
                    "portcullis/rel-portcullis-tls"
                );
                assert_eq!(webhook["webhooks"][0]["failurePolicy"], "Ignore");
                assert_eq!(webhook["webhooks"][0]["timeoutSeconds"], 3);
                let monitor = find(&docs, "PodMonitor", "rel-portcullis-sidecars", "portcullis")
                    .expect("PodMonitor");
                assert_eq!(
                    monitor["spec"]["selector"]["matchLabels"]["portcullis.dev/injected"],
                    "true"
                );
                assert_eq!(
                    monitor["spec"]["podMetricsEndpoints"][0]["port"],
                    "portcullis-ops"
                );
                assert!(find(&docs, "ServiceMonitor", "rel-portcullis", "portcullis").is_some());
                assert!(
                    find(
                        &docs,
                        "NetworkPolicy",
                        "rel-portcullis-control",
                        "portcullis"
                    )
                    .is_some()
                );
                assert_eq!(
                    control_config["store"]["postgres_url_file"],
                    "/etc/portcullis/store/url"
                );
                assert_eq!(control_config["events"]["sqs"][0]["region"], "eu-west-1");
                let sa = find(
                    &docs,
                    "ServiceAccount",
                    "rel-portcullis-control",
                    "portcullis",
                )
                .expect("sa");
                assert!(sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].is_string());
            }
            "gateway" => {
                assert!(
                    find(
                        &docs,
                        "MutatingWebhookConfiguration",
                        "rel-portcullis-inject",
                        ""
                    )
                    .is_none()
                );
                let gateway = find(&docs, "Deployment", "rel-portcullis-gateway", "portcullis")
                    .expect("gateway");
                assert!(
                    gateway["spec"]["replicas"].is_null(),
                    "the HPA owns the replica count"
                );
                assert!(
                    find(
                        &docs,
                        "HorizontalPodAutoscaler",
                        "rel-portcullis-gateway",
                        "portcullis"
                    )
                    .is_some()
                );
                let config: Value = serde_saphyr::from_str(
                    find(&docs, "ConfigMap", "rel-portcullis-gateway", "portcullis")
                        .expect("config")["data"]["portcullis.yaml"]
                        .as_str()
                        .expect("yaml"),
                )
                .expect("yaml");
                assert_eq!(config["upstreams"][0]["path_prefix"], "/orders");
                assert_eq!(config["upstreams"][1]["host"], "billing.example.com");
            }
            "older-cluster" => {
                assert_eq!(inject["native_mode"], "false");
                assert!(
                    find(&docs, "Deployment", "rel-portcullis-gateway", "portcullis")
                        .expect("gateway")["spec"]["replicas"]
                        .is_number()
                );
            }
            "sidecars-sqlite" | "defaults" => {
                let deployment = find(&docs, "Deployment", "rel-portcullis-control", "portcullis")
                    .expect("control");
                assert_eq!(deployment["spec"]["replicas"], 1, "SQLite: one writer");
                assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
                assert!(
                    find(
                        &docs,
                        "PersistentVolumeClaim",
                        "rel-portcullis-control-data",
                        "portcullis"
                    )
                    .is_some()
                );
            }
            other => panic!("a values combination without checks: {other}"),
        }
    }

    // A change of configuration changes the checksum, so the pods roll.
    let checksum = |sets: &[&str]| {
        let docs = documents(&render(&[], sets, "1.31.0").expect("render"));
        find(&docs, "Deployment", "rel-portcullis-control", "portcullis").expect("control")["spec"]
            ["template"]["metadata"]["annotations"]["checksum/config"]
            .clone()
    };
    assert_eq!(checksum(&[]), checksum(&[]));
    assert_ne!(checksum(&[]), checksum(&["auth.audiences={api,admin}"]));

    // Values the schema refuses, each named.
    for (set, named) in [
        ("gateway.enabled=true", "gateway.upstreams"),
        ("webhook.failurePolicy=Sometimes", "webhook.failurePolicy"),
        (
            "sidecar.namespaces={Not_A_Namespace}",
            "sidecar.namespaces.0",
        ),
        ("tls.certManager.enabled=true", "tls.certManager"),
        ("colour=blue", "colour"),
    ] {
        let error = render(&[], &[set], "1.31.0").expect_err(set);
        assert!(error.contains(named), "{set}: {error}");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn the_kubernetes_examples_validate_inject_and_configure() {
    let dir = crate::harness::temp_dir("examples");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/kubernetes");
    let read = |name: &str| std::fs::read_to_string(examples.join(name)).expect("example");

    // The app as written, and as `portcullis inject` makes it.
    let app = read("sidecar-app.yaml");
    kubernetes_validate(&dir, "sidecar-app.yaml", &app, "1.30.0");
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis-under-test"))
        .arg("inject")
        .arg(examples.join("sidecar-app.yaml"))
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("Deployment/orders: injected"));
    let injected = String::from_utf8_lossy(&out.stdout).into_owned();
    kubernetes_validate(&dir, "sidecar-app-injected.yaml", &injected, "1.30.0");
    let docs = documents(&injected);
    let orders = find(&docs, "Deployment", "orders", "shop").expect("orders");
    let sidecar = &orders["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(
        sidecar["ports"][0]["name"], "http",
        "the Service's target port"
    );
    let network =
        find(&docs, "NetworkPolicy", "orders-through-portcullis", "shop").expect("policy");
    assert_eq!(
        network["spec"]["ingress"][0]["ports"][0]["port"], sidecar["ports"][0]["containerPort"],
        "the NetworkPolicy admits the sidecar's port"
    );

    // The plain control plane: valid manifests, a configuration the binary reads, and a
    // sidecar configuration it runs with.
    let plain = read("plain/control.yaml");
    kubernetes_validate(&dir, "control.yaml", &plain, "1.30.0");
    let docs = documents(&plain);
    let config = find(&docs, "ConfigMap", "portcullis-control", "portcullis").expect("config")["data"]
        ["portcullis.yaml"]
        .as_str()
        .expect("yaml")
        .to_owned();
    binary_accepts(&dir, "plain-control.yaml", &config);
    binary_accepts(&dir, "plain-sidecar.yaml", &read("plain/sidecar.yaml"));

    // The edge gateway's values with the chart.
    let values = examples.join("edge-gateway.values.yaml");
    let rendered = render(&[values.as_path()], &[], "1.31.0").expect("renders");
    kubernetes_validate(&dir, "edge-gateway.yaml", &rendered, "1.31.0");
    let docs = documents(&rendered);
    let gateway =
        find(&docs, "ConfigMap", "rel-portcullis-gateway", "portcullis").expect("gateway");
    binary_accepts(
        &dir,
        "edge-gateway-config.yaml",
        gateway["data"]["portcullis.yaml"].as_str().expect("yaml"),
    );
    assert!(
        find(
            &docs,
            "HorizontalPodAutoscaler",
            "rel-portcullis-gateway",
            "portcullis"
        )
        .is_some()
    );
    std::fs::remove_dir_all(dir).ok();
}
