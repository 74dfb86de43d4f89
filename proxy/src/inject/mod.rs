//! Sidecar injection: one transformation of a pod template (a Pod's, or a workload's
//! `spec.template`), used by the mutating webhook ([`webhook`], served by `control`) and by
//! `portcullis inject` on manifests ([`manifests`]).
//!
//! Ports, not iptables: the sidecar takes the port the app's Service targets (the app
//! container's first declared port, or `portcullis.dev/listen-port`) and forwards to
//! `127.0.0.1:<portcullis.dev/app-port>`, where the app must listen instead. The app
//! container's port entry is moved to the app port and loses its name to the sidecar, so a
//! Service targeting the port by number or by name reaches the sidecar; the app's HTTP and
//! TCP probes on that port are moved to the app port. No capability, no init container
//! rewriting traffic.
//!
//! Per pod (annotations): `portcullis.dev/app-port` (required), `listen-port`, `ops-port`,
//! `container` (the app container; default the first), `mode` (`enforce` or `shadow`),
//! `cpu-request`, `memory-request`, `cpu-limit`, `memory-limit`. The label
//! `portcullis.dev/inject: "false"` (or the annotation) opts a pod out;
//! `portcullis.dev/status: injected` marks an injected one (injecting again changes nothing;
//! the annotation without the sidecar container does not count). A pod that cannot be
//! injected correctly is refused with every reason, never half-changed.

pub mod manifests;
pub mod webhook;

use serde_json::{Map, Value, json};

use crate::config::{InjectConfig, NativeMode, is_quantity, kubernetes_minor};

/// The annotation and label prefix.
pub const PREFIX: &str = "portcullis.dev/";
/// The status annotation of an injected pod.
pub const STATUS: &str = "portcullis.dev/status";
/// The opt-out label (and the namespace label that turns the webhook on).
pub const INJECT_LABEL: &str = "portcullis.dev/inject";
/// The label an injected pod carries (what a PodMonitor selects).
pub const INJECTED_LABEL: &str = "portcullis.dev/injected";
/// The sidecar container's name.
pub const SIDECAR: &str = "portcullis";
/// Where the sidecar's files are mounted.
pub const CONFIG_DIR: &str = "/etc/portcullis/config";
/// The control plane's CA.
pub const CA_DIR: &str = "/etc/portcullis/ca";
/// The control-plane token.
pub const TOKEN_DIR: &str = "/var/run/secrets/portcullis";
/// The sidecar's writable state (last-known-good file).
pub const DATA_DIR: &str = "/var/lib/portcullis";
/// The unprivileged user the sidecar runs as (distroless' `nonroot`).
pub const SIDECAR_UID: u64 = 65532;

/// Every annotation a pod may carry (anything else under the prefix is refused, so a typo
/// is not silently ignored).
const ANNOTATIONS: [&str; 11] = [
    "status",
    "inject",
    "app-port",
    "listen-port",
    "ops-port",
    "container",
    "mode",
    "cpu-request",
    "memory-request",
    "cpu-limit",
    "memory-limit",
];

/// Volumes the sidecar adds.
const VOLUMES: [&str; 4] = [
    "portcullis-config",
    "portcullis-ca",
    "portcullis-token",
    "portcullis-data",
];

/// What injection did with a pod template.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The template with the sidecar.
    Injected(Value),
    /// Left as it is, and why.
    Skipped(&'static str),
}

/// What injecting one pod will do, once checked.
struct Plan {
    containers: Vec<Value>,
    init_containers: Vec<Value>,
    volumes: Vec<Value>,
    /// The app container, in `containers`.
    app_index: usize,
    /// The port the sidecar takes (the one the Service targets).
    listen: u16,
    /// The port the app moves to.
    app_port: u16,
    /// The sidecar's ops port.
    ops: u16,
    /// `enforce` or `shadow`, when the pod says.
    mode: Option<String>,
    resources: crate::config::SidecarResources,
}

/// The value of the annotation `portcullis.dev/<name>`.
fn annotation_in<'a>(annotations: Option<&'a Map<String, Value>>, name: &str) -> Option<&'a str> {
    annotations
        .and_then(|a| a.get(&format!("{PREFIX}{name}")))
        .and_then(Value::as_str)
}

/// A container's or volume's name.
fn name_of(c: &Value) -> String {
    c.get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Injects sidecars as configured.
#[derive(Debug, Clone)]
pub struct Injector {
    settings: InjectConfig,
}

impl Injector {
    /// An injector with `settings` (validated with the configuration).
    pub fn new(settings: InjectConfig) -> Self {
        Self { settings }
    }

    /// Whether the sidecar is a native one.
    fn native(&self) -> bool {
        match self.settings.native_mode {
            NativeMode::Always => true,
            NativeMode::Never => false,
            NativeMode::Auto => self
                .settings
                .kubernetes_version
                .as_deref()
                .and_then(kubernetes_minor)
                .is_none_or(|minor| minor >= 29),
        }
    }

    /// Injects the sidecar into `template` (`{metadata, spec}` of a pod) in `namespace`; the
    /// error lists every reason it cannot be injected correctly.
    pub fn inject(
        &self,
        template: &Value,
        namespace: Option<&str>,
    ) -> Result<Outcome, Vec<String>> {
        let metadata = template
            .get("metadata")
            .cloned()
            .unwrap_or_else(|| json!({}));
        let annotations = metadata.get("annotations").and_then(Value::as_object);
        let labels = metadata.get("labels").and_then(Value::as_object);
        let annotation = |name: &str| annotation_in(annotations, name);
        // Injected means the annotation and the sidecar: the annotation alone (written by
        // hand, or copied from an injected pod) must not let a pod run unprotected.
        let has_sidecar = ["/spec/initContainers", "/spec/containers"]
            .iter()
            .any(|list| {
                template
                    .pointer(list)
                    .and_then(Value::as_array)
                    .is_some_and(|l| l.iter().any(|c| name_of(c) == SIDECAR))
            });
        if annotation("status") == Some("injected") && has_sidecar {
            return Ok(Outcome::Skipped("already injected"));
        }
        // The label, as documented; the annotation of the same name is honoured too.
        if labels
            .and_then(|l| l.get(INJECT_LABEL))
            .and_then(Value::as_str)
            == Some("false")
            || annotation("inject") == Some("false")
        {
            return Ok(Outcome::Skipped("opted out by its label"));
        }
        if namespace.is_some_and(|ns| self.settings.excluded_namespaces.iter().any(|e| e == ns)) {
            return Ok(Outcome::Skipped("its namespace is excluded"));
        }

        let plan = self.plan(template, annotations)?;
        Ok(Outcome::Injected(self.apply(template, plan)?))
    }

    /// Checks `template` against what injection needs, and what it will do: every problem,
    /// or the plan.
    fn plan(
        &self,
        template: &Value,
        annotations: Option<&Map<String, Value>>,
    ) -> Result<Plan, Vec<String>> {
        let annotation = |name: &str| annotation_in(annotations, name);
        let mut problems = Vec::new();
        for key in annotations.into_iter().flat_map(|a| a.keys()) {
            if let Some(name) = key.strip_prefix(PREFIX)
                && !ANNOTATIONS.contains(&name)
            {
                problems.push(format!(
                    "annotation `{key}`: unknown; known: {}",
                    ANNOTATIONS.map(|a| format!("{PREFIX}{a}")).join(", ")
                ));
            }
        }
        let spec = template.get("spec").cloned().unwrap_or_else(|| json!({}));
        if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
            problems.push(String::from(
                "spec.hostNetwork: a pod on the node's network cannot be injected (the sidecar's ports would be the node's)",
            ));
        }
        let containers = spec
            .get("containers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let init_containers = spec
            .get("initContainers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if containers
            .iter()
            .chain(&init_containers)
            .any(|c| name_of(c) == SIDECAR)
        {
            problems.push(format!(
                "a container named `{SIDECAR}` exists but the pod is not marked `{STATUS}: injected`"
            ));
        }
        let app_index = match annotation("container") {
            Some(wanted) => containers
                .iter()
                .position(|c| name_of(c) == wanted)
                .or_else(|| {
                    problems.push(format!(
                        "annotation `{PREFIX}container`: no container `{wanted}` in the pod"
                    ));
                    None
                }),
            None if containers.is_empty() => {
                problems.push(String::from("spec.containers: the pod has no container"));
                None
            }
            None => Some(0),
        };
        let app = app_index.and_then(|i| containers.get(i));
        let declared = app.and_then(|c| {
            c.get("ports")?
                .as_array()?
                .iter()
                .find(|p| p.get("protocol").and_then(Value::as_str).unwrap_or("TCP") == "TCP")
        });
        let port = |name: &str, default: Option<u16>, problems: &mut Vec<String>| -> Option<u16> {
            match annotation(name) {
                Some(v) => match v.parse::<u16>() {
                    Ok(p) if p > 0 => Some(p),
                    _ => {
                        problems.push(format!(
                            "annotation `{PREFIX}{name}`: `{v}` is not a port (1-65535)"
                        ));
                        None
                    }
                },
                None => default,
            }
        };
        let declared_port = declared
            .and_then(|p| p.get("containerPort"))
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok());
        let listen = port("listen-port", declared_port, &mut problems);
        if listen.is_none() && annotation("listen-port").is_none() && app.is_some() {
            problems.push(format!(
                "the app container declares no TCP port: set `{PREFIX}listen-port` to the port its Service targets"
            ));
        }
        let app_port = port("app-port", None, &mut problems);
        if app_port.is_none() && annotation("app-port").is_none() {
            problems.push(format!(
                "annotation `{PREFIX}app-port` is required: the port the app listens on (on 127.0.0.1) once the sidecar takes {}",
                listen.map_or_else(|| String::from("the port its Service targets"), |p| format!("port {p}"))
            ));
        }
        let ops = port("ops-port", Some(self.settings.ops_port), &mut problems);
        if let (Some(listen), Some(app_port), Some(ops)) = (listen, app_port, ops) {
            let mut seen = std::collections::BTreeMap::new();
            for (what, p) in [
                ("the sidecar's listen port", listen),
                ("the app port", app_port),
                ("the sidecar's ops port", ops),
            ] {
                if let Some(first) = seen.insert(p, what) {
                    problems.push(format!(
                        "port {p} is both {first} and {what}: each needs its own"
                    ));
                }
            }
            // Ports other containers declare, and the app's own other ports.
            for (i, c) in containers.iter().chain(&init_containers).enumerate() {
                for declared in c
                    .get("ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let Some(p) = declared
                        .get("containerPort")
                        .and_then(Value::as_u64)
                        .and_then(|p| u16::try_from(p).ok())
                    else {
                        continue;
                    };
                    let is_app = Some(i) == app_index;
                    let taken_over = is_app && Some(p) == declared_port;
                    if taken_over {
                        continue;
                    }
                    if p == listen || p == ops || (p == app_port && !is_app) {
                        problems.push(format!(
                            "port {p}: container `{}` declares it, and the sidecar needs it; set `{PREFIX}{}`",
                            name_of(c),
                            if p == ops { "ops-port" } else { "listen-port or app-port" }
                        ));
                    }
                }
            }
        }
        let mode = annotation("mode");
        if let Some(m) = mode.filter(|m| !["enforce", "shadow"].contains(m)) {
            problems.push(format!(
                "annotation `{PREFIX}mode`: `{m}`: expected enforce or shadow"
            ));
        }
        let mut resources = self.settings.resources.clone();
        for (name, slot) in [
            ("cpu-request", &mut resources.cpu_request),
            ("memory-request", &mut resources.memory_request),
            ("cpu-limit", &mut resources.cpu_limit),
            ("memory-limit", &mut resources.memory_limit),
        ] {
            if let Some(v) = annotation(name) {
                if is_quantity(v) {
                    *slot = Some(v.to_owned());
                } else {
                    problems.push(format!(
                        "annotation `{PREFIX}{name}`: `{v}` is not a Kubernetes quantity"
                    ));
                }
            }
        }
        let volumes = spec
            .get("volumes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for v in &volumes {
            let name = name_of(v);
            if VOLUMES.contains(&name.as_str()) {
                problems.push(format!(
                    "spec.volumes: a volume named `{name}` exists; the sidecar needs the name"
                ));
            }
        }
        let (Some(app_index), Some(listen), Some(app_port), Some(ops), true) =
            (app_index, listen, app_port, ops, problems.is_empty())
        else {
            return Err(problems);
        };
        Ok(Plan {
            containers,
            init_containers,
            volumes,
            app_index,
            listen,
            app_port,
            ops,
            mode: mode.map(str::to_owned),
            resources,
        })
    }

    /// The template with the sidecar, as `plan` says.
    fn apply(&self, template: &Value, plan: Plan) -> Result<Value, Vec<String>> {
        let Plan {
            mut containers,
            mut init_containers,
            mut volumes,
            app_index,
            listen,
            app_port,
            ops,
            mode,
            resources,
        } = plan;
        // The app container: its port moves, its probes follow.
        let mut port_name = String::from("http");
        if let Some(app) = containers.get_mut(app_index) {
            let mut taken_name = None;
            let entry = app
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .and_then(|ports| {
                    ports.iter_mut().find(|p| {
                        p.get("containerPort").and_then(Value::as_u64) == Some(u64::from(listen))
                    })
                })
                .and_then(Value::as_object_mut);
            if let Some(entry) = entry {
                entry.insert(String::from("containerPort"), json!(app_port));
                taken_name = entry
                    .remove("name")
                    .and_then(|name| name.as_str().map(str::to_owned));
            }
            if let Some(name) = &taken_name {
                port_name.clone_from(name);
            }
            for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                for handler in ["httpGet", "tcpSocket"] {
                    if let Some(target) = app.pointer_mut(&format!("/{probe}/{handler}/port")) {
                        let aims_at_listen = target.as_u64() == Some(u64::from(listen))
                            || (taken_name.is_some() && target.as_str() == taken_name.as_deref());
                        if aims_at_listen {
                            *target = json!(app_port);
                        }
                    }
                }
            }
        }

        let sidecar = self.sidecar(
            listen,
            app_port,
            ops,
            &port_name,
            mode.as_deref(),
            &resources,
        );
        if self.native() {
            init_containers.push(sidecar);
        } else {
            containers.insert(0, sidecar);
        }
        volumes.extend(self.volumes());

        let mut template = template.clone();
        let Some(object) = template.as_object_mut() else {
            return Err(vec![String::from("the pod template is not an object")]);
        };
        let metadata = object.entry("metadata").or_insert_with(|| json!({}));
        insert(metadata, "annotations", STATUS, json!("injected"));
        let app_name = containers
            .get(if self.native() {
                app_index
            } else {
                app_index + 1
            })
            .map(name_of)
            .unwrap_or_default();
        if metadata
            .pointer("/annotations/kubectl.kubernetes.io~1default-container")
            .is_none()
        {
            insert(
                metadata,
                "annotations",
                "kubectl.kubernetes.io/default-container",
                json!(app_name),
            );
        }
        insert(metadata, "labels", INJECTED_LABEL, json!("true"));
        let spec = object.entry("spec").or_insert_with(|| json!({}));
        if let Some(spec) = spec.as_object_mut() {
            spec.insert(String::from("containers"), Value::Array(containers));
            if !init_containers.is_empty() {
                spec.insert(
                    String::from("initContainers"),
                    Value::Array(init_containers),
                );
            }
            spec.insert(String::from("volumes"), Value::Array(volumes));
        }
        Ok(template)
    }

    /// The sidecar container.
    fn sidecar(
        &self,
        listen: u16,
        app_port: u16,
        ops: u16,
        port_name: &str,
        mode: Option<&str>,
        resources: &crate::config::SidecarResources,
    ) -> Value {
        let s = &self.settings;
        let mut env = vec![
            ("PORTCULLIS_CONTROL_PLANE__URL", s.control_plane_url.clone()),
            (
                "PORTCULLIS_CONTROL_PLANE__TOKEN_FILE",
                format!("{TOKEN_DIR}/token"),
            ),
            ("PORTCULLIS_LISTEN__ADDRESS", format!("0.0.0.0:{listen}")),
            ("PORTCULLIS_OPS__ADDRESS", format!("0.0.0.0:{ops}")),
            (
                "PORTCULLIS_UPSTREAMS__0__ADDRESS",
                format!("127.0.0.1:{app_port}"),
            ),
            ("PORTCULLIS_POLICIES__DIR", String::from(CONFIG_DIR)),
            ("PORTCULLIS_DATA_DIR", String::from(DATA_DIR)),
            ("PORTCULLIS_LOG__FORMAT", String::from("json")),
        ];
        if !s.ca_config_map.is_empty() {
            env.push((
                "PORTCULLIS_CONTROL_PLANE__CA_FILE",
                format!("{CA_DIR}/ca.crt"),
            ));
        }
        if let Some(mode) = mode {
            env.push(("PORTCULLIS_ENFORCEMENT__MODE", mode.to_owned()));
        }
        let probe = |path: &str, period: u32, failures: u32| {
            json!({
                "httpGet": {"path": path, "port": ops},
                "periodSeconds": period,
                "failureThreshold": failures,
                "timeoutSeconds": 1,
            })
        };
        let quantities = |pairs: [(&str, &Option<String>); 2]| -> Map<String, Value> {
            pairs
                .into_iter()
                .filter_map(|(key, value)| Some((key.to_owned(), json!(value.as_ref()?))))
                .collect()
        };
        let requests = quantities([
            ("cpu", &resources.cpu_request),
            ("memory", &resources.memory_request),
        ]);
        let limits = quantities([
            ("cpu", &resources.cpu_limit),
            ("memory", &resources.memory_limit),
        ]);
        let mut mounts = vec![
            json!({"name": "portcullis-config", "mountPath": CONFIG_DIR, "readOnly": true}),
            json!({"name": "portcullis-token", "mountPath": TOKEN_DIR, "readOnly": true}),
            json!({"name": "portcullis-data", "mountPath": DATA_DIR}),
        ];
        if !s.ca_config_map.is_empty() {
            mounts.push(json!({"name": "portcullis-ca", "mountPath": CA_DIR, "readOnly": true}));
        }
        let mut sidecar = json!({
            "name": SIDECAR,
            "image": s.image,
            "imagePullPolicy": s.image_pull_policy,
            "args": ["proxy", "--config", format!("{CONFIG_DIR}/portcullis.yaml")],
            "env": env.into_iter().map(|(name, value)| json!({"name": name, "value": value})).collect::<Vec<_>>(),
            "ports": [
                {"name": port_name, "containerPort": listen, "protocol": "TCP"},
                {"name": "portcullis-ops", "containerPort": ops, "protocol": "TCP"},
            ],
            // Alive as soon as it runs; the app waits (native) until policies are in.
            "startupProbe": probe("/readyz", 1, 120),
            "livenessProbe": probe("/livez", 10, 3),
            "readinessProbe": probe("/readyz", 5, 3),
            "resources": {"requests": requests, "limits": limits},
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": SIDECAR_UID,
                "runAsGroup": SIDECAR_UID,
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "volumeMounts": mounts,
        });
        if self.native()
            && let Some(fields) = sidecar.as_object_mut()
        {
            fields.insert(String::from("restartPolicy"), json!("Always"));
        }
        sidecar
    }

    /// The volumes the sidecar mounts.
    fn volumes(&self) -> Vec<Value> {
        let s = &self.settings;
        let mut volumes = vec![
            json!({"name": "portcullis-config", "configMap": {"name": s.config_map}}),
            json!({"name": "portcullis-token", "secret": {"secretName": s.token_secret, "items": [{"key": "token", "path": "token"}]}}),
            json!({"name": "portcullis-data", "emptyDir": {"sizeLimit": "64Mi"}}),
        ];
        if !s.ca_config_map.is_empty() {
            volumes.push(json!({"name": "portcullis-ca", "configMap": {"name": s.ca_config_map, "items": [{"key": "ca.crt", "path": "ca.crt"}]}}));
        }
        volumes
    }
}

/// Sets `object[map][key] = value`, creating the map when absent.
fn insert(object: &mut Value, map: &str, key: &str, value: Value) {
    let Some(object) = object.as_object_mut() else {
        return;
    };
    let entry = object.entry(map).or_insert_with(|| json!({}));
    if !entry.is_object() {
        *entry = json!({});
    }
    if let Some(entries) = entry.as_object_mut() {
        entries.insert(key.to_owned(), value);
    }
}
