//! The durable queue: every session (id, seq, creation time, and in identity mode its
//! owner) and the seq counter, kept in an embedded `redb` database so the queue survives a restart or a crash (§7).
//!
//! Why redb: it is a pure-Rust, copy-on-write B-tree with checksummed commits; a commit
//! with `Durability::Immediate` is on disk when it returns, and a crash at any moment
//! leaves the last committed state, never a file that cannot be opened. A hand-written
//! fsync'd journal would need its own framing, torn-write detection and compaction.
//!
//! Owns the file format, the file's privacy (mode 0600, in a directory only labgate's uid
//! may use: the file holds every session id, and a session id is the gate credential),
//! and the start-up floor of the seq counter. It stores what it is told, in the order it
//! is told; the queue's rules live in `queue`. States and positions are not stored: order
//! is seq order, and the head is ACTIVE. Must never be written from two processes: redb
//! locks the file, and a second labgate on the same path fails at start-up. Must never
//! let a damaged file take the process down: every failure to open is a [`StoreError`].

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::backends::FileBackend;
use redb::{Builder, Database, ReadableDatabase, ReadableTable, TableDefinition};
use uuid::Uuid;

use crate::queue::SessionId;

/// seq -> 16 bytes of uuid + 8 bytes of creation time (Unix ms, big-endian).
const SESSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("sessions");
/// seq -> the identity that owns the session (identity mode only). A table of its own,
/// so files written before identities existed read back unchanged.
const OWNERS: TableDefinition<u64, &str> = TableDefinition::new("owners");
/// "next_seq" -> the seq counter.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_SEQ: &str = "next_seq";
/// "probe" -> any value: written by [`Op::Touch`], never read.
const PROBE: &str = "probe";

/// The permission bits a store file or its directory may not have: any access at all for
/// group or others.
const NOT_PRIVATE: u32 = 0o077;

/// Why the store cannot be used. Start-up errors ([`StoreError::Unsafe`],
/// [`StoreError::Open`], [`StoreError::Panicked`]) name the file and say what to do; the
/// others are redb's own errors, kept whole (with their source chain) for the log line.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file or its directory could be read or changed by another user.
    #[error(
        "queue store {}: {why}; labgate refuses a store other users can read or write \
         (see docs/operations.md, \"The queue store\")",
        path.display()
    )]
    Unsafe { path: PathBuf, why: String },
    /// The file exists but cannot be opened as a store.
    #[error("cannot open the queue store {}{hint}", path.display())]
    Open {
        path: PathBuf,
        hint: &'static str,
        #[source]
        source: Box<StoreError>,
    },
    /// redb panicked while opening the file (debug builds check some invariants by panic).
    #[error(
        "cannot open the queue store {}: the store library failed on it ({message}); \
         if it is damaged, move it aside and restart (see docs/operations.md)",
        path.display()
    )]
    Panicked { path: PathBuf, message: String },
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Database(#[from] redb::DatabaseError),
    #[error(transparent)]
    Transaction(#[from] redb::TransactionError),
    #[error(transparent)]
    Table(#[from] redb::TableError),
    #[error(transparent)]
    Storage(#[from] redb::StorageError),
    #[error(transparent)]
    Commit(#[from] redb::CommitError),
    /// A record that redb read back intact but that labgate did not write.
    #[error("session {seq}: record of {len} bytes, want 24")]
    BadRecord { seq: u64, len: usize },
}

/// One persisted session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredSession {
    pub id: SessionId,
    pub seq: u64,
    /// Creation time, Unix milliseconds.
    pub created_ms: u64,
}

impl StoredSession {
    fn encode(&self) -> [u8; 24] {
        let mut v = [0u8; 24];
        v[..16].copy_from_slice(self.id.as_uuid().as_bytes());
        v[16..].copy_from_slice(&self.created_ms.to_be_bytes());
        v
    }

    fn decode(seq: u64, v: &[u8]) -> Result<StoredSession, StoreError> {
        let bad = || StoreError::BadRecord { seq, len: v.len() };
        let (id, created) = v.split_first_chunk::<16>().ok_or_else(bad)?;
        let created: [u8; 8] = created.try_into().map_err(|_| bad())?;
        Ok(StoredSession {
            id: SessionId::from_uuid(Uuid::from_bytes(*id)),
            seq,
            created_ms: u64::from_be_bytes(created),
        })
    }
}

/// One change to the store, as [`Store::apply`] takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Add a session with its owner (identity mode); the counter becomes `next_seq` if
    /// that is higher than it is.
    Insert(StoredSession, Option<String>, u64),
    /// Remove a session (and its owner) by seq; unknown seqs are ignored.
    Remove(u64),
    /// Change nothing that is read back, but write (a probe of a store that failed).
    Touch(u64),
}

/// What was in the store at start-up, in seq order.
#[derive(Debug, Default)]
pub struct Restored {
    pub next_seq: u64,
    pub sessions: Vec<StoredSession>,
    /// seq -> owner, for the sessions that have one.
    pub owners: std::collections::HashMap<u64, String>,
}

/// The lowest seq labgate may issue after starting at wall-clock time `now`: Unix time in
/// milliseconds. A device that fences on `X-Lab-Session-Seq` refuses any holder older than
/// the newest it has seen, so the counter must grow even when the store is lost (or was
/// never configured): a restart later in time starts above every seq an earlier run
/// issued, as long as that run issued fewer than one seq per millisecond of its uptime
/// and the clock was not set back. `stored` (the persisted counter) still wins when it
/// is higher, which covers a clock that went back while the store survived.
pub fn seq_floor(stored: Option<u64>, now: SystemTime) -> u64 {
    let wall_ms = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    // Stay clear of u64::MAX, the queue's "exhausted" marker, whatever the clock says.
    wall_ms.min(u64::MAX / 2).max(stored.unwrap_or(1)).max(1)
}

pub struct Store {
    db: Database,
}

/// The tables of one write transaction.
struct Tables<'txn> {
    sessions: redb::Table<'txn, u64, &'static [u8]>,
    meta: redb::Table<'txn, &'static str, u64>,
    owners: redb::Table<'txn, u64, &'static str>,
}

impl Store {
    /// Opens (or creates) the store at `path` and reads it back. Creates a missing
    /// directory (0700) and file (0600); refuses a file or directory that another user
    /// can read or write, and turns any failure, even a panic inside redb on a damaged
    /// file, into an error that names the file.
    pub fn open(path: &Path) -> Result<(Store, Restored), StoreError> {
        let file = open_private(path)?;
        let opened = catch_quietly(|| Store::open_file(file));
        match opened {
            Ok(Ok(opened)) => Ok(opened),
            Ok(Err(e)) => {
                let hint = match &e {
                    StoreError::Database(redb::DatabaseError::DatabaseAlreadyOpen) => {
                        " (another process holds it: is another labgate running on this state_path?)"
                    }
                    _ => " (if it is damaged, move it aside and restart; see docs/operations.md)",
                };
                Err(StoreError::Open {
                    path: path.to_path_buf(),
                    hint,
                    source: Box::new(e),
                })
            }
            Err(payload) => Err(StoreError::Panicked {
                path: path.to_path_buf(),
                message: panic_message(payload.as_ref()),
            }),
        }
    }

    fn open_file(file: File) -> Result<(Store, Restored), StoreError> {
        // The store is small (one row per live session), so verifying every page's checksum
        // at start-up is cheap, and redb then reports a file altered outside it as
        // `Corrupted` where a plain open trusts it (and may panic on it).
        let db = Builder::new()
            .set_check_integrity_on_open(true)
            .create_with_backend(FileBackend::new(file)?)?;
        let store = Store { db };
        // Create the tables on a fresh file so that reads find them.
        store.write(|_| Ok(()))?;
        let restored = store.read_all()?;
        Ok((store, restored))
    }

    fn read_all(&self) -> Result<Restored, StoreError> {
        let txn = self.db.begin_read()?;
        let sessions_table = txn.open_table(SESSIONS)?;
        let meta = txn.open_table(META)?;
        let owners_table = txn.open_table(OWNERS)?;
        let mut sessions = Vec::new();
        for row in sessions_table.iter()? {
            let (seq, value) = row?;
            sessions.push(StoredSession::decode(seq.value(), value.value())?);
        }
        let mut owners = std::collections::HashMap::new();
        for row in owners_table.iter()? {
            let (seq, owner) = row?;
            owners.insert(seq.value(), owner.value().to_string());
        }
        let next_seq = meta.get(NEXT_SEQ)?.map_or(1, |v| v.value());
        Ok(Restored {
            next_seq,
            sessions,
            owners,
        })
    }

    /// One durable transaction; returns how long the commit took.
    fn write(
        &self,
        f: impl FnOnce(&mut Tables<'_>) -> Result<(), StoreError>,
    ) -> Result<Duration, StoreError> {
        let started = std::time::Instant::now();
        let txn = self.db.begin_write()?;
        {
            let mut tables = Tables {
                sessions: txn.open_table(SESSIONS)?,
                meta: txn.open_table(META)?,
                owners: txn.open_table(OWNERS)?,
            };
            f(&mut tables)?;
        }
        txn.commit()?;
        Ok(started.elapsed())
    }

    /// Adds a session and advances the counter, durably.
    pub fn insert(&self, s: &StoredSession, next_seq: u64) -> Result<Duration, StoreError> {
        self.insert_owned(s, None, next_seq)
    }

    /// Adds a session with its owner (identity mode) and advances the counter, in one
    /// durable transaction: a session is never on disk without its owner.
    pub fn insert_owned(
        &self,
        s: &StoredSession,
        owner: Option<&str>,
        next_seq: u64,
    ) -> Result<Duration, StoreError> {
        self.write(|t| {
            t.sessions.insert(s.seq, s.encode().as_slice())?;
            if let Some(owner) = owner {
                t.owners.insert(s.seq, owner)?;
            }
            t.meta.insert(NEXT_SEQ, next_seq)?;
            Ok(())
        })
    }

    /// Applies `ops` in order in one durable transaction (one fsync for all of them).
    pub fn apply(&self, ops: &[Op]) -> Result<Duration, StoreError> {
        self.write(|t| {
            let mut next_seq = None;
            for op in ops {
                match op {
                    Op::Insert(s, owner, next) => {
                        t.sessions.insert(s.seq, s.encode().as_slice())?;
                        if let Some(owner) = owner {
                            t.owners.insert(s.seq, owner.as_str())?;
                        }
                        next_seq = next_seq.max(Some(*next));
                    }
                    Op::Remove(seq) => {
                        t.sessions.remove(*seq)?;
                        t.owners.remove(*seq)?;
                    }
                    Op::Touch(value) => {
                        t.meta.insert(PROBE, *value)?;
                    }
                }
            }
            if let Some(next) = next_seq {
                let stored = t.meta.get(NEXT_SEQ)?.map(|v| v.value());
                if stored.is_none_or(|s| s < next) {
                    t.meta.insert(NEXT_SEQ, next)?;
                }
            }
            Ok(())
        })
    }

    /// Removes sessions (and their owners) by seq, durably; unknown seqs are ignored.
    pub fn remove(&self, seqs: &[u64]) -> Result<Duration, StoreError> {
        self.write(|t| {
            for seq in seqs {
                t.sessions.remove(*seq)?;
                t.owners.remove(*seq)?;
            }
            Ok(())
        })
    }
}

/// Opens (creating if missing) the store file for redb, after checking that only this
/// uid can reach it.
///
/// Why the mode matters twice: the file holds every session id (the gate credential),
/// and redb takes advisory locks on it (byte-range locks and, for older redb versions, a
/// `flock`), which anyone who can open the file can take too. A shared lock held by
/// another user would block every restart; a file only labgate's uid can open leaves no
/// one else a descriptor to lock with.
fn open_private(path: &Path) -> Result<File, StoreError> {
    let unsafe_because = |why: String| StoreError::Unsafe {
        path: path.to_path_buf(),
        why,
    };
    let io_failure = |what: &str, at: &Path, e: io::Error| StoreError::Open {
        path: path.to_path_buf(),
        hint: "",
        source: Box::new(StoreError::Io(io::Error::new(
            e.kind(),
            format!("{what} {}: {e}", at.display()),
        ))),
    };
    let me = nix::unistd::geteuid().as_raw();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // A missing directory is refused, never created (issue 15 #10: `mkdir -p` as root
    // made directories nobody chose); an existing one is checked, not changed.
    let meta = std::fs::metadata(dir).map_err(|e| io_failure("cannot inspect", dir, e))?;
    check_private(&meta, me, "directory", dir).map_err(unsafe_because)?;
    // 0600 at creation (not whatever the umask leaves), no symlink followed (a link
    // planted by whoever could once write here would point the store anywhere).
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| io_failure("cannot open", path, e))?;
    let meta = file
        .metadata()
        .map_err(|e| io_failure("cannot inspect", path, e))?;
    if !meta.is_file() {
        return Err(unsafe_because("not a regular file".to_string()));
    }
    check_private(&meta, me, "file", path).map_err(unsafe_because)?;
    Ok(file)
}

/// `Err(why)` unless `meta` is owned by `uid` (or root, who can reach it anyway) and
/// grants nothing to group or others.
fn check_private(meta: &std::fs::Metadata, uid: u32, what: &str, at: &Path) -> Result<(), String> {
    let mode = meta.permissions().mode() & 0o7777;
    if meta.uid() != uid && meta.uid() != 0 {
        return Err(format!(
            "the {what} {} belongs to uid {}, not to labgate's uid {uid}",
            at.display(),
            meta.uid()
        ));
    }
    if mode & NOT_PRIVATE != 0 {
        let fix = if what == "directory" { "700" } else { "600" };
        return Err(format!(
            "the {what} {} has mode {mode:04o}, open to group or others (chmod {fix} it)",
            at.display()
        ));
    }
    Ok(())
}

thread_local! {
    /// Set while this thread runs [`catch_quietly`]: its panics are caught and reported
    /// as errors, so the default hook's multi-line message would only be noise.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, turning a panic into `Err(payload)` without the panic hook printing it.
///
/// redb documents that opening a file altered outside redb "may panic" (debug builds
/// check some invariants by panicking); the integrity check above closes most of those
/// cases, and this closes the rest, so a damaged store is one clear start-up error and
/// never an exit with status 101. Needs `panic = "unwind"` (the default; Cargo.toml sets
/// no other).
fn catch_quietly<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    result
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message");
    // One line, bounded: this goes into the start-up error.
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    line.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary directory only this uid may use (tempfile creates them 0777 & umask).
    fn private_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        chmod(dir.path(), 0o700);
        dir
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn session(seq: u64) -> StoredSession {
        StoredSession {
            id: SessionId::random(),
            seq,
            created_ms: 1_700_000_000_000 + seq,
        }
    }

    #[test]
    fn a_fresh_store_is_empty_and_starts_at_seq_1() {
        let dir = private_dir();
        let (_, restored) = Store::open(&dir.path().join("q.redb")).unwrap();
        assert_eq!(restored.next_seq, 1);
        assert!(restored.sessions.is_empty());
    }

    #[test]
    fn sessions_and_counter_survive_reopening() {
        let dir = private_dir();
        let path = dir.path().join("q.redb");
        let (a, b, c) = (session(3), session(4), session(7));
        {
            let (store, _) = Store::open(&path).unwrap();
            store.insert(&a, 4).unwrap();
            store.insert(&b, 5).unwrap();
            store.insert(&c, 8).unwrap();
            store.remove(&[4, 99]).unwrap();
        }
        let (_, restored) = Store::open(&path).unwrap();
        assert_eq!(restored.next_seq, 8);
        assert_eq!(restored.sessions, vec![a, c]);
    }

    #[test]
    fn a_batch_applies_in_order_and_never_lowers_the_counter() {
        let dir = private_dir();
        let path = dir.path().join("q.redb");
        let (a, b) = (session(5), session(6));
        {
            let (store, _) = Store::open(&path).unwrap();
            store.insert(&session(1), 10).unwrap();
            store
                .apply(&[
                    Op::Insert(a, Some("alice".to_string()), 6),
                    Op::Insert(b, Some("bob".to_string()), 7),
                    Op::Remove(1),
                    Op::Remove(5),
                    Op::Touch(1),
                ])
                .unwrap();
        }
        let (_, restored) = Store::open(&path).unwrap();
        assert_eq!(restored.sessions, vec![b]);
        assert_eq!(restored.next_seq, 10);
        assert_eq!(restored.owners.get(&6).map(String::as_str), Some("bob"));
        assert_eq!(restored.owners.len(), 1);
    }

    #[test]
    fn owners_are_kept_with_their_sessions_and_removed_with_them() {
        let dir = private_dir();
        let path = dir.path().join("q.redb");
        let (a, b) = (session(1), session(2));
        {
            let (store, _) = Store::open(&path).unwrap();
            store.insert_owned(&a, Some("alice"), 2).unwrap();
            store.insert_owned(&b, Some("bob"), 3).unwrap();
            store.remove(&[2]).unwrap();
        }
        let (_, restored) = Store::open(&path).unwrap();
        assert_eq!(restored.sessions, vec![a]);
        assert_eq!(restored.owners.len(), 1);
        assert_eq!(restored.owners.get(&1).map(String::as_str), Some("alice"));
    }

    #[test]
    fn a_second_opener_is_refused_while_the_first_holds_it() {
        let dir = private_dir();
        let path = dir.path().join("q.redb");
        let _first = Store::open(&path).unwrap();
        assert!(Store::open(&path).is_err());
    }

    #[test]
    fn garbage_file_is_an_error_not_a_panic() {
        let dir = private_dir();
        let path = dir.path().join("q.redb");
        std::fs::write(&path, b"this is not a redb file at all, sorry").unwrap();
        chmod(&path, 0o600);
        let e = Store::open(&path).err().expect("garbage must be refused");
        assert!(e.to_string().contains("cannot open"), "{e}");
        assert!(e.to_string().contains("move it aside"), "{e}");
        // The cause is kept as the error's source, not flattened into a string.
        let cause = std::error::Error::source(&e).expect("the cause is kept");
        assert!(cause.to_string().contains("Not a redb database"), "{cause}");
    }

    /// Issue 10 #7: the file holds every session id, so it is created 0600 whatever the
    /// umask (the test process runs with 022, which used to give 0644); a missing
    /// directory is refused, not created (issue 15 #10).
    #[test]
    fn the_store_is_created_private() {
        let dir = private_dir();
        let path = dir.path().join("q.redb");
        let (store, _) = Store::open(&path).unwrap();
        store.insert(&session(1), 2).unwrap();
        assert_eq!(mode(&path), 0o600);
        let missing = dir.path().join("state/sub/q.redb");
        assert!(Store::open(&missing).is_err());
        assert!(!dir.path().join("state").exists());
    }

    /// Issue 10 #7: a file or directory that group or others can read or write stops
    /// start-up with one line naming it and the fix; nothing is changed or created.
    #[test]
    fn a_store_others_can_reach_is_refused_with_one_clear_line() {
        let dir = private_dir();
        let path = dir.path().join("q.redb");
        drop(Store::open(&path).unwrap());
        for (file_mode, dir_mode, names) in [
            (0o644, 0o700, "file"),
            (0o640, 0o700, "file"),
            (0o606, 0o700, "file"),
            (0o600, 0o755, "directory"),
            (0o600, 0o750, "directory"),
            (0o600, 0o1777, "directory"),
            (0o600, 0o733, "directory"),
        ] {
            chmod(&path, file_mode);
            chmod(dir.path(), dir_mode);
            let e = Store::open(&path).err().expect("must be refused");
            let line = e.to_string();
            assert!(matches!(e, StoreError::Unsafe { .. }), "{line}");
            assert!(!line.contains('\n'), "{line}");
            assert!(line.contains(&format!("the {names} ")), "{line}");
            assert!(
                line.contains(&format!(
                    "{:04o}",
                    if names == "file" { file_mode } else { dir_mode }
                )),
                "{line}"
            );
            assert!(line.contains("chmod"), "{line}");
            assert_eq!(mode(&path), file_mode, "the check must not change modes");
        }
        chmod(dir.path(), 0o700);
        chmod(&path, 0o600);
        assert!(Store::open(&path).is_ok());
        // A shared directory is refused, and a missing one is never created.
        chmod(dir.path(), 0o777);
        assert!(Store::open(&dir.path().join("new/q.redb")).is_err());
        assert!(!dir.path().join("new").exists());
        assert!(matches!(
            Store::open(&dir.path().join("q2.redb")),
            Err(StoreError::Unsafe { .. })
        ));
        chmod(dir.path(), 0o700);
    }

    /// Issue 10 #7: a symlink planted at the store path is not followed.
    #[test]
    fn a_symlink_at_the_store_path_is_refused() {
        let dir = private_dir();
        let target = dir.path().join("elsewhere.redb");
        let path = dir.path().join("q.redb");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(Store::open(&path).is_err());
        assert!(!target.exists(), "the link was followed");
    }

    /// Issue 10 #7: another user could `flock` a world-readable store (redb locks the file
    /// it opens), and every restart then failed. With the file 0600 in a 0700 directory,
    /// no other uid can open it, so no other uid can lock it. Run as root (as CI does),
    /// this shows it with uid `nobody` holding `flock -s` (util-linux); as another user
    /// it checks the modes that make it so.
    #[test]
    fn another_user_cannot_lock_the_store_and_block_a_restart() {
        use std::os::unix::process::CommandExt;
        use std::process::{Command, Stdio};
        let dir = private_dir();
        let path = dir.path().join("q.redb");
        let (store, _) = Store::open(&path).unwrap();
        store.insert(&session(1), 2).unwrap();
        drop(store);
        assert_eq!((mode(dir.path()), mode(&path)), (0o700, 0o600));
        if !nix::unistd::geteuid().is_root() {
            println!("not root: cannot act as another uid; the modes above are the guarantee");
            return;
        }
        // What the attacker ran: hold a shared lock for a long time. It must fail at
        // once (cannot open), so the restart below is never blocked.
        let mut child = Command::new("flock")
            .args(["--shared", "--nonblock"])
            .arg(&path)
            .args(["sleep", "30"])
            .uid(65534)
            .gid(65534)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("flock from util-linux");
        let mut status = None;
        for _ in 0..500 {
            status = child.try_wait().unwrap();
            if status.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("uid nobody holds a lock on the store");
        };
        assert!(!status.success(), "uid nobody could lock the store");
        let (_, restored) = Store::open(&path).expect("restart");
        assert_eq!(restored.sessions.len(), 1);
    }

    /// The last line of defence behind the integrity check: a panic in the closure is an
    /// `Err` with its message, and the thread goes on.
    #[test]
    fn a_panic_while_opening_is_caught() {
        let caught = catch_quietly(|| -> u32 { panic!("boom\nsecond line") });
        let payload = caught.expect_err("the panic must be caught");
        assert_eq!(panic_message(payload.as_ref()), "boom second line");
        assert_eq!(catch_quietly(|| 7).ok(), Some(7));
        assert!(!QUIET.with(Cell::get), "quiet mode must end with the call");
    }

    /// Issue 10 #12: a lost store (or none) must not restart the fencing counter at 1.
    #[test]
    fn the_seq_floor_is_wall_clock_milliseconds_and_never_below_the_stored_counter() {
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        let now = at(1_764_700_000_000);
        // No store, or a fresh one: start at the clock, far above 1.
        assert_eq!(seq_floor(None, now), 1_764_700_000_000);
        assert_eq!(seq_floor(Some(1), now), 1_764_700_000_000);
        // A counter that ran ahead of the clock (or a clock set back) wins.
        assert_eq!(seq_floor(Some(1_764_700_000_500), now), 1_764_700_000_500);
        assert_eq!(seq_floor(Some(7), at(5)), 7);
        // Later starts never go lower.
        assert!(seq_floor(None, at(1_764_700_000_001)) > seq_floor(None, now));
        // Absurd clocks stay usable: before the epoch, and far in the future.
        assert_eq!(seq_floor(None, UNIX_EPOCH - Duration::from_secs(10)), 1);
        assert!(seq_floor(None, UNIX_EPOCH + Duration::from_secs(u64::MAX / 2)) < u64::MAX / 2 + 1);
        // The real clock is past 2025-01-01.
        assert!(seq_floor(None, SystemTime::now()) > 1_735_689_600_000);
    }

    /// A real store file with a few sessions in it, as a run would leave it.
    fn populated_store(path: &Path) -> Vec<StoredSession> {
        let (store, _) = Store::open(path).unwrap();
        let mut live = Vec::new();
        for seq in 1..=40 {
            let s = session(seq);
            store.insert(&s, seq + 1).unwrap();
            live.push(s);
        }
        let gone: Vec<u64> = (1..=40).filter(|s| s % 3 == 0).collect();
        store.remove(&gone).unwrap();
        live.retain(|s| !gone.contains(&s.seq));
        live
    }

    /// Issue 10 #11: single-byte corruptions of a real store must never panic the
    /// open (redb's debug checks panic on some). Every outcome is an error that names
    /// the file, or a store that reads back consistently and keeps working.
    #[test]
    fn a_corrupted_store_is_an_error_or_a_consistent_store_never_a_panic() {
        const CASES: usize = 200;
        let dir = private_dir();
        let pristine_path = dir.path().join("pristine.redb");
        let live = populated_store(&pristine_path);
        let pristine = std::fs::read(&pristine_path).unwrap();
        let path = dir.path().join("q.redb");
        let mut seed: u64 = 0x5eed_0fc0_de00;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut refused, mut opened) = (0, 0);
        for case in 0..CASES {
            let mut bytes = pristine.clone();
            let at = (next() % bytes.len() as u64) as usize;
            // Never a no-op: xor with a non-zero byte.
            bytes[at] ^= (next() % 255 + 1) as u8;
            std::fs::write(&path, &bytes).unwrap();
            chmod(&path, 0o600);
            let outcome = std::panic::catch_unwind(|| match Store::open(&path) {
                Err(e) => {
                    let line = e.to_string();
                    assert!(!matches!(e, StoreError::Unsafe { .. }), "{line}");
                    assert!(line.contains(&path.display().to_string()), "{line}");
                    assert!(!line.contains('\n'), "{line}");
                    false
                }
                Ok((store, restored)) => {
                    let seqs: Vec<u64> = restored.sessions.iter().map(|s| s.seq).collect();
                    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
                    // The store keeps working: a write and a read-back.
                    let extra = session(1_000);
                    store.insert(&extra, 1_001).unwrap();
                    store.remove(&[extra.seq]).unwrap();
                    drop(store);
                    let (_, again) = Store::open(&path).unwrap();
                    assert_eq!(again.sessions, restored.sessions);
                    true
                }
            });
            match outcome {
                Ok(true) => opened += 1,
                Ok(false) => refused += 1,
                Err(_) => panic!("case {case}: flipping byte {at} panicked"),
            }
        }
        println!(
            "{CASES} corruptions: {refused} refused, {opened} opened; {} live",
            live.len()
        );
        assert_eq!(refused + opened, CASES);
        // Most single-byte flips land in pages redb checksums or in unused space.
        assert!(
            refused > 0 && opened > 0,
            "{refused} refused, {opened} opened"
        );
    }
}
