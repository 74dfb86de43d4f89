//! The one way the process notices that files changed (the config file and the policies
//! directory, the TLS certificates and keys, a JWKS file, the admin and control-plane
//! tokens): their modification time and length, compared with what was seen last; and
//! [`reload_on_change`], the loop that re-reads a file when it changes. Polling, not inotify: Kubernetes swaps mounted
//! ConfigMaps and Secrets through a symlink, which a poll of the path sees and an inotify
//! watch on the old target does not.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// How often watched files are looked at.
pub const POLL: Duration = Duration::from_secs(2);

/// Modification time and length of each path (`None` and 0 for a missing file).
type Stamps = Vec<(PathBuf, Option<SystemTime>, u64)>;

/// What a set of files looked like when last seen.
#[derive(Debug, Clone)]
pub struct FileWatch {
    seen: Stamps,
}

impl FileWatch {
    /// Remembers how `paths` look now.
    pub fn new(paths: Vec<PathBuf>) -> Self {
        Self {
            seen: stamps(paths),
        }
    }

    /// Whether `paths` (the same list, or one that gained or lost a file) look otherwise
    /// than when last seen; remembers how they look now.
    pub fn changed(&mut self, paths: Vec<PathBuf>) -> bool {
        let now = stamps(paths);
        if now == self.seen {
            return false;
        }
        self.seen = now;
        true
    }
}

/// Calls `reload` whenever `paths` change, until the process ends. `reload` reads and
/// applies the files, or leaves what is in force untouched and says why; each outcome is
/// counted in `reloads` (`applied` or `rejected`) and logged under `what`.
pub async fn reload_on_change(
    paths: Vec<PathBuf>,
    what: &'static str,
    reloads: prometheus::IntCounterVec,
    mut reload: impl FnMut() -> Result<(), String>,
) {
    let mut watch = FileWatch::new(paths.clone());
    loop {
        tokio::time::sleep(POLL).await;
        if !watch.changed(paths.clone()) {
            continue;
        }
        match reload() {
            Ok(()) => {
                reloads.with_label_values(&["applied"]).inc();
                let file = paths.first().map(|p| p.display().to_string());
                tracing::info!(file, "{what} reloaded");
            }
            Err(e) => {
                reloads.with_label_values(&["rejected"]).inc();
                tracing::error!(error = %e, "{what} not reloaded; keeping the one in force");
            }
        }
    }
}

fn stamps(paths: Vec<PathBuf>) -> Stamps {
    paths
        .into_iter()
        .map(|path| {
            let meta = std::fs::metadata(&path).ok();
            let modified = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.map_or(0, |m| m.len());
            (path, modified, len)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewrite_a_new_file_and_a_removed_one_are_each_a_change_once() {
        let dir = std::env::temp_dir().join(format!("portcullis-watch-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::write(&a, "1").unwrap();
        let mut watch = FileWatch::new(vec![a.clone()]);
        assert!(!watch.changed(vec![a.clone()]));
        // Same length, same second: the length catches nothing, the time must.
        std::fs::write(&a, "22").unwrap();
        assert!(watch.changed(vec![a.clone()]));
        assert!(!watch.changed(vec![a.clone()]), "seen once");
        std::fs::write(&b, "x").unwrap();
        assert!(watch.changed(vec![a.clone(), b.clone()]), "a file joined");
        std::fs::remove_file(&b).unwrap();
        assert!(watch.changed(vec![a.clone(), b.clone()]), "a file went");
        assert!(!watch.changed(vec![a, b]));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
