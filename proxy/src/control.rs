//! The control plane inside `serve` and `control`: the store (opened, synced with the
//! policies directory, loaded into the first snapshot — see [`crate::embedded`]), the
//! publisher that carries each commit to the snapshot and to every watching sidecar, the
//! relay of commits made by other replicas, and the admin API. The composition root
//! ([`crate::app`]) starts it beside the data plane's parts.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use portcullis_admin_api::authz::AdminPolicies;
use portcullis_admin_api::publish::{ChangeFeed, PublishMetrics, Publisher};
use portcullis_engine::snapshot::{HeldEntityTypes, Snapshot};
use portcullis_store::{SqlStore, StoreConfig};

use crate::admin_jwt::AdminJwt;
use crate::app::Failure;
use crate::audit::Audit;
use crate::config::Config;
use crate::data_plane::authn::Authenticator;
use crate::data_plane::{DataPlane, Gate};
use crate::embedded;
use crate::metrics::Metrics;
use crate::process::{Background, Mode};
use crate::reload;
use crate::tls::ReloadingCert;

/// The store side of the process, opened.
#[derive(Debug)]
pub struct StoreSide {
    /// The store.
    pub store: SqlStore,
    /// The admin API's policies (`admin.cedar`), swapped on reload.
    pub admin_policies: Arc<ArcSwap<AdminPolicies>>,
    /// The policies directory in use, for the start-up log.
    pub policy_root: String,
}

impl StoreSide {
    /// Opens the store, brings it in step with the policies directory (loading the demo
    /// data into a new store when `demo_data`), and makes the first snapshot and the gate
    /// over the directory's route map.
    pub(crate) async fn open(
        config: &Config,
        demo_data: bool,
        metrics: &Metrics,
    ) -> Result<(Self, Snapshot, Gate), Failure> {
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
        let admin_policies = Arc::new(ArcSwap::new(Arc::clone(&compiled.admin)));
        let gate = reload::gate(config, compiled, metrics).map_err(Failure::Input)?;
        let side = Self {
            store,
            admin_policies,
            policy_root,
        };
        Ok((side, snapshot, gate))
    }

    /// Which database, for logs.
    pub fn describe(&self, config: &Config) -> String {
        match embedded::store_config(config) {
            StoreConfig::Sqlite { path } => format!("sqlite:{}", path.display()),
            StoreConfig::Postgres { .. } => String::from("postgres"),
        }
    }

    /// Starts the publisher, the relay of other replicas' commits, the configured event
    /// sources and, when enabled, the admin API (admin JWTs verified with `authn`'s keys)
    /// with the follower of its live event stream, under `background`'s signal.
    pub(crate) fn spawn(
        &self,
        background: &Background,
        config: &Config,
        mode: Mode,
        plane: &Arc<DataPlane>,
        audit: Option<&Audit>,
        authn: &Arc<Authenticator>,
    ) -> Result<(), Failure> {
        let held = match &config.state.held_entity_types {
            Some(types) => HeldEntityTypes::only(types.iter().cloned()),
            None => HeldEntityTypes::ALL,
        };
        let feed = Arc::new(ChangeFeed::new(plane.snapshot.load().revision(), held));
        let publisher = Publisher::new(
            self.store.clone(),
            Arc::clone(&plane.snapshot),
            Arc::clone(&feed),
            Some(PublishMetrics {
                updates: plane.metrics.snapshot_updates.clone(),
                revision: plane.metrics.snapshot_revision.clone(),
                encodes: plane.metrics.feed_encodes.clone(),
                shared_cache_writes: plane.metrics.shared_cache_writes.clone(),
            }),
        );
        let shared_cache = shared_cache_target(config).map_err(|e| Failure::Input(vec![e]))?;
        let publisher = match &shared_cache {
            Some(target) => publisher.with_shared_cache(target.clone()),
            None => publisher,
        };
        background.spawn(publisher.run());
        background.spawn({
            let store = self.store.clone();
            async move { store.relay_peer_commits().await }
        });
        let keys = event_keys(config).map_err(|e| Failure::Input(vec![e]))?;
        let mut events = portcullis_events::Ingest::new(self.store.clone(), keys)
            .counting_in(plane.metrics.events.clone());
        if let Some(audit) = audit {
            events = events.recording_in(Arc::clone(audit.ledger()));
        }
        spawn_event_sources(background, config, &events);
        if let Some(audit) = audit {
            spawn_audit_sources(background, config, &self.store, audit, events.metrics());
        }
        if !config.admin.enabled {
            return Ok(());
        }
        // What `GET /v1/events/stream` serves consoles.
        background.spawn(Arc::clone(events.stream()).follow(self.store.clone()));
        let (tokens, plain) =
            embedded::admin_tokens(config).map_err(|e| Failure::Input(vec![e]))?;
        let mut auth = portcullis_admin_api::AdminAuth::new(tokens)
            .with_failure_limit(portcullis_admin_api::FailureLimit {
                max_failures: config.admin.failed_auth.max_failures,
                window: std::time::Duration::from_secs(config.admin.failed_auth.window_seconds),
            })
            .counting_failures_in(plane.metrics.admin_auth_failures.clone());
        if let Some(jwt) = &config.admin.jwt {
            auth = auth.with_jwt(Arc::new(AdminJwt::new(Arc::clone(authn), jwt)));
        }
        if let Some(file) = embedded::admin_tokens_file(config) {
            background.spawn(watch_admin_tokens(
                file,
                auth.tokens(),
                plane.metrics.reloads.clone(),
            ));
        }
        let stop = background.stop_signal();
        let router = portcullis_admin_api::app(
            portcullis_admin_api::AppState {
                events,
                store: self.store.clone(),
                snapshot: Arc::clone(&plane.snapshot),
                feed,
                ledger: audit.map(|a| Arc::clone(a.ledger())),
                admin_policies: Arc::clone(&self.admin_policies),
                route_guard: mode.serves_data_plane().then(|| {
                    Arc::new(reload::ServedRoutes(Arc::clone(plane)))
                        as Arc<dyn portcullis_admin_api::RouteGuard>
                }),
                stopping: stop.clone(),
                shared_cache,
            },
            auth,
        );
        // The injection webhook beside the admin API, outside its authentication: the API
        // server calls it.
        let router = if config.inject.webhook {
            router.merge(crate::inject::webhook::router(
                crate::inject::Injector::new(config.inject.clone()),
                plane.metrics.injections.clone(),
            ))
        } else {
            router
        };
        let address = config.admin.address.clone();
        let listener = background
            .block_on(tokio::net::TcpListener::bind(&address))
            .map_err(|e| {
                Failure::Runtime(format!("admin.address: cannot listen on `{address}`: {e}"))
            })?;
        tracing::info!(
            admin = %address,
            tls = config.admin.tls.is_some(),
            token = plain.as_ref().map(|p: &PathBuf| p.display().to_string()),
            "admin API listening"
        );
        match &config.admin.tls {
            None => background.spawn_until(crate::admin_tls::serve(listener, router, stop)),
            Some(tls) => {
                let cert = ReloadingCert::new(tls.cert_file.clone(), tls.key_file.clone())
                    .map_err(|e| Failure::Input(vec![format!("admin.tls: {e}")]))?;
                let cert = Arc::new(cert);
                let server = crate::admin_tls::server_config(tls, Arc::clone(&cert))
                    .map_err(|e| Failure::Input(vec![e]))?;
                background.spawn(cert.watch(plane.metrics.reloads.clone()));
                let listener = background.block_on(async {
                    crate::admin_tls::TlsListener::start(listener, Arc::new(server), stop.clone())
                });
                background.spawn_until(crate::admin_tls::serve(listener, router, stop));
            }
        }
        Ok(())
    }
}

/// The shared state cache the control plane writes, when `state.redis` names one.
fn shared_cache_target(
    config: &Config,
) -> Result<Option<portcullis_admin_api::publish::SharedCacheTarget>, String> {
    let Some(redis) = &config.state.redis else {
        return Ok(None);
    };
    let cache = portcullis_l2::SharedCache::new(
        &redis.url,
        &redis.key_prefix,
        std::time::Duration::from_millis(redis.timeout_ms),
    )
    .map_err(|e| format!("state.redis.url: {e}"))?;
    Ok(Some(portcullis_admin_api::publish::SharedCacheTarget {
        cache: Arc::new(cache),
        ttl: std::time::Duration::from_secs(redis.ttl_seconds),
    }))
}

/// Re-reads the admin tokens file whenever it changes: a rotated token works on the next
/// call, a removed one stops working; a file that does not parse keeps the tokens in force.
async fn watch_admin_tokens(
    file: PathBuf,
    tokens: Arc<ArcSwap<portcullis_admin_api::AdminTokens>>,
    reloads: prometheus::IntCounterVec,
) {
    let paths = vec![file.clone()];
    crate::file_watch::reload_on_change(paths, "admin tokens", reloads, || {
        tokens.store(Arc::new(embedded::read_admin_tokens(&file)?));
        Ok(())
    })
    .await;
}

/// Starts a consumer for each configured queue of other services' audit events
/// (`events.audit_sqs`), appending them to `audit`'s ledger.
fn spawn_audit_sources(
    background: &Background,
    config: &Config,
    store: &SqlStore,
    audit: &Audit,
    metrics: &portcullis_events::EventMetrics,
) {
    use portcullis_events::external_audit::ExternalAudit;
    use portcullis_events::sources::sqs;
    let external = ExternalAudit::new(store.clone(), Arc::clone(audit.ledger()), metrics.clone());
    for q in &config.events.audit_sqs {
        background.spawn(sqs::consume(external.clone(), sqs_source(q)));
    }
}

/// Starts a consumer for each configured queue of lifecycle events (`events.sqs`,
/// `events.redis`), all feeding `events`.
fn spawn_event_sources(
    background: &Background,
    config: &Config,
    events: &portcullis_events::Ingest<SqlStore>,
) {
    use portcullis_events::sources::{redis, sqs};
    for q in &config.events.sqs {
        background.spawn(sqs::consume(events.clone(), sqs_source(q)));
    }
    if let Some(r) = &config.events.redis {
        background.spawn(redis::consume(
            events.clone(),
            redis::RedisSource {
                url: r.url.clone(),
                stream: r.stream.clone(),
                group: r.group.clone(),
                consumer: r
                    .consumer
                    .clone()
                    .unwrap_or_else(|| crate::audit::instance_name(config)),
                field: r.field.clone(),
                batch: r.batch,
                block_ms: r.block_ms,
                claim_idle_ms: r.claim_idle_ms,
            },
        ));
    }
}

/// The keys seed-000 event signatures are checked with (`events.signature_keys`).
fn event_keys(config: &Config) -> Result<portcullis_events::envelope::SignatureKeys, String> {
    let mut keys = std::collections::HashMap::new();
    for (id, file) in &config.events.signature_keys {
        let key = portcullis_ledger::checkpoint::load_public_key(file)
            .map_err(|e| format!("events.signature_keys.{id}: {e}"))?;
        keys.insert(id.clone(), key);
    }
    Ok(portcullis_events::envelope::SignatureKeys::new(keys))
}

/// The consumer settings of one configured queue.
fn sqs_source(q: &crate::config::EventsSqsConfig) -> portcullis_events::sources::sqs::SqsSource {
    portcullis_events::sources::sqs::SqsSource {
        queue_url: q.queue_url.clone(),
        region: q.region.clone(),
        endpoint_url: q.endpoint_url.clone(),
        batch: q.batch,
        wait_seconds: q.wait_seconds,
        visibility_timeout_seconds: q.visibility_timeout_seconds,
    }
}
