//! Scratch PostgreSQL databases for tests and benchmarks (feature `test-support`): a fresh
//! database on the server `PORTCULLIS_TEST_POSTGRES_URL` names (default
//! `postgres://postgres@127.0.0.1:5432/test`), dropped when the guard is.

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection;

/// The server tests use unless `PORTCULLIS_TEST_POSTGRES_URL` says otherwise.
pub const DEFAULT_TEST_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A database created for one test; dropped (with its connections) when this is.
#[derive(Debug)]
pub struct ScratchPostgres {
    /// The URL of the new database.
    pub url: String,
    admin_url: String,
    name: String,
}

impl ScratchPostgres {
    /// Creates `portcullis_<tag>_<pid>_<n>`. Fails when the server cannot be reached: tests
    /// that need PostgreSQL are never skipped.
    pub async fn create(tag: &str) -> Result<Self, String> {
        let admin_url = std::env::var("PORTCULLIS_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| String::from(DEFAULT_TEST_POSTGRES_URL));
        let name = format!(
            "portcullis_{tag}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let Some((server, _)) = admin_url.rsplit_once('/') else {
            return Err(format!("{admin_url}: the URL names no database"));
        };
        let url = format!("{server}/{name}");
        let mut conn = sqlx::PgConnection::connect(&admin_url)
            .await
            .map_err(|e| format!("PostgreSQL at {admin_url} (see .ci/run): {e}"))?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .map_err(|e| format!("CREATE DATABASE {name}: {e}"))?;
        Ok(Self {
            url,
            admin_url,
            name,
        })
    }
}

impl ScratchPostgres {
    /// An outage of this database alone: refuses new connections and ends those open
    /// (`false`), or lets them in again (`true`). The server and other tests' databases
    /// stay up.
    pub async fn allow_connections(&self, allowed: bool) -> Result<(), String> {
        let mut conn = sqlx::PgConnection::connect(&self.admin_url)
            .await
            .map_err(|e| format!("PostgreSQL at {}: {e}", self.admin_url))?;
        let name = &self.name;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {name} WITH ALLOW_CONNECTIONS {allowed}"
        )))
        .execute(&mut conn)
        .await
        .map_err(|e| format!("ALTER DATABASE {name}: {e}"))?;
        if !allowed {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
            )))
            .execute(&mut conn)
            .await
            .map_err(|e| format!("ending the connections to {name}: {e}"))?;
        }
        Ok(())
    }
}

impl Drop for ScratchPostgres {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // On a runtime of its own: the caller's may be shutting down, or absent.
        let dropped = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                    let _dropped = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
        let _ = dropped;
    }
}
