//! The store with its journal: what the committer logs survives a crash, replay never
//! undoes a later change, and the journal is held to the store's rules.

use super::*;

/// Changes the committer logged are durable before any checkpoint: a crash (the store
/// dropped without one) loses none of them, and the next open puts them into redb and
/// empties the journal.
#[test]
fn logged_changes_survive_a_crash_before_the_checkpoint() {
    let dir = private_dir();
    let path = dir.path().join("q.redb");
    let (a, b, c) = (session(1), session(2), session(3));
    {
        let (mut store, _) = Store::open(&path).unwrap();
        store
            .log(&mut vec![
                Op::Insert(a, Some("alice".into()), 2),
                Op::Insert(b, None, 3),
            ])
            .unwrap();
        store
            .log(&mut vec![
                Op::Insert(c, None, 4),
                Op::Label(3, label("ci", "nightly")),
                Op::Remove(1),
            ])
            .unwrap();
        assert!(store.has_pending());
    }
    let (store, restored) = Store::open(&path).unwrap();
    assert_eq!(restored.sessions, vec![b, c]);
    // Session 3 was the highest created: the counter comes back above it.
    assert_eq!(restored.next_seq, 4);
    assert!(restored.owners.is_empty());
    assert_eq!(restored.labels.get(&3), Some(&label("ci", "nightly")));
    assert!(!store.has_pending());
    // In redb now: another open (a crash right after this one) finds the same queue.
    drop(store);
    let (_, again) = Store::open(&path).unwrap();
    assert_eq!(again.sessions, vec![b, c]);
    assert_eq!(again.next_seq, 4);
}

/// A crash after a checkpoint's redb commit but before the journal was emptied replays
/// changes redb already has: the result is the same as replaying them once (a removed
/// session stays removed, the counter stays above every seq).
#[test]
fn a_journal_replayed_twice_gives_the_same_queue() {
    let dir = private_dir();
    let path = dir.path().join("q.redb");
    let journal = journal_path(&path);
    let (a, b, c) = (session(1), session(2), session(3));
    let kept;
    {
        let (mut store, _) = Store::open(&path).unwrap();
        store
            .log(&mut vec![Op::Insert(a, None, 2), Op::Insert(b, None, 3)])
            .unwrap();
        store
            .log(&mut vec![
                Op::Remove(1),
                Op::Insert(c, None, 4),
                Op::Remove(3),
            ])
            .unwrap();
        kept = std::fs::read(&journal).unwrap();
        store.checkpoint().unwrap();
    }
    // The records replayed again, as if the last open had crashed before appending.
    std::fs::write(&journal, &kept).unwrap();
    let (_, restored) = Store::open(&path).unwrap();
    assert_eq!(restored.sessions, vec![b]);
    assert_eq!(restored.next_seq, 4);
}

/// A journal record that is whole and checksummed but not labgate's (another program, a
/// newer format) stops start-up with one line naming the store, never a guess.
#[test]
fn a_journal_labgate_did_not_write_stops_start_up_clearly() {
    let dir = private_dir();
    let path = dir.path().join("q.redb");
    drop(Store::open(&path).unwrap());
    let payload = [0xeeu8];
    let mut rec = b"LGJ1".to_vec();
    rec.extend_from_slice(&99u64.to_le_bytes());
    rec.extend_from_slice(&7u64.to_le_bytes());
    rec.extend_from_slice(&1u32.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&rec[4..24]);
    h.update(&payload);
    rec.extend_from_slice(&h.finalize().to_le_bytes());
    rec.extend_from_slice(&payload);
    std::fs::write(journal_path(&path), &rec).unwrap();
    let e = Store::open(&path).err().expect("refused");
    let mut line = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        line = format!("{line}: {c}");
        cause = c.source();
    }
    assert!(
        line.starts_with(&format!("cannot open the queue store {}", path.display())),
        "{line}"
    );
    assert!(
        line.contains("journal record 7 at byte 0: an unknown kind of change"),
        "{line}"
    );
}

/// The journal is held to the store's rules: a journal others can read stops start-up.
#[test]
fn a_journal_others_can_read_is_refused() {
    let dir = private_dir();
    let path = dir.path().join("q.redb");
    drop(Store::open(&path).unwrap());
    chmod(&journal_path(&path), 0o644);
    let e = Store::open(&path).err().expect("refused");
    assert!(matches!(e, StoreError::Unsafe { .. }), "{e}");
    assert!(e.to_string().contains(".journal has mode 0644"), "{e}");
}

/// A journal with many changes waiting is due a checkpoint before the committer waits
/// for a pause; a checkpoint leaves nothing pending.
#[test]
fn a_long_journal_is_due_a_checkpoint() {
    let dir = private_dir();
    let path = dir.path().join("q.redb");
    let (mut store, _) = Store::open(&path).unwrap();
    let mut ops: Vec<Op> = (1..CHECKPOINT_OPS as u64)
        .map(|seq| Op::Insert(session(seq), None, seq + 1))
        .collect();
    store.log(&mut ops).unwrap();
    assert!(store.has_pending() && !store.checkpoint_due());
    // Straight into redb would put this before the journal's changes: refused.
    assert!(store.apply(&[Op::Remove(2)]).is_err());
    store.log(&mut vec![Op::Remove(1)]).unwrap();
    assert!(store.checkpoint_due());
    store.checkpoint().unwrap();
    assert!(!store.has_pending() && !store.checkpoint_due());
    drop(store);
    let (_, restored) = Store::open(&path).unwrap();
    assert_eq!(restored.sessions.len(), CHECKPOINT_OPS - 2);
}

/// Review of stop 21: after a checkpoint the journal is emptied without a sync, and the
/// next append goes to its start. A crash that tears that append (its later sectors on
/// disk, its first not) leaves the old first record whole and the old second damaged:
/// replaying that first record alone brought back a session whose removal was
/// acknowledged and checkpointed. Records the store already has are never replayed.
#[test]
fn a_torn_append_over_checkpointed_records_brings_nothing_back() {
    let dir = private_dir();
    let path = dir.path().join("q.redb");
    let journal = journal_path(&path);
    let x = session(1);
    let kept;
    let second_record_at;
    {
        let (mut store, _) = Store::open(&path).unwrap();
        store.log(&mut vec![Op::Insert(x, None, 2)]).unwrap();
        second_record_at = std::fs::metadata(&journal).unwrap().len() as usize;
        store.log(&mut vec![Op::Remove(1)]).unwrap();
        kept = std::fs::read(&journal).unwrap();
        store.checkpoint().unwrap();
    }
    // The truncation lost, the new append torn: record 1 whole, record 2 damaged.
    let mut torn = kept.clone();
    torn[second_record_at + 30] ^= 0xff;
    std::fs::write(&journal, &torn).unwrap();
    let (_, restored) = Store::open(&path).unwrap();
    assert!(restored.sessions.is_empty(), "{:?}", restored.sessions);
    assert_eq!(restored.next_seq, 2);
}
