//! A control plane a cluster can trust: sidecars follow it over TLS (its certificate
//! checked against the cluster's CA, a client certificate asked for), a sidecar is alive
//! while it waits for its control plane but not ready, `portcullis proxy` does not start
//! without the keys of a real issuer, and admin and sidecar tokens rotate without a
//! restart.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::distribution::wait_status;
use crate::harness::{Keys, Portcullis, Upstream, raw_request, rt};
use crate::world;

const D1: &str = "/v1/spaces/s1/documents/d1";

/// A CA, a server certificate for `localhost` and `127.0.0.1` and a client certificate it
/// signed, and a CA nobody trusts; as PEM files in `dir`.
pub(crate) struct Pki {
    ca_cert: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
    pub(crate) ca: PathBuf,
    pub(crate) server_cert: PathBuf,
    pub(crate) server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    stranger_cert: PathBuf,
    stranger_key: PathBuf,
}

impl Pki {
    pub(crate) fn new(dir: &Path) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            SanType,
        };
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "portcullis e2e CA");
        let ca = ca.self_signed(&ca_key).expect("CA");
        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(names).expect("params");
            params
                .subject_alt_names
                .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca, &ca_key).expect("signed");
            (cert.pem(), key.serialize_pem())
        };
        let server = leaf(
            vec![String::from("localhost")],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let client = leaf(
            vec![String::from("sidecar.portcullis.test")],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        // Self-signed: chains to nothing the control plane trusts.
        let stranger_key = KeyPair::generate().expect("key");
        let mut stranger = CertificateParams::new(vec![String::from("stranger")]).expect("params");
        stranger.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let stranger = stranger.self_signed(&stranger_key).expect("stranger");
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("pem");
            path
        };
        Self {
            ca: write("ca.pem", &ca.pem()),
            ca_cert: ca,
            ca_key,
            server_cert: write("server.pem", &server.0),
            server_key: write("server.key", &server.1),
            client_cert: write("client.pem", &client.0),
            client_key: write("client.key", &client.1),
            stranger_cert: write("stranger.pem", &stranger.pem()),
            stranger_key: write("stranger.key", &stranger_key.serialize_pem()),
        }
    }

    /// A new server certificate from the same CA, written over the old files (as
    /// cert-manager renews one); its DER.
    pub(crate) fn renew_server(&self) -> Vec<u8> {
        use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyPair, SanType};
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec![String::from("localhost")]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &self.ca_cert, &self.ca_key)
            .expect("signed");
        // The key first: a certificate that does not match its key is not loaded.
        std::fs::write(&self.server_key, key.serialize_pem()).expect("key");
        std::fs::write(&self.server_cert, cert.pem()).expect("cert");
        cert.der().to_vec()
    }

    /// A client certificate from the CA naming a workload by its SPIFFE ID (and a DNS
    /// name beside it), written as `{tag}.pem` and `{tag}.key` in `dir`.
    pub(crate) fn workload(&self, dir: &Path, tag: &str, spiffe_id: &str) -> (PathBuf, PathBuf) {
        use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Ia5String, KeyPair, SanType};
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(vec![format!("{tag}.workloads.test")]).expect("params");
        params
            .subject_alt_names
            .push(SanType::URI(Ia5String::try_from(spiffe_id).expect("uri")));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&key, &self.ca_cert, &self.ca_key)
            .expect("signed");
        let (cert_file, key_file) = (
            dir.join(format!("{tag}.pem")),
            dir.join(format!("{tag}.key")),
        );
        std::fs::write(&cert_file, cert.pem()).expect("cert");
        std::fs::write(&key_file, key.serialize_pem()).expect("key");
        (cert_file, key_file)
    }

    /// A self-signed client certificate (chaining to nothing trusted) and its key.
    pub(crate) fn stranger(&self) -> (&Path, &Path) {
        (&self.stranger_cert, &self.stranger_key)
    }

    /// An HTTPS client trusting the CA, presenting `identity` (certificate, key) if any.
    pub(crate) fn client(&self, identity: Option<(&Path, &Path)>) -> reqwest::Client {
        let ca = std::fs::read(&self.ca).expect("ca");
        let mut builder = reqwest::Client::builder()
            .tls_info(true)
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("ca pem"))
            .timeout(Duration::from_secs(10));
        if let Some((cert, key)) = identity {
            let mut pem = std::fs::read(cert).expect("cert");
            pem.extend(std::fs::read(key).expect("key"));
            builder = builder.identity(reqwest::Identity::from_pem(&pem).expect("identity"));
        }
        builder.build().expect("client")
    }
}

/// `method` `path` on the admin API at `https://localhost:<port>` with `token`: the status
/// and the JSON body, or the connection's error.
fn https_call(
    client: &reqwest::Client,
    port: u16,
    token: &str,
    method: &str,
    path: &str,
    body: &Value,
) -> Result<(u16, Value), String> {
    rt().block_on(async {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let response = client
            .request(method, format!("https://localhost:{port}{path}"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| format!("{e:?}"))?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok((status, body))
    })
}

pub(crate) fn wait_until(what: &str, log: impl Fn() -> String, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "{what}:\n{}", log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_sidecar_follows_its_control_plane_over_tls_and_is_alive_but_unready_until_it_can() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let pki_dir = crate::harness::temp_dir("pki");
    let pki = Pki::new(&pki_dir);
    let control = Portcullis::start_control(
        &upstream,
        &keys,
        &format!(
            "admin:\n  address: {{admin}}\n  tls:\n    cert_file: {}\n    key_file: {}\n    client_ca_file: {}\n",
            pki.server_cert.display(),
            pki.server_key.display(),
            pki.ca.display()
        ),
    );
    control.seed(world::import());
    let port = control.admin.port();
    let admin_token = std::fs::read_to_string(control.dir.join("data/admin-token"))
        .expect("admin token")
        .trim()
        .to_owned();

    // Plain HTTP gets no HTTP answer; TLS without a client certificate, or with one the CA
    // did not sign, is refused; with the CA's client certificate the API answers.
    let plain = raw_request(control.admin, "GET", "/v1/roles", &[]);
    assert!(
        plain
            .as_ref()
            .is_none_or(|r| !(100..600).contains(&r.status)),
        "plain HTTP answered: {:?}",
        plain.map(|r| r.status)
    );
    let call = |identity, path: &str| {
        https_call(
            &pki.client(identity),
            port,
            &admin_token,
            "GET",
            path,
            &json!({}),
        )
    };
    assert!(call(None, "/v1/roles").is_err(), "no client certificate");
    assert!(
        call(
            Some((pki.stranger_cert.as_path(), pki.stranger_key.as_path())),
            "/v1/roles"
        )
        .is_err(),
        "a client certificate of another CA"
    );
    let with_cert = Some((pki.client_cert.as_path(), pki.client_key.as_path()));
    let (status, _) = call(with_cert, "/v1/roles").expect("the admin API over TLS");
    assert_eq!(status, 200);

    // The certificate is renewed (as cert-manager does): served from the next connection,
    // without a restart.
    let served = || {
        rt().block_on(async {
            let response = pki
                .client(with_cert)
                .get(format!("https://localhost:{port}/v1/roles"))
                .bearer_auth(&admin_token)
                .send()
                .await
                .expect("the admin API over TLS");
            response
                .extensions()
                .get::<reqwest::tls::TlsInfo>()
                .and_then(|info| info.peer_certificate())
                .expect("the server's certificate")
                .to_vec()
        })
    };
    let first = served();
    let renewed = pki.renew_server();
    assert_ne!(first, renewed);
    wait_until(
        "the renewed certificate served",
        || control.log(),
        || served() == renewed,
    );

    let token_file = control.dir.join("data/admin-token");
    let section = |ca: Option<&Path>| {
        format!(
            "control_plane:\n  url: https://localhost:{port}\n  token_file: {}\n  client_cert_file: {}\n  client_key_file: {}\n  heartbeat_ms: 200\n  max_staleness_seconds: 3\n{}",
            token_file.display(),
            pki.client_cert.display(),
            pki.client_key.display(),
            ca.map(|ca| format!("  ca_file: {}\n", ca.display()))
                .unwrap_or_default()
        )
    };

    // A sidecar that does not trust the cluster's CA (the public roots only) never gets a
    // state: alive from the start, not ready, no data plane, and it says why.
    let untrusting = Portcullis::start_proxy_unready(&upstream, &keys, &section(None), "");
    wait_until(
        "the waiting sidecar answers /livez",
        || untrusting.log(),
        || raw_request(untrusting.ops, "GET", "/livez", &[]).is_some_and(|r| r.status == 200),
    );
    let ready = raw_request(untrusting.ops, "GET", "/readyz?verbose", &[]).expect("readyz");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(
        ready.body.contains("waiting for the control plane"),
        "{}",
        ready.body
    );
    wait_until(
        "the waiting sidecar says why",
        || untrusting.log(),
        || {
            untrusting
                .log()
                .contains("control plane unreachable and no last-known-good state")
        },
    );
    assert!(
        raw_request(untrusting.data, "GET", D1, &[]).is_none(),
        "no data plane before a state"
    );
    let metrics = raw_request(untrusting.ops, "GET", "/metrics", &[]).expect("metrics");
    assert!(
        metrics.body.contains("portcullis_build_info"),
        "{}",
        metrics.body
    );
    drop(untrusting);

    // With the CA: bootstrapped over TLS, enforcing, and following changes.
    let mut proxy = Portcullis::start_proxy_unready(&upstream, &keys, &section(Some(&pki.ca)), "");
    proxy.wait_until_ready();
    let alice = keys.token("alice", json!({}));
    let zoe = keys.token("zoe", json!({}));
    assert_eq!(
        proxy.get(D1, Some(&alice), &[]).status,
        200,
        "{}",
        proxy.log()
    );
    let admin = pki.client(with_cert);
    let put = |method: &str, path: &str, body: Value| {
        https_call(&admin, port, &admin_token, method, path, &body).expect("admin call")
    };
    let (status, body) = put(
        "PUT",
        "/v1/principals/users/zoe",
        json!({"kind": "user", "id": "zoe", "tenant": "t1"}),
    );
    assert_eq!(status, 200, "{body}");
    wait_status(&proxy, &zoe, 403, "zoe is known, not granted");
    let (status, body) = put(
        "POST",
        "/v1/assignments",
        json!({"id": "zoe-guest", "principal": "User::\"zoe\"", "role": "guest", "scope": {"entity": "Space::\"s1\""}}),
    );
    assert_eq!(status, 201, "{body}");
    wait_status(&proxy, &zoe, 200, "a grant reaches the sidecar over TLS");
    std::fs::remove_dir_all(pki_dir).ok();
}

#[test]
fn the_proxy_refuses_to_start_without_the_keys_of_a_real_issuer() {
    let dir = crate::harness::temp_dir("no-keys");
    let token = dir.join("token");
    std::fs::write(&token, "t0ken\n").expect("token");
    let config = dir.join("portcullis.yaml");
    // `portcullis proxy` on `text`: exit 3, and what it said.
    let refused = |text: String| {
        std::fs::write(&config, text).expect("config");
        let out = crate::harness::portcullis_command(&[String::from("proxy")], &config, &[])
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(3), "{stderr}");
        stderr
    };
    let stderr = refused(format!(
        "data_dir: {}/data\ncontrol_plane:\n  url: http://127.0.0.1:9\n  token_file: {}\n",
        dir.display(),
        token.display()
    ));
    assert!(stderr.contains("auth.jwks_url"), "{stderr}");
    assert!(
        !dir.join("data").exists(),
        "no dev key made, nothing written"
    );

    // Plain HTTP to a control plane on another host is refused too, naming the setting.
    let stderr = refused(format!(
        "data_dir: {}/data\nauth:\n  issuer: https://idp.example\n  jwks_url: https://idp.example/jwks\ncontrol_plane:\n  url: http://portcullis-control:8482\n  token_file: {}\n",
        dir.display(),
        token.display()
    ));
    assert!(stderr.contains("control_plane.url"), "{stderr}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn admin_and_sidecar_tokens_rotate_without_a_restart() {
    use portcullis_admin_api::auth::token_line;
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let dir = crate::harness::temp_dir("rotation");
    let tokens_file = dir.join("admin-tokens");
    let write_tokens = |lines: &[(&str, &str, &str)]| {
        let text: String = lines
            .iter()
            .map(|(subject, token, roles)| {
                format!("{} roles={roles}\n", token_line(subject, token))
            })
            .collect();
        // Written beside and renamed over, as a Secret's update is swapped in.
        let tmp = dir.join("admin-tokens.tmp");
        std::fs::write(&tmp, text).expect("tokens");
        std::fs::rename(&tmp, &tokens_file).expect("rename");
    };
    write_tokens(&[
        ("ops", "ops-1", "platform-admin"),
        ("sidecar", "sidecar-1", "sidecar"),
    ]);
    let mut control = Portcullis::start_control(
        &upstream,
        &keys,
        &format!(
            "admin:\n  address: {{admin}}\n  tokens_file: {}\n",
            tokens_file.display()
        ),
    );
    control.seed(world::import());
    let status = |token: &str| {
        crate::harness::json_request(
            control.admin,
            "GET",
            "/v1/roles",
            &[("authorization", &format!("Bearer {token}"))],
            &json!({}),
        )
        .map_or(0, |r| r.status)
    };
    assert_eq!(status("ops-1"), 200);
    assert_eq!(status("ops-2"), 401);

    // The admin token rotates: the new one works, the old one stops working (401, or 429
    // once this address's failures — the polls below — pass the throttle's limit).
    write_tokens(&[
        ("ops", "ops-2", "platform-admin"),
        ("sidecar", "sidecar-1", "sidecar"),
        ("sidecar", "sidecar-2", "sidecar"),
    ]);
    wait_until(
        "the rotated admin token",
        || control.log(),
        || status("ops-2") == 200 && [401, 429].contains(&status("ops-1")),
    );
    // A broken file keeps the tokens in force, and says so.
    std::fs::write(&tokens_file, "ops plain-text-token\n").expect("broken");
    wait_until(
        "the broken tokens file refused",
        || control.log(),
        || control.log().contains("admin tokens not reloaded"),
    );
    assert_eq!(status("ops-2"), 200);
    write_tokens(&[
        ("ops", "ops-2", "platform-admin"),
        ("sidecar", "sidecar-1", "sidecar"),
        ("sidecar", "sidecar-2", "sidecar"),
    ]);

    // A sidecar on sidecar-1 rotates to sidecar-2 while running.
    let sidecar_token = dir.join("sidecar-token");
    std::fs::write(&sidecar_token, "sidecar-1\n").expect("token");
    let mut proxy = Portcullis::start_proxy_unready(
        &upstream,
        &keys,
        &format!(
            "control_plane:\n  url: http://{}\n  token_file: {}\n  heartbeat_ms: 200\n  max_staleness_seconds: 30\n",
            control.admin,
            sidecar_token.display()
        ),
        "",
    );
    proxy.wait_until_ready();
    let alice = keys.token("alice", json!({}));
    let zoe = keys.token("zoe", json!({}));
    assert_eq!(
        proxy.get(D1, Some(&alice), &[]).status,
        200,
        "{}",
        proxy.log()
    );
    let state_file = proxy.dir.join("data/last-known-good.json");
    let inode = || {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&state_file).map(|m| m.ino()).unwrap_or(0)
    };
    let sealed_before = inode();
    std::fs::write(&sidecar_token, "sidecar-2\n").expect("rotate");
    // The last-known-good file is written again (a new file renamed over), sealed under
    // the new token.
    wait_until(
        "the state sealed again under the new token",
        || proxy.log(),
        || inode() != sealed_before,
    );
    assert!(
        proxy.log().contains("control-plane token reloaded"),
        "{}",
        proxy.log()
    );

    // The old sidecar token is revoked and everything restarts with the control plane
    // down: the sidecar starts from the state sealed under its new token...
    write_tokens(&[
        ("ops", "ops-2", "platform-admin"),
        ("sidecar", "sidecar-2", "sidecar"),
    ]);
    control.kill9();
    proxy.kill9();
    proxy.restart();
    assert!(
        proxy.log().contains("serving the last-known-good state"),
        "{}",
        proxy.log()
    );
    assert_eq!(proxy.get(D1, Some(&alice), &[]).status, 200);
    // ...and follows the control plane with it once it is back.
    control.restart();
    let r = crate::harness::json_request(
        control.admin,
        "PUT",
        "/v1/principals/users/zoe",
        &[("authorization", "Bearer ops-2")],
        &json!({"kind": "user", "id": "zoe", "tenant": "t1"}),
    )
    .expect("admin call");
    assert_eq!(r.status, 200, "{}", r.body);
    let r = crate::harness::json_request(
        control.admin,
        "POST",
        "/v1/assignments",
        &[("authorization", "Bearer ops-2")],
        &json!({"id": "zoe-guest", "principal": "User::\"zoe\"", "role": "guest", "scope": {"entity": "Space::\"s1\""}}),
    )
    .expect("admin call");
    assert_eq!(r.status, 201, "{}", r.body);
    wait_status(
        &proxy,
        &zoe,
        200,
        "a change followed with the rotated token",
    );
    std::fs::remove_dir_all(dir).ok();
}
