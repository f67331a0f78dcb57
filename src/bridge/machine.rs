//! One lane's pure state machine: what labgate does on one upstream around each turn.
//!
//! A *turn* is one labgate session's time as the ACTIVE holder, named by its fencing
//! number (seq). For each turn a lane may run a start hook, open a session on a
//! neops-remote-lab upstream and wait until that upstream says it is active, keep it
//! alive, and at the end of the turn delete it (retrying with backoff), run the end
//! hook, the reset hook and the health check. The machine decides; the driver
//! (`bridge::driver`) performs each [`Action`] and reports its [`Outcome`]; every
//! decision worth a log line or a metric comes back as a [`Note`].
//!
//! Invariants it keeps:
//! - at most one upstream session is owned at any time, and a new turn's session is
//!   opened only after the previous one is deleted (or the upstream said it is gone):
//!   the next holder never gets an upstream session another turn still owns;
//! - an upstream session whose turn ended while it was being opened is deleted;
//! - a turn that ended while a handoff barrier holds the queue (`Wanted::resetting`)
//!   gets its end steps even if the lane never saw it start.
//!
//! Must never do I/O, read the clock or sleep: every method takes `now`.

use std::time::{Duration, Instant};

/// An upstream's own session id. It is a credential on the upstream: `Debug` shows only
/// its first 8 characters, and it never reaches a client.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamId(String);

impl UpstreamId {
    /// An id as the upstream sent it; `None` when empty, over 128 bytes, or not a plain
    /// visible-ASCII token (it is sent back in a header).
    pub fn new(s: &str) -> Option<UpstreamId> {
        let ok =
            !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
        ok.then(|| UpstreamId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What logs show: the first 8 characters.
    pub fn short(&self) -> &str {
        self.0.get(..8).unwrap_or(&self.0)
    }
}

impl std::fmt::Debug for UpstreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UpstreamId({}…)", self.short())
    }
}

/// What the lane does, per upstream (from the config).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// The upstream is a neops-remote-lab server: one upstream session per turn.
    pub neops: bool,
    pub start_hook: bool,
    pub end_hook: bool,
    pub reset_hook: bool,
    pub health: bool,
}

impl Features {
    /// Whether the next holder must wait for this lane's end steps (contract §8).
    pub fn barrier(&self) -> bool {
        self.reset_hook || self.health
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Heartbeat period for the upstream session (the server reaps after 300 s).
    pub keepalive: Duration,
    /// Poll period while the upstream session waits.
    pub poll: Duration,
    /// First retry delay after a failed open or delete; doubles up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// How long the upstream session may wait before it is reported (somebody uses the
    /// upstream around labgate).
    pub report_waiting_after: Duration,
    /// Health check period, and how long it may keep failing before the handoff fails.
    pub health_every: Duration,
    pub health_within: Duration,
}

/// What the lane should be doing, read from the queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    /// The ACTIVE session's seq.
    pub active: Option<u64>,
    /// The seq of the turn whose end holds the queue (handoff barrier), if any.
    pub resetting: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    StartHook { turn: u64 },
    Open { turn: u64 },
    Poll { turn: u64, id: UpstreamId },
    Keepalive { turn: u64, id: UpstreamId },
    Delete { turn: u64, id: UpstreamId },
    EndHook { turn: u64 },
    Reset { turn: u64 },
    Health { turn: u64 },
}

/// The result of an [`Action`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A hook or health check passed.
    Ok,
    /// `POST /session` answered.
    Opened { id: UpstreamId, active: bool },
    /// `GET /session/{id}` answered.
    Status { active: bool, position: i64 },
    /// The heartbeat was accepted.
    Alive,
    /// The upstream does not know the session (`404`).
    Gone,
    /// The upstream session was deleted.
    Deleted,
    /// Transport error, timeout, unexpected answer, or a failed hook.
    Failed,
}

/// A decision worth a log line or a metric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// A turn began on this lane: mint its token.
    Began {
        turn: u64,
    },
    /// The lane is ready to forward the turn's requests.
    Ready {
        turn: u64,
    },
    /// The turn ended on this lane: revoke its token.
    Ended {
        turn: u64,
    },
    /// An upstream session was opened (`reopened` after the upstream lost one).
    Opened {
        turn: u64,
        id: UpstreamId,
        reopened: bool,
    },
    OpenFailed {
        turn: u64,
        attempt: u32,
        retry_in: Duration,
    },
    /// The upstream session has waited longer than `report_waiting_after`: someone holds
    /// the upstream around labgate.
    UpstreamWaiting {
        turn: u64,
        position: i64,
        waited: Duration,
    },
    /// The upstream forgot a live session (restart, its own reaping): it is reopened.
    Lost {
        turn: u64,
        id: UpstreamId,
    },
    Deleted {
        turn: u64,
        id: UpstreamId,
    },
    DeleteFailed {
        turn: u64,
        id: UpstreamId,
        attempt: u32,
        retry_in: Duration,
    },
    HookFailed {
        turn: u64,
        hook: &'static str,
    },
    /// The lane's end steps for `turn` passed: it no longer holds back the next holder.
    HandoffDone {
        turn: u64,
    },
    /// The reset failed or the lab never became healthy: the lab stays held.
    HandoffFailed {
        turn: u64,
        why: &'static str,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum StartStep {
    Hook,
    Open,
    Poll(UpstreamId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EndStep {
    Delete,
    Hook,
    Reset,
    Health,
}

#[derive(Clone, Debug)]
enum State {
    Idle,
    Starting {
        turn: u64,
        step: StartStep,
        due: Instant,
        attempt: u32,
        /// Restored after a restart: poll it instead of opening a new one.
        adopt: Option<UpstreamId>,
        waiting_since: Option<Instant>,
        reported: bool,
        reopened: bool,
    },
    Held {
        turn: u64,
        id: Option<UpstreamId>,
        due: Instant,
    },
    Ending {
        turn: u64,
        id: Option<UpstreamId>,
        /// The start steps ran (so the end hook is owed).
        started: bool,
        step: EndStep,
        due: Instant,
        attempt: u32,
        health_until: Option<Instant>,
    },
    /// The barrier failed: nothing moves until an operator retries.
    Failed {
        turn: u64,
    },
}

/// One upstream's lane.
#[derive(Debug)]
pub struct Lane {
    features: Features,
    timing: Timing,
    state: State,
    /// The action the driver is performing, if any.
    in_flight: Option<Action>,
    /// The last turn whose end steps completed; never started again.
    last_ended: Option<u64>,
}

impl Lane {
    pub fn new(features: Features, timing: Timing) -> Lane {
        Lane {
            features,
            timing,
            state: State::Idle,
            in_flight: None,
            last_ended: None,
        }
    }

    pub fn features(&self) -> Features {
        self.features
    }

    /// After a restart: `turn` owned upstream session `id`. If the turn is still the
    /// ACTIVE one it is re-established (polled, reopened if gone); otherwise deleted.
    pub fn adopt(&mut self, turn: u64, id: UpstreamId, wanted: Wanted, now: Instant) -> Vec<Note> {
        if wanted.active == Some(turn) {
            self.state = State::Starting {
                turn,
                step: StartStep::Hook,
                due: now,
                attempt: 0,
                adopt: Some(id),
                waiting_since: None,
                reported: false,
                reopened: false,
            };
            let mut notes = vec![Note::Began { turn }];
            self.skip_start_steps(now, &mut notes);
            notes
        } else {
            self.state = State::Ending {
                turn,
                id: Some(id),
                started: true,
                step: EndStep::Delete,
                due: now,
                attempt: 0,
                health_until: None,
            };
            Vec::new()
        }
    }

    /// The turn this lane serves and the upstream session to use, once it is ready.
    pub fn ready(&self) -> Option<(u64, Option<&UpstreamId>)> {
        match &self.state {
            State::Held { turn, id, .. } => Some((*turn, id.as_ref())),
            _ => None,
        }
    }

    /// The turn whose barrier failed, if any.
    pub fn failed(&self) -> Option<u64> {
        match self.state {
            State::Failed { turn } => Some(turn),
            _ => None,
        }
    }

    /// The upstream session this lane owns (for persistence), with its turn.
    pub fn owned(&self) -> Option<(u64, &UpstreamId)> {
        match &self.state {
            State::Held {
                turn, id: Some(id), ..
            }
            | State::Ending {
                turn, id: Some(id), ..
            } => Some((*turn, id)),
            State::Starting {
                turn,
                step: StartStep::Poll(id),
                ..
            } => Some((*turn, id)),
            _ => None,
        }
    }

    /// Whether a delete is pending (a turn ended and its upstream session still exists).
    pub fn undeleted(&self) -> bool {
        matches!(
            &self.state,
            State::Ending {
                id: Some(_),
                step: EndStep::Delete,
                ..
            }
        )
    }

    /// Something suggests the upstream forgot the session (a forwarded request got a
    /// `404`): check it now instead of at the next keepalive.
    pub fn check_now(&mut self, now: Instant) {
        if let State::Held {
            id: Some(_), due, ..
        } = &mut self.state
        {
            *due = (*due).min(now);
        }
    }

    /// An operator retries a failed handoff: the reset and health steps run again.
    pub fn retry(&mut self, now: Instant) -> bool {
        let State::Failed { turn } = self.state else {
            return false;
        };
        let step = if self.features.reset_hook {
            EndStep::Reset
        } else {
            EndStep::Health
        };
        self.state = State::Ending {
            turn,
            id: None,
            started: false,
            step,
            due: now,
            attempt: 0,
            health_until: None,
        };
        true
    }

    /// Aligns the lane with the queue. Ends the current turn if it is no longer ACTIVE;
    /// starts the ACTIVE one when idle.
    pub fn want(&mut self, wanted: Wanted, now: Instant) -> Vec<Note> {
        let mut notes = Vec::new();
        match &self.state {
            State::Starting { turn, .. } | State::Held { turn, .. }
                if wanted.active != Some(*turn) =>
            {
                let turn = *turn;
                let id = match std::mem::replace(&mut self.state, State::Idle) {
                    State::Held { id, .. } => id,
                    State::Starting {
                        step: StartStep::Poll(id),
                        ..
                    } => Some(id),
                    State::Starting { adopt, .. } => adopt,
                    _ => None,
                };
                notes.push(Note::Ended { turn });
                self.begin_end(turn, id, true, now, &mut notes);
            }
            State::Idle => self.start_if_wanted(wanted, now, &mut notes),
            _ => {}
        }
        notes
    }

    fn start_if_wanted(&mut self, wanted: Wanted, now: Instant, notes: &mut Vec<Note>) {
        let fresh = |t: u64| self.last_ended.is_none_or(|e| t > e);
        if let Some(turn) = wanted.resetting.filter(|t| fresh(*t)) {
            // The turn ended before this lane saw it; the lab still gets its reset.
            if self.features.barrier() {
                self.begin_end(turn, None, false, now, notes);
                return;
            }
        }
        if let Some(turn) = wanted.active.filter(|t| fresh(*t)) {
            self.state = State::Starting {
                turn,
                step: StartStep::Hook,
                due: now,
                attempt: 0,
                adopt: None,
                waiting_since: None,
                reported: false,
                reopened: false,
            };
            notes.push(Note::Began { turn });
            self.skip_start_steps(now, notes);
        }
    }

    /// Moves past start steps this lane does not have.
    fn skip_start_steps(&mut self, now: Instant, notes: &mut Vec<Note>) {
        let State::Starting {
            turn, step, adopt, ..
        } = &mut self.state
        else {
            return;
        };
        let turn = *turn;
        if *step == StartStep::Hook && !self.features.start_hook {
            *step = StartStep::Open;
        }
        if *step == StartStep::Open {
            if let Some(id) = adopt.take() {
                *step = StartStep::Poll(id);
            } else if !self.features.neops {
                self.state = State::Held {
                    turn,
                    id: None,
                    due: now,
                };
                notes.push(Note::Ready { turn });
            }
        }
    }

    fn begin_end(
        &mut self,
        turn: u64,
        id: Option<UpstreamId>,
        started: bool,
        now: Instant,
        notes: &mut Vec<Note>,
    ) {
        self.state = State::Ending {
            turn,
            id,
            started,
            step: EndStep::Delete,
            due: now,
            attempt: 0,
            health_until: None,
        };
        self.skip_end_steps(now, notes);
    }

    /// Moves past end steps that do not apply; finishes the turn after the last one.
    fn skip_end_steps(&mut self, now: Instant, notes: &mut Vec<Note>) {
        let State::Ending {
            turn,
            id,
            started,
            step,
            health_until,
            ..
        } = &mut self.state
        else {
            return;
        };
        let f = self.features;
        // The delete waits for an open in flight: it may yet yield an id.
        let open_in_flight = matches!(self.in_flight, Some(Action::Open { .. }));
        if *step == EndStep::Delete && id.is_none() && !open_in_flight {
            *step = EndStep::Hook;
        }
        if *step == EndStep::Hook && !(f.end_hook && *started) {
            *step = EndStep::Reset;
        }
        if *step == EndStep::Reset && !f.reset_hook {
            *step = EndStep::Health;
        }
        if *step == EndStep::Health {
            if !f.health {
                let turn = *turn;
                self.finish(turn, now, notes);
            } else if health_until.is_none() {
                *health_until = now.checked_add(self.timing.health_within);
            }
        }
    }

    fn finish(&mut self, turn: u64, now: Instant, notes: &mut Vec<Note>) {
        if self.features.barrier() {
            notes.push(Note::HandoffDone { turn });
        }
        self.last_ended = Some(self.last_ended.map_or(turn, |e| e.max(turn)));
        self.state = State::Idle;
        let _ = now;
    }

    /// The next action due at `now`, or when to look again (`None`: only when the queue
    /// changes). Marks the action in flight until [`Lane::done`].
    pub fn next(&mut self, now: Instant) -> Result<Action, Option<Instant>> {
        if self.in_flight.is_some() {
            return Err(None);
        }
        let (action, due) = match &self.state {
            State::Idle | State::Failed { .. } => return Err(None),
            State::Held { id: None, .. } => return Err(None),
            State::Held {
                turn,
                id: Some(id),
                due,
            } => (
                Action::Keepalive {
                    turn: *turn,
                    id: id.clone(),
                },
                *due,
            ),
            State::Starting {
                turn, step, due, ..
            } => {
                let turn = *turn;
                let action = match step {
                    StartStep::Hook => Action::StartHook { turn },
                    StartStep::Open => Action::Open { turn },
                    StartStep::Poll(id) => Action::Poll {
                        turn,
                        id: id.clone(),
                    },
                };
                (action, *due)
            }
            State::Ending {
                turn,
                id,
                step,
                due,
                ..
            } => {
                let turn = *turn;
                let action = match (step, id) {
                    (EndStep::Delete, Some(id)) => Action::Delete {
                        turn,
                        id: id.clone(),
                    },
                    // Waiting for the open in flight to report its id.
                    (EndStep::Delete, None) => return Err(None),
                    (EndStep::Hook, _) => Action::EndHook { turn },
                    (EndStep::Reset, _) => Action::Reset { turn },
                    (EndStep::Health, _) => Action::Health { turn },
                };
                (action, *due)
            }
        };
        if due > now {
            return Err(Some(due));
        }
        self.in_flight = Some(action.clone());
        Ok(action)
    }

    /// The driver reports how the action in flight went.
    pub fn done(&mut self, outcome: Outcome, now: Instant) -> Vec<Note> {
        let mut notes = Vec::new();
        let Some(action) = self.in_flight.take() else {
            return notes;
        };
        let t = self.timing;
        match (action, &mut self.state) {
            // ---- start steps
            (Action::StartHook { turn }, State::Starting { step, .. }) => {
                if outcome != Outcome::Ok {
                    notes.push(Note::HookFailed {
                        turn,
                        hook: "start",
                    });
                }
                *step = StartStep::Open;
                self.skip_start_steps(now, &mut notes);
            }
            (
                Action::Open { turn },
                State::Starting {
                    step,
                    due,
                    attempt,
                    waiting_since,
                    reopened,
                    ..
                },
            ) => match outcome {
                Outcome::Opened { id, active } => {
                    notes.push(Note::Opened {
                        turn,
                        id: id.clone(),
                        reopened: *reopened,
                    });
                    if active {
                        self.state = State::Held {
                            turn,
                            id: Some(id),
                            due: now + t.keepalive,
                        };
                        notes.push(Note::Ready { turn });
                    } else {
                        *step = StartStep::Poll(id);
                        *due = now + t.poll;
                        *waiting_since = Some(now);
                    }
                }
                _ => {
                    *attempt = attempt.saturating_add(1);
                    let retry_in = backoff(&t, *attempt);
                    *due = now + retry_in;
                    notes.push(Note::OpenFailed {
                        turn,
                        attempt: *attempt,
                        retry_in,
                    });
                }
            },
            // The turn ended while its session was being opened: delete what was opened.
            (Action::Open { .. }, State::Ending { id, step, .. }) => {
                if let Outcome::Opened { id: opened, .. } = outcome {
                    *id = Some(opened);
                } else {
                    *step = EndStep::Hook;
                }
                self.skip_end_steps(now, &mut notes);
            }
            (
                Action::Poll { turn, id },
                State::Starting {
                    step,
                    due,
                    waiting_since,
                    reported,
                    reopened,
                    ..
                },
            ) => match outcome {
                Outcome::Status { active: true, .. } => {
                    self.state = State::Held {
                        turn,
                        id: Some(id),
                        due: now + t.keepalive,
                    };
                    notes.push(Note::Ready { turn });
                }
                Outcome::Status {
                    active: false,
                    position,
                } => {
                    let since = *waiting_since.get_or_insert(now);
                    let waited = now.saturating_duration_since(since);
                    if !*reported && waited >= t.report_waiting_after {
                        *reported = true;
                        notes.push(Note::UpstreamWaiting {
                            turn,
                            position,
                            waited,
                        });
                    }
                    *due = now + t.poll;
                }
                Outcome::Gone => {
                    notes.push(Note::Lost { turn, id });
                    *step = StartStep::Open;
                    *due = now;
                    *reopened = true;
                    *waiting_since = None;
                }
                _ => *due = now + t.poll,
            },
            (Action::Keepalive { turn, id }, State::Held { due, .. }) => match outcome {
                Outcome::Alive => *due = now + t.keepalive,
                Outcome::Gone => {
                    notes.push(Note::Lost { turn, id });
                    self.state = State::Starting {
                        turn,
                        step: StartStep::Open,
                        due: now,
                        attempt: 0,
                        adopt: None,
                        waiting_since: None,
                        reported: false,
                        reopened: true,
                    };
                }
                // The upstream may be restarting: look again soon; a restarted one
                // answers 404 and the session is reopened.
                _ => *due = now + t.retry_min.min(t.keepalive),
            },
            // ---- end steps
            (
                Action::Delete { turn, id },
                State::Ending {
                    step, due, attempt, ..
                },
            ) => match outcome {
                Outcome::Deleted | Outcome::Gone => {
                    notes.push(Note::Deleted { turn, id });
                    *step = EndStep::Hook;
                    *due = now;
                    *attempt = 0;
                    if let State::Ending { id, .. } = &mut self.state {
                        *id = None;
                    }
                    self.skip_end_steps(now, &mut notes);
                }
                _ => {
                    *attempt = attempt.saturating_add(1);
                    let attempt = *attempt;
                    let retry_in = backoff(&t, attempt);
                    *due = now + retry_in;
                    notes.push(Note::DeleteFailed {
                        turn,
                        id,
                        attempt,
                        retry_in,
                    });
                }
            },
            (Action::EndHook { turn }, State::Ending { step, .. }) => {
                if outcome != Outcome::Ok {
                    notes.push(Note::HookFailed { turn, hook: "end" });
                }
                *step = EndStep::Reset;
                self.skip_end_steps(now, &mut notes);
            }
            (Action::Reset { turn }, State::Ending { step, .. }) => {
                if outcome == Outcome::Ok {
                    *step = EndStep::Health;
                    self.skip_end_steps(now, &mut notes);
                } else {
                    notes.push(Note::HookFailed {
                        turn,
                        hook: "reset",
                    });
                    notes.push(Note::HandoffFailed {
                        turn,
                        why: "reset failed",
                    });
                    self.state = State::Failed { turn };
                }
            }
            (
                Action::Health { turn },
                State::Ending {
                    due, health_until, ..
                },
            ) => {
                if outcome == Outcome::Ok {
                    self.finish(turn, now, &mut notes);
                } else if health_until.is_some_and(|u| now < u) {
                    *due = now + t.health_every;
                } else {
                    notes.push(Note::HandoffFailed {
                        turn,
                        why: "health check failed",
                    });
                    self.state = State::Failed { turn };
                }
            }
            // The state moved on while the action ran (the turn ended mid-poll, say):
            // its result no longer matters, except an id it reveals.
            _ => {}
        }
        notes
    }
}

/// Retry delay after `attempt` failures: `retry_min` doubling up to `retry_max`.
fn backoff(t: &Timing, attempt: u32) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    t.retry_min.saturating_mul(factor).min(t.retry_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn timing() -> Timing {
        Timing {
            keepalive: 60 * S,
            poll: S,
            retry_min: S,
            retry_max: 8 * S,
            report_waiting_after: 5 * S,
            health_every: S,
            health_within: 10 * S,
        }
    }

    fn neops() -> Features {
        Features {
            neops: true,
            ..Features::default()
        }
    }

    fn id(s: &str) -> UpstreamId {
        UpstreamId::new(s).unwrap()
    }

    fn active(seq: u64) -> Wanted {
        Wanted {
            active: Some(seq),
            resetting: None,
        }
    }

    const NONE: Wanted = Wanted {
        active: None,
        resetting: None,
    };

    #[test]
    fn upstream_ids_are_checked_and_never_shown_whole() {
        assert!(UpstreamId::new("").is_none());
        assert!(UpstreamId::new("a b").is_none());
        assert!(UpstreamId::new("a/b").is_none());
        assert!(UpstreamId::new(&"a".repeat(129)).is_none());
        let u = id("0123456789abcdef");
        assert_eq!(u.short(), "01234567");
        assert_eq!(format!("{u:?}"), "UpstreamId(01234567…)");
    }

    #[test]
    fn a_turn_opens_waits_until_active_keeps_alive_and_deletes_at_the_end() {
        let t0 = Instant::now();
        let mut lane = Lane::new(neops(), timing());
        assert_eq!(lane.want(active(7), t0), vec![Note::Began { turn: 7 }]);
        assert_eq!(lane.next(t0), Ok(Action::Open { turn: 7 }));
        assert!(lane.ready().is_none());
        let notes = lane.done(
            Outcome::Opened {
                id: id("up-1"),
                active: false,
            },
            t0,
        );
        assert_eq!(
            notes,
            vec![Note::Opened {
                turn: 7,
                id: id("up-1"),
                reopened: false
            }]
        );
        // Waiting: polled every second, not ready.
        assert_eq!(lane.next(t0), Err(Some(t0 + S)));
        assert_eq!(
            lane.next(t0 + S),
            Ok(Action::Poll {
                turn: 7,
                id: id("up-1")
            })
        );
        let n = lane.done(
            Outcome::Status {
                active: true,
                position: 0,
            },
            t0 + S,
        );
        assert_eq!(n, vec![Note::Ready { turn: 7 }]);
        assert_eq!(lane.ready(), Some((7, Some(&id("up-1")))));
        // Keepalive after 60 s.
        assert_eq!(lane.next(t0 + 2 * S), Err(Some(t0 + 61 * S)));
        assert_eq!(
            lane.next(t0 + 61 * S),
            Ok(Action::Keepalive {
                turn: 7,
                id: id("up-1")
            })
        );
        assert!(lane.done(Outcome::Alive, t0 + 61 * S).is_empty());
        // The turn ends: not ready any more, the session is deleted.
        let n = lane.want(NONE, t0 + 70 * S);
        assert_eq!(n, vec![Note::Ended { turn: 7 }]);
        assert!(lane.ready().is_none());
        assert!(lane.undeleted());
        assert_eq!(
            lane.next(t0 + 70 * S),
            Ok(Action::Delete {
                turn: 7,
                id: id("up-1")
            })
        );
        let n = lane.done(Outcome::Deleted, t0 + 70 * S);
        assert_eq!(
            n,
            vec![Note::Deleted {
                turn: 7,
                id: id("up-1")
            }]
        );
        assert_eq!(lane.next(t0 + 70 * S), Err(None));
        assert!(lane.owned().is_none());
    }

    #[test]
    fn a_failed_delete_is_retried_with_backoff_and_blocks_the_next_turn() {
        let t0 = Instant::now();
        let mut lane = Lane::new(neops(), timing());
        lane.want(active(1), t0);
        lane.next(t0).unwrap();
        lane.done(
            Outcome::Opened {
                id: id("a"),
                active: true,
            },
            t0,
        );
        lane.want(active(2), t0);
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..6 {
            let action = loop {
                match lane.next(now) {
                    Ok(a) => break a,
                    Err(Some(at)) => now = at,
                    Err(None) => panic!("stuck"),
                }
            };
            assert_eq!(
                action,
                Action::Delete {
                    turn: 1,
                    id: id("a")
                }
            );
            match lane.done(Outcome::Failed, now).as_slice() {
                [Note::DeleteFailed { retry_in, .. }] => delays.push(retry_in.as_secs()),
                other => panic!("{other:?}"),
            }
            // The next turn is not started meanwhile.
            assert_eq!(lane.want(active(2), now), vec![]);
        }
        assert_eq!(delays, vec![1, 2, 4, 8, 8, 8]);
        now += 8 * S;
        assert_eq!(
            lane.next(now),
            Ok(Action::Delete {
                turn: 1,
                id: id("a")
            })
        );
        lane.done(Outcome::Gone, now);
        // Only now does turn 2 open its session.
        assert_eq!(lane.want(active(2), now), vec![Note::Began { turn: 2 }]);
        assert_eq!(lane.next(now), Ok(Action::Open { turn: 2 }));
    }

    #[test]
    fn a_session_opened_for_a_turn_that_already_ended_is_deleted() {
        let t0 = Instant::now();
        let mut lane = Lane::new(neops(), timing());
        lane.want(active(3), t0);
        assert_eq!(lane.next(t0), Ok(Action::Open { turn: 3 }));
        // The holder leaves while the open is in flight.
        assert_eq!(lane.want(NONE, t0), vec![Note::Ended { turn: 3 }]);
        assert_eq!(lane.next(t0), Err(None));
        lane.done(
            Outcome::Opened {
                id: id("late"),
                active: true,
            },
            t0,
        );
        assert_eq!(
            lane.next(t0),
            Ok(Action::Delete {
                turn: 3,
                id: id("late")
            })
        );
    }

    #[test]
    fn a_lost_upstream_session_is_reopened_for_the_same_turn() {
        let t0 = Instant::now();
        let mut lane = Lane::new(neops(), timing());
        lane.want(active(4), t0);
        lane.next(t0).unwrap();
        lane.done(
            Outcome::Opened {
                id: id("first"),
                active: true,
            },
            t0,
        );
        let at = t0 + 60 * S;
        lane.next(at).unwrap();
        let n = lane.done(Outcome::Gone, at);
        assert_eq!(
            n,
            vec![Note::Lost {
                turn: 4,
                id: id("first")
            }]
        );
        assert!(lane.ready().is_none());
        assert_eq!(lane.next(at), Ok(Action::Open { turn: 4 }));
        let n = lane.done(
            Outcome::Opened {
                id: id("second"),
                active: true,
            },
            at,
        );
        assert_eq!(
            n[0],
            Note::Opened {
                turn: 4,
                id: id("second"),
                reopened: true
            }
        );
        assert_eq!(lane.ready(), Some((4, Some(&id("second")))));
    }

    #[test]
    fn an_upstream_held_around_labgate_is_reported_once_and_waited_for() {
        let t0 = Instant::now();
        let mut lane = Lane::new(neops(), timing());
        lane.want(active(5), t0);
        lane.next(t0).unwrap();
        lane.done(
            Outcome::Opened {
                id: id("w"),
                active: false,
            },
            t0,
        );
        let mut reports = 0;
        for s in 1..=20 {
            let now = t0 + s * S;
            assert!(matches!(lane.next(now), Ok(Action::Poll { .. })));
            for n in lane.done(
                Outcome::Status {
                    active: false,
                    position: 1,
                },
                now,
            ) {
                assert!(matches!(n, Note::UpstreamWaiting { position: 1, .. }));
                assert!(s >= 5);
                reports += 1;
            }
        }
        assert_eq!(reports, 1);
        assert!(lane.ready().is_none());
    }

    #[test]
    fn a_failed_open_is_retried_while_the_turn_lasts() {
        let t0 = Instant::now();
        let mut lane = Lane::new(neops(), timing());
        lane.want(active(6), t0);
        lane.next(t0).unwrap();
        let n = lane.done(Outcome::Failed, t0);
        assert_eq!(
            n,
            vec![Note::OpenFailed {
                turn: 6,
                attempt: 1,
                retry_in: S
            }]
        );
        assert_eq!(lane.next(t0), Err(Some(t0 + S)));
        // The turn ends before the retry: nothing to delete.
        assert_eq!(lane.want(NONE, t0), vec![Note::Ended { turn: 6 }]);
        assert_eq!(lane.next(t0 + S), Err(None));
    }

    fn hooks() -> Features {
        Features {
            neops: true,
            start_hook: true,
            end_hook: true,
            reset_hook: true,
            health: true,
        }
    }

    #[test]
    fn hooks_run_in_order_around_a_turn_and_release_the_barrier() {
        let t0 = Instant::now();
        let mut lane = Lane::new(hooks(), timing());
        lane.want(active(9), t0);
        assert_eq!(lane.next(t0), Ok(Action::StartHook { turn: 9 }));
        lane.done(Outcome::Ok, t0);
        assert_eq!(lane.next(t0), Ok(Action::Open { turn: 9 }));
        lane.done(
            Outcome::Opened {
                id: id("h"),
                active: true,
            },
            t0,
        );
        let w = Wanted {
            active: None,
            resetting: Some(9),
        };
        lane.want(w, t0);
        let mut order = Vec::new();
        let mut now = t0;
        let mut done = false;
        for _ in 0..20 {
            match lane.next(now) {
                Ok(a) => {
                    order.push(a.clone());
                    let outcome = match a {
                        Action::Delete { .. } => Outcome::Deleted,
                        // The lab needs two health checks to come back.
                        Action::Health { .. } if order.len() < 5 => Outcome::Failed,
                        _ => Outcome::Ok,
                    };
                    let notes = lane.done(outcome, now);
                    if notes.contains(&Note::HandoffDone { turn: 9 }) {
                        done = true;
                        break;
                    }
                }
                Err(Some(at)) => now = at,
                Err(None) => break,
            }
        }
        assert!(done, "{order:?}");
        assert_eq!(
            order,
            vec![
                Action::Delete {
                    turn: 9,
                    id: id("h")
                },
                Action::EndHook { turn: 9 },
                Action::Reset { turn: 9 },
                Action::Health { turn: 9 },
                Action::Health { turn: 9 },
            ]
        );
        // Never started again.
        assert_eq!(lane.want(w, now), vec![]);
    }

    #[test]
    fn a_failed_reset_holds_the_lab_until_retried() {
        let t0 = Instant::now();
        let f = Features {
            reset_hook: true,
            ..Features::default()
        };
        let mut lane = Lane::new(f, timing());
        lane.want(active(1), t0);
        assert_eq!(lane.ready(), Some((1, None)));
        let w = Wanted {
            active: None,
            resetting: Some(1),
        };
        lane.want(w, t0);
        assert_eq!(lane.next(t0), Ok(Action::Reset { turn: 1 }));
        let n = lane.done(Outcome::Failed, t0);
        assert!(n.contains(&Note::HandoffFailed {
            turn: 1,
            why: "reset failed"
        }));
        assert_eq!(lane.failed(), Some(1));
        assert_eq!(lane.next(t0 + 100 * S), Err(None));
        assert_eq!(lane.want(w, t0), vec![]);
        assert!(lane.retry(t0));
        assert_eq!(lane.next(t0), Ok(Action::Reset { turn: 1 }));
        assert_eq!(
            lane.done(Outcome::Ok, t0),
            vec![Note::HandoffDone { turn: 1 }]
        );
    }

    #[test]
    fn health_that_never_passes_fails_the_handoff_after_its_window() {
        let t0 = Instant::now();
        let f = Features {
            health: true,
            ..Features::default()
        };
        let mut lane = Lane::new(f, timing());
        // Never saw the turn start: the barrier still gets its health check.
        let w = Wanted {
            active: None,
            resetting: Some(3),
        };
        lane.want(w, t0);
        let mut now = t0;
        let mut checks = 0;
        let failed = loop {
            match lane.next(now) {
                Ok(Action::Health { .. }) => {
                    checks += 1;
                    let n = lane.done(Outcome::Failed, now);
                    if !n.is_empty() {
                        break n;
                    }
                }
                Err(Some(at)) => now = at,
                other => panic!("{other:?}"),
            }
            assert!(checks < 100);
        };
        assert_eq!(
            failed,
            vec![Note::HandoffFailed {
                turn: 3,
                why: "health check failed"
            }]
        );
        assert_eq!(checks, 11);
    }

    #[test]
    fn without_a_barrier_an_unseen_turn_costs_nothing() {
        let t0 = Instant::now();
        let mut lane = Lane::new(neops(), timing());
        let w = Wanted {
            active: Some(4),
            resetting: Some(3),
        };
        assert_eq!(lane.want(w, t0), vec![Note::Began { turn: 4 }]);
    }

    #[test]
    fn a_restored_holder_re_establishes_its_upstream_session() {
        let t0 = Instant::now();
        let mut lane = Lane::new(neops(), timing());
        lane.adopt(8, id("kept"), active(8), t0);
        assert_eq!(
            lane.next(t0),
            Ok(Action::Poll {
                turn: 8,
                id: id("kept")
            })
        );
        lane.done(
            Outcome::Status {
                active: true,
                position: 0,
            },
            t0,
        );
        assert_eq!(lane.ready(), Some((8, Some(&id("kept")))));
        // A restored session of a turn that is over is deleted.
        let mut lane = Lane::new(neops(), timing());
        lane.adopt(8, id("old"), active(9), t0);
        assert_eq!(
            lane.next(t0),
            Ok(Action::Delete {
                turn: 8,
                id: id("old")
            })
        );
        lane.done(Outcome::Deleted, t0);
        assert_eq!(lane.want(active(9), t0), vec![Note::Began { turn: 9 }]);
    }
}
