//! The store under `portcullis serve`: opening it (an SQLite file in the data directory
//! unless PostgreSQL is configured), keeping it in step with the policies directory, loading
//! the demo data into a new one, and loading it into the first snapshot (the admin API's
//! publisher follows it from there).
//!
//! The policies directory and the admin API both write policies and roles; the newer intent
//! wins. At start and on every reload, a directory that changed since it was last stored
//! (its digest differs from the one recorded then) is stored as a new version, in one
//! transaction, refused whole if it does not compile. A directory that did not change leaves
//! the store alone, so what was written through the admin API since survives restarts.

use portcullis_engine::snapshot::Snapshot;
use portcullis_model::{Assignment, EntityRecord, Principal, Role};
use portcullis_store::{Import, SqlStore, Store, StoreConfig};
use serde::Deserialize;

use crate::config::Config;
use crate::policy_dir::PolicyDir;

/// The demo data loaded into a new store.
const DEMO_DATA: &str = include_str!("../../deploy/examples/demo-data.yaml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DemoData {
    principals: Vec<Principal>,
    entities: Vec<EntityRecord>,
    assignments: Vec<Assignment>,
}

/// The store configuration `serve` uses.
pub fn store_config(config: &Config) -> StoreConfig {
    match &config.store.postgres_url {
        Some(url) => StoreConfig::Postgres { url: url.clone() },
        None => StoreConfig::Sqlite {
            path: config
                .store
                .sqlite_path
                .clone()
                .unwrap_or_else(|| config.data_dir.join("store.db")),
        },
    }
}

/// Opens the store, creating the data directory (mode 0700) when needed.
pub async fn open(config: &Config) -> Result<SqlStore, String> {
    if config.store.postgres_url.is_none() {
        portcullis_ledger::private_file::create_dir(&config.data_dir).map_err(|e| e.to_string())?;
    }
    SqlStore::connect(&store_config(config))
        .await
        .map_err(|e| format!("cannot open the store: {e}"))
}

/// What [`sync_policies`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Synced {
    /// The store was empty: policies, roles (and the demo data, if asked) were imported.
    Initialised {
        /// Whether the demo data went in too.
        demo: bool,
    },
    /// The directory changed since it was last stored: stored now.
    Updated {
        /// The policy-set version it replaced when that one came from elsewhere (the admin
        /// API): `version 7 by alice`.
        replaced: Option<String>,
    },
    /// The directory did not change since it was last stored.
    Unchanged,
}

impl Synced {
    /// Says what happened, when something did.
    pub fn log(&self) {
        match self {
            Self::Initialised { demo } => {
                tracing::info!(demo_data = demo, "new store initialised from the policies")
            }
            Self::Updated { replaced: None } => {
                tracing::info!("the policies directory changed since it was last stored; stored")
            }
            Self::Updated {
                replaced: Some(replaced),
            } => tracing::warn!(
                replaced,
                "the policies directory changed since it was last stored; it replaces the policy set written through the admin API"
            ),
            Self::Unchanged => {}
        }
    }
}

/// The `created_by` of policy-set versions stored from the directory.
const DIR_AUTHOR: &str = "policies.dir";

/// A digest of everything the directory stores: schema, policy files, roles.
fn dir_digest(sources: &portcullis_engine::policy::PolicySources, roles: &[Role]) -> String {
    let files: Vec<(&str, &str)> = sources
        .files
        .iter()
        .map(|f| (file_name(&f.name), f.text.as_str()))
        .collect();
    let encoded = serde_json::to_vec(&(&sources.schema.text, files, roles)).unwrap_or_default();
    format!("sha256:{}", portcullis_ledger::sha256_hex(&encoded))
}

/// Stores the directory's policies and roles when the directory changed since it was last
/// stored (see the module documentation).
pub async fn sync_policies(
    store: &SqlStore,
    dir: &PolicyDir,
    with_demo_data: bool,
) -> Result<Synced, String> {
    let sources = &dir.sources;
    let mut dir_roles: Vec<Role> = sources.roles.clone();
    dir_roles.sort_by(|a, b| a.name.cmp(&b.name));
    let digest = dir_digest(sources, &dir_roles);
    let stored_digest = store
        .policies_dir_digest()
        .await
        .map_err(|e| format!("cannot read the store: {e}"))?;
    if stored_digest.as_deref() == Some(digest.as_str()) {
        return Ok(Synced::Unchanged);
    }
    let stored = store
        .current_policy_set()
        .await
        .map_err(|e| format!("cannot read the stored policy set: {e}"))?;
    let stored_roles = store
        .list_roles()
        .await
        .map_err(|e| format!("cannot read the stored roles: {e}"))?;
    let same_policies = stored.as_ref().is_some_and(|v| {
        v.schema == sources.schema.text
            && v.files.len() == sources.files.len()
            && v.files
                .iter()
                .zip(&sources.files)
                .all(|(a, b)| a.text == b.text && file_name(&a.name) == file_name(&b.name))
    });
    let same_roles = dir_roles.iter().all(|r| stored_roles.contains(r));
    let fresh = stored.is_none();
    let replaced = stored
        .as_ref()
        .filter(|v| !same_policies && v.created_by.as_deref() != Some(DIR_AUTHOR))
        .map(|v| {
            format!(
                "version {} by {}",
                v.version,
                v.created_by.as_deref().unwrap_or("an unknown writer")
            )
        });
    let mut import = Import {
        roles: if same_roles { Vec::new() } else { dir_roles },
        policy_set: (!same_policies).then(|| {
            (
                sources
                    .files
                    .iter()
                    .map(|f| portcullis_model::PolicyFile {
                        name: file_name(&f.name).to_owned(),
                        text: f.text.clone(),
                    })
                    .collect(),
                sources.schema.text.clone(),
            )
        }),
        policies_dir_digest: Some(digest),
        author: Some(String::from(DIR_AUTHOR)),
        ..Import::default()
    };
    let demo = fresh && with_demo_data;
    if demo {
        let data: DemoData = serde_saphyr::from_str(DEMO_DATA)
            .map_err(|e| format!("the built-in demo data is invalid: {e}"))?;
        import.principals = data.principals;
        import.entities = data.entities;
        import.assignments = data.assignments;
    }
    store
        .import(&import)
        .await
        .map_err(|e| format!("the store refused the policies: {e}"))?;
    Ok(if fresh {
        Synced::Initialised { demo }
    } else if same_policies && same_roles {
        // Only the digest was recorded (a store from before digests, or a directory put
        // back to what the store holds).
        Synced::Unchanged
    } else {
        Synced::Updated { replaced }
    })
}

/// The admin tokens of `serve`: `admin.tokens` inline, the configured file, or
/// `<data_dir>/admin-tokens`, created on the first start with one random token for `admin`
/// whose plain text goes to `<data_dir>/admin-token` (0600). Returns the tokens and, when
/// the default file is used, where the plain token is. A file is re-read when it changes
/// ([`admin_tokens_file`]).
pub fn admin_tokens(
    config: &Config,
) -> Result<
    (
        portcullis_admin_api::AdminTokens,
        Option<std::path::PathBuf>,
    ),
    String,
> {
    let Some(path) = admin_tokens_file(config) else {
        let lines = config.admin.tokens.as_deref().unwrap_or_default();
        let tokens = portcullis_admin_api::AdminTokens::parse(&lines.replace(';', "\n"))
            .map_err(|problems| format!("admin.tokens: {}", problems.join("; ")))?;
        return Ok((tokens, None));
    };
    let mut plain = None;
    if config.admin.tokens_file.is_none() {
        portcullis_ledger::private_file::create_dir(&config.data_dir).map_err(|e| e.to_string())?;
        let plain_file = config.data_dir.join("admin-token");
        if !path.exists() {
            use rand::RngCore;
            let mut bytes = [0_u8; 24];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            let token = portcullis_ledger::hex::hex(&bytes);
            portcullis_ledger::private_file::create(&plain_file, format!("{token}\n").as_bytes())
                .map_err(|e| e.to_string())?;
            portcullis_ledger::private_file::create(
                &path,
                format!(
                    "# Admin API tokens: <subject> sha256:<hex> [roles=<role>,...] [tenant=<tenant>]\n\
                     # What each role may do is decided by policies/admin.cedar.\n\
                     {} roles=platform-admin\n",
                    portcullis_admin_api::auth::token_line("admin", &token)
                )
                .as_bytes(),
            )
            .map_err(|e| e.to_string())?;
        }
        plain = Some(plain_file);
    }
    Ok((read_admin_tokens(&path)?, plain))
}

/// The admin tokens file in use, unless the tokens are given inline (`admin.tokens`).
pub fn admin_tokens_file(config: &Config) -> Option<std::path::PathBuf> {
    if config.admin.tokens.is_some() {
        return None;
    }
    Some(
        config
            .admin
            .tokens_file
            .clone()
            .unwrap_or_else(|| config.data_dir.join("admin-tokens")),
    )
}

/// Reads and parses an admin tokens file; the error names the file and each bad line.
pub fn read_admin_tokens(
    path: &std::path::Path,
) -> Result<portcullis_admin_api::AdminTokens, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("admin.tokens_file `{}`: cannot read: {e}", path.display()))?;
    portcullis_admin_api::AdminTokens::parse(&text).map_err(|problems| {
        format!(
            "admin.tokens_file `{}`: {}",
            path.display(),
            problems.join("; ")
        )
    })
}

/// The file name of a path as given (`policies/default.cedar` → `default.cedar`).
fn file_name(path: &str) -> &str {
    path.rsplit(['/', '\\']).next().unwrap_or(path)
}

/// Loads the whole store into a snapshot.
pub async fn load_snapshot(store: &SqlStore) -> Result<Snapshot, String> {
    let state = store
        .load_state()
        .await
        .map_err(|e| format!("cannot load the store: {e}"))?;
    Snapshot::build(state, jiff::Timestamp::now().as_millisecond())
        .map_err(|e| format!("the stored state does not compile: {e}"))
}
