//! The errors of the ledger's files and keys — opening, reading, querying, key files — each
//! naming the file at fault (Cedar's message
//! style: lowercase, no final period, paths in backticks).

use std::path::{Path, PathBuf};

/// What went wrong opening, reading or querying the ledger, or with its key files.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
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
    /// A path named to read from does not exist.
    #[error("`{}`: no such file or directory", path.display())]
    Missing {
        /// The path.
        path: PathBuf,
    },
    /// A ledger file's last record cannot be read back: not written by this ledger, or
    /// damaged (`portcullis audit verify` says where).
    #[error("`{}`: {what}", path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// The keeper thread could not be started.
    #[error("cannot start the audit keeper thread: {0}")]
    Thread(#[source] std::io::Error),
    /// A key could not be encoded as PEM.
    #[error("cannot encode the {what}: {detail}")]
    Encode {
        /// Which key.
        what: &'static str,
        /// What the encoder said.
        detail: String,
    },
}

impl LedgerError {
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
