//! Files only their owner may read (mode 0600): signing keys and tokens. Created new, never
//! overwritten, written and synced before they are used.

use std::io::Write;
use std::path::Path;

/// Creates `path` with `bytes`; fails if it exists. Errors name the file.
pub fn create(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .map_err(|e| format!("`{}`: cannot create: {e}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("`{}`: cannot write: {e}", path.display()))
}
