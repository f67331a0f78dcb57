//! The durable queue's cost per commit, without a server or a client: what one group
//! commit (`labgate::store::Store::apply`, as `src/commit.rs` calls it) writes and how
//! long it takes, for a batch of creates and for a batch of creates plus deletes.
//!
//! Owns only measurement: it prints figures and never judges them. The counts are
//! load-independent (write syscalls and bytes from `/proc/thread-self/io`, CPU time of
//! this thread from `getrusage`); the wall-clock time per commit is the disk's and the
//! machine's. Instructions per commit come from running it under callgrind:
//!
//! ```text
//! valgrind --tool=callgrind --callgrind-out-file=cg.out \
//!     --toggle-collect='labgate::store::Store::apply' target/release/deps/store-* 300 8 1
//! ```
//!
//! (the third number picks one scenario: 1, 2 or 3; callgrind's "Collected" count over
//! the 400 commits it makes, the 100 unmeasured ones included, gives instructions per
//! commit).
//!
//! Run: `cargo bench --bench store -- [COMMITS] [BATCH] [SCENARIO]` (defaults 2000 and 8: a flood
//! of 16 connections commits about 8 creates at a time). Every file goes to a private
//! temporary directory that is removed at the end.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use labgate::queue::SessionId;
use labgate::store::{Op, Store, StoredSession};
use nix::sys::resource::{getrusage, UsageWho};

/// Counters of this thread: write syscalls, bytes passed to them, bytes sent to the
/// block layer, and CPU time (user + system).
#[derive(Clone, Copy, Default)]
struct Counts {
    syscw: u64,
    wchar: u64,
    write_bytes: u64,
    cpu: Duration,
}

fn counts() -> Counts {
    let io = std::fs::read_to_string("/proc/thread-self/io").unwrap_or_default();
    let field = |name: &str| {
        io.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(": ")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    let cpu = getrusage(UsageWho::RUSAGE_THREAD).map_or(Duration::ZERO, |u| {
        let t = |tv: nix::sys::time::TimeVal| {
            Duration::new(tv.tv_sec() as u64, tv.tv_usec() as u32 * 1000)
        };
        t(u.user_time()) + t(u.system_time())
    });
    Counts {
        syscw: field("syscw"),
        wchar: field("wchar"),
        write_bytes: field("write_bytes"),
        cpu,
    }
}

fn session(seq: u64) -> StoredSession {
    StoredSession {
        id: SessionId::random(),
        seq,
        created_ms: 1_764_700_000_000 + seq,
    }
}

/// Runs `commits` commits of what `batch(seq)` returns, after 100 unmeasured ones, and
/// prints one row of the table.
fn scenario(name: &str, commits: u64, mut batch: impl FnMut() -> Vec<Op>) {
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
        .expect("chmod 700");
    let (store, _) = Store::open(&dir.path().join("queue.redb")).expect("open the store");
    for _ in 0..100 {
        store.apply(&batch()).expect("commit");
    }
    let (before, started) = (counts(), Instant::now());
    for _ in 0..commits {
        store.apply(&batch()).expect("commit");
    }
    let (after, took) = (counts(), started.elapsed());
    let per = |a: u64, b: u64| (a - b) as f64 / commits as f64;
    println!(
        "| {name} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} |",
        per(after.syscw, before.syscw),
        per(after.wchar, before.wchar),
        per(after.write_bytes, before.write_bytes),
        (after.cpu - before.cpu).as_secs_f64() * 1e6 / commits as f64,
        took.as_secs_f64() * 1e6 / commits as f64,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; only numbers are ours.
    let mut numbers = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse::<u64>().ok());
    let commits = numbers.next().unwrap_or(2000).max(1);
    let per_commit = numbers.next().unwrap_or(8).max(1);
    // 1, 2 or 3: that scenario alone (for callgrind); anything else: all three.
    let only = numbers.next().unwrap_or(0);
    let run = |n: u64| !(1..=3).contains(&only) || only == n;
    println!(
        "{commits} commits of {per_commit} changes each (after 100 unmeasured), per commit:\n"
    );
    println!("| commit | write syscalls | bytes written | bytes to disk | CPU us | wall us |");
    println!("|---|---|---|---|---|---|");
    let mut next = 1u64;
    if run(1) {
        scenario("creates only", commits, || {
            (0..per_commit)
                .map(|_| {
                    next += 1;
                    Op::Insert(session(next - 1), None, next)
                })
                .collect()
        });
    }
    // A queue that stays `depth` deep: each commit creates a batch and ends the oldest
    // batch (the head is what a queue mostly ends).
    let depth = 64u64;
    let mut next = 1u64;
    if run(2) {
        scenario("creates + deletes of the oldest", commits, || {
            let mut ops: Vec<Op> = (0..per_commit)
                .map(|_| {
                    next += 1;
                    Op::Insert(session(next - 1), None, next)
                })
                .collect();
            if next > depth + per_commit {
                let oldest = next - depth - per_commit;
                ops.extend((oldest..oldest + per_commit).map(Op::Remove));
            }
            ops
        });
    }
    // The delete that must record a floor: the newest session ends.
    let (mut next, mut live) = (1u64, None);
    if run(3) {
        scenario(
            "alternately a create and a delete of it",
            commits,
            || match live.take() {
                Some(seq) => vec![Op::Remove(seq)],
                None => {
                    live = Some(next);
                    next += 1;
                    vec![Op::Insert(session(next - 1), None, next)]
                }
            },
        );
    }
}
