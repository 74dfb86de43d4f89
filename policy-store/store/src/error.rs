//! The store's error, in Cedar's message style: lowercase, no final period, user input in
//! backticks.

use portcullis_engine::error::CompileError;
use portcullis_model::ModelError;
use thiserror::Error;

/// Errors of the storage layer.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database failed or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema could not be brought up to date.
    #[error("store migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// The store holds a migration this binary does not have: a newer version made it.
    #[error(
        "the store has migration {0}, which this Portcullis does not know: it was made by a newer version"
    )]
    NewerStore(i64),
    /// A stored row could not be decoded (corrupt or written by a newer version).
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    /// The requested object does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The write conflicts with what is stored (a taken name or id, a role still in use).
    #[error("{0}")]
    Conflict(String),
    /// The write would break the model (unknown role, invalid reference, ...).
    #[error("{0}")]
    Invalid(#[from] ModelError),
    /// The policy set or roles would not compile.
    #[error(transparent)]
    Policy(#[from] CompileError),
    /// A conditional write (`If-Match`) named another version than the current one.
    #[error("the policy set is at version {}, not {expected}", current.map_or_else(|| String::from("none"), |v| v.to_string()))]
    VersionMismatch {
        /// The version the writer expected.
        expected: i64,
        /// The current version, if any.
        current: Option<i64>,
    },
}
