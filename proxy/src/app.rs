//! The composition root of `serve`, `control` and `proxy`: from a configuration, a mode and
//! a source of state to a running process, in one order for every mode.
//!
//! 1. the state: from the store (`serve`, `control`: policies synced from `policies.dir`,
//!    the snapshot loaded) or from a control plane (`proxy`: bootstrapped, or the
//!    last-known-good file, the ops address answering meanwhile), and the route map over
//!    its policies;
//! 2. the keys (their source is chosen before step 1, so a `proxy` without keys stops
//!    before it waits for a state), the HTTPS certificate, the audit ledger — the parts
//!    the data plane is given, each prepared from the configuration;
//! 3. the listeners checked, the data plane assembled with the process's metrics;
//! 4. the background tasks under one shutdown signal ([`Background`]): keys, certificate,
//!    route-map checks, audit sinks, reloads, and per source the publisher and the admin
//!    API, or the follower;
//! 5. the listeners served until a signal; then the tasks stopped within the grace
//!    period and the ledger closed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use portcullis_engine::snapshot::{SnapshotHandle, StoreState};

use crate::audit::{Audit, Opened};
use crate::cli::{Exit, key_sources};
use crate::config::{Config, Override, RateLimitHeaders, StateMode};
use crate::data_plane::assertion::Asserter;
use crate::data_plane::authn::Authenticator;
use crate::data_plane::limits::{Lockout, LockoutSettings, RateLimiter};
use crate::data_plane::staleness::Contact;
use crate::data_plane::{DataPlane, Health};
use crate::follow::{self, ControlPlane, Keeper, LastKnownGood};
use crate::metrics::Metrics;
use crate::ops::Bootstrapping;
use crate::process::{Background, Mode, join_audit_keeper};
use crate::reload::{self, Reloader};
use crate::state_cache::StateCache;
use crate::tls::ReloadingCert;

/// What to run.
#[derive(Debug)]
pub struct Launch {
    /// The configuration in force at start.
    pub config: Config,
    /// Where it came from, for reloads: the file and the `--set` overrides.
    pub config_file: Option<PathBuf>,
    /// The overrides given at start (flags included).
    pub sets: Vec<Override>,
    /// Which listeners run.
    pub mode: Mode,
    /// Where the state comes from.
    pub source: Source,
}

/// Where the state of the process comes from.
#[derive(Debug)]
pub enum Source {
    /// The store itself, kept in step with the policies directory (`serve`, `control`);
    /// `demo_data` loads the demo data into a new store.
    #[cfg(feature = "control-plane")]
    Store {
        /// Load the demo data into a new store.
        demo_data: bool,
    },
    /// A control plane, followed (`proxy`).
    ControlPlane(Box<Following>),
}

/// How `portcullis proxy` follows its control plane.
#[derive(Debug)]
pub struct Following {
    /// The control plane's client.
    pub control: ControlPlane,
    /// Its URL, for the start-up log.
    pub url: String,
    /// The file its token is read from, re-read when it changes.
    pub token_file: PathBuf,
    /// The sealed last-known-good file.
    pub state_file: LastKnownGood,
}

/// Why the process did not start.
pub(crate) enum Failure {
    /// Configuration, policies or keys the user must fix (exit 3).
    Input(Vec<String>),
    /// Anything else (exit 1).
    Runtime(String),
}

/// The state the process starts with, and what keeps it current.
enum State {
    /// The store, its publisher and the admin API's policies.
    #[cfg(feature = "control-plane")]
    Store(crate::control::StoreSide),
    /// The state followed from a control plane, and what the follower needs.
    Followed(Box<Followed>),
}

/// The state `proxy` starts with.
struct Followed {
    following: Box<Following>,
    /// The whole state (the last-known-good writer's copy).
    state: StoreState,
    /// When it was last known current (wall clock, ms).
    confirmed_ms: i64,
}

/// Runs until SIGTERM or SIGINT.
pub fn run(launch: Launch) -> Exit {
    pingora::tls::install_default_crypto_provider();
    match start_and_serve(launch) {
        Ok(()) => {
            tracing::info!("stopped");
            Exit::Ok
        }
        Err(Failure::Input(problems)) => {
            for p in &problems {
                eprintln!("{p}");
            }
            tracing::error!(problems = problems.len(), "not started: invalid input");
            Exit::InvalidInput
        }
        Err(Failure::Runtime(e)) => {
            tracing::error!(error = %e, "not started");
            Exit::Failure
        }
    }
}

fn start_and_serve(launch: Launch) -> Result<(), Failure> {
    let Launch {
        config,
        config_file,
        sets,
        mode,
        source,
    } = launch;
    let background = Background::new().map_err(Failure::Runtime)?;
    let metrics = Arc::new(Metrics::new());

    // The token keys first: `proxy` without any refuses before it waits for a state.
    let (key_sources, issuer, dev_key) =
        key_sources(&config, mode).map_err(|e| Failure::Input(vec![e]))?;

    // 1. The state and the route map over its policies.
    let (state, snapshot, gate) = match source {
        #[cfg(feature = "control-plane")]
        Source::Store { demo_data } => {
            let (side, snapshot, gate) = background.block_on(crate::control::StoreSide::open(
                &config, demo_data, &metrics,
            ))?;
            (State::Store(side), snapshot, gate)
        }
        Source::ControlPlane(following) => {
            portcullis_ledger::private_file::create_dir(&config.data_dir)
                .map_err(|e| Failure::Runtime(e.to_string()))?;
            // Alive at once, ready once bootstrapped: the ops address answers meanwhile.
            let early = background
                .block_on(Bootstrapping::start(
                    &config.ops.address,
                    Arc::clone(&metrics),
                ))
                .map_err(Failure::Runtime)?;
            let (mut state, confirmed_ms) =
                background.block_on(follow::bootstrap(&following.control, &following.state_file));
            background.block_on(early.stop());
            if config.state.mode == StateMode::Cached {
                // A state file named by hand may be a full one: hold the shared part only
                // (with the entities it holds; the control plane's first update says
                // whether it holds others).
                state = state.shared(&state.held_entity_types.clone());
            }
            let snapshot = follow::build(state.clone()).map_err(Failure::Runtime)?;
            let gate = reload::local_route_map(&config, snapshot.policies())
                .and_then(|routes| {
                    crate::prepare::gate(&config, routes, &metrics).map_err(|e| vec![e])
                })
                .map_err(Failure::Input)?;
            let state = State::Followed(Box::new(Followed {
                following,
                state,
                confirmed_ms,
            }));
            (state, snapshot, gate)
        }
    };

    // 2. The parts the data plane is given.
    let settings = crate::prepare::auth_settings(&config.auth, issuer.clone())
        .map_err(|e| Failure::Input(vec![e]))?;
    let authn = Arc::new(Authenticator::new(
        settings,
        config.auth.token_cache_entries,
    ));
    authn.keep_claims(gate.routes.reads_claims());
    for (index, keys) in key_sources.iter().enumerate() {
        match keys.load_local() {
            Ok(Some(set)) => authn.set_keys(index, set),
            Ok(None) => {}
            Err(e) => return Err(Failure::Input(vec![format!("{keys}: {e}")])),
        }
    }
    let assertion = match &config.identity_assertion {
        a if a.enabled && mode.serves_data_plane() => {
            let key_file = a.key_path(&config.data_dir);
            if a.key_file.is_none() {
                portcullis_ledger::private_file::create_dir(&config.data_dir)
                    .map_err(|e| Failure::Runtime(e.to_string()))?;
            }
            let asserter = Asserter::new(&key_file, &a.issuer, &a.audience, a.lifetime_seconds)
                .map_err(|e| Failure::Input(vec![format!("identity_assertion: {e}")]))?;
            Some(Arc::new(asserter))
        }
        _ => None,
    };
    let cert = match &config.listen.tls {
        Some(tls) if mode.serves_data_plane() => Some(Arc::new(
            ReloadingCert::new(tls.cert_file.clone(), tls.key_file.clone())
                .map_err(|e| Failure::Input(vec![format!("listen.tls: {e}")]))?,
        )),
        _ => None,
    };
    if gate.settings.context.clock_is_fixed() {
        tracing::warn!(
            fixed_time = config.context.fixed_time.as_deref(),
            "the clock is pinned by context.fixed_time: for tests and demos only"
        );
    }
    let (audit, recorder, audit_keeper) =
        match Audit::open(&config).map_err(|e| Failure::Runtime(format!("audit: {e}")))? {
            Some(Opened {
                audit,
                recorder,
                keeper,
            }) => (Some(Arc::new(audit)), Some(recorder), Some(keeper)),
            None => (None, None, None),
        };

    // 3. The listeners, and the data plane.
    crate::server::check_binds(&config, mode).map_err(Failure::Runtime)?;
    let contact = match &state {
        State::Followed(f) => Some(Arc::new(Contact::new(
            Duration::from_secs(config.control_plane.max_staleness_seconds),
            f.confirmed_ms,
        ))),
        #[cfg(feature = "control-plane")]
        State::Store(_) => None,
    };
    let state_cache = match &state {
        State::Followed(f) if config.state.mode == StateMode::Cached => Some(Arc::new(
            state_cache(&config, &f.following.control, &metrics)
                .map_err(|e| Failure::Input(vec![e]))?,
        )),
        _ => {
            if config.state.mode == StateMode::Cached {
                tracing::warn!(
                    "state.mode `cached` applies to `portcullis proxy`; this process holds the whole state"
                );
            }
            None
        }
    };
    let plane = Arc::new(DataPlane {
        gate: arc_swap::ArcSwap::from_pointee(gate),
        snapshot: Arc::new(SnapshotHandle::new(snapshot)),
        state_cache: state_cache.clone(),
        authn: Arc::clone(&authn),
        assertion,
        health: Arc::new(Health::default()),
        recorder,
        contact: contact.clone(),
        rate_limiter: rate_limiter(&config, &metrics).map_err(|e| Failure::Input(vec![e]))?,
        lockout: config.lockout.enabled.then(|| {
            Lockout::new(
                LockoutSettings {
                    max_failures: config.lockout.max_failures,
                    window: Duration::from_secs(config.lockout.window_seconds),
                    cool_down: Duration::from_secs(config.lockout.cool_down_seconds),
                    max_keys: config.lockout.max_keys,
                },
                &metrics,
            )
        }),
        metrics: Arc::clone(&metrics),
    });
    log_start(&config, mode, &state, &plane, audit.as_deref());
    if let Some(key) = dev_key.as_ref().filter(|_| mode.serves_data_plane()) {
        tracing::warn!(
            key = %key.path().display(),
            issuer,
            "no JWKS configured: trusting the dev signing key; get a token with `portcullis token --sub alice`"
        );
    }

    // 4. The background tasks.
    for (index, keys) in key_sources.into_iter().enumerate() {
        background.spawn(keys.run(Arc::clone(&authn), index, metrics.jwks_refreshes.clone()));
    }
    if let Some(cache) = &plane.state_cache {
        background.spawn(Arc::clone(cache).maintain());
    }
    if mode.serves_data_plane() {
        background.spawn(reload::watch_route_map(Arc::clone(&plane)));
        background.spawn(report_limit_keys(Arc::clone(&plane)));
    }
    if let Some(cert) = &cert {
        background.spawn(Arc::clone(cert).watch(metrics.reloads.clone()));
    }
    for forward in audit.as_ref().map(|a| a.forwarders()).unwrap_or_default() {
        background.spawn(forward);
    }
    let reloader = Reloader {
        config_file,
        sets,
        #[cfg(feature = "control-plane")]
        store: match &state {
            State::Store(side) => Some(side.store.clone()),
            State::Followed(_) => None,
        },
        #[cfg(feature = "control-plane")]
        admin_policies: match &state {
            State::Store(side) => Some(Arc::clone(&side.admin_policies)),
            State::Followed(_) => None,
        },
        plane: Arc::clone(&plane),
        current: config.clone(),
    };
    match state {
        #[cfg(feature = "control-plane")]
        State::Store(side) => {
            side.spawn(&background, &config, mode, &plane, audit.as_deref(), &authn)?;
        }
        State::Followed(f) => {
            let Followed {
                following, state, ..
            } = *f;
            let state_path = following.state_file.path().to_path_buf();
            let keeper = Keeper::start(following.state_file, state).map_err(Failure::Runtime)?;
            background.spawn(follow::watch_token(
                following.token_file,
                following.control.clone(),
                keeper.clone(),
                state_path,
                metrics.reloads.clone(),
            ));
            if let Some(contact) = contact {
                background.spawn(follow::follow(
                    following.control,
                    follow::Applier {
                        handle: Arc::clone(&plane.snapshot),
                        cache: state_cache,
                    },
                    keeper,
                    contact,
                    Duration::from_millis(config.control_plane.heartbeat_ms),
                    metrics.snapshot_updates.clone(),
                ));
            }
        }
    }
    background.spawn(reloader.run());

    // 5. Serve until a signal, then stop.
    crate::server::run(&config, plane, cert, audit, mode);
    background.stop(Duration::from_secs(config.shutdown.grace_period_seconds));
    join_audit_keeper(audit_keeper);
    Ok(())
}

/// The counters of route rate limits, counting `shared` ones in `rate_limits.redis` when
/// it names one.
fn rate_limiter(config: &Config, metrics: &Metrics) -> Result<RateLimiter, String> {
    let shared = match &config.rate_limits.redis {
        Some(redis) => Some(
            portcullis_l2::rate::SharedRateLimits::new(
                &redis.url,
                &redis.key_prefix,
                Duration::from_millis(redis.timeout_ms),
            )
            .map_err(|e| format!("rate_limits.redis.url: {e}"))?,
        ),
        None => None,
    };
    let announce = config.rate_limits.headers == RateLimitHeaders::All;
    Ok(RateLimiter::new(
        config.rate_limits.max_keys,
        shared,
        announce,
        metrics,
    ))
}

/// Reports how many keys the bounded tables of rate limits and the lockout hold, every
/// ten seconds (counting them settles the tables' pending evictions too).
async fn report_limit_keys(plane: Arc<DataPlane>) {
    let rate = plane.metrics.limit_keys.with_label_values(&["rate"]);
    let lockout = plane.metrics.limit_keys.with_label_values(&["lockout"]);
    loop {
        rate.set(i64::try_from(plane.rate_limiter.keys()).unwrap_or(i64::MAX));
        if let Some(l) = &plane.lockout {
            lockout.set(i64::try_from(l.keys()).unwrap_or(i64::MAX));
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

/// The state cache of cached state mode, reading the shared cache when `state.redis`
/// names one.
fn state_cache(
    config: &Config,
    control: &ControlPlane,
    metrics: &Arc<Metrics>,
) -> Result<StateCache, String> {
    let shared = match &config.state.redis {
        Some(redis) => Some(Arc::new(
            portcullis_l2::SharedCache::new(
                &redis.url,
                &redis.key_prefix,
                Duration::from_millis(redis.timeout_ms),
            )
            .map_err(|e| format!("state.redis.url: {e}"))?,
        )),
        None => None,
    };
    Ok(StateCache::new(
        config.state.cache_max_bytes,
        Duration::from_millis(config.state.miss_timeout_ms),
        shared,
        control.clone(),
        Arc::clone(metrics),
    ))
}

/// The one start-up line of each mode.
fn log_start(config: &Config, mode: Mode, state: &State, plane: &DataPlane, audit: Option<&Audit>) {
    let revision = plane.snapshot.load().revision();
    match (mode, state) {
        (_, State::Followed(f)) => tracing::info!(
            data_plane = %config.listen.address,
            ops = %config.ops.address,
            control_plane = f.following.url,
            state = ?config.state.mode,
            shared_cache = config.state.redis.is_some(),
            revision,
            state_file = %f.following.state_file.path().display(),
            "portcullis proxy starting"
        ),
        #[cfg(feature = "control-plane")]
        (Mode::Control, State::Store(side)) => tracing::info!(
            admin = %config.admin.address,
            ops = %config.ops.address,
            store = %side.describe(config),
            policies = side.policy_root,
            revision,
            "portcullis control starting"
        ),
        #[cfg(feature = "control-plane")]
        (_, State::Store(side)) => tracing::info!(
            data_plane = %config.listen.address,
            ops = %config.ops.address,
            upstream = config.upstreams.first().map(|u| u.address.as_str()),
            store = %side.describe(config),
            policies = side.policy_root,
            revision,
            routes = plane.gate.load().routes.len(),
            mode = ?plane.gate.load().settings.mode,
            "portcullis serve starting"
        ),
    }
    match audit {
        Some(a) => tracing::info!(
            ledger = %a.dir.display(),
            public_key = %a.public_key.display(),
            "audit ledger open; check it with `portcullis audit verify {} --public-key {}`",
            a.dir.display(),
            a.public_key.display()
        ),
        None => tracing::warn!("audit.enabled is false: decisions leave no record"),
    }
}
