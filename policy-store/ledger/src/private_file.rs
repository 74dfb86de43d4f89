//! Files only their owner may read (mode 0600): signing keys and tokens. Created new, never
//! overwritten, written and synced before they are used; and the directories that hold them
//! (mode 0700).

use std::io::Write;
use std::path::Path;

use crate::LedgerError;

/// Creates `path` with `bytes`; fails if it exists. Errors name the file.
pub fn create(path: &Path, bytes: &[u8]) -> Result<(), LedgerError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .map_err(LedgerError::io(path, "create"))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(LedgerError::io(path, "write"))
}

/// Creates `dir` (and its parents) readable by its owner only, unless it exists. Errors name
/// the directory.
pub fn create_dir(dir: &Path) -> Result<(), LedgerError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(LedgerError::io(dir, "create the data directory"))
}
