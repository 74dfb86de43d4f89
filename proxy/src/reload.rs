//! Live reload of configuration, policies, roles and routes: on SIGHUP, or when the config
//! file or a file of the policies directory changes. The new state is built and checked
//! whole; only then is it swapped in. Anything invalid is logged with every problem, counted
//! (`portcullis_config_reloads_total{outcome="rejected"}`), and the old state keeps serving.
//!
//! Listener addresses, threads, authentication, the admin API, the audit ledger, store,
//! logging and shutdown settings are read at start only; a change to them is reported as
//! needing a restart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "control-plane")]
use portcullis_store::SqlStore;

use crate::config::{self, Config, Override};
use crate::data_plane::{DataPlane, Gate};
#[cfg(feature = "control-plane")]
use crate::embedded;
use crate::file_watch::FileWatch;
use crate::policy_dir::{self, ROLES_FILE, ROUTES_FILE, SCHEMA_FILE};
#[cfg(feature = "control-plane")]
use crate::policy_dir::{CompiledDir, PolicyDir};

/// The policies of a configuration: its directory, or the built-in set when the default
/// directory does not exist.
#[cfg(feature = "control-plane")]
pub fn load_policies(config: &Config) -> Result<CompiledDir, Vec<String>> {
    let dir = &config.policies.dir;
    let loaded: Result<PolicyDir, _> = if dir.exists() {
        policy_dir::load(dir)
    } else if *dir == config::PoliciesConfig::default().dir {
        policy_dir::builtin()
    } else {
        return Err(vec![format!(
            "policies.dir: `{}` does not exist",
            dir.display()
        )]);
    };
    let compiled = loaded
        .and_then(policy_dir::compile_loaded)
        .map_err(|problems| problems.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    if compiled.routes.is_none() {
        return Err(vec![format!(
            "{}: no `{ROUTES_FILE}`; the data plane needs a route map",
            compiled.dir.root.display()
        )]);
    }
    Ok(compiled)
}

/// The route map of `proxy`: `routes.yaml` of `policies.dir` (or the built-in one), checked
/// against the policies the control plane sent.
pub fn local_route_map(
    config: &Config,
    policies: &portcullis_engine::policy::CompiledPolicies,
) -> Result<crate::routes::RouteMap, Vec<String>> {
    let path = config.policies.dir.join(ROUTES_FILE);
    let (name, text) = if path.exists() {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| vec![format!("`{}`: cannot read: {e}", path.display())])?;
        (path, text)
    } else {
        let routes = policy_dir::builtin()
            .map_err(|ps| ps.iter().map(ToString::to_string).collect::<Vec<_>>())?
            .routes
            .ok_or_else(|| vec![String::from("no built-in route map")])?;
        (PathBuf::from(routes.name), routes.text)
    };
    crate::routes::compile(&name, &text, policies)
        .map_err(|ps| ps.iter().map(ToString::to_string).collect())
}

/// Builds the gate from a configuration and its compiled policies.
#[cfg(feature = "control-plane")]
pub fn gate(
    config: &Config,
    compiled: CompiledDir,
    metrics: &crate::metrics::Metrics,
) -> Result<Gate, Vec<String>> {
    let routes = compiled
        .routes
        .ok_or_else(|| vec![String::from("no route map")])?;
    crate::prepare::gate(config, routes, metrics).map_err(|e| vec![e])
}

/// Reloads on SIGHUP and on file changes.
pub struct Reloader {
    /// The config file, if any.
    pub config_file: Option<PathBuf>,
    /// `--set` flags given at start (environment overrides are re-read).
    pub sets: Vec<Override>,
    /// The store policies are synced into (`serve`); `None` for `proxy`, whose policies
    /// come from the control plane and which reloads its configuration and routes only.
    #[cfg(feature = "control-plane")]
    pub store: Option<SqlStore>,
    /// The admin API's policies (`serve`, `control`), swapped with the directory's
    /// `admin.cedar`.
    #[cfg(feature = "control-plane")]
    pub admin_policies: Option<Arc<arc_swap::ArcSwap<portcullis_admin_api::authz::AdminPolicies>>>,
    /// The data plane whose gate is swapped.
    pub plane: Arc<DataPlane>,
    /// The configuration in force.
    pub current: Config,
}

impl Reloader {
    /// The files a reload reads: the config file and the policies directory's.
    fn watched(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = self.config_file.iter().cloned().collect();
        let dir = &self.current.policies.dir;
        for name in [SCHEMA_FILE, ROLES_FILE, ROUTES_FILE] {
            paths.push(dir.join(name));
        }
        if let Ok(entries) = std::fs::read_dir(dir) {
            let mut cedar: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "cedar"))
                .collect();
            cedar.sort();
            paths.extend(cedar);
        }
        paths
    }

    /// Watches for SIGHUP and file changes until the process ends.
    pub async fn run(mut self) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; reloads follow file changes only");
                None
            }
        };
        let mut watch = FileWatch::new(self.watched());
        loop {
            let why = tokio::select! {
                _ = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => "SIGHUP",
                () = tokio::time::sleep(Duration::from_secs(2)) => {
                    if !watch.changed(self.watched()) {
                        continue;
                    }
                    "a watched file changed"
                }
            };
            self.reload(why).await;
            watch = FileWatch::new(self.watched());
        }
    }

    /// Builds and checks the new state, then swaps it in; on any problem keeps the old one.
    pub async fn reload(&mut self, why: &str) {
        match self.try_reload().await {
            Ok(()) => {
                self.plane
                    .metrics
                    .reloads
                    .with_label_values(&["applied"])
                    .inc();
                tracing::info!(trigger = why, "configuration and policies reloaded");
            }
            Err(problems) => {
                self.plane
                    .metrics
                    .reloads
                    .with_label_values(&["rejected"])
                    .inc();
                for p in &problems {
                    tracing::error!(trigger = why, problem = %p, "reload refused");
                }
                tracing::error!(
                    trigger = why,
                    problems = problems.len(),
                    "reload refused; the previous configuration and policies stay in force"
                );
            }
        }
    }

    async fn try_reload(&mut self) -> Result<(), Vec<String>> {
        let next = config::load(self.config_file.as_deref(), std::env::vars(), &self.sets)
            .map_err(|ps| ps.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        for key in restart_only_changes(&self.current, &next) {
            tracing::warn!(key, "changed; takes effect after a restart");
        }
        let gate = self.next_gate(&next).await?;
        self.plane.authn.keep_claims(gate.routes.reads_claims());
        self.plane.gate.store(Arc::new(gate));
        self.current = next;
        Ok(())
    }

    /// The gate of `next`: from the policies directory, synced into the store first
    /// (`serve`, `control`, whose admin policies follow it); or from the local route map
    /// over the policies followed from the control plane (`proxy`).
    async fn next_gate(&self, next: &Config) -> Result<Gate, Vec<String>> {
        #[cfg(feature = "control-plane")]
        if let Some(store) = &self.store {
            let compiled = load_policies(next)?;
            let admin = Arc::clone(&compiled.admin);
            let synced = embedded::sync_policies(store, &compiled.dir, false)
                .await
                .map_err(|e| vec![e])?;
            synced.log();
            if synced != embedded::Synced::Unchanged {
                self.wait_for_snapshot(store).await?;
            }
            let gate = gate(next, compiled, &self.plane.metrics)?;
            if let Some(slot) = &self.admin_policies {
                slot.store(admin);
            }
            return Ok(gate);
        }
        let routes = local_route_map(next, self.plane.snapshot.load().policies())?;
        crate::prepare::gate(next, routes, &self.plane.metrics).map_err(|e| vec![e])
    }

    /// Waits until the follower has brought the snapshot to the store's revision, so the
    /// new routes never meet the old policies.
    #[cfg(feature = "control-plane")]
    async fn wait_for_snapshot(&self, store: &SqlStore) -> Result<(), Vec<String>> {
        use portcullis_store::Store;
        let target = store
            .revision()
            .await
            .map_err(|e| vec![format!("cannot read the store revision: {e}")])?;
        for _ in 0..50 {
            if self.plane.snapshot.load().revision() >= target {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(vec![format!(
            "the snapshot did not reach revision {target} within 5 s"
        )])
    }
}

/// Keys whose change needs a restart.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if old.listen != new.listen {
        keys.push("listen");
    }
    if old.ops != new.ops {
        keys.push("ops");
    }
    if old.admin != new.admin {
        keys.push("admin");
    }
    if old.audit != new.audit {
        keys.push("audit");
    }
    if old.threads != new.threads {
        keys.push("threads");
    }
    if old.auth != new.auth {
        keys.push("auth");
    }
    if old.store != new.store || old.data_dir != new.data_dir {
        keys.push("store");
    }
    if old.log != new.log {
        keys.push("log");
    }
    if old.shutdown != new.shutdown {
        keys.push("shutdown");
    }
    if old.events != new.events {
        keys.push("events");
    }
    if old.rate_limits != new.rate_limits {
        keys.push("rate_limits");
    }
    if old.lockout != new.lockout {
        keys.push("lockout");
    }
    keys
}

/// Re-checks the route map against the policy set in force whenever either changes: a
/// control plane (or the admin API) may install a set that lacks an action a route uses,
/// and such a route then denies every request. Each problem is logged as an error and
/// counted in `portcullis_routes_unenforceable`; the change itself stands (the data plane
/// fails closed). Runs until the process ends.
pub async fn watch_route_map(plane: Arc<DataPlane>) {
    let mut published = plane.snapshot.subscribe();
    // The revision and gate last checked (the gate held, so it cannot be mistaken for a new
    // one), and what was found, so an ongoing problem is logged once, not per revision.
    let mut checked: Option<(i64, Arc<Gate>)> = None;
    let mut reported: Vec<String> = Vec::new();
    loop {
        let snapshot = plane.snapshot.load();
        let gate = plane.gate.load_full();
        let fresh = checked.as_ref().is_some_and(|(revision, old)| {
            *revision == snapshot.revision() && Arc::ptr_eq(old, &gate)
        });
        if !fresh {
            let problems = gate.routes.problems_with(snapshot.policies());
            plane
                .metrics
                .routes_unenforceable
                .set(i64::try_from(problems.len()).unwrap_or(i64::MAX));
            if problems != reported {
                for problem in &problems {
                    tracing::error!(
                        revision = snapshot.revision(),
                        "{problem}: the route denies every request until the policies or routes change"
                    );
                }
                if problems.is_empty() {
                    tracing::info!(
                        revision = snapshot.revision(),
                        "every route is enforceable again"
                    );
                }
                reported = problems;
            }
            checked = Some((snapshot.revision(), gate));
        }
        drop(snapshot);
        // Snapshots announce themselves; a reloaded route map is noticed within seconds.
        if let Ok(Err(_)) = tokio::time::timeout(Duration::from_secs(2), published.changed()).await
        {
            // No more announcements (the process is stopping): look again in a while.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

/// `serve`'s route map, guarding the admin API's policy writes: a set under which a route
/// could not be decided is refused before it is stored (`control` has no routes; its
/// followers report such a set through [`watch_route_map`]).
#[derive(Debug)]
pub struct ServedRoutes(pub Arc<DataPlane>);

#[cfg(feature = "control-plane")]
impl portcullis_admin_api::RouteGuard for ServedRoutes {
    fn problems(&self, files: &[portcullis_model::PolicyFile], schema: &str) -> Vec<String> {
        let sources = self.0.snapshot.load().candidate_sources(files, schema);
        match portcullis_engine::policy::compile(&sources) {
            Ok(candidate) => self.0.gate.load().routes.problems_with(&candidate),
            Err(_) => Vec::new(),
        }
    }
}
