//! `portcullis-policy-store` owns the authorization model and everything that decides with
//! it, without knowing about HTTP or Pingora:
//!
//! - [`model`]: principals, roles, assignments, entities, policy-set versions, change entries;
//! - [`policy`]: compiling Cedar schema + policy files + roles into a validated, indexed set;
//! - [`store`]: the [`store::Store`] trait and its SQL implementation (SQLite file or
//!   PostgreSQL), where every mutation is one transaction that bumps the revision;
//! - [`snapshot`]: the immutable in-memory view the hot path reads, swapped atomically;
//! - [`decision`]: the decision core, [`decision::decide`];
//! - [`audit`]: the hash-chained decision ledger, its writer and its verifier;
//! - [`backoff`]: the jittered backoff of every reconnect loop.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use portcullis_policy_store::{snapshot::{Snapshot, SnapshotHandle}, store::{SqlStore, Store, StoreConfig}};
//! let store = SqlStore::connect(&StoreConfig::Sqlite { path: "portcullis.db".into() }).await?;
//! let snapshot = Snapshot::build(store.load_state().await?, 0)?;
//! let handle = SnapshotHandle::new(snapshot);
//! # Ok(()) }
//! ```

pub mod audit;
pub mod backoff;
pub mod decision;
pub mod error;
pub mod hex;
pub mod model;
pub mod policy;
pub mod private_file;
mod slice;
pub mod snapshot;
pub mod store;
