//! The session queue: a pure FIFO state machine over sessions.
//!
//! Owns every fact about a session: its id, its sequence number, when it was created,
//! last seen and promoted, how many forwarded requests it has in flight, whether it is
//! ACTIVE or WAITING, its position, and when it goes stale. It decides promotion and
//! stale reaping (contract §3) and reports each change as a [`Change`] for the caller
//! to log, count and act on (cutting in-flight requests is the caller's job).
//!
//! It must never do I/O, read the clock, sleep, lock, or know about HTTP, tokio, pingora
//! or metrics: every time-dependent method takes `now`, so tests drive time by hand. It
//! must never reorder sessions, and no operation may scan the whole queue (a listing via
//! [`Queue::iter`] is the one deliberate exception, for operators).
//!
//! # Data structure
//!
//! Every session gets a sequence number `seq` from a counter that only grows (the first
//! is 1; [`Queue::with_next_seq`] continues from a persisted counter). Queue order is
//! seq order, and the ACTIVE session is always the one with the smallest seq. Three
//! indexes are kept in step by every operation:
//!
//! - `sessions: IdMap<Entry>` — the session records; O(1) lookup by id (FxHash, see `IdMap`).
//! - `order: Treap` — an order-statistic treap keyed by seq, with the id as payload. A
//!   position is the number of live sessions with a smaller seq, i.e. the rank of the
//!   seq, which the treap answers in O(log n) from subtree sizes; it also gives the head
//!   (smallest seq) and removes from anywhere in O(log n).
//! - `deadlines: BTreeSet<(Instant, u64)>` — (deadline, seq) for every session with no
//!   request in flight, where deadline = `last_seen` + the timeout for its status. A
//!   session is stale iff `now - last_seen > timeout`, i.e. `deadline < now`, so reaping
//!   pops from the front and touches only what it removes. Sessions with requests in
//!   flight are absent, which is what makes them unreapable. A deadline that does not
//!   fit in an `Instant` means "never" and is not indexed either.
//!
//! Only the head ever has `promoted_at` set, so an entry knows its status in O(1).
//!
//! # Handoff barrier
//!
//! With [`Queue::set_handoff`] on (a lab that is reset between holders), the end of the
//! ACTIVE session does not promote the next one: the queue is *resetting* (the ended
//! seq in [`Queue::resetting`]) until the caller reports [`Queue::finish_handoff`].
//! Meanwhile nobody is ACTIVE and every session counts the reset as one ahead of it
//! (positions start at 1). With it off, promotion happens in the same operation that
//! ends the holder (§3).
//!
//! Costs: lookups by id O(1); position, create, remove and promotion O(log n);
//! `reap` O((k + 1) log n) for k sessions reaped. The treap arena keeps its high-water
//! mark of memory (freed slots are reused, not returned).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

mod id;
mod treap;

pub use id::{IdMap, SessionId};
use treap::Treap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Active,
    Waiting,
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Waiting => "waiting",
        }
    }
}

/// Why a session left the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// `DELETE /session/{id}`.
    Deleted,
    /// Idle longer than its timeout.
    Stale,
    /// Held the lab longer than `max_hold` while others waited.
    Expired,
    /// Removed by an operator.
    Kicked,
}

impl EndReason {
    /// Every reason, so metrics can pre-register each label value.
    pub const ALL: [EndReason; 4] = [
        EndReason::Deleted,
        EndReason::Stale,
        EndReason::Expired,
        EndReason::Kicked,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            EndReason::Deleted => "deleted",
            EndReason::Stale => "stale",
            EndReason::Expired => "expired",
            EndReason::Kicked => "kicked",
        }
    }
}

/// Idle timeouts: a session is stale once idle strictly longer than the one for its status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub active: Duration,
    pub waiting: Duration,
}

/// A read-only snapshot of one session.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionView {
    pub id: SessionId,
    pub seq: u64,
    pub status: Status,
    /// Sessions ahead of this one; 0 iff ACTIVE.
    pub position: usize,
    pub created: Instant,
    pub last_seen: Instant,
    /// When it became ACTIVE; `None` while WAITING.
    pub promoted_at: Option<Instant>,
    pub inflight: u32,
}

/// A session that left the queue.
#[derive(Clone, Debug, PartialEq)]
pub struct Ended {
    pub id: SessionId,
    pub seq: u64,
    pub reason: EndReason,
    pub was_active: bool,
    /// `now - promoted_at` when it was ACTIVE.
    pub held: Option<Duration>,
    /// Requests still in flight: the caller must cut them.
    pub inflight: u32,
}

/// A session that just became ACTIVE.
#[derive(Clone, Debug, PartialEq)]
pub struct Promoted {
    pub id: SessionId,
    pub seq: u64,
    /// `now - created`.
    pub waited: Duration,
}

/// What one operation changed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Change {
    /// In queue order.
    pub ended: Vec<Ended>,
    pub promoted: Option<Promoted>,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        self.ended.is_empty() && self.promoted.is_none()
    }
}

/// Why [`Queue::begin_request`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Unknown,
    Waiting { position: usize },
}

#[derive(thiserror::Error, Debug, PartialEq, Eq)]
pub enum QueueError {
    #[error("session id already in the queue")]
    DuplicateId,
    /// Only reachable from a corrupt persisted counter near `u64::MAX`: issuing a seq
    /// again would break fencing, so creation stops instead.
    #[error("session sequence numbers exhausted")]
    SeqExhausted,
    #[error("restored sessions repeat an id or a sequence number")]
    Corrupt,
}

/// One session's record. `deadline` mirrors its key in `Queue::deadlines`.
#[derive(Clone, Debug)]
struct Entry {
    seq: u64,
    created: Instant,
    last_seen: Instant,
    promoted_at: Option<Instant>,
    inflight: u32,
    deadline: Option<Instant>,
}

impl Entry {
    fn is_active(&self) -> bool {
        self.promoted_at.is_some()
    }
}

/// The FIFO session queue. See the module docs for the layout.
pub struct Queue {
    timeouts: Timeouts,
    /// Hold limit: an ACTIVE session that held longer while others wait is expired.
    max_hold: Option<Duration>,
    next_seq: u64,
    sessions: IdMap<Entry>,
    order: Treap,
    deadlines: BTreeSet<(Instant, u64)>,
    /// Whether the end of a holder waits for [`Queue::finish_handoff`].
    handoff: bool,
    /// The ended holder's seq while the lab is being reset.
    resetting: Option<u64>,
}

impl Queue {
    pub fn new(timeouts: Timeouts) -> Self {
        Queue::with_next_seq(timeouts, 1)
    }

    /// Continues the seq counter from `next_seq` (e.g. persisted before a restart). Seq 0
    /// is never issued, so 0 is treated as 1.
    pub fn with_next_seq(timeouts: Timeouts, next_seq: u64) -> Self {
        Queue {
            timeouts,
            max_hold: None,
            next_seq: next_seq.max(1),
            sessions: IdMap::default(),
            order: Treap::new(),
            deadlines: BTreeSet::new(),
            handoff: false,
            resetting: None,
        }
    }

    /// Turns the handoff barrier on or off (see the module docs).
    pub fn set_handoff(&mut self, on: bool) {
        self.handoff = on;
    }

    /// While the lab is reset after a holder: that holder's seq.
    pub fn resetting(&self) -> Option<u64> {
        self.resetting
    }

    /// After a restart during a reset (the barrier's turn `seq` was persisted): the
    /// restored head goes back to waiting and the reset resumes. With the barrier off, or
    /// `seq` not older than every session (nothing ended before them), nothing changes.
    pub fn resume_reset(&mut self, seq: u64, now: Instant) -> bool {
        let head = self.order.first();
        if !self.handoff || head.is_some_and(|(h, _)| h <= seq) {
            return false;
        }
        if let Some(entry) = head.and_then(|(_, id)| self.sessions.get_mut(&id)) {
            entry.promoted_at = None;
            refresh(&mut self.deadlines, self.timeouts, entry, now);
        }
        self.resetting = Some(seq);
        true
    }

    /// The reset after a holder is over: promotes the head, if any. `None` (and nothing
    /// changes) when no reset was pending.
    pub fn finish_handoff(&mut self, now: Instant) -> Option<Promoted> {
        self.resetting.take()?;
        self.promote_head(now)
    }

    /// What waiting sessions count ahead of them besides the sessions: the reset.
    fn offset(&self) -> usize {
        usize::from(self.resetting.is_some())
    }

    /// The holder `seq` left: promote at once, or start the reset.
    fn vacate(&mut self, seq: u64, now: Instant) -> Option<Promoted> {
        if self.handoff {
            self.resetting = Some(seq);
            None
        } else {
            self.promote_head(now)
        }
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// New idle timeouts (a config reload): every session's deadline is recomputed from
    /// its last activity, so a shorter timeout may make sessions stale at the next
    /// [`Queue::reap`]. O(n).
    pub fn set_timeouts(&mut self, timeouts: Timeouts) {
        if timeouts == self.timeouts {
            return;
        }
        self.timeouts = timeouts;
        for entry in self.sessions.values_mut() {
            reindex(&mut self.deadlines, timeouts, entry);
        }
    }

    /// Sets the hold limit enforced by [`Queue::reap`] (contract §7).
    pub fn set_max_hold(&mut self, max_hold: Option<Duration>) {
        self.max_hold = max_hold;
    }

    pub fn max_hold(&self) -> Option<Duration> {
        self.max_hold
    }

    /// Rebuilds a queue after a restart from persisted `(id, seq, created)` records, in
    /// any order. Order is seq order, as before the restart. Every session's idle clock
    /// restarts at `now` (clients get a full timeout to come back) and the head is
    /// ACTIVE from `now`. The counter continues from `next_seq`, or past the largest
    /// restored seq if that is larger. Duplicate ids or seqs, or seq 0, are refused.
    pub fn restore(
        timeouts: Timeouts,
        next_seq: u64,
        mut sessions: Vec<(SessionId, u64, Instant)>,
        now: Instant,
    ) -> Result<Queue, QueueError> {
        sessions.sort_unstable_by_key(|s| s.1);
        let top = sessions.last().map_or(0, |s| s.1);
        let mut q = Queue::with_next_seq(timeouts, next_seq.max(top.saturating_add(1)));
        for (i, (id, seq, created)) in sessions.into_iter().enumerate() {
            if seq == 0 || q.sessions.contains_key(&id) || !q.order.insert(seq, id) {
                return Err(QueueError::Corrupt);
            }
            let mut entry = Entry {
                seq,
                created: created.min(now),
                last_seen: now,
                promoted_at: (i == 0).then_some(now),
                inflight: 0,
                deadline: None,
            };
            reindex(&mut q.deadlines, q.timeouts, &mut entry);
            q.sessions.insert(id, entry);
        }
        Ok(q)
    }

    /// All sessions, ACTIVE included.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Sessions that are not ACTIVE.
    pub fn waiting(&self) -> usize {
        // Outside a reset, a non-empty queue always has an ACTIVE head.
        self.sessions
            .len()
            .saturating_sub(usize::from(self.resetting.is_none()))
    }

    /// The seq the next created session will get; persist this to keep seqs growing.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Appends; returns `(position, Option<Promoted>)` -- Some when the queue was empty and it became ACTIVE at once (waited = 0).
    pub fn create(
        &mut self,
        id: SessionId,
        now: Instant,
    ) -> Result<(usize, Option<Promoted>), QueueError> {
        if self.sessions.contains_key(&id) {
            return Err(QueueError::DuplicateId);
        }
        let seq = self.next_seq;
        // `next_seq == u64::MAX` is the exhausted state, so every issued seq stays below it.
        self.next_seq = seq.checked_add(1).ok_or(QueueError::SeqExhausted)?;
        // Every live seq is below the old counter, so the new session goes last.
        let position = self.sessions.len() + self.offset();
        let promoted = (position == 0).then_some(Promoted {
            id,
            seq,
            waited: Duration::ZERO,
        });
        let mut entry = Entry {
            seq,
            created: now,
            last_seen: now,
            promoted_at: promoted.as_ref().map(|_| now),
            inflight: 0,
            deadline: None,
        };
        reindex(&mut self.deadlines, self.timeouts, &mut entry);
        let inserted = self.order.insert(seq, id);
        debug_assert!(inserted, "seq {seq} issued twice");
        self.sessions.insert(id, entry);
        Ok((position, promoted))
    }

    /// `GET /session/{id}`: refreshes `last_seen` and returns the view.
    pub fn touch(&mut self, id: &SessionId, now: Instant) -> Option<SessionView> {
        let entry = self.sessions.get_mut(id)?;
        refresh(&mut self.deadlines, self.timeouts, entry, now);
        self.view(id)
    }

    /// `POST /session/heartbeat`: refreshes `last_seen`; false if unknown.
    pub fn heartbeat(&mut self, id: &SessionId, now: Instant) -> bool {
        match self.sessions.get_mut(id) {
            Some(entry) => {
                refresh(&mut self.deadlines, self.timeouts, entry, now);
                true
            }
            None => false,
        }
    }

    /// Peeks at one session; refreshes nothing.
    pub fn view(&self, id: &SessionId) -> Option<SessionView> {
        let entry = self.sessions.get(id)?;
        let position = if entry.is_active() {
            0
        } else {
            self.order.rank(entry.seq)? + self.offset()
        };
        Some(make_view(*id, entry, position))
    }

    /// The ACTIVE session, if any; refreshes nothing (`GET /active-session`).
    pub fn active(&self) -> Option<SessionView> {
        let (_, id) = self.order.first()?;
        let entry = self.sessions.get(&id).filter(|e| e.is_active())?;
        Some(make_view(id, entry, 0))
    }

    /// How long the ACTIVE session has held the lab; zero when the queue is empty.
    pub fn active_hold(&self, now: Instant) -> Duration {
        self.order
            .first()
            .and_then(|(_, id)| self.sessions.get(&id))
            .and_then(|e| e.promoted_at)
            .map_or(Duration::ZERO, |p| now.saturating_duration_since(p))
    }

    /// Removes a session for `reason` and, if it was ACTIVE, promotes the next one in the
    /// same step (or, with the handoff barrier, starts the reset). `None` if unknown. Requests in flight do not prevent removal; they are
    /// reported in [`Ended::inflight`] for the caller to cut.
    pub fn remove(&mut self, id: &SessionId, reason: EndReason, now: Instant) -> Option<Change> {
        let entry = self.take(id)?;
        let ended = ended(*id, &entry, reason, now);
        let promoted = if entry.is_active() {
            self.vacate(entry.seq, now)
        } else {
            None
        };
        Some(Change {
            ended: vec![ended],
            promoted,
        })
    }

    /// A forwarded request starts: allowed only for the ACTIVE session. Refreshes
    /// `last_seen` and keeps the session out of reaping until the matching
    /// [`Queue::end_request`]. Returns the session's seq (the fencing token).
    pub fn begin_request(&mut self, id: &SessionId, now: Instant) -> Result<u64, Refusal> {
        let offset = self.offset();
        let entry = self.sessions.get_mut(id).ok_or(Refusal::Unknown)?;
        if !entry.is_active() {
            let position = self.order.rank(entry.seq).ok_or(Refusal::Unknown)? + offset;
            return Err(Refusal::Waiting { position });
        }
        // Saturating: four billion requests at once cannot happen, and a panic here
        // would take the gateway down for it.
        entry.inflight = entry.inflight.saturating_add(1);
        refresh(&mut self.deadlines, self.timeouts, entry, now);
        Ok(entry.seq)
    }

    /// A forwarded request finished: refreshes `last_seen` and, at zero in flight, makes
    /// the session reapable again. No-op for an id that is gone (it may have been
    /// removed while the request ran).
    pub fn end_request(&mut self, id: &SessionId, now: Instant) {
        if let Some(entry) = self.sessions.get_mut(id) {
            entry.inflight = entry.inflight.saturating_sub(1);
            refresh(&mut self.deadlines, self.timeouts, entry, now);
        }
    }

    /// Removes every session stale at `now` (idle strictly longer than its timeout, no
    /// request in flight) and, with a hold limit, an ACTIVE session that has held longer
    /// than `max_hold` while another (not stale) session waits (reason `Expired`, even
    /// with requests in flight: the caller cuts them). Then promotes the new head if the
    /// ACTIVE one went (or, with the handoff barrier, starts the reset). All are judged on the state before this call: a WAITING session
    /// that is already stale is reaped, not promoted; a stale head is `Stale`, not
    /// `Expired`. `ended` is in queue order.
    pub fn reap(&mut self, now: Instant) -> Change {
        let mut stale = Vec::new();
        while let Some(&(deadline, seq)) = self.deadlines.first() {
            if deadline >= now {
                break;
            }
            self.deadlines.pop_first();
            stale.push(seq);
        }
        stale.sort_unstable();
        let mut change = Change::default();
        if let Some(id) = self.expired_head(&stale, now) {
            if let Some(entry) = self.take(&id) {
                change
                    .ended
                    .push(ended(id, &entry, EndReason::Expired, now));
            }
        }
        // The seq of the ACTIVE session, if it goes.
        let mut head_gone = change.ended.first().map(|e| e.seq);
        for seq in stale {
            let Some(id) = self.order.remove(seq) else {
                continue;
            };
            let Some(entry) = self.sessions.remove(&id) else {
                continue;
            };
            if entry.is_active() {
                head_gone = Some(seq);
            }
            change.ended.push(ended(id, &entry, EndReason::Stale, now));
        }
        if let Some(seq) = head_gone {
            change.promoted = self.vacate(seq, now);
        }
        change
    }

    /// The head, if it is over its hold limit while a session that is not about to be
    /// reaped (`stale`, sorted seqs) waits behind it. O(1).
    fn expired_head(&self, stale: &[u64], now: Instant) -> Option<SessionId> {
        let max_hold = self.max_hold?;
        let (head_seq, head_id) = self.order.first()?;
        let head_stale = stale.first() == Some(&head_seq);
        let others_stale = stale.len() - usize::from(head_stale);
        let others_waiting = self.sessions.len() - 1 - others_stale;
        let held = now.saturating_duration_since(self.sessions.get(&head_id)?.promoted_at?);
        (!head_stale && others_waiting > 0 && held > max_hold).then_some(head_id)
    }

    /// The earliest instant after which some session will be stale, if any can be.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(d, _)| d)
    }

    /// Every session in queue order: a full listing for operators, O(n) by nature.
    pub fn iter(&self) -> impl Iterator<Item = SessionView> + '_ {
        self.order
            .iter()
            .enumerate()
            .filter_map(move |(position, (_, id))| {
                self.sessions.get(&id).map(|entry| {
                    let position = if entry.is_active() {
                        position
                    } else {
                        position + self.offset()
                    };
                    make_view(id, entry, position)
                })
            })
    }

    /// Unlinks a session from all three indexes, without promoting anyone.
    fn take(&mut self, id: &SessionId) -> Option<Entry> {
        let entry = self.sessions.remove(id)?;
        self.order.remove(entry.seq);
        if let Some(d) = entry.deadline {
            self.deadlines.remove(&(d, entry.seq));
        }
        Some(entry)
    }

    /// Makes the smallest seq ACTIVE, with a full active timeout from `now`.
    fn promote_head(&mut self, now: Instant) -> Option<Promoted> {
        let (seq, id) = self.order.first()?;
        let entry = self.sessions.get_mut(&id)?;
        entry.promoted_at = Some(now);
        refresh(&mut self.deadlines, self.timeouts, entry, now);
        Some(Promoted {
            id,
            seq,
            waited: now.saturating_duration_since(entry.created),
        })
    }

    /// Verifies that the map, the treap and the deadline index agree. O(n); tests only.
    #[cfg(test)]
    fn check_invariants(&self) {
        self.order.check();
        assert_eq!(self.order.len(), self.sessions.len(), "treap size vs map");
        let head = self.order.first();
        assert_eq!(head.is_some(), !self.sessions.is_empty());
        let mut indexed = 0;
        for (position, (seq, id)) in self.order.iter().enumerate() {
            let e = self.sessions.get(&id).expect("treap payload is in the map");
            assert_eq!(e.seq, seq, "seq of {id}");
            assert!(seq >= 1 && seq < self.next_seq, "seq {seq} out of range");
            assert_eq!(self.order.rank(seq), Some(position));
            assert_eq!(
                e.is_active(),
                position == 0 && self.resetting.is_none(),
                "only the head is promoted, and nobody while the lab resets"
            );
            if !e.is_active() {
                assert_eq!(e.inflight, 0, "a WAITING session has nothing in flight");
            }
            let timeout = if e.is_active() {
                self.timeouts.active
            } else {
                self.timeouts.waiting
            };
            let want = if e.inflight == 0 {
                e.last_seen.checked_add(timeout)
            } else {
                None
            };
            assert_eq!(e.deadline, want, "deadline of {id}");
            if let Some(d) = e.deadline {
                assert!(self.deadlines.contains(&(d, seq)));
                indexed += 1;
            }
        }
        assert_eq!(indexed, self.deadlines.len(), "stray deadline entries");
    }
}

fn make_view(id: SessionId, e: &Entry, position: usize) -> SessionView {
    SessionView {
        id,
        seq: e.seq,
        status: if e.is_active() {
            Status::Active
        } else {
            Status::Waiting
        },
        position,
        created: e.created,
        last_seen: e.last_seen,
        promoted_at: e.promoted_at,
        inflight: e.inflight,
    }
}

fn ended(id: SessionId, e: &Entry, reason: EndReason, now: Instant) -> Ended {
    Ended {
        id,
        seq: e.seq,
        reason,
        was_active: e.is_active(),
        held: e.promoted_at.map(|p| now.saturating_duration_since(p)),
        inflight: e.inflight,
    }
}

/// Refreshes `last_seen`. Never moves it back: callers take `now` before the lock, so
/// a slightly older `now` may arrive after a newer one.
fn refresh(deadlines: &mut BTreeSet<(Instant, u64)>, t: Timeouts, e: &mut Entry, now: Instant) {
    e.last_seen = e.last_seen.max(now);
    reindex(deadlines, t, e);
}

/// Brings `e`'s key in the deadline index in line with its current state.
fn reindex(deadlines: &mut BTreeSet<(Instant, u64)>, t: Timeouts, e: &mut Entry) {
    if let Some(old) = e.deadline.take() {
        deadlines.remove(&(old, e.seq));
    }
    if e.inflight > 0 {
        return;
    }
    let timeout = if e.is_active() { t.active } else { t.waiting };
    // An unrepresentable deadline (absurd timeout) means "never stale".
    e.deadline = e.last_seen.checked_add(timeout);
    if let Some(d) = e.deadline {
        deadlines.insert((d, e.seq));
    }
}

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;
