//! The admin API through its router (`oneshot`, no socket) on a real SQLite store with the
//! repository's policies: each resource, its bad inputs (problem+json listing every failing
//! field), authentication, and a what-if decision that sees the changes.

#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test helpers fail the test loudly"
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use portcullis_admin_api::auth::token_line;
use portcullis_admin_api::authz::AdminPolicies;
use portcullis_admin_api::publish::{ChangeFeed, Publisher};
use portcullis_admin_api::{AdminAuth, AdminTokens, AppState, app};
use portcullis_engine::snapshot::{
    HeldEntityTypes, Snapshot, SnapshotHandle, SnapshotUpdate, StoreState,
};
use portcullis_ledger::writer::{Ledger, LedgerConfig};
use portcullis_model::{
    Assignment, Change, EntityRecord, EntityRef, PolicyFile, PolicySetCheck, PolicySetSummary,
    PolicySetVersion, Principal, RevokedSession, Role,
};
use portcullis_store::{AssignmentFilter, Import, SqlStore, Store, StoreConfig, StoreError};
use serde_json::{Value, json};
use tower::ServiceExt;

const TOKEN: &str = "test-admin-token";
/// A tenant admin of `t1`.
const T1_ADMIN: &str = "t1-admin-token";
/// A sidecar's token: follows the state, nothing else.
const SIDECAR: &str = "sidecar-token";
/// A token with no role: may do nothing.
const NOBODY: &str = "nobody-token";
/// An auditor: reads the audit ledger and the catalogue.
const AUDITOR: &str = "auditor-token";
/// A user-management system's service account: `roles=publisher`.
const PUBLISHER: &str = "publisher-token";

struct Api {
    router: axum::Router,
    store: Counting,
    snapshot: Arc<SnapshotHandle>,
    publisher: tokio::sync::Mutex<Publisher<Counting>>,
    _dir: tempfile_dir::Dir,
}

/// The real SQLite store, counting the reads that bring a follower up to date
/// (`load_update`, `load_state`, `changes_since`): what distributing a change costs the
/// database.
#[derive(Debug, Clone)]
struct Counting {
    inner: SqlStore,
    update_reads: Arc<AtomicUsize>,
    /// Entries of the live event stream read from the store.
    stream_entries_read: Arc<AtomicUsize>,
}

/// Methods handed to the real store as they are.
macro_rules! delegate {
    ($(fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $out:ty;)*) => {
        $(
            fn $name(&self $(, $arg: $ty)*) -> impl Future<Output = Result<$out, StoreError>> + Send {
                self.inner.$name($($arg),*)
            }
        )*
    };
}

impl Store for Counting {
    fn commits(&self) -> tokio::sync::watch::Receiver<i64> {
        self.inner.commits()
    }

    fn load_state(&self) -> impl Future<Output = Result<StoreState, StoreError>> + Send {
        self.update_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.load_state()
    }

    fn load_shared_state(
        &self,
        held: &HeldEntityTypes,
    ) -> impl Future<Output = Result<StoreState, StoreError>> + Send {
        self.update_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.load_shared_state(held)
    }

    fn changes_since(
        &self,
        since: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<Change>, StoreError>> + Send {
        self.update_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.changes_since(since, limit)
    }

    fn load_update(
        &self,
        since: i64,
    ) -> impl Future<Output = Result<SnapshotUpdate, StoreError>> + Send {
        self.update_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.load_update(since)
    }

    async fn event_stream(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<portcullis_model::events::StreamEntry>, StoreError> {
        let entries = self.inner.event_stream(after, limit).await?;
        self.stream_entries_read
            .fetch_add(entries.len(), Ordering::SeqCst);
        Ok(entries)
    }

    delegate! {
        fn revision(&self) -> i64;
        fn put_principal(&self, principal: &Principal) -> i64;
        fn delete_principal(&self, key: &EntityRef) -> i64;
        fn get_principal(&self, key: &EntityRef) -> Option<Principal>;
        fn get_assignment(&self, id: &str) -> Option<Assignment>;
        fn get_entity(&self, uid: &EntityRef) -> Option<EntityRecord>;
        fn create_role(&self, role: &Role) -> i64;
        fn update_role(&self, role: &Role) -> i64;
        fn delete_role(&self, name: &str) -> i64;
        fn list_roles(&self) -> Vec<Role>;
        fn create_assignment(&self, assignment: &Assignment) -> i64;
        fn delete_assignment(&self, id: &str) -> i64;
        fn assignments_of(&self, principal: &EntityRef) -> Vec<Assignment>;
        fn list_assignments(&self, filter: &AssignmentFilter, after: Option<&str>, limit: i64) -> Vec<Assignment>;
        fn put_entity(&self, entity: &EntityRecord) -> i64;
        fn delete_entity(&self, uid: &EntityRef) -> i64;
        fn revoke_session(&self, session: &RevokedSession) -> i64;
        fn put_policy_set(&self, files: &[PolicyFile], schema: &str, created_by: Option<&str>, if_version: Option<i64>) -> (i64, i64);
        fn check_policy_set(&self, files: &[PolicyFile], schema: &str) -> PolicySetCheck;
        fn current_policy_set(&self) -> Option<PolicySetVersion>;
        fn policy_set_version(&self, version: i64) -> Option<PolicySetVersion>;
        fn policy_set_history(&self, before: Option<i64>, limit: i64) -> Vec<PolicySetSummary>;
        fn policies_dir_digest(&self) -> Option<String>;
        fn import(&self, import: &Import) -> i64;
        fn take_event(&self, event: &portcullis_model::events::EventRecord, ops: &[portcullis_store::Op]) -> portcullis_model::events::EventOutcome;
        fn event_taken(&self, id: &str) -> bool;
        fn add_dead_letter(&self, letter: &portcullis_model::events::DeadLetter) -> ();
        fn dead_letters(&self, after: Option<&str>, limit: i64) -> Vec<portcullis_model::events::DeadLetter>;
        fn dead_letter(&self, id: &str) -> Option<portcullis_model::events::DeadLetter>;
        fn mark_replayed(&self, id: &str) -> ();
        fn event_stream_head(&self) -> i64;
        fn external_audit_recorded(&self, event_id: &str) -> bool;
        fn mark_external_audit(&self, event_id: &str, source: &str, ledger_seq: u64) -> ();
    }
}

mod tempfile_dir {
    /// A temporary directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _removed = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn policies() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

async fn api() -> Api {
    api_holding(HeldEntityTypes::ALL).await
}

/// An API whose shared view holds the entities of `held` types.
async fn api_holding(held: HeldEntityTypes) -> Api {
    let dir = std::env::temp_dir().join(format!(
        "portcullis-admin-{}-{}",
        std::process::id(),
        jiff::Timestamp::now().as_nanosecond()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let store = SqlStore::connect(&StoreConfig::Sqlite {
        path: dir.join("store.db"),
    })
    .await
    .unwrap();
    let roles: Vec<Role> = serde_json::from_value(json!([
        {"name": "member", "actions": ["READ", "WRITE", "SHARE"]},
        {"name": "guest", "actions": ["READ"]}
    ]))
    .unwrap();
    store
        .import(&Import {
            roles,
            policy_set: Some((
                vec![PolicyFile {
                    name: String::from("default.cedar"),
                    text: std::fs::read_to_string(policies().join("default.cedar")).unwrap(),
                }],
                std::fs::read_to_string(policies().join("schema.cedarschema")).unwrap(),
            )),
            ..Import::default()
        })
        .await
        .unwrap();
    let snapshot = Arc::new(SnapshotHandle::new(
        Snapshot::build(store.load_state().await.unwrap(), 0).unwrap(),
    ));
    let tokens = AdminTokens::parse(&format!(
        "{}\n{} roles=tenant-admin tenant=t1\n{} roles=sidecar\n{} roles=\n{} roles=auditor\n{} roles=publisher\n",
        token_line("ops", TOKEN),
        token_line("t1-admin", T1_ADMIN),
        token_line("sidecar", SIDECAR),
        token_line("nobody", NOBODY),
        token_line("auditor", AUDITOR),
        token_line("user-management", PUBLISHER),
    ))
    .unwrap();
    // The real writer, into the test's directory; it stops when the router is dropped.
    let (ledger, _writer) = Ledger::open(LedgerConfig {
        dir: dir.join("audit"),
        prefix: String::from("audit"),
        max_file_bytes: 1 << 20,
        instance: String::from("api-test"),
        queue_capacity: 64,
        checkpoint_every: 1000,
        checkpoint_interval: std::time::Duration::from_secs(3600),
        checkpoint_key: None,
        fsync: false,
        stdout: false,
    })
    .unwrap();
    let store = Counting {
        inner: store,
        update_reads: Arc::new(AtomicUsize::new(0)),
        stream_entries_read: Arc::new(AtomicUsize::new(0)),
    };
    let feed = Arc::new(ChangeFeed::new(snapshot.load().revision(), held));
    let publisher = Publisher::new(
        store.clone(),
        Arc::clone(&snapshot),
        Arc::clone(&feed),
        None,
    );
    let events = portcullis_events::Ingest::new(store.clone(), Default::default())
        .recording_in(Arc::clone(&ledger));
    // The follower `serve` and `control` run beside the API, ready before the first call.
    tokio::spawn(Arc::clone(events.stream()).follow(store.clone()));
    events
        .stream()
        .subscribe()
        .wait_for(|head| *head >= 0)
        .await
        .unwrap();
    let router = app(
        AppState {
            events,
            store: store.clone(),
            snapshot: Arc::clone(&snapshot),
            feed,
            ledger: Some(ledger),
            admin_policies: Arc::new(arc_swap::ArcSwap::from_pointee(
                AdminPolicies::builtin().unwrap(),
            )),
            route_guard: None,
            stopping: tokio_util::sync::CancellationToken::new(),
            shared_cache: None,
        },
        AdminAuth::new(tokens),
    );
    Api {
        router,
        store,
        snapshot,
        publisher: tokio::sync::Mutex::new(publisher),
        _dir: tempfile_dir::Dir(dir),
    }
}

impl Api {
    async fn call(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call_as(Some(TOKEN), method, uri, body).await
    }

    async fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        uri: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (status, _, value) = self.call_with(token, method, uri, body, &[]).await;
        (status, value)
    }

    async fn call_with(
        &self,
        token: Option<&str>,
        method: &str,
        uri: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, axum::http::HeaderMap, Value) {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(t) = token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        let request = match body {
            Some(b) => request
                .header("content-type", "application/json")
                .body(Body::from(b.to_string())),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let response_headers = response.headers().clone();
        let problem = response
            .headers()
            .get("content-type")
            .is_some_and(|v| v == "application/problem+json");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_client_error() || status.is_server_error() {
            assert!(problem, "{status} is problem+json: {value}");
            assert_eq!(value["status"], status.as_u16(), "{value}");
        }
        (status, response_headers, value)
    }

    /// The response itself, body unread (for streams).
    async fn open(
        &self,
        token: &str,
        method: &str,
        uri: &str,
        body: Option<Value>,
    ) -> axum::response::Response {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .unwrap();
        self.router.clone().oneshot(request).await.unwrap()
    }

    /// `GET /v1/events/stream` as the platform admin, resuming after `last_event_id`.
    async fn event_stream(&self, last_event_id: Option<&str>) -> axum::response::Response {
        let mut request = Request::builder()
            .method("GET")
            .uri("/v1/events/stream")
            .header("authorization", format!("Bearer {TOKEN}"));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let request = request.body(Body::empty()).unwrap();
        self.router.clone().oneshot(request).await.unwrap()
    }

    /// Brings the snapshot and the change feed to the store, as the control plane's
    /// publisher does in a running process.
    async fn refresh(&self) {
        self.publisher.lock().await.publish_pending().await.unwrap();
    }
}

fn fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["field"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn every_call_needs_an_admin_token() {
    let api = api().await;
    for token in [None, Some("wrong")] {
        let (status, problem) = api.call_as(token, "GET", "/v1/roles", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            problem["type"],
            "https://portcullis.dev/problems/unauthenticated"
        );
    }
    let (status, _) = api
        .call_as(
            None,
            "POST",
            "/v1/roles",
            Some(json!({"name": "x", "actions": ["READ"]})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "no anonymous writes");
}

#[tokio::test]
async fn roles_are_created_read_updated_and_deleted() {
    let api = api().await;
    let role = json!({"name": "auditor", "actions": ["READ"], "scope_types": ["Space"]});
    let (status, body) = api.call("POST", "/v1/roles", Some(role.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, problem) = api.call("POST", "/v1/roles", Some(role)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    let (status, body) = api.call("GET", "/v1/roles/auditor", None).await;
    assert_eq!(
        (status, body["scope_types"].clone()),
        (StatusCode::OK, json!(["Space"]))
    );
    let (status, body) = api
        .call(
            "PUT",
            "/v1/roles/auditor",
            Some(json!({"name": "auditor", "actions": ["READ", "SHARE"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, list) = api.call("GET", "/v1/roles", None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 3);
    assert!(list.get("next_page_token").is_none());
    // A page at a time.
    let (_, page) = api.call("GET", "/v1/roles?page_size=2", None).await;
    let names: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["auditor", "guest"]);
    let token = page["next_page_token"].as_str().unwrap();
    let (_, page) = api
        .call(
            "GET",
            &format!("/v1/roles?page_size=2&page_token={token}"),
            None,
        )
        .await;
    assert_eq!(page["items"][0]["name"], "member");
    assert!(page.get("next_page_token").is_none());
    let (status, problem) = api
        .call("GET", "/v1/roles?page_size=0&page_token=zz", None)
        .await;
    assert_eq!(
        (status, fields(&problem)),
        (StatusCode::BAD_REQUEST, vec![String::from("page_size")])
    );
    let (status, _) = api.call("DELETE", "/v1/roles/auditor", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api.call("GET", "/v1/roles/auditor", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Every failing field at once.
    let (status, problem) = api
        .call(
            "POST",
            "/v1/roles",
            Some(json!({"name": "bad name!", "actions": []})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(fields(&problem), ["name", "actions"]);
    // An action the schema does not know: the compiler's message.
    let (status, problem) = api
        .call(
            "POST",
            "/v1/roles",
            Some(json!({"name": "x", "actions": ["document.fly"]})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert!(problem.to_string().contains("document.fly"), "{problem}");
    // Not JSON of the right shape.
    let (status, problem) = api
        .call(
            "POST",
            "/v1/roles",
            Some(json!({"name": "x", "actions": ["READ"], "colour": 1})),
        )
        .await;
    assert_eq!(
        (status, fields(&problem)),
        (StatusCode::BAD_REQUEST, vec![String::from("body")])
    );
    // A role still assigned is not deleted.
    api.call(
        "PUT",
        "/v1/principals/users/ann",
        Some(json!({"kind": "user", "id": "ann"})),
    )
    .await;
    api.call(
        "POST",
        "/v1/assignments",
        Some(json!({"id": "a1", "principal": "User::\"ann\"", "role": "guest", "scope": "global"})),
    )
    .await;
    let (status, _) = api.call("DELETE", "/v1/roles/guest", None).await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn principals_assignments_and_entities_drive_what_if_decisions() {
    let api = api().await;
    let ask = json!({
        "principal": "User::\"ann\"", "action": "document.read", "resource": "Document::\"d1\"",
        "context": {"time": "2026-01-06T10:00:00Z"}
    });

    let (status, body) = api
        .call(
            "PUT",
            "/v1/principals/users/ann",
            Some(json!({"kind": "user", "id": "ann", "tenant": "t1"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api.call("GET", "/v1/principals/users/ann", None).await;
    assert_eq!(
        (status, body["tenant"].as_str()),
        (StatusCode::OK, Some("t1"))
    );
    let (status, body) = api
        .call(
            "PUT",
            "/v1/entities/Document/d1",
            Some(json!({"uid": "Document::\"d1\"", "parents": ["Space::\"s1\""], "attributes": {"tenant": "t1"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    api.refresh().await;
    let (_, decision) = api.call("POST", "/v1/authorize", Some(ask.clone())).await;
    assert_eq!(
        (decision["decision"].as_str(), decision["reason"].as_str()),
        (Some("deny"), Some("no_permit"))
    );

    let (status, body) = api
        .call(
            "POST",
            "/v1/assignments",
            Some(json!({"id": "ann-s1", "principal": "User::\"ann\"", "role": "member", "scope": {"entity": "Space::\"s1\""}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["assigned_by"], "ops", "the actor is recorded");
    let (_, list) = api
        .call("GET", "/v1/assignments?principal=User::%22ann%22", None)
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    api.refresh().await;
    let (_, decision) = api.call("POST", "/v1/authorize", Some(ask.clone())).await;
    assert_eq!(decision["decision"], "allow", "{decision}");
    assert_eq!(decision["policies"], json!(["role:member"]));
    assert_eq!(decision["effective_roles"], json!(["member"]));

    // Archiving the space closes the document below it.
    api.call(
        "PUT",
        "/v1/entities/Space/s1",
        Some(json!({"uid": "Space::\"s1\"", "attributes": {"tenant": "t1", "archived": true}})),
    )
    .await;
    api.refresh().await;
    let (_, decision) = api.call("POST", "/v1/authorize", Some(ask.clone())).await;
    assert_eq!(
        decision["policies"],
        json!(["archived-resource"]),
        "{decision}"
    );

    // Revoking the grant.
    let (status, _) = api.call("DELETE", "/v1/assignments/ann-s1", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api.call("DELETE", "/v1/assignments/ann-s1", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Sessions.
    let (status, body) = api
        .call(
            "POST",
            "/v1/principals/users/ann/sessions:revoke",
            Some(json!({"session_id": "s-1"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    api.refresh().await;
    let now = jiff::Timestamp::now().as_millisecond();
    let ann: portcullis_model::EntityRef = "User::\"ann\"".parse().unwrap();
    let bob: portcullis_model::EntityRef = "User::\"bob\"".parse().unwrap();
    assert!(api.snapshot.load().is_session_revoked(&ann, "s-1", now));
    assert!(
        !api.snapshot.load().is_session_revoked(&bob, "s-1", now),
        "revoked for ann only"
    );
    let before = jiff::Timestamp::now().as_millisecond();
    let (status, body) = api
        .call(
            "POST",
            "/v1/principals/users/ann/sessions:revoke",
            Some(json!({"all": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    api.refresh().await;
    let ann: portcullis_model::EntityRef = "User::\"ann\"".parse().unwrap();
    let now = jiff::Timestamp::now().as_millisecond();
    assert!(
        api.snapshot
            .load()
            .is_token_revoked_for(&ann, Some(before - 1), now)
    );
    assert!(
        !api.snapshot
            .load()
            .is_token_revoked_for(&ann, Some(now + 1), now)
    );
    for (body, field) in [
        (json!({"all": true, "session_id": "s-2"}), "session_id"),
        (json!({}), "session_id"),
        (json!({"session_id": ""}), "session_id"),
        (json!({"session_id": "s-3", "expires_at": 1}), "expires_at"),
    ] {
        let (status, problem) = api
            .call(
                "POST",
                "/v1/principals/users/ann/sessions:revoke",
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {problem}");
        assert_eq!(problem["errors"][0]["field"], field, "{body}: {problem}");
    }
    let (status, _) = api
        .call(
            "POST",
            "/v1/principals/users/nobody/sessions:revoke",
            Some(json!({"all": true})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Bad input, every field at once.
    let (status, problem) = api
        .call(
            "POST",
            "/v1/assignments",
            Some(json!({
                "id": "bad id", "principal": "User::\"ann\"", "role": "", "scope": "global",
                "conditions": {"valid_from": 10, "valid_until": 5, "allowed_bands": ["PINK"]}
            })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        fields(&problem),
        [
            "id",
            "role",
            "conditions.valid_until",
            "conditions.allowed_bands[0]"
        ]
    );
    let (status, problem) = api
        .call(
            "PUT",
            "/v1/principals/users/ann",
            Some(json!({"kind": "service", "id": "bob", "attributes": {"clearance": 99}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(fields(&problem), ["kind", "id", "attributes.clearance"]);
    let (status, problem) = api
        .call(
            "PUT",
            "/v1/principals/robots/r1",
            Some(json!({"kind": "user", "id": "r1"})),
        )
        .await;
    assert_eq!(
        (status, fields(&problem)),
        (StatusCode::BAD_REQUEST, vec![String::from("kind")])
    );
    let (status, problem) = api
        .call(
            "POST",
            "/v1/authorize",
            Some(json!({
                "principal": "User::\"ann\"", "action": "document.read", "resource": "Document::\"d1\"",
                "context": {"time": "yesterday", "risk_score": 300, "band": "PINK", "ip": "x"}
            })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        fields(&problem),
        [
            "context.time",
            "context.risk_score",
            "context.band",
            "context.ip"
        ]
    );
    let (status, _) = api
        .call("POST", "/v1/assignments", Some(json!({"id": "x", "principal": "User::\"nobody\"", "role": "guest", "scope": "global"})))
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "an assignment of an unknown principal"
    );
    let (status, _) = api.call("DELETE", "/v1/principals/users/ann", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = api.call("GET", "/v1/principals/users/ann", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let api = api().await;
    let (status, doc) = api.call_as(None, "GET", "/v1/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/v1/roles", &["get", "post"][..]),
        ("/v1/roles/{name}", &["get", "put", "delete"]),
        ("/v1/principals/{kind}/{id}", &["get", "put", "delete"]),
        ("/v1/principals/{kind}/{id}/sessions:revoke", &["post"]),
        ("/v1/assignments", &["get", "post"]),
        ("/v1/assignments/{id}", &["delete"]),
        ("/v1/entities/{type}/{id}", &["put", "delete"]),
        ("/v1/authorize", &["post"]),
    ] {
        for m in methods {
            let op = &paths[path][*m];
            assert!(op.is_object(), "{m} {path} documented");
            assert!(
                op["responses"]["401"].is_object(),
                "{m} {path} documents 401"
            );
        }
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "Role",
        "Principal",
        "Assignment",
        "EntityRecord",
        "Problem",
        "FieldError",
    ] {
        assert!(schemas.contains_key(name), "schema {name}");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["admin_token"]["scheme"],
        "bearer"
    );
}

#[tokio::test]
async fn request_ids_are_echoed_and_idempotency_keys_make_retries_safe() {
    let api = api().await;
    let (_, headers, _) = api
        .call_with(
            Some(TOKEN),
            "GET",
            "/v1/roles",
            None,
            &[("x-request-id", "req-42")],
        )
        .await;
    assert_eq!(headers["x-request-id"], "req-42");
    let (_, headers, _) = api
        .call_with(Some(TOKEN), "GET", "/v1/roles", None, &[])
        .await;
    assert_eq!(
        headers["x-request-id"].len(),
        36,
        "one is made when none is sent"
    );

    let role = json!({"name": "auditor", "actions": ["READ"]});
    let key = [("idempotency-key", "create-auditor-1")];
    let (status, first_headers, first) = api
        .call_with(Some(TOKEN), "POST", "/v1/roles", Some(role.clone()), &key)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(first_headers.get("idempotency-replayed").is_none());
    // A retry gets the same answer, not a 409 for the name now taken.
    let (status, headers, replay) = api
        .call_with(Some(TOKEN), "POST", "/v1/roles", Some(role.clone()), &key)
        .await;
    assert_eq!((status, replay), (StatusCode::CREATED, first));
    assert_eq!(headers["idempotency-replayed"], "true");
    // The same key with another body is refused.
    let (status, _, problem) = api
        .call_with(
            Some(TOKEN),
            "POST",
            "/v1/roles",
            Some(json!({"name": "auditor2", "actions": ["READ"]})),
            &key,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    // Without a key, the duplicate is the conflict it is.
    let (status, _) = api.call("POST", "/v1/roles", Some(role)).await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn the_policy_set_changes_only_with_if_match_and_rolls_back_by_version() {
    let api = api().await;
    let ask = json!({
        "principal": "User::\"ann\"", "action": "document.read", "resource": "Document::\"d9\"",
        "context": {"time": "2026-01-06T10:00:00Z"}
    });
    api.call(
        "PUT",
        "/v1/principals/users/ann",
        Some(json!({"kind": "user", "id": "ann", "tenant": "t1"})),
    )
    .await;
    api.call(
        "PUT",
        "/v1/entities/Document/d9",
        Some(json!({"uid": "Document::\"d9\"", "attributes": {"tenant": "t1"}})),
    )
    .await;
    let (status, body) = api
        .call(
            "POST",
            "/v1/assignments",
            Some(json!({"id": "ann-all", "principal": "User::\"ann\"", "role": "guest", "scope": "global"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    api.refresh().await;
    let (_, decision) = api.call("POST", "/v1/authorize", Some(ask.clone())).await;
    assert_eq!(decision["decision"], "allow", "{decision}");

    // The current set, with its version as the ETag.
    let (status, headers, current) = api
        .call_with(Some(TOKEN), "GET", "/v1/policies", None, &[])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["etag"], "\"1\"");
    assert_eq!(current["version"], 1);
    let mut files = current["files"].as_array().unwrap().clone();
    files.push(json!({
        "name": "quarantine.cedar",
        "text": "@id(\"quarantine-d9\")\nforbid(principal, action, resource == Document::\"d9\");\n"
    }));
    let replacement = json!({"files": files});
    let before = api.store.revision().await.unwrap();

    // Without If-Match, with a stale or weak one: refused, nothing written.
    let (status, problem) = api
        .call("PUT", "/v1/policies", Some(replacement.clone()))
        .await;
    assert_eq!(status, StatusCode::PRECONDITION_REQUIRED, "{problem}");
    for stale in ["\"7\"", "W/\"1\"", "\"one\""] {
        let (status, _, problem) = api
            .call_with(
                Some(TOKEN),
                "PUT",
                "/v1/policies",
                Some(replacement.clone()),
                &[("if-match", stale)],
            )
            .await;
        assert_eq!(
            status,
            StatusCode::PRECONDITION_FAILED,
            "{stale}: {problem}"
        );
        assert!(
            problem["detail"].as_str().unwrap().contains("(\"1\")"),
            "{problem}"
        );
    }

    // Bad files: every problem at once; a set that does not validate: the validator's
    // message, placed in its file and line.
    let (status, _, problem) = api
        .call_with(
            Some(TOKEN),
            "PUT",
            "/v1/policies",
            Some(json!({"files": [
                {"name": "a.cedar", "text": ""},
                {"name": "a.cedar", "text": ""},
                {"name": "", "text": ""}
            ], "schema": " "})),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        fields(&problem),
        ["files[1].name", "files[2].name", "schema"],
        "{problem}"
    );
    let broken = json!({"files": [{
        "name": "broken.cedar",
        "text": "@id(\"b\")\npermit(principal, action, resource)\nwhen { principal.shoe_size > 3 };\n"
    }]});
    for (method, uri) in [("PUT", "/v1/policies"), ("POST", "/v1/policies:validate")] {
        let (status, _, problem) = api
            .call_with(
                Some(TOKEN),
                method,
                uri,
                Some(broken.clone()),
                &[("if-match", "\"1\"")],
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {problem}");
        let placed = fields(&problem);
        assert!(
            !placed.is_empty() && placed.iter().all(|f| f == "broken.cedar"),
            "{problem}"
        );
        let message = problem["errors"][0]["message"].as_str().unwrap();
        assert!(
            message.starts_with("broken.cedar:3:") && message.contains("shoe_size"),
            "{message}"
        );
    }
    assert_eq!(
        api.store.revision().await.unwrap(),
        before,
        "nothing written"
    );

    // The dry run accepts the good set without writing it.
    let (status, checked) = api
        .call("POST", "/v1/policies:validate", Some(replacement.clone()))
        .await;
    assert_eq!(status, StatusCode::OK, "{checked}");
    assert!(checked["policies"].as_u64().unwrap() > 2, "{checked}");
    assert_eq!(api.store.revision().await.unwrap(), before);

    // Replaced with the current ETag: version 2, by the token's subject, enforced.
    let (status, headers, stored) = api
        .call_with(
            Some(TOKEN),
            "PUT",
            "/v1/policies",
            Some(replacement.clone()),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    assert_eq!(headers["etag"], "\"2\"");
    assert_eq!(
        (stored["version"].as_i64(), stored["created_by"].as_str()),
        (Some(2), Some("ops"))
    );
    assert_eq!(stored["schema"], current["schema"], "the schema is kept");
    api.refresh().await;
    let (_, decision) = api.call("POST", "/v1/authorize", Some(ask.clone())).await;
    assert_eq!(decision["policies"], json!(["quarantine-d9"]), "{decision}");
    // The same ETag again lost the race to ourselves.
    let (status, _, _) = api
        .call_with(
            Some(TOKEN),
            "PUT",
            "/v1/policies",
            Some(replacement.clone()),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);

    // History, newest first, paged; one version.
    let (_, page) = api
        .call("GET", "/v1/policies/versions?page_size=1", None)
        .await;
    assert_eq!(page["items"][0]["version"], 2, "{page}");
    assert_eq!(page["items"][0]["created_by"], "ops");
    let token = page["next_page_token"].as_str().unwrap().to_owned();
    let (_, page) = api
        .call(
            "GET",
            &format!("/v1/policies/versions?page_size=1&page_token={token}"),
            None,
        )
        .await;
    assert_eq!(page["items"][0]["version"], 1, "{page}");
    assert!(page.get("next_page_token").is_none(), "{page}");
    let (status, old) = api.call("GET", "/v1/policies/versions/1", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(old["files"], current["files"]);
    let (status, _) = api.call("GET", "/v1/policies/versions/99", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, problem) = api.call("GET", "/v1/policies/versions/x", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(fields(&problem), ["version"]);

    // Rollback: version 1's content as version 3; the quarantine is gone.
    let (status, _, problem) = api
        .call_with(
            Some(TOKEN),
            "POST",
            "/v1/policies:rollback",
            Some(json!({"version": 42})),
            &[("if-match", "\"2\"")],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(fields(&problem), ["version"]);
    let (status, headers, rolled) = api
        .call_with(
            Some(TOKEN),
            "POST",
            "/v1/policies:rollback",
            Some(json!({"version": 1})),
            &[("if-match", "\"2\"")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rolled}");
    assert_eq!(headers["etag"], "\"3\"");
    assert_eq!(rolled["files"], current["files"]);
    api.refresh().await;
    let (_, decision) = api.call("POST", "/v1/authorize", Some(ask)).await;
    assert_eq!(decision["decision"], "allow", "{decision}");

    let (status, headers, schema) = api
        .call_with(Some(TOKEN), "GET", "/v1/schema", None, &[])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["etag"], "\"3\"");
    assert_eq!(schema["schema"], current["schema"]);
}

/// Sets up two tenants as the platform admin: principals ann (t1) and bob (t2), spaces s1
/// (t1) and s2 (t2), and bob's grant on s2.
async fn two_tenants(api: &Api) {
    for (uri, body) in [
        (
            "/v1/principals/users/ann",
            json!({"kind": "user", "id": "ann", "tenant": "t1"}),
        ),
        (
            "/v1/principals/users/bob",
            json!({"kind": "user", "id": "bob", "tenant": "t2"}),
        ),
        (
            "/v1/entities/Space/s1",
            json!({"uid": "Space::\"s1\"", "attributes": {"tenant": "t1"}}),
        ),
        (
            "/v1/entities/Space/s2",
            json!({"uid": "Space::\"s2\"", "attributes": {"tenant": "t2"}}),
        ),
    ] {
        let (status, body) = api.call("PUT", uri, Some(body)).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    }
    let (status, body) = api
        .call(
            "POST",
            "/v1/assignments",
            Some(json!({"id": "bob-s2", "principal": "User::\"bob\"", "role": "member", "scope": {"entity": "Space::\"s2\""}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn a_tenant_admin_manages_its_own_tenant_and_nothing_else() {
    let api = api().await;
    two_tenants(&api).await;
    let as_t1 = |method: &'static str, uri: &'static str, body: Option<Value>| {
        let api = &api;
        async move { api.call_as(Some(T1_ADMIN), method, uri, body).await }
    };
    let grant = |id: &str, who: &str, scope: Value| json!({"id": id, "principal": format!("User::\"{who}\""), "role": "member", "scope": scope});

    // Its own tenant: principals, entities below its own, grants, revocations, reads.
    for (method, uri, body, expected) in [
        (
            "PUT",
            "/v1/principals/users/carl",
            Some(json!({"kind": "user", "id": "carl", "tenant": "t1"})),
            StatusCode::OK,
        ),
        ("GET", "/v1/principals/users/ann", None, StatusCode::OK),
        (
            "PUT",
            "/v1/entities/Document/d1",
            Some(
                json!({"uid": "Document::\"d1\"", "parents": ["Space::\"s1\""], "attributes": {"tenant": "t1"}}),
            ),
            StatusCode::OK,
        ),
        (
            "POST",
            "/v1/assignments",
            Some(grant("ann-s1", "ann", json!({"entity": "Space::\"s1\""}))),
            StatusCode::CREATED,
        ),
        (
            "POST",
            "/v1/assignments",
            Some(grant("ann-t1", "ann", json!({"entity": "Tenant::\"t1\""}))),
            StatusCode::CREATED,
        ),
        (
            "GET",
            "/v1/assignments?principal=User::%22ann%22",
            None,
            StatusCode::OK,
        ),
        (
            "DELETE",
            "/v1/assignments/ann-t1",
            None,
            StatusCode::NO_CONTENT,
        ),
        (
            "POST",
            "/v1/principals/users/ann/sessions:revoke",
            Some(json!({"session_id": "s-9"})),
            StatusCode::OK,
        ),
        (
            "POST",
            "/v1/authorize",
            Some(
                json!({"principal": "User::\"ann\"", "action": "document.read", "resource": "Document::\"d1\""}),
            ),
            StatusCode::OK,
        ),
        ("GET", "/v1/roles", None, StatusCode::OK),
        ("GET", "/v1/policies", None, StatusCode::OK),
        ("GET", "/v1/entities/Space/s1", None, StatusCode::OK),
        (
            "GET",
            "/v1/assignments?scope=Space::%22s1%22",
            None,
            StatusCode::OK,
        ),
    ] {
        let (status, body) = as_t1(method, uri, body).await;
        assert_eq!(status, expected, "t1-admin {method} {uri}: {body}");
    }

    // Another tenant, or anything global: refused, and nothing written.
    let before = api.store.revision().await.unwrap();
    for (method, uri, body) in [
        (
            "PUT",
            "/v1/principals/users/dave",
            Some(json!({"kind": "user", "id": "dave", "tenant": "t2"})),
        ),
        // Moving bob from t2 into t1 touches t2.
        (
            "PUT",
            "/v1/principals/users/bob",
            Some(json!({"kind": "user", "id": "bob", "tenant": "t1"})),
        ),
        // A principal without a tenant is platform-level.
        (
            "PUT",
            "/v1/principals/users/root",
            Some(json!({"kind": "user", "id": "root"})),
        ),
        ("GET", "/v1/principals/users/bob", None),
        ("DELETE", "/v1/principals/users/bob", None),
        (
            "POST",
            "/v1/principals/users/bob/sessions:revoke",
            Some(json!({"session_id": "s-1"})),
        ),
        (
            "POST",
            "/v1/assignments",
            Some(grant("ann-s2", "ann", json!({"entity": "Space::\"s2\""}))),
        ),
        (
            "POST",
            "/v1/assignments",
            Some(grant("bob-s1", "bob", json!({"entity": "Space::\"s1\""}))),
        ),
        (
            "POST",
            "/v1/assignments",
            Some(grant("ann-all", "ann", json!("global"))),
        ),
        // A scope nobody stored has no known tenant.
        (
            "POST",
            "/v1/assignments",
            Some(grant("ann-s7", "ann", json!({"entity": "Space::\"s7\""}))),
        ),
        (
            "POST",
            "/v1/assignments",
            Some(grant("ann-t2", "ann", json!({"entity": "Tenant::\"t2\""}))),
        ),
        ("GET", "/v1/assignments?principal=User::%22bob%22", None),
        ("DELETE", "/v1/assignments/bob-s2", None),
        (
            "PUT",
            "/v1/entities/Document/d2",
            Some(
                json!({"uid": "Document::\"d2\"", "parents": ["Space::\"s2\""], "attributes": {"tenant": "t1"}}),
            ),
        ),
        (
            "PUT",
            "/v1/entities/Space/s2",
            Some(json!({"uid": "Space::\"s2\"", "attributes": {"tenant": "t1"}})),
        ),
        ("DELETE", "/v1/entities/Space/s2", None),
        (
            "POST",
            "/v1/authorize",
            Some(
                json!({"principal": "User::\"bob\"", "action": "document.read", "resource": "Space::\"s2\""}),
            ),
        ),
        // Every entity a question names counts, the parents given for the route too.
        (
            "POST",
            "/v1/authorize",
            Some(
                json!({"principal": "User::\"ann\"", "action": "document.read", "resource": "Document::\"d1\"", "parents": ["Space::\"s2\""]}),
            ),
        ),
        (
            "POST",
            "/v1/roles",
            Some(json!({"name": "sneaky", "actions": ["READ"]})),
        ),
        ("DELETE", "/v1/roles/guest", None),
        (
            "PUT",
            "/v1/policies",
            Some(json!({"files": [{"name": "x.cedar", "text": ""}]})),
        ),
        ("GET", "/v1/snapshot", None),
        ("GET", "/v1/snapshot?view=shared", None),
        ("GET", "/v1/snapshot/principals/users/bob", None),
        ("GET", "/v1/snapshot/entities/Space/s2", None),
        ("GET", "/v1/updates?since=0", None),
        ("GET", "/v1/entities/Space/s2", None),
        ("GET", "/v1/assignments?scope=Space::%22s2%22", None),
        ("GET", "/v1/assignments?role=member", None),
        ("GET", "/v1/assignments?scope=global", None),
        // One question about another tenant refuses the whole batch.
        (
            "POST",
            "/v1/authorize:batch",
            Some(json!({"requests": [
                {"principal": "User::\"ann\"", "action": "document.read", "resource": "Document::\"d1\""},
                {"principal": "User::\"bob\"", "action": "document.read", "resource": "Space::\"s2\""}
            ]})),
        ),
    ] {
        let (status, problem) = as_t1(method, uri, body).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "t1-admin {method} {uri}: {problem}"
        );
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .starts_with("`t1-admin` may not `"),
            "{problem}"
        );
    }
    assert_eq!(
        api.store.revision().await.unwrap(),
        before,
        "nothing written"
    );

    // A session id is no handle on another tenant's sessions: revoking `shared` for ann
    // neither refuses bob's token with that id nor replaces (or shortens) bob's own
    // revocation of it.
    let soon = jiff::Timestamp::now().as_millisecond() + 60_000;
    let (status, body) = api
        .call(
            "POST",
            "/v1/principals/users/bob/sessions:revoke",
            Some(json!({"session_id": "shared"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = as_t1(
        "POST",
        "/v1/principals/users/ann/sessions:revoke",
        Some(json!({"session_id": "shared", "expires_at": soon})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    api.refresh().await;
    let ann: portcullis_model::EntityRef = "User::\"ann\"".parse().unwrap();
    let bob: portcullis_model::EntityRef = "User::\"bob\"".parse().unwrap();
    let snapshot = api.snapshot.load();
    assert!(snapshot.is_session_revoked(&ann, "shared", soon - 1));
    assert!(!snapshot.is_session_revoked(&ann, "shared", soon));
    assert!(
        snapshot.is_session_revoked(&bob, "shared", soon + 3_600_000),
        "bob's own revocation keeps its 24 hours"
    );
}

#[tokio::test]
async fn a_sidecar_token_only_follows_the_state_and_a_token_without_roles_does_nothing() {
    let api = api().await;
    two_tenants(&api).await;
    let (status, _) = api
        .call_as(Some(SIDECAR), "GET", "/v1/snapshot", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api
        .call_as(Some(SIDECAR), "GET", "/v1/updates?since=1", None)
        .await;
    assert_eq!(status, StatusCode::OK);

    // Every documented operation, with a body it would accept: a sidecar may only follow, a
    // token without roles may do nothing at all. A new route without a sample here fails.
    let (_, doc) = api.call_as(None, "GET", "/v1/openapi.json", None).await;
    let samples: Vec<(&str, &str, &str, Option<Value>)> = vec![
        ("get", "/v1/policies", "/v1/policies", None),
        (
            "put",
            "/v1/policies",
            "/v1/policies",
            Some(json!({"files": [{"name": "a.cedar", "text": ""}]})),
        ),
        (
            "post",
            "/v1/policies:validate",
            "/v1/policies:validate",
            Some(json!({"files": [{"name": "a.cedar", "text": ""}]})),
        ),
        (
            "post",
            "/v1/policies:rollback",
            "/v1/policies:rollback",
            Some(json!({"version": 1})),
        ),
        (
            "get",
            "/v1/policies/versions",
            "/v1/policies/versions",
            None,
        ),
        (
            "get",
            "/v1/policies/versions/{version}",
            "/v1/policies/versions/1",
            None,
        ),
        ("get", "/v1/schema", "/v1/schema", None),
        ("get", "/v1/roles", "/v1/roles", None),
        (
            "post",
            "/v1/roles",
            "/v1/roles",
            Some(json!({"name": "r", "actions": ["READ"]})),
        ),
        ("get", "/v1/roles/{name}", "/v1/roles/guest", None),
        (
            "put",
            "/v1/roles/{name}",
            "/v1/roles/guest",
            Some(json!({"name": "guest", "actions": ["READ"]})),
        ),
        ("delete", "/v1/roles/{name}", "/v1/roles/guest", None),
        (
            "get",
            "/v1/principals/{kind}/{id}",
            "/v1/principals/users/ann",
            None,
        ),
        (
            "put",
            "/v1/principals/{kind}/{id}",
            "/v1/principals/users/ann",
            Some(json!({"kind": "user", "id": "ann", "tenant": "t1"})),
        ),
        (
            "delete",
            "/v1/principals/{kind}/{id}",
            "/v1/principals/users/ann",
            None,
        ),
        (
            "post",
            "/v1/principals/{kind}/{id}/sessions:revoke",
            "/v1/principals/users/ann/sessions:revoke",
            Some(json!({"session_id": "s"})),
        ),
        (
            "post",
            "/v1/assignments",
            "/v1/assignments",
            Some(
                json!({"id": "x", "principal": "User::\"ann\"", "role": "guest", "scope": {"entity": "Space::\"s1\""}}),
            ),
        ),
        (
            "get",
            "/v1/assignments",
            "/v1/assignments?principal=User::%22ann%22",
            None,
        ),
        (
            "delete",
            "/v1/assignments/{id}",
            "/v1/assignments/bob-s2",
            None,
        ),
        (
            "put",
            "/v1/entities/{type}/{id}",
            "/v1/entities/Space/s1",
            Some(json!({"uid": "Space::\"s1\"", "attributes": {"tenant": "t1"}})),
        ),
        (
            "get",
            "/v1/entities/{type}/{id}",
            "/v1/entities/Space/s1",
            None,
        ),
        (
            "delete",
            "/v1/entities/{type}/{id}",
            "/v1/entities/Space/s1",
            None,
        ),
        (
            "post",
            "/v1/authorize:batch",
            "/v1/authorize:batch",
            Some(
                json!({"requests": [{"principal": "User::\"ann\"", "action": "document.read", "resource": "Space::\"s1\""}]}),
            ),
        ),
        (
            "post",
            "/v1/authorize",
            "/v1/authorize",
            Some(
                json!({"principal": "User::\"ann\"", "action": "document.read", "resource": "Space::\"s1\""}),
            ),
        ),
        ("get", "/v1/audit", "/v1/audit", None),
        ("get", "/v1/snapshot", "/v1/snapshot", None),
        (
            "get",
            "/v1/snapshot/principals/{kind}/{id}",
            "/v1/snapshot/principals/users/ann",
            None,
        ),
        (
            "get",
            "/v1/snapshot/entities/{type}/{id}",
            "/v1/snapshot/entities/Space/s1",
            None,
        ),
        ("get", "/v1/updates", "/v1/updates?since=0", None),
        ("get", "/v1/watch", "/v1/watch?since=0", None),
        (
            "post",
            "/v1/events",
            "/v1/events",
            Some(
                json!({"id": "s1", "type": "invitation.created", "timestamp": "2026-01-06T10:00:00Z"}),
            ),
        ),
        (
            "get",
            "/v1/events/dead-letters",
            "/v1/events/dead-letters",
            None,
        ),
        (
            "post",
            "/v1/events/dead-letters/{id}/replay",
            "/v1/events/dead-letters/nope/replay",
            None,
        ),
        ("get", "/v1/events/stream", "/v1/events/stream", None),
    ];
    let mut documented = 0;
    for (path, methods) in doc["paths"].as_object().unwrap() {
        for method in methods.as_object().unwrap().keys() {
            documented += 1;
            assert!(
                samples.iter().any(|(m, p, _, _)| m == method && p == path),
                "no sample for {method} {path}"
            );
        }
    }
    assert_eq!(documented, samples.len());
    let before = api.store.revision().await.unwrap();
    for (method, path, uri, body) in samples {
        let method = method.to_uppercase();
        let (status, problem) = api.call_as(Some(NOBODY), &method, uri, body.clone()).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "nobody {method} {uri}: {problem}"
        );
        let follows = [
            "/v1/snapshot",
            "/v1/snapshot/principals/{kind}/{id}",
            "/v1/snapshot/entities/{type}/{id}",
            "/v1/updates",
            "/v1/watch",
        ]
        .contains(&path);
        // The body is not read: /v1/watch and /v1/events/stream stream until the caller
        // leaves.
        let status = api.open(SIDECAR, &method, uri, body).await.status();
        assert_eq!(
            status == StatusCode::FORBIDDEN,
            !follows,
            "sidecar {method} {uri}: {status}"
        );
    }
    assert_eq!(
        api.store.revision().await.unwrap(),
        before,
        "nothing written"
    );
}

#[tokio::test]
async fn x_actor_id_names_the_person_automation_acts_for() {
    let api = api().await;
    two_tenants(&api).await;
    let (status, _, body) = api
        .call_with(
            Some(TOKEN),
            "POST",
            "/v1/assignments",
            Some(json!({"id": "ann-s1", "principal": "User::\"ann\"", "role": "guest", "scope": {"entity": "Space::\"s1\""}})),
            &[("x-actor-id", "jane@example.com")],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["assigned_by"], "jane@example.com (via ops)");
    let (status, _, problem) = api
        .call_with(Some(TOKEN), "GET", "/v1/roles", None, &[("x-actor-id", "")])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert_eq!(fields(&problem), ["X-Actor-Id"]);
}

#[tokio::test]
async fn watch_streams_each_published_revision_and_heartbeats_between() {
    let api = api().await;
    let since = api.snapshot.load().revision();
    let response = api
        .open(
            TOKEN,
            "GET",
            &format!("/v1/watch?since={since}&heartbeat_ms=100"),
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut events = Events {
        body: response.into_body(),
        text: String::new(),
    };

    // A heartbeat at once, then one per interval while nothing changes.
    let (event, _, data) = events.next().await;
    assert_eq!((event.as_str(), data), ("heartbeat", since.to_string()));
    let (event, _, _) = events.next().await;
    assert_eq!(event, "heartbeat");

    // A change is streamed once this control plane publishes it.
    api.call(
        "PUT",
        "/v1/principals/users/zed",
        Some(json!({"kind": "user", "id": "zed", "tenant": "t1"})),
    )
    .await;
    api.refresh().await;
    let (id, data) = events.next_update().await;
    assert_eq!(id, Some((since + 1).to_string()));
    let update: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(update["patch"]["revision"], since + 1, "{update}");
    assert!(data.contains("\"zed\""), "{data}");

    let (status, problem) = api
        .call("GET", "/v1/watch?since=0&heartbeat_ms=5", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(fields(&problem), ["heartbeat_ms"]);
}

#[tokio::test]
async fn a_cached_sidecar_bootstraps_from_the_shared_part_and_fetches_one_principal_at_a_time() {
    let api = api().await;
    two_tenants(&api).await;
    let (status, body) = api
        .call(
            "PUT",
            "/v1/principals/groups/eng",
            Some(json!({"kind": "group", "id": "eng", "tenant": "t1"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api
        .call(
            "POST",
            "/v1/assignments",
            Some(json!({"id": "eng-s1", "principal": "Group::\"eng\"", "role": "member", "scope": {"entity": "Space::\"s1\""}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    api.refresh().await;

    let ids = |list: &Value| -> Vec<String> {
        let mut ids: Vec<String> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let (status, full) = api
        .call_as(Some(SIDECAR), "GET", "/v1/snapshot", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(ids(&full["principals"]).contains(&String::from("bob")));
    let (status, shared) = api
        .call_as(Some(SIDECAR), "GET", "/v1/snapshot?view=shared", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&shared["principals"]), ["eng"]);
    assert_eq!(ids(&shared["assignments"]), ["eng-s1"]);
    assert_eq!(shared["entities"], full["entities"]);
    assert_eq!(shared["revision"], full["revision"]);
    assert_eq!(shared["policy_set"], full["policy_set"]);

    // One principal, with all its assignments, at the control plane's revision.
    let (status, slice) = api
        .call_as(
            Some(SIDECAR),
            "GET",
            "/v1/snapshot/principals/users/bob",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{slice}");
    assert_eq!(slice["revision"], full["revision"]);
    assert_eq!(slice["value"]["principal"][0]["id"], "bob", "{slice}");
    assert_eq!(ids(&slice["value"]["principal"][1]), ["bob-s2"]);
    let (status, slice) = api
        .call_as(
            Some(SIDECAR),
            "GET",
            "/v1/snapshot/principals/users/nobody",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(slice["value"], Value::Null, "{slice}");
    // An id is one path segment, taken as it is.
    let (status, slice) = api
        .call_as(
            Some(SIDECAR),
            "GET",
            "/v1/snapshot/principals/users/a%2Fb%22c",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(slice["value"], Value::Null, "{slice}");

    let (status, problem) = api
        .call_as(
            Some(SIDECAR),
            "GET",
            "/v1/snapshot/principals/robots/r2",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(fields(&problem), ["kind"]);
    let (status, _) = api
        .call_as(Some(SIDECAR), "GET", "/v1/snapshot?view=half", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// A control plane that holds only the resource hierarchy (`Tenant`, `Space`) in its shared
/// view: documents are left out of the bootstrap and of every update, named to be evicted
/// when they change, and served one at a time.
#[tokio::test]
async fn a_shared_view_holding_the_hierarchy_leaves_documents_to_be_fetched() {
    let held = HeldEntityTypes::only(["Tenant", "Space"].map(String::from));
    let api = api_holding(held).await;
    two_tenants(&api).await;
    let (status, body) = api
        .call(
            "PUT",
            "/v1/entities/Document/d1",
            Some(json!({"uid": "Document::\"d1\"", "parents": ["Space::\"s1\""], "attributes": {"classification": 2}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    api.refresh().await;

    let uids = |state: &Value| -> Vec<String> {
        let mut uids: Vec<String> = (state["entities"].as_array().unwrap().iter())
            .map(|e| e["uid"].as_str().unwrap().to_owned())
            .collect();
        uids.sort();
        uids
    };
    let (_, full) = api
        .call_as(Some(SIDECAR), "GET", "/v1/snapshot", None)
        .await;
    assert!(uids(&full).contains(&String::from("Document::\"d1\"")));
    let (status, shared) = api
        .call_as(Some(SIDECAR), "GET", "/v1/snapshot?view=shared", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(uids(&shared), ["Space::\"s1\"", "Space::\"s2\""]);
    assert_eq!(shared["held_entity_types"], json!(["Space", "Tenant"]));
    assert!(full.get("held_entity_types").is_none(), "{full}");

    // The document's slice, as the control plane's snapshot holds it.
    let (status, slice) = api
        .call_as(
            Some(SIDECAR),
            "GET",
            "/v1/snapshot/entities/Document/d1",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{slice}");
    assert_eq!(slice["revision"], full["revision"]);
    assert_eq!(
        slice["value"]["entity"]["uid"], "Document::\"d1\"",
        "{slice}"
    );
    assert_eq!(slice["value"]["entity"]["attributes"]["classification"], 2);
    let (status, slice) = api
        .call_as(
            Some(SIDECAR),
            "GET",
            "/v1/snapshot/entities/Document/none",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(slice["value"], Value::Null, "{slice}");
    let (status, problem) = api
        .call_as(
            Some(SIDECAR),
            "GET",
            "/v1/snapshot/entities/not%20a%20type/x",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert_eq!(fields(&problem), ["type"]);

    // A change to the document is named, not carried; one to a space is carried.
    let revision = full["revision"].as_i64().unwrap();
    let (status, body) = api
        .call(
            "PUT",
            "/v1/entities/Document/d1",
            Some(json!({"uid": "Document::\"d1\"", "parents": ["Space::\"s1\""], "attributes": {"archived": true}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api
        .call(
            "PUT",
            "/v1/entities/Space/s2",
            Some(json!({"uid": "Space::\"s2\"", "attributes": {"tenant": "t2", "archived": true}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    api.refresh().await;
    let (status, update) = api
        .call_as(
            Some(SIDECAR),
            "GET",
            &format!("/v1/updates?since={revision}&view=shared"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{update}");
    let patch = &update["patch"];
    assert_eq!(
        patch["invalidated"],
        json!(["Document::\"d1\""]),
        "{update}"
    );
    assert_eq!(patch["entities"][0][0], "Space::\"s2\"", "{update}");
    assert_eq!(patch["entities"].as_array().unwrap().len(), 1, "{update}");
    assert_eq!(patch["held_entity_types"], json!(["Space", "Tenant"]));
    let (_, full_update) = api
        .call_as(
            Some(SIDECAR),
            "GET",
            &format!("/v1/updates?since={revision}"),
            None,
        )
        .await;
    assert_eq!(
        full_update["patch"]["entities"].as_array().unwrap().len(),
        2
    );
}

/// The server-sent events of one `/v1/watch` response, one at a time.
struct Events {
    body: Body,
    text: String,
}

impl Events {
    /// `(event, id, data)` of the next event, within 5 s.
    async fn next(&mut self) -> (String, Option<String>, String) {
        loop {
            if let Some(end) = self.text.find("\n\n") {
                let event: String = self.text.drain(..end + 2).collect();
                let field = |name: &str| {
                    event
                        .lines()
                        .find_map(|l| l.strip_prefix(&format!("{name}:")))
                        .map(|v| v.trim().to_owned())
                };
                return (field("event").unwrap(), field("id"), field("data").unwrap());
            }
            let frame = tokio::time::timeout(std::time::Duration::from_secs(5), self.body.frame())
                .await
                .unwrap() // no event within 5 s
                .unwrap()
                .unwrap();
            self.text
                .push_str(std::str::from_utf8(frame.data_ref().unwrap()).unwrap());
        }
    }

    /// The next `update` event, heartbeats skipped: its id and data.
    async fn next_update(&mut self) -> (Option<String>, String) {
        loop {
            let (event, id, data) = self.next().await;
            if event == "update" {
                return (id, data);
            }
        }
    }
}

/// `GET /v1/events/stream`: every event taken (duplicates excepted) or dead-lettered, named
/// as consoles listen for it, numbered in commit order, sent to every console from one read
/// of the store; `Last-Event-ID` resumes right after an entry, from the store when it is
/// older than what is kept in memory.
#[tokio::test]
async fn the_event_stream_names_each_event_and_resumes_after_the_last_id() {
    let api = api().await;
    let mut consoles = Vec::new();
    for _ in 0..3 {
        let response = api.event_stream(None).await;
        assert_eq!(response.status(), StatusCode::OK);
        consoles.push(Events {
            body: response.into_body(),
            text: String::new(),
        });
    }
    let status_changed = |id: &str, status: &str, at: &str| {
        json!({"topic": "USER_STATUS_CHANGED@1.0", "id": id, "payload": {
            "user_id": "eve", "new_status": status, "changed_ts": at}})
    };
    let created = json!({"topic": "USER_CREATED@1.0", "id": "c1", "payload": {
        "user_id": "eve", "tenant_id": "t1", "initial_role": "member",
        "created_ts": "2026-01-06T09:00:00Z"}});
    let sent = [
        (created.clone(), StatusCode::OK),
        (
            status_changed("s2", "suspended", "2026-01-06T11:00:00Z"),
            StatusCode::OK,
        ),
        // Older than s2, arriving later: stale.
        (
            status_changed("s1", "active", "2026-01-06T10:00:00Z"),
            StatusCode::OK,
        ),
        (
            json!({"id": "i1", "type": "invitation.created", "timestamp": "2026-01-06T12:00:00Z"}),
            StatusCode::OK,
        ),
        // A duplicate is no new event.
        (created, StatusCode::OK),
        (json!({"hello": 1}), StatusCode::UNPROCESSABLE_ENTITY),
    ];
    api.store.stream_entries_read.store(0, Ordering::SeqCst);
    for (event, expected) in sent {
        let (status, body) = api
            .call_as(Some(PUBLISHER), "POST", "/v1/events", Some(event))
            .await;
        assert_eq!(status, expected, "{body}");
    }
    let names = [
        "USER_CREATED",
        "USER_STATUS_CHANGED",
        "stale",
        "invitation.created",
        "dead_letter",
    ];
    for console in &mut consoles {
        let mut seen = Vec::new();
        for _ in 0..names.len() {
            let (name, id, data) = console.next().await;
            let data: Value = serde_json::from_str(&data).unwrap();
            seen.push((name, id.unwrap(), data));
        }
        assert_eq!(
            seen.iter().map(|(n, _, _)| n.as_str()).collect::<Vec<_>>(),
            names
        );
        assert_eq!(
            seen.iter()
                .map(|(_, id, _)| id.as_str())
                .collect::<Vec<_>>(),
            ["1", "2", "3", "4", "5"]
        );
        let created = &seen[0].2;
        assert_eq!(created["event_id"], "c1");
        assert_eq!(created["outcome"], "applied");
        assert!(created["revision"].as_i64().unwrap() > 0);
        assert_eq!(created["data"]["user_id"], "eve", "the payload: {created}");
        assert_eq!(seen[2].2["event_id"], "s1");
        assert_eq!(seen[2].2["outcome"], "stale");
        assert_eq!(seen[3].2["outcome"], "acknowledged");
        assert!(
            seen[4].2["reason"]
                .as_str()
                .unwrap()
                .contains("no envelope"),
            "{}",
            seen[4].2
        );
    }
    assert_eq!(
        api.store.stream_entries_read.load(Ordering::SeqCst),
        names.len(),
        "each entry read from the store once, for three consoles"
    );
    drop(consoles);

    // Resumed after entry 2.
    let mut resumed = Events {
        body: api.event_stream(Some("2")).await.into_body(),
        text: String::new(),
    };
    for (name, id) in [
        ("stale", "3"),
        ("invitation.created", "4"),
        ("dead_letter", "5"),
    ] {
        let (n, i, _) = resumed.next().await;
        assert_eq!((n.as_str(), i.as_deref()), (name, Some(id)));
    }
    // Ahead of the stream (the store was replaced): told to reload, then followed.
    let mut ahead = Events {
        body: api.event_stream(Some("99")).await.into_body(),
        text: String::new(),
    };
    let (name, id, data) = ahead.next().await;
    assert_eq!((name.as_str(), id.as_deref()), ("resync", Some("5")));
    assert_eq!(
        serde_json::from_str::<Value>(&data).unwrap(),
        json!({"last_event_id": 99, "resumed_after": 5})
    );
    for bad in ["x", "-1", "1.5"] {
        let response = api.event_stream(Some(bad)).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }

    // More than is kept in memory: the oldest come from the store, then the rest, in order.
    let invitations: Vec<Value> = (0..1100)
        .map(|n| json!({"id": format!("inv-{n}"), "type": "invitation.created", "timestamp": "2026-01-06T12:00:00Z"}))
        .collect();
    for batch in invitations.chunks(500) {
        let (status, body) = api
            .call_as(
                Some(PUBLISHER),
                "POST",
                "/v1/events",
                Some(Value::Array(batch.to_vec())),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let mut behind = Events {
        body: api.event_stream(Some("5")).await.into_body(),
        text: String::new(),
    };
    for n in 0..1100_usize {
        let (name, id, data) = behind.next().await;
        assert_eq!(name, "invitation.created");
        assert_eq!(id, Some((n + 6).to_string()));
        let data: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(data["event_id"], format!("inv-{n}"));
    }
}

/// A restart storm: cached sidecars bootstrapping at once cost the store one read of the
/// shared state per published revision, however many ask.
#[tokio::test]
async fn cached_sidecars_bootstrapping_together_cost_one_store_read_per_revision() {
    let api = api().await;
    two_tenants(&api).await;
    api.refresh().await;
    for round in 1..=2 {
        api.store.update_reads.store(0, Ordering::SeqCst);
        let calls =
            (0..30).map(|_| api.call_as(Some(SIDECAR), "GET", "/v1/snapshot?view=shared", None));
        let answers = futures_util::future::join_all(calls).await;
        let head = api.snapshot.load().revision();
        for (status, state) in &answers {
            assert_eq!(*status, StatusCode::OK, "{state}");
            assert_eq!(state["revision"], head, "round {round}");
            assert_eq!(*state, answers[0].1);
        }
        assert_eq!(
            api.store.update_reads.load(Ordering::SeqCst),
            1,
            "round {round}"
        );
        // A new revision: the next bootstrap reads it.
        let (status, body) = api
            .call(
                "PUT",
                &format!("/v1/principals/groups/g{round}"),
                Some(json!({"kind": "group", "id": format!("g{round}"), "tenant": "t1"})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        api.refresh().await;
    }
}

#[tokio::test]
async fn fifty_watchers_cost_the_store_one_read_per_change() {
    let api = api().await;
    let since = api.snapshot.load().revision();
    // Every other watcher follows the shared view (a sidecar in cached state mode).
    let mut watchers = Vec::new();
    for n in 0..50 {
        let view = if n % 2 == 0 { "" } else { "&view=shared" };
        let response = api
            .open(
                SIDECAR,
                "GET",
                &format!("/v1/watch?since={since}&heartbeat_ms=60000{view}"),
                None,
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let mut events = Events {
            body: response.into_body(),
            text: String::new(),
        };
        // Connected: the greeting heartbeat.
        assert_eq!(events.next().await.0, "heartbeat");
        watchers.push(events);
    }

    for (n, user) in ["ann", "ben", "cyd"].into_iter().enumerate() {
        api.call(
            "PUT",
            &format!("/v1/principals/users/{user}"),
            Some(json!({"kind": "user", "id": user, "tenant": "t1"})),
        )
        .await;
        api.store.update_reads.store(0, Ordering::SeqCst);
        api.refresh().await;
        let revision = since + i64::try_from(n).unwrap() + 1;
        // Every watcher receives the change.
        let mut updates = Vec::new();
        for watcher in &mut watchers {
            updates.push(watcher.next_update().await);
        }
        for (id, _) in &updates {
            assert_eq!(id.as_deref(), Some(revision.to_string().as_str()));
        }
        // The same bytes to all of a view: the full view carries the user, the shared view
        // names it to be evicted.
        let (full, shared): (Vec<_>, Vec<_>) =
            updates.iter().enumerate().partition(|(i, _)| i % 2 == 0);
        assert!(full.iter().all(|(_, u)| u.1 == full[0].1.1));
        assert!(shared.iter().all(|(_, u)| u.1 == shared[0].1.1));
        let full: Value = serde_json::from_str(&full[0].1.1).unwrap();
        let shared: Value = serde_json::from_str(&shared[0].1.1).unwrap();
        assert_eq!(full["patch"]["principals"][0][1][0]["id"], user, "{full}");
        assert!(full["patch"].get("invalidated").is_none(), "{full}");
        assert_eq!(shared["patch"]["principals"], json!([]), "{shared}");
        assert_eq!(
            shared["patch"]["invalidated"],
            json!([format!("User::\"{user}\"")]),
            "{shared}"
        );
        assert_eq!(
            api.store.update_reads.load(Ordering::SeqCst),
            1,
            "change {revision}: one store read, by the publisher, for 50 watchers"
        );
    }

    // A poller is answered from the feed when it holds the step; only a caller behind what
    // the feed keeps reads the store, once.
    api.store.update_reads.store(0, Ordering::SeqCst);
    let (status, update) = api
        .call_as(
            Some(SIDECAR),
            "GET",
            &format!("/v1/updates?since={}", since + 1),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(update["patch"]["revision"], since + 2, "{update}");
    assert_eq!(
        api.store.update_reads.load(Ordering::SeqCst),
        0,
        "a step the feed holds"
    );
    let (status, _) = api
        .call_as(Some(SIDECAR), "GET", "/v1/updates?since=0", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        api.store.update_reads.load(Ordering::SeqCst),
        1,
        "behind the feed"
    );
}

#[tokio::test]
async fn assignments_list_by_role_and_scope_and_decisions_come_in_batches() {
    let api = api().await;
    two_tenants(&api).await;
    for (id, who, role, scope) in [
        (
            "ann-s1",
            "ann",
            "member",
            json!({"entity": "Space::\"s1\""}),
        ),
        ("ann-all", "ann", "guest", json!("global")),
        ("bob-s1", "bob", "guest", json!({"entity": "Space::\"s1\""})),
    ] {
        let (status, body) = api
            .call(
                "POST",
                "/v1/assignments",
                Some(json!({"id": id, "principal": format!("User::\"{who}\""), "role": role, "scope": scope})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let ids = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, page) = api.call("GET", "/v1/assignments?role=member", None).await;
    assert_eq!(ids(&page), ["ann-s1", "bob-s2"]);
    let (_, page) = api
        .call(
            "GET",
            "/v1/assignments?scope=Space::%22s1%22&page_size=1",
            None,
        )
        .await;
    assert_eq!(ids(&page), ["ann-s1"]);
    let token = page["next_page_token"].as_str().unwrap().to_owned();
    let (_, page) = api
        .call(
            "GET",
            &format!("/v1/assignments?scope=Space::%22s1%22&page_size=1&page_token={token}"),
            None,
        )
        .await;
    assert_eq!(ids(&page), ["bob-s1"]);
    assert!(page.get("next_page_token").is_none(), "{page}");
    let (_, page) = api.call("GET", "/v1/assignments?scope=global", None).await;
    assert_eq!(ids(&page), ["ann-all"]);
    for bad in [
        "/v1/assignments",
        "/v1/assignments?role=member&scope=global",
        "/v1/assignments?scope=Space",
    ] {
        let (status, problem) = api.call("GET", bad, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {problem}");
    }

    let (status, entity) = api.call("GET", "/v1/entities/Space/s1", None).await;
    assert_eq!(
        (status, entity["attributes"]["tenant"].as_str()),
        (StatusCode::OK, Some("t1"))
    );
    let (status, _) = api.call("GET", "/v1/entities/Space/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A batch: answers in order, on one snapshot; bad facts named with their index.
    api.refresh().await;
    let ask = |who: &str, resource: &str| json!({"principal": format!("User::\"{who}\""), "action": "document.read", "resource": resource, "parents": ["Space::\"s1\""], "context": {"time": "2026-01-06T10:00:00Z"}});
    let (status, answers) = api
        .call(
            "POST",
            "/v1/authorize:batch",
            Some(json!({"requests": [ask("ann", "Document::\"x\""), ask("carl", "Document::\"x\"")]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answers}");
    let results = answers["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["decision"], "allow", "{answers}");
    assert_eq!(results[1]["decision"], "deny", "{answers}");
    assert_eq!(results[0]["revision"], results[1]["revision"]);
    let mut bad = ask("ann", "Document::\"x\"");
    bad["context"]["risk_score"] = json!(500);
    let (status, problem) = api
        .call(
            "POST",
            "/v1/authorize:batch",
            Some(json!({"requests": [ask("ann", "Document::\"x\""), bad]})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(fields(&problem), ["requests[1].context.risk_score"]);
    let (status, problem) = api
        .call("POST", "/v1/authorize:batch", Some(json!({"requests": []})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(fields(&problem), ["requests"]);
}

#[tokio::test]
async fn every_change_is_in_the_audit_ledger_with_its_actor_before_and_after() {
    let api = api().await;
    let ann = json!({"kind": "user", "id": "ann", "tenant": "t1"});
    let jane = [("x-actor-id", "jane")];
    for (method, body) in [
        ("PUT", Some(ann.clone())),
        (
            "PUT",
            Some(
                json!({"kind": "user", "id": "ann", "tenant": "t1", "attributes": {"clearance": 4}}),
            ),
        ),
        ("DELETE", None),
    ] {
        let (status, _, body) = api
            .call_with(Some(TOKEN), method, "/v1/principals/users/ann", body, &jane)
            .await;
        assert!(status.is_success(), "{status}: {body}");
    }
    let (status, page) = api
        .call_as(
            Some(AUDITOR),
            "GET",
            "/v1/audit?kind=admin_change&actor=jane%20(via%20ops)",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let items = page["items"].as_array().unwrap();
    let actions: Vec<&str> = items
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["principal.put", "principal.put", "principal.delete"]
    );
    assert!(items.iter().all(|r| r["resource"] == "User::\"ann\""));
    assert!(items[0].get("before").is_none(), "created: {}", items[0]);
    assert_eq!(items[0]["after"]["tenant"], "t1");
    assert_eq!(items[1]["before"], items[0]["after"]);
    assert_eq!(items[1]["after"]["attributes"]["clearance"], 4);
    assert_eq!(items[2]["before"], items[1]["after"]);
    assert!(items[2].get("after").is_none(), "deleted: {}", items[2]);
    let seqs: Vec<u64> = items.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "chain order: {seqs:?}"
    );
    assert!(
        items
            .iter()
            .all(|r| r["hash"].as_str().is_some_and(|h| h.len() == 64))
    );

    // A page at a time.
    let (_, first) = api
        .call_as(
            Some(AUDITOR),
            "GET",
            "/v1/audit?action=principal.put&page_size=1",
            None,
        )
        .await;
    assert_eq!(first["items"].as_array().unwrap().len(), 1);
    let token = first["next_page_token"].as_str().unwrap();
    let (_, second) = api
        .call_as(
            Some(AUDITOR),
            "GET",
            &format!("/v1/audit?action=principal.put&page_size=1&page_token={token}"),
            None,
        )
        .await;
    assert_eq!(second["items"][0]["seq"], items[1]["seq"], "{second}");

    // Every bad filter at once.
    let (status, problem) = api
        .call_as(
            Some(AUDITOR),
            "GET",
            "/v1/audit?kind=both&since=yesterday&page_size=0&page_token=zz",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let mut fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        ["kind", "page_size", "page_token", "since"],
        "{problem}"
    );

    // Who may read it: platform admins and auditors; not tenant admins; auditors change
    // nothing.
    let (status, _) = api.call("GET", "/v1/audit", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api.call_as(Some(T1_ADMIN), "GET", "/v1/audit", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api
        .call_as(Some(AUDITOR), "PUT", "/v1/principals/users/ann", Some(ann))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// `POST /v1/events`: a publisher sends events and does nothing else; each is applied once
/// or kept as a dead letter (422 with its id), a batch answers per event, a dead letter is
/// listed and replayed once its cause is fixed.
#[tokio::test]
async fn events_are_published_applied_once_and_dead_lettered_with_their_reason() {
    let api = api().await;
    let user_created = |id: &str, role: &str| {
        json!({"topic": "USER_CREATED@1.0", "id": id, "payload": {
            "user_id": "eve", "tenant_id": "t1", "initial_role": role,
            "created_ts": "2026-01-06T09:00:00Z"}})
    };
    let (status, body) = api
        .call_as(
            Some(PUBLISHER),
            "POST",
            "/v1/events",
            Some(user_created("e1", "member")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["outcome"], "applied");
    assert_eq!(body["event_type"], "USER_CREATED");
    assert!(body["revision"].as_i64().unwrap() > 0);
    let (status, body) = api
        .call_as(
            Some(PUBLISHER),
            "POST",
            "/v1/events",
            Some(user_created("e1", "member")),
        )
        .await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (StatusCode::OK, Some("duplicate"))
    );
    let (status, eve) = api.call("GET", "/v1/principals/users/eve", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(eve["tenant"], "t1");

    // A publisher may do nothing else; nobody else may publish.
    for (method, uri) in [
        ("GET", "/v1/principals/users/eve"),
        ("GET", "/v1/events/dead-letters"),
        ("GET", "/v1/audit"),
    ] {
        let (status, _) = api.call_as(Some(PUBLISHER), method, uri, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {uri}");
    }
    for token in [T1_ADMIN, SIDECAR, AUDITOR, NOBODY] {
        let (status, _) = api
            .call_as(
                Some(token),
                "POST",
                "/v1/events",
                Some(user_created("e9", "member")),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{token}");
    }

    // Poison: 422, named, kept.
    let (status, problem) = api
        .call_as(
            Some(PUBLISHER),
            "POST",
            "/v1/events",
            Some(user_created("e2", "operator")),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("role `operator` does not exist"),
        "{detail}"
    );

    // The dead letters, and a replay after the fix.
    let (status, letters) = api.call("GET", "/v1/events/dead-letters", None).await;
    assert_eq!(status, StatusCode::OK, "{letters}");
    let items = letters["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["event_id"], "e2");
    let id = items[0]["id"].as_str().unwrap().to_owned();
    let replay = format!("/v1/events/dead-letters/{id}/replay");
    let (status, _) = api.call("POST", &replay, None).await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "still no such role"
    );
    let (status, _) = api
        .call(
            "POST",
            "/v1/roles",
            Some(json!({"name": "operator", "actions": ["READ"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = api.call("POST", &replay, None).await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (StatusCode::OK, Some("applied")),
        "{body}"
    );
    // A batch answers per event.
    let (status, batch) = api
        .call_as(
            Some(PUBLISHER),
            "POST",
            "/v1/events",
            Some(json!([
                {"id": "b1", "type": "user.deactivated", "timestamp": "2026-01-06T10:00:00Z", "userId": "eve"},
                {"id": "b2", "type": "user.teleported", "timestamp": "2026-01-06T10:00:00Z"},
                {"id": "b3", "type": "invitation.created", "timestamp": "2026-01-06T10:00:00Z"}
            ])),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{batch}");
    let outcomes: Vec<&str> = batch["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["applied", "dead_lettered", "acknowledged"]);
    let (_, eve) = api.call("GET", "/v1/principals/users/eve", None).await;
    assert_eq!(eve["status"], "inactive");
    let (_, letters) = api.call("GET", "/v1/events/dead-letters", None).await;
    let letters = letters["items"].as_array().unwrap();
    assert_eq!(letters.len(), 2);
    assert!(letters[0]["replayed_at"].is_i64(), "{letters:?}");
    assert_eq!(letters[1]["event_id"], "b2");

    let (status, _) = api
        .call("POST", "/v1/events/dead-letters/nope/replay", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
