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
//! - `sessions: HashMap<SessionId, Entry>` — the session records; O(1) lookup by id.
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
//! Costs: lookups by id O(1); position, create, remove and promotion O(log n);
//! `reap` O((k + 1) log n) for k sessions reaped. The treap arena keeps its high-water
//! mark of memory (freed slots are reused, not returned).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use uuid::Uuid;

mod treap;
use treap::Treap;

/// A session id: a UUID, compared exactly.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct SessionId(Uuid);

impl SessionId {
    /// A fresh random (version 4) id.
    pub fn random() -> Self {
        SessionId(Uuid::new_v4())
    }

    /// The first 8 characters, for logs: enough to tell sessions apart, useless as
    /// a credential.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(8);
        s
    }

    /// The public, non-reversible tag (status page, `X-Lab-Session-Tag`): the first 8
    /// hex digits of a SHA-256 of the id's 16 bytes. The id itself is the gate credential.
    pub fn tag(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.0.as_bytes());
        digest[..4].iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_uuid(u: Uuid) -> Self {
        SessionId(u)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// Only the canonical lowercase hyphenated 36-char form is accepted (ids are compared exactly:
    /// uppercase, braces, urn: or simple forms are unknown). No allocation.
    pub fn parse_exact(s: &str) -> Option<Self> {
        // Hand-rolled rather than `Uuid::try_parse`, which accepts the other forms too:
        // the contract says a differently spelled id is a different (unknown) id.
        let b = s.as_bytes();
        if b.len() != 36 {
            return None;
        }
        let mut out = [0u8; 16];
        let mut nibbles = 0usize;
        for (i, &c) in b.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if c != b'-' {
                    return None;
                }
                continue;
            }
            let v = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ => return None,
            };
            let byte = out.get_mut(nibbles / 2)?;
            *byte = (*byte << 4) | v;
            nibbles += 1;
        }
        Some(SessionId(Uuid::from_bytes(out)))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

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
#[derive(Clone, Copy, Debug)]
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
    sessions: HashMap<SessionId, Entry>,
    order: Treap,
    deadlines: BTreeSet<(Instant, u64)>,
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
            sessions: HashMap::new(),
            order: Treap::new(),
            deadlines: BTreeSet::new(),
        }
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
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
        self.sessions.len().saturating_sub(1)
    }

    /// The seq the next created session will get; persist this to keep seqs growing.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Appends; returns (position, Option<Promoted>) -- Some when the queue was empty and it became ACTIVE at once (waited = 0).
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
        let position = self.sessions.len();
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
            self.order.rank(entry.seq)?
        };
        Some(make_view(*id, entry, position))
    }

    /// The ACTIVE session, if any; refreshes nothing (`GET /active-session`).
    pub fn active(&self) -> Option<SessionView> {
        let (_, id) = self.order.first()?;
        let entry = self.sessions.get(&id)?;
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
    /// same step. `None` if unknown. Requests in flight do not prevent removal; they are
    /// reported in [`Ended::inflight`] for the caller to cut.
    pub fn remove(&mut self, id: &SessionId, reason: EndReason, now: Instant) -> Option<Change> {
        let entry = self.take(id)?;
        let ended = ended(*id, &entry, reason, now);
        let promoted = if entry.is_active() {
            self.promote_head(now)
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
        let entry = self.sessions.get_mut(id).ok_or(Refusal::Unknown)?;
        if !entry.is_active() {
            let position = self.order.rank(entry.seq).ok_or(Refusal::Unknown)?;
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
    /// ACTIVE one went. All are judged on the state before this call: a WAITING session
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
        let mut head_gone = !change.ended.is_empty();
        for seq in stale {
            let Some(id) = self.order.remove(seq) else {
                continue;
            };
            let Some(entry) = self.sessions.remove(&id) else {
                continue;
            };
            head_gone |= entry.is_active();
            change.ended.push(ended(id, &entry, EndReason::Stale, now));
        }
        if head_gone {
            change.promoted = self.promote_head(now);
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
                self.sessions
                    .get(&id)
                    .map(|entry| make_view(id, entry, position))
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
            assert_eq!(e.is_active(), position == 0, "only the head is promoted");
            if position > 0 {
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
mod tests {
    use super::*;

    const ACTIVE_SECS: u64 = 300;
    const WAITING_SECS: u64 = 600;

    fn timeouts() -> Timeouts {
        Timeouts {
            active: Duration::from_secs(ACTIVE_SECS),
            waiting: Duration::from_secs(WAITING_SECS),
        }
    }

    fn queue() -> Queue {
        Queue::new(timeouts())
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn sid(n: u128) -> SessionId {
        SessionId::from_uuid(Uuid::from_u128(n))
    }

    fn positions(q: &Queue) -> Vec<(SessionId, Status, usize)> {
        q.iter().map(|v| (v.id, v.status, v.position)).collect()
    }

    #[test]
    fn create_appends_and_first_session_is_active_at_once() {
        let mut q = queue();
        let t0 = Instant::now();
        let (a, b, c) = (sid(1), sid(2), sid(3));
        assert_eq!(
            q.create(a, t0),
            Ok((
                0,
                Some(Promoted {
                    id: a,
                    seq: 1,
                    waited: Duration::ZERO
                })
            ))
        );
        assert_eq!(q.create(b, t0 + secs(1)), Ok((1, None)));
        assert_eq!(q.create(c, t0 + secs(2)), Ok((2, None)));
        assert_eq!(
            positions(&q),
            vec![
                (a, Status::Active, 0),
                (b, Status::Waiting, 1),
                (c, Status::Waiting, 2)
            ]
        );
        assert_eq!((q.len(), q.waiting(), q.is_empty()), (3, 2, false));
        let vb = q.view(&b).unwrap();
        assert_eq!(
            vb,
            SessionView {
                id: b,
                seq: 2,
                status: Status::Waiting,
                position: 1,
                created: t0 + secs(1),
                last_seen: t0 + secs(1),
                promoted_at: None,
                inflight: 0,
            }
        );
        let va = q.active().unwrap();
        assert_eq!((va.id, va.promoted_at, va.position), (a, Some(t0), 0));
        q.check_invariants();
    }

    #[test]
    fn duplicate_id_is_refused_without_using_a_seq() {
        let mut q = queue();
        let t0 = Instant::now();
        q.create(sid(1), t0).unwrap();
        assert_eq!(q.create(sid(1), t0), Err(QueueError::DuplicateId));
        assert_eq!(q.next_seq(), 2);
        assert_eq!(q.len(), 1);
        q.check_invariants();
    }

    #[test]
    fn get_refreshes_last_seen_but_peeking_does_not() {
        let mut q = queue();
        let t0 = Instant::now();
        q.create(sid(1), t0).unwrap();
        q.create(sid(2), t0).unwrap();
        let v = q.touch(&sid(2), t0 + secs(10)).unwrap();
        assert_eq!(
            (v.status, v.position, v.last_seen),
            (Status::Waiting, 1, t0 + secs(10))
        );
        assert_eq!(q.view(&sid(1)).unwrap().last_seen, t0);
        assert_eq!(q.active().unwrap().last_seen, t0);
        assert_eq!(q.touch(&sid(9), t0), None);
        // The refresh moved the deadline too: stale only after 10 + 600 s.
        assert!(q
            .reap(t0 + secs(WAITING_SECS + 1))
            .ended
            .iter()
            .all(|e| e.id != sid(2)));
        q.check_invariants();
    }

    #[test]
    fn heartbeat_refreshes_known_sessions_only() {
        let mut q = queue();
        let t0 = Instant::now();
        q.create(sid(1), t0).unwrap();
        assert!(q.heartbeat(&sid(1), t0 + secs(200)));
        assert!(!q.heartbeat(&sid(2), t0 + secs(200)));
        assert_eq!(q.view(&sid(1)).unwrap().last_seen, t0 + secs(200));
        assert!(q.reap(t0 + secs(ACTIVE_SECS + 1)).is_empty());
        assert_eq!(q.next_deadline(), Some(t0 + secs(200 + ACTIVE_SECS)));
        q.check_invariants();
    }

    #[test]
    fn an_older_now_never_moves_last_seen_back() {
        let mut q = queue();
        let t0 = Instant::now();
        q.create(sid(1), t0 + secs(5)).unwrap();
        q.heartbeat(&sid(1), t0);
        assert_eq!(q.view(&sid(1)).unwrap().last_seen, t0 + secs(5));
        q.check_invariants();
    }

    #[test]
    fn deleting_the_head_promotes_the_next_with_a_fresh_last_seen() {
        let mut q = queue();
        let t0 = Instant::now();
        q.create(sid(1), t0).unwrap();
        q.create(sid(2), t0 + secs(1)).unwrap();
        q.create(sid(3), t0 + secs(2)).unwrap();
        let change = q
            .remove(&sid(1), EndReason::Deleted, t0 + secs(100))
            .unwrap();
        assert_eq!(
            change,
            Change {
                ended: vec![Ended {
                    id: sid(1),
                    seq: 1,
                    reason: EndReason::Deleted,
                    was_active: true,
                    held: Some(secs(100)),
                    inflight: 0,
                }],
                promoted: Some(Promoted {
                    id: sid(2),
                    seq: 2,
                    waited: secs(99),
                }),
            }
        );
        let v = q.active().unwrap();
        assert_eq!(v.id, sid(2));
        assert_eq!(v.last_seen, t0 + secs(100));
        assert_eq!(v.promoted_at, Some(t0 + secs(100)));
        assert_eq!(q.active_hold(t0 + secs(130)), secs(30));
        // A full active timeout from the promotion, not from its last heartbeat.
        assert_eq!(q.next_deadline(), Some(t0 + secs(100 + ACTIVE_SECS)));
        assert_eq!(q.view(&sid(3)).unwrap().position, 1);
        assert_eq!(q.remove(&sid(1), EndReason::Deleted, t0 + secs(100)), None);
        q.check_invariants();
    }

    #[test]
    fn deleting_from_the_middle_shifts_later_positions_only() {
        let mut q = queue();
        let t0 = Instant::now();
        for n in 1..=5 {
            q.create(sid(n), t0).unwrap();
        }
        let change = q.remove(&sid(3), EndReason::Kicked, t0 + secs(1)).unwrap();
        assert_eq!(change.promoted, None);
        assert_eq!(
            change.ended,
            vec![Ended {
                id: sid(3),
                seq: 3,
                reason: EndReason::Kicked,
                was_active: false,
                held: None,
                inflight: 0,
            }]
        );
        let order: Vec<_> = positions(&q)
            .into_iter()
            .map(|(id, _, p)| (id, p))
            .collect();
        assert_eq!(
            order,
            vec![(sid(1), 0), (sid(2), 1), (sid(4), 2), (sid(5), 3)]
        );
        assert_eq!(
            q.active().unwrap().last_seen,
            t0,
            "no promotion, no refresh"
        );
        q.check_invariants();
    }

    #[test]
    fn active_session_is_stale_only_strictly_after_active_timeout() {
        let mut q = queue();
        let t0 = Instant::now();
        q.create(sid(1), t0).unwrap();
        q.create(sid(2), t0).unwrap();
        q.heartbeat(&sid(2), t0 + secs(250));
        assert!(q.reap(t0 + secs(ACTIVE_SECS)).is_empty(), "idle == timeout");
        let at = t0 + secs(ACTIVE_SECS) + ms(1);
        let change = q.reap(at);
        assert_eq!(
            change,
            Change {
                ended: vec![Ended {
                    id: sid(1),
                    seq: 1,
                    reason: EndReason::Stale,
                    was_active: true,
                    held: Some(secs(ACTIVE_SECS) + ms(1)),
                    inflight: 0,
                }],
                promoted: Some(Promoted {
                    id: sid(2),
                    seq: 2,
                    waited: secs(ACTIVE_SECS) + ms(1),
                }),
            }
        );
        assert_eq!(q.active().unwrap().last_seen, at);
        q.check_invariants();
    }

    #[test]
    fn waiting_session_is_stale_only_strictly_after_waiting_timeout() {
        let mut q = queue();
        let t0 = Instant::now();
        q.create(sid(1), t0).unwrap();
        q.create(sid(2), t0).unwrap();
        // Keep the head alive so only the waiting timeout is in play.
        q.heartbeat(&sid(1), t0 + secs(590));
        assert!(
            q.reap(t0 + secs(WAITING_SECS)).is_empty(),
            "idle == timeout"
        );
        let change = q.reap(t0 + secs(WAITING_SECS) + ms(1));
        assert_eq!(change.promoted, None);
        assert_eq!(change.ended.len(), 1);
        assert_eq!(
            (
                change.ended[0].id,
                change.ended[0].was_active,
                change.ended[0].held
            ),
            (sid(2), false, None)
        );
        assert_eq!(q.len(), 1);
        q.check_invariants();
    }

    #[test]
    fn a_stale_waiting_session_is_reaped_rather_than_promoted() {
        let mut q = queue();
        let t0 = Instant::now();
        q.create(sid(1), t0).unwrap();
        q.create(sid(2), t0).unwrap();
        q.create(sid(3), t0).unwrap();
        q.heartbeat(&sid(1), t0 + secs(400));
        q.heartbeat(&sid(3), t0 + secs(650));
        // At 701 s: 1 idle 301 s (> active), 2 idle 701 s (> waiting), 3 idle 51 s.
        let change = q.reap(t0 + secs(701));
        let ended: Vec<_> = change.ended.iter().map(|e| e.id).collect();
        assert_eq!(ended, vec![sid(1), sid(2)], "in queue order");
        assert_eq!(change.promoted.map(|p| p.id), Some(sid(3)));
        q.check_invariants();
    }

    #[test]
    fn a_session_with_a_request_in_flight_is_never_reaped() {
        let mut q = queue();
        let t0 = Instant::now();
        q.create(sid(1), t0).unwrap();
        assert_eq!(q.begin_request(&sid(1), t0 + secs(1)), Ok(1));
        assert_eq!(q.begin_request(&sid(1), t0 + secs(2)), Ok(1));
        assert_eq!(q.next_deadline(), None);
        assert!(q.reap(t0 + secs(100_000)).is_empty());
        q.end_request(&sid(1), t0 + secs(5000));
        assert_eq!(q.view(&sid(1)).unwrap().inflight, 1);
        assert!(q.reap(t0 + secs(100_000)).is_empty());
        q.end_request(&sid(1), t0 + secs(6000));
        let v = q.view(&sid(1)).unwrap();
        assert_eq!((v.inflight, v.last_seen), (0, t0 + secs(6000)));
        assert_eq!(q.next_deadline(), Some(t0 + secs(6000 + ACTIVE_SECS)));
        assert!(q.reap(t0 + secs(6000 + ACTIVE_SECS)).is_empty());
        assert_eq!(q.reap(t0 + secs(6000 + ACTIVE_SECS + 1)).ended.len(), 1);
        q.check_invariants();
    }

    #[test]
    fn removing_a_session_with_requests_in_flight_reports_them() {
        let mut q = queue();
        let t0 = Instant::now();
        q.create(sid(1), t0).unwrap();
        q.begin_request(&sid(1), t0).unwrap();
        let change = q.remove(&sid(1), EndReason::Expired, t0 + secs(3)).unwrap();
        assert_eq!(change.ended[0].inflight, 1);
        assert_eq!(change.ended[0].reason, EndReason::Expired);
        assert!(q.is_empty());
        q.check_invariants();
    }

    #[test]
    fn end_request_for_a_removed_session_is_a_no_op() {
        let mut q = queue();
        let t0 = Instant::now();
        q.create(sid(1), t0).unwrap();
        q.create(sid(2), t0).unwrap();
        q.begin_request(&sid(1), t0).unwrap();
        q.remove(&sid(1), EndReason::Kicked, t0 + secs(1)).unwrap();
        q.end_request(&sid(1), t0 + secs(2));
        q.end_request(&sid(7), t0 + secs(2));
        assert_eq!(q.len(), 1);
        let v = q.active().unwrap();
        assert_eq!((v.id, v.inflight, v.last_seen), (sid(2), 0, t0 + secs(1)));
        q.check_invariants();
    }

    #[test]
    fn begin_request_refuses_waiting_and_unknown_sessions() {
        let mut q = queue();
        let t0 = Instant::now();
        q.create(sid(1), t0).unwrap();
        q.create(sid(2), t0).unwrap();
        q.create(sid(3), t0).unwrap();
        assert_eq!(
            q.begin_request(&sid(3), t0 + secs(1)),
            Err(Refusal::Waiting { position: 2 })
        );
        assert_eq!(q.begin_request(&sid(9), t0), Err(Refusal::Unknown));
        // A refused request refreshes nothing.
        assert_eq!(q.view(&sid(3)).unwrap().last_seen, t0);
        assert_eq!(q.view(&sid(3)).unwrap().inflight, 0);
        q.check_invariants();
    }

    #[test]
    fn parse_exact_accepts_only_the_canonical_form() {
        let s = "67e55044-10b1-426f-9247-bb680e5fe0c8";
        let id = SessionId::parse_exact(s).unwrap();
        assert_eq!(id.to_string(), s);
        assert_eq!(id.as_uuid(), Uuid::parse_str(s).unwrap());
        assert_eq!(SessionId::from_uuid(id.as_uuid()), id);
        let rejected = [
            "67E55044-10B1-426F-9247-BB680E5FE0C8",
            "67e55044-10b1-426f-9247-BB680e5fe0c8",
            "{67e55044-10b1-426f-9247-bb680e5fe0c8}",
            "urn:uuid:67e55044-10b1-426f-9247-bb680e5fe0c8",
            "67e5504410b1426f9247bb680e5fe0c8",
            " 67e55044-10b1-426f-9247-bb680e5fe0c8",
            "67e55044-10b1-426f-9247-bb680e5fe0c8 ",
            "67e55044-10b1-426f-9247-bb680e5fe0c8\n",
            "67e55044-10b1-426f-9247-bb680e5fe0c",
            "67e55044-10b1-426f-9247-bb680e5fe0c80",
            "67e5504-410b1-426f-9247-bb680e5fe0c8",
            "67e55044-10b1-426f-9247_bb680e5fe0c8",
            "67e55044-10b1-426f-9247-bb680e5fe0cg",
            "67e55044+10b1-426f-9247-bb680e5fe0c8",
            "67e55044-10b1-426f-9247-bb680e5fé0c",
            "",
        ];
        for r in rejected {
            assert_eq!(SessionId::parse_exact(r), None, "{r:?}");
        }
        for _ in 0..100 {
            let id = SessionId::random();
            assert_eq!(id.as_uuid().get_version_num(), 4);
            assert_eq!(SessionId::parse_exact(&id.to_string()), Some(id));
        }
    }

    #[test]
    fn seq_only_grows_across_removals_and_restarts() {
        let mut q = queue();
        let t0 = Instant::now();
        assert_eq!(q.next_seq(), 1);
        q.create(sid(1), t0).unwrap();
        q.create(sid(2), t0).unwrap();
        q.remove(&sid(2), EndReason::Deleted, t0).unwrap();
        q.remove(&sid(1), EndReason::Deleted, t0).unwrap();
        q.create(sid(2), t0).unwrap();
        assert_eq!(q.view(&sid(2)).unwrap().seq, 3);
        assert_eq!(q.next_seq(), 4);

        let mut restarted = Queue::with_next_seq(timeouts(), q.next_seq());
        restarted.create(sid(1), t0).unwrap();
        assert_eq!(restarted.begin_request(&sid(1), t0), Ok(4));
        assert_eq!(restarted.next_seq(), 5);

        assert_eq!(Queue::with_next_seq(timeouts(), 0).next_seq(), 1);
        assert_eq!(restarted.timeouts().active, secs(ACTIVE_SECS));
        assert_eq!(restarted.timeouts().waiting, secs(WAITING_SECS));

        let mut last = Queue::with_next_seq(timeouts(), u64::MAX - 1);
        assert_eq!(
            last.create(sid(1), t0),
            Ok((
                0,
                Some(Promoted {
                    id: sid(1),
                    seq: u64::MAX - 1,
                    waited: Duration::ZERO
                })
            ))
        );
        assert_eq!(last.create(sid(2), t0), Err(QueueError::SeqExhausted));
        assert_eq!((last.len(), last.next_seq()), (1, u64::MAX));
        last.check_invariants();
    }

    #[test]
    fn an_unrepresentable_deadline_means_never_stale() {
        let mut q = Queue::new(Timeouts {
            active: Duration::MAX,
            waiting: Duration::MAX,
        });
        let t0 = Instant::now();
        q.create(sid(1), t0).unwrap();
        q.create(sid(2), t0).unwrap();
        assert_eq!(q.next_deadline(), None);
        assert!(q.reap(t0 + secs(1_000_000)).is_empty());
        q.check_invariants();
    }

    #[test]
    fn empty_queue_answers() {
        let mut q = queue();
        let t0 = Instant::now();
        assert_eq!((q.len(), q.waiting(), q.is_empty()), (0, 0, true));
        assert_eq!(q.active(), None);
        assert_eq!(q.active_hold(t0), Duration::ZERO);
        assert_eq!(q.next_deadline(), None);
        assert!(q.reap(t0).is_empty());
        assert_eq!(q.iter().count(), 0);
        assert!(!q.heartbeat(&sid(1), t0));
        q.check_invariants();
    }

    #[test]
    fn labels_match_the_contract() {
        assert_eq!(Status::Active.as_str(), "active");
        assert_eq!(Status::Waiting.as_str(), "waiting");
        let labels: Vec<_> = EndReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels, ["deleted", "stale", "expired", "kicked"]);
        assert!(Change::default().is_empty());
        assert_eq!(
            QueueError::DuplicateId.to_string(),
            "session id already in the queue"
        );
    }

    #[test]
    fn a_hundred_thousand_sessions() {
        const N: u128 = 100_000;
        let mut q = queue();
        let t0 = Instant::now();
        for n in 0..N {
            let (pos, _) = q.create(sid(n), t0).unwrap();
            assert_eq!(pos as u128, n);
        }
        assert_eq!(q.view(&sid(N - 1)).unwrap().position, 99_999);
        assert_eq!(q.view(&sid(N - 2)).unwrap().position, 99_998);
        // Remove 10,000 from the middle; each is a handful of O(log n) steps.
        for n in 40_000..50_000 {
            q.remove(&sid(n), EndReason::Deleted, t0).unwrap();
        }
        assert_eq!(q.view(&sid(39_999)).unwrap().position, 39_999);
        assert_eq!(q.view(&sid(50_000)).unwrap().position, 40_000);
        assert_eq!(q.view(&sid(N - 1)).unwrap().position, 89_999);
        assert_eq!(
            q.begin_request(&sid(N - 1), t0),
            Err(Refusal::Waiting { position: 89_999 })
        );
        let change = q
            .remove(&sid(0), EndReason::Deleted, t0 + secs(400))
            .unwrap();
        assert_eq!(change.promoted.map(|p| p.id), Some(sid(1)));
        assert_eq!(q.view(&sid(N - 1)).unwrap().position, 89_998);
        assert_eq!(q.len(), 89_999);
        q.check_invariants();
        // Everyone but the fresh head goes stale in one reap.
        let change = q.reap(t0 + secs(WAITING_SECS + 1));
        assert_eq!(change.ended.len(), 89_998);
        assert_eq!(q.len(), 1);
        q.check_invariants();
    }

    #[test]
    fn a_holder_over_max_hold_is_expired_only_while_others_wait() {
        let t0 = Instant::now();
        let mut q = queue();
        q.set_max_hold(Some(secs(60)));
        let (a, b) = (sid(1), sid(2));
        q.create(a, t0).unwrap();
        // Alone: no limit, however long.
        assert!(q.reap(t0 + secs(200)).is_empty());
        q.heartbeat(&a, t0 + secs(200));
        q.create(b, t0 + secs(200)).unwrap();
        // Requests in flight do not protect against the hold limit.
        q.begin_request(&a, t0 + secs(200)).unwrap();
        let change = q.reap(t0 + secs(201));
        assert_eq!(change.ended.len(), 1);
        assert_eq!(change.ended[0].reason, EndReason::Expired);
        assert_eq!(change.ended[0].held, Some(secs(201)));
        assert_eq!(change.ended[0].inflight, 1);
        assert_eq!(change.promoted.map(|p| p.id), Some(b));
        // The new holder is judged from its own promotion.
        let c = sid(3);
        q.create(c, t0 + secs(202)).unwrap();
        q.heartbeat(&b, t0 + secs(250));
        assert!(q.reap(t0 + secs(261)).is_empty());
        q.heartbeat(&b, t0 + secs(261));
        q.heartbeat(&c, t0 + secs(261));
        let change = q.reap(t0 + secs(261) + ms(1));
        assert_eq!(change.ended[0].id, b);
        assert_eq!(change.ended[0].reason, EndReason::Expired);
    }

    #[test]
    fn restore_keeps_order_seqs_and_restarts_idle_clocks() {
        let t0 = Instant::now();
        let now = t0 + secs(1000);
        let (a, b, c) = (sid(1), sid(2), sid(3));
        let q = Queue::restore(
            timeouts(),
            20,
            vec![(c, 17, t0 + secs(30)), (a, 5, t0), (b, 9, t0 + secs(10))],
            now,
        )
        .unwrap();
        let order: Vec<(SessionId, u64, usize)> =
            q.iter().map(|v| (v.id, v.seq, v.position)).collect();
        assert_eq!(order, vec![(a, 5, 0), (b, 9, 1), (c, 17, 2)]);
        assert_eq!(
            q.active().map(|v| (v.id, v.promoted_at)),
            Some((a, Some(now)))
        );
        assert!(q.iter().all(|v| v.last_seen == now));
        assert_eq!(q.view(&b).unwrap().created, t0 + secs(10));
        assert_eq!(q.next_seq(), 20);
        // The counter never goes back below what was restored.
        let q = Queue::restore(timeouts(), 3, vec![(a, 5, t0)], now).unwrap();
        assert_eq!(q.next_seq(), 6);
        // Corrupt input is refused, not half-loaded.
        assert_eq!(
            Queue::restore(timeouts(), 9, vec![(a, 5, t0), (a, 6, t0)], now).err(),
            Some(QueueError::Corrupt)
        );
        assert_eq!(
            Queue::restore(timeouts(), 9, vec![(a, 5, t0), (b, 5, t0)], now).err(),
            Some(QueueError::Corrupt)
        );
        assert_eq!(
            Queue::restore(timeouts(), 9, vec![(a, 0, t0)], now).err(),
            Some(QueueError::Corrupt)
        );
        let mut q = Queue::restore(timeouts(), 9, vec![(a, 5, t0), (b, 6, t0)], now).unwrap();
        q.check_invariants();
        assert!(q.reap(now + secs(300)).is_empty());
        assert_eq!(q.reap(now + secs(300) + ms(1)).ended.len(), 1);
    }

    mod model {
        //! A trivially correct reference: a Vec in queue order, linear scans everywhere.
        use super::super::*;
        use super::{sid, timeouts};
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        struct M {
            id: SessionId,
            seq: u64,
            created: Instant,
            last_seen: Instant,
            promoted_at: Option<Instant>,
            inflight: u32,
        }

        struct Model {
            v: Vec<M>,
            next_seq: u64,
            t: Timeouts,
            max_hold: Option<Duration>,
        }

        impl Model {
            fn find(&self, id: &SessionId) -> Option<usize> {
                self.v.iter().position(|m| m.id == *id)
            }

            fn view(&self, i: usize) -> SessionView {
                let m = &self.v[i];
                SessionView {
                    id: m.id,
                    seq: m.seq,
                    status: if i == 0 {
                        Status::Active
                    } else {
                        Status::Waiting
                    },
                    position: i,
                    created: m.created,
                    last_seen: m.last_seen,
                    promoted_at: m.promoted_at,
                    inflight: m.inflight,
                }
            }

            fn refresh(&mut self, i: usize, now: Instant) {
                self.v[i].last_seen = self.v[i].last_seen.max(now);
            }

            fn timeout(&self, i: usize) -> Duration {
                if i == 0 {
                    self.t.active
                } else {
                    self.t.waiting
                }
            }

            fn promote(&mut self, now: Instant) -> Option<Promoted> {
                let m = self.v.first_mut()?;
                m.promoted_at = Some(now);
                m.last_seen = m.last_seen.max(now);
                Some(Promoted {
                    id: m.id,
                    seq: m.seq,
                    waited: now.duration_since(m.created),
                })
            }

            fn ended(m: &M, reason: EndReason, now: Instant) -> Ended {
                Ended {
                    id: m.id,
                    seq: m.seq,
                    reason,
                    was_active: m.promoted_at.is_some(),
                    held: m.promoted_at.map(|p| now.duration_since(p)),
                    inflight: m.inflight,
                }
            }

            fn create(
                &mut self,
                id: SessionId,
                now: Instant,
            ) -> Result<(usize, Option<Promoted>), QueueError> {
                if self.find(&id).is_some() {
                    return Err(QueueError::DuplicateId);
                }
                let seq = self.next_seq;
                self.next_seq += 1;
                self.v.push(M {
                    id,
                    seq,
                    created: now,
                    last_seen: now,
                    promoted_at: None,
                    inflight: 0,
                });
                let promoted = if self.v.len() == 1 {
                    self.promote(now)
                } else {
                    None
                };
                Ok((self.v.len() - 1, promoted))
            }

            fn remove(
                &mut self,
                id: &SessionId,
                reason: EndReason,
                now: Instant,
            ) -> Option<Change> {
                let i = self.find(id)?;
                let m = self.v.remove(i);
                let promoted = if i == 0 { self.promote(now) } else { None };
                Some(Change {
                    ended: vec![Self::ended(&m, reason, now)],
                    promoted,
                })
            }

            fn begin(&mut self, id: &SessionId, now: Instant) -> Result<u64, Refusal> {
                match self.find(id) {
                    None => Err(Refusal::Unknown),
                    Some(i) if i > 0 => Err(Refusal::Waiting { position: i }),
                    Some(i) => {
                        self.v[i].inflight += 1;
                        self.refresh(i, now);
                        Ok(self.v[i].seq)
                    }
                }
            }

            fn end(&mut self, id: &SessionId, now: Instant) {
                if let Some(i) = self.find(id) {
                    self.v[i].inflight = self.v[i].inflight.saturating_sub(1);
                    self.refresh(i, now);
                }
            }

            fn is_stale(&self, i: usize, now: Instant) -> bool {
                let m = &self.v[i];
                m.inflight == 0 && now.saturating_duration_since(m.last_seen) > self.timeout(i)
            }

            fn reap(&mut self, now: Instant) -> Change {
                let stale: Vec<bool> = (0..self.v.len()).map(|i| self.is_stale(i, now)).collect();
                let others_waiting = stale.iter().skip(1).any(|s| !s);
                let expired = match (self.max_hold, self.v.first()) {
                    (Some(max), Some(head)) => {
                        !stale[0]
                            && others_waiting
                            && head
                                .promoted_at
                                .is_some_and(|p| now.duration_since(p) > max)
                    }
                    _ => false,
                };
                let head_gone = stale.first() == Some(&true) || expired;
                let mut ended = Vec::new();
                let mut kept = Vec::new();
                for (i, (m, s)) in self.v.drain(..).zip(stale).enumerate() {
                    if s {
                        ended.push(Self::ended(&m, EndReason::Stale, now));
                    } else if i == 0 && expired {
                        ended.push(Self::ended(&m, EndReason::Expired, now));
                    } else {
                        kept.push(m);
                    }
                }
                self.v = kept;
                let promoted = if head_gone { self.promote(now) } else { None };
                Change { ended, promoted }
            }

            fn next_deadline(&self) -> Option<Instant> {
                (0..self.v.len())
                    .filter(|&i| self.v[i].inflight == 0)
                    .map(|i| self.v[i].last_seen + self.timeout(i))
                    .min()
            }
        }

        #[derive(Clone, Debug)]
        enum Op {
            Create(u16),
            Touch(u16),
            Heartbeat(u16),
            Remove(u16, usize),
            Begin(u16),
            End(u16),
            Peek(u16),
            Reap,
            AdvanceSecs(u64),
            AdvanceMs(u64),
            /// Jump to the next deadline exactly (not yet stale), or just past it.
            ToDeadline(bool),
        }

        fn op() -> impl Strategy<Value = Op> {
            let pick = any::<u16>();
            prop_oneof![
                4 => pick.prop_map(Op::Create),
                2 => pick.prop_map(Op::Touch),
                2 => pick.prop_map(Op::Heartbeat),
                2 => (pick, 0..EndReason::ALL.len()).prop_map(|(p, r)| Op::Remove(p, r)),
                3 => pick.prop_map(Op::Begin),
                3 => pick.prop_map(Op::End),
                1 => pick.prop_map(Op::Peek),
                3 => Just(Op::Reap),
                2 => (0u64..700).prop_map(Op::AdvanceSecs),
                2 => (0u64..2000).prop_map(Op::AdvanceMs),
                1 => any::<bool>().prop_map(Op::ToDeadline),
            ]
        }

        /// Chooses an id: mostly a live one, sometimes one seen before (maybe removed),
        /// sometimes one never seen.
        fn pick(p: u16, model: &Model, seen: &[SessionId], fresh: &mut u128) -> SessionId {
            let (kind, n) = (p % 8, usize::from(p / 8));
            if kind < 5 && !model.v.is_empty() {
                model.v[n % model.v.len()].id
            } else if kind < 7 && !seen.is_empty() {
                seen[n % seen.len()]
            } else {
                *fresh += 1;
                sid(1_000_000 + *fresh)
            }
        }

        fn compare(q: &Queue, m: &Model, now: Instant) -> Result<(), TestCaseError> {
            q.check_invariants();
            let views: Vec<SessionView> = q.iter().collect();
            let want: Vec<SessionView> = (0..m.v.len()).map(|i| m.view(i)).collect();
            prop_assert_eq!(&views, &want);
            for (i, v) in views.iter().enumerate() {
                prop_assert_eq!(v.position, i);
                prop_assert_eq!(q.view(&v.id), Some(v.clone()));
            }
            let actives = views.iter().filter(|v| v.status == Status::Active).count();
            prop_assert_eq!(actives, usize::from(!views.is_empty()));
            prop_assert_eq!(q.active(), want.first().cloned());
            prop_assert_eq!(q.len(), m.v.len());
            prop_assert_eq!(q.is_empty(), m.v.is_empty());
            prop_assert_eq!(q.waiting(), m.v.len().saturating_sub(1));
            prop_assert_eq!(q.next_seq(), m.next_seq);
            prop_assert_eq!(q.next_deadline(), m.next_deadline());
            let hold =
                m.v.first()
                    .and_then(|h| h.promoted_at)
                    .map_or(Duration::ZERO, |p| now.duration_since(p));
            prop_assert_eq!(q.active_hold(now), hold);
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            #[test]
            fn queue_matches_the_reference_model(
                ops in proptest::collection::vec(op(), 0..60),
                max_hold in proptest::option::of(0u64..900),
            ) {
                let t0 = Instant::now();
                let mut now = t0;
                let max_hold = max_hold.map(Duration::from_secs);
                let mut q = Queue::new(timeouts());
                q.set_max_hold(max_hold);
                let mut m = Model { v: Vec::new(), next_seq: 1, t: timeouts(), max_hold };
                let mut seen: Vec<SessionId> = Vec::new();
                let mut fresh = 0u128;
                for op in ops {
                    match op {
                        Op::Create(p) => {
                            let id = pick(p, &m, &seen, &mut fresh);
                            // Mostly a new id; a live one checks the duplicate refusal.
                            let id = if p % 8 < 2 { id } else { fresh += 1; sid(fresh) };
                            prop_assert_eq!(q.create(id, now), m.create(id, now));
                            if !seen.contains(&id) { seen.push(id); }
                        }
                        Op::Touch(p) => {
                            let id = pick(p, &m, &seen, &mut fresh);
                            let want = m.find(&id).map(|i| { m.refresh(i, now); m.view(i) });
                            prop_assert_eq!(q.touch(&id, now), want);
                        }
                        Op::Heartbeat(p) => {
                            let id = pick(p, &m, &seen, &mut fresh);
                            let want = m.find(&id).map(|i| m.refresh(i, now)).is_some();
                            prop_assert_eq!(q.heartbeat(&id, now), want);
                        }
                        Op::Remove(p, r) => {
                            let id = pick(p, &m, &seen, &mut fresh);
                            let reason = EndReason::ALL[r];
                            prop_assert_eq!(q.remove(&id, reason, now), m.remove(&id, reason, now));
                        }
                        Op::Begin(p) => {
                            let id = pick(p, &m, &seen, &mut fresh);
                            prop_assert_eq!(q.begin_request(&id, now), m.begin(&id, now));
                        }
                        Op::End(p) => {
                            let id = pick(p, &m, &seen, &mut fresh);
                            q.end_request(&id, now);
                            m.end(&id, now);
                        }
                        Op::Peek(p) => {
                            let id = pick(p, &m, &seen, &mut fresh);
                            prop_assert_eq!(q.view(&id), m.find(&id).map(|i| m.view(i)));
                        }
                        Op::Reap => {
                            prop_assert_eq!(q.reap(now), m.reap(now));
                        }
                        Op::AdvanceSecs(s) => now += Duration::from_secs(s),
                        Op::AdvanceMs(ms) => now += Duration::from_millis(ms),
                        Op::ToDeadline(past) => {
                            if let Some(d) = m.next_deadline() {
                                let d = if past { d + Duration::from_nanos(1) } else { d };
                                now = now.max(d);
                            }
                        }
                    }
                    compare(&q, &m, now)?;
                }
            }
        }
    }
}
