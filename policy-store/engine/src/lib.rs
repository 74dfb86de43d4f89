//! `portcullis-engine` owns deciding: it turns the model into something the hot path can
//! read and answers one request, without knowing about HTTP, SQL or Pingora.
//!
//! - [`policy`]: compiling Cedar schema + policy files + roles into a validated, indexed set;
//! - [`snapshot`]: the immutable in-memory view the hot path reads, swapped atomically;
//! - [`decision`]: the decision core, [`decision::decide`], and its cache.
//!
//! It is the only user of `cedar-policy-core` (Cedar's AST, for the prepared conditions and
//! the per-action reads), kept behind `policy` and the private slice builder.
//!
//! ```no_run
//! # fn run(state: portcullis_engine::snapshot::StoreState) -> Result<(), Box<dyn std::error::Error>> {
//! use portcullis_engine::snapshot::{Snapshot, SnapshotHandle};
//! let snapshot = Snapshot::build(state, 0)?;
//! let handle = SnapshotHandle::new(snapshot);
//! # Ok(()) }
//! ```

pub mod decision;
pub mod error;
pub mod policy;
mod slice;
pub mod snapshot;
