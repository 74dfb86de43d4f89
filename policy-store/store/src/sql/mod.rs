//! [`SqlStore`]: the [`Store`] on SQLite or PostgreSQL through sqlx's `Any` driver.
//!
//! One code path serves both databases: queries use `$N` placeholders (which both accept),
//! plain column types, and JSON documents in `TEXT` columns beside the indexed keys. The
//! schema lives in `migrations/` and is applied on connect by sqlx's migrator, which keeps
//! what it applied (with checksums) in `_sqlx_migrations`.

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migrate, Migration, MigrationType, Migrator};
use sqlx::{AnyConnection, AnyPool, Row, SqlStr};

use super::{AssignmentFilter, Import, Store, StoreConfig};
use crate::error::StoreError;

mod events;
use portcullis_engine::policy::compile;
use portcullis_engine::snapshot::{
    HeldEntityTypes, SnapshotUpdate, StoreDelta, StoreState, policy_sources,
};
use portcullis_model::ModelError;
use portcullis_model::events::{DeadLetter, EventOutcome, EventRecord, StreamEntry};
use portcullis_model::{
    Assignment, Change, ChangeKind, EntityRecord, EntityRef, PolicyFile, PolicySetCheck,
    PolicySetSummary, PolicySetVersion, Principal, PrincipalKind, Revision, RevokedSession, Role,
    TemplateLink, UnixMillis,
};

/// The migrations of `migrations/`, embedded, with the version and description their file
/// names give (`0002_policy_versions.sql`: 2, "policy versions"); each runs once, in its own
/// transaction. Listed here rather than found by `sqlx::migrate!`, whose proc-macro would
/// build a second copy of the database drivers (bundled SQLite's C included) for the host.
const MIGRATIONS: [(i64, &str, &str); 5] = [
    (1, "init", include_str!("../../migrations/0001_init.sql")),
    (
        2,
        "policy versions",
        include_str!("../../migrations/0002_policy_versions.sql"),
    ),
    (
        3,
        "events",
        include_str!("../../migrations/0003_events.sql"),
    ),
    (
        4,
        "event stream",
        include_str!("../../migrations/0004_event_stream.sql"),
    ),
    (
        5,
        "external audit",
        include_str!("../../migrations/0005_external_audit.sql"),
    ),
];

/// Where sqlx's migrator records what it applied.
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// Where stores made before sqlx's migrator recorded applied versions (bare numbers).
const OLD_MIGRATIONS_TABLE: &str = "schema_migrations";

fn migrator() -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    description.into(),
                    MigrationType::Simple,
                    SqlStr::from_static(sql),
                    false,
                )
            })
            .collect(),
    )
}

/// Rows per multi-row `INSERT` during imports (SQLite allows 32766 parameters).
const IMPORT_BATCH: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
}

/// The store on a SQL database.
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: AnyPool,
    dialect: Dialect,
    /// The PostgreSQL URL, for [`SqlStore::relay_peer_commits`].
    postgres_url: Option<String>,
    /// The last revision committed through this process (or relayed from peers).
    commits: std::sync::Arc<tokio::sync::watch::Sender<Revision>>,
}

/// The PostgreSQL channel every commit notifies, so replicas sharing the database learn of
/// each other's writes without polling.
const COMMIT_CHANNEL: &str = "portcullis_commits";

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> UnixMillis {
    jiff::Timestamp::now().as_millisecond()
}

fn to_doc<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_doc<T: DeserializeOwned>(doc: &str) -> Result<T, StoreError> {
    serde_json::from_str(doc).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn docs<T: DeserializeOwned>(rows: &[sqlx::any::AnyRow]) -> Result<Vec<T>, StoreError> {
    rows.iter()
        .map(|row| from_doc(&row.try_get::<String, _>("doc")?))
        .collect()
}

impl SqlStore {
    /// Connects, creating the SQLite file if needed, and applies pending migrations.
    pub async fn connect(config: &StoreConfig) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let (url, dialect, max_connections) = match config {
            StoreConfig::Sqlite { path } => (
                format!("sqlite://{}?mode=rwc", path.display()),
                Dialect::Sqlite,
                4,
            ),
            StoreConfig::Postgres { url } => (url.clone(), Dialect::Postgres, 8),
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(options)
            .await?;
        let postgres_url = match config {
            StoreConfig::Postgres { url } => Some(url.clone()),
            StoreConfig::Sqlite { .. } => None,
        };
        let (commits, _) = tokio::sync::watch::channel(0);
        let store = Self {
            pool,
            dialect,
            postgres_url,
            commits: std::sync::Arc::new(commits),
        };
        if dialect == Dialect::Sqlite {
            // WAL lets readers (snapshot loads) run beside the one writer.
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&store.pool)
                .await?;
        }
        store.migrate().await?;
        Ok(store)
    }

    /// The PostgreSQL URL it was opened with; `None` on SQLite.
    pub fn postgres_url(&self) -> Option<&str> {
        self.postgres_url.as_deref()
    }

    /// Which database this is (`sqlite` or `postgres`), for logs.
    pub fn backend_name(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }

    /// Applies pending migrations with sqlx's migrator, after taking over the record of a
    /// store made before it (see [`SqlStore::adopt_old_migrations`]).
    async fn migrate(&self) -> Result<(), StoreError> {
        self.adopt_old_migrations().await?;
        Ok(migrator().run(&self.pool).await?)
    }

    /// A store made by an earlier Portcullis records its applied migrations as bare
    /// versions in `schema_migrations`. Once, in one transaction (on PostgreSQL under a lock,
    /// so replicas starting together do it once): record them in sqlx's table, with the
    /// checksums of the same files, and drop the old table. A version this binary does not
    /// know is refused: the store was made by a newer one.
    async fn adopt_old_migrations(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(7261001)")
                .execute(&mut *tx)
                .await?;
        }
        let exists = match self.dialect {
            Dialect::Sqlite => sqlx::query(
                "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = $1",
            ),
            Dialect::Postgres => sqlx::query(
                "SELECT COUNT(*) AS n FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_name = $1",
            ),
        }
        .bind(OLD_MIGRATIONS_TABLE)
        .fetch_one(&mut *tx)
        .await?
        .try_get::<i64, _>("n")?
            > 0;
        if !exists {
            return Ok(());
        }
        let applied: Vec<i64> =
            sqlx::query("SELECT version FROM schema_migrations ORDER BY version")
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get::<i64, _>("version"))
                .collect::<Result<_, _>>()?;
        let migrator = migrator();
        tx.ensure_migrations_table(MIGRATIONS_TABLE).await?;
        for version in &applied {
            let Some(m) = migrator.iter().find(|m| m.version == *version) else {
                return Err(StoreError::NewerStore(*version));
            };
            sqlx::query(
                "INSERT INTO _sqlx_migrations \
                 (version, description, success, checksum, execution_time) \
                 VALUES ($1, $2, TRUE, $3, 0)",
            )
            .bind(m.version)
            .bind(m.description.to_string())
            .bind(m.checksum.to_vec())
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DROP TABLE schema_migrations")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(
            versions = ?applied,
            "store migrations now recorded by sqlx's migrator ({MIGRATIONS_TABLE})"
        );
        Ok(())
    }

    /// Starts a write transaction holding the store's write lock from its first statement,
    /// so concurrent writers (API calls, replicas) queue instead of failing on a stale read:
    /// SQLite takes its write lock at `BEGIN IMMEDIATE` (waiting up to the busy timeout),
    /// PostgreSQL locks the revision row every write bumps anyway. Checks that read before
    /// writing (a name taken, the set still compiling, `If-Match`) hold at commit.
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        match self.dialect {
            Dialect::Sqlite => Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?),
            Dialect::Postgres => {
                let mut tx = self.pool.begin().await?;
                sqlx::query("SELECT revision FROM store_meta WHERE id = 1 FOR UPDATE")
                    .execute(&mut *tx)
                    .await?;
                Ok(tx)
            }
        }
    }

    /// Starts a read transaction that sees one consistent state.
    async fn read_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        let mut tx = self.pool.begin().await?;
        if self.dialect == Dialect::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    /// Bumps the revision and records the changes; commits.
    async fn commit(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Any>,
        changes: &[ChangeKind],
    ) -> Result<Revision, StoreError> {
        let revision = bump(&mut tx, changes).await?;
        self.finish(tx, revision).await
    }

    /// Commits a transaction whose revision [`bump`] already took, and tells followers.
    async fn finish(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Any>,
        revision: Revision,
    ) -> Result<Revision, StoreError> {
        if self.dialect == Dialect::Postgres {
            // Delivered to listening replicas when (and only if) the transaction commits.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(COMMIT_CHANNEL)
                .bind(revision.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.commits.send_replace(revision);
        Ok(revision)
    }

    /// On PostgreSQL, listens for the commits of other processes sharing the database and
    /// relays them to [`Store::commits`]; reconnects after a lost connection. Returns at
    /// once on SQLite, whose one process sees its own commits. Runs until the process ends.
    pub async fn relay_peer_commits(&self) {
        let Some(url) = &self.postgres_url else {
            return;
        };
        let mut backoff = std::time::Duration::from_millis(250);
        loop {
            match sqlx::postgres::PgListener::connect(url).await {
                Ok(mut listener) => match listener.listen(COMMIT_CHANNEL).await {
                    Ok(()) => {
                        backoff = std::time::Duration::from_millis(250);
                        loop {
                            match listener.recv().await {
                                Ok(note) => {
                                    if let Ok(revision) = note.payload().parse::<Revision>() {
                                        self.commits.send_replace(revision);
                                    }
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "lost the PostgreSQL commit notifications; reconnecting");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for PostgreSQL commit notifications")
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "cannot connect for PostgreSQL commit notifications")
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
        }
    }
}

impl SqlStore {
    /// The whole state, or its shared part, read in one consistent transaction.
    async fn load_state_of(&self, view: StateView<'_>) -> Result<StoreState, StoreError> {
        let (principals, assignments) = match view {
            StateView::Full => ("SELECT doc FROM principals", "SELECT doc FROM assignments"),
            // Groups only: the principal keys are `Group::"id"` (see `is_shared`).
            StateView::Shared(_) => (
                "SELECT doc FROM principals WHERE key LIKE 'Group::%'",
                "SELECT doc FROM assignments WHERE principal LIKE 'Group::%'",
            ),
        };
        let held = match view {
            StateView::Full => &HeldEntityTypes::ALL,
            StateView::Shared(held) => held,
        };
        let mut tx = self.read_tx().await?;
        let revision = current_revision(&mut tx).await?;
        let now = now_millis();
        let state = StoreState {
            revision,
            principals: all_docs(&mut tx, principals).await?,
            roles: all_docs(&mut tx, "SELECT doc FROM roles ORDER BY name").await?,
            assignments: all_docs(&mut tx, assignments).await?,
            entities: held_entities(&mut tx, held).await?,
            revoked_sessions: docs(
                &sqlx::query("SELECT doc FROM revoked_sessions WHERE expires_at > $1")
                    .bind(now)
                    .fetch_all(&mut *tx)
                    .await?,
            )?,
            template_links: all_docs(&mut tx, "SELECT doc FROM template_links ORDER BY id").await?,
            policy_set: latest_policy_set(&mut tx).await?,
            held_entity_types: held.clone(),
        };
        tx.commit().await?;
        Ok(state)
    }
}

/// The stored entities `held` holds: all, or those whose key starts with `Type::"` of a
/// held type — one read, so the types not held are never decoded. Entities under a
/// principal's type are always held (see [`HeldEntityTypes::holds`]).
async fn held_entities(
    conn: &mut AnyConnection,
    held: &HeldEntityTypes,
) -> Result<Vec<EntityRecord>, StoreError> {
    let Some(types) = held.types() else {
        return all_docs(conn, "SELECT doc FROM entities").await;
    };
    let principal_types = [
        PrincipalKind::User,
        PrincipalKind::Group,
        PrincipalKind::Service,
    ]
    .map(PrincipalKind::cedar_type);
    let prefixes: BTreeSet<String> = (types.iter().map(String::as_str))
        .chain(principal_types)
        .map(|type_name| format!("{type_name}::\""))
        .collect();
    // Placeholders only: the prefixes are bound.
    let sql = (1..=prefixes.len())
        .map(|i| format!("substr(uid, 1, length(${i})) = ${i}"))
        .collect::<Vec<_>>()
        .join(" OR ");
    let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT doc FROM entities WHERE {sql}"
    )));
    for prefix in prefixes {
        query = query.bind(prefix);
    }
    let mut entities: Vec<EntityRecord> = docs(&query.fetch_all(&mut *conn).await?)?;
    entities.retain(|e| held.holds(&e.uid));
    Ok(entities)
}

/// Which part of the state to load.
#[derive(Debug, Clone, Copy)]
enum StateView<'a> {
    /// Everything.
    Full,
    /// All but users, services, their assignments and the entities the held types leave
    /// out.
    Shared(&'a HeldEntityTypes),
}

impl SqlStore {
    /// Creates (`existing == false`) or replaces (`existing == true`) a role, after checking
    /// that the role set still compiles with the current policies and links.
    async fn write_role(&self, role: &Role, existing: bool) -> Result<Revision, StoreError> {
        let mut tx = self.write_tx().await?;
        let mut roles: Vec<Role> = all_docs(&mut tx, "SELECT doc FROM roles ORDER BY name").await?;
        match (roles.iter_mut().find(|r| r.name == role.name), existing) {
            (Some(_), false) => {
                return Err(StoreError::Conflict(format!(
                    "role `{}` already exists",
                    role.name
                )));
            }
            (None, true) => return Err(StoreError::NotFound(format!("role `{}`", role.name))),
            (Some(slot), true) => *slot = role.clone(),
            (None, false) => roles.push(role.clone()),
        }
        let links: Vec<TemplateLink> = all_docs(&mut tx, "SELECT doc FROM template_links").await?;
        check_compiles(latest_policy_set(&mut tx).await?.as_ref(), &roles, &links)?;
        upsert(&mut tx, UPSERT_ROLE, role.name.clone(), to_doc(role)?).await?;
        self.commit(
            tx,
            &[ChangeKind::Role {
                role: role.name.clone(),
            }],
        )
        .await
    }
}

/// Bumps the revision inside `conn`'s transaction and records the changes.
async fn bump(conn: &mut AnyConnection, changes: &[ChangeKind]) -> Result<Revision, StoreError> {
    let revision: i64 = sqlx::query(
        "UPDATE store_meta SET revision = revision + 1 WHERE id = 1 RETURNING revision",
    )
    .fetch_one(&mut *conn)
    .await?
    .try_get("revision")?;
    let at = now_millis();
    for (seq, change) in (0_i64..).zip(changes) {
        sqlx::query(
            "INSERT INTO changes (revision, seq, kind, doc, at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(revision)
        .bind(seq)
        .bind(change.name())
        .bind(to_doc(change)?)
        .bind(at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(revision)
}

async fn current_revision(conn: &mut AnyConnection) -> Result<Revision, StoreError> {
    Ok(sqlx::query("SELECT revision FROM store_meta WHERE id = 1")
        .fetch_one(conn)
        .await?
        .try_get("revision")?)
}

async fn all_docs<T: DeserializeOwned>(
    conn: &mut AnyConnection,
    sql: &'static str,
) -> Result<Vec<T>, StoreError> {
    docs(&sqlx::query(sql).fetch_all(conn).await?)
}

async fn latest_policy_set(
    conn: &mut AnyConnection,
) -> Result<Option<PolicySetVersion>, StoreError> {
    let row = sqlx::query("SELECT doc FROM policy_sets ORDER BY version DESC LIMIT 1")
        .fetch_optional(conn)
        .await?;
    row.map(|r| from_doc(&r.try_get::<String, _>("doc")?))
        .transpose()
}

async fn principal_doc(
    conn: &mut AnyConnection,
    key: &EntityRef,
) -> Result<Option<Principal>, StoreError> {
    let row = sqlx::query("SELECT doc FROM principals WHERE key = $1")
        .bind(key.to_string())
        .fetch_optional(conn)
        .await?;
    row.map(|r| from_doc(&r.try_get::<String, _>("doc")?))
        .transpose()
}

async fn principal_assignments(
    conn: &mut AnyConnection,
    key: &EntityRef,
) -> Result<Vec<Assignment>, StoreError> {
    docs(
        &sqlx::query("SELECT doc FROM assignments WHERE principal = $1 ORDER BY id")
            .bind(key.to_string())
            .fetch_all(conn)
            .await?,
    )
}

/// Refuses a change of roles, links or policies that would not compile.
fn check_compiles(
    version: Option<&PolicySetVersion>,
    roles: &[Role],
    links: &[TemplateLink],
) -> Result<(), StoreError> {
    let version = version.ok_or_else(|| {
        ModelError::Invalid(String::from(
            "the store holds no policy set yet; store one before roles or template links",
        ))
    })?;
    compile(&policy_sources(version, roles, links))?;
    Ok(())
}

async fn upsert(
    conn: &mut AnyConnection,
    sql: &'static str,
    key: String,
    doc: String,
) -> Result<(), StoreError> {
    sqlx::query(sql).bind(key).bind(doc).execute(conn).await?;
    Ok(())
}

const UPSERT_PRINCIPAL: &str = "INSERT INTO principals (key, doc) VALUES ($1, $2) \
     ON CONFLICT (key) DO UPDATE SET doc = excluded.doc";
const UPSERT_ROLE: &str = "INSERT INTO roles (name, doc) VALUES ($1, $2) \
     ON CONFLICT (name) DO UPDATE SET doc = excluded.doc";
const UPSERT_ENTITY: &str = "INSERT INTO entities (uid, doc) VALUES ($1, $2) \
     ON CONFLICT (uid) DO UPDATE SET doc = excluded.doc";
const UPSERT_LINK: &str = "INSERT INTO template_links (id, doc) VALUES ($1, $2) \
     ON CONFLICT (id) DO UPDATE SET doc = excluded.doc";

async fn insert_assignment(conn: &mut AnyConnection, a: &Assignment) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO assignments (id, principal, role, scope, doc) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (id) DO UPDATE SET principal = excluded.principal, role = excluded.role, \
         scope = excluded.scope, doc = excluded.doc",
    )
    .bind(a.id.clone())
    .bind(a.principal.to_string())
    .bind(a.role.clone())
    .bind(a.scope.entity().map(ToString::to_string))
    .bind(to_doc(a)?)
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes a principal and its assignments, and leaves a tombstone: every token issued to it
/// until now is revoked, so one still valid cannot bring it back (an issuer that takes
/// principals the store does not hold from their claims would otherwise). Whether it
/// existed; the changes to announce.
async fn delete_principal_rows(
    conn: &mut AnyConnection,
    key: &EntityRef,
) -> Result<(bool, Vec<ChangeKind>), StoreError> {
    let tombstone = RevokedSession {
        session_id: RevokedSession::all_sessions_key(key),
        principal: Some(key.clone()),
        expires_at: UnixMillis::MAX,
        issued_before: Some(now_millis()),
    };
    upsert_revoked_session(&mut *conn, &tombstone).await?;
    let deleted = sqlx::query("DELETE FROM principals WHERE key = $1")
        .bind(key.to_string())
        .execute(&mut *conn)
        .await?
        .rows_affected();
    sqlx::query("DELETE FROM assignments WHERE principal = $1")
        .bind(key.to_string())
        .execute(conn)
        .await?;
    let changes = vec![
        ChangeKind::Principal {
            principal: key.clone(),
        },
        ChangeKind::Session {
            session_id: tombstone.record_key(),
        },
    ];
    Ok((deleted > 0, changes))
}

/// Refuses an assignment whose principal or role does not exist.
async fn check_assignment_refs(conn: &mut AnyConnection, a: &Assignment) -> Result<(), StoreError> {
    if principal_doc(conn, &a.principal).await?.is_none() {
        return Err(StoreError::Invalid(ModelError::Invalid(format!(
            "principal `{}` does not exist",
            a.principal
        ))));
    }
    let role_exists = sqlx::query("SELECT name FROM roles WHERE name = $1")
        .bind(a.role.clone())
        .fetch_optional(conn)
        .await?
        .is_some();
    if !role_exists {
        return Err(StoreError::Invalid(ModelError::Invalid(format!(
            "role `{}` does not exist",
            a.role
        ))));
    }
    Ok(())
}

/// Records a revoked session, replacing the record under the same key.
async fn upsert_revoked_session(
    conn: &mut AnyConnection,
    session: &RevokedSession,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO revoked_sessions (session_id, expires_at, doc) VALUES ($1, $2, $3) \
         ON CONFLICT (session_id) DO UPDATE SET expires_at = excluded.expires_at, doc = excluded.doc",
    )
    .bind(session.record_key())
    .bind(session.expires_at)
    .bind(to_doc(session)?)
    .execute(conn)
    .await?;
    Ok(())
}

/// Inserts many assignments with multi-row statements.
async fn insert_assignments(
    conn: &mut AnyConnection,
    assignments: &[Assignment],
) -> Result<(), StoreError> {
    for chunk in assignments.chunks(IMPORT_BATCH) {
        let mut sql =
            String::from("INSERT INTO assignments (id, principal, role, scope, doc) VALUES ");
        for i in 0..chunk.len() {
            let b = i * 5;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5
            ));
        }
        sql.push_str(
            " ON CONFLICT (id) DO UPDATE SET principal = excluded.principal, role = excluded.role, \
             scope = excluded.scope, doc = excluded.doc",
        );
        // Only placeholders are formatted into `sql`; every value is bound.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for a in chunk {
            q = q
                .bind(a.id.clone())
                .bind(a.principal.to_string())
                .bind(a.role.clone())
                .bind(a.scope.entity().map(ToString::to_string))
                .bind(to_doc(a)?);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

async fn insert_policy_set(
    conn: &mut AnyConnection,
    files: &[PolicyFile],
    schema: &str,
    created_by: Option<&str>,
) -> Result<i64, StoreError> {
    let latest: Option<i64> = sqlx::query("SELECT MAX(version) AS v FROM policy_sets")
        .fetch_one(&mut *conn)
        .await?
        .try_get("v")?;
    let version = PolicySetVersion {
        version: latest.unwrap_or(0) + 1,
        files: files.to_vec(),
        schema: schema.to_owned(),
        created_by: created_by.map(str::to_owned),
        created_at: now_millis(),
    };
    sqlx::query(
        "INSERT INTO policy_sets (version, doc, created_at, created_by) VALUES ($1, $2, $3, $4)",
    )
    .bind(version.version)
    .bind(to_doc(&version)?)
    .bind(version.created_at)
    .bind(version.created_by.clone())
    .execute(conn)
    .await?;
    Ok(version.version)
}

/// A candidate set (not stored) to check.
fn candidate(files: &[PolicyFile], schema: &str) -> PolicySetVersion {
    PolicySetVersion {
        version: 0,
        files: files.to_vec(),
        schema: schema.to_owned(),
        created_by: None,
        created_at: 0,
    }
}

/// Compiles `files` + `schema` with the stored roles and links.
async fn compile_with_stored(
    conn: &mut AnyConnection,
    files: &[PolicyFile],
    schema: &str,
) -> Result<PolicySetCheck, StoreError> {
    let roles: Vec<Role> = all_docs(&mut *conn, "SELECT doc FROM roles ORDER BY name").await?;
    let links: Vec<TemplateLink> = all_docs(conn, "SELECT doc FROM template_links").await?;
    let compiled = compile(&policy_sources(&candidate(files, schema), &roles, &links))?;
    Ok(PolicySetCheck {
        policies: compiled.policy_count(),
        warnings: compiled
            .warnings()
            .iter()
            .map(ToString::to_string)
            .collect(),
    })
}

impl Store for SqlStore {
    /// Also wakes on peers' commits while [`SqlStore::relay_peer_commits`] runs.
    fn commits(&self) -> tokio::sync::watch::Receiver<Revision> {
        self.commits.subscribe()
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        let mut conn = self.pool.acquire().await?;
        current_revision(&mut conn).await
    }

    async fn load_state(&self) -> Result<StoreState, StoreError> {
        self.load_state_of(StateView::Full).await
    }

    async fn load_shared_state(&self, held: &HeldEntityTypes) -> Result<StoreState, StoreError> {
        self.load_state_of(StateView::Shared(held)).await
    }

    async fn changes_since(&self, since: Revision, limit: i64) -> Result<Vec<Change>, StoreError> {
        let rows = sqlx::query(
            "SELECT revision, doc, at FROM changes WHERE revision > $1 \
             ORDER BY revision, seq LIMIT $2",
        )
        .bind(since)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Change {
                    revision: row.try_get("revision")?,
                    kind: from_doc(&row.try_get::<String, _>("doc")?)?,
                    at: row.try_get("at")?,
                })
            })
            .collect()
    }

    async fn load_update(&self, since: Revision) -> Result<SnapshotUpdate, StoreError> {
        let mut tx = self.read_tx().await?;
        let revision = current_revision(&mut tx).await?;
        let kinds: Vec<ChangeKind> = docs(
            &sqlx::query("SELECT doc FROM changes WHERE revision > $1 AND revision <= $2")
                .bind(since)
                .bind(revision)
                .fetch_all(&mut *tx)
                .await?,
        )?;
        if kinds.iter().any(|k| matches!(k, ChangeKind::Bulk)) {
            tx.commit().await?;
            return Ok(SnapshotUpdate::Rebuild(self.load_state().await?));
        }
        let mut principals = BTreeSet::new();
        let mut entities = BTreeSet::new();
        let mut sessions = BTreeSet::new();
        let (mut roles, mut links, mut policy) = (false, false, false);
        for kind in kinds {
            match kind {
                ChangeKind::Principal { principal } | ChangeKind::Assignment { principal, .. } => {
                    principals.insert(principal);
                }
                ChangeKind::Entity { uid } => {
                    entities.insert(uid);
                }
                ChangeKind::Session { session_id } => {
                    sessions.insert(session_id);
                }
                ChangeKind::Role { .. } => roles = true,
                ChangeKind::TemplateLink { .. } => links = true,
                ChangeKind::PolicySet { .. } => policy = true,
                ChangeKind::Bulk => {}
            }
        }
        let mut delta = StoreDelta {
            revision,
            ..StoreDelta::default()
        };
        for key in principals {
            let value = match principal_doc(&mut tx, &key).await? {
                Some(p) => Some((p, principal_assignments(&mut tx, &key).await?)),
                None => None,
            };
            delta.principals.push((key, value));
        }
        for uid in entities {
            let row = sqlx::query("SELECT doc FROM entities WHERE uid = $1")
                .bind(uid.to_string())
                .fetch_optional(&mut *tx)
                .await?;
            let value = row
                .map(|r| from_doc(&r.try_get::<String, _>("doc")?))
                .transpose()?;
            delta.entities.push((uid, value));
        }
        for session_id in sessions {
            let row = sqlx::query("SELECT doc FROM revoked_sessions WHERE session_id = $1")
                .bind(session_id)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(r) = row {
                delta
                    .revoked_sessions
                    .push(from_doc(&r.try_get::<String, _>("doc")?)?);
            }
        }
        if roles {
            delta.roles = Some(all_docs(&mut tx, "SELECT doc FROM roles ORDER BY name").await?);
        }
        if links {
            delta.template_links =
                Some(all_docs(&mut tx, "SELECT doc FROM template_links ORDER BY id").await?);
        }
        if policy {
            delta.policy_set = latest_policy_set(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(SnapshotUpdate::Patch(delta))
    }

    async fn put_principal(&self, principal: &Principal) -> Result<Revision, StoreError> {
        let key = principal.entity_ref();
        let mut tx = self.write_tx().await?;
        upsert(
            &mut tx,
            UPSERT_PRINCIPAL,
            key.to_string(),
            to_doc(principal)?,
        )
        .await?;
        self.commit(tx, &[ChangeKind::Principal { principal: key }])
            .await
    }

    async fn delete_principal(&self, key: &EntityRef) -> Result<Revision, StoreError> {
        let mut tx = self.write_tx().await?;
        let (existed, changes) = delete_principal_rows(&mut tx, key).await?;
        if !existed {
            return Err(StoreError::NotFound(format!("principal `{key}`")));
        }
        self.commit(tx, &changes).await
    }

    async fn get_principal(&self, key: &EntityRef) -> Result<Option<Principal>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        principal_doc(&mut conn, key).await
    }

    async fn get_assignment(&self, id: &str) -> Result<Option<Assignment>, StoreError> {
        let row = sqlx::query("SELECT doc FROM assignments WHERE id = $1")
            .bind(id.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| from_doc(&r.try_get::<String, _>("doc")?))
            .transpose()
    }

    async fn get_entity(&self, uid: &EntityRef) -> Result<Option<EntityRecord>, StoreError> {
        let row = sqlx::query("SELECT doc FROM entities WHERE uid = $1")
            .bind(uid.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| from_doc(&r.try_get::<String, _>("doc")?))
            .transpose()
    }

    async fn create_role(&self, role: &Role) -> Result<Revision, StoreError> {
        self.write_role(role, false).await
    }

    async fn update_role(&self, role: &Role) -> Result<Revision, StoreError> {
        self.write_role(role, true).await
    }

    async fn delete_role(&self, name: &str) -> Result<Revision, StoreError> {
        let mut tx = self.write_tx().await?;
        let used: i64 = sqlx::query("SELECT COUNT(*) AS n FROM assignments WHERE role = $1")
            .bind(name.to_owned())
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if used > 0 {
            return Err(StoreError::Conflict(format!(
                "role `{name}` is still used by {used} assignment(s)"
            )));
        }
        let deleted = sqlx::query("DELETE FROM roles WHERE name = $1")
            .bind(name.to_owned())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::NotFound(format!("role `{name}`")));
        }
        self.commit(
            tx,
            &[ChangeKind::Role {
                role: name.to_owned(),
            }],
        )
        .await
    }

    async fn list_roles(&self) -> Result<Vec<Role>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        all_docs(&mut conn, "SELECT doc FROM roles ORDER BY name").await
    }

    async fn create_assignment(&self, assignment: &Assignment) -> Result<Revision, StoreError> {
        let mut tx = self.write_tx().await?;
        check_assignment_refs(&mut tx, assignment).await?;
        let taken = sqlx::query("SELECT id FROM assignments WHERE id = $1")
            .bind(assignment.id.clone())
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if taken {
            return Err(StoreError::Conflict(format!(
                "assignment `{}`",
                assignment.id
            )));
        }
        insert_assignment(&mut tx, assignment).await?;
        self.commit(
            tx,
            &[ChangeKind::Assignment {
                id: assignment.id.clone(),
                principal: assignment.principal.clone(),
            }],
        )
        .await
    }

    async fn delete_assignment(&self, id: &str) -> Result<Revision, StoreError> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query("SELECT doc FROM assignments WHERE id = $1")
            .bind(id.to_owned())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("assignment `{id}`")))?;
        let assignment: Assignment = from_doc(&row.try_get::<String, _>("doc")?)?;
        sqlx::query("DELETE FROM assignments WHERE id = $1")
            .bind(id.to_owned())
            .execute(&mut *tx)
            .await?;
        self.commit(
            tx,
            &[ChangeKind::Assignment {
                id: id.to_owned(),
                principal: assignment.principal,
            }],
        )
        .await
    }

    async fn assignments_of(&self, principal: &EntityRef) -> Result<Vec<Assignment>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        principal_assignments(&mut conn, principal).await
    }

    async fn list_assignments(
        &self,
        filter: &AssignmentFilter,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Assignment>, StoreError> {
        let (condition, value) = match filter {
            AssignmentFilter::Principal(p) => ("principal = $1", Some(p.to_string())),
            AssignmentFilter::Role(r) => ("role = $1", Some(r.clone())),
            AssignmentFilter::Scope(scope) => match scope.entity() {
                Some(e) => ("scope = $1", Some(e.to_string())),
                None => ("scope IS NULL AND $1 IS NULL", None),
            },
        };
        let sql = format!(
            "SELECT doc FROM assignments WHERE {condition} AND id > $2 ORDER BY id LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(value)
            .bind(after.unwrap_or("").to_owned())
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        docs(&rows)
    }

    async fn put_entity(&self, entity: &EntityRecord) -> Result<Revision, StoreError> {
        let mut tx = self.write_tx().await?;
        upsert(
            &mut tx,
            UPSERT_ENTITY,
            entity.uid.to_string(),
            to_doc(entity)?,
        )
        .await?;
        self.commit(
            tx,
            &[ChangeKind::Entity {
                uid: entity.uid.clone(),
            }],
        )
        .await
    }

    async fn delete_entity(&self, uid: &EntityRef) -> Result<Revision, StoreError> {
        let mut tx = self.write_tx().await?;
        let deleted = sqlx::query("DELETE FROM entities WHERE uid = $1")
            .bind(uid.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::NotFound(format!("entity `{uid}`")));
        }
        self.commit(tx, &[ChangeKind::Entity { uid: uid.clone() }])
            .await
    }

    async fn revoke_session(&self, session: &RevokedSession) -> Result<Revision, StoreError> {
        let mut tx = self.write_tx().await?;
        upsert_revoked_session(&mut tx, session).await?;
        self.commit(
            tx,
            &[ChangeKind::Session {
                session_id: session.record_key(),
            }],
        )
        .await
    }

    async fn take_event(
        &self,
        event: &EventRecord,
        ops: &[crate::Op],
    ) -> Result<EventOutcome, StoreError> {
        self.take_event_in_tx(event, ops).await
    }

    async fn event_taken(&self, id: &str) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("SELECT event_id FROM events_taken WHERE event_id = $1")
                .bind(id.to_owned())
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    async fn add_dead_letter(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        self.add_dead_letter_row(letter).await
    }

    async fn dead_letters(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.dead_letter_rows(after, limit).await
    }

    async fn dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, StoreError> {
        self.dead_letter_row(id).await
    }

    async fn mark_replayed(&self, id: &str) -> Result<(), StoreError> {
        self.mark_replayed_row(id).await
    }

    async fn event_stream(&self, after: i64, limit: i64) -> Result<Vec<StreamEntry>, StoreError> {
        self.event_stream_rows(after, limit).await
    }

    async fn external_audit_recorded(&self, event_id: &str) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("SELECT event_id FROM external_audit_recorded WHERE event_id = $1")
                .bind(event_id.to_owned())
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    async fn mark_external_audit(
        &self,
        event_id: &str,
        source: &str,
        ledger_seq: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO external_audit_recorded (event_id, source, recorded_at, ledger_seq) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(event_id.to_owned())
        .bind(source.to_owned())
        .bind(now_millis())
        .bind(i64::try_from(ledger_seq).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn event_stream_head(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT event_seq FROM store_meta WHERE id = 1")
            .fetch_one(&self.pool)
            .await?
            .try_get("event_seq")?)
    }

    async fn put_policy_set(
        &self,
        files: &[PolicyFile],
        schema: &str,
        created_by: Option<&str>,
        if_version: Option<i64>,
    ) -> Result<(Revision, i64), StoreError> {
        let mut tx = self.write_tx().await?;
        if let Some(expected) = if_version {
            let current = latest_policy_set(&mut tx).await?.map(|v| v.version);
            if current != Some(expected) {
                return Err(StoreError::VersionMismatch { expected, current });
            }
        }
        compile_with_stored(&mut tx, files, schema).await?;
        let version = insert_policy_set(&mut tx, files, schema, created_by).await?;
        let revision = self
            .commit(tx, &[ChangeKind::PolicySet { version }])
            .await?;
        Ok((revision, version))
    }

    async fn check_policy_set(
        &self,
        files: &[PolicyFile],
        schema: &str,
    ) -> Result<PolicySetCheck, StoreError> {
        let mut tx = self.read_tx().await?;
        let check = compile_with_stored(&mut tx, files, schema).await;
        tx.rollback().await?;
        check
    }

    async fn current_policy_set(&self) -> Result<Option<PolicySetVersion>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        latest_policy_set(&mut conn).await
    }

    async fn policy_set_version(
        &self,
        version: i64,
    ) -> Result<Option<PolicySetVersion>, StoreError> {
        let row = sqlx::query("SELECT doc FROM policy_sets WHERE version = $1")
            .bind(version)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| from_doc(&r.try_get::<String, _>("doc")?))
            .transpose()
    }

    async fn policy_set_history(
        &self,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<PolicySetSummary>, StoreError> {
        let rows = sqlx::query(
            "SELECT version, created_at, created_by FROM policy_sets \
             WHERE version < $1 ORDER BY version DESC LIMIT $2",
        )
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PolicySetSummary {
                    version: r.try_get("version")?,
                    created_at: r.try_get("created_at")?,
                    created_by: r.try_get("created_by")?,
                })
            })
            .collect()
    }

    async fn policies_dir_digest(&self) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT policies_dir_digest FROM store_meta WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("policies_dir_digest")?)
    }

    async fn import(&self, import: &Import) -> Result<Revision, StoreError> {
        let mut tx = self.write_tx().await?;
        // The result must compile: current roles/links overlaid with the imported ones.
        let mut roles: HashMap<String, Role> = all_docs::<Role>(&mut tx, "SELECT doc FROM roles")
            .await?
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect();
        roles.extend(import.roles.iter().map(|r| (r.name.clone(), r.clone())));
        let mut links: HashMap<String, TemplateLink> =
            all_docs::<TemplateLink>(&mut tx, "SELECT doc FROM template_links")
                .await?
                .into_iter()
                .map(|l| (l.id.clone(), l))
                .collect();
        links.extend(
            import
                .template_links
                .iter()
                .map(|l| (l.id.clone(), l.clone())),
        );
        let version = match &import.policy_set {
            Some((files, schema)) => Some(candidate(files, schema)),
            None => latest_policy_set(&mut tx).await?,
        };
        let mut role_list: Vec<Role> = roles.into_values().collect();
        role_list.sort_by(|a, b| a.name.cmp(&b.name));
        let link_list: Vec<TemplateLink> = links.into_values().collect();
        check_compiles(version.as_ref(), &role_list, &link_list)?;
        if let Some(a) = import
            .assignments
            .iter()
            .find(|a| !role_list.iter().any(|r| r.name == a.role))
        {
            return Err(StoreError::Invalid(ModelError::Invalid(format!(
                "assignment `{}` names role `{}`, which does not exist",
                a.id, a.role
            ))));
        }

        if let Some((files, schema)) = &import.policy_set {
            let author = import.author.as_deref().unwrap_or("import");
            insert_policy_set(&mut tx, files, schema, Some(author)).await?;
        }
        if let Some(digest) = &import.policies_dir_digest {
            sqlx::query("UPDATE store_meta SET policies_dir_digest = $1 WHERE id = 1")
                .bind(digest.clone())
                .execute(&mut *tx)
                .await?;
        }
        for r in &import.roles {
            upsert(&mut tx, UPSERT_ROLE, r.name.clone(), to_doc(r)?).await?;
        }
        for l in &import.template_links {
            upsert(&mut tx, UPSERT_LINK, l.id.clone(), to_doc(l)?).await?;
        }
        for p in &import.principals {
            upsert(
                &mut tx,
                UPSERT_PRINCIPAL,
                p.entity_ref().to_string(),
                to_doc(p)?,
            )
            .await?;
        }
        for e in &import.entities {
            upsert(&mut tx, UPSERT_ENTITY, e.uid.to_string(), to_doc(e)?).await?;
        }
        insert_assignments(&mut tx, &import.assignments).await?;
        self.commit(tx, &[ChangeKind::Bulk]).await
    }
}
