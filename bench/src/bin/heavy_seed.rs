//! Adds the heavy scenario's population to an existing store: `USERS` users and
//! `ASSIGNMENTS` assignments (`member` or `guest` on one of 50,000 spaces), in one import.
//! `bench/run` runs it against the SQLite store of a `portcullis serve` it stopped, whose
//! policies directory carries the 10,000 extra policies.
//!
//! ```text
//! heavy-seed <store.db> [users] [assignments]     # default 100000 1000000
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use portcullis_model::{
    Assignment, AssignmentConditions, EntityRef, Principal, PrincipalAttributes, PrincipalKind,
    PrincipalStatus, Scope,
};
use portcullis_store::{Import, SqlStore, Store, StoreConfig};

fn entity(type_name: &str, id: &str) -> Result<EntityRef, String> {
    EntityRef::new(type_name, id).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next().map(PathBuf::from) else {
        eprintln!("usage: heavy-seed <store.db> [users] [assignments]");
        return ExitCode::from(2);
    };
    let users: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let assignments: usize = args
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let per_user = (assignments / users.max(1)).max(1);
    let import = Import {
        principals: (0..users)
            .map(|i| Principal {
                kind: PrincipalKind::User,
                id: format!("u{i}"),
                status: PrincipalStatus::default(),
                tenant: Some(String::from("household")),
                groups: Vec::new(),
                attributes: PrincipalAttributes::default(),
                trusted_devices: Vec::new(),
            })
            .collect(),
        assignments: match (0..assignments)
            .map(|i| {
                Ok(Assignment {
                    id: format!("heavy-{i}"),
                    principal: entity("User", &format!("u{}", (i / per_user) % users.max(1)))?,
                    role: String::from(if i % 3 == 0 { "guest" } else { "member" }),
                    scope: Scope::Entity(entity("Space", &format!("s{}", i % 50_000))?),
                    conditions: AssignmentConditions::default(),
                    assigned_by: Some(String::from("heavy-seed")),
                    reason: None,
                })
            })
            .collect::<Result<Vec<_>, String>>()
        {
            Ok(all) => all,
            Err(e) => {
                eprintln!("heavy-seed: {e}");
                return ExitCode::FAILURE;
            }
        },
        author: Some(String::from("heavy-seed")),
        ..Import::default()
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("heavy-seed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = std::time::Instant::now();
    let result = runtime.block_on(async {
        let store = SqlStore::connect(&StoreConfig::Sqlite { path: path.clone() }).await?;
        store.import(&import).await
    });
    match result {
        Ok(revision) => {
            eprintln!(
                "heavy-seed: {users} users and {assignments} assignments into `{}` at revision {revision} in {:.1} s",
                path.display(),
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("heavy-seed: `{}`: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}
