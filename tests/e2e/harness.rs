//! The end-to-end harness: the real `portcullis` binary, a real upstream over real sockets,
//! real keys, and the real SQLite store the binary runs on.
//!
//! - [`Upstream`]: an HTTP/1.1 server (hyper) that records every request it receives and
//!   answers 200 with a small JSON body.
//! - [`Keys`]: an RS256 key and an Ed25519 key, published as a JWKS file; tokens are
//!   signed here exactly as an identity provider would.
//! - [`Portcullis`]: `portcullis serve` on free loopback ports with a generated config;
//!   killed when dropped. Test data goes into its store through the store API, and the
//!   harness waits until the running process has picked the revision up.
//!
//! Each test starts its own instance, so a test's config changes stay its own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use portcullis_store::{Import, SqlStore, Store, StoreConfig};
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};

/// The instant `portcullis serve` instances run at unless a test replaces the `context`
/// section (`context.fixed_time`): working hours hold, and tokens are judged on it.
pub const PINNED_TIME: &str = "2026-01-06T10:00:00Z";

/// [`PINNED_TIME`] in seconds since the epoch.
pub fn pinned_now() -> i64 {
    PINNED_TIME
        .parse::<jiff::Timestamp>()
        .expect("pinned time")
        .as_second()
}

/// The runtime the upstream and async helpers run on, shared by a test binary's tests.
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("test runtime")
    })
}

pub use portcullis_sinks::testing::free_port;

/// The repository's `policies/`.
pub fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

/// A fresh temporary directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "portcullis-e2e-{tag}-{}-{}",
        std::process::id(),
        uuid::Uuid::now_v7()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Path and query as received.
    pub target: String,
    /// Headers, names lower-case, in order (repeats kept).
    pub headers: Vec<(String, String)>,
}

impl Seen {
    /// Every value of a header.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The single value of a header.
    pub fn one(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(all.len() <= 1, "header `{name}` repeated: {all:?}");
        all.first().copied()
    }
}

/// A recording upstream. A request with `x-delay-ms: N` is answered after N ms.
#[derive(Clone)]
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    /// Starts an upstream on a free port.
    pub fn start() -> Self {
        use http_body_util::Full;
        use hyper::body::Bytes;
        let listener = rt()
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("upstream bind");
        let addr = listener.local_addr().expect("upstream addr");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let recorded = Arc::clone(&seen);
        rt().spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let recorded = Arc::clone(&recorded);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let recorded = Arc::clone(&recorded);
                            async move {
                                let seen = Seen {
                                    method: req.method().to_string(),
                                    target: req
                                        .uri()
                                        .path_and_query()
                                        .map(|p| p.as_str().to_owned())
                                        .unwrap_or_default(),
                                    headers: req
                                        .headers()
                                        .iter()
                                        .map(|(n, v)| {
                                            (
                                                n.as_str().to_owned(),
                                                v.to_str().unwrap_or("?").to_owned(),
                                            )
                                        })
                                        .collect(),
                                };
                                let delay: Option<u64> =
                                    seen.one("x-delay-ms").and_then(|v| v.parse().ok());
                                if let Some(ms) = delay {
                                    tokio::time::sleep(Duration::from_millis(ms)).await;
                                }
                                let body =
                                    json!({"upstream": "ok", "target": seen.target}).to_string();
                                recorded.lock().expect("seen").push(seen);
                                Ok::<_, std::convert::Infallible>(
                                    hyper::Response::builder()
                                        .header("content-type", "application/json")
                                        .body(Full::new(Bytes::from(body)))
                                        .expect("response"),
                                )
                            }
                        },
                    );
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        Self { addr, seen }
    }

    /// Requests that carried `x-test-id: <id>`.
    pub fn seen_with(&self, id: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .expect("seen")
            .iter()
            .filter(|s| s.one("x-test-id") == Some(id))
            .cloned()
            .collect()
    }
}

/// Signing keys and their JWKS.
pub struct Keys {
    ed_pem: String,
    rsa_pem: String,
    /// The RSA public key as PEM (what an attacker has, for the HS256 confusion).
    pub rsa_public_pem: String,
    /// The JWKS document with both public keys.
    pub jwks: Value,
}

/// `kid` of the RS256 key.
pub const RSA_KID: &str = "rsa-1";
/// `kid` of the Ed25519 key.
pub const ED_KID: &str = "ed-1";
/// Issuer of test tokens.
pub const ISSUER: &str = "https://idp.test";
/// Audience of test tokens.
pub const AUDIENCE: &str = "portcullis-e2e";

impl Keys {
    /// Fresh keys (2048-bit RSA and Ed25519).
    pub fn generate() -> Self {
        let mut rng = rand::rngs::OsRng;
        let rsa = rsa::RsaPrivateKey::new(&mut rng, 2048).expect("rsa key");
        let rsa_pem = rsa
            .to_pkcs8_pem(LineEnding::LF)
            .expect("rsa pem")
            .to_string();
        let rsa_public_pem = rsa
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("rsa public pem");
        let ed = ed25519_dalek::SigningKey::generate(&mut rng);
        let ed_pem = ed
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .expect("ed pem")
            .to_string();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwks = json!({"keys": [
            {"kty": "RSA", "kid": RSA_KID, "alg": "RS256", "use": "sig",
             "n": b64(&rsa.n().to_bytes_be()), "e": b64(&rsa.e().to_bytes_be())},
            {"kty": "OKP", "crv": "Ed25519", "kid": ED_KID, "alg": "EdDSA", "use": "sig",
             "x": b64(ed.verifying_key().as_bytes())}
        ]});
        Self {
            ed_pem,
            rsa_pem,
            rsa_public_pem,
            jwks,
        }
    }

    /// Standard claims for `sub`, plus `extra`: valid for an hour on both clocks an instance
    /// may run on, the real one and [`PINNED_TIME`].
    pub fn claims(sub: &str, extra: Value) -> Value {
        let (real, pinned) = (jiff::Timestamp::now().as_second(), pinned_now());
        let mut claims = json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": sub,
            "iat": real.min(pinned), "nbf": real.min(pinned) - 5, "exp": real.max(pinned) + 3600,
            "jti": uuid::Uuid::now_v7().to_string(),
        });
        if let (Some(map), Value::Object(extra)) = (claims.as_object_mut(), extra) {
            map.extend(extra);
        }
        claims
    }

    /// An RS256 token.
    pub fn rs256(&self, claims: &Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(String::from(RSA_KID));
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(self.rsa_pem.as_bytes()).expect("key");
        jsonwebtoken::encode(&header, claims, &key).expect("sign")
    }

    /// An EdDSA token.
    pub fn eddsa(&self, claims: &Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some(String::from(ED_KID));
        let key = jsonwebtoken::EncodingKey::from_ed_pem(self.ed_pem.as_bytes()).expect("key");
        jsonwebtoken::encode(&header, claims, &key).expect("sign")
    }

    /// An EdDSA token with a header of the caller's choosing (e.g. another `kid`).
    pub fn sign_with(&self, header: jsonwebtoken::Header, claims: &Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_ed_pem(self.ed_pem.as_bytes()).expect("key");
        jsonwebtoken::encode(&header, claims, &key).expect("sign")
    }

    /// A token for `sub` with `extra` claims (RS256).
    pub fn token(&self, sub: &str, extra: Value) -> String {
        self.rs256(&Self::claims(sub, extra))
    }
}

/// A response.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: u16,
    /// Headers, lower-case names.
    pub headers: HashMap<String, String>,
    /// Body.
    pub body: String,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// The binary with `command` and `--config`. AWS credentials are dummies for the SQS sink
/// tests' own moto server; instance metadata is never asked.
pub fn portcullis_command(
    command: &[String],
    config_file: &Path,
    env: &[(String, String)],
) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_portcullis-under-test"));
    c.args(command)
        .arg("--config")
        .arg(config_file)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env_remove("RUST_LOG")
        .env("AWS_ACCESS_KEY_ID", "portcullis-e2e")
        .env("AWS_SECRET_ACCESS_KEY", "portcullis-e2e")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    c
}

/// A running `portcullis serve` (or `control`, or `proxy`).
pub struct Portcullis {
    child: Child,
    command: Vec<String>,
    /// More environment for the process (kept for restarts).
    env: Vec<(String, String)>,
    /// The data-plane address.
    pub data: SocketAddr,
    /// The ops address.
    pub ops: SocketAddr,
    /// The admin API address.
    pub admin: SocketAddr,
    /// Its directory (config, data, JWKS, logs).
    pub dir: PathBuf,
    /// The config file.
    pub config_file: PathBuf,
    log_file: PathBuf,
}

impl Drop for Portcullis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failed test keeps its directory (config, data, log) to look at.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Portcullis {
    /// Starts `serve` towards `upstream` with the repository's policies, a JWKS file of
    /// `keys`, the clock pinned to Tuesday 2026-01-06 10:00 UTC, loopback as a trusted hop,
    /// and `extra` YAML appended to the generated config (a top-level key in `extra`
    /// replaces that default section; `{data}` and `{admin}` in it are the data-plane and
    /// admin API addresses).
    pub fn start(upstream: &Upstream, keys: &Keys, extra: &str) -> Self {
        Self::start_command(&["serve", "--no-demo-data"], upstream, keys, extra, &[])
    }

    /// `portcullis control` (no data plane) with the same defaults as [`Self::start`].
    pub fn start_control(upstream: &Upstream, keys: &Keys, extra: &str) -> Self {
        Self::start_command(&["control", "--no-demo-data"], upstream, keys, extra, &[])
    }

    /// `portcullis proxy` following `control`'s admin API (heartbeats every 200 ms, failing
    /// closed after 3 s without contact), with the same keys and clock.
    pub fn start_proxy(
        upstream: &Upstream,
        keys: &Keys,
        control: &Portcullis,
        extra: &str,
    ) -> Self {
        let extra = format!(
            "control_plane:\n  url: http://{}\n  token_file: {}\n  heartbeat_ms: 200\n  max_staleness_seconds: 3\n{extra}",
            control.admin,
            control.dir.join("data/admin-token").display()
        );
        Self::start_command(&["proxy"], upstream, keys, &extra, &[])
    }

    /// [`Self::start_proxy`] with more environment (e.g. `LD_PRELOAD` of libfaketime).
    pub fn start_proxy_with_env(
        upstream: &Upstream,
        keys: &Keys,
        control: &Portcullis,
        env: &[(&str, &str)],
    ) -> Self {
        let extra = format!(
            "control_plane:\n  url: http://{}\n  token_file: {}\n  heartbeat_ms: 200\n  max_staleness_seconds: 3\n",
            control.admin,
            control.dir.join("data/admin-token").display()
        );
        Self::start_command(&["proxy"], upstream, keys, &extra, env)
    }

    /// `portcullis proxy` with the `control_plane` section given (TLS, rotated tokens),
    /// started without waiting for it to be ready: it may be waiting for its control plane.
    pub fn start_proxy_unready(
        upstream: &Upstream,
        keys: &Keys,
        control_plane: &str,
        extra: &str,
    ) -> Self {
        Self::start_command_unready(
            &["proxy"],
            upstream,
            keys,
            &format!("{control_plane}{extra}"),
            &[],
        )
    }

    fn start_command(
        command: &[&str],
        upstream: &Upstream,
        keys: &Keys,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let mut me = Self::start_command_unready(command, upstream, keys, extra, env);
        me.wait_ready();
        me
    }

    fn start_command_unready(
        command: &[&str],
        upstream: &Upstream,
        keys: &Keys,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let dir = temp_dir("serve");
        let jwks = dir.join("jwks.json");
        std::fs::write(&jwks, keys.jwks.to_string()).expect("jwks");
        let data: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let ops: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let defaults = [
            ("listen", format!("listen:\n  address: {data}\n")),
            ("ops", format!("ops:\n  address: {ops}\n")),
            ("admin", format!("admin:\n  address: {admin}\n")),
            (
                "upstreams",
                format!(
                    "upstreams:\n  - name: app\n    address: {}\n",
                    upstream.addr
                ),
            ),
            ("data_dir", format!("data_dir: {}/data\n", dir.display())),
            (
                "policies",
                format!("policies:\n  dir: {}\n", policies_dir().display()),
            ),
            (
                "auth",
                format!(
                    "auth:\n  issuer: {ISSUER}\n  audiences: [{AUDIENCE}]\n  jwks_file: {}\n  unknown_kid_cooldown_seconds: 1\n",
                    jwks.display()
                ),
            ),
            (
                "shutdown",
                String::from(
                    "shutdown:\n  drain_delay_seconds: 1\n  grace_period_seconds: 1\n  runtime_timeout_seconds: 1\n",
                ),
            ),
            ("log", String::from("log:\n  format: json\n  level: info\n")),
            (
                "context",
                format!(
                    "context:\n  fixed_time: \"{PINNED_TIME}\"\n  trusted_hops: [127.0.0.1/32]\n",
                ),
            ),
        ];
        // `extra` may replace any default section by naming it at the start of a line, and
        // may say `{data}` / `{admin}` for the data-plane / admin API address.
        let extra = extra
            .replace("{data}", &data.to_string())
            .replace("{admin}", &admin.to_string());
        let mut config: String = defaults
            .iter()
            .filter(|(key, _)| !extra.lines().any(|l| l.starts_with(&format!("{key}:"))))
            .map(|(_, block)| block.as_str())
            .collect();
        config.push_str(&extra);
        let config_file = dir.join("portcullis.yaml");
        std::fs::write(&config_file, config).expect("config");
        Self::spawn(
            command.iter().map(|s| s.to_string()).collect(),
            env.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            dir,
            config_file,
            data,
            ops,
            admin,
        )
    }

    fn spawn(
        command: Vec<String>,
        env: Vec<(String, String)>,
        dir: PathBuf,
        config_file: PathBuf,
        data: SocketAddr,
        ops: SocketAddr,
        admin: SocketAddr,
    ) -> Self {
        let log_file = dir.join("portcullis.log");
        let log = std::fs::File::create(&log_file).expect("log file");
        let child = portcullis_command(&command, &config_file, &env)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("portcullis starts");
        Self {
            child,
            command,
            env,
            data,
            ops,
            admin,
            dir,
            config_file,
            log_file,
        }
    }

    /// The process's resident memory (`VmRSS`), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .expect("VmRSS")
    }

    /// Kills the process without warning (SIGKILL), as a crash would.
    pub fn kill9(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reaped");
    }

    /// Starts the process again on the same configuration and data.
    pub fn restart(&mut self) {
        self.restart_unready();
        self.wait_ready();
    }

    /// Starts the process again without waiting for it to be ready.
    pub fn restart_unready(&mut self) {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log_file)
            .expect("log file");
        self.child = portcullis_command(&self.command, &self.config_file, &self.env)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("portcullis restarts");
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_until_ready(&mut self) {
        self.wait_ready();
    }

    /// A call of the admin API with the token `serve` generated.
    pub fn admin_call(&self, method: &str, target: &str, body: &Value) -> Reply {
        self.admin_call_with(method, target, &[], body)
    }

    /// [`Self::admin_call`] with more headers.
    pub fn admin_call_with(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> Reply {
        let token =
            std::fs::read_to_string(self.dir.join("data/admin-token")).expect("admin token");
        let auth = format!("Bearer {}", token.trim());
        let mut all = vec![("authorization", auth.as_str())];
        all.extend_from_slice(headers);
        json_request(self.admin, method, target, &all, body).expect("the admin API answers")
    }

    /// The audit ledger directory.
    pub fn ledger_dir(&self) -> PathBuf {
        // `audit:\n  dir: X` in the test's config, or the default under the data dir.
        let config = std::fs::read_to_string(&self.config_file).unwrap_or_default();
        config
            .split_once("audit:\n  dir: ")
            .and_then(|(_, rest)| rest.lines().next())
            .map_or_else(|| self.dir.join("data/audit"), PathBuf::from)
    }

    /// Every audit record written so far, in order.
    pub fn audit_records(&self) -> Vec<Value> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.ledger_dir())
            .expect("ledger dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("audit-"))
            })
            .collect();
        files.sort();
        files
            .iter()
            .flat_map(|f| {
                std::fs::read_to_string(f)
                    .expect("ledger file")
                    .lines()
                    .map(|l| serde_json::from_str::<Value>(l).expect("record is JSON"))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// `portcullis audit verify` over the ledger with the checkpoint public key, accepting
    /// the unsigned tail a running (or killed) writer leaves.
    pub fn verify_ledger(&self) -> std::process::Output {
        self.verify_ledger_with(&["--allow-unsigned-tail"])
    }

    /// `portcullis audit verify` over the ledger with the checkpoint public key and `args`.
    pub fn verify_ledger_with(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_portcullis-under-test"))
            .args(["audit", "verify"])
            .arg(self.ledger_dir())
            .arg("--public-key")
            .arg(self.dir.join("data/audit-checkpoint-key.pem.pub"))
            .args(args)
            .output()
            .expect("verify runs")
    }

    /// The process's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("portcullis exited early ({status}):\n{}", self.log());
            }
            if raw_request(self.ops, "GET", "/readyz", &[]).is_some_and(|r| r.status == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("portcullis not ready within 30 s:\n{}", self.log());
    }

    /// The determining policies logged for a refused request's decision id.
    pub fn decided_by(&self, decision_id: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            for line in self.log().lines() {
                let Ok(entry) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                if entry["decision_id"] == decision_id {
                    return entry["policies"]
                        .as_str()
                        .unwrap_or_default()
                        .split(',')
                        .filter(|p| !p.is_empty())
                        .map(str::to_owned)
                        .collect();
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no log line for decision {decision_id}:\n{}", self.log());
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Sends a signal (`TERM`, `HUP`, ...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name}");
    }

    /// The store the process runs on.
    pub fn store(&self) -> SqlStore {
        rt().block_on(SqlStore::connect(&StoreConfig::Sqlite {
            path: self.dir.join("data/store.db"),
        }))
        .expect("store opens")
    }

    /// Imports test data and waits until the process enforces it.
    pub fn seed(&self, import: Import) {
        let store = self.store();
        let revision = rt().block_on(store.import(&import)).expect("import");
        self.wait_revision(revision);
    }

    /// Waits until the process's snapshot reaches `revision`.
    pub fn wait_revision(&self, revision: i64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self
                .metric("portcullis_snapshot_revision", &[])
                .unwrap_or(0.0)
                >= revision as f64
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("revision {revision} not picked up:\n{}", self.log());
    }

    /// The `/metrics` text.
    pub fn metrics_text(&self) -> String {
        raw_request(self.ops, "GET", "/metrics", &[])
            .expect("metrics answer")
            .body
    }

    /// The value of one sample: `name{labels...}` where every given label matches.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples(name, labels).first().copied()
    }

    /// The sum of every sample of `name` whose labels include all of `labels` (`None` when
    /// there is none).
    pub fn metric_sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let values = self.samples(name, labels);
        (!values.is_empty()).then(|| values.iter().sum())
    }

    /// The values of the samples of `name` whose labels include all of `labels`.
    fn samples(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.metrics_text()
            .lines()
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
                (metric == name
                    && labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
                .then(|| value.parse().ok())
                .flatten()
            })
            .collect()
    }

    /// Waits up to 10 s for `done`, failing with `what` and the log. For what the proxy
    /// does on its own schedule (reloads, sinks) or after the answer has gone out (request
    /// metrics and log lines are written once the response is sent).
    pub fn wait_for(&self, mut done: impl FnMut() -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A request on the data plane; `token` becomes `Authorization: Bearer`.
    pub fn get(&self, target: &str, token: Option<&str>, headers: &[(&str, &str)]) -> Reply {
        self.request("GET", target, token, headers)
    }

    /// A request on the data plane with any method.
    pub fn request(
        &self,
        method: &str,
        target: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(a) = &auth {
            all.push(("authorization", a.as_str()));
        }
        raw_request(self.data, method, target, &all)
            .unwrap_or_else(|| panic!("no answer to {method} {target}:\n{}", self.log()))
    }
}

/// One HTTP/1.1 request written byte for byte — the target is sent exactly as given, which
/// is what path tricks need — on a fresh connection.
pub fn raw_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Option<Reply> {
    raw_request_from(None, addr, method, target, headers)
}

/// [`raw_request`] from a chosen local address (e.g. `127.0.0.2`, which is not a trusted
/// hop).
pub fn raw_request_from(
    local: Option<std::net::IpAddr>,
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Option<Reply> {
    raw_exchange(local, addr, method, target, headers, None)
}

/// A request with a JSON body.
pub fn json_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> Option<Reply> {
    raw_exchange(None, addr, method, target, headers, Some(body.to_string()))
}

fn raw_exchange(
    local: Option<std::net::IpAddr>,
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> Option<Reply> {
    let mut request = format!("{method} {target} HTTP/1.1\r\nconnection: close\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("host: {addr}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(b) = &body {
        request.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            b.len()
        ));
    }
    request.push_str("\r\n");
    if let Some(b) = &body {
        request.push_str(b);
    }
    send_raw(local, addr, request.into_bytes())
}

/// Sends `request` exactly as given on a fresh connection and reads the reply to the end;
/// for requests the other helpers cannot write (no `Host`, broken framing).
pub fn send_raw(
    local: Option<std::net::IpAddr>,
    addr: SocketAddr,
    request: Vec<u8>,
) -> Option<Reply> {
    rt().block_on(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().ok()?;
        if let Some(ip) = local {
            socket.bind(SocketAddr::new(ip, 0)).ok()?;
        }
        let mut stream = tokio::time::timeout(Duration::from_secs(2), socket.connect(addr))
            .await
            .ok()?
            .ok()?;
        stream.write_all(&request).await.ok()?;
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
            .await
            .ok()?
            .ok()?;
        parse_reply(&raw)
    })
}

fn parse_reply(raw: &[u8]) -> Option<Reply> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(raw.get(..split)?);
    let mut lines = head.lines();
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut headers = HashMap::new();
    for line in lines {
        if let Some((n, v)) = line.split_once(':') {
            headers.insert(n.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let body_raw = raw.get(split + 4..)?;
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        dechunk(body_raw)
    } else {
        body_raw.to_vec()
    };
    Some(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&raw[..end])
                .split(';')
                .next()
                .unwrap_or("0")
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = end + 2;
        out.extend_from_slice(&raw[start..(start + size).min(raw.len())]);
        raw = &raw[(start + size + 2).min(raw.len())..];
    }
    out
}

/// A copy of the default policies directory (its files) to edit.
pub fn policies_copy(tag: &str) -> std::path::PathBuf {
    let dir = temp_dir(tag);
    for entry in std::fs::read_dir(policies_dir()).expect("policies") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            std::fs::copy(&path, dir.join(path.file_name().expect("name"))).expect("copy");
        }
    }
    dir
}

/// Replaces the first `from` in `dir/file` with `to`.
pub fn edit(dir: &std::path::Path, file: &str, from: &str, to: &str) {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.contains(from), "{file} has {from}");
    std::fs::write(&path, text.replacen(from, to, 1)).expect("write");
}
