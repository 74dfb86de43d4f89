//! Sidecar injection, as Kubernetes would use it: the webhook of a real `portcullis
//! control` over TLS answers real AdmissionReview documents (`admission/*.json`: pods as
//! the ReplicaSet controller sends them); each patch is applied with a JSON Patch library
//! and the resulting Pod validated against the Kubernetes schema by `kubernetes-validate`
//! (PyPI, run as `python3 -m kubernetes_validate`; installed by tests/setup). `portcullis inject` does the same to manifests. Then the
//! injected sidecar runs as a local process with exactly the command, arguments,
//! environment and mounted files of the patch, in front of a real upstream, following the
//! control plane over TLS.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use serde_json::{Value, json};

use crate::cluster::{Pki, wait_until};
use crate::harness::{
    AUDIENCE, ISSUER, Keys, PINNED_TIME, Portcullis, Upstream, free_port, raw_request, rt,
};
use crate::world;

/// The Kubernetes version the documents are validated against (native sidecars: ≥ 1.29).
const KUBERNETES: &str = "1.30.0";

/// The pod as stored: the API server names a `generateName` pod after admission.
fn named(pod: &Value) -> String {
    let mut pod = pod.clone();
    if pod["metadata"]["name"].is_null() {
        let prefix = pod["metadata"]["generateName"].as_str().unwrap_or("pod-");
        pod["metadata"]["name"] = json!(format!("{prefix}x7k2p"));
    }
    pod.to_string()
}

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("e2e/admission/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("json")
}

/// Validates `documents` (YAML or JSON text) with `kubernetes-validate --strict` against
/// `version`; panics with its output when they do not validate.
pub(crate) fn kubernetes_validate(dir: &Path, name: &str, documents: &str, version: &str) {
    let file = dir.join(name);
    std::fs::write(&file, documents).expect("write");
    let out = Command::new("python3")
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "--kubernetes-version",
            version,
        ])
        .arg(&file)
        .output()
        .expect("kubernetes-validate runs (tests/setup installs it from PyPI)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{name} does not validate:\n{text}\n{documents}"
    );
    assert!(text.contains("passed"), "{text}");
}

/// The webhook of a control plane over TLS: posts `review`, returns the answer's
/// `response`.
struct Webhook<'a> {
    client: reqwest::Client,
    control: &'a Portcullis,
}

impl Webhook<'_> {
    fn review(&self, review: &Value) -> Value {
        let url = format!("https://localhost:{}/inject", self.control.admin.port());
        rt().block_on(async {
            let response = self
                .client
                .post(url)
                .header("content-type", "application/json")
                .body(review.to_string())
                .send()
                .await
                .expect("the webhook answers over TLS");
            assert_eq!(response.status(), 200);
            let answer: Value =
                serde_json::from_str(&response.text().await.expect("body")).expect("json");
            assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
            assert_eq!(answer["kind"], "AdmissionReview");
            assert_eq!(answer["response"]["uid"], review["request"]["uid"]);
            answer["response"].clone()
        })
    }

    /// The pod of `review` with the answer's patch applied, as the API server would.
    fn patched(&self, review: &Value) -> (Value, Value) {
        let response = self.review(review);
        assert_eq!(response["allowed"], true, "{response}");
        assert_eq!(response["patchType"], "JSONPatch", "{response}");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(response["patch"].as_str().expect("patch"))
            .expect("base64");
        let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("a JSON Patch");
        let mut pod = review["request"]["object"].clone();
        json_patch::patch(&mut pod, &patch).expect("the patch applies");
        (pod, serde_json::to_value(&patch).expect("patch"))
    }
}

fn container<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container `{name}` in {list}"))
}

fn env_of(container: &Value) -> Vec<(String, String)> {
    container["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().expect("name").to_owned(),
                e["value"].as_str().expect("value").to_owned(),
            )
        })
        .collect()
}

/// `portcullis control` with its admin API over TLS and the injection webhook on; the
/// sidecars it injects follow it at `https://127.0.0.1:<admin port>`.
fn control_with_webhook(upstream: &Upstream, keys: &Keys, pki: &Pki) -> Portcullis {
    Portcullis::start_control(
        upstream,
        keys,
        &format!(
            "admin:\n  address: {{admin}}\n  tls:\n    cert_file: {}\n    key_file: {}\ninject:\n  webhook: true\n  image: registry.example/portcullis:test\n  control_plane_url: https://{{admin}}\n  excluded_namespaces: [kube-system, kube-node-lease, portcullis]\n",
            pki.server_cert.display(),
            pki.server_key.display(),
        ),
    )
}

#[test]
fn the_webhook_injects_real_admission_reviews_and_refuses_what_it_cannot_inject() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let dir = crate::harness::temp_dir("webhook");
    let pki = Pki::new(&dir);
    let control = control_with_webhook(&upstream, &keys, &pki);
    let webhook = Webhook {
        client: pki.client(None),
        control: &control,
    };

    // A pod of a Deployment: a native sidecar, the app's port taken over, its probe moved.
    let review = fixture("plain");
    let (pod, patch) = webhook.patched(&review);
    kubernetes_validate(&dir, "plain.json", &named(&pod), KUBERNETES);
    let paths: Vec<&str> = patch
        .as_array()
        .expect("ops")
        .iter()
        .map(|op| op["path"].as_str().expect("path"))
        .collect();
    assert_eq!(
        paths,
        [
            "/metadata/labels",
            "/metadata/annotations",
            "/spec/initContainers",
            "/spec/containers",
            "/spec/volumes"
        ],
        "only what injection touches: {patch}"
    );
    assert_eq!(
        pod["metadata"]["annotations"]["portcullis.dev/status"],
        "injected"
    );
    assert_eq!(pod["metadata"]["labels"]["portcullis.dev/injected"], "true");
    let sidecar = container(&pod["spec"]["initContainers"], "portcullis");
    assert_eq!(sidecar["restartPolicy"], "Always", "a native sidecar");
    assert_eq!(sidecar["startupProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(sidecar["image"], "registry.example/portcullis:test");
    assert_eq!(
        sidecar["ports"][0],
        json!({"name": "http", "containerPort": 8080, "protocol": "TCP"}),
        "the Service's target port, by number and name, is the sidecar's"
    );
    let hardened = &sidecar["securityContext"];
    assert_eq!(hardened["runAsNonRoot"], true);
    assert_eq!(hardened["readOnlyRootFilesystem"], true);
    assert_eq!(hardened["allowPrivilegeEscalation"], false);
    assert_eq!(hardened["capabilities"]["drop"], json!(["ALL"]));
    let app = container(&pod["spec"]["containers"], "web");
    assert_eq!(
        app["ports"],
        json!([{"containerPort": 8081, "protocol": "TCP"}])
    );
    assert_eq!(
        app["readinessProbe"]["httpGet"]["port"], 8081,
        "the probe follows the app"
    );
    let env = env_of(sidecar);
    assert!(env.contains(&(
        String::from("PORTCULLIS_UPSTREAMS__0__ADDRESS"),
        String::from("127.0.0.1:8081")
    )));
    // Injecting the injected pod again changes nothing (reinvocationPolicy: IfNeeded).
    let mut again = review.clone();
    again["request"]["object"] = pod.clone();
    let response = webhook.review(&again);
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none(), "{response}");

    // The status annotation alone, without the sidecar, does not pass for injected: a pod
    // cannot opt out of enforcement by claiming it has it.
    let mut claims = fixture("plain");
    claims["request"]["object"]["metadata"]["annotations"]["portcullis.dev/status"] =
        json!("injected");
    let (claimed, _) = webhook.patched(&claims);
    container(&claimed["spec"]["initContainers"], "portcullis");

    // Init containers, other containers, annotations and volumes of its own: kept, the
    // sidecar after the existing init containers, the pod's settings applied.
    let (pod, _) = webhook.patched(&fixture("init-containers"));
    kubernetes_validate(&dir, "init-containers.json", &named(&pod), KUBERNETES);
    let init: Vec<&str> = pod["spec"]["initContainers"]
        .as_array()
        .expect("init")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(init, ["migrate", "portcullis"]);
    let sidecar = container(&pod["spec"]["initContainers"], "portcullis");
    assert!(env_of(sidecar).contains(&(
        String::from("PORTCULLIS_ENFORCEMENT__MODE"),
        String::from("shadow")
    )));
    assert_eq!(sidecar["resources"]["limits"]["memory"], "128Mi");
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/scrape"], "true",
        "existing annotations kept"
    );
    let volumes: Vec<&str> = pod["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .map(|v| v["name"].as_str().expect("name"))
        .collect();
    assert!(
        volumes.starts_with(&["kube-api-access-x7k2p", "cache"]),
        "{volumes:?}"
    );
    assert_eq!(
        container(&pod["spec"]["containers"], "orders")["ports"][1]["name"],
        "grpc"
    );

    // Opted out, and an excluded namespace: allowed as they are.
    for name in ["opted-out", "excluded-namespace"] {
        let response = webhook.review(&fixture(name));
        assert_eq!(response["allowed"], true, "{name}: {response}");
        assert!(response.get("patch").is_none(), "{name}: {response}");
    }
    // Not a pod, or not a creation: allowed untouched.
    let mut update = fixture("plain");
    update["request"]["operation"] = json!("UPDATE");
    assert!(webhook.review(&update).get("patch").is_none());

    // Ports that clash: refused with every reason, nothing patched.
    let response = webhook.review(&fixture("port-clash"));
    assert_eq!(response["allowed"], false, "{response}");
    assert!(response.get("patch").is_none());
    let message = response["status"]["message"].as_str().expect("message");
    assert!(message.contains("port 8080 is both"), "{message}");
    assert!(
        message.contains("port 8481: container `metrics`"),
        "{message}"
    );
    // And an annotation nobody knows (a typo) is refused, not ignored.
    let mut typo = fixture("plain");
    typo["request"]["object"]["metadata"]["annotations"]["portcullis.dev/app-prot"] = json!("1");
    let response = webhook.review(&typo);
    assert_eq!(response["allowed"], false, "{response}");
    assert!(
        response["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("portcullis.dev/app-prot")),
        "{response}"
    );
    // A body that is not a review: 400.
    let status = rt().block_on(async {
        webhook
            .client
            .post(format!("https://localhost:{}/inject", control.admin.port()))
            .body("{")
            .send()
            .await
            .expect("answer")
            .status()
    });
    assert_eq!(status, 400);
    for (outcome, count) in [
        ("injected", 3.0),
        ("skipped", 4.0),
        ("refused", 2.0),
        ("invalid", 1.0),
    ] {
        assert_eq!(
            control.metric(
                "portcullis_sidecar_injections_total",
                &[("outcome", outcome)]
            ),
            Some(count),
            "{outcome}"
        );
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn portcullis_inject_rewrites_every_kind_of_workload_offline() {
    let dir = crate::harness::temp_dir("inject-cli");
    let pod_template = r#"
    metadata:
      labels: {app: web}
      annotations: {portcullis.dev/app-port: "8081"}
    spec:
      containers:
        - name: web
          image: registry.example/web:1.4
          ports: [{name: http, containerPort: 8080}]"#;
    let indent = |text: &str, by: usize| {
        text.lines()
            .map(|l| {
                if l.is_empty() {
                    String::from("\n")
                } else {
                    format!("{}{l}\n", " ".repeat(by))
                }
            })
            .collect::<String>()
    };
    let workload = |kind: &str, api: &str| {
        format!(
            "---\napiVersion: {api}\nkind: {kind}\nmetadata: {{name: web-{}, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  template:{}",
            kind.to_lowercase(),
            indent(pod_template, 0)
        )
    };
    let mut manifests = String::new();
    for (kind, api) in [
        ("Deployment", "apps/v1"),
        ("StatefulSet", "apps/v1"),
        ("DaemonSet", "apps/v1"),
    ] {
        manifests.push_str(&workload(kind, api));
    }
    manifests = manifests.replace(
        "kind: StatefulSet\nmetadata: {name: web-statefulset, namespace: shop}\nspec:\n",
        "kind: StatefulSet\nmetadata: {name: web-statefulset, namespace: shop}\nspec:\n  serviceName: web\n",
    );
    manifests.push_str(&format!(
        "---\napiVersion: batch/v1\nkind: Job\nmetadata: {{name: migrate, namespace: shop}}\nspec:\n  template:{}\n      restartPolicy: Never\n",
        indent(pod_template, 0)
    ));
    manifests.push_str(&format!(
        "---\napiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: nightly, namespace: shop}}\nspec:\n  schedule: \"0 3 * * *\"\n  jobTemplate:\n    spec:\n      template:{}          restartPolicy: OnFailure\n",
        indent(pod_template, 4)
    ));
    manifests.push_str(
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: debug\n  namespace: shop\n  annotations: {portcullis.dev/app-port: \"8081\"}\nspec:\n  containers:\n    - name: debug\n      image: registry.example/debug:1\n      ports: [{containerPort: 8080}]\n",
    );
    manifests.push_str("---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: http}]\n");
    let input = dir.join("app.yaml");
    std::fs::write(&input, &manifests).expect("manifests");
    kubernetes_validate(&dir, "input.yaml", &manifests, KUBERNETES);

    let run = |args: &[&str], stdin: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis-under-test"));
        command
            .arg("inject")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("runs");
        if let Some(text) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())
                .expect("write");
        }
        drop(child.stdin.take());
        child.wait_with_output().expect("output")
    };
    let out = run(&[input.to_str().expect("path")], None);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    kubernetes_validate(&dir, "injected.yaml", &stdout, KUBERNETES);
    for workload in [
        "Deployment/web-deployment",
        "StatefulSet/web-statefulset",
        "DaemonSet/web-daemonset",
        "Job/migrate",
        "CronJob/nightly",
        "Pod/debug",
    ] {
        assert!(
            stderr.contains(&format!("{workload}: injected")),
            "{workload}:\n{stderr}"
        );
    }
    assert_eq!(
        stdout.matches("restartPolicy: Always").count(),
        6,
        "{stdout}"
    );
    assert_eq!(stdout.matches("portcullis.dev/status: injected").count(), 6);
    assert!(
        stdout.contains("kind: Service"),
        "other documents pass through"
    );

    // From standard input, for an older cluster: a plain container first in the pod.
    let out = run(&["-", "--kubernetes-version", "1.28"], Some(&manifests));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let older = String::from_utf8_lossy(&out.stdout).into_owned();
    kubernetes_validate(&dir, "injected-1.28.yaml", &older, "1.28.0");
    assert_eq!(older.matches("restartPolicy: Always").count(), 0, "{older}");
    assert_eq!(older.matches("- name: portcullis\n").count(), 6);

    // Injected manifests go through again unchanged.
    let out = run(&["-"], Some(&stdout));
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), stdout);
    assert!(String::from_utf8_lossy(&out.stderr).contains("skipped: already injected"));

    // One workload that cannot be injected: every problem named by document, nothing out.
    let broken = manifests.replacen(
        "portcullis.dev/app-port: \"8081\"",
        "portcullis.dev/app-port: \"8080\"",
        1,
    ) + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: no-port}\nspec:\n  containers: [{name: a, image: b}]\n";
    let out = run(&["-"], Some(&broken));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing half-written");
    assert!(
        stderr.contains("document 1 (Deployment/web-deployment): port 8080 is both"),
        "{stderr}"
    );
    assert!(
        stderr.contains("(Pod/no-port): the app container declares no TCP port"),
        "{stderr}"
    );
    assert!(
        stderr.contains("(Pod/no-port): annotation `portcullis.dev/app-port` is required"),
        "{stderr}"
    );
    // Bad YAML names the place.
    let out = run(&["-"], Some("kind: Pod\nmetadata: [\n"));
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(dir).ok();
}

/// A running sidecar, killed when dropped.
struct Sidecar(std::process::Child, PathBuf);

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Sidecar {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

#[test]
fn the_injected_sidecar_runs_as_the_patch_says_and_enforces() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let dir = crate::harness::temp_dir("injected-sidecar");
    let pki = Pki::new(&dir);
    let control = control_with_webhook(&upstream, &keys, &pki);
    control.seed(world::import());
    let webhook = Webhook {
        client: pki.client(None),
        control: &control,
    };

    // The pod: its app listens on the upstream's port once the sidecar takes the one the
    // Service targets; ports free on this machine.
    let (listen, ops) = (free_port(), free_port());
    let mut review = fixture("plain");
    let pod = &mut review["request"]["object"];
    pod["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(listen);
    pod["metadata"]["annotations"] = json!({
        "portcullis.dev/app-port": upstream.addr.port().to_string(),
        "portcullis.dev/ops-port": ops.to_string(),
    });
    let (pod, _) = webhook.patched(&review);
    kubernetes_validate(&dir, "sidecar-pod.json", &named(&pod), KUBERNETES);
    let sidecar = container(&pod["spec"]["initContainers"], "portcullis").clone();

    // Each volume of the pod as a directory here, holding what its ConfigMap or Secret
    // would: the sidecar's configuration and route map, the CA, the token.
    let root = dir.join("pod");
    let mounts: Vec<(String, PathBuf)> = sidecar["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .map(|m| {
            let name = m["name"].as_str().expect("name");
            let local = root.join(name);
            std::fs::create_dir_all(&local).expect("mount dir");
            (m["mountPath"].as_str().expect("path").to_owned(), local)
        })
        .collect();
    let local = |mount: &str| {
        mounts
            .iter()
            .find(|(path, _)| path == mount)
            .map(|(_, local)| local.clone())
            .unwrap_or_else(|| panic!("no volume mounted at {mount}"))
    };
    let config_dir = local("/etc/portcullis/config");
    std::fs::write(config_dir.join("jwks.json"), keys.jwks.to_string()).expect("jwks");
    std::fs::write(
        config_dir.join("portcullis.yaml"),
        format!(
            "auth:\n  issuer: {ISSUER}\n  audiences: [{AUDIENCE}]\n  jwks_file: {}\ncontext:\n  fixed_time: \"{PINNED_TIME}\"\n  trusted_hops: [127.0.0.1/32]\ncontrol_plane:\n  heartbeat_ms: 200\nshutdown:\n  drain_delay_seconds: 1\n  grace_period_seconds: 1\n  runtime_timeout_seconds: 1\n",
            config_dir.join("jwks.json").display()
        ),
    )
    .expect("config");
    std::fs::copy(
        crate::harness::policies_dir().join("routes.yaml"),
        config_dir.join("routes.yaml"),
    )
    .expect("routes");
    std::fs::copy(&pki.ca, local("/etc/portcullis/ca").join("ca.crt")).expect("ca");
    std::fs::copy(
        control.dir.join("data/admin-token"),
        local("/var/run/secrets/portcullis").join("token"),
    )
    .expect("token");
    let to_local = |value: &str| {
        mounts
            .iter()
            .find_map(|(path, local)| {
                value
                    .strip_prefix(path.as_str())
                    .map(|rest| format!("{}{rest}", local.display()))
            })
            .unwrap_or_else(|| value.to_owned())
    };

    // Exactly the container's arguments and environment (paths under its mounts mapped to
    // the directories above), and nothing else: no HOME, no PATH, as in the image
    // (deploy/Dockerfile).
    let args: Vec<String> = sidecar["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| to_local(a.as_str().expect("arg")))
        .collect();
    let env: Vec<(String, String)> = env_of(&sidecar)
        .into_iter()
        .map(|(name, value)| (name, to_local(&value)))
        .collect();
    // As in the image: the container's uid (65532, not root; when the tests run as root),
    // the files as Kubernetes mounts them (a Secret's files 0644, read-only mounts, only
    // the data volume writable by that uid), started in `/`, where it cannot write.
    let log = dir.join("sidecar.log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis-under-test"));
    command
        .args(&args)
        .env_clear()
        .envs(env)
        .current_dir("/")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"));
    let as_root = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").map(|m| m.uid()).ok() == Some(0)
    };
    {
        use std::os::unix::fs::PermissionsExt;
        let token = local("/var/run/secrets/portcullis").join("token");
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("mode");
        for dir in [&dir, &root] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("mode");
        }
    }
    if as_root {
        use std::os::unix::process::CommandExt;
        std::os::unix::fs::chown(local("/var/lib/portcullis"), Some(65532), Some(65532))
            .expect("chown the data volume");
        command.uid(65532).gid(65532);
    }
    let child = command.spawn().expect("the sidecar starts");
    let sidecar_process = Sidecar(child, log);
    let ops_addr = format!("127.0.0.1:{ops}").parse().expect("addr");
    wait_until(
        "the injected sidecar's startup probe (/readyz)",
        || sidecar_process.log(),
        || raw_request(ops_addr, "GET", "/readyz", &[]).is_some_and(|r| r.status == 200),
    );

    if as_root {
        use std::os::unix::fs::MetadataExt;
        let state = local("/var/lib/portcullis").join("last-known-good.json");
        let owner = std::fs::metadata(&state).map(|m| m.uid());
        assert_eq!(
            owner.ok(),
            Some(65532),
            "the state written as the container's uid"
        );
    }

    // In front of the app: enforcing, and following a change made over TLS.
    let data_addr = format!("127.0.0.1:{listen}").parse().expect("addr");
    let status_of = |token: &str, id: &str| {
        raw_request(
            data_addr,
            "GET",
            "/v1/spaces/s1/documents/d1",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("x-test-id", id),
            ],
        )
        .map_or(0, |r| r.status)
    };
    let alice = keys.token("alice", json!({}));
    let zoe = keys.token("zoe", json!({}));
    assert_eq!(status_of(&alice, "alice"), 200, "{}", sidecar_process.log());
    assert_eq!(
        upstream.seen_with("alice").len(),
        1,
        "the app got alice's request"
    );
    assert_eq!(status_of(&zoe, "zoe"), 403, "zoe, unknown, refused");
    assert!(
        upstream.seen_with("zoe").is_empty(),
        "and the app never saw it"
    );
    let admin = pki.client(None);
    let token = std::fs::read_to_string(control.dir.join("data/admin-token")).expect("token");
    for (method, path, body) in [
        (
            "PUT",
            "/v1/principals/users/zoe",
            json!({"kind": "user", "id": "zoe", "tenant": "t1"}),
        ),
        (
            "POST",
            "/v1/assignments",
            json!({"id": "zoe-guest", "principal": "User::\"zoe\"", "role": "guest", "scope": {"entity": "Space::\"s1\""}}),
        ),
    ] {
        let status = rt().block_on(async {
            admin
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
                    format!("https://localhost:{}{path}", control.admin.port()),
                )
                .bearer_auth(token.trim())
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .expect("admin call")
                .status()
                .as_u16()
        });
        assert!(status == 200 || status == 201, "{method} {path}: {status}");
    }
    wait_until(
        "the grant reaches the injected sidecar",
        || sidecar_process.log(),
        || status_of(&zoe, "zoe-granted") == 200,
    );

    // A policy change: a quarantine of d1, put through the API with the ETag just read.
    let policies = format!("https://localhost:{}/v1/policies", control.admin.port());
    let (etag, set) = rt().block_on(async {
        let r = admin
            .get(&policies)
            .bearer_auth(token.trim())
            .send()
            .await
            .expect("GET /v1/policies");
        let etag = r.headers()["etag"].to_str().expect("etag").to_owned();
        let set: Value = serde_json::from_str(&r.text().await.expect("body")).expect("json");
        (etag, set)
    });
    let mut files = set["files"].clone();
    files.as_array_mut().expect("files").push(json!({
        "name": "quarantine.cedar",
        "text": "@id(\"quarantine-d1\")\nforbid(principal, action, resource == Document::\"d1\");\n"
    }));
    let status = rt().block_on(async {
        admin
            .put(&policies)
            .bearer_auth(token.trim())
            .header("if-match", etag)
            .header("content-type", "application/json")
            .body(json!({"files": files}).to_string())
            .send()
            .await
            .expect("PUT /v1/policies")
            .status()
            .as_u16()
    });
    assert_eq!(status, 200);
    wait_until(
        "the policy change reaches the injected sidecar",
        || sidecar_process.log(),
        || status_of(&alice, "alice-quarantined") == 403,
    );
    assert_eq!(status_of(&alice, "alice-after-quarantine"), 403);
    assert!(
        upstream.seen_with("alice-after-quarantine").is_empty(),
        "refused, not forwarded"
    );
    drop(sidecar_process);
    std::fs::remove_dir_all(dir).ok();
}
