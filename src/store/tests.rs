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
fn a_write_that_changes_nothing_commits_nothing_and_says_so() {
    // A failed create's undo removes a record that was never stored: that must not pass
    // for a successful write (the committer would call a full disk writable again).
    let dir = private_dir();
    let path = dir.path().join("q.redb");
    let (store, _) = Store::open(&path).unwrap();
    assert_eq!(store.apply(&[Op::Remove(99)]).unwrap(), Applied::Nothing);
    assert_eq!(store.remove(&[]).unwrap(), Applied::Nothing);
    assert!(matches!(
        store.insert(&session(1), 2).unwrap(),
        Applied::Committed(_)
    ));
    assert!(matches!(
        store.apply(&[Op::Remove(1)]).unwrap(),
        Applied::Committed(_)
    ));
    assert!(matches!(
        store.apply(&[Op::Touch(1)]).unwrap(),
        Applied::Committed(_)
    ));
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
    // The journal holds session ids too.
    assert_eq!(mode(&journal_path(&path)), 0o600);
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

fn label(owner: &str, note: &str) -> Label {
    Label {
        owner: Some(owner.to_string()),
        note: Some(note.to_string()),
    }
}

#[test]
fn labels_survive_reopening_and_go_with_their_sessions() {
    let dir = private_dir();
    let path = dir.path().join("q.redb");
    let (a, b, c) = (session(1), session(2), session(3));
    {
        let (store, _) = Store::open(&path).unwrap();
        store
            .apply(&[
                Op::Insert(a, None, 2),
                Op::Label(1, label("alice@ci", "nightly")),
                Op::Insert(b, None, 3),
                Op::Label(2, label("bob", "flaky test")),
                Op::Insert(c, None, 4),
            ])
            .unwrap();
        store.apply(&[Op::Remove(2)]).unwrap();
    }
    let (_, restored) = Store::open(&path).unwrap();
    assert_eq!(restored.sessions, vec![a, c]);
    assert_eq!(restored.labels.len(), 1);
    assert_eq!(restored.labels.get(&1), Some(&label("alice@ci", "nightly")));
    assert_eq!(restored.labels.get(&3), None);
}

/// A store written before labels existed (no `labels` table) opens, and its sessions
/// come back with no label.
#[test]
fn an_old_store_without_labels_restores_its_sessions_unlabelled() {
    let dir = private_dir();
    let path = dir.path().join("q.redb");
    let (a, b) = (session(5), session(6));
    {
        // Exactly the tables (and record layout) of the format before labels.
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut sessions = txn
                .open_table(TableDefinition::<u64, &[u8]>::new("sessions"))
                .unwrap();
            for s in [a, b] {
                sessions.insert(s.seq, s.encode().as_slice()).unwrap();
            }
            let mut owners = txn
                .open_table(TableDefinition::<u64, &str>::new("owners"))
                .unwrap();
            owners.insert(6, "bob").unwrap();
            let mut meta = txn
                .open_table(TableDefinition::<&str, u64>::new("meta"))
                .unwrap();
            meta.insert("next_seq", 7).unwrap();
        }
        txn.commit().unwrap();
    }
    chmod(&path, 0o600);
    let (store, restored) = Store::open(&path).unwrap();
    assert_eq!(restored.sessions, vec![a, b]);
    assert_eq!(restored.next_seq, 7);
    assert_eq!(restored.owners.get(&6).map(String::as_str), Some("bob"));
    assert!(restored.labels.is_empty());
    // And it takes labels from now on.
    store
        .apply(&[
            Op::Insert(session(7), None, 8),
            Op::Label(7, label("c", "d")),
        ])
        .unwrap();
    drop(store);
    let (_, restored) = Store::open(&path).unwrap();
    assert_eq!(restored.labels.get(&7), Some(&label("c", "d")));
}

/// A label the file holds that labgate would not have written is cleaned or dropped,
/// never a reason to refuse the queue.
#[test]
fn a_tampered_label_is_cleaned_or_dropped() {
    let dir = private_dir();
    let path = dir.path().join("q.redb");
    {
        let (store, _) = Store::open(&path).unwrap();
        store
            .apply(&[
                Op::Insert(session(1), None, 3),
                Op::Insert(session(2), None, 3),
            ])
            .unwrap();
        drop(store);
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut labels = txn.open_table(LABELS).unwrap();
            labels.insert(1, "not json").unwrap();
            let evil = serde_json::json!({ "owner": format!("\u{1b}[2J{}", "x".repeat(500)) });
            labels.insert(2, evil.to_string().as_str()).unwrap();
        }
        txn.commit().unwrap();
    }
    let (_, restored) = Store::open(&path).unwrap();
    assert_eq!(restored.sessions.len(), 2);
    assert_eq!(restored.labels.get(&1), None);
    let owner = restored.labels[&2].owner.clone().unwrap();
    assert_eq!(owner.chars().count(), crate::label::MAX_OWNER);
    assert!(!owner.contains('\u{1b}'));
}

/// The counter floor as the file holds it (`meta`'s `next_seq`), read past the store.
fn stored_floor(path: &Path) -> Option<u64> {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    meta.get(NEXT_SEQ).unwrap().map(|v| v.value())
}

/// Stop 19: a commit of creates writes the `sessions` tree alone (one tree fewer to copy
/// and write per commit); the counter comes back from the highest stored seq.
#[test]
fn creates_write_no_counter_and_it_comes_back_above_the_highest_seq() {
    let dir = private_dir();
    let path = dir.path().join("q.redb");
    {
        let (store, _) = Store::open(&path).unwrap();
        store
            .apply(&[
                Op::Insert(session(1), None, 2),
                Op::Insert(session(2), Some("bob".to_string()), 3),
            ])
            .unwrap();
        store.insert(&session(3), 4).unwrap();
        // Ending a session that is not the newest needs no floor either.
        store.remove(&[2]).unwrap();
    }
    assert_eq!(stored_floor(&path), None);
    let (_, restored) = Store::open(&path).unwrap();
    assert_eq!(restored.next_seq, 4);
}

/// Fencing: a seq is never issued twice, even after the sessions holding the highest
/// seqs (or all of them) were removed and labgate restarted.
#[test]
fn a_seq_is_never_reissued_after_the_newest_or_every_session_is_removed() {
    let dir = private_dir();
    let path = dir.path().join("q.redb");
    {
        let (store, _) = Store::open(&path).unwrap();
        for seq in 1..=5 {
            store.insert(&session(seq), seq + 1).unwrap();
        }
        store.remove(&[5]).unwrap();
    }
    let (store, restored) = Store::open(&path).unwrap();
    assert_eq!(restored.next_seq, 6, "seq 5 was issued");
    assert_eq!(restored.sessions.len(), 4);
    store.insert(&session(6), 7).unwrap();
    store.remove(&[1, 2, 3, 4, 6]).unwrap();
    drop(store);
    let (_, restored) = Store::open(&path).unwrap();
    assert!(restored.sessions.is_empty());
    assert_eq!(restored.next_seq, 7, "seq 6 was issued");
    // A counter advanced past a stored seq is kept too.
    let (store, _) = Store::open(&path).unwrap();
    store.insert(&session(7), 50).unwrap();
    drop(store);
    assert_eq!(Store::open(&path).unwrap().1.next_seq, 50);
}

/// Every commit is atomic, so a crash leaves the state after some commit: restarting
/// after each commit of a random run of creates and removals (the queue's order: seqs
/// only grow) must always give a counter above every seq ever committed.
#[test]
fn after_any_commit_the_restored_counter_is_above_every_committed_seq() {
    let dir = private_dir();
    let path = dir.path().join("q.redb");
    let mut seed: u64 = 0x0f1e_2d3c_4b5a;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let (mut live, mut next, mut highest) = (Vec::<u64>::new(), 1u64, 0u64);
    let (mut store, _) = Store::open(&path).unwrap();
    for round in 0..150 {
        let mut ops = Vec::new();
        for _ in 0..=rand(4) {
            if live.is_empty() || rand(3) > 0 {
                ops.push(Op::Insert(session(next), None, next + 1));
                live.push(next);
                highest = highest.max(next);
                next += 1;
            } else {
                // The newest half the time: that is the removal that needs a floor.
                let at = if rand(2) == 0 {
                    live.len() - 1
                } else {
                    rand(live.len() as u64) as usize
                };
                ops.push(Op::Remove(live.remove(at)));
            }
        }
        store.apply(&ops).unwrap();
        if round % 3 == 0 {
            drop(store);
            let (reopened, restored) = Store::open(&path).unwrap();
            let seqs: Vec<u64> = restored.sessions.iter().map(|s| s.seq).collect();
            assert_eq!(seqs, live, "round {round}");
            assert!(
                restored.next_seq > highest,
                "round {round}: counter {} after seq {highest} was committed",
                restored.next_seq
            );
            store = reopened;
        }
    }
}

/// A store written by the version before stop 19 (the counter in `meta`, written with
/// every create, and above the highest stored seq after the newest sessions ended)
/// restores its counter, and goes on from there under the new layout.
#[test]
fn a_store_with_the_counter_written_on_every_create_restores_and_goes_on() {
    let dir = private_dir();
    let path = dir.path().join("q.redb");
    let (a, b) = (session(5), session(6));
    {
        // Exactly what the previous version left: seqs 5 to 9 created (the counter 10),
        // 7 to 9 removed.
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut sessions = txn
                .open_table(TableDefinition::<u64, &[u8]>::new("sessions"))
                .unwrap();
            for s in [a, b] {
                sessions.insert(s.seq, s.encode().as_slice()).unwrap();
            }
            txn.open_table(TableDefinition::<u64, &str>::new("owners"))
                .unwrap();
            txn.open_table(TableDefinition::<u64, &str>::new("labels"))
                .unwrap();
            let mut meta = txn
                .open_table(TableDefinition::<&str, u64>::new("meta"))
                .unwrap();
            meta.insert("next_seq", 10).unwrap();
        }
        txn.commit().unwrap();
    }
    chmod(&path, 0o600);
    let (store, restored) = Store::open(&path).unwrap();
    assert_eq!(restored.sessions, vec![a, b]);
    assert_eq!(restored.next_seq, 10);
    let (c, d) = (session(10), session(11));
    store.insert(&c, 11).unwrap();
    store.insert(&d, 12).unwrap();
    drop(store);
    assert_eq!(
        stored_floor(&path),
        Some(10),
        "creates leave the old counter"
    );
    let (store, restored) = Store::open(&path).unwrap();
    assert_eq!(restored.sessions, vec![a, b, c, d]);
    assert_eq!(restored.next_seq, 12);
    store.remove(&[5, 6, 10, 11]).unwrap();
    drop(store);
    let (_, restored) = Store::open(&path).unwrap();
    assert!(restored.sessions.is_empty());
    assert_eq!(restored.next_seq, 12);
}

mod journal;
