//! The durable queue: every session (id, seq, creation time, in identity mode its
//! owner, and its label when it has one) and a floor of the seq counter, kept in an
//! embedded `redb` database so the queue survives a restart or a crash (§7).
//!
//! Why redb: it is a pure-Rust, copy-on-write B-tree with checksummed commits; a commit
//! with `Durability::Immediate` is on disk when it returns, and a crash at any moment
//! leaves the last committed state, never a file that cannot be opened.
//!
//! Changes from the committer reach redb through a journal (`journal`: one append and
//! one `fdatasync` per group commit, moved into redb in bulk), since a redb commit costs
//! its own page bookkeeping (~270 us of CPU) whatever it carries. The journal is only a
//! queue of changes in front of redb, emptied at each checkpoint: its framing is a CRC
//! and a number per record, and its compaction is redb. `Store::apply` writes redb
//! directly.
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

use crate::label::Label;
use crate::queue::SessionId;

mod journal;
pub use journal::CHECKPOINT_OPS;
use journal::{Journal, Mark, Replay};

/// seq -> 16 bytes of uuid + 8 bytes of creation time (Unix ms, big-endian).
const SESSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("sessions");
/// seq -> the identity that owns the session (identity mode only). A table of its own,
/// so files written before identities existed read back unchanged.
const OWNERS: TableDefinition<u64, &str> = TableDefinition::new("owners");
/// seq -> the session's label (`label::Label` as JSON), for sessions that have one. A
/// table of its own, like `owners`: files written before labels existed read back
/// unchanged (their sessions have none), and an older labgate ignores it.
const LABELS: TableDefinition<u64, &str> = TableDefinition::new("labels");
/// "next_seq" -> a floor of the seq counter: the counter at start-up is the higher of
/// it and one past the highest stored seq. Written only when that highest seq alone would
/// not be enough: when the highest session is removed (or the counter was advanced past
/// a stored seq), so a commit of creates writes the `sessions` tree alone.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_SEQ: &str = "next_seq";
/// "probe" -> any value: written by [`Op::Touch`], never read.
const PROBE: &str = "probe";
/// The journal records this file has ([`journal::Mark`]): its generation, and the count
/// of that generation's records applied. Written at each open and each checkpoint.
const JOURNAL_GENERATION: &str = "journal_generation";
const JOURNAL_APPLIED: &str = "journal_applied";

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
    /// A journal record that passed its checksum but that labgate did not write.
    #[error(transparent)]
    Journal(#[from] journal::Undecodable),
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Committed durably, in this long.
    Committed(Duration),
    /// Nothing to write (e.g. removing a session that was never stored): nothing was
    /// committed, so it says nothing about whether the disk takes writes.
    Nothing,
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
    /// that is higher than it is (it is at least the session's seq + 1 anyway).
    Insert(StoredSession, Option<String>, u64),
    /// Attach a label to a session (submit it with the session's `Insert`, so both are
    /// in one transaction).
    Label(u64, Label),
    /// Remove a session (with its owner and label) by seq; unknown seqs are ignored. The
    /// seq is never issued again: the counter stays above it.
    Remove(u64),
    /// Change nothing that is read back, but write (a probe of a store that failed).
    Touch(u64),
}

/// What was in the store at start-up, in seq order.
#[derive(Debug, Default)]
pub struct Restored {
    /// Above every seq ever committed: the higher of the stored floor and one past the
    /// highest stored seq.
    pub next_seq: u64,
    pub sessions: Vec<StoredSession>,
    /// seq -> owner, for the sessions that have one.
    pub owners: std::collections::HashMap<u64, String>,
    /// seq -> label, for the sessions that have one (cleaned: the file is not trusted
    /// to hold only what labgate wrote).
    pub labels: std::collections::HashMap<u64, Label>,
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
    /// Where the committer's changes go first (see [`journal`]).
    journal: Journal,
    /// The journal's changes not yet in redb, in order.
    pending: Vec<Op>,
}

/// The journal's path: `<state_path>.journal`, next to the store.
pub fn journal_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".journal");
    PathBuf::from(p)
}

/// The tables of one write transaction, each opened when first used: a table opened is
/// looked up in redb's table tree twice (at open and at commit) even if nothing in it
/// changes, and a commit of creates needs only `sessions`.
struct Tables<'txn> {
    txn: &'txn redb::WriteTransaction,
    /// Whether anything was written (a removal that found nothing writes nothing).
    changed: bool,
    sessions: Option<redb::Table<'txn, u64, &'static [u8]>>,
    meta: Option<redb::Table<'txn, &'static str, u64>>,
    owners: Option<redb::Table<'txn, u64, &'static str>>,
    labels: Option<redb::Table<'txn, u64, &'static str>>,
}

/// `slot`'s table, opened in `txn` on first use.
fn opened<'s, 'txn, K: redb::Key + 'static, V: redb::Value + 'static>(
    slot: &'s mut Option<redb::Table<'txn, K, V>>,
    txn: &'txn redb::WriteTransaction,
    table: TableDefinition<K, V>,
) -> Result<&'s mut redb::Table<'txn, K, V>, StoreError> {
    let open = match slot.take() {
        Some(open) => open,
        None => txn.open_table(table)?,
    };
    Ok(slot.insert(open))
}

impl<'txn> Tables<'txn> {
    fn sessions(&mut self) -> Result<&mut redb::Table<'txn, u64, &'static [u8]>, StoreError> {
        opened(&mut self.sessions, self.txn, SESSIONS)
    }
    fn meta(&mut self) -> Result<&mut redb::Table<'txn, &'static str, u64>, StoreError> {
        opened(&mut self.meta, self.txn, META)
    }
    fn owners(&mut self) -> Result<&mut redb::Table<'txn, u64, &'static str>, StoreError> {
        opened(&mut self.owners, self.txn, OWNERS)
    }
    fn labels(&mut self) -> Result<&mut redb::Table<'txn, u64, &'static str>, StoreError> {
        opened(&mut self.labels, self.txn, LABELS)
    }

    /// Applies `ops` in order: what [`Store::apply`] and a checkpoint write.
    fn apply(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        // The lowest counter the next start-up may begin at, where the stored
        // sessions alone might not give it.
        let mut floor = None;
        for op in ops {
            match op {
                Op::Insert(s, owner, next) => {
                    self.changed = true;
                    self.sessions()?.insert(s.seq, s.encode().as_slice())?;
                    if let Some(owner) = owner {
                        self.owners()?.insert(s.seq, owner.as_str())?;
                    }
                    // A stored seq is its own floor; only a counter advanced past it
                    // needs `meta`.
                    if *next > s.seq.saturating_add(1) {
                        floor = floor.max(Some(*next));
                    }
                }
                Op::Label(seq, label) => {
                    let text = serde_json::to_string(label).unwrap_or_default();
                    self.labels()?.insert(*seq, text.as_str())?;
                    self.changed = true;
                }
                Op::Remove(seq) => {
                    let was_stored = self.sessions()?.remove(*seq)?.is_some();
                    let had_owner = self.owners()?.remove(*seq)?.is_some();
                    let had_label = self.labels()?.remove(*seq)?.is_some();
                    self.changed |= was_stored || had_owner || had_label;
                    // A seq that is not stored was never committed (its create
                    // failed) or has its floor from the commit that removed it.
                    if was_stored {
                        floor = floor.max(Some(seq.saturating_add(1)));
                    }
                }
                Op::Touch(value) => {
                    self.meta()?.insert(PROBE, *value)?;
                    self.changed = true;
                }
            }
        }
        match floor {
            Some(floor) => self.keep_counter_at_least(floor),
            None => Ok(()),
        }
    }

    /// Makes the counter at the next start-up at least `floor`. Start-up takes the higher
    /// of `meta`'s floor and one past the highest stored seq, so the floor is written only
    /// when the sessions left would not give it (the highest one was removed).
    fn keep_counter_at_least(&mut self, floor: u64) -> Result<(), StoreError> {
        let top = self.sessions()?.last()?.map(|(seq, _)| seq.value());
        if top.is_some_and(|top| top.saturating_add(1) >= floor) {
            return Ok(());
        }
        let meta = self.meta()?;
        let stored = meta.get(NEXT_SEQ)?.map(|v| v.value());
        if stored.is_none_or(|s| s < floor) {
            meta.insert(NEXT_SEQ, floor)?;
            self.changed = true;
        }
        Ok(())
    }
}

impl Store {
    /// Opens (or creates) the store at `path` and its journal, replays the journal into
    /// it, and reads it back. Creates missing files (0600) but never a missing directory;
    /// refuses a file or directory that another user can read or write, and turns any
    /// failure, even a panic inside redb on a damaged file, into an error that names the
    /// file.
    pub fn open(path: &Path) -> Result<(Store, Restored), StoreError> {
        let file = open_private(path)?;
        let journal = open_private(&journal_path(path))?;
        let opened = catch_quietly(|| Store::open_file(file, journal));
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

    fn open_file(file: File, journal: File) -> Result<(Store, Restored), StoreError> {
        // The store is small (one row per live session), so verifying every page's checksum
        // at start-up is cheap, and redb then reports a file altered outside it as
        // `Corrupted` where a plain open trusts it (and may panic on it).
        let db = Builder::new()
            .set_check_integrity_on_open(true)
            .create_with_backend(FileBackend::new(file)?)?;
        // Create the tables on a fresh file so that reads find them (committed even when
        // they all exist: opening is what creates them), and read the journal's mark.
        let txn = db.begin_write()?;
        let mark = {
            txn.open_table(SESSIONS)?;
            txn.open_table(OWNERS)?;
            txn.open_table(LABELS)?;
            let meta = txn.open_table(META)?;
            let get = |key| meta.get(key).map(|v| v.map_or(0, |v| v.value()));
            Mark {
                generation: get(JOURNAL_GENERATION)?,
                applied: get(JOURNAL_APPLIED)?,
            }
        };
        txn.commit()?;
        // Read after redb has the file's lock: no other labgate appends meanwhile.
        let Replay {
            journal,
            ops,
            cut_off,
        } = Journal::open(journal, mark)??;
        if cut_off {
            tracing::warn!(
                "queue store journal: ignored an append that was cut off (it was never acknowledged)"
            );
        }
        let mut store = Store {
            db,
            journal,
            pending: ops,
        };
        // The journal's changes into redb, with the new generation's mark, before
        // anything is appended (an append goes to the journal's start, over them).
        store.checkpoint()?;
        // And the journal empty on disk, once per open: whatever a lost truncation could
        // leave of earlier lives (a generation the mark does not know, from a labgate
        // that numbered them otherwise) is gone before the first append.
        store.journal.sync()?;
        let restored = store.read_all()?;
        Ok((store, restored))
    }

    fn read_all(&self) -> Result<Restored, StoreError> {
        let txn = self.db.begin_read()?;
        let sessions_table = txn.open_table(SESSIONS)?;
        let meta = txn.open_table(META)?;
        let owners_table = txn.open_table(OWNERS)?;
        let labels_table = txn.open_table(LABELS)?;
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
        let mut labels = std::collections::HashMap::new();
        for row in labels_table.iter()? {
            let (seq, text) = row?;
            // A label is only shown: one that does not parse is dropped, never a
            // reason to refuse the queue.
            if let Ok(label) = serde_json::from_str::<Label>(text.value()) {
                labels.insert(seq.value(), label.sanitised());
            }
        }
        // Files written before the floor went into `meta` only on removals have the counter
        // there after every create; either way the higher of the two is above every seq
        // ever committed.
        let top = sessions.last().map_or(0, |s| s.seq);
        let next_seq = meta
            .get(NEXT_SEQ)?
            .map_or(1, |v| v.value())
            .max(top.saturating_add(1));
        Ok(Restored {
            next_seq,
            sessions,
            owners,
            labels,
        })
    }

    /// One durable transaction; says how long the commit took, or that `f` changed
    /// nothing (then nothing is committed, and nothing about the disk was learned).
    fn write(
        &self,
        f: impl FnOnce(&mut Tables<'_>) -> Result<(), StoreError>,
    ) -> Result<Applied, StoreError> {
        let started = std::time::Instant::now();
        let txn = self.db.begin_write()?;
        let changed = {
            let mut tables = Tables {
                txn: &txn,
                changed: false,
                sessions: None,
                meta: None,
                owners: None,
                labels: None,
            };
            f(&mut tables)?;
            tables.changed
        };
        if !changed {
            txn.abort()?;
            return Ok(Applied::Nothing);
        }
        txn.commit()?;
        Ok(Applied::Committed(started.elapsed()))
    }

    /// Adds a session and advances the counter, durably.
    pub fn insert(&self, s: &StoredSession, next_seq: u64) -> Result<Applied, StoreError> {
        self.insert_owned(s, None, next_seq)
    }

    /// Adds a session with its owner (identity mode) and advances the counter, in one
    /// durable transaction: a session is never on disk without its owner.
    pub fn insert_owned(
        &self,
        s: &StoredSession,
        owner: Option<&str>,
        next_seq: u64,
    ) -> Result<Applied, StoreError> {
        self.apply(&[Op::Insert(*s, owner.map(str::to_string), next_seq)])
    }

    /// Appends `ops` to the journal, durably (one `fdatasync`), and takes them out of
    /// `ops`; they reach redb at the next [`Store::checkpoint`]. The committer's path. On
    /// an error `ops` are left as they were, and the store must be reopened (the journal
    /// may end in part of a record).
    pub fn log(&mut self, ops: &mut Vec<Op>) -> Result<Duration, StoreError> {
        let started = std::time::Instant::now();
        self.journal.append(ops)?;
        self.pending.append(ops);
        Ok(started.elapsed())
    }

    /// Whether changes wait in the journal.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether the journal is long enough to checkpoint now rather than when idle.
    pub fn checkpoint_due(&self) -> bool {
        self.pending.len() >= journal::CHECKPOINT_OPS
            || self.journal.len() >= journal::CHECKPOINT_BYTES
    }

    /// Moves the journal's changes into redb in one durable transaction, then empties the
    /// journal. On an error the journal keeps them (reopen to replay them).
    pub fn checkpoint(&mut self) -> Result<(), StoreError> {
        let mark = self.journal.mark();
        let pending = &self.pending;
        self.write(|t| {
            t.apply(pending)?;
            let meta = t.meta()?;
            meta.insert(JOURNAL_GENERATION, mark.generation)?;
            meta.insert(JOURNAL_APPLIED, mark.applied)?;
            t.changed = true;
            Ok(())
        })?;
        self.pending.clear();
        self.journal.clear()?;
        Ok(())
    }

    /// Applies `ops` in order in one durable transaction (one fsync for all of them),
    /// straight into redb. Refused while the journal has changes pending (these would
    /// land before them).
    pub fn apply(&self, ops: &[Op]) -> Result<Applied, StoreError> {
        if !self.pending.is_empty() {
            return Err(StoreError::Io(io::Error::other(
                "the journal has changes pending; checkpoint first",
            )));
        }
        self.write(|t| t.apply(ops))
    }

    /// Removes sessions (and their owners) by seq, durably; unknown seqs are ignored.
    pub fn remove(&self, seqs: &[u64]) -> Result<Applied, StoreError> {
        let ops: Vec<Op> = seqs.iter().map(|s| Op::Remove(*s)).collect();
        self.apply(&ops)
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
    // The file's name on disk too (it may have just been created): the journal's records
    // are made durable with `fdatasync`, which does not sync the directory.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_failure("cannot sync", dir, e))?;
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
mod tests;
