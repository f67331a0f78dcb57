//! Group commit for the durable queue: one thread owns the [`Store`] and writes every
//! change waiting on it as one journal record (one fdatasync), then answers each waiter;
//! when jobs pause (or the journal has grown) it moves the journal's changes into redb in
//! one transaction (a checkpoint; see `store::journal`).
//!
//! Why: a commit is one fsync (milliseconds on a slow disk); with one commit per
//! `POST /session` under the queue lock, creates ran at ~4k/s where memory does ~76k/s.
//! Here writers queue their changes (in queue order: they submit under the queue lock)
//! and wait without any lock; while one commit runs, the next batch gathers.
//!
//! Owns recovery too. After a failed commit the journal may end in part of a record
//! (and redb refuses every later write on a handle that saw an I/O error, `PreviousIo`),
//! so the committer drops the handle, reopens the file (replaying the journal's whole
//! records into redb) and tries the batch once more; a batch that still fails is
//! reported to its waiters (who retry or give up as their caller decides) and the store
//! stays "unwritable" until a commit succeeds. [`Committer::writable`] feeds `/readyz` and a gauge; failures are counted.
//! Must never decide what to write: the callers (`state`) do.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::metrics::Metrics;
pub use crate::store::Op;
use crate::store::{Store, StoreError};

/// The most changes one transaction takes; the rest go into the next one.
const MAX_BATCH: usize = 4096;
/// How long after a failure the store is left alone unless there is real work for it.
const PROBE_AFTER: Duration = Duration::from_secs(5);
/// How many times the committer lets the gateway run before a commit, while each time
/// brings more jobs.
const GATHER_YIELDS: usize = 4;
/// How long without a job before the journal's changes go into redb.
const CHECKPOINT_IDLE: Duration = Duration::from_millis(20);

/// A commit failed; the changes it carried may or may not be on disk.
#[derive(Debug, Clone, thiserror::Error)]
#[error("queue store: {0}")]
pub struct CommitFailed(Arc<str>);

type Outcome = Result<Duration, CommitFailed>;

struct Job {
    ops: Vec<Op>,
    done: oneshot::Sender<Done>,
}

/// A commit's outcome on its way to the waiters of one batch. The store thread wakes
/// only the first waiter that still listens and gives it the others; when that `Done` is
/// dropped (read by its waiter, or with a request that went away), it wakes the others,
/// from the gateway's runtime.
///
/// Why: waking a task from a foreign thread costs a runtime wake-up (an eventfd write,
/// and on a core shared with the gateway often a context switch there and back) per
/// waiter; a wake from inside the runtime is a push onto its run queue.
struct Done {
    outcome: Outcome,
    rest: std::vec::IntoIter<oneshot::Sender<Done>>,
}

impl Drop for Done {
    fn drop(&mut self) {
        for waiter in std::mem::take(&mut self.rest) {
            // A waiter that went away (its request was cancelled) needs no answer.
            let _ = waiter.send(Done {
                outcome: self.outcome.clone(),
                rest: Vec::new().into_iter(),
            });
        }
    }
}

/// Gives `outcome` to the first of `waiters` that still listens, with the rest to wake.
fn hand_over(outcome: &Outcome, mut waiters: std::vec::IntoIter<oneshot::Sender<Done>>) {
    while let Some(first) = waiters.next() {
        let done = Done {
            outcome: outcome.clone(),
            rest: std::mem::take(&mut waiters),
        };
        match first.send(done) {
            Ok(()) => return,
            // Nobody listens there: take the rest back and try the next one.
            Err(mut done) => waiters = std::mem::take(&mut done.rest),
        }
    }
}

/// The handle the rest of labgate submits changes through.
pub struct Committer {
    jobs: mpsc::Sender<Job>,
    writable: Arc<AtomicBool>,
    checkpoints: Arc<AtomicU64>,
    /// Whether everything committed is in redb (the journal has nothing pending).
    settled: Arc<AtomicBool>,
    last_failure: Arc<Mutex<Option<Instant>>>,
}

impl Committer {
    /// Starts the committer thread, which owns `store` (opened from `path`).
    pub fn start(
        store: Store,
        path: &Path,
        metrics: &'static Metrics,
    ) -> std::io::Result<Committer> {
        let (jobs, rx) = mpsc::channel();
        let writable = Arc::new(AtomicBool::new(true));
        let last_failure = Arc::new(Mutex::new(None));
        let checkpoints = Arc::new(AtomicU64::new(0));
        let settled = Arc::new(AtomicBool::new(true));
        metrics.state_store_writable.set(1);
        let mut worker = Worker {
            store: Some(store),
            path: path.to_path_buf(),
            writable: writable.clone(),
            checkpoints: checkpoints.clone(),
            settled: settled.clone(),
            last_failure: last_failure.clone(),
            metrics,
        };
        std::thread::Builder::new()
            .name("labgate-store".to_string())
            .spawn(move || worker.run(rx))?;
        Ok(Committer {
            jobs,
            writable,
            checkpoints,
            settled,
            last_failure,
        })
    }

    /// Queues `ops`; the future resolves once they are durable (or failed). Call it in
    /// queue order (under the queue lock); await it after releasing the lock.
    pub fn submit(&self, ops: Vec<Op>) -> impl std::future::Future<Output = Outcome> + use<> {
        let (done, rx) = oneshot::channel();
        let sent = self.jobs.send(Job { ops, done }).is_ok();
        async move {
            if !sent {
                return Err(CommitFailed("the store thread has stopped".into()));
            }
            match rx.await {
                // Dropping `done` wakes the rest of its batch.
                Ok(done) => done.outcome.clone(),
                Err(_) => Err(CommitFailed("the store thread has stopped".into())),
            }
        }
    }

    /// How many checkpoints have succeeded.
    pub fn checkpoints(&self) -> u64 {
        self.checkpoints.load(Ordering::SeqCst)
    }

    /// Waits (at most `within`) until everything committed is in redb and the journal is
    /// empty, as the committer leaves it once jobs pause; says whether it is. For a clean
    /// stop: a copy of the store file alone is then the whole queue.
    pub fn settle(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.settled.load(Ordering::SeqCst) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(CHECKPOINT_IDLE / 4);
        }
    }

    /// Whether the last commit succeeded.
    pub fn writable(&self) -> bool {
        self.writable.load(Ordering::SeqCst)
    }

    /// Whether an unwritable store is due a probe ([`Op::Touch`]) at `now`: its last
    /// failure is at least [`PROBE_AFTER`] old. A store that failed is not retried in
    /// a tight loop, and is found writable again without waiting for a client.
    pub fn probe_due(&self, now: Instant) -> bool {
        if self.writable() {
            return false;
        }
        let last = *self.last_failure.lock().unwrap_or_else(|p| p.into_inner());
        last.is_none_or(|t| now.saturating_duration_since(t) >= PROBE_AFTER)
    }
}

struct Worker {
    /// `None` after a failure that could not be recovered: reopened at the next batch.
    store: Option<Store>,
    path: PathBuf,
    writable: Arc<AtomicBool>,
    checkpoints: Arc<AtomicU64>,
    settled: Arc<AtomicBool>,
    last_failure: Arc<Mutex<Option<Instant>>>,
    metrics: &'static Metrics,
}

impl Worker {
    fn run(&mut self, rx: mpsc::Receiver<Job>) {
        // Kept between batches, so a batch allocates nothing once they have grown.
        let (mut ops, mut waiters) = (Vec::new(), Vec::new());
        loop {
            // Changes in the journal go into redb once the flow of jobs pauses.
            let pending = self.store.as_ref().is_some_and(Store::has_pending);
            let first = if pending {
                match rx.recv_timeout(CHECKPOINT_IDLE) {
                    Ok(job) => job,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.checkpoint();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                }
            };
            // On a core shared with the gateway, let it run first: whatever it accepts
            // meanwhile joins this commit instead of waiting for the next one. Again while
            // that brings more (bounded): the gateway is still working through requests.
            // Moved, not cloned: an op may carry an owner's name.
            ops.extend(first.ops);
            waiters.push(first.done);
            for _ in 0..GATHER_YIELDS {
                std::thread::yield_now();
                let mut arrived = 0;
                while ops.len() < MAX_BATCH {
                    let Ok(job) = rx.try_recv() else { break };
                    ops.extend(job.ops);
                    waiters.push(job.done);
                    arrived += 1;
                }
                if arrived == 0 || ops.len() >= MAX_BATCH {
                    break;
                }
            }
            let outcome = self.commit(&mut ops);
            ops.clear();
            hand_over(&outcome, std::mem::take(&mut waiters).into_iter());
            // After the answers: a checkpoint delays only the next batch.
            if self.store.as_ref().is_some_and(Store::checkpoint_due) {
                self.checkpoint();
            }
        }
        // Everybody has gone (labgate is stopping): leave redb whole and the journal empty.
        self.checkpoint();
    }

    /// Moves the journal's changes into redb. A failure loses nothing (they stay in the
    /// journal); the store is reopened at the next batch, which replays them.
    fn checkpoint(&mut self) {
        let Some(store) = &mut self.store else { return };
        if !store.has_pending() {
            self.settled.store(true, Ordering::SeqCst);
            return;
        }
        let started = Instant::now();
        match store.checkpoint() {
            Ok(()) => {
                let took = started.elapsed().as_secs_f64();
                self.metrics.state_checkpoint_seconds.observe(took);
                self.checkpoints.fetch_add(1, Ordering::SeqCst);
                self.settled.store(true, Ordering::SeqCst);
            }
            Err(e) => {
                tracing::error!(error = %e, "queue store checkpoint failed; reopening it");
                self.store = None;
            }
        }
    }

    /// Makes `ops` durable in one journal record; on failure reopens the store (which
    /// replays the journal up to its last whole record) and tries again once.
    fn commit(&mut self, ops: &mut Vec<Op>) -> Outcome {
        let mut last = None;
        for attempt in 0..2 {
            if self.store.is_none() {
                match Store::open(&self.path) {
                    Ok((store, _)) => {
                        tracing::warn!(path = %self.path.display(), "queue store reopened");
                        self.store = Some(store);
                    }
                    Err(e) => {
                        last = Some(e);
                        break;
                    }
                }
            }
            let Some(store) = &mut self.store else { break };
            // Before the append: `settle` must never see the journal's changes as in redb.
            self.settled.store(false, Ordering::SeqCst);
            match store.log(ops) {
                Ok(took) => {
                    self.metrics.state_write_seconds.observe(took.as_secs_f64());
                    if !self.writable.swap(true, Ordering::SeqCst) {
                        tracing::warn!("queue store writable again");
                    }
                    self.metrics.state_store_writable.set(1);
                    return Ok(took);
                }
                Err(e) => {
                    tracing::error!(error = %e, attempt, "queue store commit failed; reopening it");
                    // Drop the handle first: redb locks the file while it is open.
                    self.store = None;
                    last = Some(e);
                }
            }
        }
        *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.metrics.state_write_failures.inc();
        self.metrics.state_store_writable.set(0);
        self.writable.store(false, Ordering::SeqCst);
        let why = last.map_or_else(|| "cannot open".to_string(), |e: StoreError| e.to_string());
        Err(CommitFailed(why.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::metrics;
    use crate::queue::SessionId;
    use crate::store::StoredSession;

    fn session(seq: u64) -> StoredSession {
        StoredSession {
            id: SessionId::random(),
            seq,
            created_ms: 1_700_000_000_000 + seq,
        }
    }

    /// `n` waiters of one batch: their senders, in submit order, and their receivers.
    fn batch(n: usize) -> (Vec<oneshot::Sender<Done>>, Vec<oneshot::Receiver<Done>>) {
        (0..n).map(|_| oneshot::channel()).unzip()
    }

    fn outcome_of(rx: &mut oneshot::Receiver<Done>) -> Option<Outcome> {
        rx.try_recv().ok().map(|done| done.outcome.clone())
    }

    #[test]
    fn a_batch_wakes_one_waiter_and_it_wakes_the_others_as_it_reads() {
        let (senders, mut receivers) = batch(4);
        hand_over(&Ok(Duration::from_millis(3)), senders.into_iter());
        // Only the first has its answer until it reads it.
        let first = receivers[0]
            .try_recv()
            .expect("the first waiter is answered");
        assert!(receivers[1..].iter_mut().all(|rx| rx.try_recv().is_err()));
        assert_eq!(first.outcome.as_ref().unwrap(), &Duration::from_millis(3));
        drop(first);
        for rx in &mut receivers[1..] {
            assert_eq!(outcome_of(rx).unwrap().unwrap(), Duration::from_millis(3));
        }
    }

    #[test]
    fn waiters_that_went_away_before_or_after_the_answer_do_not_strand_the_others() {
        // The first two requests were cancelled before the commit ended: the third gets
        // the answer (and the others to wake).
        let (senders, mut receivers) = batch(5);
        let mut later = receivers.split_off(2);
        drop(receivers);
        hand_over(&Err(CommitFailed("disk full".into())), senders.into_iter());
        // The one holding the answer goes away without reading it.
        drop(later.remove(0));
        for rx in &mut later {
            let got = outcome_of(rx).expect("answered");
            assert_eq!(got.unwrap_err().to_string(), "queue store: disk full");
        }
        // Nobody listening at all: nothing to do, nothing lost.
        let (senders, receivers) = batch(3);
        drop(receivers);
        hand_over(&Ok(Duration::ZERO), senders.into_iter());
    }

    /// A committer on a fresh store in a private temporary directory (the store refuses
    /// a directory others can enter); the directory lives as long as the first value.
    fn fresh_committer() -> (tempfile::TempDir, PathBuf, Committer) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let path = dir.path().join("q.redb");
        let (store, _) = Store::open(&path).unwrap();
        let c = Committer::start(store, &path, metrics()).unwrap();
        (dir, path, c)
    }

    #[tokio::test]
    async fn changes_submitted_together_are_committed_in_order() {
        let (_dir, path, c) = fresh_committer();
        let (a, b) = (session(1), session(2));
        // Submitted in queue order without awaiting: they may share one transaction.
        let waits = [
            c.submit(vec![Op::Insert(a, None, 2)]),
            c.submit(vec![Op::Insert(b, None, 3)]),
            c.submit(vec![Op::Remove(1)]),
        ];
        for w in waits {
            w.await.unwrap();
        }
        assert!(c.writable());
        drop(c);
        // The thread ends when the handle is gone; the file is free once it has.
        let mut restored = None;
        for _ in 0..200 {
            if let Ok((_, r)) = Store::open(&path) {
                restored = Some(r);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let restored = restored.expect("store released");
        assert_eq!(restored.sessions, vec![b]);
        assert_eq!(restored.next_seq, 3);
    }

    /// The journal goes into redb when jobs pause: its changes do not wait for a
    /// journal that fills up (or a restart) to reach the store file.
    #[tokio::test]
    async fn the_journal_is_checkpointed_when_jobs_pause() {
        let (_dir, _path, c) = fresh_committer();
        c.submit(vec![Op::Insert(session(1), None, 2)])
            .await
            .unwrap();
        // Bounded: the pause is CHECKPOINT_IDLE (20 ms); 5 s is far beyond it.
        let mut done = false;
        for _ in 0..500 {
            if c.checkpoints() == 1 {
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(done, "no checkpoint after a pause");
        // Nothing new in the journal: no checkpoint to make, however long the pause.
        tokio::time::sleep(CHECKPOINT_IDLE * 5).await;
        assert_eq!(c.checkpoints(), 1);
    }
}
