//! The durable queue: every session (id, seq, creation time, and in identity mode its
//! owner) and the seq counter, kept in an embedded `redb` database so the queue survives a restart or a crash (§7).
//!
//! Why redb: it is a pure-Rust, copy-on-write B-tree with checksummed commits; a commit
//! with `Durability::Immediate` is on disk when it returns, and a crash at any moment
//! leaves the last committed state, never a file that cannot be opened. A hand-written
//! fsync'd journal would need its own framing, torn-write detection and compaction.
//!
//! Owns the file format and nothing else: it stores what it is told, in the order it is
//! told; the queue's rules live in `queue`. States and positions are not stored: order is
//! seq order, and the head is ACTIVE. Must never be written from two processes: redb
//! locks the file, and a second labgate on the same path fails at start-up.

use std::path::Path;
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
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

#[derive(Debug, thiserror::Error)]
#[error("queue store: {0}")]
pub struct StoreError(String);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
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
        let (id, created) = v
            .split_first_chunk::<16>()
            .ok_or_else(|| StoreError(format!("session {seq}: record too short")))?;
        let created: [u8; 8] = created
            .try_into()
            .map_err(|_| StoreError(format!("session {seq}: record of the wrong size")))?;
        Ok(StoredSession {
            id: SessionId::from_uuid(Uuid::from_bytes(*id)),
            seq,
            created_ms: u64::from_be_bytes(created),
        })
    }
}

/// What was in the store at start-up, in seq order.
#[derive(Debug, Default)]
pub struct Restored {
    pub next_seq: u64,
    pub sessions: Vec<StoredSession>,
    /// seq -> owner, for the sessions that have one.
    pub owners: std::collections::HashMap<u64, String>,
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
    /// Opens (or creates) the store at `path` and reads it back.
    pub fn open(path: &Path) -> Result<(Store, Restored), StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError(format!("cannot create {}: {e}", dir.display())))?;
        }
        let db = Database::create(path)
            .map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;
        let store = Store { db };
        // Create the tables on a fresh file so that reads find them.
        store.write(|_| Ok(()))?;
        let restored = store.read_all()?;
        Ok((store, restored))
    }

    fn read_all(&self) -> Result<Restored, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let sessions_table = txn.open_table(SESSIONS).map_err(err)?;
        let meta = txn.open_table(META).map_err(err)?;
        let owners_table = txn.open_table(OWNERS).map_err(err)?;
        let mut sessions = Vec::new();
        for row in sessions_table.iter().map_err(err)? {
            let (seq, value) = row.map_err(err)?;
            sessions.push(StoredSession::decode(seq.value(), value.value())?);
        }
        let mut owners = std::collections::HashMap::new();
        for row in owners_table.iter().map_err(err)? {
            let (seq, owner) = row.map_err(err)?;
            owners.insert(seq.value(), owner.value().to_string());
        }
        let next_seq = meta.get(NEXT_SEQ).map_err(err)?.map_or(1, |v| v.value());
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
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut tables = Tables {
                sessions: txn.open_table(SESSIONS).map_err(err)?,
                meta: txn.open_table(META).map_err(err)?,
                owners: txn.open_table(OWNERS).map_err(err)?,
            };
            f(&mut tables)?;
        }
        txn.commit().map_err(err)?;
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
            t.sessions
                .insert(s.seq, s.encode().as_slice())
                .map_err(err)?;
            if let Some(owner) = owner {
                t.owners.insert(s.seq, owner).map_err(err)?;
            }
            t.meta.insert(NEXT_SEQ, next_seq).map_err(err)?;
            Ok(())
        })
    }

    /// Removes sessions (and their owners) by seq, durably; unknown seqs are ignored.
    pub fn remove(&self, seqs: &[u64]) -> Result<Duration, StoreError> {
        self.write(|t| {
            for seq in seqs {
                t.sessions.remove(*seq).map_err(err)?;
                t.owners.remove(*seq).map_err(err)?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(seq: u64) -> StoredSession {
        StoredSession {
            id: SessionId::random(),
            seq,
            created_ms: 1_700_000_000_000 + seq,
        }
    }

    #[test]
    fn a_fresh_store_is_empty_and_starts_at_seq_1() {
        let dir = tempfile::tempdir().unwrap();
        let (_, restored) = Store::open(&dir.path().join("sub/q.redb")).unwrap();
        assert_eq!(restored.next_seq, 1);
        assert!(restored.sessions.is_empty());
    }

    #[test]
    fn sessions_and_counter_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
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
    fn owners_are_kept_with_their_sessions_and_removed_with_them() {
        let dir = tempfile::tempdir().unwrap();
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
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.redb");
        let _first = Store::open(&path).unwrap();
        assert!(Store::open(&path).is_err());
    }

    #[test]
    fn garbage_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.redb");
        std::fs::write(&path, b"this is not a redb file at all, sorry").unwrap();
        let e = Store::open(&path).err().expect("garbage must be refused");
        assert!(e.to_string().contains("cannot open"), "{e}");
    }
}
