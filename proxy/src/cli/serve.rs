//! `portcullis serve`: everything in one process on the embedded store — the enforcing
//! proxy, the ops listener, and the store (an SQLite file in the data directory) kept in
//! step with the policies directory. With no flags it runs on defaults: data plane on
//! `0.0.0.0:8480`, ops on `0.0.0.0:8481`, upstream `127.0.0.1:8080`, data in
//! `./portcullis-data`, policies from `./policies` (or the built-in set), the demo data in a
//! new store, and a generated dev signing key when no JWKS is configured.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{ConfigArgs, Exit, key_source, load_config, parse_sets};
use crate::admin_jwt::AdminJwt;
use crate::config::Config;
use crate::data_plane::authn::Authenticator;
use crate::data_plane::authn::source::KeySource;
use crate::data_plane::{DataPlane, Health};
use crate::embedded;
use crate::metrics::METRICS;
use crate::process::{Background, Mode, join_audit_keeper};
use crate::reload::{self, Reloader};
use crate::tls::ReloadingCert;
use portcullis_admin_api::publish::{ChangeFeed, PublishMetrics, Publisher};
use portcullis_engine::snapshot::SnapshotHandle;

/// Arguments of `serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Do not load the demo data into a new store.
    #[arg(long, env = "PORTCULLIS_NO_DEMO_DATA")]
    pub no_demo_data: bool,
}

/// Runs until SIGTERM or SIGINT.
pub fn run(args: &Args) -> Exit {
    run_mode(&args.config, args.no_demo_data, Mode::Serve)
}

/// `serve`, or `control` (the same without the data-plane listener).
pub(crate) fn run_mode(config_args: &ConfigArgs, no_demo_data: bool, mode: Mode) -> Exit {
    let data_plane = mode.serves_data_plane();
    let Some(sets) = parse_sets(&config_args.sets) else {
        return Exit::Usage;
    };
    let Some(config) = load_config(config_args.config.as_deref(), &sets) else {
        return Exit::InvalidInput;
    };
    crate::logging::init(&config.log);
    if !data_plane && !config.admin.enabled {
        eprintln!(
            "admin.enabled: `portcullis control` serves the admin API; it cannot be disabled here"
        );
        return Exit::InvalidInput;
    }
    pingora::tls::install_default_crypto_provider();

    let background = match Background::new() {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "not started");
            return Exit::Failure;
        }
    };

    let started = match background.block_on(start(&config, !no_demo_data, data_plane)) {
        Ok(s) => s,
        Err(Failure::Input(problems)) => {
            for p in &problems {
                eprintln!("{p}");
            }
            tracing::error!(problems = problems.len(), "not started: invalid input");
            return Exit::InvalidInput;
        }
        Err(Failure::Runtime(e)) => {
            tracing::error!(error = %e, "not started");
            return Exit::Failure;
        }
    };
    if let Err(e) = crate::server::check_binds(&config, mode) {
        tracing::error!(error = %e, "not started");
        return Exit::Failure;
    }

    let feed = Arc::new(ChangeFeed::new(started.plane.snapshot.load().revision()));
    background.spawn(
        Publisher::new(
            started.store.clone(),
            Arc::clone(&started.plane.snapshot),
            Arc::clone(&feed),
            Some(PublishMetrics {
                updates: METRICS.snapshot_updates.clone(),
                revision: METRICS.snapshot_revision.clone(),
            }),
        )
        .run(),
    );
    background.spawn({
        let store = started.store.clone();
        async move { store.relay_peer_commits().await }
    });
    background.spawn(started.keys.run(Arc::clone(&started.plane.authn)));
    if data_plane {
        background.spawn(reload::watch_route_map(Arc::clone(&started.plane)));
    }
    for forward in started
        .plane
        .audit
        .as_ref()
        .map(|a| a.forwarders())
        .unwrap_or_default()
    {
        background.spawn(forward);
    }
    if let Some(cert) = &started.cert {
        background.spawn(Arc::clone(cert).watch());
    }
    if let Some((auth, plain)) = started.admin {
        let stop = background.stop_signal();
        let router = portcullis_admin_api::app(
            portcullis_admin_api::AppState {
                store: started.store.clone(),
                snapshot: Arc::clone(&started.plane.snapshot),
                feed,
                ledger: started.plane.audit.as_ref().map(|a| Arc::clone(a.ledger())),
                admin_policies: Arc::clone(&started.admin_policies),
                route_guard: data_plane.then(|| {
                    Arc::new(reload::ServedRoutes(Arc::clone(&started.plane)))
                        as Arc<dyn portcullis_admin_api::RouteGuard>
                }),
                stopping: stop.clone(),
            },
            auth,
        );
        let address = config.admin.address.clone();
        match background.block_on(tokio::net::TcpListener::bind(&address)) {
            Ok(listener) => {
                tracing::info!(
                    admin = %address,
                    token = plain.as_ref().map(|p| p.display().to_string()),
                    "admin API listening"
                );
                background.spawn_until(async move {
                    // The peer address feeds the throttle of failed authentications.
                    let service =
                        router.into_make_service_with_connect_info::<std::net::SocketAddr>();
                    if let Err(e) = axum::serve(listener, service)
                        .with_graceful_shutdown(stop.cancelled_owned())
                        .await
                    {
                        tracing::error!(error = %e, "the admin API stopped");
                    }
                });
            }
            Err(e) => {
                tracing::error!(error = %e, admin = %address, "not started: cannot listen");
                return Exit::Failure;
            }
        }
    }
    background.spawn(
        Reloader {
            config_file: config_args.config.clone(),
            sets,
            store: Some(started.store),
            admin_policies: Some(started.admin_policies),
            plane: Arc::clone(&started.plane),
            current: config.clone(),
        }
        .run(),
    );

    crate::server::run(&config, started.plane, started.cert, mode);
    background.stop(Duration::from_secs(config.shutdown.grace_period_seconds));
    join_audit_keeper(started.audit_keeper);
    tracing::info!("stopped");
    Exit::Ok
}

enum Failure {
    /// Configuration, policies or keys the user must fix (exit 3).
    Input(Vec<String>),
    /// Anything else (exit 1).
    Runtime(String),
}

struct Started {
    audit_keeper: Option<std::thread::JoinHandle<()>>,
    admin: Option<(portcullis_admin_api::AdminAuth, Option<PathBuf>)>,
    plane: Arc<DataPlane>,
    store: portcullis_store::SqlStore,
    keys: KeySource,
    cert: Option<Arc<ReloadingCert>>,
    admin_policies: Arc<arc_swap::ArcSwap<portcullis_admin_api::authz::AdminPolicies>>,
}

async fn start(config: &Config, demo_data: bool, data_plane: bool) -> Result<Started, Failure> {
    let compiled = reload::load_policies(config).map_err(Failure::Input)?;
    let store = embedded::open(config).await.map_err(Failure::Runtime)?;
    let synced = embedded::sync_policies(&store, &compiled.dir, demo_data)
        .await
        .map_err(|e| Failure::Input(vec![e]))?;
    synced.log();
    let snapshot = embedded::load_snapshot(&store)
        .await
        .map_err(Failure::Runtime)?;
    let policy_root = compiled.dir.root.display().to_string();
    let admin_policies = Arc::new(arc_swap::ArcSwap::new(Arc::clone(&compiled.admin)));
    let gate = reload::gate(config, compiled).map_err(Failure::Input)?;

    let (keys, issuer, dev_key) = key_source(config).map_err(|e| Failure::Input(vec![e]))?;
    let settings = crate::prepare::auth_settings(&config.auth, issuer.clone())
        .map_err(|e| Failure::Input(vec![e]))?;
    let authn = Arc::new(Authenticator::new(
        settings,
        config.auth.token_cache_entries,
    ));
    match keys.load_local() {
        Ok(Some(set)) => authn.set_keys(set),
        Ok(None) => {}
        Err(e) => return Err(Failure::Input(vec![format!("{keys}: {e}")])),
    }
    let cert = match &config.listen.tls {
        Some(tls) => Some(Arc::new(
            ReloadingCert::new(tls.cert_file.clone(), tls.key_file.clone())
                .map_err(|e| Failure::Input(vec![format!("listen.tls: {e}")]))?,
        )),
        None => None,
    };
    if gate.settings.context.clock_is_fixed() {
        tracing::warn!(
            fixed_time = config.context.fixed_time.as_deref(),
            "the clock is pinned by context.fixed_time: for tests and demos only"
        );
    }
    if !data_plane {
        tracing::info!(
            admin = %config.admin.address,
            ops = %config.ops.address,
            store = %describe_store(config),
            policies = policy_root,
            revision = snapshot.revision(),
            "portcullis control starting"
        );
    } else {
        tracing::info!(
            data_plane = %config.listen.address,
            ops = %config.ops.address,
            upstream = config.upstreams.first().map(|u| u.address.as_str()),
            store = %describe_store(config),
            policies = policy_root,
            revision = snapshot.revision(),
            routes = gate.routes.len(),
            mode = ?gate.settings.mode,
            "portcullis serve starting"
        );
    }
    if let Some(key) = dev_key.as_ref().filter(|_| data_plane) {
        tracing::warn!(
            key = %key.path().display(),
            issuer,
            "no JWKS configured: trusting the dev signing key; get a token with `portcullis token --sub alice`"
        );
    }
    let (audit, audit_keeper) = match crate::audit::Audit::open(config)
        .map_err(|e| Failure::Runtime(format!("audit: {e}")))?
    {
        Some((audit, keeper)) => (Some(audit), Some(keeper)),
        None => (None, None),
    };
    match &audit {
        Some(a) => tracing::info!(
            ledger = %a.dir.display(),
            public_key = %a.public_key.display(),
            "audit ledger open; check it with `portcullis audit verify {} --public-key {}`",
            a.dir.display(),
            a.public_key.display()
        ),
        None => tracing::warn!("audit.enabled is false: decisions leave no record"),
    }
    let plane = Arc::new(DataPlane {
        gate: arc_swap::ArcSwap::from_pointee(gate),
        snapshot: Arc::new(SnapshotHandle::new(snapshot)),
        authn: Arc::clone(&authn),
        health: Arc::new(Health::default()),
        audit,
        contact: None,
    });
    let admin = if config.admin.enabled {
        let (tokens, plain) =
            embedded::admin_tokens(config).map_err(|e| Failure::Input(vec![e]))?;
        let mut auth = portcullis_admin_api::AdminAuth::new(tokens).with_failure_limit(
            portcullis_admin_api::FailureLimit {
                max_failures: config.admin.failed_auth.max_failures,
                window: std::time::Duration::from_secs(config.admin.failed_auth.window_seconds),
            },
        );
        if let Some(jwt) = &config.admin.jwt {
            auth = auth.with_jwt(Arc::new(AdminJwt::new(Arc::clone(&authn), jwt)));
        }
        Some((auth, plain))
    } else {
        None
    };
    Ok(Started {
        audit_keeper,
        admin,
        plane,
        store,
        keys,
        cert,
        admin_policies,
    })
}

fn describe_store(config: &Config) -> String {
    match embedded::store_config(config) {
        portcullis_store::StoreConfig::Sqlite { path } => {
            format!("sqlite:{}", path.display())
        }
        portcullis_store::StoreConfig::Postgres { .. } => String::from("postgres"),
    }
}
