//! The model-based property test of the queue: random operation sequences run against a
//! trivially correct reference (a Vec in queue order, linear scans everywhere) and the
//! two must agree after every step.

use proptest::prelude::*;

use super::tests::{sid, timeouts};
use super::*;

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
    /// The handoff barrier is on.
    handoff: bool,
    /// The ended holder's seq while the lab resets.
    resetting: Option<u64>,
}

impl Model {
    fn find(&self, id: &SessionId) -> Option<usize> {
        self.v.iter().position(|m| m.id == *id)
    }

    /// Whether the session at index `i` is ACTIVE: the head, unless the lab resets.
    fn active(&self, i: usize) -> bool {
        i == 0 && self.resetting.is_none()
    }

    fn view(&self, i: usize) -> SessionView {
        let m = &self.v[i];
        SessionView {
            id: m.id,
            seq: m.seq,
            status: if self.active(i) {
                Status::Active
            } else {
                Status::Waiting
            },
            // The reset counts as one ahead of everybody.
            position: i + usize::from(self.resetting.is_some()),
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
        if self.active(i) {
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

    /// The holder with `seq` left: the next one is promoted, or the reset starts.
    fn vacate(&mut self, seq: u64, now: Instant) -> Option<Promoted> {
        if self.handoff {
            self.resetting = Some(seq);
            None
        } else {
            self.promote(now)
        }
    }

    fn finish_handoff(&mut self, now: Instant) -> Option<Promoted> {
        self.resetting.take()?;
        self.promote(now)
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
        let promoted = if self.v.len() == 1 && self.resetting.is_none() {
            self.promote(now)
        } else {
            None
        };
        Ok((
            self.v.len() - 1 + usize::from(self.resetting.is_some()),
            promoted,
        ))
    }

    fn remove(&mut self, id: &SessionId, reason: EndReason, now: Instant) -> Option<Change> {
        let i = self.find(id)?;
        let m = self.v.remove(i);
        let promoted = if m.promoted_at.is_some() {
            self.vacate(m.seq, now)
        } else {
            None
        };
        Some(Change {
            ended: vec![Self::ended(&m, reason, now)],
            promoted,
        })
    }

    fn begin(&mut self, id: &SessionId, now: Instant) -> Result<u64, Refusal> {
        match self.find(id) {
            None => Err(Refusal::Unknown),
            Some(i) if !self.active(i) => Err(Refusal::Waiting {
                position: i + usize::from(self.resetting.is_some()),
            }),
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
        let head_active = self.v.first().is_some_and(|h| h.promoted_at.is_some());
        let head_seq = self.v.first().map(|h| h.seq);
        let head_gone = head_active && (stale.first() == Some(&true) || expired);
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
        let promoted = match (head_gone, head_seq) {
            (true, Some(seq)) => self.vacate(seq, now),
            _ => None,
        };
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
    /// The reset after a holder is over (a no-op when none is pending).
    FinishHandoff,
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
        2 => Just(Op::FinishHandoff),
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
        prop_assert_eq!(v.position, i + usize::from(m.resetting.is_some()));
        prop_assert_eq!(q.view(&v.id), Some(v.clone()));
    }
    let actives = views.iter().filter(|v| v.status == Status::Active).count();
    let resetting = m.resetting.is_some();
    prop_assert_eq!(actives, usize::from(!views.is_empty() && !resetting));
    prop_assert_eq!(q.active(), want.first().filter(|_| !resetting).cloned());
    prop_assert_eq!(q.resetting(), m.resetting);
    prop_assert_eq!(q.len(), m.v.len());
    prop_assert_eq!(q.is_empty(), m.v.is_empty());
    prop_assert_eq!(q.waiting(), m.v.len() - actives);
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
        handoff in any::<bool>(),
    ) {
        let t0 = Instant::now();
        let mut now = t0;
        let max_hold = max_hold.map(Duration::from_secs);
        let mut q = Queue::new(timeouts());
        q.set_max_hold(max_hold);
        q.set_handoff(handoff);
        let mut m = Model { v: Vec::new(), next_seq: 1, t: timeouts(), max_hold, handoff, resetting: None };
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
                Op::FinishHandoff => {
                    prop_assert_eq!(q.finish_handoff(now), m.finish_handoff(now));
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
