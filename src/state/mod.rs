//! The state every request and background task shares: one cheap handle, [`Shared`].
//!
//! Owns the one lock around the queue and the registry of live connections to cut, and
//! the bookkeeping around each queue operation: the durable write (acknowledged only once
//! committed), cutting an ended session's connections, metrics, the audit trail (tracing
//! target `labgate::audit`), the long-poll wake-ups and the count of forwarded requests a
//! graceful shutdown waits for.
//!
//! The lock is a std `Mutex`, never held across `.await`. It covers the queue and the
//! connection registry, so "session ended" and "request registered" cannot interleave.
//! Store writes go through the group committer (`commit`): submitted under the lock, so
//! they reach the store in queue order, and awaited after it is released, so heartbeats,
//! polls and the gate never wait on the disk. A create joins the queue first and is
//! acknowledged after its commit (undone if the commit fails: no store record without a
//! queue entry, no queue entry the client was told about without a record); a delete is
//! committed first and applied after, so an acknowledged delete never comes back.
//! Metrics and logs are recorded after the lock is released.
//!
//! With a handoff barrier (an upstream with a reset hook or a health check, contract §8)
//! the end of the holder starts a reset instead of a promotion; the bridge's lanes report
//! back through [`bridge::Turns`], which this handle implements, and the last report
//! promotes the next holder.
//!
//! Submodules add to the same handle, one concern each: `open` (building it, restoring
//! the queue), `lab` (`/lab` requests and tunnels), `polls` (status and long-polls),
//! `picture` (the raw picture and the estimates), `turns` (the bridge's reports),
//! `reload` (the config in force, and replacing it without a restart).
//!
//! It exposes operations and one raw [`Picture`] of the queue; the views built from it
//! (the admin listing, the status page) live with their modules, which import this one
//! and never the other way round. Must never render anything.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::sync::{watch, Notify};

use crate::bridge::{self, machine::Wanted, Bridge};
use crate::commit::{CommitFailed, Committer, Op};
use crate::config::Config;
use crate::cut::{self, Ticket};
use crate::gate::{self, Denied, SessionHeader, Verdict};
use crate::history::History;
use crate::identity::Identity;
use crate::label::Label;
use crate::limits::{self, CreateRefusal, CreateRejection, RateKey, SessionLimiter};
use crate::metrics::{metrics, Metrics};
use crate::ownership::{Access, Owners};
use crate::queue::{Change, EndReason, Queue, QueueError, SessionId, SessionView, Status};
use crate::store::{self, Store, StoreError, StoredSession};
use crate::tombstone::{Tombstone, Tombstones};

pub use picture::{Picture, SessionInfo};
pub use reload::{Current, ReloadRefused, Reloaded, Trigger};

/// Audit events go to their own target so operators can route them separately.
pub const AUDIT: &str = "labgate::audit";

/// The shortest tag prefix [`Shared::find_session`] accepts.
pub const MIN_TAG_PREFIX: usize = 4;

/// Why an operator's session name matched no single session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FindError {
    #[error("no live session has that id or tag")]
    NotFound,
    #[error("more than one live session's tag starts so; give more digits")]
    Ambiguous,
}

/// Why `POST /session` did not create a session.
#[derive(Debug, thiserror::Error)]
pub enum CreateFailure {
    #[error("refused: {}", .0.label())]
    Refused(CreateRefusal),
    /// An operator is draining the lab.
    #[error("the lab is draining")]
    Draining,
    /// labgate is shutting down (SIGTERM): a session made now would be lost.
    #[error("shutting down")]
    ShuttingDown,
    /// Nothing was created.
    #[error(transparent)]
    Store(#[from] StoreFailed),
}

/// The session could not be recorded (or its end could not); the operation was not
/// done. Callers answer `503`; the cause is logged where it happened and kept here.
#[derive(Debug, thiserror::Error)]
pub enum StoreFailed {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Commit(#[from] CommitFailed),
    /// The queue refused the record: an id collision or exhausted sequence numbers.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// A `/lab` request the gate let through: the session, its fencing number and the
/// ticket that must be handed back to [`Shared::end_request`].
#[derive(Debug)]
pub struct Allowed {
    pub id: SessionId,
    pub seq: u64,
    pub ticket: Ticket,
}

/// Why a device tunnel was not registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelDenied {
    /// The gate's refusal, as for any `/lab` request.
    Gate(Denied),
    /// The ACTIVE session `0` already holds `tunnels.max_per_session` tunnels.
    Limit(SessionId),
}

/// Facts about a session that the queue does not need.
struct Meta {
    client: Option<IpAddr>,
    created_ms: u64,
    /// What the session says about itself (`POST /session`'s body): shown, never
    /// trusted.
    label: Label,
    /// Wakes this session's long-polls when their answer changes (ACTIVE or gone).
    wake: Arc<Notify>,
}

impl Meta {
    fn new(client: Option<IpAddr>, created_ms: u64, label: Label) -> Meta {
        Meta {
            client,
            created_ms,
            label,
            wake: Arc::new(Notify::new()),
        }
    }
}

struct Core {
    queue: Queue,
    conns: cut::Registry,
    /// Removals the store has not yet recorded (a failed write is retried by the reaper).
    unsaved_removals: Vec<u64>,
    meta: HashMap<SessionId, Meta>,
    /// Live sessions per client, for the per-client cap (restored sessions, whose
    /// client is unknown, are not counted).
    per_client: limits::LiveSessions,
    history: History,
    /// Identity mode: who owns which session.
    owners: Owners,
    /// Why recent turns ended (seq, reason), for the end hooks; bounded.
    recent_ends: VecDeque<(u64, EndReason)>,
    /// The turn whose reset holds the queue, and the lanes still working on it.
    handoff: Option<(u64, BTreeSet<usize>)>,
    /// A lane could not reset the lab: it stays held until an operator retries.
    handoff_failed: bool,
    /// The reset last recorded beside the store, to record each change once.
    handoff_recorded: Option<u64>,
    bridge: Arc<Bridge>,
    /// How recently ended sessions ended.
    tombstones: Tombstones,
}

/// How many recent end reasons are kept for the end hooks.
const RECENT_ENDS: usize = 64;

pub struct Shared {
    /// The config in force, swapped whole by a reload (`reload`); read it through
    /// [`Shared::config`].
    config: arc_swap::ArcSwap<Current>,
    /// The file a reload reads again.
    config_path: std::sync::OnceLock<std::path::PathBuf>,
    /// Held while a reload compares and swaps.
    reloading: Mutex<()>,
    /// Upstream sessions, per-turn tokens and handoff hooks (§8).
    pub bridge: Arc<Bridge>,
    core: Mutex<Core>,
    /// Replaced by a reload that changes `[rate_limit]`.
    limiter: arc_swap::ArcSwap<SessionLimiter>,
    metrics: &'static Metrics,
    /// Forwarded requests (upgraded connections included) still running.
    forwarded_in_flight: AtomicUsize,
    /// The durable store's writer; `None` keeps the queue in memory only.
    committer: Option<Committer>,
    /// Bumped after every queue change; the bridge's lanes (one per upstream) watch it.
    /// Long-polls do not: each waits on its own session's `Meta::wake`.
    changes: watch::Sender<u64>,
    /// Long-polls woken, for the tests that prove only the right ones are.
    #[cfg(test)]
    poll_wakeups: AtomicUsize,
    /// Operator's drain: new sessions are refused, the queue goes on.
    draining: AtomicBool,
    /// SIGTERM/SIGINT received: new sessions are refused.
    shutting_down: AtomicBool,
    probes: Mutex<limits::ProbeDetector>,
}

/// Queue figures read under the lock, recorded after it is released.
struct Snapshot {
    depth: usize,
    waiting: usize,
    hold: Duration,
}

/// What one operation did, to record once the lock is released.
struct Outcome {
    change: Change,
    snapshot: Snapshot,
    cut: usize,
    /// Owners of `change.ended`, in the same order, and of the promoted session.
    ended_owners: Vec<Option<Identity>>,
    promoted_owner: Option<Identity>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Core {
    fn snapshot(&self, now: Instant) -> Snapshot {
        Snapshot {
            depth: self.queue.len(),
            waiting: self.queue.waiting(),
            hold: self.queue.active_hold(now),
        }
    }

    /// Everything that follows a queue change, under the lock: cut the ended sessions'
    /// connections and forget their metadata.
    fn settle(&mut self, change: Change, now: Instant) -> Outcome {
        let mut cut = 0;
        let mut ended_owners = Vec::with_capacity(change.ended.len());
        for e in &change.ended {
            cut += self.conns.cut_because(&e.id, e.reason.as_str());
            if let Some(meta) = self.meta.remove(&e.id) {
                meta.wake.notify_waiters();
                if let Some(client) = meta.client {
                    self.per_client.ended(client);
                }
            }
            let owner = self.owners.owner(&e.id).cloned();
            self.tombstones.insert(e.id, e.reason, owner.clone(), now);
            ended_owners.push(owner);
            self.owners.release(&e.id);
            // Estimates learn from completed holds only: a kicked, stale or expired
            // hold says nothing about how long people use the lab (issue 15 #9).
            if let (Some(held), EndReason::Deleted) = (e.held, e.reason) {
                if !held.is_zero() {
                    self.history.hold_ended(held);
                }
            }
            if self.recent_ends.len() == RECENT_ENDS {
                self.recent_ends.pop_front();
            }
            self.recent_ends.push_back((e.seq, e.reason));
        }
        let mut promoted_owner = None;
        if let Some(p) = &change.promoted {
            // A session promoted as it was created (empty queue) never waited; only a
            // promotion that follows an end is a real wait.
            if !change.ended.is_empty() {
                self.history.promoted(p.waited);
            }
            promoted_owner = self.owners.owner(&p.id).cloned();
            if let Some(meta) = self.meta.get(&p.id) {
                meta.wake.notify_waiters();
            }
        }
        // Under the lock, before anyone hears of the change: a restart resumes a reset
        // that was under way instead of handing the lab on.
        let resetting = self.queue.resetting();
        if resetting != self.handoff_recorded {
            self.bridge.record_handoff(resetting);
            self.handoff_recorded = resetting;
        }
        Outcome {
            snapshot: self.snapshot(now),
            change,
            cut,
            ended_owners,
            promoted_owner,
        }
    }
}

impl Shared {
    pub fn metrics(&self) -> &'static Metrics {
        self.metrics
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock cannot leave the queue half-updated in a way
        // that matters more than stopping the gateway would: keep serving.
        self.core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, o: Outcome) {
        let m = self.metrics;
        m.record_change(&o.change);
        m.record_queue(o.snapshot.depth, o.snapshot.waiting, o.snapshot.hold);
        if o.cut > 0 {
            m.connections_cut.inc_by(o.cut as u64);
        }
        for (e, owner) in o.change.ended.iter().zip(&o.ended_owners) {
            tracing::info!(
                target: AUDIT,
                event = "session_ended",
                session = %e.id.tag(),
                identity = owner.as_ref().map(Identity::as_str),
                seq = e.seq,
                reason = e.reason.as_str(),
                was_active = e.was_active,
                held_secs = e.held.map(|h| h.as_secs_f64()),
                requests_cut = e.inflight,
            );
        }
        if let Some(p) = &o.change.promoted {
            tracing::info!(
                target: AUDIT,
                event = "session_promoted",
                session = %p.id.tag(),
                identity = o.promoted_owner.as_ref().map(Identity::as_str),
                seq = p.seq,
                waited_secs = p.waited.as_secs_f64(),
            );
        }
        if !o.change.is_empty() {
            self.changes.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// `POST /session` without a label: see [`Shared::create_labelled`].
    pub async fn create_session(
        &self,
        client: IpAddr,
        caller: Option<&Identity>,
        now: Instant,
    ) -> Result<(SessionId, usize), CreateFailure> {
        self.create_labelled(client, caller, Label::default(), now)
            .await
    }

    /// `POST /session`: rate limit, caps (queue, and per identity in identity mode),
    /// append, then the durable write; answered once the write is committed (a failed
    /// write undoes the append). `caller`: the identity opening it, in identity mode;
    /// `label`: the owner and note it claims (stored and shown, nothing else).
    pub async fn create_labelled(
        &self,
        client: IpAddr,
        caller: Option<&Identity>,
        label: Label,
        now: Instant,
    ) -> Result<(SessionId, usize), CreateFailure> {
        let identity = caller.map(Identity::as_str);
        let refused = |r: CreateRefusal| {
            self.metrics.count_create_rejected(r.reason());
            tracing::info!(target: AUDIT, event = "session_refused", client = %client, identity, reason = r.label());
            CreateFailure::Refused(r)
        };
        if self.shutting_down.load(Ordering::SeqCst) {
            self.metrics
                .count_create_rejected(CreateRejection::Draining);
            return Err(CreateFailure::ShuttingDown);
        }
        if self.is_draining() {
            self.metrics
                .count_create_rejected(CreateRejection::Draining);
            return Err(CreateFailure::Draining);
        }
        let key = match caller {
            Some(who) => RateKey::Identity(who.clone()),
            None => RateKey::from(client),
        };
        self.limiter.load().check(key).map_err(refused)?;
        let id = SessionId::random();
        let created_ms = unix_ms(SystemTime::now());
        let config = self.config();
        let (position, outcome, commit, logged) = {
            let mut core = self.lock();
            // Queue full first: when nobody can get in, everybody hears the same answer.
            limits::check_capacity(core.queue.len(), config.queue.max_sessions).map_err(refused)?;
            if let (Some(who), Some(cfg)) = (caller, &config.identity) {
                core.owners.admit(who, cfg.max_sessions).map_err(|c| {
                    refused(CreateRefusal::IdentityCap {
                        live: c.live,
                        cap: c.cap,
                    })
                })?;
            }
            if caller.is_none() {
                // In identity mode the cap is per identity (above): one front proxy's
                // address may carry everybody.
                core.per_client
                    .check(client, config.queue.max_sessions_per_client)
                    .map_err(refused)?;
            }
            // A v4 collision is not a realistic event; were it to happen, the caller
            // gets a 503 rather than a silently shared session. Nothing is written yet.
            let (position, promoted) = core.queue.create(id, now).map_err(|e| {
                tracing::error!(error = %e, "cannot create a session");
                StoreFailed::from(e)
            })?;
            // Submitted under the lock: the store sees changes in queue order.
            let commit = self.committer.as_ref().map(|c| {
                let seq = core.queue.view(&id).map_or(0, |v| v.seq);
                let record = StoredSession {
                    id,
                    seq,
                    created_ms,
                };
                let owner = caller.map(|who| who.as_str().to_string());
                let mut ops = vec![Op::Insert(record, owner, seq.saturating_add(1))];
                if !label.is_empty() {
                    ops.push(Op::Label(seq, label.clone()));
                }
                c.submit(ops)
            });
            let logged = (
                label.owner.as_deref().map(crate::logfield::text),
                label.note.as_deref().map(crate::logfield::text),
            );
            core.meta
                .insert(id, Meta::new(Some(client), created_ms, label));
            if let Some(who) = caller {
                core.owners.bind(id, who.clone());
            }
            core.per_client.opened(client);
            let change = Change {
                ended: Vec::new(),
                promoted,
            };
            (position, core.settle(change, now), commit, logged)
        };
        if let Some(commit) = commit {
            if let Err(e) = commit.await {
                tracing::error!(error = %e, "cannot record a new session; refusing it");
                self.undo_create(&id, now);
                return Err(StoreFailed::from(e).into());
            }
        }
        self.metrics.sessions_created.inc();
        // `owner` and `note` are the client's claims (bounded, escaped by `logfield`);
        // `identity` is the verified one, in identity mode.
        let (owner, note) = logged;
        tracing::info!(target: AUDIT, event = "session_created", session = %id.tag(), client = %client, identity, owner, note, position);
        self.record(outcome);
        Ok((id, position))
    }

    /// A create whose commit failed: out of the queue again, as if never made (nobody
    /// was told its id). The commit may have reached the disk all the same, so its
    /// record is removed too (retried until it is).
    fn undo_create(&self, id: &SessionId, now: Instant) {
        let outcome = {
            let mut core = self.lock();
            let Some(change) = core.queue.remove(id, EndReason::Deleted, now) else {
                return;
            };
            core.unsaved_removals
                .extend(change.ended.iter().map(|e| e.seq));
            let mut outcome = core.settle(change, now);
            // Not a session anyone had: no `session_ended` event or count for it.
            outcome.change.ended.clear();
            outcome
        };
        self.record(outcome);
    }

    pub fn heartbeat(&self, id: &SessionId, now: Instant) -> bool {
        self.lock().queue.heartbeat(id, now)
    }

    /// Ends a session (durably first); `Ok(false)` when it does not exist.
    pub async fn end_session(
        &self,
        id: &SessionId,
        reason: EndReason,
        now: Instant,
    ) -> Result<bool, StoreFailed> {
        Ok(self.end(id, reason, None, now).await?.is_some())
    }

    /// An operator ends a session (reason `kicked`); returns how many of its
    /// connections were cut, `None` when it does not exist.
    pub async fn kick(
        &self,
        id: &SessionId,
        uid: u32,
        why: &str,
        now: Instant,
    ) -> Result<Option<usize>, StoreFailed> {
        let cut = self.end(id, EndReason::Kicked, Some(why), now).await?;
        if let Some(cut) = cut {
            tracing::warn!(target: AUDIT, event = "session_kicked", session = %id.tag(), uid, reason = %crate::logfield::text(why), connections_cut = cut);
        }
        Ok(cut)
    }

    /// `note`: the operator's reason, kept in the tombstone (set under the same lock, so
    /// a woken long-poll already sees it).
    async fn end(
        &self,
        id: &SessionId,
        reason: EndReason,
        note: Option<&str>,
        now: Instant,
    ) -> Result<Option<usize>, StoreFailed> {
        let commit = {
            let core = self.lock();
            let Some(seq) = core.queue.view(id).map(|v| v.seq) else {
                return Ok(None);
            };
            self.committer
                .as_ref()
                .map(|c| c.submit(vec![Op::Remove(seq)]))
        };
        // Durable first: an acknowledged end never comes back after a crash. Until the
        // commit, the session goes on as before (and stays if the commit fails).
        if let Some(commit) = commit {
            commit.await.map_err(|e| {
                tracing::error!(error = %e, session = %id.tag(), "cannot record the end of a session; keeping it");
                StoreFailed::from(e)
            })?;
        }
        let outcome = {
            let mut core = self.lock();
            let Some(change) = core.queue.remove(id, reason, now) else {
                // Ended meanwhile by someone else (the reaper, another DELETE).
                return Ok(None);
            };
            let outcome = core.settle(change, now);
            if let Some(note) = note {
                core.tombstones.set_note(id, note);
            }
            outcome
        };
        let cut = outcome.cut;
        self.record(outcome);
        Ok(Some(cut))
    }

    /// A request named a session that does not exist; warns (once per window) about a
    /// client that does it a lot: it may be guessing ids.
    pub fn note_unknown_id(&self, client: IpAddr, now: Instant) {
        let verdict = self
            .probes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(client, now);
        if let Some(count) = verdict {
            tracing::warn!(
                target: AUDIT,
                event = "unknown_id_probing",
                client = %client,
                unknown_ids = count,
                window_secs = limits::PROBE_WINDOW.as_secs(),
                "client keeps naming unknown session ids"
            );
        }
    }

    /// Identity mode's owner check for a session-bound API call (`what`: which one).
    /// Whether `caller` may act on `id`; a cross-identity attempt is audit-logged.
    /// With identity mode off (`caller` is `None`), always true: the id is the key.
    pub fn may_use(&self, id: &SessionId, caller: Option<&Identity>, what: &str) -> bool {
        let access = self.lock().owners.check(id, caller);
        if let (Access::CrossIdentity { owner }, Some(caller)) = (&access, caller) {
            self.audit_cross_identity(id, caller, owner, what);
        }
        access.allowed()
    }

    fn audit_cross_identity(
        &self,
        id: &SessionId,
        caller: &Identity,
        owner: &Identity,
        what: &str,
    ) {
        tracing::warn!(
            target: AUDIT,
            event = "cross_identity",
            session = %id.tag(),
            identity = caller.as_str(),
            owner = owner.as_str(),
            endpoint = what,
            "an identity named a session another identity owns; answered as unknown"
        );
    }

    /// The session an operator names: its full id, its tag, or a prefix of the tag
    /// (at least [`MIN_TAG_PREFIX`] hex digits) that only one live session's tag has.
    /// O(n): operators kick rarely.
    pub fn find_session(&self, name: &str) -> Result<SessionId, FindError> {
        if let Some(id) = SessionId::parse_exact(name) {
            return Ok(id);
        }
        let name = name.to_ascii_lowercase();
        if name.len() < MIN_TAG_PREFIX
            || name.len() > 8
            || !name.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(FindError::NotFound);
        }
        let core = self.lock();
        let mut found = core
            .queue
            .iter()
            .map(|v| v.id)
            .filter(|id| id.tag().starts_with(&name));
        match (found.next(), found.next()) {
            (Some(id), None) => Ok(id),
            (None, _) => Err(FindError::NotFound),
            (Some(_), Some(_)) => Err(FindError::Ambiguous),
        }
    }

    /// `GET /active-session`: refreshes nothing.
    pub fn active_session(&self) -> Option<SessionId> {
        self.lock().queue.active().map(|v| v.id)
    }

    /// Removes stale and expired sessions, cuts them, promotes, and refreshes the gauges;
    /// returns how many ended. Their removal from the store (with any earlier one that
    /// failed) is committed after the lock is released; a failed one is kept and retried
    /// on the next call, so a reaped session does not come back at the next start. A
    /// store that failed is probed now and then (`Committer::probe_due`), so it is found
    /// writable again without waiting for a client.
    pub async fn reap(&self, now: Instant) -> usize {
        let (outcome, commit) = {
            let mut core = self.lock();
            let change = core.queue.reap(now);
            core.unsaved_removals
                .extend(change.ended.iter().map(|e| e.seq));
            let seqs = std::mem::take(&mut core.unsaved_removals);
            let commit = self.committer.as_ref().and_then(|c| {
                let mut ops: Vec<Op> = seqs.iter().map(|s| Op::Remove(*s)).collect();
                if ops.is_empty() && c.probe_due(now) {
                    ops.push(Op::Touch(unix_ms(SystemTime::now())));
                }
                (!ops.is_empty()).then(|| c.submit(ops))
            });
            (core.settle(change, now), commit.map(|c| (c, seqs)))
        };
        let ended = outcome.change.ended.len();
        self.record(outcome);
        if let Some((commit, seqs)) = commit {
            if let Err(e) = commit.await {
                tracing::error!(error = %e, pending = seqs.len(), "cannot record reaped sessions; will retry");
                self.lock().unsaved_removals.extend(seqs);
            }
        }
        self.limiter.load().forget_idle();
        self.probes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .forget_old(now);
        ended
    }

    /// Whether the durable store can be written (always, without one): `/readyz`.
    pub fn store_writable(&self) -> bool {
        self.committer.as_ref().is_none_or(Committer::writable)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// A shutdown has begun: refuse new sessions from now on.
    /// At a clean stop: waits (at most `within`) until every committed change is in the
    /// store file and its journal is empty; says whether it is (always, without a store).
    pub fn settle_store(&self, within: std::time::Duration) -> bool {
        self.committer.as_ref().is_none_or(|c| c.settle(within))
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Starts or stops draining; returns the previous setting.
    pub fn set_draining(&self, draining: bool) -> bool {
        self.draining.swap(draining, Ordering::SeqCst)
    }
}

mod lab;
mod open;
mod picture;
mod polls;
mod reload;
#[cfg(test)]
mod tests;
mod turns;
