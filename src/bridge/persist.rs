//! Which upstream sessions labgate owns, kept on disk beside the durable queue so that a
//! restarted labgate re-establishes the restored holder's upstream session or deletes one
//! whose turn is over, instead of leaking it until the upstream reaps it; and the turn
//! whose reset (handoff barrier) was under way, so a restart resumes the reset instead of
//! handing a dirty lab to the next holder.
//!
//! A small JSON file (`<state_path>.upstreams`), replaced atomically (write, fsync,
//! rename, fsync the directory) with mode 0600: it holds upstream credentials. Owns the
//! file and nothing else. Must never be read or written on the request path (only by the
//! bridge's lane tasks, a few times per turn).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::machine::UpstreamId;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
struct Entry {
    turn: u64,
    id: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
struct File {
    /// The owned upstream sessions, by upstream name.
    #[serde(default)]
    sessions: BTreeMap<String, Entry>,
    /// The ended turn whose reset holds the queue.
    #[serde(default)]
    handoff: Option<u64>,
}

/// The owned upstream sessions and the pending handoff.
pub struct Owned {
    path: Option<PathBuf>,
    file: Mutex<File>,
}

/// The file that goes with a queue store at `state_path`.
pub fn path_for(state_path: &Path) -> PathBuf {
    let mut name = state_path.as_os_str().to_owned();
    name.push(".upstreams");
    PathBuf::from(name)
}

impl Owned {
    /// Nothing on disk: the queue is memory-only, so is this.
    pub fn memory() -> Owned {
        Owned {
            path: None,
            file: Mutex::default(),
        }
    }

    /// Loads `path` (missing: empty). A file that cannot be parsed is an error: it may
    /// name sessions that must be cleaned up.
    pub fn open(path: PathBuf) -> anyhow::Result<Owned> {
        let file = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{}: not a labgate upstream session file ({e})",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => File::default(),
            Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        };
        Ok(Owned {
            path: Some(path),
            file: Mutex::new(file),
        })
    }

    /// Whether what it records survives a restart (the queue is durable).
    pub fn is_durable(&self) -> bool {
        self.path.is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, File> {
        self.file.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session `upstream` owned when labgate stopped.
    pub fn get(&self, upstream: &str) -> Option<(u64, UpstreamId)> {
        let e = self.lock().sessions.get(upstream).cloned()?;
        Some((e.turn, UpstreamId::new(&e.id)?))
    }

    /// The turn whose reset was under way when labgate stopped.
    pub fn handoff(&self) -> Option<u64> {
        self.lock().handoff
    }

    /// Records the turn whose reset holds the queue (`None`: over), written before the
    /// caller acts on it.
    pub fn set_handoff(&self, turn: Option<u64>) -> std::io::Result<()> {
        let mut file = self.lock();
        if file.handoff == turn {
            return Ok(());
        }
        file.handoff = turn;
        self.save(&file)
    }

    fn save(&self, file: &File) -> std::io::Result<()> {
        match &self.path {
            Some(path) => write_atomically(path, &serde_json::to_vec(file).unwrap_or_default()),
            None => Ok(()),
        }
    }

    /// Records what `upstream` owns now (`None`: nothing) and writes the file if it
    /// changed.
    pub fn set(&self, upstream: &str, owned: Option<(u64, &UpstreamId)>) -> std::io::Result<()> {
        let mut file = self.lock();
        let new = owned.map(|(turn, id)| Entry {
            turn,
            id: id.as_str().to_string(),
        });
        if file.sessions.get(upstream) == new.as_ref() {
            return Ok(());
        }
        match new {
            Some(e) => file.sessions.insert(upstream.to_string(), e),
            None => file.sessions.remove(upstream),
        };
        self.save(&file)
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("upstreams.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn owned_sessions_survive_a_reopen_in_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("queue.redb"));
        let owned = Owned::open(path.clone()).unwrap();
        assert_eq!(owned.get("lab"), None);
        let id = UpstreamId::new("abc-123").unwrap();
        owned.set("lab", Some((7, &id))).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Owned::open(path.clone()).unwrap();
        assert_eq!(again.get("lab"), Some((7, id)));
        again.set("lab", None).unwrap();
        again.set_handoff(Some(9)).unwrap();
        let third = Owned::open(path.clone()).unwrap();
        assert_eq!(third.get("lab"), None);
        assert_eq!(third.handoff(), Some(9));
        std::fs::write(&path, b"garbage").unwrap();
        assert!(Owned::open(path).is_err());
    }
}
