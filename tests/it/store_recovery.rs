//! The durable store through a disk-full episode (issue 10 #3): while the disk is full,
//! creates and deletes answer 503, `/readyz` says so and the failures are counted; once
//! space is free again, the holder's DELETE works, `/readyz` recovers, and sessions the
//! reaper ended meanwhile do not come back at the next start.
//!
//! The store lives on a small tmpfs this test mounts (it needs root, as `.ci/run` has)
//! and unmounts in `Drop`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::*;

/// A tmpfs of `size` mounted on a fresh directory, private (0700), unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = run_bounded(
            std::process::Command::new("mount").args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
                &dir.path().to_string_lossy(),
            ]),
            Duration::from_secs(10),
        );
        assert!(
            out.status.success(),
            "this test mounts a tmpfs and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a labgate that is still stopping must not keep the mount behind.
        let _ = run_bounded(
            std::process::Command::new("umount")
                .arg("-l")
                .arg(self.dir.path()),
            Duration::from_secs(10),
        );
    }
}

/// Fills the file system holding `dir` with one file until it is full; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0x5au8; 4096];
    // Bounded: the tmpfs is a few MiB.
    for _ in 0..1_000_000 {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    let _ = f.sync_all();
    path
}

async fn get_status(gw: &Gateway, path: &str) -> u16 {
    client()
        .get(gw.url(path))
        .send()
        .await
        .expect("GET")
        .status()
        .as_u16()
}

async fn post_session(gw: &Gateway) -> u16 {
    client()
        .post(gw.url("/session"))
        .send()
        .await
        .expect("POST /session")
        .status()
        .as_u16()
}

/// Polls `f` every 50 ms, at most `tries` times, until it is true.
async fn eventually<F, Fut>(tries: usize, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..tries {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_does_not_poison_the_store_and_reaped_sessions_stay_gone() {
    let fs = Tmpfs::mount("8m");
    let up = Upstream::start().await;
    // labgate refuses a missing state directory (it never creates one itself).
    std::fs::create_dir(fs.path().join("store")).expect("state directory on the tmpfs");
    // The holder never idles out; waiting sessions are reaped after 10 s: long enough
    // that none is reaped (a removal commit, which may fit in pages redb freed, would
    // make the store writable again) before the checks of the full store below, even on
    // a loaded machine.
    let cfg = Cfg::new(up.addr)
        .timeouts("300s", "10s")
        .state_path(&fs.path().join("store/queue.redb"));
    let mut gw = Gateway::start(&cfg).await;
    let (holder, _) = create_session(&gw).await;
    let (doomed, _) = create_session(&gw).await;
    assert_eq!(get_status(&gw, "/readyz").await, 204);

    let filler = fill(fs.path());
    let size = std::fs::metadata(fs.path().join("store/queue.redb")).map(|m| m.len());
    // redb writes into space its file already has; the first commit that needs more
    // fails. Bounded: the file grows by at least a page per few hundred sessions.
    let mut created = 0;
    while created < 20_000 && post_session(&gw).await == 201 {
        created += 1;
    }
    println!("store file {size:?} bytes; {created} creates fitted before the disk was full");
    // The store failed: a create is refused and leaves nothing in the queue, and
    // labgate says it is not ready (nothing writes for the next 10 s: no session idles
    // out before then, and a failed store is probed only 5 s later).
    assert_eq!(post_session(&gw).await, 503);
    assert_eq!(get_status(&gw, "/readyz").await, 503);
    // Each refused create is undone (its record removed, which writes nothing): that
    // must not pass for the disk taking writes again.
    for _ in 0..3 {
        assert_eq!(post_session(&gw).await, 503);
    }
    for _ in 0..10 {
        assert_eq!(gw.metric("labgate_state_store_writable").await, Some(0.0));
    }
    assert_eq!(get_status(&gw, "/readyz").await, 503);
    assert!(
        gw.metric("labgate_state_write_failures_total")
            .await
            .unwrap_or(0.0)
            >= 2.0
    );
    // The refused creates left nothing in the queue.
    assert_eq!(
        gw.metric("labgate_queue_depth").await,
        Some(2.0 + f64::from(created))
    );
    // The waiting sessions idle out while the disk is full: ended, their removal pending.
    // (Watched through the queue depth: a GET of the session would refresh it.)
    assert!(
        eventually(600, || async {
            gw.metric("labgate_queue_depth").await == Some(1.0)
        })
        .await,
        "the waiting sessions were not reaped"
    );

    std::fs::remove_file(&filler).expect("free the space");
    // The reaper tries the store on its tick: ready again without any client.
    assert!(
        eventually(200, || async { get_status(&gw, "/readyz").await == 204 }).await,
        "/readyz never recovered:\n{}",
        gw.log_tail()
    );
    assert_eq!(gw.metric("labgate_state_store_writable").await, Some(1.0));
    assert_eq!(delete_session(&gw, &holder).await, 204);
    let (after, _) = create_session(&gw).await;

    // A restart restores exactly what is live: neither the deleted holder nor the
    // sessions reaped while the disk was full come back.
    assert!(gw.terminate().await.is_some(), "labgate did not stop");
    let gw = Gateway::start(&cfg).await;
    assert_eq!(
        get_session(&gw, &holder).await.0,
        404,
        "deleted holder is back"
    );
    assert_eq!(
        get_session(&gw, &doomed).await.0,
        404,
        "reaped session is back"
    );
    assert_eq!(get_session(&gw, &after).await.0, 200);
    assert_eq!(gw.metric("labgate_queue_depth").await, Some(1.0));
}
