//! The errors of the ledger's files and keys, each naming the file at fault (Cedar's message
//! style: lowercase, no final period, paths in backticks).

use std::path::{Path, PathBuf};

/// A file or key of the ledger could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Reading, creating or writing failed.
    #[error("`{}`: cannot {doing}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done (`read`, `create`, `write`, `create the data directory`).
        doing: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no key of the kind expected.
    #[error("`{}`: not {expected}: {detail}", path.display())]
    NotAKey {
        /// The file.
        path: PathBuf,
        /// The kind of key expected.
        expected: &'static str,
        /// What the parser said.
        detail: String,
    },
    /// A key could not be encoded as PEM.
    #[error("cannot encode the {what}: {detail}")]
    Encode {
        /// Which key.
        what: &'static str,
        /// What the encoder said.
        detail: String,
    },
}

impl FileError {
    /// An I/O failure on `path` while doing `doing`.
    pub fn io(path: &Path, doing: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| Self::Io {
            path,
            doing,
            source,
        }
    }
}
