//! The fleet benchmark: one control plane on PostgreSQL with a shared cache in Redis, many
//! `portcullis proxy` sidecars in cached state mode (one thread each) on this machine, a
//! request mix over many principals (Zipf), changes during the run, then outages.
//! `bench/fleet` builds the binaries and runs it; every figure it prints goes to
//! BENCHMARKS.md with the command.
//!
//! ```text
//! fleet --portcullis BIN --work DIR --postgres URL --redis-server BIN
//!       [--principals 1000000] [--assignments 5000000] [--documents 1000000]
//!       [--held "[Tenant]"] [--sidecars 100]
//!       [--seconds 60] [--rate 1000] [--changes 10] [--full-sidecar true]
//!       [--affinity false] [--pg-restart COMMAND]
//! ```
//!
//! Phases:
//! 1. seed: `--principals` users (`u0`…, tenant `household`) with `--assignments`
//!    assignments (`member`/`guest` on one of 50,000 spaces) and, with `--documents`, the
//!    spaces and that many documents spread over them, imported into a new database; the
//!    control plane loads them and holds the `--held` entity types in the shared view
//!    (`state.held_entity_types`; spaces and documents are fetched by default); the
//!    sidecars start (bootstrap: the shared part only);
//! 2. load: `--rate` requests/s for `--seconds`, each for a principal drawn from a Zipf
//!    law (s = 1) over all users, to a sidecar in turn, for a document of the principal's
//!    own space (most allowed) or another's (denied), fetched like the principal — with
//!    `--affinity`, each user's requests all to one sidecar, as when users stick to one app
//!    instance; meanwhile `--changes` changes, alternately through the
//!    admin API and as lifecycle events, to a principal first asked at every sidecar (so
//!    each holds it): the time until every sidecar enforces each is measured;
//! 3. outages, each with probes of principals every sidecar holds ("hot") and of principals
//!    none has seen ("cold"): Redis killed (cold ones come from the control plane), the
//!    control plane killed (hot ones still decided, cold ones 503 `state_unavailable`, then
//!    back once it is), PostgreSQL restarted (`--pg-restart` command, when given);
//! 4. with `--full-sidecar`, one sidecar in full mode on the same data: its bootstrap time
//!    and memory.
//!
//! The control plane's cost per change is read from its metrics: revisions published,
//! encodes per view, slices written to Redis.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use portcullis_store::{SqlStore, Store, StoreConfig};
use serde_json::json;

#[path = "../population.rs"]
mod population;

/// Ports from here on: Redis, the upstream, the control plane, then two per sidecar.
const BASE_PORT: u16 = 31_000;

struct Args {
    portcullis: PathBuf,
    work: PathBuf,
    postgres: String,
    redis_server: PathBuf,
    principals: usize,
    assignments: usize,
    documents: usize,
    held: String,
    sidecars: usize,
    seconds: u64,
    rate: u64,
    changes: usize,
    full_sidecar: bool,
    affinity: bool,
    pg_restart: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        portcullis: PathBuf::from("portcullis"),
        work: std::env::temp_dir().join("portcullis-fleet"),
        postgres: String::from("postgres://postgres@127.0.0.1:5432/fleet"),
        redis_server: PathBuf::from("redis-server"),
        principals: 1_000_000,
        assignments: 5_000_000,
        documents: 1_000_000,
        held: String::from("[Tenant]"),
        sidecars: 100,
        seconds: 60,
        rate: 1000,
        changes: 10,
        full_sidecar: true,
        affinity: false,
        pg_restart: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--portcullis" => args.portcullis = PathBuf::from(value),
            "--work" => args.work = PathBuf::from(value),
            "--postgres" => args.postgres = value,
            "--redis-server" => args.redis_server = PathBuf::from(value),
            "--principals" => args.principals = value.parse().map_err(|e| bad(&e))?,
            "--assignments" => args.assignments = value.parse().map_err(|e| bad(&e))?,
            "--documents" => args.documents = value.parse().map_err(|e| bad(&e))?,
            "--held" => args.held = value,
            "--sidecars" => args.sidecars = value.parse().map_err(|e| bad(&e))?,
            "--seconds" => args.seconds = value.parse().map_err(|e| bad(&e))?,
            "--rate" => args.rate = value.parse().map_err(|e| bad(&e))?,
            "--changes" => args.changes = value.parse().map_err(|e| bad(&e))?,
            "--full-sidecar" => args.full_sidecar = value.parse().map_err(|e| bad(&e))?,
            "--affinity" => args.affinity = value.parse().map_err(|e| bad(&e))?,
            "--pg-restart" => args.pg_restart = Some(value),
            other => return Err(format!("unknown flag `{other}`")),
        }
    }
    if args.principals == 0 || args.sidecars == 0 || args.rate == 0 {
        return Err(String::from(
            "--principals, --sidecars and --rate must be above 0",
        ));
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("fleet: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fleet: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet: {e}");
            ExitCode::FAILURE
        }
    }
}

fn say(what: impl std::fmt::Display) {
    eprintln!("== {what}");
}

/// A process of the fleet, killed when dropped.
struct Proc {
    child: Child,
    name: String,
    data: u16,
    ops: u16,
    command: Vec<String>,
    log: PathBuf,
}

impl Proc {
    fn spawn(
        name: &str,
        command: Vec<String>,
        log: PathBuf,
        data: u16,
        ops: u16,
    ) -> Result<Self, String> {
        let child = spawn(&command, &log)?;
        Ok(Self {
            child,
            name: name.to_owned(),
            data,
            ops,
            command,
            log,
        })
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.child = spawn(&self.command, &self.log)?;
        Ok(())
    }

    fn rss_bytes(&self) -> u64 {
        rss_bytes(self.child.id())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(command: &[String], log: &Path) -> Result<Child, String> {
    let (program, args) = command.split_first().ok_or("empty command")?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("{program}: {e}"))
}

fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn sets(pairs: &[(&str, String)]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|(k, v)| [String::from("--set"), format!("{k}={v}")])
        .collect()
}

/// Everything the phases share.
struct Fleet {
    args: Args,
    http: reqwest::Client,
    key: portcullis_proxy::devkey::DevKey,
    tokens: std::sync::Mutex<HashMap<usize, Arc<str>>>,
    control: Proc,
    admin: u16,
    admin_token: String,
    sidecars: Vec<Proc>,
    redis: Proc,
    per_user: usize,
}

async fn run(args: Args) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(&args.work);
    std::fs::create_dir_all(&args.work).map_err(|e| e.to_string())?;
    let work = args.work.clone();
    let (key, _) = portcullis_proxy::devkey::DevKey::load_or_create(&work)?;
    let jwks = work.join("jwks.json");
    std::fs::write(&jwks, key.jwks()).map_err(|e| e.to_string())?;

    say("redis and an upstream");
    let redis_port = BASE_PORT;
    let redis = Proc::spawn(
        "redis",
        vec![
            args.redis_server.display().to_string(),
            String::from("--port"),
            redis_port.to_string(),
            String::from("--save"),
            String::new(),
            String::from("--appendonly"),
            String::from("no"),
        ],
        work.join("redis.log"),
        redis_port,
        redis_port,
    )?;
    let upstream = BASE_PORT + 1;
    tokio::spawn(serve_upstream(upstream));

    say(format!("control plane on {}", args.postgres));
    let admin = BASE_PORT + 2;
    let control_ops = BASE_PORT + 3;
    let redis_url = format!("redis://127.0.0.1:{redis_port}/");
    let root = std::env::current_dir().map_err(|e| e.to_string())?;
    let mut command = vec![
        args.portcullis.display().to_string(),
        String::from("control"),
        String::from("--no-demo-data"),
    ];
    command.extend(sets(&[
        ("store.postgres_url", args.postgres.clone()),
        ("admin.address", format!("127.0.0.1:{admin}")),
        ("ops.address", format!("127.0.0.1:{control_ops}")),
        ("data_dir", work.join("control").display().to_string()),
        ("policies.dir", root.join("policies").display().to_string()),
        ("state.redis.url", redis_url.clone()),
        // What cached sidecars hold in full; other entities are fetched like users.
        ("state.held_entity_types", args.held.clone()),
        ("audit.enabled", String::from("false")),
        ("log.level", String::from("warn")),
    ]));
    let control = Proc::spawn(
        "control",
        command,
        work.join("control.log"),
        admin,
        control_ops,
    )?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    wait_ready(&http, &control, Duration::from_secs(120)).await?;

    say(format!(
        "seeding {} users with {} assignments, {} documents",
        args.principals, args.assignments, args.documents
    ));
    let started = Instant::now();
    let per_user = population::per_user(args.principals, args.assignments);
    let revision = seed(&args).await?;
    eprintln!(
        "   imported at revision {revision} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    wait_metric(
        &http,
        control_ops,
        "portcullis_snapshot_revision",
        |v| v >= revision as f64,
        Duration::from_secs(1800),
    )
    .await?;
    eprintln!(
        "   the control plane holds it after {:.1} s (RSS {} MiB)",
        started.elapsed().as_secs_f64(),
        control.rss_bytes() >> 20
    );
    let admin_token = std::fs::read_to_string(work.join("control/admin-token"))
        .map_err(|e| format!("admin token: {e}"))?
        .trim()
        .to_owned();

    let mut fleet = Fleet {
        args,
        http,
        key,
        tokens: std::sync::Mutex::new(HashMap::new()),
        control,
        admin,
        admin_token,
        sidecars: Vec::new(),
        redis,
        per_user,
    };
    say(format!(
        "{} sidecars (cached state, one thread each)",
        fleet.args.sidecars
    ));
    let started = Instant::now();
    for n in 0..fleet.args.sidecars {
        let proc = fleet.start_sidecar(n, &jwks, upstream, &redis_url, "cached")?;
        fleet.sidecars.push(proc);
    }
    for s in &fleet.sidecars {
        wait_ready(&fleet.http, s, Duration::from_secs(300)).await?;
    }
    eprintln!(
        "   all ready after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let idle_rss: Vec<u64> = fleet.sidecars.iter().map(Proc::rss_bytes).collect();
    let control_before = fleet.control_counts().await;

    say(format!(
        "load: {} requests/s for {} s over {} principals (Zipf), {} changes meanwhile",
        fleet.args.rate, fleet.args.seconds, fleet.args.principals, fleet.args.changes
    ));
    let fleet = Arc::new(fleet);
    let load = tokio::spawn(Arc::clone(&fleet).load());
    let changes = Arc::clone(&fleet).changes().await?;
    let load = load.await.map_err(|e| e.to_string())??;
    let control_after = fleet.control_counts().await;
    let busy_rss: Vec<u64> = fleet.sidecars.iter().map(Proc::rss_bytes).collect();
    let cache = fleet.cache_figures().await;

    println!(
        "\n## fleet: {} sidecars, {} users, {} assignments, {} documents, {} requests/s for {} s, {}\n",
        fleet.args.sidecars,
        fleet.args.principals,
        fleet.args.assignments,
        fleet.args.documents,
        fleet.args.rate,
        fleet.args.seconds,
        if fleet.args.affinity {
            "each user to one sidecar"
        } else {
            "sidecars in turn"
        }
    );
    println!("| figure | value |\n|---|---|");
    println!(
        "| requests | {} sent: {} allowed, {} denied, {} state_unavailable, {} other |",
        load.sent, load.allowed, load.denied, load.unavailable, load.other
    );
    println!(
        "| client latency p50 / p99 | {:.2} ms / {:.2} ms |",
        load.p50_ms, load.p99_ms
    );
    println!(
        "| state cache hit ratio (users and documents) | {:.3} ({} hits, {} misses over all sidecars) |",
        cache.hits / (cache.hits + cache.misses).max(1.0),
        cache.hits,
        cache.misses
    );
    println!(
        "| miss latency p50 / p99 (histogram buckets, upper bounds) | {} / {} |",
        cache.miss_p50, cache.miss_p99
    );
    println!(
        "| misses served by the shared cache / the control plane | {} / {} |",
        cache.from_shared, cache.from_control
    );
    println!(
        "| sidecar RSS idle: mean / max | {} / {} MiB |",
        mean(&idle_rss) >> 20,
        idle_rss.iter().max().copied().unwrap_or(0) >> 20
    );
    println!(
        "| sidecar RSS after the load: mean / max | {} / {} MiB |",
        mean(&busy_rss) >> 20,
        busy_rss.iter().max().copied().unwrap_or(0) >> 20
    );
    println!(
        "| control plane RSS | {} MiB |",
        fleet.control.rss_bytes() >> 20
    );
    let revisions = control_after.revision - control_before.revision;
    println!(
        "| control plane per revision ({} published) | {:.2} full encodes, {:.2} shared encodes, {:.2} slices written to Redis |",
        revisions,
        (control_after.encodes_full - control_before.encodes_full) / revisions.max(1.0),
        (control_after.encodes_shared - control_before.encodes_shared) / revisions.max(1.0),
        (control_after.slices_written - control_before.slices_written) / revisions.max(1.0),
    );
    println!(
        "| change enforced at all {} sidecars ({} changes: admin API, events) p50 / p99 / max | {:.0} / {:.0} / {:.0} ms |",
        fleet.args.sidecars,
        changes.len() / fleet.args.sidecars.max(1),
        quantile(&changes, 0.5),
        quantile(&changes, 0.99),
        quantile(&changes, 1.0)
    );

    let fleet = Arc::try_unwrap(fleet).map_err(|_| String::from("fleet still shared"))?;
    fleet.outages(&jwks, upstream, &redis_url).await
}

fn mean(values: &[u64]) -> u64 {
    values.iter().sum::<u64>() / u64::try_from(values.len().max(1)).unwrap_or(1)
}

fn quantile(sorted_ms: &[f64], q: f64) -> f64 {
    if sorted_ms.is_empty() {
        return f64::NAN;
    }
    let at = ((sorted_ms.len() as f64 * q).ceil() as usize).clamp(1, sorted_ms.len()) - 1;
    sorted_ms.get(at).copied().unwrap_or(f64::NAN)
}

/// An upstream answering 200 to everything (keep-alive, Content-Length).
async fn serve_upstream(port: u16) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(listener) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await else {
        eprintln!("fleet: the upstream cannot listen on {port}");
        return;
    };
    while let Ok((mut socket, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut buf = vec![0_u8; 16 * 1024];
            let mut held = 0;
            loop {
                let Ok(n) = socket.read(buf.get_mut(held..).unwrap_or_default()).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                held += n;
                let seen = buf.get(..held).unwrap_or_default();
                if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                    let rest = held - (end + 4);
                    buf.copy_within(end + 4..held, 0);
                    held = rest;
                    if socket
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                } else if held == buf.len() {
                    return;
                }
            }
        });
    }
}

async fn seed(args: &Args) -> Result<i64, String> {
    let mut import = population::import(args.principals, args.assignments, "fleet")?;
    import.entities = population::entities(args.documents)?;
    let store = SqlStore::connect(&StoreConfig::Postgres {
        url: args.postgres.clone(),
    })
    .await
    .map_err(|e| e.to_string())?;
    store.import(&import).await.map_err(|e| e.to_string())
}

async fn wait_ready(http: &reqwest::Client, p: &Proc, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        let ready = http
            .get(format!("http://127.0.0.1:{}/readyz", p.ops))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(&p.log).unwrap_or_default();
            return Err(format!("{} not ready after {limit:?}:\n{log}", p.name));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The samples of `name` (summed over label sets that contain every pair of `labels`).
async fn metric(http: &reqwest::Client, ops: u16, name: &str, labels: &[(&str, &str)]) -> f64 {
    let Ok(response) = http
        .get(format!("http://127.0.0.1:{ops}/metrics"))
        .send()
        .await
    else {
        return f64::NAN;
    };
    let text = response.text().await.unwrap_or_default();
    sum_samples(&text, name, labels)
}

fn sum_samples(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

async fn wait_metric(
    http: &reqwest::Client,
    ops: u16,
    name: &str,
    done: impl Fn(f64) -> bool,
    limit: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while !done(metric(http, ops, name, &[]).await) {
        if Instant::now() > deadline {
            return Err(format!("{name} never got there"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// Answers of the load, by kind.
#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    allowed: AtomicU64,
    denied: AtomicU64,
    unavailable: AtomicU64,
    other: AtomicU64,
}

#[derive(Default)]
struct LoadFigures {
    sent: u64,
    allowed: u64,
    denied: u64,
    unavailable: u64,
    other: u64,
    p50_ms: f64,
    p99_ms: f64,
}

struct ControlCounts {
    revision: f64,
    encodes_full: f64,
    encodes_shared: f64,
    slices_written: f64,
}

struct CacheFigures {
    hits: f64,
    misses: f64,
    from_shared: f64,
    from_control: f64,
    miss_p50: String,
    miss_p99: String,
}

/// A Zipf law (s = 1) over `n` ranks, sampled by its cumulative distribution.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for rank in 1..=n {
            total += 1.0 / rank as f64;
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Self { cdf }
    }

    fn sample(&self, uniform: f64) -> usize {
        self.cdf.partition_point(|c| *c < uniform)
    }
}

impl Fleet {
    fn start_sidecar(
        &self,
        n: usize,
        jwks: &Path,
        upstream: u16,
        redis_url: &str,
        mode: &str,
    ) -> Result<Proc, String> {
        let port = |k: usize| {
            u16::try_from(usize::from(BASE_PORT) + 100 + 2 * n + k).map_err(|e| e.to_string())
        };
        let (data, ops) = (port(0)?, port(1)?);
        let dir = self.args.work.join(format!("sidecar-{mode}-{n}"));
        let mut command = vec![
            self.args.portcullis.display().to_string(),
            String::from("proxy"),
            String::from("--control-plane"),
            format!("http://127.0.0.1:{}", self.admin),
            String::from("--token-file"),
            self.args
                .work
                .join("control/admin-token")
                .display()
                .to_string(),
        ];
        command.extend(sets(&[
            ("listen.address", format!("127.0.0.1:{data}")),
            ("ops.address", format!("127.0.0.1:{ops}")),
            ("upstreams.0.address", format!("127.0.0.1:{upstream}")),
            ("data_dir", dir.display().to_string()),
            ("auth.jwks_file", jwks.display().to_string()),
            (
                "auth.issuer",
                String::from(portcullis_proxy::devkey::DEV_ISSUER),
            ),
            ("threads", String::from("1")),
            ("state.mode", mode.to_owned()),
            ("state.redis.url", redis_url.to_owned()),
            ("audit.enabled", String::from("false")),
            ("log.level", String::from("warn")),
        ]));
        Proc::spawn(
            &format!("sidecar-{n}"),
            command,
            self.args.work.join(format!("sidecar-{mode}-{n}.log")),
            data,
            ops,
        )
    }

    fn token(&self, user: usize) -> Result<Arc<str>, String> {
        if let Some(t) = self.tokens.lock().map_err(|e| e.to_string())?.get(&user) {
            return Ok(Arc::clone(t));
        }
        let now = jiff::Timestamp::now().as_second();
        let token: Arc<str> = Arc::from(self.key.sign(&json!({
            "iss": portcullis_proxy::devkey::DEV_ISSUER,
            "aud": portcullis_proxy::devkey::DEV_AUDIENCE,
            "sub": format!("u{user}"),
            "iat": now - 10,
            "exp": now + 3600,
        }))?);
        self.tokens
            .lock()
            .map_err(|e| e.to_string())?
            .insert(user, Arc::clone(&token));
        Ok(token)
    }

    /// A document in the user's own first space: allowed.
    fn own_path(&self, user: usize) -> String {
        let document = population::own_document(user, self.per_user, self.args.documents);
        format!(
            "/v1/spaces/s{}/documents/d{}",
            population::own_space(user, self.per_user),
            document.unwrap_or(1)
        )
    }

    /// `(status, reason)` of one request by `user` at sidecar `s`.
    async fn ask(&self, s: usize, user: usize, path: &str) -> Result<(u16, String), String> {
        let sidecar = self.sidecars.get(s).ok_or("no such sidecar")?;
        let token = self.token(user)?;
        let response = self
            .http
            .get(format!("http://127.0.0.1:{}{path}", sidecar.data))
            .bearer_auth(&*token)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        let reason = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("reason")?.as_str().map(str::to_owned))
            .unwrap_or_default();
        Ok((status, reason))
    }

    async fn load(self: Arc<Self>) -> Result<LoadFigures, String> {
        let zipf = Arc::new(Zipf::new(self.args.principals));
        let total = self.args.rate * self.args.seconds;
        let interval = Duration::from_secs_f64(1.0 / self.args.rate as f64);
        let counts = Arc::new(Counts::default());
        let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(
            usize::try_from(total).unwrap_or(0),
        )));
        let started = tokio::time::Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..total {
            tokio::time::sleep_until(started + interval * u32::try_from(i).unwrap_or(u32::MAX))
                .await;
            let me = Arc::clone(&self);
            let (zipf, counts, latencies) = (
                Arc::clone(&zipf),
                Arc::clone(&counts),
                Arc::clone(&latencies),
            );
            tasks.spawn(async move {
                let user = zipf.sample(rand::random::<f64>());
                // Each sidecar in turn, or (affinity) the one in front of this user's app
                // instance, as when a user's requests stick to one pod.
                let s = if me.args.affinity {
                    user % me.sidecars.len()
                } else {
                    usize::try_from(i).unwrap_or(0) % me.sidecars.len()
                };
                // One in five asks for another's space: denied.
                let path = if i % 5 == 0 {
                    me.own_path(user + 1)
                } else {
                    me.own_path(user)
                };
                let sent = Instant::now();
                let counter = match me.ask(s, user, &path).await {
                    Ok((200, _)) => &counts.allowed,
                    Ok((403, _)) => &counts.denied,
                    Ok((503, reason)) if reason == "state_unavailable" => &counts.unavailable,
                    _ => &counts.other,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                counts.sent.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut l) = latencies.lock() {
                    l.push(sent.elapsed().as_secs_f64() * 1000.0);
                }
            });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
        let mut latencies = latencies.lock().map_err(|e| e.to_string())?.clone();
        latencies.sort_by(f64::total_cmp);
        Ok(LoadFigures {
            sent: counts.sent.load(Ordering::Relaxed),
            allowed: counts.allowed.load(Ordering::Relaxed),
            denied: counts.denied.load(Ordering::Relaxed),
            unavailable: counts.unavailable.load(Ordering::Relaxed),
            other: counts.other.load(Ordering::Relaxed),
            p50_ms: quantile(&latencies, 0.5),
            p99_ms: quantile(&latencies, 0.99),
        })
    }

    /// Primes `user` at every sidecar (each then holds it), makes a change, and returns how
    /// long each sidecar took to enforce it (ms).
    async fn changes(self: Arc<Self>) -> Result<Vec<f64>, String> {
        let mut all = Vec::new();
        let gap = Duration::from_secs(self.args.seconds)
            / u32::try_from(self.args.changes + 1).unwrap_or(1);
        for c in 0..self.args.changes {
            tokio::time::sleep(gap).await;
            // A user the Zipf mix rarely asks for: its slice is in no cache by chance.
            let user = self.args.principals - 1 - c;
            let path = self.own_path(user);
            for s in 0..self.sidecars.len() {
                let (status, reason) = self.ask(s, user, &path).await?;
                if status != 200 {
                    return Err(format!(
                        "u{user} at sidecar {s} before the change: {status} {reason}"
                    ));
                }
            }
            let suspend = c % 2 == 0;
            let now = jiff::Timestamp::now();
            let (uri, body) = if suspend {
                (
                    String::from("/v1/principals/users/") + &format!("u{user}"),
                    json!({"kind": "user", "id": format!("u{user}"), "tenant": "household", "status": "suspended"}),
                )
            } else {
                (
                    String::from("/v1/events"),
                    json!({"id": format!("fleet-{c}"), "type": "user.deactivated", "timestamp": now.to_string(), "userId": format!("u{user}"), "data": {}}),
                )
            };
            let method = if suspend {
                reqwest::Method::PUT
            } else {
                reqwest::Method::POST
            };
            let sent = Instant::now();
            let response = self
                .http
                .request(method, format!("http://127.0.0.1:{}{uri}", self.admin))
                .bearer_auth(&self.admin_token)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!(
                    "change {c}: {} {}",
                    response.status(),
                    response.text().await.unwrap_or_default()
                ));
            }
            let mut waits = tokio::task::JoinSet::new();
            for s in 0..self.sidecars.len() {
                let me = Arc::clone(&self);
                let path = path.clone();
                waits.spawn(async move {
                    let deadline = sent + Duration::from_secs(30);
                    loop {
                        if let Ok((403, _)) = me.ask(s, user, &path).await {
                            return Ok(sent.elapsed().as_secs_f64() * 1000.0);
                        }
                        if Instant::now() > deadline {
                            return Err(format!("sidecar {s} never enforced change {c}"));
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                });
            }
            while let Some(done) = waits.join_next().await {
                all.push(done.map_err(|e| e.to_string())??);
            }
        }
        all.sort_by(f64::total_cmp);
        Ok(all)
    }

    async fn control_counts(&self) -> ControlCounts {
        let ops = self.control.ops;
        ControlCounts {
            revision: metric(&self.http, ops, "portcullis_snapshot_revision", &[]).await,
            encodes_full: metric(
                &self.http,
                ops,
                "portcullis_feed_encodes_total",
                &[("view", "full")],
            )
            .await,
            encodes_shared: metric(
                &self.http,
                ops,
                "portcullis_feed_encodes_total",
                &[("view", "shared")],
            )
            .await,
            slices_written: metric(
                &self.http,
                ops,
                "portcullis_shared_cache_writes_total",
                &[("outcome", "written")],
            )
            .await,
        }
    }

    async fn cache_figures(&self) -> CacheFigures {
        let mut texts = Vec::new();
        for s in &self.sidecars {
            if let Ok(r) = self
                .http
                .get(format!("http://127.0.0.1:{}/metrics", s.ops))
                .send()
                .await
            {
                texts.push(r.text().await.unwrap_or_default());
            }
        }
        let sum = |name: &str, labels: &[(&str, &str)]| -> f64 {
            texts.iter().map(|t| sum_samples(t, name, labels)).sum()
        };
        // The miss histogram, summed over the sidecars: the bucket a quantile falls in.
        let bucket = "portcullis_state_cache_miss_duration_seconds_bucket";
        let bounds = [
            "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
            "0.25", "0.5", "1", "2.5", "5", "10", "+Inf",
        ];
        let cumulative: Vec<(&str, f64)> = bounds
            .iter()
            .map(|b| (*b, sum(bucket, &[("le", b)])))
            .collect();
        let count = cumulative.last().map_or(0.0, |(_, c)| *c);
        let at = |q: f64| {
            cumulative
                .iter()
                .find(|(_, c)| *c >= q * count)
                .map_or(String::from("-"), |(b, _)| format!("≤ {b} s"))
        };
        CacheFigures {
            hits: sum("portcullis_state_cache_lookups_total", &[("result", "hit")]),
            misses: sum(
                "portcullis_state_cache_lookups_total",
                &[("result", "miss")],
            ),
            from_shared: sum(
                "portcullis_state_cache_fetches_total",
                &[("source", "shared_cache"), ("outcome", "found")],
            ),
            from_control: sum(
                "portcullis_state_cache_fetches_total",
                &[("source", "control_plane"), ("outcome", "found")],
            ),
            miss_p50: at(0.5),
            miss_p99: at(0.99),
        }
    }

    /// Asks each of `users` at every sidecar once; counts (decided, state_unavailable,
    /// other).
    async fn probe(&self, users: &[usize]) -> (usize, usize, usize) {
        let (mut decided, mut unavailable, mut other) = (0, 0, 0);
        for &user in users {
            let path = self.own_path(user);
            for s in 0..self.sidecars.len() {
                match self.ask(s, user, &path).await {
                    Ok((200 | 403, _)) => decided += 1,
                    Ok((503, r)) if r == "state_unavailable" => unavailable += 1,
                    _ => other += 1,
                }
            }
        }
        (decided, unavailable, other)
    }

    async fn outages(mut self, jwks: &Path, upstream: u16, redis_url: &str) -> Result<(), String> {
        // Hot: asked at every sidecar now, so each holds them. Cold: never asked before.
        let hot: Vec<usize> = (0..5).collect();
        let _ = self.probe(&hot).await;
        let mut cold = (1..).map(|k| self.args.principals / 2 + k * 7);
        let mut next_cold = |n: usize| -> Vec<usize> { (&mut cold).take(n).collect() };
        println!(
            "\n| outage | principals held (hot) | principals not held (cold) |\n|---|---|---|"
        );
        let line = |what: &str, hot: (usize, usize, usize), cold: (usize, usize, usize)| {
            println!(
                "| {what} | {} decided, {} state_unavailable, {} other | {} decided, {} state_unavailable, {} other |",
                hot.0, hot.1, hot.2, cold.0, cold.1, cold.2
            );
        };

        self.redis.kill();
        let before = self.cache_figures().await;
        let (h, c) = (self.probe(&hot).await, self.probe(&next_cold(3)).await);
        let after = self.cache_figures().await;
        line(
            &format!(
                "Redis killed (cold misses served by the control plane: {})",
                after.from_control - before.from_control
            ),
            h,
            c,
        );
        self.redis.restart()?;

        self.control.kill();
        let (h, c) = (self.probe(&hot).await, self.probe(&next_cold(3)).await);
        line("control plane killed", h, c);
        let started = Instant::now();
        self.control.restart()?;
        let ready = tokio::time::timeout(Duration::from_secs(1800), async {
            loop {
                let (_, unavailable, _) = self.probe(&next_cold(1)).await;
                if unavailable == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        if ready.is_err() {
            return Err(String::from(
                "the restarted control plane never served a cold principal",
            ));
        }
        let (h, c) = (self.probe(&hot).await, self.probe(&next_cold(3)).await);
        line(
            &format!(
                "control plane restarted (cold principals decided again after {:.1} s)",
                started.elapsed().as_secs_f64()
            ),
            h,
            c,
        );

        if let Some(restart) = &self.args.pg_restart {
            let mut child = Command::new("sh")
                .args(["-c", restart])
                .spawn()
                .map_err(|e| format!("{restart}: {e}"))?;
            let (h, c) = (self.probe(&hot).await, self.probe(&next_cold(3)).await);
            let _ = child.wait();
            line("PostgreSQL restarting", h, c);
        }

        if self.args.full_sidecar {
            say("one sidecar in full state mode on the same data");
            let started = Instant::now();
            let full =
                self.start_sidecar(self.args.sidecars + 1, jwks, upstream, redis_url, "full")?;
            wait_ready(&self.http, &full, Duration::from_secs(1800)).await?;
            println!(
                "\nfull state mode, same data: ready after {:.1} s, RSS {} MiB (cached mode: see above)",
                started.elapsed().as_secs_f64(),
                full.rss_bytes() >> 20
            );
        }
        Ok(())
    }
}
